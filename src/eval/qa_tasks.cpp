// Request construction of the zero-shot tasks (see qa_tasks.h for the formats and their lm-eval source).
#include "eval/qa_tasks.h"

#include <fmt/format.h>

#include <nlohmann/json.hpp>

#include "core/fs.h"
#include "core/json_guard.h"
#include "flatquant/error.h"
#include "io/tokenizer_unicode.h"

namespace fq::eval {

using nlohmann::json;

namespace {

struct TaskInfo {
  QaTask task;
  const char* name;
  bool acc_norm;
};

constexpr TaskInfo kTasks[] = {
    {QaTask::piqa, "piqa", true},
    {QaTask::hellaswag, "hellaswag", true},
    {QaTask::arc_easy, "arc_easy", true},
    {QaTask::arc_challenge, "arc_challenge", true},
    {QaTask::winogrande, "winogrande", false},
    {QaTask::lambada_openai, "lambada_openai", false},
};

const TaskInfo& info(QaTask t) {
  for (const TaskInfo& i : kTasks)
    if (i.task == t) return i;
  FQ_ASSERT(false);
  return kTasks[0];
}

const char* json_type(const json& j) { return j.type_name(); }

const json& field(const json& row, const char* name, const std::string& where) {
  FQ_CHECK(row.is_object(), "{}: expected a JSON object (found {})", where, json_type(row));
  auto it = row.find(name);
  FQ_CHECK(it != row.end(), "{}: field '{}' is missing", where, name);
  return *it;
}

std::string str_field(const json& row, const char* name, const std::string& where) {
  const json& v = field(row, name, where);
  FQ_CHECK(v.is_string(), "{}: field '{}': expected a string (found {})", where, name, json_type(v));
  return v.get<std::string>();
}

std::vector<std::string> str_list(const json& v, const std::string& name, const std::string& where) {
  FQ_CHECK(v.is_array() && !v.empty(), "{}: field '{}': expected a non-empty array of strings (found {})", where,
           name, v.is_array() ? "an empty array" : json_type(v));
  std::vector<std::string> out;
  for (size_t i = 0; i < v.size(); ++i) {
    FQ_CHECK(v[i].is_string(), "{}: field '{}[{}]': expected a string (found {})", where, name, i,
             json_type(v[i]));
    out.push_back(v[i].get<std::string>());
  }
  return out;
}

// A label given as an integer or as a string of digits (HF rows use both), checked against [lo, lo + n).
int index_field(const json& row, const char* name, int lo, size_t n, const std::string& where) {
  const json& v = field(row, name, where);
  long long x = 0;
  if (v.is_number_integer()) {
    x = v.get<long long>();
  } else if (v.is_string()) {
    const std::string s = v.get<std::string>();
    FQ_CHECK(!s.empty() && s.size() < 10 && s.find_first_not_of("0123456789") == std::string::npos,
             "{}: field '{}': expected an integer label (found \"{}\")", where, name, s);
    x = std::stoll(s);
  } else {
    fail("{}: field '{}': expected an integer label (found {})", where, name, json_type(v));
  }
  FQ_CHECK(x >= lo && x < lo + (long long)n, "{}: field '{}': label {} is out of range [{}, {}]", where, name, x,
           lo, lo + (long long)n - 1);
  return (int)(x - lo);
}

bool is_py_space(uint32_t c) {
  return (c >= 0x09 && c <= 0x0d) || (c >= 0x1c && c <= 0x20) || c == 0x85 || c == 0xa0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200a) || c == 0x2028 || c == 0x2029 || c == 0x202f || c == 0x205f || c == 0x3000;
}

QaDoc choices_doc(const std::string& context, const std::vector<std::string>& choices, int gold) {
  QaDoc d;
  d.gold = gold;
  for (const std::string& c : choices) {
    d.requests.push_back({context, " " + c});
    d.choice_len.push_back((double)py_len(c));
  }
  return d;
}

QaDoc piqa(const json& row, const std::string& w) {
  const std::string ctx = "Question: " + str_field(row, "goal", w) + "\nAnswer:";
  const std::vector<std::string> choices = {str_field(row, "sol1", w), str_field(row, "sol2", w)};
  return choices_doc(ctx, choices, index_field(row, "label", 0, 2, w));
}

QaDoc hellaswag(const json& row, const std::string& w) {
  const std::string ctx = str_field(row, "ctx_a", w) + " " + py_capitalize(str_field(row, "ctx_b", w));
  const std::string query = hellaswag_preprocess(str_field(row, "activity_label", w) + ": " + ctx);
  std::vector<std::string> endings = str_list(field(row, "endings", w), "endings", w);
  for (std::string& e : endings) e = hellaswag_preprocess(e);
  return choices_doc(query, endings, index_field(row, "label", 0, endings.size(), w));
}

QaDoc arc(const json& row, const std::string& w) {
  const std::string ctx = "Question: " + str_field(row, "question", w) + "\nAnswer:";
  const json& ch = field(row, "choices", w);
  FQ_CHECK(ch.is_object(), "{}: field 'choices': expected an object {{text: [...], label: [...]}} (found {})", w,
           json_type(ch));
  const std::vector<std::string> text = str_list(field(ch, "text", w + ": field 'choices'"), "choices.text", w);
  const std::vector<std::string> label = str_list(field(ch, "label", w + ": field 'choices'"), "choices.label", w);
  FQ_CHECK(text.size() == label.size(), "{}: field 'choices': {} texts but {} labels", w, text.size(),
           label.size());
  const std::string key = str_field(row, "answerKey", w);
  int gold = -1;
  for (size_t i = 0; i < label.size(); ++i)
    if (label[i] == key) {
      gold = (int)i;
      break;
    }
  FQ_CHECK(gold >= 0, "{}: field 'answerKey': \"{}\" is not one of choices.label", w, key);
  return choices_doc(ctx, text, gold);
}

QaDoc winogrande(const json& row, const std::string& w) {
  const std::string sentence = str_field(row, "sentence", w);
  const size_t blank = sentence.find('_');
  FQ_CHECK(blank != std::string::npos, "{}: field 'sentence': no '_' blank in \"{}\"", w, sentence);
  const std::string cont = " " + py_strip(std::string_view(sentence).substr(blank + 1));
  QaDoc d;
  d.gold = index_field(row, "answer", 1, 2, w);
  for (const char* opt : {"option1", "option2"}) d.requests.push_back({sentence.substr(0, blank) + str_field(row, opt, w), cont});
  return d;
}

QaDoc lambada(const json& row, const std::string& w) {
  const std::string text = str_field(row, "text", w);
  const size_t sp = text.rfind(' ');
  QaDoc d;
  if (sp == std::string::npos)
    d.requests.push_back({"", " " + text});
  else
    d.requests.push_back({text.substr(0, sp), " " + text.substr(sp + 1)});
  return d;
}

}  // namespace

