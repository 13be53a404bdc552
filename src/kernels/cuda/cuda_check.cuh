// Error plumbing for the kernel launchers: every CUDA runtime call is checked and its error returned to the
// caller (launchers return cudaError_t; src/ops turns that into fq::Error with context).
#pragma once
#include <cuda_runtime.h>

#define FQ_CUDA_RETURN_IF_ERROR(expr)           \
  do {                                          \
    cudaError_t fq_err_ = (expr);               \
    if (fq_err_ != cudaSuccess) return fq_err_; \
  } while (0)

// After a <<<>>> launch: configuration errors surface here (execution errors surface at the next sync).
#define FQ_CUDA_RETURN_LAUNCH_ERROR() FQ_CUDA_RETURN_IF_ERROR(cudaGetLastError())
