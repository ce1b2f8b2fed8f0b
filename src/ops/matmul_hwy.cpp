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
// Float weights (F32/F16/BF16) are widened to f32 in registers and FMA'd;
// with 32 tokens or more they take the tokens-in-lanes kernel below instead
// (activations transposed once per call, outer products, no horizontal sums).
// Q8_0/Q4_0 weights are widened to int16 per row tile and multiplied with
// int16-widened Q8_0 activations (vpmaddwd: int16 x int16 -> int32 pairs),
// one float scale d_w * d_x per 32-element block, as in llama.cpp's
// ggml_vec_dot_q8_0_q8_0 / q4_0_q8_0.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "ops/matmul_hwy.cpp"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/cache_control.h"
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
// If `next` is not null, the tile's rows are contiguous and `next` points at
// the following tile's: it is prefetched as this one streams, a step of
// R * lanes weights per iteration (decode reads each weight once, from L3 or
// memory, and the hardware prefetcher does not follow R interleaved streams
// that are only a few lines long).
template <int R, int T, typename WT>
HWY_INLINE void FloatTile(const WT* const* w, const float* x, size_t cols, float* y, size_t y_stride,
                          const uint8_t* next = nullptr) {
  const hn::ScalableTag<float> df;
  const size_t N = hn::Lanes(df);
  hn::Vec<decltype(df)> acc[R][T];
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < T; ++t) acc[r][t] = hn::Zero(df);
  size_t c = 0;
  const size_t step = R * N * sizeof(WT);  // bytes of `next` per iteration
  for (; c + N <= cols; c += N) {
    if (next != nullptr) {
      for (size_t b = 0; b < step; b += 64) hwy::Prefetch(next + b);
      next += step;
    }
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
// `ahead`, if not null, is a row needed soon: it is prefetched alongside.
template <typename WT>
void WidenRow(const WT* w, size_t cols, float* out, const WT* ahead = nullptr) {
  const hn::ScalableTag<float> df;
  const size_t N = hn::Lanes(df);
  size_t c = 0;
  for (; c + N <= cols; c += N) {
    if (ahead != nullptr) hwy::Prefetch(ahead + c);
    hn::StoreU(LoadWeights(df, w + c), df, out + c);
  }
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

// ---- float weights, prefill: tokens in lanes -------------------------------
//
// For many tokens the dot-product tiles above are limited by re-reading the
// activations and by horizontal sums. Here the activations are transposed
// once per call into blocks of kLaneVectors vectors of tokens,
// xt[block][c][lane] (cols, B) with B = kLaneVectors * lanes, and the kernel
// is an outer product: y[rows of tile, tokens of block] += w[r][c] * xt[c],
// with kLaneRows x kLaneVectors accumulators, one broadcast per row and
// kLaneVectors loads per column, no horizontal sums. Weight rows are widened
// to f32 once per row tile (row-major, vectorized); the activations'
// transposition costs O(n cols), not O(rows cols). Each (row, token) result
// is one sequential FMA chain over the columns, independent of tiling and
// thread count.
constexpr int kLaneVectors = 2;
// Rows per tile: kLaneRows x kLaneVectors accumulators plus kLaneVectors
// activation vectors and one broadcast must fit the register file (32
// vectors on AVX-512/NEON/SVE, 16 on AVX2 and older x86), and the row
// pointers the general-purpose registers.
#if HWY_ARCH_X86 && HWY_TARGET > HWY_AVX3
constexpr int kLaneRows = 6;
#else
constexpr int kLaneRows = 8;
#endif
// Token blocks per chunk: a chunk's activations, chunk * B * cols floats
// (B = 32 tokens on AVX-512), stay in L2 while every row tile streams them.
constexpr int64_t kLaneChunkBlocks = 4;

HWY_INLINE size_t LaneBlockTokens() { return kLaneVectors * hn::Lanes(hn::ScalableTag<float>()); }

size_t TokenBlock() { return LaneBlockTokens(); }

// Token blocks [b0, b1) of x (n, cols) into xt (blocks, cols, B); tokens past
// n are zero.
#if HWY_TARGET != HWY_SCALAR
// Transposes four vectors in 4 x 4 tiles: 128-bit block k of out row i holds
// lane 4k + i of a, b, c, d, in that order.   out: (4, lanes)
template <class DF, class V>
HWY_INLINE void Transpose4(DF df, V a, V b, V c, V d, float* HWY_RESTRICT out) {
  const hn::RepartitionToWide<DF> dw;
  const size_t N = hn::Lanes(df);
  // Per 128-bit block: ab_lo = [a0 b0 a1 b1], ab_hi = [a2 b2 a3 b3], likewise cd.
  const auto ab_lo = hn::BitCast(dw, hn::InterleaveLower(df, a, b));
  const auto ab_hi = hn::BitCast(dw, hn::InterleaveUpper(df, a, b));
  const auto cd_lo = hn::BitCast(dw, hn::InterleaveLower(df, c, d));
  const auto cd_hi = hn::BitCast(dw, hn::InterleaveUpper(df, c, d));
  hn::Store(hn::BitCast(df, hn::InterleaveLower(dw, ab_lo, cd_lo)), df, out);
  hn::Store(hn::BitCast(df, hn::InterleaveUpper(dw, ab_lo, cd_lo)), df, out + N);
  hn::Store(hn::BitCast(df, hn::InterleaveLower(dw, ab_hi, cd_hi)), df, out + 2 * N);
  hn::Store(hn::BitCast(df, hn::InterleaveUpper(dw, ab_hi, cd_hi)), df, out + 3 * N);
}
#endif

// Four tokens at a time, N columns at a time, are transposed in registers:
// two rounds of interleaving turn the 4 x N tile into N columns of 4 tokens
// (one per 128-bit block), stored 16 bytes each.
void PackTokens(const float* x, int64_t n, int64_t cols, size_t b0, size_t b1, float* xt) {
  const size_t B = LaneBlockTokens(), C = size_t(cols);
  auto scalar = [&](size_t b, size_t j, size_t c0) {  // token b*B + j, columns [c0, C)
    const size_t t = b * B + j;
    for (size_t c = c0; c < C; ++c) xt[(b * C + c) * B + j] = t < size_t(n) ? x[t * C + c] : 0.0f;
  };
#if HWY_TARGET == HWY_SCALAR
  for (size_t b = b0; b < b1; ++b)
    for (size_t j = 0; j < B; ++j) scalar(b, j, 0);
#else
  const hn::ScalableTag<float> df;
  const size_t N = hn::Lanes(df);
  HWY_ALIGN float cols4[4 * hn::MaxLanes(decltype(df)())];  // (4, N): N / 4 columns of 4 tokens each
  for (size_t b = b0; b < b1; ++b) {
    float* out = xt + b * C * B;
    for (size_t j = 0; j < B; j += 4) {
      const size_t t = b * B + j;
      auto row = [&](size_t i, size_t c) {
        return t + i < size_t(n) ? hn::LoadU(df, x + (t + i) * C + c) : hn::Zero(df);
      };
      size_t c = 0;
      for (; c + N <= C; c += N) {
        Transpose4(df, row(0, c), row(1, c), row(2, c), row(3, c), cols4);  // row i, block k: column 4k + i
        for (size_t k = 0; k < N / 4; ++k) {
          for (size_t i = 0; i < 4; ++i) std::memcpy(out + (c + 4 * k + i) * B + j, cols4 + i * N + 4 * k, 4 * sizeof(float));
        }
      }
      for (size_t i = 0; i < 4; ++i) scalar(b, j + i, c);
    }
  }
#endif
}

// y[t * y_stride + r] for R <= 8 rows w[0..R) (f32, cols each) and the
// first `valid` tokens of one packed block xb (cols, B).
template <int R>
HWY_INLINE void LaneTile(const float* const* w, const float* xb, size_t cols, float* y, size_t y_stride,
                         size_t valid) {
  static_assert(R >= 1 && R <= 8 && kLaneVectors == 2, "up to 8 rows, two activation vectors per column");
  const hn::ScalableTag<float> df;
  const size_t N = hn::Lanes(df);
  using V = hn::Vec<decltype(df)>;
  // Accumulators as named locals: g++ 12 keeps an array of them in registers
  // but also stores it to the stack on every iteration.
#define TKV_LANE_ROWS(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7)
#define TKV_LANE_INIT(k) V a##k = hn::Zero(df), b##k = hn::Zero(df); const float* w##k = w[R > k ? k : 0];
  TKV_LANE_ROWS(TKV_LANE_INIT)
  for (size_t c = 0; c < cols; ++c) {
    const V x0 = hn::LoadU(df, xb + c * 2 * N);
    const V x1 = hn::LoadU(df, xb + c * 2 * N + N);
#define TKV_LANE_FMA(k)                     \
    if constexpr (R > k) {                  \
      const V wb = hn::Set(df, w##k[c]);    \
      a##k = hn::MulAdd(wb, x0, a##k);      \
      b##k = hn::MulAdd(wb, x1, b##k);      \
    }
    TKV_LANE_ROWS(TKV_LANE_FMA)
  }
#if HWY_TARGET != HWY_SCALAR
  if constexpr (R % 4 == 0) {
    // Rows in fours: a 4 x 4 transpose gives each token's 4 results as one 16-byte store.
    HWY_ALIGN float tr[4 * hn::MaxLanes(decltype(df)())];
    auto put = [&](V v0, V v1, V v2, V v3, size_t row, size_t t0) {  // rows [row, row + 4), tokens t0..
      Transpose4(df, v0, v1, v2, v3, tr);
      for (size_t k = 0; k < N / 4; ++k) {
        for (size_t i = 0; i < 4; ++i) {
          const size_t t = t0 + 4 * k + i;
          if (t < valid) std::memcpy(y + t * y_stride + row, tr + i * N + 4 * k, 4 * sizeof(float));
        }
      }
    };
    put(a0, a1, a2, a3, 0, 0);
    put(b0, b1, b2, b3, 0, N);
    if constexpr (R == 8) {
      put(a4, a5, a6, a7, 4, 0);
      put(b4, b5, b6, b7, 4, N);
    }
    return;
  }
#endif
  HWY_ALIGN float buf[2 * hn::MaxLanes(decltype(df)())];
#define TKV_LANE_STORE(k)                                                          \
  if constexpr (R > k) {                                                           \
    hn::Store(a##k, df, buf);                                                      \
    hn::Store(b##k, df, buf + N);                                                  \
    for (size_t t = 0; t < valid; ++t) y[t * y_stride + size_t(k)] = buf[t];       \
  }
  TKV_LANE_ROWS(TKV_LANE_STORE)
#undef TKV_LANE_STORE
#undef TKV_LANE_FMA
#undef TKV_LANE_INIT
#undef TKV_LANE_ROWS
}

template <int R, typename WT>
HWY_INLINE void LaneRowTile(const WeightView& wv, int64_t r, const float* xt, size_t b0, size_t b1, int64_t n,
                            float* y, float* widened) {
  const size_t cols = size_t(wv.cols), rows = size_t(wv.rows), B = LaneBlockTokens();
  const size_t stride = cols * sizeof(WT);
  const uint8_t* base = static_cast<const uint8_t*>(wv.data) + size_t(r) * stride;
  const float* w[R];
  for (int i = 0; i < R; ++i) {
    const WT* row = reinterpret_cast<const WT*>(base + size_t(i) * stride);
    if constexpr (std::is_same_v<WT, float>) {
      w[i] = row;
    } else {
      // The next tile's rows are fetched from L3/memory while this tile computes.
      const WT* ahead = r + R + i < wv.rows ? reinterpret_cast<const WT*>(base + size_t(R + i) * stride) : nullptr;
      WidenRow(row, cols, widened + size_t(i) * cols, ahead);
      w[i] = widened + size_t(i) * cols;
    }
  }
  for (size_t b = b0; b < b1; ++b) {
    const size_t valid = std::min(B, size_t(n) - b * B);
    LaneTile<R>(w, xt + b * cols * B, cols, y + b * B * rows + size_t(r), rows, valid);
  }
}

template <typename WT>
void LaneRowsT(const WeightView& wv, const float* xt, int64_t n, float* y, int64_t r0, int64_t r1) {
  const size_t B = LaneBlockTokens(), blocks = (size_t(n) + B - 1) / B;
  std::vector<float> widened(std::is_same_v<WT, float> ? 0 : kLaneRows * size_t(wv.cols));  // (kLaneRows, cols)
  for (size_t b0 = 0; b0 < blocks; b0 += kLaneChunkBlocks) {
    const size_t b1 = std::min(blocks, b0 + size_t(kLaneChunkBlocks));
    int64_t r = r0;
    for (; r + kLaneRows <= r1; r += kLaneRows) LaneRowTile<kLaneRows, WT>(wv, r, xt, b0, b1, n, y, widened.data());
    for (; r + 4 <= r1; r += 4) LaneRowTile<4, WT>(wv, r, xt, b0, b1, n, y, widened.data());
    for (; r < r1; ++r) LaneRowTile<1, WT>(wv, r, xt, b0, b1, n, y, widened.data());
  }
}

void MatmulFloatRowsPacked(const WeightView& w, const float* xt, int64_t n, float* y, int64_t r0, int64_t r1) {
  switch (w.type) {
    case TensorType::F32: return LaneRowsT<float>(w, xt, n, y, r0, r1);
    case TensorType::F16: return LaneRowsT<hwy::float16_t>(w, xt, n, y, r0, r1);
    case TensorType::BF16: return LaneRowsT<hwy::bfloat16_t>(w, xt, n, y, r0, r1);
    default: HWY_ASSERT(false);
  }
}

template <typename WT>
void FloatRowsT(const WeightView& wv, const float* x, int64_t n, float* y, int64_t r0, int64_t r1) {
  const size_t cols = size_t(wv.cols), rows = size_t(wv.rows);
  // (rows in tile, cols) weights widened once for several token tiles; decode reads them in place.
  std::vector<float> widened(std::is_same_v<WT, float> || n < kTokenTile ? 0 : 2 * kRowTile * cols);
  for (int64_t t0 = 0; t0 < n; t0 += kTokenChunk) {
    const int64_t nt = std::min(kTokenChunk, n - t0);
    const float* xc = x + t0 * int64_t(cols);
    float* yc = y + t0 * int64_t(rows);
    int64_t r = r0;
    // Decode (one token) streams 8 rows at once for more independent FMA
    // chains, prefetching the next 8.
    if (nt == 1) {
      constexpr int R = 2 * kRowTile;
      const size_t stride = wv.row_stride_bytes();
      for (; r + R <= r1; r += R) {
        const uint8_t* base = static_cast<const uint8_t*>(wv.data) + size_t(r) * stride;
        const WT* w[R];
        for (int i = 0; i < R; ++i) w[i] = reinterpret_cast<const WT*>(base + size_t(i) * stride);
        const uint8_t* next = r + 2 * R <= r1 ? base + R * stride : nullptr;
        FloatTile<R, 1>(w, xc, cols, yc + r, rows, next);
      }
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
HWY_EXPORT(TokenBlock);
HWY_EXPORT(PackTokens);
HWY_EXPORT(MatmulFloatRowsPacked);
HWY_EXPORT(MatmulQuantRows);
HWY_EXPORT(TargetName);

void matmul_float_rows(const WeightView& w, const float* x, int64_t n, float* y, int64_t r0, int64_t r1) {
  HWY_DYNAMIC_DISPATCH(MatmulFloatRows)(w, x, n, y, r0, r1);
}
size_t token_block() { return HWY_DYNAMIC_DISPATCH(TokenBlock)(); }
void pack_tokens(const float* x, int64_t n, int64_t cols, size_t b0, size_t b1, float* xt) {
  HWY_DYNAMIC_DISPATCH(PackTokens)(x, n, cols, b0, b1, xt);
}
void matmul_float_rows_packed(const WeightView& w, const float* xt, int64_t n, float* y, int64_t r0, int64_t r1) {
  HWY_DYNAMIC_DISPATCH(MatmulFloatRowsPacked)(w, xt, n, y, r0, r1);
}
void matmul_quant_rows(const WeightView& w, const int16_t* xq, const float* xd, int64_t n, float* y, int64_t r0,
                       int64_t r1) {
  HWY_DYNAMIC_DISPATCH(MatmulQuantRows)(w, xq, xd, n, y, r0, r1);
}
const char* fast_target_name() { return HWY_DYNAMIC_DISPATCH(TargetName)(); }

}  // namespace turbokv::ops::detail
#endif  // HWY_ONCE