const char* task_name(QaTask t) { return info(t).name; }

QaTask parse_task(std::string_view name) {
  std::string known;
  for (const TaskInfo& i : kTasks) {
    if (name == i.name) return i.task;
    known += known.empty() ? "" : ", ";
    known += i.name;
  }
  fail("unknown task '{}' (expected one of: {})", name, known);
}

std::vector<QaTask> all_tasks() {
  std::vector<QaTask> out;
  for (const TaskInfo& i : kTasks) out.push_back(i.task);
  return out;
}

bool task_has_acc_norm(QaTask t) { return info(t).acc_norm; }

QaDoc build_doc(QaTask t, const json& row, const std::string& where) {
  FQ_CHECK(row.is_object(), "{}: expected a JSON object (found {})", where, json_type(row));
  switch (t) {
    case QaTask::piqa: return piqa(row, where);
    case QaTask::hellaswag: return hellaswag(row, where);
    case QaTask::arc_easy:
    case QaTask::arc_challenge: return arc(row, where);
    case QaTask::winogrande: return winogrande(row, where);
    case QaTask::lambada_openai: return lambada(row, where);
  }
  FQ_ASSERT(false);
  return {};
}

std::vector<QaDoc> load_task_file(QaTask t, const std::string& path, int64_t limit) {
  FQ_CHECK(file_exists(path), "{}: no such file (expected the {} rows as JSONL)", path, task_name(t));
  const std::string text = read_file(path);
  std::vector<QaDoc> docs;
  size_t start = 0;
  for (int64_t line = 1; start < text.size() && (limit <= 0 || (int64_t)docs.size() < limit); ++line) {
    size_t end = text.find('\n', start);
    if (end == std::string::npos) end = text.size();
    const std::string_view l(text.data() + start, end - start);
    start = end + 1;
    if (l.find_first_not_of(" \t\r") == std::string_view::npos) continue;
    const std::string where = fmt::format("{}:{}", path, line);
    check_json_depth(l, where);
    json row = json::parse(l.begin(), l.end(), nullptr, /*allow_exceptions=*/false);
    FQ_CHECK(!row.is_discarded(), "{}: not valid JSON", where);
    docs.push_back(build_doc(t, row, where));
  }
  FQ_CHECK(!docs.empty(), "{}: no rows", path);
  return docs;
}

