#include "model/sampling.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "util/error.h"

namespace turbokv::model {

void validate(const SamplingParams& p) {
  if (!std::isfinite(p.temperature)) throw Error("--temp must be a finite number");
  if (!(p.top_p > 0.0f) || !std::isfinite(p.top_p)) throw Error("--top-p must be in (0, 1], got " + std::to_string(p.top_p));
  if (!(p.min_p >= 0.0f && p.min_p <= 1.0f)) throw Error("--min-p must be in [0, 1], got " + std::to_string(p.min_p));
  if (!(p.repeat_penalty > 0.0f) || !std::isfinite(p.repeat_penalty)) {
    throw Error("--repeat-penalty must be positive, got " + std::to_string(p.repeat_penalty));
  }
  if (p.repeat_last_n < 0) throw Error("--repeat-last-n must be >= 0, got " + std::to_string(p.repeat_last_n));
}

void apply_repetition_penalty(float* logits, int n_vocab, const int32_t* last, int n_last, float penalty) {
  if (penalty == 1.0f) return;
  // Each distinct token is penalized once, however often it occurred.
  for (int i = 0; i < n_last; ++i) {
    const int32_t t = last[i];
    if (t < 0 || t >= n_vocab) continue;
    bool seen = false;
    for (int j = 0; j < i && !seen; ++j) seen = last[j] == t;
    if (seen) continue;
    logits[t] = logits[t] > 0.0f ? logits[t] / penalty : logits[t] * penalty;
  }
}

int32_t argmax(const float* logits, int n) {
  int32_t best = 0;
  for (int i = 1; i < n; ++i) if (logits[i] > logits[best]) best = i;
  return best;
}

static void sort_by_logit(std::vector<Candidate>& c) {
  std::sort(c.begin(), c.end(), [](const Candidate& a, const Candidate& b) {
    return a.logit > b.logit || (a.logit == b.logit && a.id < b.id);
  });
}

void softmax_sorted(std::vector<Candidate>& c) {
  if (c.empty()) return;
  sort_by_logit(c);
  const float m = c[0].logit;
  double sum = 0.0;
  for (auto& x : c) { x.p = std::exp(x.logit - m); sum += x.p; }
  for (auto& x : c) x.p = float(x.p / sum);
}

void top_k_filter(std::vector<Candidate>& c, int k) {
  if (k <= 0 || size_t(k) >= c.size()) { sort_by_logit(c); return; }
  std::partial_sort(c.begin(), c.begin() + k, c.end(), [](const Candidate& a, const Candidate& b) {
    return a.logit > b.logit || (a.logit == b.logit && a.id < b.id);
  });
  c.resize(size_t(k));
}

void top_p_filter(std::vector<Candidate>& c, float p) {
  if (p >= 1.0f || c.empty()) return;
  softmax_sorted(c);
  double cum = 0.0;
  size_t keep = c.size();
  for (size_t i = 0; i < c.size(); ++i) {
    cum += c[i].p;
    if (cum >= p) { keep = i + 1; break; }
  }
  c.resize(keep);
}

void min_p_filter(std::vector<Candidate>& c, float min_p) {
  if (min_p <= 0.0f || c.empty()) return;
  softmax_sorted(c);
  const float threshold = c[0].p * min_p;
  size_t keep = 1;
  while (keep < c.size() && c[keep].p >= threshold) ++keep;
  c.resize(keep);
}

Sampler::Sampler(const SamplingParams& params, int n_vocab)
    : params_(params), n_vocab_(n_vocab), rng_(params.seed) {
  validate(params);
  cand_.reserve(size_t(n_vocab));
  history_.reserve(size_t(params.repeat_last_n));
  penalized_.resize(size_t(n_vocab));
}

void Sampler::accept(int32_t token) {
  if (params_.repeat_last_n == 0) return;
  if (int(history_.size()) == params_.repeat_last_n) history_.erase(history_.begin());  // no reallocation
  history_.push_back(token);
}

int32_t Sampler::sample(const float* logits) {
  std::copy(logits, logits + n_vocab_, penalized_.begin());
  apply_repetition_penalty(penalized_.data(), n_vocab_, history_.data(), int(history_.size()),
                           params_.repeat_penalty);
  cand_.clear();
  if (params_.temperature <= 0.0f) {
    const int32_t best = argmax(penalized_.data(), n_vocab_);
    cand_.push_back({best, penalized_[size_t(best)], 1.0f});
    return best;
  }
  for (int i = 0; i < n_vocab_; ++i) cand_.push_back({i, penalized_[size_t(i)], 0.0f});
  top_k_filter(cand_, params_.top_k);
  top_p_filter(cand_, params_.top_p);
  min_p_filter(cand_, params_.min_p);
  for (auto& x : cand_) x.logit /= params_.temperature;
  softmax_sorted(cand_);
  const double r = rng_.uniform();
  double cum = 0.0;
  for (const auto& x : cand_) {
    cum += x.p;
    if (r < cum) return x.id;
  }
  return cand_.back().id;
}

}  // namespace turbokv::model
