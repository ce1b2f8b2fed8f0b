// KV cache schemes by name: the only place the model side learns which
// cache classes exist (STYLE.md rule 3: the model knows a scheme name).
//
// A scheme entry matches names (possibly with parameters, e.g. "tq4",
// "tq:k4v3") and builds the cache. To add a scheme, add an entry to
// builtin_schemes() in registry.cpp (or call register_kv_scheme at startup).
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "kv/kv_cache.h"

namespace turbokv::kv {

inline constexpr std::string_view kDefaultScheme = "fp16";

struct SchemeEntry {
  std::string forms;        // how the names look, for help and errors: "fp16"
  std::string description;  // one line
  // Returns the cache if `name` is one of this entry's forms, else nullptr.
  // May throw Error for a recognised form with bad parameters.
  std::function<std::unique_ptr<KvCache>(std::string_view name, const CacheShape&)> make;
};

// Builds the cache named `scheme`; throws Error listing the valid forms if
// no entry recognises it.
std::unique_ptr<KvCache> make_kv_cache(std::string_view scheme, const CacheShape& shape);

// Adds a scheme (checked after the built-in ones).
void register_kv_scheme(SchemeEntry entry);

// All known schemes, built-in first.
const std::vector<SchemeEntry>& kv_schemes();
// "fp16, f32, ..." for help texts and error messages.
std::string kv_scheme_list();

}  // namespace turbokv::kv
