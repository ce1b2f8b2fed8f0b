// Unicode helpers for the tokenizers: UTF-8 decoding that never fails,
// general-category groups for the pre-tokenizer rules (\p{L}, \p{N}, \s),
// and GPT-2's byte <-> printable-code-point mapping.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace turbokv::tokenizer {

// General-category group of a code point (the first letter of its Unicode
// general category). Numbering must match gen_unicode_tables.py.
enum class CharGroup : uint8_t {
  Unassigned = 0,  // Cn
  Letter = 1,      // L*  (\p{L})
  Number = 2,      // N*  (\p{N})
  Mark = 3,        // M*
  Punctuation = 4, // P*
  Symbol = 5,      // S*
  Separator = 6,   // Z*
  Other = 7,       // Cc, Cf, Cs, Co
};

// A byte that does not begin a well-formed UTF-8 sequence is decoded as its
// own "character" with code point kInvalidByteBase + byte. It is outside the
// Unicode range, so it can never be confused with a real character, and
// encoding it again gives back the original byte: tokenizing invalid UTF-8
// loses nothing.
inline constexpr uint32_t kInvalidByteBase = 0x110000;

struct DecodedChar {
  uint32_t cpt;     // code point, or kInvalidByteBase + byte
  uint32_t offset;  // byte offset in the source text
  uint32_t n_bytes; // 1..4
};

// Length in bytes of the well-formed UTF-8 sequence starting at text[pos]
// (RFC 3629: no overlongs, no surrogates, nothing past U+10FFFF), or 0 if
// the bytes there are not one.
size_t utf8_sequence_length(std::string_view text, size_t pos);

// Splits `text` into characters; invalid bytes become single characters.
std::vector<DecodedChar> decode_utf8(std::string_view text);

// Appends the UTF-8 encoding of `cpt` (or the raw byte, for an invalid-byte
// code point) to `out`.
void append_utf8(uint32_t cpt, std::string& out);

// Group of a code point; invalid-byte code points count as Symbol (llama.cpp
// turns them into U+FFFD, which is a symbol, so the splitters agree).
CharGroup char_group(uint32_t cpt);
// The White_Space property (what \s matches in the reference regexes).
bool is_whitespace(uint32_t cpt);

// GPT-2 byte-level BPE alphabet: every byte maps to one printable code point
// (printable Latin-1 bytes map to themselves, the rest to U+0100...).
uint32_t byte_to_gpt2_cpt(uint8_t byte);
// Inverse mapping; returns -1 for code points outside the alphabet.
int gpt2_cpt_to_byte(uint32_t cpt);

}  // namespace turbokv::tokenizer
