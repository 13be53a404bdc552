// Request construction of the zero-shot tasks against strings computed by hand from lm-eval 0.4.x's task
// configs (tests/data/qa/*.jsonl rows), and the one-line errors on bad rows.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <string>

#include "eval/qa_tasks.h"
#include "flatquant/error.h"
#include "test_util.h"

namespace fq::eval {
namespace {

std::string qa(const std::string& task) { return test::source_path("tests/data/qa/" + task + ".jsonl"); }

TEST(QaText, HellaswagPreprocess) {
  EXPECT_EQ(hellaswag_preprocess("  a [title] b  "), "a. b");
  // [header] removed leaves two spaces -> one; " [title]" -> ". ".
  EXPECT_EQ(hellaswag_preprocess("Home: [header] How to x [title] Fill it."), "Home: How to x. Fill it.");
  // One pass of "  " -> " ": three spaces become two.
  EXPECT_EQ(hellaswag_preprocess("a.  [step] b"), "a.  b");
  // Non-greedy brackets; a '[' whose ']' is past a newline stays.
  EXPECT_EQ(hellaswag_preprocess("x [a] y [b] z"), "x y z");
  EXPECT_EQ(hellaswag_preprocess("x [a\n] y"), "x [a\n] y");
}

TEST(QaText, PythonStringHelpers) {
  EXPECT_EQ(py_capitalize("THEN pour IT"), "Then pour it");
  EXPECT_EQ(py_capitalize("she"), "She");
  EXPECT_EQ(py_capitalize(""), "");
  EXPECT_EQ(py_strip(" \t\xC2\xA0 a b \n"), "a b");  // U+00A0 is whitespace to Python
  EXPECT_EQ(py_rstrip("Answer: \n"), "Answer:");
  EXPECT_EQ(py_len("caf\xC3\xA9"), 4u);  // code points, not bytes
}

TEST(QaTasks, Piqa) {
  const auto docs = load_task_file(QaTask::piqa, qa("piqa"), 0);
  ASSERT_EQ(docs.size(), 3u);
  const QaDoc& d = docs[0];
  ASSERT_EQ(d.requests.size(), 2u);
  EXPECT_EQ(d.requests[0].context, "Question: How do I keep a cat off the table?\nAnswer:");
  EXPECT_EQ(d.requests[0].continuation, " Put a sheet of foil on the table.");
  EXPECT_EQ(d.requests[1].continuation, " Put a bowl of milk on the table.");
  EXPECT_EQ(d.gold, 0);
  EXPECT_EQ(d.choice_len, (std::vector<double>{33, 32}));  // without the " " delimiter
  EXPECT_EQ(docs[2].gold, 1);                                 // label given as the string "1"
}

TEST(QaTasks, Hellaswag) {
  const auto docs = load_task_file(QaTask::hellaswag, qa("hellaswag"), 0);
  ASSERT_EQ(docs.size(), 3u);
  EXPECT_EQ(docs[0].requests[0].context, "Making a sandwich: A girl puts bread on a plate. She");
  EXPECT_EQ(docs[0].requests[3].continuation, " sings to the bread .");
  EXPECT_EQ(docs[1].requests[0].context,
            "Home and Garden: How to water a plant. Fill a cup with water. Then pour it slowly");
  EXPECT_EQ(docs[1].requests[0].continuation, " on the soil.  Stop when it is wet.");
  EXPECT_EQ(docs[1].choice_len[0], 34.0);
  EXPECT_EQ(docs[2].requests[0].context, "Playing ball: Tim kicks the red ball.");  // empty ctx_b, stripped
  EXPECT_EQ(docs[2].requests.size(), 4u);
  EXPECT_EQ(docs[0].gold, 0);
}

TEST(QaTasks, Arc) {
  const auto e = load_task_file(QaTask::arc_easy, qa("arc_easy"), 0);
  ASSERT_EQ(e.size(), 3u);
  EXPECT_EQ(e[0].requests[0].context, "Question: Which animal says moo?\nAnswer:");
  EXPECT_EQ(e[0].requests[0].continuation, " cow");
  EXPECT_EQ(e[1].gold, 1);  // answerKey "2" among labels "1".."3"
  EXPECT_EQ(e[2].requests.size(), 5u);
  const auto c = load_task_file(QaTask::arc_challenge, qa("arc_challenge"), 1);
  ASSERT_EQ(c.size(), 1u);  // --limit
  EXPECT_EQ(c[0].requests[1].continuation, " The ice is sad.");
}

TEST(QaTasks, WinograndePartialScoring) {
  const auto docs = load_task_file(QaTask::winogrande, qa("winogrande"), 0);
  ASSERT_EQ(docs.size(), 3u);
  EXPECT_EQ(docs[0].requests[0].context, "The dog chased the cat because the dog");
  EXPECT_EQ(docs[0].requests[1].context, "The dog chased the cat because the cat");
  EXPECT_EQ(docs[0].requests[0].continuation, " was hungry.");
  EXPECT_EQ(docs[0].requests[1].continuation, " was hungry.");
  EXPECT_EQ(docs[0].gold, 0);
  EXPECT_EQ(docs[1].gold, 1);
  EXPECT_EQ(docs[2].requests[1].context, "The ball did not fit in the box because the box");
  EXPECT_TRUE(docs[0].choice_len.empty());
}

TEST(QaTasks, Lambada) {
  const auto docs = load_task_file(QaTask::lambada_openai, qa("lambada_openai"), 0);
  ASSERT_EQ(docs.size(), 3u);
  EXPECT_EQ(docs[1].requests[0].context,
            "Tom had a big red truck. He played with his truck every day. Tom loved");
  EXPECT_EQ(docs[1].requests[0].continuation, " his");
  EXPECT_EQ(docs[2].requests[0].context, "");  // no space: empty context (BOS stands in)
  EXPECT_EQ(docs[2].requests[0].continuation, " hello");
  EXPECT_EQ(docs[0].gold, -1);
}

void expect_error(QaTask t, const std::string& row, const std::string& want) {
  try {
    build_doc(t, nlohmann::json::parse(row), "x.jsonl:7");
    ADD_FAILURE() << "no error for " << row;
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(want), std::string::npos) << e.what();
    EXPECT_EQ(std::string(e.what()).find('\n'), std::string::npos) << e.what();
  }
}

TEST(QaTasks, BadRowsNameFileLineAndField) {
  expect_error(QaTask::piqa, R"({"goal":"g","sol1":"a","label":0})", "x.jsonl:7: field 'sol2' is missing");
  expect_error(QaTask::piqa, R"({"goal":"g","sol1":"a","sol2":3,"label":0})",
               "x.jsonl:7: field 'sol2': expected a string (found number)");
  expect_error(QaTask::piqa, R"({"goal":"g","sol1":"a","sol2":"b","label":2})", "field 'label': label 2 is out");
  expect_error(QaTask::hellaswag, R"({"activity_label":"a","ctx_a":"b","ctx_b":"c","endings":["x",1],"label":0})",
               "field 'endings[1]'");
  expect_error(QaTask::arc_easy,
               R"({"question":"q","choices":{"text":["a","b"],"label":["A","B"]},"answerKey":"C"})",
               "field 'answerKey'");
  expect_error(QaTask::winogrande, R"({"sentence":"no blank","option1":"a","option2":"b","answer":"1"})",
               "field 'sentence'");
  expect_error(QaTask::winogrande, R"({"sentence":"a _ b","option1":"a","option2":"b","answer":"3"})",
               "field 'answer'");
  expect_error(QaTask::lambada_openai, R"([1,2])", "expected a JSON object");
}

TEST(QaTasks, FileErrors) {
  test::TempDir dir;
  write_file_atomic(dir.file("piqa.jsonl"), "\n{\"goal\":\"g\",\"sol1\":\"a\",\"sol2\":\"b\",\"label\":0}\n{oops\n");
  try {
    load_task_file(QaTask::piqa, dir.file("piqa.jsonl"), 0);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("piqa.jsonl:3: not valid JSON"), std::string::npos) << e.what();
  }
  EXPECT_THROW(load_task_file(QaTask::piqa, dir.file("none.jsonl"), 0), Error);
  EXPECT_THROW(parse_task("mmlu"), Error);
  EXPECT_EQ(parse_task("arc_challenge"), QaTask::arc_challenge);
}

}  // namespace
}  // namespace fq::eval
