// NcclComm (include/triad/kernels/cuda_comm.h): collectives on device buffers through NCCL, on a
// stream of their own; everything else through the group's host-side Comm.
//
// Ordering with the backend's compute stream, without host synchronization:
//   - before a collective, the NCCL stream waits for an event recorded on the compute stream,
//     so the collective reads what the kernels enqueued before it wrote;
//   - a blocking collective then makes the compute stream wait for the NCCL stream, so later
//     kernels see the result (host reads go through the backend, which synchronizes its stream);
//   - a non-blocking one (iall_reduce_sum, ireduce_scatter_sum, ireduce_scatter_pieces_sum,
//     iall_gather_pieces) defers that wait to CommRequest::wait(): the kernels enqueued meanwhile
//     (the rest of the backward pass) run beside the collective. The caller must not touch its
//     buffers on the device until then, and must wait: a request dropped or assigned over while
//     pending stops the rank (include/triad/parallel/comm.h), since nothing else would order the
//     compute stream after it.
//
// Several communicators (one per group) run at once on streams of their own: NCCL needs every
// rank to issue the collectives of communicators that share ranks in one order, which the SPMD
// step keeps. Suspect a break of that order first when a multi-GPU run hangs.
//
// NCCL is loaded with dlopen when the first NcclComm is made, so that a triad build starts (and
// runs with parallel.comm = mpi) on machines whose NCCL lives elsewhere or is missing.
//
// Point-to-point calls go through the host-side Comm, not ncclSend/ncclRecv: NCCL has no tags
// and pairs a sender's messages with the receiver's in issue order, and two ranks that each post
// a send before their receive on one stream wait for each other forever. The pipeline executor
// relies on MPI's tag matching and free posting order, so its messages stay on MPI.
#include <exception>
#include <mutex>
#include <string>

#include "cuda_ops.cuh"
#include "triad/core/error.h"
#include "triad/kernels/cuda_backend.h"
#include "triad/kernels/cuda_comm.h"

// NCCL's header comes with most CUDA installations but is not part of the toolkit proper;
// without it this file compiles to a clear refusal.
#if __has_include(<nccl.h>)
#include <dlfcn.h>
#include <nccl.h>

