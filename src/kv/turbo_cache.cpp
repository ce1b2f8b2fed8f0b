#include "kv/turbo_cache.h"

#include <algorithm>
#include <cmath>
#include <exception>
#include <mutex>
#include <optional>

#include "kv/dense_cache.h"
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
  std::vector<std::vector<fp16_t>> staged;   // codec: (layer, kv_head) -> (pos - n_encoded, head_dim)

  bool is_codec() const { return spec.kind == StreamKind::Codec; }
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
};

// Per-thread buffers for attention, sized once.
struct TurboKvCache::Scratch {
  std::vector<float> scores;  // (group, max_tokens)
  std::vector<float> q_cal;   // (group, head_dim) q / s
  std::vector<float> q_rot;   // (group, head_dim)
  std::vector<float> q_sketch;// (group, head_dim) prod only
  std::vector<float> o_rot;   // (group, head_dim) Σ p v̂_rot over records
  std::vector<float> o_raw;   // (group, head_dim) Σ p v over raw positions
  std::vector<float> tmp;     // (head_dim)
  std::vector<float> shift;   // (group) <q, μ>
  std::vector<float> w_enc;   // (group) Σ p over value records
};

namespace {

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
      if (const char* why = codec::spec_problem(s.codec, hd)) {
        throw Error("KV scheme '" + spec.name + "' cannot serve head size " + std::to_string(hd) + ": " +
                    what + " codec '" + s.name + "': " + why);
      }
      st->codec.emplace(s.codec, hd, mix_seed(spec.seed, what[0] == 'k' ? 1 : 2));
      st->record_bytes = st->codec->record_bytes();
      st->records.assign(heads * shape.max_tokens * st->record_bytes, uint8_t(0));
      st->staged.resize(heads);
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
  n_encoded_.assign(size_t(nl), 0);
}

TurboKvCache::~TurboKvCache() = default;

void TurboKvCache::begin_batch(int n, Phase phase) {
  TKV_ASSERT(batch_n_ < 0, "begin_batch while a batch is open");
  if (n <= 0) throw Error("kv cache: batch size must be positive, got " + std::to_string(n));
  if (n_tokens_ + n > shape_.max_tokens) {
    throw Error("kv cache: " + std::to_string(n) + " more tokens after " + std::to_string(n_tokens_) +
                " exceed the context size " + std::to_string(shape_.max_tokens) + " (raise --ctx)");
  }
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
        TKV_ASSERT(staged.size() == size_t(n_tokens_ - n_encoded_[size_t(layer)]) * hd,
                   "store called twice for a layer in one batch");
        for (int t = 0; t < batch_n_; ++t) {
          const float* x = src + (size_t(t) * nkv + g) * hd;
          for (int i = 0; i < hd; ++i) staged.push_back(f32_to_fp16(x[i]));
        }
      } else {
        for (int t = 0; t < batch_n_; ++t) {
          const float* x = src + (size_t(t) * nkv + g) * hd;
          fp16_t* dst = st->dense_row(layer, g, n_tokens_ + t);
          for (int i = 0; i < hd; ++i) dst[i] = f32_to_fp16(x[i]);
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
      for (int i = 0; i < hd; ++i) kinv[i] = 1.0f / kscale[i];
    }
    if (values_->is_codec() && spec_.center_values) {
      std::vector<double> var;
      channel_stats(values_->staged_of(layer, g), c.value_mean.data() + size_t(g) * hd, var, true);
    }
  }
  c.done = true;
}

