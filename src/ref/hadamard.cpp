#include "ref/hadamard.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <random>
#include <utility>

#include "flatquant/error.h"

namespace fq::ref {
namespace {

enum : int { kPaley1 = 1, kPaley2 = 2 };

// A construction: sylvester(pow2) (x) blocks[0] (x) blocks[1] ..., blocks sorted ascending by (order, kind).
struct Plan {
  bool ok = false;
  int64_t pow2 = 1;
  std::vector<std::pair<int64_t, int>> blocks;
};

bool is_pow2(int64_t n) {
  return n >= 1 && (n & (n - 1)) == 0;
}

bool is_prime(int64_t q) {
  if (q < 2) return false;
  for (int64_t d = 2; d * d <= q; ++d)
    if (q % d == 0) return false;
  return true;
}

// Strict preference between two valid plans (see the header); a total order on distinct plans, so the choice
// does not depend on the order in which factorizations are visited.
bool better(const Plan& a, const Plan& b) {
  if (a.pow2 != b.pow2) return a.pow2 > b.pow2;
  if (a.blocks.size() != b.blocks.size()) return a.blocks.size() < b.blocks.size();
  return a.blocks < b.blocks;
}

Plan best_plan(int64_t n, std::map<int64_t, Plan>& memo) {
  if (auto it = memo.find(n); it != memo.end()) return it->second;
  Plan best;
  if (is_pow2(n)) {  // a pure Sylvester matrix has the largest possible power-of-two part
    best.ok = true;
    best.pow2 = n;
    return memo[n] = best;
  }
  auto offer = [&best](const Plan& p) {
    if (p.ok && (!best.ok || better(p, best))) best = p;
  };
  if (n % 4 == 0 && is_prime(n - 1) && (n - 1) % 4 == 3) offer(Plan{true, 1, {{n, kPaley1}}});
  if (n % 4 == 0 && is_prime(n / 2 - 1) && (n / 2 - 1) % 4 == 1) offer(Plan{true, 1, {{n, kPaley2}}});
  for (int64_t a = 2; a * a <= n; ++a) {
    if (n % a != 0) continue;
    const Plan pa = best_plan(a, memo), pb = best_plan(n / a, memo);
    if (!pa.ok || !pb.ok) continue;
    Plan p{true, pa.pow2 * pb.pow2, pa.blocks};
    p.blocks.insert(p.blocks.end(), pb.blocks.begin(), pb.blocks.end());
    std::sort(p.blocks.begin(), p.blocks.end());
    offer(p);
  }
  return memo[n] = best;
}

Plan plan_for(int64_t n) {
  if (n < 1) return {};
  std::map<int64_t, Plan> memo;
  return best_plan(n, memo);
}

// Quadratic character mod the prime q: chi[a] for a in 0..q-1.
std::vector<int> legendre_table(int64_t q) {
  std::vector<int> chi(static_cast<size_t>(q), -1);
  chi[0] = 0;
  for (int64_t x = 1; x < q; ++x) chi[static_cast<size_t>(x * x % q)] = 1;
  return chi;
}

// Conference-type core of order q+1: C[0][0] = 0, C[0][j] = 1, C[i][0] = s0 (j, i >= 1), C[i][j] =
// chi(j - i mod q). s0 = -1 gives the skew core of Paley I (q = 3 mod 4), s0 = +1 the symmetric one of
// Paley II (q = 1 mod 4).
std::vector<int> paley_core(int64_t q, int s0) {
  const auto chi = legendre_table(q);
  const int64_t m = q + 1;
  std::vector<int> c(static_cast<size_t>(m * m), 0);
  for (int64_t j = 1; j < m; ++j) {
    c[static_cast<size_t>(j)] = 1;
    c[static_cast<size_t>(j * m)] = s0;
  }
  for (int64_t i = 1; i < m; ++i)
    for (int64_t j = 1; j < m; ++j)
      c[static_cast<size_t>(i * m + j)] = chi[static_cast<size_t>(((j - i) % q + q) % q)];
  return c;
}

// Paley I: H = I + S with S the skew core; order q + 1.
std::vector<double> paley1(int64_t n) {
  const auto s = paley_core(n - 1, -1);
  std::vector<double> h(s.begin(), s.end());
  for (int64_t i = 0; i < n; ++i) h[static_cast<size_t>(i * n + i)] += 1.0;
  return h;
}

// Paley II: each entry of the symmetric core C (order q + 1) becomes a 2x2 block: 0 -> [[1, -1], [-1, -1]],
// +-1 -> +-[[1, 1], [1, -1]]; order 2(q + 1).
std::vector<double> paley2(int64_t n) {
  const int64_t m = n / 2;
  const auto c = paley_core(m - 1, 1);
  std::vector<double> h(static_cast<size_t>(n * n));
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < m; ++j) {
      const int v = c[static_cast<size_t>(i * m + j)];
      const int blk[2][2] = {{v == 0 ? 1 : v, v == 0 ? -1 : v}, {v == 0 ? -1 : v, v == 0 ? -1 : -v}};
      for (int a = 0; a < 2; ++a)
        for (int b = 0; b < 2; ++b) h[static_cast<size_t>((2 * i + a) * n + 2 * j + b)] = blk[a][b];
    }
  return h;
}

std::vector<double> sylvester(int64_t n) {
  std::vector<double> h(static_cast<size_t>(n * n));
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < n; ++j)
      h[static_cast<size_t>(i * n + j)] =
          (__builtin_popcountll(static_cast<uint64_t>(i & j)) & 1) ? -1.0 : 1.0;
  return h;
}

