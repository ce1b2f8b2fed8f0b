#include "tokenizer/pretokenize.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <string>

#include "test_files.h"
#include "util/error.h"

namespace turbokv::tokenizer {
namespace {

using testing::read_file;
using testing::test_data;

std::vector<std::string> split(PreTokenizer kind, std::string_view text) {
  std::vector<std::string> words;
  for (auto w : pre_tokenize(kind, text)) words.emplace_back(w);
  return words;
}

using Words = std::vector<std::string>;

TEST(PreTokenizeTest, Gpt2HandCases) {
  EXPECT_EQ(split(PreTokenizer::Gpt2, "Hello, y'all! 123"), (Words{"Hello", ",", " y", "'", "all", "!", " 123"}));
  EXPECT_EQ(split(PreTokenizer::Gpt2, "a   b"), (Words{"a", "  ", " b"}));
  EXPECT_EQ(split(PreTokenizer::Gpt2, "x  "), (Words{"x", "  "}));
  EXPECT_EQ(split(PreTokenizer::Gpt2, "I'M"), (Words{"I", "'", "M"}));  // contractions are case-sensitive
  EXPECT_TRUE(split(PreTokenizer::Gpt2, "").empty());
}

TEST(PreTokenizeTest, Llama3HandCases) {
  EXPECT_EQ(split(PreTokenizer::Llama3, "1234567"), (Words{"123", "456", "7"}));
  EXPECT_EQ(split(PreTokenizer::Llama3, "I'M here\n\n!x"), (Words{"I", "'M", " here", "\n\n", "!x"}));
  EXPECT_EQ(split(PreTokenizer::Llama3, "(hello"), (Words{"(hello"}));
  EXPECT_EQ(split(PreTokenizer::Qwen2, "1234"), (Words{"1", "2", "3", "4"}));
}

TEST(PreTokenizeTest, InvalidUtf8IsSplitNotDropped) {
  const std::string text = "ab\xFF\xFE cd\x80";
  for (auto kind : {PreTokenizer::Gpt2, PreTokenizer::Llama3, PreTokenizer::Qwen2}) {
    std::string joined;
    for (auto w : pre_tokenize(kind, text)) joined += w;
    EXPECT_EQ(joined, text);
  }
  EXPECT_EQ(split(PreTokenizer::Gpt2, text), (Words{"ab", "\xFF\xFE", " cd", "\x80"}));
}

TEST(PreTokenizeTest, NamesFollowLlamaCpp) {
  EXPECT_EQ(pre_tokenizer_from_name("gpt-2"), PreTokenizer::Gpt2);
  EXPECT_EQ(pre_tokenizer_from_name("llama-bpe"), PreTokenizer::Llama3);
  EXPECT_EQ(pre_tokenizer_from_name("llama3"), PreTokenizer::Llama3);
  EXPECT_EQ(pre_tokenizer_from_name("qwen2"), PreTokenizer::Qwen2);
  EXPECT_THROW(pre_tokenizer_from_name("falcon"), Error);
}

// The reference regexes (Python `regex` module, see
// gen_pretokenize_expected.py) on the llama.cpp vocab test strings and edge
// cases. This is what stands in for the llama-bpe and qwen2 vocab vectors,
// whose GGUF files are not in shared/data. The llama.cpp strings are read
// from ../shared/data at run time (they may not be committed here); for
// them the file stores only the byte length of each expected word, which
// fixes the split once the text is known.
TEST(PreTokenizeTest, MatchesReferenceRegexes) {
  const auto expected = nlohmann::json::parse(read_file(test_data("pretokenize_expected.json")));
  std::vector<std::string> inp;
  {
    const std::string raw = read_file(testing::shared_data("vocab/ggml-vocab-llama-bpe.gguf.inp"));
    const std::string sep = "\n__ggml_vocab_test__\n";
    size_t start = 0;
    for (size_t at; (at = raw.find(sep, start)) != std::string::npos; start = at + sep.size()) {
      inp.push_back(raw.substr(start, at - start));
    }
    if (start < raw.size()) inp.push_back(raw.substr(start));
  }
  ASSERT_EQ(inp.size(), 46u);
  int checked = 0;
  for (const auto& [name, cases] : expected.items()) {
    const PreTokenizer kind = pre_tokenizer_from_name(name);
    ASSERT_GT(cases.size(), 40u);
    for (const auto& c : cases) {
      if (c.contains("inp_index")) {
        const std::string& text = inp.at(c["inp_index"].get<size_t>());
        std::vector<size_t> lengths;
        for (const auto& w : split(kind, text)) lengths.push_back(w.size());
        EXPECT_EQ(lengths, c["word_bytes"].get<std::vector<size_t>>()) << name << " on '" << text << "'";
      } else {
        const std::string text = c["text"];
        EXPECT_EQ(split(kind, text), c["words"].get<Words>()) << name << " on '" << text << "'";
      }
      ++checked;
    }
  }
  EXPECT_EQ(checked, 3 * static_cast<int>(expected["gpt-2"].size()));
}

}  // namespace
}  // namespace turbokv::tokenizer
