// flatquant: one binary, one file per subcommand. Errors print one line and exit 1.
#include <cstdio>
#include <exception>
#include <string>
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
    // --help / --version print as CLI11 does; a bad command line is one error line like every other error
    // (CLI11's own message adds a second "Run with --help" line).
    if (e.get_exit_code() == 0) return app.exit(e);
    std::string where = "flatquant";
    for (const CLI::App* sub : app.get_subcommands())
      if (sub->parsed()) where += " " + sub->get_name();
    std::string msg = e.what();
    for (char& c : msg)
      if (c == '\n') c = ' ';
    std::fprintf(stderr, "flatquant: error: %s (see %s --help)\n", msg.c_str(), where.c_str());
    return 1;
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
