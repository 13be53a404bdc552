import json, sys
d = json.load(open(sys.argv[1]))
print(d.get("model"), d.get("engine"), "fused_tr", d.get("fused_prefill_transform"), "kq", d.get("fused_prefill_transforms"), "int8_gemms", d.get("int8_gemms"))
for r in d["results"]:
    print(f'  B={r["batch"]} prefill {r["prefill_ms"]:.2f} ms; decode {r["decode_ms_per_step"]:.3f} ms/step')
