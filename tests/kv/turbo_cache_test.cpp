// Tests of the TurboQuant cache (kv/turbo_cache.h) and scheme names (kv/scheme.h).
#include "kv/turbo_cache.h"

#include <algorithm>
#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "kv/dense_cache.h"
#include "kv/registry.h"
#include "kv/scheme.h"
#include "util/error.h"
#include "util/rng.h"

namespace turbokv::kv {
namespace {

// Keys like a real model's: a large shared component plus a few outlier
// channels, which is what makes naive key quantization fail.
struct Inputs {
  std::vector<float> q, k, v;  // q: (n, n_head, hd); k, v: (n, n_kv_head, hd)
};

Inputs make_inputs(const CacheShape& s, int n, uint64_t seed, bool outliers) {
  Rng rng(seed);
  Inputs in;
  in.q.resize(size_t(n) * s.n_head * s.head_dim);
  in.k.resize(size_t(n) * s.n_kv_head * s.head_dim);
  in.v.resize(in.k.size());
  for (auto& x : in.q) x = float(rng.normal());
  for (size_t i = 0; i < in.k.size(); ++i) {
    const int c = int(i % size_t(s.head_dim));
    float x = float(rng.normal());
    if (outliers) {
      x += 3.0f * std::sin(0.7f * float(c));  // shared mean
      if (c % 17 == 3) x *= 8.0f;            // outlier channels
    }
    in.k[i] = x;
    in.v[i] = float(rng.normal());
  }
  return in;
}

// Runs one batch through a cache; returns the attention output of layer 0
// (every layer gets the same inputs).
std::vector<float> step(KvCache& cache, const Inputs& in, int first, int n, Phase phase, ThreadPool& pool) {
  const CacheShape& s = cache.shape();
  const size_t qrow = size_t(s.n_head) * s.head_dim, krow = size_t(s.n_kv_head) * s.head_dim;
  std::vector<float> out(size_t(n) * qrow), first_out;
  const float scale = 1.0f / std::sqrt(float(s.head_dim));
  cache.begin_batch(n, phase);
  for (int l = 0; l < s.n_layer; ++l) {
    cache.store(l, in.k.data() + size_t(first) * krow, in.v.data() + size_t(first) * krow);
    cache.attend(l, in.q.data() + size_t(first) * qrow, out.data(), scale, pool);
    if (l == 0) first_out = out;
  }
  cache.end_batch();
  return first_out;
}

CacheShape shape_of(int n_head, int n_kv_head, int head_dim, int max_tokens = 96, int n_layer = 2) {
  return CacheShape{n_layer, n_head, n_kv_head, head_dim, max_tokens};
}

// Attention of the batch's last query over what the cache says it stores
// (read_key / read_value), computed in plain float: the explicit-dequantize
// reference of the fused path.
std::vector<float> reference_attention(const TurboKvCache& cache, const float* q, int n_pos, int layer) {
  const CacheShape& s = cache.shape();
  const int hd = s.head_dim, group = s.n_head / s.n_kv_head;
  std::vector<float> out(size_t(s.n_head) * hd);
  for (int h = 0; h < s.n_head; ++h) {
    std::vector<float> keys(size_t(n_pos) * hd), values(keys.size());
    for (int p = 0; p < n_pos; ++p) {
      cache.read_key(layer, h / group, p, keys.data() + size_t(p) * hd);
      cache.read_value(layer, h / group, p, values.data() + size_t(p) * hd);
    }
    attend_head_f32(q + size_t(h) * hd, keys.data(), values.data(), n_pos, hd,
                    1.0f / std::sqrt(float(hd)), out.data() + size_t(h) * hd);
  }
  return out;
}

double rel_error(const std::vector<float>& a, const std::vector<float>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    num += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
    den += double(b[i]) * b[i];
  }
  return std::sqrt(num / den);
}

// Prefills the first `prefill` tokens of `in` into `cache` and into an exact
// (f32) cache, then decodes tokens [prefill, n) one at a time through both:
// the summed relative error of the cache's outputs over those steps.
double decode_error_vs_exact(KvCache& cache, const Inputs& in, int prefill, int n, ThreadPool& pool) {
  F32KvCache exact(cache.shape());
  step(cache, in, 0, prefill, Phase::Prefill, pool);
  step(exact, in, 0, prefill, Phase::Prefill, pool);
  double e = 0;
  for (int t = prefill; t < n; ++t) {
    e += rel_error(step(cache, in, t, 1, Phase::Decode, pool), step(exact, in, t, 1, Phase::Decode, pool));
  }
  return e;
}

TEST(Scheme, ParsesEveryListedName) {
  for (const auto& name : listed_schemes()) {
    SchemeSpec s = parse_scheme(name);
    EXPECT_EQ(s.name, name);
  }
  SchemeSpec s = parse_scheme("turbo0v4");
  EXPECT_EQ(s.key.kind, StreamKind::Fp16);
  EXPECT_EQ(s.value.kind, StreamKind::Codec);
  EXPECT_EQ(s.value.codec.bits, 4);
  s = parse_scheme("turbo4v2");
  EXPECT_EQ(s.key.codec.bits, 4);
  EXPECT_EQ(s.value.codec.bits, 2);
  s = parse_scheme("group4g32/fp16:center=0:calib=key:strict");
  EXPECT_EQ(s.key.codec.kind, codec::CodecKind::Group);
  EXPECT_EQ(s.key.codec.group_size, 32);
  EXPECT_FALSE(s.center_keys);
  EXPECT_EQ(s.calibration, Calibration::Key);
  EXPECT_TRUE(s.strict);
  EXPECT_EQ(parse_scheme("turbo4", "fp16").value.kind, StreamKind::Fp16);
  EXPECT_FALSE(parse_scheme("affine4").center_keys);
  s = parse_scheme("mse4/group4:codebook=gaussian");
  EXPECT_EQ(s.key.codec.codebook, codec::MseCodebook::Gaussian);
  EXPECT_EQ(s.value.codec.codebook, codec::MseCodebook::Sphere);  // group: N(0,1) Lloyd-Max regardless
  EXPECT_EQ(parse_scheme("prod4/prod4:codebook=beta").value.codec.codebook, codec::MseCodebook::Sphere);
  s = parse_scheme("turbo3:near=5:nearbits=8");
  EXPECT_EQ(s.near, 5);
  EXPECT_EQ(s.near_bits, 8);
  EXPECT_EQ(parse_scheme("turbo3").near, kTurboNear);
  EXPECT_EQ(parse_scheme("turbo8").near, 0);
  EXPECT_EQ(parse_scheme("turbo8").window, kTurboWindowAlone);
  s = parse_scheme("turbo3:outliers=32:voutliers=16");
  EXPECT_EQ(s.key.outliers, 32);
  EXPECT_EQ(s.value.outliers, 16);
  EXPECT_EQ(SchemeSpec::resolve_codec(s.key, 128).split, 32);
  EXPECT_EQ(SchemeSpec::resolve_codec(s.key, 128).kind, codec::CodecKind::Mse);  // groups of 128 do not fit 32 + 96
  EXPECT_EQ(SchemeSpec::resolve_codec(parse_scheme("turbo0v4:voutliers=16").value, 128).kind, codec::CodecKind::Group);
  EXPECT_FALSE(parse_scheme("turbo3:outliers=32").key == parse_scheme("turbo3").key);
}

TEST(Scheme, BadNamesNameTheProblemAndListTheForms) {
  for (const char* bad : {"turbo3:fp16layers=", "turbo3:fp16layers=3-1", "turbo3:fp16layers=a", "turbo3:fp16layers=1+",
                          "fp16:window=4", "f32:strict:center=0", "fp16/fp16:fp16layers=0", "turbo4:nearbits=3",
                          "turbo3:near=-1", "turbo3:nearbits=9", "fp16:near=4", "turbo4:codebook=gaussian",
                          "mse4/mse4:codebook=normal", "turbo0v4:outliers=8", "affine4:outliers=8",
                          "prod4/prod4:voutliers=8", "turbo3:outliers=-1", "turbo3:voutliers=x"}) {
    EXPECT_THROW(parse_scheme(bad), Error) << bad;
  }
  for (const char* bad : {"turbo5", "turbo4v7", "turbo0v0", "q4_0", "", "turbo", "turbo4:frob=1",
                          "turbo4:calib=maybe", "affine3", "mse9", "group4gx", "turbox"}) {
    try {
      parse_scheme(bad);
      ADD_FAILURE() << "accepted '" << bad << "'";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("valid forms"), std::string::npos) << e.what();
    }
  }
}

