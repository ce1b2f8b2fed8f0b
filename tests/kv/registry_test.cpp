#include "kv/registry.h"

#include <gtest/gtest.h>

#include "util/error.h"

namespace turbokv::kv {
namespace {

const CacheShape kShape{2, 4, 2, 16, 32};

TEST(KvRegistry, BuildsBuiltInSchemes) {
  auto a = make_kv_cache("fp16", kShape);
  EXPECT_EQ(a->scheme(), "fp16");
  EXPECT_EQ(a->bits_per_element(), 16.0);
  auto b = make_kv_cache("f32", kShape);
  EXPECT_EQ(b->scheme(), "f32");
  EXPECT_EQ(make_kv_cache(kDefaultScheme, kShape)->scheme(), "fp16");
  EXPECT_EQ(b->shape().max_tokens, 32);
}

TEST(KvRegistry, UnknownSchemeListsValidForms) {
  try {
    make_kv_cache("fp8", kShape);
    FAIL() << "expected Error";
  } catch (const Error& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("'fp8'"), std::string::npos) << m;
    EXPECT_NE(m.find("fp16"), std::string::npos) << m;
    EXPECT_NE(m.find("f32"), std::string::npos) << m;
  }
}

TEST(KvRegistry, AcceptsNewSchemes) {
  SchemeEntry e;
  e.forms = "test-f32";
  e.description = "an alias registered by a test";
  e.make = [](std::string_view name, const CacheShape& s) -> std::unique_ptr<KvCache> {
    return name == "test-f32" ? make_kv_cache("f32", s) : nullptr;
  };
  register_kv_scheme(e);
  EXPECT_EQ(make_kv_cache("test-f32", kShape)->scheme(), "f32");
  EXPECT_NE(kv_scheme_list().find("test-f32"), std::string::npos);
}

}  // namespace
}  // namespace turbokv::kv
