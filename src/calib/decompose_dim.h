// Kronecker factor sizes of FlatQuant's Decompose transforms (plain C++, no LibTorch).
//
// LOCAL COPY: the runtime's fq::ref::decompose_dim (src/ref/kron.h, branch `ops`) is not in main yet. This
// must stay identical to it (same rule, same throw); replace with an include once it is merged.
#pragma once
#include <cmath>
#include <cstdint>

#include "flatquant/error.h"

namespace fq::calib {

struct KronDims {
  int64_t left = 0;   // L: rows of the per-token reshape, size of the left factor A
  int64_t right = 0;  // R: columns (contiguous), size of the right factor B
};

// The factor pair n = L*R, L <= R, by Fermat's method exactly as the original's get_decompose_dim:
//   a = ceil(sqrt(n)); while a*a - n is not a perfect square b*b: ++a; return (a - b, a + b).
// This is the same-parity pair closest to sqrt(n): 4096 -> 64x64, 3584 -> 56x64, 11008 -> 86x128,
// 14336 -> 112x128, 18944 -> 128x148, 576 -> 24x24, 172 -> 2x86 (not 4x43: 4 and 43 differ in parity), an
// odd prime -> 1xn. n = 2 mod 4 has no same-parity pair (the original loops forever): we throw.
inline KronDims decompose_dim(int64_t n) {
  if (n < 1) fail("decompose_dim: size {} must be positive", n);
  if (n % 4 == 2) fail("decompose_dim: size {} is 2 mod 4, which has no Kronecker factor pair of equal parity", n);
  auto isqrt = [](int64_t v) {
    auto r = static_cast<int64_t>(std::sqrt(static_cast<double>(v)));
    while (r * r > v) --r;
    while ((r + 1) * (r + 1) <= v) ++r;
    return r;
  };
  int64_t a = isqrt(n);
  if (a * a < n) ++a;
  for (;; ++a) {
    const int64_t d = a * a - n;
    const int64_t b = isqrt(d);
    if (b * b == d) return {a - b, a + b};
  }
}

}  // namespace fq::calib
