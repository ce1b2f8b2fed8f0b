// Perplexity scoring as llama.cpp's llama-perplexity does it, so numbers are
// comparable with its published ones:
//   the text is tokenized once (with BOS); chunk i is tokens [i*ctx, (i+1)*ctx)
//   with its first token replaced by BOS; the chunk runs through an empty
//   cache as one prefill batch with logits for every position; positions
//   j in [ctx/2, ctx-1) are scored against tokens[j+1].
//   PPL = exp(mean NLL); its error estimate is PPL * sqrt(var(NLL) / (N-1)).
// The per-chunk hook gives each chunk's logits to callers that compare
// schemes (KL divergence, top-1 agreement) without re-running the model.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "kv/kv_cache.h"
#include "model/model.h"
#include "util/thread_pool.h"

namespace turbokv::model {

struct PerplexityOptions {
  int n_ctx = 512;
  int n_chunks = -1;  // < 0: as many whole chunks as the text holds
};

// Running sums of the negative log-likelihood over scored tokens.
struct NllAccumulator {
  double nll = 0.0;   // Σ -log p(target)
  double nll2 = 0.0;  // Σ (-log p(target))^2
  int64_t count = 0;
  void add(double v) { nll += v; nll2 += v * v; ++count; }
  double ppl() const;      // exp(nll / count)
  double ppl_error() const;  // llama.cpp's "+/-"
};

// log p(target) under softmax(logits), max-subtracted, sum in double (llama.cpp's log_softmax).
double log_softmax_at(const float* logits, int n_vocab, int32_t target);

// Scores rows [first, last) of one chunk's logits against tokens[j + 1].
// logits: (n_ctx, n_vocab)   tokens: (n_ctx) the chunk's original tokens
void score_chunk(const float* logits, int n_vocab, const int32_t* tokens, int first, int last, NllAccumulator& acc);

struct ChunkView {
  int index;                // chunk number
  const int32_t* tokens;    // (n_ctx) as evaluated (first one is BOS)
  const float* logits;      // (n_ctx, n_vocab)
  int first;                // first scored row: n_ctx / 2
  int last;                 // one past the last scored row: n_ctx - 1
  double running_ppl;       // PPL over all chunks so far, this one included
};

struct PerplexityResult {
  int n_chunks = 0;
  int n_ctx = 0;
  NllAccumulator total;
  std::vector<double> running_ppl;  // (n_chunks) PPL after each chunk
  double seconds = 0.0;
  double ppl() const { return total.ppl(); }
  double ppl_error() const { return total.ppl_error(); }
};

// Runs every chunk through `cache` (cleared before each). bos replaces each
// chunk's first token (llama.cpp does so when the vocabulary adds BOS); pass
// a negative id to keep the text's own token. on_chunk, if set,
// sees each chunk's tokens and logits after scoring. Throws Error if the text
// has fewer than 2 * n_ctx tokens (as llama.cpp does) or n_ctx exceeds the
// cache.
PerplexityResult evaluate_perplexity(const Model& model, const std::vector<int32_t>& tokens, int32_t bos,
                                     const PerplexityOptions& options, kv::KvCache& cache, Scratch& scratch,
                                     ThreadPool& pool, const std::function<void(const ChunkView&)>& on_chunk = {});

}  // namespace turbokv::model
