// run.hang_minutes: a thread that ends the job when its rank makes no progress for that long.
//
// A rank whose peer died, or hangs in I/O or a kernel, waits in its next collective for ever:
// neither MPI nor NCCL times out there, and the job would hold its nodes until the scheduler's
// limit (PyTorch's NCCL watchdog and Megatron's straggler detection exist for the same reason).
// The trainer marks its progress (each step, micro-batch, evaluation, checkpoint save) and the
// watchdog, finding no mark for the limit, reports the last one and calls on_hang once, from
// its own thread; the trainer's ends the job (MPI_Abort), with the message naming the rank and
// what it was doing. Marks are a few relaxed atomic stores: nothing is measured in the step.
// A process stopped and continued (SLURM's suspend, SIGSTOP/SIGCONT) is not taken for a hang:
// the watchdog's own poll then comes late by the stop's length, which counts as progress.
// A probe, asked at every poll, can end the job sooner: a transport that knows a collective
// failed (NCCL's asynchronous errors: a peer died, the network broke; Comm::async_error) would
// otherwise leave this rank waiting for the whole limit. Its non-empty answer is reported once.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <string>
#include <thread>

namespace triad {

class HangWatchdog {
 public:
  // limit_s <= 0: no thread, and mark() records only. on_hang gets the report (one line).
  // probe (may be empty): called from the watchdog's thread at every poll; a non-empty answer
  // is an error that ends the job at once (on_hang with it and the last mark).
  HangWatchdog(double limit_s, std::function<void(const std::string&)> on_hang,
               std::function<std::string()> probe = {});
  ~HangWatchdog();  // stops the thread (on_hang is not called after)
  HangWatchdog(const HangWatchdog&) = delete;
  HangWatchdog& operator=(const HangWatchdog&) = delete;

  // The rank began `phase` (a string literal: kept by its pointer) of step `step`.
  void mark(const char* phase, int64_t step);
  // The same, for a phase with no time limit until the next mark: a checkpoint's save, which for
  // hundreds of gigabytes on slow storage can outlast any fixed limit (cut short, the job would
  // lose the checkpoint it was writing).
  void mark_untimed(const char* phase, int64_t step);

 private:
  // How often the thread looks: a quarter of the limit, at most every 5 seconds.
  double poll_seconds() const;
  void watch();
  static int64_t now_ns();

  double limit_s_;
  std::function<void(const std::string&)> on_hang_;
  std::function<std::string()> probe_;
  std::atomic<int64_t> last_ns_;
  std::atomic<const char*> phase_{"start-up"};
  std::atomic<int64_t> step_{0};
  std::atomic<bool> untimed_{false};
  std::mutex mutex_;
  std::condition_variable wake_;
  bool stop_ = false;
  std::thread thread_;
};

}  // namespace triad
