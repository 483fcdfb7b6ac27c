// Communication for the CUDA backend (DESIGN.md §2).
//
// parallel.comm = mpi: a Comm decorator that lets an
// MPI Comm (which works on host memory) take device buffers. Host pointers go straight to the
// wrapped Comm; a device pointer's data is copied into pinned host memory, communicated, and
// copied back. This is how several ranks share one GPU (the grid logic tested on a single
// device) and how multi-GPU runs work without a CUDA-aware MPI; it is not fast — every message
// crosses PCIe twice and the host waits for the compute stream's queued work before each copy
// (not for NCCL's stream, below: its reductions go on overlapping).
//
// Semantics are the wrapped Comm's. Non-blocking collectives on device buffers complete before
// they return (their request is already done); isend/irecv stay non-blocking (the pipeline
// executor relies on that), their staging buffers live until wait().
//
// Without CUDA (the stub build) make_device_staged_comm throws.
//
// parallel.comm = nccl: collectives on device buffers run in NCCL on a stream of their own,
// ordered after the backend's kernels through CUDA events (no host synchronization); a
// non-blocking all-reduce lets the backward pass continue while it runs, and the compute stream
// waits for it in CommRequest::wait(). The communicator is bootstrapped through the group's MPI
// Comm (rank 0's unique id broadcast); the trainer makes one for each of its dp, cp and tp groups
// and, with experts, its ep and edp groups.
// Point-to-point messages, scalar reductions and host buffers go through the MPI Comm (staged as
// above): NCCL's send/recv has no tags, and the pipeline executor relies on them. NCCL refuses two
// ranks on one GPU, so ranks sharing a device use parallel.comm = mpi.
#pragma once

#include <memory>
#include <string>

#include "triad/kernels/backend.h"
#include "triad/parallel/comm.h"

namespace triad {

std::unique_ptr<Comm> make_device_staged_comm(std::unique_ptr<Comm> inner);

// A NCCL Comm over the ranks of `host` (collective over them), ordered with `be`'s stream (a
// CUDA backend). libnccl.so.2 is loaded at the first call. Throws triad::Error when NCCL cannot
// be loaded or initialised, and in a build without CUDA.
std::unique_ptr<Comm> make_nccl_comm(std::unique_ptr<Comm> host, Backend& be);

// Empty when libnccl.so.2 can be loaded and used here, otherwise why not.
std::string nccl_status();
// "2.28.3" for the loaded NCCL; empty when there is none.
std::string nccl_version();

// Number of usable CUDA devices (0 without CUDA or without a driver).
int cuda_device_count();
// The PCI bus id of a visible device ("0000:19:00.0"), which names the physical GPU whatever
// CUDA_VISIBLE_DEVICES numbers it as; empty when unknown.
std::string cuda_pci_bus_id(int device);

}  // namespace triad
