// Fused decode attention over compressed (or FP16) KV streams on NVIDIA GPUs:
// split over the sequence (flash-decoding), merged exactly. cuda_kv.h
// describes the design; this file holds the kernels and their one dispatch
// place.
//
// Geometry (mma.sync.m16n8k16, fp16 operands, fp32 accumulators). A CTA is
// W warps on one (sequence, kv head, split): W = 16 for records, 4 where a
// stream is FP16 rows. Each warp walks 16-position tiles of the split, W
// tiles apart, copying each tile's bytes (whole records, or FP16 rows) into
// a private shared-memory ring with cp.async (3 stages for records, 2 for
// FP16 rows), so loads stay in flight while the previous tile is computed.
// The GQA group's heads (<= 8) are the mma's n dimension. Per tile:
//   S^T (16 positions x 8 heads) = K Q^T    A = keys expanded from the tile,
//       B = query fragments (registers, loaded once);
//   online softmax per head (column) in base 2; the maximum is reduced
//       across the 8 lanes of a column with shuffles only when a vote
//       finds a score above the running maximum;
//   P^T's B fragments from S^T's accumulators by movmatrix (an 8x8
//       transpose in registers);
//   O^T (head_dim x 8 heads) += V^T P^T     A = values expanded likewise.
// Record expansion writes no shared memory: each thread reads the index
// bytes of its own fragment elements from the tile (funnel shifts over
// aligned words) and looks pairs of centroids up in the pair table (see
// kTableEntries): one byte permute, which builds the entry's shared address,
// and one LDS per two elements at 4 bits (5- and 8-bit records: one LDS
// per element, kSingle). A record's fp16 scale multiplies the expanded keys
// (HMUL2) or, with one scale per record, the scores (keys) or the softmax
// weights (values).
// Because a dot product does not care about element order, keys use the
// element order that makes each thread's bytes contiguous (thread r of a
// quad owns elements [r*d/4, (r+1)*d/4) of a position) and the query
// fragments are gathered in that order once; values likewise own
// [g*d/8, (g+1)*d/8), and the output is written back in natural order at
// the end. FP16 rows use ldmatrix from padded rows instead.
#include <cooperative_groups.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <type_traits>

#include "codec/codec.h"
#include "cuda/cuda_check.cuh"
#include "cuda/cuda_kv.h"
#include "util/fp16.h"

namespace turbokv::cuda {
namespace {

constexpr int kTile = 16;          // positions per warp step
constexpr int kMaxRows = 8;        // query heads per kv head (the mma's n = 8)
constexpr float kLog2e = 1.4426950408889634f;

struct KernelArgs {
  const uint8_t* keys;
  const uint8_t* values;
  uint32_t k_row, v_row;             // bytes per position
  uint32_t k_index_offset, v_index_offset;
  int k_log2_group, v_log2_group;    // elements per scale (records)
  uint32_t k_stage, v_stage;         // shared bytes of one tile of each stream
  uint32_t k_pad, v_pad;             // shared bytes between a tile's positions 7 and 8 (records; see row_position)
  uint64_t rows;                     // position of each mma row of a tile, 4 bits a row (see row_position)
  const uint16_t* k_table;           // device (256) fp16 centroids, 2^B used (DecodeAttention::centroids_)
  const uint16_t* v_table;
  const int* seq_len;
  int capacity, n_kv, group, split, n_split;
  const float* q;
  const float* shift;
  float scale_log2;                  // scale * log2(e)
  float* ws_m;                       // (n_seq, n_head, n_split) running max, base 2
  float* ws_d;                       // (n_seq, n_head, n_split)
  float* ws_o;                       // (n_seq, n_head, n_split, head_dim) unnormalized
  float* out;                        // (n_seq, n_head, head_dim), written by the cluster; null: merge_kernel merges
  float* out_m;                      // (n_seq, n_head): partial states wanted (AttentionArgs::out_m), else null
  float* out_d;
  uint32_t ring_bytes;               // dynamic shared bytes before the pair table (ring, or the warps' merge)
  const int* tail_len;               // (n_seq) positions after seq_len held as fp16 rows, or null (AttentionArgs)
  const uint16_t* tail_keys;         // (n_seq, n_kv, tail_capacity, head_dim) fp16, the query's space
  const uint16_t* tail_values;       // likewise, the output's space
  int tail_capacity;
  uint64_t* timeline;                // (n_seq, n_kv, n_split, kTimelineSlots) or null (AttentionArgs::timeline)
};

// Folds the partial states of one output element, split by split in order
// (kv/online_softmax.h merge, base 2): the folded maximum, denominator and
// unnormalized element. m(s), d(s), o(s) read split s's running maximum,
// denominator and unnormalized element; splits without positions (d zero)
// add nothing.
struct Folded {
  float m, d, o;
  // The normalized element; no positions give zero.
  __device__ __forceinline__ float value() const { return d > 0.0f ? o / d : 0.0f; }
};
template <class M, class D, class O>
__device__ __forceinline__ Folded fold_splits(int n_split, M m, D d, O o) {
  float mx = -INFINITY;
  for (int s = 0; s < n_split; ++s) mx = fmaxf(mx, m(s));
  float den = 0.0f, acc = 0.0f;
  if (mx != -INFINITY) {
    for (int s = 0; s < n_split; ++s) {
      const float ds = d(s);
      if (ds == 0.0f) continue;
      const float f = exp2f(m(s) - mx);
      den += ds * f;
      acc += o(s) * f;
    }
  }
  return {mx, den, acc};
}

// Writes element e of query row `row` (sequence * n_head + head) of a call:
// normalized into out, or, where the caller asked for partial states
// (out_m, out_d), unnormalized, with the row's maximum and denominator
// once (e = 0).
__device__ __forceinline__ void write_output(float* out, float* out_m, float* out_d, size_t row, int hd, int e,
                                             const Folded& f) {
  if (out_m == nullptr) {
    out[row * hd + e] = f.value();
    return;
  }
  out[row * hd + e] = f.o;
  if (e == 0) {
    out_m[row] = f.m;
    out_d[row] = f.d;
  }
}

// Thread 0 writes the global timer into slot `point` of its CTA's row of
// the timeline (AttentionArgs::timeline), and at entry the SM's id too.
// Profiling builds only (TURBOKV_CUDA_TIMELINE): elsewhere no code.
__device__ __forceinline__ void stamp([[maybe_unused]] const KernelArgs& a, [[maybe_unused]] TimelinePoint point) {
#ifdef TURBOKV_CUDA_TIMELINE
  if (a.timeline == nullptr || threadIdx.x != 0) return;
  uint64_t t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  uint64_t* row = a.timeline + ((size_t(blockIdx.z) * gridDim.y + blockIdx.y) * gridDim.x + blockIdx.x) * kTimelineSlots;
  row[point] = t;
  if (point == kTimelineEntry) {
    uint32_t sm;
    asm volatile("mov.u32 %0, %%smid;" : "=r"(sm));
    row[kTimelineSm] = sm;
  }
#endif
}

// ---- PTX wrappers -----------------------------------------------------------------------

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return uint32_t(__cvta_generic_to_shared(p));
}

// 16 bytes global -> shared; bytes past src_bytes are zero-filled.
__device__ __forceinline__ void cp_async16(void* dst, const void* src, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src), "r"(src_bytes));
}
// 16 bytes global -> shared, no fill.
__device__ __forceinline__ void cp_async16_full(uint32_t dst, const void* src) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(dst), "l"(src));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}

// c (16x8 fp32) += a (16x16 fp16, row) * b (16x8 fp16, col).
__device__ __forceinline__ void mma16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// 2^x (MUFU.EX2; results below 2^-126 flush to zero: as softmax weights they
// round to zero in fp16 anyway). exp2f adds a range fix-up around it.
__device__ __forceinline__ float ex2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

__device__ __forceinline__ uint32_t pack_half2(float lo, float hi) {
  const __half2 h = __floats2half2_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&h);
}
__device__ __forceinline__ uint32_t hmul2_u32(uint32_t a, uint32_t b) {
  const __half2 r = __hmul2(*reinterpret_cast<const __half2*>(&a), *reinterpret_cast<const __half2*>(&b));
  return *reinterpret_cast<const uint32_t*>(&r);
}

// ---- stream readers ------------------------------------------------------------------------

// NW words of the bit stream starting at byte `byte_off` of a 16-byte aligned
// shared buffer (reads one aligned word past them; the stage is padded).
template <int NW>
__device__ __forceinline__ void load_words(const uint8_t* aligned, uint32_t sh, uint32_t (&x)[NW]) {
  const uint32_t* w = reinterpret_cast<const uint32_t*>(aligned);
  uint32_t prev = w[0];
#pragma unroll
  for (int i = 0; i < NW; ++i) {
    const uint32_t next = w[i + 1];
    x[i] = __funnelshift_r(prev, next, sh);
    prev = next;
  }
}

// Index e (compile-time after unrolling) of a B-bit LSB-first stream.
template <int B, int NW>
__device__ __forceinline__ uint32_t index_at(const uint32_t (&x)[NW], int e) {
  const int bit = e * B, w = bit >> 5, o = bit & 31;
  uint32_t v = x[w] >> o;
  if (o + B > 32) v |= x[w + 1] << (32 - o);
  return v & ((1u << B) - 1u);
}

__device__ __forceinline__ uint32_t half_at(const uint8_t* stage, uint32_t byte_off) {
  return *reinterpret_cast<const uint16_t*>(stage + byte_off);
}
__device__ __forceinline__ uint32_t dup_half(uint32_t h) { return h | (h << 16); }

struct Fp16Rows {
  static constexpr bool kFp16 = true;
  static constexpr int kBits = 16;
};
// Records of B-bit indices; kOneScale: one fp16 scale for the whole record
// (mse, or group with G = head_dim), folded into the softmax weights (values).
template <int B, bool kOneScale>
struct Records {
  static_assert((B >= 2 && B <= 5) || B == 8, "records of 2 to 5 or 8 bits");
  static constexpr bool kFp16 = false;
  static constexpr int kBits = B;
  static constexpr bool kFoldScale = kOneScale;
};

