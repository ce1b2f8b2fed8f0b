// The tokenizer algorithms on small hand-built vocabularies (no files).
#include "tokenizer/tokenizer.h"

#include <gtest/gtest.h>

#include "tokenizer/unicode.h"
#include "util/error.h"

namespace turbokv::tokenizer {
namespace {

using Ids = std::vector<int32_t>;

// <unk> <s> </s>, the 256 byte tokens (ids 3..258), then scored pieces.
Vocab toy_spm_vocab() {
  Vocab v = Vocab::with_defaults("llama");
  const auto add = [&](std::string text, float score, TokenType type) {
    v.tokens.push_back(std::move(text));
    v.scores.push_back(score);
    v.token_types.push_back(type);
  };
  add("<unk>", 0, TokenType::Unknown);
  add("<s>", 0, TokenType::Control);
  add("</s>", 0, TokenType::Control);
  static constexpr char kHex[] = "0123456789ABCDEF";
  for (int b = 0; b < 256; ++b) {
    const char name[7] = {'<', '0', 'x', kHex[b >> 4], kHex[b & 15], '>', 0};
    add(name, 0, TokenType::Byte);
  }
  add("\xE2\x96\x81", -1, TokenType::Normal);          // 259 ▁
  add("a", -2, TokenType::Normal);                     // 260
  add("b", -3, TokenType::Normal);                     // 261
  add("ab", -0.5f, TokenType::Normal);                 // 262
  add("\xE2\x96\x81" "a", -0.7f, TokenType::Normal);   // 263 ▁a
  add("\xE2\x96\x81" "ab", -0.1f, TokenType::Normal);  // 264 ▁ab
  add("aa", -0.2f, TokenType::Normal);                 // 265
  add("[mask]", 0, TokenType::UserDefined);            // 266
  return v;
}

constexpr int32_t kByte0 = 3;

TEST(SpmTest, MergesHighestScoreFirst) {
  const Tokenizer tok(toy_spm_vocab());
  // ▁ a b: "ab" (-0.5) beats "▁a" (-0.7), then "▁ab" (-0.1).
  EXPECT_EQ(tok.encode("ab", false), (Ids{264}));
  EXPECT_EQ(tok.encode("ab"), (Ids{1, 264}));  // add_bos by default for llama
  // No pair of "▁ba" is a token.
  EXPECT_EQ(tok.encode("ba", false), (Ids{259, 261, 260}));
  // Equal scores: the leftmost pair merges first: ▁ aa a, not ▁ a aa.
  EXPECT_EQ(tok.encode("aaa", false), (Ids{259, 265, 260}));
  EXPECT_TRUE(tok.encode("", false).empty());
  EXPECT_EQ(tok.encode(""), (Ids{1}));
}

TEST(SpmTest, ByteFallbackAndInvalidUtf8) {
  const Tokenizer tok(toy_spm_vocab());
  EXPECT_EQ(tok.encode("\xC3\xA9", false), (Ids{259, kByte0 + 0xC3, kByte0 + 0xA9}));
  const std::string bad = "a\xFF\xE2\x96";
  EXPECT_EQ(tok.encode(bad, false), (Ids{263, kByte0 + 0xFF, kByte0 + 0xE2, kByte0 + 0x96}));
  EXPECT_EQ(tok.decode(tok.encode(bad)), bad);
}

TEST(SpmTest, SpecialTokensInText) {
  const Tokenizer tok(toy_spm_vocab());
  // Without parse_special, "<s>" is text (byte fallback for '<', 's', '>').
  const Ids plain = tok.encode("<s>", false, false);
  EXPECT_EQ(plain.size(), 4u);
  // With it, the control token is matched and the text after it gets the dummy prefix.
  EXPECT_EQ(tok.encode("<s>ab", false, true), (Ids{1, 264}));
  EXPECT_EQ(tok.encode("ab</s>", true, true), (Ids{1, 264, 2}));
  // User-defined tokens are matched either way and print verbatim.
  EXPECT_EQ(tok.encode("ab[mask]", false, false), (Ids{264, 266}));
  EXPECT_EQ(tok.token_to_piece(266), "[mask]");
}

TEST(SpmTest, PiecesAndDecode) {
  const Tokenizer tok(toy_spm_vocab());
  EXPECT_EQ(tok.token_to_piece(264), " ab");
  EXPECT_EQ(tok.token_to_piece(1), "");
  EXPECT_EQ(tok.token_to_piece(1, /*render_special=*/true), "<s>");
  EXPECT_EQ(tok.token_to_piece(0, true), "<unk>");
  EXPECT_EQ(tok.token_to_piece(kByte0 + '\n'), "\n");
  // decode strips the dummy prefix once; render_special shows BOS like llama-simple.
  EXPECT_EQ(tok.decode(Ids{1, 264, 259, 260}), "ab a");
  EXPECT_EQ(tok.decode(Ids{1, 264, 259, 260}, true), "<s> ab a");
  EXPECT_EQ(tok.decode(Ids{259, 264}), " ab");
  EXPECT_THROW(tok.token_to_piece(267), Error);
  EXPECT_THROW(tok.token_to_piece(-1), Error);
  EXPECT_THROW(tok.decode(Ids{1, 9999}), Error);
}

TEST(SpmTest, NoDummyPrefix) {
  Vocab v = toy_spm_vocab();
  v.add_space_prefix = false;
  const Tokenizer tok(std::move(v));
  EXPECT_EQ(tok.encode("ab", false), (Ids{262}));
  EXPECT_EQ(tok.decode(Ids{259, 262}), " ab");
}

TEST(SpmTest, EndOfGeneration) {
  const Tokenizer tok(toy_spm_vocab());
  EXPECT_TRUE(tok.is_eog(2));
  EXPECT_FALSE(tok.is_eog(1));
  EXPECT_FALSE(tok.is_eog(-1));
  EXPECT_EQ(tok.bos(), 1);
  EXPECT_EQ(tok.eos(), 2);
  EXPECT_EQ(tok.n_vocab(), 267);
}

TEST(VocabTest, RejectsInconsistentVocabularies) {
  Vocab v = toy_spm_vocab();
  v.scores.pop_back();
  EXPECT_THROW(Tokenizer{v}, Error);
  v = toy_spm_vocab();
  v.eos_id = 5000;
  EXPECT_THROW(Tokenizer{v}, Error);
  v = toy_spm_vocab();
  v.bos_id = kNoToken;
  EXPECT_THROW(Tokenizer{v}, Error);  // add_bos without a BOS token
  EXPECT_THROW(Vocab::with_defaults("bert"), Error);
  EXPECT_THROW(Vocab::with_defaults("gpt2", "no-such-pre"), Error);
}

std::string byte_level(std::string_view text) {
  std::string out;
  for (char c : text) append_utf8(byte_to_gpt2_cpt(static_cast<uint8_t>(c)), out);
  return out;
}

// The 256 byte-level characters (ids 0..255 in byte order), three merges
// and an end-of-text control token.
Vocab toy_bpe_vocab() {
  Vocab v = Vocab::with_defaults("gpt2", "gpt-2");
  for (int b = 0; b < 256; ++b) v.tokens.push_back(byte_level(std::string(1, static_cast<char>(b))));
  v.tokens.push_back("he");                        // 256
  v.tokens.push_back(byte_level(" t"));            // 257 Ġt
  v.tokens.push_back(byte_level(" the"));          // 258 Ġthe
  v.tokens.push_back("<|endoftext|>");             // 259
  v.merges = {"h e", byte_level(" ") + " t", byte_level(" t") + " he"};
  v.bos_id = v.eos_id = 259;
  return v;
}

TEST(BpeTest, MergesByRank) {
  const Tokenizer tok(toy_bpe_vocab());
  EXPECT_EQ(tok.encode(" the", false), (Ids{258}));
  EXPECT_EQ(tok.encode(" th", false), (Ids{257, 'h'}));
  EXPECT_EQ(tok.encode("the the", false), (Ids{'t', 256, 258}));
  EXPECT_EQ(tok.encode(" the"), (Ids{258}));  // gpt-2 adds no BOS
}

TEST(BpeTest, EndOfTextIsControlAndEndsGeneration) {
  const Tokenizer tok(toy_bpe_vocab());
  EXPECT_TRUE(tok.is_eog(259));
  EXPECT_TRUE(tok.is_special(259));
  EXPECT_EQ(tok.encode("he<|endoftext|>", false, true), (Ids{256, 259}));
  EXPECT_GT(tok.encode("he<|endoftext|>", false, false).size(), 2u);
  EXPECT_EQ(tok.token_to_piece(259), "");
  EXPECT_EQ(tok.token_to_piece(259, true), "<|endoftext|>");
}

TEST(BpeTest, ByteLevelRoundTripsAnyBytes) {
  const Tokenizer tok(toy_bpe_vocab());
  std::string all;
  for (int b = 0; b < 256; ++b) all.push_back(static_cast<char>(b));
  all += " the \xF0\x9F\xA6\x99 the";
  EXPECT_EQ(tok.decode(tok.encode(all)), all);
  EXPECT_EQ(tok.token_to_piece(258), " the");
  EXPECT_EQ(tok.token_to_piece('\n'), "\n");
}

}  // namespace
}  // namespace turbokv::tokenizer
