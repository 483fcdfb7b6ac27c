// Fused causal flash attention, forward and backward (see flash_attention.cuh): the block
// programs of flash_attention_block.h run with DeviceThread, whose warp operations are the PTX
// instructions the programs were written for, with the tile policy of flash_attention_mma.h
// (mma.sync, ldmatrix, cp.async; sm_80 and later) or flash_attention_wgmma.h (wgmma; sm_90a),
// the latter loading its tiles with cp.async or with bulk tensor copies (flash_attention_tma.h;
// the tensor maps of qkv and dout are kernel parameters). The same programs run on the CPU in
// test_flash_attention_emulated.
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
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <mutex>
#include <string>
#include <vector>

#include "cuda_common.cuh"
#include "cuda_tensor_map.cuh"
#include "device_thread.cuh"
#include "flash_attention.cuh"
#include "flash_attention_block.h"
#include "flash_attention_mma.h"
#include "flash_attention_wgmma.h"
#include "flash_probe_block.h"
#include "triad/kernels/cuda_backend.h"

namespace triad::cuda {
namespace {

const uint16_t* bits(const bf16* p) { return reinterpret_cast<const uint16_t*>(p); }
uint16_t* bits(bf16* p) { return reinterpret_cast<uint16_t*>(p); }

// The tensor maps of qkv [B,T,W] and dout [B,T,C] (flash::tma_tile_shape) for the
// policies that load with bulk tensor copies; zero and unused for the others.
struct TileMaps {
  CUtensorMap qkv, dout;
};

template <class Tiles>
TileMaps tile_maps(const bf16* qkv, const bf16* dout, int B, const flash::Rows& rows, int C,
                   int NKV_HD) {
  TileMaps m{};
  if constexpr (Tiles::kTma) {
    const uint64_t W = uint64_t(C) + 2 * uint64_t(NKV_HD);  // q | k | v
    m.qkv = bf16_tensor_map(qkv, flash::tma_tile_shape(W, rows.seq, B));
    if (dout != nullptr)  // the range's rows
      m.dout = bf16_tensor_map(dout, flash::tma_tile_shape(uint64_t(C), rows.count, B));
  }
  return m;
}

// The maps a block program gets: the parameter's (in the kernel parameter space, where the copy
// engine reads it) or none.
template <class Tiles>
__device__ __forceinline__ const void* map_of(const CUtensorMap& m) {
  return Tiles::kTma ? &m : nullptr;
}

// Dropout: the attention dropout's kernels (flash_attention_block.h), compiled apart from the
// others, which keep their registers.
template <class Tiles, bool Dropout>
__global__ void __launch_bounds__(flash::kThreads)
    forward_kernel(uint16_t* __restrict__ out, float* __restrict__ lse,
                   const uint16_t* __restrict__ qkv, const __grid_constant__ TileMaps maps,
                   flash::Rows rows, int C, int NH, int NKV, float scale_log2,
                   const int32_t* __restrict__ key_begin, float cap_log2, AttentionDropMask drop) {
  DeviceThread x;
  flash::forward_block<Tiles, Dropout>(x, out, lse, qkv, map_of<Tiles>(maps.qkv), rows, C, NH, NKV,
                                       scale_log2, key_begin, cap_log2, drop);
}

template <int HD>
__global__ void __launch_bounds__(flash::kThreads)
    dot_kernel(float* __restrict__ Dv, float* __restrict__ dq_accum, int* __restrict__ dq_turns,
               const uint16_t* __restrict__ dout, const uint16_t* __restrict__ out, int B, int T,
               int NH) {
  DeviceThread x;
  flash::dot_block<HD>(x, Dv, dq_accum, dq_turns, dout, out, B, T, NH);
}

template <class Tiles, bool AtomicDq, bool Ordered, bool Masked, bool Capped, bool Dropout>
__global__ void __launch_bounds__(flash::kThreads)
    dkdv_kernel(uint16_t* __restrict__ dqkv, float* __restrict__ dq_accum, int* dq_turns,
                const uint16_t* __restrict__ dout, const uint16_t* __restrict__ qkv,
                const __grid_constant__ TileMaps maps, const float* __restrict__ lse,
                const float* __restrict__ Dv, int B, flash::Rows rows, int C, int NH, int NKV,
                float scale, float scale_log2, bool accumulate,
                const int32_t* __restrict__ key_begin, float cap_log2, AttentionDropMask drop) {
  DeviceThread x;
  flash::dkdv_block<Tiles, AtomicDq, Ordered, Masked, Capped, Dropout>(
      x, dqkv, dq_accum, dq_turns, dout, qkv, map_of<Tiles>(maps.qkv), map_of<Tiles>(maps.dout),
      lse, Dv, B, rows, C, NH, NKV, scale, scale_log2, accumulate, key_begin, cap_log2, drop);
}

__global__ void __launch_bounds__(flash::kConvertThreads)
    dq_convert_kernel(uint16_t* __restrict__ dqkv, const float* __restrict__ dq_accum,
                      flash::Rows rows, size_t total, int C, int W, float scale, bool accumulate) {
  DeviceThread x;
  flash::dq_convert_block(x, dqkv, dq_accum, rows, total, C, W, scale, accumulate);
}

template <class Tiles, bool Capped, bool Dropout>
__global__ void __launch_bounds__(flash::kThreads)
    dq_kernel(uint16_t* __restrict__ dqkv, const uint16_t* __restrict__ dout,
              const uint16_t* __restrict__ qkv, const __grid_constant__ TileMaps maps,
              const float* __restrict__ lse, const float* __restrict__ Dv, flash::Rows rows, int C,
              int NH, int NKV, float scale, float scale_log2, bool accumulate,
              const int32_t* __restrict__ key_begin, float cap_log2, AttentionDropMask drop) {
  DeviceThread x;
  flash::dq_block<Tiles, Capped, Dropout>(x, dqkv, dout, qkv, map_of<Tiles>(maps.qkv),
                                          map_of<Tiles>(maps.dout), lse, Dv, rows, C, NH, NKV,
                                          scale, scale_log2, accumulate, key_begin, cap_log2, drop);
}

template <class Tiles>
__global__ void __launch_bounds__(flash::kThreads)
    probe_kernel(float* out, const uint16_t* a, const float* p, const uint16_t* y,
                 const uint16_t* wide, const __grid_constant__ CUtensorMap wide_map, int rows,
                 flash::Probe probe) {
  DeviceThread x;
  flash::probe_block<Tiles>(x, out, a, p, y, wide, map_of<Tiles>(wide_map), rows, probe);
}

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

// What is set up per device (a kernel attribute, a probe result) is kept per device index.
constexpr int kMaxDevices = 64;

// The current device, checked against kMaxDevices.
int current_device() {
  int dev = 0;
  TRIAD_CUDA_CHECK(cudaGetDevice(&dev));
  TRIAD_CHECK(dev >= 0 && dev < kMaxDevices, "flash attention: device ", dev, " out of range");
  return dev;
}

// Lets kernel k use `bytes` of dynamic shared memory (above the default 48 KB). The attribute
// belongs to the current device's context, so it is set once per device and kernel. The kernel
// is a template argument, not a function argument: the kernels of different tile policies have
// the same type, and a flag per type would set the attribute for the first of them only.
template <auto Kernel>
void allow_smem(size_t bytes) {
  static std::once_flag done[kMaxDevices];
  std::call_once(done[current_device()], [&] {
    TRIAD_CUDA_CHECK(
        cudaFuncSetAttribute(Kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)));
  });
}

template <class Tiles>
void forward_with(bf16* out, float* lse, const bf16* qkv, int B, const flash::Rows& rows, int C,
                  int NH, int NKV, const int32_t* key_begin, cudaStream_t s, float scale,
                  float softcap, const AttentionDropMask& drop) {
  constexpr size_t smem = flash::forward_smem<Tiles>();
  if (drop.on())
    allow_smem<forward_kernel<Tiles, true>>(smem);
  else
    allow_smem<forward_kernel<Tiles, false>>(smem);
  auto* const kernel = drop.on() ? forward_kernel<Tiles, true> : forward_kernel<Tiles, false>;
  const flash::Launch l = flash::launch_shape(B, rows, NH, Tiles::kHD, NKV, scale, softcap);
  const dim3 grid(unsigned(l.blocks_x), unsigned(l.blocks_y));
  const TileMaps maps = tile_maps<Tiles>(qkv, nullptr, B, rows, C, NKV * Tiles::kHD);
  kernel<<<grid, flash::kThreads, smem, s>>>(bits(out), lse, bits(qkv), maps, rows, C, NH, NKV,
                                             l.scale_log2, key_begin, l.cap_log2, drop);
  TRIAD_CUDA_CHECK_LAUNCH();
}

// The workspace: D [B·NH·T] first, then (atomic, ordered) the dQ accumulator [B,T,C], 16-byte
// aligned, then (ordered) the turns [B·NH][nqb] (ints, in float-sized slots). A query range uses
// the first B·NH·count, B·count·C and B·NH·ceil(count/64) + 1 of them.
size_t dq_accum_offset(int B, int T, int NH) { return (size_t(B) * NH * T + 3) / 4 * 4; }
size_t dq_turns_offset(int B, int T, int C, int NH) {
  return dq_accum_offset(B, T, NH) + size_t(B) * T * C;
}
size_t dq_turns_count(int B, int T, int NH) {  // the turns and the ticket counter after them
  return size_t(B) * NH * size_t((T + flash::kTile - 1) / flash::kTile) + 1;
}

// Ordered: the dQ additions in key-block order (AtomicDq only).
template <class Tiles, bool AtomicDq, bool Ordered>
void backward_with(bf16* dqkv, const bf16* dout, const bf16* qkv, const bf16* out, const float* lse,
                   float* ws, int B, const flash::Rows& rows, int C, int NH, int NKV,
                   const int32_t* key_begin, cudaStream_t s, bool accumulate, float scale,
                   float softcap, const AttentionDropMask& drop) {
  const int T = rows.seq;  // the workspace's layout: sized for whole sequences
  constexpr int HD = Tiles::kHD;
  // The dK/dV kernel with the mask's test compiled in only where there is a mask, and a soft
  // cap's only where there is a cap (its kernel takes masks too: one more kernel, not two); the
  // attention dropout's (with the mask's test, never with a cap) its own.
  constexpr auto dkdv_masked = dkdv_kernel<Tiles, AtomicDq, Ordered, true, false, false>;
  constexpr auto dkdv_plain = dkdv_kernel<Tiles, AtomicDq, Ordered, false, false, false>;
  constexpr auto dkdv_capped = dkdv_kernel<Tiles, AtomicDq, Ordered, true, true, false>;
  constexpr auto dkdv_dropping = dkdv_kernel<Tiles, AtomicDq, Ordered, true, false, true>;
  const bool capped = softcap > 0.0f, dropping = drop.on();  // (not both: check_dropout)
  const size_t dkdv_smem =
      dropping ? flash::dkdv_smem<Tiles, AtomicDq, true>() : flash::dkdv_smem<Tiles, AtomicDq>();
  if (dropping)
    allow_smem<dkdv_dropping>(dkdv_smem);
  else if (capped)
    allow_smem<dkdv_capped>(dkdv_smem);
  else if (key_begin != nullptr)
    allow_smem<dkdv_masked>(dkdv_smem);
  else
    allow_smem<dkdv_plain>(dkdv_smem);
  auto* const dkdv = dropping               ? dkdv_dropping
                     : capped               ? dkdv_capped
                     : key_begin != nullptr ? dkdv_masked
                                            : dkdv_plain;
  float* Dv = ws;
  float* dq_accum = AtomicDq ? ws + dq_accum_offset(B, T, NH) : nullptr;
  int* dq_turns = Ordered ? reinterpret_cast<int*>(ws + dq_turns_offset(B, T, C, NH)) : nullptr;
  const flash::Launch l = flash::launch_shape(B, rows, NH, HD, NKV, scale, softcap);
  // D and the zeroed accumulator and turns over the range's rows (out and dout hold only those).
  dot_kernel<HD><<<unsigned(l.dot_blocks), flash::kThreads, 0, s>>>(
      Dv, dq_accum, dq_turns, bits(dout), bits(out), B, rows.count, NH);
  TRIAD_CUDA_CHECK_LAUNCH();
  // dK/dV: one block per key/value head and key block, over the query heads that read it.
  const dim3 key_grid(unsigned(l.kv_blocks_x), unsigned(l.key_blocks));
  const TileMaps maps = tile_maps<Tiles>(qkv, dout, B, rows, C, NKV * HD);
  dkdv<<<key_grid, flash::kThreads, dkdv_smem, s>>>(
      bits(dqkv), dq_accum, dq_turns, bits(dout), bits(qkv), maps, lse, Dv, B, rows, C, NH, NKV,
      l.scale, l.scale_log2, accumulate, key_begin, l.cap_log2, drop);
  TRIAD_CUDA_CHECK_LAUNCH();
  if constexpr (AtomicDq) {
    const size_t total = size_t(B) * rows.count * C;
    const size_t blocks = (total / 8 + flash::kConvertThreads - 1) / flash::kConvertThreads;
    dq_convert_kernel<<<unsigned(blocks), flash::kConvertThreads, 0, s>>>(
        bits(dqkv), dq_accum, rows, total, C, C + 2 * NKV * HD, l.scale, accumulate);
    TRIAD_CUDA_CHECK_LAUNCH();
  } else {
    constexpr size_t dq_smem = flash::dq_smem<Tiles>();
    auto* const dq = dropping ? dq_kernel<Tiles, false, true>
                     : capped ? dq_kernel<Tiles, true, false>
                              : dq_kernel<Tiles, false, false>;
    if (dropping)
      allow_smem<dq_kernel<Tiles, false, true>>(dq_smem);
    else if (capped)
      allow_smem<dq_kernel<Tiles, true, false>>(dq_smem);
    else
      allow_smem<dq_kernel<Tiles, false, false>>(dq_smem);
    const dim3 query_grid(unsigned(l.blocks_x), unsigned(l.blocks_y));
    dq<<<query_grid, flash::kThreads, dq_smem, s>>>(bits(dqkv), bits(dout), bits(qkv), maps, lse,
                                                    Dv, rows, C, NH, NKV, l.scale, l.scale_log2,
                                                    accumulate, key_begin, l.cap_log2, drop);
    TRIAD_CUDA_CHECK_LAUNCH();
  }
}

}  // namespace

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
  if (m == FlashBackward::deterministic) return dq_accum_offset(B, T, NH);
  return dq_turns_offset(B, T, C, NH) +
         (m == FlashBackward::ordered ? dq_turns_count(B, T, NH) : 0);
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
  static std::once_flag done[kMaxDevices];
  static bool runs[kMaxDevices] = {};
  const int dev = current_device();
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

