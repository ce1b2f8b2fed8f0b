#include "tokenizer/pretokenize.h"

#include <cstdint>
#include <string>

#include "tokenizer/unicode.h"
#include "util/error.h"

namespace turbokv::tokenizer {
namespace {

// One character of the text with the classes the regexes test.
struct Char {
  uint32_t cpt;
  uint32_t offset;
  bool letter;
  bool number;
  bool space;
};

// The characters of `text`, plus helpers that read past either end as
// "no character" (llama.cpp's OUT_OF_RANGE: no class at all).
class CharStream {
 public:
  explicit CharStream(std::string_view text) : text_(text) {
    const auto decoded = decode_utf8(text);
    chars_.reserve(decoded.size());
    for (const auto& c : decoded) {
      const CharGroup g = char_group(c.cpt);
      chars_.push_back({c.cpt, c.offset, g == CharGroup::Letter, g == CharGroup::Number, is_whitespace(c.cpt)});
    }
  }
  static constexpr uint32_t kNone = 0xFFFFFFFF;
  size_t size() const { return chars_.size(); }
  bool in_range(size_t i) const { return i < chars_.size(); }
  uint32_t cpt(size_t i) const { return in_range(i) ? chars_[i].cpt : kNone; }
  bool letter(size_t i) const { return in_range(i) && chars_[i].letter; }
  bool number(size_t i) const { return in_range(i) && chars_[i].number; }
  bool space(size_t i) const { return in_range(i) && chars_[i].space; }
  // [^\s\p{L}\p{N}]: a character that is none of the three.
  bool other(size_t i) const { return in_range(i) && !chars_[i].letter && !chars_[i].number && !chars_[i].space; }
  size_t byte_offset(size_t i) const { return i < chars_.size() ? chars_[i].offset : text_.size(); }

 private:
  std::string_view text_;
  std::vector<Char> chars_;
};

// Collects words as character ranges [prev_end, end).
class WordSink {
 public:
  WordSink(const CharStream& chars, std::string_view text, std::vector<std::string_view>& words)
      : chars_(chars), text_(text), words_(words) {}
  void end_word_at(size_t end) {
    if (end > prev_end_) {
      const size_t b = chars_.byte_offset(prev_end_), e = chars_.byte_offset(end);
      words_.push_back(text_.substr(b, e - b));
    }
    prev_end_ = end;
  }

