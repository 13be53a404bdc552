// Benchmark of the W4A4 GEMM entry points (src/kernels/cuda/qgemm.cu) on Llama-3-8B and Qwen2.5-7B linear
// shapes, M in {1, 4, 8, 16, 2048}: qgemm_w4a4_cuda (fp32 out) and qgemm_w4a4_cuda_f16 (fp16 out, which runs
// the mma decode kernel at M <= 2 where the fp32 entry point runs qgemv); for M <= 16 also the dp4a GEMV
// (qgemv_w4a4) alone, and for M = 2048 cuBLASLt's INT8 GEMM (s8 x s8 -> s32, the same M, N, K on int8
// operands: twice our bytes, no epilogue) as a ceiling reference.
//
// Each shape is first checked bit for bit against ref::qgemm_w4a4 (for M = 2048: 16 rows spread over M, the
// first and the last included), then timed: a CUDA graph of L launches (decode runs as a graph), each reading
// the next of `nbuf` weight copies (together >= 3x the L2 size, so the weights come from HBM, not L2); 3
// warm-up replays, then the median over R replays of (replay time / L), CUDA events. Bytes counted: packed
// weights + weight scales + packed activations + activation scales + fp32 output. Prints ONE JSON object on
// stdout; exit status 1 if any check fails. Argument `--quick`: M = 1 and 2048 only.
#include <cublasLt.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "flatquant/error.h"
#include "kernels/cuda/engine_kernels.h"
#include "kernels/cuda/qgemm.h"
#include "kernels/cuda/qgemv.h"
#include "kernels/cuda/w4a4_ops.h"
#include "ops/cuda_check.h"
#include "ref/parallel.h"
#include "ref/qgemm.h"

namespace {

struct DevFree {
  void operator()(void* p) const { cudaFree(p); }
};
using DevPtr = std::unique_ptr<void, DevFree>;

DevPtr dev_alloc(size_t bytes) {
  void* p = nullptr;
  FQ_CUDA_CHECK(cudaMalloc(&p, bytes), "bench_qgemm");
  return DevPtr(p);
}

template <typename T>
DevPtr dev_upload(const std::vector<T>& v) {
  DevPtr p = dev_alloc(v.size() * sizeof(T));
  FQ_CUDA_CHECK(cudaMemcpy(p.get(), v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice), "upload");
  return p;
}

#define FQ_LT_CHECK(expr)                                                            \
  do {                                                                               \
    cublasStatus_t st_ = (expr);                                                     \
    if (st_ != CUBLAS_STATUS_SUCCESS)                                                \
      ::fq::fail("bench_qgemm: {} failed: status {}", #expr, static_cast<int>(st_)); \
  } while (0)

struct Shape {
  const char* model;
  const char* name;
  int64_t N, K;
};

constexpr double kPeakTBps = 3.0;  // measured device-to-device copy on the lent H100 (reference/hardware.md)
constexpr double kPeakS8Tops = 1209;  // measured mma.sync m16n8k32 s8 peak (bench/mma_probe.cu)

// Median microseconds per launch of `launch(i)` (i = weight copy), L launches per graph replay.
double time_graph(const std::function<void(size_t)>& launch, size_t L, int reps, cudaStream_t stream) {
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  FQ_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal), "capture");
  for (size_t i = 0; i < L; ++i) launch(i);
  FQ_CUDA_CHECK(cudaStreamEndCapture(stream, &graph), "capture end");
  FQ_CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0), "graph instantiate");
  cudaEvent_t e0, e1;
  FQ_CUDA_CHECK(cudaEventCreate(&e0), "event");
  FQ_CUDA_CHECK(cudaEventCreate(&e1), "event");
  for (int i = 0; i < 3; ++i) FQ_CUDA_CHECK(cudaGraphLaunch(exec, stream), "warm-up");
  std::vector<double> us;
  for (int rep = 0; rep < reps; ++rep) {
    FQ_CUDA_CHECK(cudaEventRecord(e0, stream), "record");
    FQ_CUDA_CHECK(cudaGraphLaunch(exec, stream), "replay");
    FQ_CUDA_CHECK(cudaEventRecord(e1, stream), "record");
    FQ_CUDA_CHECK(cudaEventSynchronize(e1), "sync");
    float ms = 0.0f;
    FQ_CUDA_CHECK(cudaEventElapsedTime(&ms, e0, e1), "elapsed");
    us.push_back(1000.0 * ms / static_cast<double>(L));
  }
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  std::sort(us.begin(), us.end());
  return us[us.size() / 2];
}

