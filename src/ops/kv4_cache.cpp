#include "ops/kv4_cache.h"
#ifdef FLATQUANT_WITH_CUDA
#include <string>

#include "flatquant/error.h"
#include "ops/cuda_check.h"

namespace fq::ops {

namespace {
size_t align256(size_t n) {
  return (n + 255) / 256 * 256;
}
}  // namespace

Kv4Cache::Kv4Cache(int64_t n_layers, int64_t n_slots, int64_t max_ctx, int64_t n_head_kv, int64_t head_dim)
    : n_layers_(n_layers),
      n_slots_(n_slots),
      max_ctx_(max_ctx),
      n_head_kv_(n_head_kv),
      head_dim_(head_dim),
      len_(static_cast<size_t>(n_slots > 0 ? n_slots : 0), 0) {
  FQ_CHECK(n_layers > 0 && n_slots > 0 && max_ctx > 0 && n_head_kv > 0 && head_dim > 0 && head_dim % 2 == 0,
           "Kv4Cache: invalid shape (layers {}, slots {}, max_ctx {}, kv heads {}, head_dim {}; head_dim "
           "must be even)",
           n_layers, n_slots, max_ctx, n_head_kv, head_dim);
  cells_per_layer_ = static_cast<size_t>(n_slots * max_ctx * n_head_kv);
  codes_per_layer_ = cells_per_layer_ * static_cast<size_t>(head_dim / 2);
  // Per layer: K codes, V codes, then 4 float arrays; each 256-byte aligned (16-byte loads need 16).
  const size_t per_layer = 2 * align256(codes_per_layer_) + 4 * align256(cells_per_layer_ * sizeof(float));
  bytes_ = static_cast<size_t>(n_layers) * per_layer + 256;
  FQ_CUDA_CHECK(cudaMalloc(&mem_, bytes_), "Kv4Cache: allocating the KV cache");
  flag_ = reinterpret_cast<int32_t*>(static_cast<char*>(mem_) + bytes_ - 256);
  FQ_CUDA_CHECK(cudaMemset(flag_, 0, sizeof(int32_t)), "Kv4Cache");
}

Kv4Cache::~Kv4Cache() {
  cudaFree(mem_);
}

cuda::Kv4Layer Kv4Cache::layer(int64_t i) const {
  FQ_CHECK(i >= 0 && i < n_layers_, "Kv4Cache: layer {} out of range (n_layers {})", i, n_layers_);
  const size_t codes = align256(codes_per_layer_), floats = align256(cells_per_layer_ * sizeof(float));
  char* p = static_cast<char*>(mem_) + static_cast<size_t>(i) * (2 * codes + 4 * floats);
  cuda::Kv4Layer l;
  l.k = reinterpret_cast<uint8_t*>(p);
  l.v = reinterpret_cast<uint8_t*>(p + codes);
  l.k_scale = reinterpret_cast<float*>(p + 2 * codes);
  l.k_zero = reinterpret_cast<float*>(p + 2 * codes + floats);
  l.v_scale = reinterpret_cast<float*>(p + 2 * codes + 2 * floats);
  l.v_zero = reinterpret_cast<float*>(p + 2 * codes + 3 * floats);
  l.n_slots = n_slots_;
  l.max_ctx = max_ctx_;
  l.n_head_kv = n_head_kv_;
  l.head_dim = head_dim_;
  return l;
}

void Kv4Cache::check_room(int64_t layer, int64_t slot, int64_t n_tok) const {
  FQ_CHECK(slot >= 0 && slot < n_slots_, "Kv4Cache: slot {} out of range (n_slots {})", slot, n_slots_);
  const int64_t pos = len_[static_cast<size_t>(slot)];
  FQ_CHECK(n_tok >= 0 && pos + n_tok <= max_ctx_,
           "KV cache overflow: layer {} slot {} would write positions {}..{} but max_ctx is {} (raise "
           "--max-ctx or "
           "shorten the prompt/generation)",
           layer, slot, pos, pos + n_tok - 1, max_ctx_);
}

void Kv4Cache::append(int64_t layer_i, const void* k, const void* v, DType dtype, int64_t slot, int64_t n_tok,
                      int64_t x_stride, const cuda::Kv4Clip& clip, cudaStream_t stream) {
  check_room(layer_i, slot, n_tok);
  FQ_CUDA_CHECK(cuda::kv4_append(layer(layer_i), k, v, dtype, 1, n_tok, x_stride, slot,
                                 len_[static_cast<size_t>(slot)], nullptr, nullptr, clip, stream),
                "Kv4Cache::append (layer " + std::to_string(layer_i) + ")");
}

void Kv4Cache::append_decode(int64_t layer_i, const void* k, const void* v, DType dtype, int64_t n_seq,
                             int64_t x_stride, const int32_t* d_pos, const cuda::Kv4Clip& clip,
                             cudaStream_t stream) {
  FQ_CHECK(n_seq >= 0 && n_seq <= n_slots_, "Kv4Cache: {} sequences but only {} slots", n_seq, n_slots_);
  for (int64_t s = 0; s < n_seq; ++s) check_room(layer_i, s, 1);
  FQ_CUDA_CHECK(
      cuda::kv4_append(layer(layer_i), k, v, dtype, n_seq, 1, x_stride, 0, 0, d_pos, flag_, clip, stream),
      "Kv4Cache::append_decode (layer " + std::to_string(layer_i) + ")");
}

void Kv4Cache::advance(int64_t slot, int64_t n) {
  check_room(-1, slot, n);
  len_[static_cast<size_t>(slot)] += n;
}

void Kv4Cache::check_device_flag(cudaStream_t stream) const {
  FQ_CUDA_CHECK(cudaStreamSynchronize(stream), "Kv4Cache::check_device_flag");
  int32_t f = 0;
  FQ_CUDA_CHECK(cudaMemcpy(&f, flag_, sizeof f, cudaMemcpyDeviceToHost), "Kv4Cache::check_device_flag");
  FQ_CHECK(f == 0, "KV cache overflow detected on the device (a position or length beyond max_ctx {})",
           max_ctx_);
}

}  // namespace fq::ops
#endif  // FLATQUANT_WITH_CUDA
