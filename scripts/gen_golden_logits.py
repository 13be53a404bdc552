#!/usr/bin/env python3
"""Golden logits for tests/model/test_golden_logits.cpp, from transformers' fp32 eager forward on CPU.

Run on the GPU machine (torch 2.x, transformers 5.x, safetensors; no network needed):

    python3 scripts/gen_golden_logits.py                       # tiny models only
    python3 scripts/gen_golden_logits.py /tmp/stories260K /tmp/SmolLM2-135M-Instruct

1. (unless --no-tiny) creates two random tiny models in tests/data/models/ (committed; < 300 KB each in f32):
   - tiny_llama3: LlamaConfig with Llama-3 features: GQA 4/2 heads, explicit head_dim 16 (!= hidden/heads),
     rope_theta 5e5, llama3 rope scaling (factor 8, low 1, high 4, original context 64), untied head.
     hidden 48 and ff 96 (not 64 / 160) so that the file stays under 300 KB.
   - tiny_qwen2: Qwen2Config, hidden 48, 6 heads / 2 kv heads (head_dim 8), ff 96, vocab 200, tied
     embeddings, non-zero q/k/v biases.
   Weights: torch.manual_seed fixed; linears N(0, 0.1), embeddings N(0, 1), norms 1 + 0.1 N(0, 1), biases
   0.1 N(0, 1), so the logits are far from flat.
2. For every model (the tiny ones plus each directory given; NAME defaults to the directory's base name, or
   pass DIR=NAME) runs a fixed 48-token sequence (BOS first when the config has one, then ids drawn with
   torch.Generator seed 1234, all < vocab) and writes tests/data/golden/<NAME>.safetensors:
   - "tokens" I32 [T]
   - if T * V * 4 <= 2 MB: "logits" F32 [T, V]
   - else: "last_logits" F32 [V] (the last position, full), "cols" I32 [256] (a fixed pseudo-random subset
     of vocab columns, sorted, seed 4321) and "logits_cols" F32 [T, 256] (those columns at every position).
   The C++ test accepts both layouts.
"""
import argparse
import os
import sys

import torch
from safetensors.torch import save_file

T = 48
N_COLS = 256
FULL_LIMIT = 2 * 1024 * 1024
TOKEN_SEED = 1234
COLS_SEED = 4321
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def init_weights(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if "norm" in name:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            elif name.endswith(".bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            elif "embed_tokens" in name:
                p.copy_(torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))


def make_tiny_models(models_dir):
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    out = {}
    llama_cfg = LlamaConfig(
        vocab_size=256, hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, max_position_embeddings=512, rms_norm_eps=1e-5,
        rope_theta=500000.0,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 64},
        tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, attention_bias=False, mlp_bias=False,
        hidden_act="silu")
    llama = LlamaForCausalLM(llama_cfg).to(torch.float32)
    init_weights(llama, 11)
    out["tiny_llama3"] = llama

    qwen_cfg = Qwen2Config(
        vocab_size=200, hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=6,
        num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-6, rope_theta=1000000.0,
        tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, use_sliding_window=False, hidden_act="silu")
    qwen = Qwen2ForCausalLM(qwen_cfg).to(torch.float32)
    init_weights(qwen, 22)
    out["tiny_qwen2"] = qwen

    dirs = {}
    for name, model in out.items():
        d = os.path.join(models_dir, name)
        os.makedirs(d, exist_ok=True)
        model.save_pretrained(d, safe_serialization=True)
        size = os.path.getsize(os.path.join(d, "model.safetensors"))
        print(f"{d}: model.safetensors {size} bytes")
        if size >= 300 * 1024:
            sys.exit(f"{d}: model.safetensors is {size} bytes, over the 300 KB budget")
        dirs[name] = d
    return dirs


def load(model_dir):
    from transformers import AutoModelForCausalLM

    kw = dict(attn_implementation="eager")
    try:
        m = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, **kw)
    except TypeError:  # transformers 4.x spells it torch_dtype
        m = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32, **kw)
    m.eval()
    return m.to(torch.float32)


def golden(model_dir, name, out_dir):
    model = load(model_dir)
    cfg = model.config
    V = cfg.vocab_size
    g = torch.Generator().manual_seed(TOKEN_SEED)
    tokens = torch.randint(0, V, (T,), generator=g, dtype=torch.int64)
    bos = getattr(cfg, "bos_token_id", None)
    if isinstance(bos, int) and 0 <= bos < V:
        tokens[0] = bos
    with torch.no_grad():
        logits = model(input_ids=tokens[None, :], use_cache=False).logits[0].to(torch.float32).contiguous()
    assert logits.shape == (T, V), logits.shape
    tensors = {"tokens": tokens.to(torch.int32)}
    if T * V * 4 <= FULL_LIMIT:
        tensors["logits"] = logits
    else:
        gc = torch.Generator().manual_seed(COLS_SEED)
        cols = torch.randperm(V, generator=gc)[:N_COLS].sort().values
        tensors["last_logits"] = logits[-1].contiguous()
        tensors["cols"] = cols.to(torch.int32)
        tensors["logits_cols"] = logits[:, cols].contiguous()
    import transformers
    meta = {"model": name, "torch": torch.__version__, "transformers": transformers.__version__,
            "attn_implementation": "eager", "dtype": "float32"}
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f"{name}.safetensors")
    save_file(tensors, path, metadata=meta)
    print(f"{path}: T={T} V={V} {'full' if 'logits' in tensors else 'columns'}; "
          f"logits range [{logits.min().item():.3f}, {logits.max().item():.3f}]")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="*", help="HF model directories, optionally DIR=NAME")
    ap.add_argument("--no-tiny", action="store_true", help="do not (re)create the tiny models")
    ap.add_argument("--models-dir", default=os.path.join(REPO, "tests", "data", "models"))
    ap.add_argument("--out-dir", default=os.path.join(REPO, "tests", "data", "golden"))
    a = ap.parse_args()
    torch.set_grad_enabled(False)
    jobs = []
    if not a.no_tiny:
        jobs += [(d, n) for n, d in make_tiny_models(a.models_dir).items()]
    for spec in a.models:
        d, _, n = spec.partition("=")
        jobs.append((d, n or os.path.basename(os.path.normpath(d))))
    for d, n in jobs:
        golden(d, n, a.out_dir)


if __name__ == "__main__":
    main()
