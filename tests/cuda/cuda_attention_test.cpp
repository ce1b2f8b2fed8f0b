// Kernel parity: the CUDA fused decode attention against the CPU scalar
// reference (kv::detail::attend_chunk_reference), on odd sizes: one batch of
// sequences of lengths 0, 1, 15, 17, 1023 and 4097, GQA 1, 2, 3, 4, 7 and 8,
// head_dim 64 and 128, every supported key/value stream pair (the turbo
// schemes' far tiers and near tiers, mse and group at 2 to 5 and 8 bits).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include "codec/codec.h"
#include "codec/rotation.h"
#include "cuda/cuda_kv.h"
#include "kv/turbo_attention.h"
#include "util/error.h"
#include "util/fp16.h"
#include "util/rng.h"

namespace turbokv::cuda {
namespace {

#define SKIP_WITHOUT_GPU() \
  if (!device_available()) GTEST_SKIP() << "no CUDA device"

// Bounds the effect of the kernel's fp16 operands (query, expanded keys and
// values: one rounding each, and the record scale times the fp16 centroid a
// second one; softmax weights rounded to fp16 before P·V) against the
// reference's fp32 arithmetic: relative L2 error of each head's normalized
// output. With the test data below (scores of standard deviation ~1.5) the
// observed errors are printed by the test; fp16 rounding is 2^-11 ≈ 4.9e-4.
constexpr double kHalfOperandTolerance = 5e-3;
// Two runs of the same kernel that differ only in how the sequence is split
// must agree up to the same fp16 rounding of the weights (the running
// maximum each weight is taken against differs).
constexpr double kSplitTolerance = 5e-3;

constexpr int kCapacity = 4112;  // multiple of 16, >= longest sequence
const std::vector<int> kLengths = {0, 1, 15, 17, 1023, 4097};

struct Stream {
  StreamFormat fmt;
  std::string name;
};

Stream fp16() { return {StreamFormat::rows_fp16(), "fp16"}; }
Stream group(int bits, int g) {
  return {StreamFormat::records({codec::CodecKind::Group, bits, g, codec::MseCodebook::Sphere}),
          "group" + std::to_string(bits) + "g" + std::to_string(g)};
}
Stream mse(int bits) {
  return {StreamFormat::records({codec::CodecKind::Mse, bits, 0, codec::MseCodebook::Sphere}),
          "mse" + std::to_string(bits)};
}

// A stream's contents for every (sequence, kv head, position), on the host.
struct HostStream {
  std::vector<uint8_t> bytes;  // (n_seq, n_kv, capacity, row_bytes)
  size_t row = 0;
};

// Random vectors in the stream's (rotated) space: keys get norms that vary
// by position, values are N(0,1).
HostStream fill(const Stream& s, int hd, int n_seq, int n_kv, bool keys, uint64_t seed) {
  HostStream h;
  h.row = s.fmt.row_bytes(hd);
  h.bytes.assign(size_t(n_seq) * n_kv * kCapacity * h.row, 0);
  std::optional<codec::Codec> c;
  if (!s.fmt.fp16) c.emplace(s.fmt.spec, hd);
  Rng rng(seed);
  std::vector<float> x(static_cast<size_t>(hd));
  for (int q = 0; q < n_seq; ++q) {
    for (int g = 0; g < n_kv; ++g) {
      for (int p = 0; p < kLengths[size_t(q)]; ++p) {
        const float size = keys ? 0.6f + 0.15f * float(p % 7) : 1.0f;
        for (auto& v : x) v = size * float(rng.normal());
        uint8_t* dst = &h.bytes[((size_t(q) * n_kv + g) * kCapacity + p) * h.row];
        if (c) {
          c->encode_rotated(x.data(), dst);
        } else {
          for (int i = 0; i < hd; ++i) {
            const fp16_t v = f32_to_fp16(x[size_t(i)]);
            std::memcpy(dst + 2 * i, &v, 2);
          }
        }
      }
    }
  }
  return h;
}

kv::detail::StreamSource source(const Stream& s, const std::optional<codec::Codec>& c, const uint8_t* base) {
  kv::detail::StreamSource src;
  if (s.fmt.fp16) {
    src.read = kv::detail::StreamRead::Dense;
    src.rows = reinterpret_cast<const fp16_t*>(base);
  } else {
    src.read = kv::detail::StreamRead::Codec;
    src.codec = &*c;
    src.records = base;
  }
  return src;
}

double rel_l2(const float* a, const float* ref, int n) {
  double num = 0, den = 0;
  for (int i = 0; i < n; ++i) {
    num += (double(a[i]) - ref[i]) * (double(a[i]) - ref[i]);
    den += double(ref[i]) * ref[i];
  }
  return den > 0 ? std::sqrt(num / den) : std::sqrt(num);
}

struct PairCase {
  Stream k, v;
};

// A call over n_seq sequences of `capacity` positions: device lengths,
// key and value streams, query, shift (may be empty) and output.
AttentionArgs call_args(int n_seq, const DeviceBuffer& len, int max_len, const DeviceBuffer& keys,
                        const DeviceBuffer& values, const DeviceBuffer& q, const DeviceBuffer& shift, float scale,
                        const DeviceBuffer& out, int capacity = kCapacity) {
  AttentionArgs a;
  a.n_seq = n_seq;
  a.seq_len = len.as<int>();
  a.max_seq_len = max_len;
  a.capacity = capacity;
  a.keys = keys.data();
  a.values = values.data();
  a.q = q.as<float>();
  a.shift = shift.as<float>();
  a.scale = scale;
  a.out = out.as<float>();
  return a;
}

// The CPU reference's state {m, d, o} (natural base, o unnormalized) of
// n_q query heads (q, shift: their first) over positions [0, len) of one
// (sequence, kv head), `slot` = sequence * n_kv + kv head.
void reference_state(const PairCase& pc, const std::optional<codec::Codec>& kc,
                     const std::optional<codec::Codec>& vc, const HostStream& hk, const HostStream& hv, size_t slot,
                     int hd, int n_q, int len, const float* q, const float* shift, float scale, float* m, float* d,
                     float* o, std::vector<float>& work) {
  kv::detail::ChunkJob job;
  job.keys = source(pc.k, kc, &hk.bytes[slot * kCapacity * hk.row]);
  job.values = source(pc.v, vc, &hv.bytes[slot * kCapacity * hv.row]);
  job.head_dim = hd;
  job.n_q = n_q;
  job.begin = 0;
  job.end = len;
  job.q = q;
  job.shift = shift;
  job.scale = scale;
  job.m = m;
  job.d = d;
  job.o = o;
  kv::detail::attend_chunk_reference(job, work.data());
}

void check_pair(const PairCase& pc, int hd) {
  const int n_seq = int(kLengths.size()), n_kv = 2;
  const int max_len = *std::max_element(kLengths.begin(), kLengths.end());
  const HostStream hk = fill(pc.k, hd, n_seq, n_kv, true, uint64_t(hd) * 31 + 1);
  const HostStream hv = fill(pc.v, hd, n_seq, n_kv, false, uint64_t(hd) * 31 + 2);
  std::optional<codec::Codec> kc, vc;
  if (!pc.k.fmt.fp16) kc.emplace(pc.k.fmt.spec, hd);
  if (!pc.v.fmt.fp16) vc.emplace(pc.v.fmt.spec, hd);
  DeviceBuffer dk = upload_vector(hk.bytes), dv = upload_vector(hv.bytes), dlen = upload_vector(kLengths);
  const float scale = 1.0f / std::sqrt(float(hd));

  for (int group : {1, 2, 3, 4, 7, 8}) {
    SCOPED_TRACE(pc.k.name + "/" + pc.v.name + " hd " + std::to_string(hd) + " group " + std::to_string(group));
    const int n_head = n_kv * group;
    Rng rng(uint64_t(group) * 7 + uint64_t(hd));
    std::vector<float> q(size_t(n_seq) * n_head * hd), shift(size_t(n_seq) * n_head);
    for (auto& v : q) v = float(rng.normal());
    for (auto& v : shift) v = float(rng.normal());
    DeviceBuffer dq = upload_vector(q), dshift = upload_vector(shift);
    DeviceBuffer dout(q.size() * sizeof(float));

    DecodeAttention attn(pc.k.fmt, pc.v.fmt, hd, n_kv, group);
    AttentionArgs a = call_args(n_seq, dlen, max_len, dk, dv, dq, dshift, scale, dout);
    auto run_split = [&](int split) {
      dout.fill(0xFF);  // NaN: every element must be written
      a.split = split;
      attn.run(a);
      std::vector<float> out(q.size());
      dout.download(out.data(), out.size() * sizeof(float));
      return out;
    };
    // planned, the smallest, eight and three splits of the longest sequence,
    // one split per sequence (record kernels on sm_90 fold 1-4 splits in the
    // kernel itself, the last two; merge_kernel the others)
    const std::vector<int> splits = {0, 64, 576, 2048, 4160};
    std::vector<std::vector<float>> outs;
    for (int split : splits) outs.push_back(run_split(split));
    // Each run again gives the same bits: no result depends on which CTA or
    // warp ends first.
    for (size_t k = 0; k < splits.size(); ++k) {
      const std::vector<float> again = run_split(splits[k]);
      EXPECT_EQ(std::memcmp(again.data(), outs[k].data(), again.size() * sizeof(float)), 0)
          << "split run " << k << " differs between two runs";
    }

    // Reference: one job per (sequence, kv head, piece of <= 8 query heads).
    std::vector<float> ref(q.size(), 0.0f), work(kv::detail::chunk_work_floats(hd));
    for (int s = 0; s < n_seq; ++s) {
      const int len = kLengths[size_t(s)];
      if (len == 0) continue;  // the kernel must give zeros
      for (int g = 0; g < n_kv; ++g) {
        for (int h0 = 0; h0 < group; h0 += kv::detail::kMaxJobHeads) {
          const int nq = std::min(kv::detail::kMaxJobHeads, group - h0);
          const size_t head = size_t(s) * n_head + size_t(g) * group + h0;
          std::vector<float> m(static_cast<size_t>(nq)), d(static_cast<size_t>(nq)), o(size_t(nq) * hd);
          reference_state(pc, kc, vc, hk, hv, size_t(s) * n_kv + g, hd, nq, len, &q[head * hd], &shift[head], scale,
                          m.data(), d.data(), o.data(), work);
          for (int j = 0; j < nq; ++j)
            for (int i = 0; i < hd; ++i) ref[(head + j) * hd + i] = o[size_t(j) * hd + i] / d[size_t(j)];
        }
      }
    }
    double worst = 0, worst_split = 0;
    for (int s = 0; s < n_seq; ++s) {
      for (int h = 0; h < n_head; ++h) {
        const size_t off = (size_t(s) * n_head + h) * hd;
        for (size_t k = 0; k < outs.size(); ++k) {
          for (int i = 0; i < hd; ++i) ASSERT_TRUE(std::isfinite(outs[k][off + i])) << "unwritten or NaN output";
          const double e = rel_l2(&outs[k][off], &ref[off], hd);
          worst = std::max(worst, e);
          EXPECT_LE(e, kHalfOperandTolerance) << "sequence " << s << " (length " << kLengths[size_t(s)]
                                              << ") head " << h << " split run " << k;
          if (k > 0) worst_split = std::max(worst_split, rel_l2(&outs[k][off], &outs[0][off], hd));
        }
      }
    }
    EXPECT_LE(worst_split, kSplitTolerance);
    std::printf("[ parity ] %s/%s hd %d group %d: max rel L2 vs reference %.2e, between splits %.2e\n",
                pc.k.name.c_str(), pc.v.name.c_str(), hd, group, worst, worst_split);
  }
}

class CudaAttention : public ::testing::TestWithParam<int> {};

std::vector<PairCase> pairs(int hd) {
  const int vg = hd == 128 ? 128 : 64;  // turbo<B> values: groups of 128 where they divide
  std::vector<PairCase> out = {
      {fp16(), fp16()},                           // the FP16 baseline kernel
      {group(4, 64), group(4, vg)},               // turbo4 with keys in groups of 64
      {group(4, vg), group(4, vg)},               // turbo4 as resolved now (one scale a record)
      {group(3, 64), group(3, vg)},               // turbo3
      {group(2, 64), group(2, vg)},               // turbo2
      {group(4, 16), group(2, 32)},               // turbo4v2-like, small groups
      {mse(4), mse(4)}, {mse(3), mse(3)}, {mse(2), mse(2)},
      {fp16(), group(4, 16)},                     // turbo0v4
      {group(3, 32), fp16()},                     // compressed keys, FP16 values
      {group(5, vg), group(5, vg)},               // turbo4's near tier (5 bits: single-element lookups)
      {group(5, vg), group(3, vg)},               // turbo4v2's near tier
      {fp16(), group(5, 16)},                     // turbo0v4's near tier
      {mse(5), mse(5)},
      {group(8, vg), group(8, vg)},               // turbo8 (8 bits: single-element lookups, 8 warps)
      {mse(8), mse(8)}, {fp16(), group(8, 16)}, {group(8, 16), fp16()},
  };
  // 5-bit keys with 4-bit values: at head_dim 128 their tile ring and the
  // 64 KiB pair table exceed shared memory (refused, see below).
  if (hd == 64) out.push_back({group(5, 32), group(4, 32)});
  return out;
}

TEST_P(CudaAttention, MatchesCpuReferenceOnOddSizes) {
  SKIP_WITHOUT_GPU();
  for (const auto& pc : pairs(GetParam())) check_pair(pc, GetParam());
}

INSTANTIATE_TEST_SUITE_P(HeadDim, CudaAttention, ::testing::Values(64, 128));

// The exact merge, on the host, of reference states of disjoint positions
// (natural base, kv::detail's m, d, o) into each row's output.
class HostMerge {
 public:
  HostMerge(size_t rows, int hd) : hd_(hd), m_(rows, -INFINITY), d_(rows, 0.0), o_(rows * size_t(hd), 0.0) {}
  // Folds the states of rows [first, first + n).
  void fold(size_t first, int n, const float* m, const float* d, const float* o) {
    for (int j = 0; j < n; ++j) {
      const size_t r = first + size_t(j);
      const double mn = std::max(m_[r], double(m[j]));
      const double a_old = std::exp(m_[r] - mn), a_new = std::exp(double(m[j]) - mn);
      d_[r] = d_[r] * a_old + double(d[j]) * a_new;
      for (int i = 0; i < hd_; ++i) o_[r * hd_ + i] = o_[r * hd_ + i] * a_old + double(o[size_t(j) * hd_ + i]) * a_new;
      m_[r] = mn;
    }
  }
  // Row r's normalized output; zeros where no position was attended.
  std::vector<float> output(size_t r) const {
    std::vector<float> out(static_cast<size_t>(hd_), 0.0f);
    if (d_[r] > 0) {
      for (int i = 0; i < hd_; ++i) out[size_t(i)] = float(o_[r * hd_ + i] / d_[r]);
    }
    return out;
  }

