#include "kv/turbo_cache.h"

#include <algorithm>
#include <cmath>
#include <exception>
#include <mutex>
#include <optional>

#include "codec/bitpack.h"
#include "kv/attention_kernels.h"
#include "kv/cache_file.h"
#include "kv/dense_cache.h"
#include "kv/turbo_attention.h"
#include "util/error.h"
#include "util/rng.h"

namespace turbokv::kv {

// One of the two streams (keys or values).
struct TurboKvCache::Stream {
  StreamSpec spec;
  std::optional<codec::Codec> codec;  // kind == Codec
  size_t record_bytes = 0;
  int head_dim = 0, n_kv_head = 0, max_tokens = 0;
  std::vector<uint8_t> records;              // (layer, kv_head, max_tokens, record_bytes)
  std::vector<fp16_t> dense;                 // kind == Fp16: (layer, kv_head, max_tokens, head_dim)
  std::vector<std::vector<fp16_t>> staged;   // codec: (layer, kv_head) -> (pos - staged_base, head_dim)
  // The near tier (SchemeSpec::near): the same codec at near_bits.
  std::optional<codec::Codec> near_codec;
  size_t near_record_bytes = 0;
  std::vector<std::vector<uint8_t>> near;    // codec: (layer, kv_head) -> (pos - near_base, near_record_bytes)
  // Outlier channels (spec.outliers > 0): each (layer, kv_head)'s split
  // rotation, built when the layer is calibrated.
  std::vector<std::optional<codec::Rotation>> split_rotations;

