// RefDecoder: the fp32 CPU reference forward pass of a Llama-family decoder (Llama 2/3, Mistral, Qwen2,
// SmolLM), the oracle every other path is checked against. Matches transformers' fp32 eager forward:
//   x = embed(tokens)
//   per layer: x += o_proj(attn(rope(q_proj(n1)), rope(k_proj(n1)), v_proj(n1)))   n1 = rmsnorm(x)
//              x += down(silu(gate(n2)) * up(n2))                                    n2 = rmsnorm(x)
//   logits = head(rmsnorm(x))
// See docs/numerics.md for the accumulation choices of each op.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "model/weights.h"
#include "ref/parallel.h"
#include "ref/rope.h"

namespace fq::ref {

// The inputs of a layer's linears, for observers (flatness plots): the post-RMSNorm input of q/k/v, the
// attention output (o_proj input), the post-attention-RMSNorm input of gate/up, silu(gate) * up (down_proj).
enum class LinearInput { kQkv, kO, kGateUp, kDown };
// x: [n, dim] row-major, valid only during the call.
using CaptureFn = std::function<void(int layer, LinearInput site, const float* x, int64_t n, int64_t dim)>;

class RefDecoder {
 public:
  // `w` must outlive the decoder (it is referenced, not copied). max_ctx <= 0 means cfg.n_ctx; the whole KV
  // cache (2 * n_layer * max_ctx * n_head_kv * head_dim floats) is allocated here, so pass the context you
  // need for models with long n_ctx. n_threads <= 0 means std::thread::hardware_concurrency(); results are
  // bit-identical for any value.
  explicit RefDecoder(const ModelWeights& w, int64_t max_ctx = 0, int n_threads = 0);

  // Runs n tokens at positions pos() .. pos()+n-1, appending their keys/values to the cache.
  // logits_out: [n, n_vocab] or nullptr (then the LM head is skipped). Throws fq::Error when a token id is
  // out of range or pos()+n exceeds max_ctx() (nothing is changed then).
  void forward(const int32_t* tokens, int64_t n, float* logits_out);
  void reset() { pos_ = 0; }
  // Forgets the cache beyond position p (0 <= p <= pos()), so that a shared prefix is computed once and each
  // continuation runs from it (zero-shot scoring). Later forwards overwrite the dropped entries.
  void rewind(int64_t p) { pos_ = p < 0 ? 0 : (p < pos_ ? p : pos_); }
  int64_t pos() const { return pos_; }
  int64_t max_ctx() const { return max_ctx_; }
  const ModelConfig& config() const { return w_.cfg; }
  int n_threads() const { return pool_->size(); }
  // Called with the input of every linear of every layer during forward (empty: none, the default).
  void set_capture(CaptureFn fn) { capture_ = std::move(fn); }

 private:
  void layer(int il, int64_t n);
  void ensure_scratch(int64_t n);

  const ModelWeights& w_;
  int64_t max_ctx_ = 0, pos_ = 0;
  std::unique_ptr<ThreadPool> pool_;
  CaptureFn capture_;
  RopeTable rope_;
  // KV cache: [n_layer][max_ctx][n_head_kv*head_dim] each, fp32.
  std::vector<float> k_cache_, v_cache_;
  // Scratch for n tokens: x (residual), h (normed), q, att, gate, up.
  int64_t scratch_n_ = 0;
  std::vector<float> x_, h_, q_, att_, gate_, up_;
};

}  // namespace fq::ref
