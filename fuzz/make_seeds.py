#!/usr/bin/env python3
"""Writes the committed seed corpora fuzz/corpus/<target>/: a few small valid files per reader (built here, or
cut down from the real stories260K / Llama-2 files and the test fixtures) and a few edge cases (truncated,
empty). Re-run only to regenerate them: python3 fuzz/make_seeds.py [data dir, default ../shared/data]."""
import json
import os
import struct
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "..", "shared", "data")
OUT = os.path.join(ROOT, "fuzz", "corpus")


def put(target, name, data):
    d = os.path.join(OUT, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def read(path):
    with open(path, "rb") as f:
        return f.read()


def f32s(n, scale=0.01, start=0):
    return b"".join(struct.pack("<f", ((i + start) % 17 - 8) * scale) for i in range(n))


# ---- safetensors ----
def safetensors(tensors, metadata=None):
    """tensors: [(name, dtype, shape, bytes)] -> file bytes (8-byte aligned header)."""
    header, data = {}, b""
    if metadata is not None:
        header["__metadata__"] = metadata
    for name, dtype, shape, raw in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + data


def seeds_safetensors():
    put("safetensors", "dtypes.safetensors", safetensors([
        ("a.f32", "F32", [2, 3], f32s(6)),
        ("b.f16", "F16", [4], struct.pack("<4H", 0x3C00, 0x8001, 0x7C00, 0x7E00)),
        ("c.bf16", "BF16", [2], struct.pack("<2H", 0x3F80, 0xFF80)),
        ("d.f64", "F64", [1], struct.pack("<d", 1.5)),
        ("e.i8", "I8", [3], bytes([0, 0x7F, 0x80])),
        ("f.u8", "U8", [2], bytes([0, 255])),
        ("g.i16", "I16", [1], struct.pack("<h", -5)),
        ("h.i32", "I32", [1], struct.pack("<i", -7)),
        ("i.i64", "I64", [1], struct.pack("<q", 1 << 40)),
        ("j.bool", "BOOL", [2], bytes([0, 1])),
        ("k.scalar", "F32", [], struct.pack("<f", 2.0)),
        ("l.empty", "F32", [0, 4], b""),
    ], {"format": "pt"}))
    put("safetensors", "empty_header.safetensors", safetensors([]))
    put("safetensors", "one.safetensors", safetensors([("w", "F32", [1], struct.pack("<f", 1.0))]))
    st = os.path.join(ROOT, "tests", "data", "models", "tiny_llama3", "model.safetensors")
    if os.path.exists(st):
        raw = read(st)
        n = struct.unpack("<Q", raw[:8])[0]
        put("safetensors", "tiny_llama3_truncated.safetensors", raw[: 8 + n + 64])
    put("safetensors", "empty.safetensors", b"")


# ---- GGUF ----
def gstr(s):
    s = s.encode() if isinstance(s, str) else s
    return struct.pack("<Q", len(s)) + s


class Gguf:
    def __init__(self, version=3, alignment=32):
        self.kv, self.n_kv, self.tensors, self.version, self.alignment = b"", 0, [], version, alignment

    def add(self, key, typ, payload):
        self.kv += gstr(key) + struct.pack("<I", typ) + payload
        self.n_kv += 1

    def u32(self, k, v): self.add(k, 4, struct.pack("<I", v))
    def f32(self, k, v): self.add(k, 6, struct.pack("<f", v))
    def s(self, k, v): self.add(k, 8, gstr(v))
    def b(self, k, v): self.add(k, 7, struct.pack("<B", v))
    def strs(self, k, v): self.add(k, 9, struct.pack("<IQ", 8, len(v)) + b"".join(gstr(x) for x in v))
    def f32s(self, k, v): self.add(k, 9, struct.pack("<IQ", 6, len(v)) + b"".join(struct.pack("<f", x) for x in v))
    def i32s(self, k, v): self.add(k, 9, struct.pack("<IQ", 5, len(v)) + b"".join(struct.pack("<i", x) for x in v))

    def tensor(self, name, ne, typ, raw):
        self.tensors.append((name, ne, typ, raw))

    def bytes(self):
        out = b"GGUF" + struct.pack("<IQQ", self.version, len(self.tensors), self.n_kv) + self.kv
        data, infos = b"", b""
        for name, ne, typ, raw in self.tensors:
            data += b"\0" * (-len(data) % self.alignment)
            infos += gstr(name) + struct.pack("<I", len(ne)) + b"".join(struct.pack("<Q", x) for x in ne)
            infos += struct.pack("<IQ", typ, len(data))
            data += raw
        out += infos
        out += b"\0" * (-len(out) % self.alignment)
        return out + data


def f16(x):
    return struct.pack("<e", x)


def q8_0(n):  # blocks of 32: f16 d, 32 x i8
    return b"".join(f16(0.01) + bytes((j * 7 + b) % 256 for j in range(32)) for b in range(n // 32))


def q4_0(n):  # f16 d, 16 bytes
    return b"".join(f16(0.02) + bytes((j * 13 + b) % 256 for j in range(16)) for b in range(n // 32))


def q4_1(n):  # f16 d, f16 m, 16 bytes
    return b"".join(f16(0.02) + f16(-0.1) + bytes((j * 5 + b) % 256 for j in range(16)) for b in range(n // 32))


F32, F16, Q4_0, Q4_1, Q8_0, BF16 = 0, 1, 2, 3, 8, 30


def llama_gguf():
    """1-layer llama, E = F = 32, 2 heads of 16, 1 KV head, SentencePiece vocab of 8: every dequantizable type."""
    g = Gguf()
    g.s("general.architecture", "llama")
    g.u32("llama.embedding_length", 32)
    g.u32("llama.block_count", 1)
    g.u32("llama.feed_forward_length", 32)
    g.u32("llama.attention.head_count", 2)
    g.u32("llama.attention.head_count_kv", 1)
    g.u32("llama.context_length", 16)
    g.f32("llama.attention.layer_norm_rms_epsilon", 1e-5)
    g.f32("llama.rope.freq_base", 10000.0)
    toks = ["<unk>", "<s>", "</s>", "<0x0A>", "\u2581a", "b", "\u2581ab", "c"]
    g.s("tokenizer.ggml.model", "llama")
    g.strs("tokenizer.ggml.tokens", toks)
    g.f32s("tokenizer.ggml.scores", [0, 0, 0, 0, -1, -2, -3, -4])
    g.i32s("tokenizer.ggml.token_type", [2, 3, 3, 6, 1, 1, 1, 1])
    g.u32("tokenizer.ggml.bos_token_id", 1)
    g.u32("tokenizer.ggml.eos_token_id", 2)
    g.b("tokenizer.ggml.add_bos_token", 1)
    g.tensor("token_embd.weight", [32, 8], Q4_0, q4_0(256))
    g.tensor("blk.0.attn_norm.weight", [32], F32, f32s(32, 0.1, 1))
    g.tensor("blk.0.attn_q.weight", [32, 32], Q8_0, q8_0(1024))
    g.tensor("blk.0.attn_k.weight", [32, 16], Q4_1, q4_1(512))
    g.tensor("blk.0.attn_v.weight", [32, 16], F16, b"".join(f16((i % 9 - 4) * 0.01) for i in range(512)))
    g.tensor("blk.0.attn_output.weight", [32, 32], BF16, b"".join(struct.pack("<H", 0x3C00 + i % 64) for i in range(1024)))
    g.tensor("blk.0.ffn_norm.weight", [32], F32, f32s(32, 0.1, 2))
    g.tensor("blk.0.ffn_gate.weight", [32, 32], Q4_0, q4_0(1024))
    g.tensor("blk.0.ffn_up.weight", [32, 32], Q8_0, q8_0(1024))
    g.tensor("blk.0.ffn_down.weight", [32, 32], Q4_1, q4_1(1024))
    g.tensor("output_norm.weight", [32], F32, f32s(32, 0.1, 3))
    return g.bytes()


def qwen2_gguf():
    """1-layer qwen2 (biases), E = F = 4, 2 heads of 2, byte-level BPE vocab, all F32, v2 file."""
    g = Gguf(version=2)
    g.s("general.architecture", "qwen2")
    for k, v in [("embedding_length", 4), ("block_count", 1), ("feed_forward_length", 4),
                 ("attention.head_count", 2), ("attention.head_count_kv", 2), ("context_length", 8)]:
        g.u32("qwen2." + k, v)
    g.s("tokenizer.ggml.model", "gpt2")
    g.s("tokenizer.ggml.pre", "qwen2")
    g.strs("tokenizer.ggml.tokens", ["a", "b", "\u0120", "ab", "\u0120a", "<|endoftext|>"])
    g.i32s("tokenizer.ggml.token_type", [1, 1, 1, 1, 1, 3])
    g.strs("tokenizer.ggml.merges", ["a b", "\u0120 a"])
    g.u32("tokenizer.ggml.eos_token_id", 5)
    g.s("tokenizer.chat_template", "{% for m in messages %}{{ m['content'] }}{% endfor %}")
    g.tensor("token_embd.weight", [4, 6], F32, f32s(24))
    names = [("attn_norm.weight", [4]), ("attn_q.weight", [4, 4]), ("attn_k.weight", [4, 4]),
             ("attn_v.weight", [4, 4]), ("attn_q.bias", [4]), ("attn_k.bias", [4]), ("attn_v.bias", [4]),
             ("attn_output.weight", [4, 4]), ("ffn_norm.weight", [4]), ("ffn_gate.weight", [4, 4]),
             ("ffn_up.weight", [4, 4]), ("ffn_down.weight", [4, 4])]
    for i, (n, ne) in enumerate(names):
        cnt = 1
        for x in ne:
            cnt *= x
        g.tensor("blk.0." + n, ne, F32, f32s(cnt, 0.01, i))
    g.tensor("output_norm.weight", [4], F32, f32s(4))
    g.tensor("output.weight", [4, 6], F32, f32s(24, 0.02))
    return g.bytes()


def seeds_gguf():
    put("gguf", "llama_quant.gguf", llama_gguf())
    put("gguf", "qwen2_f32_v2.gguf", qwen2_gguf())
    g = Gguf(alignment=64)
    g.u32("general.alignment", 64)
    g.add("u8", 0, b"\x01"); g.add("i8", 1, b"\xff"); g.add("u16", 2, b"\x01\x00"); g.add("i16", 3, b"\xff\xff")
    g.add("i32", 5, struct.pack("<i", -3)); g.add("u64", 10, struct.pack("<Q", 1 << 40))
    g.add("i64", 11, struct.pack("<q", -1)); g.add("f64", 12, struct.pack("<d", 0.5))
    g.add("arr_of_arr", 9, struct.pack("<IQ", 9, 2) + struct.pack("<IQ", 4, 1) + struct.pack("<I", 7) +
          struct.pack("<IQ", 8, 1) + gstr("x"))
    g.add("empty_arr", 9, struct.pack("<IQ", 6, 0))
    g.tensor("t", [3, 1, 1, 1], F32, f32s(3))
    put("gguf", "metadata_types.gguf", g.bytes())
    full = llama_gguf()
    put("gguf", "truncated.gguf", full[: len(full) // 3])
    put("gguf", "magic_only.gguf", b"GGUF")


# ---- llama2.c ----
def llama2c_checkpoint(dim, hidden, layers, heads, kv_heads, vocab, seq, shared=True):
    hd = dim // heads
    kv = kv_heads * hd
    n = (vocab * dim + layers * dim + layers * dim * dim + 2 * layers * kv * dim + layers * dim * dim +
         layers * dim + 3 * layers * hidden * dim + dim + seq * hd + (0 if shared else vocab * dim))
    return struct.pack("<7i", dim, hidden, layers, heads, kv_heads, vocab if shared else -vocab, seq) + f32s(n)


def llama2c_tokenizer(pieces, max_len=None):
    max_len = max_len or max(len(p) for p in pieces)
    out = struct.pack("<i", max_len)
    for i, p in enumerate(pieces):
        out += struct.pack("<fi", -float(i), len(p)) + p
    return out


def seeds_llama2c():
    put("llama2c_checkpoint", "tiny.bin", llama2c_checkpoint(8, 16, 1, 2, 1, 8, 4))
    put("llama2c_checkpoint", "tiny_unshared.bin", llama2c_checkpoint(4, 4, 2, 1, 1, 5, 2, shared=False))
    bin_ = os.path.join(DATA, "stories260K", "stories260K.bin")
    if os.path.exists(bin_):
        put("llama2c_checkpoint", "stories260K_head.bin", read(bin_)[:2048])
    put("llama2c_checkpoint", "header_only.bin", struct.pack("<7i", 8, 16, 1, 2, 1, 8, 4))
    pieces = [b"<unk>", b"\n<s>\n", b"\n</s>\n", b"<0x0A>", b"<0xE4>", b" a", b"b", b" ab", b"\xc3\xa9"]
    put("llama2c_tokenizer", "tiny.bin", llama2c_tokenizer(pieces))
    tok = os.path.join(DATA, "stories260K", "tok512.bin")
    if os.path.exists(tok):
        raw = read(tok)
        put("llama2c_tokenizer", "tok512.bin", raw)
        put("llama2c_tokenizer", "tok512_truncated.bin", raw[:1000])
    put("llama2c_tokenizer", "empty.bin", b"")


# ---- SentencePiece ----
def varint(x):
    out = b""
    while True:
        b = x & 0x7F
        x >>= 7
        if x:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])


def read_varint(b, i):
    x, s = 0, 0
    while True:
        c = b[i]
        i += 1
        x |= (c & 0x7F) << s
        s += 7
        if c < 0x80:
            return x, i


def pb_fields(b):
    """Top-level (field, wire, raw field bytes) of a protobuf message."""
    i, out = 0, []
    while i < len(b):
        start = i
        key, i = read_varint(b, i)
        f, w = key >> 3, key & 7
        if w == 0:
            _, i = read_varint(b, i)
        elif w == 1:
            i += 8
        elif w == 5:
            i += 4
        elif w == 2:
            n, i = read_varint(b, i)
            i += n
        else:
            raise ValueError("wire type %d" % w)
        out.append((f, w, b[start:i]))
    return out


def ld(field, payload):
    return varint(field << 3 | 2) + varint(len(payload)) + payload


def sp_piece(piece, score, typ=1):
    return ld(1, ld(1, piece.encode()) + varint(2 << 3 | 5) + struct.pack("<f", score) +
              (varint(3 << 3) + varint(typ) if typ != 1 else b""))


def seeds_sentencepiece():
    model = os.path.join(DATA, "llama2_tokenizer", "tokenizer.model")
    if os.path.exists(model):
        fields = pb_fields(read(model))
        pieces = [raw for f, _, raw in fields if f == 1]
        rest = [raw for f, _, raw in fields if f != 1]
        # <unk>, <s>, </s>, the 256 byte pieces, then the 120 best-scored merges.
        put("sentencepiece", "llama2_cut.model", b"".join(pieces[:379]) + b"".join(rest))
    trainer = ld(2, varint(3 << 3) + varint(2) + varint(35 << 3) + varint(0) + varint(40 << 3) + varint(0) +
                 varint(41 << 3) + varint(1) + varint(42 << 3) + varint(2))
    norm = ld(3, ld(1, b"identity") + varint(3 << 3) + varint(1) + varint(4 << 3) + varint(0))
    pieces = [sp_piece("<unk>", 0, 2), sp_piece("<s>", 0, 3), sp_piece("</s>", 0, 3)]
    pieces += [sp_piece("<0x%02X>" % b, 0, 6) for b in (0x0A, 0x20, 0xC3, 0xA9)]
    pieces += [sp_piece(p, -i, 1) for i, p in enumerate(["\u2581", "a", "b", "\u2581a", "ab", "\u2581ab"])]
    pieces += [sp_piece("<user>", 0, 4)]
    put("sentencepiece", "tiny.model", b"".join(pieces) + trainer + norm)
    put("sentencepiece", "unigram.model", b"".join(pieces[:3]) + ld(2, varint(3 << 3) + varint(1)))
    put("sentencepiece", "empty.model", b"")


# ---- JSON-ish inputs taken from the repository ----
def seeds_json():
    models = os.path.join(ROOT, ".cache", "models")
    for name in ["stories260K", "SmolLM2-135M-Instruct"]:
        p = os.path.join(models, name, "config.json")
        if os.path.exists(p):
            put("config_json", name + ".json", read(p))
    for name in ["tiny_llama3", "tiny_qwen2"]:
        put("config_json", name + ".json", read(os.path.join(ROOT, "tests", "data", "models", name, "config.json")))
    put("config_json", "empty_object.json", "{}")
    p = os.path.join(models, "stories260K", "tokenizer.json")
    if os.path.exists(p):
        put("tokenizer_json", "stories260K.json", read(p))
    for name in ["bytelevel_llama3_mini", "bytelevel_qwen2_mini", "llama2_legacy_mini"]:
        put("tokenizer_json", name + ".json", read(os.path.join(ROOT, "tests", "data", "tokenizer", name + ".json")))
    put("tokenizer_json", "minimal.json", json.dumps({
        "model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": ["a b"]},
        "added_tokens": [{"id": 3, "content": "<s>", "special": True}]}))
    for f in sorted(os.listdir(os.path.join(ROOT, "recipes"))):
        put("recipe_json", f, read(os.path.join(ROOT, "recipes", f)))
    put("recipe_json", "partial.json", '{"name": "mine", "w_bits": 8, "weight_quantizer": "gptq", "gptq": {"blocksize": 64}}')
    for f in sorted(os.listdir(os.path.join(ROOT, "tests", "data", "qa"))):
        if f.endswith(".jsonl"):
            put("qa_jsonl", f, read(os.path.join(ROOT, "tests", "data", "qa", f)))
    put("qa_jsonl", "blank_lines.jsonl", "\n \n\t\n")


# ---- quantized artifact (docs/artifact_format.md) ----
ART_SEP = b"\0FQ-FILE\0"  # fuzz/fuzz_artifact.cpp: <mode> manifest.json SEP model.safetensors [SEP config.json]


def art_config(model_type, tied):
    arch = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}[model_type]
    c = {"architectures": [arch], "model_type": model_type, "vocab_size": 8, "hidden_size": 8,
         "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 4,
         "intermediate_size": 16, "max_position_embeddings": 16, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
         "rope_scaling": None, "tie_word_embeddings": tied, "hidden_act": "silu", "torch_dtype": "float32",
         "dtype": "float32", "bos_token_id": 1, "eos_token_id": 2}
    if model_type == "llama":
        c.update({"attention_bias": False, "mlp_bias": False})
    else:
        c["use_sliding_window"] = False
    return c


def art_recipe(name, w, a, kv):
    return {"name": name, "w_bits": w, "w_sym": True, "w_group": -1, "a_bits": a, "a_sym": True,
            "k_bits": kv, "k_sym": False, "v_bits": kv, "v_sym": False, "lwc": w < 16, "lac": a < 16,
            "add_diag": True, "diag_alpha": 0.3, "param": "svd", "train_transforms": True,
            "weight_quantizer": "rtn",
            "gptq": {"blocksize": 128, "percdamp": 0.01, "act_order": False, "mse": False}}


def art_tensors(cfg, w_bits, transforms):
    """The tensor list of a 1-layer artifact for cfg (E 8, H 2 x d 4, KV 1, F 16, V 8)."""
    E, F, V, d = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"], cfg["head_dim"]
    H, KV = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    t, k = [], [0]

    def f32(name, shape):
        n = 1
        for x in shape:
            n *= x
        k[0] += 1
        t.append((name, "F32", shape, f32s(n, 0.05, k[0])))

    f32("model.embed_tokens.weight", [V, E])
    f32("model.norm.weight", [E])
    if not cfg["tie_word_embeddings"]:
        f32("lm_head.weight", [V, E])
    p = "model.layers.0."
    f32(p + "input_layernorm.weight", [E])
    f32(p + "post_attention_layernorm.weight", [E])
    shapes = {"q": (H * d, E), "k": (KV * d, E), "v": (KV * d, E), "o": (E, H * d), "gate": (F, E), "up": (F, E),
              "down": (E, F)}
    for lin in ["q", "k", "v", "o", "gate", "up", "down"]:
        out, inn = shapes[lin]
        lp = p + ("self_attn." if lin in "qkvo" else "mlp.") + lin + "_proj"
        if w_bits == 4:
            t.append((lp + ".qweight", "U8", [out, inn // 2], bytes((i * 37 + 11) % 256 for i in range(out * inn // 2))))
            f32(lp + ".scales", [out])
        elif w_bits == 8:
            t.append((lp + ".qweight", "I8", [out, inn], bytes((i * 29 + 3) % 256 for i in range(out * inn))))
            f32(lp + ".scales", [out])
        else:
            f32(lp + ".weight", [out, inn])
        if lin in "qkv" and cfg["model_type"] == "qwen2":
            f32(lp + ".bias", [out])
        t.append((lp + ".act_clip", "F32", [2], struct.pack("<2f", 0.9, 0.8)))
    if transforms:
        for name, (l, r) in [("self_attn.ln_trans", (2, 4)), ("mlp.up_gate_trans", (4, 2)), ("mlp.down_trans", (4, 4))]:
            f32(p + name + ".left", [l, l])
            f32(p + name + ".right", [r, r])
        f32(p + "self_attn.o_trans.matrix", [H, H])
        f32(p + "self_attn.kcache_trans.matrix", [d, d])
        f32(p + "self_attn.kcache_trans.inv_t", [d, d])
    t.append((p + "self_attn.k_cache.clip", "F32", [2], struct.pack("<2f", 0.95, 0.85)))
    t.append((p + "self_attn.v_cache.clip", "F32", [2], struct.pack("<2f", 1.0, 1.0)))
    return t


def art_manifest(cfg, recipe, files, method="flatquant", version=1):
    import hashlib
    m = {"format": "flatquant-artifact", "format_version": version, "writer": "flatquant 0.1.0",
         "method": method, "recipe": recipe, "model_config": cfg, "tokenizer_files": [],
         "files": {n: {"bytes": len(b), "sha256": hashlib.sha256(b).hexdigest()} for n, b in files.items()},
         "calibration": {"epochs": 1, "nsamples": 4}, "layer_losses": [0.25]}
    return json.dumps(m, indent=1).encode()


def art_input(mode, manifest, tensors, config=None):
    out = bytes([mode]) + manifest + ART_SEP + tensors
    assert out.count(ART_SEP) == 1
    return out + (ART_SEP + config if config is not None else b"")


def seeds_artifact():
    # Mode 0: the harness recomputes the checksums; config.json is the manifest's model_config unless given.
    cfg = art_config("llama", True)
    st = safetensors(art_tensors(cfg, 4, True), {"format": "pt", "flatquant": "flatquant-artifact"})
    cj = json.dumps(cfg, indent=2).encode()
    rec = art_recipe("w4a4kv4", 4, 4, 4)
    man = art_manifest(cfg, rec, {"model.safetensors": st, "config.json": cj})
    put("artifact", "w4a4kv4_llama.bin", art_input(0, man, st))
    # Mode 7: written unchanged; the checksums above match these exact bytes, so it loads too.
    put("artifact", "w4a4kv4_llama_exact.bin", art_input(7, man, st, cj))
    # ... and with the checksum of another tensor file of the same size, and a truncated tensor file: the
    # sha256 and size checks.
    flipped = st[:-1] + bytes([st[-1] ^ 1])
    put("artifact", "stale_sha256.bin", art_input(7, art_manifest(cfg, rec, {"model.safetensors": flipped, "config.json": cj}), st, cj))
    put("artifact", "truncated_tensors.bin", art_input(0, man, st[: len(st) // 2]))
    put("artifact", "format_version_2.bin", art_input(0, art_manifest(cfg, rec, {"model.safetensors": st, "config.json": cj}, version=2), st))
    # Qwen2 (q/k/v biases), untied head, 8-bit weights, no transforms.
    cfg = art_config("qwen2", False)
    st = safetensors(art_tensors(cfg, 8, False))
    put("artifact", "w8a8_qwen2.bin", art_input(0, art_manifest(cfg, art_recipe("w8a8", 8, 8, 16), {"model.safetensors": st, "config.json": b""}), st))
    # 16-bit weights with transforms (method "fp").
    cfg = art_config("llama", True)
    st = safetensors(art_tensors(cfg, 16, True))
    put("artifact", "w16a16kv4.bin", art_input(0, art_manifest(cfg, art_recipe("w16a16kv4", 16, 16, 4), {"model.safetensors": st, "config.json": b""}, method="fp"), st))
    put("artifact", "manifest_only.bin", b"\0" + man)


if __name__ == "__main__":
    seeds_safetensors()
    seeds_gguf()
    seeds_llama2c()
    seeds_sentencepiece()
    seeds_json()
    seeds_artifact()
