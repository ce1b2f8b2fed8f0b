#include "model/speculative.h"

#include <algorithm>
#include <chrono>
#include <string>

#include "util/error.h"

namespace turbokv::model {

namespace {

using clock = std::chrono::steady_clock;

double seconds(clock::time_point a, clock::time_point b) { return std::chrono::duration<double>(b - a).count(); }

// The last n tokens of a followed by b, oldest first (the penalty window).
std::vector<int32_t> window(const std::vector<int32_t>& a, const std::vector<int32_t>& b, int n) {
  const size_t total = a.size() + b.size();
  const size_t start = total > size_t(n) ? total - size_t(n) : 0;
  std::vector<int32_t> out;
  out.reserve(total - start);
  for (size_t i = start; i < total; ++i) out.push_back(i < a.size() ? a[i] : b[i - a.size()]);
  return out;
}

// Sampler::sample's greedy pick: argmax after the repetition penalty.
int32_t greedy_pick(const SamplingParams& p, const float* logits, int n_vocab, const std::vector<int32_t>& history,
                    std::vector<float>& buf) {
  buf.assign(logits, logits + n_vocab);
  apply_repetition_penalty(buf.data(), n_vocab, history.data(), int(history.size()), p.repeat_penalty);
  return argmax(buf.data(), n_vocab);
}

}  // namespace

void sampling_distribution(const SamplingParams& params, const float* logits, int n_vocab,
                           const std::vector<int32_t>& history, std::vector<float>& probs) {
  TKV_ASSERT(params.temperature > 0.0f, "sampling_distribution needs a positive temperature");
  std::vector<float> penalized(logits, logits + n_vocab);
  apply_repetition_penalty(penalized.data(), n_vocab, history.data(), int(history.size()), params.repeat_penalty);
  std::vector<Candidate> cand;
  cand.reserve(size_t(n_vocab));
  for (int i = 0; i < n_vocab; ++i) cand.push_back({i, penalized[size_t(i)], 0.0f});
  // Same filters, same order as Sampler::sample.
  top_k_filter(cand, params.top_k);
  top_p_filter(cand, params.top_p);
  min_p_filter(cand, params.min_p);
  for (auto& x : cand) x.logit /= params.temperature;
  softmax_sorted(cand);
  probs.assign(size_t(n_vocab), 0.0f);
  for (const auto& x : cand) probs[size_t(x.id)] = x.p;
}

int32_t draw(const float* probs, int n, Rng& rng) {
  const double r = rng.uniform();
  double cum = 0.0;
  int32_t last = 0;
  for (int i = 0; i < n; ++i) {
    if (probs[i] <= 0.0f) continue;
    cum += probs[i];
    last = i;
    if (r < cum) return i;
  }
  return last;  // rounding: r beyond the float sum
}

SpeculativeDecision speculative_accept(const float* p, const float* q, int n, int32_t x, Rng& rng) {
  TKV_ASSERT(x >= 0 && x < n, "draft token out of range");
  const double px = p[x], qx = q[x];
  // Accept with probability min(1, p(x) / q(x)).
  if (qx <= 0.0 ? px > 0.0 : rng.uniform() * qx < px) return {x, true};
  // Rejected: draw from normalize(max(0, p - q)).
  std::vector<float> residual(static_cast<size_t>(n));
  double sum = 0.0;
  for (int i = 0; i < n; ++i) {
    residual[size_t(i)] = std::max(0.0f, p[i] - q[i]);
    sum += residual[size_t(i)];
  }
  if (!(sum > 0.0)) return {draw(p, n, rng), false};  // p == q up to rounding
  for (auto& r : residual) r = float(r / sum);
  return {draw(residual.data(), n, rng), false};
}

SpeculativeStats generate_speculative(const Model& target, const Model& draft, const std::vector<int32_t>& prompt,
                                      int n_predict, Sampler& sampler, kv::KvCache& target_cache,
                                      kv::KvCache& draft_cache, Scratch& target_scratch, Scratch& draft_scratch,
                                      ThreadPool& pool, const GenerateCallbacks& cb, const SpeculativeParams& params,
                                      int n_cached) {
  if (prompt.empty()) throw Error("generate: the prompt has no tokens");
  if (n_predict < 0) throw Error("generate: number of tokens to predict must be >= 0, got " + std::to_string(n_predict));
  if (params.n_draft < 0) throw Error("--draft-n must be >= 0, got " + std::to_string(params.n_draft));
  const int n_vocab = target.config().n_vocab;
  if (draft.config().n_vocab != n_vocab) {
    throw Error("--draft: the draft model has " + std::to_string(draft.config().n_vocab) +
                " tokens in its vocabulary, the target " + std::to_string(n_vocab) + "; they must share one");
  }
  if (n_cached < 0 || n_cached >= int(prompt.size()) || target_cache.n_tokens() != n_cached) {
    throw Error("generate: " + std::to_string(n_cached) + " cached prompt tokens (cache holds " +
                std::to_string(target_cache.n_tokens()) + ") for a prompt of " + std::to_string(prompt.size()));
  }
  if (draft_cache.n_tokens() != 0) throw Error("generate: the draft model's cache must start empty");

  const SamplingParams& sp = sampler.params();
  const bool greedy = sp.temperature <= 0.0f;
  const int K = params.n_draft;
  const int t_max = target_cache.shape().max_tokens, d_max = draft_cache.shape().max_tokens;
  std::vector<float> t_logits(size_t(K + 1) * n_vocab);  // (k + 1, n_vocab) verification rows
  std::vector<float> d_logits(static_cast<size_t>(n_vocab));         // (n_vocab) draft's next-token logits
  std::vector<std::vector<float>> q_dists(static_cast<size_t>(K));   // (k) x (n_vocab) draft distributions
  std::vector<float> p_dist, buf;
  Rng rng(mix_seed(sp.seed, 0x73706563ull));  // "spec": not the sampler's stream
  std::vector<int32_t> history = window(prompt, {}, sp.repeat_last_n);  // penalty window, oldest first

  SpeculativeStats st;
  st.n_prompt = int(prompt.size());
  st.n_prompt_cached = n_cached;
  for (int32_t t : prompt) sampler.accept(t);
  const auto t0 = clock::now();
  target.forward(prompt.data() + n_cached, int(prompt.size()) - n_cached, target_cache, Phase::Prefill,
                 LogitsMode::Last, t_logits.data(), target_scratch, pool);
  draft.forward(prompt.data(), int(prompt.size()), draft_cache, Phase::Prefill, LogitsMode::Last, d_logits.data(),
                draft_scratch, pool);
  st.prompt_seconds = seconds(t0, clock::now());
  if (n_predict == 0) return st;

  const auto t_decode = clock::now();
  // Commits and streams one token; false: stop generating.
  bool eog = false;
  auto emit = [&](int32_t token) {
    if (cb.is_eog && cb.is_eog(token)) { st.stopped_at_eog = eog = true; return false; }
    sampler.accept(token);
    history.push_back(token);
    if (int(history.size()) > sp.repeat_last_n) history.erase(history.begin());
    ++st.n_generated;
    if (cb.on_token && !cb.on_token(token)) return false;
    return st.n_generated < n_predict;
  };
  auto pick = [&](const float* logits) {
    if (greedy) return sampler.sample(logits);
    sampling_distribution(sp, logits, n_vocab, history, p_dist);
    return draw(p_dist.data(), n_vocab, rng);
  };

  int32_t pending = pick(t_logits.data());  // committed, not yet in the target cache
  bool go = emit(pending);
  std::vector<int32_t> draft_missing{pending};  // committed, not yet in the draft cache
  std::vector<int32_t> drafts, batch;
  bool first = true;
  while (go) {
    if (target_cache.n_tokens() >= t_max) { st.stopped_at_context = true; break; }
    // The first step verifies nothing: a two-phase cache then calibrates on
    // exactly what plain decoding's first step gives it.
    int k = first ? 0 : K;
    k = std::min(k, n_predict - st.n_generated - 1);              // tokens still wanted, bonus included
    k = std::min(k, t_max - target_cache.n_tokens() - 1);         // target room for [pending, d_1..d_k]
    k = std::min(k, d_max - draft_cache.n_tokens() - int(draft_missing.size()) + 1);  // draft room
    k = std::max(k, 0);

    drafts.clear();
    if (k > 0) {
      const auto td = clock::now();
      draft.forward(draft_missing.data(), int(draft_missing.size()), draft_cache, Phase::Decode, LogitsMode::Last,
                    d_logits.data(), draft_scratch, pool);
      draft_missing.clear();
      for (int i = 0; i < k; ++i) {
        const std::vector<int32_t> hist = window(history, drafts, sp.repeat_last_n);
        int32_t d;
        if (greedy) {
          d = greedy_pick(sp, d_logits.data(), n_vocab, hist, buf);
        } else {
          sampling_distribution(sp, d_logits.data(), n_vocab, hist, q_dists[size_t(i)]);
          d = draw(q_dists[size_t(i)].data(), n_vocab, rng);
        }
        drafts.push_back(d);
        if (i + 1 < k) {
          draft.forward(&d, 1, draft_cache, Phase::Decode, LogitsMode::Last, d_logits.data(), draft_scratch, pool);
        }
      }
      st.draft_seconds += seconds(td, clock::now());
    }

    // Verify [pending, d_1..d_k] in one pass.
    batch.assign(1, pending);
    batch.insert(batch.end(), drafts.begin(), drafts.end());
    target.forward(batch.data(), k + 1, target_cache, Phase::Decode, LogitsMode::All, t_logits.data(),
                   target_scratch, pool);
    ++st.n_steps;

    int accepted = 0;  // drafts committed
    int32_t next = pending;
    for (int i = 0; i <= k; ++i) {
      const float* row = t_logits.data() + size_t(i) * n_vocab;
      int32_t token;
      bool is_draft = false;
      if (greedy) {
        token = sampler.sample(row);
        is_draft = i < k && token == drafts[size_t(i)];
      } else if (i < k) {
        sampling_distribution(sp, row, n_vocab, history, p_dist);
        const SpeculativeDecision dec = speculative_accept(p_dist.data(), q_dists[size_t(i)].data(), n_vocab,
                                                           drafts[size_t(i)], rng);
        token = dec.token;
        is_draft = dec.accepted;
      } else {
        token = pick(row);
      }
      go = emit(token);
      if (eog) break;
      next = token;
      ++st.n_decoded;
      if (is_draft) ++accepted;
      if (!go || !is_draft) break;
    }
    st.n_drafted += k;
    st.n_accepted += accepted;
    // The target cache holds [.., pending, d_1..d_k]; keep what was committed.
    target_cache.trim(k - accepted);
    if (k > 0) {
      // The draft cache holds [.., d_1..d_{k-1}].
      const int keep = std::min(accepted, k - 1);
      draft_cache.trim(k - 1 - keep);
      draft_missing.assign(drafts.begin() + keep, drafts.begin() + accepted);
    }
    if (!go) break;
    draft_missing.push_back(next);
    pending = next;
    first = false;
  }
  st.decode_seconds = seconds(t_decode, clock::now());
  return st;
}

}  // namespace turbokv::model
