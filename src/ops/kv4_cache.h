// Owner of the static 4-bit KV cache on the device: [n_layers][n_slots][max_ctx][n_head_kv] cells (codes,
// scale, zero for K and V; layout in src/kernels/cuda/attention.h, Kv4Layer), with a host mirror of each
// slot's length. Every append is checked on the host BEFORE the launch: a context overflow is an fq::Error
// naming the layer, slot, position and capacity, never a silent wrap or a clipped write. The device overflow
// flag catches what the host cannot see (positions read from device memory inside a CUDA graph);
// check_device_flag() reports it.
#pragma once
#ifdef FLATQUANT_WITH_CUDA
#include <cuda_runtime_api.h>

#include <cstdint>
#include <vector>

#include "core/dtype.h"
#include "kernels/cuda/attention.h"

namespace fq::ops {

class Kv4Cache {
 public:
  Kv4Cache(int64_t n_layers, int64_t n_slots, int64_t max_ctx, int64_t n_head_kv, int64_t head_dim);
  ~Kv4Cache();
  Kv4Cache(const Kv4Cache&) = delete;
  Kv4Cache& operator=(const Kv4Cache&) = delete;

  cuda::Kv4Layer layer(int64_t i) const;
  int64_t length(int64_t slot) const { return len_.at(static_cast<size_t>(slot)); }
  int64_t max_ctx() const { return max_ctx_; }
  size_t device_bytes() const { return bytes_; }

  // Prompt (or chunk): n_tok tokens of one slot at its current length. k, v: [n_tok, n_head_kv, head_dim] of
  // dtype, token stride x_stride. Does not advance the length (all layers append the same positions).
  void append(int64_t layer, const void* k, const void* v, DType dtype, int64_t slot, int64_t n_tok,
              int64_t x_stride, const cuda::Kv4Clip& clip, cudaStream_t stream);
  // Decode: one token for each of slots [0, n_seq) at the device positions d_pos[0..n_seq) (graph-safe). The
  // host mirror is checked: every slot must have room for one more token.
  void append_decode(int64_t layer, const void* k, const void* v, DType dtype, int64_t n_seq,
                     int64_t x_stride, const int32_t* d_pos, const cuda::Kv4Clip& clip, cudaStream_t stream);
  // After every layer has appended: the slot's length grows by n (fq::Error past max_ctx).
  void advance(int64_t slot, int64_t n);
  void reset(int64_t slot) { len_.at(static_cast<size_t>(slot)) = 0; }
  // Device overflow flag (int32), for kernels that take one (decode attention, device-position appends).
  int32_t* device_flag() const { return flag_; }
  // Synchronizes the stream; throws fq::Error if a kernel set the overflow flag.
  void check_device_flag(cudaStream_t stream) const;

 private:
  void check_room(int64_t layer, int64_t slot, int64_t n_tok) const;

  int64_t n_layers_, n_slots_, max_ctx_, n_head_kv_, head_dim_;
  std::vector<int64_t> len_;
  void* mem_ = nullptr;
  int32_t* flag_ = nullptr;
  size_t bytes_ = 0, codes_per_layer_ = 0, cells_per_layer_ = 0;
};

}  // namespace fq::ops
#endif  // FLATQUANT_WITH_CUDA
