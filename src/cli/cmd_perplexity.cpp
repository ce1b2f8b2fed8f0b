// turbokv perplexity: llama.cpp-compatible perplexity of a text file
// (see model/perplexity.h for the exact scoring). With one cache scheme,
// running and final values go to stdout in llama-perplexity's format; with a
// list of schemes (or --json, --plot, --mode) it runs the fidelity evaluator
// (eval/evaluator.h): every scheme against the FP16 cache, token by token.
// Logs and progress go to stderr.
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <thread>

#include "cli/command.h"
#include "eval/evaluator.h"
#include "io/gguf.h"
#include "kv/registry.h"
#include "kv/scheme.h"
#include "model/model.h"
#include "model/perplexity.h"
#include "tokenizer/tokenizer.h"
#include "util/error.h"
#include "util/thread_pool.h"

#include <unistd.h>

namespace turbokv::cli {
namespace {

struct PerplexityArgs {
  std::string model_path;
  std::string text_path;
  int ctx = 512;
  int chunks = -1;
  int threads = 0;
  std::vector<std::string> kv_schemes{std::string(kv::kDefaultScheme)};
  int batch = 512;
  std::string kv_k, kv_v;  // --kv-k / --kv-v: one more scheme, "<k>/<v>" (the other side fp16)
  std::string mode;  // empty: single-scheme llama.cpp-style run unless --json/--plot/several schemes
  bool json = false;
  std::string plot_path;
};

// Progress on stderr: a bar redrawn in place on a terminal, a line every 10%
// otherwise (logs stay readable).
class ProgressReporter {
 public:
  ProgressReporter() : tty_(::isatty(2) != 0), t0_(std::chrono::steady_clock::now()) {}
  void operator()(int64_t done, int64_t total) {
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count();
    const double rate = secs > 0 ? double(done) / secs : 0.0;
    const double left = rate > 0 ? double(total - done) / rate : 0.0;
    const int pct = total > 0 ? int(100 * done / total) : 100;
    if (tty_) {
      if (done != total && secs - last_draw_ < 0.2) return;
      last_draw_ = secs;
      const int width = 30, filled = width * pct / 100;
      std::fprintf(stderr, "\r[%s%s] %3d%% %lld/%lld tokens, %.0f tok/s, %.0f s left ",
                   std::string(size_t(filled), '#').c_str(), std::string(size_t(width - filled), '.').c_str(), pct,
                   (long long)done, (long long)total, rate, left);
      if (done == total) std::fprintf(stderr, "\n");
    } else if (pct >= next_pct_ || done == total) {
      std::fprintf(stderr, "perplexity: %3d%% (%lld/%lld tokens, %.0f tok/s, %.0f s left)\n", pct, (long long)done,
                   (long long)total, rate, left);
      next_pct_ = pct / 10 * 10 + 10;
    }
  }