 private:
  int hd_;
  std::vector<double> m_, d_, o_;
};

// A cache's tiers as turbo4 keeps them (far: 4-bit records, near: 5-bit
// records, window: FP16 rows; here all in one space), attended by one call
// each with partial states and folded by merge_partials, against the CPU
// reference's per-tier states merged on the host.
TEST(CudaAttentionTiers, WindowNearAndFarMergeExactly) {
  SKIP_WITHOUT_GPU();
  const int hd = 128, n_kv = 2, n_group = 4, n_seq = int(kLengths.size()), n_head = n_kv * n_group;
  const size_t rows = size_t(n_seq) * n_head;
  const std::vector<PairCase> tiers = {{group(4, 128), group(4, 128)}, {group(5, 128), group(5, 128)}, {fp16(), fp16()}};
  std::vector<std::vector<int>> len(tiers.size());
  for (int s = 0; s < n_seq; ++s) {
    const int total = kLengths[size_t(s)], window = std::min(2, total), near = std::min(26, total - window);
    len[0].push_back(total - window - near);
    len[1].push_back(near);
    len[2].push_back(window);
  }
  Rng rng(404);
  std::vector<float> q(rows * hd), shift(rows);
  for (auto& v : q) v = float(rng.normal());
  for (auto& v : shift) v = float(rng.normal());
  DeviceBuffer dq = upload_vector(q), dshift = upload_vector(shift), dout(rows * hd * sizeof(float));
  const float scale = 1.0f / std::sqrt(float(hd));
  HostMerge merged(rows, hd);  // the reference's per-tier states
  std::vector<DeviceBuffer> keep;
  std::vector<PartialState> parts;
  std::vector<float> whole_first;  // tier 0 by a plain call (normalized)
  for (size_t t = 0; t < tiers.size(); ++t) {
    const PairCase& pc = tiers[t];
    const HostStream hk = fill(pc.k, hd, n_seq, n_kv, true, 11 + t), hv = fill(pc.v, hd, n_seq, n_kv, false, 21 + t);
    std::optional<codec::Codec> kc, vc;
    if (!pc.k.fmt.fp16) kc.emplace(pc.k.fmt.spec, hd);
    if (!pc.v.fmt.fp16) vc.emplace(pc.v.fmt.spec, hd);
    keep.push_back(upload_vector(hk.bytes));
    keep.push_back(upload_vector(hv.bytes));
    keep.push_back(upload_vector(len[t]));
    const void* dk = keep[keep.size() - 3].data();
    const void* dv = keep[keep.size() - 2].data();
    const int* dlen = keep.back().as<int>();
    DeviceBuffer pm(rows * sizeof(float)), pd(rows * sizeof(float)), po(rows * hd * sizeof(float));
    DecodeAttention attn(pc.k.fmt, pc.v.fmt, hd, n_kv, n_group);
    AttentionArgs a;
    a.n_seq = n_seq;
    a.seq_len = dlen;
    a.max_seq_len = std::max(1, *std::max_element(len[t].begin(), len[t].end()));
    a.capacity = kCapacity;
    a.keys = dk;
    a.values = dv;
    a.q = dq.as<float>();
    a.shift = dshift.as<float>();
    a.scale = scale;
    if (t == 0) {  // the same call, normalized: one part merged alone must give its bits
      a.out = dout.as<float>();
      attn.run(a);
      whole_first.resize(rows * hd);
      dout.download(whole_first.data(), whole_first.size() * sizeof(float));
    }
    a.out = po.as<float>();
    a.out_m = pm.as<float>();
    a.out_d = pd.as<float>();
    attn.run(a);
    parts.push_back({pm.as<float>(), pd.as<float>(), po.as<float>()});
    keep.push_back(std::move(pm));
    keep.push_back(std::move(pd));
    keep.push_back(std::move(po));

    std::vector<float> work(kv::detail::chunk_work_floats(hd));
    for (int s = 0; s < n_seq; ++s) {
      if (len[t][size_t(s)] == 0) continue;
      for (int g = 0; g < n_kv; ++g) {
        const size_t head = size_t(s) * n_head + size_t(g) * n_group;
        std::vector<float> m(static_cast<size_t>(n_group)), d(static_cast<size_t>(n_group)), o(size_t(n_group) * hd);
        reference_state(pc, kc, vc, hk, hv, size_t(s) * n_kv + g, hd, n_group, len[t][size_t(s)], &q[head * hd],
                        &shift[head], scale, m.data(), d.data(), o.data(), work);
        merged.fold(head, n_group, m.data(), d.data(), o.data());
      }
    }
  }
  // One part alone: the plain call's bits.
  merge_partials({parts[0]}, rows, hd, dout.as<float>());
  std::vector<float> one(rows * hd);
  dout.download(one.data(), one.size() * sizeof(float));
  EXPECT_EQ(std::memcmp(one.data(), whole_first.data(), one.size() * sizeof(float)), 0);
  // All three.
  dout.fill(0xFF);
  merge_partials(parts, rows, hd, dout.as<float>());
  std::vector<float> out(rows * hd);
  dout.download(out.data(), out.size() * sizeof(float));
  double worst = 0;
  for (size_t r = 0; r < rows; ++r) {
    const std::vector<float> ref = merged.output(r);
    for (int i = 0; i < hd; ++i) ASSERT_TRUE(std::isfinite(out[r * hd + i])) << "row " << r;
    const double e = rel_l2(&out[r * hd], ref.data(), hd);
    worst = std::max(worst, e);
    EXPECT_LE(e, kHalfOperandTolerance) << "row " << r << " (sequence length " << kLengths[r / n_head] << ")";
  }
  std::printf("[ tiers ] far group4g128 + near group5g128 + window fp16: max rel L2 vs reference %.2e\n", worst);
  EXPECT_THROW(merge_partials({}, rows, hd, dout.as<float>()), Error);
}

// A cache's tiers in one call: the far records as the call's stream, the
// near tier (its records decoded to fp16, what expand_records writes; that
// test is in cuda_encode_test) and the raw window as its tail; against the
// CPU reference's per-tier states merged on the host. Sequences of every
// kLengths total, so some are tail only (no far records) and some hold
// less than one tile; near = 300 makes tails of 10 chunks (attend_tail
// reads 32 positions at a time). Several splits move the tail to other
// CTAs and through the cluster merge and merge_kernel; each run again
// gives the same bits.
void check_tail(const PairCase& far, const PairCase& near, int hd, int window, int near_len, int n_group = 4) {
  const int n_kv = 2, n_seq = int(kLengths.size()), n_head = n_kv * n_group;
  const size_t rows = size_t(n_seq) * n_head;
  SCOPED_TRACE(far.k.name + "/" + far.v.name + " + near " + near.k.name + "/" + near.v.name + " hd " +
               std::to_string(hd) + " near " + std::to_string(near_len) + " group " + std::to_string(n_group));
  const PairCase raw{fp16(), fp16()};
  const std::vector<const PairCase*> tiers = {&far, &near, &raw};
  std::vector<std::vector<int>> len(3);
  for (int s = 0; s < n_seq; ++s) {
    const int total = kLengths[size_t(s)], w = std::min(window, total), nr = std::min(near_len, total - w);
    len[0].push_back(total - w - nr);
    len[1].push_back(nr);
    len[2].push_back(w);
  }
  std::vector<int> tail_len(static_cast<size_t>(n_seq));
  for (int s = 0; s < n_seq; ++s) tail_len[size_t(s)] = len[1][size_t(s)] + len[2][size_t(s)];
  const int tail_capacity = *std::max_element(tail_len.begin(), tail_len.end()) + 3;  // any size, not tiles
  Rng rng(505 + uint64_t(hd));
  std::vector<float> q(rows * hd), shift(rows);
  for (auto& v : q) v = float(rng.normal());
  for (auto& v : shift) v = float(rng.normal());
  const float scale = 1.0f / std::sqrt(float(hd));
  // The tail rows (keys, values): near positions first, then the window.
  std::vector<fp16_t> tk(size_t(n_seq) * n_kv * tail_capacity * hd, f32_to_fp16(NAN)),
      tv(tk.size(), f32_to_fp16(NAN));  // NaN past each tail: it must not be read
  HostMerge merged(rows, hd);  // the reference's per-tier states
  std::vector<HostStream> far_streams;
  std::vector<float> work(kv::detail::chunk_work_floats(hd)), dec(static_cast<size_t>(hd));
  for (size_t t = 0; t < tiers.size(); ++t) {
    const PairCase& pc = *tiers[t];
    const HostStream hk = fill(pc.k, hd, n_seq, n_kv, true, 31 + t), hv = fill(pc.v, hd, n_seq, n_kv, false, 41 + t);
    std::optional<codec::Codec> kc, vc;
    if (!pc.k.fmt.fp16) kc.emplace(pc.k.fmt.spec, hd);
    if (!pc.v.fmt.fp16) vc.emplace(pc.v.fmt.spec, hd);
    for (int s = 0; s < n_seq; ++s) {
      const int n = len[t][size_t(s)];
      for (int g = 0; g < n_kv; ++g) {
        const size_t slot = size_t(s) * n_kv + g;
        if (t > 0) {  // into the tail
          const int at = t == 1 ? 0 : len[1][size_t(s)];
          for (int p = 0; p < n; ++p) {
            for (int which = 0; which < 2; ++which) {
              const HostStream& h = which ? hv : hk;
              const std::optional<codec::Codec>& c = which ? vc : kc;
              const uint8_t* row = &h.bytes[(slot * kCapacity + p) * h.row];
              fp16_t* dst = &(which ? tv : tk)[(slot * tail_capacity + at + p) * hd];
              if (c) {
                c->decode_rotated(row, dec.data());
                for (int i = 0; i < hd; ++i) dst[i] = f32_to_fp16(dec[size_t(i)]);
              } else {
                std::memcpy(dst, row, size_t(hd) * 2);
              }
            }
          }
        }
        if (n == 0) continue;
        const size_t head = size_t(s) * n_head + size_t(g) * n_group;
        std::vector<float> m(static_cast<size_t>(n_group)), d(static_cast<size_t>(n_group)), o(size_t(n_group) * hd);
        reference_state(pc, kc, vc, hk, hv, slot, hd, n_group, n, &q[head * hd], &shift[head], scale, m.data(),
                        d.data(), o.data(), work);
        merged.fold(head, n_group, m.data(), d.data(), o.data());
      }
    }
    if (t == 0) {
      far_streams.push_back(hk);
      far_streams.push_back(hv);
    }
  }
  DeviceBuffer dk = upload_vector(far_streams[0].bytes), dv = upload_vector(far_streams[1].bytes);
  DeviceBuffer dlen = upload_vector(len[0]), dtail = upload_vector(tail_len), dtk = upload_vector(tk),
               dtv = upload_vector(tv);
  DeviceBuffer dq = upload_vector(q), dshift = upload_vector(shift), dout(rows * hd * sizeof(float));
  DecodeAttention attn(far.k.fmt, far.v.fmt, hd, n_kv, n_group);
  AttentionArgs a =
      call_args(n_seq, dlen, *std::max_element(len[0].begin(), len[0].end()), dk, dv, dq, dshift, scale, dout);
  a.tail_len = dtail.as<int>();
  a.tail_keys = dtk.data();
  a.tail_values = dtv.data();
  a.tail_capacity = tail_capacity;
  double worst = 0;
  std::vector<float> first;
  for (int split : {0, 64, 576, 2048, 4160}) {
    a.split = split;
    std::vector<float> out(rows * hd), again(rows * hd);
    for (std::vector<float>* dst : {&out, &again}) {
      dout.fill(0xFF);  // NaN: every element must be written
      attn.run(a);
      dout.download(dst->data(), dst->size() * sizeof(float));
    }
    EXPECT_EQ(std::memcmp(out.data(), again.data(), out.size() * sizeof(float)), 0) << "split " << split;
    for (size_t r = 0; r < rows; ++r) {
      const std::vector<float> ref = merged.output(r);
      for (int i = 0; i < hd; ++i) ASSERT_TRUE(std::isfinite(out[r * hd + i])) << "row " << r << " split " << split;
      const double e = rel_l2(&out[r * hd], ref.data(), hd);
      worst = std::max(worst, e);
      EXPECT_LE(e, kHalfOperandTolerance) << "row " << r << " (sequence length " << kLengths[r / n_head]
                                          << ") split " << split;
    }
  }
  std::printf("[ tail ] %s/%s + near %s/%s + %d raw, near %d, hd %d, group %d: max rel L2 vs reference %.2e\n",
              far.k.name.c_str(), far.v.name.c_str(), near.k.name.c_str(), near.v.name.c_str(), window, near_len, hd,
              n_group, worst);
}

TEST(CudaAttentionTiers, TailAttendsInTheSameCall) {
  SKIP_WITHOUT_GPU();
  for (int hd : {64, 128}) {
    const int vg = hd;  // the turbo schemes' one scale per record where the group is the head
    check_tail({group(4, vg), group(4, vg)}, {group(5, vg), group(5, vg)}, hd, 2, 26);  // turbo4
    check_tail({fp16(), group(4, 16)}, {fp16(), group(5, 16)}, hd, 2, 26);              // turbo0v4
    check_tail({group(8, vg), group(8, vg)}, {group(8, vg), group(8, vg)}, hd, 4, 0);   // turbo8: 8 warps
    check_tail({group(3, 32), fp16()}, {group(4, 32), fp16()}, hd, 2, 26);              // value rows
    check_tail({fp16(), fp16()}, {fp16(), fp16()}, hd, 2, 26);                          // the FP16 kernel
  }
  check_tail({group(4, 128), group(4, 128)}, {group(5, 128), group(5, 128)}, 128, 2, 300);  // 10 chunks of 32
  check_tail({fp16(), group(4, 16)}, {fp16(), group(5, 16)}, 128, 2, 26, 8);  // more heads than the kernel's 4 warps
  check_tail({group(4, 128), group(4, 128)}, {group(5, 128), group(5, 128)}, 128, 2, 26, 7);
}

TEST(CudaAttentionTiers, TailWithoutRowsIsRejected) {
  SKIP_WITHOUT_GPU();
  const codec::CodecSpec g4{codec::CodecKind::Group, 4, 128, codec::MseCodebook::Sphere};
  DecodeAttention attn(StreamFormat::records(g4), StreamFormat::records(g4), 128, 1, 4);
  DeviceBuffer q(4 * 128 * sizeof(float)), lens(sizeof(int));
  AttentionArgs a;
  a.n_seq = 1;
  a.capacity = 64;
  a.max_seq_len = 64;
  a.q = q.as<float>();
  a.tail_len = lens.as<int>();  // checked before anything is read
  a.tail_capacity = 32;
  EXPECT_THROW(attn.run(a), Error);
  a.tail_keys = a.tail_values = q.data();
  a.tail_capacity = 0;
  EXPECT_THROW(attn.run(a), Error);
}

// End to end through the rotations: keys and values in the original space,
// encoded on the GPU (turbo4's codecs, scale search included), queries
// rotated on the GPU, output rotated back; against the CPU codec, CPU
// rotations and the reference.
TEST(CudaAttentionEndToEnd, GpuEncodedTurbo4MatchesCpuPipeline) {
  SKIP_WITHOUT_GPU();
  const int hd = 128, n_kv = 2, group = 4, n_head = n_kv * group, len = 1023, capacity = 1024;
  constexpr uint64_t kSeed = 0x74757262'6f6b7631ull;
  codec::CodecSpec ks{codec::CodecKind::Group, 4, 64, codec::MseCodebook::Sphere};
  ks.scale_rule = codec::ScaleRule::LeastSquares;
  ks.scale_search = true;
  codec::CodecSpec vs{codec::CodecKind::Group, 4, 128, codec::MseCodebook::Sphere};
  vs.scale_search = true;
  std::vector<float> signs;
  std::vector<codec::Rotation> rots;
  for (int g = 0; g < n_kv; ++g) {
    rots.push_back(codec::Rotation::make(hd, kSeed, 0, g));
    const auto v = hadamard_signs(rots.back());
    signs.insert(signs.end(), v.begin(), v.end());
  }
  DeviceRotations drot(signs, n_kv, hd);
  Encoder kenc(StreamFormat::records(ks), hd, n_kv, &drot), venc(StreamFormat::records(vs), hd, n_kv, &drot);
  Rng rng(77);
  std::vector<float> k(size_t(len) * n_kv * hd), v(k.size()), q(size_t(n_head) * hd);
  for (auto& x : k) x = float(rng.normal());
  for (auto& x : v) x = float(rng.normal());
  for (auto& x : q) x = float(rng.normal());
  DeviceBuffer dk = upload_vector(k), dv = upload_vector(v), dq = upload_vector(q);
  DeviceBuffer kc(size_t(n_kv) * capacity * kenc.row_bytes()), vc(size_t(n_kv) * capacity * venc.row_bytes());
  EncodeArgs e;
  e.n_tok = len;
  e.capacity = capacity;
  e.x = dk.as<float>();
  e.cache = kc.data();
  kenc.encode(e);
  e.x = dv.as<float>();
  e.cache = vc.data();
  venc.encode(e);
  DeviceBuffer dqr(q.size() * sizeof(float)), dout(q.size() * sizeof(float));
  drot.forward(dq.as<float>(), dqr.as<float>(), size_t(n_head), group);
  const std::vector<int> lens = {len};
  DeviceBuffer dlen = upload_vector(lens);
  DecodeAttention attn(StreamFormat::records(ks), StreamFormat::records(vs), hd, n_kv, group);
  attn.run(call_args(1, dlen, len, kc, vc, dqr, DeviceBuffer(), 1.0f / std::sqrt(float(hd)), dout, capacity));
  drot.inverse(dout.as<float>(), dout.as<float>(), size_t(n_head), group);
  std::vector<float> out(q.size());
  dout.download(out.data(), out.size() * sizeof(float));

  const codec::Codec kcod(ks, hd), vcod(vs, hd);
  std::vector<float> work(kv::detail::chunk_work_floats(hd));
  for (int g = 0; g < n_kv; ++g) {
    std::vector<uint8_t> kr(size_t(len) * kcod.record_bytes()), vr(size_t(len) * vcod.record_bytes());
    for (int p = 0; p < len; ++p) {
      kcod.encode(rots[size_t(g)], &k[(size_t(p) * n_kv + g) * hd], &kr[size_t(p) * kcod.record_bytes()]);
      vcod.encode(rots[size_t(g)], &v[(size_t(p) * n_kv + g) * hd], &vr[size_t(p) * vcod.record_bytes()]);
    }
    std::vector<uint8_t> gk(kr.size()), gv(vr.size());
    kc.download(gk.data(), gk.size(), size_t(g) * capacity * kcod.record_bytes());
    vc.download(gv.data(), gv.size(), size_t(g) * capacity * vcod.record_bytes());
    EXPECT_EQ(gk, kr) << "key records of kv head " << g;
    EXPECT_EQ(gv, vr) << "value records of kv head " << g;
    std::vector<float> qr(size_t(group) * hd), m(static_cast<size_t>(group)), d(static_cast<size_t>(group)), o(size_t(group) * hd);
    for (int j = 0; j < group; ++j) rots[size_t(g)].forward(&q[(size_t(g) * group + j) * hd], &qr[size_t(j) * hd]);
    kv::detail::ChunkJob job;
    job.keys = {kv::detail::StreamRead::Codec, &kcod, kr.data(), nullptr};
    job.values = {kv::detail::StreamRead::Codec, &vcod, vr.data(), nullptr};
    job.head_dim = hd;
    job.n_q = group;
    job.begin = 0;
    job.end = len;
    job.q = qr.data();
    job.scale = 1.0f / std::sqrt(float(hd));
    job.m = m.data();
    job.d = d.data();
    job.o = o.data();
    kv::detail::attend_chunk_reference(job, work.data());
    for (int j = 0; j < group; ++j) {
      std::vector<float> ref(static_cast<size_t>(hd));
      for (int i = 0; i < hd; ++i) o[size_t(j) * hd + i] /= d[size_t(j)];
      rots[size_t(g)].inverse(&o[size_t(j) * hd], ref.data());
      EXPECT_LE(rel_l2(&out[(size_t(g) * group + j) * hd], ref.data(), hd), kHalfOperandTolerance)
          << "kv head " << g << " query head " << j;
    }
  }
}

TEST(CudaAttentionShapes, UnsupportedShapesAreRejectedByName) {
  SKIP_WITHOUT_GPU();
  EXPECT_THROW(DecodeAttention(StreamFormat::rows_fp16(), StreamFormat::rows_fp16(), 96, 2, 4), Error);
  EXPECT_THROW(DecodeAttention(StreamFormat::rows_fp16(), StreamFormat::rows_fp16(), 128, 2, 9), Error);
  // 8-bit records pair only with 8-bit records or fp16 rows.
  const codec::CodecSpec b8{codec::CodecKind::Group, 8, 64, codec::MseCodebook::Sphere};
  const codec::CodecSpec b4{codec::CodecKind::Group, 4, 64, codec::MseCodebook::Sphere};
  EXPECT_THROW(DecodeAttention(StreamFormat::records(b8), StreamFormat::records(b4), 128, 2, 4), Error);
  EXPECT_THROW(DecodeAttention(StreamFormat::records(b4), StreamFormat::records(b8), 128, 2, 4), Error);
  const codec::CodecSpec b6{codec::CodecKind::Mse, 6, 0, codec::MseCodebook::Sphere};
  EXPECT_THROW(DecodeAttention(StreamFormat::rows_fp16(), StreamFormat::records(b6), 128, 2, 4), Error);
  // Records that leave no room for the tile ring beside the 4-bit pair table.
  const codec::CodecSpec k5{codec::CodecKind::Group, 5, 32, codec::MseCodebook::Sphere};
  const codec::CodecSpec v4{codec::CodecKind::Group, 4, 32, codec::MseCodebook::Sphere};
  try {
    DecodeAttention(StreamFormat::records(k5), StreamFormat::records(v4), 128, 2, 4);
    ADD_FAILURE() << "5-bit keys with 4-bit values in groups of 32 at head_dim 128 were accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("shared memory"), std::string::npos) << e.what();
  }
  codec::CodecSpec split{codec::CodecKind::Mse, 3, 0, codec::MseCodebook::Sphere};
  split.split = 32;  // outlier channels: a record of two layouts
  EXPECT_THROW(DecodeAttention(StreamFormat::records(split), StreamFormat::rows_fp16(), 128, 2, 4), Error);
}

TEST(CudaAttentionShapes, MisalignedQueryIsRejected) {
  SKIP_WITHOUT_GPU();
  const codec::CodecSpec g4{codec::CodecKind::Group, 4, 128, codec::MseCodebook::Sphere};
  DecodeAttention attn(StreamFormat::records(g4), StreamFormat::records(g4), 128, 1, 4);
  DeviceBuffer q(4 * 128 * sizeof(float) + 16);
  AttentionArgs a;
  a.n_seq = 1;
  a.capacity = 64;
  a.max_seq_len = 64;
  a.q = reinterpret_cast<const float*>(q.as<uint8_t>() + 4);  // checked before anything is read
  EXPECT_THROW(attn.run(a), Error);
}

// run() on a stream of the caller's, and captured in a CUDA graph and
// replayed, writes the same bits as on the default stream: through the
// cluster merge (a split of 2048: 1-3 splits a sequence) and through
// merge_kernel (the planned split: 11 splits of the longest sequence).
// One call over group4g128 records at head_dim 128 and the kLengths batch,
// for the tests of how a call runs rather than what it computes.
struct GroupCall {
  static constexpr int hd = 128, n_kv = 2, n_group = 4;
  const int n_seq = int(kLengths.size());
  const Stream s = group(4, 128);
  std::vector<float> q = std::vector<float>(size_t(n_seq) * n_kv * n_group * hd);
  DeviceBuffer dk, dv, dlen, dq, dout;
  DecodeAttention attn{s.fmt, s.fmt, hd, n_kv, n_group};
  AttentionArgs a;

