// turbokv-cuda-bench: times the CUDA decode attention over compressed KV
// caches against an FP16 baseline measured in the same run (the same
// flash-decoding kernel reading FP16 rows), and the GPU encoder.
//
//   turbokv-cuda-bench [--quick] [--json FILE] [--reps N] [--peak-gbs X]
//                      [--only BATCH,CTX,HEAD_DIM,GQA] [--schemes S1,S2,...]
//                      [--split N] [--hold-us X] [--no-encode] [--tiers]
//                      [--timeline]
//
// For every batch x context x head_dim x GQA shape (8 kv heads, every
// sequence full) and scheme it prints the median GPU time of one decode
// attention call, the bytes the call must read (records or rows of every
// position, query and output excluded), achieved bandwidth as a fraction of
// the card's peak, and the speed-up over FP16. Each timed call is enqueued
// behind hold_stream, so its events time the kernels and not the host's
// launch latency, and runs after an idle GPU (burst clocks). Two more
// columns: call_us, one call between events with the GPU waiting for the
// host's launch (the measure before session 6), and sustained_us, replays
// of a CUDA graph of kGraphCalls calls back to back divided by kGraphCalls
// (the GPU under continuous load, where the card's power limit can lower
// its clocks). And read_us: a kernel that only reads the same bytes
// (read_bytes), behind hold_stream like time_us: the floor a call over
// them can approach on this card at this size. Caches smaller than 3x the
// L2 are replicated and rotated so that repeated calls do not read from
// L2. The peak is 2 x memory clock x bus width from the driver's
// attributes unless --peak-gbs gives it. Then it times encoding a
// 32K-token prefix (keys and values of 8 kv heads: one layer). With
// --tiers, each record scheme is also timed as its cache keeps a sequence:
// one call per tier (far records, the near tier, the raw window; scheme.h)
// with partial states, merged by merge_partials; and in one call, the near
// tier and the raw window as the call's tail of fp16 rows. With
// --timeline, three more calls of each scheme record when each CTA passes
// its points (AttentionArgs::timeline), and it prints how long the phases
// between them took over the CTAs (timeline_line).
// Benchmarks never assert; tests live in tests/cuda.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <cuda_runtime.h>

#include "codec/rotation.h"
#include "cuda/cuda_kv.h"
#include "kv/scheme.h"
#include "util/error.h"

using namespace turbokv;
using namespace turbokv::cuda;

