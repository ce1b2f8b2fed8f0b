// Internal interface between ops/matmul.cpp (validation, threading,
// activation quantization) and the Highway kernels in ops/matmul_hwy.cpp.
// Not part of the public API.
#pragma once

#include <cstddef>
#include <cstdint>

#include "ops/matmul.h"

namespace turbokv::ops::detail {

// Rows [r0, r1) of Y = X W^T for float-type weights (F32, F16, BF16):
// y[t * w.rows + r] = dot(W[r, :], x[t * w.cols + :]) for t in [0, n).
void matmul_float_rows(const WeightView& w, const float* x, int64_t n, float* y, int64_t r0, int64_t r1);

// Prefill path for float-type weights (many tokens): the activations are
// transposed once into blocks of token_block() tokens,
// xt (blocks, cols, token_block()), zero past n; then row ranges are
// computed from xt. Each dot product is one sequential FMA chain over the
// columns, so results differ from matmul_float_rows only in summation order.
size_t token_block();
// Token blocks [b0, b1) of x (n, cols) into xt.
void pack_tokens(const float* x, int64_t n, int64_t cols, size_t b0, size_t b1, float* xt);
void matmul_float_rows_packed(const WeightView& w, const float* xt, int64_t n, float* y, int64_t r0, int64_t r1);

// Rows [r0, r1) for Q8_0/Q4_0 weights against Q8_0-quantized activations,
// widened to int16: xq (n, cols) int16 quants, xd (n, cols / 32) block scales.
// Integer dot per block (int16 x int16 -> int32), scaled by d_w * d_x.
void matmul_quant_rows(const WeightView& w, const int16_t* xq, const float* xd, int64_t n, float* y, int64_t r0,
                       int64_t r1);

// Name of the instruction set the dispatcher picked ("AVX3", "AVX2", ...).
const char* fast_target_name();

}  // namespace turbokv::ops::detail