// (A (x) B)[(i*nb + k)][(j*nb + l)] = A[i][j] B[k][l].
std::vector<double> kron(const std::vector<double>& a, int64_t na, const std::vector<double>& b, int64_t nb) {
  const int64_t n = na * nb;
  std::vector<double> out(static_cast<size_t>(n * n));
  for (int64_t i = 0; i < na; ++i)
    for (int64_t j = 0; j < na; ++j) {
      const double v = a[static_cast<size_t>(i * na + j)];
      for (int64_t k = 0; k < nb; ++k)
        for (int64_t l = 0; l < nb; ++l)
          out[static_cast<size_t>((i * nb + k) * n + j * nb + l)] = v * b[static_cast<size_t>(k * nb + l)];
    }
  return out;
}

}  // namespace

bool hadamard_exists(int64_t n) {
  return plan_for(n).ok;
}

std::string hadamard_construction(int64_t n) {
  const Plan p = plan_for(n);
  if (!p.ok) return {};
  std::string s = "sylvester(" + std::to_string(p.pow2) + ")";
  if (p.pow2 == 1 && !p.blocks.empty()) s.clear();
  for (const auto& [order, kind] : p.blocks) {
    if (!s.empty()) s += " x ";
    s += (kind == kPaley1 ? "paley1(" : "paley2(") + std::to_string(order) + ")";
  }
  return s;
}

std::vector<double> hadamard(int64_t n) {
  const Plan p = plan_for(n);
  FQ_CHECK(p.ok,
           "hadamard: no Hadamard construction (Sylvester, Paley I/II over primes, Kronecker products) "
           "for order {}",
           n);
  std::vector<double> h = sylvester(p.pow2);
  int64_t m = p.pow2;
  for (const auto& [order, kind] : p.blocks) {
    h = kron(h, m, kind == kPaley1 ? paley1(order) : paley2(order), order);
    m *= order;
  }
  return h;
}

std::vector<double> gaussian_matrix(int64_t n, uint64_t seed) {
  FQ_CHECK(n >= 1, "gaussian_matrix: order {} must be positive", n);
  std::mt19937_64 g(seed);
  // Box-Muller on 53-bit uniforms in (0, 1): portable across standard libraries (std::normal_distribution is
  // not specified bit for bit).
  auto uniform = [&g]() { return (static_cast<double>(g() >> 11) + 0.5) * (1.0 / 9007199254740992.0); };
  std::vector<double> v(static_cast<size_t>(n * n));
  for (size_t i = 0; i < v.size(); i += 2) {
    const double r = std::sqrt(-2.0 * std::log(uniform())), t = 2.0 * M_PI * uniform();
    v[i] = r * std::cos(t);
    if (i + 1 < v.size()) v[i + 1] = r * std::sin(t);
  }
  return v;
}

