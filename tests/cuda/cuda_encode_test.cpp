// GPU encoding against the CPU codec: rotations and records must be
// bit-identical (the encoder runs the CPU's float operations in the CPU's
// order; see src/cuda/encode.cu), so GPU records decode on the CPU and CPU
// records feed the GPU kernels interchangeably.
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "codec/codec.h"
#include "codec/rotation.h"
#include "cuda/cuda_kv.h"
#include "util/error.h"
#include "util/fp16.h"
#include "util/rng.h"

namespace turbokv::cuda {
namespace {

constexpr uint64_t kSeed = 0x74757262'6f6b7631ull;

#define SKIP_WITHOUT_GPU() \
  if (!device_available()) GTEST_SKIP() << "no CUDA device"

std::vector<float> all_signs(int hd, int n_kv, int layer = 0) {
  std::vector<float> s;
  for (int g = 0; g < n_kv; ++g) {
    const auto v = hadamard_signs(codec::Rotation::make(hd, kSeed, layer, g));
    s.insert(s.end(), v.begin(), v.end());
  }
  return s;
}

// Test vectors (n, hd) with norms that vary by row, one all-zero row and
// one row with a single large outlier (the outermost grid cell).
std::vector<float> test_vectors(int n, int hd, uint64_t seed) {
  Rng rng(seed);
  std::vector<float> x(size_t(n) * hd);
  for (int i = 0; i < n; ++i) {
    const float size = 0.05f + float(i % 11);
    for (int j = 0; j < hd; ++j) x[size_t(i) * hd + j] = size * float(rng.normal());
  }
  if (n > 3) {
    for (int j = 0; j < hd; ++j) x[size_t(1) * hd + j] = 0.0f;
    x[size_t(2) * hd + 5] = 300.0f;
  }
  return x;
}

TEST(CudaRotation, MatchesCpuBitForBit) {
  SKIP_WITHOUT_GPU();
  for (int hd : {64, 128}) {
    const int n_kv = 3, n = 41;  // vectors cycle through the kv heads
    const auto signs = all_signs(hd, n_kv);
    DeviceRotations rot(signs, n_kv, hd);
    const auto x = test_vectors(n, hd, 11);
    DeviceBuffer dx = upload_vector(x), dy(x.size() * sizeof(float)), dz(x.size() * sizeof(float));
    rot.forward(dx.as<float>(), dy.as<float>(), size_t(n), 1);
    rot.inverse(dy.as<float>(), dz.as<float>(), size_t(n), 1);
    std::vector<float> y(x.size()), z(x.size()), ref(static_cast<size_t>(hd)), back(static_cast<size_t>(hd));
    dy.download(y.data(), y.size() * sizeof(float));
    dz.download(z.data(), z.size() * sizeof(float));
    for (int v = 0; v < n; ++v) {
      const auto cpu = codec::Rotation::make(hd, kSeed, 0, v % n_kv);
      cpu.forward(&x[size_t(v) * hd], ref.data());
      cpu.inverse(ref.data(), back.data());
      ASSERT_EQ(0, std::memcmp(ref.data(), &y[size_t(v) * hd], sizeof(float) * hd)) << "forward, hd " << hd << " vector " << v;
      ASSERT_EQ(0, std::memcmp(back.data(), &z[size_t(v) * hd], sizeof(float) * hd)) << "inverse, hd " << hd << " vector " << v;
    }
  }
}

struct EncodeCase {
  codec::CodecSpec spec;
  std::string label;
};

std::vector<EncodeCase> encode_cases(int hd) {
  using codec::CodecKind;
  using codec::ScaleRule;
  std::vector<EncodeCase> out;
  for (int bits : {2, 3, 4, 5, 8}) {  // 5: the near tiers of turbo4, turbo4v2, turbo0v4; 8: turbo8
    for (int g : {16, 32, 64, 128}) {
      if (g > hd) continue;
      for (ScaleRule rule : {ScaleRule::Auto, ScaleRule::LeastSquares, ScaleRule::Unbiased}) {
        for (bool search : {false, true}) {
          codec::CodecSpec s{CodecKind::Group, bits, g, codec::MseCodebook::Sphere};
          s.scale_rule = rule;
          s.scale_search = search;
          out.push_back({s, "group" + std::to_string(bits) + "g" + std::to_string(g) + " rule " +
                                std::to_string(int(rule)) + (search ? " search" : "")});
        }
      }
    }
    for (ScaleRule rule : {ScaleRule::Auto, ScaleRule::MatchedNorm, ScaleRule::LeastSquares}) {
      for (bool search : {false, true}) {
        for (auto cb : {codec::MseCodebook::Sphere, codec::MseCodebook::Gaussian}) {
          codec::CodecSpec s{CodecKind::Mse, bits, 0, cb};
          s.scale_rule = rule;
          s.scale_search = search;
          out.push_back({s, "mse" + std::to_string(bits) + " cb " + std::to_string(int(cb)) + " rule " +
                                std::to_string(int(rule)) + (search ? " search" : "")});
        }
      }
    }
  }
  return out;
}

// Encodes (n_tok, n_kv, hd) vectors on both sides and compares every record
// byte; with calibration, x' = (x - mean) * channel_scale first, as the CPU
// cache computes it.
void check_encode(const codec::CodecSpec& spec, int hd, bool calibrated, const std::string& label) {
  const int n_kv = 2, n_tok = 97, capacity = 112;
  const auto signs = all_signs(hd, n_kv);
  DeviceRotations rot(signs, n_kv, hd);
  const auto fmt = StreamFormat::records(spec);
  Encoder enc(fmt, hd, n_kv, &rot);
  const auto x = test_vectors(n_tok * n_kv, hd, uint64_t(hd) * 977 + uint64_t(spec.bits));
  std::vector<float> mean(size_t(n_kv) * hd), cscale(size_t(n_kv) * hd);
  Rng rng(5);
  for (auto& v : mean) v = round_fp16(float(rng.normal()) * 0.5f);
  for (auto& v : cscale) v = round_fp16(0.5f + float(rng.uniform()));
  DeviceBuffer dx = upload_vector(x), dmean = upload_vector(mean), dscale = upload_vector(cscale);
  const size_t rb = enc.row_bytes();
  DeviceBuffer cache(size_t(n_kv) * capacity * rb);
  cache.fill(0xAB);
  EncodeArgs a;
  a.x = dx.as<float>();
  a.n_tok = n_tok;
  a.first_pos = 7;  // records [7, 7 + n_tok) of each kv head
  a.cache = cache.data();
  a.capacity = capacity;
  if (calibrated) {
    a.mean = dmean.as<float>();
    a.channel_scale = dscale.as<float>();
  }
  enc.encode(a);
  std::vector<uint8_t> gpu(cache.bytes());
  cache.download(gpu.data(), gpu.size());

  const codec::Codec c(spec, hd);
  std::vector<uint8_t> cpu(rb);
  std::vector<float> xin(static_cast<size_t>(hd)), dec_gpu(static_cast<size_t>(hd)), dec_cpu(static_cast<size_t>(hd));
  int mismatched = 0;
  for (int t = 0; t < n_tok; ++t) {
    for (int g = 0; g < n_kv; ++g) {
      const float* src = &x[(size_t(t) * n_kv + g) * hd];
      for (int i = 0; i < hd; ++i) {
        const float centered = src[i] - (calibrated ? mean[size_t(g) * hd + i] : 0.0f);
        xin[size_t(i)] = calibrated ? centered * cscale[size_t(g) * hd + i] : src[i];
      }
      const auto r = codec::Rotation::make(hd, kSeed, 0, g);
      c.encode(r, xin.data(), cpu.data());
      const uint8_t* rec = &gpu[(size_t(g) * capacity + 7 + t) * rb];
      if (std::memcmp(cpu.data(), rec, rb) != 0) {
        if (++mismatched <= 3) {
          // Records must decode to the same vector on the CPU either way.
          c.decode(r, rec, dec_gpu.data());
          c.decode(r, cpu.data(), dec_cpu.data());
          ADD_FAILURE() << label << " hd " << hd << ": record of token " << t << " kv head " << g
                        << " differs; first decoded element gpu " << dec_gpu[0] << " cpu " << dec_cpu[0];
        }
      }
    }
  }
  EXPECT_EQ(mismatched, 0) << label << " hd " << hd << (calibrated ? " calibrated" : "") << ": " << mismatched
                           << " of " << n_tok * n_kv << " records differ";
  // Positions outside [7, 7 + n_tok) are untouched.
  for (int g = 0; g < n_kv; ++g) {
    EXPECT_EQ(gpu[(size_t(g) * capacity + 6) * rb], 0xAB);
    EXPECT_EQ(gpu[(size_t(g) * capacity + 7 + n_tok) * rb], 0xAB);
  }
}

TEST(CudaEncode, RecordsMatchCpuCodecBitForBit) {
  SKIP_WITHOUT_GPU();
  for (int hd : {64, 128}) {
    for (const auto& c : encode_cases(hd)) check_encode(c.spec, hd, false, c.label);
  }
}

TEST(CudaEncode, CalibratedRecordsMatchCpu) {
  SKIP_WITHOUT_GPU();
  codec::CodecSpec keys{codec::CodecKind::Group, 4, 64, codec::MseCodebook::Sphere};  // turbo4 keys
  keys.scale_rule = codec::ScaleRule::LeastSquares;
  keys.scale_search = true;
  for (int hd : {64, 128}) check_encode(keys, hd, true, "turbo4 keys");
}

TEST(CudaEncode, AppendsOneTokenPerSequenceAtItsOwnPosition) {
  SKIP_WITHOUT_GPU();
  const int hd = 128, n_kv = 2, n_seq = 3, capacity = 32;
  codec::CodecSpec spec{codec::CodecKind::Group, 3, 32, codec::MseCodebook::Sphere};
  const auto signs = all_signs(hd, n_kv);
  DeviceRotations rot(signs, n_kv, hd);
  Encoder enc(StreamFormat::records(spec), hd, n_kv, &rot);
  const auto x = test_vectors(n_seq * n_kv, hd, 3);
  const std::vector<int> pos = {5, 0, 17};
  DeviceBuffer dx = upload_vector(x), dpos = upload_vector(pos);
  const size_t rb = enc.row_bytes();
  DeviceBuffer cache(size_t(n_seq) * n_kv * capacity * rb);
  cache.fill(0);
  EncodeArgs a;
  a.x = dx.as<float>();
  a.n_seq = n_seq;
  a.n_tok = 1;
  a.pos0 = dpos.as<int>();
  a.cache = cache.data();
  a.capacity = capacity;
  enc.encode(a);
  std::vector<uint8_t> gpu(cache.bytes()), cpu(rb);
  cache.download(gpu.data(), gpu.size());
  const codec::Codec c(spec, hd);
  for (int s = 0; s < n_seq; ++s) {
    for (int g = 0; g < n_kv; ++g) {
      c.encode(codec::Rotation::make(hd, kSeed, 0, g), &x[(size_t(s) * n_kv + g) * hd], cpu.data());
      EXPECT_EQ(0, std::memcmp(cpu.data(), &gpu[((size_t(s) * n_kv + g) * capacity + pos[size_t(s)]) * rb], rb))
          << "sequence " << s << " kv head " << g;
    }
  }
}

TEST(CudaEncode, Fp16RowsRoundToNearestEven) {
  SKIP_WITHOUT_GPU();
  const int hd = 64, n_kv = 3, n_tok = 19, capacity = 32;
  Encoder enc(StreamFormat::rows_fp16(), hd, n_kv, nullptr);
  auto x = test_vectors(n_tok * n_kv, hd, 9);
  x[3] = 1e-7f;  // fp16 subnormal
  DeviceBuffer dx = upload_vector(x), cache(size_t(n_kv) * capacity * hd * 2);
  EncodeArgs a;
  a.x = dx.as<float>();
  a.n_tok = n_tok;
  a.cache = cache.data();
  a.capacity = capacity;
  enc.encode(a);
  std::vector<fp16_t> rows(size_t(n_kv) * capacity * hd);
  cache.download(rows.data(), rows.size() * 2);
  for (int t = 0; t < n_tok; ++t)
    for (int g = 0; g < n_kv; ++g)
      for (int i = 0; i < hd; ++i)
        ASSERT_EQ(rows[(size_t(g) * capacity + t) * hd + i], f32_to_fp16(x[(size_t(t) * n_kv + g) * hd + i]));
}

TEST(CudaEncode, NonFiniteInputThrowsLikeTheCpuCodec) {
  SKIP_WITHOUT_GPU();
  const int hd = 64, n_kv = 1;
  codec::CodecSpec spec{codec::CodecKind::Group, 4, 16, codec::MseCodebook::Sphere};
  DeviceRotations rot(all_signs(hd, n_kv), n_kv, hd);
  Encoder enc(StreamFormat::records(spec), hd, n_kv, &rot);
  auto x = test_vectors(4, hd, 1);
  x[size_t(3) * hd + 9] = std::numeric_limits<float>::quiet_NaN();
  DeviceBuffer dx = upload_vector(x), cache(size_t(16) * enc.row_bytes());
  EncodeArgs a;
  a.x = dx.as<float>();
  a.n_tok = 4;
  a.cache = cache.data();
  a.capacity = 16;
  EXPECT_THROW(enc.encode(a), Error);
}

// expand_records: what each record decodes to on the CPU (decode_rotated),
// rounded to nearest even, bit for bit: every width 1 to 8, mse and group.
TEST(CudaEncode, ExpandedRecordsAreTheCpuDecodeInFp16) {
  SKIP_WITHOUT_GPU();
  for (int hd : {64, 128}) {
    for (int bits = 1; bits <= 8; ++bits) {
      for (const codec::CodecSpec& spec : {codec::CodecSpec{codec::CodecKind::Group, bits, 16, codec::MseCodebook::Sphere},
                                           codec::CodecSpec{codec::CodecKind::Group, bits, hd, codec::MseCodebook::Sphere},
                                           codec::CodecSpec{codec::CodecKind::Mse, bits, 0, codec::MseCodebook::Sphere}}) {
        const codec::Codec c(spec, hd);
        const int n = 37;
        const auto x = test_vectors(n, hd, uint64_t(bits) * 131 + uint64_t(hd));
        const size_t rb = c.record_bytes();
        std::vector<uint8_t> recs(size_t(n) * rb);
        for (int i = 0; i < n; ++i) c.encode_rotated(&x[size_t(i) * hd], &recs[size_t(i) * rb]);
        DeviceBuffer drec = upload_vector(recs), drows(size_t(n) * hd * 2);
        expand_records(StreamFormat::records(spec), hd, drec.data(), size_t(n), drows.data());
        std::vector<fp16_t> rows(size_t(n) * hd);
        drows.download(rows.data(), rows.size() * 2);
        std::vector<float> dec(static_cast<size_t>(hd));
        int mismatched = 0;
        for (int i = 0; i < n; ++i) {
          c.decode_rotated(&recs[size_t(i) * rb], dec.data());
          for (int e = 0; e < hd; ++e) mismatched += rows[size_t(i) * hd + e] != f32_to_fp16(dec[size_t(e)]) ? 1 : 0;
        }
        EXPECT_EQ(mismatched, 0) << codec::codec_name(spec.kind) << bits << " group " << spec.group_size << " hd " << hd;
      }
    }
  }
  DeviceBuffer any(4096);
  EXPECT_THROW(expand_records(StreamFormat::rows_fp16(), 64, any.data(), 1, any.data()), Error);
  const codec::CodecSpec prod{codec::CodecKind::Prod, 3, 0, codec::MseCodebook::Sphere};
  EXPECT_THROW(expand_records(StreamFormat::records(prod), 64, any.data(), 1, any.data()), Error);
}

TEST(CudaEncode, UnsupportedFormatsAreRejectedByName) {
  SKIP_WITHOUT_GPU();
  DeviceRotations rot(all_signs(64, 1), 1, 64);
  codec::CodecSpec prod{codec::CodecKind::Prod, 3, 0, codec::MseCodebook::Sphere};
  EXPECT_THROW(Encoder(StreamFormat::records(prod), 64, 1, &rot), Error);
  codec::CodecSpec split{codec::CodecKind::Mse, 3, 0, codec::MseCodebook::Sphere};
  split.split = 16;  // outlier channels
  EXPECT_THROW(Encoder(StreamFormat::records(split), 64, 1, &rot), Error);
  const codec::CodecSpec affine{codec::CodecKind::Affine, 4, 64, codec::MseCodebook::Sphere};
  EXPECT_THROW(Encoder(StreamFormat::records(affine), 64, 1, &rot), Error);
  EXPECT_THROW(hadamard_signs(codec::Rotation::make(80, kSeed)), Error);
}

}  // namespace
}  // namespace turbokv::cuda
