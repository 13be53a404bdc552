// CudaEngine (cuda_engine.h, docs/runtime.md). Host orchestration only: the kernels are in src/kernels/cuda
// (layer_ops: RMSNorm, SwiGLU, embedding, argmax; attention: prefill attention; engine_kernels: fused
// q/k/v RoPE + FP16 cache write, FP16 decode attention, random fill, step advance) and the GEMMs are
// cuBLASLt.
#include "runtime/cuda_engine.h"

#include "flatquant/error.h"

#ifndef FLATQUANT_WITH_CUDA

namespace fq::runtime {

struct CudaEngine::Impl {};

namespace {
[[noreturn]] void no_cuda() {
  fail(
      "--device cuda: this flatquant was built without CUDA (reconfigure with nvcc available, "
      "-DFLATQUANT_CUDA=ON)");
}
}  // namespace

CudaEngine::CudaEngine(const ModelWeights&, const EngineOptions&) {
  no_cuda();
}
CudaEngine::CudaEngine(const ModelConfig&, uint64_t, const EngineOptions&, bool) {
  no_cuda();
}
CudaEngine::CudaEngine(const Artifact&, const EngineOptions&) {
  no_cuda();
}
CudaEngine::~CudaEngine() = default;
const ModelConfig& CudaEngine::config() const {
  no_cuda();
}
const EngineOptions& CudaEngine::options() const {
  no_cuda();
}
EngineInfo CudaEngine::info() const {
  no_cuda();
}
int64_t CudaEngine::pos(int64_t) const {
  no_cuda();
}
void CudaEngine::reset() {
  no_cuda();
}
void CudaEngine::rewind(int64_t, int64_t) {
  no_cuda();
}
void CudaEngine::prefill(const int32_t*, int64_t, int64_t, int64_t, float*, bool) {
  no_cuda();
}
void CudaEngine::step(const int32_t*, int64_t, float*, int32_t*) {
  no_cuda();
}
void CudaEngine::decode_greedy(const int32_t*, int64_t, int64_t, int32_t*) {
  no_cuda();
}
void CudaEngine::step_sample(const int32_t*, int64_t, const DeviceSampling&, uint64_t, int32_t*) {
  no_cuda();
}
std::vector<OpTime> CudaEngine::profile_step(const int32_t*, int64_t) {
  no_cuda();
}
std::vector<OpTime> CudaEngine::profile_prefill(const int32_t*, int64_t, int64_t) {
  no_cuda();
}
void CudaEngine::synchronize() {
  no_cuda();
}

bool cuda_engine_available(std::string* why) {
  if (why) *why = "this flatquant was built without CUDA";
  return false;
}

}  // namespace fq::runtime

#else  // FLATQUANT_WITH_CUDA

#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <map>
#include <tuple>

#include "core/dtype.h"
#include "kernels/cuda/attention.h"
#include "kernels/cuda/engine_kernels.h"
#include "kernels/cuda/head_int8.h"
#include "kernels/cuda/kron.h"
#include "kernels/cuda/layer_ops.h"
#include "kernels/cuda/prefill_int8.h"
#include "kernels/cuda/qgemm.h"
#include "kernels/cuda/quant.h"
#include "kernels/cuda/sampling.h"
#include "kernels/cuda/w4a4_ops.h"
#include "kernels/cuda/wq_linear.h"
#include "ops/cuda_check.h"
#include "ref/kron.h"
#include "ref/rope.h"

namespace fq::runtime {

namespace {

constexpr size_t kAlign = 256;              // every arena tensor starts on 256 bytes (cuBLASLt's default)
constexpr size_t kLtWorkspace = 32u << 20;  // cuBLASLt workspace (split-K algorithms)

size_t align_up(size_t n) {
  return (n + kAlign - 1) / kAlign * kAlign;
}

void lt_check(cublasStatus_t st, const char* what) {
  if (st != CUBLAS_STATUS_SUCCESS) fail("cuBLASLt: {} failed (status {})", what, static_cast<int>(st));
}

// One cudaMalloc carved into 256-byte aligned tensors: reserve() while planning, then allocate() once.
class Arena {
 public:
  size_t reserve(size_t bytes) {
    const size_t off = size_;
    size_ = align_up(off + bytes);
    return off;
  }
  void allocate(const char* what) {
    if (size_ == 0) return;
    FQ_CUDA_CHECK(cudaMalloc(&base_, size_),
                  fmt::format("CudaEngine: allocating {} ({:.2f} GB)", what, size_ / 1e9));
  }
  template <typename T>
  T* at(size_t off) const {
    return reinterpret_cast<T*>(static_cast<char*>(base_) + off);
  }
  size_t size() const { return size_; }
  ~Arena() {
    if (base_) cudaFree(base_);
  }

 private:
  void* base_ = nullptr;
  size_t size_ = 0;
};

struct LayerDev {
  uint16_t *wqkv = nullptr, *wo = nullptr, *wgu = nullptr, *wdown = nullptr;
  float *bqkv = nullptr, *n1 = nullptr, *n2 = nullptr;
  size_t o_wqkv = 0, o_wo = 0, o_wgu = 0, o_wdown = 0, o_bqkv = 0, o_n1 = 0, o_n2 = 0;
};

// W4A4KV4 backend: one online Kronecker transform (absent: L = 0; has_b false: B = identity, the o_proj head
// mix with A = Po, L = H, R = head_dim). A, B fp32 (uploaded; the source of the others); A16 (A as fp16) and
// Bt16 (B^T as fp16) for the tensor-core GEMMs of prefill; Apk, Bpk for the fused decode kernel.
struct KronDev {
  int64_t L = 0, R = 0;
  bool has_b = true;
  bool fused = false;  // the fused decode kernel fits the device (shared memory)
  bool kq = false;     // the fused prefill transform + int8 quantizer fits (cuda::kron_quant_i8_fits)
  size_t o_A = 0, o_B = 0, o_A16 = 0, o_Bt16 = 0, o_Apk = 0, o_Bpk = 0;
  float *A = nullptr, *B = nullptr;
  uint16_t *A16 = nullptr, *Bt16 = nullptr;  // fp16, for prefill's GEMMs: A, B^T
  uint16_t *Apk = nullptr, *Bpk = nullptr;   // fp16, packed for the fused decode kernel (fused_pack_operand)
};

struct QLayerDev {
  // Packed int4 weights [N, K/2] (fused q|k|v and gate|up rows) and fp32 per-channel scales.
  uint8_t *wqkv = nullptr, *wo = nullptr, *wgu = nullptr, *wdown = nullptr;
  float *sqkv = nullptr, *so = nullptr, *sgu = nullptr, *sdown = nullptr;
  float *bqkv = nullptr, *n1 = nullptr, *n2 = nullptr;
  float *kmat = nullptr, *kinv = nullptr;         // [D, D] each or nullptr
  uint16_t *kmat16 = nullptr, *kinv16 = nullptr;  // fp16 copies (prefill's batched GEMM)
  size_t o_wqkv = 0, o_wo = 0, o_wgu = 0, o_wdown = 0, o_sqkv = 0, o_so = 0, o_sgu = 0, o_sdown = 0,
         o_bqkv = 0, o_n1 = 0, o_n2 = 0, o_kmat = 0, o_kinv = 0, o_kmat16 = 0, o_kinv16 = 0;
  KronDev ln, ug, dn, om;  // ln_trans, up_gate_trans, down_trans, o_trans (om: L = H or 0)
  cuda::SymClips qkv_clips, gu_clips, o_clip, down_clip;
  cuda::Kv4Clip kv_clip;
};

struct GemmPlan {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  cublasLtMatmulAlgo_t algo{};
};

}  // namespace

struct CudaEngine::Impl {
  ModelConfig cfg;
  EngineOptions o;
  int64_t E = 0, H = 0, KV = 0, D = 0, F = 0, V = 0, L = 0, QKV = 0, HD = 0, BIG = 0, HB = 0;
  int64_t max_tokens = 0, max_logit_rows = 0;
  cudaStream_t stream = nullptr;
  cublasLtHandle_t lt = nullptr;
  cudaDeviceProp prop{};

  Arena warena, karena, sarena;
  std::vector<LayerDev> layers;
  size_t o_embd = 0, o_head = 0, o_norm = 0, o_inv_freq = 0, o_head_q = 0, o_head_s = 0;
  uint16_t *embd = nullptr, *head = nullptr;
  int8_t* head_q = nullptr;  // head_int8: [V, E] codes and [V] scales
  float* head_s = nullptr;
  float *norm = nullptr, *inv_freq = nullptr;
  size_t step_weight_bytes = 0;

  uint16_t *kc = nullptr, *vc = nullptr;  // [L][slots][max_ctx][KV][D]

  // Workspace (sarena).
  float* x = nullptr;          // [max_tokens, E] fp32 residual stream
  uint16_t* hb = nullptr;      // [max_tokens, max(E, H*D, F)] fp16: normed x, attention output, SwiGLU output
  uint16_t* big = nullptr;     // [max_tokens, max(QKV, 2F)] fp16: fused q/k/v, then fused gate|up
  float* logits = nullptr;     // [max(max_logit_rows, max_batch), V]
  int32_t* d_tok = nullptr;    // [max_tokens] prefill ids
  int32_t* d_in = nullptr;     // [3][max_batch]: step tokens, positions, lengths (= positions + 1)
  int32_t* d_next = nullptr;   // [max_batch] argmax of the last step
  int32_t* d_hist = nullptr;   // [max_ctx][max_batch] tokens produced by decode_greedy
  int32_t* d_flags = nullptr;  // [0] overflow, [1] bad token id, [2] greedy step counter
  void* attn_ws = nullptr;
  void* lt_ws = nullptr;
  int32_t* h_in = nullptr;  // pinned mirror of d_in

  std::vector<int64_t> pos;
  // Captured decode steps by (batch, sampling): argmax, or cuda::sample with these parameters.
  using GraphKey = std::tuple<int64_t, bool, float, int32_t, float, uint64_t>;
  std::map<GraphKey, cudaGraphExec_t> graphs;
  uint64_t* d_rng_step = nullptr;  // the sampling RNG's step counter (uploaded before each sampled step)
  uint64_t* h_rng_step = nullptr;  // pinned
  std::map<std::tuple<int64_t, int64_t, int64_t, bool, bool>, GemmPlan> plans;

  // Profiling (profile_step): events around each op, aggregated by name.
  bool profiling = false;
  std::vector<std::pair<std::string, std::pair<cudaEvent_t, cudaEvent_t> > > prof_events;

  // ---- W4A4KV4 backend (quant == true) ----
  bool quant = false;
  cublasHandle_t blas = nullptr;  // strided-batched GEMM of the prefill Kronecker transform
  std::vector<QLayerDev> qlayers;
  std::vector<cuda::Kv4Layer> kv4;
  int64_t kv_rows = 0;                        // rows of the fp16 K/V read-back buffers (prefill attention)
  float* tf = nullptr;                        // [max_tokens, HB] fp32: normed / transformed / attention rows
  uint16_t* t16 = nullptr;                    // [max_tokens, HB] fp16: first GEMM of the prefill transform
  uint8_t* xq = nullptr;                      // packed activations, up to 3 copies [copy][rows][K/2]
  float* sxq = nullptr;                       // their scales [copy][rows]
  uint16_t *kf16 = nullptr, *vf16 = nullptr;  // [kv_rows, KV, D] fp16 K/V read back for prefill attention
  static constexpr int64_t kFusedRows = 64;   // up to this many rows: the fused decode kernel, else GEMMs
  // The int8 prefill route (EngineOptions::int8_prefill_rows): activations as int8 code copies in xq
  // ([copy][rows][K] bytes, scales at sxq + copy * align4(rows)), weights unpacked per GEMM into wscr,
  // cuBLASLt s8 GEMMs into acc32 in row chunks of at most EngineOptions::int8_acc_mb (so that the sums can
  // still be in L2 when a8_epilogue reads them).
  bool s8_prefill = false;
  bool wg_prefill = false;  // the int8 route's GEMMs on cuda::w4a8_gemm_wgmma where wg_route
  int64_t wg_gemms = 0;     // GEMMs run on it (EngineInfo::wgmma_gemms)
  int64_t int8_gemms = 0;   // GEMMs run on that route (EngineInfo::int8_gemms)
  int64_t kq_calls = 0;  // inputs transformed by kron_quant_i8_multi (EngineInfo::fused_prefill_transforms)
  int64_t acc_rows(int64_t n) const {
    return std::max<int64_t>(128, std::max<int64_t>(o.int8_acc_mb, 1) * (1 << 20) / (4 * n) / 128 * 128);
  }

  // ---- W4A16 / W8A8 / W4A8 backends (quant && wq; docs/runtime.md) ----
  // qlayers hold w_bits weights (packed int4 [N, K/2] or int8 [N, K]); activations fp16 (a_bits 16) or int8
  // copies per consumer clip in xq (a_bits 8; copy c at xq + c * wq_copy_stride(rows, K)); FP16 KV cache.
  bool wq = false;
  int w_bits = 4, a_bits = 4;
  int32_t* acc32 = nullptr;  // [kAccRows, max N] int32 sums of the cuBLASLt s8 GEMM (> kFusedRows rows)
  void* wscr = nullptr;      // [max N * K] weight scratch: fp16 dequantized (a16) or int8 unpacked (w4a8)
  static constexpr int64_t kAccRows = 2048;        // rows per s8 GEMM call (bounds acc32)
  static constexpr int64_t kWqGemvSliceRows = 64;  // a16: up to this many rows the int4 GEMV in 16-row slices
  // s8 GEMM plans by (M, N, K, alignment of W, alignment of X); op == nullptr: cuBLASLt has no algorithm.
  std::map<std::tuple<int64_t, int64_t, int64_t, int, int>, GemmPlan> s8plans;
  struct WqAct {
    const uint16_t* x16 = nullptr;  // a16: fp16 rows [rows, K]
    cuda::Int8Acts a8;              // a8: the int8 copies over column segments
  };

  Impl(const ModelConfig& c, const EngineOptions& opt) : cfg(c), o(opt) {}
  ~Impl();

  void init_device();
  void plan_memory();
  void plan_workspace(size_t attn_bytes);
  void allocate_weights(const char* what);
  void upload(const ModelWeights& w);
  void randomize(uint64_t seed);
  void finish_init();

  int32_t* in_tok() const { return d_in; }
  int32_t* in_pos() const { return d_in + o.max_batch; }
  int32_t* in_len() const { return d_in + 2 * o.max_batch; }

  cuda::F16KvCache cache(int64_t l) const {
    const size_t per = static_cast<size_t>(o.max_batch * o.max_ctx * KV * D);
    return {kc + per * l, vc + per * l, o.max_batch, o.max_ctx, KV, D};
  }

