// Fused causal flash attention, forward and backward (see flash_attention.cuh): the block
// programs of flash_attention_block.h run with DeviceThread, whose warp operations are the PTX
// instructions the programs were written for, with the tile policy of flash_attention_mma.h
// (mma.sync, ldmatrix, cp.async; sm_80 and later) or flash_attention_wgmma.h (wgmma; sm_90a),
// the latter loading its tiles with cp.async or with bulk tensor copies (flash_attention_tma.h;
// the tensor maps of qkv and dout are kernel parameters). The same programs run on the CPU in
// test_flash_attention_emulated. This file checks the arguments and resolves the tile policy and
// the backward's way; the kernels and their launches are in flash_attention_kernels.cuh, compiled
// once per head dimension (flash_attention_hd64.cu, _hd128.cu, _hd192.cu;
// flash_attention_launch.h).
//
//   forward   grid (B·NH, ceil(T/64)), every head's heaviest query block first.
//   backward  (1) D = rowsum(dO ∘ O), one warp per (b, t, h) row, into the workspace (the
//                 atomic way also zeroes its dQ accumulator there);
//             (2) grid (B·NKV, nkb): dK, dV of one key/value head's key block over the query
//                 heads that read it and the query tiles after it (the atomic and ordered ways:
//                 and that block's part of dQ, added into the accumulator, atomically or in
//                 key-block order);
//             (3) deterministic: grid (B·NH, nqb): dQ of one query block (recomputing P and dP),
//                 no atomics, fixed summation orders, bit-identical run to run;
//                 atomic, ordered: dQ = scale · accumulator, rounded into dqkv.
#include <cstdint>
#include <cstdlib>
#include <mutex>
#include <string>

#include "cuda_common.cuh"
#include "flash_attention.cuh"
#include "flash_attention_block.h"
#include "flash_attention_launch.h"
#include "flash_probe_block.h"
#include "triad/kernels/cuda_backend.h"

