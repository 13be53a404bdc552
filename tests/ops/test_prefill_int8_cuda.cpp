// The int8 prefill route's activation quantizer (src/kernels/cuda/prefill_int8.h) against
// ref::quantize_sym_int4: codes and scales BIT FOR BIT, 1-3 clip pairs, padded row strides, an all-zero row,
// widths from 24 to 18944 (non-powers of two). Outputs are poisoned first (0xFF), so an element the kernel
// does not write fails. The GEMM itself (cuBLASLt s8 + a8_epilogue) is covered by the engine test that
// compares the route with the mma.sync kernel (tests/runtime/test_cuda_quant_engine.cpp). Skips without a
// GPU.
#include <gtest/gtest.h>

#include <vector>

#include "ops_util.h"
#include "ref/quant.h"

#ifdef FLATQUANT_WITH_CUDA
#include "kernels/cuda/prefill_int8.h"
#endif

namespace fq {
namespace {

#ifdef FLATQUANT_WITH_CUDA
using test::DeviceBuffer;

TEST(PrefillInt8, QuantizeEqualsReferenceBitForBit) {
  FQ_REQUIRE_CUDA();
  for (int64_t cols : {24, 172, 4096, 14336, 18944})
    for (int64_t rows : {1, 5, 33}) {
      const int64_t stride = cols + 4, sstride = rows + 3;
      auto x = test::random_activations(static_cast<size_t>(rows * stride), 71 + static_cast<uint32_t>(cols));
      if (rows > 1)
        for (int64_t c = 0; c < cols; ++c) x[static_cast<size_t>(stride + c)] = 0.0f;  // an all-zero row
      cuda::SymClips clips;
      clips.n = 3;
      clips.max[1] = 0.9f, clips.min[1] = 0.8f, clips.max[2] = 0.7f, clips.min[2] = 1.0f;
      DeviceBuffer<float> dx(x), ds(static_cast<size_t>(3 * sstride));
      DeviceBuffer<int8_t> dq(static_cast<size_t>(3 * rows * cols));
      ASSERT_EQ(cuda::quantize_sym_int4_i8_multi(dx.get(), rows, cols, stride, clips, dq.get(), ds.get(),
                                                 sstride, nullptr),
                cudaSuccess);
      const auto q = dq.download();
      const auto s = ds.download();
      for (int c = 0; c < clips.n; ++c) {
        std::vector<uint8_t> rp(static_cast<size_t>(rows * cols / 2));
        std::vector<float> rs(static_cast<size_t>(rows));
        ref::quantize_sym_int4(x.data(), rows, cols, stride, clips.max[c], clips.min[c], rp.data(),
                               rs.data());
        std::vector<int8_t> codes(static_cast<size_t>(rows * cols));
        ref::unpack_int4(rp.data(), rows, cols, codes.data());
        for (int64_t r = 0; r < rows; ++r)
          ASSERT_EQ(s[static_cast<size_t>(c * sstride + r)], rs[static_cast<size_t>(r)])
              << cols << " row " << r;
        for (size_t i = 0; i < codes.size(); ++i)
          ASSERT_EQ(q[static_cast<size_t>(c * rows * cols) + i], codes[i])
              << "cols " << cols << " copy " << c << " element " << i;
      }
    }
}

TEST(PrefillInt8, QuantizeRejectsBadArguments) {
  FQ_REQUIRE_CUDA();
  DeviceBuffer<float> dx(64), ds(4);
  DeviceBuffer<int8_t> dq(64);
  cuda::SymClips one;
  EXPECT_EQ(cuda::quantize_sym_int4_i8_multi(dx.get(), 1, 62, 64, one, dq.get(), ds.get(), 1, nullptr),
            cudaErrorInvalidValue);  // cols % 4
  EXPECT_EQ(cuda::quantize_sym_int4_i8_multi(dx.get(), 2, 32, 32, one, dq.get(), ds.get(), 1, nullptr),
            cudaErrorInvalidValue);  // scale stride < rows
  EXPECT_EQ(cuda::quantize_sym_int4_i8_multi(dx.get() + 1, 1, 32, 32, one, dq.get(), ds.get(), 1, nullptr),
            cudaErrorInvalidValue);  // rows not 16-byte aligned
  EXPECT_EQ(cuda::quantize_sym_int4_i8_multi(dx.get(), 1, 32, 32, one, dq.get(), ds.get(), 1, nullptr),
            cudaSuccess);
}
#else
TEST(PrefillInt8, NeedsCuda) {
  GTEST_SKIP() << "built without CUDA";
}
#endif

}  // namespace
}  // namespace fq
