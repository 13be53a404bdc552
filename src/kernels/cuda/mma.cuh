// Warp-level tensor-core helpers shared by the fp16 mma.sync kernels (the fused decode transform in
// w4a4_ops.cu, the fused prefill transform in prefill_kron.cu): m16n8k16 with fp32 sums, and ldmatrix loads
// of 8 x 8 fp16 tiles from shared memory (each lane passes the address of one row: lanes 8i..8i+7 the rows of
// matrix i; rows 16-byte aligned).
#pragma once
#include <cuda_fp16.h>

#include <cstdint>

#include "kernels/cuda/async_copy.cuh"

namespace fq::cuda::detail {

// c += a * b: A 16 x 16 (row), B 16 x 8 (col), fp16 operands, fp32 accumulators.
__device__ __forceinline__ void mma_f16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const __half* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_u32(p)));
}

__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const __half* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_u32(p)));
}

}  // namespace fq::cuda::detail
