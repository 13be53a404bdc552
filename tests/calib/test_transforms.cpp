// Transforms: factor sizes, Cayley orthogonality, Kronecker == explicit kron, inverses cancel, gradients.
#include "ref/hadamard.h"
#include "ref/kron.h"
#include "calib/transforms.h"
#include "calib_test_util.h"

namespace fq::calib {
namespace {

using test::rel_err;

TEST(CalibDecomposeDim, MatchesTheOriginalRule) {
  struct Case {
    int64_t n, l, r;
  };
  // 172 = 4*43 is not what Fermat's rule gives (4 and 43 differ in parity): the original returns 2x86.
  for (Case c : {Case{4096, 64, 64}, Case{3584, 56, 64}, Case{11008, 86, 128}, Case{14336, 112, 128},
                 Case{18944, 128, 148}, Case{172, 2, 86}, Case{576, 24, 24}, Case{5120, 64, 80}, Case{8192, 64, 128},
                 Case{28672, 128, 224}, Case{64, 8, 8}, Case{43, 1, 43}, Case{1, 1, 1}}) {
    const ref::KronDims d = ref::decompose_dim(c.n);
    EXPECT_EQ(d.left, c.l) << c.n;
    EXPECT_EQ(d.right, c.r) << c.n;
  }
  EXPECT_THROW(ref::decompose_dim(0), Error);
  EXPECT_THROW(ref::decompose_dim(6), Error);  // 2 mod 4: the original loops forever
}

TEST(CalibTransforms, RandomOrthogonalIsSeededAndOrthogonal) {
  auto a = random_orthogonal(9, 1), b = random_orthogonal(9, 1), c = random_orthogonal(9, 2);
  EXPECT_TRUE(torch::equal(a, b));
  EXPECT_FALSE(torch::equal(a, c));
  EXPECT_LT(rel_err(torch::matmul(a, a.t()), torch::eye(9, torch::kFloat64)), 1e-13);
}

// The Hadamard baseline's fallback (plain C++ Householder QR) draws the same Gaussians and applies the same
// sign fix, so it is the same matrix up to rounding.
TEST(CalibTransforms, RandomOrthogonalMatchesTheRefFallback) {
  for (int64_t n : {9, 86}) {
    const auto ours = random_orthogonal(n, 5);
    const auto r = ref::random_orthogonal(n, 5);
    const auto ref_t = torch::from_blob(const_cast<double*>(r.data()), {n, n}, torch::kFloat64).clone();
    EXPECT_LT((ours - ref_t).abs().max().item<double>(), 1e-12) << n;
  }
}

TEST(CalibTransforms, CayleyIsOrthogonalAndIgnoresUpperTriangle) {
  torch::manual_seed(0);
  auto w = torch::randn({7, 7}, torch::kFloat64);
  auto q = cayley(w);
  EXPECT_LT(rel_err(torch::matmul(q, q.t()), torch::eye(7, torch::kFloat64)), 1e-13);
  EXPECT_GT(rel_err(q, torch::eye(7, torch::kFloat64)), 0.1);  // not trivially the identity
  // Only the strict lower triangle is a parameter.
  auto w2 = w + torch::triu(torch::randn({7, 7}, torch::kFloat64));
  EXPECT_LT(rel_err(cayley(w2), q), 1e-14);
  // The identity parameter (A = 0) maps to I.
  EXPECT_LT(rel_err(cayley(torch::zeros({5, 5}, torch::kFloat64)), torch::eye(5, torch::kFloat64)), 1e-15);
}

TEST(CalibTransforms, CayleyGradcheck) {
  torch::manual_seed(1);
  auto w = torch::randn({5, 5}, torch::kFloat64);
  EXPECT_LT(test::gradcheck([](const torch::Tensor& x) { return cayley(x); }, w), 1e-6);
}

TEST(CalibTransforms, KronMatmulEqualsExplicitKron) {
  torch::manual_seed(2);
  for (auto [l, r] : {std::pair<int64_t, int64_t>{2, 86}, {8, 8}, {3, 5}}) {
    auto x = torch::randn({3, 4, l * r}, torch::kFloat64);
    auto a = torch::randn({l, l}, torch::kFloat64), b = torch::randn({r, r}, torch::kFloat64);
    auto want = torch::matmul(x, torch::kron(a, b));
    EXPECT_LT(rel_err(kron_matmul(x, a, b), want), 1e-13) << l << "x" << r;
    // Undefined right factor = identity.
    EXPECT_LT(rel_err(kron_matmul(x, a, torch::Tensor()), torch::matmul(x, torch::kron(a, torch::eye(r, torch::kFloat64)))),
              1e-13);
  }
}

TEST(CalibTransforms, KronForwardGradcheck) {
  torch::manual_seed(3);
  auto a = torch::randn({3, 3}, torch::kFloat64), b = torch::randn({4, 4}, torch::kFloat64);
  auto x = torch::randn({2, 12}, torch::kFloat64);
  EXPECT_LT(test::gradcheck([&](const torch::Tensor& t) { return kron_matmul(t, a, b); }, x), 1e-6);
  EXPECT_LT(test::gradcheck([&](const torch::Tensor& t) { return kron_matmul(x, t, b); }, a), 1e-6);
  EXPECT_LT(test::gradcheck([&](const torch::Tensor& t) { return kron_matmul(x, a, t); }, b), 1e-6);
}

// Perturbs every parameter so that P is a generic (non-orthogonal, non-identity) invertible matrix.
void randomize(torch::nn::Module& m, uint64_t seed) {
  torch::NoGradGuard ng;
  torch::manual_seed(seed);
  for (auto& p : m.named_parameters(true)) {
    const std::string& k = p.key();
    auto& v = p.value();
    if (k.find("sigma") != std::string::npos || k.find("diag_scale") != std::string::npos)
      v.copy_(torch::rand(v.sizes(), v.options()) * 1.5 + 0.5);
    else
      v.add_(torch::randn(v.sizes(), v.options()) * 0.3);
  }
}

class CalibTransformParam : public ::testing::TestWithParam<TransParam> {};

TEST_P(CalibTransformParam, DenseMatchesForwardAndWeightSideCancels) {
  KronTransform t(172, GetParam(), true, 5);
  t->to(torch::kFloat64);
  randomize(*t, 6);
  torch::manual_seed(7);
  auto x = torch::randn({5, 172}, torch::kFloat64), w = torch::randn({9, 172}, torch::kFloat64);
  auto p = t->dense();
  EXPECT_LT(rel_err(t->forward(x), torch::matmul(x, p)), 1e-13);
  // (x P)(W P^{-T})^T == x W^T.
  auto y = torch::matmul(t->forward(x), t->weight_inv(w).t());
  EXPECT_LT(rel_err(y, torch::matmul(x, w.t())), 1e-10);
  EXPECT_GT(rel_err(t->forward(x), x), 0.1);
  // The no-diag pair cancels too (the merged form).
  auto y2 = torch::matmul(t->forward_no_diag(x), t->weight_inv_no_diag(w).t());
  EXPECT_LT(rel_err(y2, torch::matmul(x, w.t())), 1e-10);
}

TEST_P(CalibTransformParam, SingleInverseTransposeIsExact) {
  SingleTransform t(8, GetParam(), 9);
  t->to(torch::kFloat64);
  randomize(*t, 10);
  auto m = t->f->matrix(), it = t->f->inv_t();
  EXPECT_LT(rel_err(torch::matmul(m.t(), it), torch::eye(8, torch::kFloat64)), 1e-12);
  torch::manual_seed(11);
  auto x = torch::randn({3, 8}, torch::kFloat64), k = torch::randn({4, 8}, torch::kFloat64);
  // q k^T is preserved by (q P^{-T}, k P): the kcache transform.
  auto s = torch::matmul(t->forward_inv_t(x), t->forward(k).t());
  EXPECT_LT(rel_err(s, torch::matmul(x, k.t())), 1e-10);
}

TEST_P(CalibTransformParam, InitialFactorsAreRandomOrthogonal) {
  Factor f(6, GetParam(), 3);
  auto m = f->matrix().to(torch::kFloat64);
  EXPECT_LT(rel_err(torch::matmul(m, m.t()), torch::eye(6, torch::kFloat64)), 1e-5);
  EXPECT_GT(rel_err(m, torch::eye(6, torch::kFloat64)), 0.1);
  Factor g(6, GetParam(), 4);
  EXPECT_FALSE(torch::equal(f->matrix(), g->matrix()));
}

INSTANTIATE_TEST_SUITE_P(Params, CalibTransformParam, ::testing::Values(TransParam::Svd, TransParam::Direct),
                         [](const ::testing::TestParamInfo<TransParam>& i) {
                           return std::string(i.param == TransParam::Svd ? "svd" : "direct");
                         });

TEST(CalibTransforms, SvdFactorGradcheck) {
  // M = Cayley(Wu) diag(sigma) Cayley(Wv)^T and its analytic inverse transpose, through the module.
  Factor f(4, TransParam::Svd, 12);
  f->to(torch::kFloat64);
  auto wu = f->u_raw.detach().clone();
  auto with_u = [&](const torch::Tensor& u, bool inv) {
    auto s = f->sigma.detach();
    auto uu = cayley(u), vv = cayley(f->v_raw.detach());
    return torch::matmul(uu * (inv ? s.reciprocal() : s).unsqueeze(0), vv.t());
  };
  EXPECT_LT(test::gradcheck([&](const torch::Tensor& u) { return with_u(u, false); }, wu), 1e-6);
  EXPECT_LT(test::gradcheck([&](const torch::Tensor& u) { return with_u(u, true); }, wu), 1e-6);
  // The module's matrix() is the same function of its parameters.
  EXPECT_LT(rel_err(f->matrix(), with_u(wu, false)), 1e-14);
}

}  // namespace
}  // namespace fq::calib
