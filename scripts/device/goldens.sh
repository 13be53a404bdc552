#!/usr/bin/env bash
# Runs on the GPU machine (device tool) to produce the golden fixtures; see docs/testing.md.
# Expects .carry/p2 (data copy + second half of the SmolLM2 GGUF) and /root/fq/gguf.part00 from a previous call.
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT/fixtures"
export PYTHONUNBUFFERED=1 FLATQUANT_DATA=$PWD/.carry/p2/data
exec > >(tee "$OUT/log.txt") 2>&1
nvidia-smi --query-gpu=name --format=csv,noheader
M=/root/fq/models; mkdir -p $M
if [ -f /root/fq/gguf.part00 ]; then
  cat /root/fq/gguf.part00 .carry/p2/gguf.part01 > $M/SmolLM2-135M-Instruct.Q4_1.gguf
  sha256sum $M/SmolLM2-135M-Instruct.Q4_1.gguf
fi
cmake -S . -B build-dev -G Ninja -DCMAKE_PREFIX_PATH=$PWD/.carry/deps -DFLATQUANT_CUDA=OFF -DFLATQUANT_TORCH=OFF -DFLATQUANT_TESTS=OFF >/dev/null && ninja -C build-dev flatquant >/dev/null || exit 1
D=.carry/p2/data
./build-dev/flatquant convert --from llama2c --model $D/stories260K/stories260K.bin --tokenizer $D/stories260K/tok512.bin --out /root/fq/stories260K --force
[ -f $M/SmolLM2-135M-Instruct.Q4_1.gguf ] && ./build-dev/flatquant convert --from gguf --model $M/SmolLM2-135M-Instruct.Q4_1.gguf --out /root/fq/SmolLM2-135M-Instruct --force
python3 scripts/gen_golden_logits.py --no-tiny /root/fq/stories260K $( [ -d /root/fq/SmolLM2-135M-Instruct ] && echo /root/fq/SmolLM2-135M-Instruct )
export FLATQUANT_MODELS=/root/fq
[ -d /root/fq/SmolLM2-135M-Instruct ] && python3 scripts/gen_tokenizer_golden.py --source smollm2=models:SmolLM2-135M-Instruct/tokenizer.json
python3 scripts/gen_tokenizer_golden.py --source stories260K=models:stories260K/tokenizer.json
W=$D/wikitext2_raw/wiki.test.hf_joined.txt
python3 scripts/hf_ppl.py --model /root/fq/stories260K --data $W --seq-len 512 | tee $OUT/fixtures/hf_ppl_stories260K.json
[ -d /root/fq/SmolLM2-135M-Instruct ] && python3 scripts/hf_ppl.py --model /root/fq/SmolLM2-135M-Instruct --data $W --seq-len 2048 | tee $OUT/fixtures/hf_ppl_smollm2.json
git status --short tests/data
tar czf $OUT/fixtures.tgz tests/data $OUT/fixtures/*.json 2>/dev/null
ls -la $OUT
