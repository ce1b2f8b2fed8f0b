// The byte layout of every turbokv vector codec, in one place.
//
// Each vector of dimension d is encoded into a fixed-size record; the size,
// the offset of every field and the bits per element follow from
// (codec, bits, group_size, d) alone and are constexpr, so a kernel can read
// a record in place without decoding it. docs/FORMAT.md describes the same
// layouts in prose; bump kFormatVersion whenever an existing layout changes
// (a new layout, such as split records, leaves records already written valid).
//
// Record layout (all multi-byte fields little-endian, no alignment assumed:
// read them with memcpy):
//   mse    [fp16 norm][packed b-bit indices, d of them]
//   group  [fp16 scale x d/G][packed b-bit indices, d of them]
//   prod   [fp16 norm][fp16 residual norm][packed (b-1)-bit indices][d sign bits]
//   affine [fp16 scale x d/G][fp16 bias x d/G][packed b-bit indices]
//   split  (mse, group with split = K > 0: outlier channels at one more bit)
//          [record of coordinates 0..K-1 at min(b+1, 8) bits][record of K..d-1 at b bits],
//          each part the codec's own layout for its dimension
// Packed indices are LSB-first (codec/bitpack.h): element i occupies stream
// bits [i*b, (i+1)*b), stream bit j is bit (j % 8) of byte j / 8; unused bits
// of the last byte are zero.
#pragma once

#include <cstddef>
#include <cstdint>

namespace turbokv::codec {

// Version of the record layouts below (stored by whoever persists records).
inline constexpr uint32_t kFormatVersion = 1;

// Largest vector dimension a codec accepts (bounds the per-call stack scratch).
inline constexpr int kMaxDim = 1024;

enum class CodecKind : uint8_t {
  Mse = 0,     // TurboQuant_mse (Zandieh et al. 2025, arXiv:2504.19874, Alg. 1)
  Group = 1,   // rotated, per-group matched-norm scale, N(0,1) Lloyd–Max codebook
  Prod = 2,    // TurboQuant_prod (ibid., Alg. 2): mse at b-1 bits + 1-bit QJL of the residual
  Affine = 3,  // MLX-style per-group scale and bias, no rotation
};

// Which Lloyd–Max codebook `mse` (and the mse stage of `prod`) uses for the
// rotated unit vector's coordinates.
enum class MseCodebook : uint8_t {
  Sphere = 0,    // exact coordinate density of a uniform unit vector in R^d (Beta-like)
  Gaussian = 1,  // N(0,1) codebook scaled by 1/sqrt(d) (the large-d limit)
};

// How the encoder of `mse` and `group` chooses the stored norm/scale s of a
// vector (mse) or group (group) once its indices are known, with x the input,
// c = centroid[idx] and x̂ = s c. Only the encoder differs: the layout and the
// decoder are the same for every rule, so records stay interchangeable.
enum class ScaleRule : uint8_t {
  Auto = 0,          // the codec's own: mse stores ||x|| (TurboQuant), group the matched norm
  Norm = 1,          // s = ||x|| (mse only: the unit-vector codebook times the norm)
  MatchedNorm = 2,   // s = ||x|| / ||c||: ||x̂|| = ||x||
  LeastSquares = 3,  // s = <x, c> / ||c||^2: least squared error for these indices
  Unbiased = 4,      // s = ||x||^2 / <x, c>: <x̂, x> = ||x||^2, no shrinkage along x
};

struct CodecSpec {
  CodecKind kind = CodecKind::Mse;
  int bits = 4;          // mse, group: 1..8; prod: 1..8 (b-1 mse bits + 1 QJL bit); affine: 4 or 8
  int group_size = 0;    // group, affine: 0 = default (group 16, affine 64); ignored otherwise
  MseCodebook codebook = MseCodebook::Sphere;
  ScaleRule scale_rule = ScaleRule::Auto;  // mse and group encoders (see ScaleRule)
  // mse and group encoders: try several grid placements (how far the
  // vector's spread reaches into the codebook) and keep the indices with the
  // least squared error, instead of the fixed one (unit norm for mse, amax on
  // the outermost centroid for group). Encoder-only, like scale_rule.
  bool scale_search = false;
  // mse and group: the first `split` coordinates are stored as a record of
  // their own at split_bits() (one more bit), the other dim - split as a
  // record at `bits`: outlier channels, which the caller moves to the front
  // and rotates apart from the rest (TurboQuant's fractional rates, e.g.
  // 32 of 128 channels at 4 bits and 96 at 3 is 3.25 bits plus scales).
  // 0: one record.
  int split = 0;

