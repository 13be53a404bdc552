#include "eval/plot.h"

#include <fmt/format.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <sstream>

#include "core/fs.h"
#include "flatquant/error.h"

namespace fq::plot {

namespace {

// A single-quoted shell word.
std::string sh_quote(const std::string& s) {
  std::string r = "'";
  for (char c : s) r += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return r + "'";
}

// A single-quoted gnuplot string ('' is a literal quote inside).
std::string gp_quote(const std::string& s) {
  std::string r = "'";
  for (char c : s) r += c == '\'' ? std::string("''") : std::string(1, c);
  return r + "'";
}

bool executable(const std::string& p) { return access(p.c_str(), X_OK) == 0 && !is_directory(p); }

std::string find_gnuplot() {
  if (const char* env = std::getenv("FLATQUANT_GNUPLOT"); env && *env) return executable(env) ? env : "";
  const char* path = std::getenv("PATH");
  std::stringstream ss(path ? path : "");
  std::string dir;
  while (std::getline(ss, dir, ':')) {
    if (dir.empty()) continue;
    const std::string p = path_join(dir, "gnuplot");
    if (executable(p)) return p;
  }
  return "";
}

std::string strip_ext(const std::string& p) {
  const size_t dot = p.rfind('.'), slash = p.rfind('/');
  return dot == std::string::npos || (slash != std::string::npos && dot < slash) ? p : p.substr(0, dot);
}

std::string first_line(const std::string& s) {
  size_t b = 0;
  while (b < s.size() && (s[b] == '\n' || s[b] == ' ')) ++b;
  const size_t e = s.find('\n', b);
  return s.substr(b, e == std::string::npos ? std::string::npos : e - b);
}

// Runs `script` (which must write to `tmp_png`), then renames tmp_png to png, so a failed run leaves no PNG.
void run_script(const std::string& png, const std::string& tmp_png, const std::string& script) {
  const std::string gp = gnuplot_binary();
  const std::string base = fmt::format("{}.tmp.{}", png, getpid());
  const std::string script_path = base + ".gp", err_path = base + ".err";
  write_file_atomic(script_path, script);
  const std::string cmd = sh_quote(gp) + " " + sh_quote(script_path) + " </dev/null >/dev/null 2>" + sh_quote(err_path);
  const int st = std::system(cmd.c_str());
  const std::string err = file_exists(err_path) ? read_file(err_path) : "";
  std::remove(script_path.c_str());
  std::remove(err_path.c_str());
  const bool ok = st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0 && file_exists(tmp_png);
  if (!ok) {
    std::remove(tmp_png.c_str());
    fail("{}: gnuplot failed (exit status {}): {}", png, WIFEXITED(st) ? WEXITSTATUS(st) : -1,
         err.empty() ? std::string("no message") : first_line(err));
  }
  FQ_CHECK(std::rename(tmp_png.c_str(), png.c_str()) == 0, "{}: cannot rename {} into place", png, tmp_png);
}

// Terminal, output and common settings.
std::string preamble(const std::string& tmp_png, Size size) {
  FQ_CHECK(size.width >= 100 && size.height >= 100, "plot size {}x{} is too small (at least 100x100)", size.width,
           size.height);
  // pngcairo when this gnuplot has it (antialiased), else the libgd png terminal; same pixel size either way.
  return fmt::format(
      "if (strstrt(GPVAL_TERMINALS, 'pngcairo') > 0) {{\n"
      "  set terminal pngcairo size {0},{1} noenhanced font 'sans,10'\n"
      "}} else {{\n"
      "  set terminal png size {0},{1} noenhanced\n"
      "}}\n"
      "set output {2}\n"
      "set datafile separator ','\n"
      "set datafile missing 'NaN'\n"
      "set key autotitle columnhead\n"
      "set grid\n",
      size.width, size.height, gp_quote(tmp_png));
}

}  // namespace

std::string csv_path_for(const std::string& png) { return strip_ext(png) + ".csv"; }

std::string table_csv(const Table& t) {
  std::string s;
  for (size_t i = 0; i < t.columns.size(); ++i) s += (i ? "," : "") + t.columns[i];
  s += "\n";
  for (const auto& r : t.rows) {
    FQ_CHECK(r.size() == t.columns.size(), "plot table: a row has {} cells (expected {})", r.size(),
             t.columns.size());
    for (size_t i = 0; i < r.size(); ++i) {
      if (i) s += ",";
      s += std::isfinite(r[i]) ? fmt::format("{:.9g}", r[i]) : std::string("NaN");
    }
    s += "\n";
  }
  return s;
}

Table parse_table_csv(const std::string& text, const std::string& what) {
  Table t;
  std::stringstream ss(text);
  std::string line;
  int64_t ln = 0;
  while (std::getline(ss, line)) {
    ++ln;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty()) continue;
    std::vector<std::string> cells;
    std::stringstream ls(line);
    std::string c;
    while (std::getline(ls, c, ',')) cells.push_back(c);
    if (!line.empty() && line.back() == ',') cells.emplace_back();
    if (t.columns.empty()) {
      t.columns = cells;
      continue;
    }
    FQ_CHECK(cells.size() == t.columns.size(), "{}: line {} has {} fields (expected {})", what, ln, cells.size(),
             t.columns.size());
    std::vector<double> row;
    for (const auto& cell : cells) {
      char* end = nullptr;
      const double v = std::strtod(cell.c_str(), &end);
      FQ_CHECK(!cell.empty() && end && *end == '\0', "{}: line {}: '{}' is not a number", what, ln, cell);
      row.push_back(v);
    }
    t.rows.push_back(std::move(row));
  }
  FQ_CHECK(!t.columns.empty(), "{}: empty table (no header)", what);
  return t;
}

