// Prompt-cache files (kv/cache_file.h): exact round trips for every scheme,
// before and after the compression step, and a clear error for every kind of
// bad file.
#include <unistd.h>

#include <gtest/gtest.h>

#include <cctype>
#include <cstddef>
#include <cstring>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "kv/cache_file.h"
#include "kv/registry.h"
#include "kv/turbo_cache.h"
#include "util/error.h"
#include "util/file.h"
#include "util/rng.h"
#include "util/thread_pool.h"

namespace turbokv::kv {
namespace {

// The near-tier variants move positions through all three tiers within these tests' 9-36 tokens.
const std::vector<std::string> kSchemes = {"fp16",     "f32",           "affine4",
                                           "turbo0v4", "turbo4",        "turbo3",
                                           "turbo4v2", "turbo4:strict", "turbo3:near=5",
                                           "turbo4:window=1:near=3:nearbits=8",
                                           "turbo3:outliers=32:voutliers=16"};

CacheShape test_shape(int max_tokens = 48) {
  CacheShape s;
  s.n_layer = 2;
  s.n_head = 4;
  s.n_kv_head = 2;
  s.head_dim = 64;
  s.max_tokens = max_tokens;
  return s;
}

ModelIdentity test_model() {
  ModelIdentity m;
  m.architecture = "llama";
  m.n_layer = 2;
  m.d_model = 256;
  m.n_head = 4;
  m.n_kv_head = 2;
  m.head_dim = 64;
  m.n_vocab = 320;
  m.tensor_hash = 0x1234'5678'9abc'def0ull;
  return m;
}

// Feeds batches of random keys/values/queries and records every attention output.
struct Driver {
  explicit Driver(uint64_t seed) : rng(seed) {}
  Rng rng;
  ThreadPool pool{2};

