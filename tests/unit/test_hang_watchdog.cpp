// HangWatchdog (run.hang_minutes): reports once, with the last mark, when marks stop for the
// limit; never while they come, never with no limit, never after it is destroyed; a probe's
// error (a transport's: NCCL's asynchronous errors) at its next poll, while marks still come.
// (Times here are the mechanism under test, with margins of seconds, not a measurement.)
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <mutex>
#include <string>
#include <thread>

#include "triad/train/hang_watchdog.h"

namespace triad {
namespace {

using namespace std::chrono_literals;

struct Reports {
  std::mutex m;
  std::string last;
  std::atomic<int> count{0};
  auto sink() {
    return [this](const std::string& r) {
      std::lock_guard<std::mutex> lock(m);
      last = r;
      ++count;
    };
  }
  // The report, waited for up to 10 s (its text: the last mark's phase and step).
  std::string first() {
    for (int i = 0; i < 200 && count == 0; ++i) std::this_thread::sleep_for(50ms);
    return count == 1 ? last : "(" + std::to_string(count) + " reports)";
  }
};

TEST(HangWatchdog, ReportsTheLastMarkOnceWhenMarksStop) {
  Reports r;
  HangWatchdog w(0.2, r.sink());
  w.mark("the pipeline schedule", 7);
  const std::string report = r.first();
  EXPECT_NE(report.find("no progress for "), std::string::npos) << report;
  EXPECT_NE(report.find(" in the pipeline schedule of step 7"), std::string::npos) << report;
  std::this_thread::sleep_for(500ms);
  EXPECT_EQ(r.count, 1) << "one report, then the thread ends";
}

TEST(HangWatchdog, QuietWhileMarksCome) {
  Reports r;
  HangWatchdog w(2.0, r.sink());
  for (int i = 0; i < 100; ++i) {
    w.mark("a micro-batch's forward and backward", i);
    std::this_thread::sleep_for(10ms);
  }
  EXPECT_EQ(r.count, 0);
}

TEST(HangWatchdog, AnUntimedPhaseWaitsForTheNextMark) {
  Reports r;
  HangWatchdog w(0.2, r.sink());
  w.mark_untimed("the checkpoint's save", 4);
  std::this_thread::sleep_for(800ms);
  EXPECT_EQ(r.count, 0) << "a save is not timed";
  w.mark("the step's end", 4);
  const std::string report = r.first();
  EXPECT_NE(report.find(" in the step's end of step 4"), std::string::npos) << report;
}

TEST(HangWatchdog, AProbesErrorIsReportedAtTheNextPoll) {
  Reports r;
  std::atomic<bool> broken{false};
  std::atomic<int> asked{0};
  HangWatchdog w(2.0, r.sink(), [&] {
    ++asked;
    return broken ? std::string(
                        "NCCL reports an error in the dp communicator: remote process "
                        "exited or there was a network error")
                  : std::string();
  });
  for (int i = 0; i < 40; ++i) {  // marks keep coming: no hang
    w.mark("the gradients' reduction", 9);
    std::this_thread::sleep_for(10ms);
  }
  EXPECT_EQ(r.count, 0) << "nothing to report yet";
  broken = true;
  std::thread marks([&] {  // still marking: the probe alone ends it
    for (int i = 0; i < 150 && r.count == 0; ++i) {
      w.mark("the gradients' reduction", 9);
      std::this_thread::sleep_for(10ms);
    }
  });
  const std::string report = r.first();
  marks.join();
  EXPECT_NE(report.find("NCCL reports an error in the dp communicator"), std::string::npos)
      << report;
  EXPECT_NE(report.find("(in the gradients' reduction of step 9)"), std::string::npos) << report;
  EXPECT_GE(asked, 1);
}

TEST(HangWatchdog, NoLimitNoThread) {
  Reports r;
  HangWatchdog w(0.0, r.sink());
  w.mark("evaluation", 1);
  std::this_thread::sleep_for(300ms);
  EXPECT_EQ(r.count, 0);
}

TEST(HangWatchdog, DestroyedBeforeTheLimitNeverReports) {
  Reports r;
  {
    HangWatchdog w(0.5, r.sink());
    w.mark("the step's end", 3);
  }
  std::this_thread::sleep_for(800ms);
  EXPECT_EQ(r.count, 0);
}

}  // namespace
}  // namespace triad
