// The subcommands of the `flatquant` binary; one file each under tools/.
#pragma once
#include <CLI/CLI.hpp>
#include <functional>

namespace fq::cli {

// Each register_* adds its subcommand to `app` and returns the function to run when it is selected.
using Runner = std::function<int()>;
Runner register_convert(CLI::App& app);
Runner register_inspect(CLI::App& app);
Runner register_ppl(CLI::App& app);
Runner register_eval(CLI::App& app);
Runner register_generate(CLI::App& app);
Runner register_chat(CLI::App& app);
Runner register_calibrate(CLI::App& app);
Runner register_bench(CLI::App& app);
Runner register_plot(CLI::App& app);

}  // namespace fq::cli
