// End-to-end generation through every KV cache scheme (issue 4), and the
// regression guard on the quality the schemes reach on the shared model
// (issue 6): the real runtime, real caches, greedy decoding.
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "eval/evaluator.h"
#include "kv/registry.h"
#include "kv/scheme.h"
#include "model/model.h"
#include "support/tiny_llama.h"
#include "tokenizer/tokenizer.h"
#include "util/error.h"

namespace turbokv {
namespace {

std::string shared(const std::string& rel) { return std::string(TURBOKV_SHARED_DATA) + "/" + rel; }

struct Greedy {
  std::vector<int32_t> tokens;   // generated
  std::vector<float> margins;    // top-1 minus top-2 logit at each step
};

// Greedy decoding straight through Model::forward: one prefill batch, then
// one decode step per token.
Greedy greedy(const model::Model& m, const std::vector<int32_t>& prompt, int n, const std::string& scheme,
              ThreadPool& pool) {
  auto cache = kv::make_kv_cache(scheme, m.cache_shape(int(prompt.size()) + n));
  model::Scratch scratch(m.config(), int(prompt.size()));
  const int nv = m.config().n_vocab;
  std::vector<float> logits(static_cast<size_t>(nv));
  m.forward(prompt.data(), int(prompt.size()), *cache, kv::Phase::Prefill, model::LogitsMode::Last, logits.data(),
            scratch, pool);
  Greedy g;
  for (int i = 0; i < n; ++i) {
    const auto top = std::max_element(logits.begin(), logits.end());
    float second = -INFINITY;
    for (auto it = logits.begin(); it != logits.end(); ++it) {
      if (it != top) second = std::max(second, *it);
    }
    g.margins.push_back(*top - second);
    const int32_t tok = int32_t(top - logits.begin());
    g.tokens.push_back(tok);
    m.forward(&tok, 1, *cache, kv::Phase::Decode, model::LogitsMode::Last, logits.data(), scratch, pool);
  }
  return g;
}

TEST(SchemeGeneration, EveryListedSchemeRunsOnTinyModels) {
  ThreadPool pool(2);
  for (int head_dim : {16, 64}) {
    testing::TinyLlamaOptions o;
    o.head_dim = head_dim;
    o.d_model = 4 * head_dim;
    o.n_head = 4;
    o.n_kv_head = 2;
    const std::string path = ::testing::TempDir() + "/scheme_tiny_" + std::to_string(::getpid()) + "_" + std::to_string(head_dim) + ".gguf";
    testing::write_tiny_llama(path, o);
    auto m = model::Model::load(path);
    const std::vector<int32_t> prompt{1, 100, 200, 150, 120, 90, 260, 300};
    for (const auto& name : kv::listed_schemes()) {
      const kv::SchemeSpec spec = kv::parse_scheme(name);
      auto serves = [&](const kv::StreamSpec& st) {
        return st.kind != kv::StreamKind::Codec ||
               !codec::spec_problem(kv::SchemeSpec::resolve_codec(st, head_dim), head_dim);
      };
      if (!serves(spec.key) || !serves(spec.value)) {
        // It must say so when the cache is built, naming the head size.
        try {
          kv::make_kv_cache(name, m->cache_shape(64));
          ADD_FAILURE() << name << " accepted head size " << head_dim;
        } catch (const Error& e) {
          EXPECT_NE(std::string(e.what()).find("head size"), std::string::npos) << e.what();
        }
        continue;
      }
      const Greedy a = greedy(*m, prompt, 24, name, pool);
      const Greedy b = greedy(*m, prompt, 24, name, pool);
      EXPECT_EQ(a.tokens, b.tokens) << name << " is not deterministic";
      for (int32_t t : a.tokens) ASSERT_TRUE(t >= 0 && t < m->config().n_vocab) << name;
    }
    std::filesystem::remove(path);
  }
}

class RealModel : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    model_ = model::Model::load(shared("models/tq-tiny-hd128.gguf")).release();
    tok_ = tokenizer::load_tokenizer(model_->gguf()).release();
  }
  static void TearDownTestSuite() {
    delete tok_;
    delete model_;
  }
  static model::Model* model_;
  static tokenizer::Tokenizer* tok_;
};
model::Model* RealModel::model_ = nullptr;
tokenizer::Tokenizer* RealModel::tok_ = nullptr;

TEST_F(RealModel, EveryListedSchemeGeneratesText) {
  ThreadPool pool(2);
  const auto prompt = tok_->encode("It was a dark and stormy night", true, false);
  for (const auto& name : kv::listed_schemes()) {
    const Greedy g = greedy(*model_, prompt, 16, name, pool);
    const std::string text = tok_->decode(g.tokens);
    // Real words, not a collapse into one repeated token.
    std::vector<int32_t> distinct = g.tokens;
    std::sort(distinct.begin(), distinct.end());
    distinct.erase(std::unique(distinct.begin(), distinct.end()), distinct.end());
    EXPECT_GE(distinct.size(), 6u) << name << ": " << text;
  }
}

