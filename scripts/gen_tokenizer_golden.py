#!/usr/bin/env python3
"""Golden token ids for the C++ tokenizers (tests/tok/test_tokenizer_golden.cpp).

Runs where the reference libraries are installed (the GPU machine has tokenizers 0.23, sentencepiece 0.2.2 and
transformers 5.17; no network is needed). For every tokenizer source it writes
tests/data/tokenizer/golden_<name>.json:

    {"tokenizer": "<prefix>:<path>", "lossless": bool, "cases": [{"text": ..., "ids": [...], "decoded": ...}]}

ids come from `tokenizers.Tokenizer.from_file(f).encode(text, add_special_tokens=False).ids` for tokenizer.json
and from `sentencepiece.SentencePieceProcessor(model_file=f).encode(text)` for .model; "decoded" is the same
library's decode(ids) (skip_special_tokens=False for tokenizers).

Source paths carry a prefix that the C++ test resolves the same way:
    repo:PATH    relative to the repository root
    data:PATH    relative to $FLATQUANT_DATA (default <repo>/../shared/data)
    models:PATH  relative to $FLATQUANT_MODELS (default <repo>/.cache/models; ignored by git)

Cases: the sample text (tests/data/tokenizer/sample.txt, written by --write-sample) cut at line boundaries into
up to 48 consecutive chunks (one line each for the committed sample), a few short probes, and the whole text.

Extra outputs:
  --convert-llama2 SRC   converts a Llama-2 tokenizer.model into tokenizer.json with transformers 5
        (LlamaTokenizerFast.from_pretrained on a directory holding only tokenizer.model, legacy=False: Metaspace
        pre-tokenizer with prepend_scheme "first", split false, byte_fallback, decoder Replace/ByteFallback/Fuse/
        Strip). legacy=False is what current transformers produces and it agrees with sentencepiece on plain
        text; legacy=True differs only after special tokens written in the text (it prepends another U+2581).
        Written to tests/data/tokenizer/llama2_hf.json when under 2.5 MB, else to <repo>/.cache/tokenizer/
        (ignored) and referenced with a "cache:" note in the output.
        A legacy-layout mini variant (normalizer Sequence[Prepend, Replace] with no pre-tokenizer, the layout of
        the official meta-llama tokenizer.json) is derived from it as well.
  --byte-level BASE      builds byte-level variants of a byte-level tokenizer.json (e.g. the SmolLM2 one, as
        models:PATH or repo:PATH) by swapping its pre-tokenizer for GPT-2 (ByteLevel use_regex), Llama-3 and Qwen2
        (Split regex + ByteLevel use_regex=false; Llama-3 with ignore_merges, Qwen2 with an NFC normalizer) and
        keeping its own; each is cut to the first --mini-merges merges (vocabulary: single characters, added
        tokens and the results of the kept merges) so that they stay small enough to commit.

Example (from the repository root):
    python3 scripts/gen_tokenizer_golden.py --write-sample \
        --source llama2_spm=data:llama2_tokenizer/tokenizer.model \
        --convert-llama2 data:llama2_tokenizer/tokenizer.model \
        --byte-level models:SmolLM2-135M-Instruct/tokenizer.json \
        --source smollm2=models:SmolLM2-135M-Instruct/tokenizer.json
"""

import argparse
import copy
import json
import math
import os
import shutil
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT_DIR = os.path.join(REPO, "tests", "data", "tokenizer")
SAMPLE = os.path.join(OUT_DIR, "sample.txt")

# Pre-tokenizer regexes, as written in the published tokenizer.json files.
GPT2_REGEX = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
# meta-llama/Meta-Llama-3-8B tokenizer.json (also Llama-3.1/3.2/3.3).
LLAMA3_REGEX = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
                r"""|\s*[\r\n]+|\s+(?!\S)|\s+""")
# Qwen/Qwen2.5-* tokenizer.json (single digits instead of runs of up to three).
QWEN2_REGEX = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
               r"""|\s*[\r\n]+|\s+(?!\S)|\s+""")

MAX_COMMIT_BYTES = int(2.5 * 1024 * 1024)


