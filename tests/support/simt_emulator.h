// A CPU emulator of a CUDA thread block, for kernels written against a thread context (see
// src/kernels/cuda/flash_attention_block.h): every thread of a block is a fiber
// (fiber_scheduler.h) that runs until it waits, the block barrier a fiber barrier, and the
// warp-wide instructions (shfl.xor, ldmatrix, mma.m16n8k16,
// cp.async) and the warpgroup-wide wgmma.mma_async (m64nNk16 bf16, operands through shared-memory
// descriptors, no swizzle or the 128-byte one, or A from registers) are carried out from their
// PTX ISA
// definitions: each lane deposits its operands, the last to arrive computes every lane's
// result, and the lanes read theirs back.
//
// It checks what the hardware would not forgive: lanes of a warp that reach different warp
// instructions (divergence), ldmatrix rows and cp.async destinations outside shared memory or
// not 16-byte aligned, cp.async sources not 16-byte aligned, copies never waited for, wgmma
// descriptors that differ between the threads of a warpgroup or point outside shared memory,
// wgmma reading shared memory that cp.async or store_shared32 wrote without the writing
// thread's fence.proxy.async (wgmma reads through the async proxy), wgmma issued without a
// wgmma.fence since the last wait, register A operands changed before the wait, swizzled
// descriptors starting where no canonical layout starts, wgmma accumulators written between the
// issue and the wait (read there they are NaN), and wgmma left pending. Those
// abort with a message (a hang or garbage on the GPU). Shared memory starts filled with 0xFF
// bytes (bf16 NaN), so values read before they are written show as NaN.
//
// mbarriers and the bulk tensor copy (cp.async.bulk.tensor, 3-d, no swizzle or the 128-byte
// one) follow the PTX
// definitions too: a phase completes when its pending arrivals and its transaction bytes both
// reach zero, and a wait on a parity returns once that phase has completed. What hangs or
// corrupts on the GPU aborts here: a copy into unaligned or outside shared memory, a box that does
// not fit, a tensor map the driver would reject (tensor_map checks what cuTensorMapEncodeTiled
// does), a barrier used before mbarrier.init or signalled by a copy before
// fence.mbarrier_init, more bytes delivered than expected, a wait that never completes, a wait
// on a parity other than the thread's next phase of that barrier (a stale or skipped phase), a
// copy or store that overwrites a live barrier, wgmma reading a bulk copy's destination before it
// landed (or ldmatrix reading it), and a block that ends with copies or arrivals outstanding. A
// bulk copy's destination reads as NaN from its issue until it lands.
//
// cp.async and bulk copies land either when issued or only when waited for (`CopyTiming`);
// running a kernel both ways catches a tile read before its wait and a buffer refilled while
// other warps still read it.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "../../src/kernels/cuda/block_program.h"
#include "../../src/kernels/cuda/box_map_shape.h"
#include "fiber_scheduler.h"
#include "triad/core/bf16.h"
#include "triad/core/fp8.h"

