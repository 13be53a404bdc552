#!/usr/bin/env bash
# Regenerates the flatness figures of docs/img (stories260K, layer 2) from an artifact (default: the
# FlatQuant artifact of stories260K). Usage: scripts/plot_docs.sh [ART_DIR] [BUILD_DIR]
set -euo pipefail
art=${1:-/tmp/res260/flatquant}
build=${2:-build}
root=$(cd "$(dirname "$0")/.." && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$build/flatquant" plot flatness --model "$root/.cache/models/stories260K" --artifact "$art" --layer 2 \
  --tokens 2048 --out "$tmp" --width 900 --height 420
mkdir -p "$root/docs/img"
cp "$tmp"/flatness_stories260K_layer2_*.png "$tmp"/flatness_stories260K_layer2_*.csv "$root/docs/img/"
ls -la "$root"/docs/img/flatness_stories260K_layer2_*
