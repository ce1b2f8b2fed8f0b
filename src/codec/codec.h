// Vector codecs for KV caches: one vector of dimension d <-> one fixed-size
// byte record (layouts in codec/format.h, docs/FORMAT.md). A codec knows
// nothing about sequences, layers or heads.
//
//   mse    TurboQuant_mse (Zandieh et al. 2025, arXiv:2504.19874, Alg. 1):
//          store ||x|| (fp16), quantize each coordinate of the rotated unit
//          vector u = R x / ||x|| with a b-bit Lloyd–Max codebook (the sphere
//          codebook for dimension d, or N(0,1)/sqrt(d)); x̂ = ||x|| R^T c[idx].
//          Biased for inner products: E<q, x̂> ≈ (1 - D_mse) <q, x>.
//   group  rotate; per group of G coordinates, map the group's amax onto the
//          outermost N(0,1) centroid, quantize, and store the matched-norm
//          scale s = ||x_g|| / ||c[idx_g]|| (fp16), so ||x̂_g|| = ||x_g||.
//   prod   TurboQuant_prod (ibid., Alg. 2): mse at b-1 bits, then the residual
//          r = u - c[idx] as ||r|| (fp16) and sign(S r), S a seeded d x d
//          Gaussian matrix (QJL, Zandieh et al. 2024). Unbiased:
//          <q, x> ≈ ||x|| (<q, c[idx]> + ||r|| sqrt(pi/2)/d <S q, sign(S r)>).
//   affine MLX-style, no rotation: per group of G (32/64), scale =
//          (max - min)/(2^b - 1), bias = min, both fp16;
//          q = round((x - bias)/scale) using the fp16-rounded scale and bias,
//          so |x - x̂| <= scale/2 + fp16 rounding of bias and scale.
//   split  (CodecSpec::split = K) mse or group as two independent records:
//          coordinates [0, K) at one more bit, [K, d) at the spec's bits.
//          The caller puts the outlier channels first and rotates each part
//          on its own (Rotation::make_split).
//
// The *_rotated functions work on vectors already rotated by the caller (the
// cache rotates keys, values and queries once; STYLE.md rule 4). encode/
// decode/dot take the Rotation and apply it. For affine there is no rotation:
// the rotated and plain functions are the same and `rot` is ignored.
//
// A Codec is immutable after construction; every method is const, allocation
// free and safe to call from many threads at once.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <vector>

#include "codec/codebook.h"
#include "codec/format.h"
#include "codec/rotation.h"

namespace turbokv::codec {

// Throws turbokv::Error naming the bad field if (spec, dim) is invalid.
void validate_spec(const CodecSpec& spec, int dim);

// sqrt(pi/2): the QJL dequantizer's scale (prod records).
inline constexpr float kQjlScale = 1.2533141373155003f;

class Codec {
 public:
  // Builds the codebook (and, for prod, the seeded QJL matrix S) once.
  // `seed` only matters for prod (S = Gaussian from mix_seed(seed, "qjl")).
  Codec(const CodecSpec& spec, int dim, uint64_t seed = 0);

  const CodecSpec& spec() const { return spec_; }
  int dim() const { return dim_; }
  const RecordLayout& layout() const { return layout_; }
  size_t record_bytes() const { return layout_.record_bytes; }
  double bits_per_element() const { return codec::bits_per_element(spec_, dim_); }
  bool uses_rotation() const { return spec_.kind != CodecKind::Affine; }
  // Levels the indices refer to, in the coordinates of the rotated unit vector
  // (mse, prod: sphere or N(0,1)/sqrt(d); group: N(0,1)); null for affine and
  // for prod at 1 bit.
  // Split codecs: null (see parts()).
  const Codebook* codebook() const { return levels_ ? &*levels_ : nullptr; }
  // Split codecs: the codecs of the two parts (coordinates [0, split) and
  // [split, dim), records at offsets 0 and layout().split_offset); empty otherwise.
  std::span<const Codec> parts() const { return parts_; }
  // prod: S, (dim, dim) row-major; empty otherwise. A prod record decodes to
  // x̂ = n (c[idx] + γ kQjlScale / dim S^T z), z = ±1 from its sign bits.
  std::span<const float> qjl_matrix() const { return qjl_; }

  // ---- already-rotated vectors (raw pointers: sizes are dim / record_bytes) ----
  // Throws Error if x_rot holds NaN/Inf or its norm/scales overflow fp16.
  void encode_rotated(const float* x_rot, uint8_t* record) const;   // x_rot: (dim)
  void decode_rotated(const uint8_t* record, float* x_rot) const;   // x_rot: (dim)
  // Reference inner product <q_rot, x̂_rot> (prod: the unbiased QJL estimate;
  // it computes S q, O(d^2): use sketch_query + the overload below per query).
  float dot_rotated(const float* q_rot, const uint8_t* record) const;
  // prod: q_sketch = S q_rot, (dim). Computed once per query.
  void sketch_query(const float* q_rot, float* q_sketch) const;
  // prod with a precomputed sketch (other codecs ignore q_sketch).
  float dot_rotated(const float* q_rot, const float* q_sketch, const uint8_t* record) const;

  // ---- checked overloads: sizes must match exactly, else Error -----------------
  void encode_rotated(std::span<const float> x_rot, std::span<uint8_t> record) const;
  void decode_rotated(std::span<const uint8_t> record, std::span<float> x_rot) const;
  float dot_rotated(std::span<const float> q_rot, std::span<const uint8_t> record) const;

  // ---- convenience: rotate inside (rot.dim() must equal dim) --------------------
  void encode(const Rotation& rot, const float* x, uint8_t* record) const;
  void decode(const Rotation& rot, const uint8_t* record, float* x) const;
  float dot(const Rotation& rot, const float* q, const uint8_t* record) const;

 private:
  void check_finite(float sum_squares) const;
  template <int B> void encode_mse(const float* x, uint8_t* rec) const;
  template <int B> void encode_group(const float* x, uint8_t* rec) const;
  template <int B> void encode_affine(const float* x, uint8_t* rec) const;
  void encode_prod(const float* x, uint8_t* rec) const;
  void multiply_s(const float* v, float* y) const;  // y = S v, (dim)

  CodecSpec spec_;
  int dim_ = 0;
  int group_ = 0;
  RecordLayout layout_;
  std::optional<Codebook> levels_;
  float outer_centroid_ = 0;  // group: largest centroid
  std::vector<float> qjl_;    // prod: S, (dim, dim) row-major
  std::vector<float> qjl_t_;  // prod: S^T, (dim, dim) row-major
  std::vector<Codec> parts_;  // split: the two parts
};

// fp16 field i of a record's header (norms, scales, biases).
float record_scale(const uint8_t* record, int i);

}  // namespace turbokv::codec
