#include "triad/parallel/process_grid.h"

#include "triad/core/error.h"

namespace triad {

ProcessGrid::ProcessGrid(MPI_Comm world, int tp, int pp, int cp, int ep) : world_(world) {
  TRIAD_MPI_CHECK(MPI_Comm_rank(world, &rank_));
  TRIAD_MPI_CHECK(MPI_Comm_size(world, &size_));
  TRIAD_CHECK(tp >= 1 && pp >= 1 && cp >= 1,
              "parallel.tp, parallel.pp and parallel.cp must be >= 1 (got tp=", tp, ", pp=", pp,
              ", cp=", cp, ")");
  const int64_t grid = int64_t(tp) * pp * cp;  // (int64: a product of sizes no job has)
  TRIAD_CHECK(grid <= size_ && size_ % grid == 0, "the job has ", size_,
              " ranks, which is not a multiple of parallel.tp · parallel.pp · parallel.cp = ", tp,
              " · ", pp, " · ", cp, " = ", grid);
  shape_ = GridShape{int(size_ / grid), pp, tp, cp, ep};
  TRIAD_CHECK(ep >= 1, "parallel.ep must be >= 1 (got ", ep, ")");
  TRIAD_CHECK(shape_.dp % ep == 0, "parallel.ep = ", ep,
              " must divide the data-parallel size (world size / (parallel.tp · parallel.pp · "
              "parallel.cp) = ",
              shape_.dp, ")");
  // One split per group: the colour is the coordinates the group shares, the key the
  // coordinate that varies inside it (so a group's rank equals that coordinate).
  auto split = [&](int color, int key, const char* name) {
    MPI_Comm c = MPI_COMM_NULL;
    TRIAD_MPI_CHECK(MPI_Comm_split(world, color, key, &c));
    return make_mpi_comm(c, name, true);
  };
  dp_ = split(pp_rank() * tp + tp_rank(), replica_rank(), "dp");
  cp_ = split((dp_rank() * pp + pp_rank()) * tp + tp_rank(), cp_rank(), "cp");
  pp_ = split((dp_rank() * cp + cp_rank()) * tp + tp_rank(), pp_rank(), "pp");
  tp_ = split((dp_rank() * pp + pp_rank()) * cp + cp_rank(), tp_rank(), "tp");
  if (ep > 1) {
    const int edp_rank = dp_rank() / ep;
    ep_ = split(((edp_rank * pp + pp_rank()) * cp + cp_rank()) * tp + tp_rank(), ep_rank(), "ep");
    edp_ = split((ep_rank() * pp + pp_rank()) * tp + tp_rank(), expert_replica_rank(), "edp");
  }
  MPI_Comm all = MPI_COMM_NULL;
  TRIAD_MPI_CHECK(MPI_Comm_dup(world, &all));
  all_ = make_mpi_comm(all, "world", true);
}

ProcessGrid::~ProcessGrid() = default;

Comm& ProcessGrid::ep() {
  TRIAD_ASSERT(ep_ != nullptr);
  return *ep_;
}

std::string ProcessGrid::describe() const {
  return "dp=" + std::to_string(shape_.dp) + " pp=" + std::to_string(shape_.pp) +
         " tp=" + std::to_string(shape_.tp) +
         (shape_.cp > 1 ? " cp=" + std::to_string(shape_.cp) : std::string()) +
         (shape_.ep > 1 ? " ep=" + std::to_string(shape_.ep) : std::string());
}

void ProcessGrid::wrap_comms(
    const std::function<std::unique_ptr<Comm>(std::unique_ptr<Comm>)>& wrap) {
  for (auto* c : {&dp_, &cp_, &pp_, &tp_, &all_, &ep_, &edp_})
    if (*c) *c = wrap(std::move(*c));
}

void ProcessGrid::abort_comms() {
  for (auto* c : {&dp_, &cp_, &pp_, &tp_, &all_, &ep_, &edp_})
    if (*c) (*c)->abort();
}

}  // namespace triad
