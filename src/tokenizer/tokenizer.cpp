#include "tokenizer/tokenizer.h"

#include <algorithm>

#include "io/gguf.h"
#include "tokenizer/unicode.h"
#include "util/error.h"

namespace turbokv::tokenizer {
namespace {

// SentencePiece's whitespace marker U+2581 "▁".
constexpr std::string_view kSpmSpace = "\xE2\x96\x81";

// Texts llama.cpp treats as end-of-turn tokens whatever their type
// (llama-vocab.cpp, "auto-detect special tokens by text").
constexpr std::string_view kEogTexts[] = {
    "<|eot_id|>", "<|im_end|>",    "<|end|>",          "<|return|>",          "<|call|>",
    "<end_of_turn>", "<|endoftext|>", "<|eom_id|>", "<EOT>", "_<EOT>", "<|end_of_text|>",
    "<end_of_utterance>",
};

int hex_digit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;
}

// The byte of a "<0xNN>" token text, or -1.
int parse_byte_token(std::string_view text) {
  if (text.size() != 6 || text.substr(0, 3) != "<0x" || text[5] != '>') return -1;
  const int hi = hex_digit(text[3]), lo = hex_digit(text[4]);
  return hi < 0 || lo < 0 ? -1 : hi * 16 + lo;
}

// A linked list of symbols over one string, merged pairwise (both BPE
// variants): a symbol is the byte range [offset, offset + n); n == 0 once it
// has been merged into its left neighbour.
struct Symbol {
  int32_t prev;
  int32_t next;
  uint32_t offset;
  uint32_t n;
};

// A candidate merge of two adjacent symbols. Symbols only grow and a
// symbol's start never moves, so a queued pair is still current exactly when
// the two symbols' sizes still add up to `size`.
struct SpmBigram {
  int32_t left;
  int32_t right;
  float score;
  uint32_t size;  // bytes
};
struct BpeBigram {
  int32_t left;
  int32_t right;
  int32_t rank;
  uint32_t size;  // bytes
};

// Splits `text` into characters (invalid UTF-8 bytes alone).
void char_symbols(std::string_view text, std::vector<Symbol>& symbols) {
  symbols.clear();
  for (size_t pos = 0; pos < text.size();) {
    const size_t len = std::max<size_t>(1, utf8_sequence_length(text, pos));
    const auto index = static_cast<int32_t>(symbols.size());
    symbols.push_back({index - 1, pos + len == text.size() ? -1 : index + 1, static_cast<uint32_t>(pos),
                       static_cast<uint32_t>(len)});
    pos += len;
  }
}

// Identifies the character at text[pos] of `len` bytes: its bytes and length.
uint64_t char_key(std::string_view text, size_t pos, size_t len) {
  uint64_t key = len;
  for (size_t i = 0; i < len; ++i) key |= uint64_t{static_cast<uint8_t>(text[pos + i])} << (8 * i + 8);
  return key;
}

// Merges symbols[right] into symbols[left] and unlinks it.
void merge_symbols(std::vector<Symbol>& symbols, int32_t left, int32_t right) {
  Symbol& l = symbols[static_cast<size_t>(left)];
  Symbol& r = symbols[static_cast<size_t>(right)];
  l.n += r.n;
  r.n = 0;
  l.next = r.next;
  if (r.next >= 0) symbols[static_cast<size_t>(r.next)].prev = left;
}

// The merge loop shared by SentencePiece (highest score first) and BPE
// (lowest rank first), as llama.cpp runs both: queue every adjacent pair,
// then repeatedly merge the best one, skip entries made stale by earlier
// merges, and queue the merged symbol's new neighbours.
template <typename Bigram, typename Less, typename TryAdd>
void merge_best_bigrams(std::vector<Symbol>& symbols, std::vector<Bigram>& heap, Less lower_priority,
                        TryAdd&& try_add_bigram) {
  for (size_t i = 1; i < symbols.size(); ++i) try_add_bigram(static_cast<int32_t>(i - 1), static_cast<int32_t>(i));
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), lower_priority);
    const Bigram b = heap.back();
    heap.pop_back();
    const Symbol& l = symbols[static_cast<size_t>(b.left)];
    const Symbol& r = symbols[static_cast<size_t>(b.right)];
    if (l.n == 0 || r.n == 0 || l.n + r.n != b.size) continue;
    merge_symbols(symbols, b.left, b.right);
    try_add_bigram(symbols[static_cast<size_t>(b.left)].prev, b.left);
    try_add_bigram(b.left, symbols[static_cast<size_t>(b.left)].next);
  }
}

}  // namespace