def resolve(src):
    prefix, _, rel = src.partition(":")
    if prefix == "repo":
        return os.path.join(REPO, rel)
    if prefix == "data":
        base = os.environ.get("FLATQUANT_DATA", os.path.join(REPO, "..", "shared", "data"))
        return os.path.join(base, rel)
    if prefix == "models":
        return os.path.join(os.environ.get("FLATQUANT_MODELS", os.path.join(REPO, ".cache", "models")), rel)
    sys.exit(f"{src}: expected a repo:, data: or models: prefix")


def repo_ref(path):
    return "repo:" + os.path.relpath(path, REPO).replace(os.sep, "/")


# ------------------------------------------------------------------------------------------------ the sample

SAMPLE_LINES = [
    "Once upon a time, there was a little girl named Lily. She loved to play outside in the park.",
    "The quick brown fox jumps over the lazy dog. THE QUICK BROWN FOX! The Quick Brown Fox?",
    "It's John's book; they're sure we'll see what you've done, and I'm not sure it isn't Lily's. He'd say 'don't'.",
    "HELLO world's 123 !! MiXeD CaSe iPhone McDonald's camelCaseIdentifier snake_case_name",
    "Numbers: 1234567 and 3.14159, 2,718,281,828; year 2024; -42; +7; 0x1F; 1e-9; 12:30; 100% 99.9%.",
    "Phone +1 (555) 010-9999, version v1.2.3-rc4, IPv4 192.168.0.1, date 2024-05-17T12:00:00Z.",
    "def fibonacci(n: int) -> int:",
    "    \"\"\"Return the n-th Fibonacci number.\"\"\"",
    "    if n < 2:",
    "        return n",
    "    return fibonacci(n - 1) + fibonacci(n - 2)",
    "",
    "#include <vector>",
    "template <typename T> struct Box { T value; };",
    "int main(int argc, char** argv) {",
    "\tstd::vector<int> v{1, 2, 3};",
    "\tfor (auto& x : v) { x *= 2; }  // double it",
    "\treturn v.size() == 3 ? 0 : 1;",
    "}",
    "Emoji: \U0001F600 \U0001F917 \U0001F44D\U0001F3FD \U0001F1EB\U0001F1F7 \U0001F469\u200d\U0001F4BB "
    "\U0001F468\u200d\U0001F469\u200d\U0001F467\u200d\U0001F466 \u2764\ufe0f \U0001F3F3\ufe0f\u200d\U0001F308 "
    "\u2728\U0001F525\U0001F4AF",
    "中文：今天天气很好，我们去公园散步吧。日本語：こんにちは世界、カタカナ。한국어: 안녕하세요 세계",
    "العربية: مرحبا بالعالم، كيف حالك اليوم؟ Русский: Привет, мир! Ελληνικά: Γειά σου Κόσμε.",
    "Accents: café naïve résumé Zoë Ångström façade jalapeño São Paulo Kraków Dvořák.",
    "Whitespace runs:   three spaces,\ttab,\t\ttwo tabs, trailing spaces   ",
    "   \n\n  indented after blank lines",
    "",
    "",
    "Mixed\r\nCRLF line\r\nendings and a lone\rcarriage return.",
    "Special tokens as text: <s> </s> <unk> <|endoftext|> <|im_start|>user<|im_end|> <|begin_of_text|> <pad>",
    "Punctuation!!! ??? ... --- *** ### @@@ $$$ %%% ^^^ &&& ((())) [[[]]] {{{}}} <<<>>> ~~~ ``` '''",
    "URLs: https://example.com/path?q=1&r=two#frag and mail@example.org; path C:\\Users\\me\\file.txt",
    "Math: x² + y² = z², ∑ᵢ aᵢ, √2 ≈ 1.41421, π ≈ 3.14159, ∞ ≠ −1, ½ ¼ ¾, H₂O.",
    "Quotes “curly” ‘single’ «guillemets» „low“ — em dash – en dash … ellipsis · middle dot",
    "Repeated: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa bbbbbbbbbbbbbbbb 0000000000000000 !!!!!!!!!!!!!!!!",
    "Combining: e\u0301 a\u0300 n\u0303 (decomposed) vs é à ñ (precomposed); Hangul jamo \u1100\u1161\u11a8.",
    "Last line without a newline: the end.",
]


