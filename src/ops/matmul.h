// Products of model weights with activations. Weights stay in their stored
// type (F32, F16, BF16, Q8_0, Q4_0) and are dequantized on the fly inside
// the dot products: there is never a full float copy of the model.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

#include "ops/tensor_type.h"
#include "util/thread_pool.h"

namespace turbokv::ops {

// A row-major weight matrix as stored in GGUF: `rows` rows of `cols`
// contiguous elements (ggml ne[0] = cols, ne[1] = rows).
struct WeightView {
  TensorType type = TensorType::F32;
  const void* data = nullptr;
  int64_t rows = 0;
  int64_t cols = 0;
  size_t row_stride_bytes() const { return row_bytes(type, size_t(cols)); }
  const uint8_t* row(int64_t r) const {
    return static_cast<const uint8_t*>(data) + size_t(r) * row_stride_bytes();
  }
};

// y[r] = dot(W[r, :], x) for every row.   x: (cols)  y: (rows)
void matvec(const WeightView& w, const float* x, float* y, ThreadPool& pool);

// Y[t, r] = dot(W[r, :], X[t, :]).   X: (n, cols)  Y: (n, rows)
// Used for prefill and batched verification; n == 1 equals matvec.
// F32/F16/BF16 weights: float FMA. Q8_0/Q4_0 weights: x is first quantized
// to Q8_0 blocks (as llama.cpp does), then integer dot products per block;
// that adds an error of at most sum_block(sum|w|) * amax_x_block / 254.
void matmul(const WeightView& w, const float* x, int64_t n, float* y, ThreadPool& pool);

// One product of a group: Y = X W^T into y (n, w.rows).
struct Product {
  WeightView w;
  float* y;
};

// Several products of one input X (n, cols), e.g. the q/k/v or gate/up
// projections: the activations are prepared (transposed or quantized) once,
// and the rows of all products are split over the pool in one parallel
// region. Each result equals its own matmul() bit for bit.
void matmul(std::span<const Product> products, const float* x, int64_t n, ThreadPool& pool);

// Dequantizes one row (for embedding lookups).   out: (cols)
void dequantize_row(const WeightView& w, int64_t row, float* out);

// Scalar reference for matmul/matvec, the test oracle: weights dequantized
// element by element, float activations (not quantized), double accumulation.
void matmul_ref(const WeightView& w, const float* x, int64_t n, float* y);

// The instruction set the fast kernels run with here ("AVX3", "AVX2", ...).
const char* matmul_target_name();

}  // namespace turbokv::ops
