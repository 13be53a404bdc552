#!/usr/bin/env python3
"""Reference perplexity from transformers, by the paper's protocol, to check `flatquant ppl` against.

Run on the GPU machine (torch, transformers; no network):
    python3 scripts/hf_ppl.py --model DIR --data wiki.test.hf_joined.txt --seq-len 512 [--device cuda]

Protocol (../shared/reference/flatquant.md section 2): the text is tokenized as ONE stream by the model's own
tokenizer.json (BOS once at the start, as its post-processor adds it), cut into non-overlapping windows of
seq_len tokens, remainder dropped; each window predicts its seq_len - 1 shifted targets; ppl = exp(mean NLL over
all predicted tokens). fp32 weights, eager attention, TF32 off. Prints one JSON line.
"""
import argparse
import json
import math
import time

import torch
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--limit-windows", type=int, default=0, help="only the first N windows (0: all)")
    a = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    tok = PreTrainedTokenizerFast(tokenizer_file=f"{a.model}/tokenizer.json")
    text = open(a.data, encoding="utf-8").read()
    ids = tok(text)["input_ids"]
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32, attn_implementation="eager")
    model.to(a.device).eval()
    seq = min(a.seq_len, model.config.max_position_embeddings)
    n = len(ids) // seq
    if a.limit_windows > 0:
        n = min(n, a.limit_windows)
    data = torch.tensor(ids[: n * seq], dtype=torch.long).view(n, seq)
    t0 = time.time()
    nll = 0.0
    with torch.no_grad():
        for b in range(0, n, a.batch):
            x = data[b : b + a.batch].to(a.device)
            logits = model(x).logits.double()
            lp = torch.log_softmax(logits[:, :-1], dim=-1)
            nll -= lp.gather(-1, x[:, 1:, None]).sum().item()
    count = n * (seq - 1)
    print(json.dumps({"model": a.model, "ppl": math.exp(nll / count), "tokens": count, "windows": n,
                      "stream_tokens": len(ids), "first_ids": ids[:8], "seq_len": seq,
                      "seconds": time.time() - t0}))


if __name__ == "__main__":
    main()
