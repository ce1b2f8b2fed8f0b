// SIMD kernels for ops/matmul.cpp, compiled once per instruction set by
// Highway (foreach_target.h) and chosen at run time (HWY_DYNAMIC_DISPATCH).
//
// Both kernels work on register tiles of R weight rows x T tokens: each
// weight vector is loaded (and converted) once and used T times, each
// activation vector loaded once and used R times, so prefill (T = 4) does
// 16 FMAs per 8 loads while decode (T = 1) streams the weights once.
// Tokens are processed in chunks whose activations fit in L2, so the
// weights are re-read from L3/memory only once per chunk.
//
// Float weights (F32/F16/BF16) are widened to f32 in registers and FMA'd.
// Q8_0/Q4_0 weights are widened to int16 per row tile and multiplied with
// int16-widened Q8_0 activations (vpmaddwd: int16 x int16 -> int32 pairs),
// one float scale d_w * d_x per 32-element block, as in llama.cpp's
// ggml_vec_dot_q8_0_q8_0 / q4_0_q8_0.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "ops/matmul_hwy.cpp"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"

#include <algorithm>
#include <cstring>
#include <type_traits>
#include <vector>

#include "ops/matmul_kernels.h"
#include "ops/tensor_type.h"
#include "util/fp16.h"

HWY_BEFORE_NAMESPACE();
namespace turbokv::ops::detail {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// Tokens per chunk: 64 tokens x 4096 cols x 4 bytes = 1 MiB of activations.
constexpr int64_t kTokenChunk = 64;
constexpr int kRowTile = 4;
constexpr int kTokenTile = 4;

// Horizontal sums of four vectors at once: out[i] = sum of lanes of v[i].
// Interleaving pairs first costs about 2.5x fewer shuffles than four
// separate SumOfLanes, which matters when a tile's reduction is amortized
// over only cols / lanes FMAs. The summation order of each vector does not
// depend on the other three, so a row gets the same bits in every tiling.
template <class DF, class V>
HWY_INLINE void Reduce4(DF df, V a, V b, V c, V d, float* out) {
#if HWY_TARGET == HWY_SCALAR
  out[0] = hn::GetLane(a); out[1] = hn::GetLane(b); out[2] = hn::GetLane(c); out[3] = hn::GetLane(d);
#else
  // Per 128-bit block: ab = [a0+a2, b0+b2, a1+a3, b1+b3], cd likewise.
  const V ab = hn::Add(hn::InterleaveLower(df, a, b), hn::InterleaveUpper(df, a, b));
  const V cd = hn::Add(hn::InterleaveLower(df, c, d), hn::InterleaveUpper(df, c, d));
  const hn::RepartitionToWide<DF> dw;
  const V lo = hn::BitCast(df, hn::InterleaveLower(dw, hn::BitCast(dw, ab), hn::BitCast(dw, cd)));
  const V hi = hn::BitCast(df, hn::InterleaveUpper(dw, hn::BitCast(dw, ab), hn::BitCast(dw, cd)));
  // Per block: [a, b, c, d] partial sums; add the blocks.
  HWY_ALIGN float buf[hn::MaxLanes(DF())];
  hn::Store(hn::Add(lo, hi), df, buf);
  const hn::CappedTag<float, 4> d4;
  auto sum = hn::Load(d4, buf);
  for (size_t k = 4; k < hn::Lanes(df); k += 4) sum = hn::Add(sum, hn::Load(d4, buf + k));
  hn::StoreU(sum, d4, out);
#endif
}

// Sums acc[r][t] over lanes for an R x T tile into sums[t][r].
template <int R, int T, class DF, class V>
HWY_INLINE void ReduceTile(DF df, const V (&acc)[R][T], float (&sums)[T][R < 4 ? 4 : R]) {
  for (int t = 0; t < T; ++t) {
    for (int r = 0; r < R; r += 4) {
      if constexpr (R >= 4) {
        Reduce4(df, acc[r][t], acc[r + 1][t], acc[r + 2][t], acc[r + 3][t], &sums[t][r]);
      } else {
        const V z = hn::Zero(df);
        Reduce4(df, acc[0][t], R > 1 ? acc[R > 1 ? 1 : 0][t] : z, R > 2 ? acc[R > 2 ? 2 : 0][t] : z, z, &sums[t][0]);
      }
    }
  }
}

// ---- float weights ---------------------------------------------------------

template <class DF>
HWY_INLINE hn::Vec<DF> LoadWeights(DF df, const float* p) {
  return hn::LoadU(df, p);
}
template <class DF>
HWY_INLINE hn::Vec<DF> LoadWeights(DF df, const hwy::float16_t* p) {
  const hn::Rebind<hwy::float16_t, DF> dh;
  return hn::PromoteTo(df, hn::LoadU(dh, p));
}
template <class DF>
HWY_INLINE hn::Vec<DF> LoadWeights(DF df, const hwy::bfloat16_t* p) {
  // bf16 is the upper half of an f32: widen to u32 and shift into place.
  const hn::Rebind<uint16_t, DF> du16;
  const hn::RebindToUnsigned<DF> du32;
  const auto u = hn::PromoteTo(du32, hn::LoadU(du16, reinterpret_cast<const uint16_t*>(p)));
  return hn::BitCast(df, hn::ShiftLeft<16>(u));
}
HWY_INLINE float ScalarWeight(const float* p, size_t i) { return p[i]; }
HWY_INLINE float ScalarWeight(const hwy::float16_t* p, size_t i) {
  uint16_t h;
  std::memcpy(&h, p + i, 2);
  return fp16_to_f32(h);
}
HWY_INLINE float ScalarWeight(const hwy::bfloat16_t* p, size_t i) {
  uint16_t b;
  std::memcpy(&b, p + i, 2);
  return bf16_to_f32(b);
}

// y[t * y_stride + r] for an R x T tile at weight rows w[0..R), tokens x[0..T).
template <int R, int T, typename WT>
HWY_INLINE void FloatTile(const WT* const* w, const float* x, size_t cols, float* y, size_t y_stride) {
  const hn::ScalableTag<float> df;
  const size_t N = hn::Lanes(df);
  hn::Vec<decltype(df)> acc[R][T];
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < T; ++t) acc[r][t] = hn::Zero(df);
  size_t c = 0;
  for (; c + N <= cols; c += N) {
    hn::Vec<decltype(df)> xv[T];
    for (int t = 0; t < T; ++t) xv[t] = hn::LoadU(df, x + t * cols + c);
    for (int r = 0; r < R; ++r) {
      const auto wv = LoadWeights(df, w[r] + c);
      for (int t = 0; t < T; ++t) acc[r][t] = hn::MulAdd(wv, xv[t], acc[r][t]);
    }
  }
  float sums[T][R < 4 ? 4 : R];
  ReduceTile<R, T>(df, acc, sums);
  for (int r = 0; r < R; ++r) {
    for (int t = 0; t < T; ++t) {
      float s = sums[t][r];
      for (size_t k = c; k < cols; ++k) s += ScalarWeight(w[r], k) * x[t * cols + k];
      y[t * y_stride + r] = s;
    }
  }
}

