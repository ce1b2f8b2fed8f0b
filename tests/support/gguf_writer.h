// A GGUF writer for tests: valid files of every value and tensor type, and,
// through the raw_* escape hatches, deliberately malformed ones.
//
//   GgufWriter w;                        // version 3, alignment 32
//   w.add_string("general.architecture", "llama");
//   w.add_u32("llama.block_count", 2);
//   w.add_tensor("blk.0.attn_q.weight", {64, 64}, TensorType::Q8_0, floats);
//   w.write("/tmp/x.gguf");              // or w.to_bytes()
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "io/gguf.h"
#include "ops/tensor_type.h"

namespace turbokv::testing {

using io::GgufType;
using io::GgufValue;
using ops::TensorType;

// Value builders (for add_value and nested arrays).
GgufValue gguf_u8(uint8_t v);
GgufValue gguf_i8(int8_t v);
GgufValue gguf_u16(uint16_t v);
GgufValue gguf_i16(int16_t v);
GgufValue gguf_u32(uint32_t v);
GgufValue gguf_i32(int32_t v);
GgufValue gguf_u64(uint64_t v);
GgufValue gguf_i64(int64_t v);
GgufValue gguf_f32(float v);
GgufValue gguf_f64(double v);
GgufValue gguf_bool(bool v);
GgufValue gguf_string(std::string v);
// An array whose elements all have type elem_type (checked).
GgufValue gguf_array(GgufType elem_type, std::vector<GgufValue> elems);

struct GgufWriterOptions {
  uint32_t version = 3;
  uint64_t alignment = 32;
  // Writes general.alignment (as uint32) first when alignment != 32.
  bool write_alignment_key = true;
};

class GgufWriter {
 public:
  explicit GgufWriter(GgufWriterOptions opts = {});

  // ---- metadata (written in the order added; duplicates are NOT rejected) ----
  void add_value(const std::string& key, GgufValue v);
  void add_u8(const std::string& key, uint8_t v) { add_value(key, gguf_u8(v)); }
  void add_i8(const std::string& key, int8_t v) { add_value(key, gguf_i8(v)); }
  void add_u16(const std::string& key, uint16_t v) { add_value(key, gguf_u16(v)); }
  void add_i16(const std::string& key, int16_t v) { add_value(key, gguf_i16(v)); }
  void add_u32(const std::string& key, uint32_t v) { add_value(key, gguf_u32(v)); }
  void add_i32(const std::string& key, int32_t v) { add_value(key, gguf_i32(v)); }
  void add_u64(const std::string& key, uint64_t v) { add_value(key, gguf_u64(v)); }
  void add_i64(const std::string& key, int64_t v) { add_value(key, gguf_i64(v)); }
  void add_f32(const std::string& key, float v) { add_value(key, gguf_f32(v)); }
  void add_f64(const std::string& key, double v) { add_value(key, gguf_f64(v)); }
  void add_bool(const std::string& key, bool v) { add_value(key, gguf_bool(v)); }
  void add_string(const std::string& key, std::string v) { add_value(key, gguf_string(std::move(v))); }
  void add_string_array(const std::string& key, const std::vector<std::string>& v);
  void add_f32_array(const std::string& key, const std::vector<float>& v);
  void add_i32_array(const std::string& key, const std::vector<int32_t>& v);
  void add_u32_array(const std::string& key, const std::vector<uint32_t>& v);
  // A key whose value type id and value bytes are written verbatim (for
  // unknown types, bogus lengths and counts).
  void add_raw_kv(const std::string& key, uint32_t type_id, std::vector<uint8_t> value_bytes);

  // ---- tensors (data laid out in the order added, each aligned) ----
  // shape is ggml order: shape[0] = ne0, the contiguous row length.
  // Converts/quantizes `values` (n_elements floats) with the reference
  // quantizers (F32, F16, BF16, Q8_0, Q4_0).
  void add_tensor(const std::string& name, std::vector<uint64_t> shape, TensorType type,
                  const std::vector<float>& values);
  // Stores `data` verbatim under any type id and shape (nothing checked).
  // offset_override replaces the offset written in the tensor info (the
  // data is still laid out where it would have gone).
  void add_tensor_raw(const std::string& name, std::vector<uint64_t> shape, uint32_t type_id,
                      std::vector<uint8_t> data, std::optional<uint64_t> offset_override = std::nullopt);

  // ---- header overrides, for corruption tests ----
  void set_magic(uint32_t magic) { magic_ = magic; }
  void set_version(uint32_t version) { opts_.version = version; }
  void set_kv_count_override(uint64_t n) { kv_count_override_ = n; }
  void set_tensor_count_override(uint64_t n) { tensor_count_override_ = n; }

  // The whole file. header_size(), when given, receives the offset where the
  // tensor infos end (before the alignment padding).
  std::vector<uint8_t> to_bytes(size_t* header_size = nullptr) const;
  // Writes to_bytes() to path; throws turbokv::Error on I/O failure.
  void write(const std::string& path) const;

 private:
  struct Tensor {
    std::string name;
    std::vector<uint64_t> shape;
    uint32_t type_id;
    std::vector<uint8_t> data;
    std::optional<uint64_t> offset_override;
  };
  struct RawKv {
    std::string key;
    uint32_t type_id;
    std::vector<uint8_t> bytes;
  };
  GgufWriterOptions opts_;
  uint32_t magic_ = 0x46554747u;
  std::optional<uint64_t> kv_count_override_, tensor_count_override_;
  std::vector<RawKv> kv_;
  std::vector<Tensor> tensors_;
};

// Encodes one value (without its type id) as GGUF stores it.
void encode_gguf_value(const GgufValue& v, std::vector<uint8_t>& out);

// Writes bytes to a file; throws turbokv::Error on failure.
void write_file(const std::string& path, const std::vector<uint8_t>& bytes);

}  // namespace turbokv::testing
