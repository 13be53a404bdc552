#include "ref/rmsnorm.h"

#include <cmath>

namespace fq::ref {

void rmsnorm(const float* x, const float* weight, int64_t n, int64_t dim, float eps, float* y) {
  for (int64_t t = 0; t < n; ++t) {
    const float* xr = x + t * dim;
    float* yr = y + t * dim;
    double ss = 0.0;
    for (int64_t i = 0; i < dim; ++i) ss += (double)xr[i] * (double)xr[i];
    const float mean = (float)(ss / (double)dim);
    const float r = 1.0f / std::sqrt(mean + eps);
    for (int64_t i = 0; i < dim; ++i) yr[i] = weight[i] * (xr[i] * r);
  }
}

}  // namespace fq::ref
