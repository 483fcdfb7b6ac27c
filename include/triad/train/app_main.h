// The common main of every triad executable: MPI initialization, one clear error message and
// a non-zero exit on every rank for any triad::Error (never a hang), MPI finalization.
#pragma once

#include <mpi.h>

#include <functional>

namespace triad {

// Runs body(world) between MPI_Init and MPI_Finalize and returns the process exit code.
// On an exception: rank 0 prints "<prog>: error: <message>" on stderr; with one rank the
// program exits 1 after MPI_Finalize; with several, the job is ended with MPI_Abort so that
// no rank waits forever in a collective (other ranks report their own errors only if rank 0
// had none).
int run_main(int argc, char** argv, const char* prog, const std::function<int(MPI_Comm)>& body);

}  // namespace triad
