// The dp × pp × tp (× cp) grid (run under mpiexec -np 4): coordinates follow the Megatron layout
// (tp fastest, then cp, pp, dp), and each group holds exactly the ranks that share its other
// coordinates; dp() holds the parameters' replicas, every (dp, cp) pair.
#include <gtest/gtest.h>
#include <mpi.h>

#include <vector>

#include "../support/mpi_test_helpers.h"
#include "../support/mpi_test_main.h"
#include "triad/core/error.h"
#include "triad/parallel/process_grid.h"

namespace triad {
namespace {

using triad::testing::pieces;
using triad::testing::world_size;

// The sum of the world ranks in a group, computed from the layout alone.
int expected_sum(const ProcessGrid& g, char which) {
  const auto& s = g.shape();
  int sum = 0;
  for (int r = 0; r < g.world_size(); ++r) {
    const int tp = r % s.tp, cp = (r / s.tp) % s.cp, pp = (r / (s.tp * s.cp)) % s.pp;
    const int dp = r / (s.tp * s.cp * s.pp);
    const bool same_dp = dp == g.dp_rank(), same_cp = cp == g.cp_rank();
    const bool same_pp = pp == g.pp_rank(), same_tp = tp == g.tp_rank();
    const bool same = which == 'd'   ? same_pp && same_tp
                      : which == 'c' ? same_dp && same_pp && same_tp
                      : which == 'p' ? same_dp && same_cp && same_tp
                                     : same_dp && same_cp && same_pp;
    if (same) sum += r;
  }
  return sum;
}

TEST(ProcessGrid, GroupsFollowTheLayout) {
  const int n = world_size();
  for (int tp = 1; tp <= n; ++tp)
    for (int pp = 1; tp * pp <= n; ++pp)
      for (int cp = 1; tp * pp * cp <= n; ++cp) {
        if (n % (tp * pp * cp) != 0) continue;
        ProcessGrid g(MPI_COMM_WORLD, tp, pp, cp);
        const std::string what = g.describe();
        EXPECT_EQ(g.shape().dp * tp * pp * cp, n) << what;
        const int r = g.world_rank();
        EXPECT_EQ(r, ((g.dp_rank() * pp + g.pp_rank()) * cp + g.cp_rank()) * tp + g.tp_rank())
            << what;
        EXPECT_EQ(g.dp().size(), g.shape().dp * cp) << what;
        EXPECT_EQ(g.cp().size(), cp) << what;
        EXPECT_EQ(g.pp().size(), pp) << what;
        EXPECT_EQ(g.tp().size(), tp) << what;
        EXPECT_EQ(g.dp().rank(), g.replica_rank()) << what;
        EXPECT_EQ(g.replica_rank(), g.dp_rank() * cp + g.cp_rank()) << what;
        EXPECT_EQ(g.cp().rank(), g.cp_rank()) << what;
        EXPECT_EQ(g.pp().rank(), g.pp_rank()) << what;
        EXPECT_EQ(g.tp().rank(), g.tp_rank()) << what;
        // Membership: the sum of the members' world ranks, through each group's all-reduce.
        for (char which : {'d', 'c', 'p', 't'}) {
          Comm& c = which == 'd' ? g.dp() : which == 'c' ? g.cp() : which == 'p' ? g.pp() : g.tp();
          EXPECT_EQ(int(c.all_reduce_sum(double(r))), expected_sum(g, which))
              << what << " " << which;
        }
      }
}

// wrap_comms hands every group's Comm to the wrapper (the CUDA backend wraps them in a Comm
// that stages device buffers) and the grid keeps working through what it returns.
TEST(ProcessGrid, WrapCommsReplacesEveryGroup) {
  ProcessGrid g(MPI_COMM_WORLD, 1, 1);
  std::vector<std::string> seen;
  g.wrap_comms([&](std::unique_ptr<Comm> c) {
    seen.push_back(c->name());
    return c;
  });
  EXPECT_EQ(seen.size(), 5u);
  EXPECT_EQ(int(g.dp().all_reduce_sum(1.0)), world_size());
}

// A completion action runs once, in the first wait(), after the message has arrived: where a
// staging Comm copies a received message to the device.
TEST(ProcessGrid, CompletionActionRunsOnceAfterTheTransfer) {
  ProcessGrid g(MPI_COMM_WORLD, 1, 1);
  Comm& c = g.dp();
  const int n = c.size(), r = c.rank();
  float out = float(r), in = -1.0f, seen = -2.0f;
  int runs = 0;
  CommRequest recv = c.irecv(&in, 1, (r + n - 1) % n, 7);
  recv.on_complete([&] {
    seen = in;
    ++runs;
  });
  EXPECT_TRUE(recv.pending());
  CommRequest send = c.isend(&out, 1, (r + 1) % n, 7);
  recv.wait();
  recv.wait();
  send.wait();
  EXPECT_EQ(runs, 1);
  EXPECT_FALSE(recv.pending());
  EXPECT_EQ(seen, float((r + n - 1) % n));
}

// ZeRO-2's reduction of a bucket cut by the slices: rank r receives the sum of its piece, of any
// length (rank 1's empty), and the call counts the whole send buffer.
TEST(ProcessGrid, ReduceScatterOfPiecesGivesEachRankItsPiece) {
  ProcessGrid g(MPI_COMM_WORLD, 1, 1);
  Comm& c = g.dp();
  const int n = c.size(), r = c.rank();
  const auto [counts, at, total] = pieces(n, r, 3, 5);
  std::vector<float> send(total), recv(counts[size_t(r)] + 1, -7.0f);
  for (size_t i = 0; i < total; ++i) send[i] = float(i) + 0.25f * float(r + 1);
  c.reset_stats();
  CommRequest req = c.ireduce_scatter_pieces_sum(send.data(), recv.data(), counts);
  req.wait();
  const float ranks = 0.25f * float(n * (n + 1) / 2);  // Σ 0.25·(k + 1), exact in binary
  for (size_t i = 0; i < counts[size_t(r)]; ++i)
    EXPECT_EQ(recv[i], float(n) * float(at + i) + ranks) << "rank " << r << " at " << i;
  EXPECT_EQ(recv.back(), -7.0f) << "nothing beyond the piece";
  EXPECT_EQ(c.stats().bytes[CommStats::kReduceScatter], total * sizeof(float));
}

// ZeRO-3's gather of a layer from the slices that hold it: every rank receives every piece in
// rank order (rank 1's empty), as words; the call counts this rank's piece.
TEST(ProcessGrid, AllGatherOfPiecesPlacesEachRanksPiece) {
  ProcessGrid g(MPI_COMM_WORLD, 1, 1);
  Comm& c = g.dp();
  const int n = c.size(), r = c.rank();
  const auto [counts, at, total] = pieces(n, r, 2, 7);
  std::vector<float> send(counts[size_t(r)] + 1), recv(total + 1, -7.0f);
  for (size_t i = 0; i < counts[size_t(r)]; ++i) send[i] = float(at + i) + 0.5f;
  c.reset_stats();
  c.iall_gather_pieces(send.data(), recv.data(), counts).wait();
  for (size_t i = 0; i < total; ++i)
    EXPECT_EQ(recv[i], float(i) + 0.5f) << "rank " << r << " at " << i;
  EXPECT_EQ(recv.back(), -7.0f) << "nothing beyond the pieces";
  EXPECT_EQ(c.stats().bytes[CommStats::kAllGather], counts[size_t(r)] * sizeof(float));
}

// Expert parallelism: groups of ep consecutive data-parallel ranks (ep()), and an expert's
// replicas, the ranks of the same ep_rank in every group and context-parallel place (edp()).
TEST(ProcessGrid, ExpertGroupsSplitTheDataParallelRanks) {
  const int n = world_size();
  for (int cp : {1, 2})
    for (int ep = 2; ep <= n / cp; ep *= 2) {
      if (n % cp != 0 || (n / cp) % ep != 0) continue;
      ProcessGrid g(MPI_COMM_WORLD, 1, 1, cp, ep);
      const std::string what = g.describe();
      EXPECT_NE(what.find(" ep=" + std::to_string(ep)), std::string::npos) << what;
      EXPECT_EQ(g.ep().size(), ep) << what;
      EXPECT_EQ(g.ep().rank(), g.ep_rank()) << what;
      EXPECT_EQ(g.ep_rank(), g.dp_rank() % ep) << what;
      EXPECT_EQ(g.edp().size(), g.expert_replicas()) << what;
      EXPECT_EQ(g.expert_replicas() * ep, g.replicas()) << what;
      EXPECT_EQ(g.edp().rank(), g.expert_replica_rank()) << what;
      int ep_sum = 0, edp_sum = 0;
      for (int r = 0; r < n; ++r) {
        const int dp = r / cp, c = r % cp;  // tp = pp = 1
        if (dp / ep == g.dp_rank() / ep && c == g.cp_rank()) ep_sum += r;
        if (dp % ep == g.ep_rank()) edp_sum += r;
      }
      EXPECT_EQ(int(g.ep().all_reduce_sum(double(g.world_rank()))), ep_sum) << what;
      EXPECT_EQ(int(g.edp().all_reduce_sum(double(g.world_rank()))), edp_sum) << what;
    }
  // Without expert parallelism an expert's replicas are every replica.
  ProcessGrid g(MPI_COMM_WORLD, 1, 1);
  EXPECT_EQ(&g.edp(), &g.dp());
  if (n % 3 != 0) {
    try {
      ProcessGrid bad(MPI_COMM_WORLD, 1, 1, 1, 3);
      FAIL() << "no error";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("parallel.ep = 3"), std::string::npos) << e.what();
    }
  }
}

// The token exchange of expert parallelism: rank r sends rank q a block of r + 2q bytes (some
// empty), each byte naming its sender, receiver and place; every rank receives its blocks in
// rank order, and the call counts the bytes this rank sent.
TEST(ProcessGrid, AllToAllDeliversEveryBlockInRankOrder) {
  ProcessGrid g(MPI_COMM_WORLD, 1, 1);
  Comm& c = g.dp();
  const int n = c.size(), r = c.rank();
  auto bytes = [](int from, int to) { return size_t(from + 2 * to); };
  auto value = [](int from, int to, size_t i) { return uint8_t(from * 50 + to * 7 + int(i)); };
  std::vector<size_t> send_bytes, recv_bytes;
  std::vector<uint8_t> send;
  for (int q = 0; q < n; ++q) {
    send_bytes.push_back(bytes(r, q));
    recv_bytes.push_back(bytes(q, r));
    for (size_t i = 0; i < bytes(r, q); ++i) send.push_back(value(r, q, i));
  }
  size_t total = 0;
  for (size_t b : recv_bytes) total += b;
  std::vector<uint8_t> recv(total + 1, 0xEE);
  c.reset_stats();
  c.all_to_all(send.data(), send_bytes, recv.data(), recv_bytes);
  size_t at = 0;
  for (int q = 0; q < n; ++q)
    for (size_t i = 0; i < bytes(q, r); ++i, ++at)
      EXPECT_EQ(recv[at], value(q, r, i)) << "rank " << r << " from " << q << " at " << i;
  EXPECT_EQ(recv.back(), 0xEE) << "nothing beyond the blocks";
  EXPECT_EQ(c.stats().bytes[CommStats::kAllToAll], send.size());
  EXPECT_EQ(c.stats().calls[CommStats::kAllToAll], 1u);
}

TEST(ProcessGrid, WorldNotDivisibleIsAClearError) {
  const int n = world_size();
  try {
    ProcessGrid g(MPI_COMM_WORLD, n + 1, 1);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("not a multiple"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace triad

int main(int argc, char** argv) { return triad::testing::run_mpi_tests(argc, argv); }