TEST(TurboCache, PrefillIsIdenticalToTheFp16Cache) {
  ThreadPool pool(2);
  const CacheShape s = shape_of(4, 2, 64);
  const Inputs in = make_inputs(s, 40, 1, true);
  for (const char* scheme : {"turbo4", "turbo3", "turbo0v4", "turbo4v2", "affine4"}) {
    TurboKvCache turbo(parse_scheme(scheme), s);
    Fp16KvCache fp16(s);
    const auto a = step(turbo, in, 0, 40, Phase::Prefill, pool);
    const auto b = step(fp16, in, 0, 40, Phase::Prefill, pool);
    ASSERT_EQ(a, b) << scheme;  // bit for bit
    EXPECT_EQ(turbo.n_encoded(0), 0);
  }
}

// Bounds the rounding of the narrow-product kernels in the relative error of
// a decode step's output: int8 key dots (kv/turbo_attention_int8.h: the
// query and codebook rounded to 127 steps of their largest magnitude) reach
// 1.6e-2 here, fp16 products (kv/turbo_attention_half.h) alone 1.1e-3.
constexpr double kHalfProductError = 3e-2;

TEST(TurboCache, DecodeEqualsExplicitDequantizeReference) {
  ThreadPool pool(2);
  for (int hd : {8, 64, 80, 96, 128, 256}) {
    for (const char* scheme : {"turbo4", "turbo3", "turbo2", "turbo0v4", "turbo4v2", "affine8",
                               "prod4/group4", "turbo4:calib=key", "turbo4:center=0:calib=none:vcenter=1",
                               "turbo3:near=5", "turbo4v2:window=1:near=4:nearbits=8", "turbo0v4:near=6",
                               "turbo3:outliers=16:voutliers=32", "turbo0v4:voutliers=16", "mse4/group4:outliers=8:near=3"}) {
      // fp32 kernels: the reference up to reassociation; the default
      // (narrow products where the CPU has them): up to their rounding.
      for (const bool f32 : {true, false}) {
        const std::string name = std::string(scheme) + (f32 ? ":math=f32" : "");
        SchemeSpec spec = parse_scheme(name);
        auto serves = [&](const StreamSpec& st) {
          return st.kind != StreamKind::Codec || !codec::spec_problem(SchemeSpec::resolve_codec(st, hd), hd);
        };
        if (!serves(spec.key) || !serves(spec.value)) continue;
        const CacheShape s = shape_of(4, 2, hd, 48);
        const Inputs in = make_inputs(s, 30, 2, true);
        TurboKvCache cache(spec, s);
        step(cache, in, 0, 20, Phase::Prefill, pool);
        for (int t = 20; t < 30; ++t) {
          const auto out = step(cache, in, t, 1, Phase::Decode, pool);
          const auto ref = reference_attention(cache, in.q.data() + size_t(t) * s.n_head * hd, t + 1, 0);
          EXPECT_LT(rel_error(out, ref), f32 ? 2e-5 : kHalfProductError) << name << " hd " << hd << " t " << t;
        }
        EXPECT_EQ(cache.n_encoded(0), 30 - spec.window);
        EXPECT_EQ(cache.n_encoded(1), 30 - spec.window);
      }
    }
  }
}

