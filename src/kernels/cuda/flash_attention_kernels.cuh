// The flash attention kernels (the block programs of flash_attention_block.h run by DeviceThread)
// and their launches, for the translation unit of one head dimension (flash_attention_launch.h):
// included only by flash_attention_hd64.cu, _hd128.cu and _hd192.cu, each of which instantiates
// FlashHeadDim for its head dimension, so each kernel is compiled in exactly one of them.
#pragma once

#include <cstdint>
#include <mutex>
#include <vector>

#include "cuda_common.cuh"
#include "cuda_tensor_map.cuh"
#include "device_thread.cuh"
#include "flash_attention_block.h"
#include "flash_attention_launch.h"
#include "flash_attention_mma.h"
#include "flash_attention_wgmma.h"
#include "flash_probe_block.h"

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

// Whether the kernels of tile policy Tiles have a body in the code being compiled. The Hopper
// policies' kernels are launched only where the code the device runs has the sm_90a features
// (flash_kernel_for_device); in the code for every other architecture of the build (sm_80) their
// bodies are a trap, which spares compiling two of the three policies again (a third of the
// build's device-compile time).
template <class Tiles>
__host__ __device__ constexpr bool has_body() {
#if defined(__CUDA_ARCH__) && !defined(__CUDA_ARCH_FEAT_SM90_ALL)
  return !Tiles::kHopper;
#else
  return true;
#endif
}

// Dropout: the attention dropout's kernels (flash_attention_block.h), compiled apart from the
// others, which keep their registers.
template <class Tiles, bool Dropout>
__global__ void __launch_bounds__(flash::kThreads)
    forward_kernel(uint16_t* __restrict__ out, float* __restrict__ lse,
                   const uint16_t* __restrict__ qkv, const __grid_constant__ TileMaps maps,
                   flash::Rows rows, int C, int NH, int NKV, float scale_log2,
                   const int32_t* __restrict__ key_begin, float cap_log2, AttentionDropMask drop) {
  if constexpr (has_body<Tiles>()) {
    DeviceThread x;
    flash::forward_block<Tiles, Dropout>(x, out, lse, qkv, map_of<Tiles>(maps.qkv), rows, C, NH,
                                         NKV, scale_log2, key_begin, cap_log2, drop);
  } else {
    __trap();
  }
}

template <int HD>
__global__ void __launch_bounds__(flash::kThreads)
    dot_kernel(float* __restrict__ Dv, float* __restrict__ dq_accum, int* __restrict__ dq_turns,
               const uint16_t* __restrict__ dout, const uint16_t* __restrict__ out, int B, int T,
               int NH) {
  DeviceThread x;
  flash::dot_block<HD>(x, Dv, dq_accum, dq_turns, dout, out, B, T, NH);
}

// Pass: the dK/dV kernel's work in one pass or either of two (flash::split_dkdv).
template <class Tiles, bool AtomicDq, bool Ordered, bool Masked, bool Capped, bool Dropout,
          flash::DkdvPass Pass>
__global__ void __launch_bounds__(flash::kThreads)
    dkdv_kernel(uint16_t* __restrict__ dqkv, float* __restrict__ dq_accum, int* dq_turns,
                const uint16_t* __restrict__ dout, const uint16_t* __restrict__ qkv,
                const __grid_constant__ TileMaps maps, const float* __restrict__ lse,
                const float* __restrict__ Dv, int B, flash::Rows rows, int C, int NH, int NKV,
                float scale, float scale_log2, bool accumulate,
                const int32_t* __restrict__ key_begin, float cap_log2, AttentionDropMask drop) {
  if constexpr (has_body<Tiles>()) {
    DeviceThread x;
    flash::dkdv_block<Tiles, AtomicDq, Ordered, Masked, Capped, Dropout, Pass>(
        x, dqkv, dq_accum, dq_turns, dout, qkv, map_of<Tiles>(maps.qkv), map_of<Tiles>(maps.dout),
        lse, Dv, B, rows, C, NH, NKV, scale, scale_log2, accumulate, key_begin, cap_log2, drop);
  } else {
    __trap();
  }
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
  if constexpr (has_body<Tiles>()) {
    DeviceThread x;
    flash::dq_block<Tiles, Capped, Dropout>(
        x, dqkv, dout, qkv, map_of<Tiles>(maps.qkv), map_of<Tiles>(maps.dout), lse, Dv, rows, C, NH,
        NKV, scale, scale_log2, accumulate, key_begin, cap_log2, drop);
  } else {
    __trap();
  }
}

