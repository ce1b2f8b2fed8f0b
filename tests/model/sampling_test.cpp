#include "model/sampling.h"

#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <vector>

#include "util/error.h"
#include "util/rng.h"

namespace turbokv::model {
namespace {

std::vector<float> random_logits(uint64_t seed, int n) {
  Rng rng(seed);
  std::vector<float> v(static_cast<size_t>(n));
  for (auto& x : v) x = float(rng.normal() * 3.0);
  return v;
}

std::vector<Candidate> candidates_from_probs(const std::vector<float>& p) {
  std::vector<Candidate> c;
  for (size_t i = 0; i < p.size(); ++i) c.push_back({int32_t(i), std::log(p[i]), 0.0f});
  return c;
}

std::vector<int32_t> ids(const std::vector<Candidate>& c) {
  std::vector<int32_t> r;
  for (const auto& x : c) r.push_back(x.id);
  return r;
}

TEST(Sampling, TemperatureZeroIsArgmax) {
  for (uint64_t seed = 0; seed < 20; ++seed) {
    const auto logits = random_logits(seed, 500);
    SamplingParams p;
    p.temperature = 0.0f;
    p.seed = seed;
    Sampler s(p, 500);
    EXPECT_EQ(s.sample(logits.data()), argmax(logits.data(), 500));
  }
}

TEST(Sampling, TopK1IsGreedyAtAnyTemperature) {
  for (uint64_t seed = 0; seed < 20; ++seed) {
    const auto logits = random_logits(seed + 100, 300);
    SamplingParams p;
    p.temperature = 1.5f;
    p.top_k = 1;
    p.seed = seed;
    Sampler s(p, 300);
    EXPECT_EQ(s.sample(logits.data()), argmax(logits.data(), 300));
  }
}

TEST(Sampling, FixedSeedReproduces) {
  const auto logits = random_logits(7, 200);
  auto draw = [&](uint64_t seed) {
    SamplingParams p;
    p.temperature = 1.0f;
    p.top_k = 0;
    p.top_p = 1.0f;
    p.min_p = 0.0f;
    p.seed = seed;
    Sampler s(p, 200);
    std::vector<int32_t> out;
    for (int i = 0; i < 50; ++i) out.push_back(s.sample(logits.data()));
    return out;
  };
  EXPECT_EQ(draw(1), draw(1));
  EXPECT_NE(draw(1), draw(2));
}

TEST(Sampling, FrequenciesFollowSoftmax) {
  const std::vector<float> logits = {0.0f, 1.0f, 2.0f, -1.0f};
  SamplingParams p;
  p.temperature = 1.0f;
  p.top_k = 0;
  p.top_p = 1.0f;
  p.min_p = 0.0f;
  p.seed = 3;
  Sampler s(p, 4);
  std::vector<int> count(4);
  const int n = 20000;
  for (int i = 0; i < n; ++i) ++count[size_t(s.sample(logits.data()))];
  double z = 0;
  for (float l : logits) z += std::exp(l);
  for (int i = 0; i < 4; ++i) {
    const double p_i = std::exp(logits[size_t(i)]) / z;
    const double sd = std::sqrt(p_i * (1 - p_i) / n);
    EXPECT_NEAR(double(count[size_t(i)]) / n, p_i, 5 * sd) << "token " << i;
  }
}

TEST(Sampling, TopPKeepsSmallestPrefixReachingP) {
  const std::vector<float> p = {0.05f, 0.5f, 0.15f, 0.3f};  // sorted: 1 (.5), 3 (.3), 2 (.15), 0 (.05)
  auto c = candidates_from_probs(p);
  top_p_filter(c, 0.7f);
  EXPECT_EQ(ids(c), (std::vector<int32_t>{1, 3}));
  c = candidates_from_probs(p);
  top_p_filter(c, 0.9f);
  EXPECT_EQ(ids(c), (std::vector<int32_t>{1, 3, 2}));
  c = candidates_from_probs(p);
  top_p_filter(c, 0.4f);
  EXPECT_EQ(ids(c), (std::vector<int32_t>{1}));
  c = candidates_from_probs(p);
  top_p_filter(c, 1.0f);  // off
  EXPECT_EQ(c.size(), 4u);
}

TEST(Sampling, MinPKeepsTokensAboveFractionOfMax) {
  const std::vector<float> p = {0.05f, 0.5f, 0.15f, 0.3f};
  auto c = candidates_from_probs(p);
  min_p_filter(c, 0.25f);  // threshold 0.125
  EXPECT_EQ(ids(c), (std::vector<int32_t>{1, 3, 2}));
  c = candidates_from_probs(p);
  min_p_filter(c, 0.5f);  // threshold 0.25
  EXPECT_EQ(ids(c), (std::vector<int32_t>{1, 3}));
  c = candidates_from_probs(p);
  min_p_filter(c, 0.99f);
  EXPECT_EQ(ids(c), (std::vector<int32_t>{1}));
}

TEST(Sampling, TopKKeepsKLargest) {
  const std::vector<float> p = {0.05f, 0.5f, 0.15f, 0.3f};
  auto c = candidates_from_probs(p);
  top_k_filter(c, 2);
  EXPECT_EQ(ids(c), (std::vector<int32_t>{1, 3}));
}

TEST(Sampling, RepetitionPenaltyDividesPositiveMultipliesNegative) {
  std::vector<float> logits = {2.0f, -2.0f, 1.0f, 0.5f};
  const int32_t last[] = {0, 1, 1, 0};  // repeated tokens are penalized once
  apply_repetition_penalty(logits.data(), 4, last, 4, 2.0f);
  EXPECT_EQ(logits, (std::vector<float>{1.0f, -4.0f, 1.0f, 0.5f}));
}

TEST(Sampling, RepetitionPenaltyChangesGreedyChoiceOverLastN) {
  const std::vector<float> logits = {3.0f, 2.0f, 0.0f};
  SamplingParams p;
  p.temperature = 0.0f;
  p.repeat_penalty = 2.0f;
  p.repeat_last_n = 2;
  Sampler s(p, 3);
  EXPECT_EQ(s.sample(logits.data()), 0);
  s.accept(0);  // 3 / 2 = 1.5 < 2
  EXPECT_EQ(s.sample(logits.data()), 1);
  s.accept(2);
  s.accept(2);  // token 0 has left the 2-token window
  EXPECT_EQ(s.sample(logits.data()), 0);
}

TEST(Sampling, BadParametersNameTheFlag) {
  SamplingParams p;
  p.top_p = 0.0f;
  try {
    Sampler s(p, 10);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("--top-p"), std::string::npos);
  }
  p = SamplingParams{};
  p.repeat_penalty = -1.0f;
  EXPECT_THROW(Sampler(p, 10), Error);
}

}  // namespace
}  // namespace turbokv::model
