// Communication for the CUDA backend with parallel.comm = mpi: a Comm decorator that lets an
// MPI Comm (which works on host memory) take device buffers. Host pointers go straight to the
// wrapped Comm; a device pointer's data is copied into pinned host memory, communicated, and
// copied back. This is how several ranks share one GPU (the grid logic tested on a single
// device) and how multi-GPU runs work without a CUDA-aware MPI; it is not fast — every message
// crosses PCIe twice and the device is synchronized before each copy.
//
// Semantics are the wrapped Comm's. Non-blocking collectives on device buffers complete before
// they return (their request is already done); isend/irecv stay non-blocking (the pipeline
// executor relies on that), their staging buffers live until wait().
//
// Without CUDA (the stub build) make_device_staged_comm throws.
#pragma once

#include <memory>

#include "triad/parallel/comm.h"

namespace triad {

std::unique_ptr<Comm> make_device_staged_comm(std::unique_ptr<Comm> inner);

// Number of usable CUDA devices (0 without CUDA or without a driver).
int cuda_device_count();

}  // namespace triad
