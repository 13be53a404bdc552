// CudaEngine: the LibTorch-free CUDA inference engine of a Llama-family decoder (docs/runtime.md), with these
// backends behind one API: FP16 weights and FP16 KV cache (the honest baseline); W4A4KV4 for a quantized
// artifact (packed int4 weights on INT8 tensor cores, FlatQuant's online transforms, 4-bit KV cache); and
// W4A16, W8A8, W4A8 artifacts (packed int4 / int8 weights, fp16 or int8 activations, FP16 KV cache).
//  - Weights live on the device in one arena: fused QKV [(H + 2 KV) d, E], fused gate|up [2 F, E], o, down,
//    fp32 norms, embedding and head (tied: the embedding). Uploaded from ModelWeights (fp32 host, converted
//    to fp16 one tensor at a time) or drawn on the device for random-weight benchmarks (no host copy).
//  - Static KV cache [layer][slot][max_ctx][n_head_kv][head_dim] fp16; every workspace buffer is allocated in
//    the constructor for (max_batch, max_tokens): nothing is allocated while running.
//  - prefill(): B sequences x T tokens in chunks of at most max_tokens rows. step(): one token for each of
//  the
//    slots 0..B-1 at their own positions, replayed from a CUDA graph captured once per batch size; the step's
//    tokens/positions live in device buffers (uploaded before the replay, or fed back by the graph itself
//    for greedy decoding), so a step has no host synchronization inside.
//  - Every position is checked on the host before anything is launched: context overflow is an fq::Error.
// This header needs no CUDA headers; built without CUDA, the constructors throw a one-line fq::Error.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "model/artifact.h"
#include "model/config.h"
#include "model/weights.h"

namespace fq::runtime {

struct EngineOptions {
  int64_t max_batch = 1;       // sequences (cache slots)
  int64_t max_ctx = 2048;      // positions per slot
  int64_t max_tokens = 0;      // rows of one forward chunk (0: max(max_ctx, max_batch))
  int64_t max_logit_rows = 0;  // logits rows of one chunk for prefill(all_logits) (0: max_batch)
  bool cuda_graphs = true;     // capture the decode step (off: launch the kernels every step)
  bool gemv = true;  // M <= 4: our FP16 GEMV instead of cuBLASLt (faster on the narrow decode GEMMs)
  // The LM head as per-row int8 (cuda::quantize_rows_int8 of the fp16 head at load; logits by an int8 GEMV):
  // half the head's bytes per decode step. Its perplexity cost is measured in docs/runtime.md.
  bool head_int8 = false;
  // W4A4KV4 prefill: GEMMs of at least this many rows run on cuBLASLt's int8 GEMM (the weights unpacked to
  // int8 per call, int32 sums, then the fp32 epilogue; bit-identical to the mma.sync kernel) where cuBLASLt
  // has an algorithm (K % 4 == 0); else, and below it, the mma.sync int8 kernel of qgemm.h. 0: never.
  int64_t int8_prefill_rows = 128;
  // The int8 route's int32 sums buffer (MB): rows go through cuBLASLt in chunks whose sums (all segments of
  // one GEMM) fit, at least 128 rows. Measured (H100, Llama-3-8B, 2048 rows): 16-32 MB chunks (L2-sized, 512
  // rows for gate|up) are slower than whole 2048-row GEMMs (cuBLASLt's s8 kernels need the rows).
  int64_t int8_acc_mb = 256;
  // On the int8 route, each input's Kronecker transform and int8 quantization run as one kernel
  // (cuda::kron_quant_i8_multi: one read of the fp16 rows, only the codes written) where the transform fits
  // it; off: two cuBLAS GEMMs (fp16 T, fp32 Y through memory) and the quantizer. Same rounding points, other
  // summation order.
  bool fused_prefill_transform = true;
  // On the int8 route, on an sm_90 GPU: the W4A4 GEMMs whose K and column segments are multiples of 128 run
  // our wgmma kernel (cuda::w4a8_gemm_wgmma: packed weights read as stored, no int32 buffer, the epilogue and
  // SwiGLU fused) instead of unpacking + cuBLASLt + the epilogue kernels. Same bits. Off: cuBLASLt.
  bool wgmma_prefill = true;
  // Its thread-block clusters along the output channels (CTAs that share each tile of codes): 0 automatic
  // (cuda::W4A8Gemm::cluster), else 1, 2 or 4 where the shape allows.
  int64_t wgmma_cluster = 0;
  // W4A4KV4 decode: CTAs (a thread-block cluster) per token of the fused transform + quantize kernel, 1, 2, 4
  // or 8; 0: automatic (cuda::fused_quant_int4).
  int64_t fused_split = 0;
  // W4A4KV4 decode GEMMs (M <= cuda::kQgemmStagedMaxM, sm_90): the weights through shared memory by bulk
  // copies, up to 96 KB per block requested before the PDL wait (cuda::QgemmDecode::kAuto); off: streamed
  // into registers (kRegisters). Same bits.
  bool staged_decode_gemm = true;
  int device = 0;
};

// Sampling on the device (cuda::sample: temperature -> top-k -> top-p -> one Philox draw keyed by (seed,
// slot, step)); temperature <= 0 or top_k == 1 is the argmax.
struct DeviceSampling {
  float temperature = 1.0f;
  int32_t top_k = 0;
  float top_p = 1.0f;
  uint64_t seed = 0;
};

// Per-op device time of one un-captured step (profile_step): name -> milliseconds, in first-seen order.
struct OpTime {
  std::string name;
  double ms = 0;
  int64_t calls = 0;
};

struct EngineInfo {
  std::string backend;           // "fp16", "w4a4kv4", "w4a16", "w8a8" or "w4a8"
  size_t weight_bytes = 0;       // all device weights (the embedding included)
  size_t step_weight_bytes = 0;  // bytes of weights one decode step reads (layers + head + norms)
  size_t kv_bytes = 0;           // the whole KV cache
  size_t workspace_bytes = 0;    // activations, logits, cuBLASLt and attention workspaces
  size_t device_mem_used = 0;    // cudaMemGetInfo: total - free, the whole device (this process and others)
  size_t device_mem_total = 0;
  std::string device_name;
  int n_sm = 0;
  int compute_capability = 0;  // major * 10 + minor
  // W4A4 GEMMs run on the int8 prefill route so far (EngineOptions::int8_prefill_rows).
  int64_t int8_gemms = 0;
  int64_t fused_prefill_transforms = 0;  // inputs of those through cuda::kron_quant_i8_multi so far
  int64_t wgmma_gemms = 0;               // of int8_gemms, those on cuda::w4a8_gemm_wgmma
  bool wgmma_prefill = false;            // that route is on (EngineOptions::wgmma_prefill and an sm_90 GPU)
};

class CudaEngine {
 public:
  // Uploads `w` (fp32 host) as fp16. Throws fq::Error without CUDA / GPU or when the model does not fit.
  CudaEngine(const ModelWeights& w, const EngineOptions& o);
  // Random weights drawn on the device: N(0, 0.02) matrices, norms 1, biases 0 (as the seeds' --random_mode).
  // quantized: the W4A4KV4 backend with random packed int4 weights (uniform codes, scale 0.0043 ~ std 0.02),
  // random Kronecker / o / K transforms and clip factors 1 — the same kernels and bytes as a real artifact.
  CudaEngine(const ModelConfig& cfg, uint64_t seed, const EngineOptions& o, bool quantized = false);
  // A quantized artifact (docs/runtime.md): W4A4KV4 (packed int4 weights, online transforms, 4-bit KV cache),
  // or W4A16 / W8A8 / W4A8 (int4 or int8 weights, fp16 or int8 per-token activations, online transforms, FP16
  // KV cache); embedding and LM head fp16. Throws fq::Error for any other recipe (e.g. w16a16kv4).
  CudaEngine(const Artifact& a, const EngineOptions& o);
  ~CudaEngine();
  CudaEngine(const CudaEngine&) = delete;
  CudaEngine& operator=(const CudaEngine&) = delete;

