// ops/activation.h, compiled once per instruction set by Highway.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "ops/activation_hwy.cpp"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"
#include "hwy/contrib/math/math-inl.h"

#include <cmath>

#include "ops/activation.h"

HWY_BEFORE_NAMESPACE();
namespace turbokv::ops {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

void SwigluRange(float* HWY_RESTRICT gate, const float* HWY_RESTRICT up, size_t n) {
  const hn::ScalableTag<float> df;
  const size_t N = hn::Lanes(df);
  const auto one = hn::Set(df, 1.0f);
  size_t i = 0;
  for (; i + N <= n; i += N) {
    const auto g = hn::LoadU(df, gate + i);
    const auto silu = hn::Div(g, hn::Add(one, hn::Exp(df, hn::Neg(g))));
    hn::StoreU(hn::Mul(silu, hn::LoadU(df, up + i)), df, gate + i);
  }
  for (; i < n; ++i) gate[i] = gate[i] / (1.0f + std::exp(-gate[i])) * up[i];
}

}  // namespace HWY_NAMESPACE
}  // namespace turbokv::ops
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace turbokv::ops {
HWY_EXPORT(SwigluRange);

void swiglu(float* gate, const float* up, size_t n, ThreadPool& pool) {
  constexpr size_t kGrain = 4096;  // elements per claimed range: a few µs of work
  const auto fn = HWY_DYNAMIC_DISPATCH(SwigluRange);
  if (n <= kGrain) {
    fn(gate, up, n);
    return;
  }
  pool.parallel_for(n, kGrain, [&](size_t b, size_t e, int) { fn(gate + b, up + b, e - b); });
}

void swiglu_ref(float* gate, const float* up, size_t n) {
  for (size_t i = 0; i < n; ++i) gate[i] = gate[i] / (1.0f + std::exp(-gate[i])) * up[i];
}
}  // namespace turbokv::ops
#endif