// Compressed attention against exact (f32) attention: the error must be of
// the size the codec's distortion predicts and shrink with more bits.
TEST(TurboCache, ErrorAgainstExactAttentionFollowsCodecDistortion) {
  ThreadPool pool(1);
  const CacheShape s = shape_of(4, 2, 128, 300, 1);
  for (bool outliers : {false, true}) {
    const Inputs in = make_inputs(s, 300, 3, outliers);
    std::vector<double> errs;
    for (const char* scheme : {"turbo2", "turbo3", "turbo4", "turbo8"}) {
      TurboKvCache cache(parse_scheme(scheme), s);
      errs.push_back(decode_error_vs_exact(cache, in, 256, 300, pool) / 44);
    }
    // Lloyd–Max distortion D_b of a unit vector's coordinates (b = 2, 3, 4;
    // the high-rate formula sqrt(3)·pi/2·4^-b at 8 bits). The value error
    // alone is about sqrt(D_b) of the output; key error moves the weights on
    // top of that, so allow twice that.
    const double distortion[] = {0.1175, 0.03454, 0.009497, 2.72 * std::pow(4.0, -8)};
    for (size_t i = 0; i < errs.size(); ++i) {
      EXPECT_LT(errs[i], 2.0 * std::sqrt(distortion[i])) << "scheme " << i << " outliers " << outliers;
      EXPECT_GT(errs[i], 0.5 * std::sqrt(distortion[i])) << "scheme " << i << " outliers " << outliers;
    }
    for (size_t i = 1; i < errs.size(); ++i) EXPECT_LT(errs[i], errs[i - 1]);
  }
}

