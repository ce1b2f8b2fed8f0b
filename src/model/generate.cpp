#include "model/generate.h"

#include <chrono>
#include <string>

#include "util/error.h"

namespace turbokv::model {

GenerateStats generate(const Model& model, const std::vector<int32_t>& prompt, int n_predict, Sampler& sampler,
                       kv::KvCache& cache, Scratch& scratch, ThreadPool& pool, const GenerateCallbacks& cb,
                       int n_cached) {
  using clock = std::chrono::steady_clock;
  if (prompt.empty()) throw Error("generate: the prompt has no tokens");
  if (n_predict < 0) throw Error("generate: number of tokens to predict must be >= 0, got " + std::to_string(n_predict));
  GenerateStats st;
  if (n_cached < 0 || n_cached >= int(prompt.size()) || cache.n_tokens() != n_cached) {
    throw Error("generate: " + std::to_string(n_cached) + " cached prompt tokens (cache holds " +
                std::to_string(cache.n_tokens()) + ") for a prompt of " + std::to_string(prompt.size()) +
                "; at least the last prompt token must be computed");
  }
  st.n_prompt = int(prompt.size());
  st.n_prompt_cached = n_cached;
  std::vector<float> logits(size_t(model.config().n_vocab));  // (n_vocab)
  const int max_tokens = cache.shape().max_tokens;

  for (int32_t t : prompt) sampler.accept(t);
  const auto t0 = clock::now();
  model.forward(prompt.data() + n_cached, int(prompt.size()) - n_cached, cache, Phase::Prefill, LogitsMode::Last,
                logits.data(), scratch, pool);
  const auto t1 = clock::now();
  st.prompt_seconds = std::chrono::duration<double>(t1 - t0).count();

  auto t_decode = clock::now();
  for (int i = 0; i < n_predict; ++i) {
    const int32_t token = sampler.sample(logits.data());
    if (cb.is_eog && cb.is_eog(token)) { st.stopped_at_eog = true; break; }
    sampler.accept(token);
    ++st.n_generated;
    if (cb.on_token && !cb.on_token(token)) break;
    if (i + 1 == n_predict) break;
    if (cache.n_tokens() >= max_tokens) { st.stopped_at_context = true; break; }
    model.forward(&token, 1, cache, Phase::Decode, LogitsMode::Last, logits.data(), scratch, pool);
    ++st.n_decoded;
  }
  st.decode_seconds = std::chrono::duration<double>(clock::now() - t_decode).count();
  return st;
}

kv::ModelIdentity cache_identity(const Model& model) {
  const ModelConfig& c = model.config();
  kv::ModelIdentity id;
  id.architecture = c.arch_name;
  id.n_layer = c.n_layer;
  id.d_model = c.d_model;
  id.n_head = c.n_head;
  id.n_kv_head = c.n_kv_head;
  id.head_dim = c.head_dim;
  id.n_vocab = c.n_vocab;
  id.tensor_hash = model.gguf().tensor_table_hash();
  return id;
}

}  // namespace turbokv::model
