#!/usr/bin/env bash
# Runs on the GPU machine: builds the kernels for sm_90a (no LibTorch), runs the CUDA op tests (qgemv, quant,
# Kronecker) and the W4A4 decode GEMV benchmark. Logs and the benchmark JSON go under $OUT. Expects
# .carry/deps (scripts/device/vendor_deps.sh: fmt, PCRE2, CLI11, nlohmann, GTest for that machine).
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
exec > >(tee "$OUT/gemm_log.txt") 2>&1
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv,noheader
date -u
cmake -S . -B build-dev -G Ninja -DCMAKE_PREFIX_PATH="$PWD/.carry/deps" -DFLATQUANT_TORCH=OFF > "$OUT/cmake.txt" 2>&1 \
  || { tail -30 "$OUT/cmake.txt"; exit 1; }
ninja -C build-dev flatquant_tests bench_qgemv > "$OUT/build.txt" 2>&1 || { tail -40 "$OUT/build.txt"; exit 1; }
# Resource usage of the qgemv kernels (registers, spills) for the notes.
cuobjdump --dump-resource-usage build-dev/libflatquant_cuda.a 2>/dev/null | grep -A1 qgemv > "$OUT/qgemv_resources.txt" || true
./build-dev/tests/flatquant_tests --gtest_filter='*Qgemv*:*Quant*Cuda*:*Kron*Cuda*' > "$OUT/cuda_tests.txt" 2>&1
rc_tests=$?
grep -E "^\[ *(OK|FAILED|SKIPPED|PASSED) |Failure|error" "$OUT/cuda_tests.txt" | head -60
./build-dev/bench_qgemv > "$OUT/bench_qgemv.json" 2> "$OUT/bench_qgemv.err"
rc_bench=$?
cat "$OUT/bench_qgemv.err"
python3 - "$OUT/bench_qgemv.json" <<'PY' || cat "$OUT/bench_qgemv.json"
import json, sys
d = json.load(open(sys.argv[1]))
print(d["gpu"], d["date_utc"], "all_exact:", d["all_exact"])
print(f'{"shape":<20}{"M":>3}{"N":>7}{"K":>7}{"us":>9}{"GB/s":>8}{"%3TB/s":>8}  check')
for r in d["results"]:
    print(f'{r["name"]:<20}{r["M"]:>3}{r["N"]:>7}{r["K"]:>7}{r["us_median"]:>9.2f}{r["GBps"]:>8.0f}{r["pct_of_3TBps"]:>8.1f}  {r["check"]}')
PY
echo "tests rc=$rc_tests bench rc=$rc_bench"
[ $rc_tests -eq 0 ] && [ $rc_bench -eq 0 ]
