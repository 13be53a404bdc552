#include "eval/flatness.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <functional>

#include "core/fs.h"
#include "flatquant/error.h"
#include "ref/decoder.h"
#include "ref/hadamard.h"
#include "ref/kron.h"

namespace fq::plot {

namespace {

// decompose_dim, or 1 x n where it has no factor pair (n = 2 mod 4), as the calibration does.
ref::KronDims dims_of(int64_t n) {
  try {
    return ref::decompose_dim(n);
  } catch (const Error&) {
    return {1, n};
  }
}

std::vector<float> rotation_f32(int64_t n, uint64_t seed) {
  const ref::Rotation r = ref::randomized_hadamard(n, seed);
  return std::vector<float>(r.matrix.begin(), r.matrix.end());
}

// x (A (x) B) with optional diag s; A, B may be empty (identity).
struct Kron {
  int64_t L = 1, R = 0;
  std::vector<float> A, B, s;
  void apply(const float* x, int64_t n, int64_t dim, float* y) const {
    if (A.empty() && B.empty()) {
      for (int64_t i = 0; i < n * dim; ++i) y[i] = s.empty() ? x[i] : x[i] * s[i % dim];
      return;
    }
    const std::vector<float> one{1.0f};
    ref::kron_transform(x, n, dim, s.empty() ? nullptr : s.data(), A.empty() ? one.data() : A.data(),
                        A.empty() ? 1 : L, B.empty() ? nullptr : B.data(), A.empty() ? dim : R, y);
  }
};

void colmax_into(const float* W, int64_t rows, int64_t dim, std::vector<double>& m) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < dim; ++j) m[j] = std::max(m[j], (double)std::fabs(W[r * dim + j]));
}

void rowmax_abs_into(const float* x, int64_t n, int64_t dim, std::vector<double>& m) { colmax_into(x, n, dim, m); }

std::vector<double> sorted_desc(std::vector<double> v) {
  std::sort(v.begin(), v.end(), std::greater<double>());
  return v;
}

struct Site {
  std::string name, label;
  int64_t dim = 0;
  std::vector<std::pair<const float*, int64_t>> fp_w;  // consumer weights [rows, dim]
  std::vector<const QLinear*> art_w;
  Kron had, art;
  bool head_mix = false;  // artifact transform = head_mix(Po) (o_proj)
  const std::vector<float>* po = nullptr;
  int64_t n_head = 0, head_dim = 0;
  std::vector<double> a_none, a_had, a_art;
  std::vector<float> buf;
};

void check_same_shapes(const ModelConfig& a, const ModelConfig& b) {
  FQ_CHECK(a.n_embd == b.n_embd && a.n_layer == b.n_layer && a.n_head == b.n_head && a.n_head_kv == b.n_head_kv &&
               a.head_dim == b.head_dim && a.n_ff == b.n_ff,
           "plot flatness: the artifact's model (n_embd {}, n_layer {}, n_head {}, n_ff {}) is not the model given "
           "(n_embd {}, n_layer {}, n_head {}, n_ff {})",
           b.n_embd, b.n_layer, b.n_head, b.n_ff, a.n_embd, a.n_layer, a.n_head, a.n_ff);
}

std::vector<float> norm_ratio(const std::vector<float>& art, const std::vector<float>& fp) {
  std::vector<float> s(fp.size(), 1.0f);
  for (size_t i = 0; i < fp.size(); ++i)
    if (fp[i] != 0.0f) s[i] = art[i] / fp[i];
  return s;
}

}  // namespace

