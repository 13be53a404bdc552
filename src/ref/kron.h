// FlatQuant's online transforms (references, plain loops, fp32 math; docs/numerics.md "Runtime 4-bit
// quantization"):
// - Kronecker factor sizes (get_decompose_dim);
// - the per-token Kronecker transform x' = vec(A^T · reshape(x ⊙ s, L, R) · B) = (x ⊙ s)(A ⊗ B);
// - the heads x heads transform before o_proj: y = vec(Po^T · attn_t) with attn_t the [H, d] head-major
// block; each fused with the symmetric per-token int4 quantization of ref/quant.h, as the runtime runs them.
// CUDA twins: src/kernels/cuda/kron.cu.
#pragma once
#include <cstdint>

namespace fq::ref {

struct KronDims {
  int64_t left = 0;   // L: rows of the per-token reshape, size of A
  int64_t right = 0;  // R: columns (contiguous), size of B
};

// The factor pair n = L·R with L <= R closest to sqrt(n), by Fermat's method exactly as the original's
// get_decompose_dim: a = ceil(sqrt(n)); while a*a - n is not a perfect square b*b: ++a; return (a-b, a+b).
// Throws fq::Error for n < 1. An odd prime n gives (1, n); an even n that is 2 mod 4 has no such pair
// (a*a - n is never a square) and throws, unlike the original, which would loop forever.
KronDims decompose_dim(int64_t n);

// y[t] = vec(A^T · reshape(x[t] ⊙ s, L, R) · B) for every token t, i.e.
//   y[t][i*R + j] = sum_k sum_l A[k*L + i] · (x[t][k*R + l] · s[k*R + l]) · B[l*R + j]
// x: [n_tokens, L*R] with row stride x_stride; s: [L*R] or nullptr (all ones); A: [L, L] row-major; B: [R, R]
// row-major or nullptr (identity); y: [n_tokens, L*R] contiguous. fp32 throughout: first T = A^T X (sum over
// k in increasing order), then Y = T B (sum over l in increasing order).
void kron_transform(const float* x, int64_t n_tokens, int64_t x_stride, const float* s, const float* A,
                    int64_t L, const float* B, int64_t R, float* y);

// kron_transform, then quantize_sym_int4 on each transformed token: packed [n_tokens, L*R/2], scales
// [n_tokens]. L*R must be even.
void kron_quant_int4(const float* x, int64_t n_tokens, int64_t x_stride, const float* s, const float* A,
                     int64_t L, const float* B, int64_t R, float clip_max, float clip_min, uint8_t* packed,
                     float* scales);

// The o_proj input transform: attn [n_tokens, n_head, head_dim] (token stride attn_stride), Po [n_head,
// n_head] row-major; y[t][h*head_dim + e] = sum_g Po[g*n_head + h] · attn[t][g][e] (= kron_transform with A =
// Po, B = identity), then quantize_sym_int4: packed [n_tokens, n_head*head_dim/2], scales [n_tokens].
void head_mix(const float* attn, int64_t n_tokens, int64_t n_head, int64_t head_dim, int64_t attn_stride,
              const float* Po, float* y);
void head_mix_quant_int4(const float* attn, int64_t n_tokens, int64_t n_head, int64_t head_dim,
                         int64_t attn_stride, const float* Po, float clip_max, float clip_min,
                         uint8_t* packed, float* scales);

}  // namespace fq::ref
