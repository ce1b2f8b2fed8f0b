// Builds without the AVX512-FP16 kernels (another architecture, or a
// compiler without the instructions): the fp32 kernels serve every CPU.
#include "kv/turbo_attention_half.h"

namespace turbokv::kv::detail {

bool plan_half_kernels(int, int, FusedKernels&) { return false; }

}  // namespace turbokv::kv::detail
