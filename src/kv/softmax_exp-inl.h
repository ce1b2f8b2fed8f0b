// The softmax's exponential for the Highway attention kernels (the FP16
// cache's, attention_hwy.cpp, and the TurboQuant caches' fused kernels,
// turbo_attention-inl.h), compiled once per instruction set: include it
// from a file that includes hwy/foreach_target.h.
#if defined(TURBOKV_KV_SOFTMAX_EXP_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef TURBOKV_KV_SOFTMAX_EXP_INL_H_
#undef TURBOKV_KV_SOFTMAX_EXP_INL_H_
#else
#define TURBOKV_KV_SOFTMAX_EXP_INL_H_
#endif

#include "hwy/highway.h"

HWY_BEFORE_NAMESPACE();
namespace turbokv::kv::detail::HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// e^x for x <= 0 (a score minus the running max), as 2^t with
// t = x log2(e): 2^round(t) through the exponent field, 2^f (|f| <= 1/2)
// by its degree-6 Taylor polynomial. Relative error about 2e-7 (the
// polynomial's 1.3e-7 and the rounding of t, which grows to 5e-6 only as
// the result nears 1e-38); 14 instructions where hn::Exp, made for any x,
// takes about 22. Below x = -87.3 it returns 2^-126 (1.2e-38) rather than
// 0, which beside the block's largest weight, 1, is the same.
template <class DF>
HWY_INLINE hn::Vec<DF> ExpNonPositive(DF df, hn::Vec<DF> x) {
  const hn::RebindToSigned<DF> di;
  const auto t = hn::Max(hn::Mul(x, hn::Set(df, 1.44269504088896341f)), hn::Set(df, -126.0f));
  const auto n = hn::Round(t);
  const auto f = hn::Sub(t, n);
  // ln(2)^k / k!, k = 6 .. 0
  auto p = hn::Set(df, 1.5403530393381609e-4f);
  p = hn::MulAdd(p, f, hn::Set(df, 1.3333558146428443e-3f));
  p = hn::MulAdd(p, f, hn::Set(df, 9.6181291076284772e-3f));
  p = hn::MulAdd(p, f, hn::Set(df, 5.5504108664821580e-2f));
  p = hn::MulAdd(p, f, hn::Set(df, 0.24022650695910071f));
  p = hn::MulAdd(p, f, hn::Set(df, 0.69314718055994531f));
  p = hn::MulAdd(p, f, hn::Set(df, 1.0f));
  const auto two_n = hn::BitCast(df, hn::ShiftLeft<23>(hn::Add(hn::ConvertTo(di, n), hn::Set(di, 127))));
  return hn::Mul(p, two_n);
}

}  // namespace turbokv::kv::detail::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#endif  // per-target include guard
