// Online softmax state for attention, shared by every cache's kernel.
//
// One pass over the keys keeps a running maximum m, the normalizer
// d = Σ exp(s_j - m) and the unnormalized output o = Σ exp(s_j - m) v_j
// (Milakov & Gimelshein 2018, "Online normalizer calculation for softmax";
// Dao et al. 2022, FlashAttention). Scores are consumed in blocks so the
// output is rescaled once per block, not once per key. States over disjoint
// key ranges combine with merge() (split-sequence decode), and an empty
// state (m = -inf, d = 0) is a valid identity for merge().
#pragma once

#include <cmath>
#include <limits>

namespace turbokv::kv {

struct SoftmaxState {
  float m = -std::numeric_limits<float>::infinity();  // running max score
  float d = 0.0f;                                     // Σ exp(s - m)
  float* o = nullptr;                                 // (head_dim) Σ exp(s - m) v, caller-owned
  int head_dim = 0;

  SoftmaxState(float* out, int dim) : o(out), head_dim(dim) {
    for (int i = 0; i < head_dim; ++i) o[i] = 0.0f;
  }

  // Raises the running max to cover a block whose largest score is
  // block_max, rescaling d and o; returns the new max to subtract.
  float rescale_for(float block_max) {
    if (!(block_max > m)) return m;
    const float correction = std::exp(m - block_max);  // 0 when the state was empty
    d *= correction;
    for (int i = 0; i < head_dim; ++i) o[i] *= correction;
    m = block_max;
    return m;
  }

  // Folds another state over a disjoint key range into this one.
  void merge(const SoftmaxState& other) {
    if (other.d == 0.0f) return;
    const float m_new = other.m > m ? other.m : m;
    const float a = std::exp(m - m_new), b = std::exp(other.m - m_new);
    d = d * a + other.d * b;
    for (int i = 0; i < head_dim; ++i) o[i] = o[i] * a + other.o[i] * b;
    m = m_new;
  }

  // Turns o into the attention output; an empty state gives zeros.
  void normalize() {
    const float inv = d > 0.0f ? 1.0f / d : 0.0f;
    for (int i = 0; i < head_dim; ++i) o[i] *= inv;
  }
};

}  // namespace turbokv::kv
