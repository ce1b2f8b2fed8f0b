// Attention alone, one decode step over synthetic caches: the FP16 cache's
// SIMD kernel against the TurboQuant caches' fused kernels
// (kv/turbo_attention.h), through the real KvCache::attend().
//
// Shape: one layer, 8 query heads over 2 kv heads (GQA 4), head size 64 or
// 128, 1K to 64K cached tokens, one thread (kernel cost, not scaling). After
// the runs it prints every scheme's time as a ratio of fp16's at the same
// (tokens, head size), measured in the same run.
//   bench_attention [--benchmark_filter=...] [--benchmark_min_time=...]
#include <benchmark/benchmark.h>

#include <cmath>
#include <cstdio>
#include <map>
#include <memory>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "kv/registry.h"
#include "util/rng.h"
#include "util/thread_pool.h"

namespace {

using turbokv::kv::CacheShape;
using turbokv::kv::KvCache;
using turbokv::kv::Phase;

// (name in the tables, KV scheme)
const std::pair<const char*, const char*> kSchemes[] = {
    {"fp16", "fp16"}, {"turbo4", "turbo4"}, {"turbo3", "turbo3"}, {"turbo2", "turbo2"},
    {"group4g64", "group4g64/group4g64"}};
constexpr int kHeads = 8, kKvHeads = 2;

// A cache holding `tokens` random tokens (keys with a shared mean and outlier
// channels, like a real model's), with a decode batch of one token open.
struct Fixture {
  std::string key;
  std::unique_ptr<KvCache> cache;
  std::vector<float> q, out;  // (n_head, head_dim)
};

Fixture& fixture(const std::string& scheme, int tokens, int hd) {
  static Fixture f;
  const std::string key = scheme + "/" + std::to_string(tokens) + "/" + std::to_string(hd);
  if (f.key == key) return f;
  f = Fixture{};
  f.key = key;
  const CacheShape shape{1, kHeads, kKvHeads, hd, tokens};
  f.cache = turbokv::kv::make_kv_cache(scheme, shape);
  turbokv::Rng rng(42);
  const int batch = 1024;
  const size_t row = size_t(kKvHeads) * hd;
  std::vector<float> k(batch * row), v(batch * row);
  auto fill = [&](int n) {
    for (size_t i = 0; i < size_t(n) * row; ++i) {
      const int c = int(i % size_t(hd));
      k[i] = float(rng.normal()) + 2.0f * std::sin(0.7f * float(c)) * (c % 17 == 3 ? 8.0f : 1.0f);
      v[i] = float(rng.normal());
    }
  };
  // Prefill without attention (only the stored tokens matter here).
  for (int t = 0; t < tokens - 1; t += batch) {
    const int n = std::min(batch, tokens - 1 - t);
    fill(n);
    f.cache->begin_batch(n, Phase::Prefill);
    f.cache->store(0, k.data(), v.data());
    f.cache->end_batch();
  }
  f.q.resize(size_t(kHeads) * hd);
  f.out.resize(f.q.size());
  for (auto& x : f.q) x = float(rng.normal());
  // The decode token: its first attend() compresses the prefix (untimed).
  fill(1);
  f.cache->begin_batch(1, Phase::Decode);
  f.cache->store(0, k.data(), v.data());
  turbokv::ThreadPool pool(1);
  f.cache->attend(0, f.q.data(), f.out.data(), 1.0f / std::sqrt(float(hd)), pool);
  return f;
}

void BM_Attention(benchmark::State& state, const std::string& scheme) {
  const int tokens = int(state.range(0)), hd = int(state.range(1));
  Fixture& f = fixture(scheme, tokens, hd);
  turbokv::ThreadPool pool(1);
  const float scale = 1.0f / std::sqrt(float(hd));
  for (auto _ : state) {
    f.cache->attend(0, f.q.data(), f.out.data(), scale, pool);
    benchmark::DoNotOptimize(f.out.data());
    benchmark::ClobberMemory();
  }
  state.counters["kv_MiB"] = double(f.cache->bytes()) / (1 << 20);
  state.counters["bits"] = f.cache->bits_per_element();
  state.SetLabel(scheme);
}

// Console output as usual, plus every run's time for the ratio table.
class RatioReporter : public benchmark::ConsoleReporter {
 public:
  std::map<std::tuple<int, int, std::string>, double> ns;  // (tokens, hd, scheme) -> real ns
  void ReportRuns(const std::vector<Run>& runs) override {
    ConsoleReporter::ReportRuns(runs);
    for (const Run& r : runs) {
      if (r.run_type != Run::RT_Iteration || r.error_occurred) continue;
      // name: attention/<scheme>/<tokens>/<hd>
      const std::string n = r.benchmark_name();
      const size_t a = n.find('/'), c = n.rfind('/'), b = n.rfind('/', c - 1);
      ns[{std::stoi(n.substr(b + 1, c - b - 1)), std::stoi(n.substr(c + 1)), n.substr(a + 1, b - a - 1)}] =
          r.GetAdjustedRealTime();
    }
  }
};

}  // namespace

int main(int argc, char** argv) {
  for (const auto& [label, scheme] : kSchemes) {
    const std::string s = scheme;
    benchmark::RegisterBenchmark((std::string("attention/") + label).c_str(),
                                 [s](benchmark::State& st) { BM_Attention(st, s); })
        ->ArgsProduct({{1024, 4096, 16384, 65536}, {64, 128}})
        ->Unit(benchmark::kMicrosecond);
  }
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  RatioReporter reporter;
  benchmark::RunSpecifiedBenchmarks(&reporter);
  std::printf("\nattention time / fp16 time (same run; one decode token, %d heads / %d kv heads, 1 thread)\n",
              kHeads, kKvHeads);
  std::printf("%8s %4s", "tokens", "hd");
  for (const auto& sc : kSchemes) std::printf(" %12s", sc.first);
  std::printf("\n");
  for (const auto& [key, t] : reporter.ns) {
    const auto& [tokens, hd, scheme] = key;
    if (scheme != "fp16") continue;
    std::printf("%8d %4d", tokens, hd);
    for (const auto& sc : kSchemes) {
      const auto it = reporter.ns.find({tokens, hd, sc.first});
      if (it == reporter.ns.end()) std::printf(" %12s", "-");
      else std::printf(" %12.3f", it->second / t);
    }
    std::printf("\n");
  }
  benchmark::Shutdown();
  return 0;
}
