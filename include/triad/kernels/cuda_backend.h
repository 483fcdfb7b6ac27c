// The CUDA backend (DESIGN.md §2): the ops of backend.h on device pointers, one CUDA stream,
// cuBLAS for the products. This is its fp32 reference path (cublasSgemm with TF32 disabled,
// simple deterministic kernels); the bf16 / fused kernels build on top of it.
//
// This header compiles without the CUDA headers: the CPU-only build includes it too, and there
// make_cuda_backend() throws and cuda_device_available() returns false (src/kernels/cuda_stub.cpp).
//
// Memory: every float* and int32_t* argument of the backend's ops is device memory from its
// alloc() / alloc_ints() — token ids and targets included (upload them with
// copy_ints_from_host()).
#pragma once

#include <memory>
#include <string>

#include "triad/kernels/backend.h"

namespace triad {

// A CUDA backend on GPU `device` (cudaSetDevice is called for it). Throws triad::Error with a
// clear message when this build has no CUDA, when no CUDA device (or driver) is usable, or
// when `device` is out of range.
std::unique_ptr<Backend> make_cuda_backend(int device = 0);

// What the bf16 fused flash-attention kernels take (cuda_attention_bf16.cu; other calls run the
// fp32 attention, with T×T matrices in memory): heads 64, 128 or 192 wide (192: multi-head latent
// attention's), and an attention dropout unless the scores are soft-capped.
constexpr bool cuda_flash_head_dim(int hd) { return hd == 64 || hd == 128 || hd == 192; }
constexpr bool cuda_flash_drops(bool dropping, float softcap) {
  return !dropping || softcap <= 0.0f;
}

// True when this build has CUDA and at least one device is usable (driver present).
bool cuda_device_available();

// One line for logs, e.g. "NVIDIA H200, sm_90, 132 SMs, 139.8 GiB, device 0 of 1, driver 13.0,
// runtime 13.0, cuBLAS 13.1.0", or why there is none ("no CUDA device: ...", "built without CUDA").
std::string cuda_device_description();

// Empty when cuBLAS and cuBLASLt load here with every function triad calls, otherwise why not.
// They are opened when the first CUDA backend is made (or by these two calls), not linked: a
// process on the CPU backend never maps them.
std::string cublas_status();
// "13.1.0" for the loaded cuBLASLt; empty when there is none.
std::string cublas_version();

// Bytes in use on the current device, by every process on it (cudaMemGetInfo: total − free);
// 0 without CUDA. After a training step: the backend's buffers, its workspace, NCCL's buffers
// and the CUDA context.
size_t cuda_device_memory_in_use();

// The fused flash-attention kernel bf16 attention uses on the current device and its backward:
// "wgmma" (Hopper), "tma" (Hopper, on request) or "mma" (sm_80 and later), after
// TRIAD_FLASH_KERNEL (auto|mma|wgmma|tma), then ", deterministic backward", ", atomic backward"
// or ", ordered backward" (TRIAD_FLASH_BACKWARD). Throws triad::Error for a bad
// TRIAD_FLASH_KERNEL or TRIAD_FLASH_BACKWARD, or wgmma or tma asked for where they cannot run.
std::string cuda_flash_kernel();

namespace cuda_detail {
// Throw triad::Error naming the failed call, file:line and the CUDA / cuBLAS error string.
// Defined in the CUDA backend (and in the stub, which has no error strings).
[[noreturn]] void throw_cuda_error(int code, const char* call, const char* file, int line);
[[noreturn]] void throw_cublas_error(int code, const char* call, const char* file, int line);
}  // namespace cuda_detail

}  // namespace triad

// TRIAD_CUDA_CHECK(cudaMalloc(...)): throws triad::Error when a CUDA runtime call fails.
// TRIAD_CUBLAS_CHECK(cublasSgemm(...)): the same for cuBLAS. Both success codes are 0, which
// lets these macros live here without the CUDA headers.
#define TRIAD_CUDA_CHECK(call)                                                            \
  do {                                                                                    \
    const int triad_cuda_err_ = static_cast<int>(call);                                   \
    if (triad_cuda_err_ != 0) {                                                           \
      ::triad::cuda_detail::throw_cuda_error(triad_cuda_err_, #call, __FILE__, __LINE__); \
    }                                                                                     \
  } while (0)

#define TRIAD_CUBLAS_CHECK(call)                                                              \
  do {                                                                                        \
    const int triad_cublas_err_ = static_cast<int>(call);                                     \
    if (triad_cublas_err_ != 0) {                                                             \
      ::triad::cuda_detail::throw_cublas_error(triad_cublas_err_, #call, __FILE__, __LINE__); \
    }                                                                                         \
  } while (0)
