#include "commands.h"
#include "flatquant/error.h"

namespace fq::cli {

Runner register_convert(CLI::App& app) {
  auto* sub = app.add_subcommand("convert", "(not built yet)");
  (void)sub;
  return []() -> int { fail("convert: not implemented yet"); };
}

}  // namespace fq::cli
