#!/usr/bin/env bash
# Runs on the GPU machine: builds the kernels for sm_90a (no LibTorch), runs the CUDA op tests of the attention
# and layer kernels (KV4 append, decode/prefill attention, RMSNorm/RoPE/SwiGLU/embedding/argmax/sampling) and
# the attention benchmark. Logs, kernel resource usage and the benchmark JSON go under $OUT. Expects .carry/deps
# (scripts/device/vendor_deps.sh: fmt, PCRE2, CLI11, nlohmann, GTest for that machine).
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
exec > >(tee "$OUT/attn_log.txt") 2>&1
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv,noheader
date -u
cmake -S . -B build-dev -G Ninja -DCMAKE_PREFIX_PATH="$PWD/.carry/deps" -DFLATQUANT_TORCH=OFF -DFLATQUANT_CUDA=ON \
  > "$OUT/cmake.txt" 2>&1 || { tail -30 "$OUT/cmake.txt"; exit 1; }
ninja -C build-dev flatquant_tests bench_attn > "$OUT/build.txt" 2>&1 || { tail -40 "$OUT/build.txt"; exit 1; }
# Registers / spills / shared memory of the kernels, for the notes.
cuobjdump --dump-resource-usage build-dev/libflatquant_cuda.a 2>/dev/null \
  | grep -E -A1 "attn|kv4|rmsnorm|rope|swiglu|embedding|argmax|sample" > "$OUT/attn_resources.txt" || true
timeout 240 ./build-dev/tests/flatquant_tests --gtest_filter='Kv4*:DecodeAttn*:PrefillAttn*:LayerOps*:SampleCuda*:Philox*:Quant*Cuda*' \
  > "$OUT/attn_tests.txt" 2>&1
rc_tests=$?
grep -E "^\[ *(OK|FAILED|SKIPPED|PASSED) |Failure|error|Expected|Which is|gpu=" "$OUT/attn_tests.txt" | head -80
timeout 240 ./build-dev/bench_attn > "$OUT/bench_attn.json" 2> "$OUT/bench_attn.err"
rc_bench=$?
cat "$OUT/bench_attn.err"
python3 - "$OUT/bench_attn.json" <<'PY' || cat "$OUT/bench_attn.json"
import json, sys
d = json.load(open(sys.argv[1]))
print(d["gpu"], d["date_utc"], "all_checks_ok:", d["all_checks_ok"])
for r in d["results"]:
    if r["kernel"].startswith("decode"):
        print(f'decode {r.get("impl", ""):>10} bs {r["batch"]:>2} L {r["context"]:>5} split {r["n_split"]:>3}: {r["us_median"]:8.2f} us '
              f'{r["TBps"]:6.3f} TB/s ({r["pct_of_3TBps"]:5.1f}% of 3.0)  err {r["check_max_rel_err"]:.2e} {r["check"]}')
    else:
        print(f'prefill n {r["tokens"]}: {r["us_median"]:9.1f} us {r["TFLOPs"]:7.1f} TFLOP/s  '
              f'err {r["check_max_rel_err"]:.2e} {r["check"]}')
PY
# Out-of-bounds / uninitialized reads of the decode kernels (partial chunks at the cache end, zero-filled
# cp.async copies past a range).
if [ "${SANITIZE:-1}" = 1 ]; then
  timeout 200 compute-sanitizer --tool memcheck --print-limit 5 ./build-dev/tests/flatquant_tests \
    --gtest_filter='DecodeAttnCuda.MatchesDequantizedReference:DecodeAttnCuda.ExtremeValueScales:DecodeAttnCuda.PipelineEdges' 2>&1 \
    | grep -E "ERROR SUMMARY|Invalid|PASSED|FAILED" | head -20
fi
echo "tests rc=$rc_tests bench rc=$rc_bench"
[ $rc_tests -eq 0 ] && [ $rc_bench -eq 0 ]