void TurboKvCache::encode_staged(int layer, ThreadPool& pool) {
  const int hd = shape_.head_dim, nkv = shape_.n_kv_head;
  const int first = n_encoded_[size_t(layer)];
  const int last = n_tokens_ + batch_n_;  // exclusive
  if (first >= last) return;
  if (!calib_[size_t(layer)].done) calibrate(layer);
  const Calib& c = calib_[size_t(layer)];
  const int count = last - first;
  const size_t items = size_t(nkv) * size_t(count);
  parallel_checked(pool, items, 16, [&](size_t b, size_t e, int) {
    float x[codec::kMaxDim], xr[codec::kMaxDim];
    for (size_t it = b; it < e; ++it) {
      const int g = int(it / size_t(count)), p = int(it % size_t(count));
      const codec::Rotation& rot = rotations_[size_t(layer) * nkv + g];
      for (Stream* st : {keys_.get(), values_.get()}) {
        if (!st->is_codec()) continue;
        const fp16_t* src = st->staged_of(layer, g).data() + size_t(p) * hd;
        const bool is_key = st == keys_.get();
        const float* mean = (is_key ? c.key_mean : c.value_mean).data() + size_t(g) * hd;
        const float* scale = is_key ? c.key_scale.data() + size_t(g) * hd : nullptr;
        for (int i = 0; i < hd; ++i) {
          const float centered = fp16_to_f32(src[i]) - mean[i];
          x[i] = scale ? centered * scale[i] : centered;
        }
        const float* enc_in = x;
        if (st->rotated()) { rot.forward(x, xr); enc_in = xr; }
        st->codec->encode_rotated(enc_in, st->record(layer, g, first + p));
      }
    }
  });
  for (Stream* st : {keys_.get(), values_.get()}) {
    if (!st->is_codec()) continue;
    for (int g = 0; g < nkv; ++g) {
      auto& staged = st->staged_of(layer, g);
      staged.clear();
      // Release a prompt-sized staging buffer; keep a small one so that
      // decoding (one token at a time) does not allocate.
      if (staged.capacity() > size_t(64) * hd) staged.shrink_to_fit();
    }
  }
  n_encoded_[size_t(layer)] = last;
  if (layer == 0) tokens_encoded_ += count;
}

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
    s->scores.resize(size_t(group) * shape_.max_tokens);
    for (auto* v : {&s->q_cal, &s->q_rot, &s->q_sketch, &s->o_rot, &s->o_raw}) v->resize(size_t(group) * hd);
    s->tmp.resize(size_t(hd));
    s->shift.resize(size_t(group));
    s->w_enc.resize(size_t(group));
    scratch_.push_back(std::move(s));
  }
  const size_t items = size_t(batch_n_) * nkv;
  parallel_checked(pool, items, 1, [&](size_t b, size_t e, int thread) {
    for (size_t it = b; it < e; ++it) {
      attend_item(layer, int(it / nkv), int(it % nkv), q, out, scale, *scratch_[size_t(thread)]);
    }
  });
}

