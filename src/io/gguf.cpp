// GGUF parsing. Layout (little-endian), per the spec:
//   u32 magic "GGUF" | u32 version | u64 n_tensors | u64 n_kv
//   n_kv x { string key | u32 value_type | value }
//   n_tensors x { string name | u32 n_dims | u64 ne[n_dims] | u32 type | u64 offset }
//   padding to `general.alignment` (default 32) | tensor data
// where string = u64 length + bytes and array = u32 elem_type + u64 count + elems.
//
// Every count and length is checked against the bytes that remain BEFORE
// anything is allocated, so a hostile header cannot cause a huge allocation.
#include "io/gguf.h"

#include <cstring>
#include <limits>
#include <string>
#include <unordered_set>

#include "io/mapped_file.h"
#include "util/error.h"

namespace turbokv::io {

namespace {

constexpr uint32_t kGgufMagic = 0x46554747u;  // "GGUF" read as little-endian u32
constexpr uint64_t kDefaultAlignment = 32;
// Arrays of arrays are legal but nothing real nests deeper than 2; a limit
// keeps a crafted file from recursing the parser off the stack.
constexpr int kMaxArrayDepth = 8;
constexpr uint32_t kMaxDims = 4;

bool is_known_value_type(uint32_t t) { return t <= uint32_t(GgufType::FLOAT64); }

// Smallest encoding of one value of type t (used to bound counts before allocating).
uint64_t min_value_bytes(GgufType t) {
  switch (t) {
    case GgufType::UINT8: case GgufType::INT8: case GgufType::BOOL: return 1;
    case GgufType::UINT16: case GgufType::INT16: return 2;
    case GgufType::UINT32: case GgufType::INT32: case GgufType::FLOAT32: return 4;
    case GgufType::UINT64: case GgufType::INT64: case GgufType::FLOAT64: return 8;
    case GgufType::STRING: return 8;
    case GgufType::ARRAY: return 12;
  }
  return 1;
}

std::string value_to_string(const GgufValue& v) {
  switch (v.value.index()) {
    case 0: return std::to_string(std::get<uint64_t>(v.value));
    case 1: return std::to_string(std::get<int64_t>(v.value));
    case 2: return std::to_string(std::get<double>(v.value));
    case 3: return std::get<bool>(v.value) ? "true" : "false";
    case 4: return "'" + std::get<std::string>(v.value) + "'";
    default: return "array";
  }
}

}  // namespace

const char* gguf_type_name(GgufType t) {
  switch (t) {
    case GgufType::UINT8: return "uint8";
    case GgufType::INT8: return "int8";
    case GgufType::UINT16: return "uint16";
    case GgufType::INT16: return "int16";
    case GgufType::UINT32: return "uint32";
    case GgufType::INT32: return "int32";
    case GgufType::FLOAT32: return "float32";
    case GgufType::BOOL: return "bool";
    case GgufType::STRING: return "string";
    case GgufType::ARRAY: return "array";
    case GgufType::UINT64: return "uint64";
    case GgufType::INT64: return "int64";
    case GgufType::FLOAT64: return "float64";
  }
  return "unknown";
}

uint64_t GgufTensorInfo::n_elements() const {
  uint64_t n = 1;
  for (uint64_t d : shape) n *= d;  // validated at load not to overflow
  return n;
}

// Reads the header from the mapped bytes; `what` strings feed error messages.
class GgufParser {
 public:
  GgufParser(GgufFile& f, const uint8_t* data, size_t size) : f_(f), p_(data), size_(size) {}

