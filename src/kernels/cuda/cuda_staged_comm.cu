// DeviceStagedComm (include/triad/kernels/cuda_comm.h): MPI on device buffers through pinned
// host staging.
//
// Ordering with the compute stream: every copy here is a cudaMemcpy on the legacy default
// stream, which waits for the work queued before it on the backend's stream (a blocking stream)
// and which the backend's later kernels wait for, so a device buffer's data is final when copied
// out and the copy back is complete before the next kernel reads it; a copy out to host memory,
// and one in from pinned memory, return when done. No copy waits for the device as a whole: with
// parallel.comm = nccl the data-parallel reductions run on a non-blocking stream of their own
// (cuda_nccl_comm.cu) and go on overlapping a pipeline stage's sends. (Buffers such a reduction
// still writes are not given to these calls: a request is waited for before its buffer is used,
// which orders the compute stream after it.)
#include <cuda_runtime.h>

// The ordering above is the legacy default stream's: cudaMemcpy on a per-thread default stream
// would not wait for the backend's stream, and a copy out would read stale data.
#ifdef CUDA_API_PER_THREAD_DEFAULT_STREAM
#error "cuda_staged_comm.cu relies on the legacy default stream (no --default-stream per-thread)"
#endif

#include <algorithm>
#include <string>
#include <vector>

#include "cuda_ops.cuh"
#include "triad/core/error.h"
#include "triad/kernels/cuda_backend.h"
#include "triad/kernels/cuda_comm.h"

namespace triad {

bool cuda::is_device_pointer(const void* p) {
  if (p == nullptr) return false;
  cudaPointerAttributes a{};
  if (cudaPointerGetAttributes(&a, p) != cudaSuccess) {
    (void)cudaGetLastError();  // an unknown host pointer on old runtimes: clear, treat as host
    return false;
  }
  return a.type == cudaMemoryTypeDevice;
}

namespace {

bool on_device(const void* p) { return cuda::is_device_pointer(p); }

// Pinned host memory of at least n floats; grows, never shrinks. With headroom it grows by half
// again at least (the pool of point-to-point messages, whose sizes change every step: each new
// largest one would reallocate, and cudaFreeHost waits for the whole device); the buffers of
// whole collectives (gradients of gigabytes) grow to the size asked.
class Pinned {
 public:
  Pinned() = default;
  Pinned(const Pinned&) = delete;
  Pinned& operator=(const Pinned&) = delete;
  ~Pinned() {
    if (p_ != nullptr) cudaFreeHost(p_);
  }
  float* get(size_t n, bool headroom = false) {
    if (n > n_) {
      const size_t grown = n_ == 0 || !headroom ? n : std::max(n, n_ + n_ / 2);
      if (p_ != nullptr) TRIAD_CUDA_CHECK(cudaFreeHost(p_));
      p_ = nullptr;
      n_ = 0;  // (until the allocation below succeeds)
      TRIAD_CUDA_CHECK(cudaMallocHost(&p_, std::max<size_t>(grown, 1) * sizeof(float)));
      n_ = grown;
    }
    return static_cast<float*>(p_);
  }
  size_t capacity() const { return n_; }

 private:
  void* p_ = nullptr;
  size_t n_ = 0;
};

void to_host(float* host, const float* dev, size_t n) {
  TRIAD_CUDA_CHECK(cudaMemcpy(host, dev, n * sizeof(float), cudaMemcpyDeviceToHost));
}
void to_device(float* dev, const float* host, size_t n) {
  TRIAD_CUDA_CHECK(cudaMemcpy(dev, host, n * sizeof(float), cudaMemcpyHostToDevice));
}

class DeviceStagedComm final : public Comm {
 public:
  // Callers wait for every request before the Comm goes (the staging buffers die with it).
  explicit DeviceStagedComm(std::unique_ptr<Comm> inner) : in_(std::move(inner)) {}

  int rank() const override { return in_->rank(); }
  int size() const override { return in_->size(); }
  std::string name() const override { return in_->name(); }