  void ck(cudaError_t e, const char* what) const { FQ_CUDA_CHECK(e, fmt::format("CudaEngine: {}", what)); }

  // y[M, N] (= or +=) x[M, K] . W[N, K]^T; fp16 inputs, fp32 accumulation, y fp16 or fp32. M <= 4: our GEMV
  // (when o.gemv), else cuBLASLt.
  GemmPlan& plan(int64_t M, int64_t N, int64_t K, bool y_f32, bool acc);
  void lm_head(const uint16_t* X, int64_t rows);  // logits [rows, V] fp32 from fp16 rows
  void gemm(const uint16_t* X, int64_t M, int64_t K, const uint16_t* W, int64_t N, void* Y, bool y_f32,
            bool acc, const char* name);

  template <typename Fn>
  void op(const char* name, Fn&& fn) {
    if (!profiling) {
      fn();
      return;
    }
    cudaEvent_t a, b;
    ck(cudaEventCreate(&a), "event");
    ck(cudaEventCreate(&b), "event");
    ck(cudaEventRecord(a, stream), "event");
    fn();
    ck(cudaEventRecord(b, stream), "event");
    prof_events.push_back({name, {a, b}});
  }

  void layer_body(int64_t il, int64_t rows, bool decode, int64_t batch, int64_t n_seq, int64_t n_tok,
                  int64_t slot0, int64_t p0);
  size_t plan_kv_f16();
  void attn_f16(int64_t il, const float* bqkv, const float* kmat, const float* kinv, int64_t rows,
                bool decode, int64_t batch, int64_t n_seq, int64_t n_tok, int64_t slot0, int64_t p0);

  // W4A4KV4 backend.
  void plan_memory_quant(const Artifact* a);
  void upload_quant(const Artifact& a);
  void randomize_quant(uint64_t seed);
  void resolve(KronDev& k);
  void to_f16(const KronDev& k);
  void kmat_to_f16(const QLayerDev& l);
  // fp16 rows [rows, L*R] -> transformed fp32 rows (returned pointer), as two tensor-core GEMMs.
  const float* kron(const KronDev& k, const uint16_t* src16, int64_t rows);
  // The same into dst: fp16 (dst16) or fp32. dst may be src16 when k.has_b (the first GEMM writes t16).
  void kron_to(const KronDev& k, const uint16_t* src16, int64_t rows, void* dst, bool dst16);
  // to_i8: int8 code copies for the int8 prefill route (scales at sxq + copy * align4(rows)), else packed
  // int4.
  // perm: the codes in the W4A8 GEMM's column order (cuda::wgmma_perm_col; to_i8 only).
  void quantize(const float* src, int64_t rows, int64_t K, const cuda::SymClips& clips, const char* name,
                bool to_i8 = false, bool perm = false);
  // The transform of fp16 rows and their quantization: on the int8 route, one kron_quant_i8_multi where k.kq;
  // else kron() (no transform: src32, fp32) and quantize().
  void transform_quant(const KronDev& k, const uint16_t* src16, const float* src32, int64_t rows, int64_t K,
                       const cuda::SymClips& clips, bool to_i8, bool perm);
  // The int8 prefill route for a W4A4 GEMM of `rows` rows, K inputs and column segments ending at `ends`:
  // whether it is on and cuBLASLt has an s8 plan for every segment and row chunk; and the GEMM itself
  // (weights unpacked into wscr, per row chunk and segment one cuBLASLt s8 GEMM and a8_epilogue; y_f32: fp32
  // y += (the residual), else fp16 y).
  bool s8_route(int64_t rows, std::initializer_list<int64_t> ends, int64_t K);
  // Of those, the GEMMs our sm_90a kernel runs (cuda::w4a8_gemm_wgmma: the packed weights read directly, the
  // epilogue fused; its inputs are quantized in its permuted column order): K and every segment end
  // multiples of 128.
  bool wg_route(int64_t rows, std::initializer_list<int64_t> ends, int64_t K) const;
  // swiglu_out: gate|up with SwiGLU fused into the epilogue (a8_swiglu_epilogue) -> swiglu_out [rows, N/2]
  // (fp16 when swiglu_f16, else fp32); y unused.
  void s8_gemm(int64_t rows, std::initializer_list<int64_t> ends, int64_t K, const uint8_t* W,
               const float* sw, void* y, bool y_f32, const char* name, void* swiglu_out = nullptr,
               bool swiglu_f16 = false);
  void qlayer_body(int64_t il, int64_t rows, bool decode, int64_t batch, int64_t n_seq, int64_t n_tok,
                   int64_t slot0, int64_t p0);
  // W4A16 / W8A8 / W4A8 backend.
  size_t wq_copy_stride(int64_t rows, int64_t K) const { return align_up(static_cast<size_t>(rows * K)); }
  WqAct wq_norm_input(const float* nw, const KronDev& k, const cuda::SymClips& clips,
                      std::initializer_list<int64_t> ends, int64_t rows);
  WqAct wq_acts(uint16_t* src16, const float* src32, const KronDev& k, int64_t rows, int64_t K,
                const cuda::SymClips& clips, std::initializer_list<int64_t> ends);
  void wq_linear(const WqAct& a, const uint8_t* W, const float* sw, int64_t N, int64_t K, void* y, bool y_f32,
                 bool residual, int64_t rows, const char* name);
  GemmPlan* plan_s8(int64_t M, int64_t N, int64_t K, const void* W, const void* X);
  void wq_layer_body(int64_t il, int64_t rows, bool decode, int64_t batch, int64_t n_seq, int64_t n_tok,
                     int64_t slot0, int64_t p0);
  // sp: sample with these parameters instead of the argmax (nullptr: greedy).
  void decode_body(int64_t batch, const cuda::SampleParams* sp = nullptr);
  void run_step(int64_t batch, const cuda::SampleParams* sp =
                                   nullptr);  // graph replay (captured on the second use) or eager
  void check_flags(const char* where);
  // Checks a step's batch, room for n_steps more positions and token ids, then uploads tokens / positions /
  // lengths (nothing is launched when a check fails).
  void upload_step(const int32_t* tokens, int64_t batch, int64_t n_steps, const char* what);
  // Runs `run` un-captured with cudaEvents around each op; positions are restored afterwards.
  template <typename Fn>
  std::vector<OpTime> profile(Fn&& run);
};

CudaEngine::Impl::~Impl() {
  for (auto& [b, g] : graphs) cudaGraphExecDestroy(g);
  for (auto& [k, p] : plans) {
    cublasLtMatrixLayoutDestroy(p.a);
    cublasLtMatrixLayoutDestroy(p.b);
    cublasLtMatrixLayoutDestroy(p.c);
    cublasLtMatmulDescDestroy(p.op);
  }
  for (auto& [k, p] : s8plans) {
    if (p.a) cublasLtMatrixLayoutDestroy(p.a);
    if (p.b) cublasLtMatrixLayoutDestroy(p.b);
    if (p.c) cublasLtMatrixLayoutDestroy(p.c);
    if (p.op) cublasLtMatmulDescDestroy(p.op);
  }
  if (h_in) cudaFreeHost(h_in);
  if (h_rng_step) cudaFreeHost(h_rng_step);
  if (blas) cublasDestroy(blas);
  if (lt) cublasLtDestroy(lt);
  if (stream) cudaStreamDestroy(stream);
}

void CudaEngine::Impl::init_device() {
  std::string why;
  FQ_CHECK(cuda_engine_available(&why), "--device cuda: {}", why);
  FQ_CHECK(o.max_batch >= 1 && o.max_batch <= 1024, "CudaEngine: max_batch must be in [1, 1024] (found {})",
           o.max_batch);
  FQ_CHECK(o.max_ctx >= 1, "CudaEngine: max_ctx must be positive (found {})", o.max_ctx);
  FQ_CHECK(o.fused_split == 0 || o.fused_split == 1 || o.fused_split == 2 || o.fused_split == 4 ||
               o.fused_split == 8,
           "CudaEngine: fused_split must be 0 (automatic), 1, 2, 4 or 8 (found {})", o.fused_split);
  FQ_CHECK(o.max_ctx * o.max_batch < (int64_t(1) << 31),
           "CudaEngine: max_ctx x max_batch too large ({} x {})", o.max_ctx, o.max_batch);
  E = cfg.n_embd, H = cfg.n_head, KV = cfg.n_head_kv, D = cfg.head_dim, F = cfg.n_ff, V = cfg.n_vocab,
  L = cfg.n_layer;
  FQ_CHECK(
      E > 0 && H > 0 && KV > 0 && D > 0 && F > 0 && V > 0 && L > 0,
      "CudaEngine: incomplete config (n_embd {}, n_head {}, n_head_kv {}, head_dim {}, n_ff {}, n_vocab {}, "
      "n_layer {})",
      E, H, KV, D, F, V, L);
  FQ_CHECK(H % KV == 0, "CudaEngine: n_head {} is not a multiple of n_head_kv {}", H, KV);
  FQ_CHECK(D % 8 == 0 && D <= 256, "CudaEngine: head_dim {} unsupported (a multiple of 8, at most 256)", D);
  FQ_CHECK(cfg.hidden_act == "silu", "CudaEngine: hidden_act '{}' unsupported (silu only)", cfg.hidden_act);
  QKV = (H + 2 * KV) * D;
  HD = H * D;
  BIG = std::max(QKV, 2 * F);
  HB = std::max({E, HD, F});
  max_tokens = o.max_tokens > 0 ? o.max_tokens : std::max(o.max_ctx, o.max_batch);
  max_tokens = std::max(max_tokens, o.max_batch);
  max_logit_rows = o.max_logit_rows > 0 ? o.max_logit_rows : o.max_batch;
  max_logit_rows = std::max(max_logit_rows, o.max_batch);
  ck(cudaSetDevice(o.device), "cudaSetDevice");
  ck(cudaGetDeviceProperties(&prop, o.device), "cudaGetDeviceProperties");
  ck(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "stream");
  lt_check(cublasLtCreate(&lt), "cublasLtCreate");
  pos.assign(static_cast<size_t>(o.max_batch), 0);
}

// Both backends end their weight plan alike: the LM head (unless tied), the final norm and the RoPE table are
// reserved last, the arena is allocated and the shared pointers resolved.
void CudaEngine::Impl::allocate_weights(const char* what) {
  if (!cfg.tie_embeddings) o_head = warena.reserve(static_cast<size_t>(V * E) * sizeof(uint16_t));
  if (o.head_int8) {
    o_head_q = warena.reserve(static_cast<size_t>(V * E));
    o_head_s = warena.reserve(static_cast<size_t>(V) * sizeof(float));
  }
  o_norm = warena.reserve(static_cast<size_t>(E) * sizeof(float));
  o_inv_freq = warena.reserve(static_cast<size_t>(D / 2) * sizeof(float));
  warena.allocate(what);
  embd = warena.at<uint16_t>(o_embd);
  head = cfg.tie_embeddings ? embd : warena.at<uint16_t>(o_head);
  if (o.head_int8) {
    head_q = warena.at<int8_t>(o_head_q);
    head_s = warena.at<float>(o_head_s);
  }
  norm = warena.at<float>(o_norm);
  inv_freq = warena.at<float>(o_inv_freq);
}

void CudaEngine::Impl::plan_memory() {
  const size_t h2 = sizeof(uint16_t), f4 = sizeof(float);
  layers.resize(static_cast<size_t>(L));
  o_embd = warena.reserve(static_cast<size_t>(V * E) * h2);
  for (auto& l : layers) {
    l.o_wqkv = warena.reserve(static_cast<size_t>(QKV * E) * h2);
    l.o_wo = warena.reserve(static_cast<size_t>(E * HD) * h2);
    l.o_wgu = warena.reserve(static_cast<size_t>(2 * F * E) * h2);
    l.o_wdown = warena.reserve(static_cast<size_t>(E * F) * h2);
    if (cfg.attn_bias) l.o_bqkv = warena.reserve(static_cast<size_t>(QKV) * f4);
    l.o_n1 = warena.reserve(static_cast<size_t>(E) * f4);
    l.o_n2 = warena.reserve(static_cast<size_t>(E) * f4);
  }
  allocate_weights("weights");
  for (auto& l : layers) {
    l.wqkv = warena.at<uint16_t>(l.o_wqkv);
    l.wo = warena.at<uint16_t>(l.o_wo);
    l.wgu = warena.at<uint16_t>(l.o_wgu);
    l.wdown = warena.at<uint16_t>(l.o_wdown);
    l.bqkv = cfg.attn_bias ? warena.at<float>(l.o_bqkv) : nullptr;
    l.n1 = warena.at<float>(l.o_n1);
    l.n2 = warena.at<float>(l.o_n2);
  }
  step_weight_bytes =
      static_cast<size_t>(L) * static_cast<size_t>(QKV * E + E * HD + 2 * F * E + E * F) * h2 +
      static_cast<size_t>(L) * static_cast<size_t>(2 * E + (cfg.attn_bias ? QKV : 0)) * f4 +
      static_cast<size_t>(V * E) * h2 + static_cast<size_t>(E) * f4;

  plan_workspace(plan_kv_f16());
}

// The FP16 KV cache (FP16 backend and the W4A16 / W8A8 / W4A8 backends); returns the decode attention's
// workspace bytes.
size_t CudaEngine::Impl::plan_kv_f16() {
  const size_t kv_elems = static_cast<size_t>(L * o.max_batch * o.max_ctx * KV * D);
  const size_t o_k = karena.reserve(kv_elems * sizeof(uint16_t)),
               o_v = karena.reserve(kv_elems * sizeof(uint16_t));
  karena.allocate("the KV cache");
  kc = karena.at<uint16_t>(o_k);
  vc = karena.at<uint16_t>(o_v);
  size_t attn_bytes = 0;
  for (int64_t b = 1; b <= o.max_batch; ++b)
    attn_bytes = std::max(
        attn_bytes,
        cuda::decode_attention_f16_workspace_bytes(
            b, H, D, cuda::decode_attention_f16_plan(b, H, KV, o.max_ctx, prop.multiProcessorCount)));
  return attn_bytes;
}

void CudaEngine::Impl::plan_workspace(size_t attn_bytes) {
  const size_t h2 = sizeof(uint16_t), f4 = sizeof(float);
  const size_t mt = static_cast<size_t>(max_tokens), mb = static_cast<size_t>(o.max_batch);
  const size_t o_x = sarena.reserve(mt * E * f4), o_hb = sarena.reserve(mt * HB * h2),
               o_big = sarena.reserve(mt * BIG * h2), o_logits = sarena.reserve(max_logit_rows * V * f4),
               o_tok = sarena.reserve(mt * 4), o_in = sarena.reserve(3 * mb * 4),
               o_next = sarena.reserve(mb * 4),
               o_hist = sarena.reserve(static_cast<size_t>(o.max_ctx) * mb * 4), o_flags = sarena.reserve(16),
               o_rng = sarena.reserve(8), o_attn = sarena.reserve(std::max<size_t>(attn_bytes, 16)),
               o_lt = sarena.reserve(kLtWorkspace);
  size_t o_tf = 0, o_t16 = 0, o_xq = 0, o_sxq = 0, o_kf = 0, o_vf = 0, o_acc = 0, o_wscr = 0;
  s8_prefill =
      quant && !wq && o.int8_prefill_rows > 0 && max_tokens >= std::max(o.int8_prefill_rows, kFusedRows + 1);
  wg_prefill = s8_prefill && o.wgmma_prefill && cuda::w4a8_wgmma_available(o.device);
  // Every W4A4 GEMM on the wgmma kernel: no unpacked weights, no int32 sums.
  const bool wg_all = wg_prefill && E % 128 == 0 && HD % 128 == 0 && (KV * D) % 128 == 0 && F % 128 == 0;
  if (quant && !wq) {
    const size_t copies_k = static_cast<size_t>(std::max({3 * E, HD, F}));
    kv_rows = std::max(max_tokens, o.max_ctx);
    o_tf = sarena.reserve(mt * HB * f4);
    o_t16 = sarena.reserve(mt * HB * h2);
    o_xq = sarena.reserve(s8_prefill ? mt * copies_k : mt * copies_k / 2);
    o_sxq = sarena.reserve(3 * (mt + 3) * f4);
    if (s8_prefill && !wg_all) {
      const int64_t max_n = std::max({QKV, 2 * F, E});  // all segments of one GEMM (s8_gemm's acc layout)
      o_wscr = sarena.reserve(static_cast<size_t>(std::max({QKV * E, E * HD, 2 * F * E, E * F})));
      o_acc = sarena.reserve(static_cast<size_t>(std::min(max_tokens, acc_rows(max_n)) * max_n + 3 * 64) * 4);
    }
    o_kf = sarena.reserve(static_cast<size_t>(kv_rows * KV * D) * h2);
    o_vf = sarena.reserve(static_cast<size_t>(kv_rows * KV * D) * h2);
  }
  if (wq) {
    const size_t max_k = static_cast<size_t>(std::max({E, HD, F})),
                 max_n = static_cast<size_t>(std::max({QKV, 2 * F, E}));
    const size_t max_nk = static_cast<size_t>(std::max({QKV * E, E * HD, 2 * F * E, E * F}));
    o_tf = sarena.reserve(mt * HB * f4);
    o_t16 = sarena.reserve(mt * HB * h2);
    o_sxq = sarena.reserve(3 * mt * f4);
    if (a_bits == 8) {
      o_xq = sarena.reserve(3 * align_up(mt * max_k));
      o_acc = sarena.reserve(std::min<size_t>(mt, kAccRows) * max_n * 4);
    }
    if (a_bits == 16 || w_bits == 4) o_wscr = sarena.reserve(max_nk * (a_bits == 16 ? h2 : 1));
  }
  sarena.allocate("the workspace");
  if (quant) {
    tf = sarena.at<float>(o_tf);
    t16 = sarena.at<uint16_t>(o_t16);
    xq = sarena.at<uint8_t>(o_xq);
    sxq = sarena.at<float>(o_sxq);
    kf16 = sarena.at<uint16_t>(o_kf);
    vf16 = sarena.at<uint16_t>(o_vf);
  }
  lt_ws = sarena.at<void>(o_lt);
  if (s8_prefill && !wg_all) {
    wscr = sarena.at<void>(o_wscr);
    acc32 = sarena.at<int32_t>(o_acc);
  }
  if (wq) {
    acc32 = a_bits == 8 ? sarena.at<int32_t>(o_acc) : nullptr;
    wscr = a_bits == 16 || w_bits == 4 ? sarena.at<void>(o_wscr) : nullptr;
  }
  x = sarena.at<float>(o_x);
  hb = sarena.at<uint16_t>(o_hb);
  big = sarena.at<uint16_t>(o_big);
  logits = sarena.at<float>(o_logits);
  d_tok = sarena.at<int32_t>(o_tok);
  d_in = sarena.at<int32_t>(o_in);
  d_next = sarena.at<int32_t>(o_next);
  d_hist = sarena.at<int32_t>(o_hist);
  d_flags = sarena.at<int32_t>(o_flags);
  attn_ws = sarena.at<void>(o_attn);
  ck(cudaMallocHost(reinterpret_cast<void**>(&h_in), 3 * mb * sizeof(int32_t)), "cudaMallocHost");
  ck(cudaMallocHost(reinterpret_cast<void**>(&h_rng_step), sizeof(uint64_t)), "cudaMallocHost");
  d_rng_step = sarena.at<uint64_t>(o_rng);
  ck(cudaMemsetAsync(d_in, 0, 3 * mb * 4, stream), "memset");
  ck(cudaMemsetAsync(d_flags, 0, 16, stream), "memset");
}

void CudaEngine::Impl::finish_init() {
  if (o.head_int8) {
    FQ_CHECK(E % 16 == 0, "CudaEngine: --head-int8 needs n_embd a multiple of 16 (found {})", E);
    ck(cuda::quantize_rows_int8(head, V, E, head_q, head_s, stream), "int8 head");
    // A step streams the int8 head instead of the fp16 one (which stays resident: the upload fills it). The
    // W4A4 count (the arena less one table) already holds the int8 copy.
    step_weight_bytes -= static_cast<size_t>(V * E) * sizeof(uint16_t);
    if (!quant) step_weight_bytes += static_cast<size_t>(V * E) + static_cast<size_t>(V) * sizeof(float);
  }
  const std::vector<float> inv = ref::rope_inv_freq(D, cfg.rope_theta, cfg.rope_scaling);
  ck(cudaMemcpyAsync(inv_freq, inv.data(), inv.size() * sizeof(float), cudaMemcpyHostToDevice, stream),
     "upload inv_freq");
  ck(cudaStreamSynchronize(stream), "init");
}

void CudaEngine::Impl::upload(const ModelWeights& w) {
  std::vector<uint16_t> buf;
  auto put16 = [&](uint16_t* dst, std::initializer_list<const std::vector<float>*> parts, size_t expect,
                   const char* name, int il) {
    buf.clear();
    for (const auto* p : parts)
      for (float v : *p) buf.push_back(f32_to_f16(v));
    FQ_CHECK(buf.size() == expect, "CudaEngine: layer {} {}: {} values, expected {}", il, name, buf.size(),
             expect);
    ck(cudaMemcpy(dst, buf.data(), buf.size() * 2, cudaMemcpyHostToDevice), name);
  };
  auto put32 = [&](float* dst, std::initializer_list<const std::vector<float>*> parts, size_t expect,
                   const char* name, int il) {
    std::vector<float> f;
    for (const auto* p : parts) f.insert(f.end(), p->begin(), p->end());
    FQ_CHECK(f.size() == expect, "CudaEngine: layer {} {}: {} values, expected {}", il, name, f.size(),
             expect);
    ck(cudaMemcpy(dst, f.data(), f.size() * 4, cudaMemcpyHostToDevice), name);
  };
  FQ_CHECK(static_cast<int64_t>(w.layers.size()) == L, "CudaEngine: {} layers in the weights, config says {}",
           w.layers.size(), L);
  put16(embd, {&w.tok_embd}, static_cast<size_t>(V * E), "tok_embd", -1);
  if (!cfg.tie_embeddings) put16(head, {&w.head()}, static_cast<size_t>(V * E), "lm_head", -1);
  put32(norm, {&w.norm}, static_cast<size_t>(E), "norm", -1);
  for (int64_t i = 0; i < L; ++i) {
    const LayerWeights& s = w.layers[static_cast<size_t>(i)];
    const LayerDev& d = layers[static_cast<size_t>(i)];
    const int il = static_cast<int>(i);
    put16(d.wqkv, {&s.wq, &s.wk, &s.wv}, static_cast<size_t>(QKV * E), "q/k/v_proj", il);
    put16(d.wo, {&s.wo}, static_cast<size_t>(E * HD), "o_proj", il);
    put16(d.wgu, {&s.w_gate, &s.w_up}, static_cast<size_t>(2 * F * E), "gate/up_proj", il);
    put16(d.wdown, {&s.w_down}, static_cast<size_t>(E * F), "down_proj", il);
    if (cfg.attn_bias) put32(d.bqkv, {&s.bq, &s.bk, &s.bv}, static_cast<size_t>(QKV), "q/k/v bias", il);
    put32(d.n1, {&s.attn_norm}, static_cast<size_t>(E), "input_layernorm", il);
    put32(d.n2, {&s.ffn_norm}, static_cast<size_t>(E), "post_attention_layernorm", il);
  }
}

void CudaEngine::Impl::randomize(uint64_t seed) {
  uint64_t k = seed * 1000003u;
  auto rnd = [&](uint16_t* p, int64_t n) {
    ck(cuda::fill_normal_f16(p, n, ++k, 0.02f, stream), "random fill");
  };
  auto one = [&](float* p, int64_t n, float v) { ck(cuda::fill_f32(p, n, v, stream), "fill"); };
  rnd(embd, V * E);
  if (!cfg.tie_embeddings) rnd(head, V * E);
  one(norm, E, 1.0f);
  for (auto& l : layers) {
    rnd(l.wqkv, QKV * E);
    rnd(l.wo, E * HD);
    rnd(l.wgu, 2 * F * E);
    rnd(l.wdown, E * F);
    if (l.bqkv) one(l.bqkv, QKV, 0.0f);
    one(l.n1, E, 1.0f);
    one(l.n2, E, 1.0f);
  }
}

GemmPlan& CudaEngine::Impl::plan(int64_t M, int64_t N, int64_t K, bool y_f32, bool acc) {
  const auto key = std::make_tuple(M, N, K, y_f32, acc);
  auto it = plans.find(key);
  if (it != plans.end()) return it->second;
  // Row-major y[M,N] = x[M,K] W[N,K]^T is column-major y^T[N,M] = op_T(W)[N,K] x^T[K,M]: A = W (K x N, ld K,
  // transposed), B = x (K x M, ld K), C = y (N x M, ld N).
  GemmPlan p;
  lt_check(cublasLtMatmulDescCreate(&p.op, CUBLAS_COMPUTE_32F, CUDA_R_32F), "MatmulDescCreate");
  const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
  lt_check(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta), "TRANSA");
  lt_check(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb), "TRANSB");
  lt_check(
      cublasLtMatrixLayoutCreate(&p.a, CUDA_R_16F, static_cast<uint64_t>(K), static_cast<uint64_t>(N), K),
      "layout A");
  lt_check(
      cublasLtMatrixLayoutCreate(&p.b, CUDA_R_16F, static_cast<uint64_t>(K), static_cast<uint64_t>(M), K),
      "layout B");
  lt_check(cublasLtMatrixLayoutCreate(&p.c, y_f32 ? CUDA_R_32F : CUDA_R_16F, static_cast<uint64_t>(N),
                                      static_cast<uint64_t>(M), N),
           "layout C");
  cublasLtMatmulPreference_t pref = nullptr;
  lt_check(cublasLtMatmulPreferenceCreate(&pref), "PreferenceCreate");
  const size_t ws = kLtWorkspace;
  lt_check(
      cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws),
      "workspace preference");
  cublasLtMatmulHeuristicResult_t res{};
  int n = 0;
  const cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(lt, p.op, p.a, p.b, p.c, p.c, pref, 1, &res, &n);
  cublasLtMatmulPreferenceDestroy(pref);
  if (st != CUBLAS_STATUS_SUCCESS || n == 0)
    fail("cuBLASLt: no fp16 GEMM algorithm for M={} N={} K={} ({} output{})", M, N, K,
         y_f32 ? "fp32" : "fp16", acc ? ", accumulate" : "");
  p.algo = res.algo;
  return plans.emplace(key, p).first->second;
}

