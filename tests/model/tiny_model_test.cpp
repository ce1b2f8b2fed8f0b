// End-to-end runs of tiny random-weight llama / qwen2 / qwen3 models written
// by the test, checked against a naive full-recompute reference forward and
// against themselves (batched vs token-by-token, FP16 vs F32 cache, threads).
#include <unistd.h>

#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <string>
#include <vector>

#include "kv/dense_cache.h"
#include "kv/registry.h"
#include "model/generate.h"
#include "model/model.h"
#include "model/sampling.h"
#include "support/gguf_writer.h"
#include "support/tiny_llama.h"
#include "util/error.h"
#include "util/rng.h"

namespace turbokv::model {
namespace {

using testing::TinyArch;
using testing::TinyLlamaOptions;

// Max |logit difference| / (1 + max |logit|) between the model with an F32
// cache and the naive double-precision reference: float matmuls and
// attention over a dozen tokens.
constexpr float kReferenceTolerance = 2e-4f;
// Same, for Q8_0/Q4_0 weights: the kernels quantize activations to Q8_0 as
// llama.cpp does (8-bit blocks, ~0.4% relative error per product), while the
// reference multiplies dequantized weights by float activations.
constexpr float kReferenceToleranceQuantized = 3e-2f;
// Batched prefill vs one token at a time with the same F32 cache: the same
// arithmetic except for the matmul kernel's batching.
constexpr float kBatchVsDecodeTolerance = 1e-4f;
// FP16 vs F32 cache: keys/values rounded to half precision (2^-11 relative).
constexpr float kFp16VsF32Tolerance = 2e-2f;

std::string temp_path(const std::string& name) {
  return (std::filesystem::path(::testing::TempDir()) / ("turbokv_model_" + std::to_string(::getpid()) + "_" + name + ".gguf")).string();
}

float rel_diff(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  float m = 0, scale = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    m = std::max(m, std::abs(a[i] - b[i]));
    scale = std::max(scale, std::abs(b[i]));
  }
  return m / (1.0f + scale);
}

// ---- a naive reference: every weight dequantized, full recompute, double sums ----
struct RefMatrix {
  int rows = 0, cols = 0;
  std::vector<float> w;  // (rows, cols)
};

RefMatrix dequant(const ops::WeightView& v) {
  RefMatrix m{int(v.rows), int(v.cols), std::vector<float>(size_t(v.rows * v.cols))};
  for (int64_t r = 0; r < v.rows; ++r) ops::dequantize_row(v, r, m.w.data() + size_t(r * v.cols));
  return m;
}

std::vector<double> matvec_ref(const RefMatrix& m, const std::vector<double>& x) {
  std::vector<double> y(static_cast<size_t>(m.rows));
  for (int r = 0; r < m.rows; ++r) {
    double s = 0;
    for (int c = 0; c < m.cols; ++c) s += double(m.w[size_t(r) * m.cols + c]) * x[size_t(c)];
    y[size_t(r)] = s;
  }
  return y;
}

std::vector<double> rmsnorm_ref(const std::vector<double>& x, size_t off, size_t n, const std::vector<float>& w,
                                 double eps) {
  double ss = 0;
  for (size_t i = 0; i < n; ++i) ss += x[off + i] * x[off + i];
  const double s = 1.0 / std::sqrt(ss / double(n) + eps);
  std::vector<double> y(n);
  for (size_t i = 0; i < n; ++i) y[i] = x[off + i] * s * w[i];
  return y;
}

// Rotary embedding written the Hugging Face way for NEOX (rotate_half) and as
// complex pairs for llama's interleaved layout, independently of model.cpp.
void rope_ref(const ModelConfig& c, double* x, int pos) {
  const int half = c.rope_dim / 2;
  std::vector<double> out(x, x + c.head_dim);
  for (int i = 0; i < half; ++i) {
    const double inv_freq = std::pow(double(c.rope_base), -2.0 * i / c.rope_dim);
    const double th = pos * inv_freq;
    if (c.rope_style == RopeStyle::Neox) {
      // out = x * cos + rotate_half(x) * sin, rotate_half(x) = [-x2, x1]
      out[size_t(i)] = x[i] * std::cos(th) - x[i + half] * std::sin(th);
      out[size_t(i + half)] = x[i + half] * std::cos(th) + x[i] * std::sin(th);
    } else {
      // (x0 + i x1) * e^{i th}
      out[size_t(2 * i)] = x[2 * i] * std::cos(th) - x[2 * i + 1] * std::sin(th);
      out[size_t(2 * i + 1)] = x[2 * i] * std::sin(th) + x[2 * i + 1] * std::cos(th);
    }
  }
  std::copy(out.begin(), out.end(), x);
}

// Logits of every position.   returns (n, n_vocab)
std::vector<float> reference_forward(const Model& model, const std::vector<int32_t>& tokens) {
  const ModelConfig& c = model.config();
  const ModelWeights& W = model.weights();
  const size_t n = tokens.size(), d = size_t(c.d_model), hd = size_t(c.head_dim);
  const RefMatrix embd = dequant(W.token_embd), out_w = dequant(W.output);
  std::vector<std::vector<double>> x(n, std::vector<double>(d));
  for (size_t t = 0; t < n; ++t)
    for (size_t i = 0; i < d; ++i) x[t][i] = embd.w[size_t(tokens[t]) * d + i];
  for (const LayerWeights& L : W.layers) {
    const RefMatrix wq = dequant(L.wq), wk = dequant(L.wk), wv = dequant(L.wv), wo = dequant(L.wo),
                    wg = dequant(L.w_gate), wu = dequant(L.w_up), wd = dequant(L.w_down);
    std::vector<std::vector<double>> q(n), k(n), v(n);
    for (size_t t = 0; t < n; ++t) {
      const auto h = rmsnorm_ref(x[t], 0, d, L.attn_norm, c.norm_eps);
      q[t] = matvec_ref(wq, h);
      k[t] = matvec_ref(wk, h);
      v[t] = matvec_ref(wv, h);
      for (size_t i = 0; i < L.bq.size(); ++i) q[t][i] += L.bq[i];
      for (size_t i = 0; i < L.bk.size(); ++i) k[t][i] += L.bk[i];
      for (size_t i = 0; i < L.bv.size(); ++i) v[t][i] += L.bv[i];
      for (int h2 = 0; h2 < c.n_head; ++h2) {
        if (c.has_qk_norm) {
          auto y = rmsnorm_ref(q[t], size_t(h2) * hd, hd, L.q_norm, c.norm_eps);
          std::copy(y.begin(), y.end(), q[t].begin() + long(size_t(h2) * hd));
        }
        rope_ref(c, q[t].data() + size_t(h2) * hd, int(t));
      }
      for (int h2 = 0; h2 < c.n_kv_head; ++h2) {
        if (c.has_qk_norm) {
          auto y = rmsnorm_ref(k[t], size_t(h2) * hd, hd, L.k_norm, c.norm_eps);
          std::copy(y.begin(), y.end(), k[t].begin() + long(size_t(h2) * hd));
        }
        rope_ref(c, k[t].data() + size_t(h2) * hd, int(t));
      }
    }
    const int group = c.n_head / c.n_kv_head;
    for (size_t t = 0; t < n; ++t) {
      std::vector<double> att(size_t(c.q_dim()), 0.0);
      for (int h2 = 0; h2 < c.n_head; ++h2) {
        const size_t qo = size_t(h2) * hd, ko = size_t(h2 / group) * hd;
        std::vector<double> s(t + 1);
        double m = -1e300, z = 0;
        for (size_t j = 0; j <= t; ++j) {
          double dot = 0;
          for (size_t i = 0; i < hd; ++i) dot += q[t][qo + i] * k[j][ko + i];
          s[j] = dot / std::sqrt(double(hd));
          m = std::max(m, s[j]);
        }
        for (auto& e : s) { e = std::exp(e - m); z += e; }
        for (size_t j = 0; j <= t; ++j)
          for (size_t i = 0; i < hd; ++i) att[qo + i] += s[j] / z * v[j][ko + i];
      }
      const auto o = matvec_ref(wo, att);
      for (size_t i = 0; i < d; ++i) x[t][i] += o[i];
      const auto h = rmsnorm_ref(x[t], 0, d, L.ffn_norm, c.norm_eps);
      auto g = matvec_ref(wg, h);
      const auto u = matvec_ref(wu, h);
      for (size_t i = 0; i < g.size(); ++i) g[i] = g[i] / (1.0 + std::exp(-g[i])) * u[i];
      const auto dn = matvec_ref(wd, g);
      for (size_t i = 0; i < d; ++i) x[t][i] += dn[i];
    }
  }
  std::vector<float> logits(n * size_t(c.n_vocab));
  for (size_t t = 0; t < n; ++t) {
    const auto h = rmsnorm_ref(x[t], 0, d, W.output_norm, c.norm_eps);
    const auto l = matvec_ref(out_w, h);
    for (int i = 0; i < c.n_vocab; ++i) logits[t * size_t(c.n_vocab) + size_t(i)] = float(l[size_t(i)]);
  }
  return logits;
}

// ---- parameterized over architecture and GQA ratio ----
struct TinyCase {
  const char* name;
  TinyArch arch;
  int n_head, n_kv_head, head_dim, d_model;
  bool tied;
  ops::TensorType type;
};

class TinyModel : public ::testing::TestWithParam<TinyCase> {
 protected:
  void SetUp() override {
    const TinyCase& p = GetParam();
    TinyLlamaOptions o;
    o.arch = p.arch;
    o.n_head = p.n_head;
    o.n_kv_head = p.n_kv_head;
    o.head_dim = p.head_dim;
    o.d_model = p.d_model;
    o.tied_output = p.tied;
    o.weight_type = p.type;
    o.seed = 1234;
    path_ = temp_path(p.name);
    testing::write_tiny_llama(path_, o);
    model_ = Model::load(path_);
  }
  void TearDown() override { std::filesystem::remove(path_); }

