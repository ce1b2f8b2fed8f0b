// The fidelity evaluator: every scheme against the FP16 cache, token by token.
//
// The text is cut into chunks as llama.cpp's perplexity tool cuts it
// (model/perplexity.h): chunk i is tokens [i*ctx, (i+1)*ctx) with BOS first,
// and rows j in [ctx/2, ctx-1) are scored against token j+1. For each chunk
// the FP16 baseline and every scheme run on their own cache, and on each
// scored row the scheme's next-token distribution is compared with the
// baseline's: KL(p_fp16 || p_scheme), top-1 agreement, and the target's NLL.
//
// Modes:
//   deploy  the chunk's first ctx/2 tokens are one prefill batch (kept raw by
//           two-phase caches); every scored token then runs through the real
//           decode path, teacher-forced one token at a time, attending over
//           the compressed prefix and the incrementally encoded tokens.
//   strict  the scheme runs with its `strict` option (everything encoded from
//           the first token) and the whole chunk is one batch, as llama.cpp's
//           quantized caches run in its perplexity tool.
// The baseline runs through the same path as the schemes, so `fp16` compared
// with itself is exactly KLD 0 and top-1 100%.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "model/model.h"
#include "util/thread_pool.h"

namespace turbokv::eval {

enum class Mode { Deploy, Strict };
const char* mode_name(Mode m);
Mode parse_mode(const std::string& s);  // throws Error naming --mode

struct EvalOptions {
  int n_ctx = 512;
  int n_chunks = -1;  // < 0: every whole chunk of the text
  Mode mode = Mode::Deploy;
  std::vector<std::string> schemes;  // compared with the fp16 baseline (which is always run)
};

struct SchemeResult {
  std::string scheme;
  double bits_per_element = 0;  // the cache's own figure when full, metadata included
  size_t kv_bytes = 0;          // bytes of the cache holding one full chunk
  double ppl = 0, ppl_stderr = 0;
  double delta_ppl_pct = 0;     // 100 * (ppl / ppl_fp16 - 1)
  double kld_mean = 0, kld_p99 = 0, kld_max = 0;
  double top1_pct = 0;          // rows whose argmax equals the baseline's
  int64_t tokens_encoded = 0;   // tokens the cache compressed (0 for dense caches)
  double seconds = 0;
};

struct EvalResult {
  int n_ctx = 0;
  int n_chunks = 0;
  Mode mode = Mode::Deploy;
  int64_t tokens_scored = 0;
  std::vector<SchemeResult> results;  // results[0] is the fp16 baseline
  double seconds = 0;
};

// Called as work progresses: tokens processed so far and in total.
using ProgressFn = std::function<void(int64_t done, int64_t total)>;

// Runs the evaluation. Throws Error for a bad scheme name (before any work),
// a text shorter than two chunks, or a context the model cannot hold.
EvalResult evaluate(const model::Model& model, const std::vector<int32_t>& tokens, int32_t bos,
                    const EvalOptions& options, ThreadPool& pool, const ProgressFn& progress = {});

// KL(p || q) of the softmax distributions of two logit rows, in nats
// (log-softmax in double, as llama.cpp computes it).
double kl_divergence(const float* logits_p, const float* logits_q, int n_vocab);

// The JSON document of `turbokv perplexity --json`.
std::string to_json(const EvalResult& r, const std::string& model_path, const std::string& text_path);
// The aligned table printed without --json.
std::string to_table(const EvalResult& r);
// An SVG chart of mean KL divergence (log scale) against bits per element,
// one labelled point per scheme. Written atomically (temporary file, rename).
void write_plot_svg(const EvalResult& r, const std::string& title, const std::string& path);

}  // namespace turbokv::eval
