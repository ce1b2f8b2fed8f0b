// GGUF reader (versions 2 and 3): the file format of llama.cpp, Ollama and
// LM Studio models. Spec: https://github.com/ggml-org/ggml/blob/master/docs/gguf.md
//
// The file is memory-mapped. Everything read from it is validated against
// the file size before use (offsets, counts, shapes, string lengths), and a
// malformed file raises turbokv::Error naming the key or tensor and what is
// wrong: never a crash, never an out-of-bounds read.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "ops/tensor_type.h"

namespace turbokv::io {

// Metadata value types, numbered as in the GGUF spec.
enum class GgufType : uint32_t {
  UINT8 = 0, INT8 = 1, UINT16 = 2, INT16 = 3, UINT32 = 4, INT32 = 5,
  FLOAT32 = 6, BOOL = 7, STRING = 8, ARRAY = 9, UINT64 = 10, INT64 = 11, FLOAT64 = 12,
};
const char* gguf_type_name(GgufType t);

// One metadata value. Scalars are widened (integers to int64/uint64,
// floats to double); arrays keep their element type and may nest.
struct GgufValue {
  GgufType type = GgufType::UINT8;
  GgufType elem_type = GgufType::UINT8;  // for ARRAY
  std::variant<uint64_t, int64_t, double, bool, std::string, std::vector<GgufValue>> value;
};

struct GgufTensorInfo {
  std::string name;
  ops::TensorType type = ops::TensorType::F32;
  std::vector<uint64_t> shape;  // ne[0] (innermost, contiguous) first, as in ggml
  uint64_t offset = 0;          // from the start of the data section
  uint64_t n_bytes = 0;         // validated to lie inside the file
  uint64_t n_elements() const;
};

class GgufFile {
 public:
  // Maps and validates `path`; throws Error naming the file and the problem.
  static std::unique_ptr<GgufFile> open(const std::string& path);
  ~GgufFile();
  GgufFile(const GgufFile&) = delete;
  GgufFile& operator=(const GgufFile&) = delete;

  const std::string& path() const { return path_; }
  uint32_t version() const { return version_; }
  uint64_t alignment() const { return alignment_; }

  // ---- metadata ----
  const std::vector<std::pair<std::string, GgufValue>>& metadata() const { return kv_; }
  const GgufValue* find(std::string_view key) const;
  bool has(std::string_view key) const { return find(key) != nullptr; }
  // Typed getters throw Error("<file>: metadata key '<key>' ...") if the key
  // is missing or its type does not convert without loss. Integer getters
  // accept any integer type whose value fits.
  std::string get_string(std::string_view key) const;
  uint64_t get_u64(std::string_view key) const;
  int64_t get_i64(std::string_view key) const;
  uint32_t get_u32(std::string_view key) const;
  float get_f32(std::string_view key) const;  // accepts FLOAT32/FLOAT64 and integers
  bool get_bool(std::string_view key) const;
  uint32_t get_u32_or(std::string_view key, uint32_t fallback) const;
  float get_f32_or(std::string_view key, float fallback) const;
  bool get_bool_or(std::string_view key, bool fallback) const;
  std::string get_string_or(std::string_view key, const std::string& fallback) const;
  std::vector<std::string> get_string_array(std::string_view key) const;
  std::vector<float> get_f32_array(std::string_view key) const;
  std::vector<int32_t> get_i32_array(std::string_view key) const;

  // ---- tensors ----
  const std::vector<GgufTensorInfo>& tensors() const { return tensors_; }
  const GgufTensorInfo* find_tensor(std::string_view name) const;
  // Throws Error naming the tensor if it is absent.
  const GgufTensorInfo& tensor(std::string_view name) const;
  const uint8_t* tensor_data(const GgufTensorInfo& t) const { return data_ + t.offset; }

  // A hash of the tensor table (names, types, shapes, offsets) identifying the
  // model for prompt-cache files. FNV-1a 64, stable across machines.
  uint64_t tensor_table_hash() const;

 private:
  GgufFile() = default;
  std::string path_;
  uint32_t version_ = 0;
  uint64_t alignment_ = 32;
  std::vector<std::pair<std::string, GgufValue>> kv_;
  std::vector<GgufTensorInfo> tensors_;
  const uint8_t* map_ = nullptr;  // whole file
  size_t map_size_ = 0;
  const uint8_t* data_ = nullptr;  // start of the tensor data section
  friend class GgufParser;
};

}  // namespace turbokv::io