 private:
  const CharStream& chars_;
  std::string_view text_;
  std::vector<std::string_view>& words_;
  size_t prev_end_ = 0;
};

uint32_t ascii_lower(uint32_t c) { return (c >= 'A' && c <= 'Z') ? c + 32 : c; }

// Length of a contraction ('s 't 're 've 'm 'll 'd) at i, or 0.
size_t contraction_length(const CharStream& s, size_t i, bool ignore_case) {
  if (s.cpt(i) != '\'' || !s.in_range(i + 1)) return 0;
  const auto fold = [&](uint32_t c) { return ignore_case ? ascii_lower(c) : c; };
  const uint32_t c1 = fold(s.cpt(i + 1));
  if (c1 == 's' || c1 == 't' || c1 == 'm' || c1 == 'd') return 2;
  if (!s.in_range(i + 2)) return 0;
  const uint32_t c2 = fold(s.cpt(i + 2));
  if ((c1 == 'r' && c2 == 'e') || (c1 == 'v' && c2 == 'e') || (c1 == 'l' && c2 == 'l')) return 3;
  return 0;
}

// Trailing-whitespace rules shared by both families: \s+(?!\S) | \s+.
// Returns the end of the match at pos (pos itself if there is no whitespace).
size_t whitespace_run_end(const CharStream& s, size_t pos) {
  size_t n = 0;
  while (s.space(pos + n)) ++n;
  // \s+(?!\S): leave the last space to prefix the next word.
  if (n > 1 && s.in_range(pos + n)) return pos + n - 1;
  return pos + n;
}

void split_gpt2(const CharStream& s, WordSink& sink) {
  for (size_t pos = 0; pos < s.size();) {
    if (const size_t n = contraction_length(s, pos, /*ignore_case=*/false)) {
      pos += n;
      sink.end_word_at(pos);
      continue;
    }
    // ' ?' prefix: look at the character after an optional space.
    const size_t body = s.cpt(pos) == ' ' ? pos + 1 : pos;
    if (s.letter(body) || s.number(body) || s.other(body)) {
      bool (CharStream::*same)(size_t) const =
          s.letter(body) ? &CharStream::letter : s.number(body) ? &CharStream::number : &CharStream::other;
      pos = body;
      while ((s.*same)(pos)) ++pos;
      sink.end_word_at(pos);
      continue;
    }
    const size_t end = whitespace_run_end(s, pos);
    pos = end > pos ? end : pos + 1;  // no rule matches: one character alone
    sink.end_word_at(pos);
  }
}

void split_llama3(const CharStream& s, WordSink& sink, size_t max_digits) {
  const auto is_crlf = [&](size_t i) { return s.cpt(i) == '\r' || s.cpt(i) == '\n'; };
  for (size_t pos = 0; pos < s.size();) {
    if (const size_t n = contraction_length(s, pos, /*ignore_case=*/true)) {
      pos += n;
      sink.end_word_at(pos);
      continue;
    }
    // [^\r\n\p{L}\p{N}]?\p{L}+
    if (!is_crlf(pos) && !s.number(pos) && (s.letter(pos) || s.letter(pos + 1))) {
      ++pos;
      while (s.letter(pos)) ++pos;
      sink.end_word_at(pos);
      continue;
    }
    // \p{N}{1,max_digits}
    if (s.number(pos)) {
      size_t run = 0;
      while (s.number(pos) && run < max_digits) ++pos, ++run;
      sink.end_word_at(pos);
      continue;
    }
    // ' ?[^\s\p{L}\p{N}]+[\r\n]*'
    const size_t body = s.cpt(pos) == ' ' ? pos + 1 : pos;
    if (s.other(body)) {
      pos = body;
      while (s.other(pos)) ++pos;
      while (is_crlf(pos)) ++pos;
      sink.end_word_at(pos);
      continue;
    }
    // \s*[\r\n]+: whitespace up to and including the last \r or \n of the run.
    size_t n = 0, last_crlf_end = 0;
    while (s.space(pos + n)) {
      if (is_crlf(pos + n)) last_crlf_end = pos + n + 1;
      ++n;
    }
    if (last_crlf_end > 0) {
      pos = last_crlf_end;
      sink.end_word_at(pos);
      continue;
    }
    const size_t end = whitespace_run_end(s, pos);
    pos = end > pos ? end : pos + 1;
    sink.end_word_at(pos);
  }
}

}  // namespace

PreTokenizer pre_tokenizer_from_name(std::string_view name) {
  // The names llama.cpp (llama-vocab.cpp) maps to each of these splitters.
  for (std::string_view n : {"gpt-2", "phi-2", "roberta-bpe"})
    if (name == n) return PreTokenizer::Gpt2;
  for (std::string_view n : {"llama3", "llama-v3", "llama-bpe", "falcon3"})
    if (name == n) return PreTokenizer::Llama3;
  for (std::string_view n : {"qwen2", "deepseek-r1-qwen"})
    if (name == n) return PreTokenizer::Qwen2;
  throw Error("tokenizer.ggml.pre: unsupported pre-tokenizer '" + std::string(name) +
              "' (expected gpt-2, llama-bpe/llama3 or qwen2)");
}

const char* pre_tokenizer_name(PreTokenizer kind) {
  switch (kind) {
    case PreTokenizer::Gpt2: return "gpt-2";
    case PreTokenizer::Llama3: return "llama-bpe";
    case PreTokenizer::Qwen2: return "qwen2";
  }
  return "?";
}

std::vector<std::string_view> pre_tokenize(PreTokenizer kind, std::string_view text) {
  std::vector<std::string_view> words;
  const CharStream chars(text);
  WordSink sink(chars, text, words);
  switch (kind) {
    case PreTokenizer::Gpt2: split_gpt2(chars, sink); break;
    case PreTokenizer::Llama3: split_llama3(chars, sink, 3); break;
    case PreTokenizer::Qwen2: split_llama3(chars, sink, 1); break;
  }
  return words;
}

}  // namespace turbokv::tokenizer
