// Vectorized kernels of the artifact runtime (ref::QuantDecoder). Each equals its plain-loop definition bit
// for bit: the fp32 ones keep every output's summation order and only compute many outputs at once, the
// integer one is exact.
#pragma once
#include <cstdint>

namespace fq::ref {

class ThreadPool;

// ref::kron_transform with s = nullptr, bit for bit (B may be nullptr: identity): y[t] = vec(A^T X_t B),
// the sums over k, then over l, in increasing order. x: [n, L*R] (row stride x_stride), y: [n, L*R].
void kron_rows(const float* x, int64_t n, int64_t x_stride, const float* A, int64_t L, const float* B,
               int64_t R, float* y);

// x[r] <- x[r] · M for rows of length d (row vector times [d, d]); y[e] = sum_j x[j] M[j][e], j increasing.
void rowvec_matmul(float* x, int64_t rows, const float* M, int64_t d);

// The integer linear of QuantDecoder's kReal mode:
//   y[t][o] = qgemm_epilogue(sum_i qx[t][i] * qw[o][i], sx[t], sw[o]) (+ bias[o])
// with the sum exact in int32. qx [n, in], qw [out, in] integer codes held as int16 (int4 codes
// sign-extended: the sums, hence the results, equal ref::qgemm_w4a4 on the packed data bit for bit); sx [n],
// sw [out]; bias [out] or nullptr. in <= 65536 (8-bit codes: 2^14 * 2^16 < 2^31).
void int_linear(const int16_t* qx, const float* sx, const int16_t* qw, const float* sw, const float* bias,
                int64_t n, int64_t in, int64_t out, float* y, ThreadPool* pool = nullptr);

}  // namespace fq::ref
