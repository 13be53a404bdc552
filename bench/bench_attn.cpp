// Benchmark of the attention kernels on Llama-3-8B shapes (32 query / 8 kv heads, head_dim 128):
//  - decode attention over the 4-bit KV cache (decode_attn.cu), batch 1 and 16, context 2048 and 8192: us per
//    call and achieved TB/s of the cache read (codes + scales + zeros of K and V for every sequence's L
//    tokens) against the measured ~3.0 TB/s. A CUDA graph of launches rotating over cache copies (together >=
//    3x L2, so the cache comes from HBM), 5 warm-up replays, median of 40 replays / launches.
//  - prefill attention, 2048 tokens, fp16 q/k/v (prefill_attn.cu): TFLOP/s counting 4 * d flops per causal
//    (query, key) pair and head; median of 20 launches.
// Each configuration is first checked against the CPU reference (a slice of the rows:
// ref::dequantize_kv_asym_int4
// + ref::attention, resp. ref::attention on the last queries) and reports its max error relative to the row
// max. Prints ONE JSON object on stdout; exit status 1 if a check fails.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <memory>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "flatquant/error.h"
#include "kernels/cuda/attention.h"
#include "ops/cuda_check.h"
#include "ref/attention.h"
#include "ref/quant.h"

namespace {

struct DevFree {
  void operator()(void* p) const { cudaFree(p); }
};
using DevPtr = std::unique_ptr<void, DevFree>;

DevPtr dev_alloc(size_t bytes) {
  void* p = nullptr;
  FQ_CUDA_CHECK(cudaMalloc(&p, bytes ? bytes : 1), "bench_attn");
  return DevPtr(p);
}
template <typename T>
DevPtr dev_upload(const std::vector<T>& v) {
  DevPtr p = dev_alloc(v.size() * sizeof(T));
  FQ_CUDA_CHECK(cudaMemcpy(p.get(), v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice),
                "bench_attn upload");
  return p;
}
template <typename T>
std::vector<T> dev_download(const void* p, size_t n) {
  std::vector<T> v(n);
  FQ_CUDA_CHECK(cudaMemcpy(v.data(), p, n * sizeof(T), cudaMemcpyDeviceToHost), "bench_attn download");
  return v;
}

constexpr double kPeakTBps = 3.0;
constexpr int64_t kHeads = 32, kKvHeads = 8, kDim = 128;

// Max |a - b| / max|b| per row of `cols`, maximised over rows.
double max_row_rel_err(const std::vector<float>& a, const std::vector<float>& b, int64_t cols) {
  double worst = 0;
  for (size_t r = 0; r * cols < b.size(); ++r) {
    double scale = 1e-30, err = 0;
    for (int64_t c = 0; c < cols; ++c) {
      scale = std::max(scale, std::fabs(double(b[r * cols + c])));
      err = std::max(err, std::fabs(double(a[r * cols + c]) - double(b[r * cols + c])));
    }
    worst = std::max(worst, std::isfinite(err) ? err / scale : INFINITY);
  }
  return worst;
}

template <typename F>
std::vector<double> time_graph(cudaStream_t stream, int launches, int replays, F&& launch) {
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  FQ_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal), "capture");
  for (int i = 0; i < launches; ++i) launch(i);
  FQ_CUDA_CHECK(cudaStreamEndCapture(stream, &graph), "capture end");
  FQ_CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0), "graph instantiate");
  cudaEvent_t e0, e1;
  FQ_CUDA_CHECK(cudaEventCreate(&e0), "event");
  FQ_CUDA_CHECK(cudaEventCreate(&e1), "event");
  for (int i = 0; i < 5; ++i) FQ_CUDA_CHECK(cudaGraphLaunch(exec, stream), "warm-up");
  std::vector<double> us;
  for (int rep = 0; rep < replays; ++rep) {
    FQ_CUDA_CHECK(cudaEventRecord(e0, stream), "record");
    FQ_CUDA_CHECK(cudaGraphLaunch(exec, stream), "replay");
    FQ_CUDA_CHECK(cudaEventRecord(e1, stream), "record");
    FQ_CUDA_CHECK(cudaEventSynchronize(e1), "sync");
    float ms = 0.0f;
    FQ_CUDA_CHECK(cudaEventElapsedTime(&ms, e0, e1), "elapsed");
    us.push_back(1000.0 * ms / launches);
  }
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  std::sort(us.begin(), us.end());
  return us;
}

