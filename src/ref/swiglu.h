// SwiGLU gate of the Llama MLP: h = silu(gate) * up, silu(g) = g / (1 + exp(-g)) in fp32 (torch's CPU
// silu formula), then the product in fp32.
#pragma once
#include <cmath>
#include <cstdint>

namespace fq::ref {

// gate, up, out: [n] (out may alias gate or up).
void swiglu(const float* gate, const float* up, int64_t n, float* out);

inline float silu(float g) { return g / (1.0f + std::exp(-g)); }

}  // namespace fq::ref
