// SIMD bodies of the fused attention over compressed KV records
// (turbo_attention.h), compiled once per instruction set: turbo_attention.cpp
// includes this file through Highway's foreach_target.
//
// Packed-index geometry for B-bit indices and vectors of N float lanes. A
// chunk is the E = N * S consecutive elements whose indices fill S index
// vectors of N lanes: for B = 2, 4, 8 the chunk is N bytes and lane l of
// sub-vector k is element S*l + k (bits [B*k, B*k + B) of byte l); for B = 3
// it is 3N bytes (N little-endian 24-bit fields, one per 32-bit lane:
// PackedWords) and lane l of sub-vector k is element 8l + k; for B = 5 it
// is 2.5N bytes (N 20-bit fields) and lane l of sub-vector k is element
// 4l + k.
// Queries and outputs are held in that "chunk order" (NaturalIndices
// below) so no index ever moves across lanes: a chunk is widened once to
// one 32-bit word per lane (IndexWords), index vector k is that word
// shifted right by B*k, and its expansion to centroid values one
// TableLookupLanes (two and a select when the codebook is wider than a
// vector: 4 bits on AVX2; one two-table permute for 5 bits on AVX-512; a
// gather for 5 bits on AVX2 and for 8 bits).
#if defined(TURBOKV_KV_TURBO_ATTENTION_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef TURBOKV_KV_TURBO_ATTENTION_INL_H_
#undef TURBOKV_KV_TURBO_ATTENTION_INL_H_
#else
#define TURBOKV_KV_TURBO_ATTENTION_INL_H_
#endif

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>

#include "hwy/highway.h"
#include "kv/turbo_attention.h"
#include "kv/turbo_attention_half.h"
#include "kv/turbo_attention_int8.h"
#include "kv/softmax_exp-inl.h"

HWY_BEFORE_NAMESPACE();
namespace turbokv::kv::detail {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// Positions per online-softmax update (the score buffer is (n_q, kBlock)).
constexpr int kBlock = kAttentionBlock;
// Floats reserved for one padded codebook (256 centroids + two vectors).
constexpr int kTableFloats = 256 + 32;

// Index vectors per chunk for B-bit indices (see the geometry above).
constexpr int SubVectors(int bits) { return bits == 3 ? 8 : bits == 5 ? 4 : 8 / bits; }
template <int B>
constexpr int kSubVectors = SubVectors(B);

// The fp16 field at p (unaligned) as float: one F16C conversion where the
// target has it, not the portable branchy conversion (that cost more than the
// FMAs it scales).
HWY_INLINE float Fp16At(const uint8_t* p) {
  const hn::CappedTag<float, 1> d1;
  const hn::Rebind<hwy::float16_t, decltype(d1)> dh1;
  return hn::GetLane(hn::PromoteTo(d1, hn::LoadU(dh1, reinterpret_cast<const hwy::float16_t*>(p))));
}

// On x86 the variable lane permutes read only the low log2(N) bits of each
// 32-bit index (vpermps, vpermilps): with the codebook repeated to N
// entries (FillTable), table[idx] is right whatever the bits above B hold,
// so a shifted index word needs no mask. Elsewhere the mask stays.
#if HWY_ARCH_X86 && HWY_TARGET <= HWY_AVX2
constexpr bool kPermuteReadsLowBits = true;
#else
constexpr bool kPermuteReadsLowBits = false;
#endif
// The AVX-512 two-table permute (vpermt2ps) reads the low 5 bits of each
// index: a 32-entry codebook in two vectors of 16 lanes needs no mask either.
#if HWY_ARCH_X86 && HWY_TARGET <= HWY_AVX3
constexpr bool kPermute2ReadsLowBits = true;
#else
constexpr bool kPermute2ReadsLowBits = false;
#endif
template <int B, size_t N>
constexpr bool kTwoTableLowBits = kPermute2ReadsLowBits && N == 16 && (size_t(1) << B) == 2 * N;
template <int B, size_t N>
constexpr bool kUnmaskedIndices = (kPermuteReadsLowBits && (size_t(1) << B) <= N) || kTwoTableLowBits<B, N>;

// table[idx mod N] per lane (elsewhere than x86: idx < N).
template <class DF, class VI>
HWY_INLINE hn::Vec<DF> PermuteLowBits(DF df, hn::Vec<DF> table, VI idx) {
#if HWY_ARCH_X86 && HWY_TARGET <= HWY_AVX2
  constexpr size_t N = hn::MaxLanes(df);
  if constexpr (N == 4) {
    return hn::Vec<DF>{_mm_permutevar_ps(table.raw, idx.raw)};
  } else if constexpr (N == 8) {
    return hn::Vec<DF>{_mm256_permutevar8x32_ps(table.raw, idx.raw)};
  } else {
#if HWY_TARGET <= HWY_AVX3
    return hn::Vec<DF>{_mm512_permutexvar_ps(idx.raw, table.raw)};
#endif
  }
#else
  return hn::TableLookupLanes(table, hn::IndicesFromVec(df, idx));
#endif
}

// Indices whose S per lane do not fill whole bytes (B = 3: a 24-bit field
// per lane; B = 5: 20 bits, starting at bit 4 of a byte for odd lanes),
// straight into 32-bit lanes: lane l holds the chunk's field l, at bit 0,
// with no byte unpacking or widening. The chunk's bytes are loaded as whole
// dwords (a masked load: nothing past the chunk is read), a lane permute
// gives each 128-bit block the four dwords from the one its first field
// starts in, a byte shuffle inside each block puts each lane's bytes in
// place (zero above them) and, for B = 5, a shift by 0 or 4 per lane
// aligns the field.
template <int B, class DI>
struct PackedWords {
  using DU = hn::RebindToUnsigned<DI>;
  using DU8 = hn::Repartition<uint8_t, DU>;
  static constexpr size_t N = hn::MaxLanes(DI());
  static constexpr size_t kFieldBits = size_t(B) * kSubVectors<B>;
  static constexpr size_t kDwords = kFieldBits * N / 32;
  static constexpr bool kShift = kFieldBits % 8 != 0;
  static_assert(kFieldBits * N % 32 == 0, "a chunk is whole dwords");
  decltype(hn::IndicesFromVec(DU(), hn::Zero(DU()))) perm;
  hn::Vec<DU8> spread;
  hn::Vec<DU> shift;
  explicit PackedWords(DI)
      : perm(hn::IndicesFromVec(DU(), hn::Zero(DU()))), spread(hn::Zero(DU8())), shift(hn::Zero(DU())) {
    HWY_ALIGN uint32_t dword[N], bits[N];
    HWY_ALIGN uint8_t pattern[4 * N];
    for (size_t l = 0; l < N; ++l) {
      const size_t bit = kFieldBits * l;
      const size_t first = kFieldBits * (l & ~size_t(3)) / 32;  // the dword l's block starts at
      dword[l] = uint32_t(first + l % 4);
      bits[l] = uint32_t(bit % 8);
      for (size_t j = 0; j < 4; ++j) {
        pattern[4 * l + j] = 8 * j < bit % 8 + kFieldBits ? uint8_t(bit / 8 - 4 * first + j) : uint8_t(0x80);
      }
    }
    perm = hn::IndicesFromVec(DU(), hn::Load(DU(), dword));
    spread = hn::Load(DU8(), pattern);
    shift = hn::Load(DU(), bits);
  }
  HWY_INLINE hn::Vec<DI> Load(DI di, const uint8_t* HWY_RESTRICT p) const {
    const DU du;
    const auto raw = hn::MaskedLoad(hn::FirstN(du, kDwords), du, reinterpret_cast<const uint32_t*>(p));
    const auto moved = hn::BitCast(DU8(), hn::TableLookupLanes(raw, perm));
    const auto words = hn::BitCast(du, hn::TableLookupBytesOr0(moved, spread));
    if constexpr (kShift) return hn::BitCast(di, hn::Shr(words, shift));
    else return hn::BitCast(di, words);
  }
};

// The index words of a chunk: one 32-bit lane per lane holding all S of its
// indices (B = 2, 4, 8: the chunk's byte l widened; B = 3, 5: its field l,
// PackedWords), and index vector k of them: the words shifted right by
// B*k, masked to B bits only where the lookup reads more than the low bits.
struct NoWords {};
template <int B, class DI>
struct IndexWords {
  static constexpr size_t N = hn::MaxLanes(DI());
  using Packed = std::conditional_t<B == 3 || B == 5, PackedWords<B, DI>, NoWords>;
  Packed packed;
  explicit IndexWords(DI di) : packed(MakePacked(di)) {}
  HWY_INLINE hn::Vec<DI> Load(DI di, const uint8_t* HWY_RESTRICT p) const {
    if constexpr (B == 3 || B == 5) return packed.Load(di, p);
    else return hn::BitCast(di, hn::PromoteTo(hn::RebindToUnsigned<DI>(), hn::LoadU(hn::Rebind<uint8_t, DI>(), p)));
  }
  static HWY_INLINE hn::Vec<DI> Sub(DI di, hn::Vec<DI> words, int k) {
    if constexpr (B == 8) {
      return words;  // one index a lane
    } else if constexpr (kUnmaskedIndices<B, N>) {
      return hn::ShiftRightSame(words, B * k);
    } else {
      return hn::And(hn::ShiftRightSame(words, B * k), hn::Set(di, (1 << B) - 1));
    }
  }
 private:
  static Packed MakePacked(DI di) {
    if constexpr (B == 3 || B == 5) return Packed(di);
    else return NoWords();
  }
};

// Group scales, lane by lane. Lane l of every index vector of chunk c holds an
// element of group (c*E + S*l) / G (G, a multiple of S, is a power of two), so
// one lane permute of the record's scales gives the scale of every lane; a
// chunk may span several groups. Needs hd / G <= N and a record of at least
// 2N bytes (the scales are loaded as one N-lane fp16 vector; lanes past the
// last scale read the record's own index bytes and are never selected).
template <int S, class DF>
struct LaneGroups {
  using DI = hn::RebindToSigned<DF>;
  hn::Vec<DI> first;  // S * l
  int log2_group;
  LaneGroups(DF, int group) : first(hn::Mul(hn::Iota(DI(), 0), hn::Set(DI(), S))), log2_group(0) {
    while ((1 << log2_group) < group) ++log2_group;
  }
  HWY_INLINE auto chunk(DF df, int first_element) const {
    return hn::IndicesFromVec(df, hn::ShiftRightSame(hn::Add(first, hn::Set(DI(), first_element)), log2_group));
  }
};

template <class DF>
HWY_INLINE hn::Vec<DF> RecordScales(DF df, const uint8_t* rec) {
  const hn::Rebind<hwy::float16_t, DF> dh;
  return hn::PromoteTo(df, hn::LoadU(dh, reinterpret_cast<const hwy::float16_t*>(rec)));
}

// Centroid values of 2^B-entry codebook `table` (kTableFloats, the codebook
// repeated to 16 entries: FillTable). kCodes: the codes are the values
// (affine8's codebook 0..255), converted instead of gathered.
template <int B, class DF, bool kCodes = false>
struct Centroids {
  static_assert(!kCodes || B == 8, "codes as values: 8-bit indices, one a lane");
  static constexpr size_t N = hn::MaxLanes(DF());
  hn::Vec<DF> lo, hi;
  const float* table;
  Centroids(DF df, const float* t) : lo(hn::LoadU(df, t)), hi(hn::LoadU(df, t + N)), table(t) {}