namespace triad::simt {

enum class CopyTiming { at_issue, at_wait };

inline float bf16_value(uint16_t bits) { return to_float(bf16_t{bits}); }

// The shared-memory address of a block's first byte of dynamic shared memory. Not a multiple of
// 1 KB on purpose: code that needs more alignment than the launch promises must align itself.
constexpr uint32_t kSmemWindow = 128;

// The 128-byte swizzle of a shared-memory address: its 16-byte chunk (bits 4-6) XOR its row of
// 128 bytes within 1 KB (bits 7-9), as the bulk copies write and wgmma reads such layouts.
inline uint32_t swizzle128(uint32_t address) { return address ^ (((address >> 7) & 7u) << 4); }

// The emulated tensor map of a 3-d bf16 tensor (what the kernels' tma_load_3d reads here in
// place of the driver's CUtensorMap).
struct TensorMap {
  const unsigned char* base;
  BoxMapShape shape;
};

// The map `shape` describes at base, checked as cuTensorMapEncodeTiled checks it (no
// interleave): 16-byte aligned address, strides multiples of 16 bytes below 2^40, dims in
// [1, 2^32], box sizes in [1, 256] with the inner one a multiple of 16 bytes, and at most 128
// bytes with the 128-byte swizzle.
inline TensorMap tensor_map(const void* base, const BoxMapShape& shape) {
  if (reinterpret_cast<uintptr_t>(base) % 16 != 0) fail("tensor map address not 16-byte aligned");
  for (uint64_t d : shape.dims)
    if (d == 0 || d > (uint64_t(1) << 32)) fail("tensor map dimension out of range");
  for (uint64_t st : shape.strides)
    if (st % 16 != 0 || st >= (uint64_t(1) << 40)) fail("tensor map stride not a multiple of 16");
  for (uint32_t b : shape.box)
    if (b == 0 || b > 256) fail("tensor map box size out of [1, 256]");
  if (shape.box[0] * 2 % 16 != 0) fail("tensor map box's inner size not a multiple of 16 bytes");
  if (shape.swizzle128 && shape.box[0] * 2 > 128)
    fail("tensor map box's inner size exceeds the 128-byte swizzle span");
  return TensorMap{static_cast<const unsigned char*>(base), shape};
}

// The operands and results of one lane in one warp instruction.
struct Slot {
  enum Op { none, shfl, ldsm, ldsm_t, mma } op = none;
  int mask = 0;
  uint64_t value = 0, shuffled = 0;  // shfl: this lane's value (any type up to 8 bytes), result
  const unsigned char* addr = nullptr;
  uint32_t a[4] = {}, b[2] = {};
  float c[4] = {};
  uint32_t r[4] = {};
  float d[4] = {};
};

class Block;
class Thread;

// The writer (Block::writer_) of a word of shared memory a bulk copy will write when it lands.
constexpr int kInFlight = -2;

// Executes the oldest pending wgmma groups of a warpgroup (run by the last thread to arrive).
struct GroupStep {
  Block* block;
  void operator()() noexcept;
  // One bf16 element of shared memory at a shared-memory address, as the wgmma being executed
  // reads it: inside the block's shared memory, landed, and not written by an unfenced cp.async
  // or st.shared.
  float read(size_t address) const;
};

// Computes every lane's result of the warp instruction in slots[phase] (run once per
// instruction, by the last lane to arrive).
struct WarpStep {
  Slot (*slots)[32];
  int* phase;
  const Block* block;
  void operator()() noexcept;
};

struct Warp {
  Slot slots[2][32];
  int phase = 0;  // which slot set the next instruction uses (toggled by the completion step)
  FiberBarrier<WarpStep> bar;
  explicit Warp(const Block* block) : bar(32, WarpStep{slots, &phase, block}) {}
};

class Block {
 public:
  static constexpr size_t kSmemGuard = 4096;
  static constexpr unsigned char kGuardByte = 0xA5;
  Block(int bx, int by, int threads, size_t smem_bytes, CopyTiming timing)
      : bx_(bx),
        by_(by),
        timing_(timing),
        smem_(smem_bytes + 128 + kSmemGuard, 0xFF),
        sync_(threads),
        group_(threads, GroupStep{this}),
        threads_(size_t(threads), nullptr),
        writer_(smem_bytes / 4 + 1, -1) {
    base_ = smem_.data() + (128 - reinterpret_cast<uintptr_t>(smem_.data()) % 128) % 128;
    size_ = smem_bytes;
    std::fill(base_ + size_, base_ + size_ + kSmemGuard, kGuardByte);
    for (int w = 0; w < (threads + 31) / 32; ++w) warps_.push_back(std::make_unique<Warp>(this));
  }
  ~Block() {
    // A program using more shared memory than its launch gives it (a size function that
    // forgot an array) writes past the end: the guard bytes after it must be untouched.
    for (size_t i = 0; i < kSmemGuard; ++i)
      if (base_[size_ + i] != kGuardByte)
        fail(("shared memory written past the launch's size (byte " + std::to_string(i) +
              " after its end)")
                 .c_str());
    for (const auto& [at, b] : barriers_)
      if (!b.in_flight.empty() || b.pending != b.arrivals || b.tx != 0)
        fail("block ended with bulk copies or mbarrier arrivals outstanding");
  }
  // How often a thread of this block lets the others run at a load_l2_2, times 1 + its warp:
  // warps, and the blocks of a concurrent launch, run at different speeds (as warps scheduled
  // unevenly and SMs that do not keep pace do), so a warp finishes before another, and a later
  // block overtakes an earlier one, wherever the kernel does not keep them in order.
  int load_stalls = 1;

  bool in_smem(const void* p, size_t n) const {
    const auto* c = static_cast<const unsigned char*>(p);
    return c >= base_ && c + n <= base_ + size_;
  }
  // Whether the n bytes of shared memory at p (4-byte aligned) hold no bulk copy still in flight.
  bool landed(const void* p, size_t n) const {
    const size_t first = size_t(static_cast<const unsigned char*>(p) - base_) / 4;
    for (size_t w = first; w < first + n / 4; ++w)
      if (writer_[w] == kInFlight) return false;
    return true;
  }

