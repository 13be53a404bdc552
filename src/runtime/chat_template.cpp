#include "runtime/chat_template.h"

#include <nlohmann/json.hpp>

#include "core/fs.h"
#include "core/json_guard.h"
#include "flatquant/error.h"

namespace fq::runtime {

namespace {

constexpr const char* kTemplateHint = "use --template llama2|llama3|chatml|none";

// Python's str.strip() on ASCII whitespace (what the templates' strip/trim filters remove in practice).
std::string strip(const std::string& s) {
  const char* ws = " \t\n\r\f\v";
  const size_t b = s.find_first_not_of(ws);
  if (b == std::string::npos) return {};
  const size_t e = s.find_last_not_of(ws);
  return s.substr(b, e - b + 1);
}

std::string render_llama2(const ChatTemplate& t, const std::vector<ChatMessage>& msgs) {
  size_t first = 0;
  std::string system;
  bool has_system = false;
  if (!msgs.empty() && msgs[0].role == "system") {
    system = msgs[0].content;
    has_system = true;
    first = 1;
  }
  std::string out;
  for (size_t i = first; i < msgs.size(); ++i) {
    const ChatMessage& m = msgs[i];
    const bool expect_user = (i - first) % 2 == 0;
    FQ_CHECK((m.role == "user") == expect_user && (m.role == "user" || m.role == "assistant"),
             "llama2 chat template: message {} has role '{}' (expected {}; roles must alternate user/assistant "
             "after an optional first system message)",
             i, m.role, expect_user ? "user" : "assistant");
    std::string content = m.content;
    if (i == first && has_system) content = "<<SYS>>\n" + system + "\n<</SYS>>\n\n" + m.content;
    if (m.role == "user")
      out += t.bos + "[INST] " + strip(content) + " [/INST]";
    else
      out += " " + strip(content) + " " + t.eos;
  }
  return out;
}

std::string render_llama3(const ChatTemplate& t, const std::vector<ChatMessage>& msgs) {
  auto turn = [](const std::string& role, const std::string& content) {
    return "<|start_header_id|>" + role + "<|end_header_id|>\n\n" + content + "<|eot_id|>";
  };
  std::string out = t.bos;
  size_t first = 0;
  if (t.llama31_system) {
    // Llama-3.1's template always renders a system turn (the date preamble, then the system message if any).
    std::string sys;
    if (!msgs.empty() && msgs[0].role == "system") {
      sys = strip(msgs[0].content);
      first = 1;
    }
    out += turn("system", "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n" + sys);
  }
  for (size_t i = first; i < msgs.size(); ++i) out += turn(msgs[i].role, strip(msgs[i].content));
  return out + "<|start_header_id|>assistant<|end_header_id|>\n\n";
}

std::string render_chatml(const ChatTemplate& t, const std::vector<ChatMessage>& msgs) {
  std::string out;
  if (!t.default_system.empty() && (msgs.empty() || msgs[0].role != "system"))
    out += "<|im_start|>system\n" + t.default_system + "<|im_end|>\n";
  for (const auto& m : msgs) out += "<|im_start|>" + m.role + "\n" + m.content + "<|im_end|>\n";
  return out + "<|im_start|>assistant\n";
}

// A ChatML template's default system prompt: the literal text between "<|im_start|>system\n" and
// "<|im_end|>" inside one string literal (so no quote in between; the branch that splices in the user's
// system message has "' + messages[0]['content'] + '" there instead).
std::string chatml_default_system(const std::string& jinja) {
  static const std::string open = "<|im_start|>system\n", close = "<|im_end|>";
  for (size_t p = jinja.find(open); p != std::string::npos; p = jinja.find(open, p + 1)) {
    const size_t b = p + open.size();
    const size_t e = jinja.find(close, b);
    if (e == std::string::npos) break;
    const std::string text = jinja.substr(b, e - b);
    if (!text.empty() && text.find_first_of("'\"{}") == std::string::npos) return text;
  }
  return {};
}

std::string token_text(const nlohmann::json& v) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content") && v["content"].is_string()) return v["content"].get<std::string>();
  return {};
}

}  // namespace