namespace triad::cuda {
namespace {

// The rows of a call: the whole sequence, or a query range starting at a multiple of the tile.
flash::Rows rows_of(int T, QueryRows r) {
  if (r.whole(T)) return flash::Rows{T, 0, T};
  TRIAD_CHECK(r.first >= 0 && r.count > 0 && r.first + r.count <= T, "flash attention: query rows ",
              r.first, " + ", r.count, " outside a sequence of ", T);
  TRIAD_CHECK(r.first % flash::kTile == 0,
              "flash attention: a query range must start at a "
              "multiple of ",
              flash::kTile, " rows (got ", r.first, ")");
  // Its last key tile ends at a whole tile or at the sequence's end: the tiles' rows past the
  // range's keys are then zero-filled (cp.async) or outside the tensor map (bulk copies), never
  // other rows' memory, whose values could be anything (NaN · 0 is NaN).
  const int end = r.first + r.count;
  TRIAD_CHECK(end % flash::kTile == 0 || end == T,
              "flash attention: a query range must end at a "
              "multiple of ",
              flash::kTile, " rows or at the sequence's end (got ", end, " of ", T, ")");
  return flash::Rows{T, r.first, r.count};
}

// No kernel drops soft-capped scores (their registers are spent).
void check_dropout(const AttentionDropMask& drop, float softcap) {
  TRIAD_CHECK(cuda_flash_drops(drop.on(), softcap),
              "flash attention: no kernel drops soft-capped scores (the fp32 attention does)");
}

void check_shape(int B, int T, int C, int NH, int NKV) {
  TRIAD_CHECK(B > 0 && T > 0, "flash attention: empty batch (B = ", B, ", T = ", T, ")");
  TRIAD_CHECK(NH > 0 && C % NH == 0, "flash attention: C = ", C, " is not a multiple of NH = ", NH);
  TRIAD_CHECK(NKV > 0 && NH % NKV == 0, "flash attention: NKV = ", NKV,
              " key/value heads do not divide NH = ", NH, " query heads");
  const int hd = C / NH;
  TRIAD_CHECK(cuda_flash_head_dim(hd), "flash attention: head dimension ", hd,
              " is not supported (64, 128 or 192)");
  TRIAD_CHECK(T <= 65535 * flash::kTile, "flash attention: T = ", T, " is too long (at most ",
              65535 * flash::kTile, ")");
}

}  // namespace

int flash_current_device() {
  int dev = 0;
  TRIAD_CUDA_CHECK(cudaGetDevice(&dev));
  TRIAD_CHECK(dev >= 0 && dev < kFlashMaxDevices, "flash attention: device ", dev, " out of range");
  return dev;
}

FlashBackward flash_backward_mode(FlashBackward requested) {
  if (requested != FlashBackward::automatic) return requested;
  if (const char* env = std::getenv("TRIAD_FLASH_BACKWARD"); env && *env) {
    const std::string v = env;
    TRIAD_CHECK(v == "deterministic" || v == "atomic" || v == "ordered", "TRIAD_FLASH_BACKWARD = '",
                v, "' is not one of deterministic, atomic, ordered");
    return v == "atomic"    ? FlashBackward::atomic
           : v == "ordered" ? FlashBackward::ordered
                            : FlashBackward::deterministic;
  }
  return FlashBackward::deterministic;
}

const char* flash_backward_name(FlashBackward m) {
  switch (m) {
    case FlashBackward::deterministic:
      return "deterministic";
    case FlashBackward::atomic:
      return "atomic";
    case FlashBackward::ordered:
      return "ordered";
    default:
      return "auto";
  }
}

size_t flash_attention_workspace_floats(int B, int T, int C, int NH, FlashBackward mode) {
  const FlashBackward m = flash_backward_mode(mode);
  if (m == FlashBackward::deterministic) return flash_dq_accum_offset(B, T, NH);
  return flash_dq_turns_offset(B, T, C, NH) +
         (m == FlashBackward::ordered ? flash_dq_turns_count(B, T, NH) : 0);
}

const char* flash_kernel_name(FlashKernel k) {
  switch (k) {
    case FlashKernel::mma:
      return "mma";
    case FlashKernel::wgmma:
      return "wgmma";
    case FlashKernel::tma:
      return "tma";
    default:
      return "auto";
  }
}

namespace {

// Writes 1 where the code running on this device was compiled with the sm_90a features (the
// wgmma of DeviceThread), 0 where it is the __trap fallback (an sm_90 or PTX-only build).
__global__ void wgmma_compiled_kernel(int* out) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  *out = 1;
#else
  *out = 0;
#endif
}

}  // namespace

// Compute capability 9.0 and the code the runtime picked for the device has the sm_90a features.
bool flash_wgmma_available() {
  static std::once_flag done[kFlashMaxDevices];
  static bool runs[kFlashMaxDevices] = {};
  const int dev = flash_current_device();
  std::call_once(done[dev], [&] {
    int major = 0, minor = 0;
    TRIAD_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
    TRIAD_CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev));
    if (major == 9 && minor == 0) {
      int* flag = nullptr;
      int host = 0;
      TRIAD_CUDA_CHECK(cudaMalloc(&flag, sizeof(int)));
      wgmma_compiled_kernel<<<1, 1>>>(flag);
      TRIAD_CUDA_CHECK_LAUNCH();
      TRIAD_CUDA_CHECK(cudaMemcpy(&host, flag, sizeof(int), cudaMemcpyDeviceToHost));
      TRIAD_CUDA_CHECK(cudaFree(flag));
      runs[dev] = host == 1;
    }
  });
  return runs[dev];
}

