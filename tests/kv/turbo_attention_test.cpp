// Kernel parity: the fused SIMD attention over compressed records
// (kv/turbo_attention.h) against its scalar reference, on odd sizes.
#include "kv/turbo_attention.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "codec/bitpack.h"
#include "codec/codec.h"
#include "kv/turbo_attention_half.h"
#include "kv/turbo_attention_int8.h"
#include "hwy/targets.h"
#include "util/fp16.h"
#include "util/rng.h"

namespace turbokv::kv::detail {
namespace {

// Bounds the float rounding between two evaluations of the same sums in a
// different order (chunk-order lanes, 16-lane partial sums, vectorized exp
// with ~1 ulp error) over up to 1023 positions: relative L2 error of the
// normalized output and absolute error of the log-sum-exp.
constexpr double kReassociationTolerance = 2e-5;

struct Tolerance {
  double lse;     // absolute, on the log-sum-exp
  double output;  // relative L2, on the normalized output
};
constexpr Tolerance kReassociation{kReassociationTolerance, kReassociationTolerance};

// Bounds the fp16 rounding of the Half kernels (turbo_attention_half.h):
// queries, centroids, products and short partial sums rounded to fp16
// (2^-11 relative), values summed in fp16 over a block. The log-sum-exp
// error is absolute, so it grows with the scores: these cases reach |s| ~ 50
// (query and key norms vary 13x) and errors of 0.014; the outputs, 0.0063.
// A wrong index or lane moves either by O(1), a scale off by 1% the output
// by 1%.
constexpr Tolerance kHalfProductTolerance{2.5e-2, 1e-2};
// Bounds the int8 key dots (turbo_attention_int8.h): query and codebook
// rounded to 127 steps of their largest magnitude move a dot by about 0.6%
// of its spread, so a score by up to ~0.3 where these cases reach |s| ~ 50;
// log-sum-exps then move by up to 0.19 and outputs by 9.1% (measured). The
// dot-level test (Int8ScoresStayWithinTheirRoundingBound) pins each dot to
// fp32 rounding; these bounds check that the kernels sit in the job.
constexpr Tolerance kInt8ScoreTolerance{0.25, 0.12};

struct Case {
  codec::CodecSpec key, value;
  int head_dim, n_q, begin, end;
};

std::string name(const Case& c) {
  return std::string(codec::codec_name(c.key.kind)) + std::to_string(c.key.bits) + "g" +
         std::to_string(c.key.effective_group()) + "/" + codec::codec_name(c.value.kind) +
         std::to_string(c.value.bits) + "g" + std::to_string(c.value.effective_group()) + " hd " +
         std::to_string(c.head_dim) + " n_q " + std::to_string(c.n_q) + " [" + std::to_string(c.begin) + ", " +
         std::to_string(c.end) + ")";
}

struct States {
  std::vector<float> m, d, o;
};

// Encodes random vectors, runs the kernel and the reference on the same job,
// and compares the normalized outputs and log-sum-exps.
void check(const Case& c, StreamRead key_read = StreamRead::Fused, StreamRead value_read = StreamRead::Fused,
           KernelPrecision precision = KernelPrecision::F32, Tolerance tolerance = kReassociation) {
  const int hd = c.head_dim;
  const codec::Codec kc(c.key, hd, 7), vc(c.value, hd, 8);
  Rng rng(uint64_t(hd) * 131 + uint64_t(c.n_q) * 7 + uint64_t(c.end));
  std::vector<uint8_t> krec(size_t(c.end) * kc.record_bytes()), vrec(size_t(c.end) * vc.record_bytes());
  std::vector<float> x(static_cast<size_t>(hd));
  for (int p = 0; p < c.end; ++p) {
    const float size = 0.5f + float(p % 7);  // norms vary by position
    for (auto& v : x) v = size * float(rng.normal());
    kc.encode_rotated(x.data(), krec.data() + size_t(p) * kc.record_bytes());
    for (auto& v : x) v = float(rng.normal());
    vc.encode_rotated(x.data(), vrec.data() + size_t(p) * vc.record_bytes());
  }
  std::vector<float> q(size_t(c.n_q) * hd), sketch(q.size()), shift(size_t(c.n_q));
  for (auto& v : q) v = float(rng.normal());
  for (auto& v : shift) v = float(rng.normal());
  const bool prod = c.key.kind == codec::CodecKind::Prod;
  if (prod) {
    for (int j = 0; j < c.n_q; ++j) kc.sketch_query(q.data() + size_t(j) * hd, sketch.data() + size_t(j) * hd);
  }

  auto run = [&](AttendChunkFn fn) {
    States st{std::vector<float>(size_t(c.n_q)), std::vector<float>(size_t(c.n_q)),
              std::vector<float>(size_t(c.n_q) * hd)};
    std::vector<float> work(chunk_work_floats(hd));
    ChunkJob job;
    job.keys = StreamSource{key_read, &kc, krec.data(), nullptr};
    job.values = StreamSource{value_read, &vc, vrec.data(), nullptr};
    job.head_dim = hd;
    job.n_q = c.n_q;
    job.begin = c.begin;
    job.end = c.end;
    job.q = q.data();
    job.q_sketch = prod ? sketch.data() : nullptr;
    job.shift = shift.data();
    job.scale = 1.0f / std::sqrt(float(hd));
    job.m = st.m.data();
    job.d = st.d.data();
    job.o = st.o.data();
    fn(job, work.data());
    return st;
  };
  const States fast = run(select_attend_chunk(precision));
  const States ref = run(&attend_chunk_reference);
  for (int j = 0; j < c.n_q; ++j) {
    ASSERT_GT(ref.d[size_t(j)], 0.0f);
    const double lse_fast = fast.m[size_t(j)] + std::log(double(fast.d[size_t(j)]));
    const double lse_ref = ref.m[size_t(j)] + std::log(double(ref.d[size_t(j)]));
    EXPECT_NEAR(lse_fast, lse_ref, tolerance.lse) << name(c) << " head " << j;
    double num = 0, den = 0;
    for (int i = 0; i < hd; ++i) {
      const double a = fast.o[size_t(j) * hd + i] / double(fast.d[size_t(j)]);
      const double b = ref.o[size_t(j) * hd + i] / double(ref.d[size_t(j)]);
      num += (a - b) * (a - b);
      den += b * b;
    }
    EXPECT_LT(std::sqrt(num / den), tolerance.output) << name(c) << " head " << j;
  }
}

codec::CodecSpec mse(int b) { return {codec::CodecKind::Mse, b, 0, codec::MseCodebook::Sphere}; }
codec::CodecSpec group(int b, int g) { return {codec::CodecKind::Group, b, g, codec::MseCodebook::Sphere}; }

codec::CodecSpec split_spec(codec::CodecSpec s, int k) {
  s.split = k;
  return s;
}
const int kHeadDims[] = {8, 64, 80, 96, 128, 256};
const int kBits[] = {2, 3, 4, 5, 8};
const int kGqa[] = {1, 2, 4, 8};

TEST(TurboAttention, MseMatchesReferenceOnOddSizes) {
  for (int hd : kHeadDims) {
    for (int b : kBits) {
      for (int nq : kGqa) {
        for (int len : {1, 15, 17}) check({mse(b), mse(b), hd, nq, 0, len});
      }
      check({mse(b), mse(b), hd, 2, 0, 1023});
    }
  }
}

TEST(TurboAttention, GroupMatchesReferenceOnOddSizes) {
  for (int hd : kHeadDims) {
    for (int g : {16, 32, 64, 128}) {
      if (hd % g != 0) continue;
      for (int b : kBits) {
        for (int nq : kGqa) {
          for (int len : {1, 15, 17}) check({group(b, g), group(b, g), hd, nq, 0, len});
        }
        check({group(b, g), group(b, g), hd, 4, 0, 1023});
      }
    }
  }
}

// Chunks that start mid-sequence, GQA groups that split into pieces (3, 5,
// 7 heads), and keys and values with different layouts.
TEST(TurboAttention, OffsetsPiecesAndMixedLayouts) {
  for (int nq : {3, 5, 6, 7}) check({mse(4), group(3, 32), 128, nq, 37, 1023});
  check({group(4, 64), mse(2), 128, 8, 512, 1023});
  check({mse(3), group(8, 16), 96, 2, 100, 117});
  check({group(2, 128), mse(8), 256, 1, 1, 2});
}

// Every instruction set this build dispatches to that the CPU runs (AVX-512,
// AVX2, SSE4, ... as available), not only the best one: each has its own
// chunk geometry and centroid lookup (one 16-lane permute for a 4-bit
// codebook on AVX-512, two 8-lane permutes and a select on AVX2).
TEST(TurboAttention, EveryTargetMatchesReference) {
  for (const int64_t target : hwy::SupportedAndGeneratedTargets()) {
    hwy::SetSupportedTargetsForTest(target);
    SCOPED_TRACE(hwy::TargetName(target));
    std::printf("target %s\n", hwy::TargetName(target));
    for (int hd : {64, 80, 128}) {
      for (int b : kBits) {
        for (int nq : {1, 2, 4, 8}) check({mse(b), mse(b), hd, nq, 0, 67});
        check({group(b, 16), group(b, 16), hd, 2, 5, 70});
      }
    }
    check({mse(4), split_spec(mse(3), 32), 128, 2, 0, 40});
  }
  hwy::SetSupportedTargetsForTest(0);
}

// prod keys and values, and any layout read as StreamRead::Codec, take the
// codec's scalar path inside the kernel.
TEST(TurboAttention, ScalarFallbacksMatchReference) {
  const codec::CodecSpec prod{codec::CodecKind::Prod, 4, 0, codec::MseCodebook::Sphere};
  const codec::CodecSpec affine{codec::CodecKind::Affine, 4, 64, codec::MseCodebook::Sphere};
  check({prod, mse(4), 64, 4, 0, 17}, StreamRead::Codec, StreamRead::Fused);
  check({mse(4), affine, 128, 2, 3, 300}, StreamRead::Fused, StreamRead::Codec);
  check({mse(4), mse(4), 128, 2, 0, 100}, StreamRead::Codec, StreamRead::Codec);
  // A split record with a part the kernels do not read (6 bits) is read
  // whole by the codec.
  EXPECT_FALSE(fused_layout_supported(codec::Codec(split_spec(mse(5), 32), 128)));
  check({split_spec(mse(5), 32), split_spec(group(5, 16), 16), 128, 4, 0, 90}, StreamRead::Codec, StreamRead::Codec);
  check({split_spec(mse(5), 32), split_spec(mse(3), 64), 128, 2, 0, 90});  // kernels refuse the 6-bit part too
}

// Affine records (x = scale * code + bias per group of 32 or 64) are read by
// the group kernels with the codes as their codebook, the biases added apart:
// alone, and beside other layouts.
TEST(TurboAttention, AffineMatchesReferenceOnOddSizes) {
  auto affine = [](int b, int g) { return codec::CodecSpec{codec::CodecKind::Affine, b, g, codec::MseCodebook::Sphere}; };
  for (int hd : {64, 96, 128, 256}) {
    for (int b : {4, 8}) {
      for (int g : {32, 64}) {
        if (hd % g != 0) continue;
        EXPECT_TRUE(fused_layout_supported(codec::Codec(affine(b, g), hd)));
        for (int nq : kGqa) {
          for (int len : {1, 15, 17}) check({affine(b, g), affine(b, g), hd, nq, 0, len});
        }
        check({affine(b, g), mse(3), hd, 4, 5, 1023});
        check({mse(4), affine(b, g), hd, 2, 0, 300});
        check({affine(b, g), affine(b, g), hd, 8, 3, 200}, StreamRead::Fused, StreamRead::Fused, KernelPrecision::Half);
      }
    }
  }
}

// prod records (the QJL variant) are read by the mse kernels at B - 1 bits,
// their sign bits added apart: the sketch's dot for scores, and for values
// S^T applied once per job to the weighted signs. Keys, values and both,
// beside other layouts; 2-bit prod (a 1-bit mse part) stays scalar.
TEST(TurboAttention, ProdMatchesReferenceOnOddSizes) {
  auto prod = [](int b) { return codec::CodecSpec{codec::CodecKind::Prod, b, 0, codec::MseCodebook::Sphere}; };
  for (int hd : {64, 128, 256}) {
    for (int b : {3, 4, 5}) {
      EXPECT_TRUE(fused_layout_supported(codec::Codec(prod(b), hd))) << b << " " << hd;
      for (int nq : kGqa) {
        for (int len : {1, 15, 17}) check({prod(b), prod(b), hd, nq, 0, len});
      }
      check({prod(b), mse(3), hd, 4, 5, 1023});
      check({mse(4), prod(b), hd, 2, 0, 300});
      check({prod(b), prod(b), hd, 8, 3, 200}, StreamRead::Fused, StreamRead::Fused, KernelPrecision::Half);
    }
  }
  // Head sizes whose mse part chunks only at narrow vectors (5 bits at 72:
  // 4-lane chunks of 8) while the sign bits are read a whole vector at a time.
  for (int hd : {8, 72}) check({prod(5), prod(5), hd, 4, 0, 67});
  EXPECT_FALSE(fused_layout_supported(codec::Codec(prod(2), 128)));
  check({prod(2), prod(2), 128, 4, 0, 100});  // read by the codec
}

// 5-bit records (turbo4's near tier, and the outlier part of a 4-bit split
// record) take the fused kernels wherever vectors have 8 or 16 lanes.
TEST(TurboAttention, FiveBitRecordsAreFused) {
#if HWY_ARCH_X86
  if ((hwy::SupportedTargets() & (HWY_AVX2 | HWY_AVX3)) == 0) GTEST_SKIP() << "no AVX2";
  for (int hd : {64, 128, 256}) {
    EXPECT_TRUE(fused_layout_supported(codec::Codec(mse(5), hd))) << hd;
    EXPECT_TRUE(fused_layout_supported(codec::Codec(group(5, 32), hd))) << hd;
  }
#else
  GTEST_SKIP() << "x86 only";
#endif
}

// Split records (outlier channels): each part read by its own kernels (2-
// to 5-bit parts of 16..96 elements, chunked at whatever width divides
// them), the two parts' dots added before the softmax.
TEST(TurboAttention, SplitRecordsMatchReference) {
  EXPECT_TRUE(fused_layout_supported(codec::Codec(split_spec(mse(3), 32), 128)));
  EXPECT_TRUE(fused_layout_supported(codec::Codec(split_spec(mse(4), 32), 128)));  // a 5-bit outlier part
  for (int hd : {64, 96, 128, 256}) {
    for (int b : {2, 3, 4}) {
      for (int k : {16, 32, 64}) {
        if (k >= hd) continue;
        for (int nq : kGqa) check({split_spec(mse(b), k), split_spec(mse(b), k), hd, nq, 0, 67});
        check({split_spec(group(b, 16), k), split_spec(group(b, 16), k), hd, 4, 3, 300});
      }
    }
  }
  check({split_spec(mse(3), 32), mse(4), 128, 4, 0, 1023});
  check({mse(2), split_spec(mse(3), 64), 128, 5, 17, 200});
}

// The narrow-product kernels (KernelPrecision::Half), where the CPU has
// them: int8 key scores (AVX-512 VNNI and VBMI) and fp16 products
// (AVX512-FP16) for one-scale records (mse, and group with one group a
// record) at 2, 3 and 4 bits; the other layouts and head sizes keep the
// fp32 kernels under the same precision. The score kernels are checked with
// the values read by the codec's scalar reader, the value kernels with the
// keys read so, then both together.
TEST(TurboAttention, HalfProductsMatchReference) {
  FusedKernels probe;
  const bool fp16 = plan_half_kernels(4, 128, probe), int8 = plan_int8_scores(4, 128, probe);
  if (!fp16 && !int8) GTEST_SKIP() << "neither AVX512-FP16 nor AVX-512 VNNI and VBMI on this CPU";
  const KernelPrecision half = KernelPrecision::Half;
  const Tolerance keys = int8 ? kInt8ScoreTolerance : kHalfProductTolerance;
  const Tolerance both{std::max(keys.lse, kHalfProductTolerance.lse),
                       std::max(keys.output, kHalfProductTolerance.output)};
  auto check_all = [&](const Case& c) {
    check(c, StreamRead::Fused, StreamRead::Codec, half, keys);
    check(c, StreamRead::Codec, StreamRead::Fused, half, kHalfProductTolerance);
    check(c, StreamRead::Fused, StreamRead::Fused, half, both);
  };
  for (int hd : {64, 128, 256}) {
    for (int b : {2, 3, 4}) {
      const int g = std::min(hd, 128);  // one group a record up to 128
      for (int nq : {1, 2, 3, 4, 8}) {
        for (int len : {1, 15, 17, 67}) {
          check_all({mse(b), mse(b), hd, nq, 0, len});
          check_all({group(b, g), group(b, g), hd, nq, 3, len + 3});
        }
      }
      check_all({mse(b), mse(b), hd, 4, 0, 1023});
    }
  }
  // Head sizes the narrow kernels read in part: the first 64 elements, and
  // the rest with the fp32 kernels (two segments).
  for (int hd : {80, 96}) {
    for (int b : {2, 3, 4}) check_all({mse(b), mse(b), hd, 4, 0, 67});
  }
  // Mixed with layouts the narrow kernels do not take.
  check_all({mse(3), group(4, 16), 128, 4, 0, 300});
  check_all({split_spec(mse(3), 32), mse(2), 128, 2, 0, 90});
  check_all({mse(5), mse(3), 128, 4, 5, 200});
  // Split records whose parts the narrow kernels read: a 64-element 4-bit
  // part after a 5-bit one, and two 128-element parts (3 and 4 bits).
  check_all({split_spec(mse(4), 64), split_spec(mse(4), 64), 128, 4, 0, 90});
  check_all({split_spec(mse(3), 128), split_spec(mse(3), 128), 256, 4, 1, 91});
}

// The int8 score kernels (turbo_attention_int8.h) alone, dot by dot. Each
// dot must be the integer dot of the rounded query (q8 = round(q / Δq),
// Δq = max |q| / 127) and codebook (c8 = round(c / Δc), Δc = max |c| /
// 127), times Δq Δc and the record's scale s (x̂ = s c), to fp32 rounding;
// and that may differ from the exact <q, x̂> only by the rounding:
//   |error| <= s (Δq/2 Σ|c_i| + Δc/2 Σ|q_i| + d Δq Δc / 4) + fp32 rounding.
// The first catches any slip of index, lane, bias or scale (a 1% scale, an
// offset of 127 for 128); the second, that the design's error is what
// this comment says.
TEST(TurboAttention, Int8ScoresStayWithinTheirRoundingBound) {
  FusedKernels k;
  if (!plan_int8_scores(4, 128, k)) GTEST_SKIP() << "no AVX-512 VNNI and VBMI on this CPU";
  Rng rng(5);
  for (int hd : {64, 128, 192, 256}) {
    for (int b : {2, 3, 4}) {
      for (const codec::CodecSpec& spec : {mse(b), group(b, std::min(hd, 128))}) {
        if (spec.effective_group() < hd) continue;  // one scale a record only
        const codec::Codec c(spec, hd, 11);
        ASSERT_TRUE(plan_int8_scores(b, hd, k)) << b << " " << hd;
        EXPECT_EQ(k.lanes, 64);
        EXPECT_EQ(k.sub, 1);  // natural element order
        const int n = 61;     // a block's last step has one record
        const size_t rb = c.record_bytes();
        std::vector<uint8_t> rec(size_t(n) * rb);
        std::vector<float> x(static_cast<size_t>(hd)), xhat(size_t(n) * hd);
        for (int r = 0; r < n; ++r) {
          const float size = 0.5f + float(r % 5);
          for (auto& v : x) v = size * float(rng.normal());
          c.encode_rotated(x.data(), rec.data() + size_t(r) * rb);
          c.decode_rotated(rec.data() + size_t(r) * rb, xhat.data() + size_t(r) * hd);
        }
        const auto cents = c.codebook()->centroids();
        std::vector<float> table(256 + 32, 0.0f);  // the codebook repeated to 16 entries (FillTable)
        for (size_t i = 0; i < 16; ++i) table[i] = cents[i % cents.size()];
        float cmax = 0;
        for (float v : cents) cmax = std::max(cmax, std::fabs(v));
        const float cstep = cmax / 127.0f;
        std::vector<int> c8(cents.size());
        for (size_t i = 0; i < cents.size(); ++i) c8[i] = int(std::nearbyint(cents[i] * (1.0f / cstep)));
        for (int piece = 0; piece < 3; ++piece) {
          const int nq = 1 << piece;
          std::vector<float> q(size_t(nq) * hd), dots(size_t(nq) * kAttentionBlock);
          for (auto& v : q) v = float(rng.normal());
          k.score[piece](rec.data(), rb, c.layout().index_offset, n, hd, hd, hd, q.data(), table.data(), dots.data());
          for (int j = 0; j < nq; ++j) {
            const float* qj = q.data() + size_t(j) * hd;
            double qmax = 0, qabs = 0;
            for (int i = 0; i < hd; ++i) qmax = std::max(qmax, double(std::fabs(qj[i]))), qabs += std::fabs(qj[i]);
            const double dq = qmax / 127, dc = cmax / 127.0;
            const float qstep = float(qmax) / 127.0f;
            std::vector<int> q8(static_cast<size_t>(hd));
            for (int i = 0; i < hd; ++i) q8[size_t(i)] = int(std::nearbyint(qj[i] * (1.0f / qstep)));
            for (int r = 0; r < n; ++r) {
              const uint8_t* p = rec.data() + size_t(r) * rb;
              const float scale = fp16_to_f32(fp16_t(p[0] | p[1] << 8));
              std::vector<uint8_t> idx(static_cast<size_t>(hd));
              codec::unpack_bits(p + c.layout().index_offset, size_t(hd), b, idx.data());
              int64_t dot8 = 0;
              double exact = 0, xabs = 0;
              for (int i = 0; i < hd; ++i) {
                dot8 += int64_t(q8[size_t(i)]) * c8[idx[size_t(i)]];
                exact += double(qj[i]) * xhat[size_t(r) * hd + i];
                xabs += std::fabs(xhat[size_t(r) * hd + i]);
              }
              const double rounded = double(dot8) * qstep * cstep * scale;
              const float got = dots[size_t(j) * kAttentionBlock + r];
              const std::string what = std::string(codec::codec_name(spec.kind)) + std::to_string(b) + " hd " +
                                       std::to_string(hd) + " n_q " + std::to_string(nq) + " head " +
                                       std::to_string(j) + " record " + std::to_string(r);
              EXPECT_NEAR(got, rounded, 1e-5 * std::fabs(rounded) + 1e-6) << what;
              const double bound = dq / 2 * xabs + scale * (dc / 2 * qabs + hd * dq * dc / 4) + 1e-5 * std::fabs(exact);
              EXPECT_NEAR(got, exact, bound) << what;
            }
          }
        }
      }
    }
  }
  EXPECT_FALSE(plan_int8_scores(4, 96, k));   // not whole chunks of 64
  EXPECT_FALSE(plan_int8_scores(4, 320, k));  // more than 4 chunks
  EXPECT_FALSE(plan_int8_scores(5, 128, k));
  EXPECT_FALSE(plan_int8_scores(8, 128, k));
}

// Which layouts and head sizes the Half kernels take.
TEST(TurboAttention, HalfKernelsPlanOneScaleLayouts) {
  FusedKernels k;
  if (!plan_half_kernels(4, 128, k)) GTEST_SKIP() << "no AVX512-FP16 on this CPU";
  EXPECT_EQ(k.lanes, 32);
  EXPECT_EQ(k.chunk, 64);
  for (int b : {2, 3}) {
    EXPECT_TRUE(plan_half_kernels(b, 128, k)) << b;
    EXPECT_EQ(k.chunk, 128) << b;
    EXPECT_FALSE(plan_half_kernels(b, 64, k)) << b;  // a chunk is 128 elements
  }
  EXPECT_TRUE(plan_half_kernels(4, 64, k));
  EXPECT_FALSE(plan_half_kernels(4, 96, k));
  EXPECT_FALSE(plan_half_kernels(5, 128, k));
  EXPECT_FALSE(plan_half_kernels(8, 128, k));
}

}  // namespace
}  // namespace turbokv::kv::detail
