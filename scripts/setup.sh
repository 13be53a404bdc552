#!/usr/bin/env bash
# Installs the build dependencies from Debian when they are missing (idempotent; used by demo.sh and test.sh).
set -euo pipefail
pkgs=(cmake ninja-build g++ pkg-config nlohmann-json3-dev libpcre2-dev libcli11-dev libfmt-dev libgtest-dev
      libbenchmark-dev libtorch-dev gnuplot-nox)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}" >&2
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq >/dev/null
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
