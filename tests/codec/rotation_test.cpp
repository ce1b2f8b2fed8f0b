#include <gtest/gtest.h>

#include <cmath>
#include <utility>
#include <vector>

#include "codec/rotation.h"
#include "util/error.h"
#include "util/rng.h"

namespace turbokv::codec {
namespace {

std::vector<float> gaussian(Rng& rng, int d) {
  std::vector<float> v(static_cast<size_t>(d));
  for (float& x : v) x = float(rng.normal());
  return v;
}

// Columns R e_j are orthonormal (within 1e-5) and inverse(forward(x)) == x.
void check_orthogonal(const Rotation& r) {
  const int d = r.dim();
  std::vector<float> cols(size_t(d) * d), e(static_cast<size_t>(d));
  for (int j = 0; j < d; ++j) {
    std::fill(e.begin(), e.end(), 0.0f);
    e[j] = 1;
    r.forward(e.data(), &cols[size_t(j) * d]);
  }
  double worst = 0;
  for (int a = 0; a < d; ++a)
    for (int b = a; b < d; ++b) {
      double dot = 0;
      for (int i = 0; i < d; ++i) dot += double(cols[size_t(a) * d + i]) * cols[size_t(b) * d + i];
      worst = std::max(worst, std::abs(dot - (a == b ? 1.0 : 0.0)));
    }
  EXPECT_LT(worst, 1e-5) << rotation_name(r.kind()) << " d " << d;
  Rng rng(static_cast<uint64_t>(d));
  for (int t = 0; t < 4; ++t) {
    const std::vector<float> x = gaussian(rng, d);
    std::vector<float> y(static_cast<size_t>(d)), back(static_cast<size_t>(d));
    r.forward(x.data(), y.data());
    r.inverse(y.data(), back.data());
    for (int i = 0; i < d; ++i) ASSERT_NEAR(back[i], x[i], 1e-5) << rotation_name(r.kind()) << " d " << d;
    std::vector<float> inplace = x;  // aliasing is allowed
    r.forward(inplace.data(), inplace.data());
    for (int i = 0; i < d; ++i) ASSERT_EQ(inplace[i], y[i]);
    r.inverse(inplace.data(), inplace.data());
    for (int i = 0; i < d; ++i) ASSERT_NEAR(inplace[i], x[i], 1e-5);
  }
}

TEST(Rotation, EveryKindOrthogonalAndInvertible) {
  for (int d : {8, 16, 32, 64, 80, 96, 128, 256}) {
    const bool pow2 = (d & (d - 1)) == 0;
    if (pow2) check_orthogonal(Rotation::make(d, 1, 2, 3, RotationKind::Hadamard));
    check_orthogonal(Rotation::make(d, 1, 2, 3, RotationKind::BlockHadamard));
    check_orthogonal(Rotation::make(d, 1, 2, 3, RotationKind::Dense));
  }
  check_orthogonal(Rotation::make(5, 9, 0, 0, RotationKind::Dense));
  check_orthogonal(Rotation::make(6, 9, 0, 0, RotationKind::BlockHadamard));
}

// A split rotation moves the listed channels to the front and rotates the
// two parts apart: orthogonal, and coordinates [0, split) of R x depend only
// on the channels listed first.
TEST(Rotation, SplitIsOrthogonalAndKeepsThePartsApart) {
  for (const auto& [d, k] : {std::pair{128, 32}, std::pair{96, 16}, std::pair{80, 40}, std::pair{8, 3}}) {
    std::vector<uint32_t> order(static_cast<size_t>(d));
    for (int i = 0; i < d; ++i) order[size_t(i)] = uint32_t(i);
    // A random permutation: the first k channels spread over the vector.
    Rng prng(static_cast<uint64_t>(d));
    for (int i = d - 1; i > 0; --i) std::swap(order[size_t(i)], order[size_t(prng.next_u64() % uint64_t(i + 1))]);
    const Rotation r = Rotation::make_split(order, k, 1, 2, 3);
    EXPECT_EQ(r.kind(), RotationKind::Split);
    check_orthogonal(r);
    Rng rng(7);
    std::vector<float> x = gaussian(rng, d), y(static_cast<size_t>(d)), y2(static_cast<size_t>(d));
    r.forward(x.data(), y.data());
    for (int i = k; i < d; ++i) x[order[size_t(i)]] += 5.0f;  // move only the second part's channels
    r.forward(x.data(), y2.data());
    for (int i = 0; i < k; ++i) EXPECT_EQ(y[size_t(i)], y2[size_t(i)]) << "d " << d;
  }
}

TEST(Rotation, FactoryPicksByDimension) {
  EXPECT_EQ(Rotation::make(128, 0).kind(), RotationKind::Hadamard);
  EXPECT_EQ(Rotation::make(8, 0).kind(), RotationKind::Hadamard);
  EXPECT_EQ(Rotation::make(80, 0).kind(), RotationKind::BlockHadamard);
  EXPECT_EQ(Rotation::make(80, 0).block(), 16);
  EXPECT_EQ(Rotation::make(96, 0).block(), 32);
  EXPECT_EQ(Rotation::make(72, 0).kind(), RotationKind::Dense);
  EXPECT_EQ(Rotation::make(128, 0, 0, 0, RotationKind::Dense).kind(), RotationKind::Dense);
}

TEST(Rotation, DeterministicPerSeedLayerHead) {
  Rng rng(5);
  const std::vector<float> x = gaussian(rng, 96);
  for (RotationKind k : {RotationKind::BlockHadamard, RotationKind::Dense}) {
    std::vector<float> a(96), b(96), c(96), e(96);
    Rotation::make(96, 11, 1, 2, k).forward(x.data(), a.data());
    Rotation::make(96, 11, 1, 2, k).forward(x.data(), b.data());
    Rotation::make(96, 11, 1, 3, k).forward(x.data(), c.data());
    Rotation::make(96, 11, 2, 2, k).forward(x.data(), e.data());
    EXPECT_EQ(a, b);
    EXPECT_NE(a, c);
    EXPECT_NE(a, e);
  }
  // Golden: the first output of a fixed RHT is pinned, so a change in the
  // random stream (and so in every stored cache) is caught.
  std::vector<float> e0(16, 0.0f), y(16);
  e0[0] = 1;
  Rotation::make(16, 0, 0, 0).forward(e0.data(), y.data());
  for (float v : y) EXPECT_FLOAT_EQ(std::abs(v), 0.25f);
}

TEST(Rotation, SpreadsEnergyForBlockDims) {
  // A basis vector must not stay inside one block: after the second round
  // most of the five 16-blocks of d = 80 carry energy.
  const Rotation r = Rotation::make(80, 3);
  std::vector<float> e(80, 0.0f), y(80);
  e[0] = 1;
  r.forward(e.data(), y.data());
  int blocks = 0;
  for (int b = 0; b < 5; ++b) {
    double energy = 0;
    for (int i = 16 * b; i < 16 * b + 16; ++i) energy += double(y[i]) * y[i];
    blocks += energy > 1e-6;
  }
  EXPECT_GE(blocks, 4);
}

TEST(Rotation, BadSplitArguments) {
  std::vector<uint32_t> order{0, 1, 2, 3, 4, 5, 6, 7};
  EXPECT_NO_THROW(Rotation::make_split(order, 4, 1));
  EXPECT_THROW(Rotation::make_split(order, 0, 1), Error);
  EXPECT_THROW(Rotation::make_split(order, 8, 1), Error);
  order[3] = 2;  // not a permutation
  EXPECT_THROW(Rotation::make_split(order, 4, 1), Error);
  order[3] = 8;
  EXPECT_THROW(Rotation::make_split(order, 4, 1), Error);
  EXPECT_THROW(Rotation::make(8, 1, 0, 0, RotationKind::Split), Error);
}

TEST(Rotation, BadArguments) {
  EXPECT_THROW(Rotation::make(0, 1), Error);
  EXPECT_THROW(Rotation::make(2000, 1), Error);
  EXPECT_THROW(Rotation::make(80, 1, 0, 0, RotationKind::Hadamard), Error);
}

}  // namespace
}  // namespace turbokv::codec
