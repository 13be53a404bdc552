#!/usr/bin/env bash
# The GPU machine has no Debian -dev packages and cannot install any. This copies the few build dependencies
# (headers, the two shared libraries, GoogleTest, their CMake configs) from this machine's Debian packages into
# an ignored prefix, .carry/deps, laid out like /usr, to be carried with device calls and given to CMake as
# -DCMAKE_PREFIX_PATH=$PWD/.carry/deps. Nothing of it is committed.
set -euo pipefail
cd "$(dirname "$0")/../.."
D=.carry/deps
A=lib/x86_64-linux-gnu
rm -rf "$D" && mkdir -p "$D/include" "$D/$A/cmake" "$D/share/cmake"
cp -r /usr/include/nlohmann /usr/include/CLI /usr/include/fmt /usr/include/gtest /usr/include/gmock "$D/include/"
cp /usr/include/pcre2.h "$D/include/"
cp -a /usr/$A/libfmt.so* /usr/$A/libpcre2-8.so* /usr/$A/libgtest*.a /usr/$A/libgmock*.a "$D/$A/"
cp -r /usr/$A/cmake/fmt /usr/$A/cmake/GTest "$D/$A/cmake/"
cp -r /usr/share/cmake/nlohmann_json /usr/share/cmake/CLI11 "$D/share/cmake/"
du -sh "$D"