void TurboKvCache::attend_item(int layer, int t, int g, const float* q, float* out, float scale,
                               Scratch& s) const {
  const int hd = shape_.head_dim, nh = shape_.n_head, nkv = shape_.n_kv_head;
  const int group = nh / nkv;
  const int n_pos = n_tokens_ + t + 1;  // causal: positions [0, n_tokens + t]
  const int n_enc = std::min(n_encoded_[size_t(layer)], n_pos);
  const Stream& K = *keys_;
  const Stream& V = *values_;
  const size_t head = size_t(layer) * nkv + g;

  // Nothing encoded (prefill of a two-phase cache): exactly the FP16 cache's
  // attention over the raw keys and values.
  if (n_enc == 0) {
    const fp16_t* kp = K.is_codec() ? K.staged_of(layer, g).data() : K.dense_row(layer, g, 0);
    const fp16_t* vp = V.is_codec() ? V.staged_of(layer, g).data() : V.dense_row(layer, g, 0);
    for (int j = 0; j < group; ++j) {
      const int h = g * group + j;
      attend_head_f16(q + (size_t(t) * nh + h) * hd, kp, vp, n_pos, hd, scale,
                      out + (size_t(t) * nh + h) * hd);
    }
    return;
  }

  const Calib& c = calib_[size_t(layer)];
  const codec::Rotation& rot = rotations_[head];
  const float* kmean = c.key_mean.data() + size_t(g) * hd;
  const float* kinv = c.inv_key_scale.data() + size_t(g) * hd;
  const bool prod = K.is_codec() && K.codec->spec().kind == codec::CodecKind::Prod;

  // Queries: fold in the key scales, rotate once, precompute <q, μ>.
  for (int j = 0; j < group; ++j) {
    const float* qh = q + (size_t(t) * nh + g * group + j) * hd;
    float* qc = s.q_cal.data() + size_t(j) * hd;
    float* qr = s.q_rot.data() + size_t(j) * hd;
    if (K.is_codec()) {
      float shift = 0;
      for (int i = 0; i < hd; ++i) {
        qc[i] = qh[i] * kinv[i];
        shift += qh[i] * kmean[i];
      }
      s.shift[size_t(j)] = shift;
      if (K.rotated()) rot.forward(qc, qr); else std::copy(qc, qc + hd, qr);
      if (prod) K.codec->sketch_query(qr, s.q_sketch.data() + size_t(j) * hd);
    }
  }

  // Scores.
  const std::vector<fp16_t>* k_staged = K.is_codec() ? &K.staged_of(layer, g) : nullptr;
  for (int j = 0; j < group; ++j) {
    const float* qh = q + (size_t(t) * nh + g * group + j) * hd;
    float* sc = s.scores.data() + size_t(j) * shape_.max_tokens;
    for (int p = 0; p < n_pos; ++p) {
      float dot = 0;
      if (K.is_codec() && p < n_enc) {
        dot = K.codec->dot_rotated(s.q_rot.data() + size_t(j) * hd, s.q_sketch.data() + size_t(j) * hd,
                                   K.record(layer, g, p)) + s.shift[size_t(j)];
      } else {
        const fp16_t* kr = K.is_codec() ? k_staged->data() + size_t(p - n_encoded_[size_t(layer)]) * hd
                                        : K.dense_row(layer, g, p);
        for (int i = 0; i < hd; ++i) dot += qh[i] * fp16_to_f32(kr[i]);
      }
      sc[p] = scale * dot;
    }
  }

  // Softmax weights (two passes over the stored scores: exact and simple).
  for (int j = 0; j < group; ++j) {
    float* sc = s.scores.data() + size_t(j) * shape_.max_tokens;
    float m = -INFINITY;
    for (int p = 0; p < n_pos; ++p) m = std::max(m, sc[p]);
    for (int p = 0; p < n_pos; ++p) sc[p] = std::exp(sc[p] - m);
  }

  // Values: records accumulate in rotated space, raw values in the original.
  std::fill(s.o_rot.begin(), s.o_rot.end(), 0.0f);
  std::fill(s.o_raw.begin(), s.o_raw.end(), 0.0f);
  std::fill(s.w_enc.begin(), s.w_enc.end(), 0.0f);
  const int v_enc = V.is_codec() ? n_enc : 0;
  const std::vector<fp16_t>* v_staged = V.is_codec() ? &V.staged_of(layer, g) : nullptr;
  for (int p = 0; p < n_pos; ++p) {
    if (p < v_enc) {
      V.codec->decode_rotated(V.record(layer, g, p), s.tmp.data());
      for (int j = 0; j < group; ++j) {
        const float w = s.scores[size_t(j) * shape_.max_tokens + p];
        float* o = s.o_rot.data() + size_t(j) * hd;
        for (int i = 0; i < hd; ++i) o[i] += w * s.tmp[size_t(i)];
        s.w_enc[size_t(j)] += w;
      }
    } else {
      const fp16_t* vr = V.is_codec() ? v_staged->data() + size_t(p - n_encoded_[size_t(layer)]) * hd
                                      : V.dense_row(layer, g, p);
      for (int i = 0; i < hd; ++i) s.tmp[size_t(i)] = fp16_to_f32(vr[i]);
      for (int j = 0; j < group; ++j) {
        const float w = s.scores[size_t(j) * shape_.max_tokens + p];
        float* o = s.o_raw.data() + size_t(j) * hd;
        for (int i = 0; i < hd; ++i) o[i] += w * s.tmp[size_t(i)];
      }
    }
  }

  // Rotate back once, add the value mean, normalise.
  const float* vmean = c.value_mean.data() + size_t(g) * hd;
  for (int j = 0; j < group; ++j) {
    const float* sc = s.scores.data() + size_t(j) * shape_.max_tokens;
    float sum = 0;
    for (int p = 0; p < n_pos; ++p) sum += sc[p];
    const float inv = 1.0f / sum;
    float* o = out + (size_t(t) * nh + g * group + j) * hd;
    const float* orot = s.o_rot.data() + size_t(j) * hd;
    const float* oraw = s.o_raw.data() + size_t(j) * hd;
    if (v_enc > 0 && V.rotated()) rot.inverse(orot, o); else std::copy(orot, orot + hd, o);
    const float we = s.w_enc[size_t(j)];
    for (int i = 0; i < hd; ++i) {
      const float mean_part = v_enc > 0 ? vmean[i] * we : 0.0f;
      o[i] = (o[i] + mean_part + oraw[i]) * inv;
    }
  }
}

void TurboKvCache::end_batch() {
  TKV_ASSERT(batch_n_ > 0, "end_batch without begin_batch");
  n_tokens_ += batch_n_;
  batch_n_ = -1;
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
    if (keep < enc) enc = keep;  // records past `keep` are dead; nothing to move
    for (Stream* st : {keys_.get(), values_.get()}) {
      if (!st->is_codec()) continue;
      for (int g = 0; g < shape_.n_kv_head; ++g) st->staged_of(l, g).resize(size_t(keep - enc) * hd);
    }
    if (keep == 0) calib_[size_t(l)] = Calib{};  // an emptied cache starts afresh
  }
  n_tokens_ = keep;
}