 private:
  friend class Thread;
  friend struct GroupStep;
  int bx_, by_;
  CopyTiming timing_;
  std::vector<unsigned char> smem_;
  unsigned char* base_;
  size_t size_;
  FiberBarrier<> sync_;
  FiberBarrier<GroupStep> group_;  // the warpgroup (the whole block: 128 threads)
  std::vector<Thread*> threads_;
  // Per 4-byte word of shared memory: the thread whose cp.async or st.shared (store_shared32)
  // wrote it and has not yet executed fence.proxy.async since, or -1.
  std::vector<int> writer_;
  std::vector<std::unique_ptr<Warp>> warps_;
  // mbarriers by shared-memory offset, and the bulk copies not yet landed (CopyTiming::at_wait).
  struct BulkCopy {
    unsigned char* dst;
    const TensorMap* map;
    int c[3];
  };
  struct Barrier {
    int arrivals = 0, pending = 0;  // per phase; still to arrive in this one
    int64_t tx = 0;                 // transaction bytes still expected in this phase
    int phase = 0;
    int generation = 0;   // how many times this barrier was initialized
    bool fenced = false;  // fence.mbarrier_init executed since the init
    int init_thread = -1;
    std::vector<BulkCopy> in_flight;
  };
  std::map<size_t, Barrier> barriers_;
};

// Fails if ldmatrix reads 16 bytes a bulk copy has not landed yet.
inline void check_landed(const Block* block, const unsigned char* p) {
  if (!block->landed(p, 16)) fail("ldmatrix reads a bulk copy's destination before it landed");
}

inline void check_row(const Block* block, const unsigned char* p) {
  if (!block->in_smem(p, 16)) fail("ldmatrix row address outside shared memory");
  if (reinterpret_cast<uintptr_t>(p) % 16 != 0) fail("ldmatrix row address not 16-byte aligned");
}

inline uint16_t load16(const unsigned char* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return v;
}

inline void WarpStep::operator()() noexcept {
  Slot* s = slots[*phase];
  *phase ^= 1;
  for (int l = 1; l < 32; ++l)
    if (s[l].op != s[0].op || (s[0].op == Slot::shfl && s[l].mask != s[0].mask))
      fail("lanes of a warp reached different warp instructions");
  switch (s[0].op) {
    case Slot::shfl:
      for (int l = 0; l < 32; ++l) s[l].shuffled = s[l ^ s[0].mask].value;
      break;
    case Slot::ldsm:    // register j of lane l: row l/4 of matrix j, columns 2(l%4), +1
    case Slot::ldsm_t:  // register j of lane l: rows 2(l%4), +1 of matrix j, column l/4
      for (int l = 0; l < 32; ++l) check_row(block, s[l].addr);
      for (int l = 0; l < 32; ++l) check_landed(block, s[l].addr);
      for (int l = 0; l < 32; ++l)
        for (int j = 0; j < 4; ++j) {
          uint16_t lo, hi;
          if (s[0].op == Slot::ldsm) {
            const unsigned char* row = s[8 * j + l / 4].addr;
            lo = load16(row + 2 * (2 * (l % 4)));
            hi = load16(row + 2 * (2 * (l % 4) + 1));
          } else {
            lo = load16(s[8 * j + 2 * (l % 4)].addr + 2 * (l / 4));
            hi = load16(s[8 * j + 2 * (l % 4) + 1].addr + 2 * (l / 4));
          }
          s[l].r[j] = uint32_t(lo) | uint32_t(hi) << 16;
        }
      break;
    case Slot::mma: {  // D[16][8] = A[16][16] · B[16][8] + C, fp32 accumulation
      float A[16][16], B[16][8], D[16][8];
      for (int l = 0; l < 32; ++l) {
        const int g = l / 4, t = l % 4;
        for (int reg = 0; reg < 4; ++reg)
          for (int e = 0; e < 2; ++e) {
            const uint16_t v = uint16_t(e ? s[l].a[reg] >> 16 : s[l].a[reg] & 0xffffu);
            A[g + 8 * (reg & 1)][2 * t + e + 8 * (reg >> 1)] = bf16_value(v);
          }
        for (int reg = 0; reg < 2; ++reg)
          for (int e = 0; e < 2; ++e) {
            const uint16_t v = uint16_t(e ? s[l].b[reg] >> 16 : s[l].b[reg] & 0xffffu);
            B[2 * t + e + 8 * reg][g] = bf16_value(v);
          }
        for (int i = 0; i < 4; ++i) D[g + 8 * (i / 2)][2 * t + i % 2] = s[l].c[i];
      }
      for (int r = 0; r < 16; ++r)
        for (int n = 0; n < 8; ++n) {
          float acc = D[r][n];
          for (int k = 0; k < 16; ++k) acc += A[r][k] * B[k][n];
          D[r][n] = acc;
        }
      for (int l = 0; l < 32; ++l)
        for (int i = 0; i < 4; ++i) s[l].d[i] = D[l / 4 + 8 * (i / 2)][2 * (l % 4) + i % 2];
      break;
    }
    case Slot::none:
      fail("warp instruction without an operation");
  }
}

// The thread context a kernel body runs against (the X of flash_attention_block.h).
class Thread {
 public:
  Thread(Block& block, int tid) : block_(block), tid_(tid) { block.threads_[size_t(tid)] = this; }
  ~Thread() {
    if (!pending_.empty() || !groups_.empty()) fail("cp.async copies never waited for");
    if (!wg_pending_.empty() || !wg_groups_.empty()) fail("wgmma never waited for");
  }

  int thread() const { return tid_; }
  int block_x() const { return block_.bx_; }
  int block_y() const { return block_.by_; }
  unsigned char* smem() { return block_.base_; }
  void sync_threads() { block_.sync_.arrive_and_wait(); }

  template <class T>
  T shfl_xor(T v, int mask) {
    static_assert(sizeof(T) <= 8);
    Slot& s = deposit(Slot::shfl);
    s.value = 0;
    std::memcpy(&s.value, &v, sizeof v);
    s.mask = mask;
    const uint64_t got = collect().shuffled;
    T r;
    std::memcpy(&r, &got, sizeof r);
    return r;
  }
  void ldsm_x4(uint32_t (&r)[4], const uint16_t* row) { ldsm(r, row, Slot::ldsm); }
  void ldsm_x4_t(uint32_t (&r)[4], const uint16_t* row) { ldsm(r, row, Slot::ldsm_t); }
  void mma(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    Slot& s = deposit(Slot::mma);
    std::memcpy(s.a, a, sizeof s.a);
    s.b[0] = b0;
    s.b[1] = b1;
    std::memcpy(s.c, d, sizeof s.c);
    std::memcpy(d, collect().d, sizeof s.d);
  }

  void cp_async16(void* dst, const void* src, bool valid) {
    if (!block_.in_smem(dst, 16)) fail("cp.async destination outside shared memory");
    if (reinterpret_cast<uintptr_t>(dst) % 16 != 0 || reinterpret_cast<uintptr_t>(src) % 16 != 0)
      fail("cp.async address not 16-byte aligned");
    Copy c{static_cast<unsigned char*>(dst),
           valid ? static_cast<const unsigned char*>(src) : nullptr};
    if (block_.timing_ == CopyTiming::at_issue)
      perform(c);
    else
      pending_.push_back(c);
  }
  void cp_commit() {
    groups_.push_back(std::move(pending_));
    pending_.clear();
  }
  template <int N>
  void cp_wait() {
    while (groups_.size() > size_t(N)) {
      for (const Copy& c : groups_.front()) perform(c);
      groups_.pop_front();
    }
  }

