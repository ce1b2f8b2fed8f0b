// The TurboQuant KV cache: keys and values stored as codec records
// (codec/format.h), attention computed in rotated space.
//
// Two phases. During prefill the batch's keys and values are staged raw
// (FP16), so prefill attention is exactly the FP16 cache's. At the first
// decode batch every staged token is encoded; afterwards each new token is
// encoded as it arrives, before it is attended to. With the `strict` option
// staging is skipped: every token is encoded before any attention reads it,
// prefill included (llama.cpp's quantized caches behave that way).
//
// Precision by age (scheme options window and near): a token t reads the
// newest `window` positions raw, the `near` positions before them as
// records of the near tier (the stream's codec at near_bits), and older
// ones as records at the stream's bits. A position leaves the raw window
// encoded into the near tier; it leaves the near tier re-encoded from its
// near record (decoded in rotated space, encoded again), so what a
// position holds depends only on its age, never on how tokens were batched.
//
// Attention in rotated space (per layer, kv head g, query head h of g's group):
//   q' = q / s_g                      (per-channel key scales, folded into q)
//   q_rot = R_g q'                    once per query
//   score(t) = <q_rot, k̂_rot(t)> + <q, μ_g>   against records, no float copy of K
//   o_rot = Σ p_t v̂_rot(t),  o = R_g^T o_rot + μv_g Σ p_t   rotated back once
// where k̂_rot is what the record holds for R_g (s_g ⊙ (k - μ_g)). Raw (staged
// or FP16-stream) positions are scored and accumulated in the original space.
//
// Calibration (per layer, kv head; estimated once, at the first encoding,
// from everything staged so far and the queries seen so far):
//   μ_g   mean key. Softmax is shift-invariant: subtracting the same vector
//         from every key changes each score of a query by the same amount
//         <q, μ>, which is added back exactly. Real keys share a large common
//         component, so the encoded vectors, and their errors, get smaller.
//   s_g   per-channel scales. With a rotation followed by a per-vector-norm
//         quantizer, the error e of the encoded key s ⊙ k is close to
//         isotropic with variance ∝ Σ_j s_j² Var[k_j]; the score error is
//         <q / s, e>, so E[err²] ∝ (Σ_j E[q_j²] / s_j²)(Σ_j s_j² Var[k_j]),
//         minimised (Cauchy–Schwarz) by s_j² ∝ sqrt(E[q_j²] / Var[k_j]):
//         precision goes where queries look. `calib=key` whitens instead
//         (s_j = 1/std), `calib=none` keeps s = 1.
//   outlier channels (options outliers=N, voutliers=N): the N channels that
//         carry the most of what a stream encodes (keys: s_j^2 Var[k_j], the
//         channels where both keys vary and queries look; values: Var[v_j])
//         are moved to the front and rotated apart from the rest
//         (Rotation::make_split) into a split record, N coordinates at one
//         more bit (codec/format.h). With a per-vector scale the squared
//         error of a part is about its energy times the codebook's
//         distortion, so a bit spent there removes 3/4 of the error where
//         most of the energy is. The stream's rotation for (layer, g) is
//         then that split rotation instead of R_g.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "codec/codec.h"
#include "codec/rotation.h"
#include "kv/kv_cache.h"
#include "kv/scheme.h"
#include "util/fp16.h"

namespace turbokv::kv {

class TurboKvCache final : public KvCache {
 public:
  // Throws Error if a stream's codec cannot serve shape.head_dim.
  TurboKvCache(const SchemeSpec& spec, const CacheShape& shape);
  ~TurboKvCache() override;

  const CacheShape& shape() const override { return shape_; }
  std::string scheme() const override { return spec_.name; }
  const SchemeSpec& spec() const { return spec_; }
  int n_tokens() const override { return n_tokens_; }

  void begin_batch(int n, Phase phase) override;
  void store(int layer, const float* k, const float* v) override;
  void attend(int layer, const float* q, float* out, float scale, ThreadPool& pool) override;
  void end_batch() override;
  void trim(int n) override;

  size_t bytes() const override;
  double bits_per_element() const override;
  void save(CacheWriter& out) const override;    // layout: kv/cache_file.h
  void restore(CacheReader& in) override;

  // ---- introspection, for tests and the evaluator ----
  // Tokens of `layer` held as records (keys; values are encoded in step).
  int n_encoded(int layer) const;
  // Tokens encoded since construction (counts re-encodings after trims).
  int64_t tokens_encoded() const { return tokens_encoded_; }
  // Dequantized key / value of (layer, kv_head, pos) in the original space,
  // exactly what attention uses for that position.   out: (head_dim)
  void read_key(int layer, int kv_head, int pos, float* out) const;
  void read_value(int layer, int kv_head, int pos, float* out) const;
  // The channels of (layer, kv_head) a split stream (outliers= for keys,
  // voutliers= for values) stores at one more bit, ascending; empty before
  // the layer is calibrated or without outlier channels.
  std::vector<int> outlier_channels(bool keys, int layer, int kv_head) const;

