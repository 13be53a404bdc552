// From a merged FlatLayer to an artifact layer (src/model/artifact.h): the weight quantizers' integer codes
// and scales, the folded norms and biases, the online matrices, and the sigmoid-applied clip factors.
#pragma once
#include <torch/torch.h>

#include <map>
#include <string>

#include "calib/flat_layer.h"
#include "model/artifact.h"
#include "model/recipe.h"

namespace fq::calib {

// Integer codes [out, in] (int8, in -2^(b-1) .. 2^(b-1)-1) and per-row scales [out] (fp32); the quantized
// weight is code * scale.
struct QuantizedWeight {
  torch::Tensor codes;
  torch::Tensor scales;
};

// Round-to-nearest, symmetric per output row, exactly the WeightQuantizer's fake quant (scale =
// max(max_j |w_ij|, 1e-5) / (2^(b-1) - 1), codes = clamp(round_half_even(w / scale))), computed in fp64;
// the scale is then stored in fp32 and the dequantized weight is code * float(scale).
QuantizedWeight rtn_quantize(const torch::Tensor& w, int bits);

// code * scale as `dtype`.
torch::Tensor dequantize(const QuantizedWeight& q, torch::ScalarType dtype);

// The linears' names in FlatLayer order.
const std::vector<std::string>& linear_names();

// Builds the artifact layer from `layer` (merged with merge(false)) and, when the recipe quantizes weights,
// the quantized weight of every linear in `qw`. Transforms that are exactly the identity are left out.
ArtifactLayer export_layer(const FlatLayerImpl& layer, const std::map<std::string, QuantizedWeight>& qw,
                           const Recipe& recipe);

}  // namespace fq::calib
