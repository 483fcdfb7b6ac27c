// Token + position embedding: the block programs of encoder_block.h, launched here with
// DeviceThread (and run in the CPU tests through the SIMT emulator). tokens is a device buffer of
// B·T ids in [0, Vp), or < 0 for an id another rank's slice of the vocabulary holds (vocabulary
// parallelism): such a token adds a zero row forward and nothing to dwte backward. wpe / dwpe ==
// nullptr: no position term / gradient. Templated on the storage type Elem (float or bf16) of out,
// wte, wpe and dout; the gradients dwte, dwpe are fp32 in both, and a bf16 output is rounded once
// from the fp32 sum.
//
// Backward without atomics: several positions may hold the same token, so a row of dwte gets
// several contributions. Thread (c, bucket) owns channel c of every vocabulary row whose id is
// ≡ bucket (mod kBuckets) and walks all N positions in order, adding the ones that hit its rows.
// So every dwte element is updated by exactly one thread, in position order: race-free,
// deterministic, and the same order as the CPU backend (bit-identical sums). The buckets only
// add parallelism (C·kBuckets threads instead of C); each thread reads all N token ids, which
// are the same address across a warp (one broadcast load).
// dwpe: thread (t, c) sums over the B sequences in order; with positions of their own
// (data.reset_positions: several rows of a sequence share a position) the buckets' walk above,
// over positions instead of token ids, in row order as the CPU backend.
#include "cuda_ops.cuh"
#include "device_thread.cuh"
#include "encoder_block.h"

namespace triad::cuda {
namespace {

using encoder_block::kBuckets;
using encoder_block::kChannelBlock;

template <typename E>
__global__ void encoder_forward_kernel(E* out, const int32_t* tokens, const E* wte, const E* wpe,
                                       const int32_t* positions, int T, int C, size_t total) {
  DeviceThread x;
  encoder_block::forward(x, out, tokens, wte, wpe, positions, T, C, total, block_threads(),
                         grid_threads());
}

// grid (ceil(C / kChannelBlock), kBuckets), block kChannelBlock.
template <typename E>
__global__ void __launch_bounds__(kChannelBlock)
    encoder_backward_wte_kernel(float* dw, const E* dout, const int32_t* ids, int N, int C) {
  DeviceThread x;
  encoder_block::backward_rows(x, dw, dout, ids, N, C);
}

template <typename E>
__global__ void encoder_backward_wpe_kernel(float* dwpe, const E* dout, int B, int T, int C) {
  DeviceThread x;
  encoder_block::backward_positions(x, dwpe, dout, B, T, C, block_threads(), grid_threads());
}

}  // namespace

template <typename Elem>
void encoder_forward(cudaStream_t s, Elem* out, const int32_t* tokens, const Elem* wte,
                     const Elem* wpe, int B, int T, int C, const int32_t* positions) {
  const size_t total = size_t(B) * T * C;
  if (total == 0) return;
  encoder_forward_kernel<<<grid_for(total), kBlock, 0, s>>>(bits(out), tokens, bits(wte), bits(wpe),
                                                            positions, T, C, total);
  TRIAD_CUDA_CHECK_LAUNCH();
}

template <typename Elem>
void encoder_backward(cudaStream_t s, float* dwte, float* dwpe, const Elem* dout,
                      const int32_t* tokens, int B, int T, int C, const int32_t* positions) {
  if (size_t(B) * T * C == 0) return;
  const dim3 grid((C + kChannelBlock - 1) / kChannelBlock, kBuckets);
  encoder_backward_wte_kernel<<<grid, kChannelBlock, 0, s>>>(dwte, bits(dout), tokens, B * T, C);
  TRIAD_CUDA_CHECK_LAUNCH();
  if (dwpe == nullptr) return;
  if (positions != nullptr) {  // rows sharing a position: the buckets' walk, over positions
    encoder_backward_wte_kernel<<<grid, kChannelBlock, 0, s>>>(dwpe, bits(dout), positions, B * T,
                                                               C);
    TRIAD_CUDA_CHECK_LAUNCH();
    return;
  }
  encoder_backward_wpe_kernel<<<grid_for(size_t(T) * C), kBlock, 0, s>>>(dwpe, bits(dout), B, T, C);
  TRIAD_CUDA_CHECK_LAUNCH();
}

#define TRIAD_INSTANTIATE_ENCODER(Elem)                                                           \
  template void encoder_forward<Elem>(cudaStream_t, Elem*, const int32_t*, const Elem*,           \
                                      const Elem*, int, int, int, const int32_t*);                \
  template void encoder_backward<Elem>(cudaStream_t, float*, float*, const Elem*, const int32_t*, \
                                       int, int, int, const int32_t*);
TRIAD_INSTANTIATE_ENCODER(float)
TRIAD_INSTANTIATE_ENCODER(bf16)
#undef TRIAD_INSTANTIATE_ENCODER

}  // namespace triad::cuda
