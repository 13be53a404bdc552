#!/usr/bin/env bash
# In-domain text for stories260K (issue 3's held-out set): N stories sampled from the FP model with fixed
# seeds, joined with "\n\n". Calibration and evaluation use disjoint seed ranges, e.g.
#   scripts/make_stories.sh MODEL 0 200 > stories_eval.txt       (seeds 0..199)
#   scripts/make_stories.sh MODEL 100000 400 > stories_calib.txt (seeds 100000..100399)
# Plain sampling (temperature 1, no top-k/top-p), empty prompt (BOS only), up to 256 tokens or EOS.
set -euo pipefail
model=$1 first=$2 n=$3
bin=${FLATQUANT_BIN:-$(dirname "$0")/../build/flatquant}
for ((s = first; s < first + n; s++)); do
  [ $s -gt $first ] && printf '\n\n'
  "$bin" generate --model "$model" --prompt "" --seed $s --max-tokens 256 --temperature 1 --threads 1 2>/dev/null
done
