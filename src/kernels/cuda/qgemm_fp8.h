// W4A4 prefill GEMM on the FP8 tensor cores through cuBLASLt (sm_90), and the two conversions it needs.
//
// Why: the mma.sync int8 kernel of qgemm.h caps at ~630 TOPS on prefill shapes (bench/results/qgemm_notes.md);
// Hopper's dense FP8 and INT8 tensor-core rates are equal (wgmma), and cuBLASLt's FP8 GEMM takes a per-row
// scale vector for each operand (CUBLASLT_MATMUL_MATRIX_SCALE_OUTER_VEC_32F), so the W4A4 epilogue
// y = acc * sx[m] * sw[n] (+ residual) runs inside the GEMM, with no int32 round trip through memory (which
// cuBLASLt's s8 GEMM would need: its int8 kernels cannot scale per token).
//
// Exactness: every int4 value -8..7 is exact in e4m3, and so is every product; the tensor cores sum them in
// fp32 with cuBLASLt's default (non-"fast") accumulation, which promotes partial sums to fp32 registers every
// few k-blocks, so the integer dot product is exact while |acc| < 2^24 (|acc| <= 64 K: K <= 262144). The
// result equals ref::qgemm_w4a4 up to the rounding order of the epilogue (cuBLASLt scales and adds in its own
// order): within a few fp32 ulps; the test bounds it.
//
// Layouts: activations e4m3 [M, K] (one byte per value, row stride K), weights e4m3 [N, K]; y [M, ldy]
// row-major (fp16 or fp32), columns [0, N) written. K % 16 == 0, 16-byte aligned operands (cuBLASLt's FP8
// requirements).
#pragma once
#include <cublasLt.h>
#include <cuda_runtime_api.h>

#include <cstdint>
#include <map>
#include <tuple>

#include "kernels/cuda/w4a4_ops.h"

namespace fq::cuda {

// Per-token symmetric int4 quantization (ref::quantize_sym_int4, bit for bit) with the codes written as e4m3
// bytes instead of packed nibbles: for c < clips.n, copy c of x [rows, cols] (row stride x_stride, fp32) goes
// to out + c * rows * cols ([rows, cols], one byte per value) and its scales to scales + c * scale_stride
// (>= rows; a multiple of 4 keeps every copy's scales 16-byte aligned, as QgemmFp8::run needs). One read of
// each row (held in registers) for all copies. cols % 4 == 0, cols <= 32768, x 16-byte aligned,
// x_stride % 4 == 0.
cudaError_t quantize_sym_int4_fp8_multi(const float* x, int64_t rows, int64_t cols, int64_t x_stride,
                                        const SymClips& clips, uint8_t* out, float* scales, int64_t scale_stride,
                                        cudaStream_t stream);

// Packed int4 weights [N, K/2] (low nibble = even element) -> e4m3 bytes [N, K]. K even.
cudaError_t unpack_int4_fp8(const uint8_t* qw, int64_t N, int64_t K, uint8_t* out, cudaStream_t stream);

// The e4m3 byte of an integer in [-8, 8] (host; tests).
uint8_t int4_to_e4m3(int v);

// cuBLASLt FP8 GEMM plans, cached by shape. Not thread-safe; one per engine (stream-ordered use).
class QgemmFp8 {
 public:
  QgemmFp8(cublasLtHandle_t lt, void* workspace, size_t workspace_bytes)
      : lt_(lt), ws_(workspace), ws_bytes_(workspace_bytes) {}
  ~QgemmFp8();
  QgemmFp8(const QgemmFp8&) = delete;
  QgemmFp8& operator=(const QgemmFp8&) = delete;

  // Whether cuBLASLt has an algorithm for this problem (the first call per shape asks its heuristic).
  bool supported(int64_t M, int64_t N, int64_t K, int64_t ldy, bool y_f32);
  // y[:, :N] = (x8 * sx) (w8 * sw)^T, + y when `residual` (fp32 y only). Asynchronous on `stream`; returns
  // CUBLAS_STATUS_NOT_SUPPORTED without launching when !supported(...) or an argument is invalid.
  cublasStatus_t run(const uint8_t* x8, const float* sx, const uint8_t* w8, const float* sw, void* y, int64_t ldy,
                     bool y_f32, bool residual, int64_t M, int64_t N, int64_t K, cudaStream_t stream);

 private:
  struct Plan {
    cublasLtMatmulDesc_t op = nullptr;
    cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
    cublasLtMatmulAlgo_t algo{};
    bool ok = false;
  };
  Plan* plan(int64_t M, int64_t N, int64_t K, int64_t ldy, bool y_f32);
  static void destroy(Plan& p);

  cublasLtHandle_t lt_ = nullptr;
  void* ws_ = nullptr;
  size_t ws_bytes_ = 0;
  std::map<std::tuple<int64_t, int64_t, int64_t, int64_t, bool>, Plan> plans_;
};

}  // namespace fq::cuda