void CudaEngine::Impl::gemm(const uint16_t* X, int64_t M, int64_t K, const uint16_t* W, int64_t N, void* Y,
                            bool y_f32, bool acc, const char* name) {
  if (o.gemv && cuda::gemv_f16_supported(M, K, X, W)) {
    op(name, [&] { ck(cuda::gemv_f16(X, M, K, W, N, Y, y_f32, acc, stream), name); });
    return;
  }
  GemmPlan& p = plan(M, N, K, y_f32, acc);
  const float alpha = 1.0f, beta = acc ? 1.0f : 0.0f;
  op(name, [&] {
    lt_check(cublasLtMatmul(lt, p.op, &alpha, W, p.a, X, p.b, &beta, Y, p.c, Y, p.c, &p.algo, lt_ws,
                            kLtWorkspace, stream),
             name);
  });
}

void CudaEngine::Impl::lm_head(const uint16_t* X, int64_t rows) {
  if (!o.head_int8) {
    gemm(X, rows, E, head, V, logits, true, false, "lm_head");
    return;
  }
  op("lm_head",
     [&] { ck(cuda::gemv_int8_f16(X, rows, E, head_q, head_s, V, logits, stream), "int8 LM head"); });
}

void CudaEngine::Impl::layer_body(int64_t il, int64_t rows, bool decode, int64_t batch, int64_t n_seq,
                                  int64_t n_tok, int64_t slot0, int64_t p0) {
  const LayerDev& w = layers[static_cast<size_t>(il)];
  const float eps = static_cast<float>(cfg.rms_eps);
  op("rmsnorm",
     [&] { ck(cuda::rmsnorm(x, DType::F32, E, w.n1, rows, E, eps, hb, DType::F16, stream), "rmsnorm"); });
  gemm(hb, rows, E, w.wqkv, QKV, big, false, false, "qkv_gemm");
  attn_f16(il, w.bqkv, nullptr, nullptr, rows, decode, batch, n_seq, n_tok, slot0, p0);
  gemm(hb, rows, HD, w.wo, E, x, true, true, "o_gemm");
  op("rmsnorm",
     [&] { ck(cuda::rmsnorm(x, DType::F32, E, w.n2, rows, E, eps, hb, DType::F16, stream), "rmsnorm"); });
  gemm(hb, rows, E, w.wgu, 2 * F, big, false, false, "gate_up_gemm");
  op("swiglu", [&] {
    ck(cuda::swiglu(big, big + F, DType::F16, 2 * F, 2 * F, rows, F, hb, DType::F16, stream), "swiglu");
  });
  gemm(hb, rows, F, w.wdown, E, x, true, true, "down_gemm");
}

