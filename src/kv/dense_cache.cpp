#include "kv/dense_cache.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <type_traits>

#include "kv/attention_kernels.h"
#include "kv/cache_file.h"
#include "kv/online_softmax.h"
#include "util/error.h"

namespace turbokv::kv {

namespace {

using detail::kScoreBlock;

// fp16 -> f32 for all 65536 bit patterns (256 KiB, built once): exact, and
// cheaper than the branchy portable conversion in the inner loops (measured:
// a branch-free bit-trick conversion was 1.7x slower at head_dim 8 without
// SIMD). The SIMD kernels issue replaces this with F16C/Highway.
const float* fp16_table() {
  static const std::vector<float> table = [] {
    std::vector<float> t(65536);
    for (uint32_t i = 0; i < 65536; ++i) t[i] = fp16_to_f32(fp16_t(i));
    return t;
  }();
  return table.data();
}

struct F32Loader {
  float operator()(const float* p, int i) const { return p[i]; }
};
struct F16Loader {
  const float* table;
  float operator()(const fp16_t* p, int i) const { return table[p[i]]; }
};

template <typename T, typename Load>
void attend_head(const float* q, const T* keys, const T* values, int n_pos, int head_dim, float scale, float* out,
                 Load load) {
  SoftmaxState state(out, head_dim);
  float scores[kScoreBlock];
  for (int p0 = 0; p0 < n_pos; p0 += kScoreBlock) {
    const int nb = std::min(kScoreBlock, n_pos - p0);
    float block_max = -INFINITY;
    for (int j = 0; j < nb; ++j) {
      const T* k = keys + size_t(p0 + j) * head_dim;
      float dot = 0.0f;
      for (int i = 0; i < head_dim; ++i) dot += q[i] * load(k, i);
      scores[j] = scale * dot;
      block_max = std::max(block_max, scores[j]);
    }
    const float m = state.rescale_for(block_max);
    for (int j = 0; j < nb; ++j) {
      const float w = std::exp(scores[j] - m);
      state.d += w;
      const T* v = values + size_t(p0 + j) * head_dim;
      for (int i = 0; i < head_dim; ++i) out[i] += w * load(v, i);
    }
  }
  state.normalize();
}

}  // namespace

void attend_head_f32_ref(const float* q, const float* keys, const float* values, int n_pos, int head_dim,
                         float scale, float* out) {
  attend_head(q, keys, values, n_pos, head_dim, scale, out, F32Loader{});
}

void attend_head_f16_ref(const float* q, const fp16_t* keys, const fp16_t* values, int n_pos, int head_dim,
                         float scale, float* out) {
  attend_head(q, keys, values, n_pos, head_dim, scale, out, F16Loader{fp16_table()});
}

void attend_head_f32(const float* q, const float* keys, const float* values, int n_pos, int head_dim, float scale,
                     float* out) {
  attend_group_f32(q, 1, keys, values, n_pos, head_dim, scale, out);
}

void attend_head_f16(const float* q, const fp16_t* keys, const fp16_t* values, int n_pos, int head_dim, float scale,
                     float* out) {
  attend_group_f16(q, 1, keys, values, n_pos, head_dim, scale, out);
}

namespace {

// A group of query heads through the fast kernel, kMaxGroupHeads at a time;
// head by head through the reference where the kernel declines.
template <typename T, typename Reference>
void attend_group(const float* q, int n_q, const T* keys, const T* values, int n_pos, int head_dim, float scale,
                  float* out, Reference reference) {
  for (int h0 = 0; h0 < n_q; h0 += detail::kMaxGroupHeads) {
    const int n = std::min(detail::kMaxGroupHeads, n_q - h0);
    const float* qh = q + size_t(h0) * head_dim;
    float* oh = out + size_t(h0) * head_dim;
    if (detail::attend_group_fast(qh, n, keys, values, n_pos, head_dim, scale, oh)) continue;
    for (int h = 0; h < n; ++h) {
      reference(qh + size_t(h) * head_dim, keys, values, n_pos, head_dim, scale, oh + size_t(h) * head_dim);
    }
  }
}

}  // namespace

void attend_group_f32(const float* q, int n_q, const float* keys, const float* values, int n_pos, int head_dim,
                      float scale, float* out) {
  attend_group(q, n_q, keys, values, n_pos, head_dim, scale, out, attend_head_f32_ref);
}

void attend_group_f16(const float* q, int n_q, const fp16_t* keys, const fp16_t* values, int n_pos, int head_dim,
                      float scale, float* out) {
  attend_group(q, n_q, keys, values, n_pos, head_dim, scale, out, attend_head_f16_ref);
}

void validate_shape(const CacheShape& s) {
  auto need_positive = [](int v, const char* name) {
    if (v <= 0) throw Error(std::string("kv cache shape: ") + name + " must be positive, got " + std::to_string(v));
  };
  need_positive(s.n_layer, "n_layer");
  need_positive(s.n_head, "n_head");
  need_positive(s.n_kv_head, "n_kv_head");
  need_positive(s.head_dim, "head_dim");
  need_positive(s.max_tokens, "max_tokens (context size)");
  if (s.n_head % s.n_kv_head != 0) {
    throw Error("kv cache shape: n_head (" + std::to_string(s.n_head) +
                ") must be a multiple of n_kv_head (" + std::to_string(s.n_kv_head) + ")");
  }
}

template <typename T>
DenseKvCache<T>::DenseKvCache(const CacheShape& shape) : shape_(shape) {
  validate_shape(shape);
  const size_t n = size_t(shape.n_layer) * shape.n_kv_head * shape.max_tokens * shape.head_dim;
  keys_.assign(n, T{});
  values_.assign(n, T{});
  stored_.assign(size_t(shape.n_layer), 0);
  if (std::is_same_v<T, fp16_t>) fp16_table();  // build it now, not inside a timed decode
}

template <typename T>
void DenseKvCache<T>::begin_batch(int n, Phase) {
  TKV_ASSERT(batch_n_ < 0, "begin_batch while a batch is open");
  if (n <= 0) throw Error("kv cache: batch size must be positive, got " + std::to_string(n));
  if (n_tokens_ + n > shape_.max_tokens) {
    throw Error("kv cache: " + std::to_string(n) + " more tokens after " + std::to_string(n_tokens_) +
                " exceed the context size " + std::to_string(shape_.max_tokens) + " (raise --ctx)");
  }
  batch_n_ = n;
  std::fill(stored_.begin(), stored_.end(), uint8_t(0));
}

template <typename T>
void DenseKvCache<T>::store(int layer, const float* k, const float* v) {
  TKV_ASSERT(batch_n_ > 0, "store outside a batch");
  TKV_ASSERT(layer >= 0 && layer < shape_.n_layer, "layer out of range");
  const int hd = shape_.head_dim, nkv = shape_.n_kv_head;
  for (int t = 0; t < batch_n_; ++t) {
    for (int h = 0; h < nkv; ++h) {
      const float* ks = k + (size_t(t) * nkv + h) * hd;  // (n, n_kv_head, head_dim)
      const float* vs = v + (size_t(t) * nkv + h) * hd;
      T* kd = keys_.data() + offset(layer, h, n_tokens_ + t);
      T* vd = values_.data() + offset(layer, h, n_tokens_ + t);
      if constexpr (std::is_same_v<T, fp16_t>) {
        detail::to_fp16(ks, kd, size_t(hd));
        detail::to_fp16(vs, vd, size_t(hd));
      } else {
        for (int i = 0; i < hd; ++i) {
          kd[i] = DenseElement<T>::encode(ks[i]);
          vd[i] = DenseElement<T>::encode(vs[i]);
        }
      }
    }
  }
  stored_[size_t(layer)] = 1;
}

template <typename T>
void DenseKvCache<T>::attend(int layer, const float* q, float* out, float scale, ThreadPool& pool) {
  TKV_ASSERT(batch_n_ > 0, "attend outside a batch");
  TKV_ASSERT(layer >= 0 && layer < shape_.n_layer, "layer out of range");
  TKV_ASSERT(stored_[size_t(layer)], "attend before store for this layer");
  const int hd = shape_.head_dim, nh = shape_.n_head;
  const int group = shape_.n_head / shape_.n_kv_head;  // query heads per kv head
  const int p0 = n_tokens_;
  // Work items: (token, kv head) with all its query heads in one pass over
  // the keys and values (read once), when that leaves at least two items per
  // thread; else (token, query head), so a decode step still spreads over
  // the threads. Both give the same bits.
  const bool grouped = size_t(batch_n_) * shape_.n_kv_head >= 2 * size_t(pool.size());
  const int heads = grouped ? group : 1;  // query heads per item
  const int per_token = nh / heads;
  const size_t items = size_t(batch_n_) * per_token;
  pool.parallel_for(items, 1, [&](size_t begin, size_t end, int) {
    for (size_t it = begin; it < end; ++it) {
      const int t = int(it / per_token), h = int(it % per_token) * heads;  // first query head
      const size_t base = offset(layer, h / group, 0);
      const float* qh = q + (size_t(t) * nh + h) * hd;  // (n, n_head, head_dim): a group's heads are adjacent
      float* oh = out + (size_t(t) * nh + h) * hd;
      const int n_pos = p0 + t + 1;  // causal: positions [0, p0 + t]
      const T* kp = keys_.data() + base;
      const T* vp = values_.data() + base;
      if (use_fast_) {
        if constexpr (std::is_same_v<T, float>) {
          attend_group_f32(qh, heads, kp, vp, n_pos, hd, scale, oh);
        } else {
          attend_group_f16(qh, heads, kp, vp, n_pos, hd, scale, oh);
        }
        continue;
      }
      for (int j = 0; j < heads; ++j) {
        if constexpr (std::is_same_v<T, float>) {
          attend_head_f32_ref(qh + size_t(j) * hd, kp, vp, n_pos, hd, scale, oh + size_t(j) * hd);
        } else {
          attend_head_f16_ref(qh + size_t(j) * hd, kp, vp, n_pos, hd, scale, oh + size_t(j) * hd);
        }
      }
    }
  });
}

template <typename T>
void DenseKvCache<T>::end_batch() {
  TKV_ASSERT(batch_n_ > 0, "end_batch without begin_batch");
  n_tokens_ += batch_n_;
  batch_n_ = -1;
}

template <typename T>
void DenseKvCache<T>::trim(int n) {
  TKV_ASSERT(batch_n_ < 0, "trim while a batch is open");
  if (n < 0 || n > n_tokens_) {
    throw Error("kv cache: cannot trim " + std::to_string(n) + " tokens from " + std::to_string(n_tokens_));
  }
  n_tokens_ -= n;
}

template <typename T>
size_t DenseKvCache<T>::bytes() const {
  return 2 * size_t(shape_.n_layer) * shape_.n_kv_head * size_t(n_tokens_) * shape_.head_dim * sizeof(T);
}

template <typename T>
void DenseKvCache<T>::read_row(const std::vector<T>& stream, int layer, int kv_head, int pos, float* out) const {
  TKV_ASSERT(pos >= 0 && pos < shape_.max_tokens, "pos out of range");
  const T* p = stream.data() + offset(layer, kv_head, pos);
  for (int i = 0; i < shape_.head_dim; ++i) {
    if constexpr (std::is_same_v<T, float>) out[i] = p[i]; else out[i] = fp16_to_f32(p[i]);
  }
}

template <typename T>
void DenseKvCache<T>::read_key(int layer, int kv_head, int pos, float* out) const {
  read_row(keys_, layer, kv_head, pos, out);
}

template <typename T>
void DenseKvCache<T>::read_value(int layer, int kv_head, int pos, float* out) const {
  read_row(values_, layer, kv_head, pos, out);
}

template <typename T>
void DenseKvCache<T>::save(CacheWriter& out) const {
  TKV_ASSERT(batch_n_ < 0, "save while a batch is open");
  out.put<int32_t>(n_tokens_);
  out.put<uint32_t>(sizeof(T));
  for (const std::vector<T>* data : {&keys_, &values_}) {
    for (int l = 0; l < shape_.n_layer; ++l) {
      for (int h = 0; h < shape_.n_kv_head; ++h) {
        out.put_array(data->data() + offset(l, h, 0), size_t(n_tokens_) * shape_.head_dim);
      }
    }
  }
}

template <typename T>
void DenseKvCache<T>::restore(CacheReader& in) {
  TKV_ASSERT(batch_n_ < 0, "restore while a batch is open");
  const int32_t n = in.get<int32_t>();
  const uint32_t element = in.get<uint32_t>();
  if (element != sizeof(T)) {
    in.fail("element size " + std::to_string(element) + " does not match the " + scheme() + " cache's " +
            std::to_string(sizeof(T)));
  }
  if (n < 0 || n > shape_.max_tokens) {
    in.fail("holds " + std::to_string(n) + " tokens; the context holds " + std::to_string(shape_.max_tokens) +
            " (raise --ctx)");
  }
  n_tokens_ = 0;  // stays empty if reading fails below
  for (std::vector<T>* data : {&keys_, &values_}) {
    for (int l = 0; l < shape_.n_layer; ++l) {
      for (int h = 0; h < shape_.n_kv_head; ++h) in.get_array(data->data() + offset(l, h, 0), size_t(n) * shape_.head_dim);
    }
  }
  if (in.remaining() != 0) in.fail(std::to_string(in.remaining()) + " bytes left after the cache state");
  n_tokens_ = n;
}

template class DenseKvCache<float>;
template class DenseKvCache<fp16_t>;

}  // namespace turbokv::kv
