// The dp × pp × tp grid of ranks (DESIGN.md §1). Layers never talk to MPI directly: they are
// handed the communicators they need from here. This issue runs dp = pp = tp = 1; the grid
// already validates the requested shape against the world so later modes only add groups.
#pragma once

#include <mpi.h>

#include <string>

namespace triad {

struct GridShape {
  int dp = 1, pp = 1, tp = 1;
};

class ProcessGrid {
 public:
  // Builds the grid over `world` for the requested tp × pp (dp = world size / (tp·pp)).
  // Throws triad::Error if the world size is not a multiple of tp·pp, or if the shape asks
  // for a parallel mode this build does not implement yet.
  ProcessGrid(MPI_Comm world, int tp, int pp);

  MPI_Comm world() const { return world_; }
  int world_rank() const { return rank_; }
  int world_size() const { return size_; }
  const GridShape& shape() const { return shape_; }
  bool is_root() const { return rank_ == 0; }
  std::string describe() const;  // "dp=1 pp=1 tp=1"

 private:
  MPI_Comm world_;
  int rank_ = 0, size_ = 1;
  GridShape shape_;
};

}  // namespace triad
