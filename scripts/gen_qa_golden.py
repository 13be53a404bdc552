#!/usr/bin/env python3
"""Golden log-likelihoods for tests/eval/test_qa_golden.cpp, from transformers' fp32 forward on CPU.

Run on the GPU machine (torch 2.x, transformers 5.x; lm_eval is NOT needed: its request construction for the
six tasks and HFLM's tokenization are re-implemented below from lm-evaluation-harness 0.4.x's task YAMLs,
utils.py and lm_eval/models/huggingface.py):

    python3 scripts/gen_qa_golden.py /root/fq/stories260K [/root/fq/SmolLM2-135M-Instruct ...]

Each argument is a model directory with a tokenizer (DIR or DIR=NAME; NAME defaults to the base name). For
every row of tests/data/qa/<task>.jsonl it builds the (context, continuation) requests, tokenizes them as
HFLM does with add_bos_token=False (add_special_tokens=False; trailing context spaces moved onto the
continuation; an empty context becomes [BOS or EOS]), runs the model over (ctx + cont)[-(max_length+1):][:-1]
and writes tests/data/qa/golden_<NAME>.json:
    {"model": NAME, "max_length": N, "add_bos": false,
     "requests": [{"task", "doc", "context", "continuation", "context_tokens", "continuation_tokens",
                   "loglik", "is_greedy"}, ...]}   (task / document / choice order)
"""
import json
import os
import re
import sys

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QA = os.path.join(REPO, "tests", "data", "qa")
TASKS = ["piqa", "hellaswag", "arc_easy", "arc_challenge", "winogrande", "lambada_openai"]


def hellaswag_preprocess(text):
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    text = text.replace("  ", " ")
    return text


def requests_of(task, doc):
    """(context, continuation) pairs of one row, as lm-eval's construct_requests makes them (0-shot)."""
    if task == "piqa":
        ctx = "Question: " + doc["goal"] + "\nAnswer:"
        return [(ctx, " " + c) for c in [doc["sol1"], doc["sol2"]]]
    if task == "hellaswag":
        ctx = doc["ctx_a"] + " " + doc["ctx_b"].capitalize()
        query = hellaswag_preprocess(doc["activity_label"] + ": " + ctx)
        return [(query, " " + hellaswag_preprocess(e)) for e in doc["endings"]]
    if task in ("arc_easy", "arc_challenge"):
        ctx = "Question: " + doc["question"] + "\nAnswer:"
        return [(ctx, " " + c) for c in doc["choices"]["text"]]
    if task == "winogrande":
        idx = doc["sentence"].index("_")
        target = doc["sentence"][idx + 1:].strip()
        return [(doc["sentence"][:idx] + opt, " " + target) for opt in [doc["option1"], doc["option2"]]]
    if task == "lambada_openai":
        words = doc["text"].split(" ")
        return [(" ".join(words[:-1]), " " + words[-1])]
    raise ValueError(task)


def encode_pair(tok, context, continuation):
    enc = lambda s: tok.encode(s, add_special_tokens=False)
    if context == "":
        prefix = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
        return [prefix], enc(continuation)
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces > 0:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = enc(context + continuation)
    ctx = enc(context)
    return ctx, whole[len(ctx):]


def max_length_of(model, tok):
    for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
        if hasattr(model.config, attr):
            return getattr(model.config, attr)
    return 2048


def main():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    args = sys.argv[1:]
    if not args:
        print(__doc__)
        sys.exit(2)
    torch.set_grad_enabled(False)
    for arg in args:
        path, _, name = arg.partition("=")
        name = name or os.path.basename(os.path.normpath(path))
        tok = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager").eval()
        max_length = max_length_of(model, tok)
        out = []
        for task in TASKS:
            with open(os.path.join(QA, task + ".jsonl"), encoding="utf-8") as f:
                rows = [json.loads(l) for l in f if l.strip()]
            for d, row in enumerate(rows):
                for context, continuation in requests_of(task, row):
                    ctx_enc, cont_enc = encode_pair(tok, context, continuation)
                    full = (ctx_enc + cont_enc)[-(max_length + 1):]
                    inp = torch.tensor([full[:-1]], dtype=torch.long)
                    logits = model(inp).logits[0].to(torch.float32)
                    logp = torch.log_softmax(logits, dim=-1)[-len(cont_enc):]
                    cont = torch.tensor(cont_enc, dtype=torch.long)
                    greedy = bool((logp.argmax(dim=-1) == cont).all())
                    ll = float(logp.gather(1, cont.unsqueeze(-1)).sum())
                    out.append({"task": task, "doc": d, "context": context, "continuation": continuation,
                                "context_tokens": ctx_enc, "continuation_tokens": cont_enc,
                                "loglik": ll, "is_greedy": greedy})
        dst = os.path.join(QA, "golden_%s.json" % name)
        with open(dst, "w", encoding="utf-8") as f:
            json.dump({"model": name, "max_length": max_length, "add_bos": False, "requests": out}, f, indent=1,
                      ensure_ascii=False)
            f.write("\n")
        print("wrote %s (%d requests)" % (dst, len(out)))


if __name__ == "__main__":
    main()