// cuBLASLt int8 GEMM C[M, N] (s32) = X[M, K] W[N, K]^T (row-major), i.e. column-major C^T = W^T' X^T with
// op(A) = T on W: the "TN" layout the integer tensor-core kernels need. Returns median us per call.
double time_cublaslt_s8(int64_t M, int64_t N, int64_t K, cudaStream_t stream) {
  cublasLtHandle_t lt = nullptr;
  FQ_LT_CHECK(cublasLtCreate(&lt));
  DevPtr a = dev_alloc(static_cast<size_t>(N * K)), b = dev_alloc(static_cast<size_t>(M * K));
  DevPtr c = dev_alloc(static_cast<size_t>(M * N) * 4);
  FQ_CUDA_CHECK(cudaMemset(a.get(), 0x11, static_cast<size_t>(N * K)), "init");
  FQ_CUDA_CHECK(cudaMemset(b.get(), 0x22, static_cast<size_t>(M * K)), "init");
  const size_t ws_bytes = 64u << 20;
  DevPtr ws = dev_alloc(ws_bytes);
  cublasLtMatmulDesc_t desc = nullptr;
  FQ_LT_CHECK(cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32I, CUDA_R_32I));
  const cublasOperation_t opT = CUBLAS_OP_T, opN = CUBLAS_OP_N;
  FQ_LT_CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, &opT, sizeof opT));
  FQ_LT_CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSB, &opN, sizeof opN));
  cublasLtMatrixLayout_t la = nullptr, lb = nullptr, lc = nullptr;
  FQ_LT_CHECK(
      cublasLtMatrixLayoutCreate(&la, CUDA_R_8I, static_cast<uint64_t>(K), static_cast<uint64_t>(N), K));
  FQ_LT_CHECK(
      cublasLtMatrixLayoutCreate(&lb, CUDA_R_8I, static_cast<uint64_t>(K), static_cast<uint64_t>(M), K));
  FQ_LT_CHECK(
      cublasLtMatrixLayoutCreate(&lc, CUDA_R_32I, static_cast<uint64_t>(N), static_cast<uint64_t>(M), N));
  cublasLtMatmulPreference_t pref = nullptr;
  FQ_LT_CHECK(cublasLtMatmulPreferenceCreate(&pref));
  FQ_LT_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws_bytes,
                                                   sizeof ws_bytes));
  cublasLtMatmulHeuristicResult_t heur{};
  int found = 0;
  FQ_LT_CHECK(cublasLtMatmulAlgoGetHeuristic(lt, desc, la, lb, lc, lc, pref, 1, &heur, &found));
  double us = -1.0;
  if (found > 0) {
    const int32_t alpha = 1, beta = 0;
    auto launch = [&](size_t) {
      FQ_LT_CHECK(cublasLtMatmul(lt, desc, &alpha, a.get(), la, b.get(), lb, &beta, c.get(), lc, c.get(), lc,
                                 &heur.algo, ws.get(), ws_bytes, stream));
    };
    us = time_graph(launch, 20, 20, stream);
  }
  cublasLtMatmulPreferenceDestroy(pref);
  cublasLtMatrixLayoutDestroy(la);
  cublasLtMatrixLayoutDestroy(lb);
  cublasLtMatrixLayoutDestroy(lc);
  cublasLtMatmulDescDestroy(desc);
  cublasLtDestroy(lt);
  return us;
}

