// A corpus of malformed GGUF files generated here: each must raise
// turbokv::Error with a message naming the file and the problem, never crash
// or allocate what the header claims (this suite also runs under ASan+UBSan).
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>

#include "io/gguf.h"
#include "support/gguf_writer.h"
#include "test_util.h"

namespace turbokv::testing {
namespace {

template <typename T>
std::vector<uint8_t> le(T v) {
  std::vector<uint8_t> b(sizeof(T));
  std::memcpy(b.data(), &v, sizeof(T));
  return b;
}
std::vector<uint8_t> cat(std::initializer_list<std::vector<uint8_t>> parts) {
  std::vector<uint8_t> out;
  for (const auto& p : parts) out.insert(out.end(), p.begin(), p.end());
  return out;
}

// A valid file with metadata of several types and tensors whose data sizes
// are multiples of 32, so that every strict prefix of it is invalid.
GgufWriter valid_writer() {
  GgufWriter w;
  w.add_string("general.architecture", "llama");
  w.add_u32("llama.block_count", 1);
  w.add_f32("llama.attention.layer_norm_rms_epsilon", 1e-5f);
  w.add_string_array("tokenizer.ggml.tokens", {"<unk>", "<s>", "a"});
  w.add_value("nested", gguf_array(GgufType::ARRAY, {gguf_array(GgufType::INT8, {gguf_i8(-1), gguf_i8(2)})}));
  w.add_bool("flag", true);
  w.add_tensor("token_embd.weight", {32, 3}, TensorType::Q8_0, std::vector<float>(96, 0.5f));  // 102 bytes
  w.add_tensor("output_norm.weight", {32}, TensorType::F32, std::vector<float>(32, 1.0f));     // 128 bytes
  return w;
}

TEST(GgufMalformed, ValidBaseOpens) {
  const std::string path = temp_path("base.gguf");
  EXPECT_EQ(open_error(valid_writer().to_bytes(), path), "");
}

TEST(GgufMalformed, EveryTruncationFails) {
  size_t header = 0;
  const std::vector<uint8_t> full = valid_writer().to_bytes(&header);
  ASSERT_EQ(full.size() % 32, 0u);
  const std::string path = temp_path("trunc.gguf");
  // Every byte through the header and its padding, then every 5 bytes of data.
  for (size_t n = 0; n < full.size(); n += (n < header + 64 ? 1 : 5)) {
    const std::string msg = open_error(std::vector<uint8_t>(full.begin(), full.begin() + long(n)), path);
    ASSERT_FALSE(msg.empty()) << "a prefix of " << n << " bytes opened";
    EXPECT_NE(msg.find(path), std::string::npos) << msg;
    const bool explained = msg.find("truncated") != std::string::npos ||
                           msg.find("past the end of the file") != std::string::npos ||
                           msg.find("too small") != std::string::npos ||
                           msg.find("is impossible") != std::string::npos;
    EXPECT_TRUE(explained) << n << " bytes: " << msg;
  }
  EXPECT_EQ(open_error(full, path), "");
}

TEST(GgufMalformed, TruncationMessagesNameWhatWasBeingRead) {
  size_t header = 0;
  const std::vector<uint8_t> full = valid_writer().to_bytes(&header);
  auto prefix = [&](size_t n) { return std::vector<uint8_t>(full.begin(), full.begin() + long(n)); };
  expect_open_error(prefix(0), "t0", {"too small"});
  expect_open_error(prefix(6), "t6", {"truncated", "version"});
  expect_open_error(prefix(12), "t12", {"truncated", "tensor count"});
  // A valid header but tensor data cut short names the tensor and its range.
  expect_open_error(prefix(full.size() - 1), "tdata",
                    {"tensor 'output_norm.weight'", "data [offset 128, 128 bytes]", "extends past the end of the file (size"});
}

TEST(GgufMalformed, BadMagic) {
  auto w = valid_writer();
  w.set_magic(0x4c4d4747u);  // "GGML"
  expect_open_error(w.to_bytes(), "magic", {"not a GGUF file", "bad magic 'GGML'"});
  expect_open_error({'a', 'b', 'c', 'd', 'e', 'f', 'g', 'h'}, "text", {"bad magic"});
}

TEST(GgufMalformed, Versions) {
  auto w = valid_writer();
  w.set_version(1);
  expect_open_error(w.to_bytes(), "v1", {"GGUF version 1 is not supported"});
  w.set_version(99);
  expect_open_error(w.to_bytes(), "v99", {"unsupported GGUF version 99"});
  w.set_version(0);
  expect_open_error(w.to_bytes(), "v0", {"unsupported GGUF version 0"});
}

TEST(GgufMalformed, AbsurdCounts) {
  auto w = valid_writer();
  w.set_kv_count_override(1ull << 60);
  expect_open_error(w.to_bytes(), "kv", {"metadata key/value count 1152921504606846976 is impossible"});
  w = valid_writer();
  w.set_tensor_count_override(1ull << 60);
  expect_open_error(w.to_bytes(), "tensors", {"tensor count 1152921504606846976 is impossible"});
  w = valid_writer();
  w.set_kv_count_override(~0ull);
  expect_open_error(w.to_bytes(), "kv_max", {"metadata key/value count"});
  // Plausible but too many: runs out of bytes while parsing.
  w = valid_writer();
  w.set_kv_count_override(20);
  expect_open_error(w.to_bytes(), "kv_20", {});
}

TEST(GgufMalformed, StringLengthPastTheEnd) {
  GgufWriter w;
  w.add_raw_kv("general.name", uint32_t(GgufType::STRING), cat({le<uint64_t>(1ull << 40), {'a', 'b'}}));
  expect_open_error(w.to_bytes(), "strlen", {"metadata key 'general.name'", "string length 1099511627776",
                                             "extends past the end of the file"});
  // The key itself with an absurd length (first key length is at offset 24).
  auto bytes = valid_writer().to_bytes();
  const auto huge = le<uint64_t>(~0ull);
  std::copy(huge.begin(), huge.end(), bytes.begin() + 24);
  expect_open_error(bytes, "keylen", {"metadata entry 0 key", "string length 18446744073709551615"});
}

TEST(GgufMalformed, AbsurdArrayCount) {
  GgufWriter w;
  w.add_raw_kv("tokenizer.ggml.tokens", uint32_t(GgufType::ARRAY),
               cat({le<uint32_t>(uint32_t(GgufType::STRING)), le<uint64_t>(1ull << 60)}));
  expect_open_error(w.to_bytes(), "arr", {"'tokenizer.ggml.tokens'", "array count 1152921504606846976 of string"});
  GgufWriter w2;
  w2.add_raw_kv("scores", uint32_t(GgufType::ARRAY),
                cat({le<uint32_t>(uint32_t(GgufType::FLOAT32)), le<uint64_t>(1000), le<float>(1.0f)}));
  expect_open_error(w2.to_bytes(), "arr2", {"'scores'", "array count 1000 of float32"});
  // Nested arrays each claiming many elements.
  GgufWriter w3;
  w3.add_raw_kv("n", uint32_t(GgufType::ARRAY),
                cat({le<uint32_t>(uint32_t(GgufType::ARRAY)), le<uint64_t>(1),
                     le<uint32_t>(uint32_t(GgufType::UINT64)), le<uint64_t>(1ull << 61)}));
  expect_open_error(w3.to_bytes(), "arr3", {"'n'", "array count 2305843009213693952 of uint64"});
}

TEST(GgufMalformed, NestedArrayDepthBomb) {
  std::vector<uint8_t> bomb;
  for (int i = 0; i < 100000; ++i) {
    const auto t = le<uint32_t>(uint32_t(GgufType::ARRAY));
    const auto n = le<uint64_t>(1);
    bomb.insert(bomb.end(), t.begin(), t.end());
    bomb.insert(bomb.end(), n.begin(), n.end());
  }
  GgufWriter w;
  w.add_raw_kv("bomb", uint32_t(GgufType::ARRAY), std::move(bomb));
  expect_open_error(w.to_bytes(), "bomb", {"'bomb'", "nested deeper than"});
}

TEST(GgufMalformed, UnknownValueTypes) {
  GgufWriter w;
  w.add_raw_kv("mystery", 13, le<uint32_t>(0));
  expect_open_error(w.to_bytes(), "type13", {"metadata key 'mystery'", "unknown value type 13"});
  GgufWriter w2;
  w2.add_raw_kv("mystery", 0xffffffffu, {});
  expect_open_error(w2.to_bytes(), "typemax", {"unknown value type 4294967295"});
  GgufWriter w3;
  w3.add_raw_kv("arr", uint32_t(GgufType::ARRAY), cat({le<uint32_t>(42), le<uint64_t>(1), le<uint32_t>(0)}));
  expect_open_error(w3.to_bytes(), "elem42", {"'arr'", "unknown array element type 42"});
}

TEST(GgufMalformed, InvalidBool) {
  GgufWriter w;
  w.add_raw_kv("flag", uint32_t(GgufType::BOOL), {7});
  expect_open_error(w.to_bytes(), "bool", {"'flag'", "invalid bool byte 7"});
}

TEST(GgufMalformed, DuplicateKeysAndTensors) {
  auto w = valid_writer();
  w.add_u32("llama.block_count", 2);
  expect_open_error(w.to_bytes(), "dupkey", {"duplicate metadata key 'llama.block_count'"});
  auto w2 = valid_writer();
  w2.add_tensor("output_norm.weight", {32}, TensorType::F32, std::vector<float>(32, 1.0f));
  expect_open_error(w2.to_bytes(), "duptensor", {"duplicate tensor 'output_norm.weight'"});
}

TEST(GgufMalformed, Alignment) {
  for (uint32_t bad : {0u, 3u, 48u}) {
    GgufWriter w(GgufWriterOptions{3, 32, false});
    w.add_u32("general.alignment", bad);
    expect_open_error(w.to_bytes(), "align" + std::to_string(bad),
                      {"'general.alignment'", (std::to_string(bad) + " is not a nonzero power of two").c_str()});
  }
  GgufWriter w(GgufWriterOptions{3, 32, false});
  w.add_string("general.alignment", "32");
  expect_open_error(w.to_bytes(), "alignstr", {"'general.alignment'", "expected an integer"});
  GgufWriter wneg(GgufWriterOptions{3, 32, false});
  wneg.add_i32("general.alignment", -32);
  expect_open_error(wneg.to_bytes(), "alignneg", {"'general.alignment'", "not a nonzero power of two"});
}

TEST(GgufMalformed, TensorOffsets) {
  auto w = valid_writer();
  w.add_tensor_raw("far", {8}, uint32_t(TensorType::F32), std::vector<uint8_t>(32, 0), uint64_t(1) << 40);
  expect_open_error(w.to_bytes(), "far", {"tensor 'far'", "data [offset 1099511627776, 32 bytes]",
                                          "extends past the end of the file (size"});
  auto w2 = valid_writer();
  w2.add_tensor_raw("wrap", {8}, uint32_t(TensorType::F32), std::vector<uint8_t>(32, 0), ~uint64_t(31));
  expect_open_error(w2.to_bytes(), "wrap", {"tensor 'wrap'", "extends past the end of the file"});
  auto w3 = valid_writer();
  w3.add_tensor_raw("odd", {8}, uint32_t(TensorType::F32), std::vector<uint8_t>(32, 0), 4);
  expect_open_error(w3.to_bytes(), "misaligned", {"tensor 'odd'", "offset 4 is not a multiple of the alignment 32"});
  // Data claimed bigger than written.
  auto w4 = valid_writer();
  w4.add_tensor_raw("big", {8, 1000}, uint32_t(TensorType::F32), std::vector<uint8_t>(32, 0));
  expect_open_error(w4.to_bytes(), "big", {"tensor 'big'", "32000 bytes", "extends past the end of the file"});
  // Unknown type: size unknown, but the offset must still lie in the file.
  auto w5 = valid_writer();
  w5.add_tensor_raw("unk", {8}, 77, {}, uint64_t(1) << 20);
  expect_open_error(w5.to_bytes(), "unk", {"tensor 'unk'", "extends past the end of the file"});
}

TEST(GgufMalformed, TensorShapes) {
  auto shape_error = [](std::vector<uint64_t> shape, uint32_t type, const char* stem,
                        std::initializer_list<const char*> subs) {
    auto w = valid_writer();
    w.add_tensor_raw("bad", std::move(shape), type, std::vector<uint8_t>(64, 0));
    expect_open_error(w.to_bytes(), stem, subs);
  };
  const uint32_t f32 = uint32_t(TensorType::F32);
  shape_error({}, f32, "ndims0", {"tensor 'bad'", "n_dims 0 is out of range"});
  shape_error({1, 1, 1, 1, 1}, f32, "ndims5", {"tensor 'bad'", "n_dims 5 is out of range"});
  shape_error({8, 0}, f32, "zerodim", {"tensor 'bad'", "dimension 1 is zero"});
  shape_error({1ull << 32, 1ull << 32}, f32, "overflow", {"tensor 'bad'", "element count overflows"});
  shape_error({~0ull}, f32, "huge_ne0", {"tensor 'bad'", "element count overflows"});
  shape_error({1ull << 62}, f32, "bytes_overflow", {"tensor 'bad'", "byte size overflows"});
  shape_error({33, 2}, uint32_t(TensorType::Q8_0), "q8_33",
              {"tensor 'bad'", "ne[0] = 33 is not a multiple of the q8_0 block size 32"});
  shape_error({16}, uint32_t(TensorType::Q4_0), "q4_16", {"q4_0 block size 32"});
}

TEST(GgufMalformed, NonexistentAndEmptyFiles) {
  const std::string missing = temp_path("does_not_exist.gguf");
  try {
    (void)io::GgufFile::open(missing);
    ADD_FAILURE() << "opened a missing file";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(missing + ": cannot open"), std::string::npos) << e.what();
  }
  expect_open_error({}, "empty", {"too small"});
  try {
    (void)io::GgufFile::open(std::filesystem::temp_directory_path().string());
    ADD_FAILURE() << "opened a directory";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("not a regular file"), std::string::npos) << e.what();
  }
}

// Flipping single bytes anywhere in the header must never crash: it either
// opens (the byte was a value) or raises Error.
TEST(GgufMalformed, ByteFlipsInTheHeaderNeverCrash) {
  size_t header = 0;
  const std::vector<uint8_t> full = valid_writer().to_bytes(&header);
  const std::string path = temp_path("flip.gguf");
  int errors = 0;
  for (size_t i = 0; i < header; ++i) {
    for (uint8_t x : {uint8_t(0xff), uint8_t(0x80), uint8_t(0x01)}) {
      auto bytes = full;
      bytes[i] ^= x;
      write_file(path, bytes);
      try {
        auto f = io::GgufFile::open(path);
        for (const auto& t : f->tensors()) {  // whatever opened must be in bounds
          ASSERT_LE(f->tensor_data(t) + t.n_bytes, f->tensor_data(t) + (full.size()));
        }
      } catch (const Error&) {
        ++errors;
      }
    }
  }
  std::filesystem::remove(path);
  EXPECT_GT(errors, int(header));
}

}  // namespace
}  // namespace turbokv::testing
