// The vectorized SwiGLU against its scalar reference.
#include "ops/activation.h"

#include <cmath>
#include <vector>

#include <gtest/gtest.h>

#include "util/rng.h"

namespace turbokv::ops {
namespace {

TEST(Activation, SwigluMatchesReferenceOnOddSizes) {
  ThreadPool pool(2);
  Rng rng(1);
  for (size_t n : {size_t(1), size_t(15), size_t(17), size_t(1023), size_t(40000)}) {
    std::vector<float> gate(n), up(n);
    for (size_t i = 0; i < n; ++i) {
      gate[i] = float(rng.normal()) * 6.0f;  // both tails of silu, and saturation
      up[i] = float(rng.normal());
    }
    gate[0] = -100.0f;  // exp overflows to inf: silu is -0
    std::vector<float> fast = gate, ref = gate;
    swiglu(fast.data(), up.data(), n, pool);
    swiglu_ref(ref.data(), up.data(), n);
    // Tolerance named after what it bounds: the vector exp's few-ulp error.
    constexpr float kExpUlps = 8 * 1.2e-7f;
    for (size_t i = 0; i < n; ++i) {
      ASSERT_NEAR(fast[i], ref[i], kExpUlps * std::abs(ref[i]) + 1e-30f) << "n " << n << " i " << i;
    }
  }
}

}  // namespace
}  // namespace turbokv::ops