nlohmann::json run_shape(const Shape& s, int64_t M, size_t l2_bytes, cudaStream_t stream,
                         fq::ref::ThreadPool& pool, bool& ok) {
  const int64_t N = s.N, K = s.K;
  std::mt19937 rng(static_cast<uint32_t>(N * 31 + K + M));
  std::vector<uint8_t> qx(static_cast<size_t>(M * K / 2)), qw(static_cast<size_t>(N * K / 2));
  for (auto& b : qx) b = static_cast<uint8_t>(rng() & 0xFF);
  for (auto& b : qw) b = static_cast<uint8_t>(rng() & 0xFF);
  std::uniform_real_distribution<float> u(0.001f, 0.2f);
  std::vector<float> sx(static_cast<size_t>(M)), sw(static_cast<size_t>(N));
  for (auto& v : sx) v = u(rng);
  for (auto& v : sw) v = u(rng);

  const size_t wbytes = qw.size();
  const size_t nbuf = std::max<size_t>(4, (3 * l2_bytes + wbytes - 1) / wbytes);
  std::vector<DevPtr> dw;
  for (size_t i = 0; i < nbuf; ++i) dw.push_back(dev_upload(qw));
  DevPtr dx = dev_upload(qx), dsx = dev_upload(sx), dsw = dev_upload(sw);
  const size_t n_out = static_cast<size_t>(M * N);
  DevPtr dy = dev_alloc(n_out * sizeof(float));
  auto* y = static_cast<float*>(dy.get());
  const auto* px = static_cast<const uint8_t*>(dx.get());
  const auto* psx = static_cast<const float*>(dsx.get());
  const auto* psw = static_cast<const float*>(dsw.get());
  auto launch = [&](size_t i) {
    FQ_CUDA_CHECK(fq::cuda::qgemm_w4a4_cuda(px, psx, static_cast<const uint8_t*>(dw[i % nbuf].get()), psw,
                                            nullptr, y, M, N, K, stream),
                  "qgemm_w4a4_cuda launch");
  };
  auto launch_f16 = [&](size_t i) {
    FQ_CUDA_CHECK(fq::cuda::qgemm_w4a4_cuda_f16(px, psx, static_cast<const uint8_t*>(dw[i % nbuf].get()), psw,
                                                nullptr, static_cast<uint16_t*>(dy.get()), M, N, K, stream),
                  "qgemm_w4a4_cuda_f16 launch");
  };

  // Check (poisoned output first) on a subset of rows for large M.
  FQ_CUDA_CHECK(cudaMemset(y, 0xFF, n_out * sizeof(float)), "poison");
  launch(nbuf - 1);
  FQ_CUDA_CHECK(cudaStreamSynchronize(stream), "qgemm check run");
  std::vector<float> got(n_out);
  FQ_CUDA_CHECK(cudaMemcpy(got.data(), y, n_out * sizeof(float), cudaMemcpyDeviceToHost), "download");
  std::vector<int64_t> rows;
  if (M <= 16) {
    for (int64_t m = 0; m < M; ++m) rows.push_back(m);
  } else {
    for (int64_t i = 0; i < 16; ++i) rows.push_back(i * (M - 1) / 15);
  }
  std::vector<float> want(rows.size() * static_cast<size_t>(N));
  pool.parallel_for(static_cast<int64_t>(rows.size()), [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      const int64_t m = rows[static_cast<size_t>(r)];
      fq::ref::qgemm_w4a4(qx.data() + m * K / 2, sx.data() + m, qw.data(), sw.data(), nullptr, 1, N, K,
                          want.data() + r * N);
    }
  });
  size_t bad = 0;
  for (size_t r = 0; r < rows.size(); ++r)
    for (int64_t n = 0; n < N; ++n)
      bad += std::memcmp(&got[static_cast<size_t>(rows[r] * N + n)], &want[r * static_cast<size_t>(N) + n],
                         sizeof(float)) != 0;
  if (bad) ok = false;

  const size_t L = std::max<size_t>(nbuf, M > 16 ? 8 : 20);
  const int reps = M > 16 ? 15 : 60;
  const double med = time_graph(launch, L, reps, stream);
  const double bytes = static_cast<double>(N * K / 2 + N * 4 + M * K / 2 + M * 4 + M * N * 4);
  const double tbps = bytes / (med * 1e-6) / 1e12;
  const double tops = 2.0 * static_cast<double>(M) * N * K / (med * 1e-6) / 1e12;
  nlohmann::json r = {{"model", s.model},
                      {"name", s.name},
                      {"M", M},
                      {"N", N},
                      {"K", K},
                      {"kernel", fq::cuda::qgemm_w4a4_kernel_name(px, dw[0].get(), M, N, K, false)},
                      {"kernel_f16", fq::cuda::qgemm_w4a4_kernel_name(px, dw[0].get(), M, N, K, true)},
                      {"us_f16", time_graph(launch_f16, L, reps, stream)},
                      {"check", bad ? "MISMATCH" : "exact"},
                      {"checked_rows", rows.size()},
                      {"mismatches", bad},
                      {"weight_copies", nbuf},
                      {"us", med},
                      {"bytes", bytes},
                      {"TBps", tbps},
                      {"TOPS", tops}};
  if (M <= 16) {
    r["pct_of_3TBps"] = 100.0 * tbps / kPeakTBps;
    if (K % 32 == 0) {  // the dp4a GEMV on the same data, for comparison
      auto launch_v = [&](size_t i) {
        FQ_CUDA_CHECK(fq::cuda::qgemv_w4a4(px, psx, static_cast<const uint8_t*>(dw[i % nbuf].get()), psw,
                                           nullptr, y, nullptr, M, N, K, stream),
                      "qgemv_w4a4 launch");
      };
      r["qgemv_us"] = time_graph(launch_v, L, reps, stream);
    }
  } else {
    r["pct_of_s8_mma_peak"] = 100.0 * tops / kPeakS8Tops;
    const double lt = time_cublaslt_s8(M, N, K, stream);
    if (lt > 0) {
      r["cublaslt_s8_us"] = lt;
      r["cublaslt_s8_TOPS"] = 2.0 * static_cast<double>(M) * N * K / (lt * 1e-6) / 1e12;
      r["speedup_vs_cublaslt_s8"] = lt / med;
    }
  }
  return r;
}

