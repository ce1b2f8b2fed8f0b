#include "model/generate.h"

#include <chrono>
#include <string>

#include "util/error.h"

namespace turbokv::model {

GenerateStats generate(const Model& model, const std::vector<int32_t>& prompt, int n_predict, Sampler& sampler,
                       kv::KvCache& cache, Scratch& scratch, ThreadPool& pool, const GenerateCallbacks& cb) {
  using clock = std::chrono::steady_clock;
  if (prompt.empty()) throw Error("generate: the prompt has no tokens");
  if (n_predict < 0) throw Error("generate: number of tokens to predict must be >= 0, got " + std::to_string(n_predict));
  GenerateStats st;
  st.n_prompt = int(prompt.size());
  std::vector<float> logits(size_t(model.config().n_vocab));  // (n_vocab)
  const int max_tokens = cache.shape().max_tokens;

  for (int32_t t : prompt) sampler.accept(t);
  const auto t0 = clock::now();
  model.forward(prompt.data(), int(prompt.size()), cache, Phase::Prefill, LogitsMode::Last, logits.data(), scratch, pool);
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

}  // namespace turbokv::model