template <int R, typename WT>
HWY_INLINE void FloatRowTile(const WT* const* w, const float* x, int64_t n, size_t cols, float* y, size_t y_stride) {
  int64_t t = 0;
  for (; t + kTokenTile <= n; t += kTokenTile) FloatTile<R, kTokenTile>(w, x + t * cols, cols, y + t * y_stride, y_stride);
  switch (n - t) {
    case 3: FloatTile<R, 3>(w, x + t * cols, cols, y + t * y_stride, y_stride); break;
    case 2: FloatTile<R, 2>(w, x + t * cols, cols, y + t * y_stride, y_stride); break;
    case 1: FloatTile<R, 1>(w, x + t * cols, cols, y + t * y_stride, y_stride); break;
    default: break;
  }
}

// Widens rows of F16/BF16 weights to f32 (exact), once per row tile and token
// chunk, so the prefill inner loop has no conversions.
template <typename WT>
void WidenRow(const WT* w, size_t cols, float* out) {
  const hn::ScalableTag<float> df;
  const size_t N = hn::Lanes(df);
  size_t c = 0;
  for (; c + N <= cols; c += N) hn::StoreU(LoadWeights(df, w + c), df, out + c);
  for (; c < cols; ++c) out[c] = ScalarWeight(w, c);
}

