// End-to-end goldens: llama.cpp's token ids for the shared models and its
// tokenizer test vectors, plus round trips on real vocabularies.
#include <gtest/gtest.h>

#include <chrono>
#include <functional>
#include <cstdio>
#include <map>
#include <nlohmann/json.hpp>
#include <queue>
#include <random>
#include <sstream>
#include <unordered_map>

#include "io/gguf.h"
#include "test_files.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/unicode.h"

namespace turbokv::tokenizer {
namespace {

using testing::read_file;
using testing::shared_data;
using Ids = std::vector<int32_t>;

std::unique_ptr<Tokenizer> open_tokenizer(const std::string& relative) {
  const auto gguf = io::GgufFile::open(shared_data(relative));
  return load_tokenizer(*gguf);
}

TEST(GgufVocabTest, LoadsStories260K) {
  const auto gguf = io::GgufFile::open(shared_data("models/stories260K.gguf"));
  const Vocab v = load_vocab(*gguf);
  EXPECT_EQ(v.model, "llama");
  EXPECT_EQ(v.n_tokens(), 512);
  EXPECT_EQ(v.scores.size(), 512u);
  EXPECT_EQ(v.bos_id, 1);
  EXPECT_EQ(v.eos_id, 2);
  EXPECT_EQ(v.unk_id, 0);
  EXPECT_TRUE(v.add_bos);
  EXPECT_FALSE(v.add_eos);
  EXPECT_TRUE(v.add_space_prefix);
  int n_byte = 0;
  for (auto t : v.token_types) n_byte += t == TokenType::Byte;
  EXPECT_EQ(n_byte, 256);
}

TEST(GgufVocabTest, LoadsGpt2) {
  const auto gguf = io::GgufFile::open(shared_data("vocab/ggml-vocab-gpt-2.gguf"));
  const Vocab v = load_vocab(*gguf);
  EXPECT_EQ(v.model, "gpt2");
  EXPECT_EQ(v.pre, "gpt-2");
  EXPECT_EQ(v.n_tokens(), 50257);
  EXPECT_EQ(v.merges.size(), 50000u);
  EXPECT_EQ(v.bos_id, 50256);
  EXPECT_EQ(v.eos_id, 50256);
  EXPECT_FALSE(v.add_space_prefix);
}

// golden/tokenize.json: llama-tokenize --ids (BOS added) for ten strings per model.
TEST(GoldenTokenizeTest, MatchesLlamaCpp) {
  const auto golden = nlohmann::json::parse(read_file(shared_data("golden/tokenize.json")));
  int checked = 0;
  for (const char* model : {"tq-tiny-hd128.gguf", "stories260K.gguf"}) {
    const auto tok = open_tokenizer(std::string("models/") + model);
    const auto& cases = golden.at("cases").at(model);
    ASSERT_EQ(cases.size(), 10u) << model;
    for (const auto& c : cases) {
      const std::string text = c.at("text");
      EXPECT_EQ(tok->encode(text, /*add_special=*/true, /*parse_special=*/true), c.at("ids").get<Ids>())
          << model << " on '" << text << "'";
      EXPECT_EQ(tok->decode(c.at("ids").get<Ids>()), text) << model;
      ++checked;
    }
  }
  EXPECT_EQ(checked, 20);
}

// golden/greedy.json prints BOS as "<s>" and then the prompt pieces as
// llama-simple streams them; the prompt part must come out of token_to_piece.
TEST(GoldenTokenizeTest, PiecesReproduceLlamaSimplePrompt) {
  const auto golden = nlohmann::json::parse(read_file(shared_data("golden/greedy.json")));
  int checked = 0;
  for (const auto& [model, cases] : golden.at("cases").items()) {
    const auto tok = open_tokenizer("models/" + model);
    for (const auto& c : cases) {
      const std::string prompt = c.at("prompt");
      std::string printed;
      for (int32_t id : tok->encode(prompt)) printed += tok->token_to_piece(id, /*render_special=*/true);
      EXPECT_EQ(printed, "<s> " + prompt);
      const std::string output = c.at("output");
      EXPECT_EQ(output.substr(0, printed.size()), printed) << model;
      // The whole printed output re-tokenizes and detokenizes to itself.
      EXPECT_EQ(tok->decode(tok->encode(output.substr(4), false)), output.substr(4));
      ++checked;
    }
  }
  EXPECT_EQ(checked, 6);
}

struct VocabCase {
  std::string text;
  Ids ids;
};

// Reads <name>.inp / <name>.out as llama.cpp's tests/test-tokenizer-0.cpp
// does: inputs separated by "\n__ggml_vocab_test__\n", one line of
// space-separated ids per input.
std::vector<VocabCase> read_vocab_cases(const std::string& name) {
  const std::string inp = read_file(shared_data("vocab/" + name + ".inp"));
  const std::string out = read_file(shared_data("vocab/" + name + ".out"));
  const std::string sep = "\n__ggml_vocab_test__\n";
  std::vector<std::string> texts;
  for (size_t pos = 0; pos < inp.size();) {
    const size_t next = inp.find(sep, pos);
    if (next == std::string::npos) {
      texts.push_back(inp.substr(pos));
      break;
    }
    texts.push_back(inp.substr(pos, next - pos));
    pos = next + sep.size();
  }
  std::vector<VocabCase> cases;
  std::istringstream lines(out);
  std::string line;
  for (size_t i = 0; std::getline(lines, line); ++i) {
    if (i >= texts.size()) throw std::runtime_error(name + ".out has more lines than .inp has inputs");
    VocabCase c{texts[i], {}};
    std::istringstream ids(line);
    for (int32_t id; ids >> id;) c.ids.push_back(id);
    cases.push_back(std::move(c));
  }
  if (cases.size() != texts.size()) throw std::runtime_error(name + ": .inp and .out disagree on the case count");
  return cases;
}

class VocabVectorTest : public ::testing::TestWithParam<const char*> {};

TEST_P(VocabVectorTest, MatchesLlamaCppTestTokenizer0) {
  const std::string name = GetParam();
  const auto tok = open_tokenizer("vocab/" + name);
  const auto cases = read_vocab_cases(name);
  ASSERT_EQ(cases.size(), 46u);
  int passed = 0;
  for (const auto& c : cases) {
    // test-tokenizer-0: add_special = false, parse_special = false.
    const Ids ids = tok->encode(c.text, false, false);
    EXPECT_EQ(ids, c.ids) << name << " on '" << c.text << "'";
    passed += ids == c.ids;
    EXPECT_EQ(tok->decode(ids), c.text) << name;
  }
  std::printf("[ vectors  ] %s: %d/%zu match llama.cpp\n", name.c_str(), passed, cases.size());
}

INSTANTIATE_TEST_SUITE_P(SharedVocabs, VocabVectorTest,
                         ::testing::Values("ggml-vocab-llama-spm.gguf", "ggml-vocab-gpt-2.gguf"));

// The llama-bpe and qwen2 vocabularies are not in shared/data; their
// vectors are still read so a vocabulary that shows up gets tested, and so
// a truncated vector file fails.
TEST(VocabVectorTest, VectorsWithoutVocabularyAreReadable) {
  for (const char* name : {"ggml-vocab-llama-bpe.gguf", "ggml-vocab-qwen2.gguf"}) {
    const auto cases = read_vocab_cases(name);
    EXPECT_EQ(cases.size(), 46u);
  }
}

// Random strings over scripts that stress byte fallback and merging.
std::string random_text(std::mt19937& rng, size_t n_chars) {
  static constexpr std::pair<uint32_t, uint32_t> kRanges[] = {
      {0x20, 0x7E},       {0x20, 0x20},       {0x0A, 0x0A},       {0xA0, 0x24F},     {0x300, 0x36F},
      {0x370, 0x52F},     {0x600, 0x6FF},     {0x900, 0x97F},     {0x1780, 0x17FF},  {0x3040, 0x30FF},
      {0x4E00, 0x9FFF},   {0xAC00, 0xD7A3},   {0x1F300, 0x1FAFF}, {0x200D, 0x200D},  {0xFE0F, 0xFE0F},
      {0x10000, 0x10FFFF}};
  std::uniform_int_distribution<size_t> pick_range(0, std::size(kRanges) - 1);
  std::string text;
  while (n_chars-- > 0) {
    const auto [lo, hi] = kRanges[pick_range(rng)];
    uint32_t cpt = std::uniform_int_distribution<uint32_t>(lo, hi)(rng);
    if (cpt >= 0xD800 && cpt < 0xE000) cpt = 'x';
    append_utf8(cpt, text);
  }
  return text;
}

std::string random_bytes(std::mt19937& rng, size_t n) {
  std::uniform_int_distribution<int> byte(0, 255);
  std::string s;
  for (size_t i = 0; i < n; ++i) s.push_back(static_cast<char>(byte(rng)));
  return s;
}

// A plain port of llama.cpp's llm_tokenizer_spm_session (one queue over the
// whole text, rev_merge resegmentation, std containers), without
// turbokv's segmentation and hash index: the oracle for the fast path.
// Valid UTF-8 only (llama.cpp splits characters by their lead byte).
Ids reference_spm_encode(const Vocab& vocab, std::string_view raw) {
  std::unordered_map<std::string, int32_t> token_to_id;
  for (size_t i = 0; i < vocab.tokens.size(); ++i) token_to_id[vocab.tokens[i]] = static_cast<int32_t>(i);
  std::string escaped = "\xE2\x96\x81";  // the dummy prefix
  for (char c : raw) {
    if (c == ' ') {
      escaped += "\xE2\x96\x81";
    } else {
      escaped += c;
    }
  }

  struct Sym { int prev, next; size_t offset, n; };
  struct Bigram { int left, right; float score; size_t size; };
  struct Cmp {
    bool operator()(const Bigram& l, const Bigram& r) const {
      return l.score < r.score || (l.score == r.score && l.left > r.left);
    }
  };
  std::vector<Sym> syms;
  for (size_t offs = 0; offs < escaped.size();) {
    static constexpr size_t kLen[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4};
    const size_t len = std::min(kLen[static_cast<uint8_t>(escaped[offs]) >> 4], escaped.size() - offs);
    const int index = static_cast<int>(syms.size());
    syms.push_back({index - 1, offs + len == escaped.size() ? -1 : index + 1, offs, len});
    offs += len;
  }
  std::priority_queue<Bigram, std::vector<Bigram>, Cmp> queue;
  std::map<std::string, std::pair<int, int>> rev_merge;
  const auto try_add = [&](int left, int right) {
    if (left == -1 || right == -1) return;
    const std::string piece = escaped.substr(syms[left].offset, syms[left].n + syms[right].n);
    const auto it = token_to_id.find(piece);
    if (it == token_to_id.end()) return;
    queue.push({left, right, vocab.scores[static_cast<size_t>(it->second)], piece.size()});
    rev_merge[piece] = {left, right};
  };
  for (int i = 1; i < static_cast<int>(syms.size()); ++i) try_add(i - 1, i);
  while (!queue.empty()) {
    const Bigram b = queue.top();
    queue.pop();
    Sym& l = syms[b.left];
    Sym& r = syms[b.right];
    if (l.n == 0 || r.n == 0 || l.n + r.n != b.size) continue;
    l.n += r.n;
    r.n = 0;
    l.next = r.next;
    if (r.next >= 0) syms[r.next].prev = b.left;
    try_add(l.prev, b.left);
    try_add(b.left, l.next);
  }
  Ids out{vocab.bos_id};
  std::function<void(const Sym&)> resegment = [&](const Sym& s) {
    const std::string piece = escaped.substr(s.offset, s.n);
    if (const auto it = token_to_id.find(piece); it != token_to_id.end()) {
      out.push_back(it->second);
      return;
    }
    const auto p = rev_merge.find(piece);
    if (p == rev_merge.end()) {
      static constexpr char kHex[] = "0123456789ABCDEF";
      for (const char c : piece) {
        const auto b = static_cast<uint8_t>(c);
        const char name[7] = {'<', '0', 'x', kHex[b >> 4], kHex[b & 15], '>', 0};
        out.push_back(token_to_id.at(name));
      }
      return;
    }
    resegment(syms[p->second.first]);
    resegment(syms[p->second.second]);
  };
  for (int i = 0; i != -1; i = syms[i].next) resegment(syms[i]);
  return out;
}

TEST(SpmReferenceTest, SegmentedEncodeMatchesOneQueueOverTheText) {
  const std::string holdout = read_file(shared_data("text/gutenberg_holdout.txt"));
  for (const char* model : {"models/tq-tiny-hd128.gguf", "models/stories260K.gguf", "vocab/ggml-vocab-llama-spm.gguf"}) {
    const auto tok = open_tokenizer(model);
    // A long stretch of real text, its whitespace runs and odd characters included.
    const std::string text = holdout.substr(100000, 30000);
    EXPECT_EQ(tok->encode(text), reference_spm_encode(tok->vocab(), text)) << model;
    std::mt19937 rng(7);
    for (int i = 0; i < 100; ++i) {
      const std::string random = random_text(rng, 1 + i % 80);
      ASSERT_EQ(tok->encode(random), reference_spm_encode(tok->vocab(), random)) << model << " case " << i;
    }
  }
}

class RoundTripTest : public ::testing::TestWithParam<const char*> {};

TEST_P(RoundTripTest, DecodeInvertsEncode) {
  const auto tok = open_tokenizer(GetParam());
  std::mt19937 rng(1234);
  for (int i = 0; i < 200; ++i) {
    const std::string text = random_text(rng, 1 + i % 60);
    ASSERT_EQ(tok->decode(tok->encode(text)), text) << "case " << i;
    ASSERT_EQ(tok->decode(tok->encode(text, false)), text) << "case " << i;
    // Streaming: the pieces concatenate to the same bytes (bar the dummy prefix).
    std::string streamed;
    for (int32_t id : tok->encode(text, false)) streamed += tok->token_to_piece(id);
    const std::string expected = (tok->vocab().add_space_prefix ? " " : "") + text;
    ASSERT_EQ(streamed, expected) << "case " << i;
  }
}

TEST_P(RoundTripTest, InvalidUtf8RoundTripsBytes) {
  const auto tok = open_tokenizer(GetParam());
  std::mt19937 rng(99);
  for (int i = 0; i < 200; ++i) {
    const std::string bytes = random_bytes(rng, 1 + i % 40);
    const Ids ids = tok->encode(bytes, true, i % 2 == 0);
    ASSERT_EQ(tok->decode(ids), bytes) << "case " << i;
    for (int32_t id : ids) ASSERT_TRUE(id >= 0 && id < tok->n_vocab());
  }
}

INSTANTIATE_TEST_SUITE_P(SharedVocabs, RoundTripTest,
                         ::testing::Values("models/tq-tiny-hd128.gguf", "models/stories260K.gguf",
                                           "vocab/ggml-vocab-llama-spm.gguf", "vocab/ggml-vocab-gpt-2.gguf"));

TEST(SpecialTokenTest, ParseSpecialOnRealVocabs) {
  const auto spm = open_tokenizer("vocab/ggml-vocab-llama-spm.gguf");
  EXPECT_EQ(spm->encode("<s>Hello</s>", false, true).front(), 1);
  EXPECT_EQ(spm->encode("<s>Hello</s>", false, true).back(), 2);
  EXPECT_NE(spm->encode("<s>Hello", false, false).front(), 1);
  EXPECT_EQ(spm->token_to_piece(spm->bos(), true), "<s>");
  EXPECT_TRUE(spm->is_eog(2));

  const auto gpt2 = open_tokenizer("vocab/ggml-vocab-gpt-2.gguf");
  EXPECT_EQ(gpt2->encode("Hello<|endoftext|>", false, true).back(), 50256);
  EXPECT_NE(gpt2->encode("Hello<|endoftext|>", false, false).back(), 50256);
  EXPECT_TRUE(gpt2->is_eog(50256));
}

// Not a speed assertion (tests never assert on time): it checks the whole
// held-out text round-trips and prints how long encoding took (best of 3,
// as the machine may be busy).
TEST(LongTextTest, HoldoutRoundTripsAndReportsSpeed) {
  const std::string text = read_file(shared_data("text/gutenberg_holdout.txt"));
  ASSERT_GT(text.size(), 400000u);
  using Clock = std::chrono::steady_clock;
  const auto ms = [](Clock::duration d) { return std::chrono::duration<double, std::milli>(d).count(); };
  for (const char* model : {"models/tq-tiny-hd128.gguf", "vocab/ggml-vocab-gpt-2.gguf"}) {
    const auto tok = open_tokenizer(model);
    Ids ids;
    double encode_ms = 1e30, decode_ms = 1e30;
    for (int rep = 0; rep < 3; ++rep) {
      const auto t0 = Clock::now();
      ids = tok->encode(text);
      const auto t1 = Clock::now();
      const std::string back = tok->decode(ids);
      const auto t2 = Clock::now();
      ASSERT_EQ(back, text);
      encode_ms = std::min(encode_ms, ms(t1 - t0));
      decode_ms = std::min(decode_ms, ms(t2 - t1));
    }
    std::printf("[ speed    ] %s: %zu bytes -> %zu tokens: encode %.1f ms (%.1f MB/s), decode %.1f ms\n", model,
                text.size(), ids.size(), encode_ms, text.size() / 1e3 / encode_ms, decode_ms);
  }
}

}  // namespace
}  // namespace turbokv::tokenizer
