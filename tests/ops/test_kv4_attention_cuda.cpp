// CUDA vs CPU reference for the KV4 cache: the append kernel (src/kernels/cuda/kv_cache.cu) must write
// exactly the bytes/scales/zeros of ref::quantize_kv_asym_int4 at the right cells and nothing else; decode
// attention over the 4-bit cache (decode_attn.cu) must equal ref::dequantize_kv_asym_int4 + ref::attention
// within fp32 rounding. Shapes: 9/3, 28/4, 32/8, 16/1 (a GQA group larger than one CTA's 8 heads) and 4/4
// query/kv heads; head_dim 8, 64, 128; several lengths, forced split counts, and an 8192-token context.
#ifdef FLATQUANT_WITH_CUDA
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "kernels/cuda/attention.h"
#include "ops/attn_test_util.h"
#include "ops/ops_util.h"
#include "ref/attention.h"
#include "ref/quant.h"

namespace fq {
namespace {

using test::DeviceBuffer;

// Host image of one layer's cache, with device twins.
struct CacheImage {
  int64_t slots, ctx, H, d;
  std::vector<uint8_t> k, v;
  std::vector<float> ks, kz, vs, vz;
  CacheImage(int64_t slots_, int64_t ctx_, int64_t H_, int64_t d_) : slots(slots_), ctx(ctx_), H(H_), d(d_) {
    const size_t cells = static_cast<size_t>(slots * ctx * H);
    k.assign(cells * static_cast<size_t>(d / 2), 0xFF);
    v = k;
    float nan;
    const uint32_t ones = 0xFFFFFFFFu;
    std::memcpy(&nan, &ones, sizeof nan);
    ks.assign(cells, nan);
    kz = vs = vz = ks;
  }
  int64_t cell(int64_t slot, int64_t pos, int64_t h) const { return (slot * ctx + pos) * H + h; }
};

struct DeviceCache {
  DeviceBuffer<uint8_t> k, v;
  DeviceBuffer<float> ks, kz, vs, vz;
  cuda::Kv4Layer layer;
  explicit DeviceCache(const CacheImage& img)
      : k(img.k), v(img.v), ks(img.ks), kz(img.kz), vs(img.vs), vz(img.vz) {
    layer = {k.get(), ks.get(), kz.get(), v.get(), vs.get(), vz.get(), img.slots, img.ctx, img.H, img.d};
  }
};

// Quantizes rows x [n_tok, H, d] (token stride `stride`) with the reference into img at (slot, pos..).
void ref_append(CacheImage& img, const float* kx, const float* vx, int64_t n_tok, int64_t stride,
                int64_t slot, int64_t pos, const cuda::Kv4Clip& clip) {
  for (int64_t t = 0; t < n_tok; ++t) {
    const int64_t c0 = img.cell(slot, pos + t, 0);
    ref::quantize_kv_asym_int4(kx + t * stride, 1, img.H, img.d, stride, clip.k_max, clip.k_min,
                               img.k.data() + c0 * (img.d / 2), img.ks.data() + c0, img.kz.data() + c0);
    ref::quantize_kv_asym_int4(vx + t * stride, 1, img.H, img.d, stride, clip.v_max, clip.v_min,
                               img.v.data() + c0 * (img.d / 2), img.vs.data() + c0, img.vz.data() + c0);
  }
}

std::string compare_bytes(const std::vector<uint8_t>& gpu, const std::vector<uint8_t>& cpu, int64_t row_bytes,
                          const char* what) {
  size_t bad = 0, first = 0;
  for (size_t i = 0; i < cpu.size(); ++i)
    if (gpu[i] != cpu[i] && bad++ == 0) first = i;
  if (bad == 0) return "";
  char buf[256];
  std::snprintf(buf, sizeof buf,
                "%s: %zu of %zu bytes differ; first in cell %lld byte %lld: gpu=0x%02x cpu=0x%02x%s", what,
                bad, cpu.size(), static_cast<long long>(first / row_bytes),
                static_cast<long long>(first % row_bytes), gpu[first], cpu[first],
                cpu[first] == 0xFF ? " (cpu 0xff: this cell must stay untouched)" : "");
  return buf;
}

std::string compare_floats(const std::vector<float>& gpu, const std::vector<float>& cpu, const char* what) {
  for (size_t i = 0; i < cpu.size(); ++i)
    if (std::memcmp(&gpu[i], &cpu[i], sizeof(float)) != 0) {
      char buf[256];
      std::snprintf(buf, sizeof buf, "%s[cell %zu]: gpu=%.9g cpu=%.9g (bit-exact expected; NaN = poison)",
                    what, i, gpu[i], cpu[i]);
      return buf;
    }
  return "";
}

void expect_cache_equal(const DeviceCache& dc, const CacheImage& img, const std::string& ctx) {
  EXPECT_EQ(compare_bytes(dc.k.download(), img.k, img.d / 2, "K codes"), "") << ctx;
  EXPECT_EQ(compare_bytes(dc.v.download(), img.v, img.d / 2, "V codes"), "") << ctx;
  EXPECT_EQ(compare_floats(dc.ks.download(), img.ks, "K scale"), "") << ctx;
  EXPECT_EQ(compare_floats(dc.kz.download(), img.kz, "K zero"), "") << ctx;
  EXPECT_EQ(compare_floats(dc.vs.download(), img.vs, "V scale"), "") << ctx;
  EXPECT_EQ(compare_floats(dc.vz.download(), img.vz, "V zero"), "") << ctx;
}

TEST(Kv4AppendCuda, WritesReferenceCodesAtTheirPositions) {
  FQ_REQUIRE_CUDA();
  const cuda::Kv4Clip clip{0.93f, 0.97f, 1.0f, 0.9f};
  for (int64_t H : {3, 4, 8, 9}) {
    for (int64_t d : {8, 64, 128}) {
      for (DType dt : {DType::F32, DType::F16}) {
        const int64_t slots = 3, ctx = 40, stride = H * d + 4;
        const std::string ctx_s =
            "H " + std::to_string(H) + " d " + std::to_string(d) + (dt == DType::F16 ? " fp16" : " fp32");
        CacheImage img(slots, ctx, H, d);
        DeviceCache dc(img);
        // 1) a prompt of 13 tokens into slot 1 at host position 5.
        const int64_t n = 13;
        auto kx = test::random_activations(static_cast<size_t>(n * stride), static_cast<uint32_t>(H * 7 + d));
        auto vx =
            test::random_activations(static_cast<size_t>(n * stride), static_cast<uint32_t>(H * 7 + d + 1));
        for (int64_t i = 0; i < d; ++i) kx[static_cast<size_t>(2 * stride + i)] = 0.0f;  // an all-zero head
        // A V head of exact half-integers over [0, 15) with max 15: scale 1, zero 0, every other value a tie
        // (round half to even; the fast fp16 kernel must take its exact path for them).
        for (int64_t i = 0; i < d; ++i)
          vx[static_cast<size_t>(3 * stride + i)] = i == 0 ? 15.0f : 0.5f * static_cast<float>(i % 30);
        if (dt == DType::F16) {
          test::round_f16(kx);
          test::round_f16(vx);
        }
        ref_append(img, kx.data(), vx.data(), n, stride, 1, 5, clip);
        {
          DeviceBuffer<float> dk32(kx), dv32(vx);
          DeviceBuffer<uint16_t> dk16(test::to_f16(kx)), dv16(test::to_f16(vx));
          const void* kp = dt == DType::F16 ? static_cast<const void*>(dk16.get()) : dk32.get();
          const void* vp = dt == DType::F16 ? static_cast<const void*>(dv16.get()) : dv32.get();
          ASSERT_EQ(
              cuda::kv4_append(dc.layer, kp, vp, dt, 1, n, stride, 1, 5, nullptr, nullptr, clip, nullptr),
              cudaSuccess);
        }
        // 2) one decode token per slot at device positions {0, 18, ctx-1}.
        auto k1 = test::random_activations(static_cast<size_t>(slots * stride), static_cast<uint32_t>(H + d));
        auto v1 =
            test::random_activations(static_cast<size_t>(slots * stride), static_cast<uint32_t>(H + d + 9));
        if (dt == DType::F16) {
          test::round_f16(k1);
          test::round_f16(v1);
        }
        const std::vector<int32_t> pos = {0, 18, static_cast<int32_t>(ctx - 1)};
        for (int64_t s = 0; s < slots; ++s)
          ref_append(img, k1.data() + s * stride, v1.data() + s * stride, 1, stride, s,
                     pos[static_cast<size_t>(s)], clip);
        DeviceBuffer<int32_t> dpos(pos), dflag(std::vector<int32_t>{0});
        DeviceBuffer<float> dk32(k1), dv32(v1);
        DeviceBuffer<uint16_t> dk16(test::to_f16(k1)), dv16(test::to_f16(v1));
        const void* kp = dt == DType::F16 ? static_cast<const void*>(dk16.get()) : dk32.get();
        const void* vp = dt == DType::F16 ? static_cast<const void*>(dv16.get()) : dv32.get();
        ASSERT_EQ(cuda::kv4_append(dc.layer, kp, vp, dt, slots, 1, stride, 0, 0, dpos.get(), dflag.get(),
                                   clip, nullptr),
                  cudaSuccess);
        FQ_CUDA_CHECK(cudaDeviceSynchronize(), "kv4_append");
        EXPECT_EQ(dflag.download()[0], 0) << ctx_s << ": overflow flag set for in-range positions";
        expect_cache_equal(dc, img, ctx_s);
      }
    }
  }
}

TEST(Kv4AppendCuda, DevicePositionOverflowIsFlaggedAndWritesNothing) {
  FQ_REQUIRE_CUDA();
  const int64_t H = 2, d = 8, ctx = 4;
  CacheImage img(2, ctx, H, d);
  DeviceCache dc(img);
  auto x = test::random_activations(static_cast<size_t>(2 * H * d), 5);
  DeviceBuffer<float> dx(x);
  DeviceBuffer<int32_t> dpos(std::vector<int32_t>{static_cast<int32_t>(ctx), -1}),
      dflag(std::vector<int32_t>{0});
  ASSERT_EQ(cuda::kv4_append(dc.layer, dx.get(), dx.get(), DType::F32, 2, 1, H * d, 0, 0, dpos.get(),
                             dflag.get(), {}, nullptr),
            cudaSuccess);
  FQ_CUDA_CHECK(cudaDeviceSynchronize(), "kv4_append");
  EXPECT_EQ(dflag.download()[0], 1) << "positions ctx and -1 must set the overflow flag";
  expect_cache_equal(dc, img, "overflowing append must not write any cell");
}

TEST(Kv4AppendCuda, RejectsHostOverflowWithoutLaunching) {
  // Argument checks come before any CUDA call: this runs without a device.
  cuda::Kv4Layer l;
  l.n_slots = 2;
  l.max_ctx = 16;
  l.n_head_kv = 2;
  l.head_dim = 8;
  EXPECT_EQ(cuda::kv4_append(l, nullptr, nullptr, DType::F32, 1, 5, 16, 0, 12, nullptr, nullptr, {}, nullptr),
            cudaErrorInvalidValue)
      << "pos 12 + 5 tokens > max_ctx 16";
  EXPECT_EQ(cuda::kv4_append(l, nullptr, nullptr, DType::F32, 1, 1, 16, 2, 0, nullptr, nullptr, {}, nullptr),
            cudaErrorInvalidValue)
      << "slot 2 of 2";
  int32_t pos = 0;
  EXPECT_EQ(cuda::kv4_append(l, nullptr, nullptr, DType::F32, 1, 1, 16, 0, 0, &pos, nullptr, {}, nullptr),
            cudaErrorInvalidValue)
      << "device positions without an overflow flag";
}

// ---- decode attention -----------------------------------------------------------------------------------

// A random cache: every nibble, zero points 0..15, scales wide enough that softmaxes range from flat to
// peaked.
CacheImage random_cache(int64_t slots, int64_t ctx, int64_t H, int64_t d, uint32_t seed) {
  CacheImage img(slots, ctx, H, d);
  img.k = test::random_packed(img.k.size(), seed);
  img.v = test::random_packed(img.v.size(), seed + 1);
  std::mt19937 rng(seed + 2);
  std::uniform_real_distribution<float> us(0.02f, 0.6f);
  for (size_t i = 0; i < img.ks.size(); ++i) {
    img.ks[i] = us(rng);
    img.vs[i] = us(rng);
    img.kz[i] = static_cast<float>(rng() % 16);
    img.vz[i] = static_cast<float>(rng() % 16);
  }
  return img;
}

// Reference for sequence b: dequantize its first len positions, then attention of one query at position
// len-1.
std::vector<float> ref_decode(const CacheImage& img, const std::vector<float>& q, int64_t n_head,
                              const std::vector<int32_t>& len) {
  const int64_t H = img.H, d = img.d, B = static_cast<int64_t>(len.size());
  std::vector<float> out(static_cast<size_t>(B * n_head * d));
  for (int64_t b = 0; b < B; ++b) {
    const int64_t L = len[static_cast<size_t>(b)];
    std::vector<float> k(static_cast<size_t>(L * H * d)), v(k.size());
    const int64_t c0 = img.cell(b, 0, 0);
    ref::dequantize_kv_asym_int4(img.k.data() + c0 * (d / 2), img.ks.data() + c0, img.kz.data() + c0, L, H, d,
                                 k.data());
    ref::dequantize_kv_asym_int4(img.v.data() + c0 * (d / 2), img.vs.data() + c0, img.vz.data() + c0, L, H, d,
                                 v.data());
    ref::AttentionShape s{n_head, H, d};
    ref::attention(q.data() + b * n_head * d, 1, L - 1, k.data(), v.data(), s, out.data() + b * n_head * d);
  }
  return out;
}

struct DecodeCase {
  int64_t n_head, H, d;
  std::vector<int32_t> len;
  int64_t ctx;
};

void run_decode_case(const DecodeCase& c, DType q_dt, DType out_dt, int forced_split, uint32_t seed,
                     bool cuda_cores = false) {
  const int64_t B = static_cast<int64_t>(c.len.size()), d = c.d;
  const CacheImage img = random_cache(B, c.ctx, c.H, d, seed);
  DeviceCache dc(img);
  auto q = test::random_activations(static_cast<size_t>(B * c.n_head * d), seed + 3, 4.0f);
  if (q_dt == DType::F16) test::round_f16(q);
  const auto want = ref_decode(img, q, c.n_head, c.len);

  int n_sm = 0;
  FQ_CUDA_CHECK(cudaDeviceGetAttribute(&n_sm, cudaDevAttrMultiProcessorCount, 0), "sm count");
  const int32_t max_len = *std::max_element(c.len.begin(), c.len.end());
  cuda::DecodeAttnPlan plan = cuda::decode_attention_plan(B, c.n_head, c.H, max_len, n_sm, d);
  if (forced_split > 0) plan.n_split = forced_split;
  plan.cuda_cores = cuda_cores;
  DeviceBuffer<uint8_t> ws(std::max<size_t>(1, cuda::decode_attention_workspace_bytes(B, c.n_head, d, plan)));
  DeviceBuffer<float> dq32(q);
  DeviceBuffer<uint16_t> dq16(test::to_f16(q));
  DeviceBuffer<int32_t> dlen(c.len), dflag(std::vector<int32_t>{0});
  DeviceBuffer<float> out32(want.size());
  DeviceBuffer<uint16_t> out16(want.size());
  const void* qp = q_dt == DType::F16 ? static_cast<const void*>(dq16.get()) : dq32.get();
  void* op = out_dt == DType::F16 ? static_cast<void*>(out16.get()) : out32.get();
  const std::string ctx =
      "heads " + std::to_string(c.n_head) + "/" + std::to_string(c.H) + " d " + std::to_string(d) +
      " batch " + std::to_string(B) + " max_len " + std::to_string(max_len) + " n_split " +
      std::to_string(plan.n_split) + " heads/cta " + std::to_string(plan.heads_per_cta) +
      (cuda_cores ? " cuda-core kernel" : "") + (q_dt == DType::F16 ? " q fp16" : " q fp32") +
      (out_dt == DType::F16 ? " out fp16" : " out fp32");
  ASSERT_EQ(cuda::decode_attention(dc.layer, qp, q_dt, c.n_head * d, B, c.n_head, dlen.get(), op, out_dt,
                                   plan, ws.get(), dflag.get(), nullptr),
            cudaSuccess)
      << ctx;
  FQ_CUDA_CHECK(cudaDeviceSynchronize(), "decode_attention " + ctx);
  const auto got = out_dt == DType::F16 ? test::from_f16(out16.download()) : out32.download();
  // fp32 output: only summation order and exp2 vs exp differ (~1e-6); fp16 output adds its rounding (2^-11).
  const double rtol = out_dt == DType::F16 ? 1.5e-3 : 1e-4;
  EXPECT_EQ(test::check_rows(got, want, d, rtol, 1e-6, "decode attention"), "") << ctx;
  EXPECT_EQ(dflag.download()[0], 0) << ctx;
}

TEST(DecodeAttnCuda, MatchesDequantizedReference) {
  FQ_REQUIRE_CUDA();
  const std::vector<std::pair<int64_t, int64_t>> heads = {{9, 3}, {28, 4}, {32, 8}, {16, 1}, {4, 4}};
  uint32_t seed = 100;
  for (auto [nh, H] : heads)
    for (int64_t d : {8, 64, 128}) {
      const std::vector<int32_t> len = {1, 77, 300, 129};
      run_decode_case({nh, H, d, len, 320}, DType::F32, DType::F32, 0, seed++);
    }
}

TEST(DecodeAttnCuda, DtypesAndForcedSplits) {
  FQ_REQUIRE_CUDA();
  const std::vector<int32_t> len = {513, 1000, 7, 1024, 640};
  uint32_t seed = 300;
  for (int split : {1, 2, 3, 16, 200})
    for (DType qd : {DType::F32, DType::F16})
      for (DType od : {DType::F32, DType::F16})
        run_decode_case({32, 8, 128, len, 1024}, qd, od, split, seed++);
  run_decode_case({28, 4, 64, len, 1024}, DType::F16, DType::F16, 5, seed++);
}

// head_dim 64/128 normally run on the tensor-core kernel; the CUDA-core kernel must stay correct for them
// too.
TEST(DecodeAttnCuda, CudaCoreKernelMatchesReference) {
  FQ_REQUIRE_CUDA();
  uint32_t seed = 700;
  for (int64_t d : {64, 128})
    for (int split : {0, 3})
      run_decode_case({28, 4, d, {513, 1000, 7, 1024}, 1024}, DType::F16, DType::F32, split, seed++, true);
}

// Value scales far from 1 (the tensor-core kernel rescales p * v_scale into the fp16 range per chunk) and a
// chunk-to-chunk change of that scale.
TEST(DecodeAttnCuda, ExtremeValueScales) {
  FQ_REQUIRE_CUDA();
  for (float vscale : {1e-6f, 3e-3f, 40.0f}) {
    const int64_t d = 128, H = 2, n_head = 8, ctx = 600;
    const std::vector<int32_t> len = {600, 33};
    CacheImage img = random_cache(2, ctx, H, d, 1234);
    std::mt19937 rng(99);
    for (size_t i = 0; i < img.vs.size(); ++i) img.vs[i] = vscale * (1.0f + static_cast<float>(rng() % 1000));
    DeviceCache dc(img);
    auto q = test::random_activations(static_cast<size_t>(2 * n_head * d), 5, 4.0f);
    const auto want = ref_decode(img, q, n_head, len);
    for (bool cc : {false, true}) {
      cuda::DecodeAttnPlan plan = cuda::decode_attention_plan(2, n_head, H, ctx, 132, d);
      plan.cuda_cores = cc;
      DeviceBuffer<uint8_t> ws(
          std::max<size_t>(1, cuda::decode_attention_workspace_bytes(2, n_head, d, plan)));
      DeviceBuffer<float> dq(q), out(want.size());
      DeviceBuffer<int32_t> dlen(len);
      ASSERT_EQ(cuda::decode_attention(dc.layer, dq.get(), DType::F32, n_head * d, 2, n_head, dlen.get(),
                                       out.get(), DType::F32, plan, ws.get(), nullptr, nullptr),
                cudaSuccess);
      FQ_CUDA_CHECK(cudaDeviceSynchronize(), "decode_attention");
      EXPECT_EQ(test::check_rows(out.download(), want, d, 1e-4, 1e-30, "decode attention"), "")
          << "v_scale ~" << vscale << (cc ? " cuda cores" : " tensor cores");
    }
  }
}

TEST(DecodeAttnCuda, LongContext8192) {
  FQ_REQUIRE_CUDA();
  run_decode_case({32, 8, 128, {8192, 8000}, 8192}, DType::F16, DType::F32, 0, 900);
  run_decode_case({28, 4, 128, {8193}, 8200}, DType::F32, DType::F32, 0, 901);
}

// The tensor-core kernel's per-warp cp.async pipeline (32-key chunks, 3 stages; warp w of a CTA takes chunks
// w, w + 4, ... of its key range; copies past the range are zero-filled): a batch of 16 sequences of
// different lengths around the chunk and tile edges (one key, shorter than one chunk, one past a chunk, a
// split whose last warps get no chunk, warps with more chunks than stages), forced split counts from one CTA
// per sequence (up to 32 chunks per warp) to many splits of a few keys (most of them empty), head_dim 64 and
// 128, GQA groups of 1, 4 and 8.
TEST(DecodeAttnCuda, PipelineEdges) {
  FQ_REQUIRE_CUDA();
  const std::vector<std::pair<int64_t, int64_t>> heads = {{8, 8}, {32, 8}, {16, 2}};
  const std::vector<int32_t> len16 = {1, 5, 31, 32, 33, 63, 95, 127, 128, 129, 161, 255, 257, 383, 641, 1000};
  uint32_t seed = 1500;
  for (int64_t d : {64, 128})
    for (auto [nh, H] : heads) {
      run_decode_case({nh, H, d, len16, 1000}, DType::F16, DType::F32, 0, seed++);
      for (int split : {1, 3, 64})
        run_decode_case({nh, H, d, {33, 1, 4000, 97}, 4000}, DType::F32, DType::F16, split, seed++);
    }
  // Many splits with several chunks each, and a length far from any edge.
  run_decode_case({32, 8, 128, {8191, 4099}, 8192}, DType::F16, DType::F32, 40, seed++);
}

TEST(DecodeAttnCuda, LengthBeyondCacheIsFlagged) {
  FQ_REQUIRE_CUDA();
  const CacheImage img = random_cache(1, 16, 1, 8, 7);
  DeviceCache dc(img);
  DeviceBuffer<float> q(std::vector<float>(8, 0.5f)), out(8);
  DeviceBuffer<int32_t> dlen(std::vector<int32_t>{17}), dflag(std::vector<int32_t>{0});
  const cuda::DecodeAttnPlan plan;  // one split
  ASSERT_EQ(cuda::decode_attention(dc.layer, q.get(), DType::F32, 8, 1, 1, dlen.get(), out.get(), DType::F32,
                                   plan, nullptr, dflag.get(), nullptr),
            cudaSuccess);
  FQ_CUDA_CHECK(cudaDeviceSynchronize(), "decode_attention");
  EXPECT_EQ(dflag.download()[0], 1) << "length 17 > max_ctx 16 must set the overflow flag";
}

TEST(DecodeAttnCuda, PlanCoversLongContextsAndRejectsBadShapes) {
  // Host-only: plan arithmetic and argument checks.
  const auto p = cuda::decode_attention_plan(1, 32, 8, 8192, 132, 128);
  EXPECT_GT(p.n_split, 1) << "batch 1 must split the sequence";
  EXPECT_EQ(p.heads_per_cta, 4);
  EXPECT_EQ(cuda::decode_attention_plan(16, 28, 4, 2048, 132, 128).heads_per_cta, 7);
  EXPECT_EQ(cuda::decode_attention_plan(2, 16, 1, 64, 132, 128).heads_per_cta, 8);
  // The tensor-core kernel: at most one CTA per SM. Llama-3-8B heads (32/8) at batch 16 on 132 SMs: 128
  // CTAs, no split; at batch 1, 8 CTAs per split: 16 splits.
  EXPECT_EQ(cuda::decode_attention_plan(16, 32, 8, 2048, 132, 128).n_split, 1);
  EXPECT_EQ(cuda::decode_attention_plan(16, 32, 8, 8192, 132, 128).n_split, 1);
  EXPECT_EQ(cuda::decode_attention_plan(4, 32, 8, 2048, 132, 128).n_split, 4);
  EXPECT_EQ(cuda::decode_attention_plan(1, 32, 8, 2048, 132, 128).n_split, 16);
  EXPECT_EQ(cuda::decode_attention_plan(1, 32, 8, 8192, 132, 64).n_split, 16);
  // The CUDA-core kernel (other head_dims): one wave of 3 CTAs per SM. No split is empty at max_len (the
  // kernels round a split up to whole 128-key tiles): 1 x 8192 would be 49 splits of 256 keys, of which 32
  // hold keys.
  EXPECT_EQ(cuda::decode_attention_plan(16, 32, 8, 2048, 132, 96).n_split, 3);
  EXPECT_EQ(cuda::decode_attention_plan(1, 32, 8, 8192, 132, 96).n_split, 32);
  for (int64_t d : {8, 96, 128})
    for (int64_t batch : {1, 2, 3, 5, 16, 64})
      for (int64_t len : {1, 100, 129, 1000, 2048, 2300, 5000, 8192, 100000}) {
        const auto pl = cuda::decode_attention_plan(batch, 32, 8, len, 132, d);
        const int64_t n = pl.n_split, per = ((len + n - 1) / n + 127) / 128 * 128;
        const int64_t wave = (d == 128 ? 1 : 3) * 132;
        EXPECT_GE(n, 1);
        EXPECT_LE(batch * 8 * n, std::max<int64_t>(wave, batch * 8)) << "more CTAs than one wave";
        EXPECT_LT((n - 1) * per, len) << "batch " << batch << " len " << len << ": empty split " << n - 1;
      }
  cuda::Kv4Layer l;
  l.n_slots = 1;
  l.max_ctx = 16;
  l.n_head_kv = 2;
  l.head_dim = 80;  // not a power of two
  EXPECT_EQ(cuda::decode_attention(l, nullptr, DType::F32, 160, 1, 4, nullptr, nullptr, DType::F32, {},
                                   nullptr, nullptr, nullptr),
            cudaErrorInvalidValue);
  l.head_dim = 64;
  EXPECT_EQ(cuda::decode_attention(l, nullptr, DType::F32, 192, 1, 3, nullptr, nullptr, DType::F32, {},
                                   nullptr, nullptr, nullptr),
            cudaErrorInvalidValue)
      << "3 query heads over 2 kv heads";
}

}  // namespace
}  // namespace fq
#endif  // FLATQUANT_WITH_CUDA
