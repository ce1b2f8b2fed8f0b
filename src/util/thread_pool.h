// A small fork-join pool for the decode loop.
//
// Decoding one token runs dozens of short parallel regions (one per matrix
// product and per attention call), so waking threads through a condition
// variable would cost more than the work. A region is cut into a fixed list
// of chunks that threads claim from one atomic counter: the caller claims
// chunks too, so a worker that is asleep or descheduled (a shared machine)
// delays nothing it has not claimed, and the caller waits only for chunks
// in progress. Idle workers spin briefly on an atomic generation counter,
// then sleep on it with C++20 atomic wait/notify; they never spin when there
// are more threads than cores. Chunk boundaries depend only on the sizes
// and the thread count, never on who runs them, so results are the same
// whatever the timing.
// The pool is passed explicitly to whatever needs threads; there is no global.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <thread>
#include <type_traits>
#include <vector>

namespace turbokv {

class ThreadPool {
 public:
  // n_threads counts the calling thread: ThreadPool(1) runs everything inline.
  explicit ThreadPool(int n_threads = 1);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return n_threads_; }

  // Runs fn(i) once for each i in [0, size()), in parallel as far as threads
  // are free, and waits for all.
  template <typename Fn>
  void run(Fn&& fn) {
    run_chunks(size_t(n_threads_), [&](size_t i, int) { fn(int(i)); });
  }

  // Splits [0, n) into contiguous ranges, each a multiple of `grain` long
  // except the last, and runs fn(begin, end, thread) for each, in parallel;
  // `thread` in [0, size()) is the running thread (use it to pick scratch
  // memory; a thread may run several ranges, one at a time).
  template <typename Fn>
  void parallel_for(size_t n, size_t grain, Fn&& fn) {
    if (n == 0) return;
    if (grain == 0) grain = 1;
    const size_t grains = (n + grain - 1) / grain;
    if (n_threads_ == 1 || grains == 1) { fn(size_t(0), n, 0); return; }
    // A few ranges per thread, so that a late thread leaves less behind.
    const size_t target = size_t(n_threads_) * kRangesPerThread;
    const size_t per = (grains + std::min(grains, target) - 1) / std::min(grains, target) * grain;
    const size_t count = (n + per - 1) / per;
    run_chunks(count, [&](size_t i, int thread) {
      const size_t begin = i * per;
      const size_t end = begin + per < n ? begin + per : n;
      fn(begin, end, thread);
    });
  }

 private:
  static constexpr size_t kRangesPerThread = 4;

  // Runs chunk(i, thread) for i in [0, count) on the pool and waits.
  template <typename Chunk>
  void run_chunks(size_t count, Chunk&& chunk) {
    if (count == 0) return;
    if (n_threads_ == 1 || count == 1) {
      for (size_t i = 0; i < count; ++i) chunk(i, 0);
      return;
    }
    using C = std::remove_reference_t<Chunk>;
    dispatch(count, const_cast<void*>(static_cast<const void*>(&chunk)),
             [](void* ctx, size_t i, int thread) { (*static_cast<C*>(ctx))(i, thread); });
  }

  using ChunkFn = void (*)(void* ctx, size_t index, int thread);
  void dispatch(size_t count, void* ctx, ChunkFn call);
  // Claims and runs chunks of the current job until none is left; returns how many it ran.
  size_t run_claimed(int thread);
  void worker_loop(int index);

  int n_threads_;
  int spin_iterations_;  // 0 when threads outnumber cores
  std::vector<std::thread> workers_;
  // The current job, written by the caller before it publishes claim_.
  void* job_ctx_ = nullptr;
  ChunkFn job_call_ = nullptr;
  // (chunk count << 32) | next unclaimed chunk. A successful claim also
  // proves the job is live: it cannot finish while a chunk is unclaimed.
  alignas(64) std::atomic<uint64_t> claim_{0};
  alignas(64) std::atomic<uint32_t> done_{0};        // chunks finished in the current job
  alignas(64) std::atomic<uint32_t> generation_{0};  // bumped per job; idle workers wait on it
  std::atomic<bool> stop_{false};
};

}  // namespace turbokv