// q/k/v in `big` (fp16, fused rows) -> bias, RoPE (and FlatQuant's K transform when kmat: q <- q kinv, k <- k
// kmat) -> K/V into the FP16 cache of layer il -> attention output in hb [rows, H*D] fp16. Shared by the FP16
// backend and the W4A16 / W8A8 / W4A8 backends.
void CudaEngine::Impl::attn_f16(int64_t il, const float* bqkv, const float* kmat, const float* kinv,
                                int64_t rows, bool decode, int64_t batch, int64_t n_seq, int64_t n_tok,
                                int64_t slot0, int64_t p0) {
  const cuda::F16KvCache c = cache(il);
  if (!kmat) {
    op("rope_kv_append", [&] {
      ck(cuda::qkv_rope_append_f16(big, QKV, rows, decode ? 1 : n_tok, decode ? 0 : slot0, decode ? 0 : p0,
                                   decode ? in_pos() : nullptr, bqkv, H, inv_freq, c, d_flags, stream),
         "q/k/v RoPE + cache append");
    });
  } else {
    op("rope_ktrans", [&] {
      ck(cuda::qkv_rope_transform_f16(big, QKV, rows, decode ? 1 : n_tok, decode ? 0 : p0,
                                      decode ? in_pos() : nullptr, bqkv, H, KV, D, inv_freq, kinv, kmat,
                                      stream),
         "q/k/v RoPE + K transform");
    });
    op("kv_append", [&] {
      ck(cuda::f16_kv_append(big + HD, big + HD + KV * D, QKV, rows, decode ? 1 : n_tok, decode ? 0 : slot0,
                             decode ? 0 : p0, decode ? in_pos() : nullptr, c, d_flags, stream),
         "K/V cache append");
    });
  }
  if (decode) {
    const cuda::DecodeF16Plan dp =
        cuda::decode_attention_f16_plan(batch, H, KV, o.max_ctx, prop.multiProcessorCount);
    op("decode_attention", [&] {
      ck(cuda::decode_attention_f16(c, big, QKV, batch, H, 0, in_len(), hb, dp, attn_ws, d_flags, stream),
         "decode attention");
    });
  } else {
    const int64_t kv_row = KV * D, kv_slot = o.max_ctx * kv_row;
    op("prefill_attention", [&] {
      ck(cuda::prefill_attention(big, c.k + slot0 * kv_slot, c.v + slot0 * kv_slot, n_seq, n_tok, p0, H, KV,
                                 D, QKV, n_tok * QKV, kv_row, kv_slot, hb, DType::F16, stream),
         "prefill attention");
    });
  }
}

void CudaEngine::Impl::decode_body(int64_t batch, const cuda::SampleParams* sp) {
  op("embedding", [&] {
    ck(cuda::embedding(embd, DType::F16, V, E, in_tok(), batch, x, DType::F32, d_flags + 1, stream),
       "embedding");
  });
  for (int64_t il = 0; il < L; ++il) {
    if (wq)
      wq_layer_body(il, batch, true, batch, batch, 1, 0, 0);
    else if (quant)
      qlayer_body(il, batch, true, batch, batch, 1, 0, 0);
    else
      layer_body(il, batch, true, batch, batch, 1, 0, 0);
  }
  op("final_norm", [&] {
    ck(cuda::rmsnorm(x, DType::F32, E, norm, batch, E, static_cast<float>(cfg.rms_eps), hb, DType::F16,
                     stream),
       "final norm");
  });
  lm_head(hb, batch);
  if (sp)
    op("sample", [&] {
      ck(cuda::sample(logits, DType::F32, batch, V, V, *sp, 0, d_rng_step, d_next, stream), "sampling");
    });
  else
    op("argmax", [&] { ck(cuda::argmax(logits, DType::F32, batch, V, V, d_next, stream), "argmax"); });
  op("advance", [&] {
    ck(cuda::decode_advance(d_next, in_tok(), in_pos(), in_len(), batch, d_hist, o.max_ctx, d_flags + 2,
                            stream),
       "advance");
  });
}

void CudaEngine::Impl::run_step(int64_t batch, const cuda::SampleParams* sp) {
  if (!o.cuda_graphs || profiling) {
    decode_body(batch, sp);
    return;
  }
  const GraphKey key = sp ? GraphKey{batch, true, sp->temperature, sp->top_k, sp->top_p, sp->seed}
                          : GraphKey{batch, false, 0.0f, 0, 0.0f, 0};
  auto it = graphs.find(key);
  if (it != graphs.end()) {
    ck(cudaGraphLaunch(it->second, stream), "cudaGraphLaunch");
    return;
  }
  // First step of this batch size: run it eagerly (loads the kernels, picks the GEMM algorithms), then
  // capture the same launches for the next steps.
  decode_body(batch, sp);
  cudaGraph_t g = nullptr;
  ck(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal), "cudaStreamBeginCapture");
  try {
    decode_body(batch, sp);
  } catch (...) {
    cudaStreamEndCapture(stream, &g);
    if (g) cudaGraphDestroy(g);
    throw;
  }
  ck(cudaStreamEndCapture(stream, &g), "cudaStreamEndCapture");
  cudaGraphExec_t exec = nullptr;
  const cudaError_t e = cudaGraphInstantiate(&exec, g, 0);
  cudaGraphDestroy(g);
  ck(e, "cudaGraphInstantiate");
  graphs.emplace(key, exec);
}

void CudaEngine::Impl::check_flags(const char* where) {
  int32_t f[2] = {0, 0};
  ck(cudaMemcpyAsync(f, d_flags, sizeof f, cudaMemcpyDeviceToHost, stream), "read flags");
  ck(cudaStreamSynchronize(stream), where);
  if (f[0] || f[1]) {
    ck(cudaMemsetAsync(d_flags, 0, 8, stream), "memset");
    ck(cudaStreamSynchronize(stream), where);
    FQ_CHECK(!f[0], "CudaEngine {}: a position beyond the KV cache (max_ctx {}) reached the device", where,
             o.max_ctx);
    fail("CudaEngine {}: a token id outside [0, {}) reached the embedding", where, V);
  }
}

// ---- W4A4KV4 backend --------------------------------------------------------------------------------------

void CudaEngine::Impl::plan_memory_quant(const Artifact* a) {
  const size_t h2 = sizeof(uint16_t), f4 = sizeof(float);
  FQ_CHECK(w_bits == 8 || (E % 2 == 0 && F % 2 == 0 && HD % 2 == 0),
           "CudaEngine W4A4: n_embd {}, n_ff {} and n_head * head_dim {} must be even (packed int4 pairs)", E,
           F, HD);
  // Bytes of a [n, k] weight: packed int4 or int8.
  auto wbytes = [&](int64_t n, int64_t k) { return static_cast<size_t>(n * k * w_bits / 8); };
  FQ_CHECK(std::max({E, F, HD}) <= cuda::kQgemmMaxK, "CudaEngine W4A4: a linear's input ({}) exceeds {}",
           std::max({E, F, HD}), cuda::kQgemmMaxK);
  FQ_CHECK(blas == nullptr, "CudaEngine: planned twice");
  if (cublasCreate(&blas) != CUBLAS_STATUS_SUCCESS) fail("cuBLAS: cublasCreate failed");
  if (cublasSetStream(blas, stream) != CUBLAS_STATUS_SUCCESS) fail("cuBLAS: cublasSetStream failed");
  qlayers.resize(static_cast<size_t>(L));
  // Transform layout: the artifact's, or (random weights) every transform a FlatQuant artifact has, with the
  // original's Kronecker factor sizes.
  auto dims = [&](KronDev& k, const KronPair* p, int64_t n) {
    if (p) {
      k.L = p->present() ? p->L : 0;
      k.R = p->present() ? p->R : 0;
    } else {
      const ref::KronDims d = ref::decompose_dim(n);
      k.L = d.left;
      k.R = d.right;
    }
    FQ_CHECK(k.L * k.R <= 40960, "CudaEngine W4A4: a {} x {} Kronecker transform is larger than 40960", k.L,
             k.R);
  };
  o_embd = warena.reserve(static_cast<size_t>(V * E) * h2);
  auto reserve_kron = [&](KronDev& k, int64_t K, cuda::FusedIn in) {
    k.fused = cuda::fused_quant_fits(k.L, k.R, K, in, k.L > 0 && k.has_b, o.device,
                                     static_cast<int>(o.fused_split));
    if (!k.L) return;
    k.kq = o.fused_prefill_transform && cuda::kron_quant_i8_fits(k.L, k.R, k.has_b, o.device);
    k.o_A = warena.reserve(static_cast<size_t>(k.L * k.L) * f4);
    k.o_A16 = warena.reserve(static_cast<size_t>(k.L * k.L) * h2);
    k.o_Apk = warena.reserve(static_cast<size_t>(cuda::fused_operand_elems(k.L)) * h2);
    if (!k.has_b) return;
    k.o_B = warena.reserve(static_cast<size_t>(k.R * k.R) * f4);
    k.o_Bt16 = warena.reserve(static_cast<size_t>(k.R * k.R) * h2);
    k.o_Bpk = warena.reserve(static_cast<size_t>(cuda::fused_operand_elems(k.R)) * h2);
  };
  for (int64_t i = 0; i < L; ++i) {
    QLayerDev& l = qlayers[static_cast<size_t>(i)];
    const ArtifactLayer* al = a ? &a->layers[static_cast<size_t>(i)] : nullptr;
    dims(l.ln, al ? &al->ln_trans : nullptr, E);
    dims(l.ug, al ? &al->up_gate_trans : nullptr, E);
    dims(l.dn, al ? &al->down_trans : nullptr, F);
    l.o_wqkv = warena.reserve(wbytes(QKV, E));
    l.o_sqkv = warena.reserve(static_cast<size_t>(QKV) * f4);
    l.o_wo = warena.reserve(wbytes(E, HD));
    l.o_so = warena.reserve(static_cast<size_t>(E) * f4);
    l.o_wgu = warena.reserve(wbytes(2 * F, E));
    l.o_sgu = warena.reserve(static_cast<size_t>(2 * F) * f4);
    l.o_wdown = warena.reserve(wbytes(E, F));
    l.o_sdown = warena.reserve(static_cast<size_t>(E) * f4);
    if (cfg.attn_bias) l.o_bqkv = warena.reserve(static_cast<size_t>(QKV) * f4);
    l.o_n1 = warena.reserve(static_cast<size_t>(E) * f4);
    l.o_n2 = warena.reserve(static_cast<size_t>(E) * f4);
    l.om.has_b = false;
    l.om.L = !al || !al->o_trans.empty() ? H : 0;
    l.om.R = l.om.L ? D : 0;
    if (!al || !al->kcache_trans.empty()) {
      l.o_kmat = warena.reserve(static_cast<size_t>(D * D) * f4) + 1;
      l.o_kinv = warena.reserve(static_cast<size_t>(D * D) * f4) + 1;
      l.o_kmat16 = warena.reserve(static_cast<size_t>(D * D) * h2);
      l.o_kinv16 = warena.reserve(static_cast<size_t>(D * D) * h2);
    }
    reserve_kron(l.ln, E, cuda::FusedIn::kRmsNorm);
    reserve_kron(l.ug, E, cuda::FusedIn::kRmsNorm);
    reserve_kron(l.dn, F, cuda::FusedIn::kSwiGLU);
    reserve_kron(l.om, HD, cuda::FusedIn::kPlain);
  }
  allocate_weights("the W4A4 weights");
  // Optional tensors were reserved at offset + 1 (0 = absent).
  auto opt = [&](size_t off) { return off ? warena.at<float>(off - 1) : nullptr; };
  for (auto& l : qlayers) {
    l.wqkv = warena.at<uint8_t>(l.o_wqkv);
    l.sqkv = warena.at<float>(l.o_sqkv);
    l.wo = warena.at<uint8_t>(l.o_wo);
    l.so = warena.at<float>(l.o_so);
    l.wgu = warena.at<uint8_t>(l.o_wgu);
    l.sgu = warena.at<float>(l.o_sgu);
    l.wdown = warena.at<uint8_t>(l.o_wdown);
    l.sdown = warena.at<float>(l.o_sdown);
    l.bqkv = cfg.attn_bias ? warena.at<float>(l.o_bqkv) : nullptr;
    l.n1 = warena.at<float>(l.o_n1);
    l.n2 = warena.at<float>(l.o_n2);
    l.kmat = opt(l.o_kmat);
    l.kinv = opt(l.o_kinv);
    if (l.kmat) {
      l.kmat16 = warena.at<uint16_t>(l.o_kmat16);
      l.kinv16 = warena.at<uint16_t>(l.o_kinv16);
    }
    resolve(l.ln);
    resolve(l.ug);
    resolve(l.dn);
    resolve(l.om);
  }
  step_weight_bytes = warena.size() - (cfg.tie_embeddings ? 0 : static_cast<size_t>(V * E) * h2);
  if (wq) {  // W4A16 / W8A8 / W4A8: the FP16 cache
    plan_workspace(plan_kv_f16());
    return;
  }

  // KV4 cache: per layer K and V codes [slot][ctx][KV][D/2], scale and zero [slot][ctx][KV] fp32.
  const size_t cells = static_cast<size_t>(o.max_batch * o.max_ctx * KV),
               codes = cells * static_cast<size_t>(D / 2);
  std::vector<std::array<size_t, 6> > offs(static_cast<size_t>(L));
  for (auto& of : offs) {
    of[0] = karena.reserve(codes);
    of[1] = karena.reserve(cells * f4);
    of[2] = karena.reserve(cells * f4);
    of[3] = karena.reserve(codes);
    of[4] = karena.reserve(cells * f4);
    of[5] = karena.reserve(cells * f4);
  }
  karena.allocate("the KV4 cache");
  kv4.resize(static_cast<size_t>(L));
  for (size_t i = 0; i < offs.size(); ++i) {
    cuda::Kv4Layer& c = kv4[i];
    c.k = karena.at<uint8_t>(offs[i][0]);
    c.k_scale = karena.at<float>(offs[i][1]);
    c.k_zero = karena.at<float>(offs[i][2]);
    c.v = karena.at<uint8_t>(offs[i][3]);
    c.v_scale = karena.at<float>(offs[i][4]);
    c.v_zero = karena.at<float>(offs[i][5]);
    c.n_slots = o.max_batch;
    c.max_ctx = o.max_ctx;
    c.n_head_kv = KV;
    c.head_dim = D;
  }
  size_t attn_bytes = 0;
  for (int64_t b = 1; b <= o.max_batch; ++b)
    attn_bytes =
        std::max(attn_bytes,
                 cuda::decode_attention_workspace_bytes(
                     b, H, D, cuda::decode_attention_plan(b, H, KV, o.max_ctx, prop.multiProcessorCount, D)));
  plan_workspace(attn_bytes);
}

