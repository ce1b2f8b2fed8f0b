#include "tokenizer/unicode.h"

#include <algorithm>
#include <array>
#include <iterator>

namespace turbokv::tokenizer {
namespace {

// Runs of (first code point << 4) | CharGroup, sorted by code point.
constexpr uint32_t kGroupRuns[] = {
#include "tokenizer/unicode_tables.inc"
};

// Latin-1 is looked up directly: it is most of the text we see.
constexpr std::array<CharGroup, 256> make_latin1_groups() {
  std::array<CharGroup, 256> groups{};
  size_t run = 0;
  for (uint32_t cpt = 0; cpt < 256; ++cpt) {
    while (run + 1 < std::size(kGroupRuns) && (kGroupRuns[run + 1] >> 4) <= cpt) ++run;
    groups[cpt] = static_cast<CharGroup>(kGroupRuns[run] & 0xF);
  }
  return groups;
}
constexpr std::array<CharGroup, 256> kLatin1Groups = make_latin1_groups();

struct Gpt2ByteMap {
  std::array<uint32_t, 256> byte_to_cpt{};
  std::array<int16_t, 324> cpt_to_byte{};  // every mapped code point is < 324
};

// GPT-2's bytes_to_unicode() (openai/gpt-2 encoder.py).
constexpr Gpt2ByteMap make_gpt2_byte_map() {
  Gpt2ByteMap map{};
  for (auto& b : map.cpt_to_byte) b = -1;
  uint32_t next_extra = 256;
  for (uint32_t b = 0; b < 256; ++b) {
    const bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
    const uint32_t cpt = printable ? b : next_extra++;
    map.byte_to_cpt[b] = cpt;
    map.cpt_to_byte[cpt] = static_cast<int16_t>(b);
  }
  return map;
}
constexpr Gpt2ByteMap kGpt2ByteMap = make_gpt2_byte_map();

}  // namespace

size_t utf8_sequence_length(std::string_view text, size_t pos) {
  const size_t avail = text.size() - pos;
  const auto byte = [&](size_t i) { return static_cast<uint8_t>(text[pos + i]); };
  const uint8_t b0 = byte(0);
  if (b0 < 0x80) return 1;
  const auto cont = [&](size_t i, uint8_t lo = 0x80, uint8_t hi = 0xBF) {
    return i < avail && byte(i) >= lo && byte(i) <= hi;
  };
  if (b0 >= 0xC2 && b0 <= 0xDF) return cont(1) ? 2 : 0;
  if (b0 >= 0xE0 && b0 <= 0xEF) {
    const uint8_t lo = b0 == 0xE0 ? 0xA0 : 0x80;  // no overlongs
    const uint8_t hi = b0 == 0xED ? 0x9F : 0xBF;  // no surrogates
    return cont(1, lo, hi) && cont(2) ? 3 : 0;
  }
  if (b0 >= 0xF0 && b0 <= 0xF4) {
    const uint8_t lo = b0 == 0xF0 ? 0x90 : 0x80;
    const uint8_t hi = b0 == 0xF4 ? 0x8F : 0xBF;  // nothing past U+10FFFF
    return cont(1, lo, hi) && cont(2) && cont(3) ? 4 : 0;
  }
  return 0;
}

std::vector<DecodedChar> decode_utf8(std::string_view text) {
  std::vector<DecodedChar> chars;
  chars.reserve(text.size());
  size_t pos = 0;
  while (pos < text.size()) {
    const size_t len = utf8_sequence_length(text, pos);
    const auto b = [&](size_t i) { return static_cast<uint32_t>(static_cast<uint8_t>(text[pos + i])); };
    uint32_t cpt = 0;
    switch (len) {
      case 0: cpt = kInvalidByteBase + b(0); break;
      case 1: cpt = b(0); break;
      case 2: cpt = ((b(0) & 0x1F) << 6) | (b(1) & 0x3F); break;
      case 3: cpt = ((b(0) & 0x0F) << 12) | ((b(1) & 0x3F) << 6) | (b(2) & 0x3F); break;
      default: cpt = ((b(0) & 0x07) << 18) | ((b(1) & 0x3F) << 12) | ((b(2) & 0x3F) << 6) | (b(3) & 0x3F); break;
    }
    const uint32_t n = len == 0 ? 1 : static_cast<uint32_t>(len);
    chars.push_back({cpt, static_cast<uint32_t>(pos), n});
    pos += n;
  }
  return chars;
}

void append_utf8(uint32_t cpt, std::string& out) {
  if (cpt >= kInvalidByteBase) {
    out.push_back(static_cast<char>(cpt - kInvalidByteBase));
  } else if (cpt < 0x80) {
    out.push_back(static_cast<char>(cpt));
  } else if (cpt < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (cpt >> 6)));
    out.push_back(static_cast<char>(0x80 | (cpt & 0x3F)));
  } else if (cpt < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (cpt >> 12)));
    out.push_back(static_cast<char>(0x80 | ((cpt >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cpt & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (cpt >> 18)));
    out.push_back(static_cast<char>(0x80 | ((cpt >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((cpt >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cpt & 0x3F)));
  }
}

CharGroup char_group(uint32_t cpt) {
  if (cpt < 256) return kLatin1Groups[cpt];
  if (cpt >= kInvalidByteBase) return CharGroup::Symbol;
  // O(log runs): the last run starting at or before cpt.
  const uint32_t key = (cpt << 4) | 0xF;
  const auto* it = std::upper_bound(std::begin(kGroupRuns), std::end(kGroupRuns), key);
  return static_cast<CharGroup>(*(it - 1) & 0xF);
}

bool is_whitespace(uint32_t cpt) {
  switch (cpt) {
    case 0x09: case 0x0A: case 0x0B: case 0x0C: case 0x0D: case 0x20:
    case 0x85: case 0xA0: case 0x1680: case 0x2028: case 0x2029:
    case 0x202F: case 0x205F: case 0x3000:
      return true;
    default:
      return cpt >= 0x2000 && cpt <= 0x200A;
  }
}

uint32_t byte_to_gpt2_cpt(uint8_t byte) { return kGpt2ByteMap.byte_to_cpt[byte]; }

int gpt2_cpt_to_byte(uint32_t cpt) {
  return cpt < kGpt2ByteMap.cpt_to_byte.size() ? kGpt2ByteMap.cpt_to_byte[cpt] : -1;
}

}  // namespace turbokv::tokenizer