// Mean-centering and query calibration must help on outlier-heavy keys
// (that is why they exist) and never change what an FP16 key stream does.
TEST(TurboCache, CenteringAndCalibrationReduceKeyError) {
  ThreadPool pool(1);
  const CacheShape s = shape_of(4, 2, 128, 300, 1);
  const Inputs in = make_inputs(s, 300, 4, true);
  auto error_of = [&](const char* scheme) {
    TurboKvCache cache(parse_scheme(scheme), s);
    return decode_error_vs_exact(cache, in, 256, 300, pool);
  };
  const double plain = error_of("turbo3/fp16:center=0:calib=none");
  const double centered = error_of("turbo3/fp16:center=1:calib=none");
  const double calibrated = error_of("turbo3/fp16:center=1:calib=query");
  EXPECT_LT(centered, plain);
  EXPECT_LT(calibrated, plain);
}

// Outlier channels: the channels a split stream stores at one more bit are
// those with the most energy in what is encoded (keys: s_j^2 Var[k_j], here
// the 8 channels of make_inputs scaled by 8; values: Var[v_j]), and giving
// them the bit lowers the attention error.
TEST(TurboCache, OutlierChannelsAreTheHighEnergyOnesAndHelp) {
  ThreadPool pool(1);
  const CacheShape s = shape_of(4, 2, 128, 300, 1);
  Inputs in = make_inputs(s, 300, 4, true);
  std::vector<int> loud_values;  // value channels with 5x the spread
  for (int c = 5; c < 128; c += 11) loud_values.push_back(c);
  for (size_t i = 0; i < in.v.size(); ++i) {
    if (std::find(loud_values.begin(), loud_values.end(), int(i % 128)) != loud_values.end()) in.v[i] *= 5.0f;
  }
  std::vector<int> loud_keys;
  for (int c = 3; c < 128; c += 17) loud_keys.push_back(c);
  auto error_of = [&](const char* scheme, bool check_channels) {
    TurboKvCache cache(parse_scheme(scheme), s);
    const double e = decode_error_vs_exact(cache, in, 256, 300, pool);
    if (check_channels) {
      for (int g = 0; g < 2; ++g) {
        EXPECT_EQ(cache.outlier_channels(true, 0, g), loud_keys) << scheme;
        EXPECT_EQ(cache.outlier_channels(false, 0, g), loud_values) << scheme;
      }
    }
    return e;
  };
  const std::string loud_k = std::to_string(loud_keys.size()), loud_v = std::to_string(loud_values.size());
  EXPECT_LT(error_of(("turbo3/fp16:outliers=" + loud_k).c_str(), false), error_of("turbo3/fp16", false));
  EXPECT_LT(error_of(("fp16/turbo3:voutliers=" + loud_v).c_str(), false), error_of("fp16/turbo3", false));
  error_of(("turbo3:outliers=" + loud_k + ":voutliers=" + loud_v).c_str(), true);
  TurboKvCache plain(parse_scheme("turbo3"), s);
  step(plain, in, 0, 20, Phase::Prefill, pool);
  step(plain, in, 20, 1, Phase::Decode, pool);
  EXPECT_TRUE(plain.outlier_channels(true, 0, 0).empty());
}

// The bits of a split stream: records of two parts plus one bit a channel
// marking the outlier channels, counted by bytes() and bits_at() alike.
TEST(TurboCache, OutlierChannelsAreCountedExactly) {
  ThreadPool pool(1);
  const CacheShape s = shape_of(4, 2, 128, 300, 2);
  const Inputs in = make_inputs(s, 300, 4, true);
  const SchemeSpec spec = parse_scheme("turbo3:outliers=32:voutliers=16");
  TurboKvCache cache(spec, s);
  step(cache, in, 0, 256, Phase::Prefill, pool);
  step(cache, in, 256, 1, Phase::Decode, pool);
  EXPECT_NEAR(cache.bits_per_element(), spec.bits_at(128, 257), 1e-9);
  // Keys: 32 channels at 4 bits + 96 at 3, one least-squares norm each part.
  EXPECT_DOUBLE_EQ(SchemeSpec::stream_bits(spec.key, 128), 8.0 * ((2 + 16) + (2 + 36)) / 128);
  EXPECT_GT(cache.bits_per_element(), parse_scheme("turbo3").bits_at(128, 257));
}

