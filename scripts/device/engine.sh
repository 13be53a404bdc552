#!/usr/bin/env bash
# Runs on the GPU machine: the CUDA FP16 engine (docs/runtime.md). Stages (default: all):
#   build  configure + build (CUDA, no LibTorch), run the engine tests and the attention/layer-op CUDA tests
#   bench  in ONE call: the PyTorch baseline (bench/fp16_graph_baseline.py, batch 1 and 16), then
#          `flatquant bench --random llama-3-8b --engine fp16 --batch 1,16 --json`, a per-op profile of one
#          un-captured decode step, and the Qwen2.5-7B shapes
# Logs and JSON go under $OUT. Expects .carry/deps (scripts/device/vendor_deps.sh) and .carry/engine/
# stories260K.bin (+ tok512.bin) from ../shared/data/stories260K for the tests against the reference.
set -uo pipefail
OUT=${OUT:-/tmp/out}
STAGE=${1:-all}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/engine_log.txt") 2>&1
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,memory.used --format=csv,noheader
date -u
B=build-dev/flatquant
rc=0
if [ "$STAGE" = build ] || [ "$STAGE" = all ] || [ ! -x $B ]; then
  cmake -S . -B build-dev -G Ninja -DCMAKE_PREFIX_PATH="$PWD/.carry/deps" -DFLATQUANT_TORCH=OFF -DFLATQUANT_CUDA=ON \
    > "$OUT/cmake.txt" 2>&1 || { tail -30 "$OUT/cmake.txt"; exit 1; }
  ninja -C build-dev flatquant flatquant_tests > "$OUT/build.txt" 2>&1 || { grep -B2 -A8 error "$OUT/build.txt" | head -60; exit 1; }
fi
if [ "$STAGE" = build ] || [ "$STAGE" = all ]; then
  export FLATQUANT_MODELS=/tmp/fq_models
  if [ -f .carry/engine/stories260K.bin ] && [ ! -f $FLATQUANT_MODELS/stories260K/config.json ]; then
    $B convert --from llama2c --model .carry/engine/stories260K.bin --out $FLATQUANT_MODELS/stories260K --force > /dev/null
  fi
  cuobjdump --dump-resource-usage build-dev/libflatquant_cuda.a 2>/dev/null \
    | grep -E -A1 "decode_f16|qkv_rope|combine_kernel|fill_normal|gemv_f16" > "$OUT/engine_resources.txt" || true
  ./build-dev/tests/flatquant_tests --gtest_filter='CudaEngine*:GemvF16*:LayerOps*:PrefillAttn*:DecodeAttn*:Kv4*' \
    > "$OUT/engine_tests.txt" 2>&1
  rc=$?
  grep -E "^\[ *(OK|FAILED|SKIPPED|PASSED) |Failure|error|Expected|Which is|Value of|actual" "$OUT/engine_tests.txt" | head -80
  echo "tests rc=$rc"
fi
if [ "$STAGE" = bench ] || [ "$STAGE" = all ]; then
  python3 bench/fp16_graph_baseline.py 1 > "$OUT/baseline_b1.txt" 2>&1; cat "$OUT/baseline_b1.txt"
  python3 bench/fp16_graph_baseline.py 16 > "$OUT/baseline_b16.txt" 2>&1; cat "$OUT/baseline_b16.txt"
  $B bench --random llama-3-8b --engine fp16 --batch 1,16 --json > "$OUT/bench_llama3_fp16.json" 2> "$OUT/bench.err" \
    || { rc=1; cat "$OUT/bench.err"; }
  python3 - "$OUT/bench_llama3_fp16.json" <<'PY' || cat "$OUT/bench_llama3_fp16.json"
import json, sys
d = json.load(open(sys.argv[1]))
print(d["model"], d["gpu"], d["date_utc"], f'step weights {d["step_weight_bytes"]/1e9:.2f} GB, '
      f'GPU memory used {d["gpu_mem_used_bytes"]/1e9:.1f} GB')
for r in d["results"]:
    print(f'B={r["batch"]} ours prefill {d["prefill_tokens"]}: {r["prefill_ms"]:.1f} ms; decode {r["decode_ms_per_step"]:.3f} '
          f'ms/step ({r["decode_tok_s"]:.0f} tok/s), weights {r["weights_TBps"]:.2f} TB/s, +KV {r["weights_kv_TBps"]:.2f} TB/s')
PY
  $B bench --random llama-3-8b --batch 1,16 --prefill 2048 --decode 16 --repeat 1 --profile > "$OUT/profile_llama3.txt" 2>&1
  cat "$OUT/profile_llama3.txt"
  # The same without our GEMV (cuBLASLt for every GEMM), batch 1: what the GEMV buys.
  $B bench --random llama-3-8b --batch 1 --repeat 1 --no-gemv 2>&1 | head -1
  $B bench --random qwen2.5-7b --engine fp16 --batch 1,16 --json > "$OUT/bench_qwen25_fp16.json" 2>> "$OUT/bench.err" \
    || { rc=1; tail -3 "$OUT/bench.err"; }
  python3 -c "import json,sys; d=json.load(open(sys.argv[1])); [print(d['model'], 'B=%d prefill %.1f ms decode %.3f ms/step' % (r['batch'], r['prefill_ms'], r['decode_ms_per_step'])) for r in d['results']]" "$OUT/bench_qwen25_fp16.json" || true
fi
echo "engine.sh $STAGE rc=$rc"
exit $rc