struct Tokenizer::SpmScratch {
  std::vector<Symbol> symbols;
  std::vector<SpmBigram> heap;
};

struct Tokenizer::BpeScratch {
  std::string text;  // the word in GPT-2's byte alphabet
  std::string key;   // the "left right" merge being looked up
  std::vector<Symbol> symbols;
  std::vector<BpeBigram> heap;
};

Tokenizer::Tokenizer(Vocab vocab) : vocab_(std::move(vocab)) {
  const size_t n = vocab_.tokens.size();
  if (n == 0) throw Error("tokenizer: the vocabulary has no tokens");
  if (n > static_cast<size_t>(INT32_MAX)) throw Error("tokenizer: the vocabulary has too many tokens");
  if (!vocab_.scores.empty() && vocab_.scores.size() != n) {
    throw Error("tokenizer: " + std::to_string(vocab_.scores.size()) + " scores for " + std::to_string(n) +
                " tokens, expected one per token");
  }
  if (!vocab_.token_types.empty() && vocab_.token_types.size() != n) {
    throw Error("tokenizer: " + std::to_string(vocab_.token_types.size()) + " token types for " +
                std::to_string(n) + " tokens, expected one per token");
  }
  if (vocab_.model == "llama") {
    is_spm_ = true;
  } else if (vocab_.model == "gpt2") {
    is_spm_ = false;
    pre_ = pre_tokenizer_from_name(vocab_.pre);
  } else {
    throw Error("tokenizer: unsupported tokenizer model '" + vocab_.model + "' (expected 'llama' or 'gpt2')");
  }
  const auto check_id = [&](int32_t id, const char* what) {
    if (id != kNoToken && (id < 0 || static_cast<size_t>(id) >= n)) {
      throw Error(std::string("tokenizer: ") + what + " id " + std::to_string(id) + " is outside the vocabulary (" +
                  std::to_string(n) + " tokens)");
    }
  };
  check_id(vocab_.bos_id, "BOS");
  check_id(vocab_.eos_id, "EOS");
  check_id(vocab_.unk_id, "unknown-token");
  check_id(vocab_.pad_id, "padding");
  check_id(vocab_.eot_id, "end-of-turn");
  check_id(vocab_.eom_id, "end-of-message");
  if (vocab_.add_bos && vocab_.bos_id == kNoToken) throw Error("tokenizer: add_bos is set but there is no BOS token");
  if (vocab_.add_eos && vocab_.eos_id == kNoToken) throw Error("tokenizer: add_eos is set but there is no EOS token");

  // Text -> id; on duplicate texts the last id wins, as in llama.cpp.
  token_to_id_ = StringIndex(vocab_.tokens, StringIndex::Duplicates::KeepLast);

  // End of generation; tokens found by text become Control (llama.cpp).
  eog_.assign(n, 0);
  for (std::string_view text : kEogTexts) {
    const int32_t id = find_token(text);
    if (id == kNoToken) continue;
    eog_[static_cast<size_t>(id)] = 1;
    if (vocab_.type_of(id) != TokenType::Control) {
      if (vocab_.token_types.empty()) vocab_.token_types.assign(n, TokenType::Normal);
      vocab_.token_types[static_cast<size_t>(id)] = TokenType::Control;
    }
  }
  for (int32_t id : {vocab_.eos_id, vocab_.eot_id, vocab_.eom_id})
    if (id != kNoToken) eog_[static_cast<size_t>(id)] = 1;

  // Tokens matched in the text before BPE, longest first.
  for (size_t id = 0; id < n; ++id) {
    const TokenType t = vocab_.type_of(static_cast<int32_t>(id));
    if (t == TokenType::Control || t == TokenType::UserDefined || t == TokenType::Unknown)
      special_tokens_.push_back(static_cast<int32_t>(id));
  }
  std::stable_sort(special_tokens_.begin(), special_tokens_.end(), [&](int32_t a, int32_t b) {
    return vocab_.tokens[static_cast<size_t>(a)].size() > vocab_.tokens[static_cast<size_t>(b)].size();
  });

  if (is_spm_) {
    // Characters that some token has right before a "▁" (see encode_spm).
    for (const std::string& text : vocab_.tokens) {
      for (size_t pos = 0, prev = 0, prev_len = 0; pos < text.size();) {
        const size_t len = std::max<size_t>(1, utf8_sequence_length(text, pos));
        if (pos > 0 && text.compare(pos, kSpmSpace.size(), kSpmSpace) == 0)
          chars_before_space_.insert(char_key(text, prev, prev_len));
        prev = pos;
        prev_len = len;
        pos += len;
      }
    }
    // Byte fallback: <0xNN>, else the one-byte token, else <unk>.
    byte_tokens_.assign(256, kNoToken);
    static constexpr char kHex[] = "0123456789ABCDEF";
    for (int b = 0; b < 256; ++b) {
      const char name[7] = {'<', '0', 'x', kHex[b >> 4], kHex[b & 15], '>', 0};
      int32_t id = find_token(name);
      if (id == kNoToken) id = find_token(std::string(1, static_cast<char>(b)));
      if (id == kNoToken) id = vocab_.unk_id;
      byte_tokens_[static_cast<size_t>(b)] = id;
    }
  } else {
    for (size_t rank = 0; rank < vocab_.merges.size(); ++rank) {
      const std::string& m = vocab_.merges[rank];
      // llama.cpp splits at the first space after the first character.
      if (m.size() < 3 || m.find(' ', 1) == std::string::npos || m.find(' ', 1) + 1 == m.size()) {
        throw Error("tokenizer: merge " + std::to_string(rank) + " '" + m + "' is not 'left right'");
      }
    }
    merge_ranks_ = StringIndex(vocab_.merges, StringIndex::Duplicates::KeepFirst);
  }

  // Pieces as printed with render_special.
  pieces_.resize(n);
  for (size_t i = 0; i < n; ++i) {
    const std::string& text = vocab_.tokens[i];
    std::string& piece = pieces_[i];
    switch (vocab_.type_of(static_cast<int32_t>(i))) {
      case TokenType::Control:
      case TokenType::Unknown:
      case TokenType::UserDefined:
        piece = text;
        break;
      case TokenType::Undefined:
      case TokenType::Unused:
        break;  // llama.cpp prints nothing for these
      case TokenType::Byte:
        if (const int b = parse_byte_token(text); b >= 0) {
          piece = std::string(1, static_cast<char>(b));
          break;
        }
        [[fallthrough]];
      case TokenType::Normal:
        if (is_spm_) {
          for (size_t pos = 0; pos < text.size();) {
            if (std::string_view(text).substr(pos, kSpmSpace.size()) == kSpmSpace) {
              piece += ' ';
              pos += kSpmSpace.size();
            } else {
              piece += text[pos++];
            }
          }
        } else {
          for (const DecodedChar& c : decode_utf8(text)) {
            const int b = gpt2_cpt_to_byte(c.cpt);
            if (b >= 0) {
              piece += static_cast<char>(b);
            } else {
              append_utf8(c.cpt, piece);  // not byte-level: keep the character
            }
          }
        }
        break;
    }
  }
}

