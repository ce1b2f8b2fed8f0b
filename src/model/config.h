// Hyper-parameters of a decoder-only transformer, read from GGUF metadata.
//
// Supported architectures (general.architecture):
//   llama  (also Mistral-style): interleaved-pair RoPE ("NORM" in llama.cpp:
//          pairs (2i, 2i+1)), because the GGUF converter permutes Q/K rows;
//   qwen2: q/k/v biases, rotate-half RoPE ("NEOX": pairs (i, i + d/2));
//   qwen3: per-head RMSNorm of q and k before RoPE, NEOX RoPE.
#pragma once

#include <string>
#include <vector>

namespace turbokv::io { class GgufFile; }

namespace turbokv::model {

enum class Arch { Llama, Qwen2, Qwen3 };
enum class RopeStyle { Interleaved /* (2i, 2i+1) */, Neox /* (i, i + rope_dim/2) */ };

const char* arch_name(Arch a);
// "llama, qwen2, qwen3", for error messages.
const char* supported_arch_list();

struct ModelConfig {
  Arch arch = Arch::Llama;
  std::string arch_name;  // as in the file
  int n_layer = 0;
  int d_model = 0;        // embedding length
  int n_head = 0;
  int n_kv_head = 0;
  int head_dim = 0;       // attention.key_length, else d_model / n_head
  int d_ff = 0;           // feed-forward length
  int n_vocab = 0;
  int n_ctx_train = 0;    // context_length (0 if absent)
  float norm_eps = 1e-5f;

  // RoPE: theta_i = pos * freq_scale * rope_base^(-2i / rope_dim) / freq_factor[i]
  RopeStyle rope_style = RopeStyle::Interleaved;
  int rope_dim = 0;             // rotated dimensions per head (<= head_dim, even)
  float rope_base = 10000.0f;
  float rope_freq_scale = 1.0f;           // 1 / linear scaling factor
  std::vector<float> rope_freq_factors;   // (rope_dim / 2), empty = all 1 (llama3 scaling fills it)

  bool has_qkv_bias = false;   // qwen2
  bool has_qk_norm = false;    // qwen3
  bool tied_output = false;    // no output.weight: logits use token_embd

  int q_dim() const { return n_head * head_dim; }
  int kv_dim() const { return n_kv_head * head_dim; }
};

// Reads and checks the config; throws Error naming the file and key.
ModelConfig read_config(const io::GgufFile& file);

// Llama 3.1 frequency scaling (Meta's reference `apply_scaling`): per-pair
// divisors of the RoPE frequency.   returns (rope_dim / 2)
std::vector<float> llama3_freq_factors(int rope_dim, float base, float factor, float low_freq_factor,
                                       float high_freq_factor, int original_context);

// One-line summary for logs: "llama: 5 layers, d_model 512, ...".
std::string describe(const ModelConfig& c);

}  // namespace turbokv::model