def sample_cases(text, n_chunks=48):
    lines = text.splitlines(keepends=True)
    per = max(1, math.ceil(len(lines) / n_chunks))
    cases = ["".join(lines[i:i + per]) for i in range(0, len(lines), per)]
    cases += ["Hello world's 123 !!", " leading space", "", text]
    return cases


# ------------------------------------------------------------------------------------------------- goldens

def golden(name, src, cases):
    path = resolve(src)
    if path.endswith(".model"):
        import sentencepiece as spm
        sp = spm.SentencePieceProcessor(model_file=path)
        enc = lambda t: sp.encode(t)
        dec = lambda ids: sp.decode(ids)
    else:
        from tokenizers import Tokenizer
        tok = Tokenizer.from_file(path)
        enc = lambda t: tok.encode(t, add_special_tokens=False).ids
        dec = lambda ids: tok.decode(ids, skip_special_tokens=False)
    out = {"tokenizer": src, "cases": []}
    lossless = True
    for t in cases:
        ids = enc(t)
        d = dec(ids)
        lossless = lossless and d == t
        out["cases"].append({"text": t, "ids": ids, "decoded": d})
    out = {"tokenizer": src, "lossless_on_sample": lossless, "cases": out["cases"]}
    dst = os.path.join(OUT_DIR, f"golden_{name}.json")
    with open(dst, "w", encoding="utf-8") as f:  # one case per line, for readable diffs
        head = {k: v for k, v in out.items() if k != "cases"}
        f.write(json.dumps(head, ensure_ascii=False)[:-1] + ', "cases": [\n')
        f.write(",\n".join(json.dumps(c, ensure_ascii=False, separators=(",", ":")) for c in out["cases"]))
        f.write("\n]}\n")
    n = sum(len(c["ids"]) for c in out["cases"])
    print(f"{dst}: {len(cases)} cases, {n} ids, lossless on sample: {lossless}")


# ------------------------------------------------------------------------------------------- derived files

def write_json(path, obj):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False, separators=(",", ":"))
        f.write("\n")
    return os.path.getsize(path)


def merge_pair(m):
    return m.split(" ", 1) if isinstance(m, str) else list(m)


def mini(tj, n_merges):
    """tokenizer.json cut to its first n_merges merges; ids renumbered densely in the original order."""
    tj = copy.deepcopy(tj)
    model = tj["model"]
    first = [merge_pair(m) for m in model["merges"][:n_merges]]
    added = {a["content"] for a in tj.get("added_tokens", [])}
    keep = {t for t in model["vocab"] if len(t) == 1 or t in added or
            (t.startswith("<0x") and t.endswith(">") and len(t) == 6)}
    # Merges converted from SentencePiece scores are not in creation order: keep the closure of those whose
    # parts are available.
    while True:
        grown = {a + b for a, b in first if a in keep and b in keep} - keep
        if not grown:
            break
        keep |= grown
    merges = [[a, b] for a, b in first if a in keep and b in keep]
    old = sorted(((i, t) for t, i in model["vocab"].items() if t in keep))
    remap = {}
    for new_id, (old_id, t) in enumerate(old):
        remap[old_id] = new_id
    model["vocab"] = {t: remap[i] for i, t in old}
    model["merges"] = merges
    next_id = len(old)
    for a in tj.get("added_tokens", []):
        if a["id"] in remap:
            a["id"] = remap[a["id"]]
        else:  # an added token outside the model vocabulary: after it
            a["id"], next_id = next_id, next_id + 1
    pp = tj.get("post_processor")
    if pp:
        fix_post_processor_ids(pp, model["vocab"], {a["content"]: a["id"] for a in tj.get("added_tokens", [])})
    return tj


def fix_post_processor_ids(pp, vocab, added):
    if pp.get("type") == "Sequence":
        for p in pp.get("processors", []):
            fix_post_processor_ids(p, vocab, added)
    if pp.get("type") == "TemplateProcessing":
        for name, st in pp.get("special_tokens", {}).items():
            st["ids"] = [added.get(t, vocab.get(t, 0)) for t in st["tokens"]]