// Pair table: entry e (2B bits: element 2m in the low B bits, 2m + 1 in the
// high ones, as packed) holds half2 {c[e & (2^B - 1)], c[e >> B]}, stored
// once per bank so that a warp's lookups are conflict-free whatever the
// indices. Entry e occupies bytes [256 e, 256 e + 256): the key codebook's
// copies at + 4 lane, the value codebook's at + 128 + 4 lane. In record
// kernels (one CTA per SM) the table sits after the ring at a shared
// address aligned to its size, so a lookup's shared address is table |
// (pair << 8) | column, and for 4-bit records one byte permute builds it
// from the packed byte and the column (which carries the table's address
// bits), then one LDS [register]: two instructions per two elements. With
// the table at an unaligned address the LDS adds the table's address
// (LDS [register + uniform register] in the SASS, the same instruction
// count), measured slower (H200, turbo4 at batch 8, 32K: 97.2 -> 94.4 us,
// medians in one run). Kernels with an FP16 stream (2 CTAs per SM) have no
// room for the alignment gap and add the address (kAlignedTable).
// 2^(2B) * 256 bytes: 64 KiB at 4 bits. Records of 5 bits (the near tier
// of turbo4, turbo4v2 and turbo0v4) would need 256 KiB of pairs, and 8-bit
// ones (turbo8) 16 MiB: their table holds single elements, entry e =
// half2 {c[e], c[e]} (8 KiB at 5 bits, 64 KiB at 8), and each element
// takes its own lookup (kSingle).
// The kernels' templates and the host's launch setup (DecodeAttention) both
// derive their geometry from the streams' bit widths (16: fp16 rows)
// through table_entries, chunks_per_lane, stages_of and warps_of.
template <int B>
constexpr bool kSingle = B > 4;
__host__ __device__ constexpr int table_entries(int bits) {
  return bits == 16 ? 0 : bits > 4 ? 1 << bits : 1 << (2 * bits);
}
template <class KL, class VL>
constexpr int kTableEntries =
    table_entries(KL::kBits) > table_entries(VL::kBits) ? table_entries(KL::kBits) : table_entries(VL::kBits);
template <class KL, class VL>
constexpr bool kAlignedTable = !KL::kFp16 && !VL::kFp16;

// Shared-memory row pitch of FP16 rows: 16 bytes of padding per row keep
// ldmatrix conflict-free.
template <int HD>
constexpr int kRowPitch = (HD + 8) * 2;

// 16-byte chunks a lane copies per tile of a stream's records: a tile is
// row_bytes chunks, at most 96 (3 a lane) below 8 bits, at most 160 (5 a
// lane: group8 with groups of 16 at head_dim 128) at 8 bits.
__host__ __device__ constexpr int chunks_per_lane(int bits) { return bits == 16 ? 1 : bits == 8 ? 5 : 3; }
template <class L>
constexpr int kChunksOf = chunks_per_lane(L::kBits);

// Copies one tile (16 positions from `src`, `valid` of them real) into a
// stage; positions past `valid` are zero (zero scales: finite, and masked).
// Records: the tile is 16 * row_bytes contiguous bytes, `row_bytes` chunks
// of 16 (at most kChunksOf per lane); positions 8-15 (from chunk
// row_bytes / 2: records have an even size) land `pad` bytes further than
// positions 0-7 (see row_position).
template <class L, int HD>
__device__ __forceinline__ void copy_tile(uint8_t* stage, const uint8_t* src, uint32_t row_bytes, uint32_t pad,
                                          int valid, int lane) {
  if constexpr (L::kFp16) {
    constexpr int kChunks = HD / 8;  // 16-byte chunks per row
#pragma unroll
    for (int c = lane; c < kTile * kChunks; c += 32) {
      const int row = c / kChunks, col = c % kChunks;
      const bool ok = row < valid;
      cp_async16(stage + row * kRowPitch<HD> + col * 16, ok ? src + size_t(row) * HD * 2 + col * 16 : src,
                 ok ? 16 : 0);
    }
  } else {
    const int total = int(row_bytes), half = int(row_bytes / 2);
    const uint32_t dst = smem_addr(stage) + uint32_t(lane) * 16u;
    const uint8_t* from = src + lane * 16;
    if (valid == kTile) {
#pragma unroll
      for (int j = 0; j < kChunksOf<L>; ++j) {
        const int c = lane + 32 * j;
        if (c < total) cp_async16_full(dst + 512u * j + (c >= half ? pad : 0u), from + 512 * j);
      }
    } else {
      const int valid_bytes = valid * int(row_bytes);
#pragma unroll
      for (int j = 0; j < kChunksOf<L>; ++j) {
        const int c = lane + 32 * j, off = c * 16;
        if (c < total) {
          const int n = min(max(valid_bytes - off, 0), 16);
          cp_async16(stage + off + (c >= half ? pad : 0u), n > 0 ? src + off : src, n);
        }
      }
    }
  }
}

// A whole tile of records, the common case, with this lane's chunk offsets
// in the stage computed once (TileChunks): one add and one copy per chunk.
constexpr uint32_t kNoChunk = 0xffffffffu;
template <int N>
struct TileChunks {
  uint32_t dst[N];  // stage offsets of chunks lane, lane + 32, ... (pad applied), or kNoChunk
  __device__ __forceinline__ TileChunks(uint32_t row_bytes, uint32_t pad, int lane) {
#pragma unroll
    for (int j = 0; j < N; ++j) {
      const uint32_t c = uint32_t(lane + 32 * j);
      dst[j] = c < row_bytes ? 16u * c + (c >= row_bytes / 2 ? pad : 0u) : kNoChunk;
    }
  }
};
template <int N>
__device__ __forceinline__ void copy_whole_tile(uint32_t stage, const uint8_t* src, const TileChunks<N>& ch,
                                                int lane) {
  const uint8_t* from = src + lane * 16;
#pragma unroll
  for (int j = 0; j < N; ++j) {
    if (ch.dst[j] != kNoChunk) cp_async16_full(stage + ch.dst[j], from + 512 * j);
  }
}

// Shared address, less `base`, of the pair-table entry of pair m (elements
// 2m, 2m + 1) of a thread's index words; col: this lane's column (< 256)
// plus the table's address where it is aligned (see kTableEntries).
template <int B, int NW>
__device__ __forceinline__ uint32_t pair_address(const uint32_t (&x)[NW], int m, uint32_t col) {
  if constexpr (B == 4) {
    // byte 0 <- col's, byte 1 <- byte m of the words, bytes 2, 3 <- col's
    return __byte_perm(x[m >> 2], col, 0x7604u | (uint32_t(m & 3) << 4));
  } else {
    return (index_at<2 * B>(x, m) << 8) | col;
  }
}

// The pair-table word at a shared address. volatile: the asm reads memory
// the table fill wrote before a barrier, so it must not move across it.
__device__ __forceinline__ uint32_t table_at(uint32_t address) {
  uint32_t v;
  asm volatile("ld.shared.b32 %0, [%1];" : "=r"(v) : "r"(address));
  return v;
}

// Tile layout of records in shared memory (the DecodeAttention constructor
// picks it per stream pair with index_wavefronts). The tile's 16 mma rows (S^T's rows, P^T's k index) may
// be any order of its 16 positions: row i is position (rows >> 4 i) & 15,
// the same for keys, values and the mask. And positions 8-15 of a stream's
// tile may sit `pad` bytes (a multiple of 16) after positions 0-7. Records
// are copied whole, so a record of 66 bytes (group4g128: turbo4 at head_dim
// 128) starts 2 bytes off a word every other position, and in natural order
// with no pad the lanes of every index-word load share banks two by two
// (keys 20, values 24 bank wavefronts a tile). Rows 0-7 at the even
// positions 0 4 8 12 2 6 10 14 and rows 8-15 at the odd ones, with 48 bytes
// between the halves, spread each load over 32 banks (keys 10, values 12
// wavefronts: the minimum).
__host__ __device__ constexpr uint32_t row_position(uint64_t rows, int i) { return uint32_t(rows >> (4 * i)) & 15u; }
// Byte offset in a stage of the record of position p.
__device__ __forceinline__ uint32_t record_at(uint32_t p, uint32_t row_bytes, uint32_t pad) {
  return p * row_bytes + (p >= 8u ? pad : 0u);
}

// Key A fragments (S^T = K Q^T: rows = 16 positions, k = elements) of
// k-step c. Records: thread (g, r) expands elements [r*HD/4, (r+1)*HD/4) of
// the positions of rows g and 8 + g; k-step c takes elements r*HD/4 + 4c + {0,1}
// (logical k 2r, 2r+1: pair 2c) and + {2,3} (logical k 2r+8, 2r+9: pair 2c+1).
// kFold: one scale per record (applied to the scores; only s_lo is loaded).
template <int B, int HD, bool kFold>
struct KeyRecords {
  static constexpr int kElems = HD / 4;
  static constexpr int kBytes = kElems * B / 8;
  static constexpr int kWords = (kBytes + 3) / 4;
  uint32_t x[2][kWords];
  uint32_t s_lo[2], s_hi[2];  // half2 scales of the first and second half of the thread's elements

  // Where this thread's bytes sit in a tile (the same in every tile), once.
  struct Plan {
    uint32_t word[2];           // aligned byte offsets of the index bytes of rows g and g + 8
    uint32_t sh[2];             // bit shifts from there
    uint32_t s_lo[2], s_hi[2];  // byte offsets of their scales
  };
  static __device__ __forceinline__ Plan plan(const KernelArgs& a, int g, int r) {
    Plan p;
    const int e0 = r * kElems;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const uint32_t rec = record_at(row_position(a.rows, g + 8 * h), a.k_row, a.k_pad);
      const uint32_t off = rec + a.k_index_offset + uint32_t(r * kBytes);
      p.word[h] = off & ~3u;
      p.sh[h] = (off & 3u) * 8u;
      p.s_lo[h] = rec + 2u * uint32_t(e0 >> a.k_log2_group);
      p.s_hi[h] = rec + 2u * uint32_t((e0 + kElems / 2) >> a.k_log2_group);
    }
    return p;
  }
  __device__ __forceinline__ void load(const uint8_t* stage, const Plan& p) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      load_words<kWords>(stage + p.word[h], p.sh[h], x[h]);
      if constexpr (kFold) {
        s_lo[h] = half_at(stage, p.s_lo[h]);
      } else {
        s_lo[h] = dup_half(half_at(stage, p.s_lo[h]));
        s_hi[h] = dup_half(half_at(stage, p.s_hi[h]));
      }
    }
  }
  // base, col: see pair_address (key column: 4 lane).
  __device__ __forceinline__ void fragment(int c, uint32_t base, uint32_t col, uint32_t (&k)[4]) const {
#pragma unroll
    for (int h = 0; h < 2; ++h) {  // row g, then g + 8
      if constexpr (kSingle<B>) {  // one lookup per element, two make a register
        auto at = [&](int e) { return table_at(base + ((index_at<B>(x[h], e) << 8) | col)); };
        k[h] = __byte_perm(at(4 * c), at(4 * c + 1), 0x5410);
        k[h + 2] = __byte_perm(at(4 * c + 2), at(4 * c + 3), 0x5410);
      } else {
        k[h] = table_at(base + pair_address<B>(x[h], 2 * c, col));
        k[h + 2] = table_at(base + pair_address<B>(x[h], 2 * c + 1, col));
      }
      if constexpr (!kFold) {
        const uint32_t s = (4 * c < kElems / 2) ? s_lo[h] : s_hi[h];
        k[h] = hmul2_u32(k[h], s);
        k[h + 2] = hmul2_u32(k[h + 2], s);
      }
    }
  }
  // The one scale of rows g and 8 + g (records with one scale).
  __device__ __forceinline__ float scale(int h) const { return __half2float(__ushort_as_half(uint16_t(s_lo[h]))); }
  // The query's B-fragment k pairs 2r (x, y) and 2r + 8 (z, w) of k-step c:
  // physical elements r*HD/4 + 4c + {0, 1, 2, 3}, one 16-byte load.
  static __device__ __forceinline__ float4 query(const float* q, int c, int r) {
    return *reinterpret_cast<const float4*>(q + r * kElems + 4 * c);
  }
};

