// Fake quantizers on hand-computed tiny tensors, STE semantics and gradients into the clipping logits.
#include "calib/quantizer.h"
#include "calib_test_util.h"

namespace fq::calib {
namespace {

torch::Tensor t64(std::vector<double> v, std::vector<int64_t> shape) {
  return torch::tensor(v, torch::kFloat64).reshape(shape);
}

void expect_near(const torch::Tensor& got, const torch::Tensor& want, double tol = 1e-12) {
  ASSERT_EQ(got.sizes(), want.sizes());
  EXPECT_LT((got - want).abs().max().item<double>(), tol) << got << "\nwant\n" << want;
}

TEST(CalibQuantizer, RoundSteForwardRoundsBackwardIsIdentity) {
  auto x = t64({0.4, 1.5, 2.5, -0.6}, {4}).set_requires_grad(true);
  auto y = round_ste(x);
  expect_near(y, t64({0, 2, 2, -1}, {4}));  // half to even, as torch.round
  y.sum().backward();
  expect_near(x.grad(), torch::ones({4}, torch::kFloat64));
}

TEST(CalibQuantizer, ActSymPerToken) {
  // Row 0: scale = 3.5/7 = 0.5; 0.7/0.5 = 1.4 -> 1. Row 1: all zeros -> scale 1, stays 0.
  auto x = t64({1.0, -2.0, 3.5, 0.7, 0, 0, 0, 0}, {2, 4});
  expect_near(fake_quant(x, 4, true, -1, true), t64({1.0, -2.0, 3.5, 0.5, 0, 0, 0, 0}, {2, 4}));
  // Clip factor 0.5: xmax 1, xmin -2 -> scale 2/7; x/scale = -14, 7, 3.5 -> -8 (clamped), 7, 4 (half-even).
  auto x2 = t64({-4, 2, 1}, {1, 3});
  auto half = torch::full({1}, 0.5, torch::kFloat64);
  expect_near(fake_quant(x2, 4, true, -1, true, half, half), t64({-16.0 / 7, 2.0, 8.0 / 7}, {1, 3}));
  // 8 bits: qmax 127.
  auto x3 = t64({1.27, -0.5}, {1, 2});
  expect_near(fake_quant(x3, 8, true, -1, true), t64({1.27, -0.5}, {1, 2}), 1e-12);
}

TEST(CalibQuantizer, ActAsymPerToken) {
  // xmin -1, xmax 2: scale 0.2, zero round(5) = 5; x/scale = -5, 0, 10, 2.5 -> q 0, 5, 15, 7 (2.5 -> 2).
  auto x = t64({-1, 0, 2, 0.5}, {1, 4});
  expect_near(fake_quant(x, 4, false, -1, true), t64({-1, 0, 2, 0.4}, {1, 4}));
  // Positive row: xmin = 0 (min with 0), scale 3/15, zero 0.
  expect_near(fake_quant(t64({1, 3}, {1, 2}), 4, false, -1, true), t64({1, 3}, {1, 2}));
  // All-zero row uses xmin -1, xmax 1 (no 0/0): stays exactly zero and finite.
  auto z = fake_quant(torch::zeros({2, 3}, torch::kFloat64), 4, false, -1, true);
  expect_near(z, torch::zeros({2, 3}, torch::kFloat64));
}

TEST(CalibQuantizer, WeightSymPerChannelAndPerGroup) {
  // scale 1.4/7 = 0.2: 3.5 -> 4 (half-even), -7, 1. Zero row: scale 1e-5/7, stays 0.
  auto w = t64({0.7, -1.4, 0.2, 0, 0, 0}, {2, 3});
  expect_near(fake_quant(w, 4, true, -1, false), t64({0.8, -1.4, 0.2, 0, 0, 0}, {2, 3}));
  // Groups of 2: [1, 2] scale 2/7 -> 4, 7; [100, 50] scale 100/7 -> 7, 4 (3.5 -> 4).
  auto g = t64({1, 2, 100, 50}, {1, 4});
  expect_near(fake_quant(g, 4, true, 2, false), t64({8.0 / 7, 2, 100, 400.0 / 7}, {1, 4}), 1e-12);
  EXPECT_ANY_THROW(fake_quant(g, 4, true, 3, false));  // 3 does not divide 4
  // Per-channel on the same row differs from per-group (50 is on the grid 100/7 * 3.5 -> 4 either way, 1 and
  // 2 are rounded to 0): catches a group size that is ignored.
  expect_near(fake_quant(g, 4, true, -1, false), t64({0, 0, 100, 400.0 / 7}, {1, 4}), 1e-12);
}

TEST(CalibQuantizer, LwcClampsEachRow) {
  WeightQuantizer q(2, 4, true, -1, true);
  q->to(torch::kFloat64);
  {
    torch::NoGradGuard ng;
    q->clip_max.zero_();  // sigmoid(0) = 0.5
    q->clip_min.zero_();
  }
  auto w = t64({1, -2, 4, -8, 1, 2}, {2, 3});
  expect_near(q->clip(w), t64({1, -1, 2, -4, 1, 1}, {2, 3}));
  // Init 4.0: sigmoid(4) = 0.98201...
  WeightQuantizer q4(2, 4, true, -1, true);
  EXPECT_NEAR(torch::sigmoid(q4->clip_max).max().item<double>(), 0.9820137900379085, 1e-7);
  EXPECT_EQ(q4->clip_max.sizes(), (std::vector<int64_t>{2, 1}));
  // 16 bits: no LWC parameters, identity.
  WeightQuantizer q16(2, 16, true, -1, true);
  EXPECT_FALSE(q16->clip_max.defined());
  expect_near(q16->forward(w), w);
}

TEST(CalibQuantizer, GradientFlowsIntoLacThroughTheScale) {
  // x = [1, -2, 3.2], clip logits 0 (factor 0.5): xmax 1.6, xmin -1, scale s = 1.6/7.
  // x/s = 4.375, -8.75, 14 -> y = s * [round_ste(4.375), clamp -> -8, clamp -> 7].
  // d(sum y)/ds = (4 - 4.375) + (-8) + 7 = -1.375; ds/dc_max = 3.2/7 * sigmoid'(0) = 3.2/7 * 0.25.
  ActQuantizer q(4, true, true);
  q->to(torch::kFloat64);
  {
    torch::NoGradGuard ng;
    q->clip_max.zero_();
    q->clip_min.zero_();
  }
  auto x = t64({1, -2, 3.2}, {1, 3});
  q->forward(x).sum().backward();
  EXPECT_NEAR(q->clip_max.grad().item<double>(), -1.375 * 3.2 / 7 * 0.25, 1e-12);
  EXPECT_EQ(q->clip_min.grad().item<double>(), 0.0);  // |xmin| < xmax: xmin does not set the scale
}

TEST(CalibQuantizer, GradientFlowsIntoLwc) {
  torch::manual_seed(0);
  WeightQuantizer q(3, 4, true, -1, true);
  q->to(torch::kFloat64);
  auto w = torch::randn({3, 16}, torch::kFloat64);
  auto x = torch::randn({5, 16}, torch::kFloat64);
  auto loss = (torch::matmul(x, q->forward(w).t()) - torch::matmul(x, w.t())).pow(2).sum();
  loss.backward();
  auto g = q->clip_max.grad();
  ASSERT_TRUE(g.defined());
  EXPECT_TRUE(torch::isfinite(g).all().item<bool>());
  EXPECT_GT(g.abs().min().item<double>(), 0.0);  // every row's clip gets a gradient
  EXPECT_GT(q->clip_min.grad().abs().min().item<double>(), 0.0);
}

TEST(CalibQuantizer, KvQuantizerIsPerTokenAndHead) {
  // [B=1, heads=2, T=1, d=2]: each (token, head) row has its own asym grid; exact values are on the grid.
  ActQuantizer q(4, false, false);
  auto x = t64({0, 15, -3, 0}, {1, 2, 1, 2});
  expect_near(q->forward(x), x);
  // One shared grid would put -3 and 15 together: scale 18/15 = 1.2, -3 -> 0 * ... not representable exactly.
  auto shared = fake_quant(x.reshape({1, 4}), 4, false, -1, true).reshape({1, 2, 1, 2});
  EXPECT_GT((shared - x).abs().max().item<double>(), 0.1);
}

}  // namespace
}  // namespace fq::calib
