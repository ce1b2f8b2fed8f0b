// The interface between the transformer and its key/value cache.
//
// The model knows nothing about codecs beyond a scheme name: it hands each
// layer's post-RoPE keys and values to the cache and asks the cache for the
// attention output. A cache is free to store keys/values in any form and to
// compute attention directly over that form (STYLE.md rule 3 and 4).
//
// A forward pass over a batch of n tokens at positions [p, p + n), where
// p = n_tokens(), is:
//   cache.begin_batch(n, phase);
//   for each layer: cache.store(layer, k, v); cache.attend(layer, q, out, ...);
//   cache.end_batch();            // now n_tokens() == p + n
// Query i of the batch attends causally to positions [0, p + i].
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "util/error.h"
#include "util/thread_pool.h"

namespace turbokv::kv {

class CacheWriter;  // kv/cache_file.h
class CacheReader;

struct CacheShape {
  int n_layer = 0;
  int n_head = 0;     // query heads
  int n_kv_head = 0;  // key/value heads; n_head % n_kv_head == 0 (GQA)
  int head_dim = 0;
  int max_tokens = 0; // capacity (the context size)
};

// Prefill: the prompt, processed in one batch. Two-phase caches keep it raw.
// Decode: tokens produced one (or a few, when verifying a draft) at a time;
// a two-phase cache compresses its whole prefix at the first decode batch.
enum class Phase { Prefill, Decode };

class KvCache {
 public:
  virtual ~KvCache() = default;

  virtual const CacheShape& shape() const = 0;
  virtual std::string scheme() const = 0;
  // Tokens stored (committed by end_batch).
  virtual int n_tokens() const = 0;

  // Starts a batch of n tokens at positions [n_tokens(), n_tokens() + n).
  // Throws Error if the batch would exceed max_tokens.
  virtual void begin_batch(int n, Phase phase) = 0;
  // Stores the batch's keys and values for one layer.   k, v: (n, n_kv_head, head_dim)
  virtual void store(int layer, const float* k, const float* v) = 0;
  // Causal attention of the batch's queries.   q, out: (n, n_head, head_dim)
  // scores = scale * q·k; query head h reads kv head h / (n_head / n_kv_head).
  virtual void attend(int layer, const float* q, float* out, float scale, ThreadPool& pool) = 0;
  virtual void end_batch() = 0;

  // Drops the last n tokens (speculative rejection, prompt editing).
  virtual void trim(int n) = 0;
  virtual void clear() { trim(n_tokens()); }

  // Exact bytes of stored keys and values plus all metadata (scales, norms, means).
  virtual size_t bytes() const = 0;
  // Bits per stored element including all metadata, for the current contents
  // (or the steady-state rate if empty).
  virtual double bits_per_element() const = 0;

  // Serializes the whole stored state, in stored (compressed) form; the
  // layouts are owned by kv/cache_file.h. restore() replaces this cache's
  // contents with a state saved by a cache of the same scheme and shape
  // (max_tokens may differ if the tokens fit); afterwards the cache behaves
  // bit for bit as the saved one did. Throws Error if the state does not fit.
  virtual void save(CacheWriter&) const { throw Error("kv cache '" + scheme() + "' cannot be saved"); }
  virtual void restore(CacheReader&) { throw Error("kv cache '" + scheme() + "' cannot be restored"); }
};

}  // namespace turbokv::kv