  const ModelConfig& config() const;
  const EngineOptions& options() const;
  EngineInfo info() const;

  // Position (cached tokens) of a slot; reset empties every slot, rewind(slot, p) forgets positions >= p.
  int64_t pos(int64_t slot) const;
  void reset();
  void rewind(int64_t slot, int64_t p);

  // Appends n_tok tokens (tokens: [n_seq, n_tok] row-major) to slots slot0 .. slot0 + n_seq - 1, which must
  // all be at the same position. logits (host fp32, may be nullptr): [n_seq, n_tok, n_vocab] when all_logits,
  // else [n_seq, n_vocab] for the last token of each sequence. Synchronous (returns when the logits are on
  // the host).
  void prefill(const int32_t* tokens, int64_t n_seq, int64_t n_tok, int64_t slot0, float* logits,
               bool all_logits);

  // One decode step for slots 0 .. batch-1: tokens[batch] (host) at the slots' positions. logits (host fp32
  // [batch, n_vocab], may be nullptr) and greedy (host int32 [batch], may be nullptr) are filled on return.
  void step(const int32_t* tokens, int64_t batch, float* logits, int32_t* greedy);

  // One decode step for slots 0 .. batch-1 whose next tokens are drawn on the device inside the captured
  // graph (one graph per batch size and sampling parameters): next[batch] (host) receives them; only the
  // token ids cross to the host. rng_step keys the draw (use a new value per step).
  void step_sample(const int32_t* tokens, int64_t batch, const DeviceSampling& sp, uint64_t rng_step,
                   int32_t* next);

  // n_steps greedy steps for slots 0 .. batch-1 starting from tokens[batch]: each step's argmax is fed back
  // on the device (graph replays back to back, no host work in between). out: [n_steps, batch] host, may be
  // nullptr. Synchronous at the end only.
  void decode_greedy(const int32_t* tokens, int64_t batch, int64_t n_steps, int32_t* out);

  // Device time per op of one un-captured decode step for slots 0 .. batch-1 (cudaEvents around each op; the
  // step is then undone with rewind, so the cache and positions are unchanged).
  std::vector<OpTime> profile_step(const int32_t* tokens, int64_t batch);
  // The same for a prefill of n_seq x n_tok tokens into slots 0 .. n_seq-1 (from position 0; every slot's
  // position is restored afterwards, the cache contents are not).
  std::vector<OpTime> profile_prefill(const int32_t* tokens, int64_t n_seq, int64_t n_tok);

  void synchronize();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// true when this build has the CUDA engine and a device is present; else false and *why says why.
bool cuda_engine_available(std::string* why);

}  // namespace fq::runtime
