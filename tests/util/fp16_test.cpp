#include "util/fp16.h"

#include <cmath>
#include <limits>

#include <gtest/gtest.h>

namespace turbokv {
namespace {

TEST(Fp16, EveryHalfRoundTripsThroughFloat) {
  for (uint32_t h = 0; h < 0x10000u; ++h) {
    const float f = fp16_to_f32(fp16_t(h));
    if (std::isnan(f)) { EXPECT_TRUE(std::isnan(fp16_to_f32(f32_to_fp16(f)))); continue; }
    EXPECT_EQ(f32_to_fp16(f), fp16_t(h)) << "half bits " << h;
  }
}

TEST(Fp16, RoundsToNearestEven) {
  // 1 + 2^-11 is halfway between 1 and the next half (1 + 2^-10): ties to even (1).
  EXPECT_EQ(fp16_to_f32(f32_to_fp16(1.0f + 0x1.0p-11f)), 1.0f);
  // 1 + 3*2^-11 is halfway between 1+2^-10 and 1+2^-9: ties to even (1+2^-9).
  EXPECT_EQ(fp16_to_f32(f32_to_fp16(1.0f + 3 * 0x1.0p-11f)), 1.0f + 0x1.0p-9f);
  EXPECT_EQ(fp16_to_f32(f32_to_fp16(65519.0f)), 65504.0f);
  EXPECT_TRUE(std::isinf(fp16_to_f32(f32_to_fp16(65520.0f))));
  EXPECT_EQ(fp16_to_f32(f32_to_fp16(0x1.0p-24f)), 0x1.0p-24f);  // smallest subnormal
  EXPECT_EQ(fp16_to_f32(f32_to_fp16(0x1.0p-26f)), 0.0f);        // below half of it
}

TEST(Bf16, RoundTripAndRounding) {
  EXPECT_EQ(bf16_to_f32(f32_to_bf16(1.5f)), 1.5f);
  EXPECT_EQ(bf16_to_f32(f32_to_bf16(-3.0f)), -3.0f);
  EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(std::numeric_limits<float>::quiet_NaN()))));
  // 1 + 2^-8 is halfway between bf16 neighbours 1 and 1 + 2^-7: ties to even (1).
  EXPECT_EQ(bf16_to_f32(f32_to_bf16(1.0f + 0x1.0p-8f)), 1.0f);
}

}  // namespace
}  // namespace turbokv
