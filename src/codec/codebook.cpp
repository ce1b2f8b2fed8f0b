#include "codec/codebook.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>

#include "util/error.h"

namespace turbokv::codec {
namespace {

// Cumulative integrals of t^k p(t) (k = 0, 1, 2) and of p(t)^(1/3) over a
// uniform grid of 2^14 cells on [lo, hi], by composite Simpson on samples of
// p at the cell edges and midpoints (error ~h^4: below 1e-12 here). The
// integral from lo to any x adds Simpson on the partial cell, with p there
// taken from the quadratic through the cell's three samples, so Lloyd
// iterations never evaluate the density again. p need not be normalized.
class MomentTable {
 public:
  MomentTable(const std::function<double(double)>& pdf, double lo, double hi, int cells)
      : lo_(lo), hi_(hi), h_((hi - lo) / cells), cells_(cells) {
    p_.resize(2 * size_t(cells) + 1);  // p at lo + k h/2
    for (size_t k = 0; k < p_.size(); ++k) p_[k] = pdf(lo_ + double(k) * h_ / 2);
    for (auto* v : {&m0_, &m1_, &m2_, &cube_}) v->assign(size_t(cells) + 1, 0.0);
    for (int c = 0; c < cells; ++c) {
      const double a = lo_ + c * h_, ts[3] = {a, a + h_ / 2, a + h_};
      const double ps[3] = {p_[2 * c], p_[2 * c + 1], p_[2 * c + 2]}, w[3] = {h_ / 6, 4 * h_ / 6, h_ / 6};
      double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
      for (int k = 0; k < 3; ++k) {
        s0 += w[k] * ps[k]; s1 += w[k] * ps[k] * ts[k]; s2 += w[k] * ps[k] * ts[k] * ts[k];
        s3 += w[k] * std::cbrt(ps[k]);
      }
      m0_[c + 1] = m0_[c] + s0; m1_[c + 1] = m1_[c] + s1;
      m2_[c + 1] = m2_[c] + s2; cube_[c + 1] = cube_[c] + s3;
    }
  }

  struct Moments { double m0, m1, m2; };
  // ∫_lo^x t^k p(t) dt for k = 0, 1, 2.
  Moments upto(double x) const {
    if (x <= lo_) return {0, 0, 0};
    if (x >= hi_) return {m0_[cells_], m1_[cells_], m2_[cells_]};
    const int c = std::min(int((x - lo_) / h_), cells_ - 1);
    const double a = lo_ + c * h_, w = x - a;
    const double p0 = p_[2 * c], pm = p_[2 * c + 1], p1 = p_[2 * c + 2];
    auto interp = [&](double t) {  // quadratic through (a, p0), (a + h/2, pm), (a + h, p1)
      const double s = (t - a) / h_;
      return p0 * (2 * s - 1) * (s - 1) + pm * 4 * s * (1 - s) + p1 * s * (2 * s - 1);
    };
    const double ts[3] = {a, a + w / 2, x}, wt[3] = {w / 6, 4 * w / 6, w / 6};
    Moments m{m0_[c], m1_[c], m2_[c]};
    for (int k = 0; k < 3; ++k) {
      const double f = wt[k] * (k == 0 ? p0 : interp(ts[k]));
      m.m0 += f; m.m1 += f * ts[k]; m.m2 += f * ts[k] * ts[k];
    }
    return m;
  }
  double total() const { return m0_[cells_]; }
  // p(x) from the quadratic through the samples of x's cell.
  double pdf_at(double x) const {
    if (x <= lo_ || x >= hi_) return 0.0;
    const int c = std::min(int((x - lo_) / h_), cells_ - 1);
    const double s = (x - lo_ - c * h_) / h_;
    return p_[2 * c] * (2 * s - 1) * (s - 1) + p_[2 * c + 1] * 4 * s * (1 - s) + p_[2 * c + 2] * s * (2 * s - 1);
  }

