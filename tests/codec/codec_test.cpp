// Functional tests of the codecs: layouts, round trips, norms, error bounds,
// parity of the encoders with the scalar references written here, bad input.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <tuple>
#include <vector>

#include "codec/bitpack.h"
#include "codec/codec.h"
#include "util/error.h"
#include "util/fp16.h"
#include "util/rng.h"

namespace turbokv::codec {
namespace {

std::vector<float> gaussian(Rng& rng, int d, float sigma = 1.0f) {
  std::vector<float> v(static_cast<size_t>(d));
  for (float& x : v) x = sigma * float(rng.normal());
  return v;
}

CodecSpec spec(CodecKind k, int bits, int group = 0, MseCodebook cb = MseCodebook::Sphere) {
  return {k, bits, group, cb};
}

std::vector<CodecSpec> all_specs() {
  std::vector<CodecSpec> s;
  for (int b = 1; b <= 8; ++b) {
    s.push_back(spec(CodecKind::Mse, b));
    s.push_back(spec(CodecKind::Mse, b, 0, MseCodebook::Gaussian));
    s.push_back(spec(CodecKind::Group, b));
    s.push_back(spec(CodecKind::Prod, b));
  }
  s.push_back(spec(CodecKind::Group, 3, 32));
  s.push_back(spec(CodecKind::Affine, 4, 32));
  s.push_back(spec(CodecKind::Affine, 4, 64));
  s.push_back(spec(CodecKind::Affine, 8, 32));
  s.push_back(spec(CodecKind::Affine, 8, 64));
  return s;
}

// ---- scalar reference encoders (straight from the definitions in codec.h) -----

std::vector<uint8_t> reference_encode(const Codec& codec, const float* x) {
  const CodecSpec& s = codec.spec();
  const RecordLayout& L = codec.layout();
  const int d = codec.dim();
  std::vector<uint8_t> rec(L.record_bytes, 0);
  std::vector<uint8_t> idx(size_t(d), 0);
  auto put16 = [&](int i, float v) { const fp16_t h = f32_to_fp16(v); std::memcpy(&rec[2 * i], &h, 2); };
  if (s.kind == CodecKind::Mse || s.kind == CodecKind::Prod) {
    float ss = 0;
    for (int i = 0; i < d; ++i) ss += x[i] * x[i];
    const float norm = std::sqrt(ss), inv = norm > 0 ? 1.0f / norm : 0.0f;
    put16(0, norm);
    std::vector<float> r(static_cast<size_t>(d));
    for (int i = 0; i < d; ++i) {
      const float u = x[i] * inv;
      if (codec.codebook()) {
        idx[i] = quantize_reference(*codec.codebook(), u);
        r[i] = u - codec.codebook()->centroid(idx[i]);
      } else {
        r[i] = u;
      }
    }
    pack_bits_reference(idx.data(), size_t(d), int(L.index_bits), &rec[L.index_offset]);
    if (s.kind == CodecKind::Prod) {
      float rr = 0;
      for (float v : r) rr += v * v;
      put16(1, std::sqrt(rr));
      std::vector<uint8_t> z(static_cast<size_t>(d));
      const auto S = codec.qjl_matrix();
      for (int j = 0; j < d; ++j) {
        float dot = 0;
        for (int i = 0; i < d; ++i) dot += S[size_t(j) * d + i] * r[i];
        z[j] = dot >= 0;
      }
      pack_bits_reference(z.data(), size_t(d), 1, &rec[L.sign_offset]);
    }
  } else if (s.kind == CodecKind::Group) {
    const int G = s.effective_group();
    const Codebook& cb = *codec.codebook();
    for (int g = 0; g < d / G; ++g) {
      float ss = 0, amax = 0;
      for (int i = g * G; i < (g + 1) * G; ++i) { ss += x[i] * x[i]; amax = std::max(amax, std::abs(x[i])); }
      const float m = amax > 0 ? cb.centroids().back() / amax : 0.0f;
      float cn = 0;
      for (int i = g * G; i < (g + 1) * G; ++i) {
        idx[i] = quantize_reference(cb, x[i] * m);
        cn += cb.centroid(idx[i]) * cb.centroid(idx[i]);
      }
      put16(g, amax > 0 ? std::sqrt(ss) / std::sqrt(cn) : 0.0f);
    }
    pack_bits_reference(idx.data(), size_t(d), s.bits, &rec[L.index_offset]);
  } else {
    const int G = s.effective_group(), ng = d / G, qmax = (1 << s.bits) - 1;
    for (int g = 0; g < ng; ++g) {
      float mn = x[g * G], mx = x[g * G];
      for (int i = g * G; i < (g + 1) * G; ++i) { mn = std::min(mn, x[i]); mx = std::max(mx, x[i]); }
      put16(g, (mx - mn) / float(qmax));
      put16(ng + g, mn);
      const float sc = round_fp16((mx - mn) / float(qmax)), bias = round_fp16(mn);
      const float inv = sc > 0 ? 1.0f / sc : 0.0f;
      for (int i = g * G; i < (g + 1) * G; ++i) {
        const float q = std::floor((x[i] - bias) * inv + 0.5f);
        idx[i] = uint8_t(std::clamp(q, 0.0f, float(qmax)));
      }
    }
    pack_bits_reference(idx.data(), size_t(d), s.bits, &rec[L.index_offset]);
  }
  return rec;
}

TEST(Codec, RecordBytesMatchFormat) {
  for (const CodecSpec& s : all_specs()) {
    for (int d : {64, 128, 256}) {
      const Codec c(s, d, 1);
      EXPECT_EQ(c.record_bytes(), record_bytes(s, d));
      EXPECT_DOUBLE_EQ(c.bits_per_element(), 8.0 * double(record_bytes(s, d)) / d);
    }
  }
  EXPECT_EQ(Codec(spec(CodecKind::Mse, 3), 5, 0).record_bytes(), 4u);
}

// Every encoder equals the scalar reference bit for bit (indices, signs, fp16
// fields), on odd dimensions too.
TEST(Codec, EncodeEqualsScalarReferenceBitForBit) {
  Rng rng(3);
  for (const CodecSpec& s : all_specs()) {
    for (int d : {7, 64, 96, 128}) {
      if (spec_problem(s, d)) continue;
      const Codec codec(s, d, 5);
      for (int t = 0; t < 20; ++t) {
        const std::vector<float> x = gaussian(rng, d, 0.5f + float(t));
        std::vector<uint8_t> rec(codec.record_bytes());
        codec.encode_rotated(x.data(), rec.data());
        ASSERT_EQ(rec, reference_encode(codec, x.data()))
            << codec_name(s.kind) << " bits " << s.bits << " d " << d;
      }
    }
  }
}

// dot_rotated equals <q, decode_rotated(record)> (the reference dot), and the
// prod fast path with a precomputed sketch equals the reference path.
TEST(Codec, DotMatchesDecodedDot) {
  Rng rng(4);
  for (const CodecSpec& s : all_specs()) {
    const int d = 128;
    const Codec codec(s, d, 9);
    std::vector<float> sketch(static_cast<size_t>(d));
    for (int t = 0; t < 10; ++t) {
      const std::vector<float> x = gaussian(rng, d), q = gaussian(rng, d);
      std::vector<uint8_t> rec(codec.record_bytes());
      std::vector<float> xh(static_cast<size_t>(d));
      codec.encode_rotated(x.data(), rec.data());
      codec.decode_rotated(rec.data(), xh.data());
      double ref = 0, scale = 0;
      for (int i = 0; i < d; ++i) { ref += double(q[i]) * xh[i]; scale += std::abs(double(q[i]) * xh[i]); }
      // Tolerance named after what it bounds: float summation-order rounding.
      const double sum_order_tol = 1e-5 * (scale + 1);
      EXPECT_NEAR(codec.dot_rotated(q.data(), rec.data()), ref, sum_order_tol) << codec_name(s.kind) << s.bits;
      if (s.kind == CodecKind::Prod) {
        codec.sketch_query(q.data(), sketch.data());
        EXPECT_EQ(codec.dot_rotated(q.data(), sketch.data(), rec.data()), codec.dot_rotated(q.data(), rec.data()));
      }
    }
  }
}

TEST(Codec, RotatedApiEqualsConvenienceApi) {
  Rng rng(8);
  for (int d : {64, 80, 72}) {
    const Rotation rot = Rotation::make(d, 1, 4, 5);
    const Codec codec(spec(CodecKind::Mse, 3), d, 0);
    const std::vector<float> x = gaussian(rng, d), q = gaussian(rng, d);
    std::vector<float> xr(static_cast<size_t>(d)), qr(static_cast<size_t>(d)), back(static_cast<size_t>(d)), back_r(static_cast<size_t>(d));
    rot.forward(x.data(), xr.data());
    rot.forward(q.data(), qr.data());
    std::vector<uint8_t> a(codec.record_bytes()), b(codec.record_bytes());
    codec.encode(rot, x.data(), a.data());
    codec.encode_rotated(xr.data(), b.data());
    EXPECT_EQ(a, b);
    codec.decode(rot, a.data(), back.data());
    codec.decode_rotated(a.data(), back_r.data());
    rot.inverse(back_r.data(), back_r.data());
    for (int i = 0; i < d; ++i) EXPECT_FLOAT_EQ(back[i], back_r[i]);
    EXPECT_FLOAT_EQ(codec.dot(rot, q.data(), a.data()), codec.dot_rotated(qr.data(), a.data()));
  }
}

TEST(Codec, ReconstructionErrorShrinksWithBits) {
  Rng rng(12);
  for (CodecKind k : {CodecKind::Mse, CodecKind::Group, CodecKind::Prod}) {
    double prev = 10;
    for (int b = 2; b <= 8; ++b) {
      const Codec codec(spec(k, b), 128, 1);
      double err = 0;
      for (int t = 0; t < 50; ++t) {
        const std::vector<float> x = gaussian(rng, 128);
        std::vector<uint8_t> rec(codec.record_bytes());
        std::vector<float> xh(128);
        codec.encode_rotated(x.data(), rec.data());
        codec.decode_rotated(rec.data(), xh.data());
        double e = 0, n = 0;
        for (int i = 0; i < 128; ++i) { e += (x[i] - xh[i]) * (x[i] - xh[i]); n += x[i] * x[i]; }
        err += e / n / 50;
      }
      EXPECT_LT(err, prev) << codec_name(k) << " bits " << b;
      // Lloyd–Max stays within ~2.7x of the 4^-b bound; group pays a little
      // for its per-group scale, prod ~pi/2 for the QJL stage at b-1 bits.
      const double factor = k == CodecKind::Mse ? 3.0 : (k == CodecKind::Group ? 4.0 : 6.0);
      EXPECT_LT(err, factor * std::pow(4.0, -(b - (k == CodecKind::Prod ? 1 : 0))) + 1e-4)
          << codec_name(k) << " bits " << b;
      prev = err;
    }
  }
}

TEST(Codec, GroupPreservesGroupNorms) {
  Rng rng(21);
  for (int G : {16, 32, 64, 128}) {
    for (int b : {1, 2, 3, 4, 8}) {
      const Codec codec(spec(CodecKind::Group, b, G), 128, 0);
      for (int t = 0; t < 20; ++t) {
        std::vector<float> x = gaussian(rng, 128, 0.1f + float(t));
        std::vector<uint8_t> rec(codec.record_bytes());
        std::vector<float> xh(128);
        codec.encode_rotated(x.data(), rec.data());
        codec.decode_rotated(rec.data(), xh.data());
        for (int g = 0; g < 128 / G; ++g) {
          double n = 0, nh = 0;
          for (int i = g * G; i < (g + 1) * G; ++i) { n += x[i] * x[i]; nh += xh[i] * xh[i]; }
          // fp16 scale: relative error <= 2^-11, plus float rounding.
          EXPECT_NEAR(std::sqrt(nh), std::sqrt(n), std::sqrt(n) * (std::ldexp(1.0, -11) + 1e-5))
              << "G " << G << " bits " << b;
        }
      }
    }
  }
}

TEST(Codec, AffineErrorBound) {
  Rng rng(31);
  for (int b : {4, 8}) {
    for (int G : {32, 64}) {
      const Codec codec(spec(CodecKind::Affine, b, G), 128, 0);
      const int qmax = (1 << b) - 1;
      for (int t = 0; t < 50; ++t) {
        std::vector<float> x = gaussian(rng, 128, 0.01f + float(t));
        x[5] += float(t);  // offsets and outliers
        std::vector<uint8_t> rec(codec.record_bytes());
        std::vector<float> xh(128);
        codec.encode_rotated(x.data(), rec.data());
        codec.decode_rotated(rec.data(), xh.data());
        for (int g = 0; g < 128 / G; ++g) {
          const float s = record_scale(rec.data(), g);
          float mn = x[g * G], mx = mn;
          for (int i = g * G; i < (g + 1) * G; ++i) { mn = std::min(mn, x[i]); mx = std::max(mx, x[i]); }
          // fp16 rounding of the bias (|min| 2^-11) and of the scale
          // (qmax * scale * 2^-11), plus float arithmetic.
          const float fp16_rounding = (std::abs(mn) + qmax * s) * 0x1p-11f + 1e-6f * (std::abs(mx) + std::abs(mn));
          for (int i = g * G; i < (g + 1) * G; ++i)
            ASSERT_LE(std::abs(x[i] - xh[i]), s / 2 + fp16_rounding) << "bits " << b << " G " << G;
        }
      }
    }
  }
  // A constant group decodes exactly (up to fp16 of the value).
  const Codec codec(spec(CodecKind::Affine, 4, 32), 32, 0);
  std::vector<float> x(32, 1.25f), xh(32);
  std::vector<uint8_t> rec(codec.record_bytes());
  codec.encode_rotated(x.data(), rec.data());
  codec.decode_rotated(rec.data(), xh.data());
  for (float v : xh) EXPECT_EQ(v, 1.25f);
}

TEST(Codec, ZeroVectorDecodesToZero) {
  for (const CodecSpec& s : all_specs()) {
    const Codec codec(s, 64, 0);
    std::vector<float> x(64, 0.0f), xh(64, 1.0f), q(64, 1.0f);
    std::vector<uint8_t> rec(codec.record_bytes());
    codec.encode_rotated(x.data(), rec.data());
    codec.decode_rotated(rec.data(), xh.data());
    for (float v : xh) EXPECT_EQ(v, 0.0f) << codec_name(s.kind);
    EXPECT_EQ(codec.dot_rotated(q.data(), rec.data()), 0.0f);
  }
}

TEST(Codec, BadSpecsThrow) {
  EXPECT_THROW(Codec(spec(CodecKind::Mse, 4), 0), Error);
  EXPECT_THROW(Codec(spec(CodecKind::Mse, 0), 128), Error);
  EXPECT_THROW(Codec(spec(CodecKind::Mse, 9), 128), Error);
  EXPECT_THROW(Codec(spec(CodecKind::Prod, 9), 128), Error);
  EXPECT_THROW(Codec(spec(CodecKind::Affine, 3), 128), Error);
  EXPECT_THROW(Codec(spec(CodecKind::Affine, 4, 16), 128), Error);
  EXPECT_THROW(Codec(spec(CodecKind::Group, 4, 16), 72 + 1), Error);
  EXPECT_THROW(Codec(spec(CodecKind::Group, 4, 48), 96), Error);
  EXPECT_THROW(Codec(spec(CodecKind::Mse, 4), kMaxDim + 1), Error);
  try {
    Codec(spec(CodecKind::Affine, 2), 128);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("affine bits must be 4 or 8"), std::string::npos) << e.what();
  }
}

// A split record is the two parts' records side by side: the first `split`
// coordinates at one more bit, the rest at the spec's bits, each encoded,
// decoded and dotted exactly as a codec of its own.
TEST(Codec, SplitRecordIsItsTwoPartsSideBySide) {
  Rng rng(41);
  for (const auto& [base, d, k] : {std::tuple{spec(CodecKind::Mse, 3), 128, 32}, std::tuple{spec(CodecKind::Mse, 2), 96, 16},
                                   std::tuple{spec(CodecKind::Group, 4, 16), 80, 16}, std::tuple{spec(CodecKind::Mse, 8), 64, 8}}) {
    CodecSpec s = base;
    s.split = k;
    s.scale_search = true;
    const Codec codec(s, d);
    const Codec hi(split_part(s, 0), k), lo(split_part(s, 1), d - k);
    EXPECT_EQ(hi.spec().bits, std::min(8, base.bits + 1));
    ASSERT_EQ(codec.record_bytes(), hi.record_bytes() + lo.record_bytes());
    EXPECT_EQ(codec.layout().split_offset, hi.record_bytes());
    EXPECT_EQ(codec.parts().size(), 2u);
    EXPECT_EQ(codec.codebook(), nullptr);
    for (int t = 0; t < 5; ++t) {
      const std::vector<float> x = gaussian(rng, d), q = gaussian(rng, d);
      std::vector<uint8_t> rec(codec.record_bytes()), want(codec.record_bytes());
      codec.encode_rotated(x.data(), rec.data());
      hi.encode_rotated(x.data(), want.data());
      lo.encode_rotated(x.data() + k, want.data() + hi.record_bytes());
      ASSERT_EQ(rec, want) << "d " << d << " split " << k;
      std::vector<float> got(static_cast<size_t>(d)), part(static_cast<size_t>(d));
      codec.decode_rotated(rec.data(), got.data());
      hi.decode_rotated(want.data(), part.data());
      lo.decode_rotated(want.data() + hi.record_bytes(), part.data() + k);
      ASSERT_EQ(got, part);
      float dot = 0;
      for (int i = 0; i < d; ++i) dot += q[size_t(i)] * got[size_t(i)];
      EXPECT_NEAR(codec.dot_rotated(q.data(), rec.data()), dot, 1e-4f * (1.0f + std::abs(dot)));
    }
  }
  // A part with more energy gets proportionally more error without the
  // extra bit: with the high-energy coordinates in the first part, the split
  // record's error is below the plain one's.
  CodecSpec plain = spec(CodecKind::Mse, 3), split = plain;
  split.split = 16;
  const Codec a(plain, 128), b(split, 128);
  double ea = 0, eb = 0;
  for (int t = 0; t < 50; ++t) {
    std::vector<float> x = gaussian(rng, 128);
    for (int i = 0; i < 16; ++i) x[size_t(i)] *= 6.0f;
    std::vector<uint8_t> ra(a.record_bytes()), rb(b.record_bytes());
    std::vector<float> xa(128), xb(128);
    a.encode_rotated(x.data(), ra.data());
    b.encode_rotated(x.data(), rb.data());
    a.decode_rotated(ra.data(), xa.data());
    b.decode_rotated(rb.data(), xb.data());
    for (int i = 0; i < 128; ++i) {
      ea += (xa[size_t(i)] - x[size_t(i)]) * (xa[size_t(i)] - x[size_t(i)]);
      eb += (xb[size_t(i)] - x[size_t(i)]) * (xb[size_t(i)] - x[size_t(i)]);
    }
  }
  EXPECT_LT(eb, 0.5 * ea);
}

TEST(Codec, BadSplitsThrow) {
  auto with_split = [](CodecSpec s, int k) { s.split = k; return s; };
  EXPECT_THROW(Codec(with_split(spec(CodecKind::Prod, 3), 32), 128), Error);
  EXPECT_THROW(Codec(with_split(spec(CodecKind::Affine, 4), 64), 128), Error);
  EXPECT_THROW(Codec(with_split(spec(CodecKind::Mse, 3), 128), 128), Error);
  EXPECT_THROW(Codec(with_split(spec(CodecKind::Mse, 3), -4), 128), Error);
  EXPECT_THROW(Codec(with_split(spec(CodecKind::Group, 3, 64), 32), 128), Error);  // 64 does not divide 32
  EXPECT_NO_THROW(Codec(with_split(spec(CodecKind::Group, 3, 32), 32), 128));
}

TEST(Codec, NonFiniteInputThrows) {
  for (const CodecSpec& s : all_specs()) {
    const Codec codec(s, 64, 0);
    std::vector<uint8_t> rec(codec.record_bytes());
    for (float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity(),
                      -std::numeric_limits<float>::infinity()}) {
      std::vector<float> x(64, 0.5f);
      x[17] = bad;
      EXPECT_THROW(codec.encode_rotated(x.data(), rec.data()), Error) << codec_name(s.kind);
    }
  }
  // A norm beyond fp16 range is an error, not a silent inf.
  const Codec mse(spec(CodecKind::Mse, 4), 64, 0);
  std::vector<float> big(64, 1e5f);
  std::vector<uint8_t> rec(mse.record_bytes());
  EXPECT_THROW(mse.encode_rotated(big.data(), rec.data()), Error);
}

TEST(Codec, MismatchedBuffersThrow) {
  const Codec codec(spec(CodecKind::Group, 4), 64, 0);
  std::vector<float> x(64, 1.0f), short_x(63, 1.0f);
  std::vector<uint8_t> rec(codec.record_bytes()), short_rec(codec.record_bytes() - 1);
  EXPECT_NO_THROW(codec.encode_rotated(std::span<const float>(x), std::span<uint8_t>(rec)));
  EXPECT_THROW(codec.encode_rotated(std::span<const float>(short_x), std::span<uint8_t>(rec)), Error);
  EXPECT_THROW(codec.encode_rotated(std::span<const float>(x), std::span<uint8_t>(short_rec)), Error);
  EXPECT_THROW(codec.decode_rotated(std::span<const uint8_t>(short_rec), std::span<float>(x)), Error);
  EXPECT_THROW(codec.decode_rotated(std::span<const uint8_t>(rec), std::span<float>(short_x)), Error);
  EXPECT_THROW(codec.dot_rotated(std::span<const float>(short_x), std::span<const uint8_t>(rec)), Error);
}

}  // namespace
}  // namespace turbokv::codec
