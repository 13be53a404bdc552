#include "io/llama2c.h"

#include <algorithm>
#include <cstring>
#include <limits>

#include "core/fs.h"
#include "flatquant/error.h"

namespace fq {

namespace {

// Sequential fp32 reader over the mapped checkpoint; the exact size was checked up front.
class FloatReader {
 public:
  FloatReader(const uint8_t* p, size_t n_floats) : p_(p), left_(n_floats) {}
  std::vector<float> take(int64_t n) {
    FQ_ASSERT(n >= 0 && (uint64_t)n <= left_);
    std::vector<float> v((size_t)n);
    std::memcpy(v.data(), p_, (size_t)n * 4);
    p_ += (size_t)n * 4;
    left_ -= (size_t)n;
    return v;
  }
  void skip(int64_t n) {
    FQ_ASSERT(n >= 0 && (uint64_t)n <= left_);
    p_ += (size_t)n * 4;
    left_ -= (size_t)n;
  }

 private:
  const uint8_t* p_;
  size_t left_;
};

}  // namespace

Llama2cModel read_llama2c_checkpoint(const std::string& path) {
  MappedFile f(path);
  if (f.size() < 28)
    fail("{}: truncated llama2.c checkpoint: {} bytes, the header alone needs 28", path, f.size());
  int32_t h[7];
  std::memcpy(h, f.data(), sizeof h);
  Llama2cModel m;
  Llama2cConfig& c = m.cfg;
  c.dim = h[0];
  c.hidden_dim = h[1];
  c.n_layers = h[2];
  c.n_heads = h[3];
  c.n_kv_heads = h[4];
  c.shared_classifier = h[5] > 0;
  c.vocab_size = h[5] == std::numeric_limits<int32_t>::min() ? 0 : (h[5] < 0 ? -(int64_t)h[5] : h[5]);
  c.seq_len = h[6];
  const char* names[7] = {"dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "seq_len"};
  const int64_t vals[7] = {c.dim, c.hidden_dim, c.n_layers, c.n_heads, c.n_kv_heads, c.vocab_size, c.seq_len};
  for (int i = 0; i < 7; ++i)
    if (vals[i] <= 0) fail("{}: llama2.c header field {} is {} (expected > 0)", path, names[i], h[i]);
  if (c.dim % c.n_heads != 0)
    fail("{}: llama2.c header: dim {} is not a multiple of n_heads {}", path, c.dim, c.n_heads);
  if (c.n_kv_heads > c.n_heads || c.n_heads % c.n_kv_heads != 0)
    fail("{}: llama2.c header: n_heads {} is not a multiple of n_kv_heads {}", path, c.n_heads, c.n_kv_heads);
  if (c.head_dim() % 2 != 0)
    fail("{}: llama2.c header: head_dim {} is odd (RoPE needs pairs)", path, c.head_dim());

  // Header fields are < 2^31, so products like L*D*D can reach 2^93: compute the expected size in long
  // double (64-bit mantissa: exact for any size a real file can have; larger values cannot compare equal).
  const long double L = (long double)c.n_layers, D = (long double)c.dim, H = (long double)c.hidden_dim;
  const long double KV = (long double)c.kv_dim(), V = (long double)c.vocab_size, S = (long double)c.seq_len;
  const long double n_floats_ld = V * D + L * D + L * D * D + 2 * L * KV * D + L * D * D + L * D +
                                  3 * L * H * D + D + S * (long double)c.head_dim() +
                                  (c.shared_classifier ? 0 : V * D);
  const long double expected_ld = 28 + 4 * n_floats_ld;
  if (expected_ld != (long double)f.size())
    fail(
        "{}: llama2.c checkpoint size {} bytes does not match its header (dim {}, hidden_dim {}, n_layers "
        "{}, "
        "n_heads {}, n_kv_heads {}, vocab_size {}, seq_len {}: expected {:.0f} bytes)",
        path, f.size(), h[0], h[1], h[2], h[3], h[4], h[5], h[6], (double)expected_ld);

  FloatReader r(f.data() + 28, (f.size() - 28) / 4);
  const int64_t dim = c.dim, kv = c.kv_dim(), hid = c.hidden_dim, nl = c.n_layers;
  m.token_embedding = r.take(c.vocab_size * dim);
  m.layers.resize((size_t)nl);
  // Each array is stacked over layers, so read it layer by layer.
  auto per_layer = [&](std::vector<float> Llama2cModel::Layer::*field, int64_t n) {
    for (auto& layer : m.layers) layer.*field = r.take(n);
  };
  per_layer(&Llama2cModel::Layer::rms_att, dim);
  per_layer(&Llama2cModel::Layer::wq, dim * dim);
  per_layer(&Llama2cModel::Layer::wk, kv * dim);
  per_layer(&Llama2cModel::Layer::wv, kv * dim);
  per_layer(&Llama2cModel::Layer::wo, dim * dim);
  per_layer(&Llama2cModel::Layer::rms_ffn, dim);
  per_layer(&Llama2cModel::Layer::w1, hid * dim);
  per_layer(&Llama2cModel::Layer::w2, dim * hid);
  per_layer(&Llama2cModel::Layer::w3, hid * dim);
  m.rms_final = r.take(dim);
  r.skip(c.seq_len * c.head_dim());  // freq_cis_real + freq_cis_imag: recomputed from rope_theta
  if (!c.shared_classifier) m.wcls = r.take(c.vocab_size * dim);
  return m;
}

Llama2cTokenizer read_llama2c_tokenizer(const std::string& path, int64_t vocab_size) {
  MappedFile f(path);
  const uint8_t* d = f.data();
  size_t p = 0;
  auto need = [&](size_t k, const std::string& what) {
    if (k > f.size() - p)
      fail("{}: truncated llama2.c tokenizer while reading {} (offset {}, file has {} bytes)", path, what, p,
           f.size());
  };
  Llama2cTokenizer t;
  need(4, "max_token_length");
  std::memcpy(&t.max_token_length, d, 4);
  p = 4;
  if (t.max_token_length <= 0)
    fail("{}: llama2.c tokenizer max_token_length is {} (expected > 0)", path, t.max_token_length);
  const size_t cap = std::min<size_t>((size_t)vocab_size, f.size() / 8);  // each token takes >= 8 bytes
  t.pieces.reserve(cap);
  t.scores.reserve(cap);
  for (int64_t i = 0; i < vocab_size; ++i) {
    const std::string what = fmt::format("token {}", i);
    need(8, what);
    float score;
    int32_t len;
    std::memcpy(&score, d + p, 4);
    std::memcpy(&len, d + p + 4, 4);
    p += 8;
    if (len < 0 || len > t.max_token_length)
      fail("{}: llama2.c tokenizer token {}: length {} outside [0, max_token_length {}]", path, i, len,
           t.max_token_length);
    need((size_t)len, what);
    t.pieces.emplace_back(reinterpret_cast<const char*>(d + p), (size_t)len);
    t.scores.push_back(score);
    p += (size_t)len;
  }
  if (p != f.size())
    fail(
        "{}: llama2.c tokenizer has {} trailing bytes after {} tokens (vocab_size of the model); wrong "
        "tokenizer?",
        path, f.size() - p, vocab_size);
  return t;
}

std::vector<float> rope_interleaved_to_halves(const std::vector<float>& w, int64_t n_head, int64_t head_dim,
                                              int64_t n_in) {
  FQ_ASSERT(head_dim % 2 == 0 && (int64_t)w.size() == n_head * head_dim * n_in);
  std::vector<float> out(w.size());
  const int64_t half = head_dim / 2;
  for (int64_t h = 0; h < n_head; ++h) {
    for (int64_t i = 0; i < half; ++i) {
      const float* even = &w[(size_t)((h * head_dim + 2 * i) * n_in)];
      const float* odd = &w[(size_t)((h * head_dim + 2 * i + 1) * n_in)];
      std::memcpy(&out[(size_t)((h * head_dim + i) * n_in)], even, (size_t)n_in * 4);
      std::memcpy(&out[(size_t)((h * head_dim + half + i) * n_in)], odd, (size_t)n_in * 4);
    }
  }
  return out;
}

}  // namespace fq
