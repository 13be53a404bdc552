#include "model/recipe.h"

#include <algorithm>
#include <map>
#include <nlohmann/json.hpp>

#include "core/fs.h"
#include "core/json_guard.h"
#include "flatquant/error.h"

namespace fq {
namespace {

const std::map<std::string, std::string>& builtins() {
  static const std::map<std::string, std::string> m = {
#include "recipes_embedded.inc"
  };
  return m;
}

using json = nlohmann::json;

template <typename T>
T get_field(const json& j, const char* key, const std::string& source, const char* expected) {
  const json& v = j.at(key);
  bool ok = false;
  if constexpr (std::is_same_v<T, bool>) {
    ok = v.is_boolean();
  } else if constexpr (std::is_integral_v<T>) {
    ok = v.is_number_integer();
  } else if constexpr (std::is_floating_point_v<T>) {
    ok = v.is_number();
  } else {
    ok = v.is_string();
  }
  FQ_CHECK(ok, "{}: field '{}': expected {}, found {}", source, key, expected, json_excerpt(v));
  return v.get<T>();
}

void check_bits(int bits, const char* field, const std::string& source) {
  FQ_CHECK(bits == 4 || bits == 8 || bits == 16, "{}: field '{}': expected one of 4, 8, 16, found {}", source,
           field, bits);
}

}  // namespace

Recipe Recipe::from_json(const json& j, const std::string& source) {
  FQ_CHECK(j.is_object(), "{}: expected a JSON object, found {}", source, j.type_name());
  static const char* known[] = {"name", "description", "w_bits", "w_sym", "w_group", "a_bits", "a_sym",
                                "k_bits", "k_sym", "v_bits", "v_sym", "lwc", "lac", "add_diag", "diag_alpha",
                                "param", "train_transforms", "weight_quantizer", "gptq"};
  for (auto it = j.begin(); it != j.end(); ++it) {
    FQ_CHECK(std::find_if(std::begin(known), std::end(known), [&](const char* k) { return it.key() == k; }) !=
                 std::end(known),
             "{}: unknown field '{}'", source, it.key());
  }
  Recipe r;
  auto opt = [&](const char* key, auto& dst, const char* expected) {
    if (j.contains(key)) dst = get_field<std::decay_t<decltype(dst)>>(j, key, source, expected);
  };
  FQ_CHECK(j.contains("name"), "{}: field 'name' is missing", source);
  opt("name", r.name, "a string");
  opt("w_bits", r.w_bits, "an integer");
  opt("w_sym", r.w_sym, "true or false");
  opt("w_group", r.w_group, "an integer");
  opt("a_bits", r.a_bits, "an integer");
  opt("a_sym", r.a_sym, "true or false");
  opt("k_bits", r.k_bits, "an integer");
  opt("k_sym", r.k_sym, "true or false");
  opt("v_bits", r.v_bits, "an integer");
  opt("v_sym", r.v_sym, "true or false");
  opt("lwc", r.lwc, "true or false");
  opt("lac", r.lac, "true or false");
  opt("add_diag", r.add_diag, "true or false");
  opt("diag_alpha", r.diag_alpha, "a number");
  opt("param", r.param, "a string");
  opt("train_transforms", r.train_transforms, "true or false");
  opt("weight_quantizer", r.weight_quantizer, "a string");
  if (j.contains("gptq")) {
    const json& g = j.at("gptq");
    const std::string gs = source + ": gptq";
    FQ_CHECK(g.is_object(), "{}: field 'gptq': expected an object, found {}", source, json_excerpt(g));
    for (auto it = g.begin(); it != g.end(); ++it) {
      FQ_CHECK(it.key() == "blocksize" || it.key() == "percdamp" || it.key() == "act_order" || it.key() == "mse",
               "{}: unknown field 'gptq.{}'", source, it.key());
    }
    if (g.contains("blocksize")) r.gptq.blocksize = get_field<int64_t>(g, "blocksize", gs, "an integer");
    if (g.contains("percdamp")) r.gptq.percdamp = get_field<double>(g, "percdamp", gs, "a number");
    if (g.contains("act_order")) r.gptq.act_order = get_field<bool>(g, "act_order", gs, "true or false");
    if (g.contains("mse")) r.gptq.mse = get_field<bool>(g, "mse", gs, "true or false");
  }
  r.validate(source);
  return r;
}

void Recipe::validate(const std::string& source) const {
  FQ_CHECK(!name.empty(), "{}: field 'name': expected a non-empty string, found \"\"", source);
  check_bits(w_bits, "w_bits", source);
  check_bits(a_bits, "a_bits", source);
  check_bits(k_bits, "k_bits", source);
  check_bits(v_bits, "v_bits", source);
  FQ_CHECK(w_sym, "{}: field 'w_sym': expected true (the artifact stores symmetric weights), found false", source);
  FQ_CHECK(w_group == -1, "{}: field 'w_group': expected -1 (per output channel), found {}", source, w_group);
  FQ_CHECK(a_sym, "{}: field 'a_sym': expected true (per-token activations are symmetric), found false", source);
  FQ_CHECK(!k_sym && !v_sym, "{}: fields 'k_sym'/'v_sym': expected false (the KV cache is asymmetric), found true",
           source);
  FQ_CHECK(diag_alpha > 0 && diag_alpha < 1, "{}: field 'diag_alpha': expected a number in (0, 1), found {}", source,
           diag_alpha);
  FQ_CHECK(param == "svd" || param == "direct", "{}: field 'param': expected \"svd\" or \"direct\", found \"{}\"",
           source, param);
  FQ_CHECK(weight_quantizer == "rtn" || weight_quantizer == "gptq",
           "{}: field 'weight_quantizer': expected \"rtn\" or \"gptq\", found \"{}\"", source, weight_quantizer);
  FQ_CHECK(gptq.blocksize >= 1, "{}: field 'gptq.blocksize': expected >= 1, found {}", source, gptq.blocksize);
  FQ_CHECK(gptq.percdamp > 0, "{}: field 'gptq.percdamp': expected > 0, found {}", source, gptq.percdamp);
  FQ_CHECK(!(lwc && w_bits == 16), "{}: field 'lwc': weight clipping needs quantized weights (w_bits 16)", source);
  FQ_CHECK(!(weight_quantizer == "gptq" && w_bits == 16),
           "{}: field 'weight_quantizer': \"gptq\" needs quantized weights (w_bits 16)", source);
}

json Recipe::to_json() const {
  return json{{"name", name},
              {"w_bits", w_bits},
              {"w_sym", w_sym},
              {"w_group", w_group},
              {"a_bits", a_bits},
              {"a_sym", a_sym},
              {"k_bits", k_bits},
              {"k_sym", k_sym},
              {"v_bits", v_bits},
              {"v_sym", v_sym},
              {"lwc", lwc},
              {"lac", lac},
              {"add_diag", add_diag},
              {"diag_alpha", diag_alpha},
              {"param", param},
              {"train_transforms", train_transforms},
              {"weight_quantizer", weight_quantizer},
              {"gptq",
               {{"blocksize", gptq.blocksize},
                {"percdamp", gptq.percdamp},
                {"act_order", gptq.act_order},
                {"mse", gptq.mse}}}};
}

std::vector<std::string> builtin_recipe_names() {
  std::vector<std::string> names;
  for (const auto& [k, v] : builtins()) names.push_back(k);
  return names;
}

const std::string& builtin_recipe_json(const std::string& name) {
  auto it = builtins().find(name);
  if (it == builtins().end()) {
    std::string all;
    for (const auto& n : builtin_recipe_names()) all += (all.empty() ? "" : ", ") + n;
    fail("unknown recipe '{}': expected one of {} or a path to a .json file", name, all);
  }
  return it->second;
}

Recipe load_recipe(const std::string& name_or_path) {
  if (builtins().count(name_or_path)) {
    const std::string source = "recipe '" + name_or_path + "'";
    return Recipe::from_json(json::parse(builtin_recipe_json(name_or_path)), source);
  }
  const bool looks_like_path = name_or_path.find('/') != std::string::npos ||
                               (name_or_path.size() > 5 && name_or_path.substr(name_or_path.size() - 5) == ".json");
  if (!looks_like_path) builtin_recipe_json(name_or_path);  // throws the "unknown recipe" error
  FQ_CHECK(file_exists(name_or_path), "{}: recipe file not found", name_or_path);
  json j;
  try {
    const std::string text = read_file(name_or_path);
    check_json_depth(text, name_or_path);
    j = json::parse(text);
  } catch (const json::exception& e) {
    fail("{}: invalid JSON: {}", name_or_path, e.what());
  }
  return Recipe::from_json(j, name_or_path);
}

}  // namespace fq
