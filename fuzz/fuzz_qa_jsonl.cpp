// QA task files (JSONL rows of piqa, hellaswag, arc, winogrande, lambada): the same bytes read as each task.
#include "eval/qa_tasks.h"
#include "fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = fq::fuzz::input_file(data, size, "task.jsonl");
  for (fq::eval::QaTask t : fq::eval::all_tasks()) {
    fq::fuzz::expect_ok_or_error([&] {
      for (const fq::eval::QaDoc& d : fq::eval::load_task_file(t, path, 0)) {
        if (d.requests.empty()) std::abort();
        if (d.gold < -1 || d.gold >= (int)d.requests.size()) std::abort();
      }
    });
  }
  return 0;
}
