#include "util/thread_pool.h"

#include <atomic>
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

TEST(ThreadPool, ManyShortRegionsInARow) {
  ThreadPool pool(2);
  std::atomic<long> total{0};
  for (int i = 0; i < 20000; ++i) pool.run([&](int t) { total += t + 1; });
  EXPECT_EQ(total.load(), 20000L * 3);
}

}  // namespace
}  // namespace turbokv