 private:
  struct Stream;
  struct Scratch;

  // Position pos of a stream as stored: raw rows as they are (returns false);
  // a record decoded and rotated back, still scaled and centred as encoded
  // (returns true: the caller undoes its stream's calibration).
  bool read_stream(const Stream& st, int layer, int g, int pos, float* out) const;
  void encode_staged(int layer, ThreadPool& pool);
  void calibrate(int layer);
  // The rotation a stream's records of (layer, g) are in: R_g, or the split
  // rotation of a stream with outlier channels (built at calibration).
  const codec::Rotation& rotation(const Stream& st, int layer, int g) const;
  void build_split_rotations(int layer);
  // Encoded positions token t of the batch reads as records; it reads the
  // rest, the newest `window` positions among them, raw.
  int encoded_for(int layer, int t) const;
  // Of those, the positions it reads as records at the stream's bits; it
  // reads [far_for, encoded_for) as near records.
  int far_for(int layer, int t) const;
  void attend_item(int layer, int t, int kv_head, const float* q, float* out, float scale, Scratch& s) const;
  // Fused decode attention (attend() over encoded positions): queries are
  // prepared once per (token, kv head), the encoded range is split into jobs
  // over (token, kv head, query-head piece, sequence chunk) whose partial
  // softmax states attend_item merges (turbo_attention.h).
  void prepare_queries(int layer, int t, int kv_head, const float* q);
  void plan_jobs(int layer);

  struct AttendJob {
    int t = 0, g = 0;       // token of the batch, kv head
    int h0 = 0, n_q = 0;    // query heads [g * group + h0, + n_q)
    int begin = 0, end = 0; // encoded positions
    bool near = false;      // reads the near tier
    size_t state = 0;       // offset in job_states_: (n_q) m, (n_q) d, (n_q, head_dim) o
  };
  std::vector<float> q_prep_;      // (batch, n_head, head_dim) q / s, rotated (codec keys)
  std::vector<float> q_sketch_;    // (batch, n_head, head_dim) prod keys: S q_rot
  std::vector<float> q_shift_;     // (batch, n_head) <q, μ>
  std::vector<AttendJob> jobs_;    // this attend() call's jobs, grouped by (t, kv head)
  std::vector<size_t> item_jobs_;  // (batch * n_kv_head + 1) first job of each (t, kv head)
  std::vector<float> job_states_;  // partial states of jobs_ (grow-only)

  SchemeSpec spec_;
  CacheShape shape_;
  std::vector<codec::Rotation> rotations_;  // (layer, kv_head)
  std::unique_ptr<Stream> keys_, values_;
  // Positions [0, n_encoded_[layer]) of the codec streams are records; later
  // positions are staged raw. Equal across layers between batches.
  std::vector<int> n_encoded_;
  std::vector<uint8_t> encoded_layer_;  // (layer) 0 for the scheme's fp16layers: never encoded
  // Position of each layer's staged row 0. The raw rows of positions the
  // last batch encoded stay until the next begin_batch(): earlier tokens of a
  // batch still read some of them raw (the window is per token), and a trim
  // of that batch's tokens puts them back to raw. They are not counted by
  // bytes() (transient, like attention scratch); save() writes them, so a
  // restored cache is exactly the saved one.
  std::vector<int> staged_base_;
  // The near tier, per layer: positions [0, n_far) are records at the
  // streams' bits, [n_far, n_encoded) near records. Near records are held
  // from near_base <= n_far on: like raw rows, those of positions the last
  // batch re-encoded stay until the next begin_batch(). Without a near tier
  // n_far == n_encoded.
  std::vector<int> n_far_, near_base_;
  void drop_encoded_raw_rows();
  int n_tokens_ = 0;
  int batch_n_ = -1;
  Phase phase_ = Phase::Prefill;
  int64_t tokens_encoded_ = 0;

  // Calibration, per layer: (n_kv_head, head_dim) each.
  struct Calib {
    bool done = false;
    std::vector<float> key_mean, key_scale, inv_key_scale, value_mean;
    // Split streams: (n_kv_head, head_dim), 1 marks an outlier channel
    // (stored and counted as one bit a channel); empty otherwise.
    std::vector<uint8_t> key_outliers, value_outliers;
    std::vector<double> q_sq_sum;  // (n_kv_head, head_dim) Σ q_j² over queries seen
    int64_t q_count = 0;
  };
  std::vector<Calib> calib_;
  std::vector<std::unique_ptr<Scratch>> scratch_;  // one per pool thread
};

}  // namespace turbokv::kv
