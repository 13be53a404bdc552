// llama2.c import: header / size validation, the q/k RoPE row permutation (checked by running both RoPE
// conventions), and the real stories260K checkpoint.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "flatquant/error.h"
#include "io/convert.h"
#include "io/llama2c.h"
#include "test_util.h"

namespace fq {
namespace {

std::string bytes_of(const void* p, size_t n) {
  return std::string(static_cast<const char*>(p), n);
}

// llama2.c run.c RoPE on one vector of n_head heads: adjacent pairs (2i, 2i+1), freq theta^(-2i/hd).
void rope_adjacent(std::vector<float>& v, int64_t n_head, int64_t hd, int pos) {
  for (int64_t h = 0; h < n_head; ++h)
    for (int64_t i = 0; i < hd; i += 2) {
      const double f = 1.0 / std::pow(10000.0, (double)i / (double)hd), a = pos * f;
      float& x0 = v[(size_t)(h * hd + i)];
      float& x1 = v[(size_t)(h * hd + i + 1)];
      const float y0 = (float)(x0 * std::cos(a) - x1 * std::sin(a)),
                  y1 = (float)(x0 * std::sin(a) + x1 * std::cos(a));
      x0 = y0, x1 = y1;
    }
}

// HF Llama RoPE (rotate_half): pairs (j, j + hd/2), freq theta^(-2j/hd).
void rope_halves(std::vector<float>& v, int64_t n_head, int64_t hd, int pos) {
  for (int64_t h = 0; h < n_head; ++h)
    for (int64_t j = 0; j < hd / 2; ++j) {
      const double f = 1.0 / std::pow(10000.0, (double)(2 * j) / (double)hd), a = pos * f;
      float& x0 = v[(size_t)(h * hd + j)];
      float& x1 = v[(size_t)(h * hd + j + hd / 2)];
      const float y0 = (float)(x0 * std::cos(a) - x1 * std::sin(a)),
                  y1 = (float)(x1 * std::cos(a) + x0 * std::sin(a));
      x0 = y0, x1 = y1;
    }
}

std::vector<float> matvec(const std::vector<float>& w, const std::vector<float>& x, int64_t rows) {
  const int64_t cols = (int64_t)x.size();
  std::vector<float> y((size_t)rows, 0.f);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) y[(size_t)r] += w[(size_t)(r * cols + c)] * x[(size_t)c];
  return y;
}

TEST(Llama2c, RopePermutationMatchesBothConventions) {
  const int64_t n_head = 2, hd = 6, n_in = 5, rows = n_head * hd;
  std::mt19937 rng(7);
  std::normal_distribution<float> nd;
  std::vector<float> w((size_t)(rows * n_in)), x((size_t)n_in);
  for (auto& v : w) v = nd(rng);
  for (auto& v : x) v = nd(rng);
  const std::vector<float> wp = rope_interleaved_to_halves(w, n_head, hd, n_in);
  // By hand: within each head the new row order is [0, 2, 4, 1, 3, 5].
  const int order[6] = {0, 2, 4, 1, 3, 5};
  for (int64_t h = 0; h < n_head; ++h)
    for (int64_t r = 0; r < hd; ++r)
      for (int64_t c = 0; c < n_in; ++c)
        EXPECT_EQ(wp[(size_t)((h * hd + r) * n_in + c)], w[(size_t)((h * hd + order[r]) * n_in + c)]);
  for (int pos : {0, 1, 5, 17}) {
    std::vector<float> a = matvec(w, x, rows), b = matvec(wp, x, rows);
    rope_adjacent(a, n_head, hd, pos);
    rope_halves(b, n_head, hd, pos);
    for (int64_t h = 0; h < n_head; ++h)
      for (int64_t r = 0; r < hd; ++r)
        EXPECT_NEAR(b[(size_t)(h * hd + r)], a[(size_t)(h * hd + order[r])], 1e-5) << "pos " << pos;
  }
}

// A tiny untied checkpoint (vocab_size < 0) whose floats are their own index, and its tokenizer.
struct TinyCheckpoint {
  int32_t hdr[7] = {8, 16, 1, 2, 1, -5, 4};  // dim, hidden, layers, heads, kv_heads, -vocab, seq_len
  size_t n_floats() const {
    const size_t D = 8, H = 16, KV = 4, V = 5, S = 4, hd = 4;
    return V * D + D + D * D + 2 * KV * D + D * D + D + 3 * H * D + D + S * hd + V * D;
  }
  std::string bytes() const {
    std::vector<float> f(n_floats());
    for (size_t i = 0; i < f.size(); ++i) f[i] = (float)i;
    return bytes_of(hdr, sizeof hdr) + bytes_of(f.data(), f.size() * 4);
  }
};

std::string tiny_tokenizer() {
  std::string t;
  const int32_t max_len = 7;
  t += bytes_of(&max_len, 4);
  const std::pair<float, std::string> toks[] = {
      {0.f, "<unk>"}, {0.f, "\n<s>\n"}, {0.f, "\n</s>\n"}, {-1.f, " a"}, {-2.f, "a"}};
  for (const auto& [score, piece] : toks) {
    const int32_t len = (int32_t)piece.size();
    t += bytes_of(&score, 4) + bytes_of(&len, 4) + piece;
  }
  return t;
}

TEST(Llama2c, TinyUntiedCheckpoint) {
  test::TempDir dir;
  const TinyCheckpoint ck;
  write_file_atomic(dir.file("m.bin"), ck.bytes());
  write_file_atomic(dir.file("tok5.bin"), tiny_tokenizer());
  HfModel m = import_llama2c(dir.file("m.bin"), "");  // finds tok5.bin beside it
  EXPECT_FALSE(m.cfg.tie_embeddings);
  EXPECT_EQ(m.cfg.n_vocab, 5);
  EXPECT_EQ(m.cfg.head_dim, 4);
  EXPECT_EQ(m.cfg.n_ctx, 4);
  ASSERT_EQ(m.tensors.size(), 1u + 9u + 1u + 1u);
  EXPECT_EQ(m.tensors.front().name, "model.embed_tokens.weight");
  EXPECT_EQ(m.tensors.front().data[0], 0.f);
  const HfTensor& head = m.tensors.back();
  EXPECT_EQ(head.name, "lm_head.weight");
  EXPECT_EQ(head.shape, (std::vector<int64_t>{5, 8}));
  EXPECT_EQ(head.data.back(), (float)(ck.n_floats() - 1));  // wcls is the last array
  // w1 -> gate, w3 -> up, w2 -> down: gate starts after emb, rms, wq, wk, wv, wo, rms_ffn.
  const float gate0 = (float)(5 * 8 + 8 + 64 + 32 + 32 + 64 + 8);
  for (const HfTensor& t : m.tensors) {
    if (t.name == "model.layers.0.mlp.gate_proj.weight") {
      EXPECT_EQ(t.data[0], gate0);
    }
    if (t.name == "model.layers.0.mlp.down_proj.weight") {
      EXPECT_EQ(t.data[0], gate0 + 128);
    }
    if (t.name == "model.layers.0.mlp.up_proj.weight") {
      EXPECT_EQ(t.data[0], gate0 + 256);
    }
    if (t.name == "model.layers.0.self_attn.q_proj.weight") {
      // Row 1 of the HF matrix is llama2.c row 2 (first head, second even row).
      EXPECT_EQ(t.data[8], (float)(5 * 8 + 8 + 2 * 8));
    }
  }
  const auto& vocab = m.tokenizer.tokenizer["model"]["vocab"];
  EXPECT_EQ(vocab.size(), 5u);
  EXPECT_EQ(vocab["<s>"], 1);
  EXPECT_EQ(vocab["\xe2\x96\x81"
                  "a"],
            3);
  EXPECT_EQ(m.tokenizer.tokenizer["model"]["merges"],
            nlohmann::ordered_json::array());  // "▁a" = "▁" + "a": no "▁"
}

TEST(Llama2c, TruncatedCheckpoint) {
  test::TempDir dir;
  const std::string bytes = TinyCheckpoint().bytes();
  const std::string p = dir.file("t.bin");
  for (size_t cut : {(size_t)10, bytes.size() - 4}) {
    write_file_atomic(p, bytes.substr(0, cut));
    try {
      read_llama2c_checkpoint(p);
      ADD_FAILURE() << "expected an error for " << cut << " bytes";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find(cut == 10 ? "truncated" : "does not match its header"),
                std::string::npos)
          << e.what();
    }
  }
  write_file_atomic(p, bytes + "xxxx");  // too long is as wrong as too short
  EXPECT_THROW(read_llama2c_checkpoint(p), Error);
}