  GroupCall() {
    const HostStream hk = fill(s, hd, n_seq, n_kv, true, 11), hv = fill(s, hd, n_seq, n_kv, false, 12);
    Rng rng(13);
    for (auto& v : q) v = float(rng.normal());
    dk = upload_vector(hk.bytes);
    dv = upload_vector(hv.bytes);
    dlen = upload_vector(kLengths);
    dq = upload_vector(q);
    dout = DeviceBuffer(q.size() * sizeof(float));
    a = call_args(n_seq, dlen, *std::max_element(kLengths.begin(), kLengths.end()), dk, dv, dq, DeviceBuffer(),
                  1.0f / std::sqrt(float(hd)), dout);
  }
  std::vector<float> output() const {
    std::vector<float> out(q.size());
    dout.download(out.data(), out.size() * sizeof(float));
    return out;
  }
  int n_split() const {
    const int split = a.split > 0 ? a.split : attn.planned_split(n_seq, a.max_seq_len);
    return (a.max_seq_len + split - 1) / split;
  }
};

TEST(CudaAttentionStreams, StreamAndGraphGiveTheSameBits) {
  SKIP_WITHOUT_GPU();
  GroupCall c;
  AttentionArgs& a = c.a;
  cudaStream_t stream = nullptr;
  ASSERT_EQ(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), cudaSuccess);
  for (int split : {2048, 0}) {
    SCOPED_TRACE("split " + std::to_string(split));
    a.split = split;
    a.stream = nullptr;
    c.dout.fill(0xFF);  // NaN: every element must be written
    c.attn.run(a);
    synchronize();
    const std::vector<float> ref = c.output();
    for (float v : ref) ASSERT_FALSE(std::isnan(v));

    a.stream = stream;
    c.dout.fill(0xFF);
    synchronize();  // the fill ran on the default stream, which a non-blocking stream does not wait for
    c.attn.run(a);
    ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
    EXPECT_EQ(std::memcmp(c.output().data(), ref.data(), ref.size() * sizeof(float)), 0) << "on a stream";

    c.dout.fill(0xFF);
    synchronize();
    cudaGraph_t graph = nullptr;
    cudaGraphExec_t exec = nullptr;
    ASSERT_EQ(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal), cudaSuccess);
    c.attn.run(a);
    ASSERT_EQ(cudaStreamEndCapture(stream, &graph), cudaSuccess);
    ASSERT_EQ(cudaGraphInstantiate(&exec, graph, 0), cudaSuccess);
    ASSERT_EQ(cudaGraphLaunch(exec, stream), cudaSuccess);
    ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
    EXPECT_EQ(std::memcmp(c.output().data(), ref.data(), ref.size() * sizeof(float)), 0) << "replayed from a graph";
    cudaGraphExecDestroy(exec);
    cudaGraphDestroy(graph);
  }
  cudaStreamDestroy(stream);
}

