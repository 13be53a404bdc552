// Figures as PNG through gnuplot (docs/plots.md): every figure is a CSV table (written beside the PNG, the
// exact data plotted) and a gnuplot script run on it. The script goes to a temporary file and gnuplot is run
// as a child process (FLATQUANT_GNUPLOT names the binary, else `gnuplot` on PATH).
#pragma once
#include <string>
#include <vector>

namespace fq::plot {

// Columns of numbers with a header; NaN cells are written "NaN" (gnuplot skips them).
struct Table {
  std::vector<std::string> columns;
  std::vector<std::vector<double>> rows;  // each rows[i].size() == columns.size()
};
std::string table_csv(const Table& t);
// Parses what table_csv writes (one line error naming `what` on a malformed cell).
Table parse_table_csv(const std::string& text, const std::string& what);

// One plot area: curves are table columns (by index) against column 0, with their legend titles.
struct Panel {
  std::string title, xlabel, ylabel;
  std::vector<size_t> columns;
  std::vector<std::string> legends;  // same size as columns
  bool logy = true;
};

struct Size {
  int width = 1000, height = 600;
};

// The gnuplot binary (absolute path) or fq::Error: "gnuplot not found ...".
std::string gnuplot_binary();
bool gnuplot_available();

// Writes `png` and its CSV (`png` with .csv instead of .png): panels side by side under `title`.
void line_figure(const std::string& png, const Table& t, const std::string& title, const std::vector<Panel>& panels,
                 Size size = {});

// Clustered bar chart: one group per row (labelled by column 0, printed as an integer), one bar per other
// column (legend = column name). Writes `png` and its CSV.
void bar_figure(const std::string& png, const Table& t, const std::string& title, const std::string& xlabel,
                const std::string& ylabel, bool logy, Size size = {});

// `png` with the extension replaced by .csv.
std::string csv_path_for(const std::string& png);

}  // namespace fq::plot