void CudaEngine::Impl::resolve(KronDev& k) {
  if (!k.L) return;
  k.A = warena.at<float>(k.o_A);
  k.A16 = warena.at<uint16_t>(k.o_A16);
  k.Apk = warena.at<uint16_t>(k.o_Apk);
  if (!k.has_b) return;
  k.B = warena.at<float>(k.o_B);
  k.Bt16 = warena.at<uint16_t>(k.o_Bt16);
  k.Bpk = warena.at<uint16_t>(k.o_Bpk);
}

namespace {
cuda::SymClips clips_of(std::initializer_list<const QLinear*> ls) {
  cuda::SymClips c;
  c.n = 0;
  for (const QLinear* l : ls) {
    c.max[c.n] = l->act_clip_max;
    c.min[c.n] = l->act_clip_min;
    ++c.n;
  }
  return c;
}
}  // namespace

void CudaEngine::Impl::upload_quant(const Artifact& a) {
  FQ_CHECK(static_cast<int64_t>(a.layers.size()) == L,
           "CudaEngine: {} layers in the artifact, config says {}", a.layers.size(), L);
  auto put = [&](void* dst, const void* src, size_t bytes, const char* name, int il) {
    ck(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice),
       fmt::format("upload layer {} {}", il, name).c_str());
  };
  auto cat_u8 = [&](uint8_t* dst, std::initializer_list<const QLinear*> ls, int64_t in, const char* name,
                    int il) {
    size_t off = 0;
    for (const QLinear* l : ls) {
      FQ_CHECK(l->bits == w_bits && l->in == in &&
                   static_cast<int64_t>(l->qweight.size()) == l->out * in * w_bits / 8 &&
                   static_cast<int64_t>(l->scales.size()) == l->out,
               "CudaEngine: layer {} {}: expected a {}-bit [{} x {}] linear, found {} bits [{} x {}]", il,
               name, w_bits, l->out, in, l->bits, l->out, l->in);
      put(dst + off, l->qweight.data(), l->qweight.size(), name, il);
      off += l->qweight.size();
    }
  };
  auto cat_f = [&](float* dst, std::initializer_list<const std::vector<float>*> vs, size_t expect,
                   const char* name, int il) {
    std::vector<float> f;
    for (const auto* v : vs) f.insert(f.end(), v->begin(), v->end());
    FQ_CHECK(f.size() == expect, "CudaEngine: layer {} {}: {} values, expected {}", il, name, f.size(),
             expect);
    put(dst, f.data(), f.size() * 4, name, il);
  };
  auto put_kron = [&](const KronDev& k, const KronPair& p, const char* name, int il) {
    // (the o_proj mix has its own upload below)
    if (!k.L) return;
    cat_f(k.A, {&p.left}, static_cast<size_t>(k.L * k.L), name, il);
    cat_f(k.B, {&p.right}, static_cast<size_t>(k.R * k.R), name, il);
  };
  std::vector<uint16_t> buf;
  auto put16 = [&](uint16_t* dst, const std::vector<float>& v, const char* name) {
    FQ_CHECK(static_cast<int64_t>(v.size()) == V * E, "CudaEngine: {}: {} values, expected {}", name,
             v.size(), V * E);
    buf.resize(v.size());
    for (size_t i = 0; i < v.size(); ++i) buf[i] = f32_to_f16(v[i]);
    put(dst, buf.data(), buf.size() * 2, name, -1);
  };
  put16(embd, a.tok_embd, "tok_embd");
  if (!cfg.tie_embeddings) put16(head, a.head(), "lm_head");
  cat_f(norm, {&a.norm}, static_cast<size_t>(E), "norm", -1);
  for (int64_t i = 0; i < L; ++i) {
    const ArtifactLayer& s = a.layers[static_cast<size_t>(i)];
    QLayerDev& d = qlayers[static_cast<size_t>(i)];
    const int il = static_cast<int>(i);
    cat_u8(d.wqkv, {&s.q, &s.k, &s.v}, E, "q/k/v_proj", il);
    cat_f(d.sqkv, {&s.q.scales, &s.k.scales, &s.v.scales}, static_cast<size_t>(QKV), "q/k/v scales", il);
    cat_u8(d.wo, {&s.o}, HD, "o_proj", il);
    cat_f(d.so, {&s.o.scales}, static_cast<size_t>(E), "o_proj scales", il);
    cat_u8(d.wgu, {&s.gate, &s.up}, E, "gate/up_proj", il);
    cat_f(d.sgu, {&s.gate.scales, &s.up.scales}, static_cast<size_t>(2 * F), "gate/up scales", il);
    cat_u8(d.wdown, {&s.down}, F, "down_proj", il);
    cat_f(d.sdown, {&s.down.scales}, static_cast<size_t>(E), "down_proj scales", il);
    if (cfg.attn_bias) {
      const std::vector<float> zq(static_cast<size_t>(HD), 0.0f), zk(static_cast<size_t>(KV * D), 0.0f);
      cat_f(d.bqkv,
            {s.q.bias.empty() ? &zq : &s.q.bias, s.k.bias.empty() ? &zk : &s.k.bias,
             s.v.bias.empty() ? &zk : &s.v.bias},
            static_cast<size_t>(QKV), "q/k/v bias", il);
    }
    cat_f(d.n1, {&s.attn_norm}, static_cast<size_t>(E), "input_layernorm", il);
    cat_f(d.n2, {&s.ffn_norm}, static_cast<size_t>(E), "post_attention_layernorm", il);
    if (d.om.L) cat_f(d.om.A, {&s.o_trans}, static_cast<size_t>(H * H), "o_trans", il);
    if (d.kmat) {
      cat_f(d.kmat, {&s.kcache_trans}, static_cast<size_t>(D * D), "kcache_trans", il);
      cat_f(d.kinv, {&s.kcache_inv_t}, static_cast<size_t>(D * D), "kcache_trans inv_t", il);
    }
    put_kron(d.ln, s.ln_trans, "ln_trans", il);
    put_kron(d.ug, s.up_gate_trans, "up_gate_trans", il);
    put_kron(d.dn, s.down_trans, "down_trans", il);
    d.qkv_clips = clips_of({&s.q, &s.k, &s.v});
    d.gu_clips = clips_of({&s.gate, &s.up});
    d.o_clip = clips_of({&s.o});
    d.down_clip = clips_of({&s.down});
    d.kv_clip = {s.k_clip_max, s.k_clip_min, s.v_clip_max, s.v_clip_min};
  }
  ck(cudaDeviceSynchronize(), "upload");  // the fp16 copies below run on `stream`
  for (auto& l : qlayers) {
    for (KronDev* k : {&l.ln, &l.ug, &l.dn, &l.om}) to_f16(*k);
    kmat_to_f16(l);
  }
}

void CudaEngine::Impl::kmat_to_f16(const QLayerDev& l) {
  if (!l.kmat) return;
  ck(cuda::f32_to_f16_matrix(l.kmat, D, D, false, l.kmat16, stream), "K transform to fp16");
  ck(cuda::f32_to_f16_matrix(l.kinv, D, D, false, l.kinv16, stream), "K transform to fp16");
}

void CudaEngine::Impl::to_f16(const KronDev& k) {
  if (!k.L) return;
  ck(cuda::f32_to_f16_matrix(k.A, k.L, k.L, false, k.A16, stream), "transform to fp16");
  ck(cuda::fused_pack_operand(k.A, k.L, true, k.Apk, stream), "transform packing");
  if (!k.has_b) return;
  ck(cuda::f32_to_f16_matrix(k.B, k.R, k.R, true, k.Bt16, stream), "transform to fp16");
  ck(cuda::fused_pack_operand(k.B, k.R, false, k.Bpk, stream), "transform packing");
}

void CudaEngine::Impl::randomize_quant(uint64_t seed) {
  uint64_t k = seed * 1000003u + 17;
  auto bytes = [&](uint8_t* p, int64_t n) { ck(cuda::fill_random_u8(p, n, ++k, stream), "random fill"); };
  // Codes uniform in [-8, 7] have std ~4.6: scale 0.0043 gives weights of std ~0.02 as the FP16 engine.
  auto val = [&](float* p, int64_t n, float v) { ck(cuda::fill_f32(p, n, v, stream), "fill"); };
  auto nrm = [&](float* p, int64_t n, float mean, float sd) {
    ck(cuda::fill_normal_f32(p, n, ++k, mean, sd, stream), "random fill");
  };
  ck(cuda::fill_normal_f16(embd, V * E, ++k, 0.02f, stream), "random fill");
  if (!cfg.tie_embeddings) ck(cuda::fill_normal_f16(head, V * E, ++k, 0.02f, stream), "random fill");
  val(norm, E, 1.0f);
  const cuda::SymClips one3{3, {1.0f, 1.0f, 1.0f}, {1.0f, 1.0f, 1.0f}};
  for (auto& l : qlayers) {
    bytes(l.wqkv, QKV * E / 2);
    bytes(l.wo, E * HD / 2);
    bytes(l.wgu, 2 * F * E / 2);
    bytes(l.wdown, E * F / 2);
    val(l.sqkv, QKV, 0.0043f);
    val(l.so, E, 0.0043f);
    val(l.sgu, 2 * F, 0.0043f);
    val(l.sdown, E, 0.0043f);
    if (l.bqkv) val(l.bqkv, QKV, 0.0f);
    val(l.n1, E, 1.0f);
    val(l.n2, E, 1.0f);
    // Random transforms scaled like orthogonal ones (entries ~ 1/sqrt(n)).
    nrm(l.kmat, D * D, 0.0f, 1.0f / std::sqrt(static_cast<float>(D)));
    nrm(l.kinv, D * D, 0.0f, 1.0f / std::sqrt(static_cast<float>(D)));
    for (KronDev* t : {&l.ln, &l.ug, &l.dn, &l.om}) {
      nrm(t->A, t->L * t->L, 0.0f, 1.0f / std::sqrt(static_cast<float>(t->L)));
      if (t->has_b) nrm(t->B, t->R * t->R, 0.0f, 1.0f / std::sqrt(static_cast<float>(t->R)));
      to_f16(*t);
    }
    kmat_to_f16(l);
    l.qkv_clips = one3;
    l.gu_clips = one3;
    l.gu_clips.n = 2;
    l.o_clip = one3;
    l.o_clip.n = 1;
    l.down_clip = l.o_clip;
  }
}

const float* CudaEngine::Impl::kron(const KronDev& k, const uint16_t* src16, int64_t rows) {
  kron_to(k, src16, rows, tf, false);
  return tf;
}

