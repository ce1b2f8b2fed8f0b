// A read-only string -> int32 hash map for the tokenizer's hot lookups
// (token text -> id, merge -> rank). Open addressing with linear probing
// over a flat slot array; keys live in one arena. Compared with
// std::unordered_map it needs no allocation per lookup of a string_view and
// no pointer chasing: a lookup touches one or two 8-byte slots, and the key
// bytes only on a 32-bit hash match.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace turbokv::tokenizer {

class StringIndex {
 public:
  // Which value an index keeps for a key that appears more than once.
  enum class Duplicates { KeepFirst, KeepLast };

  StringIndex() = default;
  // Maps keys[i] -> i. O(keys) expected.
  StringIndex(const std::vector<std::string>& keys, Duplicates duplicates);

  // The value of `key`, or -1. O(1) expected (load factor <= 1/2).
  int32_t find(std::string_view key) const {
    if (slots_.empty()) return -1;
    const uint64_t h = hash(key);
    const auto tag = static_cast<uint32_t>(h >> 32);
    for (size_t i = h & mask_;; i = (i + 1) & mask_) {
      const Slot& s = slots_[i];
      if (s.value < 0) return -1;
      if (s.tag == tag && key_of(s.value) == key) return s.value;
    }
  }

  // FNV-1a, 64 bits: the keys are short (a few bytes), where it is fast.
  static uint64_t hash(std::string_view key) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (const char c : key) h = (h ^ static_cast<uint8_t>(c)) * 0x100000001b3ull;
    return h ^ (h >> 29);
  }

 private:
  struct Slot {
    uint32_t tag;   // high half of the hash
    int32_t value;  // -1: empty
  };
  std::string_view key_of(int32_t value) const {
    const auto v = static_cast<size_t>(value);
    return std::string_view(arena_).substr(key_offsets_[v], key_offsets_[v + 1] - key_offsets_[v]);
  }

  std::vector<Slot> slots_;          // power-of-two size
  size_t mask_ = 0;
  std::string arena_;                // all keys, concatenated
  std::vector<size_t> key_offsets_;  // (n_keys + 1) start of key i in arena_
};

}  // namespace turbokv::tokenizer
