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
  // One split per group: the colour is the coordinates the group shares, the key the
  // coordinate that varies inside it (so a group's rank equals that coordinate).
  auto split = [&](int color, int key, const char* name) {
    MPI_Comm c = MPI_COMM_NULL;
    TRIAD_MPI_CHECK(MPI_Comm_split(world, color, key, &c));
    return make_mpi_comm(c, name, true);
  };
  dp_ = split(pp_rank() * tp + tp_rank(), dp_rank(), "dp");
  pp_ = split(dp_rank() * tp + tp_rank(), pp_rank(), "pp");
  tp_ = split(dp_rank() * pp + pp_rank(), tp_rank(), "tp");
  MPI_Comm all = MPI_COMM_NULL;
  TRIAD_MPI_CHECK(MPI_Comm_dup(world, &all));
  all_ = make_mpi_comm(all, "world", true);
}

ProcessGrid::~ProcessGrid() = default;

std::string ProcessGrid::describe() const {
  return "dp=" + std::to_string(shape_.dp) + " pp=" + std::to_string(shape_.pp) +
         " tp=" + std::to_string(shape_.tp);
}

void ProcessGrid::wrap_comms(
    const std::function<std::unique_ptr<Comm>(std::unique_ptr<Comm>)>& wrap) {
  for (auto* c : {&dp_, &pp_, &tp_, &all_}) *c = wrap(std::move(*c));
}

void ProcessGrid::abort_comms() {
  for (auto* c : {&dp_, &pp_, &tp_, &all_}) (*c)->abort();
}

}  // namespace triad
