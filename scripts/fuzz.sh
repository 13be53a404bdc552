#!/usr/bin/env bash
# Builds the libFuzzer targets (clang, ASan + UBSan, build-fuzz/) and runs one or all of them, one at a time:
#   scripts/fuzz.sh [target|all] [seconds per target, default 600]
# Targets: fuzz/fuzz_<target>.cpp. Seeds come from fuzz/corpus/<target>/ (committed, read-only here); what
# the fuzzer finds goes to build-fuzz/corpus/<target>/, crashes / timeouts / OOMs to
# build-fuzz/artifacts/<target>/, the log to build-fuzz/logs/<target>.log. Exit status 1 when a run found
# something. Reproduce a finding: build-fuzz/fuzz_<target> <artifact file>.
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET=${1:-all}
SECONDS_PER=${2:-600}
B=${FUZZ_BUILD_DIR:-build-fuzz}
JOBS=${JOBS:-2}

if [ "$TARGET" = all ]; then
  TARGETS=$(ls fuzz/fuzz_*.cpp | sed 's|fuzz/fuzz_||; s|\.cpp$||')
else
  [ -f "fuzz/fuzz_$TARGET.cpp" ] || { echo "fuzz: no target '$TARGET' (fuzz/fuzz_$TARGET.cpp)" >&2; exit 2; }
  TARGETS=$TARGET
fi

command -v "${CXX:-clang++}" >/dev/null || { echo "fuzz: needs clang (apt-get install -y clang)" >&2; exit 2; }
if [ ! -f "$B/build.ninja" ]; then
  CC=${CC:-clang} CXX=${CXX:-clang++} cmake -S . -B "$B" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DFLATQUANT_FUZZ=ON -DFLATQUANT_TESTS=OFF -DFLATQUANT_CUDA=OFF -DFLATQUANT_TORCH=OFF >/dev/null
fi
nice -n 10 ninja -C "$B" -j "$JOBS" $(for t in $TARGETS; do echo "fuzz_$t"; done)

status=0
for t in $TARGETS; do
  mkdir -p "$B/corpus/$t" "$B/artifacts/$t" "$B/logs"
  echo "fuzz: $t for ${SECONDS_PER}s (log $B/logs/$t.log)"
  # Crashes, sanitizer reports, >10 s inputs and >2 GB RSS are findings; fq::Error is a normal outcome.
  # Fork mode (one job) keeps fuzzing for the whole time after a finding and saves each one.
  nice -n 19 "$B/fuzz_$t" "$B/corpus/$t" "fuzz/corpus/$t" -fork=1 -ignore_crashes=1 -ignore_timeouts=1 \
    -ignore_ooms=1 -max_total_time="$SECONDS_PER" -rss_limit_mb=2048 -malloc_limit_mb=2048 -timeout=10 \
    -artifact_prefix="$B/artifacts/$t/" >"$B/logs/$t.log" 2>&1 || true
  # The last status line: "#<execs>: cov: .. ft: .. corp: .. exec/s: .. oom/timeout/crash: a/b/c time: ..s".
  grep -E "^#[0-9]+: cov:" "$B/logs/$t.log" | tail -1 || true
  if [ -n "$(ls -A "$B/artifacts/$t")" ]; then
    echo "fuzz: $t FOUND something: see $B/logs/$t.log and $B/artifacts/$t/" >&2
    status=1
  fi
  echo "fuzz: $t corpus $(ls "$B/corpus/$t" | wc -l) new + $(ls "fuzz/corpus/$t" | wc -l) seed files"
done
exit $status
