// Communication between ranks (DESIGN.md §2): one interface for the collectives and
// point-to-point calls the parallel modes need, implemented over MPI on host buffers; the CUDA
// backend adds Comms that take device buffers (kernels/cuda_comm.h: staged through host memory,
// or NCCL). Layers and the optimizer are
// handed the Comm of their group by the ProcessGrid; none of them touches MPI_COMM_WORLD.
//
// Every call's error is checked and reported with the rank, the call and its site.
#pragma once

#include <mpi.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace triad {

// A pending non-blocking operation; wait() completes it (and is idempotent). An action attached
// with on_complete() runs once, inside the first wait() after the transfer has finished (a
// Comm that stages device buffers through host memory copies a received message to the device
// there and recycles its staging buffers).
class CommRequest {
 public:
  CommRequest() = default;
  explicit CommRequest(MPI_Request r) : req_(r) {}
  // Move-only: a copy would run the completion action twice.
  CommRequest(CommRequest&& o) noexcept
      : req_(std::exchange(o.req_, MPI_REQUEST_NULL)), then_(std::move(o.then_)) {
    o.then_ = nullptr;
  }
  // Assigning over a pending request would drop it unwaited: with NCCL the compute stream would
  // never wait for that collective (a silent race), with MPI the buffer could be freed under it.
  CommRequest& operator=(CommRequest&& o) {
    if (this != &o) {
      if (pending()) dropped_pending("assigned over");
      req_ = std::exchange(o.req_, MPI_REQUEST_NULL);
      then_ = std::move(o.then_);
      o.then_ = nullptr;
    }
    return *this;
  }
  // The same for one that goes unwaited, except while an exception unwinds (the run is ending).
  ~CommRequest();
  CommRequest(const CommRequest&) = delete;
  CommRequest& operator=(const CommRequest&) = delete;
  void wait();
  bool pending() const { return req_ != MPI_REQUEST_NULL || bool(then_); }
  void on_complete(std::function<void()> f) { then_ = std::move(f); }

 private:
  [[noreturn]] static void dropped_pending(const char* how);

  MPI_Request req_ = MPI_REQUEST_NULL;
  std::function<void()> then_;
};

// What a Comm has moved, per kind of call: the number of calls and the bytes of the tensor
// payload this rank handed in (all-reduce: the buffer; reduce-scatter: the whole input; all-gather:
// this rank's block; broadcast, send, recv: the buffer; all-to-all: every block it sends,
// its own included). Scalar reductions (loss, norms, flags) are counted apart.
// docs/parallelism.md turns these into wire volumes.
struct CommStats {
  enum Kind {
    kAllReduce,
    kReduceScatter,
    kAllGather,
    kBroadcast,
    kSend,
    kRecv,
    kScalar,
    kAllToAll,
    kKinds
  };
  uint64_t calls[kKinds] = {};
  uint64_t bytes[kKinds] = {};
  void add(Kind k, uint64_t b) {
    calls[k] += 1;
    bytes[k] += b;
  }
};

class Comm {
 public:
  virtual ~Comm() = default;
  const CommStats& stats() const { return stats_; }
  // A Comm that wraps another also resets the wrapped one's counts.
  virtual void reset_stats() { stats_ = CommStats{}; }
  // After an error on this rank: give up pending operations without waiting for peers, so that
  // tearing down (which synchronizes devices) cannot hang before the job is aborted. MPI needs
  // nothing here (MPI_Abort ends it); a NCCL communicator is aborted.
  virtual void abort() {}
  // An error the transport found in collectives already handed to it (NCCL's
  // ncclCommGetAsyncError: a peer that died, a broken link), which its waiters would otherwise
  // wait on for ever; empty while it knows of none (MPI's: always, it reports by returning).
  // Safe to call from another thread (the hang watchdog's) while this rank waits.
  virtual std::string async_error() { return {}; }
  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual std::string name() const = 0;  // e.g. "dp"