  // ---- mbarriers and the bulk tensor copy (sm_90)
  void mbarrier_init(uint64_t* bar, uint32_t arrivals) {
    const size_t at = barrier_offset(bar);
    Block::Barrier& b = block_.barriers_[at];
    if (!b.in_flight.empty() || b.tx != 0 || b.pending != b.arrivals)
      fail("mbarrier.init of a barrier with copies or arrivals outstanding");
    const int generation = b.generation + 1;
    b = Block::Barrier{};
    b.generation = generation;
    b.arrivals = b.pending = int(arrivals);
    b.init_thread = tid_;
    std::memset(bar, 0, sizeof *bar);  // its memory is the barrier now, not NaN data
  }
  void fence_barrier_init() {
    for (auto& [at, b] : block_.barriers_)
      if (b.init_thread == tid_) b.fenced = true;
  }
  void mbarrier_expect_tx(uint64_t* bar, uint32_t bytes) { barrier(bar).tx += bytes; }
  void mbarrier_arrive(uint64_t* bar) {
    Block::Barrier& b = barrier(bar);
    if (b.pending == 0) fail("mbarrier.arrive on a phase with no arrival pending");
    --b.pending;
    advance(b, false);
  }
  void mbarrier_wait(uint64_t* bar, uint32_t parity) {
    const auto start = std::chrono::steady_clock::now();
    for (;;) {
      Block::Barrier& b = barrier(bar);
      // This thread's next phase of the barrier (phases are waited for in order, each once).
      auto& [generation, next] = next_phase_[barrier_offset(bar)];
      if (generation != b.generation) generation = b.generation, next = 0;
      if (uint32_t(next & 1) != parity)
        fail("mbarrier wait on a parity other than this thread's next phase of the barrier");
      advance(b, true);
      if (uint32_t(b.phase & 1) != parity) {  // the phase of that parity completed
        ++next;
        return;
      }
      if (std::chrono::steady_clock::now() - start > std::chrono::seconds(30))
        fail("mbarrier wait never completes (a hang on the GPU)");
      FiberScheduler::current().yield();
    }
  }
  void tma_load_3d(void* dst, const void* map, int c0, int c1, int c2, uint64_t* bar) {
    const auto* m = static_cast<const TensorMap*>(map);
    if (m == nullptr) fail("bulk tensor copy without a tensor map");
    const uint32_t* box = m->shape.box;
    const size_t bytes = size_t(box[0]) * box[1] * box[2] * 2;
    if (!block_.in_smem(dst, bytes)) fail("bulk tensor copy's box outside shared memory");
    if (smem_address(dst) % (m->shape.swizzle128 ? 1024 : 128) != 0)
      fail("bulk tensor copy destination not aligned (128 bytes; 1 KB with the 128-byte swizzle)");
    Block::Barrier& b = barrier(bar);
    if (!b.fenced) fail("bulk tensor copy signals an mbarrier before fence.mbarrier_init");
    const Block::BulkCopy copy{static_cast<unsigned char*>(dst), m, {c0, c1, c2}};
    check_no_barrier(copy.dst, bytes);
    if (block_.timing_ == CopyTiming::at_issue) {
      land(b, copy);
    } else {  // in flight: NaN to every reader, and not yet readable by wgmma
      std::memset(copy.dst, 0xFF, bytes);
      const size_t first = size_t(copy.dst - block_.base_) / 4;
      for (size_t w = first; w < first + bytes / 4; ++w) block_.writer_[w] = kInFlight;
      b.in_flight.push_back(copy);
    }
  }

  // ---- wgmma (sm_90a), executed when waited for
  uint32_t smem_address(const void* p) const {
    if (!block_.in_smem(p, 0)) fail("shared-memory address outside the block's shared memory");
    return kSmemWindow + uint32_t(static_cast<const unsigned char*>(p) - block_.base_);
  }
  void fence_proxy_async() {
    for (size_t w : written_)
      if (block_.writer_[w] == tid_) block_.writer_[w] = -1;
    written_.clear();
  }
  void wgmma_fence() { wg_fenced_ = true; }
  void keep(float&) {}
  void keep(uint32_t&) {}
  template <int N, int TransA, int TransB>
  void wgmma_ss(float* d, uint64_t da, uint64_t db) {
    if (!wg_fenced_) fail("wgmma issued without a wgmma.fence since the last wait");
    take_accumulator(d, N / 2);
    wg_pending_.push_back(WgOp{N, false, TransA, TransB, d, {}, nullptr, da, db});
  }
  template <int N, int TransB>
  void wgmma_rs(float* d, const uint32_t (&a)[4], uint64_t db) {
    if (!wg_fenced_) fail("wgmma issued without a wgmma.fence since the last wait");
    take_accumulator(d, N / 2);
    wg_pending_.push_back(WgOp{N, true, 0, TransB, d, {a[0], a[1], a[2], a[3]}, a, 0, db});
  }
  void wgmma_commit() {
    wg_groups_.push_back(std::move(wg_pending_));
    wg_pending_.clear();
  }
  template <int N>
  void wgmma_wait() {
    wg_keep_ = N;
    block_.group_.arrive_and_wait();
    release_accumulators();
    wg_fenced_ = false;
  }

  // 16-byte global or shared memory accesses (one vector instruction on the GPU: aligned).
  static Vec16 load16(const void* p) {
    if (reinterpret_cast<uintptr_t>(p) % 16 != 0) fail("16-byte load from a misaligned address");
    Vec16 v;
    std::memcpy(&v, p, sizeof v);
    return v;
  }
  static void store16(void* p, const Vec16& v) {
    if (reinterpret_cast<uintptr_t>(p) % 16 != 0) fail("16-byte store to a misaligned address");
    std::memcpy(p, &v, sizeof v);
  }