  constexpr int split_bits() const { return bits < 8 ? bits + 1 : 8; }
  constexpr int effective_group() const {
    if (kind == CodecKind::Group) return group_size == 0 ? 16 : group_size;
    if (kind == CodecKind::Affine) return group_size == 0 ? 64 : group_size;
    return 0;
  }
  constexpr bool operator==(const CodecSpec&) const = default;
};

constexpr const char* codec_name(CodecKind k) {
  switch (k) {
    case CodecKind::Mse: return "mse";
    case CodecKind::Group: return "group";
    case CodecKind::Prod: return "prod";
    case CodecKind::Affine: return "affine";
  }
  return "unknown";
}

// Bytes needed to pack n values of `bits` bits each.
constexpr size_t packed_bytes(size_t n, int bits) { return (n * size_t(bits) + 7) / 8; }

// Why a (spec, dim) pair is invalid, or nullptr if it is valid. The library
// turns a non-null answer into turbokv::Error (codec.h: validate_spec).
constexpr const char* spec_problem(const CodecSpec& s, int dim) {
  if (dim < 1) return "dimension must be at least 1";
  if (dim > kMaxDim) return "dimension exceeds kMaxDim (1024)";
  if (s.bits < 1 || s.bits > 8) return "bits must be in 1..8";
  if (s.kind != CodecKind::Mse && s.kind != CodecKind::Group &&
      (s.scale_rule != ScaleRule::Auto || s.scale_search)) {
    return "scale rules and scale search apply to mse and group only";
  }
  if (s.kind == CodecKind::Group && s.scale_rule == ScaleRule::Norm) return "the norm scale rule applies to mse only";
  if (s.split != 0) {
    if (s.kind != CodecKind::Mse && s.kind != CodecKind::Group) return "a split record (outlier channels) applies to mse and group only";
    if (s.split < 0 || s.split >= dim) return "the split (outlier channels) must be in 1..dim-1";
    if (s.kind == CodecKind::Group && (s.split % s.effective_group() != 0 || (dim - s.split) % s.effective_group() != 0)) {
      return "group size must divide both parts of a split record (outlier channels and the rest)";
    }
  }
  switch (s.kind) {
    case CodecKind::Mse:
    case CodecKind::Prod:
      return nullptr;
    case CodecKind::Group: {
      const int g = s.effective_group();
      if (g != 16 && g != 32 && g != 64 && g != 128) return "group size must be 16, 32, 64 or 128";
      if (dim % g != 0) return "group size must divide the dimension";
      return nullptr;
    }
    case CodecKind::Affine: {
      if (s.bits != 4 && s.bits != 8) return "affine bits must be 4 or 8";
      const int g = s.effective_group();
      if (g != 32 && g != 64) return "affine group size must be 32 or 64";
      if (dim % g != 0) return "group size must divide the dimension";
      return nullptr;
    }
  }
  return "unknown codec kind";
}

// Part 0 (the first `split` coordinates, at split_bits()) or part 1 (the
// rest, at bits) of a split spec: a spec of its own, without a split.
constexpr CodecSpec split_part(const CodecSpec& s, int part) {
  CodecSpec p = s;
  p.split = 0;
  if (part == 0) p.bits = s.split_bits();
  return p;
}

// Offsets and sizes of one record's fields, in bytes.
struct RecordLayout {
  uint32_t n_scales = 0;      // fp16 values at offset 0: mse 1 (norm), prod 2 (norm, residual
                              // norm), group d/G scales, affine d/G scales then d/G biases
  uint32_t scale_offset = 0;  // always 0: the fp16 header comes first
  uint32_t bias_offset = 0;   // affine: first bias (= 2 * d/G); others 0
  uint32_t index_offset = 0;  // first byte of the packed indices
  uint32_t index_bits = 0;    // bits per index (prod: bits - 1, may be 0)
  uint32_t index_bytes = 0;   // packed_bytes(d, index_bits)
  uint32_t sign_offset = 0;   // prod: first byte of the d QJL sign bits; others 0
  uint32_t sign_bytes = 0;    // prod: packed_bytes(d, 1); others 0
  uint32_t split_offset = 0;  // split records: first byte of part 1 (part 0 starts at 0;
                              // the fields above are then zero: read each part with its own layout)
  uint32_t record_bytes = 0;  // total
};

// The layout of a valid (spec, dim); an all-zero layout if invalid.
constexpr RecordLayout record_layout(const CodecSpec& s, int dim) {
  RecordLayout L;
  if (spec_problem(s, dim) != nullptr) return L;
  if (s.split != 0) {
    L.split_offset = record_layout(split_part(s, 0), s.split).record_bytes;
    L.record_bytes = L.split_offset + record_layout(split_part(s, 1), dim - s.split).record_bytes;
    return L;
  }
  const uint32_t d = uint32_t(dim);
  switch (s.kind) {
    case CodecKind::Mse:
      L.n_scales = 1;
      L.index_bits = uint32_t(s.bits);
      break;
    case CodecKind::Group:
      L.n_scales = d / uint32_t(s.effective_group());
      L.index_bits = uint32_t(s.bits);
      break;
    case CodecKind::Prod:
      L.n_scales = 2;
      L.index_bits = uint32_t(s.bits - 1);
      break;
    case CodecKind::Affine:
      L.n_scales = 2 * (d / uint32_t(s.effective_group()));
      L.bias_offset = 2 * (L.n_scales / 2);
      L.index_bits = uint32_t(s.bits);
      break;
  }
  L.index_offset = 2 * L.n_scales;
  L.index_bytes = uint32_t(packed_bytes(d, int(L.index_bits)));
  if (s.kind == CodecKind::Prod) {
    L.sign_offset = L.index_offset + L.index_bytes;
    L.sign_bytes = uint32_t(packed_bytes(d, 1));
  }
  L.record_bytes = L.index_offset + L.index_bytes + L.sign_bytes;
  return L;
}

constexpr size_t record_bytes(const CodecSpec& s, int dim) { return record_layout(s, dim).record_bytes; }

// Stored bits per vector element, every norm, scale, sign and padding bit included.
constexpr double bits_per_element(const CodecSpec& s, int dim) {
  return dim > 0 ? 8.0 * double(record_bytes(s, dim)) / double(dim) : 0.0;
}

// ---- worked sizes at d = 128 (docs/FORMAT.md repeats them) ---------------------
namespace format_checks {
constexpr CodecSpec mse(int b) { return {CodecKind::Mse, b, 0, MseCodebook::Sphere}; }
constexpr CodecSpec group(int b, int g = 0) { return {CodecKind::Group, b, g, MseCodebook::Sphere}; }
constexpr CodecSpec prod(int b) { return {CodecKind::Prod, b, 0, MseCodebook::Sphere}; }
constexpr CodecSpec affine(int b, int g = 0) { return {CodecKind::Affine, b, g, MseCodebook::Sphere}; }
static_assert(record_bytes(mse(2), 128) == 2 + 32);
static_assert(record_bytes(mse(3), 128) == 2 + 48);
static_assert(record_bytes(mse(4), 128) == 2 + 64);
static_assert(record_bytes(group(2), 128) == 16 + 32);
static_assert(record_bytes(group(3), 128) == 16 + 48);
static_assert(record_bytes(group(4), 128) == 16 + 64);
static_assert(record_bytes(prod(2), 128) == 4 + 16 + 16);
static_assert(record_bytes(prod(3), 128) == 4 + 32 + 16);
static_assert(record_bytes(prod(4), 128) == 4 + 48 + 16);
static_assert(record_bytes(prod(1), 128) == 4 + 0 + 16);
static_assert(record_bytes(affine(4), 128) == 8 + 64);
static_assert(record_bytes(affine(4, 32), 128) == 16 + 64);
static_assert(record_bytes(affine(8), 128) == 8 + 128);
static_assert(record_layout(affine(4), 128).bias_offset == 4);
static_assert(record_layout(prod(3), 128).sign_offset == 36);
static_assert(record_bytes(mse(3), 5) == 2 + 2);  // 15 bits -> 2 bytes
static_assert(bits_per_element(mse(4), 128) == 4.125);
static_assert(bits_per_element(group(4), 128) == 5.0);
static_assert(bits_per_element(prod(3), 128) == 3.25);
static_assert(bits_per_element(affine(4), 128) == 4.5);
static_assert(record_bytes(affine(3), 128) == 0);  // invalid spec -> empty layout
static_assert(record_bytes(group(4), 80) == 10 + 40);
constexpr CodecSpec split(CodecSpec s, int k) { s.split = k; return s; }
static_assert(record_bytes(split(mse(3), 32), 128) == (2 + 16) + (2 + 36));  // 3.5 bits
static_assert(record_layout(split(mse(3), 32), 128).split_offset == 18);
static_assert(record_bytes(split(group(2, 32), 32), 128) == (2 + 12) + (6 + 24));
static_assert(record_bytes(split(group(2, 64), 32), 128) == 0);  // 64 does not divide 32
static_assert(record_bytes(split(prod(3), 32), 128) == 0);
}  // namespace format_checks

}  // namespace turbokv::codec
