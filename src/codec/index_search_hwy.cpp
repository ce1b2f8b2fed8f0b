// count_below (index_search.h), compiled once per instruction set by Highway.
// One pass per boundary over a vector of scaled values: a compare and a
// subtract of the all-ones mask, so B-bit indices cost 2^B - 1 vector
// compares per N elements, without branches (fine up to 5 bits; wider
// codebooks use the encoder's binary search).
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "codec/index_search_hwy.cpp"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"

#include "codec/index_search.h"

HWY_BEFORE_NAMESPACE();
namespace turbokv::codec::detail {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

void CountBelow(const float* HWY_RESTRICT t, int n_t, const float* HWY_RESTRICT x, float scale, int n,
                uint8_t* HWY_RESTRICT idx) {
  const hn::ScalableTag<float> df;
  const hn::RebindToSigned<decltype(df)> di;
  const hn::Rebind<uint8_t, decltype(di)> du8;
  const int N = int(hn::Lanes(df));
  const auto vscale = hn::Set(df, scale);
  int i = 0;
  for (; i + N <= n; i += N) {
    const auto u = hn::Mul(hn::LoadU(df, x + i), vscale);  // the same product as the scalar x[i] * scale
    auto count = hn::Zero(di);
    for (int j = 0; j < n_t; ++j) {
      count = hn::Sub(count, hn::VecFromMask(di, hn::RebindMask(di, hn::Lt(hn::Set(df, t[j]), u))));
    }
    hn::StoreU(hn::DemoteTo(du8, count), du8, idx + i);
  }
  for (; i < n; ++i) {
    const float u = x[i] * scale;
    int count = 0;
    for (int j = 0; j < n_t; ++j) count += t[j] < u ? 1 : 0;
    idx[i] = uint8_t(count);
  }
}

}  // namespace HWY_NAMESPACE
}  // namespace turbokv::codec::detail
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace turbokv::codec::detail {
HWY_EXPORT(CountBelow);

void count_below(const float* t, int n_t, const float* x, float scale, int n, uint8_t* idx) {
  HWY_DYNAMIC_DISPATCH(CountBelow)(t, n_t, x, scale, n, idx);
}
}  // namespace turbokv::codec::detail
#endif
