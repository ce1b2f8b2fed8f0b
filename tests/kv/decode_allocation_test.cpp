// Decode steps allocate nothing once the first steps have sized their
// buffers (issue 7: no allocation in the decode loop). This binary's global
// operator new counts every allocation.
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <memory>
#include <new>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "kv/registry.h"
#include "kv/scheme.h"
#include "util/rng.h"
#include "util/thread_pool.h"

namespace {
std::atomic<long> g_allocations{0};

void* counted_alloc(std::size_t n, std::size_t align) {
  g_allocations.fetch_add(1, std::memory_order_relaxed);
  void* p = align <= alignof(std::max_align_t) ? std::malloc(n ? n : 1)
                                               : std::aligned_alloc(align, (n + align - 1) / align * align);
  if (p == nullptr) throw std::bad_alloc();
  return p;
}
}  // namespace

void* operator new(std::size_t n) { return counted_alloc(n, 0); }
void* operator new[](std::size_t n) { return counted_alloc(n, 0); }
void* operator new(std::size_t n, std::align_val_t a) { return counted_alloc(n, std::size_t(a)); }
void* operator new[](std::size_t n, std::align_val_t a) { return counted_alloc(n, std::size_t(a)); }
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }
void operator delete(void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete(void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }

namespace turbokv::kv {
namespace {

// Every listed scheme and the element layouts the fused kernels read apart
// (affine, prod), on two threads: after a prefill and two decode steps
// (the compression of the prefix, the job and scratch buffers), twenty
// more steps (through the near tier's moves) allocate nothing.
TEST(DecodeAllocation, StepsAfterTheFirstAllocateNothing) {
  std::vector<std::string> schemes = listed_schemes();
  schemes.push_back("affine4/prod4");
  ThreadPool pool(2);
  for (const std::string& scheme : schemes) {
    const CacheShape shape{2, 8, 2, 128, 256};
    const std::unique_ptr<KvCache> cache = make_kv_cache(scheme, shape);
    Rng rng(3);
    const int prompt = 100;
    std::vector<float> k(size_t(prompt) * 2 * 128), v(k.size()), q(size_t(prompt) * 8 * 128), out(q.size());
    for (auto* x : {&k, &v, &q}) {
      for (float& e : *x) e = float(rng.normal());
    }
    const float scale = 1.0f / std::sqrt(128.0f);
    cache->begin_batch(prompt, Phase::Prefill);
    for (int l = 0; l < shape.n_layer; ++l) {
      cache->store(l, k.data(), v.data());
      cache->attend(l, q.data(), out.data(), scale, pool);
    }
    cache->end_batch();
    auto step = [&] {
      cache->begin_batch(1, Phase::Decode);
      for (int l = 0; l < shape.n_layer; ++l) {
        cache->store(l, k.data(), v.data());
        cache->attend(l, q.data(), out.data(), scale, pool);
      }
      cache->end_batch();
    };
    step();
    step();
    const long before = g_allocations.load();
    for (int t = 0; t < 20; ++t) step();
    EXPECT_EQ(g_allocations.load() - before, 0) << scheme;
  }
}

}  // namespace
}  // namespace turbokv::kv