struct CacheCopy {
  DevPtr k, v, ks, kz, vs, vz;
  fq::cuda::Kv4Layer layer;
};

nlohmann::json bench_decode(int64_t batch, int64_t L, const cudaDeviceProp& prop, cudaStream_t stream,
                            bool& ok, bool cuda_cores) {
  const int64_t H = kKvHeads, d = kDim, cells = batch * L * H;
  std::mt19937 rng(static_cast<uint32_t>(batch * 7 + L));
  std::vector<uint8_t> k(static_cast<size_t>(cells * d / 2)), v(k.size());
  for (auto& b : k) b = static_cast<uint8_t>(rng());
  for (auto& b : v) b = static_cast<uint8_t>(rng());
  std::uniform_real_distribution<float> us(0.02f, 0.3f);
  std::vector<float> ks(static_cast<size_t>(cells)), kz(ks.size()), vs(ks.size()), vz(ks.size());
  for (size_t i = 0; i < ks.size(); ++i) {
    ks[i] = us(rng);
    vs[i] = us(rng);
    kz[i] = static_cast<float>(rng() % 16);
    vz[i] = static_cast<float>(rng() % 16);
  }
  const double cache_bytes = static_cast<double>(cells) * (d / 2 + 8) * 2;
  const size_t n_copies =
      std::max<size_t>(1, static_cast<size_t>(std::ceil(3.0 * prop.l2CacheSize / cache_bytes)));
  std::vector<CacheCopy> copies(n_copies);
  for (auto& c : copies) {
    c.k = dev_upload(k);
    c.v = dev_upload(v);
    c.ks = dev_upload(ks);
    c.kz = dev_upload(kz);
    c.vs = dev_upload(vs);
    c.vz = dev_upload(vz);
    c.layer = {static_cast<uint8_t*>(c.k.get()),
               static_cast<float*>(c.ks.get()),
               static_cast<float*>(c.kz.get()),
               static_cast<uint8_t*>(c.v.get()),
               static_cast<float*>(c.vs.get()),
               static_cast<float*>(c.vz.get()),
               batch,
               L,
               H,
               d};
  }
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> q(static_cast<size_t>(batch * kHeads * d));
  for (auto& x : q) x = fq::f16_to_f32(fq::f32_to_f16(nd(rng)));
  std::vector<uint16_t> q16(q.size());
  for (size_t i = 0; i < q.size(); ++i) q16[i] = fq::f32_to_f16(q[i]);
  DevPtr dq = dev_upload(q16),
         dlen = dev_upload(std::vector<int32_t>(static_cast<size_t>(batch), static_cast<int32_t>(L)));
  DevPtr dout = dev_alloc(q.size() * sizeof(float)), dflag = dev_upload(std::vector<int32_t>{0});
  auto plan = fq::cuda::decode_attention_plan(batch, kHeads, H, L, prop.multiProcessorCount, d);
  plan.cuda_cores = cuda_cores;
  DevPtr ws = dev_alloc(fq::cuda::decode_attention_workspace_bytes(batch, kHeads, d, plan));
  auto launch = [&](size_t i) {
    FQ_CUDA_CHECK(fq::cuda::decode_attention(copies[i % n_copies].layer, dq.get(), fq::DType::F16, kHeads * d,
                                             batch, kHeads, static_cast<const int32_t*>(dlen.get()),
                                             dout.get(), fq::DType::F32, plan, ws.get(),
                                             static_cast<int32_t*>(dflag.get()), stream),
                  "decode_attention");
  };
  launch(0);
  FQ_CUDA_CHECK(cudaStreamSynchronize(stream), "decode check run");
  const auto got = dev_download<float>(dout.get(), q.size());
  // Reference for sequence 0 (and the last one when batch > 1).
  double err = 0;
  for (int64_t b : {int64_t{0}, batch - 1}) {
    std::vector<float> kd(static_cast<size_t>(L * H * d)), vd(kd.size()),
        want(static_cast<size_t>(kHeads * d));
    const int64_t c0 = b * L * H;
    fq::ref::dequantize_kv_asym_int4(k.data() + c0 * d / 2, ks.data() + c0, kz.data() + c0, L, H, d,
                                     kd.data());
    fq::ref::dequantize_kv_asym_int4(v.data() + c0 * d / 2, vs.data() + c0, vz.data() + c0, L, H, d,
                                     vd.data());
    fq::ref::attention(q.data() + b * kHeads * d, 1, L - 1, kd.data(), vd.data(), {kHeads, H, d},
                       want.data());
    err = std::max(err, max_row_rel_err(std::vector<float>(got.begin() + b * kHeads * d,
                                                           got.begin() + (b + 1) * kHeads * d),
                                        want, d));
  }
  const bool pass = err < 1e-3;
  ok = ok && pass;
  const int launches = static_cast<int>(std::max<size_t>(n_copies, 20));
  const auto t = time_graph(stream, launches, 40, launch);
  const double med = t[t.size() / 2];
  const double tbps = cache_bytes / (med * 1e-6) / 1e12;
  // How the split count trades parallelism against combine work and wave tails (median us per n_split).
  nlohmann::json sweep = nlohmann::json::object();
  for (int n = 1; n <= 128 && n <= (L + 127) / 128; n *= 2) {
    auto p2 = plan;
    p2.n_split = n;
    DevPtr ws2 = dev_alloc(fq::cuda::decode_attention_workspace_bytes(batch, kHeads, d, p2));
    const auto t2 = time_graph(stream, launches, 20, [&](size_t i) {
      FQ_CUDA_CHECK(fq::cuda::decode_attention(
                        copies[i % n_copies].layer, dq.get(), fq::DType::F16, kHeads * d, batch, kHeads,
                        static_cast<const int32_t*>(dlen.get()), dout.get(), fq::DType::F32, p2, ws2.get(),
                        static_cast<int32_t*>(dflag.get()), stream),
                    "decode_attention sweep");
    });
    sweep[std::to_string(n)] = t2[t2.size() / 2];
  }
  return {{"kernel", "decode_attention_kv4"},
          {"us_median_by_n_split", sweep},
          {"batch", batch},
          {"context", L},
          {"n_head", kHeads},
          {"n_head_kv", H},
          {"head_dim", d},
          {"n_split", plan.n_split},
          {"heads_per_cta", plan.heads_per_cta},
          {"impl", cuda_cores ? "cuda_cores" : "mma"},
          {"check_max_rel_err", err},
          {"check", pass ? "ok" : "FAIL"},
          {"cache_copies", n_copies},
          {"us_median", med},
          {"us_min", t.front()},
          {"us_max", t.back()},
          {"cache_bytes", cache_bytes},
          {"TBps", tbps},
          {"pct_of_3TBps", 100.0 * tbps / kPeakTBps}};
}

