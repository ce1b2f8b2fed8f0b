// Elementwise activations of the feed-forward block.
#pragma once

#include <cstddef>

#include "util/thread_pool.h"

namespace turbokv::ops {

// SwiGLU in place: gate[i] = silu(gate[i]) * up[i], silu(g) = g / (1 + e^-g).
// Vectorized (Highway exp) and split over the pool.   gate, up: (n)
void swiglu(float* gate, const float* up, size_t n, ThreadPool& pool);

// Scalar reference (std::exp), the test oracle.
void swiglu_ref(float* gate, const float* up, size_t n);

}  // namespace turbokv::ops
