// Speculative decoding (Leviathan et al. 2023, arXiv:2211.17192; Chen et al.
// 2023, arXiv:2302.01318): a small draft model proposes k tokens, the target
// verifies them in one batched forward pass of k + 1 tokens.
//
// Each step feeds the target [pending, d_1 .. d_k] (pending: the last token
// committed, not yet in the target cache) with Phase::Decode, so compressed
// caches encode the batch exactly as one-token decode steps would, and
// LogitsMode::All: row i is the target's distribution for the token after
// d_i (row 0: after pending). Greedy: d_i is accepted iff it equals the
// token the target's sampler picks from row i - 1, so the output equals
// plain greedy decoding. Sampled: d_i ~ q is accepted with probability
// min(1, p(d_i) / q(d_i)); on rejection the token is drawn from
// normalize(max(0, p - q)); this keeps exactly the target's distribution.
// Rejected tokens are trimmed from both caches (KvCache::trim).
//
// The first decode step runs with k = 0 (the pending token alone), so a
// two-phase cache calibrates on the same tokens and queries as plain decoding.
// Cost per step: k draft forwards of 1 token (more after a full acceptance)
// plus one target forward of k + 1 tokens.
#pragma once

#include <cstdint>
#include <vector>

#include "kv/kv_cache.h"
#include "model/generate.h"
#include "model/model.h"
#include "model/sampling.h"
#include "util/rng.h"
#include "util/thread_pool.h"

namespace turbokv::model {

struct SpeculativeParams {
  int n_draft = 4;  // tokens the draft proposes per step (k)
};

struct SpeculativeStats : GenerateStats {
  int n_steps = 0;      // target verification passes
  int n_drafted = 0;    // draft tokens proposed
  int n_accepted = 0;   // of which accepted (and emitted)
  double draft_seconds = 0.0;  // draft forwards (prefill excluded), inside decode_seconds
  double acceptance_rate() const { return n_drafted > 0 ? double(n_accepted) / n_drafted : 0.0; }
};

// Like generate() (generate.h), with `draft` proposing tokens. The two models
// must share the vocabulary. target_cache may hold prompt[0, n_cached) (a
// restored prompt cache); draft_cache must be empty. Greedy when the
// sampler's temperature is <= 0 (then the output equals generate()'s); else
// sampled with the sampler's parameters (penalty, top-k/p, min-p, temperature)
// applied to both models, random draws from an Rng seeded by params().seed.
SpeculativeStats generate_speculative(const Model& target, const Model& draft, const std::vector<int32_t>& prompt,
                                      int n_predict, Sampler& sampler, kv::KvCache& target_cache,
                                      kv::KvCache& draft_cache, Scratch& target_scratch, Scratch& draft_scratch,
                                      ThreadPool& pool, const GenerateCallbacks& callbacks,
                                      const SpeculativeParams& params, int n_cached = 0);

// ---- building blocks, exposed for tests ----

// The distribution Sampler::sample draws from (temperature > 0) over the
// whole vocabulary, with `history` (oldest first, already cut to
// repeat_last_n) for the repetition penalty.   probs: (n_vocab)
void sampling_distribution(const SamplingParams& params, const float* logits, int n_vocab,
                           const std::vector<int32_t>& history, std::vector<float>& probs);

// Draws from a distribution.   probs: (n)
int32_t draw(const float* probs, int n, Rng& rng);

struct SpeculativeDecision {
  int32_t token;  // the draft token if accepted, else the replacement
  bool accepted;
};
// One acceptance test: draft token x was drawn from q; the target's
// distribution is p.   p, q: (n)
SpeculativeDecision speculative_accept(const float* p, const float* q, int n, int32_t x, Rng& rng);

}  // namespace turbokv::model