TEST(Llama2c, BadHeaderAndTokenizer) {
  test::TempDir dir;
  TinyCheckpoint ck;
  ck.hdr[3] = 3;  // dim 8 not divisible by 3 heads
  write_file_atomic(dir.file("h.bin"), ck.bytes());
  EXPECT_THROW(read_llama2c_checkpoint(dir.file("h.bin")), Error);
  write_file_atomic(dir.file("tok.bin"), tiny_tokenizer());
  EXPECT_THROW(read_llama2c_tokenizer(dir.file("tok.bin"), 6), Error);  // file has 5 tokens
  EXPECT_THROW(read_llama2c_tokenizer(dir.file("tok.bin"), 4), Error);  // trailing bytes
  EXPECT_EQ(read_llama2c_tokenizer(dir.file("tok.bin"), 5).pieces[3], " a");
}

TEST(Llama2c, Stories260K) {
  const std::string model = test::data_path("stories260K/stories260K.bin");
  const std::string tok = test::data_path("stories260K/tok512.bin");
  FQ_REQUIRE_FILE(model);
  FQ_REQUIRE_FILE(tok);
  HfModel m = import_llama2c(model, tok);
  const ModelConfig& c = m.cfg;
  EXPECT_EQ(c.architecture, "LlamaForCausalLM");
  EXPECT_EQ(c.n_embd, 64);
  EXPECT_EQ(c.n_ff, 172);
  EXPECT_EQ(c.n_layer, 5);
  EXPECT_EQ(c.n_head, 8);
  EXPECT_EQ(c.n_head_kv, 4);
  EXPECT_EQ(c.head_dim, 8);
  EXPECT_EQ(c.n_vocab, 512);
  EXPECT_EQ(c.n_ctx, 512);
  EXPECT_TRUE(c.tie_embeddings);
  EXPECT_EQ(m.tensors.size(), 1u + 5u * 9u + 1u);

  // Hand check of the permutation against the raw file: HF q row (h*8 + i) = llama2.c row (h*8 + 2i),
  // HF row (h*8 + 4 + i) = llama2.c row (h*8 + 2i + 1); same for k with 4 kv heads.
  const std::string raw = read_file(model);
  auto raw_row = [&](size_t float_off, size_t row) {
    std::vector<float> r(64);
    std::memcpy(r.data(), raw.data() + 28 + 4 * (float_off + row * 64), 64 * 4);
    return r;
  };
  const size_t wq_off = 512 * 64 + 5 * 64, wk_off = wq_off + 5 * 64 * 64;
  for (const HfTensor& t : m.tensors) {
    const bool q = t.name == "model.layers.0.self_attn.q_proj.weight";
    const bool k = t.name == "model.layers.0.self_attn.k_proj.weight";
    if (!q && !k) continue;
    const size_t heads = q ? 8 : 4;
    for (size_t h = 0; h < heads; ++h)
      for (size_t i = 0; i < 4; ++i) {
        const std::vector<float> even = raw_row(q ? wq_off : wk_off, h * 8 + 2 * i);
        const std::vector<float> odd = raw_row(q ? wq_off : wk_off, h * 8 + 2 * i + 1);
        EXPECT_EQ(std::vector<float>(t.data.begin() + (long)((h * 8 + i) * 64),
                                     t.data.begin() + (long)((h * 8 + i + 1) * 64)),
                  even);
        EXPECT_EQ(std::vector<float>(t.data.begin() + (long)((h * 8 + 4 + i) * 64),
                                     t.data.begin() + (long)((h * 8 + 5 + i) * 64)),
                  odd);
      }
  }

  const auto& tj = m.tokenizer.tokenizer;
  EXPECT_EQ(tj["model"]["vocab"].size(), 512u);
  EXPECT_EQ(tj["model"]["vocab"]["<0x0A>"], 3 + 0x0a);
  EXPECT_EQ(tj["model"]["vocab"]["</s>"], 2);
  EXPECT_TRUE(tj["model"]["byte_fallback"].get<bool>());
  EXPECT_EQ(tj["added_tokens"].size(), 3u);
  EXPECT_EQ(tj["normalizer"]["normalizers"][0]["type"], "Prepend");
  EXPECT_EQ(tj["post_processor"]["single"][0]["SpecialToken"]["id"], "<s>");
  // 253 non-byte pieces, of which the ~88 single characters have no split: 165 merges, best score first.
  EXPECT_EQ(tj["model"]["merges"].size(), 165u);
  EXPECT_EQ(tj["model"]["merges"][0], "\xe2\x96\x81 t");  // " t" (id 259, score -0)
  EXPECT_EQ(tj["model"]["merges"][1], "h e");             // "he" (score -1)
  EXPECT_TRUE(m.tokenizer.config["add_bos_token"].get<bool>());
  ASSERT_EQ(m.copy_files.size(), 1u);
  EXPECT_EQ(m.copy_files[0].first, "tokenizer.bin");
}

}  // namespace
}  // namespace fq
