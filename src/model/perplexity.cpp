#include "model/perplexity.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <string>

#include "util/error.h"

namespace turbokv::model {

double NllAccumulator::ppl() const { return count > 0 ? std::exp(nll / double(count)) : 0.0; }

double NllAccumulator::ppl_error() const {
  if (count < 2) return 0.0;
  const double mean = nll / double(count);
  const double var = nll2 / double(count) - mean * mean;
  return var > 0.0 ? std::sqrt(var / double(count - 1)) * ppl() : 0.0;
}

double log_softmax_at(const float* logits, int n_vocab, int32_t target) {
  float max_logit = logits[0];
  for (int j = 1; j < n_vocab; ++j) max_logit = std::max(max_logit, logits[j]);
  double sum_exp = 0.0;
  for (int j = 0; j < n_vocab; ++j) sum_exp += std::exp(logits[j] - max_logit);
  return double(logits[target] - max_logit) - std::log(sum_exp);
}

void score_chunk(const float* logits, int n_vocab, const int32_t* tokens, int first, int last, NllAccumulator& acc) {
  for (int j = first; j < last; ++j) {
    acc.add(-log_softmax_at(logits + size_t(j) * n_vocab, n_vocab, tokens[j + 1]));
  }
}

PerplexityResult evaluate_perplexity(const Model& model, const std::vector<int32_t>& tokens, int32_t bos,
                                     const PerplexityOptions& opt, kv::KvCache& cache, Scratch& scratch,
                                     ThreadPool& pool, const std::function<void(const ChunkView&)>& on_chunk) {
  const int n_ctx = opt.n_ctx;
  if (n_ctx < 4) throw Error("perplexity: --ctx must be at least 4, got " + std::to_string(n_ctx));
  if (n_ctx > cache.shape().max_tokens) {
    throw Error("perplexity: --ctx " + std::to_string(n_ctx) + " exceeds the cache capacity " +
                std::to_string(cache.shape().max_tokens));
  }
  if (tokens.size() < size_t(2) * n_ctx) {
    throw Error("perplexity: the text has " + std::to_string(tokens.size()) + " tokens; need at least 2 * --ctx = " +
                std::to_string(2 * n_ctx));
  }
  const int n_vocab = model.config().n_vocab;
  const int max_chunks = int(tokens.size() / size_t(n_ctx));
  PerplexityResult r;
  r.n_ctx = n_ctx;
  r.n_chunks = opt.n_chunks < 0 ? max_chunks : std::min(opt.n_chunks, max_chunks);
  std::vector<float> logits(size_t(n_ctx) * n_vocab);  // (n_ctx, n_vocab)
  std::vector<int32_t> chunk(static_cast<size_t>(n_ctx));            // (n_ctx)
  const int first = n_ctx / 2, last = n_ctx - 1;
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < r.n_chunks; ++i) {
    std::copy(tokens.begin() + size_t(i) * n_ctx, tokens.begin() + size_t(i + 1) * n_ctx, chunk.begin());
    if (bos >= 0) chunk[0] = bos;
    cache.clear();
    model.forward(chunk.data(), n_ctx, cache, Phase::Prefill, LogitsMode::All, logits.data(), scratch, pool);
    // Targets are the original tokens (only position 0 was replaced).
    score_chunk(logits.data(), n_vocab, tokens.data() + size_t(i) * n_ctx, first, last, r.total);
    r.running_ppl.push_back(r.total.ppl());
    if (on_chunk) on_chunk(ChunkView{i, chunk.data(), logits.data(), first, last, r.running_ppl.back()});
  }
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return r;
}

}  // namespace turbokv::model
