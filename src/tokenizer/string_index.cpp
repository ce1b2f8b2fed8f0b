#include "tokenizer/string_index.h"

#include "util/error.h"

namespace turbokv::tokenizer {

StringIndex::StringIndex(const std::vector<std::string>& keys, Duplicates duplicates) {
  TKV_ASSERT(keys.size() < (size_t{1} << 30), "too many keys for a StringIndex");
  key_offsets_.reserve(keys.size() + 1);
  size_t total = 0;
  for (const auto& k : keys) total += k.size();
  arena_.reserve(total);
  for (const auto& k : keys) {
    key_offsets_.push_back(arena_.size());
    arena_ += k;
  }
  key_offsets_.push_back(arena_.size());

  size_t capacity = 16;
  while (capacity < 2 * keys.size()) capacity *= 2;
  slots_.assign(capacity, Slot{0, -1});
  mask_ = capacity - 1;
  for (size_t v = 0; v < keys.size(); ++v) {
    const uint64_t h = hash(keys[v]);
    const auto tag = static_cast<uint32_t>(h >> 32);
    for (size_t i = h & mask_;; i = (i + 1) & mask_) {
      Slot& s = slots_[i];
      if (s.value < 0) {
        s = Slot{tag, static_cast<int32_t>(v)};
        break;
      }
      if (s.tag == tag && key_of(s.value) == keys[v]) {
        if (duplicates == Duplicates::KeepLast) s.value = static_cast<int32_t>(v);
        break;
      }
    }
  }
}

}  // namespace turbokv::tokenizer
