// Pre-tokenizers of byte-level BPE vocabularies: the regex splits that run
// before BPE merges, written out by hand because std::regex has no \p{L}.
// Each follows llama.cpp's unicode.cpp (unicode_regex_split_custom_gpt2 /
// _llama3), which in turn matches the Hugging Face regexes below.
#pragma once

#include <string_view>
#include <vector>

namespace turbokv::tokenizer {

enum class PreTokenizer {
  // 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
  Gpt2,
  // (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|
  //  ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
  Llama3,
  // As Llama3, but \p{N} (one digit per word).
  Qwen2,
};

// Maps tokenizer.ggml.pre to a splitter; throws Error naming the value and
// the supported ones.
PreTokenizer pre_tokenizer_from_name(std::string_view name);
const char* pre_tokenizer_name(PreTokenizer kind);

// Splits `text` into words (views into `text`, in order, covering it
// exactly). Invalid UTF-8 bytes are single characters of the
// [^\s\p{L}\p{N}] class. O(text size).
std::vector<std::string_view> pre_tokenize(PreTokenizer kind, std::string_view text);

}  // namespace turbokv::tokenizer
