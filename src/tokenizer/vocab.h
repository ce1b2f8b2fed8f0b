// A tokenizer vocabulary as GGUF stores it (the tokenizer.ggml.* keys), with
// the defaults llama.cpp (src/llama-vocab.cpp) applies when keys are absent.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace turbokv::io {
class GgufFile;
}

namespace turbokv::tokenizer {

inline constexpr int32_t kNoToken = -1;

// tokenizer.ggml.token_type values (llama.cpp's llama_token_type).
enum class TokenType : int32_t {
  Undefined = 0,
  Normal = 1,
  Unknown = 2,
  Control = 3,      // <s>, </s>, <|endoftext|>: matched in text only with parse_special
  UserDefined = 4,  // always matched in text, printed verbatim
  Unused = 5,
  Byte = 6,         // SentencePiece byte fallback <0xNN>
};

struct Vocab {
  // tokenizer.ggml.model: "llama" (SentencePiece) or "gpt2" (byte-level BPE).
  std::string model = "llama";
  // tokenizer.ggml.pre: the BPE pre-tokenizer ("gpt-2", "llama-bpe", "qwen2");
  // "default" for SentencePiece, which has none.
  std::string pre = "default";

  std::vector<std::string> tokens;     // (n_vocab) token text
  std::vector<float> scores;           // (n_vocab) SentencePiece merge scores; may be empty
  std::vector<TokenType> token_types;  // (n_vocab); may be empty (all Normal)
  std::vector<std::string> merges;     // BPE merges "left right", best (rank 0) first

  int32_t bos_id = kNoToken;
  int32_t eos_id = kNoToken;
  int32_t unk_id = kNoToken;
  int32_t pad_id = kNoToken;
  int32_t eot_id = kNoToken;  // end of turn (tokenizer.ggml.eot_token_id); also ends generation
  int32_t eom_id = kNoToken;  // end of message (tokenizer.ggml.eom_token_id)

  bool add_bos = false;           // encode(add_special) prepends bos_id
  bool add_eos = false;           // encode(add_special) appends eos_id
  bool add_space_prefix = false;  // SentencePiece dummy prefix: " " before the text
  bool ignore_merges = false;     // BPE: a word that is a whole token skips merging (llama3)

  // A vocabulary with llama.cpp's defaults for `model` ("llama" or "gpt2")
  // and BPE pre-tokenizer `pre`, and no tokens. Throws Error for others.
  static Vocab with_defaults(const std::string& model, const std::string& pre = "default");

  int32_t n_tokens() const { return static_cast<int32_t>(tokens.size()); }
  TokenType type_of(int32_t id) const {
    return token_types.empty() ? TokenType::Normal : token_types[static_cast<size_t>(id)];
  }
};

// Reads the tokenizer.ggml.* keys of `gguf`. Required: model, tokens (and
// merges for gpt2). Throws Error naming the file and key for a missing or
// malformed key, an array whose length differs from tokens, or a BOS, EOS
// or unknown-token id outside the vocabulary (an out-of-range padding,
// end-of-turn or end-of-message id means none, as llama.cpp ignores it).
Vocab load_vocab(const io::GgufFile& gguf);

}  // namespace turbokv::tokenizer
