// For single-process gtest executables that call MPI (checkpoint and metrics I/O): a global
// test environment that initializes MPI once before the tests and finalizes it after.
#pragma once

#include <gtest/gtest.h>
#include <mpi.h>

#include <memory>

#include "triad/core/mpi_session.h"

namespace triad::testing {

class MpiEnvironment : public ::testing::Environment {
 public:
  void SetUp() override {
    int init = 0;
    MPI_Initialized(&init);
    if (!init) {
      // As the apps do (run_main): singletons running side by side (ctest -j) share Open MPI's
      // session directory, which the first to finish removes, and the "sm" shared-file-pointer
      // component keeps its files there, so HDF5 file opens failed at random.
      leave_out_shared_file_pointers();
      session_ = std::make_unique<SingletonSessionDir>();  // as run_main, for the same reason
      MPI_Init(nullptr, nullptr);
    }
  }
  void TearDown() override {
    int fin = 0;
    MPI_Finalized(&fin);
    if (!fin) MPI_Finalize();
    session_.reset();
  }

 private:
  std::unique_ptr<SingletonSessionDir> session_;
};

// Registered by including this header (once per executable).
[[maybe_unused]] inline ::testing::Environment* const kMpiEnvironment =
    ::testing::AddGlobalTestEnvironment(new MpiEnvironment);

}  // namespace triad::testing
