// GPTQ and RTN weight quantization (src/calib/gptq.h): the Hessian accumulator, identity-Hessian GPTQ == RTN,
// GPTQ against an independent column-by-column OBQ recurrence, error reduction on correlated inputs, dead
// columns, code ranges, the MSE scale search, determinism.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <vector>

#include "calib/gptq.h"
#include "flatquant/error.h"

namespace fq {
namespace {

using calib::GptqOptions;
using calib::GptqResult;

// X = Z M: rows of correlated features (random mixing M plus uneven per-feature magnitudes).
torch::Tensor correlated_inputs(int64_t n, int64_t in, uint64_t seed) {
  torch::manual_seed(seed);
  auto z = torch::randn({n, in}, torch::kFloat64);
  auto m = torch::randn({in, in}, torch::kFloat64) / std::sqrt(static_cast<double>(in));
  auto mag = torch::exp(torch::randn({in}, torch::kFloat64));
  return z.mm(m) * mag;
}

// ||X W^T - X Wq^T||_F^2
double output_err(const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& wq) {
  return (x.mm(w.to(torch::kFloat64).t()) - x.mm(wq.to(torch::kFloat64).t())).pow(2).sum().item<double>();
}

calib::HessianAccumulator hessian_of(const torch::Tensor& x) {
  calib::HessianAccumulator acc;
  acc.add(x);
  return acc;
}

// GPTQ as the original OBQ recurrence, one column at a time with an explicit inverse (no Cholesky, no
// blocks): q_i = quant(w_i); W[:, j>i] -= (w_i - q_i)/Hinv_ii * Hinv[i, j>i]; then Hinv loses row/column i by
// the Schur complement Hinv -= Hinv[:, i] Hinv[i, :] / Hinv_ii. Mathematically the same as the blocked
// Cholesky form.
torch::Tensor obq_codes(torch::Tensor w, torch::Tensor h, const torch::Tensor& scales, int bits,
                        double percdamp) {
  w = w.to(torch::kFloat64).clone();
  h = h.to(torch::kFloat64).clone();
  const int64_t cols = w.size(1);
  h.diagonal().add_(percdamp * h.diagonal().mean());
  auto hinv = torch::inverse(h);
  const double qmax = (1 << (bits - 1)) - 1;
  const auto s = scales.to(torch::kFloat64);
  auto codes = torch::zeros_like(w);
  for (int64_t i = 0; i < cols; ++i) {
    const auto col = w.select(1, i).clone();
    const auto q = torch::clamp(torch::round(col / s), -(qmax + 1), qmax);
    codes.select(1, i).copy_(q);
    const auto d = hinv[i][i].clone();
    w.sub_(torch::outer((col - q * s) / d, hinv[i]));
    hinv = hinv - torch::outer(hinv.select(1, i), hinv[i]) / d;
  }
  return codes.to(torch::kInt8);
}

TEST(Gptq, HessianAccumulatorIsTwoOverNXtX) {
  auto x = correlated_inputs(23, 12, 1);
  calib::HessianAccumulator acc;
  EXPECT_THROW(acc.hessian(), Error);
  // Batches of different shapes: [2, 5, in], [7, in], [1, 6, in] = 23 rows.
  acc.add(x.slice(0, 0, 10).reshape({2, 5, 12}));
  acc.add(x.slice(0, 10, 17));
  acc.add(x.slice(0, 17, 23).reshape({1, 6, 12}));
  acc.add(torch::zeros({0, 12}, torch::kFloat64));  // no rows: no change
  EXPECT_EQ(acc.rows(), 23);
  const auto expect = 2.0 / 23.0 * x.t().mm(x);
  EXPECT_LE((acc.hessian() - expect).abs().max().item<double>(), 1e-12 * expect.abs().max().item<double>());
  EXPECT_EQ(acc.hessian().scalar_type(), torch::kFloat64);
  EXPECT_THROW(acc.add(torch::zeros({3, 5})), Error);  // feature count changed
}

TEST(Gptq, IdentityHessianEqualsRtnExactly) {
  torch::manual_seed(2);
  for (int bits : {4, 8}) {
    for (bool act_order : {false, true}) {
      auto w = torch::randn({24, 40}, torch::kFloat32);
      GptqOptions opt;
      opt.bits = bits;
      opt.blocksize = 16;
      opt.act_order = act_order;
      const auto g = calib::gptq_quantize(w, torch::eye(40, torch::kFloat64), opt);
      const auto r = calib::rtn_quantize_weight(w, bits);
      EXPECT_TRUE(torch::equal(g.codes, r.codes)) << bits << " " << act_order;
      EXPECT_TRUE(torch::equal(g.scales, r.scales));
      EXPECT_TRUE(torch::equal(g.dequant, r.dequant));
    }
  }
}

TEST(Gptq, MatchesTheColumnByColumnObqRecurrence) {
  const auto x = correlated_inputs(512, 96, 3);
  torch::manual_seed(4);
  const auto w = torch::randn({20, 96}, torch::kFloat64);
  const auto h = hessian_of(x).hessian();
  for (int64_t bs : {7, 32, 128}) {  // partial blocks, several blocks, one block
    GptqOptions opt;
    opt.blocksize = bs;
    const auto g = calib::gptq_quantize(w, h, opt);
    const auto ref = obq_codes(w, h, g.scales, 4, opt.percdamp);
    EXPECT_EQ((g.codes != ref).sum().item<int64_t>(), 0) << "blocksize " << bs;
  }
}

TEST(Gptq, LowersTheOutputErrorOnCorrelatedInputs) {
  const auto x = correlated_inputs(1024, 128, 5);
  torch::manual_seed(6);
  const auto w = torch::randn({64, 128}, torch::kFloat32);
  const auto h = hessian_of(x).hessian();
  for (int bits : {4, 8}) {
    const double e_rtn = output_err(x, w, calib::rtn_quantize_weight(w, bits).dequant);
    for (bool act_order : {false, true}) {
      GptqOptions opt;
      opt.bits = bits;
      opt.blocksize = 32;
      opt.act_order = act_order;
      const double e_gptq = output_err(x, w, calib::gptq_quantize(w, h, opt).dequant);
      std::printf("bits %d act_order %d: output error RTN %.6g GPTQ %.6g (ratio %.3f)\n", bits, act_order,
                  e_rtn, e_gptq, e_gptq / e_rtn);
      EXPECT_LT(e_gptq, 0.9 * e_rtn) << bits << " " << act_order;
    }
  }
}

TEST(Gptq, ActOrderPermutesAndUnpermutes) {
  // With act order the columns are visited by descending H_ii. Reversing the input features (and the
  // weight columns) reverses H's diagonal, so the visiting order of the original columns, hence the codes,
  // must be the same up to the column reversal.
  const auto x = correlated_inputs(400, 48, 7);
  torch::manual_seed(8);
  const auto w = torch::randn({16, 48}, torch::kFloat64);
  GptqOptions opt;
  opt.act_order = true;
  opt.blocksize = 16;
  const auto a = calib::gptq_quantize(w, hessian_of(x).hessian(), opt);
  const auto b = calib::gptq_quantize(w.flip({1}), hessian_of(x).hessian().flip({0, 1}), opt);
  EXPECT_TRUE(torch::equal(a.codes, b.codes.flip({1})));
  // And it matches the OBQ recurrence run in the permuted order.
  const auto h = hessian_of(x).hessian();
  const auto perm = std::get<1>(torch::sort(h.diagonal(), true, 0, true));
  const auto ref = obq_codes(w.index_select(1, perm), h.index_select(0, perm).index_select(1, perm), a.scales,
                             4, opt.percdamp);
  EXPECT_TRUE(torch::equal(a.codes.index_select(1, perm), ref));
}

TEST(Gptq, DeadColumnsAreZeroedAfterTheScales) {
  auto x = correlated_inputs(300, 32, 9);
  x.select(1, 3).zero_();
  x.select(1, 17).zero_();
  torch::manual_seed(10);
  auto w = torch::randn({8, 32}, torch::kFloat64);
  w[2][3] = 50.0;  // row 2's absmax sits in a dead column: the scale still comes from it (find_params(W))
  const auto h = hessian_of(x).hessian();
  ASSERT_EQ(h[3][3].item<double>(), 0.0);
  for (bool act_order : {false, true}) {
    GptqOptions opt;
    opt.act_order = act_order;
    const auto g = calib::gptq_quantize(w, h, opt);
    EXPECT_TRUE(torch::isfinite(g.dequant).all().item<bool>());
    EXPECT_EQ(g.codes.select(1, 3).abs().sum().item<int64_t>(), 0);
    EXPECT_EQ(g.codes.select(1, 17).abs().sum().item<int64_t>(), 0);
    EXPECT_EQ(g.scales[2].item<double>(), 50.0 / 7.0);
    // Dead columns do not interact with the others (H is block diagonal), so the live columns are the OBQ
    // recurrence on the reduced problem (dead columns and H rows/columns removed), with the same absolute
    // damping (the dead H_ii = 1 count in mean(diag H)) and the full problem's scales.
    std::vector<int64_t> idx;
    for (int64_t c = 0; c < 32; ++c)
      if (c != 3 && c != 17) idx.push_back(c);
    auto live = torch::tensor(idx);
    const auto h_live0 = h.index_select(0, live).index_select(1, live);
    if (act_order) live = live.index_select(0, std::get<1>(torch::sort(h_live0.diagonal(), true, 0, true)));
    const auto h_live = h.index_select(0, live).index_select(1, live);
    const double damp = opt.percdamp * (h.diagonal().sum().item<double>() + 2.0) / 32.0;
    const auto ref = obq_codes(w.index_select(1, live), h_live, g.scales, 4,
                               damp / h_live.diagonal().mean().item<double>());
    EXPECT_TRUE(torch::equal(g.codes.index_select(1, live), ref)) << act_order;
  }
}

TEST(Gptq, CodesInRangeAndDequantIsCodeTimesScale) {
  const auto x = correlated_inputs(256, 64, 11);
  torch::manual_seed(12);
  for (auto dtype : {torch::kFloat32, torch::kFloat64}) {
    auto w = torch::randn({32, 64}, dtype);
    w[0].zero_();  // an all-zero row: scale 1e-5 / qmax, codes 0
    for (int bits : {2, 4, 8}) {
      GptqOptions opt;
      opt.bits = bits;
      const auto g = calib::gptq_quantize(w, hessian_of(x).hessian(), opt);
      const int64_t qmax = (1 << (bits - 1)) - 1;
      EXPECT_EQ(g.codes.scalar_type(), torch::kInt8);
      EXPECT_GE(g.codes.min().item<int64_t>(), -(qmax + 1));
      EXPECT_LE(g.codes.max().item<int64_t>(), qmax);
      EXPECT_EQ(g.scales.scalar_type(), dtype);
      EXPECT_EQ(g.dequant.scalar_type(), dtype);
      EXPECT_TRUE(torch::equal(g.dequant, g.codes.to(dtype) * g.scales.unsqueeze(1)));
      // absmax scale, computed in fp64 and rounded to the weight's dtype
      const auto w64 = w.to(torch::kFloat64);
      const auto expect = (w64.abs().amax(1).clamp_min(1e-5) / static_cast<double>(qmax)).to(dtype);
      EXPECT_TRUE(torch::equal(g.scales, expect)) << bits;
      EXPECT_EQ(g.codes[0].abs().sum().item<int64_t>(), 0);
      // The error feedback pushes some codes to the lower end -(qmax + 1), which absmax alone never reaches.
      if (bits <= 4) {
        EXPECT_EQ(g.codes.min().item<int64_t>(), -(qmax + 1)) << bits;
      }
    }
  }
}

TEST(Gptq, MseScalesNeverIncreaseTheRowError) {
  torch::manual_seed(13);
  // Heavy-tailed rows (Student-t like), where shrinking the range helps most.
  auto w =
      torch::randn({64, 256}, torch::kFloat64) / torch::rand({64, 256}, torch::kFloat64).add(0.05).sqrt();
  auto row_err = [&](const GptqResult& q) { return (q.dequant - w).abs().pow(2.4).sum(1); };
  for (int bits : {3, 4, 8}) {
    const auto plain = calib::rtn_quantize_weight(w, bits, false), mse = calib::rtn_quantize_weight(w, bits, true);
    const auto ep = row_err(plain), em = row_err(mse);
    EXPECT_TRUE((em <= ep).all().item<bool>()) << bits;
    if (bits <= 4) {  // and it usually helps
      EXPECT_GT((em < 0.99 * ep).sum().item<int64_t>(), 32) << bits;
    }
    // Each chosen scale is absmax * (1 - i/100) / qmax for some i in 0..79.
    const auto ratio = mse.scales / plain.scales;
    const auto i = ((1.0 - ratio) * 100.0).round();
    EXPECT_LE((ratio - (1.0 - i / 100.0)).abs().max().item<double>(), 1e-12);
    EXPECT_GE(i.min().item<double>(), 0.0);
    EXPECT_LE(i.max().item<double>(), 79.0);
    // GPTQ with mse uses the same scales.
    GptqOptions opt;
    opt.bits = bits;
    opt.mse = true;
    EXPECT_TRUE(
        torch::equal(calib::gptq_quantize(w, torch::eye(256, torch::kFloat64), opt).scales, mse.scales));
  }
}

TEST(Gptq, DeterministicAndInvariantToTheHessianScale) {
  const auto x = correlated_inputs(512, 80, 14);
  torch::manual_seed(15);
  const auto w = torch::randn({40, 80}, torch::kFloat32);
  const auto h = hessian_of(x).hessian();
  GptqOptions opt;
  opt.act_order = true;
  opt.blocksize = 24;
  const auto a = calib::gptq_quantize(w, h, opt), b = calib::gptq_quantize(w, h, opt);
  EXPECT_TRUE(torch::equal(a.codes, b.codes));
  EXPECT_TRUE(torch::equal(a.scales, b.scales));
  EXPECT_TRUE(torch::equal(a.dequant, b.dequant));
  // H's normalisation (rows vs sequences) does not matter: a power-of-two factor is exact.
  EXPECT_TRUE(torch::equal(calib::gptq_quantize(w, h * 2048.0, opt).codes, a.codes));
}

TEST(Gptq, RejectsBadInputs) {
  const auto w = torch::randn({4, 8});
  EXPECT_THROW(calib::gptq_quantize(w, torch::eye(7, torch::kFloat64), {}), Error);
  EXPECT_THROW(calib::gptq_quantize(torch::randn({8}), torch::eye(8, torch::kFloat64), {}), Error);
  EXPECT_THROW(calib::gptq_quantize(w.to(torch::kInt32), torch::eye(8, torch::kFloat64), {}), Error);
  GptqOptions opt;
  opt.bits = 9;
  EXPECT_THROW(calib::gptq_quantize(w, torch::eye(8, torch::kFloat64), opt), Error);
  auto wn = w.clone();
  wn[1][2] = std::nan("");
  EXPECT_THROW(calib::rtn_quantize_weight(wn, 4), Error);
  // Not positive definite even after damping.
  EXPECT_THROW(calib::gptq_quantize(w, -torch::eye(8, torch::kFloat64), {}), Error);
}

}  // namespace
}  // namespace fq
