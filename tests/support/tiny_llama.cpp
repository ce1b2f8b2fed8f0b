#include "support/tiny_llama.h"

#include <cmath>
#include <cstdio>
#include <set>

#include "support/gguf_writer.h"
#include "util/error.h"
#include "util/rng.h"

namespace turbokv::testing {

const char* tiny_arch_name(TinyArch a) {
  switch (a) {
    case TinyArch::llama: return "llama";
    case TinyArch::qwen2: return "qwen2";
    case TinyArch::qwen3: return "qwen3";
  }
  return "llama";
}

TinyVocab make_tiny_vocab(int n) {
  if (n < 259) throw Error("make_tiny_vocab: vocab " + std::to_string(n) + " < 259 (3 specials + 256 byte tokens)");
  TinyVocab v;
  auto add = [&](std::string s, float score, int32_t type) {
    v.tokens.push_back(std::move(s));
    v.scores.push_back(score);
    v.token_types.push_back(type);
  };
  add("<unk>", 0.0f, 2);
  add("<s>", 0.0f, 3);
  add("</s>", 0.0f, 3);
  for (int b = 0; b < 256; ++b) {
    char buf[8];
    std::snprintf(buf, sizeof buf, "<0x%02X>", b);
    add(buf, 0.0f, 6);
  }
  // Pieces, most useful first (SentencePiece scores decrease with rank).
  const std::string sp = "\xE2\x96\x81";  // U+2581, the SentencePiece space
  std::vector<std::string> pieces = {sp, sp + "the", sp + "a", sp + "and", sp + "to", sp + "of", "e", "t", "a",
                                     "o", "n", "i", "s", "h", "r", "d", "l", "u", ".", ",", sp + "in", sp + "is",
                                     sp + "was", sp + "he", sp + "she", sp + "it", "er", "in", "th", "an", "on",
                                     "re", "ed", "ing", sp + "Once", sp + "upon", sp + "time", sp + "there"};
  for (char c = 'a'; c <= 'z'; ++c) pieces.push_back(std::string(1, c));
  for (char c = 'A'; c <= 'Z'; ++c) pieces.push_back(std::string(1, c));
  for (char c = 'a'; c <= 'z'; ++c) pieces.push_back(sp + c);
  for (char c = 'A'; c <= 'Z'; ++c) pieces.push_back(sp + c);
  for (char a = 'a'; a <= 'z'; ++a)
    for (char b = 'a'; b <= 'z'; ++b) pieces.push_back(std::string{a, b});
  std::set<std::string> seen;
  int rank = 0;
  for (const auto& p : pieces) {
    if (int(v.tokens.size()) >= n) break;
    if (!seen.insert(p).second) continue;
    add(p, -float(rank++), 1);
  }
  for (int i = 0; int(v.tokens.size()) < n; ++i) add("<extra_" + std::to_string(i) + ">", -float(rank++), 1);
  return v;
}

void write_tiny_llama(const std::string& path, const TinyLlamaOptions& o) {
  const std::string arch = tiny_arch_name(o.arch);
  if (o.n_layer <= 0 || o.d_model <= 0 || o.n_head <= 0 || o.n_kv_head <= 0 || o.head_dim <= 0 || o.ffn <= 0) {
    throw Error("write_tiny_llama: all sizes must be positive");
  }
  if (o.n_head % o.n_kv_head != 0) throw Error("write_tiny_llama: n_head must be a multiple of n_kv_head");
  if (o.arch != TinyArch::qwen3 && o.n_head * o.head_dim != o.d_model) {
    throw Error("write_tiny_llama: " + arch + " needs n_head * head_dim == d_model");
  }
  const uint64_t d = uint64_t(o.d_model), q_dim = uint64_t(o.n_head * o.head_dim),
                 kv_dim = uint64_t(o.n_kv_head * o.head_dim), ffn = uint64_t(o.ffn), vocab = uint64_t(o.vocab);
  const TinyVocab tv = make_tiny_vocab(o.vocab);

  GgufWriter w(GgufWriterOptions{o.gguf_version, o.alignment, true});
  w.add_string("general.architecture", arch);
  w.add_string("general.name", "tiny-random-" + arch);
  w.add_u32(arch + ".block_count", uint32_t(o.n_layer));
  w.add_u32(arch + ".context_length", uint32_t(o.context_length));
  w.add_u32(arch + ".embedding_length", uint32_t(d));
  w.add_u32(arch + ".feed_forward_length", uint32_t(ffn));
  w.add_u32(arch + ".attention.head_count", uint32_t(o.n_head));
  w.add_u32(arch + ".attention.head_count_kv", uint32_t(o.n_kv_head));
  w.add_f32(arch + ".attention.layer_norm_rms_epsilon", o.rms_eps);
  w.add_f32(arch + ".rope.freq_base", o.rope_freq_base);
  w.add_u32(arch + ".rope.dimension_count", uint32_t(o.head_dim));
  w.add_u32(arch + ".attention.key_length", uint32_t(o.head_dim));
  w.add_u32(arch + ".attention.value_length", uint32_t(o.head_dim));
  w.add_u32(arch + ".vocab_size", uint32_t(vocab));
  w.add_string("tokenizer.ggml.model", "llama");
  w.add_string("tokenizer.ggml.pre", "default");
  w.add_string_array("tokenizer.ggml.tokens", tv.tokens);
  w.add_f32_array("tokenizer.ggml.scores", tv.scores);
  w.add_i32_array("tokenizer.ggml.token_type", tv.token_types);
  w.add_u32("tokenizer.ggml.unknown_token_id", 0);
  w.add_u32("tokenizer.ggml.bos_token_id", 1);
  w.add_u32("tokenizer.ggml.eos_token_id", 2);
  w.add_bool("tokenizer.ggml.add_bos_token", true);
  w.add_bool("tokenizer.ggml.add_eos_token", false);

  Rng rng(o.seed);
  // Matrices ~ N(0, 1/fan_in) keep activations O(1) through the layers;
  // norm weights ~ 1 + N(0, 0.1^2).
  auto matrix = [&](uint64_t fan_in, uint64_t n_el) {
    std::vector<float> v(n_el);
    const double s = 1.0 / std::sqrt(double(fan_in));
    for (auto& x : v) x = float(rng.normal() * s);
    return v;
  };
  auto norm = [&](uint64_t n) {
    std::vector<float> v(n);
    for (auto& x : v) x = float(1.0 + 0.1 * rng.normal());
    return v;
  };
  auto small = [&](uint64_t n) {
    std::vector<float> v(n);
    for (auto& x : v) x = float(0.1 * rng.normal());
    return v;
  };
  const ops::TensorType wt = o.weight_type;
  const ops::TensorType f32 = ops::TensorType::F32;
  w.add_tensor("token_embd.weight", {d, vocab}, wt, matrix(1, d * vocab));
  for (int l = 0; l < o.n_layer; ++l) {
    const std::string b = "blk." + std::to_string(l) + ".";
    w.add_tensor(b + "attn_norm.weight", {d}, f32, norm(d));
    w.add_tensor(b + "attn_q.weight", {d, q_dim}, wt, matrix(d, d * q_dim));
    w.add_tensor(b + "attn_k.weight", {d, kv_dim}, wt, matrix(d, d * kv_dim));
    w.add_tensor(b + "attn_v.weight", {d, kv_dim}, wt, matrix(d, d * kv_dim));
    if (o.arch == TinyArch::qwen2) {
      w.add_tensor(b + "attn_q.bias", {q_dim}, f32, small(q_dim));
      w.add_tensor(b + "attn_k.bias", {kv_dim}, f32, small(kv_dim));
      w.add_tensor(b + "attn_v.bias", {kv_dim}, f32, small(kv_dim));
    }
    if (o.arch == TinyArch::qwen3) {
      w.add_tensor(b + "attn_q_norm.weight", {uint64_t(o.head_dim)}, f32, norm(uint64_t(o.head_dim)));
      w.add_tensor(b + "attn_k_norm.weight", {uint64_t(o.head_dim)}, f32, norm(uint64_t(o.head_dim)));
    }
    w.add_tensor(b + "attn_output.weight", {q_dim, d}, wt, matrix(q_dim, q_dim * d));
    w.add_tensor(b + "ffn_norm.weight", {d}, f32, norm(d));
    w.add_tensor(b + "ffn_gate.weight", {d, ffn}, wt, matrix(d, d * ffn));
    w.add_tensor(b + "ffn_up.weight", {d, ffn}, wt, matrix(d, d * ffn));
    w.add_tensor(b + "ffn_down.weight", {ffn, d}, wt, matrix(ffn, ffn * d));
  }
  w.add_tensor("output_norm.weight", {d}, f32, norm(d));
  if (!o.tied_output) w.add_tensor("output.weight", {d, vocab}, wt, matrix(d, d * vocab));
  w.write(path);
}

}  // namespace turbokv::testing
