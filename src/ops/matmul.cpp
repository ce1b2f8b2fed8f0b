// Products of stored weights with float activations: validation, threading
// and activation quantization here; SIMD kernels in matmul_hwy.cpp; the
// scalar reference (the test oracle) at the bottom.
#include "ops/matmul.h"

#include <cmath>
#include <string>
#include <vector>

#include "ops/matmul_kernels.h"
#include "ops/quantize.h"
#include "util/error.h"

namespace turbokv::ops {
namespace {

void check_weights(const WeightView& w, const char* fn) {
  TKV_ASSERT(w.data != nullptr || w.rows == 0, "weight data present");
  TKV_ASSERT(w.rows >= 0 && w.cols > 0, "weight shape positive");
  if (!is_supported(w.type)) {
    throw Error(std::string(fn) + ": weight type " + type_name(w.type) + " (id " + std::to_string(uint32_t(w.type)) +
                ") is not supported; supported: " + supported_type_list());
  }
  TKV_ASSERT(size_t(w.cols) % block_elements(w.type) == 0, "weight row length is a whole number of blocks");
}

bool is_quantized(TensorType t) { return t == TensorType::Q8_0 || t == TensorType::Q4_0; }

// Rows per parallel task: a multiple of the kernels' row tiles (4, 8, and the
// 32-row prefill panel), and big
// enough that one task is not dwarfed by the fork-join cost.
constexpr size_t kRowGrain = 32;

}  // namespace

void dequantize_row(const WeightView& w, int64_t row, float* out) {
  check_weights(w, "dequantize_row");
  TKV_ASSERT(row >= 0 && row < w.rows, "dequantize_row: row in range");
  dequantize_row_ref(w.type, w.row(row), out, size_t(w.cols));
}

void matvec(const WeightView& w, const float* x, float* y, ThreadPool& pool) { matmul(w, x, 1, y, pool); }

void matmul(const WeightView& w, const float* x, int64_t n, float* y, ThreadPool& pool) {
  check_weights(w, "matmul");
  TKV_ASSERT(n >= 0, "matmul: token count non-negative");
  if (n == 0 || w.rows == 0) return;
  const size_t cols = size_t(w.cols);
  if (!is_quantized(w.type)) {
    pool.parallel_for(size_t(w.rows), kRowGrain, [&](size_t r0, size_t r1, int) {
      detail::matmul_float_rows(w, x, n, y, int64_t(r0), int64_t(r1));
    });
    return;
  }
  // Quantize the activations to Q8_0 once per call (exactly llama.cpp's
  // quantize_row_q8_0_ref), widened to int16 for the kernels.
  const size_t nb = cols / kQK8_0;
  std::vector<int16_t> xq(size_t(n) * cols);  // (n, cols)
  std::vector<float> xd(size_t(n) * nb);      // (n, cols / 32)
  auto quantize_tokens = [&](size_t t0, size_t t1, int) {
    std::vector<BlockQ8_0> blocks(nb);  // (cols / 32) blocks of one token
    for (size_t t = t0; t < t1; ++t) {
      quantize_row_q8_0_ref(x + t * cols, blocks.data(), cols);
      for (size_t b = 0; b < nb; ++b) {
        xd[t * nb + b] = fp16_to_f32(blocks[b].d);
        for (int j = 0; j < kQK8_0; ++j) xq[t * cols + b * kQK8_0 + size_t(j)] = blocks[b].qs[j];
      }
    }
  };
  if (n == 1) quantize_tokens(0, 1, 0);
  else pool.parallel_for(size_t(n), 1, quantize_tokens);
  pool.parallel_for(size_t(w.rows), kRowGrain, [&](size_t r0, size_t r1, int) {
    detail::matmul_quant_rows(w, xq.data(), xd.data(), n, y, int64_t(r0), int64_t(r1));
  });
}

void matmul_ref(const WeightView& w, const float* x, int64_t n, float* y) {
  check_weights(w, "matmul_ref");
  const size_t cols = size_t(w.cols);
  std::vector<float> row(cols);
  for (int64_t r = 0; r < w.rows; ++r) {
    dequantize_row_ref(w.type, w.row(r), row.data(), cols);
    for (int64_t t = 0; t < n; ++t) {
      double s = 0.0;
      for (size_t c = 0; c < cols; ++c) s += double(row[c]) * double(x[size_t(t) * cols + c]);
      y[t * w.rows + r] = float(s);
    }
  }
}

const char* matmul_target_name() { return detail::fast_target_name(); }

}  // namespace turbokv::ops
