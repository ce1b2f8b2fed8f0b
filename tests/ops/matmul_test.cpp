// Fast matvec/matmul against the scalar reference (ops::matmul_ref), on odd
// sizes, every supported type, 1-3 threads.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <tuple>
#include <utility>
#include <string>
#include <vector>

#include "ops/matmul.h"
#include "ops/quantize.h"
#include "util/error.h"
#include "util/rng.h"

namespace turbokv::ops {
namespace {

const TensorType kTypes[] = {TensorType::F32, TensorType::F16, TensorType::BF16, TensorType::Q8_0, TensorType::Q4_0};

struct Matrix {
  TensorType type;
  int64_t rows, cols;
  std::vector<uint8_t> bytes;
  WeightView view() const { return WeightView{type, bytes.data(), rows, cols}; }
};

Matrix random_matrix(TensorType type, int64_t rows, int64_t cols, uint64_t seed) {
  Rng rng(seed);
  Matrix m{type, rows, cols, std::vector<uint8_t>(row_bytes(type, size_t(cols)) * size_t(rows))};
  std::vector<float> row(static_cast<size_t>(cols));
  for (int64_t r = 0; r < rows; ++r) {
    for (auto& v : row) v = float(rng.normal());
    quantize_row(type, row.data(), m.bytes.data() + size_t(r) * row_bytes(type, size_t(cols)), size_t(cols));
  }
  return m;
}

std::vector<float> random_vector(size_t n, uint64_t seed) {
  Rng rng(seed);
  std::vector<float> v(n);
  for (auto& x : v) x = float(rng.normal());
  return v;
}

// kFloatSumTolerance bounds the difference between a float (FMA, lane-wise)
// sum of `cols` products and the double-accumulated reference: each of the
// ~cols/lanes + log2(lanes) sequential roundings adds at most 2^-24 of the
// sum of magnitudes.
float float_sum_tolerance(double abs_sum, int64_t cols) {
  return float(abs_sum * 0x1p-24 * (double(cols) / 4.0 + 16.0)) + 1e-30f;
}

// kActivationQuantBound: quantizing x to Q8_0 (d = fp16(amax/127)) moves each
// element by at most d/2 + 127 * |d - fp16(d)| <= 0.57 d, so the dot product
// moves by at most sum_blocks (0.57 d_x,b * sum_i |w_i|).
double activation_quant_bound(const std::vector<float>& wrow, const float* x, int64_t cols) {
  double bound = 0;
  for (int64_t b = 0; b < cols / 32; ++b) {
    float amax = 0;
    double wabs = 0;
    for (int j = 0; j < 32; ++j) {
      amax = std::max(amax, std::fabs(x[b * 32 + j]));
      wabs += std::fabs(wrow[size_t(b * 32 + j)]);
    }
    bound += 0.57 * double(amax) / 127.0 * wabs;
  }
  return bound;
}

// sum_c |W[r, c] * x[c]|
double abs_dot(const Matrix& m, int64_t r, const float* x) {
  std::vector<float> wrow(static_cast<size_t>(m.cols));
  dequantize_row_ref(m.type, m.view().row(r), wrow.data(), size_t(m.cols));
  double s = 0;
  for (int64_t c = 0; c < m.cols; ++c) s += std::fabs(double(wrow[size_t(c)]) * x[c]);
  return s;
}

bool is_quantized(TensorType t) { return t == TensorType::Q8_0 || t == TensorType::Q4_0; }

// Checks y (n, rows) from the fast path against the float reference.
void expect_close_to_reference(const Matrix& m, const std::vector<float>& x, int64_t n, const std::vector<float>& y,
                               const std::string& what) {
  std::vector<float> ref(size_t(n * m.rows));
  matmul_ref(m.view(), x.data(), n, ref.data());
  std::vector<float> wrow(static_cast<size_t>(m.cols));
  for (int64_t r = 0; r < m.rows; ++r) {
    dequantize_row_ref(m.type, m.view().row(r), wrow.data(), size_t(m.cols));
    for (int64_t t = 0; t < n; ++t) {
      const float* xt = x.data() + t * m.cols;
      double abs_sum = 0;
      for (int64_t c = 0; c < m.cols; ++c) abs_sum += std::fabs(double(wrow[size_t(c)]) * xt[c]);
      double tol = float_sum_tolerance(abs_sum, m.cols);
      if (is_quantized(m.type)) tol += activation_quant_bound(wrow, xt, m.cols);
      ASSERT_NEAR(y[size_t(t * m.rows + r)], ref[size_t(t * m.rows + r)], tol)
          << what << " row " << r << " token " << t;
    }
  }
}

// The quantized kernels exactly emulated in scalar code: x quantized with the
// reference quantizer, then block dots. Differences are float summation only.
void expect_matches_q8_emulation(const Matrix& m, const std::vector<float>& x, int64_t n, const std::vector<float>& y,
                                 const std::string& what) {
  const size_t cols = size_t(m.cols), nb = cols / 32;
  std::vector<float> wrow(cols), xq(cols);
  std::vector<BlockQ8_0> blocks(nb);
  for (int64_t t = 0; t < n; ++t) {
    quantize_row_q8_0_ref(x.data() + size_t(t) * cols, blocks.data(), cols);
    dequantize_row_ref(TensorType::Q8_0, blocks.data(), xq.data(), cols);
    for (int64_t r = 0; r < m.rows; ++r) {
      dequantize_row_ref(m.type, m.view().row(r), wrow.data(), cols);
      double s = 0, abs_sum = 0;
      for (size_t c = 0; c < cols; ++c) {
        s += double(wrow[c]) * xq[c];
        abs_sum += std::fabs(double(wrow[c]) * xq[c]);
      }
      ASSERT_NEAR(y[size_t(t * m.rows + r)], s, float_sum_tolerance(abs_sum, m.cols))
          << what << " row " << r << " token " << t;
    }
  }
}

TEST(Matmul, TargetIsReported) {
  const std::string name = matmul_target_name();
  EXPECT_FALSE(name.empty());
  std::printf("matmul target: %s\n", name.c_str());
}

TEST(Matmul, DequantizeRowEqualsReference) {
  for (TensorType t : kTypes) {
    const Matrix m = random_matrix(t, 3, 96, 5);
    std::vector<float> a(96), b(96);
    for (int64_t r = 0; r < 3; ++r) {
      dequantize_row(m.view(), r, a.data());
      dequantize_row_ref(t, m.view().row(r), b.data(), 96);
      EXPECT_EQ(a, b) << type_name(t);
    }
  }
}

TEST(Matmul, MatvecOddSizesEveryType) {
  ThreadPool pool(2);
  uint64_t seed = 10;
  for (TensorType t : kTypes) {
    for (int64_t cols : {32, 64, 96, 4096 + 32}) {
      for (int64_t rows : {1, 3, 17, 255}) {
        const Matrix m = random_matrix(t, rows, cols, ++seed);
        const auto x = random_vector(size_t(cols), ++seed);
        std::vector<float> y(static_cast<size_t>(rows));
        matvec(m.view(), x.data(), y.data(), pool);
        const std::string what = std::string(type_name(t)) + " " + std::to_string(rows) + "x" + std::to_string(cols);
        expect_close_to_reference(m, x, 1, y, what);
        if (is_quantized(t)) expect_matches_q8_emulation(m, x, 1, y, what);
      }
    }
  }
}

TEST(Matmul, FloatTypesHandleColumnsNotMultipleOfTheVector) {
  ThreadPool pool(1);
  for (TensorType t : {TensorType::F32, TensorType::F16, TensorType::BF16}) {
    for (int64_t cols : {1, 7, 17, 33, 100}) {
      const Matrix m = random_matrix(t, 5, cols, uint64_t(cols));
      const auto x = random_vector(size_t(cols * 3), 99);
      std::vector<float> y(15);
      matmul(m.view(), x.data(), 3, y.data(), pool);
      expect_close_to_reference(m, x, 3, y, std::string(type_name(t)) + " cols " + std::to_string(cols));
    }
  }
}

// matmul(n) equals n matvecs: bitwise for few tokens (the same dot-product
// tiles) and for quantized weights; for float weights and many tokens the
// prefill kernel sums each dot product in another order, so within the
// float summation tolerance.
TEST(Matmul, MatmulEqualsNMatvecs) {
  ThreadPool pool(2);
  for (TensorType t : kTypes) {
    for (auto [rows, cols, n] : {std::tuple<int64_t, int64_t, int64_t>{17, 96, 67}, {255, 4128, 9}, {3, 64, 5}, {70, 96, 40}, {33, 4128, 33}}) {
      const Matrix m = random_matrix(t, rows, cols, 7);
      const auto x = random_vector(size_t(n * cols), 8);
      std::vector<float> y(size_t(n * rows)), yv(static_cast<size_t>(rows));
      matmul(m.view(), x.data(), n, y.data(), pool);
      const std::string what = std::string(type_name(t)) + " " + std::to_string(rows) + "x" + std::to_string(cols);
      for (int64_t i = 0; i < n; ++i) {
        matvec(m.view(), x.data() + i * cols, yv.data(), pool);
        for (int64_t r = 0; r < rows; ++r) {
          if (n < 10 || is_quantized(t)) {
            ASSERT_EQ(y[size_t(i * rows + r)], yv[size_t(r)]) << what << " token " << i << " row " << r;
          } else {
            ASSERT_NEAR(y[size_t(i * rows + r)], yv[size_t(r)], 2 * float_sum_tolerance(abs_dot(m, r, x.data() + i * cols), cols))
                << what << " token " << i << " row " << r;
          }
        }
      }
      if (rows < 100) expect_close_to_reference(m, x, n, y, what + " n " + std::to_string(n));
    }
  }
}

TEST(Matmul, ThreadCountDoesNotChangeResults) {
  for (TensorType t : kTypes) {
   for (int64_t n : {6, 45}) {
    const Matrix m = random_matrix(t, 255, 96, 11);
    const auto x = random_vector(size_t(96 * n), 12);
    std::vector<float> y1(size_t(255 * n));
    {
      ThreadPool p1(1);
      matmul(m.view(), x.data(), n, y1.data(), p1);
    }
    for (int threads : {2, 3}) {
      ThreadPool p(threads);
      std::vector<float> y(size_t(255 * n));
      matmul(m.view(), x.data(), n, y.data(), p);
      EXPECT_EQ(y, y1) << type_name(t) << " threads " << threads << " n " << n;
      std::vector<float> y1v(255);
      {
        ThreadPool p1(1);
        matvec(m.view(), x.data(), y1v.data(), p1);
      }
      matvec(m.view(), x.data(), y.data(), p);
      EXPECT_TRUE(std::equal(y.begin(), y.begin() + 255, y1v.begin())) << type_name(t) << " matvec threads " << threads;
    }
   }
  }
}

// A group of products of one input (q/k/v, gate/up) gives each product's own
// result bit for bit, for decode and prefill sizes and mixed row counts.
TEST(Matmul, GroupedProductsEqualSeparateProducts) {
  ThreadPool pool(2);
  for (TensorType t : kTypes) {
    for (int64_t n : {1, 5, 40}) {
      const int64_t cols = 96;
      const Matrix a = random_matrix(t, 67, cols, 21), b = random_matrix(t, 33, cols, 22), c = random_matrix(t, 5, cols, 23);
      const auto x = random_vector(size_t(n * cols), 24);
      std::vector<float> ya(size_t(n * 67)), yb(size_t(n * 33)), yc(size_t(n * 5));
      const Product group[] = {{a.view(), ya.data()}, {b.view(), yb.data()}, {c.view(), yc.data()}};
      matmul(group, x.data(), n, pool);
      for (const auto& [m, y] : {std::pair{&a, &ya}, std::pair{&b, &yb}, std::pair{&c, &yc}}) {
        std::vector<float> alone(y->size());
        matmul(m->view(), x.data(), n, alone.data(), pool);
        EXPECT_EQ(*y, alone) << type_name(t) << " n " << n << " rows " << m->rows;
      }
    }
  }
}

TEST(Matmul, ZeroTokensAndZeroActivations) {
  ThreadPool pool(2);
  for (TensorType t : kTypes) {
    const Matrix m = random_matrix(t, 5, 64, 1);
    std::vector<float> x(64, 0.0f), y(5, 1.0f);
    matmul(m.view(), x.data(), 0, y.data(), pool);
    EXPECT_EQ(y[0], 1.0f);  // untouched
    matvec(m.view(), x.data(), y.data(), pool);
    for (float v : y) EXPECT_EQ(v, 0.0f) << type_name(t);
  }
}

TEST(Matmul, UnsupportedTypeIsAnError) {
  ThreadPool pool(1);
  std::vector<uint8_t> data(144);
  std::vector<float> x(256), y(1);
  const WeightView w{TensorType::Q4_K, data.data(), 1, 256};
  try {
    matvec(w, x.data(), y.data(), pool);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("q4_k"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("supported: f32, f16, bf16, q8_0, q4_0"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace turbokv::ops