std::string py_strip(std::string_view s) {
  size_t b = 0;
  while (b < s.size()) {
    size_t len = 0;
    if (!is_py_space(tok::utf8_decode(s, b, &len))) break;
    b += len;
  }
  return py_rstrip(s.substr(b));
}

std::string py_rstrip(std::string_view s) {
  const size_t b = 0;
  size_t e = s.size();
  while (e > b) {
    size_t p = e - 1;  // back up to the start of the last character
    while (p > b && ((uint8_t)s[p] & 0xC0) == 0x80) --p;
    size_t len = 0;
    if (!is_py_space(tok::utf8_decode(s, p, &len)) || p + len != e) break;
    e = p;
  }
  return std::string(s.substr(b, e - b));
}

std::string py_capitalize(std::string_view s) {
  std::string out(s);
  for (size_t i = 0; i < out.size(); ++i) {
    char& c = out[i];
    if (i == 0 && c >= 'a' && c <= 'z') c = (char)(c - 'a' + 'A');
    if (i > 0 && c >= 'A' && c <= 'Z') c = (char)(c - 'A' + 'a');
  }
  return out;
}

size_t py_len(std::string_view s) {
  size_t n = 0;
  for (size_t i = 0; i < s.size(); i += tok::utf8_len(s, i)) ++n;
  return n;
}

std::string hellaswag_preprocess(std::string_view text) {
  std::string s = py_strip(text);
  // " [title]" -> ". " (Python str.replace: left to right, non-overlapping).
  std::string t;
  for (size_t i = 0; i < s.size();) {
    if (s.compare(i, 8, " [title]") == 0) {
      t += ". ";
      i += 8;
    } else {
      t += s[i++];
    }
  }
  // re.sub("\\[.*?\\]", "", t): '.' does not match '\n', so a '[' whose next ']' lies beyond a newline stays.
  std::string u;
  for (size_t i = 0; i < t.size();) {
    if (t[i] == '[') {
      size_t j = i + 1;
      while (j < t.size() && t[j] != ']' && t[j] != '\n') ++j;
      if (j < t.size() && t[j] == ']') {
        i = j + 1;
        continue;
      }
    }
    u += t[i++];
  }
  // One pass of "  " -> " ": three spaces become two.
  std::string v;
  for (size_t i = 0; i < u.size();) {
    if (u[i] == ' ' && i + 1 < u.size() && u[i + 1] == ' ') {
      v += ' ';
      i += 2;
    } else {
      v += u[i++];
    }
  }
  return v;
}

}  // namespace fq::eval
