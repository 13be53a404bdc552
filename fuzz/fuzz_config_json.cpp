// config.json: ModelConfig::load, and what it accepts must survive to_json -> from_json unchanged.
#include <nlohmann/json.hpp>

#include "fuzz_util.h"
#include "model/config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = fq::fuzz::input_file(data, size, "config.json");
  return fq::fuzz::expect_ok_or_error([&] {
    const fq::ModelConfig c = fq::ModelConfig::load(path);
    (void)c.summary();
    const nlohmann::json j = c.to_json();
    const fq::ModelConfig back = fq::ModelConfig::from_json(j, "round trip");
    if (back.to_json() != j) std::abort();
  });
}
