// Attention alone, one decode step over synthetic caches: the FP16 cache's
// SIMD kernel against the TurboQuant caches' fused kernels
// (kv/turbo_attention.h), through the real KvCache::attend().
//
// Schemes: every listed one (`turbokv schemes`), group4g64 (4-bit records
// of 64-element groups), prod4 (the QJL variant: a 3-bit mse part and d
// sign bits), and turbo4_f32 and turbo3_f32, turbo4 and turbo3 with scheme
// option math=f32 (kv/turbo_attention.h).
//
// Shape: one layer, 8 query heads over 2 kv heads (GQA 4), head size 64 or
// 128, 1K to 64K cached tokens, one thread (kernel cost, not scaling);
// "attention_gqa8" has 16 query heads over the 2 (GQA 8). After
// the runs it prints every scheme's time as a ratio of fp16's at the same
// (tokens, head size), measured in the same run.
//
// "attention" reads one layer again and again, so a cache that fits in the
// last-level cache is read from there. "attention_cold" is a decode step
// as a deep model sees it: each call reads the next of as many layers as
// make twice the last-level cache (per scheme), so every layer comes from
// DRAM, as in a model whose caches exceed it.
//   bench_attention [--benchmark_filter=...] [--benchmark_min_time=...]
#include <benchmark/benchmark.h>

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <memory>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "kv/registry.h"
#include "kv/scheme.h"
#include "util/rng.h"
#include "util/thread_pool.h"

namespace {

using turbokv::kv::CacheShape;
using turbokv::kv::KvCache;
using turbokv::kv::Phase;

// (name in the tables, KV scheme): every listed scheme (`turbokv schemes`),
// then an explicit layout and the fp32 kernels where the default takes
// narrower products (kv/turbo_attention.h).
std::vector<std::pair<std::string, std::string>> schemes() {
  std::vector<std::pair<std::string, std::string>> out;
  for (const std::string& name : turbokv::kv::listed_schemes()) out.emplace_back(name, name);
  out.emplace_back("group4g64", "group4g64/group4g64");
  out.emplace_back("prod4", "prod4/prod4");
  out.emplace_back("turbo4_f32", "turbo4:math=f32");
  out.emplace_back("turbo3_f32", "turbo3:math=f32");
  return out;
}
constexpr int kHeads = 8, kHeadsGqa8 = 16, kKvHeads = 2;

// The last-level cache's size (256 MiB where the system does not say).
size_t last_level_cache_bytes() {
  const long l3 = sysconf(_SC_LEVEL3_CACHE_SIZE);
  return l3 > 0 ? size_t(l3) : size_t(256) << 20;
}

// A cache of `layers` layers, each holding `tokens` random tokens (keys with
// a shared mean and outlier channels, like a real model's), with a decode
// batch of one token open.
struct Fixture {
  std::string key;
  std::unique_ptr<KvCache> cache;
  int layers = 1;
  std::vector<float> q, out;  // (n_head, head_dim)
};

void fill_cache(Fixture& f, const std::string& scheme, int layers, int tokens, int hd, int heads) {
  const CacheShape shape{layers, heads, kKvHeads, hd, tokens};
  f.cache = turbokv::kv::make_kv_cache(scheme, shape);
  f.layers = layers;
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
    f.cache->begin_batch(n, Phase::Prefill);
    for (int l = 0; l < layers; ++l) {
      fill(n);
      f.cache->store(l, k.data(), v.data());
    }
    f.cache->end_batch();
  }
  f.q.resize(size_t(heads) * hd);
  f.out.resize(f.q.size());
  for (auto& x : f.q) x = float(rng.normal());
  // The decode token: its first attend() per layer compresses the prefix (untimed).
  f.cache->begin_batch(1, Phase::Decode);
  turbokv::ThreadPool pool(1);
  for (int l = 0; l < layers; ++l) {
    fill(1);
    f.cache->store(l, k.data(), v.data());
    f.cache->attend(l, f.q.data(), f.out.data(), 1.0f / std::sqrt(float(hd)), pool);
  }
}

Fixture& fixture(const std::string& scheme, int tokens, int hd, bool cold, int heads) {
  static Fixture f;
  const std::string key = std::string(cold ? "cold" : "hot") + ":" + scheme + "/" + std::to_string(tokens) + "/" +
                          std::to_string(hd) + "/" + std::to_string(heads);
  if (f.key == key) return f;
  f = Fixture{};
  f.key = key;
  int layers = 1;
  if (cold) {  // as many layers as make twice the last-level cache, from the stored bits per element
    const auto empty = turbokv::kv::make_kv_cache(scheme, CacheShape{1, heads, kKvHeads, hd, tokens});
    const double per_layer = std::max(1.0, empty->bits_per_element() / 8 * 2 * kKvHeads * hd * double(tokens));
    layers = int(std::min(1024.0, std::ceil(2 * double(last_level_cache_bytes()) / per_layer)));
  }
  fill_cache(f, scheme, layers, tokens, hd, heads);
  return f;
}