std::string gnuplot_binary() {
  const std::string p = find_gnuplot();
  FQ_CHECK(!p.empty(),
           "gnuplot not found ({}): install it (Debian: apt-get install gnuplot-nox) or set FLATQUANT_GNUPLOT",
           std::getenv("FLATQUANT_GNUPLOT") ? "FLATQUANT_GNUPLOT" : "PATH");
  return p;
}

bool gnuplot_available() { return !find_gnuplot().empty(); }

void line_figure(const std::string& png, const Table& t, const std::string& title, const std::vector<Panel>& panels,
                 Size size) {
  FQ_CHECK(!panels.empty(), "{}: no panel to plot", png);
  FQ_CHECK(!t.rows.empty(), "{}: no data to plot", png);
  gnuplot_binary();  // fail before writing anything
  const std::string csv = csv_path_for(png);
  write_file_atomic(csv, table_csv(t));
  const std::string tmp = fmt::format("{}.tmp.{}.png", strip_ext(png), getpid());
  std::string s = preamble(tmp, size);
  s += fmt::format("set multiplot layout 1,{} title {} font ',12'\n", panels.size(), gp_quote(title));
  for (const Panel& p : panels) {
    FQ_CHECK(p.columns.size() == p.legends.size() && !p.columns.empty(), "{}: panel '{}' has no curves", png,
             p.title);
    s += fmt::format("set title {}\nset xlabel {}\nset ylabel {}\n", gp_quote(p.title), gp_quote(p.xlabel),
                     gp_quote(p.ylabel));
    s += p.logy ? "set logscale y\nset format y '%g'\n" : "unset logscale y\nset format y '%g'\n";
    s += p.columns.size() > 12 ? "set key outside right top font ',8'\n" : "set key top right\n";
    s += "plot ";
    for (size_t i = 0; i < p.columns.size(); ++i) {
      FQ_CHECK(p.columns[i] > 0 && p.columns[i] < t.columns.size(), "{}: column {} out of range", png, p.columns[i]);
      s += fmt::format("{}{} using 1:{} with lines linewidth 2 title {}", i ? ", \\\n     " : "",
                       i ? std::string("''") : gp_quote(csv), p.columns[i] + 1, gp_quote(p.legends[i]));
    }
    s += "\n";
  }
  s += "unset multiplot\nset output\n";
  run_script(png, tmp, s);
}

void bar_figure(const std::string& png, const Table& t, const std::string& title, const std::string& xlabel,
                const std::string& ylabel, bool logy, Size size) {
  FQ_CHECK(t.columns.size() >= 2 && !t.rows.empty(), "{}: no data to plot", png);
  gnuplot_binary();
  const std::string csv = csv_path_for(png);
  write_file_atomic(csv, table_csv(t));
  const std::string tmp = fmt::format("{}.tmp.{}.png", strip_ext(png), getpid());
  std::string s = preamble(tmp, size);
  s += fmt::format("set title {} font ',12'\nset xlabel {}\nset ylabel {}\n", gp_quote(title), gp_quote(xlabel),
                   gp_quote(ylabel));
  s += "set style data histograms\nset style histogram clustered gap 1\nset style fill solid 0.85 border -1\n"
       "set boxwidth 0.9\nset key top left\nset grid noxtics\n";
  // Bars start at the bottom of the axis: on a log axis that is below the smallest value.
  if (logy) s += "set logscale y\nset format y '%g'\n";
  else s += "set yrange [0:*]\n";
  s += "plot ";
  for (size_t c = 1; c < t.columns.size(); ++c)
    s += fmt::format("{}{} using {}:xtic(stringcolumn(1)) title {}", c > 1 ? ", \\\n     " : "",
                     c > 1 ? std::string("''") : gp_quote(csv), c + 1, gp_quote(t.columns[c]));
  s += "\nset output\n";
  run_script(png, tmp, s);
}

}  // namespace fq::plot
