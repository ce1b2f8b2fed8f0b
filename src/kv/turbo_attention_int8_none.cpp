// Builds without the int8 score kernels (another architecture, or a
// compiler without AVX-512 VNNI and VBMI): the other kernels score keys.
#include "kv/turbo_attention_int8.h"

namespace turbokv::kv::detail {

bool plan_int8_scores(int, int, FusedKernels&) { return false; }

}  // namespace turbokv::kv::detail
