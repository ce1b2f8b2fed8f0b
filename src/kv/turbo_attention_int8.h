// Fused score kernels with int8 products, for CPUs with AVX-512 VNNI and
// VBMI (Intel Ice Lake and later, AMD Zen 4 and later): the key side of
// turbo_attention-inl.h for records with one scale (mse, and group with one
// group a record) at 2, 3 and 4 bits, under KernelPrecision::Half.
//
// Why: a score is <q, x̂> = s Σ q_i c[idx_i]. With the query rounded to
// int8 once per block (q8 = round(q / Δq), Δq = max |q_i| / 127) and the
// codebook once (c8 = round(c / Δc), Δc = max |c| / 127), one vpdpbusd does
// 64 products and sums them by fours, where an fp16 FMA does 32 and an fp32
// FMA 16; the sums are exact in int32, so the lane sums need no care for
// overflow or precision. On the Sapphire Rapids core this was measured on
// the score kernel takes about 21 cycles a record (4 heads, 128 elements,
// 3 bits) against 32 for the fp16 kernel (docs/RESULTS.md §5).
//
// Error: |dot - <q, x̂>| <= s (Δq/2 Σ|c_i| + Δc/2 Σ|q_i| + d Δq Δc / 4),
// about 0.6% of a dot's spread for Gaussian queries; perplexity and KL
// divergence against FP16 are unchanged (docs/RESULTS.md §5). kv tests check
// each dot against the integer dot exactly and against this bound.
//
// Layout: a chunk is 64 indices (8 B bytes), read in natural element
// order (lanes = chunk = 64, sub = 1, so NaturalIndices is the identity):
// qword j of a vector takes the chunk's bytes from B j on (vpermb), byte m of
// it the 8 bits from bit B m on (vpmultishiftqb), and a vpermb from the
// codebook repeated to 64 entries reads the low 6 of those bits as
// (index + the bits above it), so nothing needs masking. dpbusd multiplies
// unsigned by signed bytes: the codebook is stored as c8 + 128 (1..255) and
// 128 Σ q8 taken off each dot.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kv/turbo_attention.h"

namespace turbokv::kv::detail {

// The int8 score kernels for B-bit one-scale records of `dim` elements (a
// multiple of 64, at most 256), for 1, 2 and 4 query heads; no value
// kernels (accumulate is null): false where this build or this CPU has none.
bool plan_int8_scores(int bits, int dim, FusedKernels& out);

}  // namespace turbokv::kv::detail
