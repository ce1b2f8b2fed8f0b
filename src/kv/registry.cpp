#include "kv/registry.h"

#include <mutex>

#include "kv/dense_cache.h"
#include "kv/scheme.h"
#include "kv/turbo_cache.h"
#include "util/error.h"

namespace turbokv::kv {

namespace {

template <typename Cache>
SchemeEntry exact_scheme(std::string name, std::string description) {
  SchemeEntry e;
  e.forms = name;
  e.description = std::move(description);
  e.make = [name](std::string_view s, const CacheShape& shape) -> std::unique_ptr<KvCache> {
    if (s != name) return nullptr;
    return std::make_unique<Cache>(shape);
  };
  return e;
}

std::vector<SchemeEntry> builtin_schemes() {
  std::vector<SchemeEntry> v;
  v.push_back(exact_scheme<Fp16KvCache>("fp16", "IEEE half keys and values, 16 bits/element (llama.cpp's default)"));
  v.push_back(exact_scheme<F32KvCache>("f32", "float keys and values, 32 bits/element (exact reference)"));
  // Everything else the scheme grammar (kv/scheme.h) names: TurboQuant and
  // affine caches, separate key/value specs, options.
  SchemeEntry turbo;
  turbo.forms = "affine4, affine8, turbo<K>v<V>, turbo<B>, <kspec>/<vspec>[:options]";
  turbo.description = "compressed caches (see `turbokv schemes`)";
  turbo.make = [](std::string_view s, const CacheShape& shape) -> std::unique_ptr<KvCache> {
    const std::string_view base = s.substr(0, s.find(':'));
    const bool ours = base.substr(0, 5) == "turbo" || base.substr(0, 6) == "affine" ||
                      base.find('/') != std::string_view::npos || s.find(':') != std::string_view::npos;
    if (!ours) return nullptr;
    const SchemeSpec spec = parse_scheme(s);  // throws, naming the problem
    if (spec.is_dense()) {
      if (spec.key.kind == StreamKind::F32) return std::make_unique<F32KvCache>(shape);
      return std::make_unique<Fp16KvCache>(shape);
    }
    return std::make_unique<TurboKvCache>(spec, shape);
  };
  v.push_back(std::move(turbo));
  return v;
}

std::mutex& registry_mutex() {
  static std::mutex m;
  return m;
}

std::vector<SchemeEntry>& registry() {
  static std::vector<SchemeEntry> entries = builtin_schemes();
  return entries;
}

}  // namespace

void register_kv_scheme(SchemeEntry entry) {
  std::lock_guard<std::mutex> lock(registry_mutex());
  registry().push_back(std::move(entry));
}

const std::vector<SchemeEntry>& kv_schemes() {
  std::lock_guard<std::mutex> lock(registry_mutex());
  return registry();
}

std::string kv_scheme_list() {
  std::string s;
  for (const auto& e : kv_schemes()) {
    if (!s.empty()) s += ", ";
    s += e.forms;
  }
  return s;
}

std::unique_ptr<KvCache> make_kv_cache(std::string_view scheme, const CacheShape& shape) {
  for (const auto& e : kv_schemes()) {
    if (auto cache = e.make(scheme, shape)) return cache;
  }
  throw Error("unknown KV cache scheme '" + std::string(scheme) + "'; valid: " + kv_scheme_list());
}

}  // namespace turbokv::kv
