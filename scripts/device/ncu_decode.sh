#!/usr/bin/env bash
# Runs on the GPU machine: per-kernel device time of one W4A4KV4 decode step (CUDA graph, boost clocks, warm
# caches) under ncu, Llama-3-8B shapes, batch ${BATCH:-1}, after a 2048-token prefill; ${EXTRA} goes to the bench
# command (e.g. --fused-split 4). Builds build-dev first when needed. Prints one line per kernel (name, us, SM
# and DRAM throughput as % of peak) and the sums.
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
B=build-dev/flatquant
if [ ! -x $B ]; then
  cmake -S . -B build-dev -G Ninja -DCMAKE_PREFIX_PATH="$PWD/.carry/deps" -DFLATQUANT_TORCH=OFF -DFLATQUANT_CUDA=ON \
    > "$OUT/cmake.txt" 2>&1 || { tail -30 "$OUT/cmake.txt"; exit 1; }
  ninja -C build-dev flatquant > "$OUT/build.txt" 2>&1 || { grep -B2 -A8 error "$OUT/build.txt" | head -60; exit 1; }
fi
# Kernels of the decode path only (RoPE and KV4 append also run in prefill: the summary starts at the first
# fused_quant kernel, and one step ends at the LM head's gemv_f16).
ncu --clock-control none --cache-control none \
  --kernel-name regex:"fused_quant|qgemm_decode|qgemv|decode_attn|decode_combine|rope|kv4_append|gemv_f16" \
  --launch-count ${COUNT:-700} \
  --metrics gpu__time_duration.sum,sm__throughput.avg.pct_of_peak_sustained_elapsed,dram__throughput.avg.pct_of_peak_sustained_elapsed \
  --csv $B bench --random llama-3-8b --engine w4a4kv4 --batch ${BATCH:-1} --prefill 2048 --decode 2 --repeat 1 ${EXTRA:-} \
  > "$OUT/ncu_decode.csv" 2> "$OUT/ncu_decode.err"
python3 - "$OUT/ncu_decode.csv" <<'PY'
import csv, sys, collections, re
rows = [r for r in csv.reader(open(sys.argv[1])) if len(r) > 10]
hdr = rows[0]; rows = rows[1:]
ki, mi, vi, ii = hdr.index("Kernel Name"), hdr.index("Metric Name"), hdr.index("Metric Value"), hdr.index("ID")
k = collections.OrderedDict()
for r in rows:
    k.setdefault(r[ii], {"name": (re.findall(r"\w+_kernel", r[ki]) or [r[ki][:40]])[0]})[r[mi]] = float(r[vi].replace(",", ""))
ks = list(k.values())
first = next(i for i, v in enumerate(ks) if v["name"] == "fused_quant_kernel")
end = next((i for i in range(first, len(ks)) if ks[i]["name"] == "gemv_f16_kernel"), len(ks) - 1)
ks = ks[first:end + 1]
tot = collections.defaultdict(lambda: [0, 0.0])
for v in ks:
    t = v.get("gpu__time_duration.sum", 0) / 1e3
    tot[v["name"]][0] += 1; tot[v["name"]][1] += t
per = collections.OrderedDict()
for v in ks[:26]:
    print(f'{v["name"][:40]:40s} {v.get("gpu__time_duration.sum", 0)/1e3:8.2f} us  sm {v.get("sm__throughput.avg.pct_of_peak_sustained_elapsed", 0):5.1f}%  dram {v.get("dram__throughput.avg.pct_of_peak_sustained_elapsed", 0):5.1f}%')
print("one decode step,", len(ks), "kernels:")
for n, (c, t) in sorted(tot.items(), key=lambda x: -x[1][1]):
    print(f"  {n[:40]:40s} {c:4d} calls {t:9.1f} us  ({t / c:6.2f} us each)")
print(f"  sum {sum(t for c, t in tot.values()):.1f} us")
PY