TEST(TurboCache, GqaMappingReadsTheRightKvHead) {
  ThreadPool pool(2);
  for (auto [nh, nkv] : {std::pair{4, 4}, std::pair{4, 2}, std::pair{8, 2}, std::pair{4, 1}}) {
    for (const char* scheme : {"turbo4", "turbo0v4", "turbo2"}) {
      const CacheShape s = shape_of(nh, nkv, 64, 40, 1);
      Inputs in = make_inputs(s, 40, 5, false);
      // Every value of kv head g is the constant vector 10 * (g + 1): the
      // output of a query head is that constant whatever the weights are, up
      // to the codec's error on that one vector, which is the same at every
      // position (it does not average out over positions, only over the 64
      // elements). A matched-norm code also pulls the mean in by about
      // D_b / 2 (~6% at 2 bits). A wrong mapping is off by at least 10.
      for (int t = 0; t < 40; ++t) {
        for (int g = 0; g < nkv; ++g) {
          for (int i = 0; i < 64; ++i) in.v[(size_t(t) * nkv + g) * 64 + i] = 10.0f * float(g + 1);
        }
      }
      TurboKvCache cache(parse_scheme(scheme), s);
      step(cache, in, 0, 30, Phase::Prefill, pool);
      const auto out = step(cache, in, 30, 1, Phase::Decode, pool);
      for (int h = 0; h < nh; ++h) {
        const float want = 10.0f * float(h / (nh / nkv) + 1);
        double mean = 0;
        for (int i = 0; i < 64; ++i) mean += out[size_t(h) * 64 + i] / 64.0;
        EXPECT_NEAR(mean, want, 4.0) << scheme << " heads " << nh << "/" << nkv << " h " << h;
      }
    }
  }
}

// Speculative decoding verifies k+1 tokens in one batch and must give the
// logits plain decoding gives, bit for bit (greedy output with a draft equals
// greedy output without one). So a token's attention may not depend on how
// many tokens share its batch, also deep into a long cache where the
// encoded range is split into many chunks.
TEST(TurboCache, DecodeBatchEqualsSingleTokenSteps) {
  ThreadPool pool(2);
  const int depth = 3000, k = 8;
  const CacheShape s = shape_of(8, 1, 64, depth + k + 1, 1);  // GQA 8: one job piece per token
  const Inputs in = make_inputs(s, depth + k, 4, true);
  const size_t row = size_t(s.n_head) * s.head_dim;
  for (const char* scheme : {"turbo4", "turbo3", "turbo0v4", "turbo4:window=5", "turbo4:near=0", "turbo3:near=3",
                             "turbo3:outliers=16:voutliers=16"}) {
    TurboKvCache batched(parse_scheme(scheme), s), single(parse_scheme(scheme), s);
    for (TurboKvCache* c : {&batched, &single}) {
      step(*c, in, 0, depth - 1, Phase::Prefill, pool);
      step(*c, in, depth - 1, 1, Phase::Decode, pool);  // compresses the prefix
    }
    const std::vector<float> together = step(batched, in, depth, k, Phase::Decode, pool);
    for (int t = 0; t < k; ++t) {
      const std::vector<float> alone = step(single, in, depth + t, 1, Phase::Decode, pool);
      ASSERT_EQ(alone, std::vector<float>(together.begin() + ptrdiff_t(t * row), together.begin() + ptrdiff_t((t + 1) * row)))
          << scheme << ", token " << t << " of the batch";
    }
  }
}

