// Seeded random numbers that are identical on every machine and compiler.
//
// std::normal_distribution is implementation-defined, so rotations and test
// vectors drawn from it would differ between standard libraries. These
// generators are fully specified: SplitMix64 for streams, Box–Muller for
// Gaussians.
#pragma once

#include <cmath>
#include <cstdint>

namespace turbokv {

// Mixes any number of 64-bit words into one seed (for seed, layer, head).
constexpr uint64_t mix_seed(uint64_t a, uint64_t b) {
  uint64_t z = a ^ (b + 0x9e3779b97f4a7c15ull + (a << 6) + (a >> 2));
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

class Rng {
 public:
  explicit Rng(uint64_t seed) : state_(seed) {}

  uint64_t next_u64() {  // SplitMix64
    uint64_t z = (state_ += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  // Uniform in [0, 1) with 53 random bits.
  double uniform() { return double(next_u64() >> 11) * 0x1.0p-53; }
  // Uniform in (0, 1]: safe for log().
  double uniform_open0() { return double((next_u64() >> 11) + 1) * 0x1.0p-53; }
  // Standard normal (Box–Muller, both outputs used).
  double normal() {
    if (has_spare_) { has_spare_ = false; return spare_; }
    const double u1 = uniform_open0(), u2 = uniform();
    const double r = std::sqrt(-2.0 * std::log(u1));
    const double t = 6.283185307179586476925 * u2;
    spare_ = r * std::sin(t);
    has_spare_ = true;
    return r * std::cos(t);
  }
  // +1 or -1 with equal probability.
  float sign() { return (next_u64() >> 63) ? -1.0f : 1.0f; }

 private:
  uint64_t state_;
  double spare_ = 0.0;
  bool has_spare_ = false;
};

}  // namespace turbokv
