// The fiber scheduler under the SIMT emulator (tests/support/fiber_scheduler.h): the order it
// runs fibers in (depth first at barriers, round robin at yields), the barrier's completion step,
// and a launch whose threads all wait failing with a message instead of hanging.
#include <gtest/gtest.h>

#include <vector>

#include "../support/fiber_scheduler.h"

namespace triad::simt {
namespace {

// Two groups of two fibers, each group with its own barrier: fibers released by a barrier run
// before the fibers that have not started yet, and the last arrival goes on first. The trace
// holds f before fiber f's arrival, 10 + f after its release.
TEST(FiberScheduler, BarrierReleasesRunFirst) {
  std::vector<int> trace;
  FiberScheduler fibers;
  int completions = 0;
  FiberBarrier<std::function<void()>> first(2, [&] { ++completions; });
  FiberBarrier<std::function<void()>> second(2, [&] { ++completions; });
  for (int f = 0; f < 4; ++f)
    fibers.spawn([&, f] {
      auto& bar = f < 2 ? first : second;
      trace.push_back(f);
      bar.arrive_and_wait();
      trace.push_back(10 + f);
    });
  fibers.run();
  EXPECT_EQ(completions, 2);
  EXPECT_EQ(trace, (std::vector<int>{0, 1, 11, 10, 2, 3, 13, 12}));
}

// yield() lets every other ready fiber run once.
TEST(FiberScheduler, YieldsTakeTurns) {
  std::vector<int> trace;
  FiberScheduler fibers;
  for (int f = 0; f < 3; ++f)
    fibers.spawn([&, f] {
      for (int i = 0; i < 2; ++i) {
        trace.push_back(f);
        FiberScheduler::current().yield();
      }
    });
  fibers.run();
  EXPECT_EQ(trace, (std::vector<int>{0, 1, 2, 0, 1, 2}));
}

// A barrier of three that only two fibers reach: the GPU would hang; here the run stops naming
// it.
TEST(FiberSchedulerDeathTest, ThreadsThatAllWaitAreAHang) {
  EXPECT_DEATH(
      {
        FiberScheduler fibers;
        FiberBarrier<> bar(3);
        for (int f = 0; f < 2; ++f) fibers.spawn([&] { bar.arrive_and_wait(); });
        fibers.run();
      },
      "every remaining thread waits for one that never arrives");
}

}  // namespace
}  // namespace triad::simt
