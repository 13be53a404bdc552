#!/usr/bin/env bash
# The main job on the bundled default: import the real stories260K llama2.c model from ../shared/data into a
# Hugging Face directory and print its WikiText-2 test perplexity (paper protocol, seq-len 512 = its context).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
TARGETS=flatquant scripts/build.sh
DATA=${FLATQUANT_DATA:-../shared/data}
OUT=.cache/stories260K-hf
./build/flatquant convert --from llama2c --model "$DATA/stories260K/stories260K.bin" \
  --tokenizer "$DATA/stories260K/tok512.bin" --out "$OUT" --force
./build/flatquant ppl --model "$OUT" --data "$DATA/wikitext2_raw/wiki.test.hf_joined.txt" --seq-len 512
