#!/usr/bin/env bash
# Runs on the GPU machine: SmolLM2-135M-Instruct quantization table (docs/results.md). Calibrates every method
# on the GPU (LibTorch CUDA) and measures WikiText-2 perplexity of each artifact with the CPU runtime
# (16 threads, first $WIN windows of 2048). Expects /root/fq/gguf.part00 (previous call) + .carry/p2 + .carry/deps
# and a build-dev from scripts/device/calib.sh build (rebuilt here if missing).
set -uo pipefail
OUT=${OUT:-/tmp/out}
WIN=${WIN:-6}
export FLATQUANT_DATA=$PWD/.carry/p2/data
exec > >(tee "$OUT/log_smollm2.txt") 2>&1
nvidia-smi --query-gpu=name --format=csv,noheader; date -u
[ -x build-dev/flatquant ] || TARGETS=flatquant bash scripts/device/calib.sh build > /dev/null 2>&1
B=build-dev/flatquant
M=/root/fq/models; mkdir -p $M
G=$M/SmolLM2-135M-Instruct.Q4_1.gguf
[ -f $G ] || cat /root/fq/gguf.part00 .carry/p2/gguf.part01 > $G
sha256sum $G
[ -d $M/smollm2 ] || $B convert --from gguf --model $G --out $M/smollm2 --force > /dev/null
CAL=$FLATQUANT_DATA/wikitext2_raw/wiki.train.nonempty.first1MB.txt
W=$FLATQUANT_DATA/wikitext2_raw/wiki.test.hf_joined.txt
S="--set calib.nsamples=64 --set calib.seqlen=1024 --set calib.epochs=5"
A=/root/fq/art; mkdir -p $A
run() { local name=$1; shift; local t0=$(date +%s);
  $B calibrate --model $M/smollm2 --calib-data $CAL --device cuda $S "$@" --out $A/$name 2> $OUT/calib_$name.txt
  echo "calibrate $name: rc $? $(( $(date +%s) - t0 )) s"; grep "^layer" $OUT/calib_$name.txt | tr '\r' '\n' | grep "^layer" | tail -2; }
run rtn --method rtn
run smoothquant --method smoothquant
run hadamard --method hadamard
run flatquant
run flatquant_gptq --load-transforms $A/flatquant/transforms.safetensors --weight-quantizer gptq
ppl() { $B ppl --model $1 --data $W --seq-len 2048 --limit-windows $WIN --threads 16 --json 2>/dev/null; }
echo "{\"model\": \"fp\", \"result\": $(ppl $M/smollm2)}" | tee $OUT/ppl_smollm2.jsonl
for n in rtn smoothquant hadamard flatquant flatquant_gptq; do
  echo "{\"model\": \"$n\", \"result\": $(ppl $A/$n)}" | tee -a $OUT/ppl_smollm2.jsonl
done
for n in rtn smoothquant hadamard flatquant; do python3 -c "import json;m=json.load(open('$A/$n/manifest.json'));print('$n', [round(l['final_loss'],5) for l in m['layers']][:30])" ; done > $OUT/layer_losses.txt
date -u
