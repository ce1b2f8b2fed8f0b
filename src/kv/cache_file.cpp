#include "kv/cache_file.h"

#include <algorithm>
#include <filesystem>
#include <fstream>

#include "codec/codec.h"
#include "codec/format.h"
#include "kv/scheme.h"
#include "util/error.h"
#include "util/file.h"
#include "util/rng.h"

namespace turbokv::kv {

namespace {

CacheStreamIdentity stream_identity(const StreamSpec& s) {
  CacheStreamIdentity id{};
  id.stream_kind = uint8_t(s.kind);
  if (s.kind == StreamKind::Codec) {
    id.codec_kind = uint8_t(s.codec.kind);
    id.bits = uint8_t(s.codec.bits);
    id.codebook = uint8_t(s.codec.codebook);
    id.group_size = uint16_t(s.codec.effective_group());
    id.scale_rule = uint8_t(s.codec.scale_rule);
    id.scale_search = s.codec.scale_search ? 1 : 0;
  }
  return id;
}

std::string describe_stream(const CacheStreamIdentity& s) {
  if (s.stream_kind != uint8_t(StreamKind::Codec)) {
    return s.stream_kind == uint8_t(StreamKind::F32) ? "f32" : "fp16";
  }
  return std::string(codec::codec_name(codec::CodecKind(s.codec_kind))) + " " + std::to_string(s.bits) +
         " bits, group " + std::to_string(s.group_size) + ", codebook " + std::to_string(s.codebook);
}

// The header fields that identify the model and the scheme, for `cache`.
CacheFileHeader identity_header(const KvCache& cache, const ModelIdentity& model) {
  CacheFileHeader h{};
  std::memcpy(h.magic, kCacheFileMagic, sizeof h.magic);
  h.version = kCacheFileVersion;
  h.codec_format_version = codec::kFormatVersion;
  h.header_bytes = uint32_t(kCacheFileHeaderBytes);
  if (model.architecture.size() >= kArchitectureBytes) {
    throw Error("prompt cache: architecture name '" + model.architecture + "' is longer than " +
                std::to_string(kArchitectureBytes - 1) + " characters");
  }
  std::memcpy(h.architecture, model.architecture.data(), model.architecture.size());
  h.n_layer = model.n_layer;
  h.d_model = model.d_model;
  h.n_head = model.n_head;
  h.n_kv_head = model.n_kv_head;
  h.head_dim = model.head_dim;
  h.n_vocab = model.n_vocab;
  h.tensor_hash = model.tensor_hash;
  const SchemeSpec spec = parse_scheme(cache.scheme());
  h.rotation_seed = spec.seed;
  h.key = stream_identity(spec.key);
  h.value = stream_identity(spec.value);
  h.rotation_kind = uint8_t(spec.rotation);
  h.calibration = uint8_t(spec.calibration);
  h.flags = uint8_t((spec.center_keys ? 1 : 0) | (spec.center_values ? 2 : 0) | (spec.strict ? 4 : 0));
  // The codebooks the records index, as this build makes them (a change in
  // codebook design invalidates old records even at the same format version).
  uint64_t hash = fnv1a64(nullptr, 0);
  for (const StreamSpec* s : {&spec.key, &spec.value}) {
    if (s->kind != StreamKind::Codec) continue;
    const codec::Codec c(s->codec, cache.shape().head_dim, mix_seed(spec.seed, s == &spec.key ? 1 : 2));
    if (const codec::Codebook* book = c.codebook()) {
      const auto centroids = book->centroids();
      hash = fnv1a64(centroids.data(), centroids.size_bytes(), hash);
    }
  }
  h.codebook_hash = hash;
  return h;
}

std::string arch_of(const CacheFileHeader& h) {
  return std::string(h.architecture, strnlen(h.architecture, sizeof h.architecture));
}

template <typename T>
void check_field(const std::string& name, const char* what, T saved, T expected) {
  if (saved != expected) {
    throw Error(name + ": prompt cache is for another model: " + what + " " + std::to_string(saved) +
                ", this model has " + std::to_string(expected));
  }
}

}  // namespace

uint64_t fnv1a64(const void* data, size_t n, uint64_t h) {
  const auto* p = static_cast<const uint8_t*>(data);
  for (size_t i = 0; i < n; ++i) {
    h ^= p[i];
    h *= 0x100000001b3ull;
  }
  return h;
}

void CacheReader::fail(const std::string& message) const { throw Error(what_ + ": " + message); }

std::string serialize_prompt_cache(const KvCache& cache, const ModelIdentity& model,
                                   const std::vector<int32_t>& tokens) {
  if (int64_t(tokens.size()) != cache.n_tokens()) {
    throw Error("prompt cache: " + std::to_string(tokens.size()) + " token ids for a cache of " +
                std::to_string(cache.n_tokens()) + " tokens");
  }
  CacheFileHeader h = identity_header(cache, model);
  const std::string scheme = cache.scheme();
  h.n_tokens = int32_t(tokens.size());
  h.scheme_name_bytes = uint32_t(scheme.size());
  std::string out(kCacheFileHeaderBytes, '\0');
  CacheWriter w(out);
  w.put_bytes(scheme.data(), scheme.size());
  w.put_array(tokens.data(), tokens.size());
  cache.save(w);
  h.payload_bytes = uint64_t(out.size() - kCacheFileHeaderBytes);
  std::memcpy(out.data(), &h, sizeof h);
  w.put<uint64_t>(fnv1a64(out.data(), out.size()));
  return out;
}

std::vector<int32_t> deserialize_prompt_cache(std::string_view bytes, const std::string& name, KvCache& cache,
                                              const ModelIdentity& model) {
  // Order: what the file is (magic, version), whether it is whole (size,
  // checksum), then whether it belongs here (model, scheme).
  if (bytes.size() < sizeof(CacheFileHeader::magic) ||
      std::memcmp(bytes.data(), kCacheFileMagic, sizeof(CacheFileHeader::magic)) != 0) {
    throw Error(name + ": not a turbokv prompt-cache file (magic is not \"TKVC\")");
  }
  if (bytes.size() < kCacheFileHeaderBytes) {
    throw Error(name + ": prompt cache truncated: " + std::to_string(bytes.size()) + " bytes, the header alone is " +
                std::to_string(kCacheFileHeaderBytes));
  }
  CacheFileHeader h;
  std::memcpy(&h, bytes.data(), sizeof h);
  if (h.version != kCacheFileVersion) {
    throw Error(name + ": prompt-cache format version " + std::to_string(h.version) + ", this build reads version " +
                std::to_string(kCacheFileVersion));
  }
  if (h.header_bytes != kCacheFileHeaderBytes) {
    throw Error(name + ": prompt-cache header size " + std::to_string(h.header_bytes) + ", expected " +
                std::to_string(kCacheFileHeaderBytes));
  }
  const uint64_t expected_size = kCacheFileHeaderBytes + h.payload_bytes + kCacheFileChecksumBytes;
  if (h.payload_bytes > bytes.size() || bytes.size() != expected_size) {
    throw Error(name + ": prompt cache " + (bytes.size() < expected_size ? "truncated" : "has trailing bytes") +
                ": " + std::to_string(bytes.size()) + " bytes, the header says " + std::to_string(expected_size));
  }
  uint64_t stored_sum;
  std::memcpy(&stored_sum, bytes.data() + bytes.size() - kCacheFileChecksumBytes, sizeof stored_sum);
  if (fnv1a64(bytes.data(), bytes.size() - kCacheFileChecksumBytes) != stored_sum) {
    throw Error(name + ": prompt cache is corrupted (checksum mismatch)");
  }
  if (h.codec_format_version != codec::kFormatVersion) {
    throw Error(name + ": prompt cache holds codec records of format version " +
                std::to_string(h.codec_format_version) + ", this build uses " + std::to_string(codec::kFormatVersion));
  }
  if (arch_of(h) != model.architecture) {
    throw Error(name + ": prompt cache is for another model: architecture '" + arch_of(h) + "', this model is '" +
                model.architecture + "'");
  }
  check_field(name, "n_layer", h.n_layer, model.n_layer);
  check_field(name, "d_model", h.d_model, model.d_model);
  check_field(name, "n_head", h.n_head, model.n_head);
  check_field(name, "n_kv_head", h.n_kv_head, model.n_kv_head);
  check_field(name, "head_dim", h.head_dim, model.head_dim);
  check_field(name, "n_vocab", h.n_vocab, model.n_vocab);
  if (h.tensor_hash != model.tensor_hash) {
    throw Error(name + ": prompt cache is for another model: tensor table hash " + std::to_string(h.tensor_hash) +
                ", this model's is " + std::to_string(model.tensor_hash));
  }
  const std::string_view payload = bytes.substr(kCacheFileHeaderBytes, size_t(h.payload_bytes));
  CacheReader in(payload, name);
  if (h.scheme_name_bytes > payload.size()) in.fail("scheme name longer than the payload");
  std::string scheme(h.scheme_name_bytes, '\0');
  in.get_bytes(scheme.data(), scheme.size());
  if (scheme != cache.scheme()) {
    throw Error(name + ": prompt cache was saved with KV scheme '" + scheme + "', this run uses '" + cache.scheme() +
                "'");
  }
  const CacheFileHeader mine = identity_header(cache, model);
  auto check_stream = [&](const CacheStreamIdentity& saved, const CacheStreamIdentity& expected, const char* what) {
    if (std::memcmp(&saved, &expected, sizeof saved) != 0) {
      throw Error(name + ": prompt cache " + what + " stream is " + describe_stream(saved) + ", scheme '" + scheme +
                  "' stores " + describe_stream(expected));
    }
  };
  check_stream(h.key, mine.key, "key");
  check_stream(h.value, mine.value, "value");
  if (h.rotation_seed != mine.rotation_seed || h.rotation_kind != mine.rotation_kind ||
      h.calibration != mine.calibration || h.flags != mine.flags) {
    throw Error(name + ": prompt cache rotation seed / kind or calibration options differ from scheme '" + scheme + "'");
  }
  if (h.codebook_hash != mine.codebook_hash) {
    throw Error(name + ": prompt cache records index other codebooks than this build's for scheme '" + scheme + "'");
  }
  if (h.n_tokens < 0 || size_t(h.n_tokens) * sizeof(int32_t) > in.remaining()) {
    in.fail("token count " + std::to_string(h.n_tokens) + " does not fit the payload");
  }
  std::vector<int32_t> tokens(static_cast<size_t>(h.n_tokens));
  in.get_array(tokens.data(), tokens.size());
  for (int32_t t : tokens) {
    if (t < 0 || t >= model.n_vocab) in.fail("token id " + std::to_string(t) + " outside the vocabulary");
  }
  const size_t state_at = payload.size() - in.remaining();
  CacheReader state(payload.substr(state_at), name);
  try {
    cache.restore(state);
  } catch (...) {
    if (cache.n_tokens() > 0) cache.clear();
    throw;
  }
  if (cache.n_tokens() != h.n_tokens) {
    const int got = cache.n_tokens();
    cache.clear();
    throw Error(name + ": prompt cache state holds " + std::to_string(got) + " tokens, its header " +
                std::to_string(h.n_tokens));
  }
  return tokens;
}

void save_prompt_cache(const std::string& path, const KvCache& cache, const ModelIdentity& model,
                       const std::vector<int32_t>& tokens) {
  write_file_atomic(path, serialize_prompt_cache(cache, model, tokens));
}

std::vector<int32_t> load_prompt_cache(const std::string& path, KvCache& cache, const ModelIdentity& model) {
  const std::string bytes = read_file(path);
  return deserialize_prompt_cache(bytes, path, cache, model);
}

int prompt_cache_token_count(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return -1;
  CacheFileHeader h;
  if (!f.read(reinterpret_cast<char*>(&h), sizeof h)) return -1;
  if (std::memcmp(h.magic, kCacheFileMagic, sizeof h.magic) != 0 || h.version != kCacheFileVersion) return -1;
  return h.n_tokens;
}

}  // namespace turbokv::kv