void CudaEngine::Impl::kron_to(const KronDev& k, const uint16_t* src16, int64_t rows, void* dst, bool dst16) {
  // Y1 = X B for all rows at once ([rows * L, R] x [R, R]), then per token Y = A^T Y1 (strided batched,
  // column-major: C[R, L] = Y1_t^T[R, L] . A, A read as the transpose of its row-major storage).
  const uint16_t* y1 = src16;
  if (k.has_b) {
    gemm(src16, rows * k.L, k.R, k.Bt16, k.R, t16, false, false, "kron_gemm");
    y1 = t16;
  }
  const float alpha = 1.0f, beta = 0.0f;
  op("kron_gemm", [&] {
    const cublasStatus_t st = cublasGemmStridedBatchedEx(
        blas, CUBLAS_OP_N, CUBLAS_OP_T, static_cast<int>(k.R), static_cast<int>(k.L), static_cast<int>(k.L),
        &alpha, y1, CUDA_R_16F, static_cast<int>(k.R), k.L * k.R, k.A16, CUDA_R_16F, static_cast<int>(k.L), 0,
        &beta, dst, dst16 ? CUDA_R_16F : CUDA_R_32F, static_cast<int>(k.R), k.L * k.R, static_cast<int>(rows),
        CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    if (st != CUBLAS_STATUS_SUCCESS)
      fail("cuBLAS: Kronecker transform GEMM failed (status {})", static_cast<int>(st));
  });
}

void CudaEngine::Impl::quantize(const float* src, int64_t rows, int64_t K, const cuda::SymClips& clips,
                                const char* name, bool to_i8, bool perm) {
  if (to_i8) {
    const int64_t sstride = (rows + 3) / 4 * 4;
    op(name, [&] {
      ck(cuda::quantize_sym_int4_i8_multi(src, rows, K, K, clips, reinterpret_cast<int8_t*>(xq), sxq, sstride,
                                          stream, perm),
         name);
    });
    return;
  }
  op(name, [&] { ck(cuda::quantize_sym_int4_multi(src, rows, K, K, clips, xq, sxq, stream), name); });
}

void CudaEngine::Impl::transform_quant(const KronDev& k, const uint16_t* src16, const float* src32,
                                       int64_t rows, int64_t K, const cuda::SymClips& clips, bool to_i8,
                                       bool perm) {
  if (to_i8 && k.L && k.kq) {
    op("kron_quant", [&] {
      ck(cuda::kron_quant_i8_multi(src16, rows, K, k.Apk, k.L, k.has_b ? k.Bpk : nullptr, k.R, clips,
                                   reinterpret_cast<int8_t*>(xq), sxq, (rows + 3) / 4 * 4, stream, perm),
         "fused transform + int8 quantize");
    });
    ++kq_calls;
    return;
  }
  quantize(k.L ? kron(k, src16, rows) : src32, rows, K, clips, "quantize", to_i8, perm);
}

bool CudaEngine::Impl::s8_route(int64_t rows, std::initializer_list<int64_t> ends, int64_t K) {
  if (!s8_prefill || rows < o.int8_prefill_rows || rows <= kFusedRows || K % 4 != 0) return false;
  if (wg_route(rows, ends, K)) return true;
  const auto* W8 = static_cast<const int8_t*>(wscr);
  const auto* X8 = reinterpret_cast<const int8_t*>(xq);
  const int64_t chunk = acc_rows(*(ends.end() - 1));
  for (int64_t m0 = 0; m0 < rows; m0 += chunk) {
    const int64_t mc = std::min(chunk, rows - m0);
    int64_t start = 0, c = 0;
    for (int64_t e : ends) {
      // The exact pointers s8_gemm passes (plans are keyed by their alignment).
      if (!plan_s8(mc, e - start, K, W8 + start * K, X8 + (c * rows + m0) * K)) return false;
      start = e;
      ++c;
    }
  }
  return true;
}

bool CudaEngine::Impl::wg_route(int64_t rows, std::initializer_list<int64_t> ends, int64_t K) const {
  if (!wg_prefill || rows < o.int8_prefill_rows || rows <= kFusedRows || K % 128 != 0 || K > 65536 ||
      3 * rows + 256 > 0x7FFFFFFF)
    return false;
  for (int64_t e : ends)
    if (e % 128 != 0) return false;
  return true;
}

void CudaEngine::Impl::s8_gemm(int64_t rows, std::initializer_list<int64_t> ends, int64_t K, const uint8_t* W,
                               const float* sw, void* y, bool y_f32, const char* name, void* swiglu_out,
                               bool swiglu_f16) {
  const int64_t N = *(ends.end() - 1), sstride = (rows + 3) / 4 * 4, chunk = acc_rows(N);
  if (wg_route(rows, ends, K)) {
    cuda::W4A8Gemm g;
    g.w = W;
    g.sw = sw;
    g.x = reinterpret_cast<const int8_t*>(xq);
    g.sx = sxq;
    g.sx_stride = sstride;
    g.nseg = static_cast<int>(ends.size());
    int i = 0;
    for (int64_t e : ends) g.end[i++] = e;
    g.rows = rows;
    g.N = N;
    g.K = K;
    g.cluster = static_cast<int>(o.wgmma_cluster);
    if (swiglu_out) {
      g.swiglu = true;
      g.y = swiglu_out;
      g.y_f16 = swiglu_f16;
      g.ldy = N / 2;
    } else {
      g.y = y;
      g.y_f16 = !y_f32;
      g.ldy = N;
      g.residual = y_f32 ? static_cast<const float*>(y) : nullptr;
    }
    op(name, [&] { ck(cuda::w4a8_gemm_wgmma(g, stream), name); });
    ++int8_gemms;
    ++wg_gemms;
    return;
  }
  auto* W8 = static_cast<int8_t*>(wscr);
  const auto* X8 = reinterpret_cast<const int8_t*>(xq);
  op("unpack_w4", [&] { ck(cuda::unpack_int4_int8(W, N, K, W8, stream), "int4 weight unpacking"); });
  const size_t ybytes = y_f32 ? sizeof(float) : sizeof(uint16_t);
  const float* res = y_f32 ? static_cast<const float*>(y) : nullptr;
  op(name, [&] {
    for (int64_t m0 = 0; m0 < rows; m0 += chunk) {
      const int64_t mc = std::min(chunk, rows - m0);
      void* ym = y ? static_cast<char*>(y) + static_cast<size_t>(m0 * N) * ybytes : nullptr;
      // The chunk's sums: segment c at acc[c] ([mc, n_c], 256-byte aligned as cuBLASLt's plans assume; chunks
      // of acc_rows(N) rows fit the buffer).
      int64_t start = 0, c = 0, off = 0;
      int32_t* acc[3] = {nullptr, nullptr, nullptr};
      for (int64_t e : ends) {
        const int64_t n = e - start;
        const int8_t* wp = W8 + start * K;
        const int8_t* xp = X8 + (c * rows + m0) * K;
        acc[c] = acc32 + off;
        off += (mc * n + 63) / 64 * 64;
        GemmPlan* p = plan_s8(mc, n, K, wp, xp);
        const int32_t alpha = 1, beta = 0;
        lt_check(cublasLtMatmul(lt, p->op, &alpha, wp, p->a, xp, p->b, &beta, acc[c], p->c, acc[c], p->c,
                                &p->algo, lt_ws, kLtWorkspace, stream),
                 name);
        if (!swiglu_out)
          ck(cuda::a8_epilogue(acc[c], n, sxq + c * sstride + m0, sw, res ? res + m0 * N : nullptr, ym,
                               !y_f32, N, mc, start, n, stream),
             "int8 GEMM epilogue");
        start = e;
        ++c;
      }
      if (swiglu_out) {  // gate | up (two equal segments) -> SwiGLU rows [mc, N / 2]
        const int64_t f = N / 2;
        void* om = static_cast<char*>(swiglu_out) + static_cast<size_t>(m0 * f) * (swiglu_f16 ? 2 : 4);
        ck(cuda::a8_swiglu_epilogue(acc[0], acc[1], f, sxq + m0, sxq + sstride + m0, sw, sw + f, om,
                                    swiglu_f16, f, mc, f, stream),
           "int8 GEMM epilogue + SwiGLU");
      }
    }
  });
  ++int8_gemms;
}

void CudaEngine::Impl::qlayer_body(int64_t il, int64_t rows, bool decode, int64_t batch, int64_t n_seq,
                                   int64_t n_tok, int64_t slot0, int64_t p0) {
  const QLayerDev& w = qlayers[static_cast<size_t>(il)];
  const cuda::Kv4Layer& c = kv4[static_cast<size_t>(il)];
  const float eps = static_cast<float>(cfg.rms_eps);
  const bool few = rows <= kFusedRows;
  // Few rows: the fused kernels and the decode GEMMs are programmatic dependent launches (sm_90): each launch
  // overlaps the previous kernel's tail, and the fused kernels load their constants before they wait.
  const bool pdl = few && prop.major >= 9;
  const cuda::QgemmDecode qdec =
      o.staged_decode_gemm ? cuda::QgemmDecode::kAuto : cuda::QgemmDecode::kRegisters;
  // Few rows (decode): one fused kernel per input (prologue + transform + quantized copies).
  auto fused = [&](cuda::FusedQuantArgs f, const KronDev& k, int64_t K, const cuda::SymClips& clips) {
    f.a_pk = k.Apk;
    f.L = k.L;
    f.b_pk = k.Bpk;
    f.R = k.R;
    f.clips = clips;
    op("fused_quant", [&] {
      ck(cuda::fused_quant_int4(f, rows, K, xq, sxq, stream, pdl, static_cast<int>(o.fused_split)),
         "fused transform + quantize");
    });
  };
  // Prefill GEMMs on cuBLASLt's int8 GEMM where it has plans (their inputs are then quantized to int8 codes).
  const bool qkv8 = s8_route(rows, {HD, HD + KV * D, QKV}, E), o8 = s8_route(rows, {E}, HD),
             gu8 = s8_route(rows, {F, 2 * F}, E), dn8 = s8_route(rows, {E}, F);
  // Of those, the ones on our wgmma kernel: their codes are written in its column order.
  const bool qkvw = wg_route(rows, {HD, HD + KV * D, QKV}, E), ow = wg_route(rows, {E}, HD),
             guw = wg_route(rows, {F, 2 * F}, E), dnw = wg_route(rows, {E}, F);
  // RMSNorm, the Kronecker transform and the per-consumer quantized copies of one input.
  auto norm_quant = [&](const float* nw, const KronDev& k, const cuda::SymClips& clips, bool i8_out,
                        bool perm) {
    if (few && k.fused) {
      cuda::FusedQuantArgs f;
      f.in = cuda::FusedIn::kRmsNorm;
      f.x = x;
      f.x_stride = E;
      f.norm_w = nw;
      f.eps = eps;
      fused(f, k, E, clips);
      return;
    }
    const bool f16 = k.L > 0;  // the GEMM route reads fp16
    op("rmsnorm", [&] {
      ck(cuda::rmsnorm(x, DType::F32, E, nw, rows, E, eps, f16 ? static_cast<void*>(hb) : tf,
                       f16 ? DType::F16 : DType::F32, stream),
         "rmsnorm");
    });
    transform_quant(k, hb, tf, rows, E, clips, i8_out, perm);
  };
  auto acts = [&](int n, std::initializer_list<int64_t> ends, int64_t K) {
    cuda::QgemmActs a;
    a.n = n;
    int i = 0;
    for (int64_t e : ends) {
      a.qx[i] = xq + static_cast<size_t>(i * rows * K / 2);
      a.sx[i] = sxq + i * rows;
      a.end[i] = e;
      ++i;
    }
    return a;
  };

  // ---- attention
  norm_quant(w.n1, w.ln, w.qkv_clips, qkv8, qkvw);
  if (qkv8) {
    s8_gemm(rows, {HD, HD + KV * D, QKV}, E, w.wqkv, w.sqkv, big, false, "qkv_gemm");
  } else {
    op("qkv_gemm", [&] {
      ck(cuda::qgemm_w4a4_multi_cuda_f16(acts(3, {HD, HD + KV * D, QKV}, E), w.wqkv, w.sqkv, nullptr, big,
                                         rows, QKV, E, stream, pdl, qdec),
         "q/k/v W4A4 GEMM");
    });
  }
  const int64_t QK = (H + KV) * D;
  // The GEMM route of the K transform (prefill; decode at many rows) appends to the cache separately.
  const bool k_gemm = !few && w.kmat && QK <= HB;
  if (k_gemm) {
    // Prefill (and decode at many rows, at each sequence's position): RoPE into t16, then q <- q Pk^{-T} and
    // k <- k Pk as batched tensor-core GEMMs back into big (per head over all rows, column-major: C[D, rows]
    // = M^T . X^T with M read as its row-major storage, X's columns QK apart, C's QKV apart).
    op("rope", [&] {
      ck(cuda::qkv_rope_transform_f16(big, QKV, rows, decode ? 1 : n_tok, decode ? 0 : p0,
                                      decode ? in_pos() : nullptr, w.bqkv, H, KV, D, inv_freq, nullptr,
                                      nullptr, stream, t16, QK),
         "q/k/v RoPE");
    });
    op("k_transform_gemm", [&] {
      const float alpha = 1.0f, beta = 0.0f;
      for (int part = 0; part < 2; ++part) {
        const int heads = static_cast<int>(part ? KV : H);
        // (One small GEMM per row instead, D x heads x D in batches of rows: 1.0 vs 0.65 ms per 2048-token
        // Llama-3-8B prefill.)
        const cublasStatus_t st = cublasGemmStridedBatchedEx(
            blas, CUBLAS_OP_N, CUBLAS_OP_N, static_cast<int>(D), static_cast<int>(rows), static_cast<int>(D),
            &alpha, part ? w.kmat16 : w.kinv16, CUDA_R_16F, static_cast<int>(D), 0, t16 + (part ? HD : 0),
            CUDA_R_16F, static_cast<int>(QK), D, &beta, big + (part ? HD : 0), CUDA_R_16F,
            static_cast<int>(QKV), D, heads, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
        if (st != CUBLAS_STATUS_SUCCESS)
          fail("cuBLAS: K transform GEMM failed (status {})", static_cast<int>(st));
      }
    });
  } else if (decode) {
    // Decode: the per-head kernel also writes the new K and V into the KV4 cache (one launch, not two).
    op("rope_ktrans_kv4", [&] {
      ck(cuda::qkv_rope_transform_kv4_f16(big, QKV, rows, 1, 0, 0, in_pos(), w.bqkv, H, KV, D, inv_freq,
                                          w.kinv, w.kmat, c, d_flags, w.kv_clip, stream),
         "q/k/v RoPE + K transform + KV4 append");
    });
  } else {
    op("rope_ktrans", [&] {
      ck(cuda::qkv_rope_transform_f16(big, QKV, rows, n_tok, p0, nullptr, w.bqkv, H, KV, D, inv_freq, w.kinv,
                                      w.kmat, stream),
         "q/k/v RoPE + K transform");
    });
  }
  if (!decode || k_gemm)
    op("kv4_append", [&] {
      ck(cuda::kv4_append(c, big + HD, big + HD + KV * D, DType::F16, decode ? batch : n_seq,
                          decode ? 1 : n_tok, QKV, decode ? 0 : slot0, decode ? 0 : p0,
                          decode ? in_pos() : nullptr, d_flags, w.kv_clip, stream),
         "KV4 append");
    });
  // The attention output: fp32 for the fused kernel or the plain quantizer, fp16 for the head-mix GEMM.
  const bool o_fused = few && w.om.fused, attn16 = w.om.L && !o_fused;
  if (decode) {
    const cuda::DecodeAttnPlan dp =
        cuda::decode_attention_plan(batch, H, KV, o.max_ctx, prop.multiProcessorCount, D);
    op("decode_attention", [&] {
      ck(cuda::decode_attention(c, big, DType::F16, QKV, batch, H, in_len(),
                                attn16 ? static_cast<void*>(hb) : tf, attn16 ? DType::F16 : DType::F32, dp,
                                attn_ws, d_flags, stream),
         "decode attention");
    });
  } else {
    // Prefill attention on the chunk's q and the cache's K/V read back to fp16 (the values decode reads).
    const int64_t np = p0 + n_tok, kvd = KV * D;
    const int64_t per_call = std::max<int64_t>(1, std::min(n_seq, kv_rows / np));
    for (int64_t s0 = 0; s0 < n_seq; s0 += per_call) {
      const int64_t ns = std::min(per_call, n_seq - s0);
      op("kv4_dequant",
         [&] { ck(cuda::kv4_dequant_f16(c, slot0 + s0, ns, np, kf16, vf16, stream), "KV4 read-back"); });
      op("prefill_attention", [&] {
        void* out =
            attn16 ? static_cast<void*>(hb + s0 * n_tok * HD) : static_cast<void*>(tf + s0 * n_tok * HD);
        ck(cuda::prefill_attention(big + s0 * n_tok * QKV, kf16, vf16, ns, n_tok, p0, H, KV, D, QKV,
                                   n_tok * QKV, kvd, np * kvd, out, attn16 ? DType::F16 : DType::F32, stream),
           "prefill attention");
      });
    }
  }
  if (o_fused) {
    cuda::FusedQuantArgs f;
    f.x = tf;
    f.x_stride = HD;
    fused(f, w.om, HD, w.o_clip);
  } else {
    transform_quant(w.om, hb, tf, rows, HD, w.o_clip, o8, ow);
  }
  if (o8)
    s8_gemm(rows, {E}, HD, w.wo, w.so, x, true, "o_gemm");
  else
    op("o_gemm", [&] {
      ck(cuda::qgemm_w4a4_cuda(xq, sxq, w.wo, w.so, x, x, rows, E, HD, stream, pdl, qdec),
         "o_proj W4A4 GEMM");
    });

  // ---- MLP
  norm_quant(w.n2, w.ug, w.gu_clips, gu8, guw);
  // The int8 route (never at few rows) fuses SwiGLU into the gate|up epilogue: it writes what the swiglu op
  // would.
  if (gu8) {
    s8_gemm(rows, {F, 2 * F}, E, w.wgu, w.sgu, nullptr, false, "gate_up_gemm",
            w.dn.L ? static_cast<void*>(hb) : static_cast<void*>(tf), w.dn.L > 0);
  } else {
    op("gate_up_gemm", [&] {
      ck(cuda::qgemm_w4a4_multi_cuda_f16(acts(2, {F, 2 * F}, E), w.wgu, w.sgu, nullptr, big, rows, 2 * F, E,
                                         stream, pdl, qdec),
         "gate/up W4A4 GEMM");
    });
  }
  if (few && w.dn.fused) {
    cuda::FusedQuantArgs f;
    f.in = cuda::FusedIn::kSwiGLU;
    f.gate = big;
    f.up = big + F;
    f.gu_stride = 2 * F;
    fused(f, w.dn, F, w.down_clip);
  } else {
    const bool f16 = w.dn.L > 0;
    if (!gu8)
      op("swiglu", [&] {
        ck(cuda::swiglu(big, big + F, DType::F16, 2 * F, 2 * F, rows, F, f16 ? static_cast<void*>(hb) : tf,
                        f16 ? DType::F16 : DType::F32, stream),
           "swiglu");
      });
    transform_quant(w.dn, hb, tf, rows, F, w.down_clip, dn8, dnw);
  }
  if (dn8)
    s8_gemm(rows, {E}, F, w.wdown, w.sdown, x, true, "down_gemm");
  else
    op("down_gemm", [&] {
      ck(cuda::qgemm_w4a4_cuda(xq, sxq, w.wdown, w.sdown, x, x, rows, E, F, stream, pdl, qdec),
         "down_proj W4A4 GEMM");
    });
}

// ---- W4A16 / W8A8 / W4A8 backends
// ---------------------------------------------------------------------------- The per-layer flow of
// ref::QuantDecoder for these recipes: RMSNorm -> the layer's Kronecker transform (the two-GEMM route of
// kron(); the fused int4 kernel is W4A4-only) -> fp16 activations (a16) or int8 copies, one per consumer clip
// (a8) -> the linear; q/k/v bias, RoPE (and the K transform when the artifact has one), the FP16 cache and
// the FP16 attention kernels of the FP16 backend (attn_f16); o_trans on the attention output.

CudaEngine::Impl::WqAct CudaEngine::Impl::wq_norm_input(const float* nw, const KronDev& k,
                                                        const cuda::SymClips& clips,
                                                        std::initializer_list<int64_t> ends, int64_t rows) {
  // a8 without a transform quantizes the fp32 normed rows (as the CPU); otherwise the transform reads fp16.
  const bool f32 = a_bits == 8 && !k.L;
  op("rmsnorm", [&] {
    ck(cuda::rmsnorm(x, DType::F32, E, nw, rows, E, static_cast<float>(cfg.rms_eps),
                     f32 ? static_cast<void*>(tf) : hb, f32 ? DType::F32 : DType::F16, stream),
       "rmsnorm");
  });
  return wq_acts(f32 ? nullptr : hb, f32 ? tf : nullptr, k, rows, E, clips, ends);
}

// src16 (fp16 rows [rows, K]) or src32 (fp32 rows, a8 without a transform) -> the linear's activations.
CudaEngine::Impl::WqAct CudaEngine::Impl::wq_acts(uint16_t* src16, const float* src32, const KronDev& k,
                                                  int64_t rows, int64_t K, const cuda::SymClips& clips,
                                                  std::initializer_list<int64_t> ends) {
  WqAct r;
  if (a_bits == 16) {
    r.x16 = src16;
    if (k.L) {
      uint16_t* dst = k.has_b ? src16 : t16;  // the head mix (no B) reads src16 in its only GEMM
      kron_to(k, src16, rows, dst, true);
      r.x16 = dst;
    }
    return r;
  }
  const void* src =
      src32 ? static_cast<const void*>(src32)
            : (k.L ? static_cast<const void*>(kron(k, src16, rows)) : static_cast<const void*>(src16));
  const bool f16 = !src32 && !k.L;
  auto* q8 = reinterpret_cast<int8_t*>(xq);
  const size_t stride = wq_copy_stride(rows, K);
  op("quantize", [&] {
    ck(cuda::quantize_sym_int8_multi(src, f16, rows, K, K, clips, q8, static_cast<int64_t>(stride), sxq,
                                     stream),
       "int8 activation quantization");
  });
  // Copy c at q8 + c * stride (256-byte aligned: the GEMV's 16-byte loads).
  r.a8.n = clips.n;
  int i = 0;
  for (int64_t e : ends) {
    r.a8.qx[i] = q8 + static_cast<size_t>(i) * stride;
    r.a8.sx[i] = sxq + i * rows;
    r.a8.end[i] = e;
    ++i;
  }
  FQ_CHECK(i == clips.n, "CudaEngine: {} activation segments for {} clip pairs", i, clips.n);
  return r;
}

GemmPlan* CudaEngine::Impl::plan_s8(int64_t M, int64_t N, int64_t K, const void* W, const void* X) {
  auto align = [](const void* p) {
    const auto a = reinterpret_cast<uintptr_t>(p);
    uint32_t b = 256;
    while (b > 1 && a % b) b /= 2;
    return b;
  };
  const uint32_t aw = align(W), ax = align(X), ac = 256;
  const auto key = std::make_tuple(M, N, K, static_cast<int>(aw), static_cast<int>(ax));
  auto it = s8plans.find(key);
  if (it != s8plans.end()) return it->second.op ? &it->second : nullptr;
  // Row-major acc[M, N] = X[M, K] W[N, K]^T as column-major acc^T[N, M] = op_T(W)[N, K] X^T[K, M] ("TN", the
  // layout cuBLASLt's int8 kernels take), int32 sums.
  GemmPlan p;
  lt_check(cublasLtMatmulDescCreate(&p.op, CUBLAS_COMPUTE_32I, CUDA_R_32I), "MatmulDescCreate s8");
  const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
  lt_check(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta), "TRANSA");
  lt_check(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb), "TRANSB");
  lt_check(cublasLtMatrixLayoutCreate(&p.a, CUDA_R_8I, static_cast<uint64_t>(K), static_cast<uint64_t>(N), K),
           "layout A");
  lt_check(cublasLtMatrixLayoutCreate(&p.b, CUDA_R_8I, static_cast<uint64_t>(K), static_cast<uint64_t>(M), K),
           "layout B");
  lt_check(
      cublasLtMatrixLayoutCreate(&p.c, CUDA_R_32I, static_cast<uint64_t>(N), static_cast<uint64_t>(M), N),
      "layout C");
  cublasLtMatmulPreference_t pref = nullptr;
  lt_check(cublasLtMatmulPreferenceCreate(&pref), "PreferenceCreate");
  const size_t ws = kLtWorkspace;
  lt_check(
      cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws),
      "workspace preference");
  for (const auto& [attr, bytes] : {std::pair{CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, aw},
                                    {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, ax},
                                    {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, ac},
                                    {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, ac}})
    lt_check(cublasLtMatmulPreferenceSetAttribute(pref, attr, &bytes, sizeof bytes), "alignment preference");
  cublasLtMatmulHeuristicResult_t res{};
  int n = 0;
  const cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(lt, p.op, p.a, p.b, p.c, p.c, pref, 1, &res, &n);
  cublasLtMatmulPreferenceDestroy(pref);
  if (st != CUBLAS_STATUS_SUCCESS || n == 0) {  // remembered: the plain exact kernel runs instead
    cublasLtMatrixLayoutDestroy(p.a);
    cublasLtMatrixLayoutDestroy(p.b);
    cublasLtMatrixLayoutDestroy(p.c);
    cublasLtMatmulDescDestroy(p.op);
    s8plans.emplace(key, GemmPlan{});
    return nullptr;
  }
  p.algo = res.algo;
  return &s8plans.emplace(key, p).first->second;
}

