#include "model/config.h"

#include <cmath>
#include <sstream>

#include "io/gguf.h"
#include "ops/matmul.h"
#include "util/error.h"

namespace turbokv::model {

const char* arch_name(Arch a) {
  switch (a) {
    case Arch::Llama: return "llama";
    case Arch::Qwen2: return "qwen2";
    case Arch::Qwen3: return "qwen3";
  }
  return "unknown";
}

const char* supported_arch_list() { return "llama, qwen2, qwen3"; }

std::vector<float> llama3_freq_factors(int rope_dim, float base, float factor, float low_freq_factor,
                                       float high_freq_factor, int original_context) {
  // Meta's llama3 apply_scaling, as llama.cpp's converter writes rope_freqs.
  const double low_freq_wavelen = double(original_context) / low_freq_factor;
  const double high_freq_wavelen = double(original_context) / high_freq_factor;
  std::vector<float> factors(size_t(rope_dim / 2));
  for (int i = 0; i < rope_dim / 2; ++i) {
    const double freq = 1.0 / std::pow(double(base), 2.0 * i / rope_dim);
    const double wavelen = 2.0 * M_PI / freq;
    if (wavelen < high_freq_wavelen) {
      factors[size_t(i)] = 1.0f;
    } else if (wavelen > low_freq_wavelen) {
      factors[size_t(i)] = factor;
    } else {
      const double smooth = (original_context / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor);
      factors[size_t(i)] = float(1.0 / ((1.0 - smooth) / factor + smooth));
    }
  }
  return factors;
}

ModelConfig read_config(const io::GgufFile& f) {
  ModelConfig c;
  c.arch_name = f.get_string("general.architecture");
  if (c.arch_name == "llama") c.arch = Arch::Llama;
  else if (c.arch_name == "qwen2") c.arch = Arch::Qwen2;
  else if (c.arch_name == "qwen3") c.arch = Arch::Qwen3;
  else {
    throw Error(f.path() + ": unsupported architecture '" + c.arch_name + "' (general.architecture); supported: " +
                supported_arch_list());
  }
  const std::string a = c.arch_name + ".";
  auto key = [&](const char* k) { return a + k; };
  auto positive = [&](const std::string& k, int64_t v) {
    if (v <= 0 || v > (int64_t(1) << 30)) {
      throw Error(f.path() + ": metadata key '" + k + "' must be a positive integer, got " + std::to_string(v));
    }
    return int(v);
  };
  c.n_layer = positive(key("block_count"), f.get_u32(key("block_count")));
  c.d_model = positive(key("embedding_length"), f.get_u32(key("embedding_length")));
  c.d_ff = positive(key("feed_forward_length"), f.get_u32(key("feed_forward_length")));
  c.n_head = positive(key("attention.head_count"), f.get_u32(key("attention.head_count")));
  c.n_kv_head = positive(key("attention.head_count_kv"), f.get_u32_or(key("attention.head_count_kv"), uint32_t(c.n_head)));
  if (c.n_head % c.n_kv_head != 0) {
    throw Error(f.path() + ": " + key("attention.head_count") + " (" + std::to_string(c.n_head) +
                ") is not a multiple of " + key("attention.head_count_kv") + " (" + std::to_string(c.n_kv_head) + ")");
  }
  if (f.has(key("attention.key_length"))) {
    c.head_dim = positive(key("attention.key_length"), f.get_u32(key("attention.key_length")));
  } else {
    if (c.d_model % c.n_head != 0) {
      throw Error(f.path() + ": " + key("embedding_length") + " is not a multiple of " + key("attention.head_count") +
                  " and " + key("attention.key_length") + " is absent");
    }
    c.head_dim = c.d_model / c.n_head;
  }
  if (f.has(key("attention.value_length")) && int64_t(f.get_u32(key("attention.value_length"))) != c.head_dim) {
    throw Error(f.path() + ": " + key("attention.value_length") + " differs from the key length " +
                std::to_string(c.head_dim) + "; only equal key/value head sizes are supported");
  }
  c.n_ctx_train = int(f.get_u32_or(key("context_length"), 0));
  c.norm_eps = f.get_f32_or(key("attention.layer_norm_rms_epsilon"), 1e-5f);
  if (!(c.norm_eps > 0.0f)) throw Error(f.path() + ": " + key("attention.layer_norm_rms_epsilon") + " must be positive");

  const auto& embd = f.tensor("token_embd.weight");
  if (embd.shape.size() != 2) throw Error(f.path() + ": tensor 'token_embd.weight' must be 2-D");
  c.n_vocab = int(embd.shape[1]);
  if (f.has(key("vocab_size")) && int64_t(f.get_u32(key("vocab_size"))) != c.n_vocab) {
    throw Error(f.path() + ": " + key("vocab_size") + " disagrees with token_embd.weight rows (" +
                std::to_string(c.n_vocab) + ")");
  }

  // RoPE.
  c.rope_style = c.arch == Arch::Llama ? RopeStyle::Interleaved : RopeStyle::Neox;
  c.rope_dim = int(f.get_u32_or(key("rope.dimension_count"), uint32_t(c.head_dim)));
  if (c.rope_dim <= 0 || c.rope_dim > c.head_dim || c.rope_dim % 2 != 0) {
    throw Error(f.path() + ": " + key("rope.dimension_count") + " = " + std::to_string(c.rope_dim) +
                " must be even and at most the head size " + std::to_string(c.head_dim));
  }
  c.rope_base = f.get_f32_or(key("rope.freq_base"), 10000.0f);
  if (!(c.rope_base > 1.0f)) throw Error(f.path() + ": " + key("rope.freq_base") + " must be > 1");
  const std::string scaling = f.get_string_or(key("rope.scaling.type"), "none");
  const float factor = f.get_f32_or(key("rope.scaling.factor"), 1.0f);
  if (f.find_tensor("rope_freqs.weight")) {
    // llama.cpp's converter stores Llama 3.1 scaling as per-pair divisors.
    const auto& t = f.tensor("rope_freqs.weight");
    if (t.n_elements() != uint64_t(c.rope_dim / 2)) {
      throw Error(f.path() + ": tensor 'rope_freqs.weight' has " + std::to_string(t.n_elements()) +
                  " elements, expected rope_dim/2 = " + std::to_string(c.rope_dim / 2));
    }
    c.rope_freq_factors.resize(size_t(c.rope_dim / 2));
    ops::WeightView w{t.type, f.tensor_data(t), 1, int64_t(c.rope_dim / 2)};
    ops::dequantize_row(w, 0, c.rope_freq_factors.data());
  } else if (scaling == "llama3" || f.has(key("rope.scaling.low_freq_factor"))) {
    c.rope_freq_factors = llama3_freq_factors(
        c.rope_dim, c.rope_base, factor, f.get_f32_or(key("rope.scaling.low_freq_factor"), 1.0f),
        f.get_f32_or(key("rope.scaling.high_freq_factor"), 4.0f),
        int(f.get_u32_or(key("rope.scaling.original_context_length"), 8192)));
  } else if (scaling == "linear") {
    if (!(factor > 0.0f)) throw Error(f.path() + ": " + key("rope.scaling.factor") + " must be positive");
    c.rope_freq_scale = 1.0f / factor;
  } else if (scaling != "none") {
    throw Error(f.path() + ": unsupported " + key("rope.scaling.type") + " '" + scaling +
                "'; supported: none, linear, llama3");
  }

  c.has_qkv_bias = c.arch == Arch::Qwen2;
  c.has_qk_norm = c.arch == Arch::Qwen3;
  c.tied_output = f.find_tensor("output.weight") == nullptr;
  return c;
}

std::string describe(const ModelConfig& c) {
  std::ostringstream s;
  s << c.arch_name << ": " << c.n_layer << " layers, d_model " << c.d_model << ", " << c.n_head << " heads, "
    << c.n_kv_head << " kv heads, head_dim " << c.head_dim << ", ffn " << c.d_ff << ", vocab " << c.n_vocab
    << ", rope " << (c.rope_style == RopeStyle::Neox ? "neox" : "interleaved") << " dim " << c.rope_dim
    << " base " << c.rope_base << (c.tied_output ? ", tied output" : "");
  return s.str();
}

}  // namespace turbokv::model
