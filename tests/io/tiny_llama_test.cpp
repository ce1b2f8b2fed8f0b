// The tiny random models written for other suites read back with the
// metadata and tensors the model loader expects.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>

#include "io/gguf.h"
#include "support/tiny_llama.h"
#include "test_util.h"

namespace turbokv::testing {
namespace {

TEST(TinyLlama, LlamaDefaults) {
  const std::string path = temp_path("tiny.gguf");
  write_tiny_llama(path);
  auto f = io::GgufFile::open(path);
  EXPECT_EQ(f->get_string("general.architecture"), "llama");
  EXPECT_EQ(f->get_u32("llama.block_count"), 2u);
  EXPECT_EQ(f->get_u32("llama.embedding_length"), 64u);
  EXPECT_EQ(f->get_u32("llama.attention.head_count"), 4u);
  EXPECT_EQ(f->get_u32("llama.attention.head_count_kv"), 2u);
  EXPECT_EQ(f->get_u32("llama.attention.key_length"), 16u);
  EXPECT_EQ(f->get_u32("llama.rope.dimension_count"), 16u);
  EXPECT_FLOAT_EQ(f->get_f32("llama.rope.freq_base"), 10000.0f);
  const auto tokens = f->get_string_array("tokenizer.ggml.tokens");
  ASSERT_EQ(tokens.size(), 320u);
  EXPECT_EQ(tokens[0], "<unk>");
  EXPECT_EQ(tokens[2], "</s>");
  EXPECT_EQ(tokens[3], "<0x00>");
  EXPECT_EQ(tokens[258], "<0xFF>");
  EXPECT_EQ(tokens[259], "\xE2\x96\x81");
  EXPECT_EQ(f->get_f32_array("tokenizer.ggml.scores").size(), 320u);
  EXPECT_EQ(f->get_i32_array("tokenizer.ggml.token_type")[3], 6);
  EXPECT_EQ(f->tensor("token_embd.weight").shape, (std::vector<uint64_t>{64, 320}));
  EXPECT_EQ(f->tensor("blk.1.attn_k.weight").shape, (std::vector<uint64_t>{64, 32}));
  EXPECT_EQ(f->tensor("blk.1.ffn_down.weight").shape, (std::vector<uint64_t>{128, 64}));
  EXPECT_EQ(f->find_tensor("output.weight"), nullptr);
  EXPECT_EQ(f->tensors().size(), 2u + 2u * 9u);
  f.reset();
  std::filesystem::remove(path);
}

TEST(TinyLlama, Qwen2AndQwen3Tensors) {
  TinyLlamaOptions o;
  o.arch = TinyArch::qwen2;
  o.weight_type = ops::TensorType::Q8_0;
  o.tied_output = false;
  const std::string p2 = temp_path("qwen2.gguf");
  write_tiny_llama(p2, o);
  auto f2 = io::GgufFile::open(p2);
  EXPECT_EQ(f2->get_u32("qwen2.block_count"), 2u);
  EXPECT_EQ(f2->tensor("blk.0.attn_q.bias").shape, (std::vector<uint64_t>{64}));
  EXPECT_EQ(f2->tensor("blk.0.attn_k.bias").shape, (std::vector<uint64_t>{32}));
  EXPECT_EQ(f2->tensor("blk.0.attn_q.weight").type, ops::TensorType::Q8_0);
  EXPECT_EQ(f2->tensor("output.weight").shape, (std::vector<uint64_t>{64, 320}));

  o.arch = TinyArch::qwen3;
  o.head_dim = 32;  // n_head * head_dim = 128 != d_model = 64, as Qwen3 allows
  o.weight_type = ops::TensorType::Q4_0;
  const std::string p3 = temp_path("qwen3.gguf");
  write_tiny_llama(p3, o);
  auto f3 = io::GgufFile::open(p3);
  EXPECT_EQ(f3->tensor("blk.1.attn_q_norm.weight").shape, (std::vector<uint64_t>{32}));
  EXPECT_EQ(f3->tensor("blk.1.attn_q.weight").shape, (std::vector<uint64_t>{64, 128}));
  EXPECT_EQ(f3->tensor("blk.1.attn_output.weight").shape, (std::vector<uint64_t>{128, 64}));
  EXPECT_EQ(f3->get_u32("qwen3.attention.key_length"), 32u);
  f2.reset();
  f3.reset();
  std::filesystem::remove(p2);
  std::filesystem::remove(p3);
}

TEST(TinyLlama, DeterministicPerSeedAndRejectsBadShapes) {
  const std::string a = temp_path("a.gguf"), b = temp_path("b.gguf"), c = temp_path("c.gguf");
  TinyLlamaOptions o;
  o.weight_type = ops::TensorType::F16;
  write_tiny_llama(a, o);
  write_tiny_llama(b, o);
  o.seed = 2;
  write_tiny_llama(c, o);
  auto fa = io::GgufFile::open(a), fb = io::GgufFile::open(b), fc = io::GgufFile::open(c);
  const auto& ta = fa->tensor("blk.0.attn_q.weight");
  EXPECT_EQ(std::memcmp(fa->tensor_data(ta), fb->tensor_data(fb->tensor("blk.0.attn_q.weight")), ta.n_bytes), 0);
  EXPECT_NE(std::memcmp(fa->tensor_data(ta), fc->tensor_data(fc->tensor("blk.0.attn_q.weight")), ta.n_bytes), 0);
  for (const auto& p : {a, b, c}) std::filesystem::remove(p);

  TinyLlamaOptions bad;
  bad.ffn = 100;
  bad.weight_type = ops::TensorType::Q4_0;
  EXPECT_THROW(write_tiny_llama(temp_path("bad.gguf"), bad), Error);
  TinyLlamaOptions bad2;
  bad2.vocab = 100;
  EXPECT_THROW(write_tiny_llama(temp_path("bad2.gguf"), bad2), Error);
}

}  // namespace
}  // namespace turbokv::testing
