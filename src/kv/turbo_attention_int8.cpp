// The int8 score kernels of turbo_attention_int8.h. This file alone is
// compiled for AVX-512 VNNI and VBMI; nothing here runs before
// plan_int8_scores has found the instructions on the CPU.
#include "kv/turbo_attention_int8.h"

#include <algorithm>
#include <cstring>

#include "codec/format.h"
#include "kv/turbo_attention_x86.h"

namespace turbokv::kv::detail {
namespace {

constexpr int kChunk = 64;     // elements a chunk: one vector of 64 bytes
constexpr int kMaxChunks = 4;  // chunks a record (ScoreInt8 instances): head sizes up to 256

// AVX-512 F, BW, VBMI and VNNI on this CPU, and the OS saving the AVX-512 state.
bool cpu_has_vnni_vbmi() {
  Leaf7 l;
  if (!avx512_leaf7(l)) return false;
  return ((l.ebx >> 16) & 1u) && ((l.ebx >> 30) & 1u) && ((l.ecx >> 1) & 1u) && ((l.ecx >> 11) & 1u);
}

// A chunk's 64 B-bit indices (8 * B bytes) expanded to their codebook bytes
// (the header's layout): qword j takes the bytes of indices 8j..8j+7 (a byte
// permute), byte m of it the 8 bits from bit B * m on (vpmultishiftqb), and
// a byte permute from the table reads the low 6 of those (the table repeats
// the codebook to 64 entries, so the bits above the index do not matter).
template <int B>
struct ChunkIndices {
  __m512i gather, shift;
  ChunkIndices() {
    alignas(64) uint8_t g[64], s[64];
    for (int j = 0; j < 8; ++j) {
      for (int m = 0; m < 8; ++m) {
        g[8 * j + m] = uint8_t(B * j + m);  // bytes B*j .. B*j+7 (only B+1 of them are read)
        s[8 * j + m] = uint8_t(B * m);
      }
    }
    gather = _mm512_load_si512(g);
    shift = _mm512_load_si512(s);
  }
  TURBOKV_INLINE __m512i load(const uint8_t* p, __m512i table) const {
    const __m512i raw = _mm512_maskz_loadu_epi8(__mmask64((uint64_t(1) << (8 * B)) - 1), p);
    const __m512i fields = _mm512_multishift_epi64_epi8(shift, _mm512_permutexvar_epi8(gather, raw));
    return _mm512_permutexvar_epi8(fields, table);
  }
};

// [a0 a1 a0 a1] per 128-bit block: the 32-bit interleave-and-add of two
// vectors of int32 partials.
TURBOKV_INLINE __m512i Add32(__m512i a, __m512i b) {
  return _mm512_add_epi32(_mm512_unpacklo_epi32(a, b), _mm512_unpackhi_epi32(a, b));
}
TURBOKV_INLINE __m512i Add64(__m512i a, __m512i b) {
  return _mm512_add_epi32(_mm512_unpacklo_epi64(a, b), _mm512_unpackhi_epi64(a, b));
}
// Blocks [x0 x1 x2 x3], [y0 y1 y2 y3] -> [x0+x1, x2+x3, y0+y1, y2+y3].
TURBOKV_INLINE __m512i AddBlockPairs(__m512i x, __m512i y) {
  return _mm512_add_epi32(_mm512_shuffle_i32x4(x, y, _MM_SHUFFLE(2, 0, 2, 0)),
                          _mm512_shuffle_i32x4(x, y, _MM_SHUFFLE(3, 1, 3, 1)));
}

// Raw dots <q_j, x̂(r)> of n records of kChunks * 64 elements with NQ query
// heads, 4 records at a time (a step past n repeats record n - 1 and drops
// its dots). The chunk count is a template argument: with a run-time loop
// over chunks GCC keeps some of the 4 * NQ accumulators on the stack.
//   qp: (NQ, stride) natural order   dots: (NQ, kAttentionBlock)
template <int B, int NQ, int kChunks>
void ScoreInt8(const uint8_t* __restrict rec0, size_t rec_bytes, uint32_t index_offset, int n, int /*dim*/,
               int stride, int /*group*/, const float* qp, const float* table, float* dots) {
  constexpr int kBytes = 8 * B;  // a chunk's index bytes
  constexpr int dim = kChunks * kChunk;
  // The codebook as unsigned bytes, u = round(c / cscale) + 128 (1..255),
  // repeated to 64 entries. dpbusd multiplies unsigned by signed bytes:
  // Σ q8 u = Σ q8 c8 + 128 Σ q8, and the second term is taken off after.
  __m512i tab;
  float cscale;
  {
    const __m512 c = _mm512_loadu_ps(table);  // the codebook repeated to 16 entries
    const float cmax = _mm512_reduce_max_ps(_mm512_abs_ps(c));
    cscale = cmax > 0.0f ? cmax / 127.0f : 1.0f;
    const __m512i u = _mm512_add_epi32(_mm512_cvtps_epi32(_mm512_mul_ps(c, _mm512_set1_ps(1.0f / cscale))),
                                       _mm512_set1_epi32(128));
    tab = _mm512_broadcast_i32x4(_mm512_cvtepi32_epi8(u));
  }
  // Each head's query as int8, scaled to max |q_i| = 127.   (NQ, dim)
  alignas(64) int8_t q8[NQ][codec::kMaxDim];
  alignas(64) int32_t bias[16];  // lane 4j + r: 128 Σ q8 of head j
  alignas(64) float factor[16];  // lane 4j + r: head j's scale times the codebook's
  for (int j = 0; j < NQ; ++j) {
    const float* q = qp + size_t(j) * stride;
    __m512 amax = _mm512_setzero_ps();
    for (int i = 0; i < dim; i += 16) amax = _mm512_max_ps(amax, _mm512_abs_ps(_mm512_loadu_ps(q + i)));
    const float qmax = _mm512_reduce_max_ps(amax);
    const float qscale = qmax > 0.0f ? qmax / 127.0f : 1.0f;
    const __m512 inv = _mm512_set1_ps(1.0f / qscale);
    __m512i sum = _mm512_setzero_si512();
    for (int i = 0; i < dim; i += 16) {
      const __m512i qi = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(q + i), inv));
      sum = _mm512_add_epi32(sum, qi);
      _mm_store_si128(reinterpret_cast<__m128i*>(&q8[j][i]), _mm512_cvtepi32_epi8(qi));
    }
    const int32_t s = _mm512_reduce_add_epi32(sum);
    for (int r = 0; r < 4; ++r) {
      bias[4 * j + r] = 128 * s;
      factor[4 * j + r] = qscale * cscale;
    }
  }
  for (int l = 4 * NQ; l < 16; ++l) bias[l] = 0, factor[l] = 0.0f;
  const __m512i vbias = _mm512_load_si512(bias);
  const __m512 vfactor = _mm512_load_ps(factor);
  const ChunkIndices<B> indices;
  for (int r = 0; r < n; r += 4) {
    const uint8_t* rec[4];
    TURBOKV_UNROLL for (int rr = 0; rr < 4; ++rr) rec[rr] = rec0 + size_t(std::min(r + rr, n - 1)) * rec_bytes;
    __m512i acc[4][NQ];
    for (auto& row : acc) {
      for (auto& a : row) a = _mm512_setzero_si512();
    }
    TURBOKV_UNROLL for (int c = 0; c < kChunks; ++c) {
      TURBOKV_UNROLL for (int rr = 0; rr < 4; ++rr) {
        const __m512i u = indices.load(rec[rr] + index_offset + c * kBytes, tab);
        TURBOKV_UNROLL for (int j = 0; j < NQ; ++j) {
          acc[rr][j] = _mm512_dpbusd_epi32(acc[rr][j], u, _mm512_load_si512(&q8[j][c * kChunk]));
        }
      }
    }
    // Per head [r0 r1 r2 r3] partials in each block, then the blocks
    // summed: lane 4j + rr holds <q_j, record rr>.
    __m512i u[NQ];
    TURBOKV_UNROLL for (int j = 0; j < NQ; ++j) u[j] = Add64(Add32(acc[0][j], acc[1][j]), Add32(acc[2][j], acc[3][j]));
    __m512i sums;
    if constexpr (NQ == 4) {
      sums = AddBlockPairs(AddBlockPairs(u[0], u[1]), AddBlockPairs(u[2], u[3]));
    } else if constexpr (NQ == 2) {
      sums = AddBlockPairs(AddBlockPairs(u[0], u[1]), _mm512_setzero_si512());
    } else {
      sums = AddBlockPairs(AddBlockPairs(u[0], _mm512_setzero_si512()), _mm512_setzero_si512());
    }
    alignas(16) float norm[4];
    TURBOKV_UNROLL for (int rr = 0; rr < 4; ++rr) norm[rr] = HalfAt(rec[rr]);
    const __m512 norms = _mm512_broadcast_f32x4(_mm_load_ps(norm));
    alignas(64) float out[16];
    _mm512_store_ps(out, _mm512_mul_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(sums, vbias)), vfactor), norms));
    const int live = std::min(4, n - r);
    TURBOKV_UNROLL for (int j = 0; j < NQ; ++j) {
      if (live == 4) {
        std::memcpy(dots + j * kAttentionBlock + r, out + 4 * j, 4 * sizeof(float));
      } else {
        for (int rr = 0; rr < live; ++rr) dots[j * kAttentionBlock + r + rr] = out[4 * j + rr];
      }
    }
  }
}

