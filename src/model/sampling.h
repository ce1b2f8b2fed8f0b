// Token sampling with llama.cpp's semantics and order:
//   repetition penalty -> top-k -> top-p -> min-p -> temperature -> draw.
// temperature <= 0 means greedy (argmax after the penalty). Randomness comes
// from a seeded util Rng, so a seed reproduces a run on every machine.
#pragma once

#include <cstdint>
#include <vector>

#include "util/rng.h"

namespace turbokv::model {

struct SamplingParams {
  float temperature = 0.8f;   // <= 0: greedy
  int top_k = 40;             // <= 0: off
  float top_p = 0.95f;        // >= 1: off
  float min_p = 0.05f;        // <= 0: off
  float repeat_penalty = 1.0f;  // 1: off
  int repeat_last_n = 64;     // tokens of history the penalty looks at
  uint64_t seed = 0;
};

// Throws Error naming the flag (--temp, --top-k, ...) for out-of-range values.
void validate(const SamplingParams& p);

struct Candidate {
  int32_t id;
  float logit;
  float p;
};

class Sampler {
 public:
  Sampler(const SamplingParams& params, int n_vocab);

  // Picks the next token from logits (n_vocab); does not modify them.
  int32_t sample(const float* logits);
  // Appends a token to the penalty history (prompt and generated tokens).
  void accept(int32_t token);
  void reset_history() { history_.clear(); }

  const SamplingParams& params() const { return params_; }
  // The candidates left after the last sample()'s filters, most probable
  // first, with p normalized over them (for tests).
  const std::vector<Candidate>& candidates() const { return cand_; }

 private:
  SamplingParams params_;
  int n_vocab_;
  Rng rng_;
  std::vector<int32_t> history_;  // (<= repeat_last_n) last accepted tokens, oldest first
  std::vector<Candidate> cand_;  // (n_vocab) reused
  std::vector<float> penalized_; // (n_vocab) reused
};

// Building blocks (each llama.cpp's sampler of the same name), exposed for
// tests. Candidates are sorted by logit, descending, where noted.
void apply_repetition_penalty(float* logits, int n_vocab, const int32_t* last_tokens, int n_last, float penalty);
int32_t argmax(const float* logits, int n);
void softmax_sorted(std::vector<Candidate>& c);                 // sorts, fills p
void top_k_filter(std::vector<Candidate>& c, int k);            // sorted result
void top_p_filter(std::vector<Candidate>& c, float p);          // keeps the smallest prefix with mass >= p
void min_p_filter(std::vector<Candidate>& c, float min_p);      // keeps p >= min_p * p_max

}  // namespace turbokv::model