void BM_Attention(benchmark::State& state, const std::string& scheme, bool cold, int heads) {
  const int tokens = int(state.range(0)), hd = int(state.range(1));
  Fixture& f = fixture(scheme, tokens, hd, cold, heads);
  turbokv::ThreadPool pool(1);
  const float scale = 1.0f / std::sqrt(float(hd));
  int layer = 0;
  for (auto _ : state) {
    f.cache->attend(layer, f.q.data(), f.out.data(), scale, pool);
    benchmark::DoNotOptimize(f.out.data());
    benchmark::ClobberMemory();
    if (++layer == f.layers) layer = 0;
  }
  state.counters["kv_MiB"] = double(f.cache->bytes()) / f.layers / (1 << 20);
  state.counters["layers"] = f.layers;
  state.counters["bits"] = f.cache->bits_per_element();
  state.SetLabel(scheme);
}

// Console output as usual, plus each benchmark's time for the ratio table:
// the median over repetitions where there are repetitions (also with
// --benchmark_report_aggregates_only), else the one run's.
class RatioReporter : public benchmark::ConsoleReporter {
 public:
  using Key = std::tuple<std::string, int, int, std::string>;  // (family, tokens, hd, scheme)
  std::map<Key, double> ns, median_ns;                          // real ns
  void ReportRuns(const std::vector<Run>& runs) override {
    ConsoleReporter::ReportRuns(runs);
    for (const Run& r : runs) {
      if (r.error_occurred) continue;
      const bool median = r.run_type == Run::RT_Aggregate && r.aggregate_name == "median";
      if (r.run_type != Run::RT_Iteration && !median) continue;
      // name: <family>/<scheme>/<tokens>/<hd>
      const std::string n = r.run_name.str();
      const size_t a = n.find('/'), c = n.rfind('/'), b = n.rfind('/', c - 1);
      const Key key{n.substr(0, a), std::stoi(n.substr(b + 1, c - b - 1)), std::stoi(n.substr(c + 1)),
                    n.substr(a + 1, b - a - 1)};
      (median ? median_ns : ns)[key] = r.GetAdjustedRealTime();
    }
  }
  // The times the table uses.
  std::map<Key, double> table() const {
    std::map<Key, double> t = ns;
    for (const auto& [key, v] : median_ns) t[key] = v;
    return t;
  }
};

}  // namespace

int main(int argc, char** argv) {
  const auto all = schemes();
  for (const auto& [label, scheme] : all) {
    const std::string s = scheme;
    benchmark::RegisterBenchmark((std::string("attention/") + label).c_str(),
                                 [s](benchmark::State& st) { BM_Attention(st, s, false, kHeads); })
        ->ArgsProduct({{1024, 4096, 16384, 65536}, {64, 128}})
        ->Unit(benchmark::kMicrosecond);
    benchmark::RegisterBenchmark((std::string("attention_cold/") + label).c_str(),
                                 [s](benchmark::State& st) { BM_Attention(st, s, true, kHeads); })
        ->Args({16384, 128})
        ->Unit(benchmark::kMicrosecond);
    benchmark::RegisterBenchmark((std::string("attention_gqa8/") + label).c_str(),
                                 [s](benchmark::State& st) { BM_Attention(st, s, false, kHeadsGqa8); })
        ->Args({16384, 128})
        ->Unit(benchmark::kMicrosecond);
  }
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  RatioReporter reporter;
  benchmark::RunSpecifiedBenchmarks(&reporter);
  std::printf("\nattention time / fp16 time (same run, medians where repeated; one decode token, %d heads / %d kv heads,\n"
              "1 thread; cold: every call reads another layer, from DRAM; gqa8: %d heads)\n",
              kHeads, kKvHeads, kHeadsGqa8);
  const auto times = reporter.table();
  std::vector<std::string> shown;  // the schemes this run timed
  for (const auto& sc : all) {
    if (std::any_of(times.begin(), times.end(), [&](const auto& kv) { return std::get<3>(kv.first) == sc.first; })) {
      shown.push_back(sc.first);
    }
  }
  std::printf("%-15s %8s %4s", "family", "tokens", "hd");
  for (const auto& name : shown) std::printf(" %12s", name.c_str());
  std::printf("\n");
  for (const auto& [key, t] : times) {
    const auto& [family, tokens, hd, scheme] = key;
    if (scheme != "fp16") continue;
    std::printf("%-15s %8d %4d", family.c_str(), tokens, hd);
    for (const auto& name : shown) {
      const auto it = times.find({family, tokens, hd, name});
      if (it == times.end()) std::printf(" %12s", "-");
      else std::printf(" %12.3f", it->second / t);
    }
    std::printf("\n");
  }
  benchmark::Shutdown();
  return 0;
}
