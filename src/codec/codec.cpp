#include "codec/codec.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <iterator>
#include <string>

#include "codec/bitpack.h"
#include "codec/index_search.h"
#include "util/error.h"
#include "util/fp16.h"
#include "util/rng.h"

namespace turbokv::codec {
namespace {

// Calls f.template operator()<B>() with B == bits (1..8): the one place where
// the runtime bit width becomes a compile-time constant (STYLE rule 5).
template <typename F>
void with_bits(int bits, F&& f) {
  switch (bits) {
    case 1: f.template operator()<1>(); return;
    case 2: f.template operator()<2>(); return;
    case 3: f.template operator()<3>(); return;
    case 4: f.template operator()<4>(); return;
    case 5: f.template operator()<5>(); return;
    case 6: f.template operator()<6>(); return;
    case 7: f.template operator()<7>(); return;
    case 8: f.template operator()<8>(); return;
    default: TKV_ASSERT(false, "bits must be 1..8");
  }
}

// Quantizes n values x[i] * scale against sorted boundaries t: idx[i] = the
// number of boundaries strictly below x[i] * scale -- the same answer as
// quantize_reference, bit for bit. For B <= 5 (at most 31 boundaries) the
// count is done boundary by boundary across a SIMD vector of elements
// (index_search.h); wider codebooks use a branchless binary search (B
// comparisons per element).
template <int B>
inline void quantize_n(const float* t, const float* x, float scale, int n, uint8_t* idx) {
  if constexpr (B <= 5) {
    detail::count_below(t, (1 << B) - 1, x, scale, n, idx);
  } else {
    for (int i = 0; i < n; ++i) {
      const float u = x[i] * scale;
      uint32_t k = 0;
      for (uint32_t step = 1u << (B - 1); step > 0; step >>= 1)
        k += step & (0u - uint32_t(t[k + step - 1] < u));
      idx[i] = uint8_t(k);
    }
  }
}

inline void store_fp16(uint8_t* rec, int i, fp16_t h) { std::memcpy(rec + 2 * i, &h, 2); }

// Grid placements tried by scale search, as factors on the default
// multiplier (a factor above 1 spreads the values further out over the
// codebook, clipping the extremes onto the outermost level).
constexpr float kSearchFactors[] = {0.8f, 0.87f, 0.93f, 1.0f, 1.07f, 1.15f, 1.25f, 1.35f, 1.45f, 1.6f};
constexpr int kDefaultFactor = 3;  // the default placement, tried first
static_assert(kSearchFactors[kDefaultFactor] == 1.0f);

// Indices of x[0, n) * multiplier, optionally the best of the search factors
// by least-squares residual; returns <x, c> and ||c||^2 of the chosen indices.
// The search quantizes at every factor first and then accumulates the
// factors' sums in one pass: each sum still adds its terms in element order
// (the records do not change), but the factors' chains run side by side
// instead of one latency-bound chain after another.
template <int B>
void quantize_best(const float* t, const float* c, const float* x, float multiplier, int n, bool search,
                   uint8_t* idx, float& xc, float& cc) {
  if (!search) {
    quantize_n<B>(t, x, multiplier, n, idx);
    xc = 0;
    cc = 0;
    for (int i = 0; i < n; ++i) {
      xc += x[i] * c[idx[i]];
      cc += c[idx[i]] * c[idx[i]];
    }
    return;
  }
  constexpr int kF = int(std::size(kSearchFactors));
  uint8_t trial[kF][kMaxDim];  // (factor, element) indices
  for (int f = 0; f < kF; ++f) {
    quantize_n<B>(t, x, f == kDefaultFactor ? multiplier : multiplier * kSearchFactors[f], n, trial[f]);
  }
  float dot[kF] = {}, norm2[kF] = {};
  float xx = 0;
  for (int i = 0; i < n; ++i) {
    xx += x[i] * x[i];
    for (int f = 0; f < kF; ++f) {
      const float cf = c[trial[f][i]];
      dot[f] += x[i] * cf;
      norm2[f] += cf * cf;
    }
  }
  // The default placement first, then the others in order; the first of
  // equal residuals wins. Residual of the least-squares fit:
  // ||x||^2 - <x, c>^2 / ||c||^2.
  auto residual = [&](int f) { return norm2[f] > 0 ? xx - dot[f] * dot[f] / norm2[f] : xx; };
  int best = kDefaultFactor;
  float best_r = residual(best);
  for (int f = 0; f < kF; ++f) {
    if (f == kDefaultFactor) continue;
    const float r = residual(f);
    if (r < best_r) {
      best_r = r;
      best = f;
    }
  }
  xc = dot[best];
  cc = norm2[best];
  std::memcpy(idx, trial[best], size_t(n));
}

// The stored scale for indices with <x, c> = xc, ||c||^2 = cc, ||x||^2 = xx.
float scale_for(ScaleRule rule, float xx, float xc, float cc) {
  if (xx <= 0 || cc <= 0) return 0.0f;
  switch (rule) {
    case ScaleRule::Norm: return std::sqrt(xx);
    case ScaleRule::Auto:
    case ScaleRule::MatchedNorm: return std::sqrt(xx) / std::sqrt(cc);
    case ScaleRule::LeastSquares: return xc > 0 ? xc / cc : 0.0f;
    case ScaleRule::Unbiased: return xc > 0 ? xx / xc : 0.0f;
  }
  return 0.0f;
}

// fp16 of a non-negative finite value; Error if it overflows fp16.
fp16_t to_fp16_checked(float v, const char* what) {
  const fp16_t h = f32_to_fp16(v);
  if ((h & 0x7c00u) == 0x7c00u)
    throw Error(std::string("codec: ") + what + " " + std::to_string(v) +
                " does not fit in fp16 (max 65504)");
  return h;
}

}  // namespace

float record_scale(const uint8_t* record, int i) {
  fp16_t h;
  std::memcpy(&h, record + 2 * i, 2);
  return fp16_to_f32(h);
}

void validate_spec(const CodecSpec& spec, int dim) {
  if (const char* why = spec_problem(spec, dim)) {
    throw Error(std::string("invalid codec spec (codec ") + codec_name(spec.kind) +
                ", bits " + std::to_string(spec.bits) + ", group " +
                std::to_string(spec.effective_group()) + ", dim " + std::to_string(dim) + "): " + why);
  }
}

Codec::Codec(const CodecSpec& spec, int dim, uint64_t seed) : spec_(spec), dim_(dim) {
  validate_spec(spec, dim);
  group_ = spec.effective_group();
  layout_ = record_layout(spec, dim);
  if (spec.split != 0) {
    parts_.reserve(2);
    parts_.emplace_back(split_part(spec, 0), spec.split, seed);
    parts_.emplace_back(split_part(spec, 1), dim - spec.split, seed);
    return;
  }
  const double inv_sqrt_d = 1.0 / std::sqrt(double(dim));
  auto unit_codebook = [&](int bits) {
    // The sphere density needs d >= 3; below that use the Gaussian limit.
    if (spec.codebook == MseCodebook::Sphere && dim >= 3) return Codebook::sphere(bits, dim);
    return Codebook::gaussian(bits).scaled(inv_sqrt_d);
  };
  switch (spec.kind) {
    case CodecKind::Mse:
      levels_ = unit_codebook(spec.bits);
      break;
    case CodecKind::Prod: {
      if (spec.bits > 1) levels_ = unit_codebook(spec.bits - 1);
      const size_t d = size_t(dim);
      qjl_.resize(d * d);
      Rng rng(mix_seed(seed, 0x716a6cull));  // "qjl"
      for (float& v : qjl_) v = float(rng.normal());
      qjl_t_.resize(d * d);
      for (size_t j = 0; j < d; ++j)
        for (size_t i = 0; i < d; ++i) qjl_t_[i * d + j] = qjl_[j * d + i];
      break;
    }
    case CodecKind::Group:
      levels_ = Codebook::gaussian(spec.bits);
      outer_centroid_ = levels_->centroids().back();
      break;
    case CodecKind::Affine:
      break;
  }
}

void Codec::check_finite(float sum_squares) const {
  if (!std::isfinite(sum_squares))
    throw Error("codec: input vector (dim " + std::to_string(dim_) +
                ") contains NaN or Inf, or its squared norm overflows float");
}

template <int B>
void Codec::encode_mse(const float* x, uint8_t* rec) const {
  const int d = dim_;
  float ss = 0;
  for (int i = 0; i < d; ++i) ss += x[i] * x[i];
  check_finite(ss);
  const float norm = std::sqrt(ss);
  const float inv = norm > 0 ? 1.0f / norm : 0.0f;
  uint8_t idx[kMaxDim];
  if (spec_.scale_rule == ScaleRule::Auto && !spec_.scale_search) {
    // TurboQuant_mse exactly: the norm, then the unit vector's indices.
    store_fp16(rec, 0, to_fp16_checked(norm, "vector norm"));
    quantize_n<B>(levels_->boundaries().data(), x, inv, d, idx);
  } else {
    float xc, cc;
    quantize_best<B>(levels_->boundaries().data(), levels_->centroids().data(), x, inv, d, spec_.scale_search,
                     idx, xc, cc);
    const ScaleRule rule = spec_.scale_rule == ScaleRule::Auto ? ScaleRule::Norm : spec_.scale_rule;
    store_fp16(rec, 0, to_fp16_checked(scale_for(rule, ss, xc, cc), "vector norm"));
  }
  pack_bits(idx, size_t(d), B, rec + layout_.index_offset);
}

template <int B>
void Codec::encode_group(const float* x, uint8_t* rec) const {
  const int d = dim_, G = group_;
  const float* t = levels_->boundaries().data();
  const float* c = levels_->centroids().data();
  uint8_t idx[kMaxDim];
  float total = 0;
  for (int i = 0; i < d; ++i) total += x[i] * x[i];
  check_finite(total);
  for (int g = 0; g < d / G; ++g) {
    const float* xg = x + g * G;
    float ss = 0, amax = 0;
    for (int i = 0; i < G; ++i) { ss += xg[i] * xg[i]; amax = std::max(amax, std::abs(xg[i])); }
    // amax -> outermost centroid: the group's extreme value is represented
    // by the codebook's extreme level and no value falls outside the grid
    // (scale search may place it further out).
    const float m = amax > 0 ? outer_centroid_ / amax : 0.0f;
    float xc, cc;
    quantize_best<B>(t, c, xg, m, G, spec_.scale_search && amax > 0, idx + g * G, xc, cc);
    // Default: the matched norm, ||s c[idx]|| = ||x_g|| (cc > 0: no centroid is zero).
    const float s = amax > 0 ? scale_for(spec_.scale_rule, ss, xc, cc) : 0.0f;
    store_fp16(rec, g, to_fp16_checked(s, "group scale"));
  }
  pack_bits(idx, size_t(d), B, rec + layout_.index_offset);
}

template <int B>
void Codec::encode_affine(const float* x, uint8_t* rec) const {
  const int d = dim_, G = group_, ng = d / G;
  constexpr int kMaxQ = (1 << B) - 1;
  uint8_t idx[kMaxDim];
  float total = 0;
  for (int i = 0; i < d; ++i) total += x[i] * x[i];
  check_finite(total);
  for (int g = 0; g < ng; ++g) {
    const float* xg = x + g * G;
    float mn = xg[0], mx = xg[0];
    for (int i = 1; i < G; ++i) { mn = std::min(mn, xg[i]); mx = std::max(mx, xg[i]); }
    const fp16_t s16 = to_fp16_checked((mx - mn) / float(kMaxQ), "affine scale");
    const fp16_t b16 = f32_to_fp16(mn);
    if ((b16 & 0x7c00u) == 0x7c00u)
      throw Error("codec: affine bias " + std::to_string(mn) + " does not fit in fp16 (max 65504)");
    store_fp16(rec, g, s16);
    store_fp16(rec, ng + g, b16);
    // Quantize against the stored (fp16-rounded) scale and bias, so the error
    // bound holds for what decode actually computes.
    const float s = fp16_to_f32(s16), bias = fp16_to_f32(b16);
    const float inv = s > 0 ? 1.0f / s : 0.0f;
    for (int i = 0; i < G; ++i) {
      const float q = std::floor((xg[i] - bias) * inv + 0.5f);  // round half up
      idx[g * G + i] = uint8_t(q < 0 ? 0.0f : (q > float(kMaxQ) ? float(kMaxQ) : q));
    }
  }
  pack_bits(idx, size_t(d), B, rec + layout_.index_offset);
}

void Codec::encode_prod(const float* x, uint8_t* rec) const {
  const int d = dim_;
  float ss = 0;
  for (int i = 0; i < d; ++i) ss += x[i] * x[i];
  check_finite(ss);
  const float norm = std::sqrt(ss);
  store_fp16(rec, 0, to_fp16_checked(norm, "vector norm"));
  const float inv = norm > 0 ? 1.0f / norm : 0.0f;
  float r[kMaxDim];  // residual of the unit vector, (d)
  const int mbits = int(layout_.index_bits);
  if (mbits > 0) {
    uint8_t idx[kMaxDim];
    const float* c = levels_->centroids().data();
    for (int i = 0; i < d; ++i) {
      const float u = x[i] * inv;
      idx[i] = levels_->quantize(u);
      r[i] = u - c[idx[i]];
    }
    pack_bits(idx, size_t(d), mbits, rec + layout_.index_offset);
  } else {
    for (int i = 0; i < d; ++i) r[i] = x[i] * inv;
  }
  float rr = 0;
  for (int i = 0; i < d; ++i) rr += r[i] * r[i];
  store_fp16(rec, 1, to_fp16_checked(std::sqrt(rr), "residual norm"));
  // sign(S r): bit 1 for >= 0, bit 0 for < 0.
  float sr[kMaxDim];
  multiply_s(r, sr);
  uint8_t z[kMaxDim];
  for (int j = 0; j < d; ++j) z[j] = sr[j] >= 0 ? 1 : 0;
  pack_bits(z, size_t(d), 1, rec + layout_.sign_offset);
}

void Codec::encode_rotated(const float* x, uint8_t* rec) const {
  if (!parts_.empty()) {
    parts_[0].encode_rotated(x, rec);
    parts_[1].encode_rotated(x + spec_.split, rec + layout_.split_offset);
    return;
  }
  switch (spec_.kind) {
    case CodecKind::Mse:
      with_bits(spec_.bits, [&]<int B>() { encode_mse<B>(x, rec); });
      return;
    case CodecKind::Group:
      with_bits(spec_.bits, [&]<int B>() { encode_group<B>(x, rec); });
      return;
    case CodecKind::Prod:
      encode_prod(x, rec);
      return;
    case CodecKind::Affine:
      if (spec_.bits == 4) encode_affine<4>(x, rec);
      else encode_affine<8>(x, rec);
      return;
  }
}

void Codec::decode_rotated(const uint8_t* rec, float* x) const {
  if (!parts_.empty()) {
    parts_[0].decode_rotated(rec, x);
    parts_[1].decode_rotated(rec + layout_.split_offset, x + spec_.split);
    return;
  }
  const int d = dim_;
  uint8_t idx[kMaxDim];
  unpack_bits(rec + layout_.index_offset, size_t(d), int(layout_.index_bits), idx);
  switch (spec_.kind) {
    case CodecKind::Mse: {
      const float n = record_scale(rec, 0);
      const float* c = levels_->centroids().data();
      for (int i = 0; i < d; ++i) x[i] = n * c[idx[i]];
      return;
    }
    case CodecKind::Group: {
      const float* c = levels_->centroids().data();
      for (int g = 0; g < d / group_; ++g) {
        const float s = record_scale(rec, g);
        for (int i = g * group_; i < (g + 1) * group_; ++i) x[i] = s * c[idx[i]];
      }
      return;
    }
    case CodecKind::Prod: {
      // x̂ = ||x|| (c[idx] + ||r|| sqrt(pi/2)/d S^T z): the QJL dequantizer.
      const float n = record_scale(rec, 0), gamma = record_scale(rec, 1);
      uint8_t z[kMaxDim];
      unpack_bits(rec + layout_.sign_offset, size_t(d), 1, z);
      float acc[kMaxDim] = {};
      for (int j = 0; j < d; ++j) {
        const float* row = &qjl_[size_t(j) * size_t(d)];
        const float sj = z[j] ? 1.0f : -1.0f;
        for (int i = 0; i < d; ++i) acc[i] += sj * row[i];
      }
      const float k = gamma * kQjlScale / float(d);
      const float* c = levels_ ? levels_->centroids().data() : nullptr;
      for (int i = 0; i < d; ++i) x[i] = n * ((c ? c[idx[i]] : 0.0f) + k * acc[i]);
      return;
    }
    case CodecKind::Affine: {
      const int ng = d / group_;
      for (int g = 0; g < ng; ++g) {
        const float s = record_scale(rec, g), b = record_scale(rec, ng + g);
        for (int i = g * group_; i < (g + 1) * group_; ++i) x[i] = s * float(idx[i]) + b;
      }
      return;
    }
  }
}

void Codec::sketch_query(const float* q, float* sk) const {
  TKV_ASSERT(spec_.kind == CodecKind::Prod, "sketch_query is for the prod codec");
  multiply_s(q, sk);
}

// y = S v as axpys over the columns of S (rows of S^T): y_j accumulates
// S[j][i] v_i in the order i = 0..d-1, the same sums in the same order as
// row-by-row dot products (so bit-identical to the reference), but the inner
// loop vectorizes.
void Codec::multiply_s(const float* v, float* y) const {
  const int d = dim_;
  for (int j = 0; j < d; ++j) y[j] = 0.0f;
  for (int i = 0; i < d; ++i) {
    const float* col = &qjl_t_[size_t(i) * size_t(d)];
    const float vi = v[i];
    for (int j = 0; j < d; ++j) y[j] += col[j] * vi;
  }
}

float Codec::dot_rotated(const float* q, const float* sk, const uint8_t* rec) const {
  if (!parts_.empty()) {  // mse and group parts: no sketch
    return parts_[0].dot_rotated(q, nullptr, rec) + parts_[1].dot_rotated(q + spec_.split, nullptr, rec + layout_.split_offset);
  }
  const int d = dim_;
  uint8_t idx[kMaxDim];
  unpack_bits(rec + layout_.index_offset, size_t(d), int(layout_.index_bits), idx);
  switch (spec_.kind) {
    case CodecKind::Mse: {
      const float* c = levels_->centroids().data();
      float s = 0;
      for (int i = 0; i < d; ++i) s += q[i] * c[idx[i]];
      return record_scale(rec, 0) * s;
    }
    case CodecKind::Group: {
      const float* c = levels_->centroids().data();
      float total = 0;
      for (int g = 0; g < d / group_; ++g) {
        float s = 0;
        for (int i = g * group_; i < (g + 1) * group_; ++i) s += q[i] * c[idx[i]];
        total += record_scale(rec, g) * s;
      }
      return total;
    }
    case CodecKind::Prod: {
      float s = 0;
      if (levels_) {
        const float* c = levels_->centroids().data();
        for (int i = 0; i < d; ++i) s += q[i] * c[idx[i]];
      }
      uint8_t z[kMaxDim];
      unpack_bits(rec + layout_.sign_offset, size_t(d), 1, z);
      float sz = 0;
      for (int j = 0; j < d; ++j) sz += z[j] ? sk[j] : -sk[j];
      const float gamma = record_scale(rec, 1);
      return record_scale(rec, 0) * (s + gamma * kQjlScale / float(d) * sz);
    }
    case CodecKind::Affine: {
      const int ng = d / group_;
      float total = 0;
      for (int g = 0; g < ng; ++g) {
        float sq = 0, sqi = 0;
        for (int i = g * group_; i < (g + 1) * group_; ++i) { sq += q[i]; sqi += q[i] * float(idx[i]); }
        total += record_scale(rec, g) * sqi + record_scale(rec, ng + g) * sq;
      }
      return total;
    }
  }
  return 0.0f;
}

float Codec::dot_rotated(const float* q, const uint8_t* rec) const {
  if (spec_.kind != CodecKind::Prod) return dot_rotated(q, nullptr, rec);
  float sk[kMaxDim];
  sketch_query(q, sk);
  return dot_rotated(q, sk, rec);
}

// ---- checked overloads ----------------------------------------------------------

namespace {
void check_sizes(const char* fn, size_t floats, size_t dim, size_t bytes, size_t record) {
  if (floats != dim)
    throw Error(std::string("codec ") + fn + ": vector has " + std::to_string(floats) +
                " floats, expected dim " + std::to_string(dim));
  if (bytes != record)
    throw Error(std::string("codec ") + fn + ": record buffer has " + std::to_string(bytes) +
                " bytes, expected record_bytes " + std::to_string(record));
}
}  // namespace

void Codec::encode_rotated(std::span<const float> x, std::span<uint8_t> rec) const {
  check_sizes("encode_rotated", x.size(), size_t(dim_), rec.size(), record_bytes());
  encode_rotated(x.data(), rec.data());
}

void Codec::decode_rotated(std::span<const uint8_t> rec, std::span<float> x) const {
  check_sizes("decode_rotated", x.size(), size_t(dim_), rec.size(), record_bytes());
  decode_rotated(rec.data(), x.data());
}

float Codec::dot_rotated(std::span<const float> q, std::span<const uint8_t> rec) const {
  check_sizes("dot_rotated", q.size(), size_t(dim_), rec.size(), record_bytes());
  return dot_rotated(q.data(), rec.data());
}

// ---- with rotation ----------------------------------------------------------------

void Codec::encode(const Rotation& rot, const float* x, uint8_t* rec) const {
  if (!uses_rotation()) return encode_rotated(x, rec);
  TKV_ASSERT(rot.dim() == dim_, "rotation and codec dimensions differ");
  float t[kMaxDim];
  rot.forward(x, t);
  encode_rotated(t, rec);
}

void Codec::decode(const Rotation& rot, const uint8_t* rec, float* x) const {
  if (!uses_rotation()) return decode_rotated(rec, x);
  TKV_ASSERT(rot.dim() == dim_, "rotation and codec dimensions differ");
  decode_rotated(rec, x);
  rot.inverse(x, x);
}

float Codec::dot(const Rotation& rot, const float* q, const uint8_t* rec) const {
  if (!uses_rotation()) return dot_rotated(q, rec);
  TKV_ASSERT(rot.dim() == dim_, "rotation and codec dimensions differ");
  float t[kMaxDim];
  rot.forward(q, t);
  return dot_rotated(t, rec);
}

}  // namespace turbokv::codec
