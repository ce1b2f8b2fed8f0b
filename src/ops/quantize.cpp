#include "ops/quantize.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>

#include "util/error.h"

namespace turbokv::ops {

// ggml-quants.c quantize_row_q8_0_ref: d = amax / 127, q = round(x / d).
void quantize_row_q8_0_ref(const float* x, BlockQ8_0* y, size_t n) {
  TKV_ASSERT(n % kQK8_0 == 0, "q8_0 rows are whole blocks");
  const size_t nb = n / kQK8_0;
  for (size_t i = 0; i < nb; ++i) {
    float amax = 0.0f;
    for (int j = 0; j < kQK8_0; ++j) amax = std::fmax(amax, std::fabs(x[i * kQK8_0 + j]));
    const float d = amax / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    y[i].d = f32_to_fp16(d);
    for (int j = 0; j < kQK8_0; ++j) y[i].qs[j] = int8_t(std::roundf(x[i * kQK8_0 + j] * id));
  }
}

// ggml-quants.c quantize_row_q4_0_ref: d = max / -8 where max is the value of
// largest magnitude (sign kept), q = min(15, (int8)(x / d + 8.5)).
void quantize_row_q4_0_ref(const float* x, BlockQ4_0* y, size_t n) {
  TKV_ASSERT(n % kQK4_0 == 0, "q4_0 rows are whole blocks");
  const size_t nb = n / kQK4_0;
  for (size_t i = 0; i < nb; ++i) {
    const float* xb = x + i * kQK4_0;
    float amax = 0.0f, max = 0.0f;
    for (int j = 0; j < kQK4_0; ++j) {
      if (amax < std::fabs(xb[j])) { amax = std::fabs(xb[j]); max = xb[j]; }
    }
    const float d = max / -8.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    y[i].d = f32_to_fp16(d);
    for (int j = 0; j < kQK4_0 / 2; ++j) {
      const float x0 = xb[j] * id, x1 = xb[kQK4_0 / 2 + j] * id;
      const uint8_t q0 = uint8_t(std::min(int8_t(15), int8_t(x0 + 8.5f)));
      const uint8_t q1 = uint8_t(std::min(int8_t(15), int8_t(x1 + 8.5f)));
      y[i].qs[j] = uint8_t(q0 | (q1 << 4));
    }
  }
}

void quantize_row(TensorType type, const float* x, void* dst, size_t n) {
  (void)row_bytes(type, n);  // validates the block multiple
  switch (type) {
    case TensorType::F32: std::memcpy(dst, x, n * sizeof(float)); return;
    case TensorType::F16: {
      auto* o = static_cast<fp16_t*>(dst);
      for (size_t i = 0; i < n; ++i) o[i] = f32_to_fp16(x[i]);
      return;
    }
    case TensorType::BF16: {
      auto* o = static_cast<bf16_t*>(dst);
      for (size_t i = 0; i < n; ++i) o[i] = f32_to_bf16(x[i]);
      return;
    }
    case TensorType::Q8_0: quantize_row_q8_0_ref(x, static_cast<BlockQ8_0*>(dst), n); return;
    case TensorType::Q4_0: quantize_row_q4_0_ref(x, static_cast<BlockQ4_0*>(dst), n); return;
    default: break;
  }
  throw Error(std::string("quantize_row: tensor type ") + type_name(type) + " (id " + std::to_string(uint32_t(type)) +
              ") is not supported; supported: " + supported_type_list());
}

void dequantize_row_ref(TensorType type, const void* src, float* out, size_t n) {
  (void)row_bytes(type, n);
  switch (type) {
    case TensorType::F32: std::memcpy(out, src, n * sizeof(float)); return;
    case TensorType::F16: {
      const auto* h = static_cast<const fp16_t*>(src);
      for (size_t i = 0; i < n; ++i) out[i] = fp16_to_f32(h[i]);
      return;
    }
    case TensorType::BF16: {
      const auto* b = static_cast<const bf16_t*>(src);
      for (size_t i = 0; i < n; ++i) out[i] = bf16_to_f32(b[i]);
      return;
    }
    case TensorType::Q8_0: {
      const auto* blk = static_cast<const BlockQ8_0*>(src);
      for (size_t i = 0; i < n / kQK8_0; ++i) {
        const float d = fp16_to_f32(blk[i].d);
        for (int j = 0; j < kQK8_0; ++j) out[i * kQK8_0 + j] = d * float(blk[i].qs[j]);
      }
      return;
    }
    case TensorType::Q4_0: {
      const auto* blk = static_cast<const BlockQ4_0*>(src);
      for (size_t i = 0; i < n / kQK4_0; ++i) {
        const float d = fp16_to_f32(blk[i].d);
        for (int j = 0; j < kQK4_0 / 2; ++j) {
          out[i * kQK4_0 + j] = d * float(int(blk[i].qs[j] & 0x0f) - 8);
          out[i * kQK4_0 + kQK4_0 / 2 + j] = d * float(int(blk[i].qs[j] >> 4) - 8);
        }
      }
      return;
    }
    default: break;
  }
  throw Error(std::string("dequantize_row: tensor type ") + type_name(type) + " (id " +
              std::to_string(uint32_t(type)) + ") is not supported; supported: " + supported_type_list());
}

}  // namespace turbokv::ops
