#include "eval/evaluator.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <memory>

#include <nlohmann/json.hpp>

#include "kv/registry.h"
#include "kv/turbo_cache.h"
#include "model/perplexity.h"
#include "util/error.h"
#include "util/file.h"

namespace turbokv::eval {

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// The cache name a scheme runs under in a mode.
std::string cache_name(const std::string& scheme, Mode mode) {
  if (mode == Mode::Deploy) return scheme;
  return scheme + ":strict";
}

// log-softmax of one row, in double.   out: (n_vocab)
void log_softmax(const float* logits, int n, std::vector<double>& out) {
  out.resize(size_t(n));
  double m = -INFINITY;
  for (int i = 0; i < n; ++i) m = std::max(m, double(logits[i]));
  double sum = 0;
  for (int i = 0; i < n; ++i) sum += std::exp(double(logits[i]) - m);
  const double log_z = m + std::log(sum);
  for (int i = 0; i < n; ++i) out[size_t(i)] = double(logits[i]) - log_z;
}

int argmax(const float* x, int n) {
  return int(std::max_element(x, x + n) - x);
}

// Per-scheme running sums over the scored rows.
struct Tally {
  model::NllAccumulator nll;
  std::vector<double> kld;  // (rows scored)
  int64_t top1 = 0;
  size_t kv_bytes = 0;
  double bits = 0;
  int64_t encoded = 0;
  double seconds = 0;
};

// Runs one chunk through `cache` in `mode` and writes the logits of the
// scored rows [first, last).   logits: (last - first, n_vocab)
void run_chunk(const model::Model& model, const int32_t* chunk, int n_ctx, Mode mode, kv::KvCache& cache,
               model::Scratch& scratch, ThreadPool& pool, std::vector<float>& all_rows, float* logits,
               const std::function<void(int)>& advanced) {
  const int n_vocab = model.config().n_vocab;
  const int first = n_ctx / 2, last = n_ctx - 1;
  cache.clear();
  if (mode == Mode::Strict) {
    all_rows.resize(size_t(n_ctx) * n_vocab);
    model.forward(chunk, n_ctx, cache, kv::Phase::Prefill, model::LogitsMode::All, all_rows.data(), scratch, pool);
    std::copy(all_rows.begin() + size_t(first) * n_vocab, all_rows.begin() + size_t(last) * n_vocab, logits);
    advanced(n_ctx);
    return;
  }
  all_rows.resize(size_t(n_vocab));
  model.forward(chunk, first, cache, kv::Phase::Prefill, model::LogitsMode::Last, all_rows.data(), scratch, pool);
  advanced(first);
  for (int j = first; j < last; ++j) {
    model.forward(chunk + j, 1, cache, kv::Phase::Decode, model::LogitsMode::Last,
                  logits + size_t(j - first) * n_vocab, scratch, pool);
    advanced(1);
  }
}

}  // namespace

const char* mode_name(Mode m) { return m == Mode::Deploy ? "deploy" : "strict"; }

Mode parse_mode(const std::string& s) {
  if (s == "deploy") return Mode::Deploy;
  if (s == "strict") return Mode::Strict;
  throw Error("--mode must be 'deploy' or 'strict', got '" + s + "'");
}

double kl_divergence(const float* logits_p, const float* logits_q, int n_vocab) {
  std::vector<double> lp, lq;
  log_softmax(logits_p, n_vocab, lp);
  log_softmax(logits_q, n_vocab, lq);
  double kl = 0;
  for (int i = 0; i < n_vocab; ++i) kl += std::exp(lp[size_t(i)]) * (lp[size_t(i)] - lq[size_t(i)]);
  return std::max(kl, 0.0);
}