  void all_reduce_sum(float* buf, size_t n) override {
    in_place(buf, n, [&](float* b) { in_->all_reduce_sum(b, n); });
  }
  CommRequest iall_reduce_sum(float* buf, size_t n) override {
    if (!on_device(buf)) return sync(in_->iall_reduce_sum(buf, n));
    all_reduce_sum(buf, n);
    return {};
  }
  void all_reduce_max(float* buf, size_t n) override {
    in_place(buf, n, [&](float* b) { in_->all_reduce_max(b, n); });
  }
  double all_reduce_sum(double x) override { return sync(in_->all_reduce_sum(x)); }
  int64_t all_reduce_max(int64_t x) override { return sync(in_->all_reduce_max(x)); }
  void reduce_scatter_sum(const float* send, float* recv, size_t count) override {
    staged(send, count * size_t(size()), recv, count,
           [&](const float* s, float* r) { in_->reduce_scatter_sum(s, r, count); });
  }
  CommRequest ireduce_scatter_sum(const float* send, float* recv, size_t count) override {
    if (!on_device(send) && !on_device(recv))
      return sync(in_->ireduce_scatter_sum(send, recv, count));
    reduce_scatter_sum(send, recv, count);
    return {};
  }
  CommRequest ireduce_scatter_pieces_sum(const float* send, float* recv,
                                         const std::vector<size_t>& counts) override {
    if (!on_device(send) && !on_device(recv))
      return sync(in_->ireduce_scatter_pieces_sum(send, recv, counts));
    size_t total = 0;
    for (size_t c : counts) total += c;
    staged(send, total, recv, counts[size_t(rank())],
           [&](const float* s, float* r) { in_->ireduce_scatter_pieces_sum(s, r, counts).wait(); });
    return {};
  }
  void all_gather(const float* send, float* recv, size_t count) override {
    staged(send, count, recv, count * size_t(size()),
           [&](const float* s, float* r) { in_->all_gather(s, r, count); });
  }
  CommRequest iall_gather_pieces(const float* send, float* recv,
                                 const std::vector<size_t>& counts) override {
    if (!on_device(send) && !on_device(recv))
      return sync(in_->iall_gather_pieces(send, recv, counts));
    size_t total = 0;
    for (size_t c : counts) total += c;
    staged(send, counts[size_t(rank())], recv, total,
           [&](const float* s, float* r) { in_->iall_gather_pieces(s, r, counts).wait(); });
    return {};
  }
  void broadcast(float* buf, size_t n, int root) override {
    in_place(buf, n, [&](float* b) { in_->broadcast(b, n, root); });
  }
  void all_to_all(const void* send, const std::vector<size_t>& send_bytes, void* recv,
                  const std::vector<size_t>& recv_bytes) override {
    if (!on_device(send) && !on_device(recv)) {
      in_->all_to_all(send, send_bytes, recv, recv_bytes);
      return sync();
    }
    size_t sn = 0, rn = 0;
    for (size_t b : send_bytes) sn += b;
    for (size_t b : recv_bytes) rn += b;
    void* s = a_.get((sn + 3) / 4);
    void* r = b_.get((rn + 3) / 4);
    copy_bytes(s, send, sn);
    in_->all_to_all(s, send_bytes, r, recv_bytes);
    copy_bytes(recv, r, rn);
    sync();
  }
  void send(const float* buf, size_t n, int dst, int tag) override {
    if (!on_device(buf)) {
      in_->send(buf, n, dst, tag);
      return sync();
    }
    float* h = a_.get(n);
    to_host(h, buf, n);
    in_->send(h, n, dst, tag);
    sync();
  }
  void recv(float* buf, size_t n, int src, int tag) override {
    if (!on_device(buf)) {
      in_->recv(buf, n, src, tag);
      return sync();
    }
    float* h = a_.get(n);
    in_->recv(h, n, src, tag);
    to_device(buf, h, n);
    sync();
  }
  CommRequest isend(const float* buf, size_t n, int dst, int tag) override {
    if (!on_device(buf)) return sync(in_->isend(buf, n, dst, tag));
    Pinned* p = take(n);
    float* h = p->get(n, true);
    to_host(h, buf, n);
    CommRequest r = in_->isend(h, n, dst, tag);
    r.on_complete([this, p] { give_back(p); });
    return sync(std::move(r));
  }
  CommRequest irecv(float* buf, size_t n, int src, int tag) override {
    if (!on_device(buf)) return sync(in_->irecv(buf, n, src, tag));
    Pinned* p = take(n);
    float* h = p->get(n, true);
    CommRequest r = in_->irecv(h, n, src, tag);
    r.on_complete([this, p, buf, h, n] {
      to_device(buf, h, n);
      give_back(p);
    });
    return sync(std::move(r));
  }
  void barrier() override { in_->barrier(); }
  void reset_stats() override {
    in_->reset_stats();
    sync();
  }
  void abort() override { in_->abort(); }

