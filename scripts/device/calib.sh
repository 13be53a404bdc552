#!/usr/bin/env bash
# Runs on the GPU machine (device tool). Modes:
#   build   configure (LibTorch from the machine's PyTorch, CUDA kernels) and build everything into build-dev,
#           convert stories260K, write the flat_matrices.pth fixture (scripts/gen_flat_matrices.py), run the
#           calibration tests and the CUDA op tests
#   bench   bench_calib_layer: one Llama-3-8B-shaped layer, 128 x 2048, 15 epochs, with AMP=${AMP:-fp16};
#           peak GPU memory from nvidia-smi polled every 0.5 s
# Expects .carry/deps (scripts/device/vendor_deps.sh) and .carry/p2/data. Logs and JSON under $OUT.
set -uo pipefail
OUT=${OUT:-/tmp/out}
MODE=${1:-build}
export FLATQUANT_DATA=$PWD/.carry/p2/data FLATQUANT_MODELS=/root/fq/models
exec > >(tee "$OUT/log_$MODE.txt") 2>&1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
date -u
if [ "$MODE" = build ]; then
  TP=$(python3 -c 'import torch;print(torch.utils.cmake_prefix_path)')
  cmake -S . -B build-dev -G Ninja -DCMAKE_BUILD_TYPE=Release "-DCMAKE_PREFIX_PATH=$PWD/.carry/deps;$TP" \
    -DFLATQUANT_TORCH=ON -DFLATQUANT_CUDA=ON > $OUT/cmake.txt 2>&1 || { tail -30 $OUT/cmake.txt; exit 1; }
  ninja -C build-dev ${TARGETS:-flatquant flatquant_calib_tests bench_calib_layer} > $OUT/build.txt 2>&1 || { grep -B2 -A12 "error" $OUT/build.txt | head -80; exit 1; }
  mkdir -p /root/fq/models
  ./build-dev/flatquant convert --from llama2c --model $FLATQUANT_DATA/stories260K/stories260K.bin \
    --out /root/fq/models/stories260K --force >/dev/null 2>&1
  mkdir -p tests/data/flat_matrices
  python3 scripts/gen_flat_matrices.py --model /root/fq/models/stories260K \
    --out tests/data/flat_matrices/stories260K.pth --twin tests/data/flat_matrices/stories260K_twin.safetensors
  cp -r tests/data/flat_matrices $OUT/
  ./build-dev/tests/flatquant_calib_tests 2>&1 | grep -E "^\[ *(OK|FAILED|SKIPPED|PASSED) |Failure|error:|Expected|Which is|actual" \
    | head -80 > $OUT/calib_tests.txt; cat $OUT/calib_tests.txt
elif [ "$MODE" = bench ]; then
  ( while true; do nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits; sleep 0.5; done ) > $OUT/mem.txt &
  POLL=$!
  base=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits)
  ./build-dev/bench_calib_layer --device cuda --amp ${AMP:-fp16} ${BENCH_ARGS:-} | tee $OUT/calib_layer.json
  kill $POLL
  peak=$(sort -n $OUT/mem.txt | tail -1)
  echo "{\"gpu_mem_used_before_mib\": $base, \"gpu_mem_peak_mib\": $peak}" | tee $OUT/calib_layer_mem.json
fi