EvalResult evaluate(const model::Model& model, const std::vector<int32_t>& tokens, int32_t bos,
                    const EvalOptions& options, ThreadPool& pool, const ProgressFn& progress) {
  const int n_ctx = options.n_ctx;
  if (n_ctx < 4) throw Error("--ctx must be at least 4, got " + std::to_string(n_ctx));
  const int64_t available = int64_t(tokens.size()) / n_ctx;
  if (available < 2) {
    throw Error("the text has " + std::to_string(tokens.size()) + " tokens; at least 2 * ctx = " +
                std::to_string(2 * n_ctx) + " are needed");
  }
  const int n_chunks = options.n_chunks < 0 ? int(available) : int(std::min<int64_t>(options.n_chunks, available));
  if (n_chunks < 1) throw Error("--chunks must be positive");

  // The baseline first, then each scheme once; every cache is built now so a
  // bad name fails before any work.
  std::vector<std::string> names{"fp16"};
  for (const auto& s : options.schemes) {
    if (std::find(names.begin(), names.end(), s) == names.end()) names.push_back(s);
  }
  const kv::CacheShape shape = model.cache_shape(n_ctx);
  std::vector<std::unique_ptr<kv::KvCache>> caches;
  for (const auto& s : names) caches.push_back(kv::make_kv_cache(cache_name(s, options.mode), shape));

  const int n_vocab = model.config().n_vocab;
  const int first = n_ctx / 2, last = n_ctx - 1, rows = last - first;
  model::Scratch scratch(model.config(), std::min(n_ctx, 512));
  std::vector<float> base(size_t(rows) * n_vocab), cur(size_t(rows) * n_vocab), all_rows;
  std::vector<int32_t> chunk(static_cast<size_t>(n_ctx));
  std::vector<Tally> tally(names.size());

  const int64_t per_chunk = options.mode == Mode::Strict ? n_ctx : last;
  const int64_t total = int64_t(n_chunks) * int64_t(names.size()) * per_chunk;
  int64_t done = 0;
  auto advanced = [&](int n) {
    done += n;
    if (progress) progress(done, total);
  };

  const auto t_all = Clock::now();
  for (int c = 0; c < n_chunks; ++c) {
    std::copy(tokens.begin() + int64_t(c) * n_ctx, tokens.begin() + int64_t(c + 1) * n_ctx, chunk.begin());
    if (bos >= 0) chunk[0] = bos;
    for (size_t s = 0; s < names.size(); ++s) {
      const auto t0 = Clock::now();
      float* out = s == 0 ? base.data() : cur.data();
      run_chunk(model, chunk.data(), n_ctx, options.mode, *caches[s], scratch, pool, all_rows, out, advanced);
      Tally& t = tally[s];
      t.seconds += seconds_since(t0);
      t.kv_bytes = std::max(t.kv_bytes, caches[s]->bytes());
      t.bits = caches[s]->bits_per_element();
      if (auto* turbo = dynamic_cast<const kv::TurboKvCache*>(caches[s].get())) t.encoded = turbo->tokens_encoded();
      for (int r = 0; r < rows; ++r) {
        const float* row = out + size_t(r) * n_vocab;
        t.nll.add(-model::log_softmax_at(row, n_vocab, chunk[size_t(first + r + 1)]));
        const float* brow = base.data() + size_t(r) * n_vocab;
        t.kld.push_back(s == 0 ? 0.0 : kl_divergence(brow, row, n_vocab));
        t.top1 += s == 0 || argmax(brow, n_vocab) == argmax(row, n_vocab);
      }
    }
  }

  EvalResult result;
  result.n_ctx = n_ctx;
  result.n_chunks = n_chunks;
  result.mode = options.mode;
  result.tokens_scored = int64_t(n_chunks) * rows;
  result.seconds = seconds_since(t_all);
  const double base_ppl = tally[0].nll.ppl();
  for (size_t s = 0; s < names.size(); ++s) {
    Tally& t = tally[s];
    SchemeResult r;
    r.scheme = names[s];
    r.bits_per_element = t.bits;
    r.kv_bytes = t.kv_bytes;
    r.ppl = t.nll.ppl();
    r.ppl_stderr = t.nll.ppl_error();
    r.delta_ppl_pct = 100.0 * (r.ppl / base_ppl - 1.0);
    double sum = 0;
    for (double k : t.kld) sum += k;
    r.kld_mean = t.kld.empty() ? 0 : sum / double(t.kld.size());
    std::sort(t.kld.begin(), t.kld.end());
    r.kld_p99 = t.kld.empty() ? 0 : t.kld[size_t(0.99 * double(t.kld.size() - 1))];
    r.kld_max = t.kld.empty() ? 0 : t.kld.back();
    r.top1_pct = 100.0 * double(t.top1) / double(result.tokens_scored);
    r.tokens_encoded = t.encoded;
    r.seconds = t.seconds;
    result.results.push_back(r);
  }
  return result;
}

std::string to_json(const EvalResult& r, const std::string& model_path, const std::string& text_path) {
  nlohmann::json j = {{"model", model_path},
                      {"text", text_path},
                      {"ctx", r.n_ctx},
                      {"chunks", r.n_chunks},
                      {"mode", mode_name(r.mode)},
                      {"tokens_scored", r.tokens_scored},
                      {"seconds", r.seconds}};
  nlohmann::json rows = nlohmann::json::array();
  for (const auto& s : r.results) {
    rows.push_back({{"scheme", s.scheme},
                    {"bits_per_element", s.bits_per_element},
                    {"kv_bytes", s.kv_bytes},
                    {"ppl", s.ppl},
                    {"ppl_stderr", s.ppl_stderr},
                    {"delta_ppl_pct", s.delta_ppl_pct},
                    {"kld_mean", s.kld_mean},
                    {"kld_p99", s.kld_p99},
                    {"kld_max", s.kld_max},
                    {"top1_pct", s.top1_pct},
                    {"tokens_encoded", s.tokens_encoded}});
  }
  j["results"] = rows;
  return j.dump(1) + "\n";
}

