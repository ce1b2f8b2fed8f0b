// Prompt-cache files: a KV cache saved in its stored (compressed) form, so a
// later run can restore the prompt's longest cached prefix instead of
// recomputing it. This header owns the file layout (STYLE.md rule 1).
//
// File layout (all fields little-endian):
//   [CacheFileHeader, kCacheFileHeaderBytes]
//   [payload, header.payload_bytes]:
//       scheme name       (header.scheme_name_bytes bytes, no NUL)
//       token ids         (header.n_tokens x int32)
//       cache state       (KvCache::save; layouts below)
//   [checksum, 8 bytes]   FNV-1a 64 of header + payload
//
// Cache state of DenseKvCache<T> (fp16, f32):
//   int32 n_tokens, uint32 sizeof(T),
//   keys (layer, kv_head, pos < n_tokens, head_dim) of T, then values alike.
// Cache state of TurboKvCache (every other scheme):
//   int32 n_tokens, int64 tokens_encoded,
//   per layer: int32 n_encoded, int32 staged_base, int32 n_far, int32 near_base,
//              uint8 calibrated, int64 query count,
//              vectors (uint64 count + elements) key_mean, key_scale,
//              value_mean (f32), query square sums (f64; empty once
//              calibrated: they are only used to calibrate),
//   per stream (keys, then values), per layer, per kv head:
//       codec stream: records [0, n_far) (record_bytes each); with a near
//                     tier, near records [near_base, n_encoded); then the
//                     raw rows [staged_base, n_tokens) as fp16;
//       fp16 stream:  positions [0, n_tokens) as fp16.
// Restoring gives exactly the saved state, so generation continues bit for
// bit as it would have without the save.
//
// Bump kCacheFileVersion whenever anything here or in a cache's state layout
// changes; codec::kFormatVersion (record layouts) is stored and checked too.
#pragma once

#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "kv/kv_cache.h"

namespace turbokv::kv {

inline constexpr char kCacheFileMagic[4] = {'T', 'K', 'V', 'C'};
inline constexpr uint32_t kCacheFileVersion = 3;  // 3: the near tier; 2: raw rows kept for a trim, 1-byte key scales
inline constexpr size_t kCacheFileHeaderBytes = 136;
inline constexpr size_t kCacheFileChecksumBytes = 8;
inline constexpr size_t kArchitectureBytes = 32;

static_assert(std::endian::native == std::endian::little, "cache files are written in host order (little-endian)");

// Which model a cache belongs to. The caller fills it from the model
// (model::cache_identity): the kv layer knows nothing about GGUF.
struct ModelIdentity {
  std::string architecture;  // general.architecture, < kArchitectureBytes chars
  int32_t n_layer = 0, d_model = 0, n_head = 0, n_kv_head = 0, head_dim = 0, n_vocab = 0;
  uint64_t tensor_hash = 0;  // io::GgufFile::tensor_table_hash()
  bool operator==(const ModelIdentity&) const = default;
};

// How one stream (keys or values) is stored, as written in the header.
struct CacheStreamIdentity {
  uint8_t stream_kind;   // kv::StreamKind
  uint8_t codec_kind;    // codec::CodecKind (codec streams; 0 otherwise)
  uint8_t bits;          // codec bits (0 for dense)
  uint8_t codebook;      // codec::MseCodebook
  uint16_t group_size;   // effective group size (group, affine codecs)
  uint8_t scale_rule;    // codec::ScaleRule (encoder only, recorded for provenance)
  uint8_t scale_search;  // 0 | 1
};
static_assert(sizeof(CacheStreamIdentity) == 8 && std::is_trivially_copyable_v<CacheStreamIdentity>);

// The fixed-size file header; written and read with memcpy.
struct CacheFileHeader {
  char magic[4];                     //   0 "TKVC"
  uint32_t version;                  //   4 kCacheFileVersion
  uint32_t codec_format_version;     //   8 codec::kFormatVersion
  uint32_t header_bytes;             //  12 kCacheFileHeaderBytes
  char architecture[kArchitectureBytes];  // 16 NUL-padded
  int32_t n_layer, d_model, n_head, n_kv_head, head_dim, n_vocab;  // 48
  uint64_t tensor_hash;              //  72
  uint64_t payload_bytes;            //  80
  int32_t n_tokens;                  //  88 cached token ids (== cache n_tokens)
  uint32_t scheme_name_bytes;        //  92
  uint64_t rotation_seed;            //  96
  CacheStreamIdentity key, value;    // 104, 112
  uint8_t rotation_kind;             // 120 codec::RotationKind
  uint8_t calibration;               // 121 kv::Calibration
  uint8_t flags;                     // 122 bit 0 center keys, 1 center values, 2 strict
  uint8_t reserved[5];               // 123 zero
  uint64_t codebook_hash;            // 128 FNV-1a 64 of the key and value codebooks' centroids
};
static_assert(sizeof(CacheFileHeader) == kCacheFileHeaderBytes, "cache file header layout changed");
static_assert(offsetof(CacheFileHeader, tensor_hash) == 72 && offsetof(CacheFileHeader, key) == 104 &&
              offsetof(CacheFileHeader, codebook_hash) == 128);
static_assert(std::is_trivially_copyable_v<CacheFileHeader>);

// FNV-1a 64 of a byte range (the file checksum).
uint64_t fnv1a64(const void* data, size_t n, uint64_t h = 0xcbf29ce484222325ull);

// Appends raw fields to a byte buffer (host order, see the static_assert).
class CacheWriter {
 public:
  explicit CacheWriter(std::string& out) : out_(out) {}
  void put_bytes(const void* p, size_t n) { out_.append(static_cast<const char*>(p), n); }
  template <typename T> void put(T v) {
    static_assert(std::is_trivially_copyable_v<T>);
    put_bytes(&v, sizeof v);
  }
  template <typename T> void put_array(const T* p, size_t n) {
    static_assert(std::is_trivially_copyable_v<T>);
    if (n) put_bytes(p, n * sizeof(T));
  }
  template <typename T> void put_vector(const std::vector<T>& v) {
    put<uint64_t>(v.size());
    put_array(v.data(), v.size());
  }

