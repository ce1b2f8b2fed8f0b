// turbokv generate: prompt in, continuation out, streamed like llama.cpp's
// llama-simple (the prompt's pieces including "<s>", then each new piece,
// then a newline). Only the text goes to stdout; logs and timing to stderr.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "cli/command.h"
#include "io/gguf.h"
#include "kv/cache_file.h"
#include "kv/registry.h"
#include "kv/scheme.h"
#include "model/generate.h"
#include "model/model.h"
#include "model/sampling.h"
#include "model/speculative.h"
#include "tokenizer/tokenizer.h"
#include "util/error.h"
#include "util/thread_pool.h"

namespace turbokv::cli {
namespace {

struct GenerateArgs {
  std::string model_path;
  std::string prompt;
  int n_predict = 128;
  float temp = 0.8f;
  int top_k = 40;
  float top_p = 0.95f;
  float min_p = 0.05f;
  float repeat_penalty = 1.0f;
  int repeat_last_n = 64;
  int64_t seed = -1;
  int threads = 0;
  std::string kv_scheme{kv::kDefaultScheme};
  std::string kv_k, kv_v;  // --kv-k / --kv-v: separate key and value specs (fp16 where unset)
  int ctx = 0;
  int batch = 512;
  std::string prompt_cache;             // --prompt-cache FILE
  bool prompt_cache_ro = false;         // --prompt-cache-ro: read, never write
  bool prompt_cache_ignore_errors = false;
  std::string draft_path;               // --draft FILE: speculative decoding
  int draft_n = 4;                      // --draft-n
  std::string kv_draft;                 // --kv-draft (empty: same as --kv)
};

// Restores the prompt's longest cached prefix from a.prompt_cache into
// `cache`; returns the prompt tokens now cached (< prompt.size(), so the last
// prompt token's logits are computed). A missing file caches nothing; a bad
// one throws unless --prompt-cache-ignore-errors.
int restore_prompt_cache(const GenerateArgs& a, kv::KvCache& cache, const kv::ModelIdentity& id,
                         const std::vector<int32_t>& prompt) {
  if (a.prompt_cache.empty() || !std::filesystem::exists(a.prompt_cache)) return 0;
  try {
    const std::vector<int32_t> saved = kv::load_prompt_cache(a.prompt_cache, cache, id);
    size_t common = 0;
    while (common < saved.size() && common < prompt.size() && saved[common] == prompt[common]) ++common;
    const int keep = int(std::min(common, prompt.size() - 1));
    cache.trim(cache.n_tokens() - keep);
    std::fprintf(stderr, "turbokv: prompt cache %s: %d of %zu saved tokens reused\n", a.prompt_cache.c_str(), keep,
                 saved.size());
    return keep;
  } catch (const Error& e) {
    if (cache.n_tokens() > 0) cache.clear();
    if (!a.prompt_cache_ignore_errors) {
      throw Error(std::string("--prompt-cache: ") + e.what() + " (--prompt-cache-ignore-errors to run without it)");
    }
    std::fprintf(stderr, "turbokv: warning: --prompt-cache: %s; running without it\n", e.what());
    return 0;
  }
}

int default_threads() {
  const unsigned n = std::thread::hardware_concurrency();
  return n == 0 ? 1 : int(n);
}

int run_generate(GenerateArgs a) {
  if (a.n_predict < 0) throw Error("-n/--n-predict must be >= 0, got " + std::to_string(a.n_predict));
  if (a.threads < 0) throw Error("-t/--threads must be >= 1, got " + std::to_string(a.threads));
  if (a.ctx < 0) throw Error("--ctx must be >= 0 (0: prompt + n), got " + std::to_string(a.ctx));
  if (a.batch <= 0) throw Error("--batch must be >= 1, got " + std::to_string(a.batch));
  if (!std::filesystem::is_regular_file(a.model_path)) {
    throw Error("-m/--model: model file '" + a.model_path + "' does not exist or is not a file");
  }
  model::SamplingParams sp;
  sp.temperature = a.temp;
  sp.top_k = a.top_k;
  sp.top_p = a.top_p;
  sp.min_p = a.min_p;
  sp.repeat_penalty = a.repeat_penalty;
  sp.repeat_last_n = a.repeat_last_n;
  sp.seed = a.seed < 0 ? uint64_t(std::random_device{}()) : uint64_t(a.seed);
  model::validate(sp);

  if (!a.kv_k.empty() || !a.kv_v.empty()) {
    // llama.cpp's -ctk/-ctv habit: the scheme "<k>/<v>".
    if (a.kv_scheme != kv::kDefaultScheme) throw Error("--kv cannot be combined with --kv-k/--kv-v");
    a.kv_scheme = kv::scheme_name(a.kv_k, a.kv_v);
  }
  auto model = model::Model::load(a.model_path);
  const auto& cfg = model->config();
  auto tok = tokenizer::load_tokenizer(model->gguf());
  if (tok->n_vocab() != cfg.n_vocab) {
    std::fprintf(stderr, "turbokv: warning: tokenizer has %d tokens, model %d\n", tok->n_vocab(), cfg.n_vocab);
  }
  const std::vector<int32_t> prompt = tok->encode(a.prompt, /*add_special=*/true, /*parse_special=*/true);
  if (prompt.empty()) throw Error("-p/--prompt: the prompt tokenizes to nothing");
  int n_ctx = a.ctx > 0 ? a.ctx : int(prompt.size()) + std::max(a.n_predict, 1);
  // Room to restore a saved prompt cache (trimmed to the prompt right after).
  if (a.ctx == 0 && !a.prompt_cache.empty()) n_ctx = std::max(n_ctx, kv::prompt_cache_token_count(a.prompt_cache));
  if (int(prompt.size()) > n_ctx) {
    throw Error("--ctx " + std::to_string(n_ctx) + " is smaller than the prompt (" + std::to_string(prompt.size()) +
                " tokens)");
  }
  std::unique_ptr<kv::KvCache> cache;
  try {
    cache = kv::make_kv_cache(a.kv_scheme, model->cache_shape(n_ctx));
  } catch (const Error& e) {
    throw Error(std::string("--kv: ") + e.what());
  }
  const kv::ModelIdentity identity = model::cache_identity(*model);
  const int n_cached = restore_prompt_cache(a, *cache, identity, prompt);

  std::unique_ptr<model::Model> draft;
  std::unique_ptr<kv::KvCache> draft_cache;
  if (!a.draft_path.empty()) {
    if (a.draft_n < 0) throw Error("--draft-n must be >= 0, got " + std::to_string(a.draft_n));
    if (!std::filesystem::is_regular_file(a.draft_path)) {
      throw Error("--draft: model file '" + a.draft_path + "' does not exist or is not a file");
    }
    draft = model::Model::load(a.draft_path);
    const std::string draft_scheme = a.kv_draft.empty() ? a.kv_scheme : a.kv_draft;
    try {
      draft_cache = kv::make_kv_cache(draft_scheme, draft->cache_shape(n_ctx));
    } catch (const Error& e) {
      throw Error(std::string("--kv-draft: ") + e.what());
    }
  } else if (!a.kv_draft.empty()) {
    throw Error("--kv-draft needs --draft");
  }
  const int threads = a.threads > 0 ? a.threads : default_threads();
  ThreadPool pool(threads);
  const int spec_batch = draft ? a.draft_n + 1 : 1;
  model::Scratch scratch(cfg, std::max(std::min(a.batch, int(prompt.size())), spec_batch));
  model::Sampler sampler(sp, cfg.n_vocab);

  std::fprintf(stderr, "turbokv: %s\n", model::describe(cfg).c_str());
  std::fprintf(stderr, "turbokv: kv cache %s, ctx %d, %d threads, seed %llu, temp %g\n", cache->scheme().c_str(),
               n_ctx, threads, (unsigned long long)sp.seed, double(sp.temperature));

  for (int32_t id : prompt) std::fputs(tok->token_to_piece(id, true).c_str(), stdout);
  std::fflush(stdout);
  std::vector<int32_t> tokens = prompt;  // prompt + generated: what the cache holds a prefix of
  model::GenerateCallbacks cb;
  cb.is_eog = [&](int32_t id) { return tok->is_eog(id); };
  cb.on_token = [&](int32_t id) {
    tokens.push_back(id);
    const std::string piece = tok->token_to_piece(id, true);
    std::fwrite(piece.data(), 1, piece.size(), stdout);
    std::fflush(stdout);
    return true;
  };
  model::GenerateStats st;
  if (draft) {
    std::fprintf(stderr, "turbokv: draft %s, kv cache %s, %d tokens per step\n", model::describe(draft->config()).c_str(),
                 draft_cache->scheme().c_str(), a.draft_n);
    model::Scratch draft_scratch(draft->config(), std::max(std::min(a.batch, int(prompt.size())), spec_batch));
    const auto sst = model::generate_speculative(*model, *draft, prompt, a.n_predict, sampler, *cache, *draft_cache,
                                                 scratch, draft_scratch, pool, cb, {a.draft_n}, n_cached);
    std::fprintf(stderr, "turbokv: speculative: %d steps, %d drafted, %d accepted (acceptance %.3f), draft %.3f s\n",
                 sst.n_steps, sst.n_drafted, sst.n_accepted, sst.acceptance_rate(), sst.draft_seconds);
    st = sst;
  } else {
    st = model::generate(*model, prompt, a.n_predict, sampler, *cache, scratch, pool, cb, n_cached);
  }
  std::fputs("\n", stdout);
  std::fflush(stdout);
  if (st.stopped_at_context) std::fprintf(stderr, "turbokv: context of %d tokens is full (raise --ctx)\n", n_ctx);
  std::fprintf(stderr, "turbokv: prompt %d tokens in %.3f s (%.1f tok/s); generated %d tokens, %d decode steps in %.3f s (%.1f tok/s)\n",
               st.n_prompt, st.prompt_seconds, st.prompt_tokens_per_second(), st.n_generated, st.n_decoded,
               st.decode_seconds, st.decode_tokens_per_second());
  std::fprintf(stderr, "turbokv: kv cache %s: %zu bytes, %.2f bits/element\n", cache->scheme().c_str(), cache->bytes(),
               cache->bits_per_element());
  if (!a.prompt_cache.empty() && !a.prompt_cache_ro) {
    TKV_ASSERT(size_t(cache->n_tokens()) <= tokens.size(), "cache holds tokens that were not generated");
    tokens.resize(size_t(cache->n_tokens()));
    kv::save_prompt_cache(a.prompt_cache, *cache, identity, tokens);
    std::fprintf(stderr, "turbokv: prompt cache %s: saved %zu tokens (%ju bytes)\n", a.prompt_cache.c_str(),
                 tokens.size(), uintmax_t(std::filesystem::file_size(a.prompt_cache)));
  }
  return 0;
}

const RegisterCommand kRegister{Command{
    "generate", "Generate text from a prompt (streams prompt + continuation to stdout)",
    [](CLI::App& app) -> std::function<int()> {
      auto a = std::make_shared<GenerateArgs>();
      a->model_path = default_model_path();
      app.add_option("-m,--model", a->model_path, "GGUF model file")->capture_default_str();
      app.add_option("-p,--prompt", a->prompt, "Prompt text")->required();
      app.add_option("-n,--n-predict", a->n_predict, "Tokens to generate")->capture_default_str();
      app.add_option("--temp", a->temp, "Temperature; 0 = greedy")->capture_default_str();
      app.add_option("--top-k", a->top_k, "Top-k (0 = off)")->capture_default_str();
      app.add_option("--top-p", a->top_p, "Top-p (1 = off)")->capture_default_str();
      app.add_option("--min-p", a->min_p, "Min-p (0 = off)")->capture_default_str();
      app.add_option("--repeat-penalty", a->repeat_penalty, "Repetition penalty (1 = off)")->capture_default_str();
      app.add_option("--repeat-last-n", a->repeat_last_n, "Tokens the repetition penalty looks back")->capture_default_str();
      app.add_option("--seed", a->seed, "Random seed (-1 = random)")->capture_default_str();
      app.add_option("-t,--threads", a->threads, "Threads (0 = all cores)")->capture_default_str();
      app.add_option("--kv", a->kv_scheme, "KV cache scheme: " + kv::kv_scheme_list())->capture_default_str();
      app.add_option("--kv-k", a->kv_k, "Key element spec (fp16, turbo4, group4g64, ...); the scheme becomes <k>/<v>");
      app.add_option("--kv-v", a->kv_v, "Value element spec (fp16, turbo4, ...)");
      app.add_option("--ctx", a->ctx, "Context size (0 = prompt + n)")->capture_default_str();
      app.add_option("-b,--batch", a->batch, "Prefill batch size")->capture_default_str();
      app.add_option("--prompt-cache", a->prompt_cache,
                     "Prompt-cache file: restore the prompt's longest cached prefix, save the cache after the run");
      app.add_flag("--prompt-cache-ro", a->prompt_cache_ro, "Only read --prompt-cache, never write it");
      app.add_flag("--prompt-cache-ignore-errors", a->prompt_cache_ignore_errors,
                   "Run without the prompt cache if it cannot be used (default: exit with an error)");
      app.add_option("--draft", a->draft_path, "Draft model (GGUF, same vocabulary) for speculative decoding");
      app.add_option("--draft-n", a->draft_n, "Tokens the draft proposes per step")->capture_default_str();
      app.add_option("--kv-draft", a->kv_draft, "KV cache scheme of the draft model (default: --kv)");
      return [a] { return run_generate(*a); };
    }}};

}  // namespace
}  // namespace turbokv::cli