template <int HD>
struct KeyRows {
  // The query's B-fragment k pairs 2r (x, y) and 2r + 8 (z, w) of k-step c.
  static __device__ __forceinline__ float4 query(const float* q, int c, int r) {
    const float2 lo = *reinterpret_cast<const float2*>(q + 16 * c + 2 * r);
    const float2 hi = *reinterpret_cast<const float2*>(q + 16 * c + 8 + 2 * r);
    return make_float4(lo.x, lo.y, hi.x, hi.y);
  }
};

// Value A fragments (O^T = V^T P^T: rows = 16 elements, k = 16 positions)
// of m-tile mt. Records: thread (g, r) expands the positions of rows {2r,
// 2r+1, 2r+8, 2r+9} of elements [g*HD/8, (g+1)*HD/8); m-tile mt's row g is
// element g*HD/8 + 2mt and row g + 8 is element g*HD/8 + 2mt + 1: one pair
// lookup per position, and two byte permutes per pair of positions make the
// fragment (4-bit records: one lookup per fragment register, see load()).
// kFold (one scale per record): the scales multiply the softmax weights
// instead, and the thread loads those of its S^T rows g and g + 8.
template <int B, int HD, bool kFold>
struct ValueRecords {
  static constexpr int kElems = HD / 8;
  static constexpr int kBytes = kElems * B / 8;
  static constexpr int kWords = (kBytes + 3) / 4;
  uint32_t x[4][kWords];
  uint32_t sA, sB;  // kFold: fp16 scales of rows g, g + 8; else half2 scales of rows {2r, 2r+1}, {2r+8, 2r+9}

  // Where this thread's bytes sit in a tile (the same in every tile), once:
  // rows 2r, 2r + 1, 2r + 8, 2r + 9.
  struct Plan {
    uint32_t word[4], sh[4], scale[4];  // kFold: scale[0..1] = records of rows g, g + 8
  };
  static __device__ __forceinline__ Plan plan(const KernelArgs& a, int g, int r) {
    Plan p;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const uint32_t rec = record_at(row_position(a.rows, 2 * r + (j & 1) + 8 * (j >> 1)), a.v_row, a.v_pad);
      const uint32_t off = rec + a.v_index_offset + uint32_t(g * kBytes);
      p.word[j] = off & ~3u;
      p.sh[j] = (off & 3u) * 8u;
      p.scale[j] = rec + 2u * uint32_t((g * kElems) >> a.v_log2_group);
    }
    if constexpr (kFold) {
      p.scale[0] = record_at(row_position(a.rows, g), a.v_row, a.v_pad);
      p.scale[1] = record_at(row_position(a.rows, g + 8), a.v_row, a.v_pad);
    }
    return p;
  }
  __device__ __forceinline__ void load(const uint8_t* stage, const Plan& p) {
#pragma unroll
    for (int j = 0; j < 4; ++j) load_words<kWords>(stage + p.word[j], p.sh[j], x[j]);
    if constexpr (B == 4) {
      // Regroup the nibbles of each pair of positions, {2r, 2r+1} in x[0],
      // x[1] and {2r+8, 2r+9} in x[2], x[3]: afterwards byte m of x[0]'s
      // words holds element 2m of both positions (low nibble: the first),
      // byte m of x[1]'s element 2m + 1, likewise x[2], x[3]. A pair lookup
      // then returns a fragment register as it is: six shifts and LOP3s per
      // pair of words (eight fragment registers) replace a byte permute per
      // fragment register (H200, turbo4 at batch 8, 32K: 97.2 -> 95.1 us,
      // medians in one run).
#pragma unroll
      for (int w = 0; w < kWords; ++w) {
#pragma unroll
        for (int q = 0; q < 4; q += 2) {
          const uint32_t first = x[q][w], second = x[q + 1][w];
          x[q][w] = (first & 0x0f0f0f0fu) | ((second << 4) & 0xf0f0f0f0u);
          x[q + 1][w] = ((first >> 4) & 0x0f0f0f0fu) | (second & 0xf0f0f0f0u);
        }
      }
    }
    if constexpr (kFold) {
      sA = half_at(stage, p.scale[0]);
      sB = half_at(stage, p.scale[1]);
    } else {
      sA = half_at(stage, p.scale[0]) | (half_at(stage, p.scale[1]) << 16);
      sB = half_at(stage, p.scale[2]) | (half_at(stage, p.scale[3]) << 16);
    }
  }
  // base, col: see pair_address (value column: 128 + 4 lane).
  __device__ __forceinline__ void fragment(int mt, uint32_t base, uint32_t col, uint32_t (&v)[4]) const {
    if constexpr (B == 4) {  // regrouped by load(): one lookup per register
#pragma unroll
      for (int j = 0; j < 4; ++j) v[j] = table_at(base + pair_address<B>(x[j], mt, col));
    } else if constexpr (kSingle<B>) {  // one lookup per element (rows 2r, 2r+1, 2r+8, 2r+9; elements 2mt, 2mt+1)
      auto at = [&](int j, int e) { return table_at(base + ((index_at<B>(x[j], e) << 8) | col)); };
      v[0] = __byte_perm(at(0, 2 * mt), at(1, 2 * mt), 0x5410);
      v[1] = __byte_perm(at(0, 2 * mt + 1), at(1, 2 * mt + 1), 0x5410);
      v[2] = __byte_perm(at(2, 2 * mt), at(3, 2 * mt), 0x5410);
      v[3] = __byte_perm(at(2, 2 * mt + 1), at(3, 2 * mt + 1), 0x5410);
    } else {
      const uint32_t l0 = table_at(base + pair_address<B>(x[0], mt, col));
      const uint32_t l1 = table_at(base + pair_address<B>(x[1], mt, col));
      const uint32_t l2 = table_at(base + pair_address<B>(x[2], mt, col));
      const uint32_t l3 = table_at(base + pair_address<B>(x[3], mt, col));
      v[0] = __byte_perm(l0, l1, 0x5410);  // row g (element 2mt), rows 2r, 2r+1
      v[1] = __byte_perm(l0, l1, 0x7632);  // row g + 8 (element 2mt + 1)
      v[2] = __byte_perm(l2, l3, 0x5410);  // row g, rows 2r+8, 2r+9
      v[3] = __byte_perm(l2, l3, 0x7632);
    }
    if constexpr (!kFold) {
      v[0] = hmul2_u32(v[0], sA);
      v[1] = hmul2_u32(v[1], sA);
      v[2] = hmul2_u32(v[2], sB);
      v[3] = hmul2_u32(v[3], sB);
    }
  }
  // Physical element of row `row` (0..15) of m-tile mt.
  static __device__ __forceinline__ int out_element(int mt, int row) { return (row & 7) * kElems + 2 * mt + (row >> 3); }
};

template <int HD>
struct ValueRows {
  static __device__ __forceinline__ int out_element(int mt, int row) { return 16 * mt + row; }
};

// A reader's per-thread tile plan (FP16 rows need none).
struct NoPlan {};
template <class R, class = void> struct PlanOf { using type = NoPlan; };
template <class R> struct PlanOf<R, std::void_t<typename R::Plan>> { using type = typename R::Plan; };

template <class L, int HD> struct KeyReader;
template <int HD> struct KeyReader<Fp16Rows, HD> { using type = KeyRows<HD>; };
template <int B, bool F, int HD> struct KeyReader<Records<B, F>, HD> { using type = KeyRecords<B, HD, F>; };
template <class L, int HD> struct ValueReader;
template <int HD> struct ValueReader<Fp16Rows, HD> { using type = ValueRows<HD>; };
template <int B, bool F, int HD> struct ValueReader<Records<B, F>, HD> { using type = ValueRecords<B, HD, F>; };


// FP16 rows need large stages: 4 warps, 2 stages, 2 CTAs per SM. Records
// are small: 16 warps (one CTA per SM, at most 128 registers a thread) share
// one pair table, 3 stages deep (measured on an H200: 16 warps x 3 stages
// 113.7 us, 16 x 2 112.9 us, 8 x 2 118.6 us at batch 8, 32K, head_dim 128;
// later, in one run: 16 x 3 101.5 us, 20 x 3 (96 registers) 119.3 us,
// 24 x 3 (80 registers, spills) 165.6 us).
template <class KL, class VL>
constexpr bool kAnyFp16 = KL::kFp16 || VL::kFp16;
__host__ __device__ constexpr int stages_of(int kbits, int vbits) { return kbits == 16 || vbits == 16 ? 2 : 3; }
// 8-bit records (turbo8) take 8 warps: 16 warps' rings of 130-byte
// records would not fit beside the 64 KiB table.
__host__ __device__ constexpr int warps_of(int kbits, int vbits) {
  return kbits == 16 || vbits == 16 ? 4 : kbits == 8 || vbits == 8 ? 8 : 16;
}
template <class KL, class VL>
constexpr int kStages = stages_of(KL::kBits, VL::kBits);
template <class KL, class VL>
constexpr int kWarpsOf = warps_of(KL::kBits, VL::kBits);
// Record kernels (one CTA of 16 warps per SM, one wave) can finish the
// output themselves instead of a second launch (merge_kernel): on sm_90 the
// n_split CTAs of each (sequence, kv head) run as one thread block cluster
// and fold their states through distributed shared memory, with no
// workspace round trip. run() asks for it (KernelArgs::out) for 1 to
// kMaxFusedSplits splits. Measured on an H200 (medians in one run, turbo4,
// head_dim 128): batch 8, 32K (2 splits) 94.4 -> 93.9 us against the last
// CTA merging from global memory, 98.8 -> 96.8 us without the setup order
// below; batch 64, 4K (1 split) 114.9 -> 114.1 us against merge_kernel;
// clusters of 8 (batch 2, 32K) 62 us against 38-40 us with merge_kernel.
// Elsewhere (sm_80) merge_kernel merges. FP16 kernels (4 warps, several
// waves) always use merge_kernel (fused, an earlier in-kernel merge
// measured 275.3 us against 270.2).
template <class KL, class VL>
constexpr bool kFusedMerge = !kAnyFp16<KL, VL>;
constexpr int kMaxFusedSplits = 4;
static_assert(kMaxFusedSplits <= 8, "a cluster of more than 8 CTAs is not portable");

// Fills one codebook's columns (key: column 0, value: column 32 words) of
// the pair table from 2^B fp16 centroids (cooperatively, whole CTA: warp w
// writes entries w, w + W, ..., lane l their copy for bank l). The
// centroids sit in global memory (DecodeAttention::centroids_): two tables
// of 256 in the kernel's arguments would make every launch copy 1 KiB more.
template <int B, int kWarps>
__device__ __forceinline__ void fill_pair_table(uint32_t* table, const uint16_t* centroids, int column, int warp,
                                                int lane) {
  constexpr int kEntries = kSingle<B> ? 1 << B : 1 << (2 * B);
#pragma unroll 4
  for (int e = warp; e < kEntries; e += kWarps) {
    const uint32_t lo = __ldg(&centroids[kSingle<B> ? e : e & ((1 << B) - 1)]);
    const uint32_t hi = kSingle<B> ? lo : __ldg(&centroids[e >> B]);
    table[e * 64 + column + lane] = lo | (hi << 16);
  }
}

