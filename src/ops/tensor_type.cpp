#include "ops/tensor_type.h"

#include <string>

#include "util/error.h"

namespace turbokv::ops {
namespace {

struct TypeTraits {
  const char* name;
  size_t block_elements;
  size_t block_bytes;
  bool supported;
};

// Block geometry of every ggml type GGUF files use, so the reader can check
// the size of tensors turbokv cannot compute with (they may still be listed).
TypeTraits traits(TensorType t) {
  switch (t) {
    case TensorType::F32: return {"f32", 1, 4, true};
    case TensorType::F16: return {"f16", 1, 2, true};
    case TensorType::BF16: return {"bf16", 1, 2, true};
    case TensorType::Q8_0: return {"q8_0", kQK8_0, sizeof(BlockQ8_0), true};
    case TensorType::Q4_0: return {"q4_0", kQK4_0, sizeof(BlockQ4_0), true};
    case TensorType::Q4_1: return {"q4_1", 32, 20, false};
    case TensorType::Q5_0: return {"q5_0", 32, 22, false};
    case TensorType::Q5_1: return {"q5_1", 32, 24, false};
    case TensorType::Q8_1: return {"q8_1", 32, 36, false};
    case TensorType::Q2_K: return {"q2_k", 256, 84, false};
    case TensorType::Q3_K: return {"q3_k", 256, 110, false};
    case TensorType::Q4_K: return {"q4_k", 256, 144, false};
    case TensorType::Q5_K: return {"q5_k", 256, 176, false};
    case TensorType::Q6_K: return {"q6_k", 256, 210, false};
    case TensorType::Q8_K: return {"q8_k", 256, 292, false};
  }
  return {"unknown", 0, 0, false};
}

}  // namespace

bool is_supported(TensorType t) { return traits(t).supported; }
const char* type_name(TensorType t) { return traits(t).name; }
size_t block_elements(TensorType t) { return traits(t).block_elements; }
size_t block_bytes(TensorType t) { return traits(t).block_bytes; }

size_t row_bytes(TensorType t, size_t n) {
  const TypeTraits tr = traits(t);
  if (tr.block_elements == 0) {
    throw Error("row_bytes: unknown tensor type id " + std::to_string(uint32_t(t)));
  }
  if (n % tr.block_elements != 0) {
    throw Error(std::string("row_bytes: a row of ") + std::to_string(n) + " elements is not a multiple of the " +
                tr.name + " block size " + std::to_string(tr.block_elements));
  }
  return n / tr.block_elements * tr.block_bytes;
}

const char* supported_type_list() { return "f32, f16, bf16, q8_0, q4_0"; }

}  // namespace turbokv::ops
