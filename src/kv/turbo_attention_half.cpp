// The fp16-product kernels of turbo_attention_half.h. This file alone is
// compiled for AVX512-FP16; nothing here runs before plan_half_kernels has
// found the instructions on the CPU.
#include "kv/turbo_attention_half.h"

#include <algorithm>
#include <cstring>
#include <utility>

#include "codec/format.h"
#include "kv/turbo_attention_x86.h"

namespace turbokv::kv::detail {
namespace {

constexpr int kLanes = 32;  // fp16 lanes of a vector

constexpr int SubVectors(int bits) { return bits == 4 ? 2 : 4; }
constexpr int ChunkBytes(int bits) { return kLanes * SubVectors(bits) * bits / 8; }

// AVX512-FP16 and AVX-512 BW on this CPU, and the OS saving the AVX-512 state.
bool cpu_has_avx512fp16() {
  Leaf7 l;
  return avx512_leaf7(l) && ((l.edx >> 23) & 1u) && ((l.ebx >> 30) & 1u);
}

// The chunk's index words: one 16-bit lane per lane of the geometry in the
// header, and index vector k of them (sub<k>: the words shifted right). vpermw
// reads the low 5 bits of a lane, and the table repeats the codebook to 32
// entries, so nothing above bit B needs masking.
template <int B>
struct IndexWords {
  static_assert(B == 2 || B == 4, "bytes of indices");
  TURBOKV_INLINE __m512i load(const uint8_t* p) const {
    return _mm512_cvtepu8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  }
  template <int K>
  TURBOKV_INLINE __m512i sub(__m512i words) const {
    return _mm512_srli_epi16(words, B * K);
  }
};

template <>
struct IndexWords<3> {
  // The 48 bytes as 12 dwords (a masked load: nothing past the chunk is
  // read); a dword permute gives each 128-bit block the dwords its four
  // fields start in, a byte shuffle puts field l in dword l, and the upper
  // half of each dword takes the field shifted right by 12 (indices 4..7).
  __m512i perm, spread;
  IndexWords() {
    alignas(64) uint32_t dword[16];
    alignas(64) uint8_t pattern[64];
    for (int l = 0; l < 16; ++l) {
      const int first = 3 * (l / 4);  // the dword block l / 4's first field starts in
      dword[l] = uint32_t(first + l % 4);
      for (int j = 0; j < 4; ++j) pattern[4 * l + j] = j < 3 ? uint8_t(3 * l - 4 * first + j) : uint8_t(0x80);
    }
    perm = _mm512_load_si512(dword);
    spread = _mm512_load_si512(pattern);
  }
  TURBOKV_INLINE __m512i load(const uint8_t* p) const {
    const __m512i raw = _mm512_maskz_loadu_epi32(0x0FFF, p);
    const __m512i fields = _mm512_shuffle_epi8(_mm512_permutexvar_epi32(perm, raw), spread);
    return _mm512_mask_blend_epi16(0xAAAAAAAA, fields, _mm512_slli_epi32(fields, 4));
  }
  template <int K>
  TURBOKV_INLINE __m512i sub(__m512i words) const {
    return _mm512_srli_epi16(words, 3 * K);
  }
};

template <int K, int B>
TURBOKV_INLINE __m512h Centroids(const IndexWords<B>& index_words, __m512i words, __m512i table) {
  return _mm512_castsi512_ph(_mm512_permutexvar_epi16(index_words.template sub<K>(words), table));
}

// The codebook (the float table, repeated to 16 entries) as 32 fp16 lanes.
TURBOKV_INLINE __m512i HalfTable(const float* table) {
  const __m256i h = _mm512_cvtps_ph(_mm512_loadu_ps(table), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  return _mm512_inserti64x4(_mm512_castsi256_si512(h), h, 1);
}

// Horizontal sums of many vectors at once, by rounds of interleave-and-add:
// after the 16-bit round each 128-bit block holds [a b a b a b a b]
// partials of a pair, after the 32-bit round [a b c d a b c d] of four,
// after the 64-bit round one partial of each of eight. These three rounds
// add 8 lanes in fp16; the four blocks are added in fp32.
template <int kBits>
TURBOKV_INLINE __m512h InterleaveAdd(__m512h x, __m512h y) {
  const __m512i a = _mm512_castph_si512(x), b = _mm512_castph_si512(y);
  if constexpr (kBits == 16) {
    return _mm512_add_ph(_mm512_castsi512_ph(_mm512_unpacklo_epi16(a, b)),
                         _mm512_castsi512_ph(_mm512_unpackhi_epi16(a, b)));
  } else if constexpr (kBits == 32) {
    return _mm512_add_ph(_mm512_castsi512_ph(_mm512_unpacklo_epi32(a, b)),
                         _mm512_castsi512_ph(_mm512_unpackhi_epi32(a, b)));
  } else {
    static_assert(kBits == 64, "16, 32 or 64");
    return _mm512_add_ph(_mm512_castsi512_ph(_mm512_unpacklo_epi64(a, b)),
                         _mm512_castsi512_ph(_mm512_unpackhi_epi64(a, b)));
  }
}

// Eight fp16 partials per block (the 64-bit round's output) summed over the
// four blocks, in fp32.
TURBOKV_INLINE __m256 SumBlocks8(__m512h t) {
  const __m512i ti = _mm512_castph_si512(t);
  const __m512 lo = _mm512_cvtxph_ps(_mm256_castsi256_ph(_mm512_castsi512_si256(ti)));
  const __m512 hi = _mm512_cvtxph_ps(_mm256_castsi256_ph(_mm512_extracti64x4_epi64(ti, 1)));
  const __m512 s = _mm512_add_ps(lo, hi);
  return _mm256_add_ps(_mm512_castps512_ps256(s), _mm512_extractf32x8_ps(s, 1));
}

// [Σ a, Σ b, Σ c, Σ d] from the 32-bit round's [a b c d a b c d] blocks.
TURBOKV_INLINE __m128 SumBlocks4(__m512h abcd) {
  // [a b c d] in the low 64 bits of each block
  const __m512h sum = _mm512_add_ph(
      abcd, _mm512_castsi512_ph(_mm512_shuffle_epi32(_mm512_castph_si512(abcd), _MM_PERM_BADC)));
  const __m512i low = _mm512_permutexvar_epi64(_mm512_setr_epi64(0, 2, 4, 6, 0, 2, 4, 6), _mm512_castph_si512(sum));
  const __m512 f = _mm512_cvtxph_ps(_mm256_castsi256_ph(_mm512_castsi512_si256(low)));  // 4 blocks x [a b c d]
  const __m256 f8 = _mm256_add_ps(_mm512_castps512_ps256(f), _mm512_extractf32x8_ps(f, 1));
  return _mm_add_ps(_mm256_castps256_ps128(f8), _mm256_extractf128_ps(f8, 1));
}

// Raw dots <q_j, x̂(r)> of n records with NQ query heads, 4 records at a
// time (a step past n repeats record n - 1 and drops its dots).
//   qp: (NQ, stride) chunk order   dots: (NQ, kAttentionBlock)
template <int B, int NQ>
void ScoreHalf(const uint8_t* __restrict rec0, size_t rec_bytes, uint32_t index_offset, int n, int dim, int stride,
               int /*group*/, const float* qp, const float* table, float* dots) {
  constexpr int S = SubVectors(B), E = kLanes * S, kChunk = ChunkBytes(B);
  const int n_chunks = dim / E;
  const __m512i tab = HalfTable(table);
  // Each head's query in fp16, scaled to max |q_i| = 1.   (NQ, dim)
  alignas(64) _Float16 qh[NQ][codec::kMaxDim];
  float qscale[NQ];
  for (int j = 0; j < NQ; ++j) {
    const float* q = qp + size_t(j) * stride;
    __m512 amax = _mm512_setzero_ps();
    for (int i = 0; i < dim; i += 16) amax = _mm512_max_ps(amax, _mm512_abs_ps(_mm512_loadu_ps(q + i)));
    qscale[j] = _mm512_reduce_max_ps(amax);
    const __m512 inv = _mm512_set1_ps(qscale[j] > 0.0f ? 1.0f / qscale[j] : 0.0f);
    for (int i = 0; i < dim; i += 16) {
      _mm256_store_si256(reinterpret_cast<__m256i*>(&qh[j][i]),
                         _mm512_cvtps_ph(_mm512_mul_ps(_mm512_loadu_ps(q + i), inv),
                                         _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    }
  }
  __m256 qscale8[NQ / 2 > 0 ? NQ / 2 : 1];  // [scale of head 2i x 4, of head 2i + 1 x 4]
  TURBOKV_UNROLL for (int i = 0; i < NQ / 2; ++i) {
    qscale8[i] = _mm256_set_m128(_mm_set1_ps(qscale[2 * i + 1]), _mm_set1_ps(qscale[2 * i]));
  }
  // Two passes, so that no step waits on the last one's sums: the first
  // takes each step's 4 * NQ accumulators through the 16- and 32-bit rounds
  // and keeps the NQ vectors of [4 records' partials] blocks; the second
  // finishes the sums of all steps.
  alignas(64) __m512h partial[kAttentionBlock / 4][NQ];  // (step, head)
  alignas(16) float norm[kAttentionBlock];
  const IndexWords<B> index_words;
  for (int r = 0; r < n; r += 4) {
    const uint8_t* rec[4];
    TURBOKV_UNROLL for (int rr = 0; rr < 4; ++rr) rec[rr] = rec0 + size_t(std::min(r + rr, n - 1)) * rec_bytes;
    __m512h acc[4][NQ];
    for (auto& row : acc) {
      for (auto& a : row) a = _mm512_setzero_ph();
    }
    for (int c = 0; c < n_chunks; ++c) {
      __m512i words[4];
      TURBOKV_UNROLL for (int rr = 0; rr < 4; ++rr) words[rr] = index_words.load(rec[rr] + index_offset + c * kChunk);
      auto sub = [&](auto k_const) {
        constexpr int k = decltype(k_const)::value;
        TURBOKV_UNROLL for (int rr = 0; rr < 4; ++rr) {
          const __m512h cv = Centroids<k>(index_words, words[rr], tab);
          TURBOKV_UNROLL for (int j = 0; j < NQ; ++j) {
            acc[rr][j] = _mm512_fmadd_ph(cv, _mm512_load_ph(&qh[j][c * E + k * kLanes]), acc[rr][j]);
          }
        }
      };
      [&]<int... K>(std::integer_sequence<int, K...>) { (sub(std::integral_constant<int, K>()), ...); }(
          std::make_integer_sequence<int, S>());
    }
    TURBOKV_UNROLL for (int rr = 0; rr < 4; ++rr) norm[r + rr] = HalfAt(rec[rr]);
    TURBOKV_UNROLL for (int j = 0; j < NQ; ++j) {
      partial[r / 4][j] =
          InterleaveAdd<32>(InterleaveAdd<16>(acc[0][j], acc[1][j]), InterleaveAdd<16>(acc[2][j], acc[3][j]));
    }
  }
  for (int r = 0; r < n; r += 4) {
    // dots of head j, records r..r+3
    auto store = [&](int j, __m128 sum) {
      float* out = dots + j * kAttentionBlock + r;
      if (n - r >= 4) {
        _mm_storeu_ps(out, sum);
      } else {
        alignas(16) float tail[4];
        _mm_store_ps(tail, sum);
        for (int rr = 0; rr < n - r; ++rr) out[rr] = tail[rr];
      }
    };
    const __m128 norms = _mm_load_ps(norm + r);
    if constexpr (NQ == 1) {
      store(0, _mm_mul_ps(_mm_mul_ps(SumBlocks4(partial[r / 4][0]), norms), _mm_set1_ps(qscale[0])));
    } else {
      const __m256 norms8 = _mm256_set_m128(norms, norms);
      TURBOKV_UNROLL for (int i = 0; i < NQ / 2; ++i) {
        const __m256 sums = SumBlocks8(InterleaveAdd<64>(partial[r / 4][2 * i], partial[r / 4][2 * i + 1]));
        const __m256 scaled = _mm256_mul_ps(_mm256_mul_ps(sums, norms8), qscale8[i]);
        store(2 * i, _mm256_castps256_ps128(scaled));
        store(2 * i + 1, _mm256_extractf128_ps(scaled, 1));
      }
    }
  }
}

// o_j += w_j(r) x̂(r) over n (<= kAttentionBlock) records for NQ heads,
// KP chunks (NQ * KP * S <= 16 accumulators) at a time.
//   w: (NQ, kAttentionBlock)   op: (NQ, stride) chunk order
template <int B, int NQ>
void AccumulateHalf(const uint8_t* __restrict rec0, size_t rec_bytes, uint32_t index_offset, int n, int dim,
                    int stride, int /*group*/, const float* w, const float* table, float* op) {
  constexpr int S = SubVectors(B), E = kLanes * S, kChunk = ChunkBytes(B);
  constexpr int KP = 16 / NQ / S > 1 ? 16 / NQ / S : 1;
  const int n_chunks = dim / E;
  const __m512i tab = HalfTable(table);
  // Weights times each record's scale, per head scaled to max 1, in fp16.   (NQ, kAttentionBlock)
  alignas(64) _Float16 wh[NQ][kAttentionBlock];
  float wscale[NQ];
  alignas(64) uint16_t scale[kAttentionBlock];
  for (int r = 0; r < n; ++r) std::memcpy(&scale[r], rec0 + size_t(r) * rec_bytes, sizeof(scale[r]));
  for (int j = 0; j < NQ; ++j) {
    __m512 ws[kAttentionBlock / 16];
    __m512 amax = _mm512_setzero_ps();
    for (int r = 0; r < n; r += 16) {
      const __mmask16 live = n - r >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (n - r)) - 1);
      const __m512 sc = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(live, scale + r));
      ws[r / 16] = _mm512_mul_ps(_mm512_maskz_loadu_ps(live, w + j * kAttentionBlock + r), sc);
      amax = _mm512_max_ps(amax, _mm512_abs_ps(ws[r / 16]));
    }
    wscale[j] = _mm512_reduce_max_ps(amax);
    const __m512 inv = _mm512_set1_ps(wscale[j] > 0.0f ? 1.0f / wscale[j] : 0.0f);
    for (int r = 0; r < n; r += 16) {
      _mm256_store_si256(reinterpret_cast<__m256i*>(&wh[j][r]),
                         _mm512_cvtps_ph(_mm512_mul_ps(ws[r / 16], inv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    }
  }
  const IndexWords<B> index_words;
  for (int c0 = 0; c0 < n_chunks; c0 += KP) {
    const int kp = std::min(KP, n_chunks - c0);
    __m512h acc[NQ][KP * S];
    for (auto& row : acc) {
      for (auto& a : row) a = _mm512_setzero_ph();
    }
    for (int r = 0; r < n; ++r) {
      const uint8_t* rec = rec0 + size_t(r) * rec_bytes + index_offset + c0 * kChunk;
      __m512h wv[NQ];
      TURBOKV_UNROLL for (int j = 0; j < NQ; ++j) wv[j] = _mm512_set1_ph(wh[j][r]);
      TURBOKV_UNROLL for (int cc = 0; cc < KP; ++cc) {
        if (cc >= kp) break;
        const __m512i words = index_words.load(rec + cc * kChunk);
        auto sub = [&](auto k_const) {
          constexpr int k = decltype(k_const)::value;
          const __m512h cv = Centroids<k>(index_words, words, tab);
          TURBOKV_UNROLL for (int j = 0; j < NQ; ++j) acc[j][cc * S + k] = _mm512_fmadd_ph(cv, wv[j], acc[j][cc * S + k]);
        };
        [&]<int... K>(std::integer_sequence<int, K...>) { (sub(std::integral_constant<int, K>()), ...); }(
            std::make_integer_sequence<int, S>());
      }
    }
    TURBOKV_UNROLL for (int j = 0; j < NQ; ++j) {
      const __m512 ws = _mm512_set1_ps(wscale[j]);
      TURBOKV_UNROLL for (int v = 0; v < KP * S; ++v) {
        if (v >= kp * S) break;
        float* o = op + size_t(j) * stride + c0 * E + v * kLanes;
        const __m512i h = _mm512_castph_si512(acc[j][v]);
        const __m512 lo = _mm512_cvtxph_ps(_mm256_castsi256_ph(_mm512_castsi512_si256(h)));
        const __m512 hi = _mm512_cvtxph_ps(_mm256_castsi256_ph(_mm512_extracti64x4_epi64(h, 1)));
        _mm512_storeu_ps(o, _mm512_fmadd_ps(lo, ws, _mm512_loadu_ps(o)));
        _mm512_storeu_ps(o + 16, _mm512_fmadd_ps(hi, ws, _mm512_loadu_ps(o + 16)));
      }
    }
  }
}

template <int B>
void Plan(FusedKernels& out) {
  out.lanes = kLanes;
  out.sub = SubVectors(B);
  out.chunk = kLanes * SubVectors(B);
  out.score[0] = &ScoreHalf<B, 1>;
  out.score[1] = &ScoreHalf<B, 2>;
  out.score[2] = &ScoreHalf<B, 4>;
  out.accumulate[0] = &AccumulateHalf<B, 1>;
  out.accumulate[1] = &AccumulateHalf<B, 2>;
  out.accumulate[2] = &AccumulateHalf<B, 4>;
}

}  // namespace

bool plan_half_kernels(int bits, int dim, FusedKernels& out) {
  static const bool available = cpu_has_avx512fp16();
  if (!available || dim > codec::kMaxDim || (bits != 2 && bits != 3 && bits != 4)) return false;
  if (dim % (kLanes * SubVectors(bits)) != 0) return false;
  switch (bits) {
    case 2: Plan<2>(out); break;
    case 3: Plan<3>(out); break;
    default: Plan<4>(out); break;
  }
  return true;
}

}  // namespace turbokv::kv::detail