  void parse() {
    if (size_ < 4) fail("file is too small to be a GGUF file (" + std::to_string(size_) + " bytes)");
    const uint32_t magic = read_u32("the magic number");
    if (magic != kGgufMagic) {
      char m[5] = {char(p_[0]), char(p_[1]), char(p_[2]), char(p_[3]), 0};
      for (int i = 0; i < 4; ++i) if (m[i] < 32 || m[i] > 126) m[i] = '?';
      fail(std::string("not a GGUF file: bad magic '") + m + "' (expected 'GGUF')");
    }
    f_.version_ = read_u32("the version");
    if (f_.version_ == 1) fail("GGUF version 1 is not supported (only versions 2 and 3; re-convert the model)");
    if (f_.version_ != 2 && f_.version_ != 3) {
      fail("unsupported GGUF version " + std::to_string(f_.version_) + " (expected 2 or 3)");
    }
    const uint64_t n_tensors = read_u64("the tensor count");
    const uint64_t n_kv = read_u64("the metadata key/value count");
    // Each key/value takes at least 13 bytes (key length, type, 1-byte value)
    // and each tensor info at least 32 (name length, n_dims, one dim, type, offset).
    if (n_kv > remaining() / 13) {
      fail("metadata key/value count " + std::to_string(n_kv) + " is impossible: only " +
           std::to_string(remaining()) + " bytes remain in the file");
    }
    if (n_tensors > remaining() / 32) {
      fail("tensor count " + std::to_string(n_tensors) + " is impossible: only " + std::to_string(remaining()) +
           " bytes remain in the file");
    }

    f_.kv_.reserve(size_t(n_kv));
    std::unordered_set<std::string> keys;
    for (uint64_t i = 0; i < n_kv; ++i) {
      const std::string ctx = "metadata entry " + std::to_string(i);
      std::string key = read_string(ctx + " key");
      const std::string kctx = "metadata key '" + key + "'";
      if (!keys.insert(key).second) fail("duplicate " + kctx);
      const uint32_t t = read_u32(kctx + " value type");
      if (!is_known_value_type(t)) fail(kctx + ": unknown value type " + std::to_string(t));
      GgufValue v = read_value(GgufType(t), kctx, 0);
      f_.kv_.emplace_back(std::move(key), std::move(v));
    }

    if (const GgufValue* a = f_.find("general.alignment")) {
      uint64_t al = 0;
      if (a->value.index() == 0) al = std::get<uint64_t>(a->value);
      else if (a->value.index() == 1 && std::get<int64_t>(a->value) > 0) al = uint64_t(std::get<int64_t>(a->value));
      else if (a->value.index() != 1) fail("metadata key 'general.alignment': expected an integer, got " + std::string(gguf_type_name(a->type)));
      if (al == 0 || (al & (al - 1)) != 0) {
        fail("metadata key 'general.alignment': " + value_to_string(*a) + " is not a nonzero power of two");
      }
      f_.alignment_ = al;
    } else {
      f_.alignment_ = kDefaultAlignment;
    }

    f_.tensors_.reserve(size_t(n_tensors));
    std::unordered_set<std::string> names;
    for (uint64_t i = 0; i < n_tensors; ++i) {
      GgufTensorInfo ti;
      ti.name = read_string("the name of tensor " + std::to_string(i));
      const std::string tctx = "tensor '" + ti.name + "'";
      if (!names.insert(ti.name).second) fail("duplicate " + tctx);
      const uint32_t n_dims = read_u32(tctx + " n_dims");
      if (n_dims == 0 || n_dims > kMaxDims) {
        fail(tctx + ": n_dims " + std::to_string(n_dims) + " is out of range (1.." + std::to_string(kMaxDims) + ")");
      }
      uint64_t n_el = 1;
      for (uint32_t d = 0; d < n_dims; ++d) {
        const uint64_t ne = read_u64(tctx + " dimension " + std::to_string(d));
        if (ne == 0) fail(tctx + ": dimension " + std::to_string(d) + " is zero");
        if (ne > uint64_t(std::numeric_limits<int64_t>::max()) ||
            __builtin_mul_overflow(n_el, ne, &n_el) || n_el > uint64_t(std::numeric_limits<int64_t>::max())) {
          fail(tctx + ": element count overflows (shape " + shape_string_partial(ti.shape, ne) + ")");
        }
        ti.shape.push_back(ne);
      }
      const uint32_t type_id = read_u32(tctx + " type");
      ti.type = ops::TensorType(type_id);
      ti.offset = read_u64(tctx + " offset");
      if (ti.offset % f_.alignment_ != 0) {
        fail(tctx + ": data offset " + std::to_string(ti.offset) + " is not a multiple of the alignment " +
             std::to_string(f_.alignment_));
      }
      const size_t blk = ops::block_elements(ti.type);
      if (blk != 0) {
        if (ti.shape[0] % blk != 0) {
          fail(tctx + ": row length ne[0] = " + std::to_string(ti.shape[0]) + " is not a multiple of the " +
               ops::type_name(ti.type) + " block size " + std::to_string(blk));
        }
        const uint64_t rows = n_el / ti.shape[0];
        uint64_t rb = 0;
        if (__builtin_mul_overflow(ti.shape[0] / blk, uint64_t(ops::block_bytes(ti.type)), &rb) ||
            __builtin_mul_overflow(rb, rows, &ti.n_bytes)) {
          fail(tctx + ": byte size overflows (" + std::to_string(n_el) + " elements of " + ops::type_name(ti.type) + ")");
        }
      } else {
        ti.n_bytes = 0;  // unknown type id: size unknown, reported by id to whoever wants it
      }
      f_.tensors_.push_back(std::move(ti));
    }

    // The data section starts at the first aligned offset after the header.
    const uint64_t header_end = pos_;
    const uint64_t data_start = (header_end + f_.alignment_ - 1) / f_.alignment_ * f_.alignment_;
    const uint64_t data_size = data_start <= size_ ? size_ - data_start : 0;
    for (const GgufTensorInfo& ti : f_.tensors_) {
      uint64_t end = 0;
      if (__builtin_add_overflow(ti.offset, ti.n_bytes, &end) || end > data_size ||
          (ti.n_bytes == 0 && ti.offset > data_size)) {
        fail("tensor '" + ti.name + "': data [offset " + std::to_string(ti.offset) + ", " + std::to_string(ti.n_bytes) +
             " bytes] extends past the end of the file (size " + std::to_string(size_) + ", data section starts at " +
             std::to_string(data_start) + ")");
      }
    }
    f_.data_ = p_ + (data_start <= size_ ? data_start : size_);
  }