 private:
  bool tty_;
  std::chrono::steady_clock::time_point t0_;
  double last_draw_ = -1;
  int next_pct_ = 0;
};

int run_perplexity(PerplexityArgs a) {
  if (!a.kv_k.empty() || !a.kv_v.empty()) {
    // llama.cpp's -ctk/-ctv habit: separate key and value specs, fp16 where unset.
    const std::string name = kv::scheme_name(a.kv_k, a.kv_v);
    if (a.kv_schemes.size() == 1 && a.kv_schemes[0] == kv::kDefaultScheme) a.kv_schemes.clear();
    a.kv_schemes.push_back(name);
  }
  if (a.ctx < 4) throw Error("--ctx must be >= 4, got " + std::to_string(a.ctx));
  if (a.threads < 0) throw Error("-t/--threads must be >= 1, got " + std::to_string(a.threads));
  if (a.batch <= 0) throw Error("--batch must be >= 1, got " + std::to_string(a.batch));
  if (!std::filesystem::is_regular_file(a.model_path)) {
    throw Error("-m/--model: model file '" + a.model_path + "' does not exist or is not a file");
  }
  std::ifstream in(a.text_path, std::ios::binary);
  if (!in) throw Error("-f/--file: cannot open text file '" + a.text_path + "'");
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string text = ss.str();

  auto model = model::Model::load(a.model_path);
  auto tok = tokenizer::load_tokenizer(model->gguf());
  const auto t0 = std::chrono::steady_clock::now();
  const std::vector<int32_t> tokens = tok->encode(text, /*add_special=*/true, /*parse_special=*/false);
  const double t_tok = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const int threads = a.threads > 0 ? a.threads : int(std::max(1u, std::thread::hardware_concurrency()));
  ThreadPool pool(threads);
  const int32_t bos_id = tok->vocab().add_bos ? tok->bos() : -1;

  if (a.kv_schemes.size() > 1 || a.json || !a.plot_path.empty() || !a.mode.empty()) {
    eval::EvalOptions eo;
    eo.n_ctx = a.ctx;
    eo.n_chunks = a.chunks;
    eo.mode = eval::parse_mode(a.mode.empty() ? "deploy" : a.mode);
    eo.schemes = a.kv_schemes;
    std::fprintf(stderr, "perplexity: tokenized %zu tokens in %.2f s; %s\n", tokens.size(), t_tok,
                 model::describe(model->config()).c_str());
    std::fprintf(stderr, "perplexity: evaluating %zu scheme(s) against fp16, mode %s, ctx %d, %d threads\n",
                 a.kv_schemes.size(), eval::mode_name(eo.mode), a.ctx, threads);
    for (const auto& name : a.kv_schemes) {  // name the flag for a bad scheme, before any work
      try {
        kv::make_kv_cache(name, model->cache_shape(a.ctx));
      } catch (const Error& e) {
        throw Error(std::string("--kv: ") + e.what());
      }
    }
    ProgressReporter progress;
    const eval::EvalResult r = eval::evaluate(*model, tokens, bos_id, eo, pool, std::ref(progress));
    if (a.json) {
      std::fputs(eval::to_json(r, a.model_path, a.text_path).c_str(), stdout);
    } else {
      std::fputs(eval::to_table(r).c_str(), stdout);
    }
    if (!a.plot_path.empty()) {
      const std::string title = std::filesystem::path(a.model_path).filename().string() + ", " +
                                std::filesystem::path(a.text_path).filename().string() + ", ctx " +
                                std::to_string(r.n_ctx) + ", " + eval::mode_name(r.mode) + " mode";
      eval::write_plot_svg(r, title, a.plot_path);
      std::fprintf(stderr, "perplexity: wrote %s\n", a.plot_path.c_str());
    }
    return 0;
  }

  std::unique_ptr<kv::KvCache> cache;
  try {
    cache = kv::make_kv_cache(a.kv_schemes.front(), model->cache_shape(a.ctx));
  } catch (const Error& e) {
    throw Error(std::string("--kv: ") + e.what());
  }
  model::Scratch scratch(model->config(), std::min(a.batch, a.ctx));
  model::PerplexityOptions opt;
  opt.n_ctx = a.ctx;
  opt.n_chunks = a.chunks;
  const int32_t bos = bos_id;
  const int max_chunks = int(tokens.size() / size_t(a.ctx));
  std::fprintf(stderr, "perplexity: tokenized %zu tokens in %.2f s; %s\n", tokens.size(), t_tok,
               model::describe(model->config()).c_str());
  std::fprintf(stderr, "perplexity: calculating perplexity over %d chunks, n_ctx=%d, kv %s, %d threads\n",
               a.chunks < 0 ? max_chunks : std::min(a.chunks, max_chunks), a.ctx, cache->scheme().c_str(), threads);
  const auto r = model::evaluate_perplexity(*model, tokens, bos, opt, *cache, scratch, pool,
                                            [](const model::ChunkView& c) {
                                              std::printf("[%d]%.4f,", c.index + 1, c.running_ppl);
                                              std::fflush(stdout);
                                            });
  std::printf("\nFinal estimate: PPL = %.4f +/- %.5f\n", r.ppl(), r.ppl_error());
  std::fflush(stdout);
  const double n_tok = double(r.n_chunks) * a.ctx;
  std::fprintf(stderr, "perplexity: %d chunks of %d tokens in %.2f s (%.1f tok/s), %lld tokens scored\n", r.n_chunks,
               a.ctx, r.seconds, r.seconds > 0 ? n_tok / r.seconds : 0.0, (long long)r.total.count);
  return 0;
}

const RegisterCommand kRegister{Command{
    "perplexity", "Perplexity of a text file, scored like llama.cpp's llama-perplexity",
    [](CLI::App& app) -> std::function<int()> {
      auto a = std::make_shared<PerplexityArgs>();
      a->model_path = default_model_path();
      app.add_option("-m,--model", a->model_path, "GGUF model file")->capture_default_str();
      app.add_option("-f,--file", a->text_path, "Text file to score")->required();
      app.add_option("-c,--ctx", a->ctx, "Tokens per chunk (context size)")->capture_default_str();
      app.add_option("--chunks", a->chunks, "Chunks to score (-1 = all)")->capture_default_str();
      app.add_option("-t,--threads", a->threads, "Threads (0 = all cores)")->capture_default_str();
      app.add_option("--kv", a->kv_schemes,
                     "KV cache scheme, or a comma-separated list to compare with fp16: " + kv::kv_scheme_list())
          ->delimiter(',')
          ->capture_default_str();
      app.add_option("--kv-k", a->kv_k, "Key element spec (fp16, turbo4, group4g64, ...); with --kv-v, one scheme");
      app.add_option("--kv-v", a->kv_v, "Value element spec (fp16, turbo4, ...)");
      app.add_option("--mode", a->mode, "Evaluator mode: deploy (two-phase, real decode path) or strict "
                                        "(compressed from the first token)");
      app.add_flag("--json", a->json, "Print the evaluator's results as JSON");
      app.add_option("--plot", a->plot_path, "Write an SVG chart of KL divergence against bits per element");
      app.add_option("-b,--batch", a->batch, "Batch size of the forward pass")->capture_default_str();
      return [a] { return run_perplexity(*a); };
    }}};

}  // namespace
}  // namespace turbokv::cli
