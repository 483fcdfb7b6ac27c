#include "triad/train/hang_watchdog.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <sstream>

namespace triad {

HangWatchdog::HangWatchdog(double limit_s, std::function<void(const std::string&)> on_hang,
                           std::function<std::string()> probe)
    : limit_s_(limit_s),
      on_hang_(std::move(on_hang)),
      probe_(std::move(probe)),
      last_ns_(now_ns()) {
  if (limit_s_ > 0) thread_ = std::thread([this] { watch(); });
}

HangWatchdog::~HangWatchdog() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_ = true;
  }
  wake_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void HangWatchdog::mark(const char* phase, int64_t step) {
  // (the phase before the time: a report that reads the new time reads this phase or a later)
  phase_.store(phase, std::memory_order_relaxed);
  step_.store(step, std::memory_order_relaxed);
  untimed_.store(false, std::memory_order_relaxed);
  last_ns_.store(now_ns(), std::memory_order_release);
}

void HangWatchdog::mark_untimed(const char* phase, int64_t step) {
  mark(phase, step);
  untimed_.store(true, std::memory_order_relaxed);
}

double HangWatchdog::poll_seconds() const { return std::min(5.0, limit_s_ / 4); }

int64_t HangWatchdog::now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

void HangWatchdog::watch() {
  const auto poll = std::chrono::duration<double>(poll_seconds());
  std::unique_lock<std::mutex> lock(mutex_);
  int64_t polled = now_ns();
  while (!wake_.wait_for(lock, poll, [this] { return stop_; })) {
    const int64_t now = now_ns();
    // Late by far more than a busy machine delays a wake-up: the process was stopped (its
    // peers too, under a job's suspension); the time it stood still is no rank's hang.
    const bool stopped = double(now - polled) * 1e-9 > 3 * poll_seconds() + 10;
    polled = now;
    if (stopped) last_ns_.store(now, std::memory_order_release);
    if (probe_) {  // a transport's error ends the job now, whatever the phase
      const std::string error = probe_();
      if (!error.empty()) {
        std::ostringstream os;
        os << error << " (in " << phase_.load(std::memory_order_relaxed) << " of step "
           << step_.load(std::memory_order_relaxed)
           << "); ending the job (resume with --resume auto)";
        lock.unlock();
        on_hang_(os.str());
        return;
      }
    }
    if (untimed_.load(std::memory_order_relaxed)) continue;
    const double idle = double(now - last_ns_.load(std::memory_order_acquire)) * 1e-9;
    if (idle < limit_s_) continue;
    std::ostringstream os;
    char minutes[32];
    std::snprintf(minutes, sizeof minutes, "%.1f", idle / 60);
    os << "no progress for " << minutes << " min, in " << phase_.load(std::memory_order_relaxed)
       << " of step " << step_.load(std::memory_order_relaxed)
       << ": a rank that died or hangs leaves the others waiting in a collective; ending the job "
          "(run.hang_minutes; resume with --resume auto)";
    lock.unlock();
    on_hang_(os.str());
    return;
  }
}

}  // namespace triad
