// CUDA error checks for the turbokv_cuda kernels: every runtime call and
// every launch is checked, and a failure becomes turbokv::Error naming the
// call, so exit code 0 means the kernels ran.
#pragma once

#include <cuda_runtime.h>

#include <string>

#include "util/error.h"

namespace turbokv::cuda {

inline void check_cuda(cudaError_t e, const char* what, const char* file, int line) {
  if (e != cudaSuccess) {
    throw Error(std::string("CUDA error in ") + what + " (" + file + ":" + std::to_string(line) +
                "): " + cudaGetErrorName(e) + ": " + cudaGetErrorString(e));
  }
}

}  // namespace turbokv::cuda

#define TKV_CUDA(call) ::turbokv::cuda::check_cuda((call), #call, __FILE__, __LINE__)
// After a launch: configuration errors now, execution errors at the next sync.
#define TKV_CUDA_LAUNCH(name) ::turbokv::cuda::check_cuda(cudaGetLastError(), name, __FILE__, __LINE__)
