// turbokv bench: prefill and decode speed per KV cache scheme, in the spirit
// of llama-bench.
//
// For each scheme:
//   pp   a prompt of -p random token ids into an empty cache (one forward
//        pass, Phase::Prefill), tokens/s;
//   tg   at each --depth D: the cache is filled with D random tokens (D - 1 by
//        prefill, then one untimed decode step, so a two-phase cache has
//        compressed its prefix), then -n real decode steps (model::Model::
//        forward, one token each) are timed and trimmed off again.
// The attention share of a decode step is timed by TimedKvCache, a decorator
// that forwards every call to the real cache and clocks attend(). Every
// figure is the median over --reps repetitions, with the spread (max - min) / 2.
// KV bytes and bits per element are the cache's own accounting when it
// holds D + n tokens (with -n 0: the prompt's p tokens). The machine may be shared: compare schemes of one run.
// The repetitions are rounds in which every scheme takes its turn (its
// cache built anew and filled to each depth, untimed), so that a machine
// whose speed drifts slows every scheme alike, not the ones timed last.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "cli/command.h"
#include "kv/kv_cache.h"
#include "kv/registry.h"
#include "model/model.h"
#include "util/error.h"
#include "util/rng.h"
#include "util/thread_pool.h"

namespace turbokv::cli {
namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// Forwards every call to the real cache; clocks attend().
class TimedKvCache final : public kv::KvCache {
 public:
  explicit TimedKvCache(std::unique_ptr<kv::KvCache> inner) : inner_(std::move(inner)) {}

  const kv::CacheShape& shape() const override { return inner_->shape(); }
  std::string scheme() const override { return inner_->scheme(); }
  int n_tokens() const override { return inner_->n_tokens(); }
  void begin_batch(int n, kv::Phase phase) override { inner_->begin_batch(n, phase); }
  void store(int layer, const float* k, const float* v) override { inner_->store(layer, k, v); }
  void attend(int layer, const float* q, float* out, float scale, ThreadPool& pool) override {
    const auto t0 = Clock::now();
    inner_->attend(layer, q, out, scale, pool);
    attend_seconds_ += seconds_since(t0);
  }
  void end_batch() override { inner_->end_batch(); }
  void trim(int n) override { inner_->trim(n); }
  void clear() override { inner_->clear(); }
  size_t bytes() const override { return inner_->bytes(); }
  double bits_per_element() const override { return inner_->bits_per_element(); }

  double attend_seconds() const { return attend_seconds_; }
  void reset_timer() { attend_seconds_ = 0.0; }