  template <class VI>
  HWY_INLINE hn::Vec<DF> operator()(DF df, VI idx) const {
    if constexpr (kCodes) {
      return hn::ConvertTo(df, idx);
    } else if constexpr (kTwoTableLowBits<B, N>) {
#if HWY_ARCH_X86 && HWY_TARGET <= HWY_AVX3
      return hn::Vec<DF>{_mm512_permutex2var_ps(lo.raw, idx.raw, hi.raw)};  // idx may hold further indices above bit B
#endif
    } else if constexpr (kUnmaskedIndices<B, N>) {
      return PermuteLowBits(df, lo, idx);  // idx may hold further indices above bit B
    } else if constexpr ((size_t(1) << B) <= N) {
      return hn::TableLookupLanes(lo, hn::IndicesFromVec(df, idx));
    } else if constexpr ((size_t(1) << B) <= 2 * N) {
      const hn::RebindToSigned<DF> di;
      const auto low = hn::IndicesFromVec(df, hn::And(idx, hn::Set(di, int32_t(N - 1))));
      const auto upper = hn::RebindMask(df, hn::Gt(idx, hn::Set(di, int32_t(N - 1))));
      return hn::IfThenElse(upper, hn::TableLookupLanes(hi, low), hn::TableLookupLanes(lo, low));
    } else {
      return hn::GatherIndex(df, table, idx);
    }
  }
};

#if HWY_TARGET != HWY_SCALAR  // one-lane vectors have nothing to interleave
// Horizontal sums of four vectors at once: every 128-bit block k of the
// result holds [Σ_k a, Σ_k b, Σ_k c, Σ_k d] over that block's four lanes
// (two interleave-add rounds instead of four full SumOfLanes).
template <class DF, class V>
HWY_INLINE V SumBlocks4(DF df, V a, V b, V c, V d) {
  const hn::Repartition<double, DF> dd;
  const auto ab = hn::BitCast(dd, hn::Add(hn::InterleaveLower(df, a, b), hn::InterleaveUpper(df, a, b)));
  const auto cd = hn::BitCast(dd, hn::Add(hn::InterleaveLower(df, c, d), hn::InterleaveUpper(df, c, d)));
  return hn::Add(hn::BitCast(df, hn::InterleaveLower(dd, ab, cd)), hn::BitCast(df, hn::InterleaveUpper(dd, ab, cd)));
}

// out[0..4) = full horizontal sums of a, b, c, d (N = 4, 8 or 16 lanes).
template <class DF, class V>
HWY_INLINE void Sum4(DF df, V a, V b, V c, V d, float* HWY_RESTRICT out) {
  constexpr size_t N = hn::MaxLanes(DF());
  const auto v = SumBlocks4(df, a, b, c, d);
  if constexpr (N == 4) {
    hn::StoreU(v, df, out);
  } else if constexpr (N == 8) {
    const hn::Half<DF> d4;
    hn::StoreU(hn::Add(hn::LowerHalf(d4, v), hn::UpperHalf(d4, v)), d4, out);
  } else {
    static_assert(N == 16, "4, 8 or 16 lanes");
    const hn::Half<DF> d8;
    const auto h = hn::Add(hn::LowerHalf(d8, v), hn::UpperHalf(d8, v));
    const hn::Half<decltype(d8)> d4;
    hn::StoreU(hn::Add(hn::LowerHalf(d4, h), hn::UpperHalf(d4, h)), d4, out);
  }
}
#endif

// Dots of R records r0.. with NQ query heads: acc[rr * NQ + j].
template <int B, bool kGroup, int NQ, int R, class DF, class C>
HWY_INLINE void DotRecords(DF df, const uint8_t* HWY_RESTRICT rec, size_t rec_bytes, uint32_t index_offset, int dim,
                           int stride, int group, const float* HWY_RESTRICT qp, const C& centroids,
                           hn::Vec<DF>* acc) {
  const hn::Rebind<int32_t, DF> di;
  constexpr int N = int(hn::MaxLanes(df));
  constexpr int S = kSubVectors<B>;
  constexpr int E = N * S;
  constexpr int kChunkBytes = E * B / 8;
  for (int v = 0; v < R * NQ; ++v) acc[v] = hn::Zero(df);
  const int n_chunks = dim / E;
  const LaneGroups<S, DF> lane_groups(df, group);
  hn::Vec<DF> scales[R];  // (R) the records' group scales
  for (int rr = 0; rr < R; ++rr) scales[rr] = kGroup ? RecordScales(df, rec + rr * rec_bytes) : hn::Zero(df);
  const IndexWords<B, decltype(di)> index_words(di);
  for (int c = 0; c < n_chunks; ++c) {
    hn::Vec<decltype(di)> words[R];
    for (int rr = 0; rr < R; ++rr) words[rr] = index_words.Load(di, rec + rr * rec_bytes + index_offset + c * kChunkBytes);
    hn::Vec<DF> gs[R];  // per-lane group scales of this chunk, per record
    if constexpr (kGroup) {
      const auto gidx = lane_groups.chunk(df, c * E);
      for (int rr = 0; rr < R; ++rr) gs[rr] = hn::TableLookupLanes(scales[rr], gidx);
    }
    // Group scales: with fewer heads than index vectors per chunk, one FMA per
    // head scales the chunk's partial dot; otherwise one multiply per index
    // vector scales the centroids.
    constexpr bool kScaleChunk = kGroup && NQ < S;
    hn::Vec<DF> part[kScaleChunk ? R * NQ : 1];
    if constexpr (kScaleChunk) {
      for (int v = 0; v < R * NQ; ++v) part[v] = hn::Zero(df);
    }
    // Unrolled so that the shifts by B*k take an immediate count (a count in
    // a register costs a second, shuffle-port uop).
    HWY_UNROLL(8)
    for (int k = 0; k < S; ++k) {
      const float* q = qp + c * E + k * N;
      hn::Vec<DF> qv[NQ];
      for (int j = 0; j < NQ; ++j) qv[j] = hn::LoadU(df, q + size_t(j) * stride);
      for (int rr = 0; rr < R; ++rr) {
        auto cv = centroids(df, IndexWords<B, decltype(di)>::Sub(di, words[rr], k));
        if constexpr (kScaleChunk) {
          for (int j = 0; j < NQ; ++j) part[rr * NQ + j] = hn::MulAdd(qv[j], cv, part[rr * NQ + j]);
        } else {
          if constexpr (kGroup) cv = hn::Mul(cv, gs[rr]);
          for (int j = 0; j < NQ; ++j) acc[rr * NQ + j] = hn::MulAdd(qv[j], cv, acc[rr * NQ + j]);
        }
      }
    }
    if constexpr (kScaleChunk) {
      for (int rr = 0; rr < R; ++rr) {
        for (int j = 0; j < NQ; ++j) acc[rr * NQ + j] = hn::MulAdd(part[rr * NQ + j], gs[rr], acc[rr * NQ + j]);
      }
    }
  }
}

// Raw dots <q_j, x̂(r)> of n records with NQ query heads (chunk order), over
// the dim elements of a record (part) that starts at rec0 and repeats every
// rec_bytes. R records per step keep R * NQ >= 4 independent FMA chains in
// flight and reduce them four at a time.   qp: (NQ, stride)   dots: (NQ, kBlock)
template <int B, bool kGroup, int NQ, size_t kN, bool kCodes = false>
void ScoreRecords(const uint8_t* HWY_RESTRICT rec0, size_t rec_bytes, uint32_t index_offset, int n, int dim,
                  int stride, int group, const float* HWY_RESTRICT qp, const float* HWY_RESTRICT table,
                  float* HWY_RESTRICT dots) {
  using DF = hn::CappedTag<float, kN>;
  const DF df;
  const Centroids<B, DF, kCodes> centroids(df, table);
  int r = 0;
#if HWY_TARGET != HWY_SCALAR
  constexpr int N = int(hn::MaxLanes(df));
  // 4 records per step where the registers allow (16 accumulators for 4
  // heads need 32 vector registers, and twice that when group scales are
  // applied per chunk): then one 4-way reduction gives one head's dots of 4
  // consecutive records, stored as one vector.
#if HWY_ARCH_X86 && HWY_TARGET > HWY_AVX3
  constexpr bool kFewRegisters = true;
#else
  constexpr bool kFewRegisters = false;
#endif
  constexpr bool kScaleChunk = kGroup && NQ < kSubVectors<B>;  // as in DotRecords
  constexpr int R = NQ >= 8 ? 1 : NQ == 4 && (kFewRegisters || kScaleChunk) ? 2 : 4;
  if constexpr (N >= 4) {
    for (; r + R <= n; r += R) {
      const uint8_t* rec = rec0 + size_t(r) * rec_bytes;
      hn::Vec<DF> acc[R * NQ];
      DotRecords<B, kGroup, NQ, R>(df, rec, rec_bytes, index_offset, dim, stride, group, qp, centroids, acc);
      alignas(64) float sums[R * NQ];
      if constexpr (R == 4) {  // sums (NQ, 4): head j's dots of records r..r+3
        alignas(16) float norms[4];
        for (int rr = 0; rr < 4; ++rr) norms[rr] = kGroup ? 1.0f : Fp16At(rec + rr * rec_bytes);
        const hn::CappedTag<float, 4> d4;
        for (int j = 0; j < NQ; ++j) {
          Sum4(df, acc[j], acc[NQ + j], acc[2 * NQ + j], acc[3 * NQ + j], sums + 4 * j);
          hn::StoreU(hn::Mul(hn::Load(d4, norms), hn::Load(d4, sums + 4 * j)), d4, dots + j * kBlock + r);
        }
      } else {  // sums (R, NQ)
        for (int v = 0; v < R * NQ; v += 4) Sum4(df, acc[v], acc[v + 1], acc[v + 2], acc[v + 3], sums + v);
        for (int rr = 0; rr < R; ++rr) {
          const float norm = kGroup ? 1.0f : Fp16At(rec + rr * rec_bytes);
          for (int j = 0; j < NQ; ++j) dots[j * kBlock + r + rr] = norm * sums[rr * NQ + j];
        }
      }
    }
  }
#endif
  for (; r < n; ++r) {
    const uint8_t* rec = rec0 + size_t(r) * rec_bytes;
    hn::Vec<DF> acc[NQ];
    DotRecords<B, kGroup, NQ, 1>(df, rec, rec_bytes, index_offset, dim, stride, group, qp, centroids, acc);
    const float norm = kGroup ? 1.0f : Fp16At(rec);
    for (int j = 0; j < NQ; ++j) dots[j * kBlock + r] = norm * hn::GetLane(hn::SumOfLanes(df, acc[j]));
  }
}

// o_j += w_j(r) x̂(r) over n records for NQ heads (chunk order). Chunk by
// chunk, KH index vectors at a time, the NQ * KH output vectors stay in
// registers across the block's records and are stored once. When the chunk
// lies inside one group (always for mse), the record's scale (mse: norm) is
// folded into the weights, so the FMAs take broadcast weights straight from
// memory; chunks spanning groups (kSpan) multiply by per-lane scales instead.
// With several passes per chunk (3 bits, 4 heads) each pass loads the index
// words again (cheaper than staging them).
//   w: (NQ, kBlock)   op: (NQ, stride), dim elements of each row
template <int B, bool kGroup, bool kSpan, int NQ, size_t kN, bool kCodes = false>
void AccumulateRecords(const uint8_t* HWY_RESTRICT rec0, size_t rec_bytes, uint32_t index_offset, int n, int dim,
                       int stride, int group, const float* HWY_RESTRICT w, const float* HWY_RESTRICT table,
                       float* HWY_RESTRICT op) {
  using DF = hn::CappedTag<float, kN>;
  const DF df;
  const hn::Rebind<int32_t, DF> di;
  constexpr int N = int(hn::MaxLanes(df));
  constexpr int S = kSubVectors<B>;
  constexpr int E = N * S;
  constexpr int kChunkBytes = E * B / 8;
  constexpr int KH = S < 16 / NQ ? S : (16 / NQ < 1 ? 1 : 16 / NQ);  // index vectors per pass
  static_assert(S % KH == 0, "passes must tile the chunk");
  const Centroids<B, DF, kCodes> centroids(df, table);
  // Weights times the current group's scale (mse: the norm); chunks spanning
  // groups take the weights as they are.   (NQ, kBlock)
  HWY_ALIGN float wg[kSpan ? 1 : NQ * kBlock];
  const float* HWY_RESTRICT wf = kSpan ? w : wg;
  // The n records' scales are gathered as fp16, then converted and applied N
  // records at a time (a scalar conversion and NQ products per record cost
  // about a tenth of the accumulation).
  auto fold = [&](int scale_byte) {
    HWY_ALIGN hwy::float16_t half[kBlock];
    for (int r = 0; r < n; ++r) std::memcpy(&half[r], rec0 + size_t(r) * rec_bytes + scale_byte, sizeof(half[r]));
    const hn::Rebind<hwy::float16_t, DF> dh;
    int r = 0;
    for (; r + N <= n; r += N) {
      const auto sc = hn::PromoteTo(df, hn::Load(dh, half + r));
      for (int j = 0; j < NQ; ++j) hn::Store(hn::Mul(hn::LoadU(df, w + j * kBlock + r), sc), df, wg + j * kBlock + r);
    }
    for (; r < n; ++r) {
      const float sc = Fp16At(reinterpret_cast<const uint8_t*>(half + r));
      for (int j = 0; j < NQ; ++j) wg[j * kBlock + r] = w[j * kBlock + r] * sc;
    }
  };
  if constexpr (!kGroup) fold(0);
  const int n_chunks = dim / E;
  const LaneGroups<S, DF> lane_groups(df, group);
  const IndexWords<B, decltype(di)> index_words(di);
  int folded_group = -1;
  for (int c = 0; c < n_chunks; ++c) {
    const uint32_t offset = index_offset + uint32_t(c * kChunkBytes);
    if constexpr (kGroup && !kSpan) {
      const int g = (c * E) / group;
      if (g != folded_group) { fold(2 * g); folded_group = g; }
    }
    const auto gidx = lane_groups.chunk(df, kSpan ? c * E : 0);
    HWY_UNROLL(8)  // immediate shift counts, as in DotRecords
    for (int k0 = 0; k0 < S; k0 += KH) {
      hn::Vec<DF> acc[NQ * KH];
      for (int v = 0; v < NQ * KH; ++v) acc[v] = hn::Zero(df);
      for (int r = 0; r < n; ++r) {
        const uint8_t* rec = rec0 + size_t(r) * rec_bytes;
        // The pass's first index at bit 0.
        const auto words = hn::ShiftRightSame(index_words.Load(di, rec + offset), B * k0);
        hn::Vec<DF> gs;  // per-lane group scales of this chunk
        if constexpr (kSpan) gs = hn::TableLookupLanes(RecordScales(df, rec), gidx);
        HWY_UNROLL(8)  // immediate shift counts, as in DotRecords
        for (int kk = 0; kk < KH; ++kk) {
          auto cv = centroids(df, IndexWords<B, decltype(di)>::Sub(di, words, kk));
          if constexpr (kSpan) cv = hn::Mul(cv, gs);
          for (int j = 0; j < NQ; ++j) {
            acc[j * KH + kk] = hn::MulAdd(hn::Set(df, wf[j * kBlock + r]), cv, acc[j * KH + kk]);
          }
        }
      }
      for (int j = 0; j < NQ; ++j) {
        for (int kk = 0; kk < KH; ++kk) {
          float* o = op + size_t(j) * stride + c * E + (k0 + kk) * N;
          hn::StoreU(hn::Add(hn::LoadU(df, o), acc[j * KH + kk]), df, o);
        }
      }
    }
  }
}

// Which stream of a job a plan reads (a key plan's value kernels are
// never called, nor a value plan's score kernels).
enum class Role : uint8_t { Keys, Values };

// A fused reader of one record, or of one part of a split record: the
// kernels and the chunk order they use, and where the part lies.
struct FusedPlan : FusedKernels {
  int group = 0;                      // group: G; mse: the part's dimension (unused)
  uint32_t index_offset = 0;          // from the part's first byte
  size_t record_bytes = 0;            // the whole record: the stride between positions
  int offset = 0, dim = 0;            // elements [offset, offset + dim) of the vector
  uint32_t part_offset = 0;           // the part's first byte in the record
  const codec::Codec* codec = nullptr;  // the part's codec (its codebook)
};

template <int B, bool kGroup, size_t kN, bool kCodes = false>
bool PlanWith(int hd, int group, size_t record_bytes, FusedPlan& plan) {
  constexpr int N = int(hn::MaxLanes(hn::CappedTag<float, kN>()));
  if constexpr (B * kSubVectors<B> * N % 32 != 0) {
    return false;  // a chunk of whole dwords (PackedWords): 5 bits need 8 or 16 lanes
  } else {
    constexpr int E = N * kSubVectors<B>;
    if (hd % E != 0) return false;
    if (kGroup && (hd / group > N || record_bytes < size_t(2 * N))) return false;  // LaneGroups
    plan.lanes = N;
    plan.sub = kSubVectors<B>;
    plan.chunk = E;
    plan.score[0] = &ScoreRecords<B, kGroup, 1, kN, kCodes>;
    plan.score[1] = &ScoreRecords<B, kGroup, 2, kN, kCodes>;
    plan.score[2] = &ScoreRecords<B, kGroup, 4, kN, kCodes>;
    if (kGroup && E > group) {  // chunks span groups
      plan.accumulate[0] = &AccumulateRecords<B, kGroup, true, 1, kN, kCodes>;
      plan.accumulate[1] = &AccumulateRecords<B, kGroup, true, 2, kN, kCodes>;
      plan.accumulate[2] = &AccumulateRecords<B, kGroup, true, 4, kN, kCodes>;
    } else {
      plan.accumulate[0] = &AccumulateRecords<B, kGroup, false, 1, kN, kCodes>;
      plan.accumulate[1] = &AccumulateRecords<B, kGroup, false, 2, kN, kCodes>;
      plan.accumulate[2] = &AccumulateRecords<B, kGroup, false, 4, kN, kCodes>;
    }
    return true;
  }
}

// The widest vector whose chunk divides the head size (and the group size).
template <int B, bool kGroup, bool kCodes = false>
bool PlanBits(int hd, int group, size_t record_bytes, FusedPlan& plan) {
  return PlanWith<B, kGroup, 16, kCodes>(hd, group, record_bytes, plan) ||
         PlanWith<B, kGroup, 8, kCodes>(hd, group, record_bytes, plan) ||
         PlanWith<B, kGroup, 4, kCodes>(hd, group, record_bytes, plan);
}

template <bool kGroup>
bool PlanKind(int bits, int hd, int group, size_t record_bytes, FusedPlan& plan) {
  switch (bits) {
    case 2: return PlanBits<2, kGroup>(hd, group, record_bytes, plan);
    case 3: return PlanBits<3, kGroup>(hd, group, record_bytes, plan);
    case 4: return PlanBits<4, kGroup>(hd, group, record_bytes, plan);
    case 5: return PlanBits<5, kGroup>(hd, group, record_bytes, plan);
    case 8: return PlanBits<8, kGroup>(hd, group, record_bytes, plan);
    default: return false;
  }
}

#if HWY_TARGET != HWY_SCALAR
// Records of `dim` elements with one scale: mse's norm, or group with one
// group (either at the record's byte 0).
inline bool OneScale(const codec::CodecSpec& s, int dim) {
  return s.kind == codec::CodecKind::Mse || (s.kind == codec::CodecKind::Group && s.effective_group() >= dim);
}

// The narrow-product kernels for a one-scale layout, from the AVX-512
// target only (they need more on top of it): int8 scores
// (turbo_attention_int8.h) for keys, else the fp16 kernels
// (turbo_attention_half.h). An int8 plan has no value kernels.
template <KernelPrecision kPrecision>
bool PlanHalf(const codec::CodecSpec& s, int hd, Role role, FusedPlan& plan) {
#if HWY_ARCH_X86 && HWY_TARGET <= HWY_AVX3
  if constexpr (kPrecision == KernelPrecision::Half) {
    if (!OneScale(s, hd)) return false;
    return (role == Role::Keys && plan_int8_scores(s.bits, hd, plan)) || plan_half_kernels(s.bits, hd, plan);
  }
#endif
  (void)s, (void)hd, (void)role, (void)plan;
  return false;
}

// Plans a fused read of one record layout (not split) of dimension hd.
template <KernelPrecision kPrecision>
bool PlanLayout(const codec::Codec& codec, int hd, Role role, FusedPlan& plan) {
  const codec::CodecSpec& s = codec.spec();
  bool ok = false;
  if (PlanHalf<kPrecision>(s, hd, role, plan)) {
    ok = true;
  } else if (s.kind == codec::CodecKind::Mse) {
    ok = PlanKind<false>(s.bits, hd, hd, codec.record_bytes(), plan);
  } else if (s.kind == codec::CodecKind::Group && s.effective_group() >= hd) {
    // One group per record (turbo<B>'s g128 at head size 128): its one
    // scale, at offset 0 like mse's norm, multiplies each dot once after the
    // lane sum instead of every lane of every chunk before it.
    ok = PlanKind<false>(s.bits, hd, hd, codec.record_bytes(), plan);
  } else if (s.kind == codec::CodecKind::Affine && s.bits == 8) {
    // Affine records read as group records whose codebook is the codes
    // themselves, the bias added apart (AffineBiases): 8-bit codes are
    // converted, 4-bit ones looked up in the table 0..15 (FillTable).
    ok = PlanBits<8, true, true>(hd, s.effective_group(), codec.record_bytes(), plan);
  } else if (s.kind == codec::CodecKind::Group || s.kind == codec::CodecKind::Affine) {
    ok = PlanKind<true>(s.bits, hd, s.effective_group(), codec.record_bytes(), plan);
  } else if (s.kind == codec::CodecKind::Prod && s.bits >= 3) {
    // prod: the mse part at B - 1 bits (its norm at byte 0, as mse's), the
    // QJL signs added apart (QjlResiduals, which read whole vectors: the
    // head size must be a multiple of this target's lanes).
    const bool whole_vectors = hd % int(hn::Lanes(hn::ScalableTag<float>())) == 0;
    ok = whole_vectors && PlanKind<false>(s.bits - 1, hd, hd, codec.record_bytes(), plan);
  }
  if (!ok) return false;
  const bool grouped = s.kind == codec::CodecKind::Group || s.kind == codec::CodecKind::Affine;
  plan.group = grouped ? std::min(s.effective_group(), hd) : hd;
  plan.index_offset = codec.layout().index_offset;
  plan.record_bytes = codec.record_bytes();
  plan.dim = hd;
  plan.codec = &codec;
  return true;
}

// Plans the segments that read one record layout over its dim elements:
// one, at the widest vector whose chunk divides dim; or, for layouts with
// one scale (mse, group with one group: the scale read at the record's
// start serves every segment), the elements up to a multiple of a wider
// chunk at that width and the rest at a narrower one (3 bits at 96
// elements: 64 at 8 lanes and 32 at 4, instead of all 96 at 4).
// Segment offsets are relative to the layout.   plans: (2); returns 0..2
template <KernelPrecision kPrecision>
int PlanSegments(const codec::Codec& codec, int dim, Role role, FusedPlan* plans) {
  const bool single = PlanLayout<kPrecision>(codec, dim, role, plans[0]);
  const codec::CodecSpec& s = codec.spec();
  const bool one_scale = OneScale(s, dim);
  const int widest = int(hn::MaxLanes(hn::CappedTag<float, 16>()));
  if ((single && plans[0].lanes >= widest) || !one_scale || !fused_bits(s.bits)) return single ? 1 : 0;
  const int sub = SubVectors(s.bits);
  for (int lanes = widest; lanes > (single ? plans[0].lanes : 2); lanes /= 2) {
    const int head = dim / (lanes * sub) * (lanes * sub);
    if (head == 0 || head == dim) continue;
    FusedPlan a, b;
    if (!PlanLayout<kPrecision>(codec, head, role, a) || !PlanLayout<kPrecision>(codec, dim - head, role, b)) {
      continue;
    }
    b.offset = head;
    b.index_offset += uint32_t(head * s.bits / 8);  // head is whole chunks, whose indices fill whole bytes
    plans[0] = a;
    plans[1] = b;
    return 2;
  }
  return single ? 1 : 0;
}
#endif

// Largest number of segments a record is read in: two parts (split
// records), each in up to two vector widths.
constexpr int kMaxSegments = 4;

// Plans a fused read of `codec`'s records: the segments of one layout, or
// of the two parts of a split record (outlier channels), each read by the
// kernels of its layout, width and codebook; the number of segments, 0
// where the scalar reader must be used.   plans: (kMaxSegments)
template <KernelPrecision kPrecision>
int PlanFused(const codec::Codec& codec, int hd, Role role, FusedPlan* plans) {
#if HWY_TARGET == HWY_SCALAR
  (void)codec, (void)hd, (void)plans;
  return 0;  // one-lane vectors: the codec's scalar path is as good
#else
  int n = 0;
  auto add = [&](const codec::Codec& layout, int dim, int offset, uint32_t part_offset) {
    const int k = PlanSegments<kPrecision>(layout, dim, role, plans + n);
    for (int i = n; i < n + k; ++i) {
      plans[i].offset += offset;
      plans[i].part_offset = part_offset;
      plans[i].record_bytes = codec.record_bytes();
    }
    n += k;
    return k > 0;
  };
  const auto parts = codec.parts();
  if (parts.empty()) return add(codec, hd, 0, 0) ? n : 0;
  if (!add(parts[0], parts[0].dim(), 0, 0)) return 0;
  if (!add(parts[1], parts[1].dim(), parts[0].dim(), codec.layout().split_offset)) return 0;
  return n;
#endif
}

// Query heads are taken in pieces of 4, 2, 1 (GQA 8 is two pieces of 4: 16
// accumulators already fill half the AVX-512 registers): log2 of the next piece.
inline int HeadPiece(int rest) { return rest >= 4 ? 2 : rest >= 2 ? 1 : 0; }

// natural[p] = the natural element index of chunk-order position p, over
// the elements of each part.   natural: (hd)
inline void NaturalIndices(const FusedPlan* plans, int n_parts, int* natural) {
  for (int i = 0; i < n_parts; ++i) {
    const FusedPlan& plan = plans[i];
    for (int c = plan.offset; c < plan.offset + plan.dim; c += plan.chunk) {
      for (int k = 0; k < plan.sub; ++k) {
        for (int l = 0; l < plan.lanes; ++l) natural[c + k * plan.lanes + l] = c + l * plan.sub + k;
      }
    }
  }
}

// The codebook (affine: the codes 0 .. 2^B - 1), repeated to 16 entries
// when smaller (PermuteLowBits), then zeros.   table: (kTableFloats)
inline void FillTable(const codec::Codec& codec, float* table) {
  std::fill(table, table + kTableFloats, 0.0f);
  if (codec.spec().kind == codec::CodecKind::Affine) {
    for (int i = 0; i < (1 << codec.spec().bits); ++i) table[i] = float(i);
    return;
  }
  const auto c = codec.codebook()->centroids();
  const size_t n = std::max<size_t>(c.size(), 16);
  for (size_t i = 0; i < n; ++i) table[i] = c[i % c.size()];
}

// The biases of affine records (x = scale * code + bias, per group of G
// elements; codec/format.h: ng fp16 scales, then ng fp16 biases), which
// the group kernels leave out.
struct AffineBiases {
  int groups = 0;     // ng = hd / G; 0: not affine
  int log2_group = 0;

