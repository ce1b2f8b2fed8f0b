// Reference quantizers: float rows to the stored weight types, exactly as
// llama.cpp's quantize_row_*_ref (ggml-quants.c) computes them, so files
// written by the test support and weights quantized by llama.cpp agree.
#pragma once

#include <cstddef>
#include <cstdint>

#include "ops/tensor_type.h"

namespace turbokv::ops {

// n must be a multiple of 32. y: n / 32 blocks.
void quantize_row_q8_0_ref(const float* x, BlockQ8_0* y, size_t n);
void quantize_row_q4_0_ref(const float* x, BlockQ4_0* y, size_t n);

// Quantizes (or converts) n floats into row_bytes(type, n) bytes at dst.
// Supported types only; throws Error otherwise.
void quantize_row(TensorType type, const float* x, void* dst, size_t n);

// Scalar dequantization of n elements of `type` at src (the reference that
// dequantize_row and every fast kernel are tested against).
void dequantize_row_ref(TensorType type, const void* src, float* out, size_t n);

}  // namespace turbokv::ops