  // One batch of n tokens through every layer; returns the outputs (layer, n, n_head, head_dim).
  std::vector<float> batch(KvCache& cache, int n, Phase phase) {
    const CacheShape& s = cache.shape();
    const size_t kv = size_t(n) * s.n_kv_head * s.head_dim, qn = size_t(n) * s.n_head * s.head_dim;
    std::vector<float> k(kv), v(kv), q(qn), out(qn), all;
    cache.begin_batch(n, phase);
    for (int l = 0; l < s.n_layer; ++l) {
      for (auto& x : k) x = float(rng.normal()) + 0.5f;  // a common component, as real keys have
      for (auto& x : v) x = float(rng.normal());
      for (auto& x : q) x = float(rng.normal());
      cache.store(l, k.data(), v.data());
      cache.attend(l, q.data(), out.data(), 0.125f, pool);
      all.insert(all.end(), out.begin(), out.end());
    }
    cache.end_batch();
    return all;
  }
};

std::vector<int32_t> token_ids(int n) {
  std::vector<int32_t> t;
  for (int i = 0; i < n; ++i) t.push_back(int32_t(3 + (i * 7) % 300));
  return t;
}

bool bitwise_equal(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

struct RoundTripCase {
  int prefill;
  int decode;  // one-token decode steps after the prefill (0: still staged raw)
};

class CacheFileRoundTrip : public ::testing::TestWithParam<std::string> {};

TEST_P(CacheFileRoundTrip, RestoredCacheContinuesBitForBit) {
  const std::string scheme = GetParam();
  for (const RoundTripCase c : {RoundTripCase{1, 0}, RoundTripCase{5, 0}, RoundTripCase{17, 0}, RoundTripCase{17, 3},
                                RoundTripCase{1, 6}, RoundTripCase{30, 1}}) {
    SCOPED_TRACE(scheme + " prefill " + std::to_string(c.prefill) + " decode " + std::to_string(c.decode));
    auto original = make_kv_cache(scheme, test_shape());
    Driver d(7);
    d.batch(*original, c.prefill, Phase::Prefill);
    for (int i = 0; i < c.decode; ++i) d.batch(*original, 1, Phase::Decode);
    const int n = original->n_tokens();
    const std::string bytes = serialize_prompt_cache(*original, test_model(), token_ids(n));

    // A larger context is fine: only the tokens must fit.
    auto restored = make_kv_cache(scheme, test_shape(64));
    const auto tokens = deserialize_prompt_cache(bytes, "mem.tkvc", *restored, test_model());
    EXPECT_EQ(tokens, token_ids(n));
    ASSERT_EQ(restored->n_tokens(), n);
    EXPECT_EQ(restored->bytes(), original->bytes());
    // Saving the restored cache gives the same bytes.
    EXPECT_EQ(serialize_prompt_cache(*restored, test_model(), tokens), bytes);
    if (auto* t = dynamic_cast<TurboKvCache*>(restored.get())) {
      const auto* o = dynamic_cast<TurboKvCache*>(original.get());
      for (int l = 0; l < 2; ++l) EXPECT_EQ(t->n_encoded(l), o->n_encoded(l));
      EXPECT_EQ(t->tokens_encoded(), o->tokens_encoded());
    }

    // Both continue identically: a prefill batch (still raw, if it was), then
    // decode steps (the compression step, if it had not happened).
    Driver a(99), b(99);
    EXPECT_TRUE(bitwise_equal(a.batch(*original, 2, Phase::Prefill), b.batch(*restored, 2, Phase::Prefill)));
    for (int i = 0; i < 4; ++i) {
      EXPECT_TRUE(bitwise_equal(a.batch(*original, 1 + i % 2, Phase::Decode), b.batch(*restored, 1 + i % 2, Phase::Decode)))
          << "decode step " << i;
    }
    EXPECT_EQ(restored->bytes(), original->bytes());
  }
}

TEST_P(CacheFileRoundTrip, EmptyCacheRoundTrips) {
  auto original = make_kv_cache(GetParam(), test_shape());
  const std::string bytes = serialize_prompt_cache(*original, test_model(), {});
  auto restored = make_kv_cache(GetParam(), test_shape());
  EXPECT_TRUE(deserialize_prompt_cache(bytes, "empty.tkvc", *restored, test_model()).empty());
  EXPECT_EQ(restored->n_tokens(), 0);
  Driver a(5), b(5);
  EXPECT_TRUE(bitwise_equal(a.batch(*original, 3, Phase::Prefill), b.batch(*restored, 3, Phase::Prefill)));
  EXPECT_TRUE(bitwise_equal(a.batch(*original, 1, Phase::Decode), b.batch(*restored, 1, Phase::Decode)));
}

TEST_P(CacheFileRoundTrip, RestoreThenTrimMatchesTrimWithoutRestore) {
  // Restore, trim back into the encoded region, continue: the same as trimming the original.
  auto original = make_kv_cache(GetParam(), test_shape());
  Driver d(11);
  d.batch(*original, 9, Phase::Prefill);
  for (int i = 0; i < 3; ++i) d.batch(*original, 1, Phase::Decode);
  d.batch(*original, 4, Phase::Prefill);  // staged raw after the records
  auto restored = make_kv_cache(GetParam(), test_shape());
  deserialize_prompt_cache(serialize_prompt_cache(*original, test_model(), token_ids(original->n_tokens())), "t",
                           *restored, test_model());
  original->trim(7);
  restored->trim(7);
  Driver a(3), b(3);
  for (int i = 0; i < 3; ++i) {
    EXPECT_TRUE(bitwise_equal(a.batch(*original, 2, Phase::Decode), b.batch(*restored, 2, Phase::Decode)));
  }
}

INSTANTIATE_TEST_SUITE_P(AllSchemes, CacheFileRoundTrip, ::testing::ValuesIn(kSchemes),
                         [](const ::testing::TestParamInfo<std::string>& i) {
                           std::string n = i.param;
                           for (char& ch : n) if (!isalnum(static_cast<unsigned char>(ch))) ch = '_';
                           return n;
                         });

TEST(CacheFile, Turbo4FileIsAboutFourTimesSmallerThanFp16) {
  for (int decode : {0, 10}) {
    size_t sizes[2];
    int i = 0;
    for (const char* scheme : {"fp16", "turbo4"}) {
      auto cache = make_kv_cache(scheme, test_shape(256));
      Driver d(1);
      d.batch(*cache, 190, Phase::Prefill);
      for (int s = 0; s < decode; ++s) d.batch(*cache, 1, Phase::Decode);
      sizes[i++] = serialize_prompt_cache(*cache, test_model(), token_ids(cache->n_tokens())).size();
    }
    if (decode == 0) {
      EXPECT_NEAR(double(sizes[1]), double(sizes[0]), 0.02 * double(sizes[0]));  // still staged raw (fp16)
    } else {
      // head_dim 64: 34-byte records for 128 fp16 bytes, plus calibration
      // state and the raw window (3.5x for the records alone).
      EXPECT_GT(double(sizes[0]) / double(sizes[1]), 3.2) << sizes[0] << " vs " << sizes[1];
    }
  }
}

TEST(CacheFile, TrimAcrossRawCompressedBoundary) {
  // Records [0, 9), staged raw [9, 13): trimming to 7 cuts into the records.
  // (No window: its positions go back to raw only when the trim undoes the
  // batch that encoded them, and here a prefill batch came in between.)
  for (const char* scheme : {"turbo4:window=0", "turbo0v4:window=0", "turbo4v2:window=0"}) {
    SCOPED_TRACE(scheme);
    auto a = make_kv_cache(scheme, test_shape());
    auto b = make_kv_cache(scheme, test_shape());
    Driver da(21), db(21);
    da.batch(*a, 8, Phase::Prefill);
    db.batch(*b, 8, Phase::Prefill);
    da.batch(*a, 1, Phase::Decode);  // calibrates and encodes [0, 9)
    db.batch(*b, 1, Phase::Decode);
    da.batch(*a, 4, Phase::Prefill);  // staged raw [9, 13)
    a->trim(6);
    b->trim(2);
    ASSERT_EQ(a->n_tokens(), b->n_tokens());
    EXPECT_EQ(dynamic_cast<TurboKvCache&>(*a).n_encoded(0), 7);
    Driver c1(4), c2(4);
    for (int i = 0; i < 3; ++i) EXPECT_TRUE(bitwise_equal(c1.batch(*a, 1, Phase::Decode), c2.batch(*b, 1, Phase::Decode)));
  }
}

// ---- bad files ----

struct Saved {
  std::string bytes;
  std::unique_ptr<KvCache> cache;
};

Saved saved_turbo4() {
  Saved s;
  s.cache = make_kv_cache("turbo4", test_shape());
  Driver d(2);
  d.batch(*s.cache, 6, Phase::Prefill);
  d.batch(*s.cache, 1, Phase::Decode);
  d.batch(*s.cache, 2, Phase::Prefill);  // records and staged tokens both present
  s.bytes = serialize_prompt_cache(*s.cache, test_model(), token_ids(s.cache->n_tokens()));
  return s;
}

// Loads `bytes` into a fresh cache; returns the error message ("" if none).
std::string load_error(const std::string& bytes, const std::string& scheme = "turbo4",
                       const ModelIdentity& model = test_model()) {
  auto cache = make_kv_cache(scheme, test_shape());
  try {
    deserialize_prompt_cache(bytes, "bad.tkvc", *cache, model);
  } catch (const Error& e) {
    EXPECT_EQ(cache->n_tokens(), 0) << "a failed load must leave the cache empty";
    return e.what();
  }
  return "";
}

void rewrite_header(std::string& bytes, const std::function<void(CacheFileHeader&)>& edit) {
  CacheFileHeader h;
  std::memcpy(&h, bytes.data(), sizeof h);
  edit(h);
  std::memcpy(bytes.data(), &h, sizeof h);
  const uint64_t sum = fnv1a64(bytes.data(), bytes.size() - kCacheFileChecksumBytes);
  std::memcpy(bytes.data() + bytes.size() - kCacheFileChecksumBytes, &sum, sizeof sum);
}

TEST(CacheFileErrors, TruncationAtAnyPointIsAnError) {
  const Saved s = saved_turbo4();
  std::vector<size_t> cuts = {0, 1, 3, 4, 8, kCacheFileHeaderBytes - 1, kCacheFileHeaderBytes,
                              kCacheFileHeaderBytes + 1, s.bytes.size() - 9, s.bytes.size() - 8, s.bytes.size() - 1};
  for (size_t c = 5; c < s.bytes.size(); c += s.bytes.size() / 37) cuts.push_back(c);
  for (size_t cut : cuts) {
    const std::string msg = load_error(s.bytes.substr(0, cut));
    ASSERT_FALSE(msg.empty()) << "cut at " << cut;
    EXPECT_NE(msg.find("bad.tkvc"), std::string::npos) << msg;
    if (cut >= kCacheFileHeaderBytes) {
      EXPECT_NE(msg.find("truncated"), std::string::npos) << cut << ": " << msg;
    }
  }
  EXPECT_NE(load_error(s.bytes + "x").find("trailing"), std::string::npos);
}

TEST(CacheFileErrors, FlippedBytesFailTheChecksum) {
  const Saved s = saved_turbo4();
  for (size_t pos = 0; pos < s.bytes.size(); pos += 1 + pos / 8) {
    std::string b = s.bytes;
    b[pos] = char(b[pos] ^ 0x10);
    const std::string msg = load_error(b);
    ASSERT_FALSE(msg.empty()) << "flip at " << pos;
    // Header fields read before the checksum (magic, version, sizes) have
    // their own messages; everything else is caught by the checksum.
    const bool early = pos < 16 || (pos >= offsetof(CacheFileHeader, payload_bytes) &&
                                    pos < offsetof(CacheFileHeader, payload_bytes) + 8);
    if (!early) {
      EXPECT_NE(msg.find("checksum"), std::string::npos) << pos << ": " << msg;
    }
  }
}

TEST(CacheFileErrors, WrongMagicVersionAndFormatAreNamed) {
  const Saved s = saved_turbo4();
  std::string b = s.bytes;
  b[0] = 'X';
  EXPECT_NE(load_error(b).find("magic"), std::string::npos);
  EXPECT_NE(load_error("hello").find("magic"), std::string::npos);

  b = s.bytes;
  rewrite_header(b, [](CacheFileHeader& h) { h.version = kCacheFileVersion + 1; });
  EXPECT_NE(load_error(b).find("format version " + std::to_string(kCacheFileVersion + 1)), std::string::npos)
      << load_error(b);

  b = s.bytes;
  rewrite_header(b, [](CacheFileHeader& h) { h.codec_format_version += 7; });
  EXPECT_NE(load_error(b).find("codec records of format version"), std::string::npos) << load_error(b);

  b = s.bytes;
  rewrite_header(b, [](CacheFileHeader& h) { h.codebook_hash ^= 1; });
  EXPECT_NE(load_error(b).find("codebooks"), std::string::npos) << load_error(b);
}

TEST(CacheFileErrors, AnotherModelIsNamed) {
  const Saved s = saved_turbo4();
  ModelIdentity m = test_model();
  m.tensor_hash ^= 1;
  EXPECT_NE(load_error(s.bytes, "turbo4", m).find("tensor table hash"), std::string::npos);
  m = test_model();
  m.architecture = "qwen3";
  EXPECT_NE(load_error(s.bytes, "turbo4", m).find("architecture 'llama'"), std::string::npos);
  m = test_model();
  m.n_vocab = 321;
  EXPECT_NE(load_error(s.bytes, "turbo4", m).find("n_vocab"), std::string::npos);
}

TEST(CacheFileErrors, AnotherSchemeIsNamed) {
  const Saved s = saved_turbo4();
  for (const char* other : {"fp16", "turbo3", "turbo4v2", "turbo4:strict", "turbo4:seed=5"}) {
    const std::string msg = load_error(s.bytes, other);
    EXPECT_NE(msg.find("'turbo4'"), std::string::npos) << other << ": " << msg;
    EXPECT_NE(msg.find("KV scheme"), std::string::npos) << other << ": " << msg;
  }
}

TEST(CacheFileErrors, ContextTooSmallIsNamed) {
  const Saved s = saved_turbo4();
  auto small = make_kv_cache("turbo4", test_shape(4));
  try {
    deserialize_prompt_cache(s.bytes, "ctx.tkvc", *small, test_model());
    FAIL() << "restored 9 tokens into a context of 4";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("--ctx"), std::string::npos) << e.what();
  }
  EXPECT_EQ(small->n_tokens(), 0);
}

TEST(CacheFile, FilesAreWrittenAtomicallyAndErrorsNameThePath) {
  const std::string path = (std::filesystem::path(::testing::TempDir()) / ("turbokv_cache_file_test_" + std::to_string(::getpid()) + ".tkvc")).string();
  const Saved s = saved_turbo4();
  save_prompt_cache(path, *s.cache, test_model(), token_ids(s.cache->n_tokens()));
  EXPECT_EQ(read_file(path), s.bytes);
  EXPECT_EQ(prompt_cache_token_count(path), s.cache->n_tokens());
  auto cache = make_kv_cache("turbo4", test_shape());
  EXPECT_EQ(load_prompt_cache(path, *cache, test_model()), token_ids(s.cache->n_tokens()));
  std::filesystem::remove(path);
  EXPECT_EQ(prompt_cache_token_count(path), -1);
  try {
    load_prompt_cache(path, *cache, test_model());
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
  }
  // Token ids must match the cache.
  EXPECT_THROW(serialize_prompt_cache(*s.cache, test_model(), token_ids(2)), Error);
}

}  // namespace
}  // namespace turbokv::kv
