// Products of stored weights with float activations: validation, threading
// and activation quantization here; SIMD kernels in matmul_hwy.cpp; the
// scalar reference (the test oracle) at the bottom.
#include "ops/matmul.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "hwy/aligned_allocator.h"

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

// From this many tokens on, float weights take the prefill kernel, whose
// transposition of the activations is repaid by the faster inner loop.
constexpr int64_t kMinTokensForPacking = 32;

}  // namespace

void dequantize_row(const WeightView& w, int64_t row, float* out) {
  check_weights(w, "dequantize_row");
  TKV_ASSERT(row >= 0 && row < w.rows, "dequantize_row: row in range");
  dequantize_row_ref(w.type, w.row(row), out, size_t(w.cols));
}

void matvec(const WeightView& w, const float* x, float* y, ThreadPool& pool) { matmul(w, x, 1, y, pool); }

void matmul(const WeightView& w, const float* x, int64_t n, float* y, ThreadPool& pool) {
  const Product p{w, y};
  matmul(std::span<const Product>(&p, 1), x, n, pool);
}

void matmul(std::span<const Product> products, const float* x, int64_t n, ThreadPool& pool) {
  TKV_ASSERT(n >= 0, "matmul: token count non-negative");
  if (products.empty()) return;
  for (const Product& p : products) check_weights(p.w, "matmul");
  const int64_t cols = products[0].w.cols;
  const bool quantized = is_quantized(products[0].w.type);
  for (const Product& p : products) {
    TKV_ASSERT(p.w.cols == cols, "matmul: products of one input share its width");
    if (is_quantized(p.w.type) != quantized) {  // activations prepared two ways: one group each
      for (const Product& q : products) matmul(std::span<const Product>(&q, 1), x, n, pool);
      return;
    }
  }
  // One parallel region over the rows of all products, concatenated.
  size_t total_rows = 0;
  for (const Product& p : products) total_rows += size_t(p.w.rows);
  if (n == 0 || total_rows == 0) return;
  auto for_rows = [&](auto&& kernel) {
    pool.parallel_for(total_rows, kRowGrain, [&](size_t r0, size_t r1, int) {
      size_t offset = 0;
      for (const Product& p : products) {
        const size_t end = offset + size_t(p.w.rows);
        const size_t b = std::max(r0, offset), e = std::min(r1, end);
        if (b < e) kernel(p, int64_t(b - offset), int64_t(e - offset));
        offset = end;
      }
    });
  };
  const size_t C = size_t(cols);
  if (!quantized && n >= kMinTokensForPacking) {
    const size_t block = detail::token_block(), blocks = (size_t(n) + block - 1) / block;
    // (blocks, cols, block) tokens in lanes; vector-aligned so that no load splits a cache line.
    const auto xt = hwy::AllocateAligned<float>(blocks * block * C);
    pool.parallel_for(blocks, 1, [&](size_t b0, size_t b1, int) { detail::pack_tokens(x, n, cols, b0, b1, xt.get()); });
    for_rows([&](const Product& p, int64_t r0, int64_t r1) {
      detail::matmul_float_rows_packed(p.w, xt.get(), n, p.y, r0, r1);
    });
    return;
  }
  if (!quantized) {
    for_rows([&](const Product& p, int64_t r0, int64_t r1) { detail::matmul_float_rows(p.w, x, n, p.y, r0, r1); });
    return;
  }
  // Quantize the activations to Q8_0 once per call (exactly llama.cpp's
  // quantize_row_q8_0_ref), widened to int16 for the kernels.
  const size_t nb = C / kQK8_0;
  std::vector<int16_t> xq(size_t(n) * C);  // (n, cols)
  std::vector<float> xd(size_t(n) * nb);   // (n, cols / 32)
  auto quantize_tokens = [&](size_t t0, size_t t1, int) {
    std::vector<BlockQ8_0> blocks(nb);  // (cols / 32) blocks of one token
    for (size_t t = t0; t < t1; ++t) {
      quantize_row_q8_0_ref(x + t * C, blocks.data(), C);
      for (size_t b = 0; b < nb; ++b) {
        xd[t * nb + b] = fp16_to_f32(blocks[b].d);
        for (int j = 0; j < kQK8_0; ++j) xq[t * C + b * kQK8_0 + size_t(j)] = blocks[b].qs[j];
      }
    }
  };
  if (n == 1) quantize_tokens(0, 1, 0);
  else pool.parallel_for(size_t(n), 1, quantize_tokens);
  for_rows([&](const Product& p, int64_t r0, int64_t r1) {
    detail::matmul_quant_rows(p.w, xq.data(), xd.data(), n, p.y, r0, r1);
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
