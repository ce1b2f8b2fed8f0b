// Text generation: one batched prefill of the prompt, then one token per
// decode step, streaming each token through a callback.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "kv/cache_file.h"
#include "kv/kv_cache.h"
#include "model/model.h"
#include "model/sampling.h"
#include "util/thread_pool.h"

namespace turbokv::model {

struct GenerateStats {
  int n_prompt = 0;         // prompt tokens, cached ones included
  int n_prompt_cached = 0;  // of which restored from a prompt cache, not computed
  int n_generated = 0;      // tokens sampled and streamed (EOG not counted)
  int n_decoded = 0;        // decode forward passes
  double prompt_seconds = 0.0;
  double decode_seconds = 0.0;  // forward passes plus sampling after the first token
  bool stopped_at_eog = false;
  bool stopped_at_context = false;
  double prompt_tokens_per_second() const {
    return prompt_seconds > 0 ? (n_prompt - n_prompt_cached) / prompt_seconds : 0.0;
  }
  double decode_tokens_per_second() const { return decode_seconds > 0 ? n_decoded / decode_seconds : 0.0; }
};

struct GenerateCallbacks {
  // End-of-generation test (tokenizer's is_eog); an EOG token is not streamed.
  std::function<bool(int32_t)> is_eog;
  // Called with each generated token; return false to stop.
  std::function<bool(int32_t)> on_token;
};

// Appends the prompt to `cache` (which should be empty, or hold a prefix the
// prompt continues) and generates up to n_predict tokens. The prompt goes
// through the sampler's history (for the repetition penalty).
// Stops early at EOG or when the cache's context is full.
// n_cached: the cache already holds prompt[0, n_cached) (a restored prompt
// cache); only the rest is prefilled. Must be < prompt.size() and equal to
// cache.n_tokens().
GenerateStats generate(const Model& model, const std::vector<int32_t>& prompt, int n_predict, Sampler& sampler,
                       kv::KvCache& cache, Scratch& scratch, ThreadPool& pool, const GenerateCallbacks& callbacks,
                       int n_cached = 0);

// The model identity a prompt-cache file records (kv/cache_file.h).
kv::ModelIdentity cache_identity(const Model& model);

}  // namespace turbokv::model