int TurboKvCache::n_encoded(int layer) const { return n_encoded_.at(size_t(layer)); }

void TurboKvCache::read_key(int layer, int g, int pos, float* out) const {
  TKV_ASSERT(pos >= 0 && pos < n_tokens_, "pos out of range");
  const int hd = shape_.head_dim;
  const Stream& K = *keys_;
  if (!K.is_codec()) {
    for (int i = 0; i < hd; ++i) out[i] = fp16_to_f32(K.dense_row(layer, g, pos)[i]);
  } else if (pos >= n_encoded_[size_t(layer)]) {
    const fp16_t* r = K.staged_of(layer, g).data() + size_t(pos - n_encoded_[size_t(layer)]) * hd;
    for (int i = 0; i < hd; ++i) out[i] = fp16_to_f32(r[i]);
  } else {
    float xr[codec::kMaxDim], x[codec::kMaxDim];
    K.codec->decode_rotated(K.record(layer, g, pos), xr);
    if (K.rotated()) rotations_[size_t(layer) * shape_.n_kv_head + g].inverse(xr, x);
    else std::copy(xr, xr + hd, x);
    const Calib& c = calib_[size_t(layer)];
    for (int i = 0; i < hd; ++i) {
      out[i] = x[i] * c.inv_key_scale[size_t(g) * hd + i] + c.key_mean[size_t(g) * hd + i];
    }
  }
}

void TurboKvCache::read_value(int layer, int g, int pos, float* out) const {
  TKV_ASSERT(pos >= 0 && pos < n_tokens_, "pos out of range");
  const int hd = shape_.head_dim;
  const Stream& V = *values_;
  if (!V.is_codec()) {
    for (int i = 0; i < hd; ++i) out[i] = fp16_to_f32(V.dense_row(layer, g, pos)[i]);
  } else if (pos >= n_encoded_[size_t(layer)]) {
    const fp16_t* r = V.staged_of(layer, g).data() + size_t(pos - n_encoded_[size_t(layer)]) * hd;
    for (int i = 0; i < hd; ++i) out[i] = fp16_to_f32(r[i]);
  } else {
    float xr[codec::kMaxDim];
    V.codec->decode_rotated(V.record(layer, g, pos), xr);
    if (V.rotated()) rotations_[size_t(layer) * shape_.n_kv_head + g].inverse(xr, out);
    else std::copy(xr, xr + hd, out);
    const Calib& c = calib_[size_t(layer)];
    for (int i = 0; i < hd; ++i) out[i] += c.value_mean[size_t(g) * hd + i];
  }
}

size_t TurboKvCache::bytes() const {
  const size_t hd = size_t(shape_.head_dim), nkv = size_t(shape_.n_kv_head);
  size_t total = 0;
  for (int l = 0; l < shape_.n_layer; ++l) {
    const size_t enc = size_t(n_encoded_[size_t(l)]);
    const size_t raw = size_t(n_tokens_) - std::min(enc, size_t(n_tokens_));
    for (const Stream* st : {keys_.get(), values_.get()}) {
      if (st->is_codec()) total += nkv * (enc * st->record_bytes + raw * hd * sizeof(fp16_t));
      else total += nkv * size_t(n_tokens_) * hd * sizeof(fp16_t);
    }
    // Calibration state stored beside the records (fp32): key mean and
    // scales, value mean.
    const Calib& c = calib_[size_t(l)];
    if (c.done) {
      if (keys_->is_codec()) {
        if (spec_.center_keys) total += nkv * hd * sizeof(float);
        if (spec_.calibration != Calibration::None) total += nkv * hd * sizeof(float);
      }
      if (values_->is_codec() && spec_.center_values) total += nkv * hd * sizeof(float);
    }
  }
  return total;
}

double TurboKvCache::bits_per_element() const {
  if (n_tokens_ == 0) {
    return 0.5 * (SchemeSpec::stream_bits(spec_.key, shape_.head_dim) +
                  SchemeSpec::stream_bits(spec_.value, shape_.head_dim));
  }
  const double elements = 2.0 * shape_.n_layer * shape_.n_kv_head * double(n_tokens_) * shape_.head_dim;
  return 8.0 * double(bytes()) / elements;
}

}  // namespace turbokv::kv
