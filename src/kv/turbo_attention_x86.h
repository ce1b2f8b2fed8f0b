// What the kernel files built for one x86 extension share
// (turbo_attention_half.cpp, turbo_attention_int8.cpp): the CPU check's
// common part, the fp16 field read and the unrolling macros. Include it only
// from those files (compiled with -mf16c and AVX-512 flags); its functions
// have internal linkage, so no copy built for one extension stands in for
// another's.
#pragma once

// GCC 12's AVX-512 headers make their "undefined" vectors by initialising
// a variable from itself (GCC bug 105593), which -Wall reports wherever
// they inline (the 256-to-512-bit casts and conversions).
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#include <cpuid.h>
#include <immintrin.h>

#include <cstdint>
#include <cstring>

// Loops over registers (records, heads, index vectors) must unroll, or the
// accumulators they index go to the stack.
#define TURBOKV_UNROLL _Pragma("GCC unroll 16")
// Helpers on registers must inline too (a call spills every accumulator).
#define TURBOKV_INLINE inline __attribute__((always_inline))

namespace turbokv::kv::detail {
namespace {

// cpuid leaf 7 (subleaf 0): the extended feature flags.
struct Leaf7 {
  unsigned ebx = 0, ecx = 0, edx = 0;
};

// Leaf 7 of this CPU, where the OS saves the AVX-512 state (OSXSAVE, and
// XCR0 with SSE, AVX, opmask and both zmm halves); false otherwise.
inline bool avx512_leaf7(Leaf7& out) {
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
  out = {b, c, d};
  if (!__get_cpuid(1, &a, &b, &c, &d) || !((c >> 27) & 1u)) return false;  // OSXSAVE
  return (_xgetbv(0) & 0xE6) == 0xE6;
}

// The fp16 field at p (unaligned) as float.
TURBOKV_INLINE float HalfAt(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, sizeof(h));
  return _cvtsh_ss(h);
}

}  // namespace
}  // namespace turbokv::kv::detail