  AffineBiases(const StreamSource& src, int hd) {
    if (src.read != StreamRead::Fused || src.codec->spec().kind != codec::CodecKind::Affine) return;
    const int g = src.codec->spec().effective_group();
    groups = hd / g;
    while ((1 << log2_group) < g) ++log2_group;
  }
  // Record p's bias of group g.
  float at(const StreamSource& src, int p, int g) const {
    return Fp16At(src.records + size_t(p) * src.codec->record_bytes() + 2 * size_t(groups + g));
  }
  // dots[j][r] += Σ_g bias(r, g) Σ_{i in g} q_j[i] for records p0 + r.
  //   qsum: (n_q, groups)   dots: (n_q, kBlock)
  void score(const StreamSource& src, int nq, int p0, int nb, const float* qsum, float* dots) const {
    for (int r = 0; r < nb; ++r) {
      float b[codec::kMaxDim / 32];
      for (int g = 0; g < groups; ++g) b[g] = at(src, p0 + r, g);
      for (int j = 0; j < nq; ++j) {
        float sum = 0.0f;
        for (int g = 0; g < groups; ++g) sum += b[g] * qsum[j * groups + g];
        dots[j * kBlock + r] += sum;
      }
    }
  }
  // o_j[p] += Σ_r w_j(r) bias(r, group of element natural[p]) over records
  // p0 + r.   w: (n_q, kBlock)   o: (n_q, stride)   natural: (hd)
  void accumulate(const StreamSource& src, int nq, int p0, int nb, const float* w, int hd, int stride,
                  const int* natural, float* o) const {
    float sums[kMaxJobHeads][codec::kMaxDim / 32] = {};
    for (int r = 0; r < nb; ++r) {
      for (int g = 0; g < groups; ++g) {
        const float b = at(src, p0 + r, g);
        for (int j = 0; j < nq; ++j) sums[j][g] += w[j * kBlock + r] * b;
      }
    }
    for (int j = 0; j < nq; ++j) {
      for (int p = 0; p < hd; ++p) o[size_t(j) * stride + p] += sums[j][natural[p] >> log2_group];
    }
  }
};

// Lanes i..i+N of a record's sign bits (LSB first) as a mask.
template <class DF>
HWY_INLINE auto SignMask(DF df, const uint8_t* HWY_RESTRICT z, int i) {
  if constexpr (hn::MaxLanes(df) >= 8) {
    return hn::LoadMaskBits(df, z + i / 8);
  } else {
    const uint8_t bits = uint8_t(z[i / 8] >> (i % 8));
    return hn::LoadMaskBits(df, &bits);
  }
}

// The QJL residuals of prod records (head sizes a multiple of the vector's
// lanes: PlanLayout), x̂ = n (c[idx] + γ k S^T z) with
// k = sqrt(pi/2) / d and z = ±1 from the record's d sign bits (codec.h),
// which the mse kernels at B - 1 bits leave out:
//   scores  <q, x̂> gains n γ k <S q, z>, from the query's sketch S q;
//   values  S^T is linear, so the rows' n γ k w z are summed first (u, kept
//           with the output through the softmax's rescaling) and S^T u is
//           added once per job instead of d^2 work per row.
struct QjlResiduals {
  bool on = false;
  float k = 0.0f;