__device__ __forceinline__ uint32_t transpose8x8(uint32_t x) {
  uint32_t y;
  asm volatile("movmatrix.sync.aligned.m8n8.trans.b16 %0, %1;\n" : "=r"(y) : "r"(x));
  return y;
}

// ---- the tail (AttentionArgs::tail_*) ----
// A cache's raw window and near tier, as fp16 rows: a few dozen positions
// after the records, read by the CTA of the sequence's last split once
// every warp is done with the records, with plain float arithmetic (with
// mma code here the kTail instance's record loop got the recomputations
// described at attention_kernel; with this, its loop has 559 SASS
// instructions against the plain one's 574). kTailChunk positions at a
// time: their rows are copied into the front of the ring (where the
// warps' o go afterwards: at least 4 warps x kMaxRows x (HD + 4) floats,
// more than 2 x kTailChunk rows), then the scores of (position, head)
// pairs, each head's maximum, denominator and weights, and o. Writes the
// tail's state {m, d} and o (fragment order, pitch `pitch`: the acc_o
// layout) against its own maximum, and returns kMaxRows floats of scratch
// for the caller (the tail's weights in the CTA's state). Scratch: o_slot
// + kMaxRows * pitch onwards
// (tail_scratch_floats, reserved by DecodeAttention). Whole CTA; starts
// and ends with a barrier.
constexpr int kTailChunk = 32;  // a position a lane in the softmax step
__host__ __device__ constexpr int tail_scratch_floats(int hd) { return kMaxRows * hd + kTailChunk * kMaxRows + kMaxRows; }
template <class VR, int HD, int kThreads>
__device__ __forceinline__ float* attend_tail(const KernelArgs& a, int n, int seq, int kv, uint8_t* rows, float* o_slot,
                                              int pitch, float* m, float* d) {
  const int tid = int(threadIdx.x), n_head = a.n_kv * a.group, head0 = kv * a.group;
  float* qs = o_slot + kMaxRows * pitch;  // (group, HD) the query
  float* w = qs + kMaxRows * HD;          // (kTailChunk, kMaxRows) scores, then weights
  float* rescale = w + kTailChunk * kMaxRows;
  const uint16_t* ks = reinterpret_cast<const uint16_t*>(rows);  // (kTailChunk, HD) staged keys
  const uint16_t* vs = ks + kTailChunk * HD;                      // and values
  for (int i = tid; i < a.group * HD; i += kThreads) o_slot[(i / HD) * pitch + i % HD] = 0.0f;
  for (int c = tid; c < a.group * HD / 4; c += kThreads) {  // with the first rows' copies
    cp_async16(qs + 4 * c, a.q + (size_t(seq) * n_head + head0) * HD + 4 * c, 16);
  }
  if (tid < kMaxRows) {
    m[tid] = -INFINITY;
    d[tid] = 0.0f;
  }
  const size_t row0 = (size_t(seq) * a.n_kv + kv) * size_t(a.tail_capacity) * HD;
  for (int p0 = 0; p0 < n; p0 += kTailChunk) {
    const int np = min(kTailChunk, n - p0);
    __syncthreads();  // the previous chunk's rows are read
    constexpr int kRowChunks = HD * 2 / 16;
    for (int c = tid; c < 2 * np * kRowChunks; c += kThreads) {
      const bool value = c >= np * kRowChunks;
      const int cc = value ? c - np * kRowChunks : c;
      const uint16_t* src = (value ? a.tail_values : a.tail_keys) + row0 + size_t(p0) * HD;
      cp_async16(rows + (value ? kTailChunk * HD * 2 : 0) + 16 * cc, reinterpret_cast<const uint8_t*>(src) + 16 * cc,
                 16);
    }
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();
    for (int pair = tid; pair < np * a.group; pair += kThreads) {
      const int p = pair / a.group, h = pair % a.group;
      const uint16_t* k = ks + p * HD;
      const float* qh = qs + h * HD;
      float dot = 0.0f;
#pragma unroll 4
      for (int e = 0; e < HD; e += 8) {
        const uint4 kk = *reinterpret_cast<const uint4*>(k + e);
        const float4 qa = *reinterpret_cast<const float4*>(qh + e), qb = *reinterpret_cast<const float4*>(qh + e + 4);
        const float2 k0 = __half22float2(*reinterpret_cast<const __half2*>(&kk.x));
        const float2 k1 = __half22float2(*reinterpret_cast<const __half2*>(&kk.y));
        const float2 k2 = __half22float2(*reinterpret_cast<const __half2*>(&kk.z));
        const float2 k3 = __half22float2(*reinterpret_cast<const __half2*>(&kk.w));
        dot += qa.x * k0.x + qa.y * k0.y + qa.z * k1.x + qa.w * k1.y + qb.x * k2.x + qb.y * k2.y + qb.z * k3.x +
               qb.w * k3.y;
      }
      const float shift = a.shift ? a.shift[size_t(seq) * n_head + head0 + h] : 0.0f;
      w[p * kMaxRows + h] = (dot + shift) * a.scale_log2;
    }
    __syncthreads();
    // Warp w, heads w, w + W, ...: the new maximum, the running state rescaled, the weights.
    for (int h = tid / 32; h < a.group; h += kThreads / 32) {
      const int p = tid % 32;  // a position a lane (kTailChunk = 32)
      const float sc = p < np ? w[p * kMaxRows + h] : -INFINITY;
      float mx = sc;
#pragma unroll
      for (int off = 16; off > 0; off >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, off));
      mx = fmaxf(mx, m[h]);  // finite: the chunk holds a position
      const float e = p < np ? ex2(sc - mx) : 0.0f;
      float sum = e;
#pragma unroll
      for (int off = 16; off > 0; off >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, off);
      if (p < np) w[p * kMaxRows + h] = e;
      __syncwarp();
      if (p == 0) {
        const float c = m[h] == -INFINITY ? 0.0f : ex2(m[h] - mx);
        d[h] = d[h] * c + sum;
        m[h] = mx;
        rescale[h] = c;
      }
    }
    __syncthreads();
    for (int i = tid; i < a.group * HD; i += kThreads) {
      const int h = i / HD, f = i % HD;  // fragment index f: element VR::out_element
      const int e = VR::out_element(f / 16, f % 16);
      float acc = o_slot[h * pitch + f] * rescale[h];
      for (int p = 0; p < np; ++p) acc += w[p * kMaxRows + h] * __half2float(__ushort_as_half(vs[p * HD + e]));
      o_slot[h * pitch + f] = acc;
    }
  }
  __syncthreads();
  return rescale;
}

// ---- the split kernel -----------------------------------------------------------------------
// Per 16-position tile and warp, with the GQA group's (<= 8) heads as the
// mma's n dimension:
//   S^T (16 positions x 8 heads) = K Q^T     A = keys, B = query (registers)
//   online softmax per head (column), shuffles across the 8 lanes of a column
//       only when some score exceeds the running maximum
//   P^T's fragments by movmatrix (an 8x8 transpose in registers)
//   O^T (head_dim x 8 heads) += V^T P^T      A = values, B = P^T