  // The u-quantile (0 < u < 1) of the density ∝ p^(1/3), by bisection over
  // the grid and linear interpolation inside the cell.
  double cube_root_quantile(double u) const {
    const double target = u * cube_[cells_];
    const auto it = std::upper_bound(cube_.begin(), cube_.end(), target);
    const int c = std::clamp(int(it - cube_.begin()) - 1, 0, cells_ - 1);
    const double span = cube_[c + 1] - cube_[c];
    const double f = span > 0 ? (target - cube_[c]) / span : 0.5;
    return lo_ + (c + f) * h_;
  }
  double lo() const { return lo_; }
  double hi() const { return hi_; }

 private:
  double lo_, hi_, h_;
  int cells_;
  std::vector<double> p_;                    // (2 cells + 1) density samples
  std::vector<double> m0_, m1_, m2_, cube_;  // (cells + 1) cumulative integrals
};

// Lloyd–Max on a symmetric density. Starts from the Panter–Dite companding
// point density (centroids at quantiles of p^(1/3)), which is already close
// to optimal, runs plain Lloyd iterations, then Newton's method on the
// fixed-point equations c_i = g_i(c) = E[X | t_i < X <= t_{i+1}] with
// t_i = (c_{i-1} + c_i)/2. Plain Lloyd converges linearly at a rate
// 1 - O(1/n^2) (thousands of iterations at 8 bits); the Jacobian of g is
// tridiagonal, so each Newton step is O(n) (Thomas algorithm) and a handful
// reach the tolerance. Steps are halved until the centroids stay sorted.
// Returns the symmetrized centroids; `mse` gets the expected squared error
// under the normalized density.
std::vector<double> lloyd_max(const MomentTable& table, int bits, double* mse) {
  const int n = 1 << bits;
  const double total = table.total();
  std::vector<double> c(static_cast<size_t>(n)), t(size_t(n) + 1), g(static_cast<size_t>(n)),
      m0(static_cast<size_t>(n)), pt(size_t(n) + 1);
  std::vector<double> lower(static_cast<size_t>(n)), diag(static_cast<size_t>(n)),
      upper(static_cast<size_t>(n)), rhs(static_cast<size_t>(n)), next(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) c[i] = table.cube_root_quantile((i + 0.5) / n);
  std::vector<MomentTable::Moments> at(static_cast<size_t>(n) + 1);
  const double tol = 1e-12 * (table.hi() - table.lo());
  constexpr int kLloydIterations = 20, kMaxIterations = 500;
  for (int iter = 0; iter < kMaxIterations; ++iter) {
    t[0] = table.lo();
    t[n] = table.hi();
    for (int i = 1; i < n; ++i) t[i] = 0.5 * (c[i - 1] + c[i]);
    for (int i = 0; i <= n; ++i) at[i] = table.upto(t[i]);
    double moved = 0;
    for (int i = 0; i < n; ++i) {
      m0[i] = at[i + 1].m0 - at[i].m0;
      // An empty far-tail cell keeps its centroid.
      g[i] = m0[i] > 1e-300 ? (at[i + 1].m1 - at[i].m1) / m0[i] : c[i];
      moved = std::max(moved, std::abs(g[i] - c[i]));
    }
    if (moved < tol) break;
    if (iter < kLloydIterations) {
      c = g;
      continue;
    }
    // Newton: (I - dg/dc) delta = g - c, tridiagonal.
    pt[0] = pt[n] = 0.0;  // the outer limits do not move
    for (int i = 1; i < n; ++i) pt[i] = table.pdf_at(t[i]);
    for (int i = 0; i < n; ++i) {
      const double inv = m0[i] > 1e-300 ? 0.5 / m0[i] : 0.0;
      const double dl = pt[i] * (g[i] - t[i]) * inv;          // dg_i/dc_{i-1}
      const double du = pt[i + 1] * (t[i + 1] - g[i]) * inv;  // dg_i/dc_{i+1}
      lower[i] = -dl;
      diag[i] = 1.0 - (dl + du);
      upper[i] = -du;
      rhs[i] = g[i] - c[i];
    }
    for (int i = 1; i < n; ++i) {  // Thomas algorithm (diagonally dominant: 0 < dl + du < 1)
      const double w = lower[i] / diag[i - 1];
      diag[i] -= w * upper[i - 1];
      rhs[i] -= w * rhs[i - 1];
    }
    rhs[n - 1] /= diag[n - 1];
    for (int i = n - 2; i >= 0; --i) rhs[i] = (rhs[i] - upper[i] * rhs[i + 1]) / diag[i];
    for (double step = 1.0;; step *= 0.5) {
      bool sorted = true;
      for (int i = 0; i < n; ++i) {
        next[i] = c[i] + step * rhs[i];
        if (next[i] <= table.lo() || next[i] >= table.hi() || (i > 0 && next[i] <= next[i - 1])) sorted = false;
      }
      if (sorted || step < 1e-6) break;
    }
    c = next;
  }
  for (int i = 0; i < n / 2; ++i) {  // exact symmetry
    const double v = 0.5 * (c[n - 1 - i] - c[i]);
    c[i] = -v;
    c[n - 1 - i] = v;
  }
  // E[(X - c(X))^2] = Σ_cells (M2 - 2 c M1 + c^2 M0), with the final boundaries.
  double err = 0;
  MomentTable::Moments prev = table.upto(table.lo());
  for (int i = 0; i < n; ++i) {
    const double hi = i + 1 < n ? 0.5 * (c[i] + c[i + 1]) : table.hi();
    const MomentTable::Moments cur = table.upto(hi);
    err += (cur.m2 - prev.m2) - 2 * c[i] * (cur.m1 - prev.m1) + c[i] * c[i] * (cur.m0 - prev.m0);
    prev = cur;
  }
  *mse = err / total;
  return c;
}

void check_bits(int bits) {
  if (bits < 1 || bits > 8)
    throw Error("codebook bits must be in 1..8, got " + std::to_string(bits));
}

}  // namespace

Codebook::Codebook(int bits, std::vector<double> centroids, double mse) : bits_(bits), mse_(mse) {
  const size_t n = centroids.size();
  centroids_.resize(n);
  for (size_t i = 0; i < n; ++i) centroids_[i] = float(centroids[i]);
  boundaries_.assign(n, std::numeric_limits<float>::infinity());
  for (size_t i = 0; i + 1 < n; ++i) boundaries_[i] = float(0.5 * (centroids[i] + centroids[i + 1]));
  for (size_t i = 0; i + 1 < n; ++i)
    TKV_ASSERT(centroids_[i] < centroids_[i + 1], "codebook centroids must be strictly sorted");
}

Codebook Codebook::gaussian(int bits) {
  check_bits(bits);
  // N(0,1) on [-12, 12]: the mass outside is < 4e-33.
  const MomentTable table([](double x) { return std::exp(-0.5 * x * x); }, -12.0, 12.0, 1 << 14);
  double mse = 0;
  std::vector<double> c = lloyd_max(table, bits, &mse);
  return Codebook(bits, std::move(c), mse);
}

Codebook Codebook::sphere(int bits, int dim) {
  check_bits(bits);
  if (dim < 3) throw Error("sphere codebook needs dimension >= 3, got " + std::to_string(dim));
  // Density ∝ (1 - x^2)^((d-3)/2); its standard deviation is 1/sqrt(d), so
  // for large d integrate over ±14 standard deviations only (the mass
  // outside is negligible) to keep the grid fine where the mass is.
  const double e = 0.5 * (dim - 3);
  const double half = std::min(1.0, 14.0 / std::sqrt(double(dim)));
  const MomentTable table(
      [e](double x) {
        const double v = 1.0 - x * x;
        return v <= 0 ? (e == 0 ? 1.0 : 0.0) : std::pow(v, e);
      },
      -half, half, 1 << 14);
  double mse = 0;
  std::vector<double> c = lloyd_max(table, bits, &mse);
  return Codebook(bits, std::move(c), mse);
}

Codebook Codebook::scaled(double s) const {
  TKV_ASSERT(s > 0, "Codebook::scaled needs s > 0");
  std::vector<double> c(centroids_.size());
  for (size_t i = 0; i < c.size(); ++i) c[i] = double(centroids_[i]) * s;
  return Codebook(bits_, std::move(c), mse_ * s * s);
}

uint8_t quantize_reference(const Codebook& cb, float x) {
  uint32_t count = 0;
  for (float t : cb.boundaries()) count += (t < x) ? 1u : 0u;
  return uint8_t(count);
}

}  // namespace turbokv::codec