nlohmann::json bench_prefill(int64_t n, cudaStream_t stream, bool& ok) {
  const int64_t H = kKvHeads, d = kDim;
  std::mt19937 rng(static_cast<uint32_t>(n));
  std::normal_distribution<float> nd(0.0f, 1.0f);
  auto make = [&](size_t count) {
    std::vector<float> x(count);
    for (auto& v : x) v = fq::f16_to_f32(fq::f32_to_f16(nd(rng)));
    return x;
  };
  const auto q = make(static_cast<size_t>(n * kHeads * d)), k = make(static_cast<size_t>(n * H * d)),
             v = make(static_cast<size_t>(n * H * d));
  auto h16 = [](const std::vector<float>& x) {
    std::vector<uint16_t> h(x.size());
    for (size_t i = 0; i < x.size(); ++i) h[i] = fq::f32_to_f16(x[i]);
    return h;
  };
  DevPtr dq = dev_upload(h16(q)), dk = dev_upload(h16(k)), dv = dev_upload(h16(v));
  DevPtr dout = dev_alloc(q.size() * sizeof(uint16_t));
  auto launch = [&](int) {
    FQ_CUDA_CHECK(fq::cuda::prefill_attention(static_cast<const uint16_t*>(dq.get()),
                                              static_cast<const uint16_t*>(dk.get()),
                                              static_cast<const uint16_t*>(dv.get()), 1, n, 0, kHeads, H, d,
                                              kHeads * d, 0, H * d, 0, dout.get(), fq::DType::F16, stream),
                  "prefill_attention");
  };
  launch(0);
  FQ_CUDA_CHECK(cudaStreamSynchronize(stream), "prefill check run");
  const auto got16 = dev_download<uint16_t>(dout.get(), q.size());
  // Reference on the last 16 queries (they see every key).
  const int64_t nq = std::min<int64_t>(16, n), i0 = n - nq;
  std::vector<float> want(static_cast<size_t>(nq * kHeads * d)), got(want.size());
  fq::ref::attention(q.data() + i0 * kHeads * d, nq, i0, k.data(), v.data(), {kHeads, H, d}, want.data());
  for (size_t i = 0; i < got.size(); ++i)
    got[i] = fq::f16_to_f32(got16[static_cast<size_t>(i0 * kHeads * d) + i]);
  const double err = max_row_rel_err(got, want, d);
  const bool pass = err < 4e-3;
  ok = ok && pass;
  const auto t = time_graph(stream, 20, 20, launch);
  const double med = t[t.size() / 2];
  const double flops = 4.0 * d * kHeads * (static_cast<double>(n) * (n + 1) / 2);
  return {{"kernel", "prefill_attention_fp16_mma"},
          {"tokens", n},
          {"n_head", kHeads},
          {"n_head_kv", H},
          {"head_dim", d},
          {"check_max_rel_err", err},
          {"check", pass ? "ok" : "FAIL"},
          {"us_median", med},
          {"us_min", t.front()},
          {"us_max", t.back()},
          {"flops", flops},
          {"TFLOPs", flops / (med * 1e-6) / 1e12}};
}

}  // namespace

