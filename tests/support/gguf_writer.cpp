#include "support/gguf_writer.h"

#include <cstdio>
#include <cstring>

#include "ops/quantize.h"
#include "util/error.h"

namespace turbokv::testing {

namespace {
template <typename T>
void put(std::vector<uint8_t>& out, T v) {
  // resize + memcpy rather than insert: g++ 12 warns falsely (-Wstringop-overflow) on the latter.
  const size_t at = out.size();
  out.resize(at + sizeof(T));
  std::memcpy(out.data() + at, &v, sizeof(T));
}
void put_string(std::vector<uint8_t>& out, const std::string& s) {
  put<uint64_t>(out, s.size());
  out.insert(out.end(), s.begin(), s.end());
}
GgufValue scalar(GgufType t, decltype(GgufValue::value) v) {
  GgufValue g;
  g.type = t;
  g.value = std::move(v);
  return g;
}
}  // namespace

GgufValue gguf_u8(uint8_t v) { return scalar(GgufType::UINT8, uint64_t(v)); }
GgufValue gguf_i8(int8_t v) { return scalar(GgufType::INT8, int64_t(v)); }
GgufValue gguf_u16(uint16_t v) { return scalar(GgufType::UINT16, uint64_t(v)); }
GgufValue gguf_i16(int16_t v) { return scalar(GgufType::INT16, int64_t(v)); }
GgufValue gguf_u32(uint32_t v) { return scalar(GgufType::UINT32, uint64_t(v)); }
GgufValue gguf_i32(int32_t v) { return scalar(GgufType::INT32, int64_t(v)); }
GgufValue gguf_u64(uint64_t v) { return scalar(GgufType::UINT64, v); }
GgufValue gguf_i64(int64_t v) { return scalar(GgufType::INT64, v); }
GgufValue gguf_f32(float v) { return scalar(GgufType::FLOAT32, double(v)); }
GgufValue gguf_f64(double v) { return scalar(GgufType::FLOAT64, v); }
GgufValue gguf_bool(bool v) { return scalar(GgufType::BOOL, v); }
GgufValue gguf_string(std::string v) { return scalar(GgufType::STRING, std::move(v)); }
GgufValue gguf_array(GgufType elem_type, std::vector<GgufValue> elems) {
  for (const auto& e : elems) {
    if (e.type != elem_type) throw Error("gguf_array: element type differs from the array's element type");
  }
  GgufValue g;
  g.type = GgufType::ARRAY;
  g.elem_type = elem_type;
  g.value = std::move(elems);
  return g;
}

void encode_gguf_value(const GgufValue& v, std::vector<uint8_t>& out) {
  auto u = [&] { return std::get<uint64_t>(v.value); };
  auto i = [&] { return std::get<int64_t>(v.value); };
  switch (v.type) {
    case GgufType::UINT8: put<uint8_t>(out, uint8_t(u())); return;
    case GgufType::INT8: put<int8_t>(out, int8_t(i())); return;
    case GgufType::UINT16: put<uint16_t>(out, uint16_t(u())); return;
    case GgufType::INT16: put<int16_t>(out, int16_t(i())); return;
    case GgufType::UINT32: put<uint32_t>(out, uint32_t(u())); return;
    case GgufType::INT32: put<int32_t>(out, int32_t(i())); return;
    case GgufType::UINT64: put<uint64_t>(out, u()); return;
    case GgufType::INT64: put<int64_t>(out, i()); return;
    case GgufType::FLOAT32: put<float>(out, float(std::get<double>(v.value))); return;
    case GgufType::FLOAT64: put<double>(out, std::get<double>(v.value)); return;
    case GgufType::BOOL: put<uint8_t>(out, std::get<bool>(v.value) ? 1 : 0); return;
    case GgufType::STRING: put_string(out, std::get<std::string>(v.value)); return;
    case GgufType::ARRAY: {
      const auto& a = std::get<std::vector<GgufValue>>(v.value);
      put<uint32_t>(out, uint32_t(v.elem_type));
      put<uint64_t>(out, a.size());
      for (const auto& e : a) encode_gguf_value(e, out);
      return;
    }
  }
  throw Error("encode_gguf_value: unknown value type");
}

GgufWriter::GgufWriter(GgufWriterOptions opts) : opts_(opts) {
  if (opts_.write_alignment_key && opts_.alignment != 32) add_u32("general.alignment", uint32_t(opts_.alignment));
}

void GgufWriter::add_value(const std::string& key, GgufValue v) {
  std::vector<uint8_t> bytes;
  encode_gguf_value(v, bytes);
  kv_.push_back({key, uint32_t(v.type), std::move(bytes)});
}

void GgufWriter::add_raw_kv(const std::string& key, uint32_t type_id, std::vector<uint8_t> value_bytes) {
  kv_.push_back({key, type_id, std::move(value_bytes)});
}

void GgufWriter::add_string_array(const std::string& key, const std::vector<std::string>& v) {
  std::vector<GgufValue> e;
  e.reserve(v.size());
  for (const auto& s : v) e.push_back(gguf_string(s));
  add_value(key, gguf_array(GgufType::STRING, std::move(e)));
}
void GgufWriter::add_f32_array(const std::string& key, const std::vector<float>& v) {
  std::vector<GgufValue> e;
  for (float x : v) e.push_back(gguf_f32(x));
  add_value(key, gguf_array(GgufType::FLOAT32, std::move(e)));
}
void GgufWriter::add_i32_array(const std::string& key, const std::vector<int32_t>& v) {
  std::vector<GgufValue> e;
  for (int32_t x : v) e.push_back(gguf_i32(x));
  add_value(key, gguf_array(GgufType::INT32, std::move(e)));
}
void GgufWriter::add_u32_array(const std::string& key, const std::vector<uint32_t>& v) {
  std::vector<GgufValue> e;
  for (uint32_t x : v) e.push_back(gguf_u32(x));
  add_value(key, gguf_array(GgufType::UINT32, std::move(e)));
}

void GgufWriter::add_tensor(const std::string& name, std::vector<uint64_t> shape, TensorType type,
                            const std::vector<float>& values) {
  uint64_t n = 1;
  for (uint64_t d : shape) n *= d;
  if (shape.empty() || values.size() != n) {
    throw Error("GgufWriter::add_tensor '" + name + "': " + std::to_string(values.size()) +
                " values for a shape of " + std::to_string(n) + " elements");
  }
  const size_t ne0 = size_t(shape[0]);
  const size_t rb = ops::row_bytes(type, ne0);
  std::vector<uint8_t> data(rb * (n / ne0));
  for (size_t r = 0; r < n / ne0; ++r) ops::quantize_row(type, values.data() + r * ne0, data.data() + r * rb, ne0);
  add_tensor_raw(name, std::move(shape), uint32_t(type), std::move(data));
}

void GgufWriter::add_tensor_raw(const std::string& name, std::vector<uint64_t> shape, uint32_t type_id,
                                std::vector<uint8_t> data, std::optional<uint64_t> offset_override) {
  tensors_.push_back({name, std::move(shape), type_id, std::move(data), offset_override});
}

std::vector<uint8_t> GgufWriter::to_bytes(size_t* header_size) const {
  const uint64_t align = opts_.alignment == 0 ? 1 : opts_.alignment;
  auto align_up = [&](uint64_t x) { return (x + align - 1) / align * align; };
  std::vector<uint8_t> out;
  put<uint32_t>(out, magic_);
  put<uint32_t>(out, opts_.version);
  put<uint64_t>(out, tensor_count_override_.value_or(tensors_.size()));
  put<uint64_t>(out, kv_count_override_.value_or(kv_.size()));
  for (const auto& kv : kv_) {
    put_string(out, kv.key);
    put<uint32_t>(out, kv.type_id);
    out.insert(out.end(), kv.bytes.begin(), kv.bytes.end());
  }
  std::vector<uint64_t> offsets;
  uint64_t off = 0;
  for (const auto& t : tensors_) {
    offsets.push_back(off);
    put_string(out, t.name);
    put<uint32_t>(out, uint32_t(t.shape.size()));
    for (uint64_t d : t.shape) put<uint64_t>(out, d);
    put<uint32_t>(out, t.type_id);
    put<uint64_t>(out, t.offset_override.value_or(off));
    off = align_up(off + t.data.size());
  }
  if (header_size) *header_size = out.size();
  out.resize(align_up(out.size()), 0);
  const size_t data_start = out.size();
  for (size_t i = 0; i < tensors_.size(); ++i) {
    out.resize(data_start + offsets[i], 0);
    out.insert(out.end(), tensors_[i].data.begin(), tensors_[i].data.end());
  }
  if (!tensors_.empty()) out.resize(align_up(out.size()), 0);
  return out;
}

void write_file(const std::string& path, const std::vector<uint8_t>& bytes) {
  FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) throw Error(path + ": cannot open for writing");
  const size_t n = bytes.empty() ? 0 : std::fwrite(bytes.data(), 1, bytes.size(), f);
  const bool closed = std::fclose(f) == 0;
  const bool ok = n == bytes.size() && closed;
  if (!ok) throw Error(path + ": write failed");
}

void GgufWriter::write(const std::string& path) const { write_file(path, to_bytes()); }

}  // namespace turbokv::testing
