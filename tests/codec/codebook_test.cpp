#include <gtest/gtest.h>

#include <cmath>

#include "codec/codebook.h"
#include "util/error.h"
#include "util/rng.h"

namespace turbokv::codec {
namespace {

void expect_sorted_symmetric(const Codebook& cb) {
  const auto c = cb.centroids();
  const auto t = cb.boundaries();
  ASSERT_EQ(int(c.size()), 1 << cb.bits());
  ASSERT_EQ(t.size(), c.size() - 1);
  for (size_t i = 0; i + 1 < c.size(); ++i) {
    EXPECT_LT(c[i], c[i + 1]);
    EXPECT_FLOAT_EQ(t[i], 0.5f * (c[i] + c[i + 1]));
  }
  for (size_t i = 0; i < c.size(); ++i) EXPECT_EQ(c[i], -c[c.size() - 1 - i]);
}

TEST(Codebook, GaussianMatchesLloydMaxMse) {
  // Max (1960) / TurboQuant Table: MSE per coordinate of N(0,1), b = 1..4.
  const double expected[4] = {0.3634, 0.1175, 0.03454, 0.009497};
  for (int b = 1; b <= 4; ++b) {
    const Codebook cb = Codebook::gaussian(b);
    EXPECT_NEAR(cb.mse(), expected[b - 1], 0.005 * expected[b - 1]) << "bits " << b;
  }
  EXPECT_NEAR(Codebook::gaussian(1).centroids()[1], std::sqrt(2.0 / M_PI), 1e-6);
  EXPECT_NEAR(Codebook::gaussian(1).mse(), 1.0 - 2.0 / M_PI, 1e-9);
}

TEST(Codebook, AllWidthsSortedSymmetricAndImproving) {
  double prev = 1.0;
  for (int b = 1; b <= 8; ++b) {
    const Codebook g = Codebook::gaussian(b);
    expect_sorted_symmetric(g);
    EXPECT_LT(g.mse(), prev);
    EXPECT_GT(g.mse(), std::pow(4.0, -b) * 0.9);  // never beats ~ the Shannon bound 4^-b
    prev = g.mse();
  }
  for (int d : {3, 4, 8, 64, 128}) {
    for (int b : {1, 2, 4, 8}) {
      SCOPED_TRACE(testing::Message() << "d " << d << " bits " << b);
      const Codebook s = Codebook::sphere(b, d);
      expect_sorted_symmetric(s);
      EXPECT_LE(s.centroids().back(), 1.0f);
    }
  }
}

TEST(Codebook, SphereApproachesGaussianAndIsExactForUniform) {
  // d = 3: the coordinate is uniform on [-1, 1]; the b-bit Lloyd–Max
  // quantizer is uniform with MSE (2/2^b)^2/12.
  for (int b : {1, 2, 3}) {
    const double step = 2.0 / (1 << b);
    EXPECT_NEAR(Codebook::sphere(b, 3).mse(), step * step / 12, 1e-9);
    EXPECT_NEAR(Codebook::sphere(b, 3).centroids().back(), 1.0 - step / 2, 1e-6);
  }
  // Large d: d * MSE -> the N(0,1) value (O(1/d) correction).
  for (int b = 1; b <= 4; ++b) {
    const double g = Codebook::gaussian(b).mse();
    EXPECT_NEAR(Codebook::sphere(b, 1024).mse() * 1024, g, 0.01 * g);
  }
}

TEST(Codebook, FastQuantizeEqualsReference) {
  Rng rng(7);
  for (int b = 1; b <= 8; ++b) {
    const Codebook cb = Codebook::gaussian(b);
    for (int i = 0; i < 4000; ++i) {
      const float x = float(rng.normal() * 1.5);
      ASSERT_EQ(cb.quantize(x), quantize_reference(cb, x)) << "bits " << b << " x " << x;
    }
    for (float t : cb.boundaries()) {  // exactly on a boundary: the lower cell
      EXPECT_EQ(cb.quantize(t), quantize_reference(cb, t));
    }
    // The cell is the nearest centroid.
    for (int i = 0; i < 1000; ++i) {
      const float x = float(rng.normal());
      const int k = cb.quantize(x);
      for (float c : cb.centroids()) EXPECT_LE(std::abs(x - cb.centroid(k)), std::abs(x - c) + 1e-6f);
    }
  }
}

TEST(Codebook, BadArguments) {
  EXPECT_THROW(Codebook::gaussian(0), Error);
  EXPECT_THROW(Codebook::gaussian(9), Error);
  EXPECT_THROW(Codebook::sphere(2, 2), Error);
}

}  // namespace
}  // namespace turbokv::codec