std::string to_table(const EvalResult& r) {
  std::string out;
  char line[512];
  std::snprintf(line, sizeof line, "mode %s, ctx %d, %d chunks, %lld tokens scored, %.1f s\n\n", mode_name(r.mode),
                r.n_ctx, r.n_chunks, static_cast<long long>(r.tokens_scored), r.seconds);
  out += line;
  std::snprintf(line, sizeof line, "%-28s %7s %10s %9s %8s %8s %9s %9s %9s %7s\n", "scheme", "bits", "KV bytes",
                "PPL", "+/-", "dPPL%", "KLD mean", "KLD p99", "KLD max", "top-1%");
  out += line;
  for (const auto& s : r.results) {
    std::snprintf(line, sizeof line, "%-28s %7.3f %10zu %9.4f %8.4f %+8.3f %9.6f %9.6f %9.5f %7.3f\n",
                  s.scheme.c_str(), s.bits_per_element, s.kv_bytes, s.ppl, s.ppl_stderr, s.delta_ppl_pct, s.kld_mean,
                  s.kld_p99, s.kld_max, s.top1_pct);
    out += line;
  }
  return out;
}

void write_plot_svg(const EvalResult& r, const std::string& title, const std::string& path) {
  // Axes: x = bits per element (linear, 0..max), y = mean KLD (log10).
  const double W = 760, H = 480, L = 80, R = 30, T = 50, B = 60;
  double max_bits = 16;
  for (const auto& s : r.results) max_bits = std::max(max_bits, s.bits_per_element);
  double y_lo = -5, y_hi = 0;  // 1e-5 .. 1
  for (const auto& s : r.results) {
    if (s.kld_mean > 0) {
      y_lo = std::min(y_lo, std::floor(std::log10(s.kld_mean)));
      y_hi = std::max(y_hi, std::ceil(std::log10(s.kld_mean)));
    }
  }
  auto X = [&](double bits) { return L + (W - L - R) * bits / max_bits; };
  auto Y = [&](double kld) {
    const double v = kld > 0 ? std::log10(kld) : y_lo;
    return T + (H - T - B) * (y_hi - v) / (y_hi - y_lo);
  };
  auto esc = [](const std::string& s) {
    std::string o;
    for (char c : s) {
      if (c == '<') o += "&lt;"; else if (c == '>') o += "&gt;"; else if (c == '&') o += "&amp;"; else o += c;
    }
    return o;
  };
  std::string svg;
  char buf[512];
  std::snprintf(buf, sizeof buf,
                "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%g\" height=\"%g\" font-family=\"sans-serif\" "
                "font-size=\"12\">\n<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n", W, H);
  svg += buf;
  std::snprintf(buf, sizeof buf, "<text x=\"%g\" y=\"25\" font-size=\"15\" text-anchor=\"middle\">%s</text>\n",
                W / 2, esc(title).c_str());
  svg += buf;
  // Grid and ticks.
  for (int b = 0; b <= int(max_bits); b += 2) {
    std::snprintf(buf, sizeof buf,
                  "<line x1=\"%.1f\" y1=\"%g\" x2=\"%.1f\" y2=\"%g\" stroke=\"#ddd\"/>"
                  "<text x=\"%.1f\" y=\"%g\" text-anchor=\"middle\">%d</text>\n",
                  X(b), T, X(b), H - B, X(b), H - B + 18, b);
    svg += buf;
  }
  for (int e = int(y_lo); e <= int(y_hi); ++e) {
    const double y = Y(std::pow(10.0, e));
    std::snprintf(buf, sizeof buf,
                  "<line x1=\"%g\" y1=\"%.1f\" x2=\"%g\" y2=\"%.1f\" stroke=\"#ddd\"/>"
                  "<text x=\"%g\" y=\"%.1f\" text-anchor=\"end\">1e%d</text>\n",
                  L, y, W - R, y, L - 6, y + 4, e);
    svg += buf;
  }
  std::snprintf(buf, sizeof buf,
                "<text x=\"%g\" y=\"%g\" text-anchor=\"middle\">bits per element (keys and values, metadata "
                "included)</text>\n<text x=\"18\" y=\"%g\" text-anchor=\"middle\" transform=\"rotate(-90 18 %g)\">"
                "mean KL divergence from FP16 (nats, log scale)</text>\n",
                (L + W - R) / 2, H - 15, (T + H - B) / 2, (T + H - B) / 2);
  svg += buf;
  for (const auto& s : r.results) {
    const double x = X(s.bits_per_element), y = Y(s.kld_mean);
    const char* color = s.kld_mean == 0 ? "#2a7" : "#c33";
    std::snprintf(buf, sizeof buf,
                  "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"5\" fill=\"%s\"/>"
                  "<text x=\"%.1f\" y=\"%.1f\">%s (%.4g)</text>\n",
                  x, y, color, x + 8, y - 6, esc(s.scheme).c_str(), s.kld_mean);
    svg += buf;
  }
  svg += "</svg>\n";
  write_file_atomic(path, svg);
}

}  // namespace turbokv::eval