 private:
  std::string& out_;
};

// Reads fields back with bounds checks; every error names `what` (the file).
class CacheReader {
 public:
  CacheReader(std::string_view data, std::string what) : data_(data), what_(std::move(what)) {}
  void get_bytes(void* p, size_t n) {
    if (n > data_.size() - pos_) {
      fail("cache state truncated at byte " + std::to_string(pos_) + " (" + std::to_string(n) + " more needed, " +
           std::to_string(data_.size() - pos_) + " left)");
    }
    if (n) std::memcpy(p, data_.data() + pos_, n);
    pos_ += n;
  }
  template <typename T> T get() {
    static_assert(std::is_trivially_copyable_v<T>);
    T v;
    get_bytes(&v, sizeof v);
    return v;
  }
  template <typename T> void get_array(T* p, size_t n) { get_bytes(p, n * sizeof(T)); }
  // A vector of `expected` elements, or empty (a count of 0); anything else fails.
  template <typename T> std::vector<T> get_vector(size_t expected, const char* field) {
    const uint64_t n = get<uint64_t>();
    if (n != 0 && n != expected) {
      fail(std::string(field) + " has " + std::to_string(n) + " elements, expected " + std::to_string(expected));
    }
    std::vector<T> v(static_cast<size_t>(n));
    get_array(v.data(), v.size());
    return v;
  }
  size_t remaining() const { return data_.size() - pos_; }
  [[noreturn]] void fail(const std::string& message) const;

 private:
  std::string_view data_;
  size_t pos_ = 0;
  std::string what_;
};

// A prompt-cache file's bytes for `cache` holding `tokens` (tokens.size()
// must equal cache.n_tokens()). Throws Error if the cache cannot be saved.
std::string serialize_prompt_cache(const KvCache& cache, const ModelIdentity& model,
                                   const std::vector<int32_t>& tokens);
// Checks `bytes` (magic, version, size, checksum, model, scheme) and restores
// the cache from them; returns the cached token ids. `name` (the file) leads
// every error message, which says what does not match. On error the cache is
// left empty.
std::vector<int32_t> deserialize_prompt_cache(std::string_view bytes, const std::string& name, KvCache& cache,
                                              const ModelIdentity& model);

// The same for files; saving is atomic (util/file.h: temporary, fsync, rename).
void save_prompt_cache(const std::string& path, const KvCache& cache, const ModelIdentity& model,
                       const std::vector<int32_t>& tokens);
std::vector<int32_t> load_prompt_cache(const std::string& path, KvCache& cache, const ModelIdentity& model);

// Tokens a prompt-cache file holds (header only, for sizing the context);
// -1 if the file is missing or has no valid header.
int prompt_cache_token_count(const std::string& path);

}  // namespace turbokv::kv