// y[rows, N] (= or, residual: fp32 y +=) a . W^T. a16: the int4 GEMV (<= 64 rows, K % 32 == 0), else the
// weight dequantized to fp16 and the fp16 GEMM. a8: the dp4a GEMV (<= 16 rows), else cuBLASLt s8 x s8 -> s32
// (int4 weights unpacked to int8 first) and the epilogue, or the plain exact kernel where cuBLASLt has no
// algorithm.
void CudaEngine::Impl::wq_linear(const WqAct& a, const uint8_t* W, const float* sw, int64_t N, int64_t K,
                                 void* y, bool y_f32, bool residual, int64_t rows, const char* name) {
  if (a_bits == 16) {
    // Up to kWqGemvSliceRows rows: the GEMV in slices of 16 (it streams the weights once per slice; the fp16
    // GEMM would first write and read them dequantized).
    if (rows <= kWqGemvSliceRows &&
        cuda::w4a16_gemv_supported(std::min(rows, cuda::kWqGemvMaxM), K, a.x16, W)) {
      const size_t ybytes = y_f32 ? sizeof(float) : sizeof(uint16_t);
      for (int64_t m0 = 0; m0 < rows; m0 += cuda::kWqGemvMaxM) {
        const int64_t mc = std::min(cuda::kWqGemvMaxM, rows - m0);
        void* ym = static_cast<char*>(y) + static_cast<size_t>(m0 * N) * ybytes;
        op(name,
           [&] { ck(cuda::w4a16_gemv(a.x16 + m0 * K, mc, K, W, sw, N, ym, y_f32, residual, stream), name); });
      }
      return;
    }
    auto* w16 = static_cast<uint16_t*>(wscr);
    op("dequant_w4",
       [&] { ck(cuda::dequant_w4_f16(W, sw, N, K, w16, stream), "int4 weight dequantization"); });
    gemm(a.x16, rows, K, w16, N, y, y_f32, residual, name);
    return;
  }
  const float* res = residual ? static_cast<const float*>(y) : nullptr;
  if (cuda::a8_gemv_supported(w_bits, rows, K, a.a8, W)) {
    op(name, [&] { ck(cuda::a8_gemv(a.a8, w_bits, W, sw, res, y, !y_f32, rows, N, K, stream), name); });
    return;
  }
  const auto* W8 = reinterpret_cast<const int8_t*>(w_bits == 8 ? W : wscr);
  // Every plan first (the same calls as below), so that the fallback is chosen before anything runs.
  bool lt_ok = K % 4 == 0;
  for (int64_t m0 = 0; lt_ok && m0 < rows; m0 += kAccRows) {
    const int64_t mc = std::min(kAccRows, rows - m0);
    int64_t start = 0;
    for (int s = 0; lt_ok && s < a.a8.n; start = a.a8.end[s++])
      lt_ok = plan_s8(mc, a.a8.end[s] - start, K, W8 + start * K, a.a8.qx[s] + m0 * K) != nullptr;
  }
  if (!lt_ok) {
    op(name,
       [&] { ck(cuda::a8_gemm_simple(a.a8, w_bits, W, sw, res, y, !y_f32, rows, N, K, stream), name); });
    return;
  }
  if (w_bits == 4)
    op("unpack_w4", [&] {
      ck(cuda::unpack_int4_int8(W, N, K, static_cast<int8_t*>(wscr), stream), "int4 weight unpacking");
    });
  const size_t ybytes = y_f32 ? sizeof(float) : sizeof(uint16_t);
  for (int64_t m0 = 0; m0 < rows; m0 += kAccRows) {
    const int64_t mc = std::min(kAccRows, rows - m0);
    void* ym = static_cast<char*>(y) + static_cast<size_t>(m0 * N) * ybytes;
    int64_t start = 0;
    for (int s = 0; s < a.a8.n; start = a.a8.end[s++]) {
      const int64_t n = a.a8.end[s] - start;
      const int8_t* wp = W8 + start * K;
      const int8_t* xp = a.a8.qx[s] + m0 * K;
      GemmPlan* p = plan_s8(mc, n, K, wp, xp);
      const int32_t alpha = 1, beta = 0;
      op(name, [&] {
        lt_check(cublasLtMatmul(lt, p->op, &alpha, wp, p->a, xp, p->b, &beta, acc32, p->c, acc32, p->c,
                                &p->algo, lt_ws, kLtWorkspace, stream),
                 name);
        ck(cuda::a8_epilogue(acc32, n, a.a8.sx[s] + m0, sw, res ? res + m0 * N : nullptr, ym, !y_f32, N, mc,
                             start, n, stream),
           "int8 GEMM epilogue");
      });
    }
  }
}

void CudaEngine::Impl::wq_layer_body(int64_t il, int64_t rows, bool decode, int64_t batch, int64_t n_seq,
                                     int64_t n_tok, int64_t slot0, int64_t p0) {
  const QLayerDev& w = qlayers[static_cast<size_t>(il)];
  // ---- attention
  const WqAct qkv_in = wq_norm_input(w.n1, w.ln, w.qkv_clips, {HD, HD + KV * D, QKV}, rows);
  wq_linear(qkv_in, w.wqkv, w.sqkv, QKV, E, big, false, false, rows, "qkv_gemm");
  attn_f16(il, w.bqkv, w.kmat, w.kinv, rows, decode, batch, n_seq, n_tok, slot0, p0);
  const WqAct o_in = wq_acts(hb, nullptr, w.om, rows, HD, w.o_clip, {E});
  wq_linear(o_in, w.wo, w.so, E, HD, x, true, true, rows, "o_gemm");
  // ---- MLP
  const WqAct gu_in = wq_norm_input(w.n2, w.ug, w.gu_clips, {F, 2 * F}, rows);
  wq_linear(gu_in, w.wgu, w.sgu, 2 * F, E, big, false, false, rows, "gate_up_gemm");
  const bool f32 =
      a_bits == 8 && !w.dn.L;  // quantized from the fp32 SwiGLU output when nothing transforms it
  op("swiglu", [&] {
    ck(cuda::swiglu(big, big + F, DType::F16, 2 * F, 2 * F, rows, F, f32 ? static_cast<void*>(tf) : hb,
                    f32 ? DType::F32 : DType::F16, stream),
       "swiglu");
  });
  const WqAct down_in = wq_acts(f32 ? nullptr : hb, f32 ? tf : nullptr, w.dn, rows, F, w.down_clip, {E});
  wq_linear(down_in, w.wdown, w.sdown, E, F, x, true, true, rows, "down_gemm");
}

// ---- public API -----------------------------------------------------------------------------------------

CudaEngine::CudaEngine(const ModelWeights& w, const EngineOptions& o)
    : impl_(std::make_unique<Impl>(w.cfg, o)) {
  impl_->init_device();
  impl_->plan_memory();
  impl_->upload(w);
  impl_->finish_init();
}

CudaEngine::CudaEngine(const ModelConfig& cfg, uint64_t seed, const EngineOptions& o, bool quantized)
    : impl_(std::make_unique<Impl>(cfg, o)) {
  impl_->quant = quantized;
  impl_->init_device();
  if (quantized) {
    impl_->plan_memory_quant(nullptr);
    impl_->randomize_quant(seed);
  } else {
    impl_->plan_memory();
    impl_->randomize(seed);
  }
  impl_->finish_init();
}

