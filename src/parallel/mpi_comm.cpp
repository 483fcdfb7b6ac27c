#include <algorithm>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <memory>

#include "triad/core/error.h"
#include "triad/parallel/comm.h"

namespace triad {

void check_mpi(int rc, const char* what, const char* file, int line) {
  if (rc == MPI_SUCCESS) return;
  char msg[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(rc, msg, &len);
  int rank = -1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  fail("MPI call ", what, " failed on rank ", rank, " at ", file, ":", line, ": ",
       std::string(msg, size_t(len)));
}

int rank_in(MPI_Comm comm) {
  int rank = 0;
  TRIAD_MPI_CHECK(MPI_Comm_rank(comm, &rank));
  return rank;
}

int size_of(MPI_Comm comm) {
  int size = 1;
  TRIAD_MPI_CHECK(MPI_Comm_size(comm, &size));
  return size;
}

std::pair<int, std::string> lowest_rank_message(MPI_Comm comm, bool has,
                                                const std::string& message) {
  const int rank = rank_in(comm), size = size_of(comm);
  int first = has ? rank : size;
  MPI_Allreduce(MPI_IN_PLACE, &first, 1, MPI_INT, MPI_MIN, comm);
  if (first == size) return {size, std::string()};
  std::string msg = rank == first ? message : std::string();
  int len = static_cast<int>(msg.size());
  MPI_Bcast(&len, 1, MPI_INT, first, comm);
  msg.resize(size_t(len));
  if (len > 0) MPI_Bcast(msg.data(), len, MPI_CHAR, first, comm);
  return {first, std::move(msg)};
}

// A pending request dropped is a bug in triad, never a user error; a destructor cannot throw, so
// the rank stops here (mpirun then ends the others) rather than run on with a race.
void CommRequest::dropped_pending(const char* how) {
  std::fprintf(stderr,
               "triad: internal error: a pending communication request was %s before "
               "its wait()\n",
               how);
  std::fflush(stderr);
  std::abort();
}

CommRequest::~CommRequest() {
  if (pending() && std::uncaught_exceptions() == 0) dropped_pending("destroyed");
}

void CommRequest::wait() {
  if (req_ != MPI_REQUEST_NULL) TRIAD_MPI_CHECK(MPI_Wait(&req_, MPI_STATUS_IGNORE));
  if (then_) {
    auto f = std::move(then_);
    then_ = nullptr;
    f();
  }
}

namespace {

// MPI counts are int: larger buffers would need derived datatypes. 2^31 floats is 8 GB per
// call, far beyond any buffer triad reduces in one piece; refuse rather than truncate.
int count_of(size_t n) {
  TRIAD_CHECK(n <= size_t(INT_MAX), "internal error: MPI message of ", n, " elements");
  return int(n);
}

class MpiComm final : public Comm {
 public:
  MpiComm(MPI_Comm c, std::string name, bool owns)
      : comm_(c), name_(std::move(name)), owns_(owns), rank_(rank_in(c)), size_(size_of(c)) {}
  ~MpiComm() override {
    if (owns_ && comm_ != MPI_COMM_NULL) MPI_Comm_free(&comm_);
  }
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string name() const override { return name_; }

  void all_reduce_sum(float* buf, size_t n) override {
    stats_.add(CommStats::kAllReduce, n * sizeof(float));
    if (size_ == 1) return;
    TRIAD_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, buf, count_of(n), MPI_FLOAT, MPI_SUM, comm_));
  }
  CommRequest iall_reduce_sum(float* buf, size_t n) override {
    stats_.add(CommStats::kAllReduce, n * sizeof(float));
    if (size_ == 1) return {};
    MPI_Request r;
    TRIAD_MPI_CHECK(MPI_Iallreduce(MPI_IN_PLACE, buf, count_of(n), MPI_FLOAT, MPI_SUM, comm_, &r));
    return CommRequest(r);
  }
  void all_reduce_max(float* buf, size_t n) override {
    stats_.add(CommStats::kAllReduce, n * sizeof(float));
    if (size_ == 1) return;
    TRIAD_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, buf, count_of(n), MPI_FLOAT, MPI_MAX, comm_));
  }
  double all_reduce_sum(double x) override {
    stats_.add(CommStats::kScalar, sizeof(double));
    double y = x;
    if (size_ > 1) TRIAD_MPI_CHECK(MPI_Allreduce(&x, &y, 1, MPI_DOUBLE, MPI_SUM, comm_));
    return y;
  }
  int64_t all_reduce_max(int64_t x) override {
    stats_.add(CommStats::kScalar, sizeof(int64_t));
    int64_t y = x;
    if (size_ > 1) TRIAD_MPI_CHECK(MPI_Allreduce(&x, &y, 1, MPI_INT64_T, MPI_MAX, comm_));
    return y;
  }
  void reduce_scatter_sum(const float* send, float* recv, size_t count) override {
    stats_.add(CommStats::kReduceScatter, size_t(size_) * count * sizeof(float));
    if (size_ == 1) {
      if (send != recv) std::copy(send, send + count, recv);
      return;
    }
    TRIAD_MPI_CHECK(
        MPI_Reduce_scatter_block(send, recv, count_of(count), MPI_FLOAT, MPI_SUM, comm_));
  }
  CommRequest ireduce_scatter_sum(const float* send, float* recv, size_t count) override {
    stats_.add(CommStats::kReduceScatter, size_t(size_) * count * sizeof(float));
    if (size_ == 1) {
      if (send != recv) std::copy(send, send + count, recv);
      return {};
    }
    MPI_Request r;
    TRIAD_MPI_CHECK(
        MPI_Ireduce_scatter_block(send, recv, count_of(count), MPI_FLOAT, MPI_SUM, comm_, &r));
    return CommRequest(r);
  }
  CommRequest ireduce_scatter_pieces_sum(const float* send, float* recv,
                                         const std::vector<size_t>& counts) override {
    TRIAD_CHECK(counts.size() == size_t(size_), "internal error: ", counts.size(),
                " pieces for a group of ", size_);
    size_t total = 0;
    for (size_t c : counts) total += c;
    stats_.add(CommStats::kReduceScatter, total * sizeof(float));
    if (size_ == 1) {
      if (send != recv) std::copy(send, send + total, recv);
      return {};
    }
    // The counts stay alive (and unchanged) until the operation completes.
    auto ints = std::make_shared<std::vector<int>>();
    for (size_t c : counts) ints->push_back(count_of(c));
    MPI_Request r;
    TRIAD_MPI_CHECK(MPI_Ireduce_scatter(send, recv, ints->data(), MPI_FLOAT, MPI_SUM, comm_, &r));
    CommRequest req(r);
    req.on_complete([ints] {});
    return req;
  }
  void all_gather(const float* send, float* recv, size_t count) override {
    stats_.add(CommStats::kAllGather, count * sizeof(float));
    if (size_ == 1) {
      if (send != recv) std::copy(send, send + count, recv);
      return;
    }
    // In place when send is this rank's block of recv.
    const void* s = send == recv + size_t(rank_) * count ? MPI_IN_PLACE : send;
    TRIAD_MPI_CHECK(
        MPI_Allgather(s, count_of(count), MPI_FLOAT, recv, count_of(count), MPI_FLOAT, comm_));
  }
  CommRequest iall_gather_pieces(const float* send, float* recv,
                                 const std::vector<size_t>& counts) override {
    TRIAD_CHECK(counts.size() == size_t(size_), "internal error: ", counts.size(),
                " pieces for a group of ", size_);
    const size_t mine = counts[size_t(rank_)];
    stats_.add(CommStats::kAllGather, mine * sizeof(float));
    if (size_ == 1) {
      if (send != recv) std::copy(send, send + mine, recv);
      return {};
    }
    // Counts and displacements stay alive (and unchanged) until the operation completes. As
    // MPI_INT: words are moved, never read as floats.
    auto ints = std::make_shared<std::vector<int>>();
    int at = 0;
    for (size_t c : counts) ints->push_back(count_of(c));
    for (size_t c : counts) {
      ints->push_back(at);
      at += count_of(c);
    }
    MPI_Request r;
    TRIAD_MPI_CHECK(MPI_Iallgatherv(send, count_of(mine), MPI_INT, recv, ints->data(),
                                    ints->data() + size_, MPI_INT, comm_, &r));
    CommRequest req(r);
    req.on_complete([ints] {});
    return req;
  }
  void broadcast(float* buf, size_t n, int root) override {
    stats_.add(CommStats::kBroadcast, n * sizeof(float));
    if (size_ == 1) return;
    TRIAD_MPI_CHECK(MPI_Bcast(buf, count_of(n), MPI_FLOAT, root, comm_));
  }
  void all_to_all(const void* send, const std::vector<size_t>& send_bytes, void* recv,
                  const std::vector<size_t>& recv_bytes) override {
    TRIAD_CHECK(send_bytes.size() == size_t(size_) && recv_bytes.size() == size_t(size_),
                "internal error: all-to-all of ", send_bytes.size(), " and ", recv_bytes.size(),
                " blocks in a group of ", size_);
    size_t total = 0;
    for (size_t b : send_bytes) total += b;
    stats_.add(CommStats::kAllToAll, total);
    // The blocks move in the widest unit every one of them is made of (8, 4, 2 or 1 bytes: fp32
    // rows and matrices in words), so that MPI's int counts reach that many times further.
    size_t unit = 8;
    for (const auto* bytes : {&send_bytes, &recv_bytes})
      for (size_t b : *bytes)
        while (b % unit != 0) unit /= 2;
    const MPI_Datatype type = unit == 8   ? MPI_UINT64_T
                              : unit == 4 ? MPI_UINT32_T
                              : unit == 2 ? MPI_UINT16_T
                                          : MPI_BYTE;
    // Counts, then displacements, of what goes and what comes, in units.
    std::vector<int> ints(4 * size_t(size_));
    int sent = 0, received = 0;
    for (size_t r = 0; r < size_t(size_); ++r) {
      ints[r] = count_of(send_bytes[r] / unit);
      ints[size_t(size_) + r] = sent;
      sent = count_of(size_t(sent) + send_bytes[r] / unit);
      ints[2 * size_t(size_) + r] = count_of(recv_bytes[r] / unit);
      ints[3 * size_t(size_) + r] = received;
      received = count_of(size_t(received) + recv_bytes[r] / unit);
    }
    const int n = size_;
    TRIAD_MPI_CHECK(MPI_Alltoallv(send, ints.data(), ints.data() + n, type, recv,
                                  ints.data() + 2 * n, ints.data() + 3 * n, type, comm_));
  }
  void send(const float* buf, size_t n, int dst, int tag) override {
    stats_.add(CommStats::kSend, n * sizeof(float));
    TRIAD_MPI_CHECK(MPI_Send(buf, count_of(n), MPI_FLOAT, dst, tag, comm_));
  }
  void recv(float* buf, size_t n, int src, int tag) override {
    stats_.add(CommStats::kRecv, n * sizeof(float));
    TRIAD_MPI_CHECK(MPI_Recv(buf, count_of(n), MPI_FLOAT, src, tag, comm_, MPI_STATUS_IGNORE));
  }
  CommRequest isend(const float* buf, size_t n, int dst, int tag) override {
    stats_.add(CommStats::kSend, n * sizeof(float));
    MPI_Request r;
    TRIAD_MPI_CHECK(MPI_Isend(buf, count_of(n), MPI_FLOAT, dst, tag, comm_, &r));
    return CommRequest(r);
  }
  CommRequest irecv(float* buf, size_t n, int src, int tag) override {
    stats_.add(CommStats::kRecv, n * sizeof(float));
    MPI_Request r;
    TRIAD_MPI_CHECK(MPI_Irecv(buf, count_of(n), MPI_FLOAT, src, tag, comm_, &r));
    return CommRequest(r);
  }
  void barrier() override { TRIAD_MPI_CHECK(MPI_Barrier(comm_)); }

 private:
  MPI_Comm comm_;
  std::string name_;
  bool owns_;
  int rank_, size_;
};

}  // namespace

std::vector<size_t> slice_pieces(size_t lo, size_t hi, size_t slice, int ranks) {
  std::vector<size_t> counts(static_cast<size_t>(ranks), 0);
  for (size_t r = 0; r < counts.size(); ++r) {
    const size_t a = std::max(lo, r * slice), b = std::min(hi, (r + 1) * slice);
    counts[r] = a < b ? b - a : 0;
  }
  return counts;
}

std::unique_ptr<Comm> make_mpi_comm(MPI_Comm comm, std::string name, bool owns) {
  return std::make_unique<MpiComm>(comm, std::move(name), owns);
}

}  // namespace triad
