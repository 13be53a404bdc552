// Benchmark of the W4A4 decode GEMV (src/kernels/cuda/qgemv.cu) on Llama-3-8B linear shapes, M = 1 and 16.
// Each shape is first checked bit for bit against ref::qgemm_w4a4, then timed: a CUDA graph of L launches
// (decode runs as a graph, so launch gaps are the graph's), each launch reading the next of `nbuf` weight
// copies (together >= 3x the L2 size, so the weights come from HBM, not L2); 5 warm-up replays, then the
// median over 60 replays of (replay time / L), measured with CUDA events. Bytes counted: packed weights +
// weight scales + packed activations + activation scales + fp32 output. Prints ONE JSON object on stdout;
// exit status 1 if any check fails.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <memory>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "flatquant/error.h"
#include "kernels/cuda/qgemv.h"
#include "ops/cuda_check.h"
#include "ref/qgemm.h"

namespace {

struct DevFree {
  void operator()(void* p) const { cudaFree(p); }
};
using DevPtr = std::unique_ptr<void, DevFree>;

DevPtr dev_alloc(size_t bytes) {
  void* p = nullptr;
  FQ_CUDA_CHECK(cudaMalloc(&p, bytes), "bench_qgemv");
  return DevPtr(p);
}

template <typename T>
DevPtr dev_upload(const std::vector<T>& v) {
  DevPtr p = dev_alloc(v.size() * sizeof(T));
  FQ_CUDA_CHECK(cudaMemcpy(p.get(), v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice),
                "bench_qgemv upload");
  return p;
}

struct Shape {
  const char* name;
  int64_t N, K;
};

constexpr double kPeakTBps = 3.0;  // measured device-to-device copy on the lent H100 (reference/hardware.md)

nlohmann::json run_shape(const Shape& s, int64_t M, size_t l2_bytes, cudaStream_t stream, bool& ok) {
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
  DevPtr dy = dev_alloc(static_cast<size_t>(M * N) * sizeof(float));
  auto* y = static_cast<float*>(dy.get());
  auto launch = [&](size_t i) {
    FQ_CUDA_CHECK(
        fq::cuda::qgemv_w4a4(static_cast<const uint8_t*>(dx.get()), static_cast<const float*>(dsx.get()),
                             static_cast<const uint8_t*>(dw[i % nbuf].get()),
                             static_cast<const float*>(dsw.get()), nullptr, y, nullptr, M, N, K, stream),
        "qgemv_w4a4 launch");
  };

  // Check (poisoned output first).
  FQ_CUDA_CHECK(cudaMemset(y, 0xFF, static_cast<size_t>(M * N) * sizeof(float)), "poison");
  launch(nbuf - 1);
  FQ_CUDA_CHECK(cudaStreamSynchronize(stream), "qgemv_w4a4 check run");
  std::vector<float> got(static_cast<size_t>(M * N)), want(got.size());
  FQ_CUDA_CHECK(cudaMemcpy(got.data(), y, got.size() * sizeof(float), cudaMemcpyDeviceToHost), "download");
  fq::ref::qgemm_w4a4(qx.data(), sx.data(), qw.data(), sw.data(), nullptr, M, N, K, want.data());
  size_t bad = 0;
  for (size_t i = 0; i < got.size(); ++i) bad += std::memcmp(&got[i], &want[i], sizeof(float)) != 0;
  if (bad) ok = false;

  // Time: a graph of L launches rotating over the weight copies.
  const size_t L = std::max<size_t>(nbuf, 20);
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  FQ_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal), "capture");
  for (size_t i = 0; i < L; ++i) launch(i);
  FQ_CUDA_CHECK(cudaStreamEndCapture(stream, &graph), "capture end");
  FQ_CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0), "graph instantiate");
  cudaEvent_t e0, e1;
  FQ_CUDA_CHECK(cudaEventCreate(&e0), "event");
  FQ_CUDA_CHECK(cudaEventCreate(&e1), "event");
  for (int i = 0; i < 5; ++i) FQ_CUDA_CHECK(cudaGraphLaunch(exec, stream), "warm-up");
  std::vector<double> us;
  for (int rep = 0; rep < 60; ++rep) {
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
  const double med = us[us.size() / 2];
  const double bytes = static_cast<double>(N * K / 2 + N * 4 + M * K / 2 + M * 4 + M * N * 4);
  const double gbps = bytes / (med * 1e-6) / 1e9;
  return {{"name", s.name},
          {"M", M},
          {"N", N},
          {"K", K},
          {"check", bad ? "MISMATCH" : "exact"},
          {"mismatches", bad},
          {"weight_copies", nbuf},
          {"launches_per_graph", L},
          {"us_median", med},
          {"us_min", us.front()},
          {"us_max", us.back()},
          {"bytes", bytes},
          {"GBps", gbps},
          {"pct_of_3TBps", 100.0 * gbps / (kPeakTBps * 1000.0)}};
}

}  // namespace

int main() {
  try {
    int dev = 0;
    FQ_CUDA_CHECK(cudaGetDevice(&dev), "bench_qgemv");
    cudaDeviceProp prop{};
    FQ_CUDA_CHECK(cudaGetDeviceProperties(&prop, dev), "bench_qgemv");
    cudaStream_t stream = nullptr;
    FQ_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "stream");
    const Shape shapes[] = {{"q_proj/o_proj", 4096, 4096},
                            {"k_proj/v_proj", 1024, 4096},
                            {"up_proj/gate_proj", 14336, 4096},
                            {"down_proj", 4096, 14336}};
    bool ok = true;
    nlohmann::json results = nlohmann::json::array();
    for (int64_t M : {1, 16})
      for (const auto& s : shapes)
        results.push_back(run_shape(s, M, static_cast<size_t>(prop.l2CacheSize), stream, ok));
    cudaStreamDestroy(stream);
    char date[32];
    const std::time_t t = std::time(nullptr);
    std::strftime(date, sizeof date, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&t));
    const nlohmann::json out = {
        {"bench", "qgemv_w4a4"},
        {"gpu", prop.name},
        {"sm_count", prop.multiProcessorCount},
        {"l2_bytes", prop.l2CacheSize},
        {"date_utc", date},
        {"peak_ref_TBps", kPeakTBps},
        {"method",
         "CUDA graph of L launches over rotating weight copies (>= 3x L2); median of 60 replays / L"},
        {"all_exact", ok},
        {"results", results}};
    std::printf("%s\n", out.dump(1).c_str());
    return ok ? 0 : 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_qgemv: error: %s\n", e.what());
    return 1;
  }
}
