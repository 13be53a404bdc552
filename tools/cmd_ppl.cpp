#include "commands.h"
#include "flatquant/error.h"

namespace fq::cli {

Runner register_ppl(CLI::App& app) {
  auto* sub = app.add_subcommand("ppl", "(not built yet)");
  (void)sub;
  return []() -> int { fail("ppl: not implemented yet"); };
}

}  // namespace fq::cli