  // A 4-byte st.shared: recorded as a generic-proxy write (wgmma may read it only after this
  // thread's fence.proxy.async).
  void store_shared32(void* p, uint32_t v) {
    if (!block_.in_smem(p, 4)) fail("st.shared outside shared memory");
    if (reinterpret_cast<uintptr_t>(p) % 4 != 0) fail("4-byte st.shared to a misaligned address");
    check_no_barrier(static_cast<const unsigned char*>(p), 4);
    std::memcpy(p, &v, sizeof v);
    mark_written(static_cast<const unsigned char*>(p), 4);
  }
  // p[0] += a, p[1] += b, each atomically (the vector atomicAdd of sm_90 needs p 8-byte
  // aligned). The other threads' additions land between this thread's waits.
  static void atomic_add2(float* p, float a, float b) {
    if (reinterpret_cast<uintptr_t>(p) % 8 != 0) fail("float2 atomic add at a misaligned address");
    std::atomic_ref<float>(p[0]).fetch_add(a);
    std::atomic_ref<float>(p[1]).fetch_add(b);
  }

  // Global-memory accesses other blocks synchronize with (blocks of a concurrent launch run at
  // the same time here).
  void load_l2_2(const float* p, float& a, float& b) {
    if (reinterpret_cast<uintptr_t>(p) % 8 != 0) fail("8-byte load from a misaligned address");
    a = std::atomic_ref<const float>(p[0]).load(std::memory_order_relaxed);
    b = std::atomic_ref<const float>(p[1]).load(std::memory_order_relaxed);
    // Other ready threads run before this one stores what it computes from a and b, the faster
    // ones several times over: an unordered read-modify-write of data another block also updates
    // loses updates here, visibly.
    const int stalls = block_.load_stalls * (1 + tid_ / 32);
    for (int i = 0; i < stalls; ++i) FiberScheduler::current().yield();
  }
  static void wait_equal(const int* p, int v) {
    const auto start = std::chrono::steady_clock::now();
    while (std::atomic_ref<const int>(*p).load(std::memory_order_acquire) != v) {
      if (std::chrono::steady_clock::now() - start > std::chrono::seconds(30))
        fail("wait for a global value never completes (a hang on the GPU)");
      FiberScheduler::current().yield();
    }
  }
  static void store_release(int* p, int v) {
    std::atomic_ref<int>(*p).store(v, std::memory_order_release);
  }
  static void fence_device() { std::atomic_thread_fence(std::memory_order_seq_cst); }
  static int take_ticket(int* p) { return std::atomic_ref<int>(*p).fetch_add(1); }

  static float exp(float v) { return std::exp(v); }
  static float tanh(float v) { return std::tanh(v); }
  static float erf(float v) { return std::erf(v); }
  static double log(double v) { return std::log(v); }
  static double sqrt(double v) { return std::sqrt(v); }
  static float exp2(float v) { return std::exp2(v); }
  static float log2(float v) { return std::log2(v); }
  static uint32_t pack_bf16(float lo, float hi) {
    return uint32_t(to_bf16(lo).bits) | uint32_t(to_bf16(hi).bits) << 16;
  }
  static float bf16_float(uint16_t bits) { return bf16_value(bits); }
  // The fp8 byte of v: core/fp8.h's rounding (nearest even, saturating, NaN kept), encoded as the
  // OCP formats lay it out (sign, exponent with bias 7 or 15, 3 or 2 mantissa bits); NaN as
  // 0x7f. fp8x2: lo in the low byte.
  static uint8_t fp8(float v, Fp8Format f) {
    const float r = fp8_round(v, f);
    if (r != r) return 0x7f;
    const int mbits = f == Fp8Format::e4m3 ? 3 : 2, bias = f == Fp8Format::e4m3 ? 7 : 15;
    const unsigned sign = std::signbit(r) ? 0x80u : 0u;
    const float a = std::fabs(r);
    if (a == 0.0f) return uint8_t(sign);
    int e = 0;
    std::frexp(a, &e);  // a = m·2^e, m in [0.5, 1): exponent e − 1
    const int emin = 1 - bias;
    unsigned biased = 0, mantissa = 0;
    if (e - 1 < emin) {  // subnormal: a = mantissa · 2^(emin − mbits)
      mantissa = unsigned(std::ldexp(a, mbits - emin));
    } else {
      biased = unsigned(e - 1 + bias);
      mantissa = unsigned(std::ldexp(a, mbits - (e - 1))) - (1u << mbits);
    }
    return uint8_t(sign | biased << mbits | mantissa);
  }
  static uint32_t fp8x2(float lo, float hi, Fp8Format f) {
    return uint32_t(fp8(lo, f)) | uint32_t(fp8(hi, f)) << 8;
  }
  static void atomic_max(unsigned* p, unsigned v) {
    std::atomic_ref<unsigned> a(*p);
    unsigned cur = a.load();
    while (cur < v && !a.compare_exchange_weak(cur, v)) {
    }
  }
  // An 8-byte store (one vector instruction on the GPU: aligned); lo at the lower address.
  static void store8(void* p, uint32_t lo, uint32_t hi) {
    if (reinterpret_cast<uintptr_t>(p) % 8 != 0) fail("8-byte store to a misaligned address");
    const uint32_t w[2] = {lo, hi};
    std::memcpy(p, w, sizeof w);
  }

