#include "triad/parallel/process_grid.h"

#include "triad/core/error.h"

namespace triad {

ProcessGrid::ProcessGrid(MPI_Comm world, int tp, int pp) : world_(world) {
  TRIAD_MPI_CHECK(MPI_Comm_rank(world, &rank_));
  TRIAD_MPI_CHECK(MPI_Comm_size(world, &size_));
  TRIAD_CHECK(tp >= 1 && pp >= 1, "parallel.tp and parallel.pp must be >= 1 (got tp=", tp,
              ", pp=", pp, ")");
  TRIAD_CHECK(size_ % (tp * pp) == 0, "the job has ", size_,
              " ranks, which is not a multiple of parallel.tp · parallel.pp = ", tp, " · ", pp,
              " = ", tp * pp);
  shape_ = GridShape{size_ / (tp * pp), pp, tp};
  TRIAD_CHECK(tp == 1, "parallel.tp = ", tp,
              ": tensor parallelism is not implemented in this version (use 1)");
  TRIAD_CHECK(pp == 1, "parallel.pp = ", pp,
              ": pipeline parallelism is not implemented in this version (use 1)");
  // With tp = pp = 1 every rank is its own (tp, pp) coordinate and the dp group is the world.
  MPI_Comm dp = MPI_COMM_NULL, all = MPI_COMM_NULL;
  TRIAD_MPI_CHECK(MPI_Comm_dup(world, &dp));
  TRIAD_MPI_CHECK(MPI_Comm_dup(world, &all));
  dp_ = make_mpi_comm(dp, "dp", true);
  all_ = make_mpi_comm(all, "world", true);
}

ProcessGrid::~ProcessGrid() = default;

std::string ProcessGrid::describe() const {
  return "dp=" + std::to_string(shape_.dp) + " pp=" + std::to_string(shape_.pp) +
         " tp=" + std::to_string(shape_.tp);
}

}  // namespace triad