template <int R, typename WT>
HWY_INLINE void FloatRowGroup(const WeightView& wv, int64_t r, const float* xc, int64_t nt, float* yc,
                              std::vector<float>& widened) {
  const size_t cols = size_t(wv.cols), rows = size_t(wv.rows);
  const size_t stride = cols * sizeof(WT);
  const WT* w[R];
  for (int i = 0; i < R; ++i) w[i] = reinterpret_cast<const WT*>(static_cast<const uint8_t*>(wv.data) + size_t(r + i) * stride);
  if constexpr (!std::is_same_v<WT, float>) {
    if (nt >= kTokenTile) {  // reused by several token tiles: widen once
      const float* wf[R];
      for (int i = 0; i < R; ++i) {
        WidenRow(w[i], cols, widened.data() + size_t(i) * cols);
        wf[i] = widened.data() + size_t(i) * cols;
      }
      FloatRowTile<R>(wf, xc, nt, cols, yc + r, rows);
      return;
    }
  }
  FloatRowTile<R>(w, xc, nt, cols, yc + r, rows);
}

// ---- float weights, prefill: packed panels --------------------------------
//
// For many tokens the dot-product tiles above are limited by re-reading the
// activations from L2 and by horizontal sums. Here a panel of P = 2 vectors
// of rows is widened to f32 and transposed once, packed[c][p] (cols, P), and
// the kernel is an outer product: y[t, panel] += packed[c] * x[t, c], with
// 2 x kPanelTokens accumulators, one broadcast per token and two loads per
// column, no horizontal sums. Each (row, token) result is one sequential FMA
// chain over the columns, independent of tiling and thread count.
constexpr int kPanelVectors = 2;
constexpr int kPanelTokens = 12;
// Below this many tokens the packing cost is not repaid.
constexpr int64_t kMinTokensForPanels = 32;

template <int T>
HWY_INLINE void PanelTile(const float* packed, size_t P, const float* x, size_t cols, float* y, size_t y_stride,
                          size_t valid_rows) {
  const hn::ScalableTag<float> df;
  const size_t N = hn::Lanes(df);
  using V = hn::Vec<decltype(df)>;
  // Accumulators as named locals: g++ 12 keeps an array of them in registers
  // but also stores it to the stack on every iteration.
  V a0[T], a1[T];
  static_assert(kPanelVectors == 2, "two accumulators per token");
#pragma GCC unroll 16
  for (int t = 0; t < T; ++t) { a0[t] = hn::Zero(df); a1[t] = hn::Zero(df); }
  const float* xt[T];
#pragma GCC unroll 16
  for (int t = 0; t < T; ++t) xt[t] = x + size_t(t) * cols;
  for (size_t c = 0; c < cols; ++c) {
    const V w0 = hn::LoadU(df, packed + c * P);
    const V w1 = hn::LoadU(df, packed + c * P + N);
#pragma GCC unroll 16
    for (int t = 0; t < T; ++t) {
      const V xb = hn::Set(df, xt[t][c]);
      a0[t] = hn::MulAdd(w0, xb, a0[t]);
      a1[t] = hn::MulAdd(w1, xb, a1[t]);
    }
  }
  HWY_ALIGN float buf[T][kPanelVectors * hn::MaxLanes(decltype(df)())];
#pragma GCC unroll 16
  for (int t = 0; t < T; ++t) {
    hn::Store(a0[t], df, buf[t]);
    hn::Store(a1[t], df, buf[t] + N);
  }
  for (int t = 0; t < T; ++t) std::copy_n(buf[t], valid_rows, y + size_t(t) * y_stride);
}

