// Tiny random-weight Llama / Qwen2 / Qwen3 GGUF models with llama.cpp tensor
// names and metadata and a small SentencePiece-style ("llama") vocabulary,
// so the model, tokenizer and kv teams can run end to end without real weights.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "ops/tensor_type.h"

namespace turbokv::testing {

enum class TinyArch { llama, qwen2, qwen3 };
const char* tiny_arch_name(TinyArch a);  // "llama", "qwen2", "qwen3"

struct TinyLlamaOptions {
  int n_layer = 2;
  int d_model = 64;
  int n_head = 4;
  int n_kv_head = 2;
  int head_dim = 16;     // d_model / n_head for llama; may differ for qwen3
  int ffn = 128;
  int vocab = 320;       // >= 259 (3 specials + 256 byte tokens), pieces fill the rest
  int context_length = 256;
  ops::TensorType weight_type = ops::TensorType::F32;  // matrices and token_embd; norms/biases stay F32
  uint64_t seed = 1;
  TinyArch arch = TinyArch::llama;
  bool tied_output = true;  // no output.weight tensor when true
  float rope_freq_base = 10000.0f;
  float rms_eps = 1e-5f;
  uint32_t gguf_version = 3;
  uint64_t alignment = 32;
};

// The vocabulary written into the tiny models: "<unk>", "<s>", "</s>", the
// 256 byte tokens "<0x00>".."<0xFF>", then pieces ("▁", letters, "▁the", ...)
// up to n tokens; scores and llama.cpp token types (1 normal, 2 unknown,
// 3 control, 6 byte) come with it.
struct TinyVocab {
  std::vector<std::string> tokens;
  std::vector<float> scores;
  std::vector<int32_t> token_types;
};
TinyVocab make_tiny_vocab(int n);

// Writes the model to `path`; throws turbokv::Error if the options are
// inconsistent (e.g. a quantized type with a row length not a multiple of 32).
void write_tiny_llama(const std::string& path, const TinyLlamaOptions& opts = {});

}  // namespace turbokv::testing
