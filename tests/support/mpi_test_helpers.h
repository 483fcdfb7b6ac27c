// Small helpers shared by the tests that run MPI code (single-rank and under mpiexec).
#pragma once

#include <gtest/gtest.h>
#include <mpi.h>

#include <exception>
#include <functional>
#include <string>
#include <vector>

#include "triad/core/error.h"

namespace triad::testing {

// Pieces of unequal length for the pieces collectives in a group of n: rank 1's empty, rank k's
// base + step·k long; the counts, where rank r's piece starts and the total.
struct Pieces {
  std::vector<size_t> counts;
  size_t at = 0, total = 0;
};
inline Pieces pieces(int n, int r, size_t base, size_t step) {
  Pieces p;
  for (int k = 0; k < n; ++k) {
    p.counts.push_back(k == 1 ? 0 : base + step * size_t(k));
    if (k < r) p.at += p.counts.back();
    p.total += p.counts.back();
  }
  return p;
}

inline int world_rank() {
  int r = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &r);
  return r;
}

inline int world_size() {
  int n = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &n);
  return n;
}

// Runs fn on rank 0 only, then synchronizes.
inline void on_root(const std::function<void()>& fn) {
  if (world_rank() == 0) fn();
  MPI_Barrier(MPI_COMM_WORLD);
}

// The message of the triad::Error fn throws ("" and a test failure if none).
inline std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const triad::Error& e) {
    return e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "expected triad::Error, got another exception: " << e.what();
    return e.what();
  }
  ADD_FAILURE() << "expected a triad::Error";
  return "";
}

}  // namespace triad::testing

#define EXPECT_CONTAINS(str, sub) \
  EXPECT_NE(std::string(str).find(sub), std::string::npos) << "message: " << (str)