// kTail: the instance that reads a tail (AttentionArgs::tail_*). Calls
// without one run the instance without its code, since code after the
// record loop can change how the compiler keeps the loop's invariants:
// with an mma pass over the tail there, NVVM recomputed tile offsets and
// row positions in the loop (565 -> 707 PTX instructions, 574 -> 638
// SASS; turbo4 at batch 8, 32K 89.7 -> 98.6 us on an H200, medians of 3
// in one run).
template <class KL, class VL, int HD, bool kTail>
__global__ void __launch_bounds__(32 * kWarpsOf<KL, VL>, kAnyFp16<KL, VL> ? 2 : 1) attention_kernel(const KernelArgs a) {
  constexpr int S = kStages<KL, VL>;
  constexpr int kWarps = kWarpsOf<KL, VL>, kThreads = 32 * kWarps;
  constexpr int KSTEPS = HD / 16, MT = HD / 16;
  using KR = typename KeyReader<KL, HD>::type;
  using VR = typename ValueReader<VL, HD>::type;
  stamp(a, kTimelineEntry);
  // Dynamic shared memory: [ring][gap where kAlignedTable][pair table]
  // ring: (warp, stage) x (key tile, value tile); reused for the warps' merge.
  extern __shared__ __align__(16) uint8_t smem[];
  // The warps' states; kTail: the tail's after them.
  __shared__ float warp_m[kWarps + kTail][kMaxRows], warp_d[kWarps + kTail][kMaxRows];
  [[maybe_unused]] __shared__ int tail_len;  // kTail: tail positions this CTA reads (0: none)
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  // Where a cluster finishes the output (kFusedMerge), rank 0 receives the
  // states of the cluster's CTAs here: o in fragment order, m, d per head.
  constexpr int kRecvSplits = kFusedMerge<KL, VL> ? kMaxFusedSplits : 1;
  __shared__ float recv_o[kRecvSplits][kFusedMerge<KL, VL> ? kMaxRows * HD : 1];
  __shared__ float recv_m[kRecvSplits][kMaxRows], recv_d[kRecvSplits][kMaxRows];
  // Phase 1 of the cluster barrier: this CTA has started. Waited on before
  // the first access to another CTA's shared memory, at the end.
  if (kFusedMerge<KL, VL> && a.out != nullptr) asm volatile("barrier.cluster.arrive.relaxed;\n" ::: "memory");
#endif
  const int tid = int(threadIdx.x), warp = tid / 32, lane = tid % 32, g = lane / 4, r = lane % 4;
  const int split = int(blockIdx.x), kv = int(blockIdx.y), seq = int(blockIdx.z);
  const int n_head = a.n_kv * a.group, head0 = kv * a.group;
  constexpr int kTableBytes = kTableEntries<KL, VL> * 256;
  uint8_t* ring = smem;
  // The pair table's shared address (see kTableEntries; DecodeAttention
  // reserves room for the gap); lookups add tbase to pair_address.
  constexpr bool kAligned = kAlignedTable<KL, VL>;
  const uint32_t smem_base = smem_addr(smem), ring_end = smem_base + a.ring_bytes;
  const uint32_t table = kAligned && kTableBytes != 0
                             ? (ring_end + uint32_t(kTableBytes) - 1u) & ~uint32_t(kTableBytes - 1)
                             : ring_end;
  const uint32_t tbase = kAligned ? 0u : table;
  const uint32_t kcol = (kAligned ? table : 0u) + 4u * uint32_t(lane), vcol = kcol + 128u;

  // Setup, ordered so that its latencies overlap: the global loads first
  // (the query, then the first tiles, which need the length), the pair
  // table while they are in flight, one barrier (H200, turbo4 at batch 8,
  // 32K, medians in one run: 98.8 -> 94.4 us against table, query, barrier,
  // tiles).
  const int len = a.seq_len[seq];
  // kTail: the tail's length, loaded with the query (see attend_tail).
  [[maybe_unused]] const int tail_n = kTail && tid == 0 ? a.tail_len[seq] : 0;
  const int sb = split * a.split, se = min(sb + a.split, len);
  const bool q_ok = g < a.group;  // column g = head g of the group, zero past it
  float4 q_raw[KSTEPS];
  {
    const float* q = a.q + (size_t(seq) * n_head + head0 + (q_ok ? g : 0)) * HD;
#pragma unroll
    for (int c = 0; c < KSTEPS; ++c) q_raw[c] = KR::query(q, c, r);
  }

  const size_t head_base = (size_t(seq) * a.n_kv + kv) * size_t(a.capacity);
  const uint8_t* kbase = a.keys + head_base * a.k_row;
  const uint8_t* vbase = a.values + head_base * a.v_row;
  uint8_t* my_ring = ring + size_t(warp) * S * (a.k_stage + a.v_stage);
  const int first = sb + kTile * warp;
  const int n_tiles = first < se ? (se - first + kTile * kWarps - 1) / (kTile * kWarps) : 0;
  const uint32_t stage_bytes = a.k_stage + a.v_stage;
  // The next tile to copy (tiles are issued in order).
  const uint8_t* knext = kbase + size_t(first) * a.k_row;
  const uint8_t* vnext = vbase + size_t(first) * a.v_row;
  int next_t0 = first;
  const uint32_t k_step = uint32_t(kTile * kWarps) * a.k_row, v_step = uint32_t(kTile * kWarps) * a.v_row;
  [[maybe_unused]] const TileChunks<kChunksOf<KL>> kchunks(a.k_row, a.k_pad, lane);
  [[maybe_unused]] const TileChunks<kChunksOf<VL>> vchunks(a.v_row, a.v_pad, lane);
  auto issue = [&](int stage) {
    uint8_t* st = my_ring + uint32_t(stage) * stage_bytes;
    const int valid = min(kTile, se - next_t0);
    if (!KL::kFp16 && !VL::kFp16 && valid == kTile) {
      const uint32_t sa = smem_addr(st);
      copy_whole_tile(sa, knext, kchunks, lane);
      copy_whole_tile(sa + a.k_stage, vnext, vchunks, lane);
    } else {
      copy_tile<KL, HD>(st, knext, a.k_row, a.k_pad, valid, lane);
      copy_tile<VL, HD>(st + a.k_stage, vnext, a.v_row, a.v_pad, valid, lane);
    }
    knext += k_step;
    vnext += v_step;
    next_t0 += kTile * kWarps;
  };
#pragma unroll
  for (int i = 0; i < S - 1; ++i) {
    if (i < n_tiles) issue(i);
    cp_async_commit();
  }

  // kTail: the tail (AttentionArgs::tail_*) is read by the CTA of the
  // sequence's last split (split 0 without records), after the records
  // (see attend_tail). Its length waits in shared memory: no register
  // holds it through the record loop.
  if constexpr (kTail) {
    if (tid == 0) tail_len = split == (len > 0 ? (len - 1) / a.split : 0) ? min(tail_n, a.tail_capacity) : 0;
  }

  uint32_t* const table_words = reinterpret_cast<uint32_t*>(smem + (table - smem_base));
  if constexpr (!KL::kFp16) fill_pair_table<KL::kBits, kWarps>(table_words, a.k_table, 0, warp, lane);
  if constexpr (!VL::kFp16) fill_pair_table<VL::kBits, kWarps>(table_words, a.v_table, 32, warp, lane);
  // Query B fragments, once.
  uint32_t qb[KSTEPS][2];
#pragma unroll
  for (int c = 0; c < KSTEPS; ++c) {
    qb[c][0] = q_ok ? pack_half2(q_raw[c].x, q_raw[c].y) : 0u;
    qb[c][1] = q_ok ? pack_half2(q_raw[c].z, q_raw[c].w) : 0u;
  }
  // This thread's score columns: heads 2r and 2r + 1.
  const int hA = 2 * r, hB = 2 * r + 1;
  float shiftA = 0.0f, shiftB = 0.0f;
  if (a.shift) {
    if (hA < a.group) shiftA = a.shift[size_t(seq) * n_head + head0 + hA] * a.scale_log2;
    if (hB < a.group) shiftB = a.shift[size_t(seq) * n_head + head0 + hB] * a.scale_log2;
  }
  __syncthreads();
  stamp(a, kTimelineSetup);

  float mA = -INFINITY, mB = -INFINITY, dA = 0.0f, dB = 0.0f;
  float baseA = 0.0f, baseB = 0.0f;  // the weights' reference: mA, mB, or 0 while they are -inf
  float o[MT][4];  // O^T: rows g, g + 8 of each m-tile; columns hA, hB
#pragma unroll
  for (int t = 0; t < MT; ++t) o[t][0] = o[t][1] = o[t][2] = o[t][3] = 0.0f;
  [[maybe_unused]] typename PlanOf<KR>::type kplan{};
  [[maybe_unused]] typename PlanOf<VR>::type vplan{};
  if constexpr (!KL::kFp16) kplan = KR::plan(a, g, r);
  if constexpr (!VL::kFp16) vplan = VR::plan(a, g, r);
  // Positions of this thread's S^T rows g and g + 8 (for the mask).
  const int pos_g = int(row_position(a.rows, g)), pos_g8 = int(row_position(a.rows, g + 8));
  int stage = 0;  // i % S
  for (int i = 0; i < n_tiles; ++i) {
    const int ahead = stage == 0 ? S - 1 : stage - 1;  // (i + S - 1) % S
    if (i + S - 1 < n_tiles) issue(ahead);
    cp_async_commit();
    cp_async_wait<S - 1>();
    __syncwarp();
    const uint8_t* kst = my_ring + uint32_t(stage) * stage_bytes;
    stage = stage == S - 1 ? 0 : stage + 1;
    const uint8_t* vst = kst + a.k_stage;
    const int valid = min(kTile, se - (first + i * kTile * kWarps));

    // ---- S^T = K Q^T (two accumulator chains: even and odd k-steps) ----
    float s[4] = {0.f, 0.f, 0.f, 0.f}, s2[4] = {0.f, 0.f, 0.f, 0.f};
    // Score factors of S^T rows g and g + 8: the softmax scale, times the
    // key record's scale where there is one (2 multiplies a tile instead of
    // 8; H200, turbo3 at batch 8, 128K: 359.3 -> 355.4 us in one run).
    float f_g = a.scale_log2, f_g8 = a.scale_log2;
    if constexpr (KL::kFp16) {
      const int mi = lane >> 3;
      const uint8_t* base = kst + ((mi & 1) * 8 + (lane & 7)) * kRowPitch<HD> + (mi >> 1) * 16;
#pragma unroll
      for (int c = 0; c < KSTEPS; ++c) {
        uint32_t k[4];
        ldmatrix_x4(k, base + c * 32);
        mma16816((c & 1) ? s2 : s, k, qb[c][0], qb[c][1]);
      }
    } else {
      KR kr;
      kr.load(kst, kplan);
#pragma unroll
      for (int c = 0; c < KSTEPS; ++c) {
        uint32_t k[4];
        kr.fragment(c, tbase, kcol, k);
        mma16816((c & 1) ? s2 : s, k, qb[c][0], qb[c][1]);
      }
      if constexpr (KL::kFoldScale) {  // one scale per key record: into the factor of its row of S^T
        f_g *= kr.scale(0);
        f_g8 *= kr.scale(1);
      }
    }

    // ---- online softmax (base 2) per head; this thread: positions g, g+8 of heads hA, hB ----
    // s[0] = (pos g, hA), s[1] = (pos g, hB), s[2] = (pos g+8, hA), s[3] = (pos g+8, hB)
#pragma unroll
    for (int j = 0; j < 4; ++j) s[j] = (s[j] + s2[j]) * ((j >> 1) ? f_g8 : f_g) + ((j & 1) ? shiftB : shiftA);
    if (valid < kTile) {  // the split's last tile: mask positions past its end
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        if (((j >> 1) ? pos_g8 : pos_g) >= valid) s[j] = -INFINITY;
      }
    }
    float mxA = fmaxf(s[0], s[2]), mxB = fmaxf(s[1], s[3]);
    // A head's (column's) running maximum changes only where one of the
    // column's 8 lanes holds a larger score. A vote finds out; only then do
    // the shuffles reduce the tile's maximum over the column and d and o get
    // rescaled (rare after the first tiles). Otherwise the maximum stays, so
    // the weights are the same as with a reduction every tile, and the
    // reduction's dependent shuffles leave the common path.
    if (__any_sync(0xffffffffu, mxA > mA || mxB > mB)) {
#pragma unroll
      for (int off = 4; off < 32; off <<= 1) {
        mxA = fmaxf(mxA, __shfl_xor_sync(0xffffffffu, mxA, off));
        mxB = fmaxf(mxB, __shfl_xor_sync(0xffffffffu, mxB, off));
      }
      const float nA = fmaxf(mA, mxA), nB = fmaxf(mB, mxB);
      const float bA = nA == -INFINITY ? 0.0f : nA, bB = nB == -INFINITY ? 0.0f : nB;
      const float cA = ex2(mA - bA), cB = ex2(mB - bB);
      dA *= cA;
      dB *= cB;
#pragma unroll
      for (int t = 0; t < MT; ++t) {
        o[t][0] *= cA;
        o[t][1] *= cB;
        o[t][2] *= cA;
        o[t][3] *= cB;
      }
      mA = nA;
      mB = nB;
      baseA = bA;
      baseB = bB;
    }
    s[0] = ex2(s[0] - baseA);
    s[1] = ex2(s[1] - baseB);
    s[2] = ex2(s[2] - baseA);
    s[3] = ex2(s[3] - baseB);
    dA += s[0] + s[2];
    dB += s[1] + s[3];
    // P^T as the B fragment of O^T = V^T P^T: b0 = P^T[rows 2r, 2r+1][head g],
    // b1 = P^T[rows 2r+8, 2r+9][head g]; S^T's accumulator holds P^T[row g][heads 2r, 2r+1].
    uint32_t p0 = pack_half2(s[0], s[1]), p1 = pack_half2(s[2], s[3]);

    // ---- O^T += V^T P^T ----
    if constexpr (VL::kFp16) {
      const uint32_t pb0 = transpose8x8(p0), pb1 = transpose8x8(p1);
      const int mi = lane >> 3;
      const uint8_t* base = vst + ((mi >> 1) * 8 + (lane & 7)) * kRowPitch<HD> + (mi & 1) * 16;
#pragma unroll
      for (int t = 0; t < MT; ++t) {
        uint32_t v[4];
        ldmatrix_x4_trans(v, base + t * 32);
        mma16816(o[t], v, pb0, pb1);
      }
    } else {
      VR vr;
      vr.load(vst, vplan);
      if constexpr (VL::kFoldScale) {  // one scale per record: into the weights of its rows g, g + 8
        p0 = hmul2_u32(p0, dup_half(vr.sA));
        p1 = hmul2_u32(p1, dup_half(vr.sB));
      }
      const uint32_t pb0 = transpose8x8(p0), pb1 = transpose8x8(p1);
#pragma unroll
      for (int t = 0; t < MT; ++t) {
        uint32_t v[4];
        vr.fragment(t, tbase, vcol, v);
        mma16816(o[t], v, pb0, pb1);
      }
    }
    __syncwarp();
  }
  cp_async_wait<0>();
  if constexpr (kTail) {  // each warp as it is done: the tail's lines into L2 (the stream evicted them)
    const size_t row0 = (size_t(seq) * a.n_kv + kv) * size_t(a.tail_capacity) * HD;
    const uint8_t* tk = reinterpret_cast<const uint8_t*>(a.tail_keys + row0);
    const uint8_t* tv = reinterpret_cast<const uint8_t*>(a.tail_values + row0);
    for (uint32_t off = uint32_t(tid) * 128u; off < uint32_t(tail_len) * HD * 2; off += uint32_t(kThreads) * 128u) {
      asm volatile("prefetch.global.L2 [%0];" ::"l"(tk + off));
      asm volatile("prefetch.global.L2 [%0];" ::"l"(tv + off));
    }
  }

  // ---- merge the warps' states, write this split's partial state ----