  // In-place sum over the group.
  virtual void all_reduce_sum(float* buf, size_t n) = 0;
  virtual CommRequest iall_reduce_sum(float* buf, size_t n) = 0;
  // In-place element-wise maximum over the group (vocabulary-parallel softmax statistics).
  virtual void all_reduce_max(float* buf, size_t n) = 0;
  virtual double all_reduce_sum(double x) = 0;
  virtual int64_t all_reduce_max(int64_t x) = 0;
  // send holds size()·count floats; rank r receives the sum of the r-th blocks.
  virtual void reduce_scatter_sum(const float* send, float* recv, size_t count) = 0;
  virtual CommRequest ireduce_scatter_sum(const float* send, float* recv, size_t count) = 0;
  // Pieces of unequal length (a ZeRO-2 bucket cut by the ranks' slices): sums `send` over the
  // group and writes rank r's piece, counts[r] elements from offset counts[0] + … + counts[r−1],
  // to recv on rank r. Every rank passes the same counts, one per rank; pieces may be empty.
  // Counted as a reduce-scatter of the whole send buffer. Non-blocking.
  virtual CommRequest ireduce_scatter_pieces_sum(const float* send, float* recv,
                                                 const std::vector<size_t>& counts) = 0;
  // Every rank contributes count floats; recv gets size()·count in rank order.
  virtual void all_gather(const float* send, float* recv, size_t count) = 0;
  // Pieces of unequal length (ZeRO-3 gathering a layer's weights from the slices that hold
  // them): rank r's counts[r] words at send land at offset counts[0] + … + counts[r−1] of recv
  // on every rank. Moves 32-bit words unchanged (bf16 pairs travel as one word). Counted as an
  // all-gather of this rank's piece. Non-blocking.
  virtual CommRequest iall_gather_pieces(const float* send, float* recv,
                                         const std::vector<size_t>& counts) = 0;
  virtual void broadcast(float* buf, size_t n, int root) = 0;
  // Personalized exchange of bytes (expert parallelism's token rows): send holds one block for
  // each rank of the group in rank order, send_bytes[r] bytes for rank r; recv receives
  // recv_bytes[r] bytes from rank r, the blocks in rank order. Every pair of ranks must agree
  // (recv_bytes[r] on rank q = send_bytes[q] on rank r); blocks may be empty. Host or device
  // buffers alike (the CUDA Comms take either). Blocking.
  virtual void all_to_all(const void* send, const std::vector<size_t>& send_bytes, void* recv,
                          const std::vector<size_t>& recv_bytes) = 0;
  virtual void send(const float* buf, size_t n, int dst, int tag) = 0;
  virtual void recv(float* buf, size_t n, int src, int tag) = 0;
  virtual CommRequest isend(const float* buf, size_t n, int dst, int tag) = 0;
  virtual CommRequest irecv(float* buf, size_t n, int src, int tag) = 0;
  virtual void barrier() = 0;

 protected:
  CommStats stats_;
};

// The pieces of the buffer range [lo, hi) held by ranks that each hold an equal contiguous slice
// of `slice` elements, in rank order: counts[r] = |[lo, hi) ∩ [r·slice, (r+1)·slice)| (the
// counts ireduce_scatter_pieces_sum and iall_gather_pieces take for a ZeRO bucket or layer).
std::vector<size_t> slice_pieces(size_t lo, size_t hi, size_t slice, int ranks);

// A Comm over an MPI communicator (which it frees on destruction when it owns it).
std::unique_ptr<Comm> make_mpi_comm(MPI_Comm comm, std::string name, bool owns);

// The calling process's rank in comm, and comm's size; an MPI failure throws as TRIAD_MPI_CHECK.
int rank_in(MPI_Comm comm);
int size_of(MPI_Comm comm);

// Collective over comm: the lowest rank that passes has = true, and its message, on every rank
// ({size_of(comm), ""} when none does). Its MPI calls are not checked: it serves error paths
// (io::agree), where a second error must not replace the first.
std::pair<int, std::string> lowest_rank_message(MPI_Comm comm, bool has,
                                                const std::string& message);

// Throws triad::Error "MPI call <what> failed on rank R at file:line: <MPI message>".
void check_mpi(int rc, const char* what, const char* file, int line);

}  // namespace triad

#define TRIAD_MPI_CHECK(call) ::triad::check_mpi((call), #call, __FILE__, __LINE__)