 private:
  [[noreturn]] void fail(const std::string& what) const { throw Error(f_.path_ + ": " + what); }

  uint64_t remaining() const { return size_ - pos_; }

  void need(uint64_t n, const std::string& what) const {
    if (n > remaining()) {
      fail("truncated: reading " + what + " at offset " + std::to_string(pos_) + " needs " + std::to_string(n) +
           " bytes but only " + std::to_string(remaining()) + " remain (file size " + std::to_string(size_) + ")");
    }
  }
  template <typename T>
  T read_pod(const std::string& what) {
    need(sizeof(T), what);
    T v;
    std::memcpy(&v, p_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }
  uint32_t read_u32(const std::string& what) { return read_pod<uint32_t>(what); }
  uint64_t read_u64(const std::string& what) { return read_pod<uint64_t>(what); }

  std::string read_string(const std::string& what) {
    const uint64_t len = read_u64(what + " length");
    if (len > remaining()) {
      fail(what + ": string length " + std::to_string(len) + " at offset " + std::to_string(pos_ - 8) +
           " extends past the end of the file (" + std::to_string(remaining()) + " bytes remain)");
    }
    std::string s(reinterpret_cast<const char*>(p_ + pos_), size_t(len));
    pos_ += len;
    return s;
  }

  GgufValue read_value(GgufType t, const std::string& ctx, int depth) {
    GgufValue v;
    v.type = t;
    switch (t) {
      case GgufType::UINT8: v.value = uint64_t(read_pod<uint8_t>(ctx)); break;
      case GgufType::INT8: v.value = int64_t(read_pod<int8_t>(ctx)); break;
      case GgufType::UINT16: v.value = uint64_t(read_pod<uint16_t>(ctx)); break;
      case GgufType::INT16: v.value = int64_t(read_pod<int16_t>(ctx)); break;
      case GgufType::UINT32: v.value = uint64_t(read_pod<uint32_t>(ctx)); break;
      case GgufType::INT32: v.value = int64_t(read_pod<int32_t>(ctx)); break;
      case GgufType::UINT64: v.value = read_pod<uint64_t>(ctx); break;
      case GgufType::INT64: v.value = read_pod<int64_t>(ctx); break;
      case GgufType::FLOAT32: v.value = double(read_pod<float>(ctx)); break;
      case GgufType::FLOAT64: v.value = read_pod<double>(ctx); break;
      case GgufType::BOOL: {
        const uint8_t b = read_pod<uint8_t>(ctx);
        if (b > 1) fail(ctx + ": invalid bool byte " + std::to_string(b) + " (expected 0 or 1)");
        v.value = b != 0;
        break;
      }
      case GgufType::STRING: v.value = read_string(ctx); break;
      case GgufType::ARRAY: {
        if (depth >= kMaxArrayDepth) {
          fail(ctx + ": arrays nested deeper than " + std::to_string(kMaxArrayDepth) + " levels");
        }
        const uint32_t et = read_u32(ctx + " array element type");
        if (!is_known_value_type(et)) fail(ctx + ": unknown array element type " + std::to_string(et));
        v.elem_type = GgufType(et);
        const uint64_t count = read_u64(ctx + " array count");
        const uint64_t min_bytes = min_value_bytes(v.elem_type);
        if (count > remaining() / min_bytes) {
          fail(ctx + ": array count " + std::to_string(count) + " of " + gguf_type_name(v.elem_type) +
               " extends past the end of the file (" + std::to_string(remaining()) + " bytes remain)");
        }
        std::vector<GgufValue> elems;
        elems.reserve(size_t(count));
        for (uint64_t i = 0; i < count; ++i) {
          elems.push_back(read_value(v.elem_type, ctx + "[" + std::to_string(i) + "]", depth + 1));
        }
        v.value = std::move(elems);
        break;
      }
    }
    return v;
  }

  static std::string shape_string_partial(const std::vector<uint64_t>& dims, uint64_t next) {
    std::string s = "[";
    for (uint64_t d : dims) s += std::to_string(d) + ", ";
    return s + std::to_string(next) + ", ...]";
  }

  GgufFile& f_;
  const uint8_t* p_;
  uint64_t size_;
  uint64_t pos_ = 0;
};

std::unique_ptr<GgufFile> GgufFile::open(const std::string& path) {
  MappedFile mapped(path);
  std::unique_ptr<GgufFile> f(new GgufFile());
  f->path_ = path;
  f->map_ = mapped.data();
  f->map_size_ = mapped.size();
  mapped.detach();  // f owns the mapping from here on (its destructor unmaps)
  GgufParser(*f, f->map_, f->map_size_).parse();
  return f;
}

GgufFile::~GgufFile() { MappedFile::unmap(map_, map_size_); }

const GgufValue* GgufFile::find(std::string_view key) const {
  for (const auto& kv : kv_) if (kv.first == key) return &kv.second;
  return nullptr;
}

namespace {

[[noreturn]] void key_error(const std::string& path, std::string_view key, const std::string& what) {
  throw Error(path + ": metadata key '" + std::string(key) + "' " + what);
}

std::string describe(const GgufValue& v) {
  if (v.type == GgufType::ARRAY) return std::string("array of ") + gguf_type_name(v.elem_type);
  return std::string(gguf_type_name(v.type)) + " " + value_to_string(v);
}

// Integer value as signed 128-bit, or false if v is not an integer.
bool as_integer(const GgufValue& v, __int128& out) {
  if (v.value.index() == 0) { out = std::get<uint64_t>(v.value); return true; }
  if (v.value.index() == 1) { out = std::get<int64_t>(v.value); return true; }
  return false;
}

template <typename T>
T get_int(const std::string& path, std::string_view key, const GgufValue& v, const char* tname) {
  __int128 x = 0;
  if (!as_integer(v, x)) key_error(path, key, std::string("has type ") + describe(v) + ", expected an integer (" + tname + ")");
  if (x < __int128(std::numeric_limits<T>::min()) || x > __int128(std::numeric_limits<T>::max())) {
    key_error(path, key, "value " + value_to_string(v) + " does not fit in " + tname);
  }
  return T(x);
}

float get_float(const std::string& path, std::string_view key, const GgufValue& v) {
  if (v.value.index() == 2) return float(std::get<double>(v.value));
  __int128 x = 0;
  if (as_integer(v, x)) return float(x);
  key_error(path, key, "has type " + describe(v) + ", expected a number");
}

}  // namespace

std::string GgufFile::get_string(std::string_view key) const {
  const GgufValue* v = find(key);
  if (!v) key_error(path_, key, "is missing");
  if (v->type != GgufType::STRING) key_error(path_, key, "has type " + describe(*v) + ", expected a string");
  return std::get<std::string>(v->value);
}

uint64_t GgufFile::get_u64(std::string_view key) const {
  const GgufValue* v = find(key);
  if (!v) key_error(path_, key, "is missing");
  return get_int<uint64_t>(path_, key, *v, "uint64");
}

int64_t GgufFile::get_i64(std::string_view key) const {
  const GgufValue* v = find(key);
  if (!v) key_error(path_, key, "is missing");
  return get_int<int64_t>(path_, key, *v, "int64");
}

uint32_t GgufFile::get_u32(std::string_view key) const {
  const GgufValue* v = find(key);
  if (!v) key_error(path_, key, "is missing");
  return get_int<uint32_t>(path_, key, *v, "uint32");
}

float GgufFile::get_f32(std::string_view key) const {
  const GgufValue* v = find(key);
  if (!v) key_error(path_, key, "is missing");
  return get_float(path_, key, *v);
}

bool GgufFile::get_bool(std::string_view key) const {
  const GgufValue* v = find(key);
  if (!v) key_error(path_, key, "is missing");
  if (v->type != GgufType::BOOL) key_error(path_, key, "has type " + describe(*v) + ", expected a bool");
  return std::get<bool>(v->value);
}

uint32_t GgufFile::get_u32_or(std::string_view key, uint32_t fallback) const {
  return has(key) ? get_u32(key) : fallback;
}
float GgufFile::get_f32_or(std::string_view key, float fallback) const { return has(key) ? get_f32(key) : fallback; }
bool GgufFile::get_bool_or(std::string_view key, bool fallback) const { return has(key) ? get_bool(key) : fallback; }
std::string GgufFile::get_string_or(std::string_view key, const std::string& fallback) const {
  return has(key) ? get_string(key) : fallback;
}

namespace {
const std::vector<GgufValue>& get_array(const std::string& path, std::string_view key, const GgufValue* v) {
  if (!v) key_error(path, key, "is missing");
  if (v->type != GgufType::ARRAY) key_error(path, key, "has type " + describe(*v) + ", expected an array");
  return std::get<std::vector<GgufValue>>(v->value);
}
}  // namespace

std::vector<std::string> GgufFile::get_string_array(std::string_view key) const {
  const GgufValue* v = find(key);
  const auto& a = get_array(path_, key, v);
  if (v->elem_type != GgufType::STRING) key_error(path_, key, "has type " + describe(*v) + ", expected an array of string");
  std::vector<std::string> out;
  out.reserve(a.size());
  for (const GgufValue& e : a) out.push_back(std::get<std::string>(e.value));
  return out;
}

std::vector<float> GgufFile::get_f32_array(std::string_view key) const {
  const GgufValue* v = find(key);
  const auto& a = get_array(path_, key, v);
  if (v->elem_type == GgufType::ARRAY || v->elem_type == GgufType::STRING || v->elem_type == GgufType::BOOL) {
    key_error(path_, key, "has type " + describe(*v) + ", expected an array of numbers");
  }
  std::vector<float> out;
  out.reserve(a.size());
  for (const GgufValue& e : a) out.push_back(get_float(path_, key, e));
  return out;
}

std::vector<int32_t> GgufFile::get_i32_array(std::string_view key) const {
  const GgufValue* v = find(key);
  const auto& a = get_array(path_, key, v);
  __int128 probe = 0;
  if (!a.empty() && !as_integer(a[0], probe)) {
    key_error(path_, key, "has type " + describe(*v) + ", expected an array of integers");
  }
  if (a.empty() && (v->elem_type == GgufType::ARRAY || v->elem_type == GgufType::STRING ||
                    v->elem_type == GgufType::BOOL || v->elem_type == GgufType::FLOAT32 ||
                    v->elem_type == GgufType::FLOAT64)) {
    key_error(path_, key, "has type " + describe(*v) + ", expected an array of integers");
  }
  std::vector<int32_t> out;
  out.reserve(a.size());
  for (const GgufValue& e : a) out.push_back(get_int<int32_t>(path_, key, e, "int32"));
  return out;
}

const GgufTensorInfo* GgufFile::find_tensor(std::string_view name) const {
  for (const auto& t : tensors_) if (t.name == name) return &t;
  return nullptr;
}

const GgufTensorInfo& GgufFile::tensor(std::string_view name) const {
  const GgufTensorInfo* t = find_tensor(name);
  if (!t) throw Error(path_ + ": tensor '" + std::string(name) + "' is missing");
  return *t;
}

uint64_t GgufFile::tensor_table_hash() const {
  // FNV-1a 64 over, per tensor: name length (u64 LE), name bytes, type id
  // (u32 LE), n_dims (u32 LE), each dim (u64 LE), offset (u64 LE).
  uint64_t h = 0xcbf29ce484222325ull;
  auto bytes = [&](const void* p, size_t n) {
    const auto* b = static_cast<const uint8_t*>(p);
    for (size_t i = 0; i < n; ++i) { h ^= b[i]; h *= 0x100000001b3ull; }
  };
  auto u64 = [&](uint64_t v) { uint8_t b[8]; for (int i = 0; i < 8; ++i) b[i] = uint8_t(v >> (8 * i)); bytes(b, 8); };
  auto u32 = [&](uint32_t v) { uint8_t b[4]; for (int i = 0; i < 4; ++i) b[i] = uint8_t(v >> (8 * i)); bytes(b, 4); };
  for (const auto& t : tensors_) {
    u64(t.name.size());
    bytes(t.name.data(), t.name.size());
    u32(uint32_t(t.type));
    u32(uint32_t(t.shape.size()));
    for (uint64_t d : t.shape) u64(d);
    u64(t.offset);
  }
  return h;
}

}  // namespace turbokv::io