std::vector<FlatnessSite> compute_flatness(const ModelWeights& w, const Artifact& art,
                                           const std::vector<int32_t>& tokens, const FlatnessOptions& opt) {
  const ModelConfig& c = w.cfg;
  check_same_shapes(c, art.cfg);
  FQ_CHECK(opt.layer >= 0 && opt.layer < c.n_layer, "--layer {}: out of range (the model has {} layers: 0..{})",
           opt.layer, c.n_layer, c.n_layer - 1);
  FQ_CHECK((int64_t)art.layers.size() == c.n_layer, "plot flatness: the artifact has {} layers (expected {})",
           art.layers.size(), c.n_layer);
  FQ_CHECK(!tokens.empty(), "plot flatness: no calibration tokens");
  FQ_CHECK(opt.window >= 1, "plot flatness: window {} must be positive", opt.window);
  const LayerWeights& lw = w.layers[opt.layer];
  const ArtifactLayer& al = art.layers[opt.layer];
  const int64_t E = c.n_embd, F = c.n_ff, hd = c.head_dim, qd = c.n_head * hd, kvd = c.n_head_kv * hd;

  auto hadamard = [&](int64_t L, int64_t R) {
    Kron k;
    k.L = L;
    k.R = R;
    k.A = rotation_f32(L, opt.seed);
    k.B = rotation_f32(R, opt.seed + 1);
    return k;
  };
  auto from_pair = [](const KronPair& p, std::vector<float> s) {
    Kron k;
    if (p.present()) {
      k.L = p.L;
      k.R = p.R;
      k.A = p.left;
      k.B = p.right;
    }
    k.s = std::move(s);
    return k;
  };

  std::vector<Site> sites(4);
  {
    Site& s = sites[0];
    s.name = "qkv";
    s.label = "q/k/v_proj input";
    s.dim = E;
    s.fp_w = {{lw.wq.data(), qd}, {lw.wk.data(), kvd}, {lw.wv.data(), kvd}};
    s.art_w = {&al.q, &al.k, &al.v};
    const auto d = dims_of(E);
    s.had = hadamard(d.left, d.right);
    s.art = from_pair(al.ln_trans, norm_ratio(al.attn_norm, lw.attn_norm));
  }
  {
    Site& s = sites[1];
    s.name = "o_proj";
    s.label = "o_proj input";
    s.dim = qd;
    s.fp_w = {{lw.wo.data(), E}};
    s.art_w = {&al.o};
    s.had = hadamard(c.n_head, hd);
    s.head_mix = !al.o_trans.empty();
    s.po = &al.o_trans;
    s.n_head = c.n_head;
    s.head_dim = hd;
  }
  {
    Site& s = sites[2];
    s.name = "gate_up";
    s.label = "gate/up_proj input";
    s.dim = E;
    s.fp_w = {{lw.w_gate.data(), F}, {lw.w_up.data(), F}};
    s.art_w = {&al.gate, &al.up};
    const auto d = dims_of(E);
    s.had = hadamard(d.left, d.right);
    s.art = from_pair(al.up_gate_trans, norm_ratio(al.ffn_norm, lw.ffn_norm));
  }
  {
    Site& s = sites[3];
    s.name = "down_proj";
    s.label = "down_proj input";
    s.dim = F;
    s.fp_w = {{lw.w_down.data(), E}};
    s.art_w = {&al.down};
    const auto d = dims_of(F);
    s.had = hadamard(d.left, d.right);
    s.art = from_pair(al.down_trans, {});
  }
  for (Site& s : sites) {
    s.a_none.assign(s.dim, 0.0);
    s.a_had.assign(s.dim, 0.0);
    s.a_art.assign(s.dim, 0.0);
  }

  ref::RefDecoder dec(w, std::min<int64_t>(opt.window, c.n_ctx > 0 ? c.n_ctx : opt.window), opt.threads);
  dec.set_capture([&](int layer, ref::LinearInput site, const float* x, int64_t n, int64_t dim) {
    if (layer != opt.layer) return;
    Site& s = sites[(int)site];
    FQ_CHECK(dim == s.dim, "plot flatness: {} has {} channels (expected {})", s.name, dim, s.dim);
    s.buf.resize((size_t)(n * dim));
    rowmax_abs_into(x, n, dim, s.a_none);
    s.had.apply(x, n, dim, s.buf.data());
    rowmax_abs_into(s.buf.data(), n, dim, s.a_had);
    if (site == ref::LinearInput::kO) {
      if (s.head_mix) ref::head_mix(x, n, s.n_head, s.head_dim, dim, s.po->data(), s.buf.data());
      else std::copy(x, x + n * dim, s.buf.begin());
    } else {
      s.art.apply(x, n, dim, s.buf.data());
    }
    rowmax_abs_into(s.buf.data(), n, dim, s.a_art);
  });
  const int64_t win = dec.max_ctx();
  for (size_t start = 0; start < tokens.size(); start += (size_t)win) {
    dec.reset();
    dec.forward(tokens.data() + start, std::min<int64_t>(win, (int64_t)(tokens.size() - start)), nullptr);
  }

  std::vector<FlatnessSite> outv;
  for (Site& s : sites) {
    std::vector<double> w_none(s.dim, 0.0), w_had(s.dim, 0.0), w_art(s.dim, 0.0), w_smooth(s.dim), a_smooth(s.dim);
    for (const auto& [W, rows] : s.fp_w) {
      colmax_into(W, rows, s.dim, w_none);
      std::vector<float> y((size_t)(rows * s.dim));
      s.had.apply(W, rows, s.dim, y.data());
      colmax_into(y.data(), rows, s.dim, w_had);
    }
    for (const QLinear* q : s.art_w) {
      FQ_CHECK(q->in == s.dim, "plot flatness: artifact linear for {} has {} inputs (expected {})", s.name, q->in,
               s.dim);
      const std::vector<float> d = q->dequantize();
      colmax_into(d.data(), q->out, s.dim, w_art);
    }
    for (int64_t j = 0; j < s.dim; ++j) {
      const double sc = s.a_none[j] > 0 && w_none[j] > 0 ? std::sqrt(s.a_none[j]) / std::sqrt(w_none[j]) : 1.0;
      a_smooth[j] = s.a_none[j] / sc;
      w_smooth[j] = w_none[j] * sc;
    }
    FlatnessSite f;
    f.name = s.name;
    f.label = s.label;
    f.table.columns = {"channel",  "act_none", "act_smoothquant", "act_hadamard", "act_artifact",
                       "w_none",   "w_smoothquant", "w_hadamard", "w_artifact"};
    const std::vector<std::vector<double>> cols = {
        sorted_desc(s.a_none), sorted_desc(a_smooth), sorted_desc(s.a_had), sorted_desc(s.a_art),
        sorted_desc(w_none),   sorted_desc(w_smooth), sorted_desc(w_had),   sorted_desc(w_art)};
    for (int64_t j = 0; j < s.dim; ++j) {
      std::vector<double> row{(double)j};
      for (const auto& col : cols) row.push_back(col[j]);
      f.table.rows.push_back(std::move(row));
    }
    outv.push_back(std::move(f));
  }
  return outv;
}