int main() {
  try {
    int dev = 0;
    FQ_CUDA_CHECK(cudaGetDevice(&dev), "bench_attn");
    cudaDeviceProp prop{};
    FQ_CUDA_CHECK(cudaGetDeviceProperties(&prop, dev), "bench_attn");
    cudaStream_t stream = nullptr;
    FQ_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "stream");
    bool ok = true;
    nlohmann::json results = nlohmann::json::array();
    for (int64_t batch : {1, 16})
      for (int64_t L : {2048, 8192})
        for (bool cc : {false, true}) results.push_back(bench_decode(batch, L, prop, stream, ok, cc));
    results.push_back(bench_prefill(2048, stream, ok));
    cudaStreamDestroy(stream);
    char date[32];
    const std::time_t t = std::time(nullptr);
    std::strftime(date, sizeof date, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&t));
    const nlohmann::json out = {
        {"bench", "attention"},
        {"gpu", prop.name},
        {"sm_count", prop.multiProcessorCount},
        {"l2_bytes", prop.l2CacheSize},
        {"date_utc", date},
        {"peak_ref_TBps", kPeakTBps},
        {"method",
         "decode: CUDA graph of launches over rotating cache copies (>= 3x L2), median of 40 replays; "
         "prefill: "
         "graph of 20 launches, median of 20 replays; TFLOPs = 4*d*heads*n(n+1)/2 / time"},
        {"all_checks_ok", ok},
        {"results", results}};
    std::printf("%s\n", out.dump(1).c_str());
    return ok ? 0 : 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_attn: error: %s\n", e.what());
    return 1;
  }
}
