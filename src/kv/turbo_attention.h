// Decode attention fused over compressed KV records (the TurboQuant cache's
// kernel; turbo_cache.h describes the math, codec/format.h the records).
//
// A job is one (kv head, range of encoded positions) with the n_q query heads
// that read that kv head (GQA): it returns one FlashInfer-style partial
// softmax state {m, d, o} per query head, which the cache merges across
// ranges (online_softmax.h). Per block of 64 positions:
//   scores  s_j(t) = scale * (<q_j, k̂(t)> + shift_j), straight from the packed
//           indices: 2/3/4/8-bit indices are widened to 32-bit lanes in
//           registers and expanded to centroid values with a lane permute
//           (TableLookupLanes: the whole 4-bit codebook sits in one AVX-512
//           register), then FMA'd with every query head of the group, so each
//           record is unpacked once per group; mse multiplies each dot by the
//           record's norm, and so does group with one group per record;
//           group scales lanes by their group's scale otherwise (one
//           permute of the record's fp16 scales per chunk). Dots of 4
//           (record, head) pairs are reduced together.
//   softmax one online-softmax update per block (vectorized exp).
//   values  o_j += w_j(t) v̂(t), expanded the same way, the output vectors held
//           in registers across the block; the norm / group scale is folded
//           into the weights, which the FMAs broadcast from memory.
// No float copy of a key or value is made. The fused kernels keep queries and
// outputs in the order the packed bytes unpack in (a fixed permutation inside
// every E-element chunk, E = lanes * 8 / bits, 8 * lanes at 3 bits, 4 *
// lanes at 5 bits); it is undone once per job. Cost per position:
// 2 * n_q * d FMAs plus O(d) index expansions, reading one record per
// stream (e.g. 2 + d/2 bytes for mse4).
//
// Which layouts are fused (StreamRead::Fused, checked again per instruction
// set): mse and group at 2, 3, 4, 5 and 8 bits, when the head size is a
// multiple of E for some vector length >= 4 (>= 8 at 5 bits; and, for
// group, d / G <= lanes and a record of >= 2 * lanes bytes). A record with
// one scale (mse, group with one group) that no wide chunk divides is read
// in two segments, a head at a wide vector and the rest at a narrower one
// (3 bits at 96: 64 at 8 lanes, 32 at 4). Affine records (4 and 8 bits,
// x = scale * code + bias per group) are read by the group kernels with the
// codes 0 .. 2^B - 1 as their codebook; the biases add Σ_g bias_g Σ_(i in g)
// q_i to a dot and Σ_t w(t) bias_g(t) to each element of group g, once per
// block. prod records at 3 bits or more, at head sizes a multiple of the
// vector's lanes, are read by the mse kernels at B - 1 bits; their QJL signs add n γ k <S q, z> to a dot (from the query's
// sketch) and, S^T being linear, S^T Σ_t w(t) n γ k z(t) to the values once
// per job. prod at 2 bits, other bit widths and the shapes that do not
// chunk (e.g. 3 bits at head size 80) use the codec's scalar dot_rotated /
// decode_rotated (StreamRead::Codec): correct, not fast. Split records
// (outlier channels) are read part by part, each part in its segments with
// the kernels of its own layout and codebook (the dots of the segments added
// before the softmax, values accumulated into their elements), where both
// parts are fused layouts.
//
// Arithmetic (KernelPrecision): F32 keeps every product and sum in fp32.
// Half, the caches' default (scheme option math=half), reads one-scale
// records at 2, 3 and 4 bits with narrower products where the CPU has them:
// keys with the int8 score kernels of turbo_attention_int8.h (AVX-512 VNNI
// and VBMI: 64 products an instruction), values and otherwise keys with the
// fp16 kernels of turbo_attention_half.h (AVX512-FP16: 32 instead of 16);
// it is F32 elsewhere.
//
// The scalar reference attend_chunk_reference computes the same states with
// the codec's dot_rotated/decode_rotated in natural order; kv tests compare
// the two on odd sizes.
#pragma once

#include <cstddef>
#include <cstdint>

#include "codec/codec.h"
#include "util/fp16.h"

