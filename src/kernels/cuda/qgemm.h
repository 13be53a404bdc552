// W4A4 linear on the GPU for every token count: y = (qx * sx) (qw * sw)^T (+ residual), integer dot products
// accumulated exactly in int32 on the INT8 tensor cores (mma.sync m16n8k32 s8; Hopper's s4 path is emulated
// and 23x slower) and scaled in an fp32 epilogue. Reference: fq::ref::qgemm_w4a4 (src/ref/qgemm.h), matched
// BIT FOR BIT (same int32 sum, same epilogue operation order, no FMA). Design and numbers:
// bench/results/qgemm_notes.md.
//
// One entry point chooses the kernel (qgemm_w4a4_kernel_name says which):
// - M <= 64: "decode", weights streamed from HBM straight into registers, the tokens padded to 8, 16, 32 or
//   64 columns of the mma, K split over the 8 warps of a block (faster than the dp4a GEMV of qgemv.h, kept as
//   an alternative, from M = 1 on).
// - M <= 8 on an sm_90 GPU where all row groups fit in one wave: "decode_staged", the same mma and split,
//   the weights brought into shared memory by bulk copies (TMA) of which a PDL launch requests up to 96 KB
//   per block before waiting for the activations (QgemmDecode selects a variant).
// - M > 64: "prefill", 128x128 block tiles (4 warps, 2 blocks per SM), the packed int4 tiles copied with a
//   4-stage cp.async pipeline and unpacked to s8 in registers.
// - K % 32 != 0 or qx/qw not 16-byte aligned: "fallback", a plain exact kernel (e.g. stories260K, K = 172).
#pragma once
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

namespace fq::cuda {

// int32 headroom: the tensor-core path sums 256 * x * w (nibbles unpacked as 16 * value), |acc| <= 2^14 * K.
constexpr int64_t kQgemmMaxK = 65536;
constexpr int64_t kQgemmDecodeMaxM = 64;
// Decode (M <= 64) kernel variants: kAuto picks "decode_staged" on an sm_90 GPU for M <= kQgemmStagedMaxM
// when all its row groups (N / 16) are resident at once, else "decode"; kRegisters always "decode" (weights
// streamed into registers); kStaged "decode_staged" (the weights through shared memory by bulk copies; M <=
// kQgemmStagedMaxM on sm_90 with aligned operands, else cudaErrorInvalidValue). Same bits either way.
enum class QgemmDecode { kAuto, kRegisters, kStaged };
constexpr int64_t kQgemmStagedMaxM = 8;

// qx: packed int4 activations [M, K/2] (low nibble = even element), sx [M] fp32 per-token scales;
// qw: packed int4 weights [N, K/2], sw [N] fp32 per-output-channel scales. residual [M, N] or nullptr, may
// alias y. y [M, N] row-major. Requirements: M, N >= 1, K even in [2, 65536], all pointers non-null except
// residual; otherwise cudaErrorInvalidValue without launching. Asynchronous on `stream`. pdl: the
// decode kernel is launched as a programmatic dependent of the previous kernel (sm_90; it waits for it before
// reading anything but the weights, and at M <= 8 requests its first weights before that wait); the other
// kernels ignore it.
//
// fp32 output: y = ref::qgemm_w4a4 exactly (t = float(acc); t *= sx[m]; t *= sw[n]; t += residual).
cudaError_t qgemm_w4a4_cuda(const uint8_t* qx, const float* sx, const uint8_t* qw, const float* sw,
                            const float* residual, float* y, int64_t M, int64_t N, int64_t K,
                            cudaStream_t stream, bool pdl = false, QgemmDecode decode = QgemmDecode::kAuto);

// fp16 output and fp16 residual (IEEE half bits): the same fp32 epilogue with the residual widened to fp32
// before the add, then rounded to nearest even: y = f32_to_f16(qgemm_epilogue(acc, sx, sw, f16_to_f32(r))).
cudaError_t qgemm_w4a4_cuda_f16(const uint8_t* qx, const float* sx, const uint8_t* qw, const float* sw,
                                const uint16_t* residual, uint16_t* y, int64_t M, int64_t N, int64_t K,
                                cudaStream_t stream, bool pdl = false,
                                QgemmDecode decode = QgemmDecode::kAuto);

// Several activations over column segments of one weight matrix: the fused q|k|v and gate|up weights of the
// W4A4 engine, whose consumers share one transformed input but each has its own clip pair, hence its own
// quantized copy. Columns [0, end[0]) use qx[0]/sx[0], [end[0], end[1]) qx[1]/sx[1], ... ; end[n-1] = N.
// Every copy is [M, K/2] / [M] as above. Results equal qgemm_w4a4_cuda(_f16) run per segment (one decode
// launch when M <= 64 and every boundary is a multiple of 16, else one launch per segment).
struct QgemmActs {
  int n = 1;
  const uint8_t* qx[3] = {nullptr, nullptr, nullptr};
  const float* sx[3] = {nullptr, nullptr, nullptr};
  int64_t end[3] = {0, 0, 0};
};
cudaError_t qgemm_w4a4_multi_cuda(const QgemmActs& acts, const uint8_t* qw, const float* sw,
                                  const float* residual, float* y, int64_t M, int64_t N, int64_t K,
                                  cudaStream_t stream, bool pdl = false,
                                  QgemmDecode decode = QgemmDecode::kAuto);
cudaError_t qgemm_w4a4_multi_cuda_f16(const QgemmActs& acts, const uint8_t* qw, const float* sw,
                                      const uint16_t* residual, uint16_t* y, int64_t M, int64_t N, int64_t K,
                                      cudaStream_t stream, bool pdl = false,
                                      QgemmDecode decode = QgemmDecode::kAuto);

// Which kernel the entry point (f16_out: the fp16 one) runs for these operands: "decode", "decode_staged",
// "prefill" or "fallback" (tests and the benchmark report it). Host-only, launches nothing.
const char* qgemm_w4a4_kernel_name(const void* qx, const void* qw, int64_t M, int64_t N, int64_t K,
                                   bool f16_out, QgemmDecode decode = QgemmDecode::kAuto);

}  // namespace fq::cuda
