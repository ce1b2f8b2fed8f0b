// Seeded random rotations of R^d, identical on every machine for a given
// (seed, layer, head): every random draw comes from util/rng.h.
//
// Kinds (all orthogonal; forward then inverse is the identity up to float
// rounding):
//   Hadamard       d a power of two. y = H D x / sqrt(d): random signs D,
//                  then the normalized fast Walsh–Hadamard transform,
//                  O(d log d). (Randomized Hadamard transform, Ailon & Chazelle
//                  2009; as used by QuIP#, QuaRot and TurboQuant.)
//   BlockHadamard  any d; block size B = largest power of two dividing d
//                  (80 = 5 x 16, 96 = 3 x 32). Two rounds of
//                  [random signs, seeded permutation, WHT on each B-block]:
//                  y = W P2 D2 W P1 D1 x, W = blockdiag(H_B / sqrt(B)).
//                  One round only mixes inside blocks; the permutation before
//                  the second round sends every block's outputs to random
//                  blocks, so each output coordinate depends on up to B^2
//                  inputs (all of them for B^2 >= d), at O(d log B).
//   Dense          any d. A Haar-random orthogonal matrix: the Q factor of a
//                  Gaussian matrix by Gram–Schmidt, whose R has a positive
//                  diagonal -- exactly the sign correction that makes Q
//                  Haar-distributed (Mezzadri 2007). O(d^2) per vector.
//   Split          (make_split) outlier channels rotated apart from the rest:
//                  y = blockdiag(R_0, R_1) P x, P moving the channels listed
//                  first in `order` to the front, R_0 and R_1 rotations of
//                  the two parts (split and d - split coordinates).
// make_rotation picks Hadamard for powers of two, BlockHadamard for multiples
// of 16, Dense otherwise, unless a kind is forced.
#pragma once

#include <cstdint>
#include <vector>

namespace turbokv::codec {

enum class RotationKind : uint8_t { Auto = 0, Hadamard = 1, BlockHadamard = 2, Dense = 3, Split = 4 };

const char* rotation_name(RotationKind k);

class Rotation {
 public:
  // Throws Error for dim < 1 or > kMaxDim, or Hadamard with a dim that is not a
  // power of two.
  static Rotation make(int dim, uint64_t seed, int layer = 0, int head = 0,
                       RotationKind kind = RotationKind::Auto);
  // Channel order[i] of x goes to coordinate i, then the first `split`
  // coordinates and the other order.size() - split are rotated apart, each
  // by a rotation of `kind` (Auto: per part). Throws Error unless order is a
  // permutation of 0..d-1 and 0 < split < d.
  static Rotation make_split(const std::vector<uint32_t>& order, int split, uint64_t seed, int layer = 0,
                             int head = 0, RotationKind kind = RotationKind::Auto);
  // The kind Auto resolves to for this dimension.
  static RotationKind auto_kind(int dim);

  int dim() const { return dim_; }
  RotationKind kind() const { return kind_; }
  int block() const { return block_; }  // WHT block size (Hadamard: dim; Dense: 0)

  // y = R x.   x, y: (dim); x == y allowed. No allocation.
  void forward(const float* x, float* y) const;
  // x = R^T y.   y, x: (dim); y == x allowed.
  void inverse(const float* y, float* x) const;

 private:
  Rotation() = default;

  int dim_ = 0;
  RotationKind kind_ = RotationKind::Auto;
  int block_ = 0;
  std::vector<float> signs1_, signs2_;   // (dim) ±1
  std::vector<uint32_t> perm1_, perm2_;  // (dim) BlockHadamard: y[i] = x[perm[i]]
  std::vector<float> matrix_;            // (dim, dim) Dense, row-major Q
  std::vector<float> matrix_t_;          // (dim, dim) Dense, row-major Q^T
  int split_ = 0;                        // Split: coordinates of part 0
  std::vector<uint32_t> order_;          // (dim) Split: y-side coordinate i is channel order_[i]
  std::vector<Rotation> parts_;          // Split: the two parts' rotations
};

// Normalized in-place Walsh–Hadamard transform of each n-block of x (n a power
// of two): x <- blockdiag(H_n) x / sqrt(n).   x: (len), len % n == 0.
void walsh_hadamard_blocks(float* x, int len, int n);

}  // namespace turbokv::codec
