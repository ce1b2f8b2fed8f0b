// Encode/decode throughput of the vector codecs (codec/codec.h), rotation
// included, at d = 64/128/256 and 2/3/4 bits (affine: 4/8). Throughput is
// reported as bytes/s of the FP16 input the cache would otherwise store:
// 2*d bytes per vector. A batch of 256 random vectors per iteration.
//
//   build/codec/bench/bench_codec --benchmark_min_time=0.05
#include <benchmark/benchmark.h>

#include <vector>

#include "codec/codec.h"
#include "util/rng.h"

namespace {

using turbokv::codec::Codec;
using turbokv::codec::CodecKind;
using turbokv::codec::Rotation;

constexpr int kBatch = 256;

struct Fixture {
  Fixture(CodecKind kind, int d, int bits)
      : codec({kind, bits, 0, turbokv::codec::MseCodebook::Sphere}, d, 7),
        rot(Rotation::make(d, 7)),
        x(size_t(kBatch) * d), y(size_t(kBatch) * d), rec(size_t(kBatch) * codec.record_bytes()) {
    turbokv::Rng rng(1);
    for (float& v : x) v = float(rng.normal());
    for (int i = 0; i < kBatch; ++i) codec.encode(rot, &x[size_t(i) * d], &rec[size_t(i) * codec.record_bytes()]);
  }
  Codec codec;
  Rotation rot;
  std::vector<float> x, y;    // (batch, d)
  std::vector<uint8_t> rec;   // (batch, record_bytes)
};

void BM_Encode(benchmark::State& state) {
  const auto kind = CodecKind(state.range(0));
  const int d = int(state.range(1)), bits = int(state.range(2));
  Fixture f(kind, d, bits);
  const size_t rb = f.codec.record_bytes();
  for (auto _ : state) {
    for (int i = 0; i < kBatch; ++i) f.codec.encode(f.rot, &f.x[size_t(i) * d], &f.rec[size_t(i) * rb]);
    benchmark::DoNotOptimize(f.rec.data());
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(int64_t(state.iterations()) * kBatch * 2 * d);
  state.SetLabel(std::string(turbokv::codec::codec_name(kind)) + " bpe=" + std::to_string(f.codec.bits_per_element()));
}

void BM_Decode(benchmark::State& state) {
  const auto kind = CodecKind(state.range(0));
  const int d = int(state.range(1)), bits = int(state.range(2));
  Fixture f(kind, d, bits);
  const size_t rb = f.codec.record_bytes();
  for (auto _ : state) {
    for (int i = 0; i < kBatch; ++i) f.codec.decode(f.rot, &f.rec[size_t(i) * rb], &f.y[size_t(i) * d]);
    benchmark::DoNotOptimize(f.y.data());
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(int64_t(state.iterations()) * kBatch * 2 * d);
  state.SetLabel(turbokv::codec::codec_name(kind));
}

// Score one rotated query against compressed records (what attention does).
void BM_DotRotated(benchmark::State& state) {
  const auto kind = CodecKind(state.range(0));
  const int d = int(state.range(1)), bits = int(state.range(2));
  Fixture f(kind, d, bits);
  const size_t rb = f.codec.record_bytes();
  std::vector<float> q(f.x.begin(), f.x.begin() + d), sketch(static_cast<size_t>(d));
  if (kind == CodecKind::Prod) f.codec.sketch_query(q.data(), sketch.data());
  for (auto _ : state) {
    float acc = 0;
    for (int i = 0; i < kBatch; ++i) acc += f.codec.dot_rotated(q.data(), sketch.data(), &f.rec[size_t(i) * rb]);
    benchmark::DoNotOptimize(acc);
  }
  state.SetBytesProcessed(int64_t(state.iterations()) * kBatch * 2 * d);
  state.SetLabel(turbokv::codec::codec_name(kind));
}

void rotated_codecs(benchmark::internal::Benchmark* b) {
  b->ArgNames({"codec", "d", "bits"});
  for (int k : {int(CodecKind::Mse), int(CodecKind::Group), int(CodecKind::Prod)})
    for (int d : {64, 128, 256})
      for (int bits : {2, 3, 4}) b->Args({k, d, bits});
  for (int d : {64, 128, 256})
    for (int bits : {4, 8}) b->Args({int(CodecKind::Affine), d, bits});
}

BENCHMARK(BM_Encode)->Apply(rotated_codecs);
BENCHMARK(BM_Decode)->Apply(rotated_codecs);
BENCHMARK(BM_DotRotated)->Apply(rotated_codecs);

}  // namespace

BENCHMARK_MAIN();