namespace triad {
namespace {

// The NCCL entry points triad uses, resolved from libnccl.so.2 at run time.
struct NcclApi {
  decltype(&ncclGetVersion) get_version = nullptr;
  decltype(&ncclGetUniqueId) get_unique_id = nullptr;
  decltype(&ncclCommInitRank) comm_init_rank = nullptr;
  decltype(&ncclCommDestroy) comm_destroy = nullptr;
  decltype(&ncclCommAbort) comm_abort = nullptr;
  decltype(&ncclGetErrorString) error_string = nullptr;
  decltype(&ncclGetLastError) last_error = nullptr;
  decltype(&ncclCommGetAsyncError) comm_get_async_error = nullptr;
  decltype(&ncclAllReduce) all_reduce = nullptr;
  decltype(&ncclReduceScatter) reduce_scatter = nullptr;
  decltype(&ncclAllGather) all_gather = nullptr;
  decltype(&ncclBroadcast) broadcast = nullptr;
  decltype(&ncclReduce) reduce = nullptr;
  decltype(&ncclGroupStart) group_start = nullptr;
  decltype(&ncclGroupEnd) group_end = nullptr;
  decltype(&ncclSend) send = nullptr;
  decltype(&ncclRecv) recv = nullptr;
  int version = 0;
  std::string error;  // why NCCL cannot be used; empty when it can
};

const NcclApi& nccl_api() {
  static const NcclApi api = [] {
    NcclApi a;
    // The versioned name first; its error is the one to report (the unversioned name is only
    // a development symlink, and "not found" for it would hide why libnccl.so.2 failed).
    void* lib = dlopen("libnccl.so.2", RTLD_NOW | RTLD_LOCAL);
    if (lib == nullptr) {
      const char* e = dlerror();
      const std::string why = e ? e : "not found";
      lib = dlopen("libnccl.so", RTLD_NOW | RTLD_LOCAL);
      if (lib == nullptr) {
        a.error = "cannot load libnccl.so.2 (" + why +
                  "); put NCCL's lib directory on LD_LIBRARY_PATH or use parallel.comm = mpi";
        return a;
      }
    }
    auto get = [&](auto& fn, const char* sym) {
      fn = reinterpret_cast<std::remove_reference_t<decltype(fn)>>(dlsym(lib, sym));
      if (fn == nullptr && a.error.empty())
        a.error = std::string("libnccl.so.2 has no ") + sym + " (NCCL 2.x needed)";
    };
    get(a.get_version, "ncclGetVersion");
    get(a.get_unique_id, "ncclGetUniqueId");
    get(a.comm_init_rank, "ncclCommInitRank");
    get(a.comm_destroy, "ncclCommDestroy");
    get(a.comm_abort, "ncclCommAbort");
    get(a.comm_get_async_error, "ncclCommGetAsyncError");
    get(a.error_string, "ncclGetErrorString");
    // Only for error messages, and absent before NCCL 2.13: optional.
    a.last_error = reinterpret_cast<decltype(a.last_error)>(dlsym(lib, "ncclGetLastError"));
    get(a.all_reduce, "ncclAllReduce");
    get(a.reduce_scatter, "ncclReduceScatter");
    get(a.all_gather, "ncclAllGather");
    get(a.broadcast, "ncclBroadcast");
    get(a.reduce, "ncclReduce");
    get(a.group_start, "ncclGroupStart");
    get(a.group_end, "ncclGroupEnd");
    get(a.send, "ncclSend");
    get(a.recv, "ncclRecv");
    if (a.error.empty() && a.get_version(&a.version) != ncclSuccess)
      a.error = "ncclGetVersion failed";
    return a;
  }();
  return api;
}

// r's text, with ncclGetLastError's for comm in parentheses where NCCL has one (2.13 on).
std::string nccl_error_text(const NcclApi& a, ncclResult_t r, ncclComm_t comm) {
  const char* detail = a.last_error != nullptr ? a.last_error(comm) : "";
  return a.error_string(r) +
         ((detail && *detail) ? std::string(" (") + detail + ")" : std::string());
}

void check_nccl(ncclResult_t r, ncclComm_t comm, const char* what, const char* file, int line) {
  if (r == ncclSuccess) return;
  int rank = -1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  fail("NCCL call ", what, " failed on rank ", rank, " at ", file, ":", line, ": ",
       nccl_error_text(nccl_api(), r, comm));
}

#define TRIAD_NCCL_CHECK(call, comm) check_nccl((call), (comm), #call, __FILE__, __LINE__)

void add_stats(CommStats& into, const CommStats& from) {
  for (int k = 0; k < CommStats::kKinds; ++k) {
    into.calls[k] += from.calls[k];
    into.bytes[k] += from.bytes[k];
  }
}

class NcclComm final : public Comm {
 public:
  NcclComm(std::unique_ptr<Comm> host, cudaStream_t compute)
      : host_(std::move(host)), compute_(compute), api_(nccl_api()) {
    TRIAD_CHECK(api_.error.empty(), "parallel.comm = nccl: ", api_.error);
    // The unique id travels as 32 floats through MPI, which moves their bytes unchanged.
    static_assert(sizeof(ncclUniqueId) % sizeof(float) == 0);
    ncclUniqueId id{};
    if (host_->rank() == 0) TRIAD_NCCL_CHECK(api_.get_unique_id(&id), nullptr);
    host_->broadcast(reinterpret_cast<float*>(&id), sizeof id / sizeof(float), 0);
    TRIAD_NCCL_CHECK(api_.comm_init_rank(&comm_, host_->size(), id, host_->rank()), nullptr);
    TRIAD_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    TRIAD_CUDA_CHECK(cudaEventCreateWithFlags(&ready_, cudaEventDisableTiming));
    host_->reset_stats();  // the id broadcast is set-up, not traffic
    sync();
  }
  ~NcclComm() override {
    // While an exception unwinds, a peer may never join a pending collective: abort the
    // communicator instead of waiting for it (MPI_Abort follows in run_main).
    if (std::uncaught_exceptions() > 0) abort();
    if (comm_ != nullptr) {
      cudaStreamSynchronize(stream_);
      std::lock_guard<std::mutex> lock(probe_mutex_);  // (no async_error() on a destroyed one)
      api_.comm_destroy(comm_);
      comm_ = nullptr;
    }
    cudaEventDestroy(ready_);
    cudaStreamDestroy(stream_);
  }
  // Ends the communicator without waiting for its pending collectives: their kernels stop, so
  // streams waiting on them (the compute stream) drain.
  void abort() override {
    if (comm_ == nullptr) return;
    {
      std::lock_guard<std::mutex> lock(probe_mutex_);
      api_.comm_abort(comm_);
      comm_ = nullptr;
    }
    host_->abort();
  }
  // NCCL's asynchronous error of this communicator (its network and peers' failures, found
  // while kernels wait), with its last error's text; ncclInProgress is no error.
  std::string async_error() override {
    std::lock_guard<std::mutex> lock(probe_mutex_);
    if (comm_ == nullptr) return {};
    ncclResult_t state = ncclSuccess;
    const ncclResult_t r = api_.comm_get_async_error(comm_, &state);
    if (r != ncclSuccess) state = r;
    if (state == ncclSuccess || state == ncclInProgress) return {};
    return "NCCL reports an error in the " + name() +
           " communicator: " + nccl_error_text(api_, state, comm_);
  }