// The decode step's four W4A4 GEMMs of Llama-3-8B, as the engine runs them (M tokens; q|k|v and gate|up as
// fp16 multi-segment GEMMs, o and down fp32 with the residual), over `layers` layers whose weights lie
// consecutively in ONE device arena (as the engine's), replayed as one CUDA graph. `distinct` distinct layer
// copies: 32 = the engine's footprint (3.5 GB per step), 3 = a small footprint that still misses L2. The gap
// between the two is what the weight footprint (TLB reach, DRAM pages) costs; `kind` restricts the graph to
// one GEMM (-1: all four). Returns median us per layer.
double time_decode_layers(int64_t M, int distinct, int kind, bool pdl, fq::cuda::QgemmDecode dec,
                          cudaStream_t stream) {
  const int64_t E = 4096, F = 14336, QKV = 6144, HD = 4096, layers = 32;
  const int64_t b_qkv = QKV * E / 2, b_o = E * HD / 2, b_gu = 2 * F * E / 2, b_dn = E * F / 2;
  const int64_t per_layer = b_qkv + b_o + b_gu + b_dn;
  DevPtr arena = dev_alloc(static_cast<size_t>(per_layer * distinct));
  auto* base = static_cast<uint8_t*>(arena.get());
  FQ_CUDA_CHECK(fq::cuda::fill_random_u8(base, per_layer * distinct, 7, stream), "fill");
  DevPtr sw = dev_alloc(static_cast<size_t>(2 * F) * 4), xq = dev_alloc(static_cast<size_t>(3 * M * F / 2));
  DevPtr sx = dev_alloc(static_cast<size_t>(3 * M) * 4), y16 = dev_alloc(static_cast<size_t>(M * 2 * F) * 2);
  DevPtr y = dev_alloc(static_cast<size_t>(M * E) * 4);
  FQ_CUDA_CHECK(fq::cuda::fill_f32(static_cast<float*>(sw.get()), 2 * F, 0.01f, stream), "fill");
  FQ_CUDA_CHECK(fq::cuda::fill_f32(static_cast<float*>(sx.get()), 3 * M, 0.01f, stream), "fill");
  FQ_CUDA_CHECK(fq::cuda::fill_random_u8(static_cast<uint8_t*>(xq.get()), 3 * M * F / 2, 9, stream), "fill");
  FQ_CUDA_CHECK(cudaMemsetAsync(y.get(), 0, static_cast<size_t>(M * E) * 4, stream), "zero");
  const auto* q = static_cast<const uint8_t*>(xq.get());
  const auto* s = static_cast<const float*>(sx.get());
  const auto* w_s = static_cast<const float*>(sw.get());
  auto* yf = static_cast<float*>(y.get());
  auto* yh = static_cast<uint16_t*>(y16.get());
  auto acts = [&](int n, std::initializer_list<int64_t> ends, int64_t K) {
    fq::cuda::QgemmActs a;
    a.n = n;
    int i = 0;
    for (int64_t e : ends) {
      a.qx[i] = q + i * M * K / 2;
      a.sx[i] = s + i * M;
      a.end[i] = e;
      ++i;
    }
    return a;
  };
  auto launch = [&](size_t l) {
    const uint8_t* w = base + static_cast<int64_t>(l % static_cast<size_t>(distinct)) * per_layer;
    if (kind < 0 || kind == 0)
      FQ_CUDA_CHECK(fq::cuda::qgemm_w4a4_multi_cuda_f16(acts(3, {HD, HD + 1024, QKV}, E), w, w_s, nullptr, yh,
                                                        M, QKV, E, stream, pdl, dec),
                    "qkv");
    if (kind < 0 || kind == 1)
      FQ_CUDA_CHECK(fq::cuda::qgemm_w4a4_cuda(q, s, w + b_qkv, w_s, yf, yf, M, E, HD, stream, pdl, dec), "o");
    if (kind < 0 || kind == 2)
      FQ_CUDA_CHECK(fq::cuda::qgemm_w4a4_multi_cuda_f16(acts(2, {F, 2 * F}, E), w + b_qkv + b_o, w_s, nullptr,
                                                        yh, M, 2 * F, E, stream, pdl, dec),
                    "gate_up");
    if (kind < 0 || kind == 3)
      FQ_CUDA_CHECK(
          fq::cuda::qgemm_w4a4_cuda(q, s, w + b_qkv + b_o + b_gu, w_s, yf, yf, M, E, F, stream, pdl, dec),
          "down");
  };
  return time_graph(launch, static_cast<size_t>(layers), 30, stream);
}

