// Dispatch and scalar reference of the fused attention over compressed KV
// records (turbo_attention.h); the SIMD bodies are in turbo_attention-inl.h.
// The fused kernels are many template instances (bits x layout x width x
// heads); SSSE3/SSE4 would double their compile time for CPUs that lack AVX2
// and lose little: those (and HWY_SCALAR) use the codec's scalar path.
#ifndef HWY_DISABLED_TARGETS
#define HWY_DISABLED_TARGETS (HWY_SSSE3 | HWY_SSE4)
#endif
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kv/turbo_attention.cpp"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"

#include "kv/turbo_attention-inl.h"

#if HWY_ONCE
#include <algorithm>
#include <cmath>
#include <limits>

namespace turbokv::kv::detail {

HWY_EXPORT(ChooseAttendChunk);

namespace {
constexpr int kRefBlock = 64;  // same blocking as the kernels: the states agree to rounding
}

size_t chunk_work_floats(int head_dim) {
  // chunk-order query and output, scores and a further segment's dots, a
  // padded codebook per segment (up to 4) of keys and of values, one decoded
  // row, prod values' residual sums
  return size_t(2 * kMaxJobHeads) * size_t(head_dim) + size_t(2 * kMaxJobHeads) * kRefBlock + 8 * (256 + 32) +
         size_t(head_dim) + size_t(kMaxJobHeads) * size_t(head_dim);
}

bool fused_layout_supported(const codec::Codec& codec) {
  auto layout_ok = [](const codec::CodecSpec& s) {
    const bool kind_ok = s.kind == codec::CodecKind::Mse || s.kind == codec::CodecKind::Group;
    return kind_ok && fused_bits(s.bits);
  };
  const auto parts = codec.parts();  // split records: both parts
  if (parts.empty() && codec.spec().kind == codec::CodecKind::Affine) return true;  // 4 and 8 bits
  if (parts.empty() && codec.spec().kind == codec::CodecKind::Prod) {
    return codec.spec().bits >= 3 && fused_bits(codec.spec().bits - 1);  // the mse part; no 1-bit kernels
  }
  if (parts.empty()) return layout_ok(codec.spec());
  return std::all_of(parts.begin(), parts.end(), [&](const codec::Codec& p) { return layout_ok(p.spec()); });
}

AttendChunkFn select_attend_chunk(KernelPrecision precision) {
  return HWY_DYNAMIC_DISPATCH(ChooseAttendChunk)(precision);
}

void attend_chunk_reference(const ChunkJob& job, float* work) {
  const int hd = job.head_dim, nq = job.n_q;
  float* scores = work;  // (n_q, kRefBlock)
  float* row = scores + size_t(kMaxJobHeads) * kRefBlock;  // (hd)
  std::fill(job.o, job.o + size_t(nq) * hd, 0.0f);
  for (int j = 0; j < nq; ++j) {
    job.m[j] = -std::numeric_limits<float>::infinity();
    job.d[j] = 0.0f;
  }
  auto read_row = [&](const StreamSource& src, int p, float* out) {
    if (src.read == StreamRead::Dense) {
      for (int i = 0; i < hd; ++i) out[i] = fp16_to_f32(src.rows[size_t(p) * hd + i]);
    } else {
      src.codec->decode_rotated(src.records + size_t(p) * src.codec->record_bytes(), out);
    }
  };
  for (int p0 = job.begin; p0 < job.end; p0 += kRefBlock) {
    const int nb = std::min(kRefBlock, job.end - p0);
    for (int j = 0; j < nq; ++j) {
      const float* qj = job.q + size_t(j) * hd;
      float* s = scores + size_t(j) * kRefBlock;
      for (int r = 0; r < nb; ++r) {
        float dot = 0.0f;
        if (job.keys.read == StreamRead::Dense) {
          read_row(job.keys, p0 + r, row);
          for (int i = 0; i < hd; ++i) dot += qj[i] * row[i];
        } else {
          dot = job.keys.codec->dot_rotated(qj, job.q_sketch ? job.q_sketch + size_t(j) * hd : nullptr,
                                            job.keys.records + size_t(p0 + r) * job.keys.codec->record_bytes());
        }
        s[r] = job.scale * (dot + (job.shift ? job.shift[j] : 0.0f));
      }
      const float block_max = *std::max_element(s, s + nb);
      float* oj = job.o + size_t(j) * hd;
      if (block_max > job.m[j]) {
        const float correction = std::exp(job.m[j] - block_max);
        job.d[j] *= correction;
        for (int i = 0; i < hd; ++i) oj[i] *= correction;
        job.m[j] = block_max;
      }
      for (int r = 0; r < nb; ++r) {
        s[r] = std::exp(s[r] - job.m[j]);
        job.d[j] += s[r];
      }
    }
    for (int r = 0; r < nb; ++r) {
      read_row(job.values, p0 + r, row);
      for (int j = 0; j < nq; ++j) {
        const float w = scores[size_t(j) * kRefBlock + r];
        float* oj = job.o + size_t(j) * hd;
        for (int i = 0; i < hd; ++i) oj[i] += w * row[i];
      }
    }
  }
}

}  // namespace turbokv::kv::detail
#endif  // HWY_ONCE
