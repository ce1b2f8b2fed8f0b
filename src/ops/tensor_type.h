// Weight tensor types, numbered as ggml numbers them (GGUF stores these ids),
// with llama.cpp's block layouts. One struct per quantized block, size asserted.
#pragma once

#include <cstddef>
#include <cstdint>

#include "util/fp16.h"

namespace turbokv::ops {

enum class TensorType : uint32_t {
  F32 = 0, F16 = 1, Q4_0 = 2, Q4_1 = 3, Q5_0 = 6, Q5_1 = 7, Q8_0 = 8, Q8_1 = 9,
  Q2_K = 10, Q3_K = 11, Q4_K = 12, Q5_K = 13, Q6_K = 14, Q8_K = 15,
  BF16 = 30,
};

// llama.cpp block_q8_0: 32 weights = d * qs[i].
constexpr int kQK8_0 = 32;
struct BlockQ8_0 {
  fp16_t d;
  int8_t qs[kQK8_0];
};
static_assert(sizeof(BlockQ8_0) == 34, "block_q8_0 layout");

// llama.cpp block_q4_0: 32 weights = d * (nibble - 8); low nibbles hold
// weights 0..15, high nibbles weights 16..31.
constexpr int kQK4_0 = 32;
struct BlockQ4_0 {
  fp16_t d;
  uint8_t qs[kQK4_0 / 2];
};
static_assert(sizeof(BlockQ4_0) == 18, "block_q4_0 layout");

// Whether turbokv can compute with this type.
bool is_supported(TensorType t);
const char* type_name(TensorType t);  // "f32", "q4_0", ...; "unknown" otherwise
// Elements per block (1 for float types) and bytes per block; 0 if unknown.
size_t block_elements(TensorType t);
size_t block_bytes(TensorType t);
// Bytes of a row of n elements; throws Error if n is not a multiple of the block size.
size_t row_bytes(TensorType t, size_t n);
// Names of the supported types, for error messages: "f32, f16, bf16, q8_0, q4_0".
const char* supported_type_list();

}  // namespace turbokv::ops