#pragma unroll
  for (int off = 4; off < 32; off <<= 1) {
    dA += __shfl_xor_sync(0xffffffffu, dA, off);
    dB += __shfl_xor_sync(0xffffffffu, dB, off);
  }
  if (g == 0) {
    warp_m[warp][hA] = mA;
    warp_m[warp][hB] = mB;
    warp_d[warp][hA] = dA;
    warp_d[warp][hB] = dB;
  }
  __syncthreads();  // every warp is done with the ring: reuse it
  stamp(a, kTimelineRecords);
  // (warp, kMaxRows heads, HD + 4) weighted o of each warp, fragment order
  // (the mma columns past the group are padding and are not stored); the
  // pitch keeps the fragment stores conflict-free.
  float* acc_o = reinterpret_cast<float*>(ring);
  constexpr int kAccPitch = HD + 4, kWarpAcc = kMaxRows * kAccPitch;
  // kTail: the tail's state as one more warp's (o in slot kWarps of
  // acc_o, against its own maximum until the weights below).
  [[maybe_unused]] bool with_tail = false;
  [[maybe_unused]] float* tail_f = nullptr;  // (kMaxRows) the tail's weight in the CTA's state
  if constexpr (kTail) {
    with_tail = tail_len > 0;  // the same in the whole CTA
    if (with_tail) {
      static_assert(kWarps * kWarpAcc * 4 >= 2 * kTailChunk * HD * 2, "tail rows do not fit in the warps' o");
      tail_f = attend_tail<VR, HD, kThreads>(a, tail_len, seq, kv, ring, acc_o + kWarps * kWarpAcc, kAccPitch,
                                             warp_m[kWarps], warp_d[kWarps]);
      stamp(a, kTimelineTail);
    }
  }
  float fA, fB;  // this warp's weight in the CTA's state, heads hA and hB
  {
    float MA = -INFINITY, MB = -INFINITY;
#pragma unroll
    for (int w = 0; w < kWarps + kTail; ++w) {
      if (w < kWarps || with_tail) {
        MA = fmaxf(MA, warp_m[w][hA]);
        MB = fmaxf(MB, warp_m[w][hB]);
      }
    }
    fA = mA == -INFINITY ? 0.0f : exp2f(mA - MA);
    fB = mB == -INFINITY ? 0.0f : exp2f(mB - MB);
    if (with_tail && warp == 0 && g == 0) {  // the tail's weights, heads hA and hB
      tail_f[hA] = warp_m[kWarps][hA] == -INFINITY ? 0.0f : exp2f(warp_m[kWarps][hA] - MA);
      tail_f[hB] = warp_m[kWarps][hB] == -INFINITY ? 0.0f : exp2f(warp_m[kWarps][hB] - MB);
    }
  }
#pragma unroll
  for (int t = 0; t < MT; ++t) {
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int head = (j & 1) ? hB : hA;
      const int row = g + 8 * (j >> 1);  // of m-tile t
      if (head < a.group) acc_o[warp * kWarpAcc + head * kAccPitch + t * 16 + row] = o[t][j] * ((j & 1) ? fB : fA);
    }
  }
  __syncthreads();
  // The CTA's state: M, D of a head, and element i (fragment order) of the
  // warps' o summed in order.
  const int n_states = kWarps + (with_tail ? 1 : 0);
  auto cta_state = [&](int head, float& M, float& D) {
    M = -INFINITY;
    for (int w = 0; w < n_states; ++w) M = fmaxf(M, warp_m[w][head]);
    D = 0.0f;
    for (int w = 0; w < n_states; ++w) {
      if (warp_m[w][head] != -INFINITY) D += warp_d[w][head] * exp2f(warp_m[w][head] - M);
    }
  };
  auto cta_o = [&](int i) {
    float sum = 0.0f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) sum += acc_o[w * kWarpAcc + (i / HD) * kAccPitch + i % HD];
    if (with_tail) sum += acc_o[kWarps * kWarpAcc + (i / HD) * kAccPitch + i % HD] * tail_f[i / HD];
    return sum;
  };
  if constexpr (kFusedMerge<KL, VL>) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    // ---- the (sequence, kv head)'s cluster of n_split CTAs finishes the output ----
    // Every CTA writes its state into rank 0's shared memory, arrives on
    // the cluster barrier (release) and ends; rank 0 waits (acquire) and
    // folds the states in split order with fold_splits, as merge_kernel
    // does, so the output does not depend on which CTA ends first. No CTA
    // reads another's shared memory, so none has to outlive the others
    // (H200, turbo4, alternating builds in one run, single calls: batch 8,
    // 32K 95.4 -> 93.7 us, medians of 3, and 128K 324.8 -> 320.2 us against
    // every CTA folding a share of the elements through distributed shared
    // memory between two cluster barriers). run() asks for this only where
    // clusters exist (sm_90).
    if (a.out != nullptr) {
      namespace cg = cooperative_groups;
      const cg::cluster_group cluster = cg::this_cluster();
      const int rank = int(cluster.block_rank());
      asm volatile("barrier.cluster.wait;\n" ::: "memory");  // phase 1: every CTA has started
      if (tid < a.group) {
        float M, D;
        cta_state(tid, M, D);
        *cluster.map_shared_rank(&recv_m[rank][tid], 0) = M;
        *cluster.map_shared_rank(&recv_d[rank][tid], 0) = D;
      }
      float* to_o = cluster.map_shared_rank(&recv_o[rank][0], 0);
      for (int i = tid; i < a.group * HD; i += kThreads) to_o[i] = cta_o(i);
      stamp(a, kTimelineState);
      asm volatile("barrier.cluster.arrive.release;\n" ::: "memory");
      if (rank != 0) return;
      asm volatile("barrier.cluster.wait.acquire;\n" ::: "memory");
      for (int i = tid; i < a.group * HD; i += kThreads) {
        const int head = i / HD, t = (i % HD) / 16, row = i % 16;
        const Folded f = fold_splits(
            a.n_split, [&](int s) { return recv_m[s][head]; }, [&](int s) { return recv_d[s][head]; },
            [&](int s) { return recv_o[s][i]; });
        write_output(a.out, a.out_m, a.out_d, size_t(seq) * n_head + head0 + head, HD, VR::out_element(t, row), f);
      }
      stamp(a, kTimelineOutput);
      return;
    }
#endif
  }
  // ---- else this split's state goes to the workspace for merge_kernel ----
  const size_t state0 = (size_t(seq) * n_head + head0) * a.n_split + split;  // head 0's state
  if (tid < a.group) {
    float M, D;
    cta_state(tid, M, D);
    a.ws_m[state0 + size_t(tid) * a.n_split] = M;
    a.ws_d[state0 + size_t(tid) * a.n_split] = D;
  }
  for (int i = tid; i < a.group * HD; i += kThreads) {  // fragment order -> element order
    const int head = i / HD, t = (i % HD) / 16, row = i % 16;
    a.ws_o[(state0 + size_t(head) * a.n_split) * HD + VR::out_element(t, row)] = cta_o(i);
  }
  stamp(a, kTimelineState);
}

// One block per (sequence, query head): folds the splits' states in order
// (kv/online_softmax.h merge, base 2) and normalizes (an empty sequence
// gives zeros), or writes the folded partial state (out_m non-null).
__global__ void merge_kernel(const float* __restrict__ ws_m, const float* __restrict__ ws_d,
                             const float* __restrict__ ws_o, int n_split, int hd, float* __restrict__ out,
                             float* __restrict__ out_m, float* __restrict__ out_d) {
  const size_t bh = blockIdx.x;
  for (int e = int(threadIdx.x); e < hd; e += int(blockDim.x)) {
    const Folded f = fold_splits(
        n_split, [&](int s) { return ws_m[bh * n_split + s]; }, [&](int s) { return ws_d[bh * n_split + s]; },
        [&](int s) { return ws_o[(bh * n_split + s) * hd + e]; });
    write_output(out, out_m, out_d, bh, hd, e, f);
  }
}

// One block per query row: folds the calls' partial states in order and
// normalizes (merge_partials).
constexpr int kMaxParts = 8;
struct Parts {
  const float* m[kMaxParts];
  const float* d[kMaxParts];
  const float* o[kMaxParts];
  int n;
};
__global__ void merge_parts_kernel(const Parts p, int hd, float* __restrict__ out) {
  const size_t row = blockIdx.x;
  for (int e = int(threadIdx.x); e < hd; e += int(blockDim.x)) {
    out[row * hd + e] = fold_splits(
                            p.n, [&](int s) { return p.m[s][row]; }, [&](int s) { return p.d[s][row]; },
                            [&](int s) { return p.o[s][row * hd + e]; })
                            .value();
  }
}

using KernelFn = void (*)(KernelArgs);
struct Kernels {
  KernelFn plain = nullptr, tail = nullptr;  // without and with a tail (kTail)
};

template <class KL, class VL, int HD>
constexpr Kernels kernel_for() {
  return {&attention_kernel<KL, VL, HD, false>, &attention_kernel<KL, VL, HD, true>};
}

