// Reading the real models in shared/data (metadata per PROVENANCE.md).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>

#include "io/gguf.h"
#include "ops/tensor_type.h"
#include "util/fp16.h"

namespace turbokv::io {
namespace {

std::string model(const char* name) { return std::string(TURBOKV_SHARED_DATA) + "/models/" + name; }

TEST(GgufRealModels, TqTinyHd128) {
  const std::string path = model("tq-tiny-hd128.gguf");
  if (!std::filesystem::exists(path)) GTEST_SKIP() << path << " not present";
  auto f = GgufFile::open(path);
  EXPECT_EQ(f->version(), 3u);
  EXPECT_EQ(f->alignment(), 32u);
  EXPECT_EQ(f->metadata().size(), 22u);
  EXPECT_EQ(f->get_string("general.architecture"), "llama");
  EXPECT_EQ(f->get_string("general.name"), "tq-tiny-hd128");
  EXPECT_EQ(f->get_u32("llama.block_count"), 5u);
  EXPECT_EQ(f->get_u32("llama.embedding_length"), 512u);
  EXPECT_EQ(f->get_u32("llama.feed_forward_length"), 1024u);
  EXPECT_EQ(f->get_u32("llama.attention.head_count"), 4u);
  EXPECT_EQ(f->get_u32("llama.attention.head_count_kv"), 2u);
  EXPECT_EQ(f->get_u32("llama.rope.dimension_count"), 128u);
  EXPECT_EQ(f->get_u32("llama.context_length"), 1024u);
  EXPECT_FLOAT_EQ(f->get_f32("llama.rope.freq_base"), 10000.0f);
  EXPECT_FLOAT_EQ(f->get_f32("llama.attention.layer_norm_rms_epsilon"), 1e-5f);
  EXPECT_EQ(f->get_string("tokenizer.ggml.model"), "llama");
  const auto tokens = f->get_string_array("tokenizer.ggml.tokens");
  ASSERT_EQ(tokens.size(), 4096u);
  EXPECT_EQ(tokens[0], "<unk>");
  EXPECT_EQ(tokens[1], "<s>");
  EXPECT_EQ(tokens[3], "<0x00>");
  EXPECT_EQ(f->get_f32_array("tokenizer.ggml.scores").size(), 4096u);
  const auto types = f->get_i32_array("tokenizer.ggml.token_type");
  ASSERT_EQ(types.size(), 4096u);
  EXPECT_EQ(types[0], 2);
  EXPECT_EQ(types[1], 3);
  EXPECT_EQ(types[3], 6);
  EXPECT_EQ(f->get_u32("tokenizer.ggml.bos_token_id"), 1u);
  EXPECT_TRUE(f->get_bool("tokenizer.ggml.add_bos_token"));
  EXPECT_FALSE(f->get_bool("tokenizer.ggml.add_eos_token"));

  // 47 tensors: embedding, output_norm, 9 per layer; tied output (no output.weight).
  EXPECT_EQ(f->tensors().size(), 47u);
  EXPECT_EQ(f->find_tensor("output.weight"), nullptr);
  const auto& emb = f->tensor("token_embd.weight");
  EXPECT_EQ(emb.type, ops::TensorType::F16);
  EXPECT_EQ(emb.shape, (std::vector<uint64_t>{512, 4096}));
  EXPECT_EQ(f->tensor("output_norm.weight").type, ops::TensorType::F32);
  for (int l = 0; l < 5; ++l) {
    const std::string b = "blk." + std::to_string(l) + ".";
    EXPECT_EQ(f->tensor(b + "attn_q.weight").shape, (std::vector<uint64_t>{512, 512}));
    EXPECT_EQ(f->tensor(b + "attn_k.weight").shape, (std::vector<uint64_t>{512, 256}));
    EXPECT_EQ(f->tensor(b + "attn_v.weight").shape, (std::vector<uint64_t>{512, 256}));
    EXPECT_EQ(f->tensor(b + "attn_output.weight").shape, (std::vector<uint64_t>{512, 512}));
    EXPECT_EQ(f->tensor(b + "ffn_gate.weight").shape, (std::vector<uint64_t>{512, 1024}));
    EXPECT_EQ(f->tensor(b + "ffn_up.weight").shape, (std::vector<uint64_t>{512, 1024}));
    EXPECT_EQ(f->tensor(b + "ffn_down.weight").shape, (std::vector<uint64_t>{1024, 512}));
    EXPECT_EQ(f->tensor(b + "attn_norm.weight").shape, (std::vector<uint64_t>{512}));
    EXPECT_EQ(f->tensor(b + "ffn_norm.weight").shape, (std::vector<uint64_t>{512}));
    EXPECT_EQ(f->tensor(b + "attn_q.weight").type, ops::TensorType::F16);
  }
  uint64_t params = 0;
  for (const auto& t : f->tensors()) params += t.n_elements();
  EXPECT_NEAR(double(params), 13.9e6, 0.1e6);
  // Norm weights are finite and mostly near 1 after training.
  const auto& norm = f->tensor("output_norm.weight");
  float w0;
  std::memcpy(&w0, f->tensor_data(norm), 4);
  EXPECT_TRUE(std::isfinite(w0));
}

TEST(GgufRealModels, Stories260K) {
  const std::string path = model("stories260K.gguf");
  if (!std::filesystem::exists(path)) GTEST_SKIP() << path << " not present";
  auto f = GgufFile::open(path);
  EXPECT_EQ(f->version(), 3u);
  EXPECT_EQ(f->metadata().size(), 19u);
  EXPECT_EQ(f->tensors().size(), 48u);
  EXPECT_EQ(f->get_string("general.architecture"), "llama");
  EXPECT_EQ(f->get_string("general.name"), "llama");
  EXPECT_EQ(f->get_u32("llama.block_count"), 5u);
  EXPECT_EQ(f->get_u32("llama.attention.head_count"), 8u);
  EXPECT_EQ(f->get_u32("llama.attention.head_count_kv"), 4u);
  EXPECT_EQ(f->get_u32("llama.embedding_length"), 64u);
  EXPECT_EQ(f->get_u32("llama.feed_forward_length"), 172u);
  EXPECT_EQ(f->get_u32("llama.context_length"), 2048u);
  EXPECT_EQ(f->get_u32("llama.rope.dimension_count"), 8u);
  EXPECT_FALSE(f->has("llama.rope.freq_base"));
  EXPECT_FLOAT_EQ(f->get_f32_or("llama.rope.freq_base", 10000.0f), 10000.0f);
  EXPECT_FLOAT_EQ(f->get_f32("llama.attention.layer_norm_rms_epsilon"), 1e-5f);
  EXPECT_EQ(f->get_string("tokenizer.ggml.model"), "llama");
  EXPECT_EQ(f->get_string_array("tokenizer.ggml.tokens").size(), 512u);
  EXPECT_EQ(f->get_u32("tokenizer.ggml.bos_token_id"), 1u);
  EXPECT_EQ(f->get_u32("tokenizer.ggml.eos_token_id"), 2u);
  EXPECT_EQ(f->get_u32("tokenizer.ggml.unknown_token_id"), 0u);
  for (const auto& t : f->tensors()) EXPECT_EQ(t.type, ops::TensorType::F32) << t.name;
  EXPECT_EQ(f->tensor("token_embd.weight").shape, (std::vector<uint64_t>{64, 512}));
  EXPECT_EQ(f->tensor("blk.0.attn_q.weight").shape, (std::vector<uint64_t>{64, 64}));
  EXPECT_EQ(f->tensor("blk.0.attn_k.weight").shape, (std::vector<uint64_t>{64, 32}));
  EXPECT_EQ(f->tensor("blk.0.attn_v.weight").shape, (std::vector<uint64_t>{64, 32}));
  EXPECT_EQ(f->tensor("blk.4.attn_output.weight").shape, (std::vector<uint64_t>{64, 64}));
  EXPECT_EQ(f->tensor("blk.4.ffn_gate.weight").shape, (std::vector<uint64_t>{64, 172}));
  EXPECT_EQ(f->tensor("blk.4.ffn_up.weight").shape, (std::vector<uint64_t>{64, 172}));
  EXPECT_EQ(f->tensor("blk.4.ffn_down.weight").shape, (std::vector<uint64_t>{172, 64}));
  // output.weight is an untied copy equal to token_embd.weight.
  const auto& out = f->tensor("output.weight");
  const auto& emb = f->tensor("token_embd.weight");
  ASSERT_EQ(out.n_bytes, emb.n_bytes);
  EXPECT_EQ(std::memcmp(f->tensor_data(out), f->tensor_data(emb), emb.n_bytes), 0);
}

TEST(GgufRealModels, VocabOnlyFilesHaveNoTensors) {
  const std::string path = std::string(TURBOKV_SHARED_DATA) + "/vocab/ggml-vocab-llama-spm.gguf";
  if (!std::filesystem::exists(path)) GTEST_SKIP() << path << " not present";
  auto f = GgufFile::open(path);
  EXPECT_TRUE(f->tensors().empty());
  EXPECT_EQ(f->get_string_array("tokenizer.ggml.tokens").size(), 32000u);
  EXPECT_EQ(f->get_u32("llama.block_count"), 32u);
}

}  // namespace
}  // namespace turbokv::io
