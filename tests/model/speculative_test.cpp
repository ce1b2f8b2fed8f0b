// Speculative decoding (model/speculative.h) and prompt-cache sessions:
// greedy output with a draft equals greedy output without one, for every KV
// scheme, on tiny random models and on tq-tiny-hd128 + tq-tiny-draft; the
// sampled acceptance rule keeps the target's distribution; the CLI flags.
#include <unistd.h>

#include "support/run_cli.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "kv/registry.h"
#include "kv/turbo_cache.h"
#include "model/generate.h"
#include "model/model.h"
#include "model/sampling.h"
#include "model/speculative.h"
#include "support/tiny_llama.h"
#include "tokenizer/tokenizer.h"
#include "util/error.h"
#include "util/rng.h"

namespace turbokv::model {
namespace {

const std::vector<std::string> kSchemes = {"fp16", "f32", "affine4", "turbo0v4", "turbo4", "turbo3", "turbo4v2"};

std::string temp_path(const std::string& name) {
  return (std::filesystem::path(::testing::TempDir()) / ("turbokv_spec_" + std::to_string(::getpid()) + "_" + name)).string();
}

std::string model_path(const char* name) { return std::string(TURBOKV_SOURCE_DIR) + "/models/" + name; }

struct GenRun {
  std::vector<int32_t> tokens;
  SpeculativeStats stats;
  std::unique_ptr<kv::KvCache> cache;  // the target's, after the run
};

GenerateCallbacks collect(std::vector<int32_t>& out) {
  GenerateCallbacks cb;
  cb.on_token = [&out](int32_t t) {
    out.push_back(t);
    return true;
  };
  return cb;
}

GenRun run_plain(const Model& m, const std::vector<int32_t>& prompt, int n, const std::string& scheme,
              const SamplingParams& sp, ThreadPool& pool) {
  GenRun r;
  r.cache = kv::make_kv_cache(scheme, m.cache_shape(int(prompt.size()) + n));
  Scratch scratch(m.config(), 64);
  Sampler sampler(sp, m.config().n_vocab);
  const GenerateStats st = generate(m, prompt, n, sampler, *r.cache, scratch, pool, collect(r.tokens));
  static_cast<GenerateStats&>(r.stats) = st;
  return r;
}

GenRun run_spec(const Model& target, const Model& draft, const std::vector<int32_t>& prompt, int n,
             const std::string& scheme, const std::string& draft_scheme, int n_draft, const SamplingParams& sp,
             ThreadPool& pool) {
  GenRun r;
  r.cache = kv::make_kv_cache(scheme, target.cache_shape(int(prompt.size()) + n));
  auto draft_cache = kv::make_kv_cache(draft_scheme, draft.cache_shape(int(prompt.size()) + n));
  Scratch ts(target.config(), 64), ds(draft.config(), 64);
  Sampler sampler(sp, target.config().n_vocab);
  r.stats = generate_speculative(target, draft, prompt, n, sampler, *r.cache, *draft_cache, ts, ds, pool,
                                 collect(r.tokens), SpeculativeParams{n_draft});
  return r;
}

SamplingParams greedy(float repeat_penalty = 1.0f) {
  SamplingParams sp;
  sp.temperature = 0.0f;
  sp.repeat_penalty = repeat_penalty;
  return sp;
}

// The target's cache really is the scheme asked for, and a compressed one
// encoded the verified tokens (the seed dropped the scheme on this path).
void expect_scheme_kept(const kv::KvCache& cache, const std::string& scheme, int n_tokens) {
  EXPECT_EQ(cache.scheme(), scheme);
  EXPECT_EQ(cache.n_tokens(), n_tokens);
  if (const auto* t = dynamic_cast<const kv::TurboKvCache*>(&cache)) {
    EXPECT_GT(t->tokens_encoded(), 0);
    for (int l = 0; l < cache.shape().n_layer; ++l) EXPECT_EQ(t->n_encoded(l), n_tokens - t->spec().window);
  }
}

// ---- tiny random models ----

testing::TinyLlamaOptions tiny_options(uint64_t seed) {
  testing::TinyLlamaOptions o;  // head_dim 64: every codec serves it
  o.d_model = 256;
  o.n_head = 4;
  o.n_kv_head = 2;
  o.head_dim = 64;
  o.ffn = 256;
  o.seed = seed;
  return o;
}

class TinySpeculative : public ::testing::TestWithParam<std::string> {
 protected:
  static void SetUpTestSuite() {
    testing::TinyLlamaOptions o = tiny_options(1);
    testing::write_tiny_llama(temp_path("target.gguf"), o);
    o.seed = 2;
    o.n_layer = 1;
    testing::write_tiny_llama(temp_path("other.gguf"), o);
  }
};

TEST_P(TinySpeculative, GreedyOutputEqualsPlainDecoding) {
  const std::string scheme = GetParam();
  auto target = Model::load(temp_path("target.gguf"));
  auto other = Model::load(temp_path("other.gguf"));
  ThreadPool pool(2);
  const std::vector<int32_t> prompt = {1, 40, 77, 120, 5, 260, 33, 90, 14};
  const int n = 40;
  struct DraftCase {
    const Model* draft;
    const char* draft_scheme;
    int n_draft;
    float penalty;
  };
  // The target as its own draft (everything accepted, bonus tokens), with a
  // lossier draft cache (some rejections), and an unrelated draft (mostly
  // rejected); a repetition penalty makes the history matter.
  for (const DraftCase c : {DraftCase{target.get(), "fp16", 4, 1.0f}, DraftCase{target.get(), "turbo3", 3, 1.3f},
                            DraftCase{other.get(), "fp16", 4, 1.0f}, DraftCase{other.get(), "turbo4", 1, 1.3f},
                            DraftCase{target.get(), "turbo3", 7, 1.0f}}) {
    SCOPED_TRACE(std::string("draft cache ") + c.draft_scheme + ", k " + std::to_string(c.n_draft));
    const GenRun plain = run_plain(*target, prompt, n, scheme, greedy(c.penalty), pool);
    const GenRun spec = run_spec(*target, *c.draft, prompt, n, scheme, c.draft_scheme, c.n_draft, greedy(c.penalty), pool);
    ASSERT_EQ(plain.tokens.size(), size_t(n));
    EXPECT_EQ(spec.tokens, plain.tokens);
    EXPECT_EQ(spec.stats.n_generated, n);
    EXPECT_GT(spec.stats.n_drafted, 0);
    expect_scheme_kept(*spec.cache, scheme, int(prompt.size()) + n - 1);
    if (c.draft == target.get() && std::string(c.draft_scheme) == "fp16" && scheme == "fp16") {
      EXPECT_GT(spec.stats.acceptance_rate(), 0.9);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(AllSchemes, TinySpeculative, ::testing::ValuesIn(kSchemes));

// Greedy equality rests on this: the target's logits for k+1 tokens verified
// in one batch equal, bit for bit, the logits of decoding them one at a time,
// deep into the context too (where attention splits the cache into chunks)
// and with a raw window.
TEST(TinySpeculativeEdges, VerificationBatchGivesTheLogitsOfSingleSteps) {
  testing::TinyLlamaOptions o = tiny_options(5);
  o.n_layer = 1;
  testing::write_tiny_llama(temp_path("long.gguf"), o);
  auto m = Model::load(temp_path("long.gguf"));
  ThreadPool pool(2);
  const int depth = 2500, k = 7, n_vocab = m->config().n_vocab;
  std::vector<int32_t> tokens(size_t(depth + k));
  Rng rng(9);
  for (auto& t : tokens) t = int32_t(rng.next_u64() % uint64_t(n_vocab));
  for (const char* scheme : {"fp16", "turbo4", "turbo3", "turbo0v4", "turbo4:window=4"}) {
    SCOPED_TRACE(scheme);
    auto batched = kv::make_kv_cache(scheme, m->cache_shape(depth + k));
    auto single = kv::make_kv_cache(scheme, m->cache_shape(depth + k));
    Scratch scratch(m->config(), 64);
    std::vector<float> logits(static_cast<size_t>(k) * n_vocab), one(static_cast<size_t>(n_vocab));
    for (kv::KvCache* c : {batched.get(), single.get()}) {
      m->forward(tokens.data(), depth - 1, *c, Phase::Prefill, LogitsMode::Last, one.data(), scratch, pool);
      m->forward(tokens.data() + depth - 1, 1, *c, Phase::Decode, LogitsMode::Last, one.data(), scratch, pool);
    }
    m->forward(tokens.data() + depth, k, *batched, Phase::Decode, LogitsMode::All, logits.data(), scratch, pool);
    for (int t = 0; t < k; ++t) {
      m->forward(tokens.data() + depth + t, 1, *single, Phase::Decode, LogitsMode::Last, one.data(), scratch, pool);
      ASSERT_EQ(one, std::vector<float>(logits.begin() + ptrdiff_t(t) * n_vocab, logits.begin() + ptrdiff_t(t + 1) * n_vocab))
          << "token " << t << " of the batch";
    }
  }
}

TEST(TinySpeculativeEdges, StopsAtContextAndShortRuns) {
  testing::TinyLlamaOptions o = tiny_options(3);
  testing::write_tiny_llama(temp_path("edge.gguf"), o);
  auto m = Model::load(temp_path("edge.gguf"));
  ThreadPool pool(1);
  const std::vector<int32_t> prompt = {1, 50, 60};
  for (int n : {0, 1, 2, 5}) {
    const GenRun plain = run_plain(*m, prompt, n, "turbo4", greedy(), pool);
    const GenRun spec = run_spec(*m, *m, prompt, n, "turbo4", "fp16", 4, greedy(), pool);
    EXPECT_EQ(spec.tokens, plain.tokens) << n;
  }
  // A context smaller than prompt + n: both stop at the same place.
  auto c1 = kv::make_kv_cache("turbo4", m->cache_shape(9));
  auto c2 = kv::make_kv_cache("turbo4", m->cache_shape(9));
  auto d = kv::make_kv_cache("fp16", m->cache_shape(9));
  Scratch s1(m->config(), 8), s2(m->config(), 8), s3(m->config(), 8);
  std::vector<int32_t> a, b;
  Sampler sa(greedy(), m->config().n_vocab), sb(greedy(), m->config().n_vocab);
  const auto pa = generate(*m, prompt, 20, sa, *c1, s1, pool, collect(a));
  const auto pb = generate_speculative(*m, *m, prompt, 20, sb, *c2, *d, s2, s3, pool, collect(b), {4});
  EXPECT_TRUE(pa.stopped_at_context);
  EXPECT_TRUE(pb.stopped_at_context);
  EXPECT_EQ(a, b);
}

TEST(TinySpeculativeEdges, DraftWithAnotherVocabularyIsRejected) {
  testing::TinyLlamaOptions o;
  testing::write_tiny_llama(temp_path("v320.gguf"), o);
  o.vocab = 300;
  testing::write_tiny_llama(temp_path("v300.gguf"), o);
  auto t = Model::load(temp_path("v320.gguf"));
  auto d = Model::load(temp_path("v300.gguf"));
  ThreadPool pool(1);
  try {
    run_spec(*t, *d, {1, 2, 3}, 4, "fp16", "fp16", 2, greedy(), pool);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("vocabulary"), std::string::npos) << e.what();
  }
}

TEST(TinySpeculativeEdges, SampledRunIsReproducibleAndAcceptsItsOwnDrafts) {
  testing::TinyLlamaOptions o = tiny_options(4);
  testing::write_tiny_llama(temp_path("sampled.gguf"), o);
  auto m = Model::load(temp_path("sampled.gguf"));
  ThreadPool pool(2);
  SamplingParams sp;
  sp.temperature = 0.9f;
  sp.top_k = 0;
  sp.top_p = 1.0f;
  sp.min_p = 0.0f;
  sp.seed = 17;
  const std::vector<int32_t> prompt = {1, 9, 80, 200};
  const GenRun a = run_spec(*m, *m, prompt, 30, "turbo4", "fp16", 4, sp, pool);
  const GenRun b = run_spec(*m, *m, prompt, 30, "turbo4", "fp16", 4, sp, pool);
  EXPECT_EQ(a.tokens, b.tokens);
  EXPECT_EQ(a.tokens.size(), 30u);
  // Draft = target with the same (dense) cache: p and q agree up to batching
  // rounding, so (almost) every draft token is accepted.
  const GenRun c = run_spec(*m, *m, prompt, 30, "fp16", "fp16", 4, sp, pool);
  EXPECT_GT(c.stats.acceptance_rate(), 0.9) << c.stats.n_accepted << "/" << c.stats.n_drafted;
}

// ---- the acceptance rule ----

TEST(SpeculativeAccept, KeepsTheTargetDistribution) {
  // Hand-made target p and draft q, including tokens only one of them allows.
  const std::vector<std::vector<float>> ps = {{0.5f, 0.2f, 0.1f, 0.1f, 0.1f, 0.0f},
                                              {0.05f, 0.05f, 0.6f, 0.3f, 0.0f, 0.0f},
                                              {0.2f, 0.2f, 0.2f, 0.2f, 0.2f, 0.0f}};
  const std::vector<std::vector<float>> qs = {{0.1f, 0.1f, 0.2f, 0.2f, 0.2f, 0.2f},
                                              {0.5f, 0.0f, 0.1f, 0.1f, 0.2f, 0.1f},
                                              {0.2f, 0.2f, 0.2f, 0.2f, 0.2f, 0.0f}};
  constexpr int kDraws = 200000;
  for (size_t c = 0; c < ps.size(); ++c) {
    const auto& p = ps[c];
    const auto& q = qs[c];
    Rng rng(100 + c);
    std::vector<int> hist(p.size(), 0);
    int accepted = 0;
    for (int i = 0; i < kDraws; ++i) {
      const int32_t x = draw(q.data(), int(q.size()), rng);
      const SpeculativeDecision d = speculative_accept(p.data(), q.data(), int(p.size()), x, rng);
      ++hist[size_t(d.token)];
      accepted += d.accepted;
    }
    double expected_accept = 0;  // Σ min(p, q)
    for (size_t i = 0; i < p.size(); ++i) {
      const double f = double(hist[i]) / kDraws;
      // 5 standard deviations of a binomial frequency.
      const double tol = 5.0 * std::sqrt(p[i] * (1.0 - p[i]) / kDraws) + 1e-9;
      EXPECT_NEAR(f, p[i], tol) << "case " << c << " token " << i;
      expected_accept += std::min(p[i], q[i]);
    }
    EXPECT_NEAR(double(accepted) / kDraws, expected_accept, 5.0 * std::sqrt(0.25 / kDraws)) << "case " << c;
  }
}

TEST(SpeculativeAccept, DistributionMatchesTheSampler) {
  SamplingParams sp;
  sp.temperature = 0.7f;
  sp.top_k = 12;
  sp.top_p = 0.9f;
  sp.min_p = 0.02f;
  sp.repeat_penalty = 1.2f;
  sp.repeat_last_n = 4;
  const int n_vocab = 50;
  Rng rng(3);
  std::vector<float> logits(n_vocab);
  for (auto& x : logits) x = float(rng.normal()) * 2.0f;
  Sampler s(sp, n_vocab);
  std::vector<int32_t> history;
  for (int32_t t : {3, 7, 3, 11, 20}) {
    s.accept(t);
    history.push_back(t);
  }
  history.erase(history.begin());  // repeat_last_n = 4
  s.sample(logits.data());
  std::vector<float> probs;
  sampling_distribution(sp, logits.data(), n_vocab, history, probs);
  std::vector<float> want(n_vocab, 0.0f);
  for (const auto& c : s.candidates()) want[size_t(c.id)] = c.p;
  EXPECT_EQ(probs, want);
}

// ---- the real models ----

class RealSpeculative : public ::testing::TestWithParam<std::string> {};

TEST_P(RealSpeculative, GreedyOutputEqualsPlainDecoding) {
  const std::string scheme = GetParam();
  auto target = Model::load(model_path("tq-tiny-hd128.gguf"));
  auto draft = Model::load(model_path("tq-tiny-draft.gguf"));
  auto tok = tokenizer::load_tokenizer(target->gguf());
  const auto prompt = tok->encode("Once upon a time there was a little girl who lived in", true, true);
  ThreadPool pool(2);
  const int n = 48;
  const GenRun plain = run_plain(*target, prompt, n, scheme, greedy(), pool);
  for (int k : {2, 4}) {
    const GenRun spec = run_spec(*target, *draft, prompt, n, scheme, scheme, k, greedy(), pool);
    EXPECT_EQ(spec.tokens, plain.tokens) << "k " << k;
    expect_scheme_kept(*spec.cache, scheme, int(prompt.size() + plain.tokens.size()) - 1);
    EXPECT_GT(spec.stats.n_accepted, 0);
    std::printf("[ info     ] %s k=%d: acceptance %.3f (%d/%d), %d target passes for %d tokens\n", scheme.c_str(), k,
                spec.stats.acceptance_rate(), spec.stats.n_accepted, spec.stats.n_drafted, spec.stats.n_steps,
                spec.stats.n_generated);
  }
}

INSTANTIATE_TEST_SUITE_P(AllSchemes, RealSpeculative, ::testing::ValuesIn(kSchemes));

// ---- the CLI ----

using testing::CliResult;
using testing::slurp;

CliResult cli(const std::string& args) {
  return testing::run_cli(TURBOKV_BINARY, args, ::testing::TempDir());
}

const std::string kPrompt = "-p 'It was a dark and stormy night' --temp 0 -t 2 ";

TEST(SessionCli, SpeculativeGreedyEqualsPlainAndKeepsTheScheme) {
  for (const char* kv : {"turbo4", "fp16"}) {
    const auto plain = cli("generate " + kPrompt + "-n 24 --kv " + kv);
    ASSERT_EQ(plain.status, 0) << plain.err;
    const auto spec = cli("generate " + kPrompt + "-n 24 --kv " + kv + " --draft '" +
                          model_path("tq-tiny-draft.gguf") + "' --draft-n 4 --kv-draft fp16");
    ASSERT_EQ(spec.status, 0) << spec.err;
    EXPECT_EQ(spec.out, plain.out);
    EXPECT_NE(spec.err.find("acceptance"), std::string::npos) << spec.err;
    EXPECT_NE(spec.err.find(std::string("turbokv: kv cache ") + kv + ":"), std::string::npos) << spec.err;
    if (std::string(kv) == "turbo4") {
      EXPECT_EQ(spec.err.find("16.00 bits/element"), std::string::npos) << spec.err;
    }
  }
}

TEST(SessionCli, PromptCacheIsSavedRestoredAndChecked) {
  const std::string file = temp_path("prompt.tkvc");
  std::filesystem::remove(file);
  const std::string pc = "--prompt-cache '" + file + "' ";
  const auto first = cli("generate " + kPrompt + "-n 12 --kv fp16 " + pc);
  ASSERT_EQ(first.status, 0) << first.err;
  ASSERT_TRUE(std::filesystem::exists(file));
  const auto saved = slurp(file);
  const auto second = cli("generate " + kPrompt + "-n 12 --kv fp16 --prompt-cache-ro " + pc);
  ASSERT_EQ(second.status, 0) << second.err;
  EXPECT_NE(second.err.find("saved tokens reused"), std::string::npos) << second.err;
  EXPECT_EQ(second.out, first.out);
  EXPECT_EQ(slurp(file), saved) << "--prompt-cache-ro must not write";
  // A longer prompt reuses the cached prefix.
  const auto longer = cli("generate -p 'It was a dark and stormy night, and' --temp 0 -t 2 -n 4 --kv fp16 " + pc);
  ASSERT_EQ(longer.status, 0) << longer.err;

  // Another scheme: an error naming both, unless asked to go on without it.
  const auto other = cli("generate " + kPrompt + "-n 4 --kv turbo4 --prompt-cache-ro " + pc);
  EXPECT_NE(other.status, 0);
  EXPECT_NE(other.err.find("'fp16'"), std::string::npos) << other.err;
  EXPECT_NE(other.err.find(file), std::string::npos) << other.err;
  const auto ignored = cli("generate " + kPrompt + "-n 4 --kv turbo4 --prompt-cache-ro --prompt-cache-ignore-errors " + pc);
  EXPECT_EQ(ignored.status, 0) << ignored.err;
  EXPECT_NE(ignored.err.find("warning"), std::string::npos) << ignored.err;

  // Another model.
  const auto model = cli("generate -m '" + model_path("tq-tiny-draft.gguf") + "' " + kPrompt + "-n 4 --kv fp16 " + pc);
  EXPECT_NE(model.status, 0);
  EXPECT_NE(model.err.find("another model"), std::string::npos) << model.err;

  // A corrupted file.
  std::string bad = slurp(file);
  bad[bad.size() / 2] = char(bad[bad.size() / 2] ^ 1);
  {
    std::ofstream f(file, std::ios::binary | std::ios::trunc);
    f << bad;
  }
  const auto corrupt = cli("generate " + kPrompt + "-n 4 --kv fp16 " + pc);
  EXPECT_NE(corrupt.status, 0);
  EXPECT_NE(corrupt.err.find("checksum"), std::string::npos) << corrupt.err;

  // turbo4 with speculation: saved after compression, restored, re-saved.
  std::filesystem::remove(file);
  const std::string spec = "--draft '" + model_path("tq-tiny-draft.gguf") + "' ";
  const auto t1 = cli("generate " + kPrompt + "-n 12 --kv turbo4 " + spec + pc);
  ASSERT_EQ(t1.status, 0) << t1.err;
  const auto t2 = cli("generate " + kPrompt + "-n 12 --kv turbo4 " + spec + pc);
  ASSERT_EQ(t2.status, 0) << t2.err;
  EXPECT_NE(t2.err.find("saved tokens reused"), std::string::npos) << t2.err;
  std::filesystem::remove(file);
}

}  // namespace
}  // namespace turbokv::model