def byte_level_variants(base_src, n_merges):
    with open(resolve(base_src), encoding="utf-8") as f:
        base = json.load(f)
    bl = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}

    def split(regex):
        return {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": False}

    variants = {
        "own": (None, base.get("pre_tokenizer"), base["model"].get("ignore_merges", False)),
        "gpt2": (None, dict(bl, use_regex=True), False),
        "llama3": (None, {"type": "Sequence", "pretokenizers": [split(LLAMA3_REGEX), bl]}, True),
        "qwen2": ({"type": "NFC"}, {"type": "Sequence", "pretokenizers": [split(QWEN2_REGEX), bl]}, False),
    }
    made = []
    for name, (norm, pre, ignore_merges) in variants.items():
        tj = mini(base, n_merges)
        tj["normalizer"] = norm
        tj["pre_tokenizer"] = pre
        tj["model"]["ignore_merges"] = ignore_merges
        tj["decoder"] = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}
        # Round-trip through the library so that the file is in its canonical (current) layout.
        from tokenizers import Tokenizer
        canon = json.loads(Tokenizer.from_str(json.dumps(tj)).to_str())
        dst = os.path.join(OUT_DIR, f"bytelevel_{name}_mini.json")
        size = write_json(dst, canon)
        print(f"{dst}: {size} bytes")
        made.append((f"bytelevel_{name}_mini", repo_ref(dst)))
    return made


def convert_llama2(src, n_merges):
    from transformers import LlamaTokenizerFast
    with tempfile.TemporaryDirectory() as d:
        shutil.copy(resolve(src), os.path.join(d, "tokenizer.model"))
        tok = LlamaTokenizerFast.from_pretrained(d, legacy=False)
        tj = json.loads(tok.backend_tokenizer.to_str())
    made = []
    dst = os.path.join(OUT_DIR, "llama2_hf.json")
    size = write_json(dst, tj)
    if size <= MAX_COMMIT_BYTES:
        made.append(("llama2_hf", repo_ref(dst)))
        print(f"{dst}: {size} bytes")
    else:
        cache = os.path.join(REPO, ".cache", "tokenizer", "llama2_hf.json")
        os.makedirs(os.path.dirname(cache), exist_ok=True)
        shutil.move(dst, cache)
        print(f"{cache}: {size} bytes (over {MAX_COMMIT_BYTES}, kept out of the repo; no golden written)")
    # The official Llama-2 tokenizer.json layout: Prepend + Replace normalizer, no pre-tokenizer.
    legacy = mini(tj, n_merges)
    legacy["normalizer"] = {"type": "Sequence", "normalizers": [
        {"type": "Prepend", "prepend": "\u2581"},
        {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}]}
    legacy["pre_tokenizer"] = None
    dst = os.path.join(OUT_DIR, "llama2_legacy_mini.json")
    print(f"{dst}: {write_json(dst, legacy)} bytes")
    made.append(("llama2_legacy_mini", repo_ref(dst)))
    return made


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", action="append", default=[], metavar="NAME=PREFIX:PATH",
                    help="a tokenizer.json or .model to write golden_NAME.json for")
    ap.add_argument("--sample", default=SAMPLE, help="sample text (default tests/data/tokenizer/sample.txt)")
    ap.add_argument("--write-sample", action="store_true", help="(re)write the sample text first")
    ap.add_argument("--convert-llama2", metavar="PREFIX:PATH", help="Llama-2 tokenizer.model to convert")
    ap.add_argument("--byte-level", metavar="PREFIX:PATH", help="byte-level tokenizer.json to derive variants from")
    ap.add_argument("--mini-merges", type=int, default=2000, help="merges kept in the derived mini files")
    args = ap.parse_args()

    os.makedirs(OUT_DIR, exist_ok=True)
    if args.write_sample:
        with open(args.sample, "w", encoding="utf-8", newline="") as f:
            f.write("\n".join(SAMPLE_LINES))
    with open(args.sample, encoding="utf-8", newline="") as f:
        cases = sample_cases(f.read())

    jobs = []
    for s in args.source:
        name, _, src = s.partition("=")
        if not src:
            sys.exit(f"--source {s}: expected NAME=PREFIX:PATH")
        jobs.append((name, src))
    if args.convert_llama2:
        jobs += convert_llama2(args.convert_llama2, args.mini_merges)
    if args.byte_level:
        jobs += byte_level_variants(args.byte_level, args.mini_merges)
    for name, src in jobs:
        if not os.path.exists(resolve(src)):
            print(f"skipping {name}: {resolve(src)} not found")
            continue
        golden(name, src, cases)


if __name__ == "__main__":
    main()