// Per-layer precision: the layers named by fp16layers are never encoded, so
// their attention stays the FP16 cache's, bit for bit, while the other layers
// are compressed; the bytes count them at 16 bits.
TEST(TurboCache, Fp16LayersStayExactAndTheRestIsEncoded) {
  ThreadPool pool(2);
  const CacheShape s = shape_of(4, 2, 64, 96, 3);
  const Inputs in = make_inputs(s, 40, 6, true);
  EXPECT_EQ(parse_scheme("turbo3:fp16layers=0-1+4+1").fp16_layers, (std::vector<int>{0, 1, 4}));
  TurboKvCache turbo(parse_scheme("turbo3:fp16layers=0+2"), s), plain(parse_scheme("turbo3"), s);
  Fp16KvCache fp16(s);
  for (KvCache* c : {static_cast<KvCache*>(&turbo), static_cast<KvCache*>(&plain), static_cast<KvCache*>(&fp16)}) {
    step(*c, in, 0, 30, Phase::Prefill, pool);
  }
  for (int t = 30; t < 40; ++t) {
    const auto a = step(turbo, in, t, 1, Phase::Decode, pool);  // layer 0: FP16
    EXPECT_EQ(a, step(fp16, in, t, 1, Phase::Decode, pool)) << "t " << t;
    EXPECT_NE(a, step(plain, in, t, 1, Phase::Decode, pool)) << "t " << t;
  }
  EXPECT_EQ(turbo.n_encoded(0), 0);
  EXPECT_EQ(turbo.n_encoded(1), 40 - kTurboWindow);
  EXPECT_EQ(turbo.n_encoded(2), 0);
  // Two layers at FP16 bytes, one like the plain cache's layer.
  EXPECT_EQ(turbo.bytes(), 2 * fp16.bytes() / 3 + plain.bytes() / 3);
  try {
    TurboKvCache bad(parse_scheme("turbo3:fp16layers=3"), s);
    ADD_FAILURE() << "accepted a layer the model does not have";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("fp16layers names layer 3"), std::string::npos) << e.what();
  }
}

TEST(TurboCache, TrimThenAppendEqualsNeverAppending) {
  ThreadPool pool(2);
  const CacheShape s = shape_of(4, 2, 64, 64);
  const Inputs in = make_inputs(s, 64, 6, true);
  Inputs alt = make_inputs(s, 64, 7, true);  // tokens that get rejected
  for (const char* scheme : {"turbo4", "turbo0v4", "turbo3v2", "turbo4:window=0", "turbo4:window=9", "turbo3:near=5",
                             "turbo3:window=0:near=2:nearbits=8", "turbo4:near=0"}) {
    TurboKvCache a(parse_scheme(scheme), s), b(parse_scheme(scheme), s);
    step(a, in, 0, 20, Phase::Prefill, pool);
    step(b, in, 0, 20, Phase::Prefill, pool);
    step(a, in, 20, 1, Phase::Decode, pool);
    step(b, in, 20, 1, Phase::Decode, pool);
    // a: a rejected draft of 4 tokens, then trim.
    Inputs draft = in;
    for (size_t i = 0; i < draft.k.size(); ++i) { draft.k[i] = alt.k[i]; draft.v[i] = alt.v[i]; }
    step(a, draft, 21, 4, Phase::Decode, pool);
    a.trim(4);
    EXPECT_EQ(a.n_tokens(), 21);
    // The window's positions, encoded while the draft was in, are raw again
    // (and the near tier's are near records again).
    EXPECT_EQ(a.n_encoded(0), 21 - a.spec().window);
    EXPECT_EQ(a.n_encoded(0), b.n_encoded(0));
    EXPECT_EQ(a.bytes(), b.bytes()) << scheme;
    for (int t = 21; t < 30; ++t) {
      ASSERT_EQ(step(a, in, t, 1, Phase::Decode, pool), step(b, in, t, 1, Phase::Decode, pool)) << scheme << " t " << t;
    }
  }
}

TEST(TurboCache, TrimAcrossTheCompressionBoundaryKeepsPositionsConsistent) {
  ThreadPool pool(1);
  const CacheShape s = shape_of(4, 2, 64, 64);
  const Inputs in = make_inputs(s, 64, 8, true);
  TurboKvCache cache(parse_scheme("turbo4:window=0"), s);
  step(cache, in, 0, 16, Phase::Prefill, pool);
  step(cache, in, 16, 1, Phase::Decode, pool);  // compresses all 17
  std::vector<float> before(64), after(64);
  cache.read_key(0, 1, 5, before.data());
  cache.trim(10);  // into the prefill part
  EXPECT_EQ(cache.n_tokens(), 7);
  EXPECT_EQ(cache.n_encoded(0), 7);
  cache.read_key(0, 1, 5, after.data());
  EXPECT_EQ(before, after);
  // A prefill after decoding stages raw tokens behind the records; the next
  // decode step encodes them, and attention matches the reference throughout.
  step(cache, in, 7, 5, Phase::Prefill, pool);
  EXPECT_EQ(cache.n_encoded(0), 7);
  const auto out = step(cache, in, 12, 1, Phase::Decode, pool);
  EXPECT_EQ(cache.n_encoded(0), 13);
  const auto ref = reference_attention(cache, in.q.data() + size_t(12) * 4 * 64, 13, 0);
  EXPECT_LT(rel_error(out, ref), 2e-5);
}

