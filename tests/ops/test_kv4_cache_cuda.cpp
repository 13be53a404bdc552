// ops::Kv4Cache (src/ops/kv4_cache.h): appends land at each slot's current length, exactly as the reference
// quantizer writes them, and a context overflow is an fq::Error before anything is launched.
#ifdef FLATQUANT_WITH_CUDA
#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

#include "flatquant/error.h"
#include "ops/kv4_cache.h"
#include "ops/ops_util.h"
#include "ref/quant.h"

namespace fq {
namespace {

TEST(Kv4CacheCuda, AppendsAtSlotLengthsAndRejectsOverflow) {
  FQ_REQUIRE_CUDA();
  const int64_t layers = 2, slots = 2, ctx = 8, H = 3, d = 16, row = H * d;
  ops::Kv4Cache cache(layers, slots, ctx, H, d);
  const cuda::Kv4Clip clip{0.9f, 0.95f, 1.0f, 1.0f};
  auto x = test::random_activations(static_cast<size_t>(6 * row), 21);
  test::DeviceBuffer<float> dx(x);
  // Slot 1: a prompt of 5 tokens on both layers, then advance.
  for (int64_t l = 0; l < layers; ++l)
    cache.append(l, dx.get(), dx.get(), DType::F32, 1, 5, row, clip, nullptr);
  cache.advance(1, 5);
  EXPECT_EQ(cache.length(1), 5);
  // 3 more tokens would need positions 5..7 (fits); 4 would not.
  EXPECT_NO_THROW(cache.append(1, dx.get(), dx.get(), DType::F32, 1, 3, row, clip, nullptr));
  try {
    cache.append(1, dx.get(), dx.get(), DType::F32, 1, 4, row, clip, nullptr);
    ADD_FAILURE() << "appending 4 tokens at position 5 of an 8-token cache must throw";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("overflow"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("max_ctx is 8"), std::string::npos) << e.what();
  }
  EXPECT_THROW(cache.advance(1, 4), Error);
  EXPECT_THROW(cache.append(0, dx.get(), dx.get(), DType::F32, 2, 1, row, clip, nullptr), Error)
      << "slot 2 of 2";
  cache.check_device_flag(nullptr);

  // The cells of layer 1, slot 1, positions 0..4 equal the reference.
  std::vector<uint8_t> want(static_cast<size_t>(5 * H * d / 2));
  std::vector<float> ws(static_cast<size_t>(5 * H)), wz(ws.size());
  ref::quantize_kv_asym_int4(x.data(), 5, H, d, row, clip.k_max, clip.k_min, want.data(), ws.data(),
                             wz.data());
  const cuda::Kv4Layer l1 = cache.layer(1);
  const int64_t c0 = (1 * ctx + 0) * H;
  std::vector<uint8_t> got(want.size());
  std::vector<float> gs(ws.size()), gz(ws.size());
  FQ_CUDA_CHECK(cudaMemcpy(got.data(), l1.k + c0 * d / 2, got.size(), cudaMemcpyDeviceToHost), "download");
  FQ_CUDA_CHECK(cudaMemcpy(gs.data(), l1.k_scale + c0, gs.size() * 4, cudaMemcpyDeviceToHost), "download");
  FQ_CUDA_CHECK(cudaMemcpy(gz.data(), l1.k_zero + c0, gz.size() * 4, cudaMemcpyDeviceToHost), "download");
  EXPECT_EQ(got, want) << "K codes of layer 1 slot 1";
  EXPECT_EQ(0, std::memcmp(gs.data(), ws.data(), ws.size() * 4)) << "K scales";
  EXPECT_EQ(0, std::memcmp(gz.data(), wz.data(), wz.size() * 4)) << "K zeros";

  // Decode append with a slot at capacity: slot 0 is empty, slot 1 has 5 of 8 -> fine; fill slot 1 to 8 ->
  // error.
  cache.advance(1, 3);
  test::DeviceBuffer<int32_t> pos(std::vector<int32_t>{0, 8});
  EXPECT_THROW(cache.append_decode(0, dx.get(), dx.get(), DType::F32, 2, row, pos.get(), clip, nullptr),
               Error);
}

}  // namespace
}  // namespace fq
#endif  // FLATQUANT_WITH_CUDA