// Greedy decoding through compressed caches against FP16 on the golden
// prompts, 32 tokens. turbo8 matches exactly on all three prompts and
// turbo0v4 on the first two (issue 4's criterion). Elsewhere turbo0v4 and
// turbo4 may leave FP16 only at a near-tie of FP16's own, where its top-2
// logits are closer than kNearTie: their logit errors are a few hundredths (turbo0v4's KLD of
// 0.0009 nats is an error of about 0.04 logits), so such calls can go either
// way, and 8-bit affine flips one of them too. Measured with the submitted
// defaults: turbo0v4 matches 32 tokens on the first two prompts and leaves
// FP16 at token 28 of the third (margin 0.084); turbo4 leaves at token 25
// of the first (margin 0.050) and token 10 of the second (margin 0.026).
// Without the FP16 window and the near tier (`window=0:near=0`) turbo0v4
// leaves at token 20 of the first (margin 0.065) and token 1 of the second
// (margin 0.036).
TEST_F(RealModel, CompressedCachesFollowFp16Greedy) {
  constexpr float kNearTie = 0.1f;  // logits
  ThreadPool pool(2);
  for (const char* text : {"It was a dark and stormy night", "The old man looked at the sea", "CHAPTER I"}) {
    const auto prompt = tok_->encode(text, true, false);
    const Greedy ref = greedy(*model_, prompt, 32, "fp16", pool);
    for (const char* scheme : {"turbo8", "turbo0v4", "turbo4", "turbo0v4:window=0:near=0"}) {
      const Greedy g = greedy(*model_, prompt, 32, scheme, pool);
      size_t k = 0;
      while (k < 32 && g.tokens[k] == ref.tokens[k]) ++k;
      std::printf("%s on '%s': first difference at token %zu (FP16 margin %.4f)\n", scheme, text, k,
                  k < 32 ? ref.margins[k] : 0.0f);
      const bool exact = std::string(scheme) == "turbo8" ||
                         (std::string(scheme) == "turbo0v4" && std::string(text) != "CHAPTER I");
      if (exact) {
        EXPECT_EQ(k, 32u) << scheme << " left FP16 at token " << k << " of '" << text << "'";
      } else if (k < 32) {
        EXPECT_LT(ref.margins[k], kNearTie) << scheme << " left FP16 at a confident token " << k << " of '" << text << "'";
      }
    }
  }
}

// Issue 6's regression guard: the KL divergence from FP16 that the default
// schemes reach on the shared model (strict mode, as llama.cpp measures its
// caches), with a 1.5x margin over what was measured on these 2 chunks
// (turbo0v4 0.00055, turbo4 0.00387, turbo3 0.0134, affine4 0.0432). The
// turbo3 and turbo4 bounds are also issue 6's targets on 40 chunks (0.0251,
// and the stretch goal 0.0063).
TEST_F(RealModel, DefaultSchemesKeepTheirQuality) {
  ThreadPool pool(2);
  std::ifstream in(shared("text/gutenberg_holdout.txt"), std::ios::binary);
  ASSERT_TRUE(in) << "missing shared text";
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  text.resize(20000);
  const auto tokens = tok_->encode(text, true, false);
  eval::EvalOptions o;
  o.n_ctx = 512;
  o.n_chunks = 2;
  o.mode = eval::Mode::Strict;
  o.schemes = {"turbo0v4", "turbo4", "turbo3", "affine4"};
  const auto r = eval::evaluate(*model_, tokens, tok_->bos(), o, pool);
  ASSERT_EQ(r.results.size(), 5u);
  auto kld = [&](const std::string& s) {
    for (const auto& x : r.results) {
      if (x.scheme == s) return x.kld_mean;
    }
    ADD_FAILURE() << s;
    return 1.0;
  };
  std::printf("measured KLD: turbo0v4 %.6f turbo4 %.6f turbo3 %.6f affine4 %.6f\n", kld("turbo0v4"),
              kld("turbo4"), kld("turbo3"), kld("affine4"));
  EXPECT_LT(kld("turbo0v4"), 0.00082);
  EXPECT_LT(kld("turbo4"), 0.0058);
  EXPECT_LT(kld("turbo3"), 0.0201);
  // turbo4 beats MLX-style affine4 at fewer bits.
  EXPECT_LT(kld("turbo4"), kld("affine4"));
  for (const auto& x : r.results) {
    if (x.scheme == "turbo4") {
      EXPECT_LE(x.bits_per_element, 4.25);
    }
    if (x.scheme == "turbo3") {
      EXPECT_LE(x.bits_per_element, 3.25);
    }
  }
}

}  // namespace
}  // namespace turbokv