std::string ChatTemplate::render(const std::vector<ChatMessage>& messages) const {
  switch (family) {
    case ChatFamily::kLlama2: return render_llama2(*this, messages);
    case ChatFamily::kLlama3: return render_llama3(*this, messages);
    case ChatFamily::kChatML: return render_chatml(*this, messages);
    case ChatFamily::kNone: break;
  }
  std::string out;
  for (const auto& m : messages) out += m.content;
  return out;
}

std::string ChatTemplate::end_of_turn() const {
  switch (family) {
    case ChatFamily::kLlama2: return eos;
    case ChatFamily::kLlama3: return "<|eot_id|>";
    case ChatFamily::kChatML: return "<|im_end|>";
    case ChatFamily::kNone: break;
  }
  return {};
}

ChatTemplate chat_template_by_name(const std::string& name) {
  ChatTemplate t;
  if (name == "llama2") t.family = ChatFamily::kLlama2;
  else if (name == "llama3") t.family = ChatFamily::kLlama3;
  else if (name == "chatml") t.family = ChatFamily::kChatML;
  else if (name == "none") t.family = ChatFamily::kNone;
  else fail("--template: unknown template '{}' (expected llama2, llama3, chatml or none)", name);
  if (t.family == ChatFamily::kLlama3) t.bos = "<|begin_of_text|>";
  return t;
}

ChatTemplate recognize_chat_template(const std::string& jinja, const std::string& source) {
  ChatTemplate t;
  if (jinja.find("<|im_start|>") != std::string::npos) {
    t.family = ChatFamily::kChatML;
    t.default_system = chatml_default_system(jinja);
  } else if (jinja.find("<|start_header_id|>") != std::string::npos) {
    t.family = ChatFamily::kLlama3;
    t.bos = "<|begin_of_text|>";
    t.llama31_system = jinja.find("Cutting Knowledge Date") != std::string::npos;
  } else if (jinja.find("[INST]") != std::string::npos && jinja.find("<<SYS>>") != std::string::npos) {
    t.family = ChatFamily::kLlama2;
  } else {
    fail("{}: chat_template is not one of the supported families (Llama-2, Llama-3, ChatML); {}", source,
         kTemplateHint);
  }
  return t;
}

ChatTemplate load_chat_template(const std::string& model_dir) {
  const std::string path = path_join(model_dir, "tokenizer_config.json");
  FQ_CHECK(file_exists(path), "{}: not found, so there is no chat_template; {}", path, kTemplateHint);
  nlohmann::json j;
  try {
    const std::string text = read_file(path);
    check_json_depth(text, path);
    j = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    fail("{}: not valid JSON ({})", path, e.what());
  }
  FQ_CHECK(j.is_object(), "{}: expected a JSON object", path);
  std::string jinja;
  if (j.contains("chat_template")) {
    const auto& c = j["chat_template"];
    if (c.is_string()) {
      jinja = c.get<std::string>();
    } else if (c.is_array()) {
      for (const auto& item : c)
        if (item.is_object() && item.value("name", "") == "default" && item.contains("template") &&
            item["template"].is_string())
          jinja = item["template"].get<std::string>();
    }
  }
  FQ_CHECK(!jinja.empty(), "{}: no chat_template; {}", path, kTemplateHint);
  ChatTemplate t = recognize_chat_template(jinja, path);
  if (j.contains("bos_token") && !token_text(j["bos_token"]).empty()) t.bos = token_text(j["bos_token"]);
  if (j.contains("eos_token") && !token_text(j["eos_token"]).empty()) t.eos = token_text(j["eos_token"]);
  return t;
}

}  // namespace fq::runtime
