#include "model/model.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "ops/activation.h"
#include "util/error.h"

namespace turbokv::model {

namespace {

std::string shape_string(const std::vector<uint64_t>& s) {
  std::string r = "[";
  for (size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
  return r + "]";
}

void check_type(const io::GgufFile& f, const io::GgufTensorInfo& t) {
  if (!ops::is_supported(t.type)) {
    throw Error(f.path() + ": tensor '" + t.name + "' has unsupported type " + ops::type_name(t.type) +
                " (ggml type " + std::to_string(uint32_t(t.type)) + "); supported: " + ops::supported_type_list());
  }
}

// A (rows, cols) matrix: GGUF shape [cols, rows] (ne0 innermost).
ops::WeightView bind_matrix(const io::GgufFile& f, const std::string& name, int64_t rows, int64_t cols) {
  const auto& t = f.tensor(name);
  check_type(f, t);
  if (t.shape.size() != 2 || t.shape[0] != uint64_t(cols) || t.shape[1] != uint64_t(rows)) {
    throw Error(f.path() + ": tensor '" + name + "' has shape " + shape_string(t.shape) + ", expected [" +
                std::to_string(cols) + ", " + std::to_string(rows) + "]");
  }
  if (cols % int64_t(ops::block_elements(t.type)) != 0) {
    throw Error(f.path() + ": tensor '" + name + "' rows of " + std::to_string(cols) +
                " elements are not whole blocks of type " + ops::type_name(t.type));
  }
  return ops::WeightView{t.type, f.tensor_data(t), rows, cols};
}

// A 1-D vector of n elements, converted to float.
std::vector<float> load_vector(const io::GgufFile& f, const std::string& name, int64_t n) {
  const auto& t = f.tensor(name);
  check_type(f, t);
  const bool ok = (t.shape.size() == 1 && t.shape[0] == uint64_t(n)) ||
                  (t.shape.size() == 2 && t.shape[0] == uint64_t(n) && t.shape[1] == 1);
  if (!ok) {
    throw Error(f.path() + ": tensor '" + name + "' has shape " + shape_string(t.shape) + ", expected [" +
                std::to_string(n) + "]");
  }
  if (n % int64_t(ops::block_elements(t.type)) != 0) {
    throw Error(f.path() + ": tensor '" + name + "' is not whole blocks of type " + ops::type_name(t.type));
  }
  std::vector<float> out(static_cast<size_t>(n));
  ops::dequantize_row(ops::WeightView{t.type, f.tensor_data(t), 1, n}, 0, out.data());
  return out;
}

void mul(const ops::WeightView& w, const float* x, int n, float* y, ThreadPool& pool) {
  if (n == 1) ops::matvec(w, x, y, pool); else ops::matmul(w, x, n, y, pool);
}

void add_bias(float* y, const std::vector<float>& b, int n) {  // y: (n, b.size())
  if (b.empty()) return;
  const size_t m = b.size();
  for (int t = 0; t < n; ++t)
    for (size_t i = 0; i < m; ++i) y[size_t(t) * m + i] += b[i];
}

}  // namespace

ModelWeights bind_weights(const io::GgufFile& f, const ModelConfig& c) {
  ModelWeights w;
  w.token_embd = bind_matrix(f, "token_embd.weight", c.n_vocab, c.d_model);
  w.output_norm = load_vector(f, "output_norm.weight", c.d_model);
  w.output = c.tied_output ? w.token_embd : bind_matrix(f, "output.weight", c.n_vocab, c.d_model);
  w.layers.resize(size_t(c.n_layer));
  for (int l = 0; l < c.n_layer; ++l) {
    const std::string p = "blk." + std::to_string(l) + ".";
    LayerWeights& L = w.layers[size_t(l)];
    L.attn_norm = load_vector(f, p + "attn_norm.weight", c.d_model);
    L.wq = bind_matrix(f, p + "attn_q.weight", c.q_dim(), c.d_model);
    L.wk = bind_matrix(f, p + "attn_k.weight", c.kv_dim(), c.d_model);
    L.wv = bind_matrix(f, p + "attn_v.weight", c.kv_dim(), c.d_model);
    L.wo = bind_matrix(f, p + "attn_output.weight", c.d_model, c.q_dim());
    // Biases: required for qwen2, used if present otherwise.
    const bool bias = c.has_qkv_bias || f.find_tensor(p + "attn_q.bias") != nullptr;
    if (bias) {
      L.bq = load_vector(f, p + "attn_q.bias", c.q_dim());
      L.bk = load_vector(f, p + "attn_k.bias", c.kv_dim());
      L.bv = load_vector(f, p + "attn_v.bias", c.kv_dim());
    }
    if (c.has_qk_norm) {
      L.q_norm = load_vector(f, p + "attn_q_norm.weight", c.head_dim);
      L.k_norm = load_vector(f, p + "attn_k_norm.weight", c.head_dim);
    }
    L.ffn_norm = load_vector(f, p + "ffn_norm.weight", c.d_model);
    L.w_gate = bind_matrix(f, p + "ffn_gate.weight", c.d_ff, c.d_model);
    L.w_up = bind_matrix(f, p + "ffn_up.weight", c.d_ff, c.d_model);
    L.w_down = bind_matrix(f, p + "ffn_down.weight", c.d_model, c.d_ff);
  }
  return w;
}

Scratch::Scratch(const ModelConfig& c, int max_batch) : max_batch_(max_batch) {
  if (max_batch <= 0) throw Error("scratch: max batch must be positive, got " + std::to_string(max_batch));
  const size_t b = size_t(max_batch);
  x.assign(b * c.d_model, 0.0f);
  xn.assign(b * c.d_model, 0.0f);
  q.assign(b * c.q_dim(), 0.0f);
  k.assign(b * c.kv_dim(), 0.0f);
  v.assign(b * c.kv_dim(), 0.0f);
  attn.assign(b * c.q_dim(), 0.0f);
  proj.assign(b * c.d_model, 0.0f);
  gate.assign(b * c.d_ff, 0.0f);
  up.assign(b * c.d_ff, 0.0f);
  rope_cos.assign(b * (c.rope_dim / 2), 0.0f);
  rope_sin.assign(b * (c.rope_dim / 2), 0.0f);
}

std::unique_ptr<Model> Model::load(const std::string& path) {
  return std::make_unique<Model>(io::GgufFile::open(path));
}

Model::Model(std::unique_ptr<io::GgufFile> file) : file_(std::move(file)) {
  TKV_ASSERT(file_ != nullptr, "null GgufFile");
  config_ = read_config(*file_);
  weights_ = bind_weights(*file_, config_);
}

kv::CacheShape Model::cache_shape(int n_ctx) const {
  kv::CacheShape s;
  s.n_layer = config_.n_layer;
  s.n_head = config_.n_head;
  s.n_kv_head = config_.n_kv_head;
  s.head_dim = config_.head_dim;
  s.max_tokens = n_ctx;
  return s;
}

void rms_norm(const float* x, const float* w, int n, float eps, float* y) {
  double sum = 0.0;
  for (int i = 0; i < n; ++i) sum += double(x[i] * x[i]);
  const float mean = float(sum / n);
  const float scale = 1.0f / std::sqrt(mean + eps);
  for (int i = 0; i < n; ++i) y[i] = (x[i] * scale) * w[i];
}

void rope_angles(const ModelConfig& c, int pos, float* cos, float* sin) {
  // As ggml_rope_cache_init: theta advances by repeated multiplication in float.
  const int half = c.rope_dim / 2;
  const float theta_scale = std::pow(c.rope_base, -2.0f / float(c.rope_dim));
  float theta = float(pos);
  for (int i = 0; i < half; ++i) {
    const float ff = c.rope_freq_factors.empty() ? 1.0f : c.rope_freq_factors[size_t(i)];
    const float t = c.rope_freq_scale * (theta / ff);
    cos[i] = std::cos(t);
    sin[i] = std::sin(t);
    theta *= theta_scale;
  }
}

void apply_rope(const ModelConfig& c, const float* cos, const float* sin, float* x, int n_heads) {
  const int half = c.rope_dim / 2, hd = c.head_dim;
  for (int h = 0; h < n_heads; ++h) {
    float* xh = x + size_t(h) * hd;
    if (c.rope_style == RopeStyle::Interleaved) {
      for (int i = 0; i < half; ++i) {
        const float x0 = xh[2 * i], x1 = xh[2 * i + 1];
        xh[2 * i] = x0 * cos[i] - x1 * sin[i];
        xh[2 * i + 1] = x0 * sin[i] + x1 * cos[i];
      }
    } else {
      for (int i = 0; i < half; ++i) {
        const float x0 = xh[i], x1 = xh[i + half];
        xh[i] = x0 * cos[i] - x1 * sin[i];
        xh[i + half] = x0 * sin[i] + x1 * cos[i];
      }
    }
  }
}

void Model::forward(const int32_t* tokens, int n, kv::KvCache& cache, Phase phase, LogitsMode mode,
                    float* logits, Scratch& scratch, ThreadPool& pool) const {
  if (n <= 0) throw Error("forward: need at least one token, got " + std::to_string(n));
  for (int i = 0; i < n; ++i) {
    if (tokens[i] < 0 || tokens[i] >= config_.n_vocab) {
      throw Error("token id " + std::to_string(tokens[i]) + " at index " + std::to_string(i) +
                  " is outside the vocabulary [0, " + std::to_string(config_.n_vocab) + ")");
    }
  }
  if (cache.n_tokens() + n > cache.shape().max_tokens) {
    throw Error("context full: " + std::to_string(cache.n_tokens()) + " + " + std::to_string(n) +
                " tokens exceed the context size " + std::to_string(cache.shape().max_tokens) + " (raise --ctx)");
  }
  const int b = scratch.max_batch();
  for (int start = 0; start < n; start += b) {
    const int m = std::min(b, n - start);
    const bool last_batch = start + m == n;
    float* all = mode == LogitsMode::All ? logits + size_t(start) * config_.n_vocab : nullptr;
    float* last = mode == LogitsMode::Last && last_batch ? logits : nullptr;
    forward_batch(tokens + start, m, cache, phase, all, last, scratch, pool);
  }
}

void Model::forward_batch(const int32_t* tokens, int n, kv::KvCache& cache, Phase phase, float* all_logits,
                          float* last_logits, Scratch& s, ThreadPool& pool) const {
  const ModelConfig& c = config_;
  const int d = c.d_model, hd = c.head_dim, half = c.rope_dim / 2;
  const size_t qd = size_t(c.q_dim()), kvd = size_t(c.kv_dim()), ff = size_t(c.d_ff);
  TKV_ASSERT(n <= s.max_batch(), "batch larger than scratch");
  TKV_ASSERT(s.x.size() == size_t(s.max_batch()) * d && s.q.size() == size_t(s.max_batch()) * qd,
             "scratch was sized for another model");

  float* x = s.x.data();       // (n, d_model)
  float* xn = s.xn.data();     // (n, d_model)
  float* q = s.q.data();       // (n, n_head, head_dim)
  float* k = s.k.data();       // (n, n_kv_head, head_dim)
  float* v = s.v.data();       // (n, n_kv_head, head_dim)
  float* attn = s.attn.data(); // (n, n_head, head_dim)
  float* proj = s.proj.data(); // (n, d_model)
  float* gate = s.gate.data(); // (n, d_ff)
  float* up = s.up.data();     // (n, d_ff)

  for (int i = 0; i < n; ++i) ops::dequantize_row(weights_.token_embd, tokens[i], x + size_t(i) * d);
  const int p0 = cache.n_tokens();
  for (int i = 0; i < n; ++i) {
    rope_angles(c, p0 + i, s.rope_cos.data() + size_t(i) * half, s.rope_sin.data() + size_t(i) * half);
  }
  const float scale = 1.0f / std::sqrt(float(hd));

  cache.begin_batch(n, phase);
  for (int l = 0; l < c.n_layer; ++l) {
    const LayerWeights& L = weights_.layers[size_t(l)];
    for (int i = 0; i < n; ++i) rms_norm(x + size_t(i) * d, L.attn_norm.data(), d, c.norm_eps, xn + size_t(i) * d);
    const ops::Product qkv[] = {{L.wq, q}, {L.wk, k}, {L.wv, v}};
    ops::matmul(qkv, xn, n, pool);
    add_bias(q, L.bq, n);
    add_bias(k, L.bk, n);
    add_bias(v, L.bv, n);
    if (c.has_qk_norm) {
      for (int i = 0; i < n * c.n_head; ++i) rms_norm(q + size_t(i) * hd, L.q_norm.data(), hd, c.norm_eps, q + size_t(i) * hd);
      for (int i = 0; i < n * c.n_kv_head; ++i) rms_norm(k + size_t(i) * hd, L.k_norm.data(), hd, c.norm_eps, k + size_t(i) * hd);
    }
    for (int i = 0; i < n; ++i) {
      const float* cs = s.rope_cos.data() + size_t(i) * half;
      const float* sn = s.rope_sin.data() + size_t(i) * half;
      apply_rope(c, cs, sn, q + size_t(i) * qd, c.n_head);
      apply_rope(c, cs, sn, k + size_t(i) * kvd, c.n_kv_head);
    }
    cache.store(l, k, v);
    cache.attend(l, q, attn, scale, pool);
    mul(L.wo, attn, n, proj, pool);
    for (size_t i = 0; i < size_t(n) * d; ++i) x[i] += proj[i];

    for (int i = 0; i < n; ++i) rms_norm(x + size_t(i) * d, L.ffn_norm.data(), d, c.norm_eps, xn + size_t(i) * d);
    const ops::Product gate_up[] = {{L.w_gate, gate}, {L.w_up, up}};
    ops::matmul(gate_up, xn, n, pool);
    ops::swiglu(gate, up, size_t(n) * ff, pool);
    mul(L.w_down, gate, n, proj, pool);
    for (size_t i = 0; i < size_t(n) * d; ++i) x[i] += proj[i];
  }
  cache.end_batch();

  if (all_logits) {
    for (int i = 0; i < n; ++i) rms_norm(x + size_t(i) * d, weights_.output_norm.data(), d, c.norm_eps, xn + size_t(i) * d);
    mul(weights_.output, xn, n, all_logits, pool);
  }
  if (last_logits) {
    rms_norm(x + size_t(n - 1) * d, weights_.output_norm.data(), d, c.norm_eps, xn);
    ops::matvec(weights_.output, xn, last_logits, pool);
  }
}

}  // namespace turbokv::model