template <class Tiles>
__global__ void __launch_bounds__(flash::kThreads)
    probe_kernel(float* out, const uint16_t* a, const float* p, const uint16_t* y,
                 const uint16_t* wide, const __grid_constant__ CUtensorMap wide_map, int rows,
                 flash::Probe probe) {
  if constexpr (has_body<Tiles>()) {
    DeviceThread x;
    flash::probe_block<Tiles>(x, out, a, p, y, wide, map_of<Tiles>(wide_map), rows, probe);
  } else {
    __trap();
  }
}

// Lets kernel k use `bytes` of dynamic shared memory (above the default 48 KB). The attribute
// belongs to the current device's context, so it is set once per device and kernel. The kernel
// is a template argument, not a function argument: the kernels of different tile policies have
// the same type, and a flag per type would set the attribute for the first of them only.
template <auto Kernel>
void allow_smem(size_t bytes) {
  static std::once_flag done[kFlashMaxDevices];
  std::call_once(done[flash_current_device()], [&] {
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

// The dK/dV kernel (pass Pass) over grid (B·NKV key/value heads, key blocks): with the mask's
// test compiled in only where there is a mask, and a soft cap's only where there is a cap (its
// kernel takes masks too: one more kernel, not two); the attention dropout's (with the mask's
// test, never with a cap) its own.
template <class Tiles, bool AtomicDq, bool Ordered, flash::DkdvPass Pass>
void dkdv_with(bf16* dqkv, float* dq_accum, int* dq_turns, const bf16* dout, const bf16* qkv,
               const TileMaps& maps, const float* lse, const float* Dv, int B,
               const flash::Rows& rows, int C, int NH, int NKV, const int32_t* key_begin,
               cudaStream_t s, bool accumulate, const flash::Launch& l, bool capped,
               const AttentionDropMask& drop) {
  constexpr auto masked = dkdv_kernel<Tiles, AtomicDq, Ordered, true, false, false, Pass>;
  constexpr auto plain = dkdv_kernel<Tiles, AtomicDq, Ordered, false, false, false, Pass>;
  constexpr auto with_cap = dkdv_kernel<Tiles, AtomicDq, Ordered, true, true, false, Pass>;
  constexpr auto dropping = dkdv_kernel<Tiles, AtomicDq, Ordered, true, false, true, Pass>;
  const bool drops = drop.on();  // (not with a cap: check_dropout)
  const size_t smem =
      drops ? flash::dkdv_smem<Tiles, AtomicDq, true>() : flash::dkdv_smem<Tiles, AtomicDq>();
  if (drops)
    allow_smem<dropping>(smem);
  else if (capped)
    allow_smem<with_cap>(smem);
  else if (key_begin != nullptr)
    allow_smem<masked>(smem);
  else
    allow_smem<plain>(smem);
  auto* const kernel = drops ? dropping : capped ? with_cap : key_begin != nullptr ? masked : plain;
  const dim3 grid(unsigned(l.kv_blocks_x), unsigned(l.key_blocks));
  kernel<<<grid, flash::kThreads, smem, s>>>(bits(dqkv), dq_accum, dq_turns, bits(dout), bits(qkv),
                                             maps, lse, Dv, B, rows, C, NH, NKV, l.scale,
                                             l.scale_log2, accumulate, key_begin, l.cap_log2, drop);
  TRIAD_CUDA_CHECK_LAUNCH();
}

// Ordered: the dQ additions in key-block order (AtomicDq only).
template <class Tiles, bool AtomicDq, bool Ordered>
void backward_with(bf16* dqkv, const bf16* dout, const bf16* qkv, const bf16* out, const float* lse,
                   float* ws, int B, const flash::Rows& rows, int C, int NH, int NKV,
                   const int32_t* key_begin, cudaStream_t s, bool accumulate, float scale,
                   float softcap, const AttentionDropMask& drop) {
  const int T = rows.seq;  // the workspace's layout: sized for whole sequences
  constexpr int HD = Tiles::kHD;
  const bool capped = softcap > 0.0f, dropping = drop.on();
  float* Dv = ws;
  float* dq_accum = AtomicDq ? ws + flash_dq_accum_offset(B, T, NH) : nullptr;
  int* dq_turns =
      Ordered ? reinterpret_cast<int*>(ws + flash_dq_turns_offset(B, T, C, NH)) : nullptr;
  const flash::Launch l = flash::launch_shape(B, rows, NH, HD, NKV, scale, softcap);
  // D and the zeroed accumulator and turns over the range's rows (out and dout hold only those).
  dot_kernel<HD><<<unsigned(l.dot_blocks), flash::kThreads, 0, s>>>(
      Dv, dq_accum, dq_turns, bits(dout), bits(out), B, rows.count, NH);
  TRIAD_CUDA_CHECK_LAUNCH();
  // dK/dV: one block per key/value head and key block, over the query heads that read it; in
  // one pass, or (flash::split_dkdv) dV first, then dK (and the dQ additions).
  const TileMaps maps = tile_maps<Tiles>(qkv, dout, B, rows, C, NKV * HD);
  if constexpr (flash::split_dkdv<Tiles>()) {
    dkdv_with<Tiles, false, false, flash::DkdvPass::dv>(dqkv, nullptr, nullptr, dout, qkv, maps,
                                                        lse, Dv, B, rows, C, NH, NKV, key_begin, s,
                                                        accumulate, l, capped, drop);
    dkdv_with<Tiles, AtomicDq, Ordered, flash::DkdvPass::dk>(
        dqkv, dq_accum, dq_turns, dout, qkv, maps, lse, Dv, B, rows, C, NH, NKV, key_begin, s,
        accumulate, l, capped, drop);
  } else {
    dkdv_with<Tiles, AtomicDq, Ordered, flash::DkdvPass::both>(
        dqkv, dq_accum, dq_turns, dout, qkv, maps, lse, Dv, B, rows, C, NH, NKV, key_begin, s,
        accumulate, l, capped, drop);
  }
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

// Calls f(Tiles{}) with head dimension HD's tiles under tile policy `kernel` (resolved).
template <int HD, class F>
void with_policy(FlashKernel kernel, F f) {
  switch (kernel) {
    case FlashKernel::tma:
      f(flash::WgmmaTiles<HD, true>{});
      break;
    case FlashKernel::wgmma:
      f(flash::WgmmaTiles<HD>{});
      break;
    default:
      f(flash::MmaTiles<HD>{});
  }
}

}  // namespace

template <int HD>
void FlashHeadDim<HD>::forward(FlashKernel kernel, bf16* out, float* lse, const bf16* qkv, int B,
                               const flash::Rows& rows, int C, int NH, int NKV,
                               const int32_t* key_begin, cudaStream_t s, float scale, float softcap,
                               const AttentionDropMask& drop) {
  with_policy<HD>(kernel, [&](auto tiles) {
    forward_with<decltype(tiles)>(out, lse, qkv, B, rows, C, NH, NKV, key_begin, s, scale, softcap,
                                  drop);
  });
}

template <int HD>
void FlashHeadDim<HD>::backward(FlashKernel kernel, FlashBackward mode, bf16* dqkv,
                                const bf16* dout, const bf16* qkv, const bf16* out,
                                const float* lse, float* ws, int B, const flash::Rows& rows, int C,
                                int NH, int NKV, const int32_t* key_begin, cudaStream_t s,
                                bool accumulate, float scale, float softcap,
                                const AttentionDropMask& drop) {
  with_policy<HD>(kernel, [&](auto tiles) {
    using Tiles = decltype(tiles);
    if (mode == FlashBackward::ordered)
      backward_with<Tiles, true, true>(dqkv, dout, qkv, out, lse, ws, B, rows, C, NH, NKV,
                                       key_begin, s, accumulate, scale, softcap, drop);
    else if (mode == FlashBackward::atomic)
      backward_with<Tiles, true, false>(dqkv, dout, qkv, out, lse, ws, B, rows, C, NH, NKV,
                                        key_begin, s, accumulate, scale, softcap, drop);
    else
      backward_with<Tiles, false, false>(dqkv, dout, qkv, out, lse, ws, B, rows, C, NH, NKV,
                                         key_begin, s, accumulate, scale, softcap, drop);
  });
}

template <int HD>
FlashProbeResult flash_probe_head_dim(FlashKernel kernel, int index) {
  FlashProbeResult r{};
  with_policy<HD>(kernel,
                  [&](auto tiles) { r = probe_with<decltype(tiles)>(flash::Probe(index)); });
  return r;
}

}  // namespace triad::cuda
