#include "util/thread_pool.h"

#include "util/error.h"

namespace turbokv {

namespace {
// Spin this many pause instructions (a few microseconds to ~100 µs,
// depending on the CPU's pause latency) before sleeping. Long enough to
// cover the gap between two parallel regions of one decode step; short
// enough that an idle pool soon stops using a core. A region never waits
// for a thread that has not claimed work, so a sleeping worker costs only
// its share of the work, not the region.
constexpr int kSpinIterations = 2000;

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}
}  // namespace

ThreadPool::ThreadPool(int n_threads) : n_threads_(n_threads < 1 ? 1 : n_threads) {
  // With more threads than cores a spinning thread takes the core that the
  // thread it waits for needs.
  const unsigned cores = std::thread::hardware_concurrency();
  spin_iterations_ = cores == 0 || unsigned(n_threads_) <= cores ? kSpinIterations : 0;
  workers_.reserve(size_t(n_threads_ - 1));
  for (int i = 1; i < n_threads_; ++i) workers_.emplace_back([this, i] { worker_loop(i); });
}

ThreadPool::~ThreadPool() {
  stop_.store(true, std::memory_order_release);
  generation_.fetch_add(1, std::memory_order_acq_rel);
  generation_.notify_all();
  for (auto& w : workers_) w.join();
}

size_t ThreadPool::run_claimed(int thread) {
  size_t ran = 0;
  uint64_t v = claim_.load(std::memory_order_acquire);
  for (;;) {
    const uint32_t count = uint32_t(v >> 32), next = uint32_t(v);
    if (next >= count) return ran;
    if (!claim_.compare_exchange_weak(v, v + 1, std::memory_order_acq_rel, std::memory_order_acquire)) continue;
    // The claim synchronizes with the caller's publication of this job, and
    // the job cannot finish (and be replaced) before this chunk is done.
    job_call_(job_ctx_, next, thread);
    ++ran;
    if (thread != 0 && done_.fetch_add(1, std::memory_order_acq_rel) + 1 == count) done_.notify_one();
    v = claim_.load(std::memory_order_acquire);
  }
}

void ThreadPool::dispatch(size_t count, void* ctx, ChunkFn call) {
  TKV_ASSERT(count < (size_t(1) << 31), "thread pool: chunk count fits 31 bits");
  job_ctx_ = ctx;
  job_call_ = call;
  done_.store(0, std::memory_order_relaxed);
  claim_.store(uint64_t(count) << 32, std::memory_order_release);
  generation_.fetch_add(1, std::memory_order_release);
  generation_.notify_all();  // no system call unless a worker sleeps
  const uint32_t total = uint32_t(count);
  const uint32_t mine = uint32_t(run_claimed(0));
  uint32_t done = done_.fetch_add(mine, std::memory_order_acq_rel) + mine;
  // Wait only for chunks that workers claimed and are still running.
  for (int spins = 0; done != total; done = done_.load(std::memory_order_acquire)) {
    if (spins < spin_iterations_) {
      ++spins;
      cpu_relax();
    } else {
      done_.wait(done, std::memory_order_acquire);
    }
  }
}

void ThreadPool::worker_loop(int index) {
  // Workers are created in the constructor, before any job: generation 0
  // is the one they have "seen". Reading generation_ here instead would race
  // with a job that starts before this thread does.
  uint32_t seen = 0;
  for (;;) {
    int spins = 0;
    uint32_t now;
    while ((now = generation_.load(std::memory_order_acquire)) == seen) {
      if (spins < spin_iterations_) {
        ++spins;
        cpu_relax();
      } else {
        generation_.wait(seen, std::memory_order_acquire);
      }
    }
    seen = now;
    if (stop_.load(std::memory_order_acquire)) return;
    run_claimed(index);
  }
}

}  // namespace turbokv
