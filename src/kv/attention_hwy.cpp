// SIMD attention of a group of query heads over an FP16/F32 dense cache, compiled
// once per instruction set by Highway and chosen at run time. Same algorithm
// as the scalar reference in dense_cache.cpp (blocked online softmax), with
// the q·k dots and the value updates vectorized; head sizes that are not a
// multiple of the vector length use the reference.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kv/attention_hwy.cpp"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"

#include <algorithm>
#include <cmath>
#include <optional>

#include "kv/attention_kernels.h"
#include "kv/online_softmax.h"
#include "kv/softmax_exp-inl.h"
#include "util/error.h"

HWY_BEFORE_NAMESPACE();
namespace turbokv::kv::detail {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

template <class DF>
HWY_INLINE hn::Vec<DF> LoadRow(DF df, const float* p) {
  return hn::LoadU(df, p);
}
template <class DF>
HWY_INLINE hn::Vec<DF> LoadRow(DF df, const fp16_t* p) {
  const hn::Rebind<hwy::float16_t, DF> dh;
  return hn::PromoteTo(df, hn::LoadU(dh, reinterpret_cast<const hwy::float16_t*>(p)));
}

// Returns false (doing nothing) if head_dim is not a multiple of the lanes.
// n_q query heads that read the same kv head (GQA) go through each block of
// kScoreBlock positions together, so the block's keys and values are read
// from memory once and from L1 for the other heads. Per head and block:
// scores four rows at a time (four independent dot products, then their lane
// sums), one online-softmax update (vectorized exp), then the weighted values
// added one output vector at a time with the vector held in a register across
// the block. Every score and every output element sees its terms in position
// order, as the reference does, whatever n_q is.
template <class DF, typename T>
bool AttendGroupD(DF df, const float* HWY_RESTRICT q, int n_q, const T* HWY_RESTRICT keys,
                  const T* HWY_RESTRICT values, int n_pos, int head_dim, float scale, float* HWY_RESTRICT out) {
  const int N = int(hn::Lanes(df));
  if (head_dim % N != 0) return false;
  std::optional<SoftmaxState> states[kMaxGroupHeads];
  for (int h = 0; h < n_q; ++h) states[h].emplace(out + size_t(h) * head_dim, head_dim);
  float scores[kScoreBlock];
  for (int p0 = 0; p0 < n_pos; p0 += kScoreBlock) {
    const int nb = std::min(kScoreBlock, n_pos - p0);
    const T* kb = keys + size_t(p0) * head_dim;
    const T* vb = values + size_t(p0) * head_dim;
    for (int h = 0; h < n_q; ++h) {
      const float* qh = q + size_t(h) * head_dim;
      float* oh = out + size_t(h) * head_dim;
      SoftmaxState& state = *states[h];
      int j = 0;
      for (; j + 4 <= nb; j += 4) {
        const T* k0 = kb + size_t(j) * head_dim;
        const T* k1 = k0 + head_dim;
        const T* k2 = k1 + head_dim;
        const T* k3 = k2 + head_dim;
        auto a0 = hn::Zero(df), a1 = hn::Zero(df), a2 = hn::Zero(df), a3 = hn::Zero(df);
        for (int i = 0; i < head_dim; i += N) {
          const auto qv = hn::LoadU(df, qh + i);
          a0 = hn::MulAdd(qv, LoadRow(df, k0 + i), a0);
          a1 = hn::MulAdd(qv, LoadRow(df, k1 + i), a1);
          a2 = hn::MulAdd(qv, LoadRow(df, k2 + i), a2);
          a3 = hn::MulAdd(qv, LoadRow(df, k3 + i), a3);
        }
        scores[j] = scale * hn::GetLane(hn::SumOfLanes(df, a0));
        scores[j + 1] = scale * hn::GetLane(hn::SumOfLanes(df, a1));
        scores[j + 2] = scale * hn::GetLane(hn::SumOfLanes(df, a2));
        scores[j + 3] = scale * hn::GetLane(hn::SumOfLanes(df, a3));
      }
      for (; j < nb; ++j) {
        const T* k = kb + size_t(j) * head_dim;
        auto acc = hn::Zero(df);
        for (int i = 0; i < head_dim; i += N) acc = hn::MulAdd(hn::LoadU(df, qh + i), LoadRow(df, k + i), acc);
        scores[j] = scale * hn::GetLane(hn::SumOfLanes(df, acc));
      }
      // Block max, then the weights exp(s - m) and their sum, N at a time.
      int t = 0;
      auto vmax = hn::Set(df, -INFINITY);
      for (; t + N <= nb; t += N) vmax = hn::Max(vmax, hn::LoadU(df, scores + t));
      float block_max = hn::GetLane(hn::MaxOfLanes(df, vmax));
      for (; t < nb; ++t) block_max = std::max(block_max, scores[t]);
      const float m = state.rescale_for(block_max);
      const auto vm = hn::Set(df, m);
      auto vsum = hn::Zero(df);
      for (t = 0; t + N <= nb; t += N) {
        const auto w = ExpNonPositive(df, hn::Sub(hn::LoadU(df, scores + t), vm));
        hn::StoreU(w, df, scores + t);  // now the weights
        vsum = hn::Add(vsum, w);
      }
      float sum = hn::GetLane(hn::SumOfLanes(df, vsum));
      for (; t < nb; ++t) {
        scores[t] = std::exp(scores[t] - m);
        sum += scores[t];
      }
      state.d += sum;
      for (int i = 0; i < head_dim; i += N) {
        auto acc = hn::LoadU(df, oh + i);
        for (int t = 0; t < nb; ++t) {
          acc = hn::MulAdd(hn::Set(df, scores[t]), LoadRow(df, vb + size_t(t) * head_dim + i), acc);
        }
        hn::StoreU(acc, df, oh + i);
      }
    }
  }
  for (int h = 0; h < n_q; ++h) states[h]->normalize();
  return true;
}

// The widest vector (up to 16 floats) that divides head_dim: 16 lanes for
// head_dim 128 on AVX-512, 8 for head_dim 8 (stories260K).
template <typename T>
bool AttendGroupT(const float* q, int n_q, const T* keys, const T* values, int n_pos, int head_dim, float scale,
                  float* out) {
  return AttendGroupD(hn::CappedTag<float, 16>(), q, n_q, keys, values, n_pos, head_dim, scale, out) ||
         AttendGroupD(hn::CappedTag<float, 8>(), q, n_q, keys, values, n_pos, head_dim, scale, out) ||
         AttendGroupD(hn::CappedTag<float, 4>(), q, n_q, keys, values, n_pos, head_dim, scale, out);
}

bool AttendGroupF16(const float* q, int n_q, const fp16_t* keys, const fp16_t* values, int n_pos, int head_dim,
                    float scale, float* out) {
  return AttendGroupT(q, n_q, keys, values, n_pos, head_dim, scale, out);
}
bool AttendGroupF32(const float* q, int n_q, const float* keys, const float* values, int n_pos, int head_dim,
                    float scale, float* out) {
  return AttendGroupT(q, n_q, keys, values, n_pos, head_dim, scale, out);
}

// vcvtps2ph rounds to nearest even (MXCSR's default), as f32_to_fp16 does;
// Highway's emulation on targets without F16C is not promised to, so those
// keep the scalar conversion.
void ToFp16(const float* x, fp16_t* out, size_t n) {
  size_t i = 0;
#if HWY_ARCH_X86 && HWY_TARGET <= HWY_AVX2
  const hn::ScalableTag<float> df;
  const hn::Rebind<hwy::float16_t, decltype(df)> dh;
  const size_t N = hn::Lanes(df);
  for (; i + N <= n; i += N) {
    hn::StoreU(hn::DemoteTo(dh, hn::LoadU(df, x + i)), dh, reinterpret_cast<hwy::float16_t*>(out + i));
  }
#endif
  for (; i < n; ++i) out[i] = f32_to_fp16(x[i]);
}

}  // namespace HWY_NAMESPACE
}  // namespace turbokv::kv::detail
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace turbokv::kv::detail {
HWY_EXPORT(AttendGroupF16);
HWY_EXPORT(AttendGroupF32);
HWY_EXPORT(ToFp16);

void to_fp16(const float* x, fp16_t* out, size_t n) { HWY_DYNAMIC_DISPATCH(ToFp16)(x, out, n); }

bool attend_group_fast(const float* q, int n_q, const fp16_t* keys, const fp16_t* values, int n_pos, int head_dim,
                       float scale, float* out) {
  TKV_ASSERT(n_q >= 1 && n_q <= kMaxGroupHeads, "query heads per call out of range");
  return HWY_DYNAMIC_DISPATCH(AttendGroupF16)(q, n_q, keys, values, n_pos, head_dim, scale, out);
}
bool attend_group_fast(const float* q, int n_q, const float* keys, const float* values, int n_pos, int head_dim,
                       float scale, float* out) {
  TKV_ASSERT(n_q >= 1 && n_q <= kMaxGroupHeads, "query heads per call out of range");
  return HWY_DYNAMIC_DISPATCH(AttendGroupF32)(q, n_q, keys, values, n_pos, head_dim, scale, out);
}
}  // namespace turbokv::kv::detail
#endif
