// CommRequest's rule that every pending request is waited for (include/triad/parallel/comm.h):
// NCCL's non-blocking collectives order the compute stream after themselves only in wait(), so a
// request dropped or assigned over while pending would be a silent race; it stops the rank
// instead. A completion action alone makes a request pending, which needs no MPI here.
#include <gtest/gtest.h>

#include <stdexcept>
#include <utility>

#include "triad/parallel/comm.h"

namespace triad {
namespace {

CommRequest pending_request(int* runs) {
  CommRequest r;
  r.on_complete([runs] { ++*runs; });
  return r;
}

TEST(CommRequest, WaitedRequestsGoQuietlyAndActOnce) {
  int runs = 0;
  {
    CommRequest r = pending_request(&runs);
    CommRequest moved = std::move(r);  // (the moved-from one is no longer pending)
    EXPECT_FALSE(r.pending());
    EXPECT_TRUE(moved.pending());
    moved.wait();
    moved.wait();
    EXPECT_FALSE(moved.pending());
    moved = pending_request(&runs);  // over a finished request: allowed
    moved.wait();
  }
  EXPECT_EQ(runs, 2);
}

TEST(CommRequest, DroppedWhileAnExceptionUnwindsIsNotAnError) {
  int runs = 0;
  EXPECT_THROW(
      {
        CommRequest r = pending_request(&runs);
        throw std::runtime_error("a failure elsewhere");
      },
      std::runtime_error);
  EXPECT_EQ(runs, 0);
}

TEST(CommRequestDeathTest, DroppedPendingStopsTheRank) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  int runs = 0;
  EXPECT_DEATH({ CommRequest r = pending_request(&runs); },
               "pending communication request was destroyed before its wait");
}

TEST(CommRequestDeathTest, AssignedOverPendingStopsTheRank) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  int runs = 0;
  EXPECT_DEATH(
      {
        CommRequest r = pending_request(&runs);
        r = pending_request(&runs);
        r.wait();
      },
      "pending communication request was assigned over before its wait");
}

}  // namespace
}  // namespace triad
