// turbokv generate: prompt in, continuation out, streamed like llama.cpp's
// llama-simple (the prompt's pieces including "<s>", then each new piece,
// then a newline). Only the text goes to stdout; logs and timing to stderr.
#include <cstdio>
#include <filesystem>
#include <memory>
#include <random>
#include <string>
#include <thread>

#include "cli/command.h"
#include "io/gguf.h"
#include "kv/registry.h"
#include "model/generate.h"
#include "model/model.h"
#include "model/sampling.h"
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
  int ctx = 0;
  int batch = 512;
};

int default_threads() {
  const unsigned n = std::thread::hardware_concurrency();
  return n == 0 ? 1 : int(n);
}

int run_generate(const GenerateArgs& a) {
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

  auto model = model::Model::load(a.model_path);
  const auto& cfg = model->config();
  auto tok = tokenizer::load_tokenizer(model->gguf());
  if (tok->n_vocab() != cfg.n_vocab) {
    std::fprintf(stderr, "turbokv: warning: tokenizer has %d tokens, model %d\n", tok->n_vocab(), cfg.n_vocab);
  }
  const std::vector<int32_t> prompt = tok->encode(a.prompt, /*add_special=*/true, /*parse_special=*/true);
  if (prompt.empty()) throw Error("-p/--prompt: the prompt tokenizes to nothing");
  const int n_ctx = a.ctx > 0 ? a.ctx : int(prompt.size()) + std::max(a.n_predict, 1);
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
  const int threads = a.threads > 0 ? a.threads : default_threads();
  ThreadPool pool(threads);
  model::Scratch scratch(cfg, std::min(a.batch, int(prompt.size())));
  model::Sampler sampler(sp, cfg.n_vocab);

  std::fprintf(stderr, "turbokv: %s\n", model::describe(cfg).c_str());
  std::fprintf(stderr, "turbokv: kv cache %s, ctx %d, %d threads, seed %llu, temp %g\n", cache->scheme().c_str(),
               n_ctx, threads, (unsigned long long)sp.seed, double(sp.temperature));

  for (int32_t id : prompt) std::fputs(tok->token_to_piece(id, true).c_str(), stdout);
  std::fflush(stdout);
  model::GenerateCallbacks cb;
  cb.is_eog = [&](int32_t id) { return tok->is_eog(id); };
  cb.on_token = [&](int32_t id) {
    const std::string piece = tok->token_to_piece(id, true);
    std::fwrite(piece.data(), 1, piece.size(), stdout);
    std::fflush(stdout);
    return true;
  };
  const auto st = model::generate(*model, prompt, a.n_predict, sampler, *cache, scratch, pool, cb);
  std::fputs("\n", stdout);
  std::fflush(stdout);
  if (st.stopped_at_context) std::fprintf(stderr, "turbokv: context of %d tokens is full (raise --ctx)\n", n_ctx);
  std::fprintf(stderr, "turbokv: prompt %d tokens in %.3f s (%.1f tok/s); generated %d tokens, %d decode steps in %.3f s (%.1f tok/s)\n",
               st.n_prompt, st.prompt_seconds, st.prompt_tokens_per_second(), st.n_generated, st.n_decoded,
               st.decode_seconds, st.decode_tokens_per_second());
  std::fprintf(stderr, "turbokv: kv cache %s: %zu bytes, %.2f bits/element\n", cache->scheme().c_str(), cache->bytes(),
               cache->bits_per_element());
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
      app.add_option("--ctx", a->ctx, "Context size (0 = prompt + n)")->capture_default_str();
      app.add_option("-b,--batch", a->batch, "Prefill batch size")->capture_default_str();
      return [a] { return run_generate(*a); };
    }}};

}  // namespace
}  // namespace turbokv::cli