// The profiling timeline (AttentionArgs::timeline, builds with
// -DTURBOKV_CUDA_TIMELINE=ON): every CTA stamps its points in order, and
// the output is the same bits as without it. (The stamps' order, not their
// times: tests never assert on time.)
TEST(CudaAttentionStreams, TimelineStampsEveryCtaInOrderAndChangesNoBits) {
  SKIP_WITHOUT_GPU();
  if (!timeline_available()) GTEST_SKIP() << "built without TURBOKV_CUDA_TIMELINE";
  GroupCall c;
  const DeviceInfo dev = device_info();
  for (int split : {1024, 2048, 0}) {
    SCOPED_TRACE("split " + std::to_string(split));
    c.a.split = split;
    c.a.timeline = nullptr;
    c.attn.run(c.a);
    synchronize();
    const std::vector<float> ref = c.output();
    const size_t n_cta = size_t(c.n_seq) * c.n_kv * size_t(c.n_split());
    DeviceBuffer stamps(n_cta * kTimelineSlots * sizeof(uint64_t));
    stamps.fill(0);
    c.a.timeline = stamps.as<uint64_t>();
    c.attn.run(c.a);
    synchronize();
    EXPECT_EQ(std::memcmp(c.output().data(), ref.data(), ref.size() * sizeof(float)), 0);
    std::vector<uint64_t> t(n_cta * kTimelineSlots);
    stamps.download(t.data(), t.size() * sizeof(uint64_t));
    for (size_t cta = 0; cta < n_cta; ++cta) {
      SCOPED_TRACE("CTA " + std::to_string(cta));
      const uint64_t* row = &t[cta * kTimelineSlots];
      EXPECT_GT(row[kTimelineEntry], 0u);
      EXPECT_LE(row[kTimelineEntry], row[kTimelineSetup]);
      EXPECT_LE(row[kTimelineSetup], row[kTimelineRecords]);
      EXPECT_LE(row[kTimelineRecords], row[kTimelineState]);
      EXPECT_EQ(row[kTimelineTail], 0u) << "no tail in this call";
      if (row[kTimelineOutput] != 0) {
        EXPECT_LE(row[kTimelineState], row[kTimelineOutput]);
      }
      EXPECT_LT(row[kTimelineSm], uint64_t(dev.sm_count));
    }
  }
}

