// Text <-> token ids for llama-family GGUF models, reproducing llama.cpp's
// tokenizers (src/llama-vocab.cpp) id for id:
//  - "llama": SentencePiece-style BPE over characters, merging the adjacent
//    pair whose merged piece has the highest score, with byte fallback
//    (<0xNN> tokens) for characters outside the vocabulary.
//  - "gpt2": byte-level BPE (Radford et al. 2019): a regex pre-tokenizer
//    splits words, bytes map to printable code points, merges apply by rank.
//
// Every call is const and thread-safe; scratch memory is per call.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <unordered_set>
#include <vector>

#include "tokenizer/pretokenize.h"
#include "tokenizer/string_index.h"
#include "tokenizer/vocab.h"

namespace turbokv::tokenizer {

class Tokenizer {
 public:
  // Validates `vocab` (special ids in range, array lengths, pre-tokenizer)
  // and builds the lookup tables; throws Error describing the problem.
  // O(n_vocab + n_merges).
  explicit Tokenizer(Vocab vocab);

  // Text to ids.
  //  add_special:   prepend bos if vocab().add_bos, append eos if
  //                 vocab().add_eos (llama.cpp's add_special).
  //  parse_special: text equal to a control token (<s>, </s>,
  //                 <|endoftext|>) becomes that token. User-defined tokens
  //                 are matched either way, as in llama.cpp.
  // Never throws on bad UTF-8: an invalid byte is a character of its own
  // (byte-fallback tokens for "llama"), so decode() gives the bytes back.
  // O(n log n) in the text length.
  std::vector<int32_t> encode(std::string_view text, bool add_special = true, bool parse_special = false) const;

  // The text of one token, for streaming output (concatenate the pieces;
  // a byte token may be part of a UTF-8 character). "▁" (SentencePiece)
  // prints as a space and byte tokens <0xNN> as the raw byte; gpt2 pieces
  // are mapped back to bytes. Control and unknown tokens print their text
  // ("<s>") only with render_special, else nothing; user-defined tokens
  // always print. A normal piece keeps its leading space (" It"), so
  // "<s>" + " It" + ... reproduces llama.cpp's llama-simple output.
  // Throws Error for an id outside [0, n_vocab).
  std::string token_to_piece(int32_t id, bool render_special = false) const;

  // The pieces of `ids` concatenated, except that with a SentencePiece
  // dummy prefix (vocab().add_space_prefix) the leading space of the first
  // non-empty piece is removed, so decode(encode(s)) == s for any s
  // (with or without the BOS added by encode). Throws Error for a bad id.
  std::string decode(std::span<const int32_t> ids, bool render_special = false) const;

  int32_t n_vocab() const { return vocab_.n_tokens(); }
  int32_t bos() const { return vocab_.bos_id; }
  int32_t eos() const { return vocab_.eos_id; }
  // End of generation: eos, eot, eom and the end-of-turn tokens llama.cpp
  // recognises by text (<|endoftext|>, <|eot_id|>, <|im_end|>, ...).
  bool is_eog(int32_t id) const;
  // Control or unknown token (printed only with render_special).
  bool is_special(int32_t id) const;
  // The id of the token whose text is exactly `text`, or kNoToken.
  int32_t find_token(std::string_view text) const;

  // The vocabulary as used: auto-detected end-of-turn tokens are typed
  // Control, as llama.cpp does.
  const Vocab& vocab() const { return vocab_; }

 private:
  // A run of raw text [begin, end) or one special token (token != kNoToken).
  struct Fragment {
    int32_t token;
    size_t begin;
    size_t end;
  };
  std::vector<Fragment> split_special(std::string_view text, bool parse_special) const;

  // Buffers reused across the segments/words of one encode() call
  // (defined in tokenizer.cpp).
  struct SpmScratch;
  struct BpeScratch;
  void encode_spm(std::string_view escaped_text, std::vector<int32_t>& out) const;
  void encode_spm_segment(std::string_view text, std::vector<int32_t>& out, SpmScratch& scratch) const;
  void encode_bpe_word(std::string_view word, std::vector<int32_t>& out, BpeScratch& scratch) const;
  int32_t merge_rank(std::string_view left, std::string_view right, std::string& scratch) const;

  Vocab vocab_;
  bool is_spm_ = true;
  PreTokenizer pre_ = PreTokenizer::Gpt2;  // gpt2 only
  StringIndex token_to_id_;                // token text -> id (last wins, as llama.cpp)
  StringIndex merge_ranks_;                // "left right" -> rank (gpt2; first wins)
  std::vector<int32_t> byte_tokens_;       // (256) byte -> <0xNN> token (llama)
  std::unordered_set<uint64_t> chars_before_space_;  // (llama) see encode_spm
  std::vector<int32_t> special_tokens_;    // control/user-defined/unknown, longest text first
  std::vector<std::string> pieces_;        // (n_vocab) token_to_piece(id, true)
  std::vector<uint8_t> eog_;               // (n_vocab) is_eog
};

// Convenience: load_vocab + Tokenizer.
std::unique_ptr<Tokenizer> load_tokenizer(const io::GgufFile& gguf);

}  // namespace turbokv::tokenizer
