#!/usr/bin/env bash
# Runs on the GPU machine: builds the kernels for sm_90a (no LibTorch), runs the CUDA W4A4 GEMM tests (and the
# other CUDA op tests) and the W4A4 GEMM benchmark (bench/bench_qgemm.cpp). Logs, the kernels' resource usage
# and the benchmark JSON go under $OUT. Expects .carry/deps (scripts/device/vendor_deps.sh). QUICK=1 runs the
# benchmark on M = 1 and 2048 only.
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
exec > >(tee "$OUT/qgemm_log.txt") 2>&1
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv,noheader
date -u
cmake -S . -B build-dev -G Ninja -DCMAKE_PREFIX_PATH="$PWD/.carry/deps" -DFLATQUANT_TORCH=OFF -DFLATQUANT_CUDA=ON \
  > "$OUT/cmake.txt" 2>&1 || { tail -30 "$OUT/cmake.txt"; exit 1; }
ninja -C build-dev flatquant_tests bench_qgemm > "$OUT/build.txt" 2>&1 || { tail -40 "$OUT/build.txt"; exit 1; }
# Registers, spills and shared memory of the GEMM kernels (for bench/results/qgemm_notes.md).
cuobjdump --dump-resource-usage build-dev/libflatquant_cuda.a 2>/dev/null | grep -A1 -E "qgemm|qgemv" \
  > "$OUT/qgemm_resources.txt" || true
./build-dev/tests/flatquant_tests --gtest_filter='*Qgemm*:*Qgemv*:*Quant*Cuda*:*Kron*Cuda*' > "$OUT/cuda_tests.txt" 2>&1
rc_tests=$?
grep -E "^\[ *(OK|FAILED|SKIPPED|PASSED) |Failure|Expected|Which is|error|differ" "$OUT/cuda_tests.txt" | head -80
BENCH_ARGS=()
[ "${QUICK:-0}" = 1 ] && BENCH_ARGS=(--quick)
./build-dev/bench_qgemm "${BENCH_ARGS[@]}" > "$OUT/bench_qgemm.json" 2> "$OUT/bench_qgemm.err"
rc_bench=$?
tail -5 "$OUT/bench_qgemm.err"
python3 - "$OUT/bench_qgemm.json" <<'PY' || cat "$OUT/bench_qgemm.json"
import json, sys
d = json.load(open(sys.argv[1]))
print(d["gpu"], d["date_utc"], "all_exact:", d["all_exact"])
print(f'{"model":<11}{"shape":<18}{"M":>5}{"N":>7}{"K":>7} {"kernel":<9}{"us":>9}{"TB/s":>7}{"TOPS":>7}{"%ceil":>7}  f16(kernel, us)  other')
for r in d["results"]:
    pct = r.get("pct_of_3TBps", r.get("pct_of_s8_mma_peak", 0))
    other = ""
    if "qgemv_us" in r: other = f'qgemv {r["qgemv_us"]:.2f} us'
    if "cublaslt_s8_us" in r: other = f'cuBLASLt s8 {r["cublaslt_s8_us"]:.1f} us ({r["speedup_vs_cublaslt_s8"]:.2f}x)'
    print(f'{r["model"]:<11}{r["name"]:<18}{r["M"]:>5}{r["N"]:>7}{r["K"]:>7} {r["kernel"]:<9}{r["us"]:>9.2f}'
          f'{r["TBps"]:>7.2f}{r["TOPS"]:>7.0f}{pct:>7.1f}  {r["kernel_f16"]:<9}{r["us_f16"]:>8.2f}  {r["check"]} {other}')
PY
echo "tests rc=$rc_tests bench rc=$rc_bench"
[ $rc_tests -eq 0 ] && [ $rc_bench -eq 0 ]
