// Fast (Highway) attention kernels for the dense caches; the scalar
// reference is attend_head_f32/f16 in dense_cache.h, and kv_tests check one
// against the other.
#pragma once

#include <cstddef>

#include "util/fp16.h"

namespace turbokv::kv::detail {

// Keys are scored in blocks of this many positions so the online-softmax
// output is rescaled once per block (stack buffer, no allocation).
constexpr int kScoreBlock = 64;

// Largest number of query heads one call takes (callers split larger GQA groups).
constexpr int kMaxGroupHeads = 8;

// Attention of n_q (1..kMaxGroupHeads) query heads that read the same kv head,
// over positions [0, n_pos).   q, out: (n_q, head_dim); keys, values:
// (n_pos, head_dim). Each head's output is bit for bit what a call with that
// head alone gives. Returns false without touching `out` when head_dim is not
// a multiple of the vector length (use the reference then).
bool attend_group_fast(const float* q, int n_q, const fp16_t* keys, const fp16_t* values, int n_pos, int head_dim,
                       float scale, float* out);
bool attend_group_fast(const float* q, int n_q, const float* keys, const float* values, int n_pos, int head_dim,
                       float scale, float* out);

// out[i] = f32_to_fp16(x[i]) (round to nearest even) for i < n, bit for bit
// except NaN payloads: the F16C conversion where the CPU has it (AVX2 and
// up), the scalar one elsewhere.   x, out: (n)
void to_fp16(const float* x, fp16_t* out, size_t n);

}  // namespace turbokv::kv::detail