template <typename WT>
void PanelRowsT(const WeightView& wv, const float* x, int64_t n, float* y, int64_t r0, int64_t r1) {
  const hn::ScalableTag<float> df;
  const size_t P = kPanelVectors * hn::Lanes(df);
  const size_t cols = size_t(wv.cols), rows = size_t(wv.rows);
  std::vector<float> widened(P * cols);  // (P, cols) rows of the panel as f32
  std::vector<float> packed(cols * P);   // (cols, P) the same, transposed
  for (int64_t r = r0; r < r1; r += int64_t(P)) {
    const size_t valid = std::min(P, size_t(r1 - r));
    for (size_t p = 0; p < P; ++p) {
      if (p < valid) WidenRow(reinterpret_cast<const WT*>(wv.row(r + int64_t(p))), cols, widened.data() + p * cols);
      else std::fill_n(widened.data() + p * cols, cols, 0.0f);
    }
    for (size_t c = 0; c < cols; ++c)
      for (size_t p = 0; p < P; ++p) packed[c * P + p] = widened[p * cols + c];
    int64_t t = 0;
    for (; t + kPanelTokens <= n; t += kPanelTokens) {
      PanelTile<kPanelTokens>(packed.data(), P, x + t * int64_t(cols), cols, y + t * int64_t(rows) + r, rows, valid);
    }
    for (; t + 4 <= n; t += 4) PanelTile<4>(packed.data(), P, x + t * int64_t(cols), cols, y + t * int64_t(rows) + r, rows, valid);
    for (; t < n; ++t) PanelTile<1>(packed.data(), P, x + t * int64_t(cols), cols, y + t * int64_t(rows) + r, rows, valid);
  }
}

template <typename WT>
void FloatRowsT(const WeightView& wv, const float* x, int64_t n, float* y, int64_t r0, int64_t r1) {
  if (n >= kMinTokensForPanels) return PanelRowsT<WT>(wv, x, n, y, r0, r1);
  const size_t cols = size_t(wv.cols), rows = size_t(wv.rows);
  std::vector<float> widened(std::is_same_v<WT, float> ? 0 : 2 * kRowTile * cols);  // (rows in tile, cols)
  for (int64_t t0 = 0; t0 < n; t0 += kTokenChunk) {
    const int64_t nt = std::min(kTokenChunk, n - t0);
    const float* xc = x + t0 * int64_t(cols);
    float* yc = y + t0 * int64_t(rows);
    int64_t r = r0;
    // Decode (one token) streams 8 rows at once for more independent FMA chains.
    if (nt == 1) {
      for (; r + 2 * kRowTile <= r1; r += 2 * kRowTile) FloatRowGroup<2 * kRowTile, WT>(wv, r, xc, nt, yc, widened);
    }
    for (; r + kRowTile <= r1; r += kRowTile) FloatRowGroup<kRowTile, WT>(wv, r, xc, nt, yc, widened);
    for (; r < r1; ++r) FloatRowGroup<1, WT>(wv, r, xc, nt, yc, widened);
  }
}

void MatmulFloatRows(const WeightView& w, const float* x, int64_t n, float* y, int64_t r0, int64_t r1) {
  switch (w.type) {
    case TensorType::F32: return FloatRowsT<float>(w, x, n, y, r0, r1);
    case TensorType::F16: return FloatRowsT<hwy::float16_t>(w, x, n, y, r0, r1);
    case TensorType::BF16: return FloatRowsT<hwy::bfloat16_t>(w, x, n, y, r0, r1);
    default: HWY_ASSERT(false);
  }
}

// ---- quantized weights -----------------------------------------------------

// One fp16 block scale to f32 with the hardware conversion (vcvtph2ps on
// x86) instead of the portable branchy one: this runs once per block.
HWY_INLINE float BlockScale(const fp16_t* d) {
  const hn::CappedTag<float, 1> d1;
  const hn::Rebind<hwy::float16_t, decltype(d1)> dh;
  return hn::GetLane(hn::PromoteTo(d1, hn::LoadU(dh, reinterpret_cast<const hwy::float16_t*>(d))));
}

