// CalibSettings (--set key=value) and the calibration window sampler. Plain C++ (no LibTorch).
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <random>

#include "calib/calibrate.h"
#include "flatquant/error.h"

namespace fq::calib {
namespace {

// Whole-string integer parse; false on garbage, overflow or an empty string.
bool parse_int(const std::string& s, long long& v) {
  if (s.empty()) return false;
  char* end = nullptr;
  errno = 0;
  v = std::strtoll(s.c_str(), &end, 10);
  return errno == 0 && end == s.c_str() + s.size();
}

bool parse_double(const std::string& s, double& v) {
  if (s.empty()) return false;
  char* end = nullptr;
  errno = 0;
  v = std::strtod(s.c_str(), &end);
  return errno == 0 && end == s.c_str() + s.size() && std::isfinite(v);
}

long long int_in(const std::string& key, const std::string& val, long long lo, long long hi) {
  long long v = 0;
  if (!parse_int(val, v)) fail("--set {}={}: not an integer", key, val);
  if (v < lo || v > hi) fail("--set {}={}: out of range (expected {} .. {})", key, val, lo, hi);
  return v;
}

}  // namespace

void CalibSettings::apply(const std::vector<std::string>& sets) {
  for (const std::string& kv : sets) {
    const size_t eq = kv.find('=');
    if (eq == std::string::npos || eq == 0) fail("--set '{}': expected key=value", kv);
    const std::string key = kv.substr(0, eq), val = kv.substr(eq + 1);
    if (key == "calib.epochs") {
      epochs = static_cast<int>(int_in(key, val, 0, 1000000));
    } else if (key == "calib.nsamples") {
      nsamples = int_in(key, val, 1, 1 << 24);
    } else if (key == "calib.seqlen") {
      seqlen = int_in(key, val, 2, 1 << 24);
    } else if (key == "calib.bsz") {
      bsz = int_in(key, val, 1, 1 << 24);
    } else if (key == "calib.lr") {
      double v = 0;
      if (!parse_double(val, v)) fail("--set {}={}: not a number", key, val);
      if (!(v > 0 && v < 1e3)) fail("--set {}={}: out of range (expected 0 < lr < 1000)", key, val);
      lr = v;
    } else if (key == "calib.amp") {
      if (val != "off" && val != "fp16" && val != "bf16")
        fail("--set {}={}: expected off, fp16 or bf16", key, val);
      amp = val;
    } else if (key == "seed") {
      long long v = 0;
      if (!parse_int(val, v) || v < 0) fail("--set {}={}: expected a non-negative integer", key, val);
      seed = static_cast<uint64_t>(v);
    } else {
      fail("--set {}: unknown key (known: calib.epochs, calib.nsamples, calib.seqlen, calib.bsz, calib.lr, calib.amp, seed)",
           key);
    }
  }
  validate();
}

void CalibSettings::validate() const {
  if (nsamples % bsz != 0)
    fail("--set calib.nsamples={} is not a multiple of calib.bsz={}", nsamples, bsz);
}

std::vector<int32_t> sample_windows(const std::vector<int32_t>& stream, int64_t nsamples, int64_t seqlen,
                                    uint64_t seed, const std::string& what) {
  const int64_t n = static_cast<int64_t>(stream.size());
  if (n < seqlen)
    fail("{}: {} tokens, fewer than calib.seqlen = {} (use a longer text or a smaller calib.seqlen)", what, n,
         seqlen);
  std::mt19937_64 rng(seed);
  const uint64_t span = static_cast<uint64_t>(n - seqlen + 1);
  std::vector<int32_t> out;
  out.reserve(static_cast<size_t>(nsamples * seqlen));
  for (int64_t j = 0; j < nsamples; ++j) {
    const auto start = static_cast<int64_t>(rng() % span);
    out.insert(out.end(), stream.begin() + start, stream.begin() + start + seqlen);
  }
  return out;
}

}  // namespace fq::calib
