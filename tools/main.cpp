// flatquant: one binary, one file per subcommand. Errors print one line and exit 1.
#include <cstdio>
#include <exception>
#include <utility>
#include <vector>

#include "commands.h"
#include "flatquant/error.h"

int main(int argc, char** argv) {
  CLI::App app{"flatquant: FlatQuant W4A4KV4 quantization and runtime for Llama-family models"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "flatquant 0.1.0");
  std::vector<std::pair<CLI::App*, fq::cli::Runner>> cmds;
  auto add = [&](fq::cli::Runner (*reg)(CLI::App&)) {
    const size_t before = app.get_subcommands({}).size();
    auto run = reg(app);
    cmds.emplace_back(app.get_subcommands({}).at(before), std::move(run));
  };
  add(fq::cli::register_convert);
  add(fq::cli::register_inspect);
  add(fq::cli::register_ppl);
  add(fq::cli::register_eval);
  add(fq::cli::register_generate);
  add(fq::cli::register_chat);
  add(fq::cli::register_calibrate);
  add(fq::cli::register_bench);
  add(fq::cli::register_plot);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int rc = app.exit(e);
    return rc == 0 ? 0 : 1;
  }
  try {
    for (auto& [sub, run] : cmds)
      if (sub->parsed()) return run();
  } catch (const fq::Error& e) {
    std::fprintf(stderr, "flatquant: error: %s\n", e.what());
    return 1;
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "flatquant: error: out of memory\n");
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "flatquant: error: %s\n", e.what());
    return 1;
  }
  return 1;
}