// Calls f(Tiles{}) with the tile policy of `kernel` (resolved) for head dimension hd (64, 128 or
// 192: check_shape).
template <class F>
void with_tiles(FlashKernel kernel, int hd, F f) {
  auto by_hd = [&](auto t64, auto t128, auto t192) {
    if (hd == 64)
      f(t64);
    else if (hd == 128)
      f(t128);
    else
      f(t192);
  };
  switch (kernel) {
    case FlashKernel::tma:
      by_hd(flash::WgmmaTiles<64, true>{}, flash::WgmmaTiles<128, true>{},
            flash::WgmmaTiles<192, true>{});
      break;
    case FlashKernel::wgmma:
      by_hd(flash::WgmmaTiles<64>{}, flash::WgmmaTiles<128>{}, flash::WgmmaTiles<192>{});
      break;
    default:
      by_hd(flash::MmaTiles<64>{}, flash::MmaTiles<128>{}, flash::MmaTiles<192>{});
  }
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
  with_tiles(flash_kernel_for_device(kernel), C / NH, [&](auto tiles) {
    forward_with<decltype(tiles)>(out, lse, qkv, B, rows, C, NH, NKV, key_begin, s, scale, softcap,
                                  drop);
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
  const bool atomic = m == FlashBackward::atomic || m == FlashBackward::ordered;
  TRIAD_CHECK(reinterpret_cast<uintptr_t>(workspace) % 16 == 0,
              "flash attention: the backward's workspace is not 16-byte aligned");
  with_tiles(resolved, C / NH, [&](auto tiles) {
    using Tiles = decltype(tiles);
    if (m == FlashBackward::ordered)
      backward_with<Tiles, true, true>(dqkv, dout, qkv, out, lse, workspace, B, rows, C, NH, NKV,
                                       key_begin, s, accumulate, scale, softcap, drop);
    else if (atomic)
      backward_with<Tiles, true, false>(dqkv, dout, qkv, out, lse, workspace, B, rows, C, NH, NKV,
                                        key_begin, s, accumulate, scale, softcap, drop);
    else
      backward_with<Tiles, false, false>(dqkv, dout, qkv, out, lse, workspace, B, rows, C, NH, NKV,
                                         key_begin, s, accumulate, scale, softcap, drop);
  });
}

namespace {

// A device buffer freed on every path out.
template <class T>
struct DeviceVector {
  T* p = nullptr;
  explicit DeviceVector(const std::vector<T>& h) {
    TRIAD_CUDA_CHECK(cudaMalloc(&p, h.size() * sizeof(T)));
    const cudaError_t e = cudaMemcpy(p, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice);
    if (e != cudaSuccess) {
      cudaFree(p);
      TRIAD_CUDA_CHECK(e);
    }
  }
  DeviceVector(const DeviceVector&) = delete;
  DeviceVector& operator=(const DeviceVector&) = delete;
  ~DeviceVector() { cudaFree(p); }
};

template <class Tiles>
FlashProbeResult probe_with(flash::Probe probe) {
  constexpr int HD = Tiles::kHD;
  constexpr size_t smem = flash::probe_smem<Tiles>();
  allow_smem<probe_kernel<Tiles>>(smem);
  const flash::ProbeInputs in(
      probe, HD, [](float f) { return float_to_bf16_bits(f); },
      [](uint16_t b) { return bf16_bits_to_float(b); });
  const DeviceVector<uint16_t> da(in.a), dy(in.y), dwide(in.wide);
  const DeviceVector<float> dp(in.p), out(std::vector<float>(in.out_size(), NAN));
  CUtensorMap map{};
  if constexpr (Tiles::kTma)
    map = bf16_tensor_map(dwide.p, flash::tma_tile_shape(3 * uint64_t(HD), in.rows, 2));
  probe_kernel<Tiles>
      <<<1, flash::kThreads, smem>>>(out.p, da.p, dp.p, dy.p, dwide.p, map, in.rows, probe);
  TRIAD_CUDA_CHECK_LAUNCH();
  std::vector<float> got(in.out_size());
  TRIAD_CUDA_CHECK(
      cudaMemcpy(got.data(), out.p, got.size() * sizeof(float), cudaMemcpyDeviceToHost));
  return FlashProbeResult{flash::probe_name(probe), in.error(got)};
}

}  // namespace

int flash_probe_count() { return flash::kProbes; }

FlashProbeResult flash_probe(FlashKernel kernel, int hd, int index) {
  TRIAD_CHECK(hd == 64 || hd == 128, "flash probes: head dimension ", hd, " (64 or 128)");
  TRIAD_CHECK(index >= 0 && index < flash::kProbes, "flash probes: no probe ", index);
  FlashProbeResult r{};
  with_tiles(flash_kernel_for_device(kernel), hd,
             [&](auto tiles) { r = probe_with<decltype(tiles)>(flash::Probe(index)); });
  return r;
}

}  // namespace triad::cuda

namespace triad {
std::string cuda_flash_kernel() {
  const cuda::FlashBackward backward = cuda::flash_backward_mode();
  return std::string(cuda::flash_kernel_name(cuda::flash_kernel_for_device())) + ", " +
         cuda::flash_backward_name(backward) + " backward";
}
}  // namespace triad