std::vector<std::string> plot_flatness(const std::vector<FlatnessSite>& sites, const std::string& out,
                                       const std::string& prefix, const std::string& title_suffix,
                                       const std::string& method, Size size) {
  gnuplot_binary();
  std::filesystem::create_directories(out);
  std::vector<std::string> written;
  const std::string art = method == "flatquant" ? "FlatQuant" : method + " (artifact)";
  for (const FlatnessSite& s : sites) {
    Panel a, b;
    a.title = "activations: per-channel max |x|";
    a.xlabel = "channel (sorted by magnitude)";
    a.ylabel = "max |x| over tokens";
    a.columns = {kActNone, kActSmooth, kActHadamard, kActArtifact};
    a.legends = {"none", "SmoothQuant scaling", "Hadamard", art};
    b.title = "weights: per-input-channel max |w|";
    b.xlabel = "input channel (sorted by magnitude)";
    b.ylabel = "max |w| over output rows";
    b.columns = {kWNone, kWSmooth, kWHadamard, kWArtifact};
    b.legends = a.legends;
    const std::string png = path_join(out, fmt::format("{}_{}.png", prefix, s.name));
    line_figure(png, s.table, fmt::format("Flatness of the {}: {}", s.label, title_suffix), {a, b}, size);
    written.push_back(png);
  }
  return written;
}

}  // namespace fq::plot
