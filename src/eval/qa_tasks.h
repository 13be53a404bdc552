// The zero-shot tasks of the FlatQuant paper, turned into (context, continuation) string requests exactly as
// lm-evaluation-harness 0.4.x builds them from each task's default YAML config (docs/eval.md has the table):
//   piqa            "Question: {goal}\nAnswer:"                 + " " + [sol1, sol2]              gold = label
//   hellaswag       preprocess(activity_label + ": " + ctx_a + " " + capitalize(ctx_b))
//                                                               + " " + preprocess(ending_i)      gold = int(label)
//   arc_easy/_chal. "Question: {question}\nAnswer:"             + " " + choices.text[i]
//                                                               gold = choices.label.index(answerKey)
//   winogrande      sentence[:idx('_')] + option_i  (partial eval: one continuation, two contexts)
//                                                               + " " + sentence[idx+1:].strip()  gold = answer-1
//   lambada_openai  text up to its last ' '                     + " " + last word (no delimiter added)
// Multiple-choice tasks score acc = [argmax ll == gold] and acc_norm = [argmax ll/len(choice) == gold], where
// len counts Unicode code points of the choice string (Python len), without the " " delimiter.
#pragma once
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <string_view>
#include <vector>

namespace fq::eval {

enum class QaTask { piqa, hellaswag, arc_easy, arc_challenge, winogrande, lambada_openai };

const char* task_name(QaTask t);
// Throws fq::Error naming the known tasks when `name` is not one of them.
QaTask parse_task(std::string_view name);
// The six tasks of the paper, in its table order.
std::vector<QaTask> all_tasks();
// lm-eval's metric_list: acc_norm for piqa, hellaswag and arc; acc only for winogrande and lambada_openai.
bool task_has_acc_norm(QaTask t);

struct QaRequest {
  std::string context, continuation;
};

// One document as lm-eval scores it: one request per choice (one request for lambada_openai).
struct QaDoc {
  std::vector<QaRequest> requests;
  // The index of the right choice; -1 for lambada_openai (scored by greedy match).
  int gold = -1;
  // Python len() of each choice string: the acc_norm denominators (empty for winogrande and lambada).
  std::vector<double> choice_len;
};

// Builds the requests of one JSONL row (the task's Hugging Face dataset row). `where` ("file:line") prefixes
// error messages, which name the field: "piqa.jsonl:3: field 'sol2': expected a string (found number)".
QaDoc build_doc(QaTask t, const nlohmann::json& row, const std::string& where);

// Reads a JSONL file of rows (blank lines skipped), at most `limit` of them when limit > 0.
std::vector<QaDoc> load_task_file(QaTask t, const std::string& path, int64_t limit);

// --- Text helpers (exposed for the unit tests) ---
// Python str.strip() for the whitespace these datasets contain (ASCII whitespace incl. \x1c-\x1f, U+0085,
// U+00A0).
std::string py_strip(std::string_view s);
// Python str.rstrip() with the same whitespace set.
std::string py_rstrip(std::string_view s);
// Python str.capitalize(): first character upper case, the rest lower case. Case mapping is applied to ASCII
// letters only; other characters are kept (HellaSwag's ctx_b is ASCII in practice).
std::string py_capitalize(std::string_view s);
// Number of Unicode code points (Python len()); invalid UTF-8 bytes count one each.
size_t py_len(std::string_view s);
// lm-eval's hellaswag preprocess: strip, " [title]" -> ". ", remove "[...]" (non-greedy, not across a newline),
// then one pass of "  " -> " ".
std::string hellaswag_preprocess(std::string_view text);

}  // namespace fq::eval