// Widens one row of Q8_0/Q4_0 blocks to int16 quants q (cols) and scales d (cols/32).
void UnpackRow(TensorType type, const uint8_t* row, size_t n_blocks, int16_t* q, float* d) {
  if (type == TensorType::Q8_0) {
    const hn::CappedTag<int16_t, 32> d16;
    const hn::Rebind<int8_t, decltype(d16)> d8;
    const size_t N = hn::Lanes(d16);
    const auto* b = reinterpret_cast<const BlockQ8_0*>(row);
    for (size_t i = 0; i < n_blocks; ++i) {
      d[i] = BlockScale(&b[i].d);
      for (size_t j = 0; j < size_t(kQK8_0); j += N) {
        hn::StoreU(hn::PromoteTo(d16, hn::LoadU(d8, b[i].qs + j)), d16, q + i * kQK8_0 + j);
      }
    }
  } else {  // Q4_0: low nibbles are weights 0..15, high nibbles 16..31, value = nibble - 8
    const hn::CappedTag<int16_t, 16> d16;
    const hn::Rebind<uint8_t, decltype(d16)> d8;
    const size_t N = hn::Lanes(d16);
    const auto eight = hn::Set(d16, 8);
    const auto mask = hn::Set(d16, 0x0f);
    const auto* b = reinterpret_cast<const BlockQ4_0*>(row);
    for (size_t i = 0; i < n_blocks; ++i) {
      d[i] = BlockScale(&b[i].d);
      for (size_t j = 0; j < size_t(kQK4_0 / 2); j += N) {
        const auto v = hn::BitCast(d16, hn::PromoteTo(hn::RebindToUnsigned<decltype(d16)>(), hn::LoadU(d8, b[i].qs + j)));
        hn::StoreU(hn::Sub(hn::And(v, mask), eight), d16, q + i * kQK4_0 + j);
        hn::StoreU(hn::Sub(hn::ShiftRight<4>(v), eight), d16, q + i * kQK4_0 + kQK4_0 / 2 + j);
      }
    }
  }
}

// Weights of a tile: either Q8_0 blocks read in place (q8 != nullptr, rows
// q8[r]) or rows widened by UnpackRow (wq (R, cols), wd (R, cols / 32)).
struct TileWeights {
  const BlockQ8_0* const* q8;
  const int16_t* wq;
  const float* wd;
};

template <int R, int T>
HWY_INLINE void QuantTile(const TileWeights& W, const int16_t* xq, const float* xd, size_t cols, float* y,
                          size_t y_stride) {
  const int16_t* wq = W.wq;
  const hn::CappedTag<int16_t, 32> d16;
  const hn::Rebind<int8_t, decltype(d16)> d8;
  const hn::RepartitionToWide<decltype(d16)> d32;
  const hn::Rebind<float, decltype(d32)> df;
  const size_t N16 = hn::Lanes(d16);
  const size_t nb = cols / kQK8_0;
  hn::Vec<decltype(df)> acc[R][T];
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < T; ++t) acc[r][t] = hn::Zero(df);
  for (size_t b = 0; b < nb; ++b) {
    hn::Vec<decltype(d32)> isum[R][T];
    for (int r = 0; r < R; ++r)
      for (int t = 0; t < T; ++t) isum[r][t] = hn::Zero(d32);
    for (size_t j = 0; j < size_t(kQK8_0); j += N16) {
      const size_t k = b * kQK8_0 + j;
      hn::Vec<decltype(d16)> xv[T];
      for (int t = 0; t < T; ++t) xv[t] = hn::LoadU(d16, xq + t * cols + k);
      for (int r = 0; r < R; ++r) {
        const auto wv = W.q8 ? hn::PromoteTo(d16, hn::LoadU(d8, W.q8[r][b].qs + j)) : hn::LoadU(d16, wq + r * cols + k);
        for (int t = 0; t < T; ++t) {
          auto unused = hn::Zero(d32);
          isum[r][t] = hn::ReorderWidenMulAccumulate(d32, wv, xv[t], isum[r][t], unused);
          isum[r][t] = hn::Add(isum[r][t], unused);
        }
      }
    }
    for (int r = 0; r < R; ++r) {
      for (int t = 0; t < T; ++t) {
        const float dw = W.q8 ? BlockScale(&W.q8[r][b].d) : W.wd[r * nb + b];
        const auto scale = hn::Set(df, dw * xd[t * nb + b]);
        acc[r][t] = hn::MulAdd(hn::ConvertTo(df, isum[r][t]), scale, acc[r][t]);
      }
    }
  }
  float sums[T][R < 4 ? 4 : R];
  ReduceTile<R, T>(df, acc, sums);
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < T; ++t) y[t * y_stride + r] = sums[t][r];
}