TEST(TurboCache, EmptiedCacheRefillsLikeANewOne) {
  ThreadPool pool(2);
  const CacheShape s = shape_of(4, 2, 64, 64);
  const Inputs in = make_inputs(s, 64, 9, true);
  const Inputs other = make_inputs(s, 64, 10, true);
  TurboKvCache used(parse_scheme("turbo3"), s), fresh(parse_scheme("turbo3"), s);
  step(used, other, 0, 30, Phase::Prefill, pool);
  step(used, other, 30, 3, Phase::Decode, pool);
  used.trim(used.n_tokens());
  EXPECT_EQ(used.n_tokens(), 0);
  step(used, in, 0, 20, Phase::Prefill, pool);
  step(fresh, in, 0, 20, Phase::Prefill, pool);
  for (int t = 20; t < 26; ++t) {
    ASSERT_EQ(step(used, in, t, 1, Phase::Decode, pool), step(fresh, in, t, 1, Phase::Decode, pool));
  }
}

TEST(TurboCache, StrictModeEncodesFromTheFirstToken) {
  ThreadPool pool(2);
  const CacheShape s = shape_of(4, 2, 64, 64);
  const Inputs in = make_inputs(s, 64, 11, true);
  TurboKvCache cache(parse_scheme("turbo4:strict"), s);
  const auto out = step(cache, in, 0, 24, Phase::Prefill, pool);
  EXPECT_EQ(cache.n_encoded(0), 24 - kTurboWindow);  // the newest tokens stay raw
  EXPECT_EQ(cache.tokens_encoded(), 24 - kTurboWindow);
  Fp16KvCache fp16(s);
  EXPECT_NE(out, step(fp16, in, 0, 24, Phase::Prefill, pool));  // really compressed
  // The last query of the batch sees the records, as the reference says.
  const auto ref = reference_attention(cache, in.q.data() + size_t(23) * 4 * 64, 24, 0);
  const std::vector<float> last(out.end() - 4 * 64, out.end());
  EXPECT_LT(rel_error(last, ref), 2e-5);
}

TEST(TurboCache, MemoryAccountingIsExact) {
  ThreadPool pool(1);
  const CacheShape s = shape_of(4, 2, 128, 64, 3);
  const Inputs in = make_inputs(s, 64, 12, false);
  TurboKvCache cache(parse_scheme("mse4/mse4:calib=none:center=0"), s);
  EXPECT_DOUBLE_EQ(cache.bits_per_element(), 4.125);
  step(cache, in, 0, 10, Phase::Prefill, pool);
  // Staged raw: 2 streams * 3 layers * 2 heads * 10 tokens * 128 * 2 bytes.
  EXPECT_EQ(cache.bytes(), size_t(2 * 3 * 2 * 10 * 128 * 2));
  step(cache, in, 10, 1, Phase::Decode, pool);
  // 11 records of 66 bytes per stream, layer and head.
  EXPECT_EQ(cache.bytes(), size_t(2 * 3 * 2 * 11 * 66));
  EXPECT_DOUBLE_EQ(cache.bits_per_element(), 4.125);
  TurboKvCache cal(parse_scheme("mse4/mse4"), s);  // + key mean (fp16) and key scales (1 byte)
  step(cal, in, 0, 10, Phase::Prefill, pool);
  step(cal, in, 10, 1, Phase::Decode, pool);
  EXPECT_EQ(cal.bytes(), size_t(2 * 3 * 2 * 11 * 66 + 3 * 2 * 128 * (2 + 1)));
  // turbo4 at head size 128: keys and values in groups of 128 (66-byte
  // records), the next kTurboNear tokens at 5 bits (82-byte records), the
  // newest kTurboWindow tokens raw, the key mean and scales.
  TurboKvCache t4(parse_scheme("turbo4"), s);
  EXPECT_DOUBLE_EQ(t4.bits_per_element(), 4.125);
  step(t4, in, 0, 40, Phase::Prefill, pool);
  step(t4, in, 40, 1, Phase::Decode, pool);
  const size_t far = 41 - kTurboWindow - kTurboNear;
  EXPECT_EQ(t4.bytes(), size_t(3 * 2 * (far * (66 + 66) + kTurboNear * (82 + 82) + kTurboWindow * 2 * 128 * 2) +
                               3 * 2 * 128 * (2 + 1)));
}