namespace {

#define CHECK(call)                                                                            \
  do {                                                                                         \
    const cudaError_t e_ = (call);                                                             \
    if (e_ != cudaSuccess) throw Error(std::string(#call) + ": " + cudaGetErrorString(e_));   \
  } while (0)

constexpr int kKvHeads = 8;
constexpr int kGraphCalls = 20;     // calls in one replayed graph (sustained_us)
constexpr uint64_t kSeed = 0x74757262'6f6b7631ull;

// A stream's device format at a head size.
StreamFormat format_of(const kv::StreamSpec& st, int hd) {
  return st.kind == kv::StreamKind::Codec ? StreamFormat::records(kv::SchemeSpec::resolve_codec(st, hd))
                                          : StreamFormat::rows_fp16();
}

struct Scheme {
  std::string name;
  StreamFormat k, v;    // the far tier: every position older than the raw window and the near tier
  kv::SchemeSpec spec;  // its raw window and near tier (--tiers)
};

// What the CPU cache stores for a scheme name at this head size.
Scheme scheme(const std::string& name, int hd) {
  if (name == "fp16") return {name, StreamFormat::rows_fp16(), StreamFormat::rows_fp16(), {}};
  const kv::SchemeSpec s = kv::parse_scheme(name);
  return {name, format_of(s.key, hd), format_of(s.value, hd), s};
}

std::string describe(const StreamFormat& f, int hd) {
  if (f.fp16) return "fp16 rows";
  const codec::CodecSpec& c = f.spec;
  char buf[96];
  std::snprintf(buf, sizeof buf, "%s%d%s%s rule %d%s (%zu B)", codec::codec_name(c.kind), c.bits,
                c.kind == codec::CodecKind::Group ? "g" : "",
                c.kind == codec::CodecKind::Group ? std::to_string(c.effective_group()).c_str() : "",
                int(c.scale_rule), c.scale_search ? " search" : "", f.row_bytes(hd));
  return buf;
}

std::vector<float> signs_for(int hd) {
  std::vector<float> s;
  for (int g = 0; g < kKvHeads; ++g) {
    const auto v = hadamard_signs(codec::Rotation::make(hd, kSeed, 0, g));
    s.insert(s.end(), v.begin(), v.end());
  }
  return s;
}

// One stream, `copies` replicas of (batch, kv, ctx, row), filled by encoding
// random vectors sequence by sequence.
struct Caches {
  std::vector<DeviceBuffer> k, v;
};

Caches build(const Scheme& sc, int batch, int ctx, int hd, int copies, const DeviceRotations& rot) {
  Caches c;
  Encoder ke(sc.k, hd, kKvHeads, &rot), ve(sc.v, hd, kKvHeads, &rot);
  const size_t kb = size_t(batch) * kKvHeads * ctx * ke.row_bytes(), vb = size_t(batch) * kKvHeads * ctx * ve.row_bytes();
  c.k.emplace_back(kb);
  c.v.emplace_back(vb);
  DeviceBuffer x(size_t(ctx) * kKvHeads * hd * sizeof(float));
  for (int s = 0; s < batch; ++s) {
    for (int which = 0; which < 2; ++which) {
      fill_random(x.as<float>(), size_t(ctx) * kKvHeads * hd, uint64_t(s) * 2 + which + 1, 1.0f);
      EncodeArgs a;
      a.x = x.as<float>();
      a.n_tok = ctx;
      a.capacity = ctx;
      a.cache = static_cast<uint8_t*>((which ? c.v : c.k)[0].data()) +
                size_t(s) * kKvHeads * ctx * (which ? ve : ke).row_bytes();
      (which ? ve : ke).encode(a);
    }
  }
  for (int i = 1; i < copies; ++i) {
    c.k.emplace_back(kb);
    c.v.emplace_back(vb);
    CHECK(cudaMemcpy(c.k.back().data(), c.k[0].data(), kb, cudaMemcpyDeviceToDevice));
    CHECK(cudaMemcpy(c.v.back().data(), c.v[0].data(), vb, cudaMemcpyDeviceToDevice));
  }
  return c;
}

struct Row {
  int batch, ctx, hd, gqa;
  std::string scheme;
  double us = 0, call_us = 0, sustained_us = 0, bytes = 0, gbs = 0, frac_peak = 0, speedup = 0;
  double read_us = 0, read_frac_peak = 0;  // a plain read of the same bytes (read_bytes)
  int split = 0;
};

// The line of one timed call with a timeline: the call's event time, then each
// phase's median [min, max] over the CTAs that have both of its points, in
// microseconds: launch (the hold kernel's end to a CTA's first
// instruction), setup, records (every warp's tiles), tail, state (merging
// the warps, writing the split's state), output (the cluster's first CTA:
// waiting for the others, folding, writing), and when the last CTA was done.
std::string timeline_line(const std::string& scheme, int call, double event_us, uint64_t hold_end,
                          const std::vector<uint64_t>& stamps) {
  const size_t n_cta = stamps.size() / kTimelineSlots;
  auto row = [&](size_t c) { return &stamps[c * kTimelineSlots]; };
  std::string line;
  auto add = [&](const char* fmt, auto... v) {
    char buf[128];
    std::snprintf(buf, sizeof buf, fmt, v...);
    line += buf;
  };
  add("timeline %-8s call %d: event %.1f", scheme.c_str(), call, event_us);
  auto phase = [&](const char* name, int from, int to) {
    std::vector<double> us;
    for (size_t c = 0; c < n_cta; ++c) {
      const uint64_t a = from < 0 ? hold_end : row(c)[from], b = row(c)[to];
      if (a != 0 && b != 0) us.push_back((double(b) - double(a)) * 1e-3);
    }
    if (us.empty()) return;
    std::sort(us.begin(), us.end());
    add(" | %s %.1f [%.1f, %.1f]", name, us[us.size() / 2], us.front(), us.back());
  };
  phase("launch", -1, kTimelineEntry);
  phase("setup", kTimelineEntry, kTimelineSetup);
  phase("records", kTimelineSetup, kTimelineRecords);
  phase("tail", kTimelineRecords, kTimelineTail);
  bool tail = false;
  for (size_t c = 0; c < n_cta; ++c) tail = tail || row(c)[kTimelineTail] != 0;
  phase("state", tail ? kTimelineTail : kTimelineRecords, kTimelineState);
  phase("output", kTimelineState, kTimelineOutput);
  uint64_t last = 0;
  for (size_t c = 0; c < n_cta; ++c) last = std::max({last, row(c)[kTimelineState], row(c)[kTimelineOutput]});
  add(" | last CTA done %.1f\n", (double(last) - double(hold_end)) * 1e-3);
  return line;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) try {
  bool quick = false, encode = true, tiers = false, timeline = false;
  std::string json_path;
  std::vector<int> only;
  std::vector<std::string> schemes = {"fp16", "turbo4", "turbo3"};
  int forced_split = 0;
  auto split_list = [](const std::string& v) {
    std::vector<std::string> out;
    size_t p = 0;
    while (p <= v.size()) {
      const size_t q = v.find(',', p);
      out.push_back(v.substr(p, q == std::string::npos ? std::string::npos : q - p));
      if (q == std::string::npos) break;
      p = q + 1;
    }
    return out;
  };
  int reps = 30;
  double peak_override = 0;
  double hold_us = 50;  // hold_stream before each timed call: longer than enqueueing the call takes
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw Error("flag " + a + " needs a value");
      return argv[++i];
    };
    if (a == "--quick") quick = true;
    else if (a == "--json") json_path = value();
    else if (a == "--reps") reps = std::atoi(value().c_str());
    else if (a == "--peak-gbs") peak_override = std::atof(value().c_str());
    else if (a == "--hold-us") hold_us = std::atof(value().c_str());
    else if (a == "--no-encode") encode = false;
    else if (a == "--tiers") tiers = true;
    else if (a == "--timeline") timeline = true;
    else if (a == "--split") forced_split = std::atoi(value().c_str());
    else if (a == "--schemes") schemes = split_list(value());
    else if (a == "--only") {
      for (const auto& f : split_list(value())) only.push_back(std::atoi(f.c_str()));
      if (only.size() != 4) throw Error("--only takes BATCH,CTX,HEAD_DIM,GQA");
    } else {
      throw Error("unknown flag " + a +
                  " (expected --quick, --json FILE, --reps N, --peak-gbs X, --only B,C,D,G, --schemes LIST, "
                  "--split N, --hold-us X, --no-encode, --tiers, --timeline)");
    }
  }
  if (reps < 3) throw Error("--reps must be at least 3");
  if (timeline && !timeline_available()) throw Error("--timeline needs turbokv built with -DTURBOKV_CUDA_TIMELINE=ON");
  if (!(hold_us >= 1 && hold_us <= 1e6)) throw Error("--hold-us must be between 1 and 1000000");
  if (!device_available()) throw Error("no CUDA device");
  const DeviceInfo dev = device_info();
  const double peak = peak_override > 0 ? peak_override : dev.peak_bandwidth_gbs;
  std::printf("device: %s, %d SMs, %.1f GiB, L2 %.0f MB, compute %d.%d\n", dev.name.c_str(), dev.sm_count,
              double(dev.total_memory) / (1 << 30), double(dev.l2_bytes) / 1e6, dev.major, dev.minor);
  std::printf("peak bandwidth: %.0f GB/s (%s)\n", peak,
              peak_override > 0 ? "--peak-gbs" : "2 x memory clock x bus width, driver attributes");

  std::vector<int> batches = {1, 8, 64}, ctxs = {4096, 32768, 131072}, hds = {64, 128}, gqas = {4, 8};
  if (!schemes.empty() && schemes[0] != "fp16") schemes.insert(schemes.begin(), "fp16");  // the baseline
  if (only.size() == 4) {
    batches = {only[0]};
    ctxs = {only[1]};
    hds = {only[2]};
    gqas = {only[3]};
  }
  if (quick) {
    batches = {8};
    ctxs = {32768};
    hds = {128};
    gqas = {4};
  }
  cudaEvent_t e0, e1;
  CHECK(cudaEventCreate(&e0));
  CHECK(cudaEventCreate(&e1));
  DeviceBuffer sink(sizeof(uint32_t));  // read_bytes's
  cudaStream_t stream = nullptr;
  CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  // The time between events around work(i), which enqueues on `stream`;
  // `hold`: behind hold_stream, which writes its end time to hold_end
  // where that is not null. Microseconds.
  auto call_time_us = [&](auto&& work, int i, bool hold, uint64_t* hold_end = nullptr) {
    if (hold) hold_stream(stream, hold_us, hold_end);
    CHECK(cudaEventRecord(e0, stream));
    work(i);
    CHECK(cudaEventRecord(e1, stream));
    CHECK(cudaEventSynchronize(e1));
    float ms = 0;
    CHECK(cudaEventElapsedTime(&ms, e0, e1));
    return double(ms) * 1e3;
  };
  // Their median over n_reps calls.
  auto time_us = [&](auto&& work, int n_reps, bool hold) {
    std::vector<double> times;
    for (int i = 0; i < n_reps; ++i) times.push_back(call_time_us(work, i, hold));
    return median(times);
  };
  std::vector<Row> rows;
  for (int hd : hds) {
    for (const auto& name : schemes) {
      const Scheme sc = scheme(name, hd);
      std::printf("%s at head_dim %d: keys %s, values %s\n", name.c_str(), hd, describe(sc.k, hd).c_str(),
                  describe(sc.v, hd).c_str());
    }
  }
  std::printf("\n%5s %7s %3s %3s  %-7s %10s %9s %8s %6s %8s %6s %8s %12s %8s %6s\n", "batch", "ctx", "hd", "gqa",
              "scheme", "time_us", "MB_read", "GB/s", "%peak", "vs_fp16", "split", "call_us", "sustained_us", "read_us",
              "%peak");
  for (int hd : hds) {
    const DeviceRotations rot(signs_for(hd), kKvHeads, hd);
    for (int gqa : gqas) {
      for (int batch : batches) {
        for (int ctx : ctxs) {
          const size_t fp16_bytes = size_t(batch) * kKvHeads * ctx * hd * 2 * 2;
          if (double(fp16_bytes) > 0.6 * double(dev.total_memory)) {
            std::printf("%5d %7d %3d %3d  skipped: the FP16 cache (%.1f GB) does not fit\n", batch, ctx, hd, gqa,
                        double(fp16_bytes) / 1e9);
            continue;
          }
          const int n_head = kKvHeads * gqa;
          DeviceBuffer q(size_t(batch) * n_head * hd * sizeof(float)), out(q.bytes());
          fill_random(q.as<float>(), size_t(batch) * n_head * hd, 99, 1.0f);
          const std::vector<int> lens(size_t(batch), ctx);
          DeviceBuffer dlen = upload_vector(lens);
          double fp16_us = 0;
          for (const auto& name : schemes) {
            const Scheme sc = scheme(name, hd);
            DecodeAttention attn(sc.k, sc.v, hd, kKvHeads, gqa);
            const double bytes = double(attn.bytes_read(lens));
            const int copies = int(std::clamp(std::ceil(3.0 * double(dev.l2_bytes) / bytes), 1.0, 16.0));
            const Caches c = build(sc, batch, ctx, hd, copies, rot);
            AttentionArgs a;
            a.n_seq = batch;
            a.seq_len = dlen.as<int>();
            a.max_seq_len = ctx;
            a.capacity = ctx;
            a.q = q.as<float>();
            a.scale = 1.0f / std::sqrt(float(hd));
            a.out = out.as<float>();
            a.split = forced_split;
            a.stream = stream;
            auto run = [&](int i) {
              a.keys = c.k[size_t(i) % c.k.size()].data();
              a.values = c.v[size_t(i) % c.v.size()].data();
              attn.run(a);
            };
            for (int i = 0; i < 5; ++i) run(i);
            CHECK(cudaStreamSynchronize(stream));
            Row r{batch, ctx, hd, gqa, name};
            r.split = forced_split > 0 ? forced_split : attn.planned_split(batch, ctx);
            r.us = time_us(run, reps, true);
            r.call_us = time_us(run, reps, false);
            // The floor: a kernel that only reads the call's bytes (every
            // position is valid, so the call reads the whole buffers).
            r.read_us = time_us(
                [&](int i) {
                  const DeviceBuffer &k = c.k[size_t(i) % c.k.size()], &v = c.v[size_t(i) % c.v.size()];
                  read_bytes(k.data(), k.bytes(), v.data(), v.bytes(), stream, sink.as<uint32_t>());
                },
                reps, true);
            // Before the graph replays below: the card's clocks drop under their continuous load.
            std::string timeline_lines;
            if (timeline) {
              const int n_split = (ctx + r.split - 1) / r.split;
              DeviceBuffer stamps(size_t(batch) * kKvHeads * n_split * kTimelineSlots * sizeof(uint64_t)),
                  hold_end(sizeof(uint64_t));
              for (int call = 1; call <= 3; ++call) {
                stamps.fill(0);
                CHECK(cudaDeviceSynchronize());
                a.timeline = stamps.as<uint64_t>();
                const double us = call_time_us(run, call, true, hold_end.as<uint64_t>());
                a.timeline = nullptr;
                std::vector<uint64_t> t(stamps.bytes() / sizeof(uint64_t));
                uint64_t h = 0;
                stamps.download(t.data(), stamps.bytes());
                hold_end.download(&h, sizeof h);
                timeline_lines += timeline_line(name, call, us, h, t);
              }
            }
            cudaGraph_t graph = nullptr;
            cudaGraphExec_t exec = nullptr;
            CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
            for (int i = 0; i < kGraphCalls; ++i) run(i);
            CHECK(cudaStreamEndCapture(stream, &graph));
            CHECK(cudaGraphInstantiate(&exec, graph, 0));
            CHECK(cudaGraphLaunch(exec, stream));
            r.sustained_us = time_us([&](int) { CHECK(cudaGraphLaunch(exec, stream)); }, reps, false) / kGraphCalls;
            CHECK(cudaGraphExecDestroy(exec));
            CHECK(cudaGraphDestroy(graph));
            r.bytes = bytes;
            r.gbs = bytes / (r.us * 1e-6) / 1e9;
            r.frac_peak = r.gbs / peak;
            r.read_frac_peak = double(c.k[0].bytes() + c.v[0].bytes()) / (r.read_us * 1e-6) / 1e9 / peak;
            if (name == "fp16") fp16_us = r.us;
            r.speedup = fp16_us > 0 ? fp16_us / r.us : 0;
            std::printf("%5d %7d %3d %3d  %-7s %10.1f %9.1f %8.0f %5.1f%% %7.2fx %6d %8.1f %12.1f %8.1f %5.1f%%\n",
                        batch, ctx, hd, gqa, name.c_str(), r.us, bytes / 1e6, r.gbs, 100 * r.frac_peak, r.speedup,
                        r.split, r.call_us, r.sustained_us, r.read_us, 100 * r.read_frac_peak);
            std::printf("%s", timeline_lines.c_str());
            std::fflush(stdout);
            rows.push_back(r);
            const kv::SchemeSpec& spec = sc.spec;
            if (tiers && spec.window + spec.near > 0 && ctx > spec.window + spec.near) {
              // The scheme as its cache keeps a sequence (scheme.h): the
              // newest `window` positions raw (fp16 rows), the `near` before
              // them in the near tier's records, the rest in the scheme's;
              // one call per tier with partial states, then merge_partials.
              const Scheme near{"near", format_of(spec.near_stream(spec.key), hd),
                                format_of(spec.near_stream(spec.value), hd), spec};
              const Scheme window{"raw", StreamFormat::rows_fp16(), StreamFormat::rows_fp16(), spec};
              const int n_far = ctx - spec.window - spec.near;
              std::vector<std::pair<const Scheme*, int>> parts = {{&sc, n_far}};
              if (spec.near > 0) parts.push_back({&near, spec.near});
              parts.push_back({&window, spec.window});
              std::vector<std::unique_ptr<DecodeAttention>> attns;
              std::vector<Caches> caches;
              std::vector<DeviceBuffer> lens_d, states;
              std::vector<PartialState> ps;
              for (const auto& [tier, len] : parts) {
                attns.push_back(std::make_unique<DecodeAttention>(tier->k, tier->v, hd, kKvHeads, gqa));
                // (a tier's capacity: a multiple of 16 positions, the tail unread)
                caches.push_back(build(*tier, batch, (len + 15) / 16 * 16, hd, tier == &sc ? copies : 1, rot));
                lens_d.push_back(upload_vector(std::vector<int>(size_t(batch), len)));
                states.emplace_back(size_t(batch) * n_head * sizeof(float));
                states.emplace_back(size_t(batch) * n_head * sizeof(float));
                states.emplace_back(size_t(batch) * n_head * hd * sizeof(float));
              }
              for (size_t t = 0; t < parts.size(); ++t) {
                ps.push_back({states[3 * t].as<float>(), states[3 * t + 1].as<float>(), states[3 * t + 2].as<float>()});
              }
              // Call i's arguments for tier t alone.
              auto tier_args = [&](size_t t, int i) {
                AttentionArgs b = a;
                b.seq_len = lens_d[t].as<int>();
                b.max_seq_len = parts[t].second;
                b.capacity = (parts[t].second + 15) / 16 * 16;
                b.keys = caches[t].k[size_t(i) % caches[t].k.size()].data();
                b.values = caches[t].v[size_t(i) % caches[t].v.size()].data();
                b.split = 0;
                return b;
              };
              auto run_tiers = [&](int i) {
                for (size_t t = 0; t < parts.size(); ++t) {
                  AttentionArgs b = tier_args(t, i);
                  b.out = states[3 * t + 2].as<float>();
                  b.out_m = states[3 * t].as<float>();
                  b.out_d = states[3 * t + 1].as<float>();
                  attns[t]->run(b);
                }
                merge_partials(ps, size_t(batch) * n_head, hd, out.as<float>(), stream);
              };
              for (int i = 0; i < 5; ++i) run_tiers(i);
              CHECK(cudaStreamSynchronize(stream));
              const double tier_us = time_us(run_tiers, reps, true);
              std::printf("%5d %7d %3d %3d  %-7s %10.1f  tiers: %d far + %d near + %d raw positions, "
                          "merged: %.2fx the one-call time, %.2fx over fp16\n",
                          batch, ctx, hd, gqa, (name + "+t").c_str(), tier_us, n_far, spec.near, spec.window,
                          tier_us / r.us, fp16_us > 0 ? fp16_us / tier_us : 0.0);
              // The same tiers in one call: the far records, with the near
              // tier and the raw window as the call's tail (fp16 rows, as
              // expand_records writes a near tier and the window is kept).
              const int tail_n = spec.near + spec.window, tail_cap = (tail_n + 15) / 16 * 16;
              const Caches tail = build(window, batch, tail_cap, hd, 1, rot);
              const DeviceBuffer tail_len = upload_vector(std::vector<int>(size_t(batch), tail_n));
              auto run_fused = [&](int i) {
                AttentionArgs b = tier_args(0, i);
                b.tail_len = tail_len.as<int>();
                b.tail_keys = tail.k[0].data();
                b.tail_values = tail.v[0].data();
                b.tail_capacity = tail_cap;
                attns[0]->run(b);
              };
              for (int i = 0; i < 5; ++i) run_fused(i);
              CHECK(cudaStreamSynchronize(stream));
              const double fused_us = time_us(run_fused, reps, true);
              std::printf("%5d %7d %3d %3d  %-7s %10.1f  tiers in one call (near + raw as its tail): %.2fx the "
                          "one-call time, %.2fx over fp16\n",
                          batch, ctx, hd, gqa, (name + "+1").c_str(), fused_us, fused_us / r.us,
                          fp16_us > 0 ? fp16_us / fused_us : 0.0);
              std::fflush(stdout);
            }
          }
        }
      }
    }
  }

  // Encoding a 32K-token prefix: keys and values of one layer (8 kv heads).
  struct EncRow {
    std::string scheme;
    int hd;
    double us;
  };
  std::vector<EncRow> enc_rows;
  const int prefix = 32768;
  std::printf("\nencode a %d-token prefix, one layer (%d kv heads, keys + values):\n", prefix, kKvHeads);
  for (int hd : {64, 128}) {
    if (!encode) break;
    const DeviceRotations rot(signs_for(hd), kKvHeads, hd);
    DeviceBuffer kx(size_t(prefix) * kKvHeads * hd * sizeof(float)), vx(kx.bytes());
    fill_random(kx.as<float>(), size_t(prefix) * kKvHeads * hd, 5, 1.0f);
    fill_random(vx.as<float>(), size_t(prefix) * kKvHeads * hd, 6, 1.0f);
    for (const auto& name : schemes) {
      std::optional<Scheme> sc;
      try {
        sc = scheme(name, hd);  // e.g. group5g128 has no layout at head_dim 64
      } catch (const Error& e) {
        std::printf("  %-7s hd %3d: skipped (%s)\n", name.c_str(), hd, e.what());
        continue;
      }
      Encoder ke(sc->k, hd, kKvHeads, &rot), ve(sc->v, hd, kKvHeads, &rot);
      DeviceBuffer kc(size_t(prefix) * kKvHeads * ke.row_bytes()), vc(size_t(prefix) * kKvHeads * ve.row_bytes());
      auto once = [&]() {
        EncodeArgs a;
        a.n_tok = prefix;
        a.capacity = prefix;
        a.x = kx.as<float>();
        a.cache = kc.data();
        ke.encode(a);
        a.x = vx.as<float>();
        a.cache = vc.data();
        ve.encode(a);
      };
      once();
      CHECK(cudaDeviceSynchronize());
      std::vector<double> times;
      for (int i = 0; i < 10; ++i) {
        CHECK(cudaEventRecord(e0));
        once();
        CHECK(cudaEventRecord(e1));
        CHECK(cudaEventSynchronize(e1));
        float ms = 0;
        CHECK(cudaEventElapsedTime(&ms, e0, e1));
        times.push_back(double(ms) * 1e3);
      }
      const double us = median(times);
      std::printf("  %-7s hd %3d: %9.1f us\n", name.c_str(), hd, us);
      enc_rows.push_back({name, hd, us});
    }
  }

  if (!json_path.empty()) {
    std::ofstream f(json_path);
    if (!f) throw Error("cannot write --json file " + json_path);
    f << "{\n  \"device\": \"" << dev.name << "\",\n  \"sm_count\": " << dev.sm_count
      << ",\n  \"peak_gbs\": " << peak << ",\n  \"peak_source\": \""
      << (peak_override > 0 ? "flag" : "driver attributes") << "\",\n  \"attention\": [\n";
    for (size_t i = 0; i < rows.size(); ++i) {
      const Row& r = rows[i];
      f << "    {\"batch\": " << r.batch << ", \"ctx\": " << r.ctx << ", \"head_dim\": " << r.hd << ", \"gqa\": " << r.gqa
        << ", \"kv_heads\": " << kKvHeads << ", \"scheme\": \"" << r.scheme << "\", \"time_us\": " << r.us << ", \"call_us\": " << r.call_us
        << ", \"sustained_us\": " << r.sustained_us
        << ", \"bytes\": " << r.bytes << ", \"gbs\": " << r.gbs << ", \"frac_peak\": " << r.frac_peak
        << ", \"speedup_vs_fp16\": " << r.speedup << ", \"split\": " << r.split << ", \"read_us\": " << r.read_us
        << ", \"read_frac_peak\": " << r.read_frac_peak << "}"
        << (i + 1 < rows.size() ? "," : "") << "\n";
    }
    f << "  ],\n  \"encode_prefix_tokens\": " << prefix << ",\n  \"encode\": [\n";
    for (size_t i = 0; i < enc_rows.size(); ++i) {
      f << "    {\"scheme\": \"" << enc_rows[i].scheme << "\", \"head_dim\": " << enc_rows[i].hd
        << ", \"time_us\": " << enc_rows[i].us << "}" << (i + 1 < enc_rows.size() ? "," : "") << "\n";
    }
    f << "  ]\n}\n";
  }
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "turbokv-cuda-bench: %s\n", e.what());
  return 1;
}
