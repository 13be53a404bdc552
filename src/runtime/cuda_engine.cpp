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
CudaEngine::CudaEngine(const ModelConfig&, uint64_t, const EngineOptions&) {
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
std::vector<OpTime> CudaEngine::profile_step(const int32_t*, int64_t) {
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
#include <cuda_runtime_api.h>

#include <algorithm>
#include <map>
#include <tuple>

#include "core/dtype.h"
#include "kernels/cuda/attention.h"
#include "kernels/cuda/engine_kernels.h"
#include "kernels/cuda/layer_ops.h"
#include "ops/cuda_check.h"
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
  size_t o_embd = 0, o_head = 0, o_norm = 0, o_inv_freq = 0;
  uint16_t *embd = nullptr, *head = nullptr;
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
  std::map<int64_t, cudaGraphExec_t> graphs;
  std::map<std::tuple<int64_t, int64_t, int64_t, bool, bool>, GemmPlan> plans;

  // Profiling (profile_step): events around each op, aggregated by name.
  bool profiling = false;
  std::vector<std::pair<std::string, std::pair<cudaEvent_t, cudaEvent_t> > > prof_events;

  Impl(const ModelConfig& c, const EngineOptions& opt) : cfg(c), o(opt) {}
  ~Impl();

  void init_device();
  void plan_memory();
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
  void decode_body(int64_t batch);
  void run_step(int64_t batch);  // graph replay (captured on the second use) or eager
  void check_flags(const char* where);
};

CudaEngine::Impl::~Impl() {
  for (auto& [b, g] : graphs) cudaGraphExecDestroy(g);
  for (auto& [k, p] : plans) {
    cublasLtMatrixLayoutDestroy(p.a);
    cublasLtMatrixLayoutDestroy(p.b);
    cublasLtMatrixLayoutDestroy(p.c);
    cublasLtMatmulDescDestroy(p.op);
  }
  if (h_in) cudaFreeHost(h_in);
  if (lt) cublasLtDestroy(lt);
  if (stream) cudaStreamDestroy(stream);
}

void CudaEngine::Impl::init_device() {
  std::string why;
  FQ_CHECK(cuda_engine_available(&why), "--device cuda: {}", why);
  FQ_CHECK(o.max_batch >= 1 && o.max_batch <= 1024, "CudaEngine: max_batch must be in [1, 1024] (found {})",
           o.max_batch);
  FQ_CHECK(o.max_ctx >= 1, "CudaEngine: max_ctx must be positive (found {})", o.max_ctx);
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
  if (!cfg.tie_embeddings) o_head = warena.reserve(static_cast<size_t>(V * E) * h2);
  o_norm = warena.reserve(static_cast<size_t>(E) * f4);
  o_inv_freq = warena.reserve(static_cast<size_t>(D / 2) * f4);
  warena.allocate("weights");
  embd = warena.at<uint16_t>(o_embd);
  head = cfg.tie_embeddings ? embd : warena.at<uint16_t>(o_head);
  norm = warena.at<float>(o_norm);
  inv_freq = warena.at<float>(o_inv_freq);
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

  const size_t kv_elems = static_cast<size_t>(L * o.max_batch * o.max_ctx * KV * D);
  const size_t o_k = karena.reserve(kv_elems * h2), o_v = karena.reserve(kv_elems * h2);
  karena.allocate("the KV cache");
  kc = karena.at<uint16_t>(o_k);
  vc = karena.at<uint16_t>(o_v);

  size_t attn_bytes = 0;
  for (int64_t b = 1; b <= o.max_batch; ++b)
    attn_bytes = std::max(
        attn_bytes,
        cuda::decode_attention_f16_workspace_bytes(
            b, H, D, cuda::decode_attention_f16_plan(b, H, KV, o.max_ctx, prop.multiProcessorCount)));
  const size_t mt = static_cast<size_t>(max_tokens), mb = static_cast<size_t>(o.max_batch);
  const size_t o_x = sarena.reserve(mt * E * f4), o_hb = sarena.reserve(mt * HB * h2),
               o_big = sarena.reserve(mt * BIG * h2), o_logits = sarena.reserve(max_logit_rows * V * f4),
               o_tok = sarena.reserve(mt * 4), o_in = sarena.reserve(3 * mb * 4),
               o_next = sarena.reserve(mb * 4),
               o_hist = sarena.reserve(static_cast<size_t>(o.max_ctx) * mb * 4), o_flags = sarena.reserve(16),
               o_attn = sarena.reserve(std::max<size_t>(attn_bytes, 16)), o_lt = sarena.reserve(kLtWorkspace);
  sarena.allocate("the workspace");
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
  lt_ws = sarena.at<void>(o_lt);
  ck(cudaMallocHost(reinterpret_cast<void**>(&h_in), 3 * mb * sizeof(int32_t)), "cudaMallocHost");
  ck(cudaMemsetAsync(d_in, 0, 3 * mb * 4, stream), "memset");
  ck(cudaMemsetAsync(d_flags, 0, 16, stream), "memset");
}

void CudaEngine::Impl::finish_init() {
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

void CudaEngine::Impl::layer_body(int64_t il, int64_t rows, bool decode, int64_t batch, int64_t n_seq,
                                  int64_t n_tok, int64_t slot0, int64_t p0) {
  const LayerDev& w = layers[static_cast<size_t>(il)];
  const cuda::F16KvCache c = cache(il);
  const float eps = static_cast<float>(cfg.rms_eps);
  op("rmsnorm",
     [&] { ck(cuda::rmsnorm(x, DType::F32, E, w.n1, rows, E, eps, hb, DType::F16, stream), "rmsnorm"); });
  gemm(hb, rows, E, w.wqkv, QKV, big, false, false, "qkv_gemm");
  op("rope_kv_append", [&] {
    ck(cuda::qkv_rope_append_f16(big, QKV, rows, decode ? 1 : n_tok, decode ? 0 : slot0, decode ? 0 : p0,
                                 decode ? in_pos() : nullptr, w.bqkv, H, inv_freq, c, d_flags, stream),
       "q/k/v RoPE + cache append");
  });
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
  gemm(hb, rows, HD, w.wo, E, x, true, true, "o_gemm");
  op("rmsnorm",
     [&] { ck(cuda::rmsnorm(x, DType::F32, E, w.n2, rows, E, eps, hb, DType::F16, stream), "rmsnorm"); });
  gemm(hb, rows, E, w.wgu, 2 * F, big, false, false, "gate_up_gemm");
  op("swiglu", [&] {
    ck(cuda::swiglu(big, big + F, DType::F16, 2 * F, 2 * F, rows, F, hb, DType::F16, stream), "swiglu");
  });
  gemm(hb, rows, F, w.wdown, E, x, true, true, "down_gemm");
}

void CudaEngine::Impl::decode_body(int64_t batch) {
  op("embedding", [&] {
    ck(cuda::embedding(embd, DType::F16, V, E, in_tok(), batch, x, DType::F32, d_flags + 1, stream),
       "embedding");
  });
  for (int64_t il = 0; il < L; ++il) layer_body(il, batch, true, batch, batch, 1, 0, 0);
  op("final_norm", [&] {
    ck(cuda::rmsnorm(x, DType::F32, E, norm, batch, E, static_cast<float>(cfg.rms_eps), hb, DType::F16,
                     stream),
       "final norm");
  });
  gemm(hb, batch, E, head, V, logits, true, false, "lm_head");
  op("argmax", [&] { ck(cuda::argmax(logits, DType::F32, batch, V, V, d_next, stream), "argmax"); });
  op("advance", [&] {
    ck(cuda::decode_advance(d_next, in_tok(), in_pos(), in_len(), batch, d_hist, o.max_ctx, d_flags + 2,
                            stream),
       "advance");
  });
}

void CudaEngine::Impl::run_step(int64_t batch) {
  if (!o.cuda_graphs || profiling) {
    decode_body(batch);
    return;
  }
  auto it = graphs.find(batch);
  if (it != graphs.end()) {
    ck(cudaGraphLaunch(it->second, stream), "cudaGraphLaunch");
    return;
  }
  // First step of this batch size: run it eagerly (loads the kernels, picks the GEMM algorithms), then
  // capture the same launches for the next steps.
  decode_body(batch);
  cudaGraph_t g = nullptr;
  ck(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal), "cudaStreamBeginCapture");
  try {
    decode_body(batch);
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
  graphs.emplace(batch, exec);
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

// ---- public API -----------------------------------------------------------------------------------------

CudaEngine::CudaEngine(const ModelWeights& w, const EngineOptions& o)
    : impl_(std::make_unique<Impl>(w.cfg, o)) {
  impl_->init_device();
  impl_->plan_memory();
  impl_->upload(w);
  impl_->finish_init();
}

CudaEngine::CudaEngine(const ModelConfig& cfg, uint64_t seed, const EngineOptions& o)
    : impl_(std::make_unique<Impl>(cfg, o)) {
  impl_->init_device();
  impl_->plan_memory();
  impl_->randomize(seed);
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
    for (int64_t il = 0; il < m.L; ++il) m.layer_body(il, rows, false, n_seq, n_seq, t, slot0, p);
    const bool last = c0 + t == n_tok;
    if (!out || (!all_logits && !last)) continue;
    const float eps = static_cast<float>(m.cfg.rms_eps);
    const int64_t lrows = all_logits ? rows : n_seq;
    // all_logits: every row; else the last token of each sequence (row stride t * E).
    m.ck(cuda::rmsnorm(all_logits ? m.x : m.x + (t - 1) * m.E, DType::F32, all_logits ? m.E : t * m.E, m.norm,
                       lrows, m.E, eps, m.hb, DType::F16, m.stream),
         "final norm");
    m.gemm(m.hb, lrows, m.E, m.head, m.V, m.logits, true, false, "lm_head");
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

void CudaEngine::step(const int32_t* tokens, int64_t batch, float* out, int32_t* greedy) {
  Impl& m = *impl_;
  FQ_CHECK(batch >= 1 && batch <= m.o.max_batch, "CudaEngine step: batch {} outside [1, {}]", batch,
           m.o.max_batch);
  for (int64_t b = 0; b < batch; ++b)
    FQ_CHECK(m.pos[static_cast<size_t>(b)] + 1 <= m.o.max_ctx,
             "CudaEngine step: context overflow: slot {} holds {} tokens, max_ctx {}", b,
             m.pos[static_cast<size_t>(b)], m.o.max_ctx);
  check_tokens(tokens, batch, m.V, "step");
  const int64_t mb = m.o.max_batch;
  for (int64_t b = 0; b < batch; ++b) {
    m.h_in[b] = tokens[b];
    m.h_in[mb + b] = static_cast<int32_t>(m.pos[static_cast<size_t>(b)]);
    m.h_in[2 * mb + b] = static_cast<int32_t>(m.pos[static_cast<size_t>(b)] + 1);
  }
  m.ck(cudaMemcpyAsync(m.d_in, m.h_in, 3 * mb * 4, cudaMemcpyHostToDevice, m.stream), "upload step");
  m.run_step(batch);
  if (out)
    m.ck(cudaMemcpyAsync(out, m.logits, batch * m.V * sizeof(float), cudaMemcpyDeviceToHost, m.stream),
         "download logits");
  if (greedy)
    m.ck(cudaMemcpyAsync(greedy, m.d_next, batch * 4, cudaMemcpyDeviceToHost, m.stream), "download tokens");
  m.check_flags("step");  // synchronizes: h_in may be rewritten by the next step
  for (int64_t b = 0; b < batch; ++b) ++m.pos[static_cast<size_t>(b)];
}

void CudaEngine::decode_greedy(const int32_t* tokens, int64_t batch, int64_t n_steps, int32_t* out) {
  Impl& m = *impl_;
  FQ_CHECK(batch >= 1 && batch <= m.o.max_batch, "CudaEngine decode: batch {} outside [1, {}]", batch,
           m.o.max_batch);
  FQ_CHECK(n_steps >= 1, "CudaEngine decode: n_steps must be positive (found {})", n_steps);
  for (int64_t b = 0; b < batch; ++b)
    FQ_CHECK(m.pos[static_cast<size_t>(b)] + n_steps <= m.o.max_ctx,
             "CudaEngine decode: context overflow: slot {} holds {} tokens, {} steps exceed max_ctx {}", b,
             m.pos[static_cast<size_t>(b)], n_steps, m.o.max_ctx);
  check_tokens(tokens, batch, m.V, "decode");
  const int64_t mb = m.o.max_batch;
  for (int64_t b = 0; b < batch; ++b) {
    m.h_in[b] = tokens[b];
    m.h_in[mb + b] = static_cast<int32_t>(m.pos[static_cast<size_t>(b)]);
    m.h_in[2 * mb + b] = static_cast<int32_t>(m.pos[static_cast<size_t>(b)] + 1);
  }
  m.ck(cudaMemcpyAsync(m.d_in, m.h_in, 3 * mb * 4, cudaMemcpyHostToDevice, m.stream), "upload step");
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
  Impl& m = *impl_;
  std::vector<int64_t> saved(m.pos.begin(), m.pos.begin() + batch);
  m.profiling = true;
  m.prof_events.clear();
  try {
    step(tokens, batch, nullptr, nullptr);
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
  for (int64_t b = 0; b < batch; ++b) m.pos[static_cast<size_t>(b)] = saved[static_cast<size_t>(b)];
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