 private:
  friend struct GroupStep;
  struct Copy {
    unsigned char* dst;
    const unsigned char* src;  // nullptr: zero fill
  };
  struct WgOp {
    int n;
    bool a_in_registers;
    int trans_a, trans_b;
    float* d;
    uint32_t a[4];
    const uint32_t* a_src;  // the registers a came from (the hardware reads them until the wait)
    uint64_t da, db;
  };
  // The accumulators of wgmma in flight: between the issue and the wait that completes the last
  // product into them, the hardware owns those registers. Their values move here at the first
  // issue (the products accumulate here) and the registers are poisoned with a NaN pattern, so a
  // read before the wait spreads NaN into the results and a write before it is caught at the
  // wait; the wait puts the results back.
  static constexpr uint32_t kInFlightBits = 0x7fc0dead;
  std::map<float*, std::vector<float>> wg_accumulators_;
  void take_accumulator(float* d, int n) {
    if (wg_accumulators_.count(d) != 0) return;  // a product into it is pending already
    std::vector<float>& held = wg_accumulators_[d];
    held.assign(d, d + n);
    for (int i = 0; i < n; ++i) std::memcpy(d + i, &kInFlightBits, sizeof(float));
  }
  // After a wait: every accumulator no pending product writes goes back to its registers.
  void release_accumulators() {
    for (auto it = wg_accumulators_.begin(); it != wg_accumulators_.end();) {
      bool pending = false;
      for (const auto& group : wg_groups_)
        for (const WgOp& op : group) pending = pending || op.d == it->first;
      if (pending) {
        ++it;
        continue;
      }
      for (size_t i = 0; i < it->second.size(); ++i) {
        uint32_t bits;
        std::memcpy(&bits, it->first + i, sizeof bits);
        if (bits != kInFlightBits) fail("wgmma's accumulator written before its wait");
        it->first[i] = it->second[i];
      }
      it = wg_accumulators_.erase(it);
    }
  }
  void perform(const Copy& c) {
    check_no_barrier(c.dst, 16);
    if (c.src)
      std::memcpy(c.dst, c.src, 16);
    else
      std::memset(c.dst, 0, 16);
    mark_written(c.dst, 16);
  }
  // Records this thread as the generic-proxy writer of the 4-byte words [p, p + n).
  void mark_written(const unsigned char* p, size_t n) {
    const size_t first = size_t(p - block_.base_) / 4;
    for (size_t w = first; w < first + n / 4; ++w) {
      block_.writer_[w] = tid_;
      written_.push_back(w);
    }
  }
  // Fails if [p, p + n) overlaps an initialized mbarrier.
  void check_no_barrier(const unsigned char* p, size_t n) const {
    const size_t at = size_t(p - block_.base_);
    for (const auto& [b, state] : block_.barriers_)
      if (b < at + n && at < b + 8) fail("a copy or store overwrites a live mbarrier");
  }
  size_t barrier_offset(const uint64_t* bar) const {
    if (!block_.in_smem(bar, 8)) fail("mbarrier outside shared memory");
    if (reinterpret_cast<uintptr_t>(bar) % 8 != 0) fail("mbarrier not 8-byte aligned");
    return size_t(reinterpret_cast<const unsigned char*>(bar) - block_.base_);
  }
  // The barrier at bar (initialized).
  Block::Barrier& barrier(const uint64_t* bar) {
    const auto it = block_.barriers_.find(barrier_offset(bar));
    if (it == block_.barriers_.end()) fail("mbarrier used before mbarrier.init");
    return it->second;
  }
  // Writes the box (elements outside the tensor zero) and completes its bytes on b: the async
  // proxy's write, which wgmma may read without a proxy fence.
  // The box lands row after row (box[0] elements each), each element's address swizzled when
  // the map says so.
  void land(Block::Barrier& b, const Block::BulkCopy& copy) {
    const BoxMapShape& m = copy.map->shape;
    const uint32_t dst = smem_address(copy.dst);
    uint32_t o = 0;  // byte offset within the box, before the swizzle
    for (uint32_t z = 0; z < m.box[2]; ++z)
      for (uint32_t y = 0; y < m.box[1]; ++y)
        for (uint32_t x = 0; x < m.box[0]; ++x, o += 2) {
          const uint32_t a = m.swizzle128 ? swizzle128(dst + o) : dst + o;
          unsigned char* d = block_.base_ + (a - kSmemWindow);
          const int64_t g[3] = {int64_t(copy.c[0]) + x, int64_t(copy.c[1]) + y,
                                int64_t(copy.c[2]) + z};
          bool inside = true;
          for (int i = 0; i < 3; ++i) inside = inside && g[i] >= 0 && uint64_t(g[i]) < m.dims[i];
          if (inside)
            std::memcpy(d,
                        copy.map->base + uint64_t(g[0]) * 2 + uint64_t(g[1]) * m.strides[0] +
                            uint64_t(g[2]) * m.strides[1],
                        2);
          else
            std::memset(d, 0, 2);
        }
    const size_t bytes = o;
    const size_t first = size_t(copy.dst - block_.base_) / 4;
    for (size_t w = first; w < first + bytes / 4; ++w) block_.writer_[w] = -1;
    b.tx -= int64_t(bytes);
    if (b.tx < 0) fail("bulk copies delivered more bytes than the mbarrier expected");
  }
  // Completes b's phase if its arrivals and bytes are in; with `deliver`, first lands the copies
  // still in flight once every arrival is in (a waiting thread is where they become visible).
  void advance(Block::Barrier& b, bool deliver) {
    if (b.pending != 0) return;
    if (deliver) {
      for (const Block::BulkCopy& c : b.in_flight) land(b, c);
      b.in_flight.clear();
    }
    if (b.tx == 0 && b.in_flight.empty()) {
      ++b.phase;
      b.pending = b.arrivals;
    }
  }
  Warp& warp() { return *block_.warps_[tid_ / 32]; }
  Slot& deposit(Slot::Op op) {
    Slot& s = warp().slots[phase_][tid_ % 32];
    s.op = op;
    return s;
  }
  // Waits for the whole warp; the returned slot stays valid until this lane's next instruction.
  const Slot& collect() {
    const int used = phase_;
    phase_ ^= 1;
    warp().bar.arrive_and_wait();
    return warp().slots[used][tid_ % 32];
  }
  void ldsm(uint32_t (&r)[4], const uint16_t* row, Slot::Op op) {
    Slot& s = deposit(op);
    s.addr = reinterpret_cast<const unsigned char*>(row);
    std::memcpy(r, collect().r, sizeof s.r);
  }