TEST(CudaAttentionStreams, TimelineWithoutTheBuildOptionIsRejected) {
  SKIP_WITHOUT_GPU();
  if (timeline_available()) GTEST_SKIP() << "built with TURBOKV_CUDA_TIMELINE";
  GroupCall c;
  DeviceBuffer stamps(kTimelineSlots * sizeof(uint64_t));
  c.a.timeline = stamps.as<uint64_t>();
  try {
    c.attn.run(c.a);
    FAIL() << "a timeline in a build without it must be refused";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("TURBOKV_CUDA_TIMELINE"), std::string::npos) << e.what();
  }
}

// read_bytes (the benchmark's floor) must load every whole 16 bytes of both
// buffers: one word of the rare value at the start or end of either buffer,
// or in the middle of the first, reaches the sink, and without it nothing
// does.
TEST(CudaBenchHelpers, ReadBytesReadsBothBuffersToTheEnd) {
  SKIP_WITHOUT_GPU();
  constexpr uint32_t kRare = 0x9e3779b9u;
  const size_t na = 3 * 1000 * 1000 + 7, nb = 1000 * 1000 + 13;  // not multiples of 16
  DeviceBuffer a(na), b(nb), sink(sizeof(uint32_t));
  auto sink_after = [&](DeviceBuffer* with_rare, size_t at) {
    a.fill(0);
    b.fill(0);
    sink.fill(0);
    if (with_rare != nullptr) with_rare->upload(&kRare, sizeof kRare, at);
    read_bytes(a.data(), na, b.data(), nb, nullptr, sink.as<uint32_t>());
    synchronize();
    uint32_t v = 0;
    sink.download(&v, sizeof v);
    return v;
  };
  EXPECT_EQ(sink_after(nullptr, 0), 0u);
  for (const auto& [buf, at] : {std::pair{&a, size_t(0)}, {&a, na / 16 * 16 - 16}, {&a, size_t(1234560)},
                                {&b, size_t(0)}, {&b, nb / 16 * 16 - 4}}) {
    EXPECT_EQ(sink_after(buf, at), kRare) << (buf == &a ? "a" : "b") << " at byte " << at;
  }
}

}  // namespace
}  // namespace turbokv::cuda
