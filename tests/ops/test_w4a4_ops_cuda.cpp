// The W4A4KV4 engine's kernels (src/kernels/cuda/w4a4_ops.h, qgemm.h's multi-activation entry) against their
// CPU references, on random inputs and the shapes (non-powers of two included). Skips without a GPU.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "ops_util.h"
#include "ref/kron.h"
#include "ref/qgemm.h"
#include "ref/quant.h"
#include "ref/quant_ops.h"
#include "ref/rmsnorm.h"
#include "ref/rope.h"
#include "ref/swiglu.h"

#ifdef FLATQUANT_WITH_CUDA
#include "kernels/cuda/attention.h"
#include "kernels/cuda/qgemm.h"
#include "kernels/cuda/w4a4_ops.h"
#endif

namespace fq {
namespace {

#ifdef FLATQUANT_WITH_CUDA
using test::DeviceBuffer;

// The fused decode pipeline (prologue + transform on fp16 tensor cores + quantized copies, a cluster of CTAs
// per token) against a host chain with the kernel's rounding points: X and the transforms rounded to fp16,
// T = X B rounded to fp16, Y = A^T T; sums in double. The kernel sums in fp32 in another order (and the
// prologue's sum of squares is a block reduction), so a value may land on the other side of a rounding
// boundary: scales agree to 4e-4 (one fp16 step of a T value moves the row maximum by up to ~2^-11 of it; the
// worst measured on the H100 is 1.8e-4, 86 x 128 at 40 rows), codes differ by at most one step, rarely.
// Against the unrounded fp32 chain (ref::kron_transform) the dequantized values agree to a small fraction of
// a quantization step on average. Every split (CTAs per token: automatic, 1, 2, 4, 8; 8 leaves ranks
// without work on the small shapes) gives the same bits as one CTA per token: each value comes from the same
// fp32 operations in the same order (mma sums over the same k-steps, a fixed-order RMSNorm sum of squares,
// exact min/max), only on other SMs.
TEST(W4A4Ops, FusedQuantMatchesReferenceChain) {
  FQ_REQUIRE_CUDA();
  struct Case {
    cuda::FusedIn in;
    int64_t L, R;  // L = 0: no transform
    bool with_b;
    int64_t K;
  };
  const std::vector<Case> cases = {
      {cuda::FusedIn::kRmsNorm, 64, 64, true, 4096},
      {cuda::FusedIn::kRmsNorm, 56, 64, true, 3584},
      {cuda::FusedIn::kSwiGLU, 112, 128, true, 14336},
      {cuda::FusedIn::kSwiGLU, 4, 43, true, 172},
      {cuda::FusedIn::kPlain, 32, 128, false, 4096},
      {cuda::FusedIn::kPlain, 9, 64, false, 576},
      {cuda::FusedIn::kRmsNorm, 0, 0, false, 24},
      {cuda::FusedIn::kSwiGLU, 128, 148, true, 18944},
      {cuda::FusedIn::kRmsNorm, 24, 24, true, 576},
      {cuda::FusedIn::kPlain, 86, 128, true, 11008},
      {cuda::FusedIn::kPlain, 0, 0, false, 4096},
      {cuda::FusedIn::kSwiGLU, 160, 160, true, 25600},
      {cuda::FusedIn::kSwiGLU, 6, 43, false, 258},
      {cuda::FusedIn::kPlain, 0, 0, false, 4100},
      // Even R that is not a multiple of 8 (byte stores), padded L; Qwen2.5-7B's head mix.
      {cuda::FusedIn::kSwiGLU, 20, 50, true, 1000},
      {cuda::FusedIn::kRmsNorm, 30, 6, true, 180},
      {cuda::FusedIn::kPlain, 28, 128, false, 3584}};
  int device = 0;
  ASSERT_EQ(cudaGetDevice(&device), cudaSuccess);
  const auto h = [](double v) { return static_cast<double>(f16_to_f32(f32_to_f16(static_cast<float>(v)))); };
  for (const Case& k : cases) {
    ASSERT_TRUE(cuda::fused_quant_fits(k.L, k.R, k.K, k.in, k.with_b, device)) << k.L << "x" << k.R;
    for (int64_t rows : {1, 3, 16, 40}) {
      SCOPED_TRACE(testing::Message() << "K " << k.K << " L " << k.L << " R " << k.R << " rows " << rows);
      const int64_t K = k.K, xs = K + 8, L = k.L, R = k.R;
      const auto x = test::random_activations(static_cast<size_t>(rows * xs), 61 + static_cast<uint32_t>(K));
      const auto w = test::random_activations(static_cast<size_t>(K), 62, 1.0f);
      const auto A = test::random_matrix(std::max<int64_t>(L, 1), 63),
                 B = test::random_matrix(std::max<int64_t>(R, 1), 64);
      std::vector<uint16_t> gu16(static_cast<size_t>(rows * 2 * K));
      const auto gu = test::random_activations(gu16.size(), 65, 3.0f);
      for (size_t i = 0; i < gu.size(); ++i) gu16[i] = f32_to_f16(gu[i]);
      // Prologue, then the kernel's chain (tr) and the unrounded one (exact).
      std::vector<float> pro(static_cast<size_t>(rows * K)), tr(pro.size()), exact(pro.size());
      for (int64_t r = 0; r < rows; ++r) {
        float* o = pro.data() + r * K;
        if (k.in == cuda::FusedIn::kRmsNorm) {
          ref::rmsnorm(x.data() + r * xs, w.data(), 1, K, 1e-5f, o);
        } else if (k.in == cuda::FusedIn::kSwiGLU) {
          std::vector<float> g(static_cast<size_t>(K)), u(g.size());
          for (int64_t i = 0; i < K; ++i)
            g[static_cast<size_t>(i)] = f16_to_f32(gu16[static_cast<size_t>(r * 2 * K + i)]),
            u[static_cast<size_t>(i)] = f16_to_f32(gu16[static_cast<size_t>(r * 2 * K + K + i)]);
          ref::swiglu(g.data(), u.data(), K, o);
        } else {
          std::copy(x.begin() + r * xs, x.begin() + r * xs + K, o);
        }
      }
      if (L > 0) {
        ref::kron_transform(pro.data(), rows, K, nullptr, A.data(), L, k.with_b ? B.data() : nullptr, R,
                            exact.data());
        // The fp16 operands once, then T = X B and Y = A^T T row by row (sums in double).
        std::vector<double> hA(A.size()), hB(B.size()), hX(static_cast<size_t>(K)),
            T(static_cast<size_t>(L * R));
        for (size_t i = 0; i < A.size(); ++i) hA[i] = h(A[i]);
        for (size_t i = 0; i < B.size(); ++i) hB[i] = h(B[i]);
        for (int64_t r = 0; r < rows; ++r) {
          const float* X = pro.data() + r * K;
          for (int64_t i = 0; i < K; ++i) hX[static_cast<size_t>(i)] = h(X[i]);
          std::vector<double> acc(static_cast<size_t>(R));
          for (int64_t l = 0; l < L; ++l) {
            if (k.with_b) {
              std::fill(acc.begin(), acc.end(), 0.0);
              for (int64_t q = 0; q < R; ++q)
                for (int64_t c = 0; c < R; ++c)
                  acc[static_cast<size_t>(c)] +=
                      hX[static_cast<size_t>(l * R + q)] * hB[static_cast<size_t>(q * R + c)];
            } else {
              for (int64_t c = 0; c < R; ++c) acc[static_cast<size_t>(c)] = X[l * R + c];
            }
            for (int64_t c = 0; c < R; ++c)
              T[static_cast<size_t>(l * R + c)] = h(acc[static_cast<size_t>(c)]);
          }
          for (int64_t i = 0; i < L; ++i) {
            std::fill(acc.begin(), acc.end(), 0.0);
            for (int64_t l = 0; l < L; ++l)
              for (int64_t c = 0; c < R; ++c)
                acc[static_cast<size_t>(c)] +=
                    hA[static_cast<size_t>(l * L + i)] * T[static_cast<size_t>(l * R + c)];
            for (int64_t c = 0; c < R; ++c)
              tr[static_cast<size_t>(r * K + i * R + c)] = static_cast<float>(acc[static_cast<size_t>(c)]);
          }
        }
      } else {
        tr = pro;
        exact = pro;
      }
      cuda::FusedQuantArgs f;
      f.in = k.in;
      f.eps = 1e-5f;
      f.L = L;
      f.R = R;
      f.clips.n = 2;
      f.clips.max[1] = 0.9f;
      f.clips.min[1] = 0.85f;
      DeviceBuffer<float> dx(x), dw(w), dA(A), dB(B), ds(static_cast<size_t>(2 * rows));
      DeviceBuffer<uint16_t> dgu(gu16),
          dapk(static_cast<size_t>(std::max<int64_t>(1, cuda::fused_operand_elems(L)))),
          dbpk(static_cast<size_t>(std::max<int64_t>(1, cuda::fused_operand_elems(R))));
      DeviceBuffer<uint8_t> dp(static_cast<size_t>(2 * rows * K / 2));
      if (L > 0) {
        ASSERT_EQ(cuda::fused_pack_operand(dA.get(), L, true, dapk.get(), nullptr), cudaSuccess);
        ASSERT_EQ(cuda::fused_pack_operand(dB.get(), R, false, dbpk.get(), nullptr), cudaSuccess);
      }
      f.x = dx.get();
      f.x_stride = xs;
      f.norm_w = dw.get();
      f.gate = dgu.get();
      f.up = dgu.get() + K;
      f.gu_stride = 2 * K;
      f.a_pk = L ? dapk.get() : nullptr;
      f.b_pk = L && k.with_b ? dbpk.get() : nullptr;
      std::vector<uint8_t>
          p1;                 // the first split's output (1, or 2 where one CTA's share does not fit), which
      std::vector<float> s1;  // every other split must equal
      bool first = true;
      for (int split : {1, 2, 0, 4, 8}) {
        SCOPED_TRACE(testing::Message() << "split " << split);
        if (split > 0 && !cuda::fused_quant_fits(L, R, K, k.in, k.with_b, device, split)) {
          ASSERT_EQ(split, 1) << "only one CTA per token may exceed the shared memory";
          EXPECT_EQ(cuda::fused_quant_int4(f, rows, K, dp.get(), ds.get(), nullptr, false, split),
                    cudaErrorInvalidValue);
          continue;
        }
        // A different poison per split: a byte that some split leaves unwritten cannot match split 1's.
        ASSERT_EQ(cudaMemset(dp.get(), 0x3C + 0x11 * split, dp.bytes()), cudaSuccess);
        ds.poison();  // NaN scales
        ASSERT_EQ(cuda::fused_quant_int4(f, rows, K, dp.get(), ds.get(), nullptr, rows == 3, split),
                  cudaSuccess);
        ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
        const auto gp = dp.download();
        const auto gs = ds.download();
        if (first) {
          p1 = gp;
          s1 = gs;
          first = false;
        } else {
          EXPECT_TRUE(gp == p1) << "packed bytes differ from split 1";
          EXPECT_TRUE(std::equal(gs.begin(), gs.end(), s1.begin(), [](float a, float b) {
            return std::memcmp(&a, &b, sizeof a) == 0;
          })) << "scales differ from split 1";
        }
        for (int cp = 0; cp < 2; ++cp) {
          std::vector<uint8_t> rp(static_cast<size_t>(rows * K / 2));
          std::vector<float> rs(static_cast<size_t>(rows));
          ref::quantize_sym_int4(tr.data(), rows, K, K, f.clips.max[cp], f.clips.min[cp], rp.data(),
                                 rs.data());
          int64_t off_by_one = 0;
          double err_exact = 0;  // mean |dequantized - exact| / scale
          for (int64_t r = 0; r < rows; ++r)
            EXPECT_NEAR(gs[static_cast<size_t>(cp * rows + r)], rs[static_cast<size_t>(r)],
                        4e-4 * rs[static_cast<size_t>(r)])
                << "row " << r;
          for (size_t i = 0; i < rp.size(); ++i)
            for (int hf = 0; hf < 2; ++hf) {
              const int a = ((gp[cp * rp.size() + i] >> (4 * hf)) & 0xF) ^ 8,
                        b = ((rp[i] >> (4 * hf)) & 0xF) ^ 8;
              ASSERT_LE(std::abs(a - b), 1) << "copy " << cp << " byte " << i;
              off_by_one += a != b;
              const size_t e = 2 * i + static_cast<size_t>(hf);
              const double sc = gs[static_cast<size_t>(cp * rows) + e / static_cast<size_t>(K)];
              const double ex = std::clamp(exact[e] / sc, -8.0, 7.0);
              err_exact += std::fabs((a - 8) - ex);
            }
          EXPECT_LE(off_by_one, std::max<int64_t>(2, rows * K / 200));
          // Rounding alone is 0.25 of a step on average; fp16 operands add little.
          EXPECT_LE(err_exact / static_cast<double>(rows * K), 0.3);
        }
      }
    }
  }
}

// Bad arguments: nothing launched, cudaErrorInvalidValue.
TEST(W4A4Ops, FusedQuantRejectsBadArguments) {
  FQ_REQUIRE_CUDA();
  DeviceBuffer<float> dx(std::vector<float>(64, 1.0f)), ds(std::vector<float>(4, 0.0f));
  DeviceBuffer<uint16_t> pk(std::vector<uint16_t>(512, 0));
  DeviceBuffer<uint8_t> dp(std::vector<uint8_t>(64, 0));
  cuda::FusedQuantArgs f;
  f.x = dx.get();
  f.x_stride = 64;
  f.L = 8;
  f.R = 8;
  f.a_pk = pk.get();
  f.b_pk = pk.get();
  EXPECT_EQ(cuda::fused_quant_int4(f, 1, 64, dp.get(), ds.get(), nullptr), cudaSuccess);
  // 8 CTAs for one n-tile of Y: ranks without work are fine.
  EXPECT_EQ(cuda::fused_quant_int4(f, 1, 64, dp.get(), ds.get(), nullptr, false, 8), cudaSuccess);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  EXPECT_EQ(cuda::fused_quant_int4(f, 1, 64, dp.get(), ds.get(), nullptr, false, -1), cudaErrorInvalidValue);
  EXPECT_EQ(cuda::fused_quant_int4(f, 1, 64, dp.get(), ds.get(), nullptr, false, 9), cudaErrorInvalidValue);
  EXPECT_EQ(cuda::fused_quant_int4(f, 1, 64, dp.get(), ds.get(), nullptr, false, 3), cudaErrorInvalidValue);
  EXPECT_EQ(cuda::fused_quant_int4(f, 1, 62, dp.get(), ds.get(), nullptr),
            cudaErrorInvalidValue);  // L R != K
  f.a_pk = pk.get() + 1;             // misaligned
  EXPECT_EQ(cuda::fused_quant_int4(f, 1, 64, dp.get(), ds.get(), nullptr), cudaErrorInvalidValue);
  f.a_pk = nullptr;
  EXPECT_EQ(cuda::fused_quant_int4(f, 1, 64, dp.get(), ds.get(), nullptr), cudaErrorInvalidValue);
  f.a_pk = pk.get();
  f.in = cuda::FusedIn::kRmsNorm;  // no norm weight
  EXPECT_EQ(cuda::fused_quant_int4(f, 1, 64, dp.get(), ds.get(), nullptr), cudaErrorInvalidValue);
  EXPECT_EQ(cuda::fused_pack_operand(dx.get(), 0, true, pk.get(), nullptr), cudaErrorInvalidValue);
  int device = 0;
  ASSERT_EQ(cudaGetDevice(&device), cudaSuccess);
  EXPECT_FALSE(cuda::fused_quant_fits(4096, 4096, 4096 * 4096, cuda::FusedIn::kPlain, true, device));
}

// One min/max, one copy per clip pair: bytes and scales equal ref::quantize_sym_int4 per clip exactly.
TEST(W4A4Ops, QuantizeMultiEqualsReferencePerClip) {
  FQ_REQUIRE_CUDA();
  // Besides random rows (cols 2 .. 14336), a row of values on and one ulp around half-integer multiples of
  // the scale (cols 0): the kernel's reciprocal fast path must defer to the exact division there.
  std::vector<float> ties;
  for (int k = -7; k <= 6; ++k)  // |values| <= 6.5 and the row's max |x| 7: clip 1 gives scale 1 (exact ties)
    for (float m : {0.7f, 0.9f, 1.0f}) {
      const float v = (static_cast<float>(k) + 0.5f) * m;
      ties.insert(ties.end(), {v, std::nextafter(v, 1e9f), std::nextafter(v, -1e9f)});
    }
  ties.insert(ties.end(), {7.0f, -7.0f});
  if (ties.size() % 2 != 0) ties.push_back(0.0f);
  for (int64_t cols : {int64_t{0}, int64_t{2}, int64_t{24}, int64_t{172}, int64_t{4096}, int64_t{14336}})
    for (int64_t rows : {1, 3, 17}) {
      if (cols == 0 && rows > 1) continue;
      const bool tie_row = cols == 0;
      if (tie_row) cols = static_cast<int64_t>(ties.size());
      const int64_t stride = cols + 4;
      auto x = test::random_activations(static_cast<size_t>(rows * stride), 5 + static_cast<uint32_t>(cols));
      if (tie_row) std::copy(ties.begin(), ties.end(), x.begin());
      cuda::SymClips c;
      c.n = 3;
      const float mx[3] = {1.0f, 0.9f, 0.7f}, mn[3] = {1.0f, 0.8f, 0.95f};
      std::copy(mx, mx + 3, c.max);
      std::copy(mn, mn + 3, c.min);
      DeviceBuffer<float> dx(x), ds(static_cast<size_t>(3 * rows));
      DeviceBuffer<uint8_t> dp(static_cast<size_t>(3 * rows * cols / 2));
      ASSERT_EQ(cuda::quantize_sym_int4_multi(dx.get(), rows, cols, stride, c, dp.get(), ds.get(), nullptr),
                cudaSuccess);
      const auto gp = dp.download();
      const auto gs = ds.download();
      for (int k = 0; k < 3; ++k) {
        std::vector<uint8_t> rp(static_cast<size_t>(rows * cols / 2));
        std::vector<float> rs(static_cast<size_t>(rows));
        ref::quantize_sym_int4(x.data(), rows, cols, stride, mx[k], mn[k], rp.data(), rs.data());
        EXPECT_TRUE(std::equal(rp.begin(), rp.end(), gp.begin() + k * rows * cols / 2))
            << cols << " copy " << k;
        EXPECT_TRUE(std::equal(rs.begin(), rs.end(), gs.begin() + k * rows)) << cols << " copy " << k;
      }
    }
}

// Bias + RoPE + the K transform on a fused q|k|v fp16 buffer, against the same steps in fp32 on the host
// (QuantDecoder's order: bias, rope_apply, rowvec_matmul), compared after the fp16 rounding.
TEST(W4A4Ops, RopeKTransformMatchesReference) {
  FQ_REQUIRE_CUDA();
  struct Case {
    int64_t H, KV, d, n_seq, n_tok;
    bool bias, mats, dpos;
  };
  for (const Case& k : {Case{9, 3, 64, 1, 7, true, true, false}, Case{28, 4, 128, 2, 3, false, true, false},
                        Case{32, 8, 128, 4, 1, false, true, true}, Case{4, 2, 8, 3, 1, true, false, true}}) {
    const int64_t QKV = (k.H + 2 * k.KV) * k.d, stride = QKV + 8, rows = k.n_seq * k.n_tok;
    const auto xf = test::random_activations(static_cast<size_t>(rows * stride), 21, 4.0f);
    std::vector<uint16_t> x16(xf.size());
    for (size_t i = 0; i < xf.size(); ++i) x16[i] = f32_to_f16(xf[i]);
    const auto bias = test::random_activations(static_cast<size_t>(QKV), 22, 1.0f);
    const auto qm = test::random_matrix(k.d, 23), km = test::random_matrix(k.d, 24);
    const std::vector<float> inv = ref::rope_inv_freq(k.d, 10000.0, {});
    std::vector<int32_t> pos(static_cast<size_t>(k.n_seq));
    for (int64_t s = 0; s < k.n_seq; ++s) pos[static_cast<size_t>(s)] = static_cast<int32_t>(3 + 5 * s);
    const int64_t pos0 = 11;
    DeviceBuffer<uint16_t> dq(x16);
    DeviceBuffer<float> db(bias), dqm(qm), dkm(km), dinv(inv);
    DeviceBuffer<int32_t> dpos(pos);
    ASSERT_EQ(
        cuda::qkv_rope_transform_f16(dq.get(), stride, rows, k.n_tok, pos0, k.dpos ? dpos.get() : nullptr,
                                     k.bias ? db.get() : nullptr, k.H, k.KV, k.d, dinv.get(),
                                     k.mats ? dqm.get() : nullptr, k.mats ? dkm.get() : nullptr, nullptr),
        cudaSuccess);
    const auto got = dq.download();
    double md = 0, mr = 0;
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t p = (k.dpos ? pos[static_cast<size_t>(r / k.n_tok)] : pos0) + r % k.n_tok;
      std::vector<float> row(static_cast<size_t>(QKV));
      for (int64_t i = 0; i < QKV; ++i)
        row[static_cast<size_t>(i)] = f16_to_f32(x16[static_cast<size_t>(r * stride + i)]) +
                                      (k.bias ? bias[static_cast<size_t>(i)] : 0.0f);
      std::vector<float> co(static_cast<size_t>(k.d / 2)), si(co.size());
      for (size_t i = 0; i < co.size(); ++i) {
        const float ang = inv[i] * static_cast<float>(p);
        co[i] = std::cos(ang);
        si[i] = std::sin(ang);
      }
      ref::rope_apply(row.data(), k.H + k.KV, k.d, co.data(), si.data());
      if (k.mats) {
        ref::rowvec_matmul(row.data(), k.H, qm.data(), k.d);
        ref::rowvec_matmul(row.data() + k.H * k.d, k.KV, km.data(), k.d);
      }
      for (int64_t i = 0; i < QKV; ++i) {
        const double g = f16_to_f32(got[static_cast<size_t>(r * stride + i)]);
        md = std::max(md, std::fabs(g - row[static_cast<size_t>(i)]));
        mr = std::max(mr, std::fabs(double(row[static_cast<size_t>(i)])));
      }
      for (int64_t i = QKV; i < stride; ++i)  // the padding is untouched
        EXPECT_EQ(got[static_cast<size_t>(r * stride + i)], x16[static_cast<size_t>(r * stride + i)]);
    }
    EXPECT_LE(md, 2e-3 * mr) << "H " << k.H << " d " << k.d;
  }
}

// Without head matrices (the prefill route) RoPE runs one thread per rotation pair; with identity matrices
// the per-head kernel computes the same values (x * 1 plus exact zeros), so the two must agree value for
// value: in place and into qk_out, with and without a bias, host and device positions, the engine's shapes.
TEST(W4A4Ops, RopePairsEqualsPerHeadKernel) {
  FQ_REQUIRE_CUDA();
  struct Case {
    int64_t H, KV, d, n_seq, n_tok;
    bool bias, dpos, qk_out;
  };
  for (const Case& k :
       {Case{32, 8, 128, 1, 37, false, false, true}, Case{28, 4, 128, 2, 5, true, false, true},
        Case{9, 3, 64, 3, 1, true, true, false}, Case{4, 2, 8, 2, 3, false, false, false}}) {
    const int64_t QKV = (k.H + 2 * k.KV) * k.d, stride = QKV + 8, rows = k.n_seq * k.n_tok,
                  QK = (k.H + k.KV) * k.d;
    const auto xf = test::random_activations(static_cast<size_t>(rows * stride), 41, 4.0f);
    std::vector<uint16_t> x16(xf.size());
    for (size_t i = 0; i < xf.size(); ++i) x16[i] = f32_to_f16(xf[i]);
    const auto bias = test::random_activations(static_cast<size_t>(QKV), 42, 1.0f);
    std::vector<float> eye(static_cast<size_t>(k.d * k.d), 0.0f);
    for (int64_t i = 0; i < k.d; ++i) eye[static_cast<size_t>(i * k.d + i)] = 1.0f;
    const std::vector<float> inv = ref::rope_inv_freq(k.d, 500000.0, {});
    std::vector<int32_t> pos(static_cast<size_t>(k.n_seq));
    for (int64_t s = 0; s < k.n_seq; ++s) pos[static_cast<size_t>(s)] = static_cast<int32_t>(100 + 977 * s);
    DeviceBuffer<float> db(bias), deye(eye), dinv(inv);
    DeviceBuffer<int32_t> dpos(pos);
    std::vector<uint16_t> outs[2], qks[2];
    for (int path = 0; path < 2; ++path) {  // 0: pairs (no matrices), 1: per head (identity matrices)
      DeviceBuffer<uint16_t> dq(x16), dqk(static_cast<size_t>(std::max<int64_t>(1, rows * QK)));
      const float* m = path ? deye.get() : nullptr;
      ASSERT_EQ(
          cuda::qkv_rope_transform_f16(dq.get(), stride, rows, k.n_tok, 2040, k.dpos ? dpos.get() : nullptr,
                                       k.bias ? db.get() : nullptr, k.H, k.KV, k.d, dinv.get(), m, m, nullptr,
                                       k.qk_out ? dqk.get() : nullptr, k.qk_out ? QK : 0),
          cudaSuccess);
      outs[path] = dq.download();
      if (k.qk_out) qks[path] = dqk.download();
    }
    for (size_t i = 0; i < outs[0].size(); ++i)
      ASSERT_EQ(f16_to_f32(outs[0][i]), f16_to_f32(outs[1][i])) << "H " << k.H << " element " << i;
    for (size_t i = 0; i < qks[0].size(); ++i)
      ASSERT_EQ(f16_to_f32(qks[0][i]), f16_to_f32(qks[1][i])) << "H " << k.H << " qk_out element " << i;
  }
}

// kv4_append, then the read-back equals ref::dequantize_kv_asym_int4 of ref::quantize_kv_asym_int4: fp32 and
// fp16 rows (fp16 at head_dim 64 / 128 takes the vector append kernel), head_dim 12 (the one-byte read-back)
// and 64 / 128 (the vector one).
TEST(W4A4Ops, Kv4DequantMatchesReference) {
  FQ_REQUIRE_CUDA();
  for (const int64_t d : {12, 64, 128})
    for (const DType dt : {DType::F32, DType::F16}) {
      SCOPED_TRACE(testing::Message() << "head_dim " << d << (dt == DType::F16 ? " fp16" : " fp32"));
      const int64_t slots = 3, ctx = 20, KV = 3, n_seq = 2, n_tok = 13, slot0 = 1;
      cuda::Kv4Layer c;
      const size_t cells = static_cast<size_t>(slots * ctx * KV);
      DeviceBuffer<uint8_t> kc(cells * d / 2), vc(cells * d / 2);
      DeviceBuffer<float> ks(cells), kz(cells), vs(cells), vz(cells);
      c = {kc.get(), ks.get(), kz.get(), vc.get(), vs.get(), vz.get(), slots, ctx, KV, d};
      auto k = test::random_activations(static_cast<size_t>(n_seq * n_tok * KV * d), 31);
      auto v = test::random_activations(static_cast<size_t>(n_seq * n_tok * KV * d), 32);
      std::vector<uint16_t> k16(k.size()), v16(v.size());
      for (size_t i = 0; i < k.size(); ++i) {
        k16[i] = f32_to_f16(k[i]);
        v16[i] = f32_to_f16(v[i]);
        if (dt == DType::F16) {
          k[i] = f16_to_f32(k16[i]);
          v[i] = f16_to_f32(v16[i]);
        }
      }
      DeviceBuffer<float> dk(k), dv(v);
      DeviceBuffer<uint16_t> dk16(k16), dv16(v16);
      const bool h = dt == DType::F16;
      ASSERT_EQ(cuda::kv4_append(c, h ? static_cast<const void*>(dk16.get()) : dk.get(),
                                 h ? static_cast<const void*>(dv16.get()) : dv.get(), dt, n_seq, n_tok,
                                 KV * d, slot0, 0, nullptr, nullptr, cuda::Kv4Clip{}, nullptr),
                cudaSuccess);
      DeviceBuffer<uint16_t> ko(static_cast<size_t>(n_seq * n_tok * KV * d)), vo(ko.bytes() / 2);
      ASSERT_EQ(cuda::kv4_dequant_f16(c, slot0, n_seq, n_tok, ko.get(), vo.get(), nullptr), cudaSuccess);
      const auto gk = ko.download(), gv = vo.download();
      for (int w = 0; w < 2; ++w) {
        const auto& src = w ? v : k;
        const int64_t rows = n_seq * n_tok;
        std::vector<uint8_t> p(static_cast<size_t>(rows * KV * d / 2));
        std::vector<float> s(static_cast<size_t>(rows * KV)), z(s.size()), deq(src.size());
        ref::quantize_kv_asym_int4(src.data(), rows, KV, d, KV * d, 1.0f, 1.0f, p.data(), s.data(), z.data());
        ref::dequantize_kv_asym_int4(p.data(), s.data(), z.data(), rows, KV, d, deq.data());
        const auto& got = w ? gv : gk;
        for (size_t i = 0; i < deq.size(); ++i)
          ASSERT_EQ(got[i], f32_to_f16(deq[i])) << (w ? "V" : "K") << " element " << i;
      }
      EXPECT_EQ(cuda::kv4_dequant_f16(c, 2, 2, n_tok, ko.get(), vo.get(), nullptr), cudaErrorInvalidValue);
    }
}

// The decode launch that also appends to the KV4 cache == the per-head RoPE kernel followed by kv4_append on
// its output, bit for bit: q/k/v rows, codes, scales and zeros (the rest of the cache untouched), with and
// without a bias and head matrices, GQA, head_dim 8 / 64 / 128, host and device positions; a device position
// past the context raises the overflow flag and writes nothing for that sequence.
TEST(W4A4Ops, RopeKv4AppendEqualsSeparateKernels) {
  FQ_REQUIRE_CUDA();
  struct Case {
    int64_t H, KV, d, n_seq, n_tok;
    bool bias, mats, dpos;
  };
  const int64_t slots = 6, ctx = 24, slot0 = 1;
  for (const Case& k : {Case{9, 3, 64, 1, 7, true, true, false}, Case{32, 8, 128, 4, 1, false, true, true},
                        Case{28, 4, 128, 5, 1, true, true, true}, Case{4, 2, 8, 3, 2, true, false, true}}) {
    const int64_t QKV = (k.H + 2 * k.KV) * k.d, stride = QKV + 8, rows = k.n_seq * k.n_tok;
    const auto xf = test::random_activations(static_cast<size_t>(rows * stride), 51, 4.0f);
    std::vector<uint16_t> x16(xf.size());
    for (size_t i = 0; i < xf.size(); ++i) x16[i] = f32_to_f16(xf[i]);
    const auto bias = test::random_activations(static_cast<size_t>(QKV), 52, 1.0f);
    const auto qm = test::random_matrix(k.d, 53), km = test::random_matrix(k.d, 54);
    const std::vector<float> inv = ref::rope_inv_freq(k.d, 500000.0, {});
    std::vector<int32_t> pos(static_cast<size_t>(k.n_seq));
    for (int64_t s = 0; s < k.n_seq; ++s) pos[static_cast<size_t>(s)] = static_cast<int32_t>(2 + 7 * s);
    if (k.dpos && k.n_seq > 2) pos[1] = static_cast<int32_t>(ctx);  // past the context: flagged, not written
    const int64_t pos0 = 5;
    DeviceBuffer<float> db(bias), dqm(qm), dkm(km), dinv(inv);
    DeviceBuffer<int32_t> dpos(pos);
    const size_t cells = static_cast<size_t>(slots * ctx * k.KV);
    std::vector<uint8_t> poison8(cells * static_cast<size_t>(k.d) / 2, 0x5A);
    std::vector<float> poison(cells, -3.25f);
    std::vector<uint16_t> qkv_out[2];
    std::vector<uint8_t> kc_out[2], vc_out[2];
    std::vector<float> sc_out[2][4];
    int32_t flag[2] = {0, 0};
    for (int path = 0; path < 2; ++path) {  // 0: separate kernels, 1: one launch
      DeviceBuffer<uint16_t> dq(x16);
      DeviceBuffer<uint8_t> kc(poison8), vc(poison8);
      DeviceBuffer<float> ks(poison), kz(poison), vs(poison), vz(poison);
      DeviceBuffer<int32_t> dflag(std::vector<int32_t>{0});
      const cuda::Kv4Layer c{kc.get(), ks.get(), kz.get(), vc.get(), vs.get(),
                             vz.get(), slots,    ctx,      k.KV,     k.d};
      const cuda::Kv4Clip clip{0.93f, 0.97f, 0.9f, 1.0f};
      const int32_t* dp = k.dpos ? dpos.get() : nullptr;
      const float *qmp = k.mats ? dqm.get() : nullptr, *kmp = k.mats ? dkm.get() : nullptr;
      const float* bp = k.bias ? db.get() : nullptr;
      if (path == 0) {
        // Without matrices this runs the pairs kernel (RopePairsEqualsPerHeadKernel: the same values).
        ASSERT_EQ(cuda::qkv_rope_transform_f16(dq.get(), stride, rows, k.n_tok, pos0, dp, bp, k.H, k.KV, k.d,
                                               dinv.get(), qmp, kmp, nullptr),
                  cudaSuccess);
        ASSERT_EQ(cuda::kv4_append(c, dq.get() + k.H * k.d, dq.get() + (k.H + k.KV) * k.d, DType::F16,
                                   k.n_seq, k.n_tok, stride, slot0, pos0, dp, dflag.get(), clip, nullptr),
                  cudaSuccess);
      } else {
        ASSERT_EQ(
            cuda::qkv_rope_transform_kv4_f16(dq.get(), stride, rows, k.n_tok, slot0, pos0, dp, bp, k.H, k.KV,
                                             k.d, dinv.get(), qmp, kmp, c, dflag.get(), clip, nullptr),
            cudaSuccess);
      }
      ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
      qkv_out[path] = dq.download();
      kc_out[path] = kc.download();
      vc_out[path] = vc.download();
      sc_out[path][0] = ks.download();
      sc_out[path][1] = kz.download();
      sc_out[path][2] = vs.download();
      sc_out[path][3] = vz.download();
      flag[path] = dflag.download()[0];
    }
    const std::string what = "H " + std::to_string(k.H) + " d " + std::to_string(k.d);
    for (size_t i = 0; i < qkv_out[0].size(); ++i)
      ASSERT_EQ(qkv_out[0][i], qkv_out[1][i]) << what << " qkv element " << i;
    ASSERT_EQ(kc_out[0], kc_out[1]) << what;
    ASSERT_EQ(vc_out[0], vc_out[1]) << what;
    for (int j = 0; j < 4; ++j)
      for (size_t i = 0; i < cells; ++i)
        ASSERT_EQ(sc_out[0][j][i], sc_out[1][j][i]) << what << " scale/zero array " << j << " cell " << i;
    EXPECT_EQ(flag[0], flag[1]) << what;
    EXPECT_EQ(flag[1], k.dpos && k.n_seq > 2 ? 1 : 0) << what;
    // Something was written (the comparison is not between two untouched caches).
    EXPECT_NE(kc_out[1], poison8) << what;
  }
}

// Several activation copies over column segments == ref::qgemm_w4a4 per segment, bit for bit (one decode
// launch for 16-aligned boundaries, per-segment launches with a row stride otherwise; fp32 and fp16 outputs).
TEST(W4A4Ops, QgemmMultiActivationEqualsPerSegmentReference) {
  FQ_REQUIRE_CUDA();
  struct Case {
    int64_t M, K;
    std::vector<int64_t> ends;
  };
  const std::vector<Case> cases = {
      {1, 256, {64, 96, 128}}, {5, 512, {512, 640, 768}}, {16, 128, {48, 80}},  {33, 256, {256, 320, 384}},
      {2, 172, {24, 40, 56}},  {20, 64, {72, 88, 104}},   {3, 96, {40, 56, 72}}};
  for (const Case& k : cases) {
    const int n = static_cast<int>(k.ends.size());
    const int64_t N = k.ends.back(), kb = k.K / 2;
    const auto qw = test::random_packed(static_cast<size_t>(N * kb), 41);
    const auto sw = test::random_scales(static_cast<size_t>(N), 42);
    const auto qx = test::random_packed(static_cast<size_t>(n * k.M * kb), 43);
    const auto sx = test::random_scales(static_cast<size_t>(n * k.M), 44);
    const auto res = test::random_activations(static_cast<size_t>(k.M * N), 45);
    std::vector<float> ref(static_cast<size_t>(k.M * N));
    int64_t start = 0;
    for (int s = 0; s < n; ++s) {
      const int64_t ns = k.ends[static_cast<size_t>(s)] - start;
      std::vector<float> part(static_cast<size_t>(k.M * ns));
      ref::qgemm_w4a4(qx.data() + s * k.M * kb, sx.data() + s * k.M, qw.data() + start * kb,
                      sw.data() + start, nullptr, k.M, ns, k.K, part.data());
      for (int64_t m = 0; m < k.M; ++m)
        for (int64_t j = 0; j < ns; ++j)
          ref[static_cast<size_t>(m * N + start + j)] = part[static_cast<size_t>(m * ns + j)];
      start = k.ends[static_cast<size_t>(s)];
    }
    DeviceBuffer<uint8_t> dqw(qw), dqx(qx);
    DeviceBuffer<float> dsw(sw), dsx(sx), dy(ref.size());
    cuda::QgemmActs a;
    a.n = n;
    for (int s = 0; s < n; ++s) {
      a.qx[s] = dqx.get() + s * k.M * kb;
      a.sx[s] = dsx.get() + s * k.M;
      a.end[s] = k.ends[static_cast<size_t>(s)];
    }
    ASSERT_EQ(cuda::qgemm_w4a4_multi_cuda(a, dqw.get(), dsw.get(), nullptr, dy.get(), k.M, N, k.K, nullptr),
              cudaSuccess);
    EXPECT_EQ(dy.download(), ref) << "M " << k.M << " K " << k.K << " N " << N;
    // fp16 output with an fp16 residual: ref + residual in fp32, then rounded.
    std::vector<uint16_t> r16(res.size());
    for (size_t i = 0; i < res.size(); ++i) r16[i] = f32_to_f16(res[i]);
    DeviceBuffer<uint16_t> dr(r16), dy16(r16.size());
    ASSERT_EQ(
        cuda::qgemm_w4a4_multi_cuda_f16(a, dqw.get(), dsw.get(), dr.get(), dy16.get(), k.M, N, k.K, nullptr),
        cudaSuccess);
    const auto g16 = dy16.download();
    for (size_t i = 0; i < ref.size(); ++i)
      ASSERT_EQ(g16[i], f32_to_f16(ref[i] + f16_to_f32(r16[i]))) << "fp16 M " << k.M << " element " << i;
  }
  cuda::QgemmActs bad;
  bad.n = 2;
  bad.end[0] = 8;
  bad.end[1] = 4;  // not increasing
  EXPECT_EQ(cuda::qgemm_w4a4_multi_cuda(bad, nullptr, nullptr, nullptr, nullptr, 1, 4, 64, nullptr),
            cudaErrorInvalidValue);
}
#else
TEST(W4A4Ops, NeedsCuda) {
  GTEST_SKIP() << "built without CUDA";
}
#endif

}  // namespace
}  // namespace fq
