// The fidelity evaluator (eval/evaluator.h) on a tiny random-weight model.
#include <unistd.h>

#include "eval/evaluator.h"
#include "kv/scheme.h"

#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "support/tiny_llama.h"
#include "util/error.h"
#include "util/rng.h"

namespace turbokv::eval {
namespace {

class EvaluatorTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    path_ = new std::string(::testing::TempDir() + "/eval_tiny_" + std::to_string(::getpid()) + ".gguf");
    testing::TinyLlamaOptions o;
    o.head_dim = 64;
    o.d_model = 256;
    o.n_head = 4;
    o.n_kv_head = 2;
    o.seed = 7;
    testing::write_tiny_llama(*path_, o);
    model_ = model::Model::load(*path_).release();
    Rng rng(3);
    tokens_ = new std::vector<int32_t>(200);
    for (auto& t : *tokens_) t = int32_t(3 + rng.next_u64() % uint64_t(model_->config().n_vocab - 3));
  }
  static void TearDownTestSuite() {
    delete model_;
    delete tokens_;
    std::filesystem::remove(*path_);
    delete path_;
  }
  static EvalResult run(Mode mode, std::vector<std::string> schemes, int n_ctx = 32, int chunks = 3) {
    ThreadPool pool(2);
    EvalOptions o;
    o.n_ctx = n_ctx;
    o.n_chunks = chunks;
    o.mode = mode;
    o.schemes = std::move(schemes);
    return evaluate(*model_, *tokens_, 1, o, pool);
  }
  static std::string* path_;
  static model::Model* model_;
  static std::vector<int32_t>* tokens_;
};
std::string* EvaluatorTest::path_ = nullptr;
model::Model* EvaluatorTest::model_ = nullptr;
std::vector<int32_t>* EvaluatorTest::tokens_ = nullptr;

TEST(KlDivergence, MatchesTheDefinition) {
  const float p[] = {1.0f, 2.0f, 0.5f}, q[] = {0.3f, 2.5f, 0.1f};
  double zp = 0, zq = 0;
  for (int i = 0; i < 3; ++i) { zp += std::exp(double(p[i])); zq += std::exp(double(q[i])); }
  double want = 0;
  for (int i = 0; i < 3; ++i) {
    const double pi = std::exp(double(p[i])) / zp, qi = std::exp(double(q[i])) / zq;
    want += pi * std::log(pi / qi);
  }
  EXPECT_NEAR(kl_divergence(p, q, 3), want, 1e-12);
  EXPECT_EQ(kl_divergence(p, p, 3), 0.0);
}

TEST_F(EvaluatorTest, Fp16AgainstItselfIsExact) {
  for (Mode mode : {Mode::Deploy, Mode::Strict}) {
    const EvalResult r = run(mode, {"fp16"});
    ASSERT_EQ(r.results.size(), 1u);  // the baseline, not repeated
    const SchemeResult& b = r.results[0];
    EXPECT_EQ(b.kld_mean, 0.0);
    EXPECT_EQ(b.kld_max, 0.0);
    EXPECT_EQ(b.top1_pct, 100.0);
    EXPECT_EQ(b.delta_ppl_pct, 0.0);
    EXPECT_EQ(r.tokens_scored, 3 * (32 - 1 - 16));
  }
}

TEST_F(EvaluatorTest, PerturbingSchemesHavePositiveKld) {
  const EvalResult r = run(Mode::Strict, {"f32", "turbo2", "turbo4"});
  ASSERT_EQ(r.results.size(), 4u);
  EXPECT_GT(r.results[2].kld_mean, 0.0);  // turbo2
  EXPECT_GT(r.results[3].kld_mean, 0.0);  // turbo4
  EXPECT_GT(r.results[2].kld_mean, r.results[3].kld_mean);  // fewer bits, more divergence
  EXPECT_LT(r.results[1].kld_mean, 1e-6);  // f32 vs fp16: rounding only
  for (const auto& s : r.results) {
    EXPECT_GE(s.kld_max, s.kld_p99);
    EXPECT_GE(s.kld_p99, 0.0);
    EXPECT_LE(s.top1_pct, 100.0);
  }
}

// Deploy mode must run the real decode path over the compressed cache: the
// cache encodes positions [0, first] at the first decode step and one more
// per step, ctx - 1 tokens per chunk; strict encodes the whole chunk. The
// newest kTurboWindow tokens of each chunk stay raw in both.
TEST_F(EvaluatorTest, DeployModeRunsTheDecodePath) {
  const EvalResult deploy = run(Mode::Deploy, {"turbo4"});
  EXPECT_EQ(deploy.results[1].tokens_encoded, 3 * (32 - 1 - kv::kTurboWindow));
  const EvalResult strict = run(Mode::Strict, {"turbo4"});
  EXPECT_EQ(strict.results[1].tokens_encoded, 3 * (32 - kv::kTurboWindow));
  EXPECT_EQ(deploy.results[0].tokens_encoded, 0);  // fp16 encodes nothing
  // Different paths, different (but both perturbed) distributions.
  EXPECT_NE(deploy.results[1].kld_mean, strict.results[1].kld_mean);
}

TEST_F(EvaluatorTest, JsonSchemaIsStable) {
  const EvalResult r = run(Mode::Deploy, {"turbo4"});
  const auto j = nlohmann::json::parse(to_json(r, "m.gguf", "t.txt"));
  for (const char* key : {"model", "text", "ctx", "chunks", "mode", "tokens_scored", "results"}) {
    EXPECT_TRUE(j.contains(key)) << key;
  }
  EXPECT_EQ(j["mode"], "deploy");
  ASSERT_EQ(j["results"].size(), 2u);
  for (const auto& row : j["results"]) {
    for (const char* key : {"scheme", "bits_per_element", "kv_bytes", "ppl", "ppl_stderr", "delta_ppl_pct",
                            "kld_mean", "kld_p99", "kld_max", "top1_pct"}) {
      EXPECT_TRUE(row.contains(key)) << key;
    }
  }
  EXPECT_EQ(j["results"][0]["scheme"], "fp16");
}

TEST_F(EvaluatorTest, PlotIsAnSvgWithOnePointPerScheme) {
  const EvalResult r = run(Mode::Strict, {"turbo4", "turbo2"});
  const std::string path = ::testing::TempDir() + "/eval_plot_" + std::to_string(::getpid()) + ".svg";
  write_plot_svg(r, "tiny <test>", path);
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string svg = ss.str();
  EXPECT_EQ(svg.rfind("<svg", 0), 0u);
  size_t points = 0;
  for (size_t at = 0; (at = svg.find("<circle", at)) != std::string::npos; ++at) ++points;
  EXPECT_EQ(points, 3u);
  EXPECT_NE(svg.find("tiny &lt;test&gt;"), std::string::npos);  // escaped
  std::filesystem::remove(path);
}

TEST_F(EvaluatorTest, BadInputIsAClearError) {
  EXPECT_THROW(parse_mode("fast"), Error);
  EXPECT_THROW(run(Mode::Deploy, {"turbo5"}), Error);   // bad scheme, before any work
  EXPECT_THROW(run(Mode::Deploy, {"fp16"}, 150), Error);  // fewer than 2 chunks of text
}

}  // namespace
}  // namespace turbokv::eval
