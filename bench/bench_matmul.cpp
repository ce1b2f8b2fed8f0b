// Weight products: matvec (decode) and matmul n = 64 (prefill tile) for each
// stored type, 1 and 2 threads, plus the scalar reference as the in-run
// baseline, and a "model prefill" pass over every matrix of tq-tiny-hd128
// (the F16 model the project targets) reported in tokens/s.
//
//   build/io/bench/bench_matmul --benchmark_min_time=0.2
//
// Counters: GB/s = weight bytes streamed per second (each call reads the
// matrix once); GFLOP/s = 2 * rows * cols * n per second. The summary at the
// end prints each fast run's speedup over the scalar reference of the same
// type and shape, measured in this run.
#include <benchmark/benchmark.h>

#include <cstdio>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "io/gguf.h"
#include "ops/matmul.h"
#include "ops/quantize.h"
#include "util/rng.h"
#include "util/thread_pool.h"

namespace {

using turbokv::ThreadPool;
using namespace turbokv::ops;

std::string g_model_path;  // set once from --model= before any benchmark runs

const TensorType kTypes[] = {TensorType::F32, TensorType::F16, TensorType::BF16, TensorType::Q8_0, TensorType::Q4_0};

struct Matrix {
  std::vector<uint8_t> bytes;
  WeightView view;
};

Matrix make_matrix(TensorType t, int64_t rows, int64_t cols) {
  turbokv::Rng rng(uint64_t(rows * 131 + cols));
  Matrix m;
  m.bytes.resize(row_bytes(t, size_t(cols)) * size_t(rows));
  std::vector<float> row(static_cast<size_t>(cols));
  for (int64_t r = 0; r < rows; ++r) {
    for (auto& v : row) v = float(rng.normal() * 0.05);
    quantize_row(t, row.data(), m.bytes.data() + size_t(r) * row_bytes(t, size_t(cols)), size_t(cols));
  }
  m.view = WeightView{t, m.bytes.data(), rows, cols};
  return m;
}

std::vector<float> make_x(size_t n) {
  turbokv::Rng rng(5);
  std::vector<float> x(n);
  for (auto& v : x) v = float(rng.normal());
  return x;
}

void set_counters(benchmark::State& state, const WeightView& w, int64_t n) {
  const double bytes = double(w.row_stride_bytes()) * double(w.rows);
  state.counters["GB/s"] = benchmark::Counter(bytes * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["GFLOP/s"] =
      benchmark::Counter(2.0 * double(w.rows) * double(w.cols) * double(n) * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}

// args: type, rows, cols, n, threads
void BM_Matmul(benchmark::State& state) {
  const auto type = TensorType(state.range(0));
  const int64_t rows = state.range(1), cols = state.range(2), n = state.range(3);
  const Matrix m = make_matrix(type, rows, cols);
  const auto x = make_x(size_t(n * cols));
  std::vector<float> y(size_t(n * rows));
  ThreadPool pool(int(state.range(4)));
  for (auto _ : state) {
    matmul(m.view, x.data(), n, y.data(), pool);
    benchmark::DoNotOptimize(y.data());
  }
  set_counters(state, m.view, n);
  state.SetLabel(std::string(type_name(type)) + " " + std::to_string(rows) + "x" + std::to_string(cols) + " n=" +
                 std::to_string(n) + " t=" + std::to_string(state.range(4)) + " " + matmul_target_name());
}

void BM_MatmulRef(benchmark::State& state) {
  const auto type = TensorType(state.range(0));
  const int64_t rows = state.range(1), cols = state.range(2), n = state.range(3);
  const Matrix m = make_matrix(type, rows, cols);
  const auto x = make_x(size_t(n * cols));
  std::vector<float> y(size_t(n * rows));
  for (auto _ : state) {
    matmul_ref(m.view, x.data(), n, y.data());
    benchmark::DoNotOptimize(y.data());
  }
  set_counters(state, m.view, n);
  state.SetLabel(std::string(type_name(type)) + " " + std::to_string(rows) + "x" + std::to_string(cols) + " n=" +
                 std::to_string(n) + " reference");
}

void matmul_args(benchmark::internal::Benchmark* b) {
  for (TensorType t : kTypes)
    for (int64_t rows : {512, 1024, 4096})
      for (int64_t n : {1, 64})
        for (int64_t threads : {1, 2}) b->Args({int64_t(t), rows, 512, n, threads});
}
void ref_args(benchmark::internal::Benchmark* b) {
  for (TensorType t : kTypes)
    for (int64_t n : {1, 64}) b->Args({int64_t(t), 512, 512, n, 1});
}
BENCHMARK(BM_Matmul)->Apply(matmul_args)->Unit(benchmark::kMicrosecond)->UseRealTime();
BENCHMARK(BM_MatmulRef)->Apply(ref_args)->Unit(benchmark::kMicrosecond)->UseRealTime();

// Every weight matrix of tq-tiny-hd128 applied to a 512-token prompt (the
// matmul share of llama-bench pp512; attention and norms not included).
void BM_ModelPrefill(benchmark::State& state) {
  // --model=PATH, else the source tree's models/ copy, else shared/data next to the checkout.
  const std::filesystem::path src = std::filesystem::path(__FILE__).parent_path().parent_path();
  std::string path = g_model_path;
  if (path.empty()) path = (src / "models/tq-tiny-hd128.gguf").string();
  if (!std::filesystem::exists(path)) path = (src / "../shared/data/models/tq-tiny-hd128.gguf").string();
  if (!std::filesystem::exists(path)) {
    state.SkipWithError(("missing " + path).c_str());
    return;
  }
  const auto f = turbokv::io::GgufFile::open(path);
  std::vector<WeightView> mats;
  for (const auto& t : f->tensors()) {
    if (t.shape.size() != 2 || t.name == "token_embd.weight") continue;
    mats.push_back(WeightView{t.type, f->tensor_data(t), int64_t(t.shape[1]), int64_t(t.shape[0])});
  }
  // Tied output: the classifier multiplies by token_embd.
  const auto& emb = f->tensor("token_embd.weight");
  mats.push_back(WeightView{emb.type, f->tensor_data(emb), int64_t(emb.shape[1]), int64_t(emb.shape[0])});
  const int64_t n = state.range(0);
  const auto x = make_x(size_t(n) * 1024);
  std::vector<float> y(size_t(n) * 4096);
  ThreadPool pool(int(state.range(1)));
  double flops = 0;
  for (const auto& w : mats) flops += 2.0 * double(w.rows) * double(w.cols) * double(n);
  for (auto _ : state) {
    for (const auto& w : mats) matmul(w, x.data(), n, y.data(), pool);
    benchmark::DoNotOptimize(y.data());
  }
  state.counters["tok/s"] = benchmark::Counter(double(n), benchmark::Counter::kIsIterationInvariantRate);
  state.counters["GFLOP/s"] = benchmark::Counter(flops * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  state.SetLabel("tq-tiny-hd128 all matrices n=" + std::to_string(n) + " t=" + std::to_string(state.range(1)));
}
BENCHMARK(BM_ModelPrefill)->Args({512, 1})->Args({512, 2})->Args({1, 1})->Args({1, 2})->Unit(benchmark::kMillisecond)->UseRealTime();

// Prints fast-vs-reference ratios after the normal console output.
class RatioReporter : public benchmark::ConsoleReporter {
 public:
  void ReportRuns(const std::vector<Run>& runs) override {
    ConsoleReporter::ReportRuns(runs);
    for (const auto& r : runs) times_[r.benchmark_name()] = r.GetAdjustedRealTime();
  }
  void Finalize() override {
    ConsoleReporter::Finalize();
    std::printf("\nspeedup over the scalar reference (512x512, same run):\n");
    for (TensorType t : kTypes) {
      for (int n : {1, 64}) {
        const std::string args = std::to_string(int(t)) + "/512/512/" + std::to_string(n) + "/1";
        const auto ref = times_.find("BM_MatmulRef/" + args + "/real_time");
        for (int threads : {1, 2}) {
          const auto fast = times_.find("BM_Matmul/" + std::to_string(int(t)) + "/512/512/" + std::to_string(n) + "/" +
                                        std::to_string(threads) + "/real_time");
          if (ref == times_.end() || fast == times_.end()) continue;
          std::printf("  %-5s n=%-3d threads=%d: %7.1fx\n", type_name(t), n, threads, ref->second / fast->second);
        }
      }
    }
  }

 private:
  std::map<std::string, double> times_;
};

}  // namespace

int main(int argc, char** argv) {
  // Our one flag, removed before Google Benchmark parses the rest.
  int kept = 1;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a.rfind("--model=", 0) == 0) g_model_path = a.substr(8);
    else argv[kept++] = argv[i];
  }
  argc = kept;
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  RatioReporter reporter;
  benchmark::RunSpecifiedBenchmarks(&reporter);
  benchmark::Shutdown();
  return 0;
}
