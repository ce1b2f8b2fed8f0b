// Lloyd–Max scalar codebooks, computed by turbokv (no pasted tables).
//
// A b-bit codebook has 2^b sorted centroids c_0 < ... < c_{n-1}, symmetric
// about zero (c_i = -c_{n-1-i}), and n-1 boundaries t_i = (c_i + c_{i+1}) / 2.
// Lloyd's algorithm (Lloyd 1982; Max 1960) alternates the two optimality
// conditions -- boundaries at midpoints, centroids at the conditional means
// E[X | t_{i-1} < X <= t_i] -- on the exact density, with the integrals done
// numerically (composite Simpson on a 2^14-cell grid, codebook.cpp); after a
// few plain iterations, Newton steps on the same fixed point (a tridiagonal
// system) finish the job in milliseconds even at 8 bits. Two densities:
//   gaussian(b):     N(0,1); MSE per coordinate 0.3634, 0.1175, 0.03454,
//                    0.009497 for b = 1..4.
//   sphere(b, d):    one coordinate of a uniformly random unit vector in R^d,
//                    density ∝ (1 - x^2)^((d-3)/2) on [-1, 1], d >= 3
//                    (TurboQuant, Zandieh et al. 2025, arXiv:2504.19874, Lemma 1).
// Building a codebook costs milliseconds; the owner (a Codec, a cache) builds
// it once and keeps it; it is immutable afterwards.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

namespace turbokv::codec {

class Codebook {
 public:
  static Codebook gaussian(int bits);
  static Codebook sphere(int bits, int dim);
  // The same codebook with every centroid and boundary multiplied by s > 0
  // (the MSE scales by s^2).
  Codebook scaled(double s) const;

  int bits() const { return bits_; }
  int size() const { return int(centroids_.size()); }
  std::span<const float> centroids() const { return centroids_; }    // (2^b), sorted
  std::span<const float> boundaries() const { return {boundaries_.data(), centroids_.size() - 1}; }  // (2^b - 1)
  // Expected squared error per coordinate under the design density.
  double mse() const { return mse_; }
  float centroid(uint32_t i) const { return centroids_[i]; }

  // Index of the cell holding x: the number of boundaries strictly below x.
  // Branchless binary search, b comparisons. x must not be NaN.
  uint8_t quantize(float x) const {
    const float* t = boundaries_.data();
    uint32_t idx = 0;
    for (uint32_t step = uint32_t(centroids_.size()) >> 1; step > 0; step >>= 1)
      idx += (t[idx + step - 1] < x) ? step : 0u;
    return uint8_t(idx);
  }

 private:
  Codebook(int bits, std::vector<double> centroids, double mse);

  int bits_ = 0;
  std::vector<float> centroids_;   // (2^b)
  std::vector<float> boundaries_;  // (2^b): 2^b - 1 boundaries, then +inf padding
  double mse_ = 0.0;
};

// Scalar reference for Codebook::quantize: a linear count of boundaries < x.
uint8_t quantize_reference(const Codebook& cb, float x);

}  // namespace turbokv::codec