int32_t Tokenizer::find_token(std::string_view text) const {
  return token_to_id_.find(text);
}

bool Tokenizer::is_eog(int32_t id) const {
  return id >= 0 && id < n_vocab() && eog_[static_cast<size_t>(id)] != 0;
}

bool Tokenizer::is_special(int32_t id) const {
  if (id < 0 || id >= n_vocab()) return false;
  const TokenType t = vocab_.type_of(id);
  return t == TokenType::Control || t == TokenType::Unknown;
}

std::vector<Tokenizer::Fragment> Tokenizer::split_special(std::string_view text, bool parse_special) const {
  std::vector<Fragment> fragments;
  if (text.empty()) return fragments;
  fragments.push_back({kNoToken, 0, text.size()});
  std::vector<Fragment> next;
  // As llama.cpp's tokenizer_st_partition: each special token in turn,
  // longest first, splits every raw-text fragment at its occurrences.
  for (const int32_t id : special_tokens_) {
    const TokenType type = vocab_.type_of(id);
    if (!parse_special && (type == TokenType::Control || type == TokenType::Unknown)) continue;
    const std::string_view special = vocab_.tokens[static_cast<size_t>(id)];
    bool matched = false;
    next.clear();
    for (const Fragment& f : fragments) {
      if (f.token != kNoToken) {
        next.push_back(f);
        continue;
      }
      const std::string_view raw = text.substr(0, f.end);
      size_t begin = f.begin;
      for (size_t m; (m = raw.find(special, begin)) != std::string_view::npos;) {
        matched = true;
        if (m > begin) next.push_back({kNoToken, begin, m});
        next.push_back({id, m, m + special.size()});
        begin = m + special.size();
      }
      if (begin < f.end) next.push_back({kNoToken, begin, f.end});
    }
    if (matched) fragments.swap(next);
  }
  return fragments;
}

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool add_special, bool parse_special) const {
  std::vector<int32_t> out;
  out.reserve(text.size() / 3 + 2);
  if (add_special && vocab_.add_bos) out.push_back(vocab_.bos_id);

  const std::vector<Fragment> fragments = split_special(text, parse_special);
  if (is_spm_) {
    // The dummy prefix goes before the text and after every special token.
    bool after_special = true;
    std::string escaped;
    for (const Fragment& f : fragments) {
      if (f.token != kNoToken) {
        out.push_back(f.token);
        after_special = true;
        continue;
      }
      escaped.clear();
      if (vocab_.add_space_prefix && after_special) escaped += kSpmSpace;
      for (const char c : text.substr(f.begin, f.end - f.begin)) {
        if (c == ' ') {
          escaped += kSpmSpace;
        } else {
          escaped += c;
        }
      }
      encode_spm(escaped, out);
      after_special = false;
    }
  } else {
    BpeScratch scratch;
    for (const Fragment& f : fragments) {
      if (f.token != kNoToken) {
        out.push_back(f.token);
        continue;
      }
      for (const std::string_view word : pre_tokenize(pre_, text.substr(f.begin, f.end - f.begin)))
        encode_bpe_word(word, out, scratch);
    }
  }

  if (add_special && vocab_.add_eos) out.push_back(vocab_.eos_id);
  return out;
}

