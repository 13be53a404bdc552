#!/usr/bin/env bash
# The stories260K W4A4KV4 table of docs/results.md: FP, RTN, SmoothQuant, Hadamard, FlatQuant-RTN,
# FlatQuant-GPTQ; perplexity on the WikiText-2 test (seq-len 512) and on in-domain stories sampled from the FP
# model (seeds 0..199), all methods calibrated on a disjoint sample (seeds 100000..100399).
#   scripts/results_stories260K.sh OUT_DIR      (needs a build with LibTorch: BIN=build-torch/flatquant)
# Finished artifacts in OUT_DIR are kept (rerun to continue). EPOCHS, NSAMPLES, WIKI_WINDOWS, THREADS, DEVICE adjust it.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: $0 OUT_DIR}
bin=${BIN:-build/flatquant}
model=${MODEL:-.cache/models/stories260K}
data=${FLATQUANT_DATA:-../shared/data}
mkdir -p "$out"
[ -s "$out/stories_eval.txt" ] || FLATQUANT_BIN=$bin scripts/make_stories.sh "$model" 0 200 > "$out/stories_eval.txt"
[ -s "$out/stories_calib.txt" ] || FLATQUANT_BIN=$bin scripts/make_stories.sh "$model" 100000 400 > "$out/stories_calib.txt"
sched="--set calib.nsamples=${NSAMPLES:-32} --set calib.seqlen=512 --set calib.epochs=${EPOCHS:-10} --set calib.bsz=4"
cal() {
  local name=$1; shift
  local t0=$(date +%s)
  $bin calibrate --model "$model" --calib-data "$out/stories_calib.txt" --device ${DEVICE:-cpu} \
    --threads ${THREADS:-2} $sched "$@" \
    --out "$out/$name" 2> "$out/calib_$name.log"
  echo "$name: calibrated in $(( $(date +%s) - t0 )) s" >&2
}
for m in ${METHODS:-rtn smoothquant hadamard}; do [ -f "$out/$m/manifest.json" ] || cal $m --method $m; done
[ -f "$out/flatquant/manifest.json" ] || cal flatquant
[ -f "$out/flatquant_gptq/manifest.json" ] || cal flatquant_gptq --load-transforms "$out/flatquant/transforms.safetensors" --weight-quantizer gptq
W=$data/wikitext2_raw/wiki.test.hf_joined.txt
: > "$out/results.jsonl"
for m in fp rtn smoothquant hadamard flatquant flatquant_gptq; do
  dir=$out/$m; [ $m = fp ] && dir=$model
  wiki=$($bin ppl --model "$dir" --data "$W" --seq-len 512 --limit-windows ${WIKI_WINDOWS:-1591} --threads ${THREADS:-2} --json 2>/dev/null)
  st=$($bin ppl --model "$dir" --data "$out/stories_eval.txt" --seq-len 512 --threads ${THREADS:-2} --json 2>/dev/null)
  echo "{\"method\": \"$m\", \"wikitext2\": $wiki, \"stories\": $st}" | tee -a "$out/results.jsonl"
done