  int rank() const override { return host_->rank(); }
  int size() const override { return host_->size(); }
  std::string name() const override { return host_->name(); }

  void all_reduce_sum(float* buf, size_t n) override {
    if (!cuda::is_device_pointer(buf)) return on_host([&] { host_->all_reduce_sum(buf, n); });
    enqueue(CommStats::kAllReduce, n, [&] {
      TRIAD_NCCL_CHECK(api_.all_reduce(buf, buf, n, ncclFloat, ncclSum, comm_, stream_), comm_);
    });
    join_now();
  }
  CommRequest iall_reduce_sum(float* buf, size_t n) override {
    if (!cuda::is_device_pointer(buf)) return delegated(host_->iall_reduce_sum(buf, n));
    enqueue(CommStats::kAllReduce, n, [&] {
      TRIAD_NCCL_CHECK(api_.all_reduce(buf, buf, n, ncclFloat, ncclSum, comm_, stream_), comm_);
    });
    return join_later();
  }
  void all_reduce_max(float* buf, size_t n) override {
    if (!cuda::is_device_pointer(buf)) return on_host([&] { host_->all_reduce_max(buf, n); });
    enqueue(CommStats::kAllReduce, n, [&] {
      TRIAD_NCCL_CHECK(api_.all_reduce(buf, buf, n, ncclFloat, ncclMax, comm_, stream_), comm_);
    });
    join_now();
  }
  double all_reduce_sum(double x) override { return delegated(host_->all_reduce_sum(x)); }
  int64_t all_reduce_max(int64_t x) override { return delegated(host_->all_reduce_max(x)); }
  void reduce_scatter_sum(const float* send, float* recv, size_t count) override {
    if (!both_on_device(send, recv))
      return on_host([&] { host_->reduce_scatter_sum(send, recv, count); });
    enqueue(CommStats::kReduceScatter, count * size_t(size()), [&] {
      TRIAD_NCCL_CHECK(api_.reduce_scatter(send, recv, count, ncclFloat, ncclSum, comm_, stream_),
                       comm_);
    });
    join_now();
  }
  CommRequest ireduce_scatter_sum(const float* send, float* recv, size_t count) override {
    if (!both_on_device(send, recv))
      return delegated(host_->ireduce_scatter_sum(send, recv, count));
    enqueue(CommStats::kReduceScatter, count * size_t(size()), [&] {
      TRIAD_NCCL_CHECK(api_.reduce_scatter(send, recv, count, ncclFloat, ncclSum, comm_, stream_),
                       comm_);
    });
    return join_later();
  }
  // One reduce per non-empty piece to the rank it belongs to, fused into one launch by a group.
  CommRequest ireduce_scatter_pieces_sum(const float* send, float* recv,
                                         const std::vector<size_t>& counts) override {
    if (!both_on_device(send, recv))
      return delegated(host_->ireduce_scatter_pieces_sum(send, recv, counts));
    size_t total = 0;
    for (size_t c : counts) total += c;
    enqueue(CommStats::kReduceScatter, total, [&] {
      for_each_piece(counts, [&](int r, size_t at, size_t n) {
        TRIAD_NCCL_CHECK(api_.reduce(send + at, r == rank() ? recv : nullptr, n, ncclFloat, ncclSum,
                                     r, comm_, stream_),
                         comm_);
      });
    });
    return join_later();
  }
  // One broadcast per non-empty piece from the rank that holds it, fused by a group; as words.
  CommRequest iall_gather_pieces(const float* send, float* recv,
                                 const std::vector<size_t>& counts) override {
    if (!both_on_device(send, recv))
      return delegated(host_->iall_gather_pieces(send, recv, counts));
    TRIAD_CHECK(counts.size() == size_t(size()), "internal error: ", counts.size(),
                " pieces for a group of ", size());
    enqueue(CommStats::kAllGather, counts[size_t(rank())], [&] {
      for_each_piece(counts, [&](int r, size_t at, size_t n) {
        TRIAD_NCCL_CHECK(api_.broadcast(r == rank() ? send : nullptr, recv + at, n, ncclUint32, r,
                                        comm_, stream_),
                         comm_);
      });
    });
    return join_later();
  }
  // All-gather and broadcast only move words (some callers pass bf16 pairs as floats): they go
  // as 32-bit integers so that no NaN pattern could ever be touched.
  void all_gather(const float* send, float* recv, size_t count) override {
    if (!both_on_device(send, recv)) return on_host([&] { host_->all_gather(send, recv, count); });
    enqueue(CommStats::kAllGather, count, [&] {
      TRIAD_NCCL_CHECK(api_.all_gather(send, recv, count, ncclUint32, comm_, stream_), comm_);
    });
    join_now();
  }
  void broadcast(float* buf, size_t n, int root) override {
    if (!cuda::is_device_pointer(buf)) return on_host([&] { host_->broadcast(buf, n, root); });
    enqueue(CommStats::kBroadcast, n, [&] {
      TRIAD_NCCL_CHECK(api_.broadcast(buf, buf, n, ncclUint32, root, comm_, stream_), comm_);
    });
    join_now();
  }
  // One send and one receive per non-empty block, all in one group (a send's peer posts its
  // receive in the same group, or neither would progress); as bytes.
  void all_to_all(const void* send, const std::vector<size_t>& send_bytes, void* recv,
                  const std::vector<size_t>& recv_bytes) override {
    if (!both_on_device(send, recv))
      return on_host([&] { host_->all_to_all(send, send_bytes, recv, recv_bytes); });
    size_t total = 0;
    for (size_t b : send_bytes) total += b;
    enqueue_bytes(CommStats::kAllToAll, total, [&] {
      TRIAD_CHECK(send_bytes.size() == size_t(size()) && recv_bytes.size() == size_t(size()),
                  "internal error: all-to-all of ", send_bytes.size(), " and ", recv_bytes.size(),
                  " blocks in a group of ", size());
      const char* s = static_cast<const char*>(send);
      char* r = static_cast<char*>(recv);
      TRIAD_NCCL_CHECK(api_.group_start(), comm_);
      for (size_t p = 0; p < send_bytes.size(); ++p) {
        if (send_bytes[p] > 0)
          TRIAD_NCCL_CHECK(api_.send(s, send_bytes[p], ncclUint8, int(p), comm_, stream_), comm_);
        if (recv_bytes[p] > 0)
          TRIAD_NCCL_CHECK(api_.recv(r, recv_bytes[p], ncclUint8, int(p), comm_, stream_), comm_);
        s += send_bytes[p];
        r += recv_bytes[p];
      }
      TRIAD_NCCL_CHECK(api_.group_end(), comm_);
    });
    join_now();
  }
  void send(const float* buf, size_t n, int dst, int tag) override {
    on_host([&] { host_->send(buf, n, dst, tag); });
  }
  void recv(float* buf, size_t n, int src, int tag) override {
    on_host([&] { host_->recv(buf, n, src, tag); });
  }
  CommRequest isend(const float* buf, size_t n, int dst, int tag) override {
    return delegated(host_->isend(buf, n, dst, tag));
  }
  CommRequest irecv(float* buf, size_t n, int src, int tag) override {
    return delegated(host_->irecv(buf, n, src, tag));
  }
  void barrier() override {
    on_host([&] { host_->barrier(); });
  }
  void reset_stats() override {
    host_->reset_stats();
    own_ = CommStats{};
    sync();
  }