// Precision by age: the near tier holds positions at its bits, older ones
// are re-encoded at the stream's bits, and each position moves on as the
// cache grows.
TEST(TurboCache, NearTierHoldsRecentPositionsAtMoreBits) {
  ThreadPool pool(1);
  const CacheShape s = shape_of(4, 2, 128, 64, 1);
  const Inputs in = make_inputs(s, 64, 14, true);
  const int window = 2, near = 8;
  TurboKvCache cache(parse_scheme("turbo3:window=2:near=8:nearbits=8"), s);
  step(cache, in, 0, 30, Phase::Prefill, pool);
  for (int t = 30; t < 40; ++t) {
    step(cache, in, t, 1, Phase::Decode, pool);
    const int n = t + 1;
    EXPECT_EQ(cache.n_encoded(0), n - window);
    // Relative error of each stored key against its input.
    auto key_error = [&](int pos) {
      std::vector<float> got(128);
      cache.read_key(0, 1, pos, got.data());
      const float* want = in.k.data() + (size_t(pos) * 2 + 1) * 128;
      return rel_error(got, std::vector<float>(want, want + 128));
    };
    double far_sq = 0;
    for (int p = 0; p < n - window - near; ++p) far_sq += key_error(p) * key_error(p);
    const double far_rms = std::sqrt(far_sq / (n - window - near));  // 3 bits
    EXPECT_GT(far_rms, 0.02);
    // 8 bits: a 2^5 smaller step; FP16 rows: rounding only.
    for (int p = n - window - near; p < n - window; ++p) EXPECT_LT(key_error(p), far_rms / 8) << "near, pos " << p;
    for (int p = n - window; p < n; ++p) EXPECT_LT(key_error(p), far_rms / 50) << "raw, pos " << p;
  }
  // 3-bit records for the 30 oldest, 8-bit for the next 8, 2 raw rows.
  const size_t rec3 = 3 * 128 / 8 + 2, rec8 = 128 + 2;
  EXPECT_EQ(cache.bytes(), size_t(2 * 2 * (30 * rec3 + near * rec8 + window * 128 * 2) + 2 * 128 * (2 + 1)));
  EXPECT_DOUBLE_EQ(cache.bits_per_element(), cache.spec().bits_at(128, 30 + 10));
}

// What `turbokv schemes` prints for a cache of n tokens is what a cache of
// n tokens counts, after its first decode step.
TEST(TurboCache, SchemeBitsAtNTokensMatchTheCache) {
  ThreadPool pool(1);
  for (int hd : {64, 128}) {
    const CacheShape s = shape_of(4, 2, hd, 64, 2);
    const Inputs in = make_inputs(s, 40, 13, true);
    for (const char* scheme : {"turbo4", "turbo3", "turbo0v4", "turbo4v2", "turbo4:window=0:vcenter=1", "mse4/mse4",
                               "turbo3:calib=none", "affine4", "turbo8", "turbo3:near=5:nearbits=8",
                               "turbo3:window=0:near=50"}) {
      TurboKvCache cache(parse_scheme(scheme), s);
      step(cache, in, 0, 39, Phase::Prefill, pool);
      step(cache, in, 39, 1, Phase::Decode, pool);
      EXPECT_DOUBLE_EQ(cache.bits_per_element(), cache.spec().bits_at(hd, 40)) << scheme << " hd " << hd;
    }
  }
}

TEST(TurboCache, SchemeThatCannotServeAHeadSizeSaysSo) {
  const CacheShape s = shape_of(4, 2, 8);
  try {
    TurboKvCache cache(parse_scheme("group4/group4"), s);
    FAIL() << "group of 16 accepted head size 8";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("head size 8"), std::string::npos) << e.what();
  }
}

TEST(TurboCache, RegistryBuildsEveryListedScheme) {
  const CacheShape s = shape_of(4, 2, 128);
  for (const auto& name : listed_schemes()) {
    auto cache = make_kv_cache(name, s);
    ASSERT_NE(cache, nullptr);
    EXPECT_EQ(cache->scheme(), name);
  }
  EXPECT_THROW(make_kv_cache("turbo7", s), Error);
}

}  // namespace
}  // namespace turbokv::kv