// The one dispatch place: (key reader, value reader, head size) -> kernel.
// Records with one scale per record fold it into the scores (keys) or the
// weights (values); folded keys are instantiated for equal bit widths only
// (the turbo<B> schemes), other pairs scale the expanded keys.
template <int HD, class KL>
Kernels pick_value(int vbits, bool v_one_scale) {
  // 8-bit records pair only with 8-bit records or fp16 rows (the
  // constructor refuses the rest by name; no kernels for them).
  if constexpr (!KL::kFp16 && KL::kBits == 8) {
    switch (vbits * 2 + (v_one_scale ? 1 : 0)) {
      case 32: return kernel_for<KL, Fp16Rows, HD>();
      case 16: return kernel_for<KL, Records<8, false>, HD>();
      case 17: return kernel_for<KL, Records<8, true>, HD>();
    }
    return {};
  } else {
    switch (vbits * 2 + (v_one_scale ? 1 : 0)) {
      case 32: return kernel_for<KL, Fp16Rows, HD>();
      case 4: return kernel_for<KL, Records<2, false>, HD>();
      case 5: return kernel_for<KL, Records<2, true>, HD>();
      case 6: return kernel_for<KL, Records<3, false>, HD>();
      case 7: return kernel_for<KL, Records<3, true>, HD>();
      case 8: return kernel_for<KL, Records<4, false>, HD>();
      case 9: return kernel_for<KL, Records<4, true>, HD>();
      case 10: return kernel_for<KL, Records<5, false>, HD>();
      case 11: return kernel_for<KL, Records<5, true>, HD>();
    }
    if constexpr (KL::kFp16) {
      if (vbits == 8) return v_one_scale ? kernel_for<KL, Records<8, true>, HD>() : kernel_for<KL, Records<8, false>, HD>();
    }
    return {};
  }
}
template <int HD, int B>
Kernels pick_folded(bool v_one_scale) {
  return v_one_scale ? kernel_for<Records<B, true>, Records<B, true>, HD>()
                     : kernel_for<Records<B, true>, Records<B, false>, HD>();
}
template <int HD>
Kernels pick(int kbits, bool k_one_scale, int vbits, bool v_one_scale) {
  if (k_one_scale && kbits == vbits) {
    switch (kbits) {
      case 2: return pick_folded<HD, 2>(v_one_scale);
      case 3: return pick_folded<HD, 3>(v_one_scale);
      case 4: return pick_folded<HD, 4>(v_one_scale);
      case 5: return pick_folded<HD, 5>(v_one_scale);
      case 8: return pick_folded<HD, 8>(v_one_scale);
    }
  }
  switch (kbits) {
    case 16: return pick_value<HD, Fp16Rows>(vbits, v_one_scale);
    case 2: return pick_value<HD, Records<2, false>>(vbits, v_one_scale);
    case 3: return pick_value<HD, Records<3, false>>(vbits, v_one_scale);
    case 4: return pick_value<HD, Records<4, false>>(vbits, v_one_scale);
    case 5: return pick_value<HD, Records<5, false>>(vbits, v_one_scale);
    case 8: return pick_value<HD, Records<8, false>>(vbits, v_one_scale);
  }
  return {};
}

// kTableEntries: the kernel's table size.
size_t pair_table_bytes(int kbits, int vbits) {
  return size_t(std::max(table_entries(kbits), table_entries(vbits))) * 256;
}

int stage_bytes(const StreamFormat& f, int hd, size_t row, uint32_t pad) {
  if (f.fp16) return kTile * (hd + 8) * 2;
  return int((kTile * row + 15) / 16 * 16 + pad + 16);  // + one word read past the last record
}

// ---- tile layout (see row_position) ----
constexpr uint64_t rows_of(const int (&pos)[16]) {
  uint64_t r = 0;
  for (int i = 0; i < 16; ++i) r |= uint64_t(pos[i]) << (4 * i);
  return r;
}
constexpr int kNaturalOrder[16] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
constexpr int kParityOrder[16] = {0, 4, 8, 12, 2, 6, 10, 14, 1, 5, 9, 13, 3, 7, 11, 15};
constexpr uint64_t kNaturalRows = rows_of(kNaturalOrder), kParityRows = rows_of(kParityOrder);

// Bank wavefronts of one tile's index-word loads by a stream's reader
// (KeyRecords or ValueRecords: their plan() and load_words): a warp's
// 32-bit shared load takes as many wavefronts as the most distinct words
// one of the 32 banks must serve.
int index_wavefronts(bool value_reader, int hd, int bits, uint32_t row, uint32_t index_offset, uint64_t rows,
                     uint32_t pad) {
  const int bytes = (value_reader ? hd / 8 : hd / 4) * bits / 8;  // per thread and row
  const int loads = (bytes + 3) / 4 + 1;                          // load_words reads one word more
  int total = 0;
  for (int set = 0; set < (value_reader ? 4 : 2); ++set) {
    for (int i = 0; i < loads; ++i) {
      uint32_t words[32];
      for (int lane = 0; lane < 32; ++lane) {
        const int g = lane / 4, r = lane % 4;
        const int mma_row = value_reader ? 2 * r + (set & 1) + 8 * (set >> 1) : g + 8 * set;
        const uint32_t p = row_position(rows, mma_row);
        const uint32_t off = p * row + (p >= 8 ? pad : 0u) + index_offset + uint32_t((value_reader ? g : r) * bytes);
        words[lane] = off / 4 + uint32_t(i);
      }
      int worst = 0;
      for (int bank = 0; bank < 32; ++bank) {
        int distinct = 0;
        for (int l = 0; l < 32; ++l) {
          if (words[l] % 32 != uint32_t(bank)) continue;
          bool seen = false;
          for (int m = 0; m < l; ++m) seen = seen || words[m] == words[l];
          distinct += seen ? 0 : 1;
        }
        worst = std::max(worst, distinct);
      }
      total += worst;
    }
  }
  return total;
}

// A launch in clusters of `cluster` CTAs along the grid's x (the splits).
struct ClusterLaunch {
  cudaLaunchAttribute attribute{};
  cudaLaunchConfig_t config{};  // points at attribute
  ClusterLaunch(dim3 grid, int threads, size_t dynamic_smem, int cluster, cudaStream_t stream = nullptr) {
    attribute.id = cudaLaunchAttributeClusterDimension;
    attribute.val.clusterDim.x = unsigned(cluster);
    attribute.val.clusterDim.y = 1;
    attribute.val.clusterDim.z = 1;
    config.gridDim = grid;
    config.blockDim = dim3(unsigned(threads));
    config.dynamicSmemBytes = dynamic_smem;
    config.stream = stream;
    config.attrs = &attribute;
    config.numAttrs = 1;
  }
  ClusterLaunch(const ClusterLaunch&) = delete;
  ClusterLaunch& operator=(const ClusterLaunch&) = delete;
};

int log2_exact(int v) {
  int l = 0;
  while ((1 << l) < v) ++l;
  return l;
}

}  // namespace

// One kernel instance (Kernels::plain or ::tail) as the launches need it.
struct Launchable {
  KernelFn fn = nullptr;
  uint32_t ring_bytes = 0;  // KernelArgs::ring_bytes
  size_t dynamic_smem = 0;
  int ctas_per_sm = 1;
  bool fused_merge = false;  // kFusedMerge, and clusters of kMaxFusedSplits CTAs fit on this GPU
};

struct DecodeAttention::Params {
  KernelArgs base{};
  Launchable plain, tail;
  int threads = 128;
};

