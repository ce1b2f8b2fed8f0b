// Fused attention kernels with fp16 products, for CPUs with AVX512-FP16
// (Intel Sapphire Rapids and later): the score and value kernels of
// turbo_attention-inl.h for records with one scale (mse, and group with one
// group a record) at 2, 3 and 4 bits. Where the CPU also has AVX-512 VNNI
// and VBMI, the int8 kernels of turbo_attention_int8.h score the keys.
//
// Why: on such a core both fused kernels are bound by the vector ports, and
// most of their work is the 2 * n_q * d FMAs per position. An fp16 FMA does
// 32 products where an fp32 FMA does 16 at the same rate (a 16-bit lane
// permute, vpermw, expands 32 indices for the cost of two vpermps). The query
// is rounded to fp16 once per block, the codebook once into a 32-entry fp16
// table, and partial sums stay in fp16 only over short runs:
//   scores  a lane sums d / 32 products (4 at d = 128) and a tree of three
//           fp16 adds joins 8 lanes before the sums go to fp32. Each head's
//           query is scaled to max |q_i| = 1 first (the scale is applied to
//           the fp32 dot), so no partial sum can overflow.
//   values  each block of <= 64 positions is accumulated in fp16 registers
//           with weights scaled to max 1 per head, then added to the fp32
//           output (one fp16 rounding per product and per add, over at most
//           64 terms of magnitude <= the largest centroid).
// The online softmax, its states and the merge stay fp32. Against the
// scalar reference, normalized outputs differ by at most 0.6% and
// log-sum-exps by 0.014 on the parity tests' cases (kv tests,
// kHalfProductTolerance), far below what 2-4-bit quantization already moves
// them: perplexity and KL divergence from FP16 are the same with either
// arithmetic (docs/RESULTS.md §5).
//
// Layout in registers (32 fp16 lanes): a chunk of E = 32 * S elements.
//   2 bits: 32 bytes, lane L = byte L, index vector k = bits [2k, 2k + 2):
//           element 4L + k (S = 4, E = 128).
//   4 bits: 32 bytes, lane L = byte L, k = nibble: element 2L + k (S = 2, E = 64).
//   3 bits: 48 bytes = 16 little-endian 24-bit fields of 8 indices; field l
//           fills lanes 2l (its indices 0..3) and 2l + 1 (4..7), so lane L
//           of index vector k is element 4L + k (S = 4, E = 128).
// This is turbo_attention-inl.h's chunk order with 32 lanes (element
// lanes-major: chunk + S * L + k), so NaturalIndices undoes it unchanged.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kv/turbo_attention.h"

namespace turbokv::kv::detail {

// The fp16 kernels for B-bit one-scale records of `dim` elements, for 1, 2
// and 4 query heads: false where this build or this CPU has none (the
// caller then plans the fp32 kernels).
bool plan_half_kernels(int bits, int dim, FusedKernels& out);

}  // namespace turbokv::kv::detail