 private:
  std::unique_ptr<kv::KvCache> inner_;
  double attend_seconds_ = 0.0;
};

struct BenchArgs {
  std::string model_path;
  std::vector<std::string> schemes{"fp16", "turbo4", "turbo3"};
  std::vector<int> depths{0};
  int n_prompt = 512;
  int n_gen = 32;
  int threads = 0;
  int reps = 3;
  bool json = false;
};

struct Stat {
  double median = 0, spread = 0;
};

Stat stat_of(std::vector<double> v) {
  Stat s;
  if (v.empty()) return s;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  s.median = n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
  s.spread = 0.5 * (v.back() - v.front());
  return s;
}

struct Row {
  std::string scheme;
  int depth = 0;
  Stat pp, tg, attn_us;
  size_t kv_bytes = 0;
  double bits = 0;
};

int run_bench(const BenchArgs& a) {
  if (a.n_prompt < 0) throw Error("-p/--n-prompt must be >= 0, got " + std::to_string(a.n_prompt));
  if (a.n_gen < 0) throw Error("-n/--n-gen must be >= 0, got " + std::to_string(a.n_gen));
  if (a.n_prompt == 0 && a.n_gen == 0) throw Error("-p and -n are both 0: nothing to measure");
  if (a.reps < 1) throw Error("--reps must be >= 1, got " + std::to_string(a.reps));
  if (a.threads < 0) throw Error("-t/--threads must be >= 1 (0 = all cores), got " + std::to_string(a.threads));
  if (a.schemes.empty()) throw Error("--kv: give at least one scheme");
  for (int d : a.depths) {
    if (d < 0) throw Error("--depth: depths must be >= 0, got " + std::to_string(d));
  }
  if (!std::filesystem::is_regular_file(a.model_path)) {
    throw Error("-m/--model: model file '" + a.model_path + "' does not exist or is not a file");
  }
  auto model = model::Model::load(a.model_path);
  const auto& cfg = model->config();
  const int threads = a.threads > 0 ? a.threads : int(std::max(1u, std::thread::hardware_concurrency()));
  ThreadPool pool(threads);
  const int max_depth = *std::max_element(a.depths.begin(), a.depths.end());
  const int n_ctx = std::max({a.n_prompt, max_depth + a.n_gen, 1});
  const int batch = 512;
  model::Scratch scratch(cfg, std::min(batch, std::max({a.n_prompt, max_depth, 1})));
  std::vector<float> logits(size_t(cfg.n_vocab));

  Rng rng(0x62656e6368ull);  // "bench"
  auto random_tokens = [&](int n) {
    std::vector<int32_t> t(size_t(std::max(n, 0)));
    for (auto& id : t) id = int32_t(rng.next_u64() % uint64_t(cfg.n_vocab));
    return t;
  };
  const std::vector<int32_t> prompt = random_tokens(a.n_prompt);
  const std::vector<int32_t> gen = random_tokens(a.n_gen);
  // The same fill for every scheme: depth - 1 prefill tokens, one decode token.
  std::vector<std::vector<int32_t>> fills;
  for (int d : a.depths) fills.push_back(random_tokens(d));

  auto make_cache = [&](const std::string& scheme) {
    try {
      return std::make_unique<TimedKvCache>(kv::make_kv_cache(scheme, model->cache_shape(n_ctx)));
    } catch (const Error& e) {
      throw Error(std::string("--kv: ") + e.what());
    }
  };
  const size_t n_schemes = a.schemes.size(), n_depths = a.depths.size();
  std::vector<Row> rows(n_schemes * n_depths);  // (scheme, depth)
  std::vector<std::vector<double>> pp(n_schemes), tg(rows.size()), attn_us(rows.size());
  for (size_t i = 0; i < n_schemes; ++i) {  // every name checked before anything is timed
    const std::string name = make_cache(a.schemes[i])->scheme();
    for (size_t j = 0; j < n_depths; ++j) {
      rows[i * n_depths + j].scheme = name;
      rows[i * n_depths + j].depth = a.depths[j];
    }
  }
  for (int r = 0; r < a.reps; ++r) {
    for (size_t i = 0; i < n_schemes; ++i) {
      auto cache = make_cache(a.schemes[i]);
      if (a.n_prompt > 0) {
        const auto t0 = Clock::now();
        model->forward(prompt.data(), a.n_prompt, *cache, kv::Phase::Prefill, model::LogitsMode::Last, logits.data(),
                       scratch, pool);
        pp[i].push_back(a.n_prompt / seconds_since(t0));
      }
      if (a.n_gen == 0) {  // the cache as the prompt left it
        for (size_t j = 0; j < n_depths; ++j) {
          rows[i * n_depths + j].kv_bytes = cache->bytes();
          rows[i * n_depths + j].bits = cache->bits_per_element();
        }
        continue;
      }
      for (size_t j = 0; j < n_depths; ++j) {
        const int depth = a.depths[j];
        Row& row = rows[i * n_depths + j];
        cache->clear();
        const std::vector<int32_t>& fill = fills[j];
        if (depth > 1) {
          model->forward(fill.data(), depth - 1, *cache, kv::Phase::Prefill, model::LogitsMode::Last, logits.data(),
                         scratch, pool);
        }
        if (depth > 0) {  // untimed: a two-phase cache compresses its prefix here
          model->forward(&fill[size_t(depth - 1)], 1, *cache, kv::Phase::Decode, model::LogitsMode::Last, logits.data(),
                         scratch, pool);
        }
        cache->reset_timer();
        const auto t0 = Clock::now();
        for (int k = 0; k < a.n_gen; ++k) {
          model->forward(&gen[size_t(k)], 1, *cache, kv::Phase::Decode, model::LogitsMode::Last, logits.data(),
                         scratch, pool);
        }
        const double sec = seconds_since(t0);
        tg[i * n_depths + j].push_back(a.n_gen / sec);
        attn_us[i * n_depths + j].push_back(1e6 * cache->attend_seconds() / a.n_gen);
        row.kv_bytes = cache->bytes();
        row.bits = cache->bits_per_element();
      }
    }
    if (!a.json) std::fprintf(stderr, "bench: round %d of %d done\n", r + 1, a.reps);
  }
  for (size_t i = 0; i < rows.size(); ++i) {
    rows[i].pp = stat_of(pp[i / n_depths]);
    rows[i].tg = stat_of(tg[i]);
    rows[i].attn_us = stat_of(attn_us[i]);
  }

  if (a.json) {
    nlohmann::json j;
    j["model"] = a.model_path;
    j["threads"] = threads;
    j["n_prompt"] = a.n_prompt;
    j["n_gen"] = a.n_gen;
    j["reps"] = a.reps;
    j["results"] = nlohmann::json::array();
    for (const Row& r : rows) {
      j["results"].push_back({{"scheme", r.scheme},
                              {"depth", r.depth},
                              {"pp_tps", r.pp.median},
                              {"pp_tps_spread", r.pp.spread},
                              {"tg_tps", r.tg.median},
                              {"tg_tps_spread", r.tg.spread},
                              {"attn_us_per_token", r.attn_us.median},
                              {"attn_us_per_token_spread", r.attn_us.spread},
                              {"kv_bytes", r.kv_bytes},
                              {"bits_per_element", r.bits}});
    }
    std::printf("%s\n", j.dump(2).c_str());
    return 0;
  }
  std::printf("model %s, %d threads, median ± (max-min)/2 over %d reps\n", a.model_path.c_str(), threads, a.reps);
  std::printf("| %-22s | %6s | %18s | %18s | %18s | %10s | %6s |\n", "scheme", "depth",
              ("pp" + std::to_string(a.n_prompt) + " t/s").c_str(), ("tg" + std::to_string(a.n_gen) + " t/s").c_str(),
              "attn us/token", "KV bytes", "bits");
  for (const Row& r : rows) {
    std::printf("| %-22s | %6d | %9.1f ± %6.1f | %9.1f ± %6.1f | %9.1f ± %6.1f | %10zu | %6.3f |\n", r.scheme.c_str(),
                r.depth, r.pp.median, r.pp.spread, r.tg.median, r.tg.spread, r.attn_us.median, r.attn_us.spread,
                r.kv_bytes, r.bits);
  }
  return 0;
}

const RegisterCommand kRegister{Command{
    "bench", "Prefill and decode speed per KV cache scheme and depth (llama-bench style)",
    [](CLI::App& app) -> std::function<int()> {
      auto a = std::make_shared<BenchArgs>();
      a->model_path = default_model_path();
      app.add_option("-m,--model", a->model_path, "GGUF model file")->capture_default_str();
      app.add_option("--kv", a->schemes, "Comma-separated KV cache schemes: " + kv::kv_scheme_list())
          ->delimiter(',')
          ->capture_default_str();
      app.add_option("--depth", a->depths, "Comma-separated cache depths (tokens held when decode timing starts)")
          ->delimiter(',')
          ->capture_default_str();
      app.add_option("-p,--n-prompt", a->n_prompt, "Prompt tokens for the prefill test (0 = skip)")
          ->capture_default_str();
      app.add_option("-n,--n-gen", a->n_gen, "Decode steps timed at each depth (0 = skip)")->capture_default_str();
      app.add_option("-t,--threads", a->threads, "Threads (0 = all cores)")->capture_default_str();
      app.add_option("--reps", a->reps, "Repetitions; figures are medians")->capture_default_str();
      app.add_flag("--json", a->json, "Print the results as JSON");
      return [a] { return run_bench(*a); };
    }}};

}  // namespace
}  // namespace turbokv::cli