// llama.cpp's llm_tokenizer_spm_session over one fragment.
//
// The merges never cross a "▁" whose left neighbour c is a character that
// no token has right before a "▁" (every merged symbol is a token, so a
// symbol spanning the two would be a token containing "c▁"). The text is
// cut there into independent segments, usually words, which gives the same
// ids as one queue over the whole text but keeps the queue small.
void Tokenizer::encode_spm(std::string_view text, std::vector<int32_t>& out) const {
  SpmScratch scratch;
  size_t segment_begin = 0;
  uint64_t prev_key = 0;
  for (size_t pos = 0; pos < text.size();) {
    const size_t len = std::max<size_t>(1, utf8_sequence_length(text, pos));
    if (pos > segment_begin && text.compare(pos, kSpmSpace.size(), kSpmSpace) == 0 &&
        !chars_before_space_.contains(prev_key)) {
      encode_spm_segment(text.substr(segment_begin, pos - segment_begin), out, scratch);
      segment_begin = pos;
    }
    prev_key = char_key(text, pos, len);
    pos += len;
  }
  encode_spm_segment(text.substr(segment_begin), out, scratch);
}

// Start from characters, repeatedly merge the adjacent pair whose
// concatenation is the highest-scoring token (ties: leftmost), then emit each
// symbol as its token or as byte tokens. O(n log n) with a heap of candidate
// pairs; pairs made stale by an earlier merge are skipped when popped.
void Tokenizer::encode_spm_segment(std::string_view text, std::vector<int32_t>& out, SpmScratch& scratch) const {
  std::vector<Symbol>& symbols = scratch.symbols;
  char_symbols(text, symbols);
  if (symbols.empty()) return;

  std::vector<SpmBigram>& heap = scratch.heap;
  heap.clear();
  const auto lower_priority = [](const SpmBigram& a, const SpmBigram& b) {
    return a.score < b.score || (a.score == b.score && a.left > b.left);
  };
  const auto try_add_bigram = [&](int32_t left, int32_t right) {
    if (left < 0 || right < 0) return;
    const Symbol& l = symbols[static_cast<size_t>(left)];
    const Symbol& r = symbols[static_cast<size_t>(right)];
    const int32_t id = find_token(text.substr(l.offset, l.n + r.n));
    if (id == kNoToken) return;
    const float score = vocab_.scores.empty() ? 0.0f : vocab_.scores[static_cast<size_t>(id)];
    heap.push_back({left, right, score, l.n + r.n});
    std::push_heap(heap.begin(), heap.end(), lower_priority);
  };

  merge_best_bigrams(symbols, heap, lower_priority, try_add_bigram);

  // Every merged symbol is a token (pairs are only queued if they are), so
  // llama.cpp's resegment() reduces to: the token, else byte fallback.
  for (int32_t i = 0; i != -1; i = symbols[static_cast<size_t>(i)].next) {
    const Symbol& s = symbols[static_cast<size_t>(i)];
    const std::string_view piece = text.substr(s.offset, s.n);
    if (const int32_t id = find_token(piece); id != kNoToken) {
      out.push_back(id);
      continue;
    }
    for (const char c : piece) {
      const int32_t id = byte_tokens_[static_cast<uint8_t>(c)];
      if (id == kNoToken) {
        throw Error("tokenizer: the vocabulary has no token for byte 0x" +
                    std::string(1, "0123456789ABCDEF"[static_cast<uint8_t>(c) >> 4]) +
                    std::string(1, "0123456789ABCDEF"[static_cast<uint8_t>(c) & 15]) +
                    " (no <0xNN> byte token and no unknown token)");
      }
      out.push_back(id);
    }
  }
}