nlohmann::json decode_layers_report(cudaStream_t stream) {
  const int64_t E = 4096, F = 14336, QKV = 6144, HD = 4096;
  const double bytes[4] = {QKV * E / 2.0, E * HD / 2.0, 2.0 * F * E / 2.0, E * F / 2.0};
  const char* names[5] = {"qkv", "o", "gate_up", "down", "layer"};
  nlohmann::json out = nlohmann::json::array();
  for (int64_t M : {1, 16})
    for (bool pdl : {false, true})
      for (int kind = -1; kind < 4; ++kind)
        for (int distinct : {3, 32})
          for (auto dec : {fq::cuda::QgemmDecode::kAuto, fq::cuda::QgemmDecode::kRegisters}) {
            const double us = time_decode_layers(M, distinct, kind, pdl, dec, stream);
            const double b = kind < 0 ? bytes[0] + bytes[1] + bytes[2] + bytes[3] : bytes[kind];
            out.push_back({{"M", M},
                           {"pdl", pdl},
                           {"gemm", names[kind < 0 ? 4 : kind]},
                           {"distinct_layers", distinct},
                           {"decode", dec == fq::cuda::QgemmDecode::kAuto ? "auto" : "registers"},
                           {"us", us},
                           {"weight_TBps", b / (us * 1e-6) / 1e12}});
            std::fprintf(stderr, "decode layers M=%lld pdl=%d %s distinct=%d %s: %.2f us (%.2f TB/s)\n",
                         static_cast<long long>(M), pdl ? 1 : 0, names[kind < 0 ? 4 : kind], distinct,
                         dec == fq::cuda::QgemmDecode::kAuto ? "auto" : "registers", us,
                         b / (us * 1e-6) / 1e12);
          }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const bool quick = argc > 1 && std::strcmp(argv[1], "--quick") == 0;
    const bool layers_only = argc > 1 && std::strcmp(argv[1], "--decode-layers") == 0;
    int dev = 0;
    FQ_CUDA_CHECK(cudaGetDevice(&dev), "bench_qgemm");
    cudaDeviceProp prop{};
    FQ_CUDA_CHECK(cudaGetDeviceProperties(&prop, dev), "bench_qgemm");
    cudaStream_t stream = nullptr;
    FQ_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "stream");
    const Shape shapes[] = {
        {"llama-3-8b", "q_proj/o_proj", 4096, 4096}, {"llama-3-8b", "k_proj/v_proj", 1024, 4096},
        {"llama-3-8b", "qkv_fused", 6144, 4096},     {"llama-3-8b", "up_proj/gate_proj", 14336, 4096},
        {"llama-3-8b", "down_proj", 4096, 14336},    {"qwen2.5-7b", "q_proj/o_proj", 3584, 3584},
        {"qwen2.5-7b", "k_proj/v_proj", 512, 3584},  {"qwen2.5-7b", "up_proj/gate_proj", 18944, 3584},
        {"qwen2.5-7b", "down_proj", 3584, 18944}};
    if (layers_only) {
      const nlohmann::json r = {{"bench", "qgemm_w4a4_decode_layers"},
                                {"gpu", prop.name},
                                {"results", decode_layers_report(stream)}};
      std::printf("%s\n", r.dump(1).c_str());
      cudaStreamDestroy(stream);
      return 0;
    }
    std::vector<int64_t> ms = {1, 4, 8, 16, 2048};
    if (quick) ms = {1, 2048};
    fq::ref::ThreadPool pool;
    bool ok = true;
    nlohmann::json results = nlohmann::json::array();
    for (int64_t M : ms)
      for (const auto& s : shapes) {
        results.push_back(run_shape(s, M, static_cast<size_t>(prop.l2CacheSize), stream, pool, ok));
        std::fprintf(stderr, "%s %s M=%lld: %.2f us\n", s.model, s.name, static_cast<long long>(M),
                     results.back()["us"].get<double>());
      }
    cudaStreamDestroy(stream);
    char date[32];
    const std::time_t t = std::time(nullptr);
    std::strftime(date, sizeof date, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&t));
    const nlohmann::json out = {{"bench", "qgemm_w4a4"},
                                {"gpu", prop.name},
                                {"sm_count", prop.multiProcessorCount},
                                {"l2_bytes", prop.l2CacheSize},
                                {"date_utc", date},
                                {"peak_ref_TBps", kPeakTBps},
                                {"peak_ref_s8_mma_TOPS", kPeakS8Tops},
                                {"method",
                                 "CUDA graph of L launches over rotating weight copies (>= 3x L2); median of "
                                 "replays / L; fp32 output"},
                                {"all_exact", ok},
                                {"results", results}};
    std::printf("%s\n", out.dump(1).c_str());
    return ok ? 0 : 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_qgemm: error: %s\n", e.what());
    return 1;
  }
}