namespace turbokv::kv::detail {

// How a job reads one stream over encoded positions.
enum class StreamRead : uint8_t {
  Fused,  // mse / group records read by the SIMD kernels
  Codec,  // any codec through its scalar dot_rotated / decode_rotated
  Dense,  // FP16 rows in the original space (turbo0v4 keys, turbo4v0 values)
};

struct StreamSource {
  StreamRead read = StreamRead::Dense;
  const codec::Codec* codec = nullptr;  // Fused, Codec
  const uint8_t* records = nullptr;     // Fused, Codec: position 0; (pos, record_bytes)
  const fp16_t* rows = nullptr;         // Dense: position 0; (pos, head_dim)
};

// Largest number of query heads per kv head a job takes (GQA ratio); the
// cache splits larger groups.
inline constexpr int kMaxJobHeads = 8;

struct ChunkJob {
  StreamSource keys, values;
  int head_dim = 0;
  int n_q = 0;                      // query heads, 1..kMaxJobHeads
  int begin = 0, end = 0;           // positions [begin, end), end > begin
  const float* q = nullptr;         // (n_q, head_dim) query in the key stream's space
  const float* q_sketch = nullptr;  // (n_q, head_dim) prod keys only (Codec::sketch_query)
  const float* shift = nullptr;     // (n_q) added to every dot before scaling; may be null
  float scale = 1.0f;
  // Outputs: the unnormalized partial state of each query head.
  float* m = nullptr;               // (n_q) running max score
  float* d = nullptr;               // (n_q) Σ exp(s - m)
  float* o = nullptr;               // (n_q, head_dim) Σ exp(s - m) v̂, in the value stream's space
};

// Positions per online-softmax update: the stride of the kernels' score and
// weight rows.
inline constexpr int kAttentionBlock = 64;

// The fused readers of one record layout (turbo_attention-inl.h, and
// turbo_attention_half.h): dots of n <= kAttentionBlock records with 1, 2
// or 4 query heads, and the accumulation of their values, over `dim`
// elements of each record in the layout's chunk order (lanes, sub, chunk).
//   score:      qp (n_q, stride) -> dots (n_q, kAttentionBlock)
//   accumulate: w (n_q, kAttentionBlock) -> op (n_q, stride), added to
using ScoreFn = void (*)(const uint8_t* rec0, size_t rec_bytes, uint32_t index_offset, int n, int dim, int stride,
                         int group, const float* qp, const float* table, float* dots);
using AccumulateFn = void (*)(const uint8_t* rec0, size_t rec_bytes, uint32_t index_offset, int n, int dim,
                              int stride, int group, const float* w, const float* table, float* op);
struct FusedKernels {
  int lanes = 0, sub = 0, chunk = 0;  // vector lanes N, index vectors per chunk S, chunk elements E = N * S
  ScoreFn score[3] = {};              // n_q = 1, 2, 4
  AccumulateFn accumulate[3] = {};    // n_q = 1, 2, 4
};

// The arithmetic of the fused kernels.
enum class KernelPrecision : uint8_t {
  F32,   // fp32 products and sums throughout
  Half,  // narrow products where the CPU has them: int8 key dots
         // (turbo_attention_int8.h), fp16 products and short partial sums
         // (turbo_attention_half.h); fp32 elsewhere
};

// Floats of per-thread work memory a job needs.
size_t chunk_work_floats(int head_dim);

// Index widths the fused kernels read (PlanKind's cases).
constexpr bool fused_bits(int bits) { return (bits >= 2 && bits <= 5) || bits == 8; }

// Whether the fused kernels read this codec's records for this head size
// (on the instruction set chosen now; the scalar fallback is always valid).
bool fused_layout_supported(const codec::Codec& codec);

using AttendChunkFn = void (*)(const ChunkJob& job, float* work);

// The kernel for the best instruction set of this CPU: chosen once per
// attention call, not per job (STYLE rule 5).   work: (chunk_work_floats)
AttendChunkFn select_attend_chunk(KernelPrecision precision);

// Scalar reference: same blocked online softmax, codec reference dot/decode,
// natural element order. The oracle for the fused kernels.
void attend_chunk_reference(const ChunkJob& job, float* work);

}  // namespace turbokv::kv::detail
