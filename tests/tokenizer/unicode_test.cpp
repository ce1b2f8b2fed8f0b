#include "tokenizer/unicode.h"

#include <gtest/gtest.h>

#include <set>

namespace turbokv::tokenizer {
namespace {

TEST(Utf8Test, DecodesValidSequences) {
  const std::string text = "a\xC3\xA9\xE2\x96\x81\xF0\x9F\xA6\x99";  // a é ▁ 🦙
  const auto chars = decode_utf8(text);
  ASSERT_EQ(chars.size(), 4u);
  EXPECT_EQ(chars[0].cpt, 'a');
  EXPECT_EQ(chars[1].cpt, 0xE9u);
  EXPECT_EQ(chars[2].cpt, 0x2581u);
  EXPECT_EQ(chars[3].cpt, 0x1F999u);
  EXPECT_EQ(chars[3].offset, 6u);
  EXPECT_EQ(chars[3].n_bytes, 4u);
}

TEST(Utf8Test, InvalidBytesAreSingleCharacters) {
  // Lone continuation, truncated 3-byte sequence, overlong, surrogate, > U+10FFFF.
  const std::string text = "\x80" "\xE2\x96" "x" "\xC0\xAF" "\xED\xA0\x80" "\xF4\x90\x80\x80";
  const auto chars = decode_utf8(text);
  ASSERT_EQ(chars.size(), text.size());
  std::string again;
  for (const auto& c : chars) {
    EXPECT_EQ(c.n_bytes, 1u);
    if (c.cpt != 'x') {
      EXPECT_GE(c.cpt, kInvalidByteBase);
    }
    append_utf8(c.cpt, again);
  }
  EXPECT_EQ(again, text);
}

TEST(Utf8Test, EncodeDecodeRoundTripsEveryScalarValue) {
  for (uint32_t cpt = 0; cpt < 0x110000; cpt += (cpt < 0x3000 ? 1 : 97)) {
    if (cpt >= 0xD800 && cpt < 0xE000) continue;
    std::string s;
    append_utf8(cpt, s);
    const auto chars = decode_utf8(s);
    ASSERT_EQ(chars.size(), 1u) << cpt;
    ASSERT_EQ(chars[0].cpt, cpt);
  }
}

TEST(CharGroupTest, SpotChecks) {
  EXPECT_EQ(char_group('a'), CharGroup::Letter);
  EXPECT_EQ(char_group('7'), CharGroup::Number);
  EXPECT_EQ(char_group('!'), CharGroup::Punctuation);
  EXPECT_EQ(char_group('$'), CharGroup::Symbol);
  EXPECT_EQ(char_group(' '), CharGroup::Separator);
  EXPECT_EQ(char_group('\n'), CharGroup::Other);
  EXPECT_EQ(char_group(0xBD), CharGroup::Number);     // ½
  EXPECT_EQ(char_group(0xE9), CharGroup::Letter);     // é
  EXPECT_EQ(char_group(0x301), CharGroup::Mark);      // combining acute
  EXPECT_EQ(char_group(0x4E2D), CharGroup::Letter);   // 中
  EXPECT_EQ(char_group(0x0661), CharGroup::Number);   // Arabic-Indic one
  EXPECT_EQ(char_group(0x2167), CharGroup::Number);   // Roman numeral eight (Nl)
  EXPECT_EQ(char_group(0x1F999), CharGroup::Symbol);  // 🦙
  EXPECT_EQ(char_group(0x17B6), CharGroup::Mark);     // Khmer vowel sign
  EXPECT_EQ(char_group(0x0378), CharGroup::Unassigned);
  EXPECT_EQ(char_group(0x10FFFF), CharGroup::Unassigned);
  EXPECT_EQ(char_group(kInvalidByteBase + 0x80), CharGroup::Symbol);
}

TEST(CharGroupTest, Whitespace) {
  for (uint32_t c : {0x09u, 0x0Au, 0x0Du, 0x20u, 0x85u, 0xA0u, 0x2003u, 0x3000u}) EXPECT_TRUE(is_whitespace(c)) << c;
  for (uint32_t c : {0x41u, 0x200Bu, 0x2581u, 0x1Cu}) EXPECT_FALSE(is_whitespace(c)) << c;
}

TEST(Gpt2ByteMapTest, IsABijectionOntoPrintableCodePoints) {
  std::set<uint32_t> seen;
  for (int b = 0; b < 256; ++b) {
    const uint32_t cpt = byte_to_gpt2_cpt(static_cast<uint8_t>(b));
    EXPECT_TRUE(seen.insert(cpt).second);
    EXPECT_EQ(gpt2_cpt_to_byte(cpt), b);
  }
  EXPECT_EQ(byte_to_gpt2_cpt(' '), 0x120u);   // Ġ
  EXPECT_EQ(byte_to_gpt2_cpt('\n'), 0x10Au);  // Ċ
  EXPECT_EQ(byte_to_gpt2_cpt('A'), uint32_t{'A'});
  EXPECT_EQ(gpt2_cpt_to_byte(0x2581), -1);
}

}  // namespace
}  // namespace turbokv::tokenizer
