// The NCCL Comm (kernels/cuda_comm.h) on device buffers: every collective against values
// computed here, its ordering with the backend's compute stream, the non-blocking all-reduce,
// the calls it hands to MPI (host buffers, scalars, point-to-point) and its statistics.
//
// Under ctest this runs as one rank (NCCL communicators of one rank still run NCCL's kernels,
// and the ordering tests use out-of-place collectives whose result shows a race). Launched with
// `mpirun -np N` on a machine with N GPUs it checks real N-rank sums. It skips without a GPU,
// without a loadable NCCL, and with fewer GPUs than ranks (NCCL refuses two ranks on one GPU).
// Values are small integers, so every sum is exact whatever order NCCL adds in.
#include <gtest/gtest.h>
#include <mpi.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "../support/mpi_environment.h"
#include "../support/mpi_test_helpers.h"
#include "triad/core/error.h"
#include "triad/kernels/backend.h"
#include "triad/kernels/cuda_backend.h"
#include "triad/kernels/cuda_comm.h"
#include "triad/parallel/comm.h"

namespace triad {
namespace {

using Vec = std::vector<float>;

Vec small_ints(size_t n, uint32_t seed) {  // integers in [-50, 50]
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> dist(-50, 50);
  Vec v(n);
  for (float& x : v) x = float(dist(rng));
  return v;
}

int world_rank() {
  int r = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &r);
  return r;
}
int world_size() {
  int s = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &s);
  return s;
}

std::unique_ptr<Comm> world_mpi_comm() {
  MPI_Comm c = MPI_COMM_NULL;
  MPI_Comm_dup(MPI_COMM_WORLD, &c);
  return make_mpi_comm(c, "world", true);
}

