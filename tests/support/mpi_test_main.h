// The main of a GoogleTest executable run under mpiexec: every rank runs every test (the code
// under test is collective), only rank 0 prints, and the exit code is non-zero on every rank
// if any rank failed.
#pragma once

#include <gtest/gtest.h>
#include <mpi.h>

#include "triad/core/mpi_session.h"

namespace triad::testing {

inline int run_mpi_tests(int argc, char** argv) {
  leave_out_shared_file_pointers();  // as the apps do (run_main)
  MPI_Init(&argc, &argv);
  ::testing::InitGoogleTest(&argc, argv);
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  if (rank != 0) {
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
  }
  const int rc = RUN_ALL_TESTS();
  int any = rc;
  MPI_Allreduce(&rc, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  MPI_Finalize();
  return any;
}

}  // namespace triad::testing
