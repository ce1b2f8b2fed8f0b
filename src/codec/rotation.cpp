#include "codec/rotation.h"

#include <cmath>
#include <cstring>
#include <string>

#include "codec/format.h"
#include "util/error.h"
#include "util/rng.h"

namespace turbokv::codec {
namespace {

bool is_pow2(int n) { return n > 0 && (n & (n - 1)) == 0; }

std::vector<float> random_signs(Rng& rng, int n) {
  std::vector<float> s(static_cast<size_t>(n));
  for (float& v : s) v = rng.sign();
  return s;
}

// Fisher–Yates with next_u64() % (i + 1): the modulo bias (< 2^-50) is
// irrelevant here and the result is the same everywhere.
std::vector<uint32_t> random_permutation(Rng& rng, int n) {
  std::vector<uint32_t> p(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) p[i] = uint32_t(i);
  for (int i = n - 1; i > 0; --i) std::swap(p[i], p[rng.next_u64() % uint64_t(i + 1)]);
  return p;
}

}  // namespace

const char* rotation_name(RotationKind k) {
  switch (k) {
    case RotationKind::Auto: return "auto";
    case RotationKind::Hadamard: return "hadamard";
    case RotationKind::BlockHadamard: return "block_hadamard";
    case RotationKind::Dense: return "dense";
    case RotationKind::Split: return "split";
  }
  return "unknown";
}

void walsh_hadamard_blocks(float* x, int len, int n) {
  const float scale = 1.0f / std::sqrt(float(n));
  for (int base = 0; base < len; base += n) {
    float* v = x + base;
    int h = 1;
    if (n >= 4) {  // the first two butterfly stages as one 4-point transform
      for (int i = 0; i < n; i += 4) {
        const float a = v[i] + v[i + 1], b = v[i] - v[i + 1];
        const float c = v[i + 2] + v[i + 3], d = v[i + 2] - v[i + 3];
        v[i] = a + c; v[i + 1] = b + d; v[i + 2] = a - c; v[i + 3] = b - d;
      }
      h = 4;
    }
    for (; h < n; h <<= 1)  // contiguous inner loops of length h: vectorizable
      for (int i = 0; i < n; i += 2 * h) {
        float* __restrict lo = v + i;
        float* __restrict hi = v + i + h;
        for (int j = 0; j < h; ++j) {
          const float a = lo[j], b = hi[j];
          lo[j] = a + b;
          hi[j] = a - b;
        }
      }
    for (int i = 0; i < n; ++i) v[i] *= scale;
  }
}

RotationKind Rotation::auto_kind(int dim) {
  if (is_pow2(dim)) return RotationKind::Hadamard;
  if (dim % 16 == 0) return RotationKind::BlockHadamard;
  return RotationKind::Dense;
}

Rotation Rotation::make(int dim, uint64_t seed, int layer, int head, RotationKind kind) {
  if (dim < 1 || dim > kMaxDim)
    throw Error("rotation dimension must be in 1..1024, got " + std::to_string(dim));
  if (kind == RotationKind::Split) throw Error("a split rotation is made by make_split");
  if (kind == RotationKind::Auto) kind = auto_kind(dim);
  if (kind == RotationKind::Hadamard && !is_pow2(dim))
    throw Error("Hadamard rotation needs a power-of-two dimension, got " + std::to_string(dim) +
                " (use block_hadamard or dense)");
  Rotation r;
  r.dim_ = dim;
  r.kind_ = kind;
  // One stream per (seed, layer, head, kind).
  Rng rng(mix_seed(mix_seed(mix_seed(seed, uint64_t(uint32_t(layer))), uint64_t(uint32_t(head))),
                   uint64_t(kind) + 0x726f74ull));
  switch (kind) {
    case RotationKind::Hadamard:
      r.block_ = dim;
      r.signs1_ = random_signs(rng, dim);
      break;
    case RotationKind::BlockHadamard:
      r.block_ = dim & -dim;  // largest power of two dividing dim
      r.signs1_ = random_signs(rng, dim);
      r.perm1_ = random_permutation(rng, dim);
      r.signs2_ = random_signs(rng, dim);
      r.perm2_ = random_permutation(rng, dim);
      break;
    case RotationKind::Dense: {
      // Columns of a Gaussian matrix, orthonormalized by modified Gram–Schmidt
      // run twice (re-orthogonalization keeps Q orthogonal to ~1e-15), in double.
      const size_t n = size_t(dim);
      std::vector<double> a(n * n);  // (col, row): column j is a[j*n .. j*n+n)
      for (double& v : a) v = rng.normal();
      for (size_t j = 0; j < n; ++j) {
        double* cj = &a[j * n];
        for (int pass = 0; pass < 2; ++pass)
          for (size_t k = 0; k < j; ++k) {
            const double* ck = &a[k * n];
            double dot = 0;
            for (size_t i = 0; i < n; ++i) dot += ck[i] * cj[i];
            for (size_t i = 0; i < n; ++i) cj[i] -= dot * ck[i];
          }
        double norm = 0;
        for (size_t i = 0; i < n; ++i) norm += cj[i] * cj[i];
        norm = std::sqrt(norm);
        TKV_ASSERT(norm > 1e-8, "Gaussian matrix is numerically singular");
        for (size_t i = 0; i < n; ++i) cj[i] /= norm;  // diag(R) = norm > 0: Haar
      }
      r.matrix_.resize(n * n);  // row-major Q: Q[i][j] = column j, entry i
      for (size_t i = 0; i < n; ++i)
        for (size_t j = 0; j < n; ++j) r.matrix_[i * n + j] = float(a[j * n + i]);
      r.matrix_t_.resize(n * n);  // Q^T row-major = the columns of Q
      for (size_t k = 0; k < n * n; ++k) r.matrix_t_[k] = float(a[k]);
      break;
    }
    case RotationKind::Auto:
    case RotationKind::Split:
      break;
  }
  return r;
}

Rotation Rotation::make_split(const std::vector<uint32_t>& order, int split, uint64_t seed, int layer, int head,
                              RotationKind kind) {
  const int dim = int(order.size());
  if (dim < 2 || dim > kMaxDim) throw Error("split rotation dimension must be in 2..1024, got " + std::to_string(dim));
  if (split <= 0 || split >= dim) {
    throw Error("split rotation: the first part must have 1.." + std::to_string(dim - 1) + " channels, got " +
                std::to_string(split));
  }
  std::vector<uint8_t> seen(order.size(), 0);
  for (uint32_t c : order) {
    if (c >= order.size() || seen[c]) throw Error("split rotation: the channel order is not a permutation");
    seen[c] = 1;
  }
  Rotation r;
  r.dim_ = dim;
  r.kind_ = RotationKind::Split;
  r.split_ = split;
  r.order_ = order;
  r.parts_.push_back(make(split, seed, layer, head, kind));
  r.parts_.push_back(make(dim - split, mix_seed(seed, 0x73706c6974ull), layer, head, kind));  // "split"
  return r;
}

void Rotation::forward(const float* x, float* y) const {
  const int d = dim_;
  switch (kind_) {
    case RotationKind::Hadamard:
      for (int i = 0; i < d; ++i) y[i] = x[i] * signs1_[i];
      walsh_hadamard_blocks(y, d, d);
      return;
    case RotationKind::BlockHadamard: {
      float t[kMaxDim];
      for (int i = 0; i < d; ++i) t[i] = x[i] * signs1_[i];
      for (int i = 0; i < d; ++i) y[i] = t[perm1_[i]];
      walsh_hadamard_blocks(y, d, block_);
      for (int i = 0; i < d; ++i) t[i] = y[i] * signs2_[i];
      for (int i = 0; i < d; ++i) y[i] = t[perm2_[i]];
      walsh_hadamard_blocks(y, d, block_);
      return;
    }
    case RotationKind::Dense: {
      // y = Q x as axpys over the rows of Q^T (vectorizable inner loop).
      float t[kMaxDim];
      std::memcpy(t, x, sizeof(float) * size_t(d));
      for (int i = 0; i < d; ++i) y[i] = 0;
      for (int j = 0; j < d; ++j) {
        const float* col = &matrix_t_[size_t(j) * size_t(d)];
        const float tj = t[j];
        for (int i = 0; i < d; ++i) y[i] += col[i] * tj;
      }
      return;
    }
    case RotationKind::Split: {
      float t[kMaxDim];
      for (int i = 0; i < d; ++i) t[i] = x[order_[i]];
      parts_[0].forward(t, y);
      parts_[1].forward(t + split_, y + split_);
      return;
    }
    case RotationKind::Auto:
      break;
  }
  TKV_ASSERT(false, "Rotation used before make()");
}

void Rotation::inverse(const float* y, float* x) const {
  const int d = dim_;
  switch (kind_) {
    case RotationKind::Hadamard:
      if (x != y) std::memcpy(x, y, sizeof(float) * size_t(d));
      walsh_hadamard_blocks(x, d, d);
      for (int i = 0; i < d; ++i) x[i] *= signs1_[i];
      return;
    case RotationKind::BlockHadamard: {
      float t[kMaxDim];
      std::memcpy(t, y, sizeof(float) * size_t(d));
      walsh_hadamard_blocks(t, d, block_);
      for (int i = 0; i < d; ++i) x[perm2_[i]] = t[i];
      for (int i = 0; i < d; ++i) t[i] = x[i] * signs2_[i];
      walsh_hadamard_blocks(t, d, block_);
      for (int i = 0; i < d; ++i) x[perm1_[i]] = t[i];
      for (int i = 0; i < d; ++i) x[i] *= signs1_[i];
      return;
    }
    case RotationKind::Dense: {
      float t[kMaxDim];
      std::memcpy(t, y, sizeof(float) * size_t(d));
      for (int j = 0; j < d; ++j) x[j] = 0;
      for (int i = 0; i < d; ++i) {
        const float* row = &matrix_[size_t(i) * size_t(d)];
        const float yi = t[i];
        for (int j = 0; j < d; ++j) x[j] += row[j] * yi;
      }
      return;
    }
    case RotationKind::Split: {
      float t[kMaxDim];
      parts_[0].inverse(y, t);
      parts_[1].inverse(y + split_, t + split_);
      for (int i = 0; i < d; ++i) x[order_[i]] = t[i];
      return;
    }
    case RotationKind::Auto:
      break;
  }
  TKV_ASSERT(false, "Rotation used before make()");
}

}  // namespace turbokv::codec
