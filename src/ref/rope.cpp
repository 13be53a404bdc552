#include "ref/rope.h"

#include <cmath>

#include "flatquant/error.h"

namespace fq::ref {

namespace {

// transformers _compute_llama3_parameters, op by op in fp32 (python scalars meet fp32 tensors, so each
// scalar is rounded to fp32 and the operation is done in fp32).
void llama3_scale(std::vector<float>& inv_freq, const RopeScaling& s) {
  const float factor = (float)s.factor;
  const float low_ff = (float)s.low_freq_factor;
  const double old_ctx = (double)s.original_max_position_embeddings;
  const float low_freq_wavelen = (float)(old_ctx / s.low_freq_factor);
  const float high_freq_wavelen = (float)(old_ctx / s.high_freq_factor);
  const float two_pi = (float)(2.0 * 3.14159265358979323846);
  const float ff_span = (float)(s.high_freq_factor - s.low_freq_factor);
  for (float& f : inv_freq) {
    const float wavelen = two_pi / f;
    // Low frequencies (long wavelengths) are divided by factor; high frequencies are kept.
    const float scaled = wavelen > low_freq_wavelen ? f / factor : f;
    const float smooth = ((float)old_ctx / wavelen - low_ff) / ff_span;
    const float smoothed = (1.0f - smooth) * scaled / factor + smooth * scaled;
    const bool medium = !(wavelen < high_freq_wavelen) && !(wavelen > low_freq_wavelen);
    f = medium ? smoothed : scaled;
  }
}

}  // namespace

std::vector<float> rope_inv_freq(int64_t head_dim, double theta, const RopeScaling& scaling) {
  FQ_CHECK(head_dim > 0 && head_dim % 2 == 0, "rope: head_dim must be even and positive (found {})", head_dim);
  FQ_CHECK(theta > 0, "rope: rope_theta must be positive (found {})", theta);
  const int64_t half = head_dim / 2;
  std::vector<float> inv(half);
  const float base = (float)theta;
  for (int64_t i = 0; i < half; ++i) {
    const float expo = (float)(2 * i) / (float)head_dim;
    inv[i] = 1.0f / std::pow(base, expo);
  }
  if (scaling.type == "default" || scaling.type.empty()) return inv;
  if (scaling.type == "linear") {
    // transformers divides inv_freq (not the positions) by the factor.
    FQ_CHECK(scaling.factor > 0, "rope_scaling: linear factor must be positive (found {})", scaling.factor);
    const float factor = (float)scaling.factor;
    for (float& f : inv) f /= factor;
    return inv;
  }
  if (scaling.type == "llama3") {
    FQ_CHECK(scaling.factor > 0 && scaling.high_freq_factor != scaling.low_freq_factor &&
                 scaling.low_freq_factor > 0 && scaling.high_freq_factor > 0 &&
                 scaling.original_max_position_embeddings > 0,
             "rope_scaling: invalid llama3 parameters (factor {}, low_freq_factor {}, high_freq_factor {}, "
             "original_max_position_embeddings {})",
             scaling.factor, scaling.low_freq_factor, scaling.high_freq_factor,
             scaling.original_max_position_embeddings);
    llama3_scale(inv, scaling);
    return inv;
  }
  fail("rope_scaling: unsupported rope_type '{}' (supported: default, linear, llama3)", scaling.type);
}

RopeTable::RopeTable(const std::vector<float>& inv_freq, int64_t n_pos_)
    : head_dim((int64_t)inv_freq.size() * 2), n_pos(n_pos_) {
  const int64_t half = head_dim / 2;
  cos.resize(n_pos * half);
  sin.resize(n_pos * half);
  for (int64_t p = 0; p < n_pos; ++p)
    for (int64_t i = 0; i < half; ++i) {
      const float angle = inv_freq[i] * (float)p;
      cos[p * half + i] = std::cos(angle);
      sin[p * half + i] = std::sin(angle);
    }
}

void rope_apply(float* x, int64_t n_heads, int64_t head_dim, const float* cos, const float* sin) {
  const int64_t half = head_dim / 2;
  for (int64_t h = 0; h < n_heads; ++h) {
    float* v = x + h * head_dim;
    for (int64_t i = 0; i < half; ++i) {
      const float a = v[i], b = v[i + half];
      v[i] = a * cos[i] + (-b) * sin[i];
      v[i + half] = b * cos[i] + a * sin[i];
    }
  }
}

}  // namespace fq::ref
