// Errors at the boundaries of turbokv (files, flags, user input).
//
// Every message names what was wrong (a file, a key, a flag) and what was
// expected. Internal invariants use TKV_ASSERT, which stays on in release
// builds: a broken invariant in a cache or kernel must never turn into
// silently wrong logits.
#pragma once

#include <stdexcept>
#include <string>

namespace turbokv {

// The one exception type thrown for bad input. Callers at the top level
// (the CLI) print what() and exit with a non-zero status.
class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message) : std::runtime_error(message) {}
};

[[noreturn]] void assert_fail(const char* expr, const char* file, int line, const char* msg);

}  // namespace turbokv

#define TKV_ASSERT(cond, msg)                                         \
  do {                                                                \
    if (!(cond)) ::turbokv::assert_fail(#cond, __FILE__, __LINE__, msg); \
  } while (0)