FlashKernel flash_kernel_for_device(FlashKernel requested) {
  if (requested == FlashKernel::automatic) {
    if (const char* env = std::getenv("TRIAD_FLASH_KERNEL"); env && *env) {
      const std::string v = env;
      TRIAD_CHECK(v == "auto" || v == "mma" || v == "wgmma" || v == "tma", "TRIAD_FLASH_KERNEL = '",
                  v, "' is not one of auto, mma, wgmma, tma");
      if (v == "mma") requested = FlashKernel::mma;
      if (v == "wgmma") requested = FlashKernel::wgmma;
      if (v == "tma") requested = FlashKernel::tma;
    }
  }
  if (requested == FlashKernel::mma) return requested;
  const bool wgmma = flash_wgmma_available();
  TRIAD_CHECK(wgmma || requested == FlashKernel::automatic, "flash attention: the ",
              flash_kernel_name(requested),
              " kernel needs a compute capability 9.0 GPU and a build with sm_90a code "
              "(CMAKE_CUDA_ARCHITECTURES including 90a)");
  if (requested == FlashKernel::tma) return requested;
  return wgmma ? FlashKernel::wgmma : FlashKernel::mma;
}

namespace {

// Calls f(FlashHeadDim<hd>{}) for head dimension hd (64, 128 or 192: check_shape).
template <class F>
void with_head_dim(int hd, F f) {
  if (hd == 64)
    f(FlashHeadDim<64>{});
  else if (hd == 128)
    f(FlashHeadDim<128>{});
  else
    f(FlashHeadDim<192>{});
}

}  // namespace

void flash_attention_forward(bf16* out, float* lse, const bf16* qkv, int B, int T, int C, int NH,
                             const int32_t* key_begin, cudaStream_t s, FlashKernel kernel,
                             QueryRows range, int NKV, float scale, float softcap,
                             AttentionDropMask drop) {
  if (NKV == 0) NKV = NH;
  check_shape(B, T, C, NH, NKV);
  check_dropout(drop, softcap);
  const flash::Rows rows = rows_of(T, range);
  const FlashKernel resolved = flash_kernel_for_device(kernel);
  with_head_dim(C / NH, [&](auto hd) {
    decltype(hd)::forward(resolved, out, lse, qkv, B, rows, C, NH, NKV, key_begin, s, scale,
                          softcap, drop);
  });
}

void flash_attention_backward(bf16* dqkv, const bf16* dout, const bf16* qkv, const bf16* out,
                              const float* lse, float* workspace, int B, int T, int C, int NH,
                              const int32_t* key_begin, cudaStream_t s, bool accumulate,
                              FlashKernel kernel, FlashBackward mode, QueryRows range, int NKV,
                              float scale, float softcap, AttentionDropMask drop) {
  if (NKV == 0) NKV = NH;
  check_shape(B, T, C, NH, NKV);
  check_dropout(drop, softcap);
  const flash::Rows rows = rows_of(T, range);
  const FlashKernel resolved = flash_kernel_for_device(kernel);
  const FlashBackward m = flash_backward_mode(mode);
  TRIAD_CHECK(reinterpret_cast<uintptr_t>(workspace) % 16 == 0,
              "flash attention: the backward's workspace is not 16-byte aligned");
  with_head_dim(C / NH, [&](auto hd) {
    decltype(hd)::backward(resolved, m, dqkv, dout, qkv, out, lse, workspace, B, rows, C, NH, NKV,
                           key_begin, s, accumulate, scale, softcap, drop);
  });
}

int flash_probe_count() { return flash::kProbes; }

FlashProbeResult flash_probe(FlashKernel kernel, int hd, int index) {
  TRIAD_CHECK(hd == 64 || hd == 128, "flash probes: head dimension ", hd, " (64 or 128)");
  TRIAD_CHECK(index >= 0 && index < flash::kProbes, "flash probes: no probe ", index);
  const FlashKernel resolved = flash_kernel_for_device(kernel);
  return hd == 64 ? flash_probe_head_dim<64>(resolved, index)
                  : flash_probe_head_dim<128>(resolved, index);
}

}  // namespace triad::cuda

namespace triad {
std::string cuda_flash_kernel() {
  const cuda::FlashBackward backward = cuda::flash_backward_mode();
  return std::string(cuda::flash_kernel_name(cuda::flash_kernel_for_device())) + ", " +
         cuda::flash_backward_name(backward) + " backward";
}
}  // namespace triad