  bool is_codec() const { return spec.kind == StreamKind::Codec; }
  bool split() const { return is_codec() && spec.outliers > 0; }
  bool rotated() const { return is_codec() && codec->uses_rotation(); }
  uint8_t* record(int layer, int g, int pos) {
    return records.data() + ((size_t(layer) * n_kv_head + g) * max_tokens + pos) * record_bytes;
  }
  const uint8_t* record(int layer, int g, int pos) const {
    return records.data() + ((size_t(layer) * n_kv_head + g) * max_tokens + pos) * record_bytes;
  }
  fp16_t* dense_row(int layer, int g, int pos) {
    return dense.data() + ((size_t(layer) * n_kv_head + g) * max_tokens + pos) * head_dim;
  }
  const fp16_t* dense_row(int layer, int g, int pos) const {
    return dense.data() + ((size_t(layer) * n_kv_head + g) * max_tokens + pos) * head_dim;
  }
  std::vector<fp16_t>& staged_of(int layer, int g) { return staged[size_t(layer) * n_kv_head + g]; }
  const std::vector<fp16_t>& staged_of(int layer, int g) const { return staged[size_t(layer) * n_kv_head + g]; }
  std::vector<uint8_t>& near_of(int layer, int g) { return near[size_t(layer) * n_kv_head + g]; }
  const std::vector<uint8_t>& near_of(int layer, int g) const { return near[size_t(layer) * n_kv_head + g]; }
};

// Per-thread buffers for attention, sized once.
struct TurboKvCache::Scratch {
  std::vector<float> scores;  // (max_tokens) scores of raw (staged) positions
  std::vector<float> o_rot;   // (head_dim) merged Σ p v̂ over records, value-stream space
  std::vector<float> o_raw;   // (head_dim) Σ p v over raw positions
  std::vector<float> work;    // (detail::chunk_work_floats) fused-kernel buffers
};

namespace {

// A key scale as stored: 2^(c/16) for a one-byte code c in [-128, 127]. Any
// positive scale keeps attention exact (the query is divided by the same
// stored value); its precision only moves where the error goes, and a
// sixteenth of an octave (4%) is finer than the statistics it comes from.
// Scales are normalised to RMS 1 first, so the range 2^-8..2^8 is ample.
float round_log_scale(float s) {
  const float code = std::clamp(std::round(16.0f * std::log2(s)), -128.0f, 127.0f);
  return std::exp2(code / 16.0f);
}

// Marks the n channels with the most energy var[j] * scale[j]^2 (scale null:
// 1), ties to the lower channel.   flags: (var.size()), set to 0 or 1
void mark_outliers(const std::vector<double>& var, const float* scale, int n, uint8_t* flags) {
  const size_t d = var.size();
  std::vector<uint32_t> idx(d);
  std::vector<double> energy(d);
  for (size_t j = 0; j < d; ++j) {
    idx[j] = uint32_t(j);
    energy[j] = scale ? var[j] * double(scale[j]) * double(scale[j]) : var[j];
  }
  std::stable_sort(idx.begin(), idx.end(), [&](uint32_t a, uint32_t b) { return energy[a] > energy[b]; });
  std::fill(flags, flags + d, uint8_t(0));
  for (int k = 0; k < n; ++k) flags[idx[size_t(k)]] = 1;
}

// Runs fn over [0, n) on the pool; an exception in any worker is rethrown here.
template <typename Fn>
void parallel_checked(ThreadPool& pool, size_t n, size_t grain, Fn&& fn) {
  std::exception_ptr error;
  std::mutex error_mutex;
  pool.parallel_for(n, grain, [&](size_t b, size_t e, int thread) {
    try {
      fn(b, e, thread);
    } catch (...) {
      std::lock_guard<std::mutex> lock(error_mutex);
      if (!error) error = std::current_exception();
    }
  });
  if (error) std::rethrow_exception(error);
}

}  // namespace

TurboKvCache::TurboKvCache(const SchemeSpec& spec, const CacheShape& shape)
    : spec_(spec), shape_(shape) {
  validate_shape(shape);
  const int hd = shape.head_dim, nkv = shape.n_kv_head, nl = shape.n_layer;
  auto make_stream = [&](const StreamSpec& s, const char* what) {
    auto st = std::make_unique<Stream>();
    st->spec = s;
    st->head_dim = hd;
    st->n_kv_head = nkv;
    st->max_tokens = shape.max_tokens;
    const size_t heads = size_t(nl) * nkv;
    if (s.kind == StreamKind::F32) {
      throw Error("KV scheme '" + spec.name + "': f32 " + what +
                  " can only be combined with f32 (use the f32 scheme)");
    }
    if (s.kind == StreamKind::Fp16) {
      st->dense.assign(heads * shape.max_tokens * hd, fp16_t(0));
    } else {
      const codec::CodecSpec cs = SchemeSpec::resolve_codec(s, hd);
      if (const char* why = codec::spec_problem(cs, hd)) {
        throw Error("KV scheme '" + spec.name + "' cannot serve head size " + std::to_string(hd) + ": " +
                    what + " codec '" + s.name + "': " + why);
      }
      st->codec.emplace(cs, hd, mix_seed(spec.seed, what[0] == 'k' ? 1 : 2));
      st->record_bytes = st->codec->record_bytes();
      st->records.assign(heads * shape.max_tokens * st->record_bytes, uint8_t(0));
      st->staged.resize(heads);
      if (spec.near > 0) {
        const codec::CodecSpec ns = SchemeSpec::resolve_codec(spec.near_stream(s), hd);
        if (const char* why = codec::spec_problem(ns, hd)) {
          throw Error("KV scheme '" + spec.name + "' cannot serve head size " + std::to_string(hd) + ": " + what +
                      " near tier at " + std::to_string(spec.near_bits) + " bits: " + why);
        }
        st->near_codec.emplace(ns, hd, mix_seed(spec.seed, what[0] == 'k' ? 1 : 2));
        st->near_record_bytes = st->near_codec->record_bytes();
        st->near.resize(heads);
      }
      if (st->split()) st->split_rotations.resize(heads);
    }
    return st;
  };
  keys_ = make_stream(spec.key, "keys");
  values_ = make_stream(spec.value, "values");
  rotations_.reserve(size_t(nl) * nkv);
  for (int l = 0; l < nl; ++l) {
    for (int g = 0; g < nkv; ++g) rotations_.push_back(codec::Rotation::make(hd, spec.seed, l, g, spec.rotation));
  }
  calib_.resize(size_t(nl));
  encoded_layer_.assign(size_t(nl), 1);
  for (int l : spec.fp16_layers) {
    if (l >= nl) {
      throw Error("KV scheme '" + spec.name + "': fp16layers names layer " + std::to_string(l) + ", but the model has " +
                  std::to_string(nl) + " layers (0-" + std::to_string(nl - 1) + ")");
    }
    encoded_layer_[size_t(l)] = 0;
  }
  n_encoded_.assign(size_t(nl), 0);
  staged_base_.assign(size_t(nl), 0);
  n_far_.assign(size_t(nl), 0);
  near_base_.assign(size_t(nl), 0);
}

TurboKvCache::~TurboKvCache() = default;

void TurboKvCache::begin_batch(int n, Phase phase) {
  TKV_ASSERT(batch_n_ < 0, "begin_batch while a batch is open");
  if (n <= 0) throw Error("kv cache: batch size must be positive, got " + std::to_string(n));
  if (n_tokens_ + n > shape_.max_tokens) {
    throw Error("kv cache: " + std::to_string(n) + " more tokens after " + std::to_string(n_tokens_) +
                " exceed the context size " + std::to_string(shape_.max_tokens) + " (raise --ctx)");
  }
  drop_encoded_raw_rows();
  batch_n_ = n;
  phase_ = phase;
}

void TurboKvCache::store(int layer, const float* k, const float* v) {
  TKV_ASSERT(batch_n_ > 0, "store outside a batch");
  TKV_ASSERT(layer >= 0 && layer < shape_.n_layer, "layer out of range");
  const int hd = shape_.head_dim, nkv = shape_.n_kv_head;
  for (Stream* st : {keys_.get(), values_.get()}) {
    const float* src = st == keys_.get() ? k : v;  // (n, n_kv_head, head_dim)
    for (int g = 0; g < nkv; ++g) {
      if (st->is_codec()) {
        auto& staged = st->staged_of(layer, g);
        // Everything from n_encoded on is staged; a second store() for the
        // same layer in one batch would duplicate positions.
        TKV_ASSERT(staged.size() == size_t(n_tokens_ - staged_base_[size_t(layer)]) * hd,
                   "store called twice for a layer in one batch");
        const size_t at = staged.size();
        staged.resize(at + size_t(batch_n_) * hd);
        for (int t = 0; t < batch_n_; ++t) {
          detail::to_fp16(src + (size_t(t) * nkv + g) * hd, staged.data() + at + size_t(t) * hd, size_t(hd));
        }
      } else {
        for (int t = 0; t < batch_n_; ++t) {
          detail::to_fp16(src + (size_t(t) * nkv + g) * hd, st->dense_row(layer, g, n_tokens_ + t), size_t(hd));
        }
      }
    }
  }
}

void TurboKvCache::calibrate(int layer) {
  Calib& c = calib_[size_t(layer)];
  const int hd = shape_.head_dim, nkv = shape_.n_kv_head;
  const size_t n = size_t(nkv) * hd;
  c.key_mean.assign(n, 0.0f);
  c.key_scale.assign(n, 1.0f);
  c.inv_key_scale.assign(n, 1.0f);
  c.value_mean.assign(n, 0.0f);
  if (keys_->split()) c.key_outliers.assign(n, 0);
  if (values_->split()) c.value_outliers.assign(n, 0);
  TKV_ASSERT(n_encoded_[size_t(layer)] == 0, "calibration after encoding");

  auto channel_stats = [&](const std::vector<fp16_t>& staged, float* mean, std::vector<double>& var, bool center) {
    const size_t count = staged.size() / size_t(hd);
    std::vector<double> sum(size_t(hd), 0.0), sq(size_t(hd), 0.0);
    for (size_t p = 0; p < count; ++p) {
      for (int i = 0; i < hd; ++i) {
        const double x = fp16_to_f32(staged[p * hd + i]);
        sum[size_t(i)] += x;
        sq[size_t(i)] += x * x;
      }
    }
    var.assign(size_t(hd), 0.0);
    for (int i = 0; i < hd; ++i) {
      const double m = count ? sum[size_t(i)] / double(count) : 0.0;
      if (center) mean[i] = float(m);
      const double mu = center ? m : 0.0;
      // E[(x - mu)^2] = E[x^2] - 2 mu E[x] + mu^2
      var[size_t(i)] = count ? std::max(0.0, sq[size_t(i)] / double(count) - 2 * mu * m + mu * mu) : 1.0;
    }
  };

  for (int g = 0; g < nkv; ++g) {
    float* kmean = c.key_mean.data() + size_t(g) * hd;
    float* kscale = c.key_scale.data() + size_t(g) * hd;
    float* kinv = c.inv_key_scale.data() + size_t(g) * hd;
    if (keys_->is_codec()) {
      std::vector<double> var;
      channel_stats(keys_->staged_of(layer, g), kmean, var, spec_.center_keys);
      if (spec_.calibration != Calibration::None) {
        double var_mean = 0, q_mean = 0;
        std::vector<double> q2(size_t(hd), 1.0);
        for (int i = 0; i < hd; ++i) {
          if (c.q_count > 0) q2[size_t(i)] = c.q_sq_sum[size_t(g) * hd + i] / double(c.q_count);
          var_mean += var[size_t(i)];
          q_mean += q2[size_t(i)];
        }
        var_mean /= hd;
        q_mean /= hd;
        // Channels with (almost) no variance would get unbounded scales; a
        // floor relative to the average keeps the transform well conditioned.
        const double var_floor = 1e-4 * var_mean + 1e-30, q_floor = 1e-4 * q_mean + 1e-30;
        double sq_sum = 0;
        for (int i = 0; i < hd; ++i) {
          const double vv = var[size_t(i)] + var_floor;
          const double s2 = spec_.calibration == Calibration::Key
                                ? 1.0 / vv
                                : std::sqrt((q2[size_t(i)] + q_floor) / vv);
          kscale[i] = float(std::sqrt(s2));
          sq_sum += s2;
        }
        // Normalise to RMS 1: only the ratios matter, and this keeps the
        // scaled keys in the range the fp16 norms were meant for.
        const float norm = float(1.0 / std::sqrt(sq_sum / hd));
        for (int i = 0; i < hd; ++i) kscale[i] *= norm;
      }
      // Use exactly what is stored (and counted so by bytes()): the mean as
      // fp16, each scale as one byte, a power of 2^(1/16) (round_log_scale).
      for (int i = 0; i < hd; ++i) {
        kmean[i] = round_fp16(kmean[i]);
        kscale[i] = round_log_scale(kscale[i]);
        kinv[i] = 1.0f / kscale[i];
      }
      if (keys_->split()) mark_outliers(var, kscale, spec_.key.outliers, c.key_outliers.data() + size_t(g) * hd);
    }
    if (values_->is_codec() && (spec_.center_values || values_->split())) {
      std::vector<double> var;
      float* vmean = c.value_mean.data() + size_t(g) * hd;
      channel_stats(values_->staged_of(layer, g), vmean, var, spec_.center_values);
      for (int i = 0; i < hd; ++i) vmean[i] = round_fp16(vmean[i]);
      if (values_->split()) mark_outliers(var, nullptr, spec_.value.outliers, c.value_outliers.data() + size_t(g) * hd);
    }
  }
  c.done = true;
  build_split_rotations(layer);
}

void TurboKvCache::build_split_rotations(int layer) {
  const int hd = shape_.head_dim, nkv = shape_.n_kv_head;
  const Calib& c = calib_[size_t(layer)];
  for (Stream* st : {keys_.get(), values_.get()}) {
    if (!st->split()) continue;
    const uint8_t* flags = (st == keys_.get() ? c.key_outliers : c.value_outliers).data();
    for (int g = 0; g < nkv; ++g) {
      // The outlier channels first, then the rest, each in channel order.
      std::vector<uint32_t> order;
      order.reserve(size_t(hd));
      for (int pass = 1; pass >= 0; --pass) {
        for (int i = 0; i < hd; ++i) {
          if (flags[size_t(g) * hd + i] == pass) order.push_back(uint32_t(i));
        }
      }
      st->split_rotations[size_t(layer) * nkv + g].emplace(
          codec::Rotation::make_split(order, st->spec.outliers, spec_.seed, layer, g, spec_.rotation));
    }
  }
}

const codec::Rotation& TurboKvCache::rotation(const Stream& st, int layer, int g) const {
  const size_t head = size_t(layer) * shape_.n_kv_head + g;
  if (!st.split()) return rotations_[head];
  TKV_ASSERT(st.split_rotations[head].has_value(), "split rotation used before calibration");
  return *st.split_rotations[head];
}

void TurboKvCache::encode_staged(int layer, ThreadPool& pool) {
  if (!encoded_layer_[size_t(layer)]) return;
  const int hd = shape_.head_dim, nkv = shape_.n_kv_head;
  const bool tiered = spec_.near > 0;
  // The newest `window` tokens stay raw (FP16); everything before is
  // encoded, into the near tier if there is one.
  const int first = n_encoded_[size_t(layer)];
  const int last = n_tokens_ + batch_n_ - spec_.window;  // exclusive
  if (first < last) {
    if (!calib_[size_t(layer)].done) calibrate(layer);
    const Calib& c = calib_[size_t(layer)];
    const int count = last - first;
    const int base = staged_base_[size_t(layer)];   // position of staged row 0
    const int near_base = near_base_[size_t(layer)];  // position of near record 0
    if (tiered) {
      for (Stream* st : {keys_.get(), values_.get()}) {
        if (!st->is_codec()) continue;
        for (int g = 0; g < nkv; ++g) st->near_of(layer, g).resize(size_t(last - near_base) * st->near_record_bytes);
      }
    }
    const size_t items = size_t(nkv) * size_t(count);
    parallel_checked(pool, items, 1, [&](size_t b, size_t e, int) {
      float x[codec::kMaxDim], xr[codec::kMaxDim];
      for (size_t it = b; it < e; ++it) {
        const int g = int(it / size_t(count)), p = int(it % size_t(count));
        for (Stream* st : {keys_.get(), values_.get()}) {
          if (!st->is_codec()) continue;
          const fp16_t* src = st->staged_of(layer, g).data() + size_t(first - base + p) * hd;
          const bool is_key = st == keys_.get();
          const float* mean = (is_key ? c.key_mean : c.value_mean).data() + size_t(g) * hd;
          const float* scale = is_key ? c.key_scale.data() + size_t(g) * hd : nullptr;
          for (int i = 0; i < hd; ++i) {
            const float centered = fp16_to_f32(src[i]) - mean[i];
            x[i] = scale ? centered * scale[i] : centered;
          }
          const float* enc_in = x;
          if (st->rotated()) { rotation(*st, layer, g).forward(x, xr); enc_in = xr; }
          if (tiered) {
            st->near_codec->encode_rotated(
                enc_in, st->near_of(layer, g).data() + size_t(first - near_base + p) * st->near_record_bytes);
          } else {
            st->codec->encode_rotated(enc_in, st->record(layer, g, first + p));
          }
        }
      }
    });
    // The raw rows stay until the next begin_batch(): with a window, earlier
    // tokens of this batch still read some of the positions just encoded as raw.
    n_encoded_[size_t(layer)] = last;
    if (layer == 0) tokens_encoded_ += count;
  }
  if (!tiered) {
    n_far_[size_t(layer)] = n_encoded_[size_t(layer)];
    return;
  }
  // Positions older than the near tier: their near records re-encoded at the
  // streams' bits, in rotated space (calibration and rotation are shared).
  const int far_first = n_far_[size_t(layer)];
  const int far_last = last - spec_.near;
  if (far_first >= far_last) return;
  const int far_count = far_last - far_first;
  const int near_base = near_base_[size_t(layer)];
  parallel_checked(pool, size_t(nkv) * size_t(far_count), 1, [&](size_t b, size_t e, int) {
    float xr[codec::kMaxDim];
    for (size_t it = b; it < e; ++it) {
      const int g = int(it / size_t(far_count)), pos = far_first + int(it % size_t(far_count));
      for (Stream* st : {keys_.get(), values_.get()}) {
        if (!st->is_codec()) continue;
        const uint8_t* near = st->near_of(layer, g).data() + size_t(pos - near_base) * st->near_record_bytes;
        if (st->near_codec->spec() == st->codec->spec()) {  // an 8-bit stream: the record as it is
          std::copy(near, near + st->record_bytes, st->record(layer, g, pos));
        } else {
          st->near_codec->decode_rotated(near, xr);
          st->codec->encode_rotated(xr, st->record(layer, g, pos));
        }
      }
    }
  });
  n_far_[size_t(layer)] = far_last;
}

// Batches of fewer tokens prepare queries and merge states on the calling
// thread (only the fused jobs are spread over the pool).
constexpr int kParallelBatch = 4;

void TurboKvCache::attend(int layer, const float* q, float* out, float scale, ThreadPool& pool) {
  TKV_ASSERT(batch_n_ > 0, "attend outside a batch");
  TKV_ASSERT(layer >= 0 && layer < shape_.n_layer, "layer out of range");
  const int hd = shape_.head_dim, nh = shape_.n_head, nkv = shape_.n_kv_head;
  const int group = nh / nkv;
  Calib& c = calib_[size_t(layer)];
  if (!c.done) {  // accumulate query second moments per kv group for calibration
    if (c.q_sq_sum.empty()) c.q_sq_sum.assign(size_t(nkv) * hd, 0.0);
    for (int t = 0; t < batch_n_; ++t) {
      for (int h = 0; h < nh; ++h) {
        const float* qh = q + (size_t(t) * nh + h) * hd;
        double* acc = c.q_sq_sum.data() + size_t(h / group) * hd;
        for (int i = 0; i < hd; ++i) acc[i] += double(qh[i]) * qh[i];
      }
    }
    c.q_count += int64_t(batch_n_) * group;
  }
  const bool has_codec = keys_->is_codec() || values_->is_codec();
  if (has_codec && (spec_.strict || phase_ == Phase::Decode)) encode_staged(layer, pool);

  while (scratch_.size() < size_t(pool.size())) {
    auto s = std::make_unique<Scratch>();
    s->scores.resize(size_t(shape_.max_tokens));
    s->o_rot.resize(size_t(hd));
    s->o_raw.resize(size_t(hd));
    s->work.resize(detail::chunk_work_floats(hd));
    scratch_.push_back(std::move(s));
  }
  const size_t items = size_t(batch_n_) * nkv;
  if (n_encoded_[size_t(layer)] > 0) {
    // Queries once per (token, kv head), then the fused jobs; attend_item
    // below merges their states.
    const size_t need = size_t(batch_n_) * nh * hd;
    if (q_prep_.size() < need) {
      q_prep_.resize(need);
      q_sketch_.resize(need);
      q_shift_.resize(size_t(batch_n_) * nh);
    }
    // Preparing queries and merging states cost microseconds per token: for
    // a decode step they run inline, saving two fork-joins per layer.
    if (batch_n_ >= kParallelBatch) {
      parallel_checked(pool, items, 1, [&](size_t b, size_t e, int) {
        for (size_t it = b; it < e; ++it) prepare_queries(layer, int(it / nkv), int(it % nkv), q);
      });
    } else {
      for (size_t it = 0; it < items; ++it) prepare_queries(layer, int(it / nkv), int(it % nkv), q);
    }
    plan_jobs(layer);
    // Instruction set and arithmetic, once per call.
    const detail::AttendChunkFn kernel =
        detail::select_attend_chunk(spec_.f32_math ? detail::KernelPrecision::F32 : detail::KernelPrecision::Half);
    const Stream& K = *keys_;
    const Stream& V = *values_;
    // Near jobs index the near records from near_base (FP16 rows likewise).
    const int near_base = near_base_[size_t(layer)];
    auto source = [&](const Stream& st, int g, bool near) {
      detail::StreamSource src;
      if (st.is_codec()) {
        const codec::Codec& cd = near ? *st.near_codec : *st.codec;
        src.read = detail::fused_layout_supported(cd) ? detail::StreamRead::Fused : detail::StreamRead::Codec;
        src.codec = &cd;
        src.records = near ? st.near_of(layer, g).data() : st.record(layer, g, 0);
      } else {
        src.read = detail::StreamRead::Dense;
        src.rows = st.dense_row(layer, g, near ? near_base : 0);
      }
      return src;
    };
    const bool prod = K.is_codec() && K.codec->spec().kind == codec::CodecKind::Prod;
    parallel_checked(pool, jobs_.size(), 1, [&](size_t b, size_t e, int thread) {
      float* work = scratch_[size_t(thread)]->work.data();
      for (size_t i = b; i < e; ++i) {
        const AttendJob& a = jobs_[i];
        const size_t h = size_t(a.t) * nh + size_t(a.g) * group + a.h0;  // first query head, (batch, n_head)
        detail::ChunkJob job;
        job.keys = source(K, a.g, a.near);
        job.values = source(V, a.g, a.near);
        job.head_dim = hd;
        job.n_q = a.n_q;
        job.begin = a.near ? a.begin - near_base : a.begin;
        job.end = a.near ? a.end - near_base : a.end;
        job.q = K.is_codec() ? q_prep_.data() + h * hd : q + h * hd;  // FP16 keys: the raw query
        job.q_sketch = prod ? q_sketch_.data() + h * hd : nullptr;
        job.shift = K.is_codec() ? q_shift_.data() + h : nullptr;
        job.scale = scale;
        job.m = job_states_.data() + a.state;
        job.d = job.m + a.n_q;
        job.o = job.d + a.n_q;
        kernel(job, work);
      }
    });
  }
  if (n_encoded_[size_t(layer)] > 0 && batch_n_ < kParallelBatch) {
    for (size_t it = 0; it < items; ++it) attend_item(layer, int(it / nkv), int(it % nkv), q, out, scale, *scratch_[0]);
    return;
  }
  parallel_checked(pool, items, 1, [&](size_t b, size_t e, int thread) {
    for (size_t it = b; it < e; ++it) {
      attend_item(layer, int(it / nkv), int(it % nkv), q, out, scale, *scratch_[size_t(thread)]);
    }
  });
}

void TurboKvCache::prepare_queries(int layer, int t, int g, const float* q) {
  const int hd = shape_.head_dim, nh = shape_.n_head, nkv = shape_.n_kv_head;
  const int group = nh / nkv;
  const Stream& K = *keys_;
  if (!K.is_codec()) return;  // FP16 keys are scored with the raw query
  const Calib& c = calib_[size_t(layer)];
  const codec::Rotation& rot = rotation(K, layer, g);
  const float* kmean = c.key_mean.data() + size_t(g) * hd;
  const float* kinv = c.inv_key_scale.data() + size_t(g) * hd;
  const bool prod = K.codec->spec().kind == codec::CodecKind::Prod;
  float qc[codec::kMaxDim];
  // Fold in the key scales, rotate once, precompute <q, μ>.
  for (int j = 0; j < group; ++j) {
    const size_t h = size_t(t) * nh + size_t(g) * group + j;
    const float* qh = q + h * hd;
    float* qr = q_prep_.data() + h * hd;
    float shift = 0;
    for (int i = 0; i < hd; ++i) {
      qc[i] = qh[i] * kinv[i];
      shift += qh[i] * kmean[i];
    }
    q_shift_[h] = shift;
    if (K.rotated()) rot.forward(qc, qr); else std::copy(qc, qc + hd, qr);
    if (prod) K.codec->sketch_query(qr, q_sketch_.data() + h * hd);
  }
}

// Splits each (token, kv head)'s encoded positions into at most c chunks:
// enough jobs (about kTargetJobs) to keep every thread busy on one decode
// token, few enough that merging costs nothing. The split never depends on
// the thread count, so results do not change with -t. For batches of up to
// kMaxVerifyBatch tokens (decode steps, speculative verification) it depends
// on each token's encoded length alone, not on the batch: a token verified
// with k others gets bit for bit the attention it gets decoded alone, which
// greedy speculative decoding needs. Larger batches (strict-mode prefill)
// split coarser, c shrinking with the batch, to bound the jobs' memory.
void TurboKvCache::plan_jobs(int layer) {
  constexpr int kTargetJobs = 64;
  constexpr int kMaxVerifyBatch = 16;
  constexpr int kMinChunk = 256;  // positions; a multiple of the kernels' 64-position block
  const int hd = shape_.head_dim, nkv = shape_.n_kv_head;
  const int group = shape_.n_head / nkv;
  const int pieces = (group + detail::kMaxJobHeads - 1) / detail::kMaxJobHeads;
  const size_t items = size_t(batch_n_) * nkv;
  const size_t work_items = items * size_t(pieces);
  const size_t split_items = batch_n_ <= kMaxVerifyBatch ? size_t(nkv) * size_t(pieces) : work_items;
  const int max_chunks = int(std::max<size_t>(1, (kTargetJobs + split_items - 1) / split_items));
  // Upper bound of this call's jobs and states (the chunks, and one job over
  // the near tier), so that decoding stops allocating after its first step.
  const size_t job_bound = work_items * size_t(max_chunks + 1);
  if (jobs_.capacity() < job_bound) jobs_.reserve(job_bound);
  const size_t state_bound = job_bound * size_t(std::min(group, detail::kMaxJobHeads)) * (size_t(hd) + 2);
  if (job_states_.size() < state_bound) job_states_.resize(state_bound);
  item_jobs_.resize(items + 1);
  jobs_.clear();
  size_t offset = 0;
  for (int t = 0; t < batch_n_; ++t) {
    const int n_enc = encoded_for(layer, t), n_far = far_for(layer, t);  // n_enc - n_far <= near
    const int per = (n_far + max_chunks - 1) / max_chunks;
    const int len = std::max(kMinChunk, (per + 63) / 64 * 64);
    for (int g = 0; g < nkv; ++g) {
      item_jobs_[size_t(t) * nkv + g] = jobs_.size();
      for (int h0 = 0; h0 < group; h0 += detail::kMaxJobHeads) {
        const int n_q = std::min(detail::kMaxJobHeads, group - h0);
        for (int b = 0; b < n_far; b += len) {
          jobs_.push_back(AttendJob{t, g, h0, n_q, b, std::min(b + len, n_far), false, offset});
          offset += size_t(n_q) * (size_t(hd) + 2);
        }
        if (n_enc > n_far) {
          jobs_.push_back(AttendJob{t, g, h0, n_q, n_far, n_enc, true, offset});
          offset += size_t(n_q) * (size_t(hd) + 2);
        }
      }
    }
  }
  item_jobs_[items] = jobs_.size();
  TKV_ASSERT(offset <= job_states_.size(), "job states out of range");
}

int TurboKvCache::encoded_for(int layer, int t) const {
  const int n_pos = n_tokens_ + t + 1;
  return std::min(n_encoded_[size_t(layer)], std::max(staged_base_[size_t(layer)], n_pos - spec_.window));
}

int TurboKvCache::far_for(int layer, int t) const {
  if (spec_.near == 0) return encoded_for(layer, t);
  const int n_pos = n_tokens_ + t + 1;
  return std::min(n_far_[size_t(layer)], std::max(near_base_[size_t(layer)], n_pos - spec_.window - spec_.near));
}

void TurboKvCache::attend_item(int layer, int t, int g, const float* q, float* out, float scale,
                               Scratch& s) const {
  const int hd = shape_.head_dim, nh = shape_.n_head, nkv = shape_.n_kv_head;
  const int group = nh / nkv;
  const int n_pos = n_tokens_ + t + 1;  // causal: positions [0, n_tokens + t]
  const int n_enc = encoded_for(layer, t);
  const int base = staged_base_[size_t(layer)];  // position of staged row 0
  const Stream& K = *keys_;
  const Stream& V = *values_;

  // Nothing encoded (prefill of a two-phase cache): exactly the FP16 cache's
  // attention over the raw keys and values.
  if (n_enc == 0) {
    const fp16_t* kp = K.is_codec() ? K.staged_of(layer, g).data() : K.dense_row(layer, g, 0);
    const fp16_t* vp = V.is_codec() ? V.staged_of(layer, g).data() : V.dense_row(layer, g, 0);
    const size_t h0 = size_t(t) * nh + size_t(g) * group;  // the group's query heads are adjacent
    attend_group_f16(q + h0 * hd, group, kp, vp, n_pos, hd, scale, out + h0 * hd);
    return;
  }

  // Merge the jobs' partial states over the encoded positions (value-stream
  // space), then bring them to the original space once per head: o = R^T o_rot
  // + μv Σ p (the value mean was subtracted before encoding).
  const Calib& c = calib_[size_t(layer)];
  const float* vmean = c.value_mean.data() + size_t(g) * hd;
  const size_t first = item_jobs_[size_t(t) * nkv + g], last = item_jobs_[size_t(t) * nkv + g + 1];
  const int n_raw = n_pos - n_enc;
  const std::vector<fp16_t>* k_staged = K.is_codec() ? &K.staged_of(layer, g) : nullptr;
  const std::vector<fp16_t>* v_staged = V.is_codec() ? &V.staged_of(layer, g) : nullptr;
  for (int j = 0; j < group; ++j) {
    float* orot = s.o_rot.data();  // (head_dim) merged Σ p v̂ in the value stream's space
    std::fill(orot, orot + hd, 0.0f);
    float m = -INFINITY, d = 0.0f;
    for (size_t i = first; i < last; ++i) {
      const AttendJob& a = jobs_[i];
      if (j < a.h0 || j >= a.h0 + a.n_q) continue;
      const float* pm = job_states_.data() + a.state;
      const float pmj = pm[j - a.h0], pdj = pm[a.n_q + j - a.h0];
      const float* po = pm + 2 * a.n_q + size_t(j - a.h0) * hd;
      if (pdj == 0.0f) continue;
      const float m_new = std::max(m, pmj);
      const float ca = std::exp(m - m_new), cb = std::exp(pmj - m_new);
      d = d * ca + pdj * cb;
      for (int k = 0; k < hd; ++k) orot[k] = orot[k] * ca + po[k] * cb;
      m = m_new;
    }
    float* o = out + (size_t(t) * nh + g * group + j) * hd;
    if (V.is_codec()) {
      if (V.rotated()) rotation(V, layer, g).inverse(orot, o); else std::copy(orot, orot + hd, o);
      for (int k = 0; k < hd; ++k) o[k] += vmean[k] * d;
    } else {
      std::copy(orot, orot + hd, o);
    }

    // Raw (staged) positions after the records: plain attention in the
    // original space, merged in.
    if (n_raw > 0) {
      const float* qh = q + (size_t(t) * nh + g * group + j) * hd;
      float* sc = s.scores.data();
      float mr = -INFINITY;
      for (int p = n_enc; p < n_pos; ++p) {
        const fp16_t* kr = K.is_codec() ? k_staged->data() + size_t(p - base) * hd : K.dense_row(layer, g, p);
        float dot = 0;
        for (int i = 0; i < hd; ++i) dot += qh[i] * fp16_to_f32(kr[i]);
        sc[p - n_enc] = scale * dot;
        mr = std::max(mr, sc[p - n_enc]);
      }
      float* oraw = s.o_raw.data();
      std::fill(oraw, oraw + hd, 0.0f);
      float dr = 0;
      for (int p = n_enc; p < n_pos; ++p) {
        const float w = std::exp(sc[p - n_enc] - mr);
        dr += w;
        const fp16_t* vr = V.is_codec() ? v_staged->data() + size_t(p - base) * hd : V.dense_row(layer, g, p);
        for (int i = 0; i < hd; ++i) oraw[i] += w * fp16_to_f32(vr[i]);
      }
      const float m_new = std::max(m, mr);
      const float ca = std::exp(m - m_new), cb = std::exp(mr - m_new);
      d = d * ca + dr * cb;
      for (int k = 0; k < hd; ++k) o[k] = o[k] * ca + oraw[k] * cb;
    }
    const float inv = d > 0.0f ? 1.0f / d : 0.0f;
    for (int k = 0; k < hd; ++k) o[k] *= inv;
  }
}

void TurboKvCache::end_batch() {
  TKV_ASSERT(batch_n_ > 0, "end_batch without begin_batch");
  n_tokens_ += batch_n_;
  batch_n_ = -1;
}

void TurboKvCache::drop_encoded_raw_rows() {
  const size_t hd = size_t(shape_.head_dim);
  // Erases the first `drop` rows of `rows` elements; releases a prompt-sized
  // buffer but keeps a small one, so that decoding (one token at a time)
  // does not allocate.
  auto drop_front = [](auto& buf, int drop, size_t row, int keep_rows) {
    buf.erase(buf.begin(), buf.begin() + ptrdiff_t(size_t(drop) * row));
    if (buf.capacity() > size_t(64 + 2 * keep_rows) * row) buf.shrink_to_fit();
  };
  for (int l = 0; l < shape_.n_layer; ++l) {
    const int drop_raw = n_encoded_[size_t(l)] - staged_base_[size_t(l)];
    const int drop_near = n_far_[size_t(l)] - near_base_[size_t(l)];
    for (Stream* st : {keys_.get(), values_.get()}) {
      if (!st->is_codec()) continue;
      for (int g = 0; g < shape_.n_kv_head; ++g) {
        if (drop_raw > 0) drop_front(st->staged_of(l, g), drop_raw, hd, spec_.window);  // what remains: the window
        if (spec_.near > 0 && drop_near > 0) drop_front(st->near_of(l, g), drop_near, st->near_record_bytes, spec_.near);
      }
    }
    staged_base_[size_t(l)] = n_encoded_[size_t(l)];
    near_base_[size_t(l)] = n_far_[size_t(l)];
  }
}

void TurboKvCache::trim(int n) {
  TKV_ASSERT(batch_n_ < 0, "trim while a batch is open");
  if (n < 0 || n > n_tokens_) {
    throw Error("kv cache: cannot trim " + std::to_string(n) + " tokens from " + std::to_string(n_tokens_));
  }
  const int keep = n_tokens_ - n;
  const int hd = shape_.head_dim;
  for (int l = 0; l < shape_.n_layer; ++l) {
    int& enc = n_encoded_[size_t(l)];
    int& base = staged_base_[size_t(l)];
    int& far = n_far_[size_t(l)];
    int& near_base = near_base_[size_t(l)];
    // Records past `keep` are dead; nothing to move. Positions that the
    // last batch encoded still have their raw rows, so the newest `window`
    // kept positions go back to raw, as if the trimmed tokens had never
    // come (a rejected speculative draft); older records stay records. The
    // near tier likewise: positions the last batch re-encoded still have
    // their near records.
    if (keep < base) {
      enc = base = keep;
    } else {
      enc = std::min(enc, std::max(base, keep - spec_.window));
    }
    if (spec_.near == 0) {
      far = near_base = enc;
    } else if (keep < near_base) {
      far = near_base = keep;
    } else {
      far = std::min(far, std::max(near_base, keep - spec_.window - spec_.near));
    }
    for (Stream* st : {keys_.get(), values_.get()}) {
      if (!st->is_codec()) continue;
      for (int g = 0; g < shape_.n_kv_head; ++g) {
        st->staged_of(l, g).resize(size_t(keep - base) * hd);
        if (spec_.near > 0) st->near_of(l, g).resize(size_t(enc - near_base) * st->near_record_bytes);
      }
    }
    if (keep == 0) calib_[size_t(l)] = Calib{};  // an emptied cache starts afresh
  }
  n_tokens_ = keep;
}

int TurboKvCache::n_encoded(int layer) const { return n_encoded_.at(size_t(layer)); }

bool TurboKvCache::read_stream(const Stream& st, int layer, int g, int pos, float* out) const {
  TKV_ASSERT(pos >= 0 && pos < n_tokens_, "pos out of range");
  const int hd = shape_.head_dim;
  const fp16_t* row = nullptr;
  if (!st.is_codec()) {
    row = st.dense_row(layer, g, pos);
  } else if (pos >= n_encoded_[size_t(layer)]) {
    row = st.staged_of(layer, g).data() + size_t(pos - staged_base_[size_t(layer)]) * hd;
  }
  if (row != nullptr) {
    for (int i = 0; i < hd; ++i) out[i] = fp16_to_f32(row[i]);
    return false;
  }
  float xr[codec::kMaxDim];
  if (pos >= n_far_[size_t(layer)]) {
    st.near_codec->decode_rotated(
        st.near_of(layer, g).data() + size_t(pos - near_base_[size_t(layer)]) * st.near_record_bytes, xr);
  } else {
    st.codec->decode_rotated(st.record(layer, g, pos), xr);
  }
  if (st.rotated()) rotation(st, layer, g).inverse(xr, out);
  else std::copy(xr, xr + hd, out);
  return true;
}

void TurboKvCache::read_key(int layer, int g, int pos, float* out) const {
  if (!read_stream(*keys_, layer, g, pos, out)) return;
  const int hd = shape_.head_dim;
  const Calib& c = calib_[size_t(layer)];
  for (int i = 0; i < hd; ++i) out[i] = out[i] * c.inv_key_scale[size_t(g) * hd + i] + c.key_mean[size_t(g) * hd + i];
}

void TurboKvCache::read_value(int layer, int g, int pos, float* out) const {
  if (!read_stream(*values_, layer, g, pos, out)) return;
  const int hd = shape_.head_dim;
  const Calib& c = calib_[size_t(layer)];
  for (int i = 0; i < hd; ++i) out[i] += c.value_mean[size_t(g) * hd + i];
}

std::vector<int> TurboKvCache::outlier_channels(bool keys, int layer, int g) const {
  const Calib& c = calib_.at(size_t(layer));
  const std::vector<uint8_t>& flags = keys ? c.key_outliers : c.value_outliers;
  std::vector<int> out;
  if (flags.empty()) return out;
  const int hd = shape_.head_dim;
  for (int i = 0; i < hd; ++i) {
    if (flags.at(size_t(g) * hd + i)) out.push_back(i);
  }
  return out;
}

size_t TurboKvCache::bytes() const {
  const size_t hd = size_t(shape_.head_dim), nkv = size_t(shape_.n_kv_head);
  size_t total = 0;
  for (int l = 0; l < shape_.n_layer; ++l) {
    const size_t enc = size_t(n_encoded_[size_t(l)]), far = size_t(n_far_[size_t(l)]);
    const size_t raw = size_t(n_tokens_) - std::min(enc, size_t(n_tokens_));
    for (const Stream* st : {keys_.get(), values_.get()}) {
      if (st->is_codec()) {
        total += nkv * (far * st->record_bytes + (enc - far) * st->near_record_bytes + raw * hd * sizeof(fp16_t));
      } else {
        total += nkv * size_t(n_tokens_) * hd * sizeof(fp16_t);
      }
    }
    // Calibration state stored beside the records (fp16): key mean and
    // scales, value mean.
    const Calib& c = calib_[size_t(l)];
    if (c.done) {
      if (keys_->is_codec()) {
        if (spec_.center_keys) total += nkv * hd * sizeof(fp16_t);
        if (spec_.calibration != Calibration::None) total += nkv * hd * sizeof(uint8_t);  // round_log_scale codes
      }
      if (values_->is_codec() && spec_.center_values) total += nkv * hd * sizeof(fp16_t);
      for (const Stream* st : {keys_.get(), values_.get()}) {
        if (st->split()) total += nkv * codec::packed_bytes(hd, 1);  // the outlier channels, one bit each
      }
    }
  }
  return total;
}

double TurboKvCache::bits_per_element() const {
  if (n_tokens_ == 0) {
    const double encoded = 0.5 * (SchemeSpec::stream_bits(spec_.key, shape_.head_dim) +
                                  SchemeSpec::stream_bits(spec_.value, shape_.head_dim));
    const double n_fp16 = double(spec_.fp16_layers.size());
    return (encoded * (shape_.n_layer - n_fp16) + 16.0 * n_fp16) / shape_.n_layer;
  }
  const double elements = 2.0 * shape_.n_layer * shape_.n_kv_head * double(n_tokens_) * shape_.head_dim;
  return 8.0 * double(bytes()) / elements;
}

// ---- prompt-cache state (layout: kv/cache_file.h) ----

void TurboKvCache::save(CacheWriter& out) const {
  TKV_ASSERT(batch_n_ < 0, "save while a batch is open");
  const int hd = shape_.head_dim, nkv = shape_.n_kv_head;
  out.put<int32_t>(n_tokens_);
  out.put<int64_t>(tokens_encoded_);
  for (int l = 0; l < shape_.n_layer; ++l) {
    const Calib& c = calib_[size_t(l)];
    out.put<int32_t>(n_encoded_[size_t(l)]);
    out.put<int32_t>(staged_base_[size_t(l)]);
    out.put<int32_t>(n_far_[size_t(l)]);
    out.put<int32_t>(near_base_[size_t(l)]);
    out.put<uint8_t>(c.done ? 1 : 0);
    out.put<int64_t>(c.q_count);
    out.put_vector(c.key_mean);
    out.put_vector(c.key_scale);
    out.put_vector(c.value_mean);
    // Query statistics only matter until calibration (inverse scales are
    // recomputed exactly as calibrate() computes them).
    out.put_vector(c.done ? std::vector<double>() : c.q_sq_sum);
    // Split streams: the outlier channels of each kv head, one bit each
    // (none before calibration).
    for (const Stream* st : {keys_.get(), values_.get()}) {
      if (!st->split()) continue;
      const std::vector<uint8_t>& flags = st == keys_.get() ? c.key_outliers : c.value_outliers;
      const size_t row = codec::packed_bytes(size_t(hd), 1);
      std::vector<uint8_t> packed(flags.empty() ? 0 : size_t(nkv) * row);
      for (size_t g = 0; !flags.empty() && g < size_t(nkv); ++g) {
        codec::pack_bits(flags.data() + g * size_t(hd), size_t(hd), 1, packed.data() + g * row);
      }
      out.put_vector(packed);
    }
  }
  for (const Stream* st : {keys_.get(), values_.get()}) {
    for (int l = 0; l < shape_.n_layer; ++l) {
      const int enc = n_encoded_[size_t(l)], far = n_far_[size_t(l)];
      for (int g = 0; g < nkv; ++g) {
        if (st->is_codec()) {
          out.put_array(st->record(l, g, 0), size_t(far) * st->record_bytes);
          // The near records of [near_base, n_encoded).
          if (spec_.near > 0) {
            const auto& near = st->near_of(l, g);
            TKV_ASSERT(near.size() == size_t(enc - near_base_[size_t(l)]) * st->near_record_bytes,
                       "near tier out of step");
            out.put_array(near.data(), near.size());
          }
          // The raw rows of [staged_base, n_tokens): the state exactly, also
          // the rows the last batch encoded and keeps for a trim.
          const auto& staged = st->staged_of(l, g);
          TKV_ASSERT(staged.size() == size_t(n_tokens_ - staged_base_[size_t(l)]) * hd, "staged size out of step");
          out.put_array(staged.data(), staged.size());
        } else {
          out.put_array(st->dense_row(l, g, 0), size_t(n_tokens_) * hd);
        }
      }
    }
  }
}

void TurboKvCache::restore(CacheReader& in) {
  TKV_ASSERT(batch_n_ < 0, "restore while a batch is open");
  const int hd = shape_.head_dim, nkv = shape_.n_kv_head, nl = shape_.n_layer;
  const size_t per_layer = size_t(nkv) * hd;
  const int32_t n = in.get<int32_t>();
  const int64_t encoded_total = in.get<int64_t>();
  if (n < 0 || n > shape_.max_tokens) {
    in.fail("holds " + std::to_string(n) + " tokens; the context holds " + std::to_string(shape_.max_tokens) +
            " (raise --ctx)");
  }
  // Read everything into temporaries first: a bad state leaves the cache as it was.
  std::vector<int> n_encoded(static_cast<size_t>(nl)), staged_base(static_cast<size_t>(nl));
  std::vector<int> n_far(static_cast<size_t>(nl)), near_base(static_cast<size_t>(nl));
  std::vector<Calib> calib(static_cast<size_t>(nl));
  for (int l = 0; l < nl; ++l) {
    const int32_t enc = in.get<int32_t>();
    if (enc < 0 || enc > n) {
      in.fail("layer " + std::to_string(l) + " has " + std::to_string(enc) + " encoded tokens of " + std::to_string(n));
    }
    const int32_t base = in.get<int32_t>();
    if (base < 0 || base > enc) {
      in.fail("layer " + std::to_string(l) + " keeps raw rows from position " + std::to_string(base) + ", past its " +
              std::to_string(enc) + " encoded tokens");
    }
    const int32_t far = in.get<int32_t>(), nbase = in.get<int32_t>();
    if (!(0 <= nbase && nbase <= far && far <= enc && nbase <= base) || (spec_.near == 0 && (far != enc || nbase != base))) {
      in.fail("layer " + std::to_string(l) + " has an inconsistent near tier (records before " + std::to_string(far) +
              ", near records from " + std::to_string(nbase) + ", " + std::to_string(enc) + " encoded)");
    }
    n_encoded[size_t(l)] = enc;
    staged_base[size_t(l)] = base;
    n_far[size_t(l)] = far;
    near_base[size_t(l)] = nbase;
    Calib& c = calib[size_t(l)];
    c.done = in.get<uint8_t>() != 0;
    c.q_count = in.get<int64_t>();
    c.key_mean = in.get_vector<float>(per_layer, "key mean");
    c.key_scale = in.get_vector<float>(per_layer, "key scales");
    c.inv_key_scale.resize(c.key_scale.size());
    for (size_t i = 0; i < c.key_scale.size(); ++i) {
      if (!(c.key_scale[i] > 0.0f) || !std::isfinite(c.key_scale[i])) {
        in.fail("layer " + std::to_string(l) + " has a key scale that is not a positive number");
      }
      c.inv_key_scale[i] = 1.0f / c.key_scale[i];
    }
    c.value_mean = in.get_vector<float>(per_layer, "value mean");
    c.q_sq_sum = in.get_vector<double>(per_layer, "query square sums");
    if (c.done && (c.key_mean.empty() || c.key_scale.empty() || c.value_mean.empty())) {
      in.fail("layer " + std::to_string(l) + " is calibrated but its calibration state is missing");
    }
    if (enc > 0 && !c.done) in.fail("layer " + std::to_string(l) + " has encoded tokens but no calibration");
    for (const Stream* st : {keys_.get(), values_.get()}) {
      if (!st->split()) continue;
      const bool is_key = st == keys_.get();
      const size_t row = codec::packed_bytes(size_t(hd), 1);
      const std::vector<uint8_t> packed = in.get_vector<uint8_t>(size_t(nkv) * row, "outlier channels");
      if (packed.empty() != !c.done) {
        in.fail("layer " + std::to_string(l) + (c.done ? " is calibrated but has no outlier channels"
                                                       : " has outlier channels but no calibration"));
      }
      if (packed.empty()) continue;
      std::vector<uint8_t>& flags = is_key ? c.key_outliers : c.value_outliers;
      flags.resize(per_layer);
      for (size_t g = 0; g < size_t(nkv); ++g) {
        codec::unpack_bits(packed.data() + g * row, size_t(hd), 1, flags.data() + g * size_t(hd));
        const int marked = int(std::count(flags.begin() + std::ptrdiff_t(g * hd), flags.begin() + std::ptrdiff_t((g + 1) * hd), uint8_t(1)));
        if (marked != st->spec.outliers) {
          in.fail("layer " + std::to_string(l) + " kv head " + std::to_string(g) + " marks " + std::to_string(marked) + " " +
                  (is_key ? "key" : "value") + " outlier channels; the scheme has " + std::to_string(st->spec.outliers));
        }
      }
    }
  }
  struct StreamState {
    std::vector<uint8_t> records;             // (layer, kv_head, far, record_bytes)
    std::vector<std::vector<uint8_t>> near;   // (layer, kv_head) -> near records
    std::vector<std::vector<fp16_t>> rows;    // (layer, kv_head) -> staged or dense rows
  };
  StreamState states[2];
  const Stream* streams[2] = {keys_.get(), values_.get()};
  for (int s = 0; s < 2; ++s) {
    const Stream* st = streams[s];
    states[s].rows.resize(size_t(nl) * nkv);
    states[s].near.resize(size_t(nl) * nkv);
    for (int l = 0; l < nl; ++l) {
      const int far = st->is_codec() ? n_far[size_t(l)] : 0;
      const int base = st->is_codec() ? staged_base[size_t(l)] : 0;
      for (int g = 0; g < nkv; ++g) {
        if (st->is_codec()) {
          const size_t old = states[s].records.size();
          states[s].records.resize(old + size_t(far) * st->record_bytes);
          in.get_array(states[s].records.data() + old, size_t(far) * st->record_bytes);
          if (spec_.near > 0) {
            auto& near = states[s].near[size_t(l) * nkv + g];
            near.resize(size_t(n_encoded[size_t(l)] - near_base[size_t(l)]) * st->near_record_bytes);
            in.get_array(near.data(), near.size());
          }
        }
        auto& rows = states[s].rows[size_t(l) * nkv + g];
        rows.resize(size_t(n - base) * hd);
        in.get_array(rows.data(), rows.size());
      }
    }
  }
  if (in.remaining() != 0) in.fail(std::to_string(in.remaining()) + " bytes left after the cache state");

  // Commit.
  for (int s = 0; s < 2; ++s) {
    Stream* st = s == 0 ? keys_.get() : values_.get();
    size_t rec = 0;
    for (int l = 0; l < nl; ++l) {
      for (int g = 0; g < nkv; ++g) {
        auto& rows = states[s].rows[size_t(l) * nkv + g];
        if (st->is_codec()) {
          const size_t nbytes = size_t(n_far[size_t(l)]) * st->record_bytes;
          std::copy(states[s].records.begin() + std::ptrdiff_t(rec), states[s].records.begin() + std::ptrdiff_t(rec + nbytes),
                    st->record(l, g, 0));
          rec += nbytes;
          st->staged_of(l, g) = std::move(rows);
          if (spec_.near > 0) st->near_of(l, g) = std::move(states[s].near[size_t(l) * nkv + g]);
        } else {
          std::copy(rows.begin(), rows.end(), st->dense_row(l, g, 0));
        }
      }
    }
  }
  staged_base_ = std::move(staged_base);
  n_encoded_ = std::move(n_encoded);
  n_far_ = std::move(n_far);
  near_base_ = std::move(near_base);
  calib_ = std::move(calib);
  n_tokens_ = n;
  tokens_encoded_ = encoded_total;
  for (int l = 0; l < nl; ++l) {
    if (calib_[size_t(l)].done) build_split_rotations(l);
  }
}

}  // namespace turbokv::kv
