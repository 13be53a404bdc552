#!/usr/bin/env bash
# Runs on the GPU machine: builds everything (CUDA kernels for sm_90a), runs the whole test suite (the CUDA op
# tests run there instead of skipping), and measures SmolLM2's WikiText-2 perplexity on the CPU reference with
# the machine's 16 cores. Expects .carry/deps (scripts/device/vendor_deps.sh), .carry/p2 (data + GGUF second
# half) and /root/fq/gguf.part00 from a previous call.
set -uo pipefail
OUT=${OUT:-/tmp/out}
export FLATQUANT_DATA=$PWD/.carry/p2/data FLATQUANT_MODELS=/root/fq/models
exec > >(tee "$OUT/log.txt") 2>&1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
date -u
mkdir -p /root/fq/models
G=/root/fq/models/SmolLM2-135M-Instruct.Q4_1.gguf
[ -f $G ] || { [ -f /root/fq/gguf.part00 ] && cat /root/fq/gguf.part00 .carry/p2/gguf.part01 > $G; }
TP=$(python3 -c 'import torch;print(torch.utils.cmake_prefix_path)')
cmake -S . -B build-dev -G Ninja "-DCMAKE_PREFIX_PATH=$PWD/.carry/deps;$TP" -DFLATQUANT_TORCH=ON > $OUT/cmake.txt 2>&1 \
  || { echo "configure with LibTorch failed:"; grep -i -A3 error $OUT/cmake.txt | head -20;
       cmake -S . -B build-dev -G Ninja -DCMAKE_PREFIX_PATH=$PWD/.carry/deps -DFLATQUANT_TORCH=OFF >/dev/null || exit 1; }
ninja -C build-dev > $OUT/build.txt 2>&1 || { tail -30 $OUT/build.txt; exit 1; }
B=build-dev/flatquant
$B convert --from llama2c --model $FLATQUANT_DATA/stories260K/stories260K.bin --out /root/fq/models/stories260K --force >/dev/null 2>&1
[ -f $G ] && $B convert --from gguf --model $G --out /root/fq/models/SmolLM2-135M-Instruct --force >/dev/null 2>&1
(cd build-dev && ctest -j 8 --timeout 600 > $OUT/ctest.txt 2>&1; tail -5 $OUT/ctest.txt; grep -E "Skipped|Failed|\*\*\*" $OUT/ctest.txt | head -40)
./build-dev/tests/flatquant_tests --gtest_filter='*Cuda*:*CUDA*' 2>&1 | grep -E "^\[ *(OK|FAILED|SKIPPED) |Failure|error" | head -60 > $OUT/cuda_tests.txt; cat $OUT/cuda_tests.txt
python3 scripts/gen_qa_golden.py /root/fq/models/stories260K $( [ -d /root/fq/models/SmolLM2-135M-Instruct ] && echo /root/fq/models/SmolLM2-135M-Instruct ) > $OUT/qa_golden.txt 2>&1; tail -3 $OUT/qa_golden.txt
tar czf $OUT/qa_golden.tgz tests/data/qa
W=$FLATQUANT_DATA/wikitext2_raw/wiki.test.hf_joined.txt
[ "${SMOL_PPL:-0}" = 1 ] && [ -d /root/fq/models/SmolLM2-135M-Instruct ] && $B ppl --model /root/fq/models/SmolLM2-135M-Instruct --data $W --seq-len 2048 --threads 16 --json 2>/dev/null | tee $OUT/ppl_smollm2_cpu16.json
$B ppl --model /root/fq/models/stories260K --data $W --seq-len 512 --json 2>/dev/null | tee $OUT/ppl_stories260K.json
