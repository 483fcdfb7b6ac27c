#include "triad/parallel/process_grid.h"

#include "triad/core/error.h"

namespace triad {

ProcessGrid::ProcessGrid(MPI_Comm world, int tp, int pp) : world_(world) {
  MPI_Comm_rank(world, &rank_);
  MPI_Comm_size(world, &size_);
  TRIAD_CHECK(tp >= 1 && pp >= 1, "parallel.tp and parallel.pp must be >= 1 (got tp=", tp,
              ", pp=", pp, ")");
  TRIAD_CHECK(size_ % (tp * pp) == 0, "world size ", size_, " is not a multiple of tp·pp = ",
              tp * pp);
  shape_ = GridShape{size_ / (tp * pp), pp, tp};
  TRIAD_CHECK(tp == 1, "parallel.tp = ", tp,
              ": tensor parallelism is not implemented in this version (use 1)");
  TRIAD_CHECK(pp == 1, "parallel.pp = ", pp,
              ": pipeline parallelism is not implemented in this version (use 1)");
  TRIAD_CHECK(size_ == 1, "this version of triad runs on one rank; got ", size_,
              " ranks (data parallelism is not implemented yet)");
}

std::string ProcessGrid::describe() const {
  return "dp=" + std::to_string(shape_.dp) + " pp=" + std::to_string(shape_.pp) +
         " tp=" + std::to_string(shape_.tp);
}

}  // namespace triad