class CudaNcclTest : public ::testing::Test {
 protected:
  void SetUp() override {
    rank_ = world_rank();
    size_ = world_size();
    const int devices = cuda_device_count();
    std::string why;
    if (!cuda_device_available()) {
      why = "no usable CUDA device (" + cuda_device_description() + ")";
    } else if (!nccl_status().empty()) {
      why = "NCCL unusable: " + nccl_status();
    } else if (size_ > devices) {
      why = std::to_string(size_) + " ranks but " + std::to_string(devices) +
            " GPU(s): NCCL needs one GPU per rank";
    }
    // Every rank skips if one does: the others would wait in the communicator's set-up.
    int skip = why.empty() ? 0 : 1, any = 0;
    MPI_Allreduce(&skip, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    if (any) GTEST_SKIP() << (why.empty() ? "another rank cannot use NCCL" : why);
    be_ = make_cuda_backend(rank_ % devices);
    comm_ = make_nccl_comm(world_mpi_comm(), *be_);
  }
  void TearDown() override {
    comm_.reset();
    if (be_)
      for (float* p : owned_) be_->free(p);
    owned_.clear();
    be_.reset();
  }

  float* upload(const Vec& v) {
    float* d = be_->alloc(v.size());
    be_->copy_from_host(d, v.data(), v.size());
    owned_.push_back(d);
    return d;
  }
  float* device(size_t n) {
    owned_.push_back(be_->alloc(n));
    return owned_.back();
  }
  Vec download(const float* d, size_t n) {
    Vec v(n);
    be_->copy_to_host(v.data(), d, n);
    return v;
  }
  // Σ over ranks r of (r + 1).
  double rank_weight_sum() const { return double(size_) * double(size_ + 1) / 2.0; }

  int rank_ = 0, size_ = 1;
  std::unique_ptr<Backend> be_;
  std::unique_ptr<Comm> comm_;
  std::vector<float*> owned_;
};

TEST_F(CudaNcclTest, AllReduceSumAndMaxOverRanks) {
  const size_t n = 100003;
  const Vec x = small_ints(n, 1);
  Vec mine(n), maxes(n);
  for (size_t i = 0; i < n; ++i) mine[i] = float(rank_ + 1) * x[i];
  float* d = upload(mine);
  comm_->all_reduce_sum(d, n);
  const Vec got = download(d, n);
  for (size_t i = 0; i < n; ++i) ASSERT_EQ(got[i], float(rank_weight_sum() * x[i])) << "at " << i;

  for (size_t i = 0; i < n; ++i) maxes[i] = x[i] + float(rank_);
  float* m = upload(maxes);
  comm_->all_reduce_max(m, n);
  const Vec gm = download(m, n);
  for (size_t i = 0; i < n; ++i) ASSERT_EQ(gm[i], x[i] + float(size_ - 1)) << "at " << i;
}

TEST_F(CudaNcclTest, ReduceScatterGivesEachRankItsBlockSum) {
  const size_t count = 40961;
  const Vec x = small_ints(count * size_t(size_), 2);
  Vec mine(x.size());
  for (size_t i = 0; i < x.size(); ++i) mine[i] = float(rank_ + 1) * x[i];
  float* send = upload(mine);
  float* recv = device(count);
  comm_->reduce_scatter_sum(send, recv, count);
  const Vec got = download(recv, count);
  for (size_t i = 0; i < count; ++i)
    ASSERT_EQ(got[i], float(rank_weight_sum() * x[size_t(rank_) * count + i])) << "at " << i;
}

// ZeRO-2's pieces of unequal length (rank 1's empty), one grouped ncclReduce per rank.
TEST_F(CudaNcclTest, ReduceScatterOfPiecesGivesEachRankItsPiece) {
  const auto [counts, at, total] = triad::testing::pieces(size_, rank_, 1000, 4097);
  const Vec x = small_ints(total, 3);
  Vec mine(total);
  for (size_t i = 0; i < total; ++i) mine[i] = float(rank_ + 1) * x[i];
  float* send = upload(mine);
  const size_t n = counts[size_t(rank_)];
  float* recv = device(std::max<size_t>(1, n));
  comm_->ireduce_scatter_pieces_sum(send, recv, counts).wait();
  const Vec got = download(recv, n);
  for (size_t i = 0; i < n; ++i)
    ASSERT_EQ(got[i], float(rank_weight_sum() * x[at + i])) << "at " << i;
}

// ZeRO-3's gather of pieces of unequal length (rank 1's empty), one grouped ncclBroadcast per
// rank, moving words: NaN payloads arrive bit for bit.
TEST_F(CudaNcclTest, AllGatherOfPiecesPlacesEachRanksPiece) {
  const auto [counts, at, total] = triad::testing::pieces(size_, rank_, 777, 3001);
  const size_t n = counts[size_t(rank_)];
  std::vector<uint32_t> bits(std::max<size_t>(1, n));
  for (size_t i = 0; i < n; ++i) bits[i] = 0x7fc00000u + uint32_t(at + i);  // NaN payloads
  Vec mine(bits.size());
  std::memcpy(mine.data(), bits.data(), bits.size() * sizeof(float));
  float* send = upload(mine);
  float* recv = device(total);
  comm_->iall_gather_pieces(send, recv, counts).wait();
  const Vec got = download(recv, total);
  for (size_t i = 0; i < total; ++i) {
    uint32_t b = 0;
    std::memcpy(&b, &got[i], sizeof b);
    ASSERT_EQ(b, 0x7fc00000u + uint32_t(i)) << "at " << i;
  }
}

// All-gather and broadcast move words: bf16 pairs and NaN payloads arrive bit for bit.
TEST_F(CudaNcclTest, AllGatherAndBroadcastMoveBitsUnchanged) {
  const size_t count = 4099;
  std::vector<uint32_t> words(count);
  for (size_t i = 0; i < count; ++i)
    words[i] = 0x7fa00001u + uint32_t(i) + 0x10000u * uint32_t(rank_);
  Vec mine(count);
  std::memcpy(mine.data(), words.data(), count * sizeof(float));
  float* send = upload(mine);
  float* recv = device(count * size_t(size_));
  comm_->all_gather(send, recv, count);
  const Vec got = download(recv, count * size_t(size_));
  for (int r = 0; r < size_; ++r)
    for (size_t i = 0; i < count; ++i) {
      uint32_t w = 0;
      std::memcpy(&w, &got[size_t(r) * count + i], sizeof w);
      ASSERT_EQ(w, 0x7fa00001u + uint32_t(i) + 0x10000u * uint32_t(r))
          << "rank " << r << " at " << i;
    }

  const int root = size_ - 1;
  float* b = upload(mine);
  comm_->broadcast(b, count, root);
  const Vec gb = download(b, count);
  for (size_t i = 0; i < count; ++i) {
    uint32_t w = 0;
    std::memcpy(&w, &gb[i], sizeof w);
    ASSERT_EQ(w, 0x7fa00001u + uint32_t(i) + 0x10000u * uint32_t(root)) << "at " << i;
  }
}

// The collective runs after the kernels enqueued before it and before those enqueued after it,
// with no host synchronization in between. Large out-of-place transfers make a race visible.
TEST_F(CudaNcclTest, CollectivesAreOrderedWithTheComputeStream) {
  const size_t count = size_t(1) << 24;
  const Vec a = small_ints(count * size_t(size_), 3);
  const Vec b = small_ints(count, 4);
  float* send = upload(a);
  float* recv = device(count);
  float* add = upload(b);
  be_->synchronize();
  for (int rep = 0; rep < 3; ++rep) {
    be_->scale(send, 2.0f, a.size());              // before: the collective must read this
    comm_->reduce_scatter_sum(send, recv, count);  // recv = Σ_r 2^(rep+1)·a (one block)
    be_->accumulate(recv, add, count);             // after: must add to the collective's result
  }
  const Vec got = download(recv, count);
  for (size_t i = 0; i < count; ++i) {
    const double want = 8.0 * double(size_) * a[size_t(rank_) * count + i] + b[i];
    ASSERT_EQ(got[i], float(want)) << "at " << i;
  }
}

// The non-blocking all-reduce lets compute-stream work run meanwhile; after wait() the compute
// stream sees its result.
TEST_F(CudaNcclTest, NonBlockingAllReduceCompletesInWait) {
  const size_t n = size_t(1) << 22;
  const Vec x = small_ints(n, 5);
  const Vec y = small_ints(n, 6);
  float* g = upload(x);
  float* other = upload(y);
  float* add = upload(y);
  CommRequest r = comm_->iall_reduce_sum(g, n);
  be_->accumulate(other, add, n);  // independent work, free to overlap
  r.wait();
  EXPECT_FALSE(r.pending());
  be_->accumulate(g, add, n);
  const Vec got = download(g, n), go = download(other, n);
  for (size_t i = 0; i < n; ++i) {
    ASSERT_EQ(got[i], float(double(size_) * x[i] + y[i])) << "at " << i;
    ASSERT_EQ(go[i], 2.0f * y[i]) << "at " << i;
  }
}

// Host buffers, scalars and point-to-point messages (device ones staged through host memory)
// go through MPI.
TEST_F(CudaNcclTest, HostBuffersScalarsAndMessagesGoThroughMpi) {
  Vec h = {1.0f, 2.0f, 3.0f};
  comm_->all_reduce_sum(h.data(), h.size());
  EXPECT_EQ(h[2], float(3 * size_));
  EXPECT_EQ(comm_->all_reduce_sum(double(rank_ + 1)), rank_weight_sum());
  EXPECT_EQ(comm_->all_reduce_max(int64_t(rank_)), int64_t(size_ - 1));

  const size_t n = 5000;
  const Vec x = small_ints(n, 7 + uint32_t(rank_));
  float* out = upload(x);
  float* in = device(n);
  const int next = (rank_ + 1) % size_, prev = (rank_ + size_ - 1) % size_;
  CommRequest rr = comm_->irecv(in, n, prev, 11);
  CommRequest rs = comm_->isend(out, n, next, 11);
  rs.wait();
  rr.wait();
  const Vec got = download(in, n), want = small_ints(n, 7 + uint32_t(prev));
  EXPECT_EQ(got, want);
}

TEST_F(CudaNcclTest, StatisticsCountNcclAndMpiCalls) {
  comm_->reset_stats();
  for (int k = 0; k < CommStats::kKinds; ++k) EXPECT_EQ(comm_->stats().calls[k], 0u);
  float* d = device(1000);
  comm_->all_reduce_sum(d, 1000);  // NCCL
  Vec h(10);
  comm_->all_reduce_sum(h.data(), h.size());  // MPI
  (void)comm_->all_reduce_sum(1.0);           // MPI scalar
  const CommStats& s = comm_->stats();
  EXPECT_EQ(s.calls[CommStats::kAllReduce], 2u);
  EXPECT_EQ(s.bytes[CommStats::kAllReduce], (1000u + 10u) * sizeof(float));
  EXPECT_EQ(s.calls[CommStats::kScalar], 1u);
  comm_->reset_stats();
  EXPECT_EQ(comm_->stats().calls[CommStats::kAllReduce], 0u);
}

// Needs no GPU: NCCL either loads (and reports a version) or says why not, naming the library.
TEST(CudaNccl, LoadsOrSaysWhy) {
  const std::string why = nccl_status(), version = nccl_version();
  std::printf("NCCL: %s\n", why.empty() ? version.c_str() : why.c_str());
  if (why.empty()) {
    int major = 0, minor = 0, patch = 0;
    ASSERT_EQ(std::sscanf(version.c_str(), "%d.%d.%d", &major, &minor, &patch), 3) << version;
    EXPECT_GE(major, 2);
  } else {
    EXPECT_EQ(version, "");
    EXPECT_TRUE(why.find("libnccl") != std::string::npos ||
                why.find("without CUDA") != std::string::npos)
        << why;
  }
}

// Needs no GPU: the staging decorator forwards host buffers, and resetting its statistics also
// resets the wrapped Comm's (before, the next call copied the old totals back).
TEST(CudaStagedComm, ResetStatsResetsTheWrappedComm) {
  std::unique_ptr<Comm> c;
  try {
    c = make_device_staged_comm(world_mpi_comm());
  } catch (const Error& e) {
    GTEST_SKIP() << e.what();
  }
  Vec h(8, 1.0f);
  c->all_reduce_sum(h.data(), h.size());
  EXPECT_EQ(c->stats().calls[CommStats::kAllReduce], 1u);
  c->reset_stats();
  c->all_reduce_sum(h.data(), h.size());
  EXPECT_EQ(c->stats().calls[CommStats::kAllReduce], 1u);
  EXPECT_EQ(h[0], float(world_size() * world_size()));
}

}  // namespace
}  // namespace triad
