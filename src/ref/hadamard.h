// Hadamard matrices and seeded random rotations for the QuaRot-style baseline (plain C++, double; matrices
// are row-major n x n std::vector<double>). docs/calibration.md, "Hadamard".
//
// Constructions (entries +-1, H H^T = n I):
// - Sylvester, n = 2^k: H[i][j] = (-1)^popcount(i & j)  (= the k-fold Kronecker power of [[1, 1], [1, -1]]);
// - Paley I, n = q + 1 with q prime, q = 3 (mod 4);
// - Paley II, n = 2(q + 1) with q prime, q = 1 (mod 4);
// - Kronecker products of those. Every factorization n = a*b is searched (recursively); the chosen
//   construction is, in order of preference: the largest power-of-two (Sylvester) part, then the fewest Paley
//   blocks, then the lexicographically smallest list of (order, kind) blocks, Paley I before Paley II. The
//   matrix is sylvester(2^k) (x) B1 (x) B2 ... with the Paley blocks in that ascending order.
// Prime powers (GF(p^m) Paley) and other families (Williamson, ...) are not implemented: e.g. 52, 92, 100,
// 116, 156, 172 have no construction here although Hadamard matrices of those orders exist.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace fq::ref {

// Whether one of the constructions above gives order n (n >= 1).
bool hadamard_exists(int64_t n);

// The chosen construction, e.g. "sylvester(4) x paley1(12)", "paley2(28)", "sylvester(1)" for n = 1; empty
// when none exists.
std::string hadamard_construction(int64_t n);

// The +-1 Hadamard matrix of order n (row-major). Throws fq::Error when hadamard_exists(n) is false.
std::vector<double> hadamard(int64_t n);

// n x n standard normal draws, row-major: std::mt19937_64(seed), 53-bit uniforms u = ((r >> 11) + 0.5) /
// 2^53, Box-Muller pairs (r cos t, r sin t) filling the matrix in order (the same draws as
// calib::random_orthogonal).
std::vector<double> gaussian_matrix(int64_t n, uint64_t seed);

// Q of the QR factorization of gaussian_matrix(n, seed) with the sign fix (R has a positive diagonal, which
// makes Q unique and Haar distributed); Householder QR in double.
std::vector<double> random_orthogonal(int64_t n, uint64_t seed);

enum class RotationKind { Hadamard, RandomOrthogonal };

struct Rotation {
  std::vector<double> matrix;  // n x n orthogonal, row-major
  RotationKind kind = RotationKind::Hadamard;
};

// QuaRot-style randomized Hadamard rotation: when hadamard_exists(n), M = H / sqrt(n) * diag(d) with
// d_j = -1 if (r_j >> 63) == 1 else +1, r_0, r_1, ... the outputs of std::mt19937_64(seed) (M[i][j] =
// H[i][j] d_j / sqrt(n)). Otherwise the documented fallback random_orthogonal(n, seed), kind
// RandomOrthogonal.
Rotation randomized_hadamard(int64_t n, uint64_t seed);

}  // namespace fq::ref
