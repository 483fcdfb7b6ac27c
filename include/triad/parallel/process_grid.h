// The dp × pp × tp grid of ranks (DESIGN.md §1). Layers never talk to MPI directly: they are
// handed the communicators (Comm) of their groups from here. Rank layout: tp innermost, then
// pp, then dp (world rank = (dp_rank·pp + pp_rank)·tp + tp_rank), as in Megatron, so that a
// tensor-parallel group shares a node. The grid builds all three groups; the training loop
// runs every shape (see docs/parallelism.md).
#pragma once

#include <mpi.h>

#include <functional>
#include <memory>
#include <string>

#include "triad/parallel/comm.h"

namespace triad {

struct GridShape {
  int dp = 1, pp = 1, tp = 1;
};

class ProcessGrid {
 public:
  // Builds the grid over `world` for the requested tp × pp (dp = world size / (tp·pp)).
  // Throws triad::Error (on every rank alike) if the world size is not a multiple of tp·pp.
  ProcessGrid(MPI_Comm world, int tp, int pp);
  ~ProcessGrid();

  MPI_Comm world() const { return world_; }
  int world_rank() const { return rank_; }
  int world_size() const { return size_; }
  const GridShape& shape() const { return shape_; }
  bool is_root() const { return rank_ == 0; }
  int dp_rank() const { return rank_ / (shape_.tp * shape_.pp); }
  int pp_rank() const { return (rank_ / shape_.tp) % shape_.pp; }
  int tp_rank() const { return rank_ % shape_.tp; }
  Comm& dp() { return *dp_; }  // same (pp, tp) coordinates, ordered by dp rank
  Comm& pp() { return *pp_; }  // same (dp, tp): the stages of one pipeline, in stage order
  Comm& tp() { return *tp_; }  // same (dp, pp): one tensor-parallel group
  Comm& all() { return *all_; }
  std::string describe() const;  // "dp=2 pp=1 tp=1"
  // Replaces each group's Comm by wrap(that Comm), e.g. one that also takes device buffers.
  void wrap_comms(const std::function<std::unique_ptr<Comm>(std::unique_ptr<Comm>)>& wrap);
  // Comm::abort() on every group (after an error, before tearing down).
  void abort_comms();

 private:
  MPI_Comm world_;
  int rank_ = 0, size_ = 1;
  GridShape shape_;
  std::unique_ptr<Comm> dp_, pp_, tp_, all_;
};

}  // namespace triad