template <int R>
HWY_INLINE void QuantRowTile(const TileWeights& W, const int16_t* xq, const float* xd, int64_t n, size_t cols,
                             float* y, size_t y_stride) {
  const size_t nb = cols / kQK8_0;
  int64_t t = 0;
  for (; t + kTokenTile <= n; t += kTokenTile) {
    QuantTile<R, kTokenTile>(W, xq + t * cols, xd + t * nb, cols, y + t * y_stride, y_stride);
  }
  switch (n - t) {
    case 3: QuantTile<R, 3>(W, xq + t * cols, xd + t * nb, cols, y + t * y_stride, y_stride); break;
    case 2: QuantTile<R, 2>(W, xq + t * cols, xd + t * nb, cols, y + t * y_stride, y_stride); break;
    case 1: QuantTile<R, 1>(W, xq + t * cols, xd + t * nb, cols, y + t * y_stride, y_stride); break;
    default: break;
  }
}

template <int R>
HWY_INLINE void QuantRowGroup(const WeightView& w, int64_t r, const int16_t* xq, const float* xd, int64_t nt,
                              float* yc, std::vector<int16_t>& wq, std::vector<float>& wd) {
  const size_t cols = size_t(w.cols), rows = size_t(w.rows), nb = cols / kQK8_0, stride = w.row_stride_bytes();
  const uint8_t* base = static_cast<const uint8_t*>(w.data) + size_t(r) * stride;
  if (w.type == TensorType::Q8_0 && nt < kTokenTile) {  // decode: int8 quants read in place
    const BlockQ8_0* q8[R];
    for (int i = 0; i < R; ++i) q8[i] = reinterpret_cast<const BlockQ8_0*>(base + size_t(i) * stride);
    QuantRowTile<R>(TileWeights{q8, nullptr, nullptr}, xq, xd, nt, cols, yc + r, rows);
    return;
  }
  for (int i = 0; i < R; ++i) UnpackRow(w.type, base + size_t(i) * stride, nb, wq.data() + i * cols, wd.data() + i * nb);
  QuantRowTile<R>(TileWeights{nullptr, wq.data(), wd.data()}, xq, xd, nt, cols, yc + r, rows);
}

void MatmulQuantRows(const WeightView& w, const int16_t* xq, const float* xd, int64_t n, float* y, int64_t r0,
                     int64_t r1) {
  const size_t cols = size_t(w.cols), rows = size_t(w.rows), nb = cols / kQK8_0;
  // (kRowTile, cols) int16 quants and (kRowTile, nb) scales of an unpacked row tile.
  std::vector<int16_t> wq(w.type == TensorType::Q8_0 && n < kTokenTile ? 0 : kRowTile * cols);
  std::vector<float> wd(w.type == TensorType::Q8_0 && n < kTokenTile ? 0 : kRowTile * nb);
  for (int64_t t0 = 0; t0 < n; t0 += kTokenChunk) {
    const int64_t nt = std::min(kTokenChunk, n - t0);
    const int16_t* xqc = xq + t0 * int64_t(cols);
    const float* xdc = xd + t0 * int64_t(nb);
    float* yc = y + t0 * int64_t(rows);
    int64_t r = r0;
    for (; r + kRowTile <= r1; r += kRowTile) QuantRowGroup<kRowTile>(w, r, xqc, xdc, nt, yc, wq, wd);
    for (; r < r1; ++r) QuantRowGroup<1>(w, r, xqc, xdc, nt, yc, wq, wd);
  }
}

const char* TargetName() { return hwy::TargetName(HWY_TARGET); }

}  // namespace HWY_NAMESPACE
}  // namespace turbokv::ops::detail
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace turbokv::ops::detail {

HWY_EXPORT(MatmulFloatRows);
HWY_EXPORT(MatmulQuantRows);
HWY_EXPORT(TargetName);

void matmul_float_rows(const WeightView& w, const float* x, int64_t n, float* y, int64_t r0, int64_t r1) {
  HWY_DYNAMIC_DISPATCH(MatmulFloatRows)(w, x, n, y, r0, r1);
}
void matmul_quant_rows(const WeightView& w, const int16_t* xq, const float* xd, int64_t n, float* y, int64_t r0,
                       int64_t r1) {
  HWY_DYNAMIC_DISPATCH(MatmulQuantRows)(w, xq, xd, n, y, r0, r1);
}
const char* fast_target_name() { return HWY_DYNAMIC_DISPATCH(TargetName)(); }

}  // namespace turbokv::ops::detail
#endif  // HWY_ONCE