DecodeAttention::DecodeAttention(const StreamFormat& keys, const StreamFormat& values, int head_dim, int n_kv_head,
                                 int group)
    : kf_(keys), vf_(values), head_dim_(head_dim), n_kv_head_(n_kv_head), group_(group),
      params_(std::make_unique<Params>()) {
  if (head_dim != 64 && head_dim != 128) {
    throw Error("CUDA decode attention supports head_dim 64 and 128, got " + std::to_string(head_dim));
  }
  if (group < 1 || group > kMaxRows) {
    throw Error("CUDA decode attention supports 1..8 query heads per kv head (split larger groups), got " +
                std::to_string(group));
  }
  if (n_kv_head < 1) throw Error("CUDA decode attention: n_kv_head must be positive");
  KernelArgs& A = params_->base;
  std::vector<uint16_t> codebooks(512, 0);  // key, then value centroids (fp16)
  auto setup = [&](const StreamFormat& f, const char* what, uint32_t& row, uint32_t& index_offset, int& log2g,
                   uint16_t* table) -> int {
    row = uint32_t(f.row_bytes(head_dim));
    if (f.fp16) return 16;
    const codec::CodecSpec& s = f.spec;
    codec::validate_spec(s, head_dim);
    if ((s.kind != codec::CodecKind::Mse && s.kind != codec::CodecKind::Group) || s.bits < 2 || (s.bits > 5 && s.bits != 8)) {
      throw Error(std::string("CUDA decode attention: ") + what + " codec " + codec::codec_name(s.kind) +
                  std::to_string(s.bits) + " is not supported (mse or group at 2 to 5 or 8 bits, or fp16)");
    }
    if (s.split != 0) {
      throw Error(std::string("CUDA decode attention: ") + what + ": split records (outlier channels) are not supported");
    }
    const codec::Codec c(s, head_dim);
    const auto cent = c.codebook()->centroids();
    for (int i = 0; i < 256; ++i) table[i] = i < int(cent.size()) ? f32_to_fp16(cent[size_t(i)]) : fp16_t(0);
    index_offset = c.layout().index_offset;
    log2g = log2_exact(s.kind == codec::CodecKind::Mse ? head_dim : s.effective_group());
    return s.bits;
  };
  const int kb = setup(keys, "key", A.k_row, A.k_index_offset, A.k_log2_group, codebooks.data());
  const int vb = setup(values, "value", A.v_row, A.v_index_offset, A.v_log2_group, codebooks.data() + 256);
  centroids_ = upload_vector(codebooks);
  A.k_table = centroids_.as<uint16_t>();
  A.v_table = A.k_table + 256;
  if ((kb == 8 && vb != 8 && vb != 16) || (vb == 8 && kb != 8 && kb != 16)) {
    throw Error("CUDA decode attention: 8-bit records pair only with 8-bit records or fp16 rows (keys " +
                std::to_string(kb) + " bits, values " + std::to_string(vb) + ")");
  }
  k_row_ = A.k_row;
  v_row_ = A.v_row;
  // copy_tile moves a tile of records in at most chunks_per_lane x 32 chunks of 16 bytes.
  TKV_ASSERT((keys.fp16 || A.k_row <= uint32_t(32 * chunks_per_lane(kb))) &&
                 (values.fp16 || A.v_row <= uint32_t(32 * chunks_per_lane(vb))),
             "record larger than copy_tile handles");
  TKV_ASSERT((keys.fp16 || A.k_row % 2 == 0) && (values.fp16 || A.v_row % 2 == 0), "records of odd size");
  // Tile layout: the row order and pads with the fewest bank wavefronts
  // (natural order and no pads on ties; FP16 rows are read in natural order).
  A.rows = kNaturalRows;
  A.k_pad = A.v_pad = 0;
  {
    auto best_pad = [&](bool value_reader, const StreamFormat& f, int bits, uint32_t row, uint32_t index_offset,
                        uint64_t rows, uint32_t& pad) {
      pad = 0;
      if (f.fp16) return 0;
      int best = index_wavefronts(value_reader, head_dim, bits, row, index_offset, rows, 0);
      for (uint32_t p = 16; p < 128; p += 16) {
        const int w = index_wavefronts(value_reader, head_dim, bits, row, index_offset, rows, p);
        if (w < best) best = w, pad = p;
      }
      return best;
    };
    int best = -1;
    for (const uint64_t rows : {kNaturalRows, kParityRows}) {
      if (rows != kNaturalRows && (keys.fp16 || values.fp16)) continue;
      uint32_t kp = 0, vp = 0;
      const int w = best_pad(false, keys, kb, A.k_row, A.k_index_offset, rows, kp) +
                    best_pad(true, values, vb, A.v_row, A.v_index_offset, rows, vp);
      if (best < 0 || w < best) best = w, A.rows = rows, A.k_pad = kp, A.v_pad = vp;
    }
  }
  A.k_stage = uint32_t(stage_bytes(keys, head_dim, A.k_row, A.k_pad));
  A.v_stage = uint32_t(stage_bytes(values, head_dim, A.v_row, A.v_pad));
  A.n_kv = n_kv_head;
  A.group = group;
  const bool k_one_scale = !keys.fp16 && (1 << A.k_log2_group) == head_dim;
  const bool v_one_scale = !values.fp16 && (1 << A.v_log2_group) == head_dim;
  const Kernels kernels = head_dim == 64 ? pick<64>(kb, k_one_scale, vb, v_one_scale)
                                        : pick<128>(kb, k_one_scale, vb, v_one_scale);
  TKV_ASSERT(kernels.plain != nullptr && kernels.tail != nullptr, "no kernel instance for this stream pair");
  const size_t tables = pair_table_bytes(kb, vb);
  const bool any_fp16 = keys.fp16 || values.fp16;
  const int stages = stages_of(kb, vb);
  params_->threads = 32 * warps_of(kb, vb);
  const size_t ring = size_t(params_->threads / 32) * stages * (A.k_stage + A.v_stage);
  const size_t slot = size_t(kMaxRows) * (head_dim + 4) * sizeof(float);  // a warp's o in acc_o
  const size_t merge = size_t(params_->threads / 32) * slot;
  // With a tail: its o after the warps', and attend_tail's scratch.
  const size_t merge_tail = merge + slot + size_t(tail_scratch_floats(head_dim)) * sizeof(float);
  int device = 0;
  TKV_CUDA(cudaGetDevice(&device));
  const DeviceInfo dev = device_info();
  sm_count_ = dev.sm_count;
  auto configure = [&](KernelFn fn, size_t merge_bytes) {
    Launchable k;
    k.fn = fn;
    k.ring_bytes = uint32_t(std::max(ring, merge_bytes));
    k.dynamic_smem = k.ring_bytes + tables;
    cudaFuncAttributes attr{};
    TKV_CUDA(cudaFuncGetAttributes(&attr, fn));
    if (tables > 0 && !any_fp16) {  // kAlignedTable: the table at the first address past the ring aligned to its size
      // The dynamic shared memory starts after the kernel's static shared
      // memory, at most the reserved bytes (and an alignment) further.
      int reserved = 0;
      TKV_CUDA(cudaDeviceGetAttribute(&reserved, cudaDevAttrReservedSharedMemoryPerBlock, device));
      const size_t lowest = attr.sharedSizeBytes, highest = lowest + size_t(reserved) + 128;
      k.dynamic_smem = (highest + k.ring_bytes + tables - 1) / tables * tables + tables - lowest;
    }
    // Records too large for the ring and the aligned table together (a 64
    // KiB table of 4-bit pairs beside records of over ~70 bytes at head_dim
    // 128, e.g. 5-bit keys with 4-bit values; no turbo scheme's tier) are
    // refused by name rather than by the launch.
    int optin = 0;
    TKV_CUDA(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
    if (attr.sharedSizeBytes + k.dynamic_smem > size_t(optin)) {
      throw Error("CUDA decode attention: keys of " + std::to_string(A.k_row) + " and values of " +
                  std::to_string(A.v_row) + " bytes a position at head_dim " + std::to_string(head_dim) + " need " +
                  std::to_string(attr.sharedSizeBytes + k.dynamic_smem) +
                  " bytes of shared memory per block (tile ring and lookup table), more than this GPU's " +
                  std::to_string(optin));
    }
    TKV_CUDA(cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, int(k.dynamic_smem)));
    TKV_CUDA(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&k.ctas_per_sm, fn, params_->threads, k.dynamic_smem));
    if (k.ctas_per_sm < 1) throw Error("CUDA decode attention: kernel does not fit on this GPU");
    if (!any_fp16 && dev.major >= 9) {  // kFusedMerge: thread block clusters (sm_90)
      int clusters = 0;
      const ClusterLaunch largest(dim3(kMaxFusedSplits), params_->threads, k.dynamic_smem, kMaxFusedSplits);
      TKV_CUDA(cudaOccupancyMaxActiveClusters(&clusters, fn, &largest.config));
      k.fused_merge = clusters > 0;
    }
    return k;
  };
  params_->plain = configure(kernels.plain, merge);
  params_->tail = configure(kernels.tail, merge_tail);
}

DecodeAttention::~DecodeAttention() = default;

int DecodeAttention::planned_split(int n_seq, int max_seq_len) const {
  // One full wave of CTAs where the batch allows it: split the sequence so
  // that n_seq * n_kv_head * n_split fills the resident CTA slots.
  const long slots = long(params_->plain.ctas_per_sm) * sm_count_;
  const long base = long(n_seq) * n_kv_head_;
  const int max_split = std::max(1, (max_seq_len + 63) / 64);
  const int n_split = int(std::clamp<long>(slots / std::max(1L, base), 1, max_split));
  const int per = (max_seq_len + n_split - 1) / n_split;
  return std::max(64, (per + 63) / 64 * 64);
}

size_t DecodeAttention::bytes_read(const std::vector<int>& seq_len) const {
  size_t positions = 0;
  for (int l : seq_len) positions += size_t(l);
  return positions * size_t(n_kv_head_) * (k_row_ + v_row_);
}

void DecodeAttention::run(const AttentionArgs& args) {
  if (args.n_seq <= 0) return;
  if (args.capacity % 16 != 0 || args.max_seq_len > args.capacity) {
    throw Error("CUDA decode attention: capacity " + std::to_string(args.capacity) +
                " must be a multiple of 16 and at least max_seq_len " + std::to_string(args.max_seq_len));
  }
  if ((args.out_m == nullptr) != (args.out_d == nullptr)) {
    throw Error("CUDA decode attention: partial states need both out_m and out_d (or neither)");
  }
  if (reinterpret_cast<uintptr_t>(args.q) % 16 != 0) {  // the kernel loads the query 16 bytes at a time
    throw Error("CUDA decode attention: the query must be 16-byte aligned");
  }
  if (args.tail_len != nullptr) {
    if (args.tail_keys == nullptr || args.tail_values == nullptr || args.tail_capacity <= 0) {
      throw Error("CUDA decode attention: a tail (tail_len) needs tail_keys, tail_values and a positive tail_capacity");
    }
    if (reinterpret_cast<uintptr_t>(args.tail_keys) % 16 != 0 || reinterpret_cast<uintptr_t>(args.tail_values) % 16 != 0) {
      throw Error("CUDA decode attention: the tail's rows must be 16-byte aligned");
    }
  }
  if (args.timeline != nullptr && !timeline_available()) {
    throw Error("CUDA decode attention: AttentionArgs::timeline needs a build with -DTURBOKV_CUDA_TIMELINE=ON");
  }
  const int split = args.split > 0 ? args.split : planned_split(args.n_seq, std::max(1, args.max_seq_len));
  if (split % 64 != 0) throw Error("CUDA decode attention: split must be a multiple of 64, got " + std::to_string(split));
  const int n_split = std::max(1, (args.max_seq_len + split - 1) / split);
  const int n_head = n_kv_head_ * group_;
  const Launchable& k = args.tail_len != nullptr ? params_->tail : params_->plain;
  const bool fused = k.fused_merge && n_split <= kMaxFusedSplits;
  const size_t states = size_t(args.n_seq) * n_head * n_split;
  const size_t need = fused ? 0 : states * (2 + size_t(head_dim_)) * sizeof(float);
  if (workspace_.bytes() < need) workspace_ = DeviceBuffer(need);
  KernelArgs A = params_->base;
  A.keys = static_cast<const uint8_t*>(args.keys);
  A.values = static_cast<const uint8_t*>(args.values);
  A.seq_len = args.seq_len;
  A.capacity = args.capacity;
  A.split = split;
  A.n_split = n_split;
  A.q = args.q;
  A.shift = args.shift;
  A.scale_log2 = args.scale * kLog2e;
  A.out_m = args.out_m;
  A.out_d = args.out_d;
  A.tail_len = args.tail_len;
  A.tail_keys = static_cast<const uint16_t*>(args.tail_keys);
  A.tail_values = static_cast<const uint16_t*>(args.tail_values);
  A.tail_capacity = args.tail_capacity;
  A.timeline = args.timeline;
  A.ring_bytes = k.ring_bytes;
  const dim3 grid(unsigned(n_split), unsigned(n_kv_head_), unsigned(args.n_seq));
  const cudaStream_t stream = static_cast<cudaStream_t>(args.stream);
  if (fused) {  // one cluster per (sequence, kv head): its n_split CTAs
    A.out = args.out;
    const ClusterLaunch launch(grid, params_->threads, k.dynamic_smem, n_split, stream);
    TKV_CUDA(cudaLaunchKernelEx(&launch.config, k.fn, A));
  } else {
    A.ws_m = workspace_.as<float>();
    A.ws_d = A.ws_m + states;
    A.ws_o = A.ws_d + states;
    A.out = nullptr;
    k.fn<<<grid, unsigned(params_->threads), k.dynamic_smem, stream>>>(A);
    TKV_CUDA_LAUNCH("attention_kernel");
    merge_kernel<<<unsigned(args.n_seq * n_head), 128, 0, stream>>>(A.ws_m, A.ws_d, A.ws_o, n_split, head_dim_, args.out,
                                                                    args.out_m, args.out_d);
    TKV_CUDA_LAUNCH("merge_kernel");
  }
}

void merge_partials(const std::vector<PartialState>& parts, size_t rows, int head_dim, float* out, void* stream) {
  if (parts.empty() || parts.size() > size_t(kMaxParts)) {
    throw Error("CUDA merge_partials: 1 to " + std::to_string(kMaxParts) + " partial states, got " +
                std::to_string(parts.size()));
  }
  if (rows == 0) return;
  Parts p{};
  p.n = int(parts.size());
  for (size_t i = 0; i < parts.size(); ++i) {
    if (!parts[i].m || !parts[i].d || !parts[i].o) throw Error("CUDA merge_partials: a partial state without m, d or o");
    p.m[i] = parts[i].m;
    p.d[i] = parts[i].d;
    p.o[i] = parts[i].o;
  }
  merge_parts_kernel<<<unsigned(rows), 128, 0, static_cast<cudaStream_t>(stream)>>>(p, head_dim, out);
  TKV_CUDA_LAUNCH("merge_parts_kernel");
}

}  // namespace turbokv::cuda