 private:
  static bool both_on_device(const void* a, const void* b) {
    return cuda::is_device_pointer(a) && cuda::is_device_pointer(b);
  }
  // Statistics: what the host-side Comm counted plus the NCCL calls.
  void sync() {
    stats_ = host_->stats();
    add_stats(stats_, own_);
  }
  template <class F>
  void on_host(F&& call) {
    call();
    sync();
  }
  template <class T>
  T delegated(T value) {
    sync();
    return value;
  }
  // One NCCL group of f(r, at, n) for each rank r's non-empty piece: n elements at offset `at`
  // (the pieces follow each other in rank order).
  template <class F>
  void for_each_piece(const std::vector<size_t>& counts, F f) {
    TRIAD_CHECK(counts.size() == size_t(size()), "internal error: ", counts.size(),
                " pieces for a group of ", size());
    TRIAD_NCCL_CHECK(api_.group_start(), comm_);
    size_t at = 0;
    for (int r = 0; r < size(); ++r) {
      if (counts[size_t(r)] > 0) f(r, at, counts[size_t(r)]);
      at += counts[size_t(r)];
    }
    TRIAD_NCCL_CHECK(api_.group_end(), comm_);
  }
  // Counts the call and runs `launch` (which enqueues one NCCL collective on stream_) after the
  // work already enqueued on the compute stream.
  template <class F>
  void enqueue(CommStats::Kind kind, size_t floats, F launch) {
    enqueue_bytes(kind, floats * sizeof(float), launch);
  }
  template <class F>
  void enqueue_bytes(CommStats::Kind kind, size_t bytes, F launch) {
    own_.add(kind, bytes);
    sync();
    TRIAD_CUDA_CHECK(cudaEventRecord(ready_, compute_));
    TRIAD_CUDA_CHECK(cudaStreamWaitEvent(stream_, ready_, 0));
    launch();
  }
  // The compute stream's later work waits for the collectives enqueued so far.
  void join_now() {
    TRIAD_CUDA_CHECK(cudaEventRecord(ready_, stream_));
    TRIAD_CUDA_CHECK(cudaStreamWaitEvent(compute_, ready_, 0));
  }
  CommRequest join_later() {
    cudaEvent_t done = nullptr;
    TRIAD_CUDA_CHECK(cudaEventCreateWithFlags(&done, cudaEventDisableTiming));
    TRIAD_CUDA_CHECK(cudaEventRecord(done, stream_));
    CommRequest r;
    cudaStream_t compute = compute_;
    r.on_complete([compute, done] {
      const cudaError_t err = cudaStreamWaitEvent(compute, done, 0);
      cudaEventDestroy(done);
      TRIAD_CUDA_CHECK(err);
    });
    return r;
  }