int32_t Tokenizer::merge_rank(std::string_view left, std::string_view right, std::string& scratch) const {
  scratch.assign(left);
  scratch += ' ';
  scratch += right;
  return merge_ranks_.find(scratch);
}

// llama.cpp's llm_tokenizer_bpe_session for one pre-tokenized word: map
// bytes to GPT-2's printable alphabet, then repeatedly apply the best-ranked
// merge among adjacent pairs (ties: leftmost). O(n log n) in the word length.
void Tokenizer::encode_bpe_word(std::string_view word, std::vector<int32_t>& out, BpeScratch& scratch) const {
  std::string& text = scratch.text;
  text.clear();
  for (const char c : word) append_utf8(byte_to_gpt2_cpt(static_cast<uint8_t>(c)), text);

  if (vocab_.ignore_merges) {
    if (const int32_t id = find_token(text); id != kNoToken) {
      out.push_back(id);
      return;
    }
  }
  std::vector<Symbol>& symbols = scratch.symbols;
  char_symbols(text, symbols);

  std::vector<BpeBigram>& heap = scratch.heap;
  heap.clear();
  const auto lower_priority = [](const BpeBigram& a, const BpeBigram& b) {
    return a.rank > b.rank || (a.rank == b.rank && a.left > b.left);
  };
  const auto try_add_bigram = [&](int32_t left, int32_t right) {
    if (left < 0 || right < 0) return;
    const Symbol& l = symbols[static_cast<size_t>(left)];
    const Symbol& r = symbols[static_cast<size_t>(right)];
    const int32_t rank = merge_rank(std::string_view(text).substr(l.offset, l.n),
                                    std::string_view(text).substr(r.offset, r.n), scratch.key);
    if (rank < 0) return;
    heap.push_back({left, right, rank, l.n + r.n});
    std::push_heap(heap.begin(), heap.end(), lower_priority);
  };

  merge_best_bigrams(symbols, heap, lower_priority, try_add_bigram);

  for (int32_t i = 0; !symbols.empty() && i != -1; i = symbols[static_cast<size_t>(i)].next) {
    const Symbol& s = symbols[static_cast<size_t>(i)];
    const std::string_view piece = std::string_view(text).substr(s.offset, s.n);
    if (const int32_t id = find_token(piece); id != kNoToken) {
      out.push_back(id);
      continue;
    }
    // As llama.cpp: fall back to one-byte tokens, dropping bytes without one.
    for (const char c : piece) {
      if (const int32_t id = find_token(std::string_view(&c, 1)); id != kNoToken) out.push_back(id);
    }
  }
}

std::string Tokenizer::token_to_piece(int32_t id, bool render_special) const {
  if (id < 0 || id >= n_vocab()) {
    throw Error("tokenizer: token id " + std::to_string(id) + " is outside the vocabulary (" +
                std::to_string(n_vocab()) + " tokens)");
  }
  if (!render_special && is_special(id)) return {};
  return pieces_[static_cast<size_t>(id)];
}

std::string Tokenizer::decode(std::span<const int32_t> ids, bool render_special) const {
  std::string text;
  bool strip_space = vocab_.add_space_prefix;
  for (const int32_t id : ids) {
    std::string piece = token_to_piece(id, render_special);
    if (piece.empty()) continue;
    if (strip_space && vocab_.type_of(id) == TokenType::Normal && piece[0] == ' ') piece.erase(0, 1);
    strip_space = false;
    text += piece;
  }
  return text;
}

std::unique_ptr<Tokenizer> load_tokenizer(const io::GgufFile& gguf) {
  try {
    return std::make_unique<Tokenizer>(load_vocab(gguf));
  } catch (const Error& e) {
    const std::string what = e.what();
    // Name the file once.
    if (what.rfind(gguf.path(), 0) == 0) throw;
    throw Error(gguf.path() + ": " + what);
  }
}

}  // namespace turbokv::tokenizer
