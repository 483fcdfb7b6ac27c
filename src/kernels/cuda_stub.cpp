// The CUDA entry points of a build without CUDA (no nvcc at configure time, or
// -DTRIAD_ENABLE_CUDA=OFF): asking for the CUDA backend is a clear error, not a link failure.
// With CUDA, src/kernels/cuda/cuda_backend.cu defines these instead.
#ifndef TRIAD_HAVE_CUDA

#include <string>

#include "triad/core/error.h"
#include "triad/kernels/cuda_backend.h"
#include "triad/kernels/cuda_comm.h"

namespace triad {

std::unique_ptr<Backend> make_cuda_backend(int /*device*/) {
  throw Error("this triad was built without CUDA (no nvcc found at configure time)");
}

bool cuda_device_available() { return false; }

std::string cuda_device_description() { return "built without CUDA"; }

size_t cuda_device_memory_in_use() { return 0; }

std::string cuda_flash_kernel() { return "none (built without CUDA)"; }

int cuda_device_count() { return 0; }

std::string cuda_pci_bus_id(int /*device*/) { return ""; }

std::unique_ptr<Comm> make_device_staged_comm(std::unique_ptr<Comm> /*inner*/) {
  throw Error("this triad was built without CUDA: no device buffers to stage");
}

std::unique_ptr<Comm> make_nccl_comm(std::unique_ptr<Comm> /*host*/, Backend& /*be*/) {
  throw Error("this triad was built without CUDA: parallel.comm = nccl needs the cuda backend");
}

std::string cublas_status() { return "this triad was built without CUDA"; }

std::string cublas_version() { return ""; }

std::string nccl_status() { return "this triad was built without CUDA"; }

std::string nccl_version() { return ""; }

namespace cuda_detail {
void throw_cuda_error(int code, const char* call, const char* file, int line) {
  fail("CUDA error ", code, " in ", call, " at ", file, ":", line, " (built without CUDA)");
}
void throw_cublas_error(int code, const char* call, const char* file, int line) {
  fail("cuBLAS error ", code, " in ", call, " at ", file, ":", line, " (built without CUDA)");
}
}  // namespace cuda_detail

}  // namespace triad

#endif  // TRIAD_HAVE_CUDA
