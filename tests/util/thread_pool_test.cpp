#include "util/thread_pool.h"

#include <algorithm>
#include <atomic>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

namespace turbokv {
namespace {

TEST(ThreadPool, ParallelForCoversEveryIndexOnce) {
  for (int threads : {1, 2, 3, 7}) {
    ThreadPool pool(threads);
    for (size_t n : {size_t(0), size_t(1), size_t(5), size_t(64), size_t(1001)}) {
      for (size_t grain : {size_t(1), size_t(4), size_t(16)}) {
        std::vector<std::atomic<int>> hits(n);
        pool.parallel_for(n, grain, [&](size_t b, size_t e, int t) {
          EXPECT_GE(t, 0);
          EXPECT_LT(t, threads);
          if (e < n) { EXPECT_EQ((e - b) % grain, 0u); }
          for (size_t i = b; i < e; ++i) hits[i]++;
        });
        for (size_t i = 0; i < n; ++i) ASSERT_EQ(hits[i].load(), 1) << threads << " threads, n " << n;
      }
    }
  }
}

// A thread index names scratch memory: two ranges running at the same time
// never share one, however the ranges are claimed.
TEST(ThreadPool, ConcurrentRangesNeverShareAThreadIndex) {
  for (int threads : {2, 3}) {
    ThreadPool pool(threads);
    std::vector<std::atomic<int>> busy(static_cast<size_t>(threads));
    std::atomic<int> overlaps{0};
    for (int round = 0; round < 200; ++round) {
      pool.parallel_for(97, 1, [&](size_t b, size_t e, int t) {
        if (busy[size_t(t)].exchange(1) != 0) overlaps++;
        volatile double sink = 0;
        for (size_t i = b; i < e; ++i) sink = sink + double(i);
        busy[size_t(t)].store(0);
      });
    }
    EXPECT_EQ(overlaps.load(), 0) << threads << " threads";
  }
}

// More threads than cores: no thread spins, and every region still completes.
TEST(ThreadPool, MoreThreadsThanCores) {
  const int threads = int(std::max(1u, std::thread::hardware_concurrency())) * 2 + 1;
  ThreadPool pool(threads);
  std::atomic<long> total{0};
  for (int i = 0; i < 2000; ++i) {
    pool.parallel_for(size_t(threads) * 3, 1, [&](size_t b, size_t e, int) { total += long(e - b); });
  }
  EXPECT_EQ(total.load(), 2000L * threads * 3);
}

TEST(ThreadPool, ManyShortRegionsInARow) {
  ThreadPool pool(2);
  std::atomic<long> total{0};
  for (int i = 0; i < 20000; ++i) pool.run([&](int t) { total += t + 1; });
  EXPECT_EQ(total.load(), 20000L * 3);
}

}  // namespace
}  // namespace turbokv
