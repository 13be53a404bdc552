// Host-side CUDA error checks for code outside the kernels (src/ops, src/runtime, tests): a failing CUDA call
// throws fq::Error naming the call, the context and the CUDA error string. Include only when
// FLATQUANT_WITH_CUDA is defined.
#pragma once
#include <cuda_runtime_api.h>

#include "flatquant/error.h"

#define FQ_CUDA_CHECK(expr, context)                                                      \
  do {                                                                                    \
    cudaError_t fq_err_ = (expr);                                                         \
    if (fq_err_ != cudaSuccess)                                                           \
      ::fq::fail("{}: {} failed: {} ({})", (context), #expr, cudaGetErrorString(fq_err_), \
                 cudaGetErrorName(fq_err_));                                              \
  } while (0)