 private:
  // The wrapped Comm counts the traffic; mirror its statistics after every call.
  void sync() { stats_ = in_->stats(); }
  template <class T>
  T sync(T value) {
    sync();
    return value;
  }
  template <class F>
  void in_place(float* buf, size_t n, F op) {
    if (!on_device(buf)) {
      op(buf);
    } else {
      float* h = a_.get(n);
      to_host(h, buf, n);
      op(h);
      to_device(buf, h, n);
    }
    sync();
  }
  // A collective from send (sn floats) into recv (rn floats), either of which may be device
  // memory: op runs on host pointers (staged copies where needed).
  template <class F>
  void staged(const float* send, size_t sn, float* recv, size_t rn, F op) {
    if (!on_device(send) && !on_device(recv)) {
      op(send, recv);
    } else {
      float* s = a_.get(sn);
      float* r = b_.get(rn);
      copy_in(s, send, sn);
      op(s, r);
      copy_out(recv, r, rn);
    }
    sync();
  }
  static void copy_in(float* host, const float* src, size_t n) {
    if (on_device(src)) {
      to_host(host, src, n);
    } else {
      std::copy(src, src + n, host);
    }
  }
  // n bytes between device or ordinary host memory and a pinned staging buffer, ordered as
  // to_host and to_device.
  static void copy_bytes(void* dst, const void* src, size_t n) {
    if (n == 0) return;
    TRIAD_CUDA_CHECK(cudaMemcpy(dst, src, n, cudaMemcpyDefault));
  }
  static void copy_out(float* dst, const float* host, size_t n) {
    if (on_device(dst)) {
      to_device(dst, host, n);
    } else {
      std::copy(host, host + n, dst);
    }
  }
  // Staging buffers of pending point-to-point messages, recycled when their request completes.
  // The smallest free one that holds n floats, else the largest free one (to grow): taking any
  // would regrow a small buffer for a large message (a tied embedding's gradient) step after step,
  // and freeing pinned memory waits for the whole device, NCCL's overlapped reductions included.
  Pinned* take(size_t n) {
    if (free_.empty()) {
      pool_.push_back(std::make_unique<Pinned>());
      return pool_.back().get();
    }
    auto best = free_.end(), largest = free_.begin();
    for (auto it = free_.begin(); it != free_.end(); ++it) {
      if ((*it)->capacity() >= n &&
          (best == free_.end() || (*it)->capacity() < (*best)->capacity()))
        best = it;
      if ((*it)->capacity() > (*largest)->capacity()) largest = it;
    }
    auto pick = best != free_.end() ? best : largest;
    Pinned* p = *pick;
    free_.erase(pick);
    return p;
  }
  void give_back(Pinned* p) { free_.push_back(p); }

  std::unique_ptr<Comm> in_;
  Pinned a_, b_;
  std::vector<std::unique_ptr<Pinned>> pool_;
  std::vector<Pinned*> free_;
};

}  // namespace

std::unique_ptr<Comm> make_device_staged_comm(std::unique_ptr<Comm> inner) {
  return std::make_unique<DeviceStagedComm>(std::move(inner));
}

int cuda_device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  return n;
}

std::string cuda_pci_bus_id(int device) {
  char id[64] = {};
  if (cudaDeviceGetPCIBusId(id, sizeof id, device) != cudaSuccess) {
    (void)cudaGetLastError();
    return "";
  }
  return id;
}

}  // namespace triad
