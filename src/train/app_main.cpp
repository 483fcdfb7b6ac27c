#include "triad/train/app_main.h"

#include <chrono>
#include <csignal>
#include <cstdio>
#include <exception>
#include <thread>

#include "triad/core/error.h"
#include "triad/core/mpi_session.h"

namespace triad {

int run_main(int argc, char** argv, const char* prog, const std::function<int(MPI_Comm)>& body) {
  leave_out_shared_file_pointers();
  const SingletonSessionDir session;  // removed after MPI_Finalize, as the function returns
  // Threads of every level: an asynchronous checkpoint (checkpoint.async) writes over MPI-IO from
  // a thread of its own while the training thread communicates. A library that provides less
  // runs everything else; checkpoint.async then says so.
  int provided = MPI_THREAD_SINGLE;
  MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &provided);
  // Report MPI failures as errors (TRIAD_MPI_CHECK names the call, rank and site) instead of
  // aborting inside the library.
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  int rank = 0, size = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  std::string message;
  int code = 0;
  try {
    code = body(MPI_COMM_WORLD);
  } catch (const Error& e) {
    message = e.what();
  } catch (const std::bad_alloc&) {
    message = "out of memory (host allocation failed); use a smaller model or micro-batch";
  } catch (const std::exception& e) {
    message = std::string("unexpected failure: ") + e.what();
  }
  if (message.empty()) {
    MPI_Finalize();
    return code;
  }
  if (size == 1) {
    std::fprintf(stderr, "%s: error: %s\n", prog, message.c_str());
    MPI_Finalize();
    return 1;
  }
  // Several ranks: the error may be known to all ranks (a bad config) or to this one alone
  // (a damaged file it read). Rank 0 reports at once; the others give it a moment, so that a
  // collective error is printed once, then report theirs. MPI_Abort ends every rank.
  // Nothing is left to save: when one rank aborts, mpirun's SIGTERM ends the others at once
  // (triad-train's preemption handler would keep them until mpirun's SIGKILL, a second later).
  std::signal(SIGTERM, SIG_DFL);
  if (rank != 0) std::this_thread::sleep_for(std::chrono::seconds(2));
  std::fprintf(stderr, "%s: error%s: %s\n", prog,
               rank == 0 ? "" : (" (rank " + std::to_string(rank) + ")").c_str(), message.c_str());
  std::fflush(stderr);
  MPI_Abort(MPI_COMM_WORLD, 1);
  return 1;
}

}  // namespace triad
