// FP16/F32 KV caches against a naive double-precision attention oracle.
#include "kv/dense_cache.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <vector>

#include "kv/attention_kernels.h"
#include "kv/online_softmax.h"
#include "util/error.h"
#include "util/rng.h"

namespace turbokv::kv {
namespace {

// Max |out - ref| allowed for the F32 cache: float accumulation of values of
// magnitude up to ~15 over a few hundred positions against a double oracle
// (~300 * 2^-24 * 15 ≈ 3e-4 worst case; typical errors are 1e-5).
constexpr float kF32AttentionTolerance = 5e-5f;
// For the FP16 cache: keys/values rounded to half (rel. error 2^-11) on
// values of magnitude ~10.
constexpr float kFp16AttentionTolerance = 2e-2f;

std::vector<float> random_vec(Rng& rng, size_t n, float scale = 1.0f) {
  std::vector<float> v(n);
  for (auto& x : v) x = float(rng.normal()) * scale;
  return v;
}

// A token sequence's keys and values for every layer, kept in the test so
// the oracle sees exactly what the cache was given.
struct History {
  CacheShape s;
  std::vector<std::vector<float>> k, v;  // (layer) -> (pos, n_kv_head, head_dim)
  explicit History(const CacheShape& shape) : s(shape), k(size_t(shape.n_layer)), v(size_t(shape.n_layer)) {}
};

// out[t, h] = softmax_j(scale q·k_j) v_j over j in [0, p0 + t], kv head h / group.
std::vector<float> oracle(const History& hist, int layer, const float* q, int n, int p0, float scale) {
  const auto& s = hist.s;
  const int hd = s.head_dim, group = s.n_head / s.n_kv_head;
  std::vector<float> out(size_t(n) * s.n_head * hd);
  for (int t = 0; t < n; ++t) {
    for (int h = 0; h < s.n_head; ++h) {
      const int kvh = h / group;
      const float* qh = q + (size_t(t) * s.n_head + h) * hd;
      const int n_pos = p0 + t + 1;
      std::vector<double> sc(static_cast<size_t>(n_pos));
      double m = -1e300;
      for (int j = 0; j < n_pos; ++j) {
        const float* kj = hist.k[size_t(layer)].data() + (size_t(j) * s.n_kv_head + kvh) * hd;
        double d = 0;
        for (int i = 0; i < hd; ++i) d += double(qh[i]) * kj[i];
        sc[size_t(j)] = scale * d;
        m = std::max(m, sc[size_t(j)]);
      }
      double z = 0;
      for (auto& x : sc) { x = std::exp(x - m); z += x; }
      for (int i = 0; i < hd; ++i) {
        double acc = 0;
        for (int j = 0; j < n_pos; ++j) {
          acc += sc[size_t(j)] * hist.v[size_t(layer)][(size_t(j) * s.n_kv_head + kvh) * hd + i];
        }
        out[(size_t(t) * s.n_head + h) * hd + i] = float(acc / z);
      }
    }
  }
  return out;
}

// Appends n tokens of random keys/values (values offset by 10 * kv head so a
// wrong head mapping moves the output far) and returns each layer's output
// for random queries.
std::vector<std::vector<float>> run_batch(KvCache& cache, History& hist, Rng& rng, int n, ThreadPool& pool,
                                          std::vector<std::vector<float>>* ref = nullptr) {
  const auto& s = cache.shape();
  const int hd = s.head_dim;
  const float scale = 1.0f / std::sqrt(float(hd));
  const int p0 = cache.n_tokens();
  cache.begin_batch(n, Phase::Prefill);
  std::vector<std::vector<float>> outs;
  for (int l = 0; l < s.n_layer; ++l) {
    auto k = random_vec(rng, size_t(n) * s.n_kv_head * hd, 2.0f);
    auto v = random_vec(rng, size_t(n) * s.n_kv_head * hd);
    for (int t = 0; t < n; ++t)
      for (int h = 0; h < s.n_kv_head; ++h)
        for (int i = 0; i < hd; ++i) v[(size_t(t) * s.n_kv_head + h) * hd + i] += 10.0f * float(h);
    auto q = random_vec(rng, size_t(n) * s.n_head * hd, 2.0f);
    hist.k[size_t(l)].insert(hist.k[size_t(l)].end(), k.begin(), k.end());
    hist.v[size_t(l)].insert(hist.v[size_t(l)].end(), v.begin(), v.end());
    cache.store(l, k.data(), v.data());
    std::vector<float> out(q.size(), -1.0f);
    cache.attend(l, q.data(), out.data(), scale, pool);
    outs.push_back(out);
    if (ref) ref->push_back(oracle(hist, l, q.data(), n, p0, scale));
  }
  cache.end_batch();
  return outs;
}

void truncate(History& hist, int n_keep) {
  const size_t row = size_t(hist.s.n_kv_head) * hist.s.head_dim;
  for (auto& k : hist.k) k.resize(size_t(n_keep) * row);
  for (auto& v : hist.v) v.resize(size_t(n_keep) * row);
}

float max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  float m = 0;
  for (size_t i = 0; i < a.size(); ++i) m = std::max(m, std::abs(a[i] - b[i]));
  return m;
}

struct GqaCase { int n_head, n_kv_head, head_dim; };

class DenseCacheGqa : public ::testing::TestWithParam<GqaCase> {};

TEST_P(DenseCacheGqa, F32MatchesOracleAcrossBatchesAndHeads) {
  const auto p = GetParam();
  CacheShape s{2, p.n_head, p.n_kv_head, p.head_dim, 300};
  F32KvCache cache(s);
  History hist(s);
  Rng rng(42);
  ThreadPool pool(2);
  // A prefill batch crossing the 64-position score block, then decode steps, then a small batch.
  for (int n : {97, 1, 1, 5, 70}) {
    std::vector<std::vector<float>> ref;
    auto outs = run_batch(cache, hist, rng, n, pool, &ref);
    for (int l = 0; l < s.n_layer; ++l) {
      EXPECT_LT(max_abs_diff(outs[size_t(l)], ref[size_t(l)]), kF32AttentionTolerance) << "layer " << l << " batch " << n;
    }
  }
  EXPECT_EQ(cache.n_tokens(), 97 + 1 + 1 + 5 + 70);
}

TEST_P(DenseCacheGqa, Fp16MatchesOracle) {
  const auto p = GetParam();
  CacheShape s{1, p.n_head, p.n_kv_head, p.head_dim, 200};
  Fp16KvCache cache(s);
  History hist(s);
  Rng rng(7);
  ThreadPool pool(1);
  for (int n : {130, 1, 3}) {
    std::vector<std::vector<float>> ref;
    auto outs = run_batch(cache, hist, rng, n, pool, &ref);
    EXPECT_LT(max_abs_diff(outs[0], ref[0]), kFp16AttentionTolerance);
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, DenseCacheGqa,
                         ::testing::Values(GqaCase{4, 4, 16},   // plain multi-head
                                           GqaCase{4, 2, 16},   // GQA 2
                                           GqaCase{6, 1, 8},    // multi-query (ratio = n_head)
                                           GqaCase{8, 4, 8},    // stories260K's shape
                                           GqaCase{4, 2, 24}),  // odd head size
                         [](const auto& info) {
                           return "h" + std::to_string(info.param.n_head) + "_kv" + std::to_string(info.param.n_kv_head) +
                                  "_d" + std::to_string(info.param.head_dim);
                         });

TEST(DenseCache, HeadMappingIsGroupedNotInterleaved) {
  // One position; keys zero so attention is all weight on that position:
  // query head h must read kv head h / 2 (0,0,1,1), not h % 2 (0,1,0,1).
  CacheShape s{1, 4, 2, 4, 4};
  F32KvCache cache(s);
  ThreadPool pool(1);
  std::vector<float> k(2 * 4, 0.0f), v(2 * 4);
  for (int h = 0; h < 2; ++h)
    for (int i = 0; i < 4; ++i) v[size_t(h * 4 + i)] = float(100 * (h + 1) + i);
  std::vector<float> q(4 * 4, 1.0f), out(4 * 4);
  cache.begin_batch(1, Phase::Prefill);
  cache.store(0, k.data(), v.data());
  cache.attend(0, q.data(), out.data(), 1.0f, pool);
  cache.end_batch();
  for (int h = 0; h < 4; ++h)
    for (int i = 0; i < 4; ++i) EXPECT_EQ(out[size_t(h * 4 + i)], float(100 * (h / 2 + 1) + i)) << "head " << h;
}

TEST(DenseCache, CausalWithinABatch) {
  // Position j's value is j in every dim and all scores are equal, so query t
  // must output mean(0..p0+t) = (p0 + t) / 2: any peek at later positions shows.
  CacheShape s{1, 2, 1, 4, 16};
  F32KvCache cache(s);
  ThreadPool pool(2);
  const int n = 6;
  std::vector<float> k(size_t(n) * 4, 0.0f), v(size_t(n) * 4), q(size_t(n) * 2 * 4, 0.5f), out(q.size());
  for (int t = 0; t < n; ++t)
    for (int i = 0; i < 4; ++i) v[size_t(t * 4 + i)] = float(t);
  cache.begin_batch(n, Phase::Prefill);
  cache.store(0, k.data(), v.data());
  cache.attend(0, q.data(), out.data(), 1.0f, pool);
  cache.end_batch();
  for (int t = 0; t < n; ++t)
    for (int h = 0; h < 2; ++h) EXPECT_NEAR(out[size_t((t * 2 + h) * 4)], t / 2.0f, 1e-6f) << "token " << t;
}

TEST(DenseCache, BatchedEqualsOneAtATime) {
  CacheShape s{2, 4, 2, 16, 64};
  Rng rng_a(3), rng_b(3);
  F32KvCache batched(s), stepped(s);
  History ha(s), hb(s);
  ThreadPool pool(2);
  // Same random stream: the batched run draws (k, v, q) per layer for 10 tokens;
  // the stepped run can't draw the same numbers, so compare both to the oracle.
  std::vector<std::vector<float>> ref_a;
  auto a = run_batch(batched, ha, rng_a, 10, pool, &ref_a);
  for (int l = 0; l < 2; ++l) EXPECT_LT(max_abs_diff(a[size_t(l)], ref_a[size_t(l)]), kF32AttentionTolerance);
  for (int t = 0; t < 10; ++t) {
    std::vector<std::vector<float>> ref_b;
    auto b = run_batch(stepped, hb, rng_b, 1, pool, &ref_b);
    for (int l = 0; l < 2; ++l) EXPECT_LT(max_abs_diff(b[size_t(l)], ref_b[size_t(l)]), kF32AttentionTolerance);
  }
}

TEST(DenseCache, TrimThenAppendEqualsNeverAppended) {
  CacheShape s{2, 4, 2, 8, 64};
  ThreadPool pool(2);
  Rng r1(11);
  F32KvCache trimmed(s), fresh(s);
  History h1(s), h2(s);
  // Both caches get the same first 20 tokens.
  Rng r_first(5);
  run_batch(trimmed, h1, r_first, 20, pool);
  Rng r_first2(5);
  run_batch(fresh, h2, r_first2, 20, pool);
  // `trimmed` also gets 7 tokens that are then dropped.
  run_batch(trimmed, h1, r1, 7, pool);
  EXPECT_EQ(trimmed.n_tokens(), 27);
  trimmed.trim(7);
  truncate(h1, 20);
  EXPECT_EQ(trimmed.n_tokens(), 20);
  EXPECT_EQ(trimmed.bytes(), fresh.bytes());
  Rng r_next(9), r_next2(9);
  auto a = run_batch(trimmed, h1, r_next, 3, pool);
  auto b = run_batch(fresh, h2, r_next2, 3, pool);
  for (int l = 0; l < 2; ++l) EXPECT_EQ(a[size_t(l)], b[size_t(l)]);
  trimmed.clear();
  EXPECT_EQ(trimmed.n_tokens(), 0);
  EXPECT_THROW(trimmed.trim(1), Error);
}

TEST(DenseCache, ThreadCountDoesNotChangeResults) {
  CacheShape s{1, 8, 2, 16, 128};
  F32KvCache c1(s), c2(s);
  History h1(s), h2(s);
  ThreadPool p1(1), p2(2);
  Rng ra(1), rb(1);
  auto a = run_batch(c1, h1, ra, 33, p1);
  auto b = run_batch(c2, h2, rb, 33, p2);
  EXPECT_EQ(a[0], b[0]);
}

TEST(DenseCache, BytesAndBitsAreExact) {
  CacheShape s{3, 4, 2, 16, 50};
  Fp16KvCache h(s);
  F32KvCache f(s);
  EXPECT_EQ(h.bytes(), 0u);
  EXPECT_EQ(h.bits_per_element(), 16.0);
  EXPECT_EQ(f.bits_per_element(), 32.0);
  EXPECT_EQ(h.scheme(), "fp16");
  EXPECT_EQ(f.scheme(), "f32");
  History hh(s), hf(s);
  Rng r(2), r2(2);
  ThreadPool pool(1);
  run_batch(h, hh, r, 9, pool);
  run_batch(f, hf, r2, 9, pool);
  EXPECT_EQ(h.bytes(), size_t(2) * 3 * 2 * 9 * 16 * 2);  // K and V, layers, kv heads, tokens, dims, bytes
  EXPECT_EQ(f.bytes(), size_t(2) * 3 * 2 * 9 * 16 * 4);
}

TEST(DenseCache, StoresRoundedValues) {
  CacheShape s{1, 2, 2, 4, 4};
  Fp16KvCache cache(s);
  ThreadPool pool(1);
  std::vector<float> k = {0.1f, -2.5f, 1e-3f, 7.0f, 3.3f, 0, 0, 1}, v = {1, 2, 3, 4, 5, 6, 7, 8.001f};
  std::vector<float> q(8, 0.0f), out(8);
  cache.begin_batch(1, Phase::Decode);
  cache.store(0, k.data(), v.data());
  cache.attend(0, q.data(), out.data(), 1.0f, pool);
  cache.end_batch();
  float got[4];
  cache.read_key(0, 0, 0, got);
  for (int i = 0; i < 4; ++i) EXPECT_EQ(got[i], round_fp16(k[size_t(i)]));
  cache.read_value(0, 1, 0, got);
  for (int i = 0; i < 4; ++i) EXPECT_EQ(got[i], round_fp16(v[size_t(4 + i)]));
}

// The vectorized conversion rounds exactly like f32_to_fp16: ties to even,
// subnormal halves, overflow to infinity, signed zeros; odd lengths.
TEST(DenseCache, Fp16ConversionEqualsScalar) {
  std::vector<float> x = {0.0f, -0.0f, 1.0f, -1.0f, 65504.0f, 65519.0f, 65520.0f, -1e9f, 1e-8f, -3e-8f,
                          5.9604645e-8f, 2.9802322e-8f, 8.940697e-8f, 6.1035156e-5f, 6.097555e-5f,
                          1.0f + 0x1p-11f, 1.0f + 0x1p-10f + 0x1p-11f, 1.0f + 0x1p-11f + 0x1p-20f,
                          std::numeric_limits<float>::infinity(), -std::numeric_limits<float>::infinity()};
  Rng rng(3);
  for (int i = 0; i < 200; ++i) x.push_back(float(rng.normal() * std::exp2(double(i % 40) - 30.0)));
  for (size_t n : {x.size(), size_t(1), size_t(15), size_t(17)}) {
    std::vector<fp16_t> got(n);
    detail::to_fp16(x.data(), got.data(), n);
    for (size_t i = 0; i < n; ++i) ASSERT_EQ(got[i], f32_to_fp16(x[i])) << "x = " << x[i] << " at " << i;
  }
}

TEST(DenseCache, RejectsOverflowAndBadShapes) {
  CacheShape s{1, 2, 1, 4, 8};
  F32KvCache cache(s);
  EXPECT_THROW(cache.begin_batch(9, Phase::Prefill), Error);
  cache.begin_batch(8, Phase::Prefill);
  std::vector<float> kv(8 * 4, 0.0f);
  cache.store(0, kv.data(), kv.data());
  cache.end_batch();
  try {
    cache.begin_batch(1, Phase::Decode);
    FAIL() << "expected Error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("context size 8"), std::string::npos) << e.what();
  }
  EXPECT_THROW(F32KvCache(CacheShape{1, 3, 2, 4, 8}), Error);  // 3 % 2 != 0
  EXPECT_THROW(F32KvCache(CacheShape{1, 2, 1, 0, 8}), Error);
}

// SIMD kernel vs scalar reference: the same blocked algorithm with a
// different summation order in the dot products (values of magnitude ~1-3).
constexpr float kSimdVsReferenceTolerance = 2e-5f;

TEST(DenseCache, SimdKernelMatchesScalarReference) {
  Rng rng(21);
  int n_fast = 0;
  for (int hd : {8, 16, 24, 32, 64, 128}) {
    for (int n_pos : {1, 17, 64, 65, 200}) {
      auto q = random_vec(rng, size_t(hd));
      auto kf = random_vec(rng, size_t(n_pos) * hd, 2.0f), vf = random_vec(rng, size_t(n_pos) * hd);
      std::vector<fp16_t> kh(kf.size()), vh(vf.size());
      for (size_t i = 0; i < kf.size(); ++i) { kh[i] = f32_to_fp16(kf[i]); vh[i] = f32_to_fp16(vf[i]); }
      std::vector<float> ref(static_cast<size_t>(hd)), fast(static_cast<size_t>(hd), 123.0f);
      attend_head_f16_ref(q.data(), kh.data(), vh.data(), n_pos, hd, 0.3f, ref.data());
      if (detail::attend_group_fast(q.data(), 1, kh.data(), vh.data(), n_pos, hd, 0.3f, fast.data())) {
        ++n_fast;
        EXPECT_LT(max_abs_diff(fast, ref), kSimdVsReferenceTolerance) << "f16 hd " << hd << " n_pos " << n_pos;
      } else {
        EXPECT_EQ(fast[0], 123.0f);  // untouched when it declines
      }
      attend_head_f32_ref(q.data(), kf.data(), vf.data(), n_pos, hd, 0.3f, ref.data());
      if (detail::attend_group_fast(q.data(), 1, kf.data(), vf.data(), n_pos, hd, 0.3f, fast.data())) {
        EXPECT_LT(max_abs_diff(fast, ref), kSimdVsReferenceTolerance) << "f32 hd " << hd << " n_pos " << n_pos;
      }
    }
  }
  EXPECT_GT(n_fast, 0);  // every x86 target has at most 16 float lanes: hd 128 always runs
}

// GQA: the query heads of a kv head go through the keys together; each
// head's output must be bit for bit what it gets alone (groups of 1 to 11,
// beyond kMaxGroupHeads too, which splits).
TEST(DenseCache, GroupOfHeadsEqualsEachHeadAlone) {
  Rng rng(22);
  for (int hd : {8, 64, 128}) {
    for (int n_q : {1, 2, 3, 8, 11}) {
      const int n_pos = 131;
      auto q = random_vec(rng, size_t(n_q) * hd);
      auto kf = random_vec(rng, size_t(n_pos) * hd, 2.0f), vf = random_vec(rng, size_t(n_pos) * hd);
      std::vector<fp16_t> kh(kf.size()), vh(vf.size());
      for (size_t i = 0; i < kf.size(); ++i) { kh[i] = f32_to_fp16(kf[i]); vh[i] = f32_to_fp16(vf[i]); }
      std::vector<float> together(size_t(n_q) * hd), alone(static_cast<size_t>(hd));
      attend_group_f16(q.data(), n_q, kh.data(), vh.data(), n_pos, hd, 0.3f, together.data());
      for (int h = 0; h < n_q; ++h) {
        attend_head_f16(q.data() + size_t(h) * hd, kh.data(), vh.data(), n_pos, hd, 0.3f, alone.data());
        ASSERT_EQ(alone, std::vector<float>(together.begin() + ptrdiff_t(h) * hd, together.begin() + ptrdiff_t(h + 1) * hd))
            << "hd " << hd << " n_q " << n_q << " head " << h;
      }
      attend_group_f32(q.data(), n_q, kf.data(), vf.data(), n_pos, hd, 0.3f, together.data());
      for (int h = 0; h < n_q; ++h) {
        attend_head_f32(q.data() + size_t(h) * hd, kf.data(), vf.data(), n_pos, hd, 0.3f, alone.data());
        ASSERT_EQ(alone, std::vector<float>(together.begin() + ptrdiff_t(h) * hd, together.begin() + ptrdiff_t(h + 1) * hd))
            << "f32 hd " << hd << " n_q " << n_q << " head " << h;
      }
    }
  }
}

TEST(DenseCache, FastAndReferenceCachesAgree) {
  CacheShape s{1, 4, 2, 64, 100};
  Fp16KvCache fast(s), ref(s);
  ref.set_use_fast_kernels(false);
  History h1(s), h2(s);
  ThreadPool pool(2);
  Rng r1(4), r2(4);
  auto a = run_batch(fast, h1, r1, 70, pool);
  auto b = run_batch(ref, h2, r2, 70, pool);
  EXPECT_LT(max_abs_diff(a[0], b[0]), 10 * kSimdVsReferenceTolerance);  // values up to ~13
}

TEST(OnlineSoftmax, MergeOfSplitsEqualsWhole) {
  const int hd = 5, n = 40;
  Rng rng(9);
  auto q = random_vec(rng, hd), keys = random_vec(rng, size_t(n) * hd, 3.0f), vals = random_vec(rng, size_t(n) * hd);
  std::vector<float> whole(hd), left(hd), right(hd);
  attend_head_f32_ref(q.data(), keys.data(), vals.data(), n, hd, 0.7f, whole.data());
  // Build unnormalized states by hand for [0, 17) and [17, n).
  auto state_over = [&](int b, int e, float* o) {
    SoftmaxState st(o, hd);
    for (int j = b; j < e; ++j) {
      float d = 0;
      for (int i = 0; i < hd; ++i) d += q[size_t(i)] * keys[size_t(j * hd + i)];
      const float m = st.rescale_for(0.7f * d);
      const float w = std::exp(0.7f * d - m);
      st.d += w;
      for (int i = 0; i < hd; ++i) o[i] += w * vals[size_t(j * hd + i)];
    }
    return st;
  };
  SoftmaxState a = state_over(0, 17, left.data());
  SoftmaxState b = state_over(17, n, right.data());
  std::vector<float> empty_buf(hd);
  SoftmaxState empty(empty_buf.data(), hd);
  a.merge(empty);
  a.merge(b);
  a.normalize();
  for (int i = 0; i < hd; ++i) EXPECT_NEAR(left[size_t(i)], whole[size_t(i)], 1e-5f);
}

}  // namespace
}  // namespace turbokv::kv
