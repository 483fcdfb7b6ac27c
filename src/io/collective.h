// Internal: agreement on failure across the ranks of a communicator, so that an error on one
// rank (a full disk, a damaged file) makes every rank throw the same triad::Error instead of
// leaving the others waiting in the next collective HDF5 call.
#pragma once

#include <mpi.h>

#include <exception>
#include <string>
#include <utility>

#include "triad/core/error.h"
#include "triad/parallel/comm.h"

namespace triad::io {

// Collective over comm (and a barrier). If any rank passes failed = true, every rank throws
// triad::Error with the message of the lowest failing rank.
inline void agree(MPI_Comm comm, bool failed, const std::string& message) {
  auto [first, msg] = lowest_rank_message(comm, failed, message);
  if (first < size_of(comm)) throw Error(std::move(msg));
}

// Runs fn() on every rank, then agrees: all ranks return or all throw. fn must not call
// collective operations after a point where it may throw on some ranks only.
template <typename F>
void collective_phase(MPI_Comm comm, F&& fn) {
  bool failed = false;
  std::string message;
  try {
    std::forward<F>(fn)();
  } catch (const std::exception& e) {
    failed = true;
    message = e.what();
  }
  agree(comm, failed, message);
}

}  // namespace triad::io
