// Codec statistics against theory (STYLE.md test tier 1): TurboQuant's
// distortion at d = 128, unbiasedness of prod, the shrinkage of mse.
// Zandieh et al. 2025 (arXiv:2504.19874), Thm. 1: D_mse ≈ 0.36, 0.117, 0.03,
// 0.009 for b = 1..4; Thm. 2: TurboQuant_prod is unbiased for inner products.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "codec/codec.h"
#include "util/rng.h"

namespace turbokv::codec {
namespace {

// A uniformly random unit vector: a normalized Gaussian.
void random_unit(Rng& rng, float* x, int d) {
  double n = 0;
  for (int i = 0; i < d; ++i) { x[i] = float(rng.normal()); n += double(x[i]) * x[i]; }
  const float inv = float(1.0 / std::sqrt(n));
  for (int i = 0; i < d; ++i) x[i] *= inv;
}

// Mean of ||x - x̂||^2 over n random unit vectors, through the RHT.
struct Distortion { double mean, se; };
Distortion distortion(const Codec& codec, const Rotation& rot, int n, uint64_t seed) {
  const int d = codec.dim();
  Rng rng(seed);
  std::vector<float> x(static_cast<size_t>(d)), xh(static_cast<size_t>(d));
  std::vector<uint8_t> rec(codec.record_bytes());
  double sum = 0, sum2 = 0;
  for (int t = 0; t < n; ++t) {
    random_unit(rng, x.data(), d);
    codec.encode(rot, x.data(), rec.data());
    codec.decode(rot, rec.data(), xh.data());
    double e = 0;
    for (int i = 0; i < d; ++i) e += double(x[i] - xh[i]) * (x[i] - xh[i]);
    sum += e;
    sum2 += e * e;
  }
  const double mean = sum / n;
  return {mean, std::sqrt((sum2 / n - mean * mean) / n)};
}

TEST(CodecStats, MseDistortionAtD128MatchesTheory) {
  const double theory[4] = {0.3634, 0.1175, 0.03454, 0.009497};  // N(0,1) Lloyd–Max
  const int d = 128, n = 4000;
  const Rotation rot = Rotation::make(d, 17);
  for (int b = 1; b <= 4; ++b) {
    for (MseCodebook cb : {MseCodebook::Sphere, MseCodebook::Gaussian}) {
      const Codec codec({CodecKind::Mse, b, 0, cb}, d, 0);
      const Distortion D = distortion(codec, rot, n, 100 + b);
      SCOPED_TRACE(testing::Message() << "bits " << b << " codebook " << int(cb) << " D " << D.mean
                                      << " se " << D.se);
      // The N(0,1)/sqrt(d) codebook: within 2% of the paper's values. The
      // exact sphere codebook is better than that limit at finite d (the
      // coordinate's tails are lighter than Gaussian): within 2% of its own
      // exact expectation d * E[(u - c(u))^2], at most the Gaussian value,
      // and within 3% of it at d = 128.
      if (cb == MseCodebook::Gaussian) {
        EXPECT_NEAR(D.mean, theory[b - 1], 0.02 * theory[b - 1]);
      } else {
        const double exact = d * codec.codebook()->mse();
        EXPECT_NEAR(D.mean, exact, 0.02 * exact);
        EXPECT_NEAR(D.mean, exact, 4 * D.se + 1e-6);  // fp16 norm rounding adds < 1e-7
        EXPECT_LT(exact, theory[b - 1]);
        EXPECT_NEAR(D.mean, theory[b - 1], 0.03 * theory[b - 1]);
      }
      // The sample is precise enough (standard error < 0.5%) for the 2% to mean something.
      EXPECT_LT(D.se, 0.005 * theory[b - 1]);
    }
  }
}

// Regression through the origin of est on true: slope - 1 and its standard error.
struct Bias { double bias, se; };

// n_codecs independent QJL matrices (fresh seeds) x trials each: the
// unbiasedness of TurboQuant_prod is over the randomness of S, so averaging
// over many S keeps a single matrix's conditional bias out of the test.
Bias inner_product_bias(CodecKind kind, int bits, int d, int n_codecs, int trials) {
  Rng rng(2024 + uint64_t(bits));
  std::vector<float> x(static_cast<size_t>(d)), q(static_cast<size_t>(d)), sketch(static_cast<size_t>(d));
  double szt = 0, sz2 = 0, stt = 0;
  long n = 0;
  for (int c = 0; c < n_codecs; ++c) {
    const Codec codec({kind, bits, 0, MseCodebook::Sphere}, d, uint64_t(c) + 1);
    std::vector<uint8_t> rec(codec.record_bytes());
    for (int t = 0; t < trials; ++t) {
      random_unit(rng, x.data(), d);  // already-rotated unit vector: uniform on the sphere
      for (float& v : q) v = float(rng.normal());
      double truth = 0;
      for (int i = 0; i < d; ++i) truth += double(q[i]) * x[i];
      codec.encode_rotated(x.data(), rec.data());
      double est;
      if (kind == CodecKind::Prod) {
        codec.sketch_query(q.data(), sketch.data());
        est = codec.dot_rotated(q.data(), sketch.data(), rec.data());
      } else {
        est = codec.dot_rotated(q.data(), rec.data());
      }
      const double z = (est - truth) * truth;
      szt += z;
      sz2 += z * z;
      stt += truth * truth;
      ++n;
    }
  }
  const double mean_z = szt / n, mean_tt = stt / n;
  const double sd_z = std::sqrt(sz2 / n - mean_z * mean_z);
  return {mean_z / mean_tt, sd_z / std::sqrt(double(n)) / mean_tt};
}

TEST(CodecStats, ProdIsUnbiasedMseShrinks) {
  const int d = 64;
  for (int b : {2, 3}) {
    const Bias prod = inner_product_bias(CodecKind::Prod, b, d, 50, 2000);  // 1e5 trials
    EXPECT_LT(std::abs(prod.bias), 3 * prod.se) << "prod bits " << b << " bias " << prod.bias << " se " << prod.se;
    EXPECT_LT(prod.se, 0.01);
    // mse at the same total bits shrinks inner products by about (1 - D_mse).
    const Bias mse = inner_product_bias(CodecKind::Mse, b, d, 1, 20000);
    EXPECT_LT(mse.bias, -10 * mse.se) << "mse bits " << b << " bias " << mse.bias << " se " << mse.se;
    const double d_mse = d * Codec({CodecKind::Mse, b, 0, MseCodebook::Sphere}, d).codebook()->mse();
    EXPECT_NEAR(mse.bias, -d_mse, 0.25 * d_mse + 3 * mse.se) << "mse bits " << b;
  }
}

}  // namespace
}  // namespace turbokv::codec
