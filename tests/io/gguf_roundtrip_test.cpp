// Files written by the test writer read back identically: every value type,
// nested arrays, versions 2 and 3, alignments 32 and 64, every supported
// tensor type.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>

#include "io/gguf.h"
#include "ops/quantize.h"
#include "support/gguf_writer.h"
#include "test_util.h"
#include "util/rng.h"

namespace turbokv::testing {
namespace {

struct Params {
  uint32_t version;
  uint64_t alignment;
};

class GgufRoundTrip : public ::testing::TestWithParam<Params> {};

std::vector<float> random_floats(size_t n, uint64_t seed) {
  Rng rng(seed);
  std::vector<float> v(n);
  for (auto& x : v) x = float(rng.normal());
  return v;
}

TEST_P(GgufRoundTrip, EveryValueTypeAndTensorType) {
  const Params p = GetParam();
  GgufWriter w(GgufWriterOptions{p.version, p.alignment, true});
  w.add_u8("k.u8", 250);
  w.add_i8("k.i8", -120);
  w.add_u16("k.u16", 65000);
  w.add_i16("k.i16", -32000);
  w.add_u32("k.u32", 4000000000u);
  w.add_i32("k.i32", -2000000000);
  w.add_u64("k.u64", 0xfedcba9876543210ull);
  w.add_i64("k.i64", -0x123456789abcdefll);
  w.add_f32("k.f32", 1.5e-5f);
  w.add_f64("k.f64", 3.141592653589793);
  w.add_bool("k.true", true);
  w.add_bool("k.false", false);
  w.add_string("k.str", "h\xC3\xA9llo \xE2\x96\x81world");
  w.add_string("k.empty", "");
  w.add_string_array("k.strs", {"a", "", "ccc"});
  w.add_f32_array("k.f32s", {1.0f, -2.5f, 0.125f});
  w.add_i32_array("k.i32s", {1, -2, 2147483647});
  w.add_u32_array("k.u32s", {});
  // [[1, 2], [], [3]] of uint16, and [[["x"]]]
  w.add_value("k.nested", gguf_array(GgufType::ARRAY, {gguf_array(GgufType::UINT16, {gguf_u16(1), gguf_u16(2)}),
                                                       gguf_array(GgufType::UINT16, {}),
                                                       gguf_array(GgufType::UINT16, {gguf_u16(3)})}));
  w.add_value("k.deep", gguf_array(GgufType::ARRAY,
                                   {gguf_array(GgufType::ARRAY, {gguf_array(GgufType::STRING, {gguf_string("x")})})}));
  w.add_value("k.bools", gguf_array(GgufType::BOOL, {gguf_bool(true), gguf_bool(false)}));
  w.add_value("k.f64s", gguf_array(GgufType::FLOAT64, {gguf_f64(0.5), gguf_f64(-1e300)}));

  const TensorType types[] = {TensorType::F32, TensorType::F16, TensorType::BF16, TensorType::Q8_0, TensorType::Q4_0};
  std::vector<std::vector<float>> values;
  for (size_t i = 0; i < 5; ++i) {
    values.push_back(random_floats(64 * 3, 100 + i));
    w.add_tensor(std::string("t.") + ops::type_name(types[i]), {64, 3}, types[i], values.back());
  }
  w.add_tensor("t.vec", {5}, TensorType::F32, {1, 2, 3, 4, 5});
  w.add_tensor("t.4d", {32, 2, 1, 3}, TensorType::F16, random_floats(192, 7));

  const std::string path = temp_path("rt.gguf");
  w.write(path);
  auto f = io::GgufFile::open(path);
  EXPECT_EQ(f->version(), p.version);
  EXPECT_EQ(f->alignment(), p.alignment);
  EXPECT_EQ(f->get_u32("k.u8"), 250u);
  EXPECT_EQ(f->get_i64("k.i8"), -120);
  EXPECT_EQ(f->get_u32("k.u16"), 65000u);
  EXPECT_EQ(f->get_i64("k.i16"), -32000);
  EXPECT_EQ(f->get_u32("k.u32"), 4000000000u);
  EXPECT_EQ(f->get_i64("k.i32"), -2000000000);
  EXPECT_EQ(f->get_u64("k.u64"), 0xfedcba9876543210ull);
  EXPECT_EQ(f->get_i64("k.i64"), -0x123456789abcdefll);
  EXPECT_EQ(f->get_f32("k.f32"), 1.5e-5f);
  EXPECT_EQ(std::get<double>(f->find("k.f64")->value), 3.141592653589793);
  EXPECT_TRUE(f->get_bool("k.true"));
  EXPECT_FALSE(f->get_bool("k.false"));
  EXPECT_EQ(f->get_string("k.str"), "h\xC3\xA9llo \xE2\x96\x81world");
  EXPECT_EQ(f->get_string("k.empty"), "");
  EXPECT_EQ(f->get_string_array("k.strs"), (std::vector<std::string>{"a", "", "ccc"}));
  EXPECT_EQ(f->get_f32_array("k.f32s"), (std::vector<float>{1.0f, -2.5f, 0.125f}));
  EXPECT_EQ(f->get_i32_array("k.i32s"), (std::vector<int32_t>{1, -2, 2147483647}));
  EXPECT_TRUE(f->get_i32_array("k.u32s").empty());
  EXPECT_EQ(f->get_f32_array("k.f64s")[0], 0.5f);

  // Value types as stored.
  EXPECT_EQ(f->find("k.u8")->type, GgufType::UINT8);
  EXPECT_EQ(f->find("k.f32")->type, GgufType::FLOAT32);
  const GgufValue* nested = f->find("k.nested");
  ASSERT_NE(nested, nullptr);
  EXPECT_EQ(nested->type, GgufType::ARRAY);
  EXPECT_EQ(nested->elem_type, GgufType::ARRAY);
  const auto& outer = std::get<std::vector<GgufValue>>(nested->value);
  ASSERT_EQ(outer.size(), 3u);
  EXPECT_EQ(outer[0].elem_type, GgufType::UINT16);
  ASSERT_EQ(std::get<std::vector<GgufValue>>(outer[0].value).size(), 2u);
  EXPECT_EQ(std::get<uint64_t>(std::get<std::vector<GgufValue>>(outer[0].value)[1].value), 2u);
  EXPECT_TRUE(std::get<std::vector<GgufValue>>(outer[1].value).empty());
  const auto& deep = std::get<std::vector<GgufValue>>(f->find("k.deep")->value);
  const auto& deep1 = std::get<std::vector<GgufValue>>(deep[0].value);
  EXPECT_EQ(std::get<std::string>(std::get<std::vector<GgufValue>>(deep1[0].value)[0].value), "x");
  const auto& bools = std::get<std::vector<GgufValue>>(f->find("k.bools")->value);
  EXPECT_TRUE(std::get<bool>(bools[0].value));
  EXPECT_FALSE(std::get<bool>(bools[1].value));

  // Metadata order is file order (general.alignment comes first when written).
  EXPECT_EQ(f->metadata().size(), 22u + (p.alignment != 32 ? 1u : 0u));

  // Tensors: offsets aligned, data equal to the reference quantization.
  ASSERT_EQ(f->tensors().size(), 7u);
  for (size_t i = 0; i < 5; ++i) {
    const auto& t = f->tensor(std::string("t.") + ops::type_name(types[i]));
    EXPECT_EQ(t.type, types[i]);
    EXPECT_EQ(t.shape, (std::vector<uint64_t>{64, 3}));
    EXPECT_EQ(t.n_elements(), 192u);
    EXPECT_EQ(t.offset % p.alignment, 0u);
    EXPECT_EQ(t.n_bytes, ops::row_bytes(types[i], 64) * 3);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(f->tensor_data(t)) % p.alignment, 0u);
    std::vector<uint8_t> expect(t.n_bytes);
    for (int r = 0; r < 3; ++r) {
      ops::quantize_row(types[i], values[i].data() + r * 64, expect.data() + r * ops::row_bytes(types[i], 64), 64);
    }
    EXPECT_EQ(std::memcmp(f->tensor_data(t), expect.data(), t.n_bytes), 0) << t.name;
  }
  const auto& vec = f->tensor("t.vec");
  float got[5];
  std::memcpy(got, f->tensor_data(vec), sizeof got);
  EXPECT_EQ(got[4], 5.0f);
  EXPECT_EQ(f->tensor("t.4d").shape, (std::vector<uint64_t>{32, 2, 1, 3}));
  EXPECT_EQ(f->find_tensor("nope"), nullptr);
  f.reset();
  std::filesystem::remove(path);
}

INSTANTIATE_TEST_SUITE_P(VersionsAndAlignments, GgufRoundTrip,
                         ::testing::Values(Params{2, 32}, Params{3, 32}, Params{2, 64}, Params{3, 64}),
                         [](const auto& info) {
                           // (appends rather than operator+ chains: g++ 12 warns falsely, -Wrestrict)
                           std::string name = "v";
                           name.append(std::to_string(info.param.version)).append("_align");
                           name.append(std::to_string(info.param.alignment));
                           return name;
                         });

TEST(GgufGetters, TypeErrorsNameTheFileAndKey) {
  GgufWriter w;
  w.add_i32("neg", -1);
  w.add_u64("big", 1ull << 40);
  w.add_string("s", "x");
  w.add_f32("f", 2.5f);
  w.add_u8("small", 7);
  w.add_bool("b", true);
  w.add_string_array("strs", {"a"});
  w.add_f32_array("floats", {1.0f});
  const std::string path = temp_path("getters.gguf");
  w.write(path);
  auto f = io::GgufFile::open(path);
  auto expect_msg = [&](auto fn, std::initializer_list<const char*> subs) {
    try {
      fn();
      ADD_FAILURE() << "no error";
    } catch (const Error& e) {
      const std::string m = e.what();
      EXPECT_NE(m.find(path), std::string::npos) << m;
      for (const char* s : subs) EXPECT_NE(m.find(s), std::string::npos) << "missing '" << s << "' in " << m;
    }
  };
  expect_msg([&] { f->get_u32("missing"); }, {"'missing'", "is missing"});
  expect_msg([&] { f->get_u32("neg"); }, {"'neg'", "does not fit in uint32"});
  expect_msg([&] { f->get_u64("neg"); }, {"'neg'", "does not fit in uint64"});
  expect_msg([&] { f->get_u32("big"); }, {"'big'", "does not fit in uint32"});
  expect_msg([&] { f->get_u32("s"); }, {"'s'", "expected an integer"});
  expect_msg([&] { f->get_u32("f"); }, {"'f'", "expected an integer"});
  expect_msg([&] { f->get_string("f"); }, {"'f'", "expected a string"});
  expect_msg([&] { f->get_bool("small"); }, {"'small'", "expected a bool"});
  expect_msg([&] { f->get_f32("s"); }, {"'s'", "expected a number"});
  expect_msg([&] { f->get_string_array("floats"); }, {"'floats'", "expected an array of string"});
  expect_msg([&] { f->get_f32_array("strs"); }, {"'strs'", "expected an array of numbers"});
  expect_msg([&] { f->get_i32_array("floats"); }, {"'floats'", "expected an array of integers"});
  expect_msg([&] { f->get_string_array("s"); }, {"'s'", "expected an array"});
  expect_msg([&] { f->tensor("blk.0.attn_q.weight"); }, {"tensor 'blk.0.attn_q.weight'", "missing"});
  EXPECT_EQ(f->get_i64("neg"), -1);
  EXPECT_EQ(f->get_u64("big"), 1ull << 40);
  EXPECT_EQ(f->get_f32("small"), 7.0f);  // integers convert to float
  EXPECT_EQ(f->get_u32_or("missing", 9), 9u);
  EXPECT_EQ(f->get_u32_or("small", 9), 7u);
  EXPECT_EQ(f->get_f32_or("missing", 0.5f), 0.5f);
  EXPECT_EQ(f->get_bool_or("missing", true), true);
  EXPECT_EQ(f->get_string_or("missing", "fb"), "fb");
  EXPECT_EQ(f->get_string_or("s", "fb"), "x");
  f.reset();
  std::filesystem::remove(path);
}

TEST(GgufHash, DependsOnTheTensorTableOnly) {
  auto make = [](uint64_t rows, const std::string& kv) {
    GgufWriter w;
    w.add_string("general.name", kv);
    w.add_tensor("a", {32, rows}, TensorType::F16, std::vector<float>(32 * rows, 1.0f));
    w.add_tensor("b", {8}, TensorType::F32, std::vector<float>(8, 2.0f));
    return w;
  };
  const std::string p1 = temp_path("h1.gguf"), p2 = temp_path("h2.gguf"), p3 = temp_path("h3.gguf");
  make(2, "x").write(p1);
  make(2, "y").write(p2);
  make(3, "x").write(p3);
  const uint64_t h1 = io::GgufFile::open(p1)->tensor_table_hash();
  EXPECT_EQ(h1, io::GgufFile::open(p1)->tensor_table_hash());
  EXPECT_EQ(h1, io::GgufFile::open(p2)->tensor_table_hash());
  EXPECT_NE(h1, io::GgufFile::open(p3)->tensor_table_hash());
  for (const auto& p : {p1, p2, p3}) std::filesystem::remove(p);
}

TEST(GgufTensors, UnknownTypeIsListedByIdWithoutSize) {
  GgufWriter w;
  w.add_tensor_raw("weird", {32, 2}, 99, std::vector<uint8_t>(64, 0));
  w.add_tensor("ok", {32}, TensorType::Q4_0, std::vector<float>(32, 1.0f));
  const std::string path = temp_path("unknown_type.gguf");
  w.write(path);
  auto f = io::GgufFile::open(path);
  const auto& t = f->tensor("weird");
  EXPECT_EQ(uint32_t(t.type), 99u);
  EXPECT_FALSE(ops::is_supported(t.type));
  EXPECT_STREQ(ops::type_name(t.type), "unknown");
  EXPECT_TRUE(ops::is_supported(f->tensor("ok").type));
  f.reset();
  std::filesystem::remove(path);
}

TEST(GgufTensors, KnownButUnsupportedTypeHasCheckedSize) {
  GgufWriter w;
  w.add_tensor_raw("k", {256, 2}, uint32_t(TensorType::Q4_K), std::vector<uint8_t>(2 * 144, 0));
  const std::string path = temp_path("q4k.gguf");
  w.write(path);
  auto f = io::GgufFile::open(path);
  EXPECT_EQ(f->tensor("k").n_bytes, 288u);
  EXPECT_FALSE(ops::is_supported(f->tensor("k").type));
  f.reset();
  std::filesystem::remove(path);
}

TEST(GgufMetadataOnly, ZeroTensorsHasNoDataSection) {
  GgufWriter w;
  w.add_string("general.architecture", "llama");
  const std::string path = temp_path("kv_only.gguf");
  w.write(path);
  auto f = io::GgufFile::open(path);
  EXPECT_TRUE(f->tensors().empty());
  EXPECT_EQ(f->get_string("general.architecture"), "llama");
  f.reset();
  std::filesystem::remove(path);
}

}  // namespace
}  // namespace turbokv::testing
