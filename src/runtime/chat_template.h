// Chat prompt rendering for the supported families, without a Jinja engine: the family is recognized by
// markers in tokenizer_config.json's "chat_template" and rendered by C++ code that reproduces what those
// official templates render (with add_generation_prompt=True).
//  - llama2: "<s>[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{user} [/INST] {assistant} </s><s>[INST] ..." (contents
//            stripped of surrounding whitespace, as the template's .strip()).
//  - llama3: "<|begin_of_text|><|start_header_id|>{role}<|end_header_id|>\n\n{content|trim}<|eot_id|>" per
//            message, then "<|start_header_id|>assistant<|end_header_id|>\n\n". Llama-3.1+ templates (they
//            carry "Cutting Knowledge Date") always open with a system turn that starts with
//            "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n" (the templates' default date).
//  - chatml: "<|im_start|>{role}\n{content}<|im_end|>\n" per message, then "<|im_start|>assistant\n"; when the
//            first message is not a system one, the template's default system prompt (Qwen2.5: "You are Qwen,
//            created by Alibaba Cloud. You are a helpful assistant.", SmolLM2: "You are a helpful AI assistant
//            named SmolLM, trained by Hugging Face") is rendered first, read from the template text itself.
//  - none:   the contents concatenated (plain text continuation; BOS is added by the caller when the
//            tokenizer wants it).
#pragma once
#include <string>
#include <vector>

namespace fq::runtime {

struct ChatMessage {
  std::string role;  // "system" | "user" | "assistant"
  std::string content;
};

enum class ChatFamily { kLlama2, kLlama3, kChatML, kNone };

struct ChatTemplate {
  ChatFamily family = ChatFamily::kNone;
  // bos_token / eos_token as the template writes them (llama2 and llama3 render BOS; llama2 closes turns with
  // EOS); from tokenizer_config.json when present.
  std::string bos = "<s>", eos = "</s>";
  bool llama31_system = false;            // llama3: Llama-3.1-style dated system preamble
  std::string default_system;             // chatml: rendered when the conversation has no system message

  // Renders the conversation followed by the assistant generation prompt. Throws fq::Error when the roles
  // do not fit the family (llama2: system only first, then user/assistant alternating from user).
  std::string render(const std::vector<ChatMessage>& messages) const;
  // The text that ends an assistant turn ("<|im_end|>", "<|eot_id|>", "</s>"; empty for none): generation
  // stops at its token.
  std::string end_of_turn() const;
  // True when the rendered text carries BOS itself (so the caller must not add another).
  bool renders_bos() const { return family == ChatFamily::kLlama2 || family == ChatFamily::kLlama3; }
};

// "llama2" | "llama3" | "chatml" | "none" -> the family's defaults; throws fq::Error for other names.
ChatTemplate chat_template_by_name(const std::string& name);

// Recognizes the family of a Jinja chat template string. `source` (the file) is named in errors: an
// unrecognized or missing template is a one-line error suggesting --template.
ChatTemplate recognize_chat_template(const std::string& jinja, const std::string& source);

// Reads tokenizer_config.json of a model directory (chat_template as a string, or a list of {name, template}
// from which "default" is used; bos_token/eos_token as strings or {content: ...}) and recognizes it.
ChatTemplate load_chat_template(const std::string& model_dir);

}  // namespace fq::runtime