  std::unique_ptr<Comm> host_;
  cudaStream_t compute_ = nullptr;
  const NcclApi& api_;
  ncclComm_t comm_ = nullptr;
  std::mutex probe_mutex_;  // comm_'s end against async_error() from the watchdog's thread
  cudaStream_t stream_ = nullptr;
  cudaEvent_t ready_ = nullptr;
  CommStats own_;
};

}  // namespace

std::string nccl_status() { return nccl_api().error; }

std::string nccl_version() {
  const NcclApi& a = nccl_api();
  if (!a.error.empty()) return "";
  const int v = a.version;  // NCCL_VERSION(X,Y,Z) = X*10000 + Y*100 + Z since 2.9
  return std::to_string(v / 10000) + "." + std::to_string((v / 100) % 100) + "." +
         std::to_string(v % 100);
}

std::unique_ptr<Comm> make_nccl_comm(std::unique_ptr<Comm> host, Backend& be) {
  return std::make_unique<NcclComm>(make_device_staged_comm(std::move(host)),
                                    cuda::backend_stream(be));
}

}  // namespace triad

#undef TRIAD_NCCL_CHECK  // (the file may be one of a unity file's: cmake/TriadCuda.cmake)

#else  // no <nccl.h>

namespace triad {

std::string nccl_status() { return "this triad was built without NCCL's header (nccl.h)"; }

std::string nccl_version() { return ""; }

std::unique_ptr<Comm> make_nccl_comm(std::unique_ptr<Comm> /*host*/, Backend& /*be*/) {
  throw Error("parallel.comm = nccl: " + nccl_status() + "; use parallel.comm = mpi");
}

}  // namespace triad

#endif
