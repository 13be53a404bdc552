#include "commands.h"
#include "flatquant/error.h"

namespace fq::cli {

Runner register_inspect(CLI::App& app) {
  auto* sub = app.add_subcommand("inspect", "(not built yet)");
  (void)sub;
  return []() -> int { fail("inspect: not implemented yet"); };
}

}  // namespace fq::cli