template <int B, int kChunks>
void Plan(FusedKernels& out) {
  out.lanes = kChunk;
  out.sub = 1;
  out.chunk = kChunk;
  out.score[0] = &ScoreInt8<B, 1, kChunks>;
  out.score[1] = &ScoreInt8<B, 2, kChunks>;
  out.score[2] = &ScoreInt8<B, 4, kChunks>;
  out.accumulate[0] = out.accumulate[1] = out.accumulate[2] = nullptr;
}

template <int B>
void PlanBits(int dim, FusedKernels& out) {
  switch (dim / kChunk) {
    case 1: Plan<B, 1>(out); break;
    case 2: Plan<B, 2>(out); break;
    case 3: Plan<B, 3>(out); break;
    default: Plan<B, 4>(out); break;
  }
}

}  // namespace

bool plan_int8_scores(int bits, int dim, FusedKernels& out) {
  static const bool available = cpu_has_vnni_vbmi();
  if (!available || (bits != 2 && bits != 3 && bits != 4)) return false;
  if (dim % kChunk != 0 || dim > kMaxChunks * kChunk) return false;
  switch (bits) {
    case 2: PlanBits<2>(dim, out); break;
    case 3: PlanBits<3>(dim, out); break;
    default: PlanBits<4>(dim, out); break;
  }
  return true;
}

}  // namespace turbokv::kv::detail
