#!/usr/bin/env python3
"""Writes a flat_matrices.pth in the original FlatQuant's model-zoo layout for a model's shapes, plus a twin
safetensors with the same values under our transforms.safetensors names (Direct form), for the import test
(tests/calib/test_import.cpp). Run on the GPU machine (it has PyTorch); see docs/testing.md.

The original's file (flatquant/flat_utils.py save_flat_matrices) is torch.save of {layer_index: {name: param}}
with the names of rep_matrix_only()'s eval-mode matrices, diag scales and clipping logits, as nn.Parameters.
Values here are random (seeded): non-orthogonal matrices near the identity, positive diag scales, logits."""
import argparse, json, math
import torch
from safetensors.torch import save_file


def decompose(n):
    a = math.isqrt(n)
    if a * a < n:
        a += 1
    while True:
        b2 = a * a - n
        b = math.isqrt(b2)
        if b * b == b2:
            return a - b, a + b
        a += 1


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--twin", required=True)
    args = ap.parse_args()
    cfg = json.load(open(f"{args.model}/config.json"))
    E, F = cfg["hidden_size"], cfg["intermediate_size"]
    H, KV = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    d = cfg.get("head_dim") or E // H
    g = torch.Generator().manual_seed(0)

    def mat(n):
        return torch.eye(n) + 0.3 * torch.randn(n, n, generator=g) / math.sqrt(n)

    def param(t):
        return torch.nn.Parameter(t.contiguous(), requires_grad=False)

    zoo, twin = {}, {}
    for i in range(cfg["num_hidden_layers"]):
        layer = {}
        pre = f"model.layers.{i}."

        def kron(block, mod, n):
            L, R = decompose(n)
            A, B = mat(L), mat(R)
            s = 0.5 + 1.5 * torch.rand(n, generator=g)
            layer[f"{block}.{mod}.matrix_left"] = param(A)
            layer[f"{block}.{mod}.matrix_right"] = param(B)
            layer[f"{block}.{mod}.matrix_left_inv"] = param(torch.linalg.inv(A.double()).T.float())
            layer[f"{block}.{mod}.matrix_right_inv"] = param(torch.linalg.inv(B.double()).T.float())
            layer[f"{block}.{mod}.diag_scale"] = param(s)
            twin[f"{pre}{block}.{mod}.left.matrix"] = A
            twin[f"{pre}{block}.{mod}.right.matrix"] = B
            twin[f"{pre}{block}.{mod}.diag_scale"] = s

        def single(mod, n):
            M = mat(n)
            layer[f"self_attn.{mod}.matrix"] = param(M)
            layer[f"self_attn.{mod}.matrix_inv_t"] = param(torch.linalg.inv(M.double()).T.float())
            twin[f"{pre}self_attn.{mod}.f.matrix"] = M

        kron("self_attn", "ln_trans", E)
        kron("mlp", "up_gate_trans", E)
        kron("mlp", "down_trans", F)
        single("o_trans", H)
        single("vcache_trans", d)
        single("kcache_trans", d)
        lin = {"self_attn": [("q", H * d), ("k", KV * d), ("v", KV * d), ("o", E)],
               "mlp": [("up", F), ("gate", F), ("down", E)]}
        for block, ls in lin.items():
            for name, out in ls:
                for mm in ("max", "min"):
                    w = 2.0 + 3.0 * torch.rand(out, 1, generator=g)
                    a = 2.0 + 3.0 * torch.rand(1, generator=g)
                    layer[f"{block}.{name}_proj.clip_factor_w_{mm}"] = param(w)
                    layer[f"{block}.{name}_proj.act_quantizer.clip_factor_a_{mm}"] = param(a)
                    twin[f"{pre}{block}.wq_{name}.clip_factor_w_{mm}"] = w
                    twin[f"{pre}{block}.aq_{name}.clip_factor_a_{mm}"] = a
        for kv in ("k", "v"):
            for mm in ("max", "min"):
                a = 2.0 + 3.0 * torch.rand(1, generator=g)
                layer[f"self_attn.{kv}_cache_quantizer.clip_factor_a_{mm}"] = param(a)
                twin[f"{pre}self_attn.{kv}_quant.clip_factor_a_{mm}"] = a
        zoo[i] = layer
    torch.save(zoo, args.out)
    save_file({k: v.contiguous() for k, v in twin.items()}, args.twin,
              metadata={"format": "flatquant-transforms", "format_version": "2"})
    print(f"wrote {args.out} ({len(zoo)} layers) and {args.twin} ({len(twin)} tensors)")


if __name__ == "__main__":
    main()
