// A cooperative scheduler of fibers on the calling OS thread, for the SIMT emulator
// (simt_emulator.h): each emulated GPU thread is a fiber that runs until it waits (a barrier, a
// warp instruction, a spin on memory), so a block of 128 threads costs context switches of a few
// hundred nanoseconds where it cost OS-thread wake-ups before, and the interleaving is the same
// on every run. Where every unfinished fiber waits for a wake-up no fiber can give, the launch
// fails with a message (a kernel that hangs on the GPU) instead of hanging.
//
// The order is depth first: fibers woken by a barrier run before the ones that have not reached
// it yet. So the first warp of a block runs all the way to the next block-wide barrier before the
// second starts: the warps drift as far apart as the barriers let them, and a barrier a kernel
// lacks shows as a read of data not yet written, or overwritten.
//
// Interface: spawn() the bodies, run() them; inside a body, FiberScheduler::current() gives
// running(), yield() (to the back of the ready queue), block() (until another fiber wakes this
// one with wake_first()). Linux (ucontext, mmap); each fiber's stack ends in a guard page.
#pragma once

#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <deque>
#include <functional>
#include <memory>
#include <utility>
#include <vector>

namespace triad::simt {

// Ends the test with the emulator's message: what would hang or corrupt on the GPU.
[[noreturn]] inline void fail(const char* what) {
  std::fprintf(stderr, "simt emulator: %s\n", what);
  std::abort();
}

class FiberScheduler {
 public:
  // The kernels' bodies keep register tiles and the emulator's per-thread state on this stack.
  static constexpr size_t kStackBytes = 512 * 1024;

  FiberScheduler() = default;
  FiberScheduler(const FiberScheduler&) = delete;
  FiberScheduler& operator=(const FiberScheduler&) = delete;
  ~FiberScheduler() {
    for (auto& f : fibers_) munmap(f->stack, f->mapped);
  }

  // Adds a fiber; returns its index (the order in which fibers first run: spawn order).
  int spawn(std::function<void()> body) {
    auto f = std::make_unique<Fiber>();
    const size_t page = size_t(sysconf(_SC_PAGESIZE));
    f->mapped = kStackBytes + page;
    f->stack = mmap(nullptr, f->mapped, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (f->stack == MAP_FAILED) fail("cannot map a fiber's stack");
    mprotect(f->stack, page, PROT_NONE);  // the guard page below the stack: overflow faults
    f->body = std::move(body);
    if (getcontext(&f->context) != 0) fail("getcontext failed");
    f->context.uc_stack.ss_sp = static_cast<char*>(f->stack) + page;
    f->context.uc_stack.ss_size = kStackBytes;
    f->context.uc_link = &main_;
    makecontext(&f->context, &FiberScheduler::trampoline, 0);
    fibers_.push_back(std::move(f));
    ready_.push_back(int(fibers_.size()) - 1);
    return int(fibers_.size()) - 1;
  }

  // Runs every fiber to its end. Fails if fibers remain that all wait to be woken.
  void run() {
    if (current_ != nullptr) fail("fiber schedulers do not nest");
    current_ = this;
    size_t finished = 0;
    while (finished < fibers_.size()) {
      if (ready_.empty())
        fail("every remaining thread waits for one that never arrives (a hang on the GPU)");
      running_ = ready_.front();
      ready_.pop_front();
      Fiber& f = *fibers_[size_t(running_)];
      swapcontext(&main_, &f.context);
      if (f.done) ++finished;
    }
    running_ = -1;
    current_ = nullptr;
  }

  // The scheduler running on this OS thread (inside a fiber's body).
  static FiberScheduler& current() {
    if (current_ == nullptr) fail("no fiber scheduler is running on this thread");
    return *current_;
  }
  int running() const { return running_; }

  // Lets every other ready fiber run once before this one goes on.
  void yield() {
    if (ready_.empty()) return;
    ready_.push_back(running_);
    suspend();
  }
  // Suspends this fiber until some fiber wakes it (wake_first).
  void block() { suspend(); }
  // Makes the fibers ready, to run in this order before every fiber ready already.
  void wake_first(const std::vector<int>& fibers) {
    ready_.insert(ready_.begin(), fibers.begin(), fibers.end());
  }

 private:
  struct Fiber {
    ucontext_t context;
    void* stack = nullptr;
    size_t mapped = 0;
    std::function<void()> body;
    bool done = false;
  };

  static void trampoline() {
    FiberScheduler& s = *current_;
    Fiber& f = *s.fibers_[size_t(s.running_)];
    f.body();
    f.done = true;  // returns to main_ through uc_link
  }
  void suspend() { swapcontext(&fibers_[size_t(running_)]->context, &main_); }

  std::vector<std::unique_ptr<Fiber>> fibers_;
  std::deque<int> ready_;
  ucontext_t main_{};
  int running_ = -1;
  static inline thread_local FiberScheduler* current_ = nullptr;
};

// A barrier of n fibers whose last arrival runs `completion` before releasing the others (the
// fiber counterpart of std::barrier<Completion>).
template <class Completion = void (*)()>
class FiberBarrier {
 public:
  explicit FiberBarrier(
      int n, Completion completion = [] {})
      : n_(n), completion_(completion) {}
  void arrive_and_wait() {
    FiberScheduler& s = FiberScheduler::current();
    if (++arrived_ < n_) {
      waiting_.push_back(s.running());
      s.block();
      return;
    }
    completion_();
    arrived_ = 0;
    s.wake_first(waiting_);
    waiting_.clear();
  }

 private:
  int n_, arrived_ = 0;
  Completion completion_;
  std::vector<int> waiting_;
};

}  // namespace triad::simt