  QjlResiduals(const StreamSource& src, int hd) {
    on = src.read == StreamRead::Fused && src.codec->spec().kind == codec::CodecKind::Prod;
    k = codec::kQjlScale / float(hd);
  }
  // Record p's sign bits and its factor n γ k.
  struct Row {
    const uint8_t* z;
    float f;
  };
  Row row(const StreamSource& src, int p) const {
    const uint8_t* rec = src.records + size_t(p) * src.codec->record_bytes();
    return {rec + src.codec->layout().sign_offset, Fp16At(rec) * Fp16At(rec + 2) * k};
  }
  // dots[j][r] += n γ k Σ_i ±sketch_j[i] for records p0 + r.
  //   sketch: (n_q, hd)   sketch_sum: (n_q) Σ_i sketch_j[i]   dots: (n_q, kBlock)
  void score(const StreamSource& src, int nq, int p0, int nb, int hd, const float* HWY_RESTRICT sketch,
             const float* sketch_sum, float* HWY_RESTRICT dots) const {
    const hn::ScalableTag<float> df;
    const int N = int(hn::Lanes(df));
    for (int r = 0; r < nb; ++r) {
      const Row row_r = row(src, p0 + r);
      for (int j = 0; j < nq; ++j) {
        const float* sk = sketch + size_t(j) * hd;
        auto acc = hn::Zero(df);
        for (int i = 0; i < hd; i += N) {
          acc = hn::Add(acc, hn::IfThenElseZero(SignMask(df, row_r.z, i), hn::LoadU(df, sk + i)));
        }
        // Σ ±sk = 2 Σ_(z = +1) sk - Σ sk
        dots[j * kBlock + r] += row_r.f * (2.0f * hn::GetLane(hn::SumOfLanes(df, acc)) - sketch_sum[j]);
      }
    }
  }
  // u_j += w_j(r) n γ k z(r) for records p0 + r.   w: (n_q, kBlock)   u: (n_q, hd)
  void accumulate(const StreamSource& src, int nq, int p0, int nb, const float* HWY_RESTRICT w, int hd,
                  float* HWY_RESTRICT u) const {
    const hn::ScalableTag<float> df;
    const int N = int(hn::Lanes(df));
    for (int r = 0; r < nb; ++r) {
      const Row row_r = row(src, p0 + r);
      for (int j = 0; j < nq; ++j) {
        const auto a = hn::Set(df, w[j * kBlock + r] * row_r.f), minus_a = hn::Neg(a);
        float* uj = u + size_t(j) * hd;
        for (int i = 0; i < hd; i += N) {
          hn::StoreU(hn::Add(hn::LoadU(df, uj + i), hn::IfThenElse(SignMask(df, row_r.z, i), a, minus_a)), df, uj + i);
        }
      }
    }
  }
  // o_j += S^T u_j (natural order).   u, o: (n_q, hd)
  void finish(const StreamSource& src, int nq, int hd, const float* HWY_RESTRICT u, float* HWY_RESTRICT o) const {
    const hn::ScalableTag<float> df;
    const int N = int(hn::Lanes(df));
    const float* S = src.codec->qjl_matrix().data();  // (hd, hd) row-major
    for (int j = 0; j < nq; ++j) {
      float* oj = o + size_t(j) * hd;
      for (int row = 0; row < hd; ++row) {
        const auto c = hn::Set(df, u[size_t(j) * hd + row]);
        const float* s_row = S + size_t(row) * hd;
        for (int i = 0; i < hd; i += N) hn::StoreU(hn::MulAdd(c, hn::LoadU(df, s_row + i), hn::LoadU(df, oj + i)), df, oj + i);
      }
    }
  }
};

// out[p] = in[index[p]] for p < n: one vector gather per N elements (a
// job permutes its query into chunk order and its output back; scalar,
// the two cost about a third of a job's fixed cost).
inline void GatherRow(const float* HWY_RESTRICT in, const int* HWY_RESTRICT index, int n, float* HWY_RESTRICT out) {
  const hn::ScalableTag<float> df;
  const hn::RebindToSigned<decltype(df)> di;
  const int N = int(hn::Lanes(df));
  int p = 0;
  for (; p + N <= n; p += N) hn::StoreU(hn::GatherIndex(df, in, hn::LoadU(di, index + p)), df, out + p);
  for (; p < n; ++p) out[p] = in[index[p]];
}

// One position's row as floats: an FP16 row converted, or a record decoded
// through the codec (natural order, the stream's space).   row: (hd)
inline void RowAt(const StreamSource& src, int hd, int p, float* row) {
  if (src.read == StreamRead::Dense) {
    const hn::ScalableTag<float> df;
    const hn::Rebind<hwy::float16_t, decltype(df)> dh;
    const auto* h = reinterpret_cast<const hwy::float16_t*>(src.rows + size_t(p) * hd);
    const int N = int(hn::Lanes(df));
    int i = 0;
    for (; i + N <= hd; i += N) hn::StoreU(hn::PromoteTo(df, hn::LoadU(dh, h + i)), df, row + i);
    for (; i < hd; ++i) row[i] = fp16_to_f32(src.rows[size_t(p) * hd + i]);
  } else {
    src.codec->decode_rotated(src.records + size_t(p) * src.codec->record_bytes(), row);
  }
}

inline float DotF32(const float* a, const float* b, int n) {
  const hn::ScalableTag<float> df;
  const int N = int(hn::Lanes(df));
  auto acc = hn::Zero(df);
  int i = 0;
  for (; i + N <= n; i += N) acc = hn::MulAdd(hn::LoadU(df, a + i), hn::LoadU(df, b + i), acc);
  float sum = hn::GetLane(hn::SumOfLanes(df, acc));
  for (; i < n; ++i) sum += a[i] * b[i];
  return sum;
}

// Dots against FP16 rows or records the fused readers do not take: each row
// is expanded once and dotted with every head (prod keys go through the
// codec's dot_rotated, which needs the query sketch).
//   q: (n_q, hd) natural order   dots: (n_q, kBlock)   tmp: (hd)
inline void ScoreScalar(const StreamSource& src, int hd, int n_q, int p0, int nb, const float* q,
                        const float* q_sketch, float* dots, float* tmp) {
  for (int r = 0; r < nb; ++r) {
    const int p = p0 + r;
    if (q_sketch) {
      for (int j = 0; j < n_q; ++j) {
        dots[j * kBlock + r] = src.codec->dot_rotated(q + size_t(j) * hd, q_sketch + size_t(j) * hd,
                                                      src.records + size_t(p) * src.codec->record_bytes());
      }
      continue;
    }
    RowAt(src, hd, p, tmp);
    for (int j = 0; j < n_q; ++j) dots[j * kBlock + r] = DotF32(q + size_t(j) * hd, tmp, hd);
  }
}

//   w: (n_q, kBlock)   o: (n_q, hd) natural order   tmp: (hd)
inline void AccumulateScalar(const StreamSource& src, int hd, int n_q, int p0, int nb, const float* w, float* o,
                             float* tmp) {
  for (int r = 0; r < nb; ++r) {
    RowAt(src, hd, p0 + r, tmp);
    for (int j = 0; j < n_q; ++j) {
      const float wj = w[j * kBlock + r];
      float* oj = o + size_t(j) * hd;
      for (int i = 0; i < hd; ++i) oj[i] += wj * tmp[i];
    }
  }
}

// Blocked online softmax over [job.begin, job.end) with the fused SIMD
// readers (of kPrecision) and the vectorized exp.
template <KernelPrecision kPrecision>
void AttendChunkT(const ChunkJob& job, float* work) {
  const int hd = job.head_dim, nq = job.n_q;
  float* qp = work;                                   // (kMaxJobHeads, hd) chunk-order query
  float* op = qp + size_t(kMaxJobHeads) * hd;         // (kMaxJobHeads, hd) chunk-order output
  float* sc = op + size_t(kMaxJobHeads) * hd;         // (kMaxJobHeads, kBlock) scores, then weights
  float* sc2 = sc + size_t(kMaxJobHeads) * kBlock;    // (kMaxJobHeads, kBlock) dots of a second part
  float* ktab = sc2 + size_t(kMaxJobHeads) * kBlock;  // (kMaxSegments, kTableFloats)
  float* vtab = ktab + kMaxSegments * kTableFloats;   // (kMaxSegments, kTableFloats)
  float* tmp = vtab + kMaxSegments * kTableFloats;    // (hd)
  float* qjl_u = tmp + hd;                            // (kMaxJobHeads, hd) prod values: Σ w n γ k z

  FusedPlan kp[kMaxSegments], vp[kMaxSegments];
  const int k_segments =
      job.keys.read == StreamRead::Fused ? PlanFused<kPrecision>(*job.keys.codec, hd, Role::Keys, kp) : 0;
  const int v_segments =
      job.values.read == StreamRead::Fused ? PlanFused<kPrecision>(*job.values.codec, hd, Role::Values, vp) : 0;
  const bool k_fused = k_segments > 0, v_fused = v_segments > 0;
  HWY_ALIGN int natural[codec::kMaxDim];
  if (k_fused) {
    for (int i = 0; i < k_segments; ++i) FillTable(*kp[i].codec, ktab + i * kTableFloats);
    NaturalIndices(kp, k_segments, natural);
    for (int j = 0; j < nq; ++j) GatherRow(job.q + size_t(j) * hd, natural, hd, qp + size_t(j) * hd);
  }
  for (int i = 0; i < v_segments; ++i) FillTable(*vp[i].codec, vtab + i * kTableFloats);
  // Affine records: the biases' share of the dots and of the values.
  const AffineBiases k_bias(job.keys, hd), v_bias(job.values, hd);
  float qsum[kMaxJobHeads * (codec::kMaxDim / 32)];  // (n_q, groups) Σ of each group's query elements
  for (int j = 0; j < nq; ++j) {
    for (int g = 0; g < k_bias.groups; ++g) {
      const float* q = job.q + size_t(j) * hd + (size_t(g) << k_bias.log2_group);
      float sum = 0.0f;
      for (int i = 0; i < (1 << k_bias.log2_group); ++i) sum += q[i];
      qsum[j * k_bias.groups + g] = sum;
    }
  }
  HWY_ALIGN int v_natural[codec::kMaxDim];  // affine values: chunk-order position -> element
  if (v_bias.groups > 0) NaturalIndices(vp, v_segments, v_natural);
  // prod records: the QJL residuals' share (the mse kernels read the rest).
  const QjlResiduals k_qjl(job.keys, hd), v_qjl(job.values, hd);
  float sketch_sum[kMaxJobHeads] = {};
  if (k_qjl.on && k_fused) {
    for (int j = 0; j < nq; ++j) {
      for (int i = 0; i < hd; ++i) sketch_sum[j] += job.q_sketch[size_t(j) * hd + i];
    }
  }
  const bool v_residuals = v_qjl.on && v_fused;
  if (v_residuals) std::fill(qjl_u, qjl_u + size_t(nq) * hd, 0.0f);
  float* o = v_fused ? op : job.o;
  std::fill(o, o + size_t(nq) * hd, 0.0f);
  for (int j = 0; j < nq; ++j) {
    job.m[j] = -std::numeric_limits<float>::infinity();
    job.d[j] = 0.0f;
  }

  const hn::ScalableTag<float> df;
  const int NF = int(hn::Lanes(df));
  for (int p0 = job.begin; p0 < job.end; p0 += kBlock) {
    const int nb = std::min(kBlock, job.end - p0);
    // Scores.
    if (k_fused) {
      for (int i = 0; i < k_segments; ++i) {
        const FusedPlan& plan = kp[i];
        const uint8_t* rec = job.keys.records + size_t(p0) * plan.record_bytes + plan.part_offset;
        float* dots = i == 0 ? sc : sc2;
        for (int j0 = 0; j0 < nq;) {
          const int piece = HeadPiece(nq - j0);
          plan.score[piece](rec, plan.record_bytes, plan.index_offset, nb, plan.dim, hd, plan.group,
                            qp + size_t(j0) * hd + plan.offset, ktab + i * kTableFloats, dots + j0 * kBlock);
          j0 += 1 << piece;
        }
        if (i > 0) {
          for (int j = 0; j < nq; ++j) {
            for (int r = 0; r < nb; ++r) sc[j * kBlock + r] += sc2[j * kBlock + r];
          }
        }
      }
      if (k_bias.groups > 0) k_bias.score(job.keys, nq, p0, nb, qsum, sc);
      if (k_qjl.on) k_qjl.score(job.keys, nq, p0, nb, hd, job.q_sketch, sketch_sum, sc);
    } else {
      ScoreScalar(job.keys, hd, nq, p0, nb, job.q, job.q_sketch, sc, tmp);
    }
    // Online softmax: scale, raise the max, weights w = exp(s - m).
    for (int j = 0; j < nq; ++j) {
      float* s = sc + j * kBlock;
      const float shift = job.shift ? job.shift[j] : 0.0f;
      float block_max = -std::numeric_limits<float>::infinity();
      int r0 = 0;
      const auto vscale = hn::Set(df, job.scale), vshift = hn::Set(df, shift);
      auto vmax = hn::Set(df, block_max);
      for (; r0 + NF <= nb; r0 += NF) {
        const auto v = hn::Mul(hn::Add(hn::LoadU(df, s + r0), vshift), vscale);
        hn::StoreU(v, df, s + r0);
        vmax = hn::Max(vmax, v);
      }
      block_max = hn::GetLane(hn::MaxOfLanes(df, vmax));
      for (int r = r0; r < nb; ++r) {
        s[r] = job.scale * (s[r] + shift);
        block_max = std::max(block_max, s[r]);
      }
      if (block_max > job.m[j]) {
        const float correction = std::exp(job.m[j] - block_max);  // 0 for an empty state
        job.d[j] *= correction;
        float* oj = o + size_t(j) * hd;
        for (int i = 0; i < hd; ++i) oj[i] *= correction;
        if (v_residuals) {
          float* uj = qjl_u + size_t(j) * hd;
          for (int i = 0; i < hd; ++i) uj[i] *= correction;
        }
        job.m[j] = block_max;
      }
      const float m = job.m[j];
      int r = 0;
      auto vsum = hn::Zero(df);
      for (; r + NF <= nb; r += NF) {
        const auto w = ExpNonPositive(df, hn::Sub(hn::LoadU(df, s + r), hn::Set(df, m)));
        hn::StoreU(w, df, s + r);
        vsum = hn::Add(vsum, w);
      }
      float sum = hn::GetLane(hn::SumOfLanes(df, vsum));
      for (; r < nb; ++r) { s[r] = std::exp(s[r] - m); sum += s[r]; }
      job.d[j] += sum;
    }
    // Values.
    if (v_fused) {
      for (int i = 0; i < v_segments; ++i) {
        const FusedPlan& plan = vp[i];
        const uint8_t* rec = job.values.records + size_t(p0) * plan.record_bytes + plan.part_offset;
        for (int j0 = 0; j0 < nq;) {
          const int piece = HeadPiece(nq - j0);
          plan.accumulate[piece](rec, plan.record_bytes, plan.index_offset, nb, plan.dim, hd, plan.group,
                                 sc + j0 * kBlock, vtab + i * kTableFloats, op + size_t(j0) * hd + plan.offset);
          j0 += 1 << piece;
        }
      }
      if (v_bias.groups > 0) v_bias.accumulate(job.values, nq, p0, nb, sc, hd, hd, v_natural, op);
      if (v_residuals) v_qjl.accumulate(job.values, nq, p0, nb, sc, hd, qjl_u);
    } else {
      AccumulateScalar(job.values, hd, nq, p0, nb, sc, job.o, tmp);
    }
  }
  if (v_fused) {
    NaturalIndices(vp, v_segments, natural);
    HWY_ALIGN int chunk_pos[codec::kMaxDim];  // the inverse: chunk-order position of natural element i
    for (int p = 0; p < hd; ++p) chunk_pos[natural[p]] = p;
    for (int j = 0; j < nq; ++j) GatherRow(op + size_t(j) * hd, chunk_pos, hd, job.o + size_t(j) * hd);
    if (v_residuals) v_qjl.finish(job.values, nq, hd, qjl_u, job.o);
  }
}

// This target's kernel (the dispatch table returns it once per call).
inline AttendChunkFn ChooseAttendChunk(KernelPrecision precision) {
  return precision == KernelPrecision::Half ? &AttendChunkT<KernelPrecision::Half>
                                            : &AttendChunkT<KernelPrecision::F32>;
}

}  // namespace HWY_NAMESPACE
}  // namespace turbokv::kv::detail
HWY_AFTER_NAMESPACE();

#endif  // per-target include guard
