#include "util/error.h"

#include <cstdio>
#include <cstdlib>

namespace turbokv {

void assert_fail(const char* expr, const char* file, int line, const char* msg) {
  std::fprintf(stderr, "turbokv: internal error at %s:%d: %s (%s)\n", file, line, msg, expr);
  std::abort();
}

}  // namespace turbokv
