// The launches of the flash attention kernels of one head dimension (flash_attention_hd64.cu,
// _hd128.cu, _hd192.cu, each including flash_attention_kernels.cuh): one translation unit per
// head dimension, so that nvcc compiles the three sets of kernels side by side (as one file they
// took three minutes of one core, the build's longest step). flash_attention.cu checks the
// arguments and picks the head dimension; what runs is described in flash_attention.cuh.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>

#include "flash_attention.cuh"
#include "flash_attention_block.h"  // flash::Rows, flash::kTile

namespace triad::cuda {

// The kernels of head dimension HD under tile policy `kernel` (resolved: not automatic).
template <int HD>
struct FlashHeadDim {
  static void forward(FlashKernel kernel, bf16* out, float* lse, const bf16* qkv, int B,
                      const flash::Rows& rows, int C, int NH, int NKV, const int32_t* key_begin,
                      cudaStream_t s, float scale, float softcap, const AttentionDropMask& drop);
  // mode resolved (not automatic); ws the workspace (flash_attention_workspace_floats).
  static void backward(FlashKernel kernel, FlashBackward mode, bf16* dqkv, const bf16* dout,
                       const bf16* qkv, const bf16* out, const float* lse, float* ws, int B,
                       const flash::Rows& rows, int C, int NH, int NKV, const int32_t* key_begin,
                       cudaStream_t s, bool accumulate, float scale, float softcap,
                       const AttentionDropMask& drop);
};
extern template struct FlashHeadDim<64>;
extern template struct FlashHeadDim<128>;
extern template struct FlashHeadDim<192>;

// One probe of the tile policy's products (flash_probe_block.h) at HD 64 or 128.
template <int HD>
FlashProbeResult flash_probe_head_dim(FlashKernel kernel, int index);
extern template FlashProbeResult flash_probe_head_dim<64>(FlashKernel, int);
extern template FlashProbeResult flash_probe_head_dim<128>(FlashKernel, int);

// The current device's index, checked against kFlashMaxDevices: what is set up per device (a
// kernel attribute, a probe result) is kept in arrays of that size.
constexpr int kFlashMaxDevices = 64;
int flash_current_device();

// The backward's workspace: D [B·NH·T] first, then (atomic, ordered) the dQ accumulator [B,T,C],
// 16-byte aligned, then (ordered) the turns [B·NH][nqb] (ints, in float-sized slots). A query
// range uses the first B·NH·count, B·count·C and B·NH·ceil(count/64) + 1 of them.
inline size_t flash_dq_accum_offset(int B, int T, int NH) {
  return (size_t(B) * NH * T + 3) / 4 * 4;
}
inline size_t flash_dq_turns_offset(int B, int T, int C, int NH) {
  return flash_dq_accum_offset(B, T, NH) + size_t(B) * T * C;
}
// The turns and the ticket counter after them.
inline size_t flash_dq_turns_count(int B, int T, int NH) {
  return size_t(B) * NH * size_t((T + flash::kTile - 1) / flash::kTile) + 1;
}

}  // namespace triad::cuda
