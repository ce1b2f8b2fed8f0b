// Uncompressed KV caches: FP16 (the llama.cpp default) and F32 (the exact
// reference every compressed cache is measured against).
//
// Layout: keys and values each (layer, kv_head, pos, head_dim), so one head's
// keys are contiguous and attention streams through them. Attention is the
// scalar reference: blocked online softmax (online_softmax.h), threaded over
// (token, query head) pairs. attend() runs the Highway kernel
// (attention_hwy.cpp) where the head size allows, else the reference.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kv/kv_cache.h"
#include "util/fp16.h"

namespace turbokv::kv {

// How a storage element converts to and from float.
template <typename T> struct DenseElement;
template <> struct DenseElement<float> {
  static constexpr const char* kScheme = "f32";
  static float encode(float x) { return x; }
};
template <> struct DenseElement<fp16_t> {
  static constexpr const char* kScheme = "fp16";
  static fp16_t encode(float x) { return f32_to_fp16(x); }
};

template <typename T>
class DenseKvCache final : public KvCache {
 public:
  // Throws Error if the shape is invalid (non-positive sizes, n_head not a
  // multiple of n_kv_head).
  explicit DenseKvCache(const CacheShape& shape);

  const CacheShape& shape() const override { return shape_; }
  std::string scheme() const override { return DenseElement<T>::kScheme; }
  int n_tokens() const override { return n_tokens_; }

  void begin_batch(int n, Phase phase) override;
  void store(int layer, const float* k, const float* v) override;
  void attend(int layer, const float* q, float* out, float scale, ThreadPool& pool) override;
  void end_batch() override;
  void trim(int n) override;

  size_t bytes() const override;
  double bits_per_element() const override { return 8.0 * sizeof(T); }
  void save(CacheWriter& out) const override;    // layout: kv/cache_file.h
  void restore(CacheReader& in) override;

  // Whether attend() uses the SIMD kernel (default) or the scalar reference.
  void set_use_fast_kernels(bool on) { use_fast_ = on; }

  // Stored key/value of one (layer, kv_head, pos) as floats, for tests.
  void read_key(int layer, int kv_head, int pos, float* out) const;    // out: (head_dim)
  void read_value(int layer, int kv_head, int pos, float* out) const;  // out: (head_dim)

 private:
  void read_row(const std::vector<T>& stream, int layer, int kv_head, int pos, float* out) const;
  size_t offset(int layer, int kv_head, int pos) const {
    return ((size_t(layer) * shape_.n_kv_head + kv_head) * shape_.max_tokens + pos) * shape_.head_dim;
  }

  CacheShape shape_;
  int n_tokens_ = 0;
  int batch_n_ = -1;                 // -1: no batch open
  bool use_fast_ = true;
  std::vector<T> keys_;              // (layer, kv_head, pos, head_dim)
  std::vector<T> values_;            // (layer, kv_head, pos, head_dim)
  std::vector<uint8_t> stored_;      // (layer) store() called in the open batch
};

using F32KvCache = DenseKvCache<float>;
using Fp16KvCache = DenseKvCache<fp16_t>;

extern template class DenseKvCache<float>;
extern template class DenseKvCache<fp16_t>;

// Attention of one query head over positions [0, n_pos) of one kv head,
// as the dense caches compute it: the Highway kernel (attention_hwy.cpp)
// when head_dim is a multiple of its vector length, else the reference.
//   q, out: (head_dim)   keys, values: (n_pos, head_dim)
void attend_head_f32(const float* q, const float* keys, const float* values, int n_pos, int head_dim, float scale,
                     float* out);
void attend_head_f16(const float* q, const fp16_t* keys, const fp16_t* values, int n_pos, int head_dim, float scale,
                     float* out);
// The same for n_q query heads that read this kv head (GQA), in one pass over
// the keys and values; each head's output is bit for bit attend_head_*'s.
//   q, out: (n_q, head_dim)
void attend_group_f32(const float* q, int n_q, const float* keys, const float* values, int n_pos, int head_dim,
                      float scale, float* out);
void attend_group_f16(const float* q, int n_q, const fp16_t* keys, const fp16_t* values, int n_pos, int head_dim,
                      float scale, float* out);
// The scalar references (blocked online softmax, one position at a time).
void attend_head_f32_ref(const float* q, const float* keys, const float* values, int n_pos, int head_dim,
                         float scale, float* out);
void attend_head_f16_ref(const float* q, const fp16_t* keys, const fp16_t* values, int n_pos, int head_dim,
                         float scale, float* out);

// Checks a CacheShape; throws Error naming the bad field.
void validate_shape(const CacheShape& shape);

}  // namespace turbokv::kv