  Block& block_;
  int tid_;
  int phase_ = 0;
  std::vector<Copy> pending_;
  std::deque<std::vector<Copy>> groups_;
  std::vector<size_t> written_;  // words this thread wrote since its last proxy fence
  // Per barrier (by offset): the generation this thread last waited in, and its next phase.
  std::map<size_t, std::pair<int, int>> next_phase_;
  std::vector<WgOp> wg_pending_;
  std::deque<std::vector<WgOp>> wg_groups_;
  int wg_keep_ = 0;         // the N of the wgmma.wait_group being executed
  bool wg_fenced_ = false;  // wgmma.fence executed since the last wgmma.wait_group
};

inline float GroupStep::read(size_t address) const {
  if (address < kSmemWindow) fail("wgmma descriptor addresses memory outside shared memory");
  const size_t at = address - kSmemWindow;
  if (at + 2 > block->size_) fail("wgmma descriptor addresses memory outside shared memory");
  if (block->writer_[at / 4] == kInFlight)
    fail("wgmma reads a bulk copy's destination before the copy landed");
  if (block->writer_[at / 4] != -1)
    fail("wgmma reads shared memory written by cp.async or st.shared without fence.proxy.async");
  return bf16_value(load16(block->base_ + at));
}

// The shared-memory address of element (r, k) of a descriptor operand, r along M or N, k along
// K (0..15), for the layouts of PTX's canonical forms:
//   no swizzle (layout type 0): 8×8 core matrices of 8 rows × 16 bytes; K-major: the 16-byte
//     rows run along K; MN-major: along M/N. LBO steps between core matrices along K, SBO along
//     M/N.
//   128-byte swizzle (type 1): K-major: rows of 128 bytes along K, 8-row groups SBO apart (LBO
//     unused); MN-major: rows of 128 bytes (64 elements) along M/N, one per k, 8-row groups SBO
//     apart along K, 64-element column blocks LBO apart along M/N; then the address is
//     swizzled (swizzle128), the pattern anchored at 1 KB (base offset 0).
inline size_t wgmma_address(uint64_t desc, int r, int k, bool mn_major) {
  const uint64_t mode = desc >> 62;
  if (mode != 0 && mode != 1)
    fail("wgmma descriptor with a swizzle mode other than none or 128-byte (not emulated)");
  if (((desc >> 49) & 7) != 0) fail("wgmma descriptor with a nonzero base offset (not emulated)");
  const size_t start = size_t(desc & 0x3FFF) << 4, lbo = size_t((desc >> 16) & 0x3FFF) << 4,
               sbo = size_t((desc >> 32) & 0x3FFF) << 4;
  if (mode == 1) {
    // The starts CUTLASS and DeepGEMM use with base offset 0: a 1 KB boundary, plus 32-byte k16
    // steps within the 128-byte rows of a K-major operand.
    if (mn_major ? start % 1024 != 0 : (start % 1024) % 32 != 0 || start % 1024 > 96)
      fail("swizzled wgmma descriptor starting where no canonical layout starts");
    const size_t a = mn_major ? start + size_t(r / 64) * lbo + size_t(k / 8) * sbo +
                                    size_t(k % 8) * 128 + size_t(r % 64) * 2
                              : start + size_t(r / 8) * sbo + size_t(r % 8) * 128 + size_t(k) * 2;
    return swizzle128(uint32_t(a));
  }
  const size_t core = size_t(r / 8) * sbo + size_t(k / 8) * lbo;
  return start + core +
         (mn_major ? size_t(k % 8) * 16 + size_t(r % 8) * 2
                   : size_t(r % 8) * 16 + size_t(k % 8) * 2);
}

inline void GroupStep::operator()() noexcept {
  Block& b = *block;
  const size_t nt = b.threads_.size();
  if (nt != 128) fail("wgmma needs a warpgroup of exactly 128 threads (the emulated block)");
  const int keep = b.threads_[0]->wg_keep_;
  for (Thread* t : b.threads_)
    if (t->wg_keep_ != keep || t->wg_groups_.size() != b.threads_[0]->wg_groups_.size())
      fail("threads of a warpgroup reached different wgmma.wait_group");
  while (b.threads_[0]->wg_groups_.size() > size_t(keep)) {
    const std::vector<Thread::WgOp>& ops0 = b.threads_[0]->wg_groups_.front();
    for (size_t i = 0; i < ops0.size(); ++i) {
      const Thread::WgOp& op = ops0[i];
      for (Thread* t : b.threads_) {
        const auto& o = t->wg_groups_.front();
        if (o.size() != ops0.size() || o[i].n != op.n || o[i].a_in_registers != op.a_in_registers ||
            o[i].trans_a != op.trans_a || o[i].trans_b != op.trans_b || o[i].da != op.da ||
            o[i].db != op.db)
          fail("threads of a warpgroup issued different wgmma operations or descriptors");
      }
      const int N = op.n;
      std::vector<float> A(64 * 16), B(16 * size_t(N)), D(64 * size_t(N));
      for (size_t tid = 0; tid < nt; ++tid) {
        const Thread::WgOp& o = b.threads_[tid]->wg_groups_.front()[i];
        const int w = int(tid) / 32, g = int(tid) % 32 / 4, t = int(tid) % 4;
        const std::vector<float>& acc = b.threads_[tid]->wg_accumulators_.at(o.d);
        for (int j = 0; j < N / 2; ++j)  // D fragment: d[j] at row 16w+g+8((j>>1)&1)
          D[size_t(16 * w + g + 8 * ((j >> 1) & 1)) * N + 8 * (j >> 2) + 2 * t + (j & 1)] = acc[j];
        if (op.a_in_registers && std::memcmp(o.a, o.a_src, sizeof o.a) != 0)
          fail("wgmma's register A operand changed before its wait");
        if (op.a_in_registers)
          for (int e = 0; e < 8; ++e) {  // A fragment: element e in register e/2, even e low
            const uint32_t reg = o.a[e / 2];
            const uint16_t v = uint16_t(e % 2 ? reg >> 16 : reg & 0xffffu);
            A[size_t(16 * w + g + 8 * ((e >> 1) & 1)) * 16 + 8 * (e >> 2) + 2 * t + (e & 1)] =
                bf16_value(v);
          }
      }
      if (!op.a_in_registers)
        for (int m = 0; m < 64; ++m)
          for (int k = 0; k < 16; ++k)
            A[size_t(m) * 16 + k] = read(wgmma_address(op.da, m, k, op.trans_a != 0));
      for (int k = 0; k < 16; ++k)
        for (int n = 0; n < N; ++n)
          B[size_t(k) * N + n] = read(wgmma_address(op.db, n, k, op.trans_b != 0));
      for (int m = 0; m < 64; ++m)
        for (int n = 0; n < N; ++n) {
          float acc = D[size_t(m) * N + n];
          for (int k = 0; k < 16; ++k) acc += A[size_t(m) * 16 + k] * B[size_t(k) * N + n];
          D[size_t(m) * N + n] = acc;
        }
      for (size_t tid = 0; tid < nt; ++tid) {
        const Thread::WgOp& o = b.threads_[tid]->wg_groups_.front()[i];
        const int w = int(tid) / 32, g = int(tid) % 32 / 4, t = int(tid) % 4;
        std::vector<float>& acc = b.threads_[tid]->wg_accumulators_.at(o.d);
        for (int j = 0; j < N / 2; ++j)
          acc[j] = D[size_t(16 * w + g + 8 * ((j >> 1) & 1)) * N + 8 * (j >> 2) + 2 * t + (j & 1)];
      }
    }
    for (Thread* t : b.threads_) t->wg_groups_.pop_front();
  }
}

// bf16 test data in 16-byte aligned storage (the kernels' 16-byte vector accesses need it):
// n values as raw bits, and widened.
struct Bf16Buffer {
  std::vector<Vec16> storage;
  explicit Bf16Buffer(size_t n) : storage((n * 2 + 15) / 16 + 1) {}
  uint16_t* data() { return reinterpret_cast<uint16_t*>(storage.data()); }
  double at(size_t i) { return to_float(bf16_t{data()[i]}); }
};

// n values uniform in [lo, hi), rounded to bf16.
inline Bf16Buffer random_bf16_buffer(size_t n, uint32_t seed, float lo, float hi) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  Bf16Buffer b(n);
  for (size_t i = 0; i < n; ++i) b.data()[i] = to_bf16(dist(rng)).bits;
  return b;
}

