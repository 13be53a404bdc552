// Errors: user and I/O errors throw fq::Error with a one-line message that names the file and the
// tensor or field, what was expected and what was found. Broken invariants abort (FQ_ASSERT).
#pragma once
#include <fmt/format.h>

#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <utility>

namespace fq {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

template <typename... Args>
[[noreturn]] void fail(fmt::format_string<Args...> f, Args&&... args) {
  throw Error(fmt::format(f, std::forward<Args>(args)...));
}

}  // namespace fq

#define FQ_CHECK(cond, ...)     \
  do {                          \
    if (!(cond)) {              \
      ::fq::fail(__VA_ARGS__);  \
    }                           \
  } while (0)

#define FQ_ASSERT(cond)                                                                   \
  do {                                                                                    \
    if (!(cond)) {                                                                        \
      std::fprintf(stderr, "flatquant: internal error: %s at %s:%d\n", #cond, __FILE__, __LINE__); \
      std::abort();                                                                       \
    }                                                                                     \
  } while (0)
