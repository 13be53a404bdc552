// Chat rendering per family against expected strings written by hand from the official templates'
// semantics (add_generation_prompt=True), and recognition of the family from template text.
#include <gtest/gtest.h>

#include <cstdlib>

#include "core/fs.h"
#include "flatquant/error.h"
#include "runtime/chat_template.h"
#include "test_util.h"

namespace fq::runtime {
namespace {

const std::vector<ChatMessage> kSysUser = {{"system", "Be brief."}, {"user", "Hi there"}};
const std::vector<ChatMessage> kMultiTurn = {
    {"user", "Hi"}, {"assistant", "Hello! How can I help?"}, {"user", "What is 2+2?"}};

std::string models_dir() {
  const char* e = std::getenv("FLATQUANT_MODELS");
  return e && *e ? e : test::source_path(".cache/models");
}

TEST(ChatTemplate, Llama2) {
  ChatTemplate t = chat_template_by_name("llama2");
  EXPECT_EQ(t.render(kSysUser), "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi there [/INST]");
  EXPECT_EQ(t.render(kMultiTurn),
            "<s>[INST] Hi [/INST] Hello! How can I help? </s><s>[INST] What is 2+2? [/INST]");
  // The system block joins the first user turn only, and the template strips the joined content (so the
  // user text's own leading spaces stay after the block, its trailing ones go).
  EXPECT_EQ(t.render({{"system", "S"}, {"user", "  a \n"}, {"assistant", " b "}, {"user", " c "}}),
            "<s>[INST] <<SYS>>\nS\n<</SYS>>\n\n  a [/INST] b </s><s>[INST] c [/INST]");
  EXPECT_THROW(t.render({{"user", "a"}, {"user", "b"}}), Error);
  EXPECT_THROW(t.render({{"assistant", "a"}}), Error);
  EXPECT_TRUE(t.renders_bos());
  EXPECT_EQ(t.end_of_turn(), "</s>");
}

TEST(ChatTemplate, Llama3) {
  ChatTemplate t = chat_template_by_name("llama3");
  EXPECT_EQ(t.render(kSysUser),
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n");
  EXPECT_EQ(t.render(kMultiTurn),
            "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\nHello! How can I help?<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n");
  EXPECT_EQ(t.end_of_turn(), "<|eot_id|>");
}

TEST(ChatTemplate, Llama31AlwaysHasDatedSystemTurn) {
  const ChatTemplate t = recognize_chat_template(
      "{{- bos_token }}{%- set date_string = \"26 Jul 2024\" %}{{- \"<|start_header_id|>system<|end_header_id|>\\n\\n\" }}"
      "{{- \"Cutting Knowledge Date: December 2023\\n\" }}",
      "x");
  ASSERT_EQ(t.family, ChatFamily::kLlama3);
  EXPECT_EQ(t.render({{"user", "Hi"}}),
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
            "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n");
  EXPECT_EQ(t.render(kSysUser),
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
            "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\nBe brief.<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n");
}

TEST(ChatTemplate, ChatMLPlainHasNoDefaultSystem) {
  ChatTemplate t = chat_template_by_name("chatml");
  EXPECT_EQ(t.render(kMultiTurn),
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello! How can I help?<|im_end|>\n"
            "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n");
  EXPECT_FALSE(t.renders_bos());
  EXPECT_EQ(t.end_of_turn(), "<|im_end|>");
}

// The branch structure of Qwen2.5's template (tools branch first, then the plain one), abridged.
const char* kQwenLike =
    "{%- if tools %}{{- '<|im_start|>system\\n' }}{%- if messages[0]['role'] == 'system' %}"
    "{{- messages[0]['content'] }}{%- else %}"
    "{{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}{%- endif %}"
    "{%- else %}{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}{%- else %}"
    "{{- '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n' }}"
    "{%- endif %}{%- endif %}";

TEST(ChatTemplate, QwenDefaultSystemPrompt) {
  const ChatTemplate t = recognize_chat_template(kQwenLike, "x");
  ASSERT_EQ(t.family, ChatFamily::kChatML);
  EXPECT_EQ(t.default_system, "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.");
  EXPECT_EQ(t.render({{"user", "Hi"}}),
            "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
  // A given system message replaces the default.
  EXPECT_EQ(t.render(kSysUser),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n");
}

TEST(ChatTemplate, SmolLM2FromItsTokenizerConfig) {
  const std::string dir = path_join(models_dir(), "SmolLM2-135M-Instruct");
  FQ_REQUIRE_FILE(path_join(dir, "tokenizer_config.json"));
  const ChatTemplate t = load_chat_template(dir);
  ASSERT_EQ(t.family, ChatFamily::kChatML);
  EXPECT_EQ(t.render(kMultiTurn),
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello! How can I help?<|im_end|>\n"
            "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n");
  EXPECT_EQ(t.render(kSysUser),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n");
}

TEST(ChatTemplate, RecognizesLlama2AndRejectsUnknown) {
  EXPECT_EQ(recognize_chat_template("{{ bos_token + '[INST] ' + '<<SYS>>\\n' }}", "x").family, ChatFamily::kLlama2);
  try {
    recognize_chat_template("{% for m in messages %}{{ m.content }}{% endfor %}", "m/tokenizer_config.json");
    FAIL() << "expected an error";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("m/tokenizer_config.json"), std::string::npos) << msg;
    EXPECT_NE(msg.find("--template llama2|llama3|chatml|none"), std::string::npos) << msg;
    EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
  }
  EXPECT_THROW(chat_template_by_name("vicuna"), Error);
}

TEST(ChatTemplate, MissingTemplateNamesTheFile) {
  test::TempDir d;
  write_file_atomic(d.file("tokenizer_config.json"), R"({"bos_token": "<s>"})");
  try {
    load_chat_template(d.path());
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("tokenizer_config.json: no chat_template; use --template"), std::string::npos)
        << e.what();
  }
  write_file_atomic(d.file("tokenizer_config.json"), "{not json");
  EXPECT_THROW(load_chat_template(d.path()), Error);
}

TEST(ChatTemplate, NoneConcatenates) {
  EXPECT_EQ(chat_template_by_name("none").render(kSysUser), "Be brief.Hi there");
}

}  // namespace
}  // namespace fq::runtime
