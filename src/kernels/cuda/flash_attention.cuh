// Fused causal flash attention (FlashAttention-2 style) in bf16 with fp32 accumulation, on the
// tensor cores through mma.sync m16n8k16 with ldmatrix and cp.async (sm_80 and later). What each
// thread block does is in flash_attention_block.h, which the CPU tests run through an emulator.
//
// Layouts (those of the fp32 attention of backend.h, in bf16):
//   qkv  [B,T,W]   per row q (NH heads) | k | v (NKV heads each), each head-major (head h at
//                  columns h·hd .. h·hd+hd-1 of its part); W = C + 2·NKV·hd (3C: NKV = NH).
//                  Query head h reads key/value head h % NKV (grouped-query attention, natively:
//                  each dK/dV block sums over the query heads of its key/value head)
//   out  [B,T,C]
//   lse  [B,NH,T]  fp32, natural log of Σ_j exp(scale · q_i·k_j) over the keys j <= i
//   dqkv [B,T,W]   overwritten, or accumulated into (round(old + gradient)) on request
// scale = 1/sqrt(hd) unless given, hd = C/NH ∈ {64, 128, 192}; any T >= 1. No T×T matrix in
// global memory.
// key_begin (nullptr: plain causal) is a document mask [B,T] in device memory, query t of
// sequence b seeing keys key_begin[b·T+t] .. t (never decreasing along a sequence; backend.h);
// lse then sums over those keys. Key tiles a query block does not see are skipped.
//
// Backward, two ways (FlashBackward):
//   deterministic  one kernel per key block computes dK, dV; a second per query block computes
//                  dQ (recomputing P and dP): 7 tile products per (query, key) tile pair, no
//                  atomics, bit-identical run to run;
//   atomic         the key-block kernel also computes dQ = dS·K and adds it into an fp32
//                  accumulator with atomics (FlashAttention-2's scheme), then a small kernel
//                  scales and rounds it: 5 products, but the order of the fp32 additions (and so
//                  dQ's last bits) varies from run to run;
//   ordered        as atomic, but the key blocks take turns per query tile (a counter each,
//                  acquire/release at GPU scope) and add in key-block order with plain loads and
//                  stores: 5 products, bit-identical run to run, at the cost of the waits.
// At hd 192 the key-block kernel runs as two (dV, then dK and the dQ additions: one product more
// per tile pair), each keeping one of the two accumulators in registers (flash::split_dkdv).
// The workspace holds D = rowsum(dO ∘ O), the atomic and ordered ways' dQ accumulator, and the
// ordered way's turn counters and ticket counter.
//
// This header compiles with the host compiler too (the launchers are ordinary functions).
// Errors (bad shapes, launch failures) throw triad::Error.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "triad/kernels/backend.h"  // QueryRows

namespace triad::cuda {

using bf16 = __nv_bfloat16;

// Which tile policy runs the block programs: mma (mma.sync + ldmatrix, sm_80 and later), wgmma
// (wgmma from shared memory, tiles loaded with cp.async) or tma (the same products, tiles loaded
// with bulk tensor copies completing on mbarriers); wgmma and tma need a compute capability 9.0
// GPU and the build's sm_90a code. automatic: the environment variable TRIAD_FLASH_KERNEL (auto,
// mma, wgmma or tma) if set, else wgmma where it can run and mma elsewhere. Asking for wgmma or
// tma where they cannot run, or a bad TRIAD_FLASH_KERNEL, throws triad::Error.
enum class FlashKernel { automatic, mma, wgmma, tma };

// Whether the wgmma kernels can run on the current device.
bool flash_wgmma_available();
// The policy `requested` resolves to on the current device.
FlashKernel flash_kernel_for_device(FlashKernel requested = FlashKernel::automatic);
const char* flash_kernel_name(FlashKernel k);

// How the backward computes dQ (above). automatic: the environment variable
// TRIAD_FLASH_BACKWARD (deterministic, atomic or ordered) if set, else deterministic. A bad
// TRIAD_FLASH_BACKWARD throws triad::Error.
enum class FlashBackward { automatic, deterministic, atomic, ordered };
FlashBackward flash_backward_mode(FlashBackward requested = FlashBackward::automatic);
const char* flash_backward_name(FlashBackward m);

// Floats of workspace flash_attention_backward needs: B·NH·T (rounded up to a multiple of 4),
// plus B·T·C for the atomic and ordered backwards, plus B·NH·ceil(T/64) + 1 for the ordered one.
size_t flash_attention_workspace_floats(int B, int T, int C, int NH,
                                        FlashBackward mode = FlashBackward::automatic);

// out [B,T,C] bf16 and lse [B,NH,T] fp32 from qkv [B,T,W] bf16 (device pointers), on stream s.
// qkv must be 16-byte aligned (vector loads), out 4-byte aligned. `rows` (QueryRows of backend.h,
// starting at a multiple of 64 and ending at one or at T): the queries of that range only, out
// [B,count,C], lse [B,NH,count]; the backward's dout likewise, dqkv keeping T rows.
void flash_attention_forward(bf16* out, float* lse, const bf16* qkv, int B, int T, int C, int NH,
                             const int32_t* key_begin, cudaStream_t s,
                             FlashKernel kernel = FlashKernel::automatic, QueryRows rows = {},
                             int NKV = 0,           // 0: NH
                             float scale = 0.0f,    // backend.h's (0: 1/sqrt(hd))
                             float softcap = 0.0f,  // backend.h's (0: no cap)
                             // the attention dropout's (dropout_mask.h; off: none), not with a cap
                             AttentionDropMask drop = {});

// dqkv [B,T,W] from dout [B,T,C], the forward's qkv, out, lse and key_begin: overwritten, or with
// accumulate each element becomes round(old + gradient) in fp32 (the Backend's += contract).
// workspace holds flash_attention_workspace_floats(B, T, C, NH, mode) floats (the same mode, so
// that both resolve `automatic` alike), 16-byte aligned.
// Device pointers, stream s. qkv and dout must be 16-byte aligned (vector loads), out and dqkv
// 4-byte aligned.
void flash_attention_backward(bf16* dqkv, const bf16* dout, const bf16* qkv, const bf16* out,
                              const float* lse, float* workspace, int B, int T, int C, int NH,
                              const int32_t* key_begin, cudaStream_t s, bool accumulate = false,
                              FlashKernel kernel = FlashKernel::automatic,
                              FlashBackward mode = FlashBackward::automatic, QueryRows rows = {},
                              int NKV = 0, float scale = 0.0f, float softcap = 0.0f,
                              AttentionDropMask drop = {});  // the forward's

// The building blocks of the kernel's tile policy, one per call on the current device
// (flash_probe_block.h: probe `index` of flash_probe_count(), a product form or the tile load,
// on known inputs in one block), with its error against a double reference:
// max|got − want| / max|want|, about 1e-6 when the hardware reads the layouts as the code means
// them. For telling which primitive is off when the attention tests fail on a new GPU.
struct FlashProbeResult {
  const char* name;
  double error;
};
int flash_probe_count();
FlashProbeResult flash_probe(FlashKernel kernel, int hd, int index);

// Host helpers for tests and benchmarks: float ↔ bf16 bit patterns (round to nearest even;
// NaN stays NaN).
inline uint16_t float_to_bf16_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return uint16_t(u >> 16);
}

inline float bf16_bits_to_float(uint16_t b) {
  const uint32_t u = uint32_t(b) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

}  // namespace triad::cuda
