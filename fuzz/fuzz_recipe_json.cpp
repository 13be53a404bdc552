// Recipe JSON files (`calibrate --recipe file.json`): parsing and validation; an accepted recipe must
// survive to_json -> from_json unchanged (the manifest stores it that way).
#include <nlohmann/json.hpp>

#include "fuzz_util.h"
#include "model/recipe.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = fq::fuzz::input_file(data, size, "recipe.json");
  return fq::fuzz::expect_ok_or_error([&] {
    const fq::Recipe r = fq::load_recipe(path);
    const nlohmann::json j = r.to_json();
    if (fq::Recipe::from_json(j, "round trip").to_json() != j) std::abort();
  });
}