std::vector<double> random_orthogonal(int64_t n, uint64_t seed) {
  std::vector<double> r = gaussian_matrix(n, seed);  // becomes R (upper triangle) in place
  auto at = [n](std::vector<double>& m, int64_t i, int64_t j) -> double& {
    return m[static_cast<size_t>(i * n + j)];
  };
  // Householder reflectors H_k = I - 2 v v^T / (v^T v) acting on rows k..n-1.
  std::vector<std::vector<double>> refl(static_cast<size_t>(n));
  for (int64_t k = 0; k < n; ++k) {
    std::vector<double> v(static_cast<size_t>(n - k));
    double norm2 = 0;
    for (int64_t i = k; i < n; ++i) {
      v[static_cast<size_t>(i - k)] = at(r, i, k);
      norm2 += at(r, i, k) * at(r, i, k);
    }
    const double alpha = v[0] >= 0 ? -std::sqrt(norm2) : std::sqrt(norm2);  // no cancellation in v[0] - alpha
    v[0] -= alpha;
    double vv = 0;
    for (double x : v) vv += x * x;
    if (vv == 0) continue;  // column already zero below the diagonal
    for (int64_t j = k; j < n; ++j) {
      double dot = 0;
      for (int64_t i = k; i < n; ++i) dot += v[static_cast<size_t>(i - k)] * at(r, i, j);
      const double f = 2 * dot / vv;
      for (int64_t i = k; i < n; ++i) at(r, i, j) -= f * v[static_cast<size_t>(i - k)];
    }
    refl[static_cast<size_t>(k)] = std::move(v);
  }
  // Q = H_0 H_1 ... H_{n-1}: apply the reflectors to I from the last one.
  std::vector<double> q(static_cast<size_t>(n * n), 0.0);
  for (int64_t i = 0; i < n; ++i) at(q, i, i) = 1;
  for (int64_t k = n - 1; k >= 0; --k) {
    const auto& v = refl[static_cast<size_t>(k)];
    if (v.empty()) continue;
    double vv = 0;
    for (double x : v) vv += x * x;
    for (int64_t j = 0; j < n; ++j) {
      double dot = 0;
      for (int64_t i = k; i < n; ++i) dot += v[static_cast<size_t>(i - k)] * at(q, i, j);
      const double f = 2 * dot / vv;
      for (int64_t i = k; i < n; ++i) at(q, i, j) -= f * v[static_cast<size_t>(i - k)];
    }
  }
  // Sign fix: Q D, D R with D = sign(diag R) (zero counts as +1), so that R's diagonal is positive.
  for (int64_t j = 0; j < n; ++j)
    if (at(r, j, j) < 0)
      for (int64_t i = 0; i < n; ++i) at(q, i, j) = -at(q, i, j);
  return q;
}

Rotation randomized_hadamard(int64_t n, uint64_t seed) {
  FQ_CHECK(n >= 1, "randomized_hadamard: order {} must be positive", n);
  if (!hadamard_exists(n)) return {random_orthogonal(n, seed), RotationKind::RandomOrthogonal};
  Rotation rot{hadamard(n), RotationKind::Hadamard};
  std::mt19937_64 g(seed);
  std::vector<double> d(static_cast<size_t>(n));
  for (auto& x : d) x = (g() >> 63) ? -1.0 : 1.0;
  const double inv = 1.0 / std::sqrt(static_cast<double>(n));
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < n; ++j)
      rot.matrix[static_cast<size_t>(i * n + j)] *= inv * d[static_cast<size_t>(j)];
  return rot;
}

}  // namespace fq::ref