CudaEngine::CudaEngine(const Artifact& a, const EngineOptions& o) : impl_(std::make_unique<Impl>(a.cfg, o)) {
  const Recipe& r = a.recipe;
  const bool w4a4 = r.w_bits == 4 && r.a_bits == 4 && r.a_sym && r.w_sym && r.k_bits == 4 && r.v_bits == 4 &&
                    !r.k_sym && !r.v_sym;
  // W4A16, W8A8, W4A8: symmetric weights, symmetric 8-bit or unquantized activations, a 16-bit KV cache.
  const bool wq =
      r.w_sym && r.k_bits == 16 && r.v_bits == 16 &&
      ((r.a_bits == 16 && r.w_bits == 4) || (r.a_bits == 8 && r.a_sym && (r.w_bits == 4 || r.w_bits == 8)));
  FQ_CHECK(
      w4a4 || wq,
      "--device cuda: recipe '{}' (w{} a{} k{} v{}) is not supported by the CUDA engine yet (W4A4KV4, W4A16, "
      "W8A8 and W4A8: symmetric weights and activations, KV cache 4-bit asymmetric or 16-bit); use the CPU "
      "runtime (--device cpu)",
      r.name, r.w_bits, r.a_bits, r.k_bits, r.v_bits);
  impl_->quant = true;
  impl_->wq = wq;
  impl_->w_bits = r.w_bits;
  impl_->a_bits = r.a_bits;
  impl_->init_device();
  impl_->plan_memory_quant(&a);
  impl_->upload_quant(a);
  impl_->finish_init();
}

CudaEngine::~CudaEngine() = default;
const ModelConfig& CudaEngine::config() const {
  return impl_->cfg;
}
const EngineOptions& CudaEngine::options() const {
  return impl_->o;
}

EngineInfo CudaEngine::info() const {
  EngineInfo i;
  i.backend = impl_->wq      ? fmt::format("w{}a{}", impl_->w_bits, impl_->a_bits)
              : impl_->quant ? "w4a4kv4"
                             : "fp16";
  i.weight_bytes = impl_->warena.size();
  i.step_weight_bytes = impl_->step_weight_bytes;
  i.kv_bytes = impl_->karena.size();
  i.workspace_bytes = impl_->sarena.size();
  size_t free_b = 0, total_b = 0;
  impl_->ck(cudaMemGetInfo(&free_b, &total_b), "cudaMemGetInfo");
  i.device_mem_used = total_b - free_b;
  i.device_mem_total = total_b;
  i.device_name = impl_->prop.name;
  i.n_sm = impl_->prop.multiProcessorCount;
  i.int8_gemms = impl_->int8_gemms;
  i.fused_prefill_transforms = impl_->kq_calls;
  i.wgmma_gemms = impl_->wg_gemms;
  i.wgmma_prefill = impl_->wg_prefill;
  i.compute_capability = impl_->prop.major * 10 + impl_->prop.minor;
  return i;
}

int64_t CudaEngine::pos(int64_t slot) const {
  FQ_CHECK(slot >= 0 && slot < impl_->o.max_batch, "CudaEngine: slot {} outside [0, {})", slot,
           impl_->o.max_batch);
  return impl_->pos[static_cast<size_t>(slot)];
}

void CudaEngine::reset() {
  std::fill(impl_->pos.begin(), impl_->pos.end(), 0);
}

void CudaEngine::rewind(int64_t slot, int64_t p) {
  FQ_CHECK(slot >= 0 && slot < impl_->o.max_batch, "CudaEngine: slot {} outside [0, {})", slot,
           impl_->o.max_batch);
  auto& cur = impl_->pos[static_cast<size_t>(slot)];
  FQ_CHECK(p >= 0 && p <= cur, "CudaEngine: rewind slot {} to {} (it holds {} positions)", slot, p, cur);
  cur = p;
}

void CudaEngine::synchronize() {
  impl_->ck(cudaStreamSynchronize(impl_->stream), "synchronize");
}

namespace {
void check_tokens(const int32_t* t, int64_t n, int64_t vocab, const char* what) {
  for (int64_t i = 0; i < n; ++i)
    FQ_CHECK(t[i] >= 0 && t[i] < vocab,
             "CudaEngine {}: token {} at index {} is outside the vocabulary [0, {})", what, t[i], i, vocab);
}
}  // namespace

void CudaEngine::prefill(const int32_t* tokens, int64_t n_seq, int64_t n_tok, int64_t slot0, float* out,
                         bool all_logits) {
  Impl& m = *impl_;
  FQ_CHECK(n_seq >= 1 && n_tok >= 1, "CudaEngine prefill: empty input ({} sequences x {} tokens)", n_seq,
           n_tok);
  FQ_CHECK(slot0 >= 0 && slot0 + n_seq <= m.o.max_batch, "CudaEngine prefill: slots [{}, {}) outside [0, {})",
           slot0, slot0 + n_seq, m.o.max_batch);
  const int64_t p0 = m.pos[static_cast<size_t>(slot0)];
  for (int64_t s = 0; s < n_seq; ++s)
    FQ_CHECK(m.pos[static_cast<size_t>(slot0 + s)] == p0,
             "CudaEngine prefill: slots {} and {} are at different positions ({} vs {})", slot0, slot0 + s,
             p0, m.pos[static_cast<size_t>(slot0 + s)]);
  FQ_CHECK(p0 + n_tok <= m.o.max_ctx,
           "CudaEngine prefill: context overflow: {} cached + {} new tokens > max_ctx {} (slot {})", p0,
           n_tok, m.o.max_ctx, slot0);
  check_tokens(tokens, n_seq * n_tok, m.V, "prefill");
  int64_t chunk = std::min(n_tok, m.max_tokens / n_seq);
  if (all_logits && out) chunk = std::min(chunk, m.max_logit_rows / n_seq);
  FQ_CHECK(chunk >= 1,
           "CudaEngine prefill: {} sequences exceed the engine's max_tokens {} / max_logit_rows {}", n_seq,
           m.max_tokens, m.max_logit_rows);
  std::vector<int32_t> ids;
  for (int64_t c0 = 0; c0 < n_tok; c0 += chunk) {
    const int64_t t = std::min(chunk, n_tok - c0), rows = n_seq * t, p = p0 + c0;
    ids.resize(static_cast<size_t>(rows));
    for (int64_t s = 0; s < n_seq; ++s)
      std::copy(tokens + s * n_tok + c0, tokens + s * n_tok + c0 + t, ids.begin() + s * t);
    m.ck(cudaMemcpyAsync(m.d_tok, ids.data(), ids.size() * 4, cudaMemcpyHostToDevice, m.stream),
         "upload tokens");
    m.op("embedding", [&] {
      m.ck(cuda::embedding(m.embd, DType::F16, m.V, m.E, m.d_tok, rows, m.x, DType::F32, m.d_flags + 1,
                           m.stream),
           "embedding");
    });
    for (int64_t il = 0; il < m.L; ++il) {
      if (m.wq)
        m.wq_layer_body(il, rows, false, n_seq, n_seq, t, slot0, p);
      else if (m.quant)
        m.qlayer_body(il, rows, false, n_seq, n_seq, t, slot0, p);
      else
        m.layer_body(il, rows, false, n_seq, n_seq, t, slot0, p);
    }
    const bool last = c0 + t == n_tok;
    if (!out || (!all_logits && !last)) continue;
    const float eps = static_cast<float>(m.cfg.rms_eps);
    const int64_t lrows = all_logits ? rows : n_seq;
    // all_logits: every row; else the last token of each sequence (row stride t * E).
    m.ck(cuda::rmsnorm(all_logits ? m.x : m.x + (t - 1) * m.E, DType::F32, all_logits ? m.E : t * m.E, m.norm,
                       lrows, m.E, eps, m.hb, DType::F16, m.stream),
         "final norm");
    m.lm_head(m.hb, lrows);
    const size_t rowb = static_cast<size_t>(m.V) * sizeof(float);
    if (all_logits) {
      for (int64_t s = 0; s < n_seq; ++s)
        m.ck(cudaMemcpyAsync(out + (s * n_tok + c0) * m.V, m.logits + s * t * m.V, t * rowb,
                             cudaMemcpyDeviceToHost, m.stream),
             "download logits");
    } else {
      m.ck(cudaMemcpyAsync(out, m.logits, n_seq * rowb, cudaMemcpyDeviceToHost, m.stream), "download logits");
    }
  }
  m.check_flags("prefill");
  for (int64_t s = 0; s < n_seq; ++s) m.pos[static_cast<size_t>(slot0 + s)] = p0 + n_tok;
}

void CudaEngine::Impl::upload_step(const int32_t* tokens, int64_t batch, int64_t n_steps, const char* what) {
  FQ_CHECK(batch >= 1 && batch <= o.max_batch, "CudaEngine {}: batch {} outside [1, {}]", what, batch,
           o.max_batch);
  FQ_CHECK(n_steps >= 1, "CudaEngine {}: n_steps must be positive (found {})", what, n_steps);
  for (int64_t b = 0; b < batch; ++b)
    FQ_CHECK(pos[static_cast<size_t>(b)] + n_steps <= o.max_ctx,
             "CudaEngine {}: context overflow: slot {} holds {} tokens, {} more exceed max_ctx {}", what, b,
             pos[static_cast<size_t>(b)], n_steps, o.max_ctx);
  check_tokens(tokens, batch, V, what);
  const int64_t mb = o.max_batch;
  for (int64_t b = 0; b < batch; ++b) {
    h_in[b] = tokens[b];
    h_in[mb + b] = static_cast<int32_t>(pos[static_cast<size_t>(b)]);
    h_in[2 * mb + b] = static_cast<int32_t>(pos[static_cast<size_t>(b)] + 1);
  }
  ck(cudaMemcpyAsync(d_in, h_in, 3 * mb * 4, cudaMemcpyHostToDevice, stream), "upload step");
}

void CudaEngine::step(const int32_t* tokens, int64_t batch, float* out, int32_t* greedy) {
  Impl& m = *impl_;
  m.upload_step(tokens, batch, 1, "step");
  m.run_step(batch);
  if (out)
    m.ck(cudaMemcpyAsync(out, m.logits, batch * m.V * sizeof(float), cudaMemcpyDeviceToHost, m.stream),
         "download logits");
  if (greedy)
    m.ck(cudaMemcpyAsync(greedy, m.d_next, batch * 4, cudaMemcpyDeviceToHost, m.stream), "download tokens");
  m.check_flags("step");  // synchronizes: h_in may be rewritten by the next step
  for (int64_t b = 0; b < batch; ++b) ++m.pos[static_cast<size_t>(b)];
}

void CudaEngine::step_sample(const int32_t* tokens, int64_t batch, const DeviceSampling& sp,
                             uint64_t rng_step, int32_t* next) {
  Impl& m = *impl_;
  FQ_CHECK(next != nullptr, "CudaEngine step_sample: no output buffer");
  FQ_CHECK(sp.top_p > 0.0f && sp.top_p <= 1.0f && std::isfinite(sp.temperature),
           "CudaEngine step_sample: top_p must be in (0, 1] and the temperature finite (found {}, {})",
           sp.top_p, sp.temperature);
  m.upload_step(tokens, batch, 1, "step");
  *m.h_rng_step = rng_step;
  m.ck(cudaMemcpyAsync(m.d_rng_step, m.h_rng_step, sizeof(uint64_t), cudaMemcpyHostToDevice, m.stream),
       "upload RNG step");
  cuda::SampleParams p;
  p.temperature = sp.temperature;
  p.top_k = sp.top_k;
  p.top_p = sp.top_p;
  p.seed = sp.seed;
  m.run_step(batch, &p);
  m.ck(cudaMemcpyAsync(next, m.d_next, batch * 4, cudaMemcpyDeviceToHost, m.stream), "download tokens");
  m.check_flags("step");  // synchronizes
  for (int64_t b = 0; b < batch; ++b) ++m.pos[static_cast<size_t>(b)];
}

void CudaEngine::decode_greedy(const int32_t* tokens, int64_t batch, int64_t n_steps, int32_t* out) {
  Impl& m = *impl_;
  m.upload_step(tokens, batch, n_steps, "decode");
  m.ck(cudaMemsetAsync(m.d_flags + 2, 0, 4, m.stream), "reset step counter");
  for (int64_t i = 0; i < n_steps; ++i) m.run_step(batch);
  if (out)
    m.ck(cudaMemcpyAsync(out, m.d_hist, static_cast<size_t>(n_steps * batch) * 4, cudaMemcpyDeviceToHost,
                         m.stream),
         "download tokens");
  m.check_flags("decode");
  for (int64_t b = 0; b < batch; ++b) m.pos[static_cast<size_t>(b)] += n_steps;
}

std::vector<OpTime> CudaEngine::profile_step(const int32_t* tokens, int64_t batch) {
  return impl_->profile([&] { step(tokens, batch, nullptr, nullptr); });
}

std::vector<OpTime> CudaEngine::profile_prefill(const int32_t* tokens, int64_t n_seq, int64_t n_tok) {
  return impl_->profile([&] { prefill(tokens, n_seq, n_tok, 0, nullptr, false); });
}

template <typename Fn>
std::vector<OpTime> CudaEngine::Impl::profile(Fn&& run) {
  Impl& m = *this;
  std::vector<int64_t> saved(m.pos);
  m.profiling = true;
  m.prof_events.clear();
  try {
    run();
  } catch (...) {
    m.profiling = false;
    throw;
  }
  m.profiling = false;
  std::vector<OpTime> r;
  for (auto& [name, ev] : m.prof_events) {
    float ms = 0;
    m.ck(cudaEventElapsedTime(&ms, ev.first, ev.second), "cudaEventElapsedTime");
    cudaEventDestroy(ev.first);
    cudaEventDestroy(ev.second);
    auto it = std::find_if(r.begin(), r.end(), [&](const OpTime& t) { return t.name == name; });
    if (it == r.end()) it = r.insert(r.end(), OpTime{name, 0, 0});
    it->ms += ms;
    ++it->calls;
  }
  m.prof_events.clear();
  m.pos = saved;
  return r;
}

bool cuda_engine_available(std::string* why) {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess || n == 0) {
    (void)cudaGetLastError();
    if (why)
      *why = e != cudaSuccess ? fmt::format("no usable CUDA device ({})", cudaGetErrorString(e))
                              : std::string("no CUDA device");
    return false;
  }
  return true;
}

}  // namespace fq::runtime

#endif  // FLATQUANT_WITH_CUDA
