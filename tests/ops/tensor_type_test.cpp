// Block layouts, sizes and the reference quantizers.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "ops/quantize.h"
#include "ops/tensor_type.h"
#include "util/error.h"
#include "util/rng.h"

namespace turbokv::ops {
namespace {

TEST(TensorType, SizesAndNames) {
  EXPECT_EQ(row_bytes(TensorType::F32, 7), 28u);
  EXPECT_EQ(row_bytes(TensorType::F16, 7), 14u);
  EXPECT_EQ(row_bytes(TensorType::BF16, 7), 14u);
  EXPECT_EQ(row_bytes(TensorType::Q8_0, 64), 68u);
  EXPECT_EQ(row_bytes(TensorType::Q4_0, 64), 36u);
  EXPECT_EQ(row_bytes(TensorType::Q4_K, 512), 288u);
  EXPECT_THROW(row_bytes(TensorType::Q8_0, 33), Error);
  EXPECT_THROW(row_bytes(TensorType(99), 32), Error);
  EXPECT_STREQ(type_name(TensorType::Q4_0), "q4_0");
  EXPECT_STREQ(type_name(TensorType::BF16), "bf16");
  EXPECT_STREQ(type_name(TensorType(99)), "unknown");
  EXPECT_EQ(block_bytes(TensorType(99)), 0u);
  for (auto t : {TensorType::F32, TensorType::F16, TensorType::BF16, TensorType::Q8_0, TensorType::Q4_0})
    EXPECT_TRUE(is_supported(t));
  for (auto t : {TensorType::Q4_1, TensorType::Q4_K, TensorType::Q6_K, TensorType(99)}) EXPECT_FALSE(is_supported(t));
}

TEST(Quantize, Q8_0MatchesLlamaCppReference) {
  // Hand-checked block: amax 2.54 -> d = 0.02, q = round(x / 0.02).
  std::vector<float> x(32, 0.0f);
  x[0] = 2.54f;
  x[1] = -1.26f;   // -63
  x[2] = 0.011f;   // 0.55 -> 1
  x[3] = -0.031f;  // -1.55 -> -2
  BlockQ8_0 b;
  quantize_row_q8_0_ref(x.data(), &b, 32);
  EXPECT_EQ(b.d, f32_to_fp16(2.54f / 127.0f));
  EXPECT_EQ(b.qs[0], 127);
  EXPECT_EQ(b.qs[1], -63);
  EXPECT_EQ(b.qs[2], 1);
  EXPECT_EQ(b.qs[3], -2);
  EXPECT_EQ(b.qs[4], 0);
}

TEST(Quantize, Q4_0NibbleOrderAndSign) {
  // max magnitude value is -8 -> d = 1, q = x + 8 (low nibbles = first 16).
  std::vector<float> x(32);
  for (int i = 0; i < 32; ++i) x[size_t(i)] = float((i % 16) - 8);
  x[31] = 7.0f;
  BlockQ4_0 b;
  quantize_row_q4_0_ref(x.data(), &b, 32);
  EXPECT_EQ(fp16_to_f32(b.d), 1.0f);
  EXPECT_EQ(b.qs[0] & 0x0f, 0);   // x[0] = -8
  EXPECT_EQ(b.qs[0] >> 4, 0);     // x[16] = -8
  EXPECT_EQ(b.qs[15] >> 4, 15);   // x[31] = 7
  std::vector<float> back(32);
  dequantize_row_ref(TensorType::Q4_0, &b, back.data(), 32);
  for (int i = 0; i < 32; ++i) EXPECT_EQ(back[size_t(i)], x[size_t(i)]) << i;
  // Positive extreme: d = -max/8 is negative; +max maps to nibble 0.
  std::vector<float> y(32, 0.0f);
  y[5] = 4.0f;
  quantize_row_q4_0_ref(y.data(), &b, 32);
  EXPECT_EQ(fp16_to_f32(b.d), -0.5f);
  dequantize_row_ref(TensorType::Q4_0, &b, back.data(), 32);
  EXPECT_EQ(back[5], 4.0f);
  EXPECT_EQ(back[0], 0.0f);
}

// Reference quantization error bounds: Q8_0 <= d/2 (plus the fp16 rounding
// of d); Q4_0 <= d = amax/8, because the value opposite in sign to the block's
// extreme maps to 16 and is clamped to nibble 15; F16/BF16 relative 2^-11 / 2^-8.
TEST(Quantize, RoundTripErrorBounds) {
  Rng rng(3);
  const size_t n = 4096;
  std::vector<float> x(n), back(n);
  for (auto& v : x) v = float(rng.normal());
  for (auto t : {TensorType::F32, TensorType::F16, TensorType::BF16, TensorType::Q8_0, TensorType::Q4_0}) {
    std::vector<uint8_t> q(row_bytes(t, n));
    quantize_row(t, x.data(), q.data(), n);
    dequantize_row_ref(t, q.data(), back.data(), n);
    for (size_t b = 0; b < n / 32; ++b) {
      float amax = 0;
      for (size_t j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(x[b * 32 + j]));
      for (size_t j = 0; j < 32; ++j) {
        const size_t i = b * 32 + j;
        const float err = std::fabs(back[i] - x[i]);
        float bound = 0;
        switch (t) {
          case TensorType::F32: bound = 0; break;
          case TensorType::F16: bound = std::fabs(x[i]) * 0x1p-11f + 0x1p-25f; break;
          case TensorType::BF16: bound = std::fabs(x[i]) * 0x1p-8f; break;
          case TensorType::Q8_0: bound = amax / 127.0f * 0.5f * 1.002f + amax * 0x1p-11f; break;
          default: bound = amax / 8.0f * 1.002f + amax * 0x1p-10f; break;
        }
        ASSERT_LE(err, bound) << type_name(t) << " element " << i;
      }
    }
  }
  EXPECT_THROW(quantize_row(TensorType::Q4_K, x.data(), back.data(), 256), Error);
}

}  // namespace
}  // namespace turbokv::ops