// Adds a fiber per thread of the block to `fibers`, in thread order or in reverse: reversed for
// every other block, and the other way round with copies landing at their wait. So the warps run
// ahead of one another both ways (fiber_scheduler.h), and a single block too sees both orders
// over the two timings.
template <class Body>
void spawn_block(FiberScheduler& fibers, Block& block, int bx, int by, int threads,
                 CopyTiming timing, Body& body) {
  const bool reverse = ((bx + by) % 2 == 1) != (timing == CopyTiming::at_wait);
  for (int i = 0; i < threads; ++i) {
    const int t = reverse ? threads - 1 - i : i;
    fibers.spawn([&block, &body, t] {
      Thread x(block, t);
      body(x);
    });
  }
}

// Runs body(Thread&) for every thread of every block of a grid_x × grid_y grid (blocks one
// after another, the threads of a block as fibers).
template <class Body>
void launch(int grid_x, int grid_y, int threads, size_t smem_bytes, CopyTiming timing, Body body) {
  if (threads % 32 != 0) fail("block size not a multiple of 32");
  for (int by = 0; by < grid_y; ++by)
    for (int bx = 0; bx < grid_x; ++bx) {
      Block block(bx, by, threads, smem_bytes, timing);
      FiberScheduler fibers;
      spawn_block(fibers, block, bx, by, threads, timing, body);
      fibers.run();
    }
}

// The slow blocks' load_stalls in a concurrent launch (every second block).
constexpr int kSlowBlockStalls = 16;

// Runs body(Thread&) for every thread of every block of a grid_x × grid_y grid, all blocks at the
// same time (as a GPU with room for the whole grid would): for kernels whose blocks wait for one
// another. The blocks start in order.
template <class Body>
void launch_concurrent(int grid_x, int grid_y, int threads, size_t smem_bytes, CopyTiming timing,
                       Body body) {
  if (threads % 32 != 0) fail("block size not a multiple of 32");
  std::vector<std::unique_ptr<Block>> blocks;
  FiberScheduler fibers;
  for (int by = 0; by < grid_y; ++by)
    for (int bx = 0; bx < grid_x; ++bx) {
      blocks.push_back(std::make_unique<Block>(bx, by, threads, smem_bytes, timing));
      blocks.back()->load_stalls = blocks.size() % 2 == 0 ? kSlowBlockStalls : 1;
      spawn_block(fibers, *blocks.back(), bx, by, threads, timing, body);
    }
  fibers.run();
}

}  // namespace triad::simt
