// The dp × pp × tp grid of ranks (DESIGN.md §1), with context parallelism a fourth axis, cp.
// Layers never talk to MPI directly: they are handed the communicators (Comm) of their groups
// from here. Rank layout: tp innermost, then cp, then pp, then dp (world rank = ((dp_rank·pp +
// pp_rank)·cp + cp_rank)·tp + tp_rank; with cp = 1 Megatron's (dp_rank·pp + pp_rank)·tp +
// tp_rank), so that a tensor-parallel group, and then a context-parallel one, shares a node. The
// ranks of a context-parallel group hold parts of the same sequences and the same parameters:
// for the parameters (gradient reduction, ZeRO, checkpoints) they are data-parallel replicas, and
// dp() spans them; for the data they are one data-parallel rank (dp_rank()). The training loop
// runs every shape (see docs/parallelism.md).
//
// Expert parallelism (ep > 1, a mixture of experts' layers) splits the data-parallel ranks
// further: dp_rank = edp_rank·ep + ep_rank, and the ep consecutive data-parallel ranks of one
// edp_rank hold 1/ep of every layer's experts each (Megatron's expert-parallel group inside the
// data-parallel one). An expert's replicas are then the ranks of the same ep_rank: (dp/ep)·cp of
// them (edp()); the other parameters' replicas stay dp().
#pragma once

#include <mpi.h>

#include <functional>
#include <memory>
#include <string>

#include "triad/parallel/comm.h"

namespace triad {

struct GridShape {
  int dp = 1, pp = 1, tp = 1, cp = 1, ep = 1;
};

class ProcessGrid {
 public:
  // Builds the grid over `world` for the requested tp × pp × cp (dp = world size / (tp·pp·cp))
  // with expert parallelism ep among the data-parallel ranks. Throws triad::Error (on every rank
  // alike) if the world size is not a multiple of tp·pp·cp or dp not one of ep.
  ProcessGrid(MPI_Comm world, int tp, int pp, int cp = 1, int ep = 1);
  ~ProcessGrid();

  MPI_Comm world() const { return world_; }
  int world_rank() const { return rank_; }
  int world_size() const { return size_; }
  const GridShape& shape() const { return shape_; }
  bool is_root() const { return rank_ == 0; }
  int dp_rank() const { return rank_ / (shape_.tp * shape_.cp * shape_.pp); }
  int pp_rank() const { return (rank_ / (shape_.tp * shape_.cp)) % shape_.pp; }
  int cp_rank() const { return (rank_ / shape_.tp) % shape_.cp; }
  int tp_rank() const { return rank_ % shape_.tp; }
  int ep_rank() const { return dp_rank() % shape_.ep; }
  // An expert's replicas: this rank's place among the (dp/ep)·cp ranks holding its experts.
  int expert_replicas() const { return shape_.dp / shape_.ep * shape_.cp; }
  int expert_replica_rank() const { return dp_rank() / shape_.ep * shape_.cp + cp_rank(); }
  // The parameters' replicas: dp·cp ranks, this one dp_rank·cp + cp_rank of them (its rank in
  // dp()).
  int replicas() const { return shape_.dp * shape_.cp; }
  int replica_rank() const { return dp_rank() * shape_.cp + cp_rank(); }
  Comm& dp() { return *dp_; }  // same (pp, tp): the replicas, ordered by replica rank
  Comm& cp() { return *cp_; }  // same (dp, pp, tp): one context-parallel group
  Comm& pp() { return *pp_; }  // same (dp, cp, tp): the stages of one pipeline, in stage order
  Comm& tp() { return *tp_; }  // same (dp, cp, pp): one tensor-parallel group
  // ep > 1 only: same (edp_rank, cp, pp, tp), ordered by ep_rank: the ranks that exchange tokens.
  Comm& ep();
  // Same (ep_rank, pp, tp): an expert's replicas, ordered by expert_replica_rank (dp() when
  // ep = 1).
  Comm& edp() { return edp_ ? *edp_ : *dp_; }
  Comm& all() { return *all_; }
  std::string describe() const;  // "dp=2 pp=1 tp=1", and " cp=2" when cp > 1
  // Replaces each group's Comm by wrap(that Comm), e.g. one that also takes device buffers.
  void wrap_comms(const std::function<std::unique_ptr<Comm>(std::unique_ptr<Comm>)>& wrap);
  // Comm::abort() on every group (after an error, before tearing down).
  void abort_comms();

 private:
  MPI_Comm world_;
  int rank_ = 0, size_ = 1;
  GridShape shape_;
  std::unique_ptr<Comm> dp_, cp_, pp_, tp_, all_;
  std::unique_ptr<Comm> ep_, edp_;  // ep > 1 only
};

}  // namespace triad
