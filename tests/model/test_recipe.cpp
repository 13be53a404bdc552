// Recipes: the built-ins parse and mean what their names say; every validation error is one line naming the
// source and the field.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "core/fs.h"
#include "flatquant/error.h"
#include "model/recipe.h"
#include "test_util.h"

namespace fq {
namespace {

using json = nlohmann::json;

std::string error_of(const json& j) {
  try {
    Recipe::from_json(j, "r.json");
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(Recipe, BuiltinsParseAndMatchTheirNames) {
  const std::vector<std::string> names = builtin_recipe_names();
  ASSERT_EQ(names, (std::vector<std::string>{"w16a16kv4", "w4a16", "w4a4kv4", "w4a8", "w8a8"}));
  struct Bits {
    int w, a, k, v;
  };
  const std::map<std::string, Bits> want = {{"w4a4kv4", {4, 4, 4, 4}},  {"w4a16", {4, 16, 16, 16}},
                                            {"w4a8", {4, 8, 16, 16}},    {"w8a8", {8, 8, 16, 16}},
                                            {"w16a16kv4", {16, 16, 4, 4}}};
  for (const auto& n : names) {
    const Recipe r = load_recipe(n);
    EXPECT_EQ(r.name, n);
    const Bits& b = want.at(n);
    EXPECT_EQ(r.w_bits, b.w) << n;
    EXPECT_EQ(r.a_bits, b.a) << n;
    EXPECT_EQ(r.k_bits, b.k) << n;
    EXPECT_EQ(r.v_bits, b.v) << n;
    // The file on disk is the embedded text.
    EXPECT_EQ(read_file(test::source_path("recipes/" + n + ".json")), builtin_recipe_json(n)) << n;
    // to_json round-trips.
    const Recipe back = Recipe::from_json(r.to_json(), "round trip");
    EXPECT_EQ(back.to_json(), r.to_json()) << n;
  }
  const Recipe d = load_recipe("w4a4kv4");
  EXPECT_TRUE(d.lwc && d.lac && d.add_diag);
  EXPECT_DOUBLE_EQ(d.diag_alpha, 0.3);
  EXPECT_EQ(d.param, "svd");
  EXPECT_FALSE(d.k_sym);
  EXPECT_EQ(d.weight_quantizer, "rtn");
  EXPECT_EQ(d.gptq.blocksize, 128);
  EXPECT_DOUBLE_EQ(d.gptq.percdamp, 0.01);
  EXPECT_TRUE(d.has_transforms() && d.has_kcache_transform());
  const Recipe kv = load_recipe("w16a16kv4");
  EXPECT_FALSE(kv.has_transforms());
  EXPECT_TRUE(kv.has_kcache_transform());
}

TEST(Recipe, ValidationErrorsNameTheField) {
  const json base = json::parse(builtin_recipe_json("w4a4kv4"));
  auto with = [&](const char* key, json v) {
    json j = base;
    j[key] = std::move(v);
    return error_of(j);
  };
  EXPECT_EQ(with("a_bits", 3), "r.json: field 'a_bits': expected one of 4, 8, 16, found 3");
  EXPECT_EQ(with("w_bits", "4"), "r.json: field 'w_bits': expected an integer, found \"4\"");
  EXPECT_EQ(with("lwc", 1), "r.json: field 'lwc': expected true or false, found 1");
  EXPECT_EQ(with("param", "qr"), "r.json: field 'param': expected \"svd\" or \"direct\", found \"qr\"");
  EXPECT_EQ(with("weight_quantizer", "awq"),
            "r.json: field 'weight_quantizer': expected \"rtn\" or \"gptq\", found \"awq\"");
  EXPECT_EQ(with("w_group", 128), "r.json: field 'w_group': expected -1 (per output channel), found 128");
  EXPECT_EQ(with("w_sym", false),
            "r.json: field 'w_sym': expected true (the artifact stores symmetric weights), found false");
  EXPECT_EQ(with("diag_alpha", 1.5), "r.json: field 'diag_alpha': expected a number in (0, 1), found 1.5");
  EXPECT_EQ(with("colour", "red"), "r.json: unknown field 'colour'");
  json g = base;
  g["gptq"]["blocksize"] = 0;
  EXPECT_EQ(error_of(g), "r.json: field 'gptq.blocksize': expected >= 1, found 0");
  g = base;
  g["gptq"]["damp"] = 0.1;
  EXPECT_EQ(error_of(g), "r.json: unknown field 'gptq.damp'");
  json w16 = base;
  w16["w_bits"] = 16;
  EXPECT_EQ(error_of(w16), "r.json: field 'lwc': weight clipping needs quantized weights (w_bits 16)");
  json noname = base;
  noname.erase("name");
  EXPECT_EQ(error_of(noname), "r.json: field 'name' is missing");
  EXPECT_EQ(error_of(json::array()), "r.json: expected a JSON object, found array");
}

TEST(Recipe, LoadByNameOrPath) {
  try {
    load_recipe("w3a3");
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()),
              "unknown recipe 'w3a3': expected one of w16a16kv4, w4a16, w4a4kv4, w4a8, w8a8 or a path to a .json "
              "file");
  }
  test::TempDir dir;
  EXPECT_THROW(load_recipe(dir.file("missing.json")), Error);
  write_file_atomic(dir.file("bad.json"), "{ not json");
  try {
    load_recipe(dir.file("bad.json"));
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()).rfind(dir.file("bad.json") + ": invalid JSON", 0), 0u) << e.what();
  }
  json j = json::parse(builtin_recipe_json("w4a8"));
  j["name"] = "mine";
  j["weight_quantizer"] = "gptq";
  write_file_atomic(dir.file("mine.json"), j.dump());
  const Recipe r = load_recipe(dir.file("mine.json"));
  EXPECT_EQ(r.name, "mine");
  EXPECT_EQ(r.a_bits, 8);
  EXPECT_EQ(r.weight_quantizer, "gptq");
}

}  // namespace
}  // namespace fq