  std::vector<int32_t> prompt() const {
    std::vector<int32_t> t = {1};
    Rng rng(99);
    for (int i = 0; i < 12; ++i) t.push_back(int32_t(3 + rng.next_u64() % uint64_t(model_->config().n_vocab - 3)));
    return t;
  }

  std::vector<float> prefill_all(const std::string& scheme, const std::vector<int32_t>& toks, int max_batch,
                                 int threads) {
    auto cache = kv::make_kv_cache(scheme, model_->cache_shape(64));
    Scratch s(model_->config(), max_batch);
    ThreadPool pool(threads);
    std::vector<float> logits(toks.size() * size_t(model_->config().n_vocab));
    model_->forward(toks.data(), int(toks.size()), *cache, Phase::Prefill, LogitsMode::All, logits.data(), s, pool);
    EXPECT_EQ(cache->n_tokens(), int(toks.size()));
    return logits;
  }

  std::string path_;
  std::unique_ptr<Model> model_;
};

TEST_P(TinyModel, ConfigMatchesFile) {
  const TinyCase& p = GetParam();
  const ModelConfig& c = model_->config();
  EXPECT_EQ(c.n_head, p.n_head);
  EXPECT_EQ(c.n_kv_head, p.n_kv_head);
  EXPECT_EQ(c.head_dim, p.head_dim);
  EXPECT_EQ(c.d_model, p.d_model);
  EXPECT_EQ(c.tied_output, p.tied);
  EXPECT_EQ(c.rope_style, p.arch == TinyArch::llama ? RopeStyle::Interleaved : RopeStyle::Neox);
  EXPECT_EQ(c.has_qk_norm, p.arch == TinyArch::qwen3);
  EXPECT_EQ(c.has_qkv_bias, p.arch == TinyArch::qwen2);
  EXPECT_EQ(model_->weights().layers[0].bq.empty(), p.arch != TinyArch::qwen2);
}

TEST_P(TinyModel, MatchesNaiveReference) {
  const auto toks = prompt();
  const auto got = prefill_all("f32", toks, 512, 2);
  const auto ref = reference_forward(*model_, toks);
  const bool quantized = GetParam().type == ops::TensorType::Q8_0 || GetParam().type == ops::TensorType::Q4_0;
  EXPECT_LT(rel_diff(got, ref), quantized ? kReferenceToleranceQuantized : kReferenceTolerance);
}

TEST_P(TinyModel, BatchedPrefillEqualsTokenByTokenDecode) {
  const auto toks = prompt();
  const auto batched = prefill_all("f32", toks, 512, 2);
  auto cache = kv::make_kv_cache("f32", model_->cache_shape(64));
  Scratch s(model_->config(), 8);
  ThreadPool pool(2);
  const size_t nv = size_t(model_->config().n_vocab);
  std::vector<float> stepped(toks.size() * nv);
  for (size_t i = 0; i < toks.size(); ++i) {
    model_->forward(&toks[i], 1, *cache, i == 0 ? Phase::Prefill : Phase::Decode, LogitsMode::Last,
                    stepped.data() + i * nv, s, pool);
  }
  EXPECT_LT(rel_diff(stepped, batched), kBatchVsDecodeTolerance);
  // Sub-batches (scratch smaller than the prompt) give the same logits.
  const auto split = prefill_all("f32", toks, 5, 1);
  EXPECT_LT(rel_diff(split, batched), kBatchVsDecodeTolerance);
  // LogitsMode::Last returns the last row of All.
  auto cache2 = kv::make_kv_cache("f32", model_->cache_shape(64));
  std::vector<float> last(nv);
  model_->forward(toks.data(), int(toks.size()), *cache2, Phase::Prefill, LogitsMode::Last, last.data(), s, pool);
  std::vector<float> last_row(batched.end() - long(nv), batched.end());
  EXPECT_LT(rel_diff(last, last_row), kBatchVsDecodeTolerance);
}

TEST_P(TinyModel, Fp16CacheCloseToF32) {
  const auto toks = prompt();
  EXPECT_LT(rel_diff(prefill_all("fp16", toks, 512, 2), prefill_all("f32", toks, 512, 2)), kFp16VsF32Tolerance);
}

TEST_P(TinyModel, GenerationIsDeterministic) {
  auto run = [&](int threads, float temp) {
    auto cache = kv::make_kv_cache("fp16", model_->cache_shape(64));
    Scratch s(model_->config(), 16);
    ThreadPool pool(threads);
    SamplingParams sp;
    sp.temperature = temp;
    sp.seed = 5;
    Sampler sampler(sp, model_->config().n_vocab);
    std::vector<int32_t> out;
    GenerateCallbacks cb;
    cb.on_token = [&](int32_t t) { out.push_back(t); return true; };
    const auto st = generate(*model_, prompt(), 16, sampler, *cache, s, pool, cb);
    EXPECT_EQ(st.n_generated, int(out.size()));
    EXPECT_EQ(cache->n_tokens(), int(prompt().size()) + st.n_decoded);
    return out;
  };
  const auto greedy = run(1, 0.0f);
  EXPECT_EQ(greedy.size(), 16u);
  EXPECT_EQ(run(2, 0.0f), greedy);
  EXPECT_EQ(run(1, 0.8f), run(2, 0.8f));
}

INSTANTIATE_TEST_SUITE_P(
    Archs, TinyModel,
    ::testing::Values(TinyCase{"llama_mha", TinyArch::llama, 4, 4, 16, 64, true, ops::TensorType::F32},
                      TinyCase{"llama_gqa2", TinyArch::llama, 4, 2, 16, 64, false, ops::TensorType::F32},
                      TinyCase{"llama_mqa", TinyArch::llama, 4, 1, 16, 64, true, ops::TensorType::F32},
                      TinyCase{"llama_f16", TinyArch::llama, 4, 2, 16, 64, true, ops::TensorType::F16},
                      TinyCase{"llama_q8_0", TinyArch::llama, 2, 1, 32, 64, true, ops::TensorType::Q8_0},
                      TinyCase{"qwen2_gqa2", TinyArch::qwen2, 4, 2, 16, 64, true, ops::TensorType::F32},
                      TinyCase{"qwen3_gqa2", TinyArch::qwen3, 4, 2, 24, 64, false, ops::TensorType::F32},
                      TinyCase{"qwen3_mqa", TinyArch::qwen3, 4, 1, 16, 64, true, ops::TensorType::F32}),
    [](const auto& info) { return std::string(info.param.name); });

TEST(TinyModelErrors, ContextOverflowAndBadTokensAreErrors) {
  const std::string path = temp_path("overflow");
  testing::write_tiny_llama(path, TinyLlamaOptions{});
  auto model = Model::load(path);
  auto cache = kv::make_kv_cache("fp16", model->cache_shape(4));
  Scratch s(model->config(), 8);
  ThreadPool pool(1);
  std::vector<float> logits(size_t(model->config().n_vocab));
  const int32_t toks[5] = {1, 5, 6, 7, 8};
  EXPECT_THROW(model->forward(toks, 5, *cache, Phase::Prefill, LogitsMode::Last, logits.data(), s, pool), Error);
  const int32_t bad[1] = {model->config().n_vocab};
  EXPECT_THROW(model->forward(bad, 1, *cache, Phase::Prefill, LogitsMode::Last, logits.data(), s, pool), Error);
  EXPECT_EQ(cache->n_tokens(), 0);
  std::filesystem::remove(path);
}

// A hand-written one-layer llama with an optional defect.
void write_small_llama(const std::string& path, const std::string& arch, bool bad_k_shape, bool q4_1_q) {
  testing::GgufWriter w;
  const uint64_t d = 32, kv = 16, ff = 48, nv = 300;
  w.add_string("general.architecture", arch);
  w.add_u32(arch + ".block_count", 1);
  w.add_u32(arch + ".embedding_length", uint32_t(d));
  w.add_u32(arch + ".feed_forward_length", uint32_t(ff));
  w.add_u32(arch + ".attention.head_count", 2);
  w.add_u32(arch + ".attention.head_count_kv", 1);
  Rng rng(1);
  auto vals = [&](uint64_t n) {
    std::vector<float> v(n);
    for (auto& x : v) x = float(rng.normal() * 0.1);
    return v;
  };
  const auto f32 = ops::TensorType::F32;
  w.add_tensor("token_embd.weight", {d, nv}, f32, vals(d * nv));
  w.add_tensor("output_norm.weight", {d}, f32, vals(d));
  w.add_tensor("blk.0.attn_norm.weight", {d}, f32, vals(d));
  if (q4_1_q) {
    w.add_tensor_raw("blk.0.attn_q.weight", {d, d}, uint32_t(ops::TensorType::Q4_1), std::vector<uint8_t>(20 * 32, 0));
  } else {
    w.add_tensor("blk.0.attn_q.weight", {d, d}, f32, vals(d * d));
  }
  w.add_tensor("blk.0.attn_k.weight", {d, bad_k_shape ? kv + 1 : kv}, f32, vals(d * (bad_k_shape ? kv + 1 : kv)));
  w.add_tensor("blk.0.attn_v.weight", {d, kv}, f32, vals(d * kv));
  w.add_tensor("blk.0.attn_output.weight", {d, d}, f32, vals(d * d));
  w.add_tensor("blk.0.ffn_norm.weight", {d}, f32, vals(d));
  w.add_tensor("blk.0.ffn_gate.weight", {d, ff}, f32, vals(d * ff));
  w.add_tensor("blk.0.ffn_up.weight", {d, ff}, f32, vals(d * ff));
  w.add_tensor("blk.0.ffn_down.weight", {ff, d}, f32, vals(d * ff));
  w.write(path);
}

std::string load_error(const std::string& path) {
  try {
    Model::load(path);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(TinyModelErrors, HandWrittenModelLoadsAndRuns) {
  const std::string path = temp_path("small_ok");
  write_small_llama(path, "llama", false, false);
  auto model = Model::load(path);
  EXPECT_EQ(model->config().head_dim, 16);
  EXPECT_TRUE(model->config().tied_output);
  std::filesystem::remove(path);
}

TEST(TinyModelErrors, UnsupportedArchitectureListsSupported) {
  const std::string path = temp_path("small_arch");
  write_small_llama(path, "gpt2", false, false);
  const std::string m = load_error(path);
  EXPECT_NE(m.find("gpt2"), std::string::npos) << m;
  EXPECT_NE(m.find("llama, qwen2, qwen3"), std::string::npos) << m;
  std::filesystem::remove(path);
}

TEST(TinyModelErrors, WrongTensorShapeNamesTheTensor) {
  const std::string path = temp_path("small_shape");
  write_small_llama(path, "llama", true, false);
  const std::string m = load_error(path);
  EXPECT_NE(m.find("blk.0.attn_k.weight"), std::string::npos) << m;
  EXPECT_NE(m.find("expected [32, 16]"), std::string::npos) << m;
  std::filesystem::remove(path);
}

TEST(TinyModelErrors, UnsupportedTensorTypeListsSupported) {
  const std::string path = temp_path("small_type");
  write_small_llama(path, "llama", false, true);
  const std::string m = load_error(path);
  EXPECT_FALSE(m.empty());
  EXPECT_NE(m.find(ops::supported_type_list()), std::string::npos) << m;
  std::filesystem::remove(path);
}

TEST(ModelConfig, Llama3FrequencyFactors) {
  // Meta's Llama 3.1 settings: factor 8, low 1, high 4, original context 8192.
  const auto f = llama3_freq_factors(128, 500000.0f, 8.0f, 1.0f, 4.0f, 8192);
  ASSERT_EQ(f.size(), 64u);
  EXPECT_EQ(f[0], 1.0f);    // high frequencies untouched
  EXPECT_EQ(f[63], 8.0f);   // low frequencies divided by the factor
  for (size_t i = 1; i < f.size(); ++i) EXPECT_GE(f[i], f[i - 1]);
}

}  // namespace
}  // namespace turbokv::model
