// A small fork-join pool for the decode loop.
//
// Decoding one token runs dozens of short parallel regions (one per matrix
// product and per attention call), so waking threads through a condition
// variable would cost more than the work. Workers spin briefly on an atomic
// generation counter, then sleep on it with C++20 atomic wait/notify.
// The pool is passed explicitly to whatever needs threads; there is no global.
#pragma once

#include <atomic>
#include <cstddef>
#include <functional>
#include <thread>
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

  // Runs fn(thread_index) once on each of size() threads and waits for all.
  void run(const std::function<void(int thread)>& fn);

  // Splits [0, n) into contiguous ranges, at most one per thread, each a
  // multiple of `grain` long except the last: fn(begin, end, thread).
  template <typename Fn>
  void parallel_for(size_t n, size_t grain, Fn&& fn) {
    if (n == 0) return;
    if (grain == 0) grain = 1;
    const size_t chunks = (n + grain - 1) / grain;
    const size_t workers = chunks < size_t(n_threads_) ? chunks : size_t(n_threads_);
    if (workers <= 1) { fn(size_t(0), n, 0); return; }
    const size_t per = (chunks + workers - 1) / workers * grain;
    run([&](int t) {
      const size_t begin = size_t(t) * per;
      if (begin >= n) return;
      const size_t end = begin + per < n ? begin + per : n;
      fn(begin, end, t);
    });
  }

 private:
  void worker_loop(int index);

  int n_threads_;
  std::vector<std::thread> workers_;
  const std::function<void(int)>* job_ = nullptr;
  std::atomic<uint32_t> generation_{0};
  std::atomic<int> pending_{0};
  std::atomic<bool> stop_{false};
};

}  // namespace turbokv
