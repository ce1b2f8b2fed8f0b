// A decoder-only transformer (llama / qwen2 / qwen3) on the CPU.
//
// Weights stay in the memory-mapped GGUF file (ops::WeightView, no copies);
// only the small norm/bias vectors are converted to float once. The model
// hands post-RoPE keys/values to a kv::KvCache and asks it for attention:
// it knows nothing about how the cache stores them.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "io/gguf.h"
#include "kv/kv_cache.h"
#include "model/config.h"
#include "ops/matmul.h"
#include "util/thread_pool.h"

namespace turbokv::model {

using kv::Phase;

struct LayerWeights {
  std::vector<float> attn_norm;            // (d_model)
  ops::WeightView wq, wk, wv;              // (q_dim, d_model), (kv_dim, d_model) x2
  std::vector<float> bq, bk, bv;           // (q_dim), (kv_dim) x2; empty if no bias
  std::vector<float> q_norm, k_norm;       // (head_dim) each; qwen3 only
  ops::WeightView wo;                      // (d_model, q_dim)
  std::vector<float> ffn_norm;             // (d_model)
  ops::WeightView w_gate, w_up;            // (d_ff, d_model)
  ops::WeightView w_down;                  // (d_model, d_ff)
};

struct ModelWeights {
  ops::WeightView token_embd;              // (n_vocab, d_model)
  std::vector<LayerWeights> layers;        // (n_layer)
  std::vector<float> output_norm;          // (d_model)
  ops::WeightView output;                  // (n_vocab, d_model); token_embd when tied
};

// Binds every tensor, checking its presence, type and shape against the
// config; throws Error naming the tensor and what was expected.
ModelWeights bind_weights(const io::GgufFile& file, const ModelConfig& config);

enum class LogitsMode {
  Last,  // logits of the batch's last token only   logits: (n_vocab)
  All,   // logits of every token                   logits: (n, n_vocab)
};

// Preallocated activations for batches of up to max_batch tokens, so a
// forward pass allocates nothing. Longer inputs are run in sub-batches.
class Scratch {
 public:
  Scratch(const ModelConfig& config, int max_batch = 512);
  int max_batch() const { return max_batch_; }

 private:
  friend class Model;
  int max_batch_;
  std::vector<float> x;        // (max_batch, d_model)   residual stream
  std::vector<float> xn;       // (max_batch, d_model)   normed input of a block
  std::vector<float> q;        // (max_batch, n_head, head_dim)
  std::vector<float> k;        // (max_batch, n_kv_head, head_dim)
  std::vector<float> v;        // (max_batch, n_kv_head, head_dim)
  std::vector<float> attn;     // (max_batch, n_head, head_dim)
  std::vector<float> proj;     // (max_batch, d_model)
  std::vector<float> gate;     // (max_batch, d_ff)
  std::vector<float> up;       // (max_batch, d_ff)
  std::vector<float> rope_cos; // (max_batch, rope_dim / 2)
  std::vector<float> rope_sin; // (max_batch, rope_dim / 2)
};

class Model {
 public:
  // Opens the GGUF file and binds the weights; throws Error naming the file.
  static std::unique_ptr<Model> load(const std::string& path);
  explicit Model(std::unique_ptr<io::GgufFile> file);

  const ModelConfig& config() const { return config_; }
  const ModelWeights& weights() const { return weights_; }
  const io::GgufFile& gguf() const { return *file_; }

  // The cache shape this model needs for a context of n_ctx tokens.
  kv::CacheShape cache_shape(int n_ctx) const;

  // Runs tokens[0, n) at positions [cache.n_tokens(), cache.n_tokens() + n),
  // appending them to the cache, and writes logits (see LogitsMode).
  // Batches larger than scratch.max_batch() run as several cache batches.
  // Throws Error for a token id outside the vocabulary or a full cache.
  void forward(const int32_t* tokens, int n, kv::KvCache& cache, Phase phase, LogitsMode mode,
               float* logits, Scratch& scratch, ThreadPool& pool) const;

 private:
  // One cache batch of n <= max_batch tokens; if logits_rows is non-null the
  // final norm + output projection run for every row (All) into it; if
  // last_logits is non-null they run for the last row only.
  void forward_batch(const int32_t* tokens, int n, kv::KvCache& cache, Phase phase, float* all_logits,
                     float* last_logits, Scratch& s, ThreadPool& pool) const;

  std::unique_ptr<io::GgufFile> file_;
  ModelConfig config_;
  ModelWeights weights_;
};

// Reference pieces of the forward pass, exposed for tests.
// y = x / sqrt(mean(x^2) + eps) * w   (ggml: sum of squares in double)   x, y, w: (n)
void rms_norm(const float* x, const float* w, int n, float eps, float* y);
// cos/sin of each rotated pair at position pos.   cos, sin: (rope_dim / 2)
void rope_angles(const ModelConfig& c, int pos, float* cos, float* sin);
// Rotates n_heads heads of one token in place.   x: (n_heads, head_dim)
void apply_rope(const ModelConfig& c, const float* cos, const float* sin, float* x, int n_heads);

}  // namespace turbokv::model
