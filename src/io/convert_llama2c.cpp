// llama2.c checkpoint + tokenizer .bin -> HfModel.
//
// Numerics: weights are copied bit for bit; only the rows of wq / wk are reordered per head because
// llama2.c's RoPE rotates adjacent pairs (x[2i], x[2i+1]) while HF Llama rotates halves (x[i], x[i+d/2])
// with the same frequency theta^(-2i/d) for pair i (see rope_interleaved_to_halves).
#include <string>

#include "core/fs.h"
#include "flatquant/error.h"
#include "io/convert.h"
#include "io/llama2c.h"

namespace fq {

namespace {

std::string dirname_of(const std::string& path) {
  const size_t slash = path.find_last_of('/');
  return slash == std::string::npos ? "." : path.substr(0, slash);
}

bool is_byte_piece(const std::string& s) {
  auto hex = [](char c) { return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'F'); };
  return s.size() == 6 && s.compare(0, 3, "<0x") == 0 && hex(s[3]) && hex(s[4]) && s[5] == '>';
}

// llama2.c's export wrote SentencePiece pieces with U+2581 turned back into spaces, and BOS / EOS as
// "\n<s>\n" / "\n</s>\n" (ids 1 and 2, the Llama SentencePiece convention, as run.c assumes).
SpmVocab spm_vocab_from_llama2c(const Llama2cTokenizer& t, const std::string& source) {
  SpmVocab v;
  const size_t n = t.pieces.size();
  if (n < 3) fail("{}: a llama2.c vocabulary needs at least <unk>, <s>, </s>; found {} tokens", source, n);
  v.pieces.reserve(n);
  v.types.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    std::string p = t.pieces[i];
    int32_t type = kTokNormal;
    if (i == 0) {
      p = "<unk>";
      type = kTokUnknown;
    } else if (i == 1 || i == 2) {
      p = i == 1 ? "<s>" : "</s>";
      type = kTokControl;
    } else if (is_byte_piece(p)) {
      type = kTokByte;
    } else {
      std::string q;
      for (char c : p) {
        if (c == ' ')
          q += "\xe2\x96\x81";
        else
          q += c;
      }
      p = std::move(q);
    }
    if (!valid_utf8(p)) fail("{}: token {} is not valid UTF-8", source, i);
    v.pieces.push_back(std::move(p));
    v.types.push_back(type);
  }
  v.scores = t.scores;
  v.unk_id = 0;
  v.bos_id = 1;
  v.eos_id = 2;
  v.add_bos = true;
  v.add_eos = false;
  v.add_space_prefix = true;
  return v;
}

}  // namespace

HfModel import_llama2c(const std::string& model_path, const std::string& tokenizer_path) {
  Llama2cModel ck = read_llama2c_checkpoint(model_path);
  const Llama2cConfig& c = ck.cfg;

  std::string tok_path = tokenizer_path;
  if (tok_path.empty()) {
    const std::string dir = dirname_of(model_path);
    for (const std::string& cand :
         {path_join(dir, fmt::format("tok{}.bin", c.vocab_size)), path_join(dir, "tokenizer.bin")})
      if (file_exists(cand)) {
        tok_path = cand;
        break;
      }
    if (tok_path.empty())
      fail("{}: no tokenizer given and neither tok{}.bin nor tokenizer.bin is next to it (pass --tokenizer)",
           model_path, c.vocab_size);
  }
  Llama2cTokenizer tok = read_llama2c_tokenizer(tok_path, c.vocab_size);

  HfModel m;
  m.source = model_path;
  ModelConfig& cfg = m.cfg;
  cfg.architecture = "LlamaForCausalLM";
  cfg.model_type = "llama";
  cfg.n_vocab = c.vocab_size;
  cfg.n_embd = c.dim;
  cfg.n_layer = c.n_layers;
  cfg.n_head = c.n_heads;
  cfg.n_head_kv = c.n_kv_heads;
  cfg.head_dim = c.head_dim();
  cfg.n_ff = c.hidden_dim;
  cfg.n_ctx = c.seq_len;
  cfg.rms_eps = 1e-5;        // run.c's rmsnorm
  cfg.rope_theta = 10000.0;  // run.c's RoPE base
  cfg.tie_embeddings = c.shared_classifier;
  cfg.attn_bias = false;
  cfg.hidden_act = "silu";
  cfg.torch_dtype = "float32";
  cfg.bos_id = 1;
  cfg.eos_ids = {2};

  const int64_t dim = c.dim, kv = c.kv_dim(), hid = c.hidden_dim, hd = c.head_dim();
  auto add = [&](std::string name, std::vector<int64_t> shape, std::vector<float> data) {
    m.tensors.push_back({std::move(name), std::move(shape), std::move(data)});
  };
  add("model.embed_tokens.weight", {c.vocab_size, dim}, std::move(ck.token_embedding));
  for (int64_t i = 0; i < c.n_layers; ++i) {
    Llama2cModel::Layer& L = ck.layers[(size_t)i];
    add(hf_layer_name(i, "input_layernorm.weight"), {dim}, std::move(L.rms_att));
    add(hf_layer_name(i, "self_attn.q_proj.weight"), {dim, dim},
        rope_interleaved_to_halves(L.wq, c.n_heads, hd, dim));
    add(hf_layer_name(i, "self_attn.k_proj.weight"), {kv, dim},
        rope_interleaved_to_halves(L.wk, c.n_kv_heads, hd, dim));
    add(hf_layer_name(i, "self_attn.v_proj.weight"), {kv, dim}, std::move(L.wv));
    add(hf_layer_name(i, "self_attn.o_proj.weight"), {dim, dim}, std::move(L.wo));
    add(hf_layer_name(i, "post_attention_layernorm.weight"), {dim}, std::move(L.rms_ffn));
    add(hf_layer_name(i, "mlp.gate_proj.weight"), {hid, dim}, std::move(L.w1));
    add(hf_layer_name(i, "mlp.up_proj.weight"), {hid, dim}, std::move(L.w3));
    add(hf_layer_name(i, "mlp.down_proj.weight"), {dim, hid}, std::move(L.w2));
  }
  add("model.norm.weight", {dim}, std::move(ck.rms_final));
  if (!c.shared_classifier) add("lm_head.weight", {c.vocab_size, dim}, std::move(ck.wcls));

  m.tokenizer = spm_tokenizer_files(spm_vocab_from_llama2c(tok, tok_path), c.seq_len, tok_path);
  m.generation_config = {{"bos_token_id", 1}, {"eos_token_id", 2}};
  m.copy_files.emplace_back("tokenizer.bin", tok_path);
  return m;
}

}  // namespace fq
