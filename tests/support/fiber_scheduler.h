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
// one with wake_first()). Linux (mmap); each fiber's stack ends in a guard page. The switch is a
// few instructions on x86-64 (FiberContext) and ucontext's elsewhere.
#pragma once

// TRIAD_SIMT_UCONTEXT: switch with ucontext on x86-64 too (tools that follow stacks, such as
// AddressSanitizer and valgrind, know swapcontext).
#if defined(__x86_64__) && !defined(TRIAD_SIMT_UCONTEXT)
#define TRIAD_SIMT_STACK_SWITCH 1
#endif

#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <functional>
#include <memory>
#include <utility>
#include <vector>

#if defined(TRIAD_SIMT_STACK_SWITCH)
// Saves the callee-saved registers, the SSE control/status word and the x87 control word on the
// running stack, stores the stack pointer in *save and goes on with the stack `load` (saved the
// same way, or made by FiberContext::make). glibc's swapcontext saves the signal mask besides,
// a system call at every switch: three quarters of the emulated kernels' time went there. A weak
// symbol: every test that includes this header defines it once.
extern "C" void triad_simt_switch(void** save, void* load);
__asm__(
    ".pushsection .text\n"
    ".weak triad_simt_switch\n"
    ".type triad_simt_switch, @function\n"
    "triad_simt_switch:\n"
    "  pushq %rbp\n"
    "  pushq %rbx\n"
    "  pushq %r12\n"
    "  pushq %r13\n"
    "  pushq %r14\n"
    "  pushq %r15\n"
    "  subq $8, %rsp\n"
    "  stmxcsr (%rsp)\n"
    "  fnstcw 4(%rsp)\n"
    "  movq %rsp, (%rdi)\n"
    "  movq %rsi, %rsp\n"
    "  ldmxcsr (%rsp)\n"
    "  fldcw 4(%rsp)\n"
    "  addq $8, %rsp\n"
    "  popq %r15\n"
    "  popq %r14\n"
    "  popq %r13\n"
    "  popq %r12\n"
    "  popq %rbx\n"
    "  popq %rbp\n"
    "  ret\n"
    ".size triad_simt_switch, .-triad_simt_switch\n"
    ".popsection\n");
#endif

namespace triad::simt {

// Ends the test with the emulator's message: what would hang or corrupt on the GPU.
[[noreturn]] inline void fail(const char* what) {
  std::fprintf(stderr, "simt emulator: %s\n", what);
  std::abort();
}

// Where a fiber (or the scheduler) stopped: make() starts one on a stack of its own at `entry`,
// which must never return; swap() saves the running one and resumes another.
#if defined(TRIAD_SIMT_STACK_SWITCH)
struct FiberContext {
  void* sp = nullptr;
  void make(void* stack, size_t bytes, void (*entry)()) {
    uint32_t csr = 0;
    uint16_t cw = 0;
    __asm__ volatile("stmxcsr %0" : "=m"(csr));
    __asm__ volatile("fnstcw %0" : "=m"(cw));
    auto* p = reinterpret_cast<uint64_t*>((reinterpret_cast<uintptr_t>(stack) + bytes) & ~15ull);
    *--p = 0;                              // entry's return address: entry never returns
    *--p = uint64_t(entry);                // where the first switch returns to
    for (int i = 0; i < 6; ++i) *--p = 0;  // rbp, rbx, r12-r15
    *--p = uint64_t(cw) << 32 | csr;       // the control words, as the switch saves them
    sp = p;                                // entry starts with rsp 8 past a 16-byte boundary (ABI)
  }
  static void swap(FiberContext& save, FiberContext& load) { triad_simt_switch(&save.sp, load.sp); }
};
#else
struct FiberContext {
  ucontext_t uc{};
  void make(void* stack, size_t bytes, void (*entry)()) {
    if (getcontext(&uc) != 0) fail("getcontext failed");
    uc.uc_stack.ss_sp = stack;
    uc.uc_stack.ss_size = bytes;
    uc.uc_link = nullptr;
    makecontext(&uc, entry, 0);
  }
  static void swap(FiberContext& save, FiberContext& load) { swapcontext(&save.uc, &load.uc); }
};
#endif

class FiberScheduler {
 public:
  // The kernels' bodies keep register tiles and the emulator's per-thread state on this stack.
  static constexpr size_t kStackBytes = 512 * 1024;

  FiberScheduler() = default;
  FiberScheduler(const FiberScheduler&) = delete;
  FiberScheduler& operator=(const FiberScheduler&) = delete;
  ~FiberScheduler() {
    for (auto& f : fibers_) stacks().give(f->stack);
  }

  // Adds a fiber; returns its index (the order in which fibers first run: spawn order).
  int spawn(std::function<void()> body) {
    auto f = std::make_unique<Fiber>();
    f->stack = stacks().take();
    f->body = std::move(body);
    f->context.make(static_cast<char*>(f->stack) + stacks().page, kStackBytes,
                    &FiberScheduler::trampoline);
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
      FiberContext::swap(main_, f.context);
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
  // The stacks of this OS thread's fibers, mapped once and kept for the next launch: mapping,
  // protecting, faulting in and unmapping 128 stacks per launch took most of the time once the
  // switches were cheap. A guard page below each stack: an overflow faults.
  struct StackPool {
    const size_t page = size_t(sysconf(_SC_PAGESIZE));
    std::vector<void*> spare;
    void* take() {
      if (!spare.empty()) {
        void* s = spare.back();
        spare.pop_back();
        return s;
      }
      void* s = mmap(nullptr, kStackBytes + page, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (s == MAP_FAILED) fail("cannot map a fiber's stack");
      mprotect(s, page, PROT_NONE);
      return s;
    }
    void give(void* s) { spare.push_back(s); }
    ~StackPool() {
      for (void* s : spare) munmap(s, kStackBytes + page);
    }
  };
  static StackPool& stacks() {
    static thread_local StackPool pool;
    return pool;
  }

  struct Fiber {
    FiberContext context;
    void* stack = nullptr;
    std::function<void()> body;
    bool done = false;
  };

  static void trampoline() {
    FiberScheduler& s = *current_;
    Fiber& f = *s.fibers_[size_t(s.running_)];
    f.body();
    f.done = true;
    FiberContext::swap(f.context, s.main_);  // never resumed
    fail("a finished fiber was resumed");
  }
  void suspend() { FiberContext::swap(fibers_[size_t(running_)]->context, main_); }

  std::vector<std::unique_ptr<Fiber>> fibers_;
  std::deque<int> ready_;
  FiberContext main_;
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
