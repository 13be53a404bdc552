#!/usr/bin/env bash
# Runs on the GPU machine: the W4A4KV4 backend of the CUDA engine (docs/runtime.md). Stages (default: all):
#   build  configure + build (CUDA, no LibTorch); the W4A4 op tests, the engine tests (W4A4KV4 and FP16) and the
#          CLI tests; with .carry/art/<name> artifacts: WikiText-2 perplexity of each on the CPU (fake and real
#          quantization, 16 threads) and on the GPU (--device cuda), the real-vs-fake gate of issue 4
#   bench  in ONE call: the PyTorch FP16 baseline (bench/fp16_graph_baseline.py, batch 1 and 16), then
#          `flatquant bench --random llama-3-8b` with --engine fp16 and --engine w4a4kv4 (batch 1 and 16), a
#          per-op profile of one un-captured W4A4 decode step, both engines with --head-int8, and the Qwen2.5-7B
#          shapes
# Logs and JSON under $OUT. Expects .carry/deps (scripts/device/vendor_deps.sh) and .carry/p2/data (WikiText-2,
# stories260K).
set -uo pipefail
OUT=${OUT:-/tmp/out}
STAGE=${1:-all}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/w4a4_log.txt") 2>&1
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,memory.used --format=csv,noheader
date -u
B=build-dev/flatquant
export FLATQUANT_DATA=$PWD/.carry/p2/data FLATQUANT_MODELS=/tmp/fq_models
rc=0
if [ ! -x $B ] || [ "$STAGE" = build ] || [ "$STAGE" = all ]; then
  cmake -S . -B build-dev -G Ninja -DCMAKE_PREFIX_PATH="$PWD/.carry/deps" -DFLATQUANT_TORCH=OFF -DFLATQUANT_CUDA=ON \
    > "$OUT/cmake.txt" 2>&1 || { tail -30 "$OUT/cmake.txt"; exit 1; }
  ninja -C build-dev flatquant flatquant_tests > "$OUT/build.txt" 2>&1 || { grep -B2 -A8 error "$OUT/build.txt" | head -60; exit 1; }
fi
if [ ! -f $FLATQUANT_MODELS/stories260K/config.json ]; then
  $B convert --from llama2c --model $FLATQUANT_DATA/stories260K/stories260K.bin --out $FLATQUANT_MODELS/stories260K \
    --force > /dev/null
fi
if [ "$STAGE" = build ] || [ "$STAGE" = all ]; then
  ./build-dev/tests/flatquant_tests --gtest_filter="${FILTER:-W4A4Ops*:CudaQuantEngine*:CudaEngine*:Qgemm*:Kron*:Kv4*:DecodeAttn*:PrefillAttn*:LayerOps*:GemvF16*}" \
    > "$OUT/w4a4_tests.txt" 2>&1
  rc=$?
  grep -E "^\[ *(OK|FAILED|SKIPPED|PASSED) |Failure|error|Expected|Which is|Value of|actual|norm_err|ppl gpu" \
    "$OUT/w4a4_tests.txt" | head -120
  echo "tests rc=$rc"
  W=$FLATQUANT_DATA/wikitext2_raw/wiki.test.hf_joined.txt
  for art in .carry/art/*/; do
    [ -f "$art/manifest.json" ] || continue
    n=$(basename "$art")
    for mode in "--device cpu --quant fake --threads 16" "--device cpu --quant real --threads 16" "--device cuda"; do
      echo "$n $mode: $($B ppl --model "$art" --data $W --seq-len 512 $mode --json 2>&1 | tail -1)"
    done | tee -a "$OUT/ppl_artifacts.txt"
    # Generation speed on the artifact: CPU real quantization (16 threads) and the CUDA engine (sampling in the
    # captured graph), greedy and sampled.
    for mode in "--device cpu --quant real --threads 16" "--device cuda" "--device cuda --temperature 0.8 --top-p 0.95 --seed 7"; do
      echo "$n generate $mode: $($B generate --model "$art" --prompt "Once upon a time" --max-tokens 400 --ctx 512 \
        $mode --json 2>&1 | tail -1 | python3 -c 'import json, sys
l = sys.stdin.read()
try:
    d = json.loads(l); print({k: v for k, v in d.items() if k != "text"}, repr(d["text"][:100]))
except Exception:
    print(l[:300])')"
    done | tee -a "$OUT/generate_artifacts.txt"
  done
fi
if [ "$STAGE" = bench ] || [ "$STAGE" = all ]; then
  python3 bench/fp16_graph_baseline.py 1 > "$OUT/baseline_b1.txt" 2>&1; tail -3 "$OUT/baseline_b1.txt"
  python3 bench/fp16_graph_baseline.py 16 > "$OUT/baseline_b16.txt" 2>&1; tail -3 "$OUT/baseline_b16.txt"
  for e in fp16 w4a4kv4; do
    $B bench --random llama-3-8b --engine $e --batch 1,16 --json > "$OUT/bench_llama3_$e.json" 2> "$OUT/bench_$e.err" \
      || { rc=1; cat "$OUT/bench_$e.err"; }
  done
  python3 - "$OUT"/bench_llama3_fp16.json "$OUT"/bench_llama3_w4a4kv4.json <<'PY' || true
import json, sys
for f in sys.argv[1:]:
    d = json.load(open(f))
    print(d["engine"], d["model"], d["gpu"], d["date_utc"], f'step weights {d["step_weight_bytes"]/1e9:.2f} GB, '
          f'GPU memory used {d["gpu_mem_used_bytes"]/1e9:.1f} GB')
    for r in d["results"]:
        print(f'  B={r["batch"]} prefill {d["prefill_tokens"]}: {r["prefill_ms"]:.1f} ms; decode {r["decode_ms_per_step"]:.3f} '
              f'ms/step ({r["decode_tok_s"]:.0f} tok/s), weights {r["weights_TBps"]:.2f} TB/s, +KV {r["weights_kv_TBps"]:.2f} TB/s')
PY
  $B bench --random llama-3-8b --engine w4a4kv4 --batch 1,16 --prefill 2048 --decode 16 --repeat 1 --profile \
    > "$OUT/profile_llama3_w4a4.txt" 2>&1
  cat "$OUT/profile_llama3_w4a4.txt"
  for e in w4a4kv4 fp16; do
    $B bench --random llama-3-8b --engine $e --batch 1,16 --head-int8 --json > "$OUT/bench_llama3_${e}_head_int8.json" \
      2>> "$OUT/bench_$e.err" || { rc=1; tail -3 "$OUT/bench_$e.err"; }
  done
  $B bench --random qwen2.5-7b --engine w4a4kv4 --batch 1,16 --json > "$OUT/bench_qwen25_w4a4kv4.json" 2>> "$OUT/bench_w4a4kv4.err" \
    || { rc=1; tail -3 "$OUT/bench_w4a4kv4.err"; }
  python3 -c "import json,sys; d=json.load(open(sys.argv[1])); [print(d['model'], 'B=%d prefill %.1f ms decode %.3f ms/step' % (r['batch'], r['prefill_ms'], r['decode_ms_per_step'])) for r in d['results']]" "$OUT/bench_qwen25_w4a4kv4.json" || true
fi
echo "w4a4.sh $STAGE rc=$rc"
exit $rc
