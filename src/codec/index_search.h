// The encoders' inner loop: Lloyd–Max indices of scaled values, i.e. for
// each element the number of codebook boundaries strictly below it. SIMD
// (Highway, chosen at run time) and exact: every target returns what
// the scalar comparison does, bit for bit, so records do not depend on the
// CPU that encoded them (the CUDA encoder reproduces them too).
#pragma once

#include <cstdint>

namespace turbokv::codec::detail {

// idx[i] = #{ j < n_t : t[j] < x[i] * scale } for i < n; t sorted, n_t <= 255.
void count_below(const float* t, int n_t, const float* x, float scale, int n, uint8_t* idx);

}  // namespace turbokv::codec::detail
