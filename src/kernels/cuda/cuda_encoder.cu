// Token + position embedding. tokens is a device buffer of B·T ids in [0, Vp), or < 0 for an id
// another rank's slice of the vocabulary holds (vocabulary parallelism): such a token adds a zero
// row forward and nothing to dwte backward. wpe / dwpe == nullptr: no position term / gradient.
// Templated on the storage type Elem (float or bf16) of out, wte, wpe and dout; the gradients
// dwte, dwpe are fp32 in both, and a bf16 output is rounded once from the fp32 sum.
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

namespace triad::cuda {
namespace {

// 256 buckets: C/128 · 256 blocks (1536 for C = 768) fill the GPU, and a thread's chain of
// dependent read-modify-writes is about N/256 long instead of N/32.
constexpr int kBuckets = 256;
constexpr int kChannelBlock = 128;

template <typename Elem>
__global__ void encoder_forward_kernel(Elem* out, const int32_t* tokens, const Elem* wte,
                                       const Elem* wpe, const int32_t* positions, int T, int C,
                                       size_t total) {
  TRIAD_GRID_STRIDE_LOOP(i, total) {
    const size_t n = i / size_t(C);
    const size_t c = i % size_t(C);
    const size_t t = positions != nullptr ? size_t(positions[n]) : n % size_t(T);
    const int32_t tok = tokens[n];
    const float x = tok >= 0 ? widen(wte[size_t(tok) * C + c]) : 0.0f;  // foreign: a zero row
    out[i] = narrow<Elem>(wpe != nullptr ? x + widen(wpe[t * C + c]) : x);
  }
}

// grid (ceil(C / kChannelBlock), kBuckets), block kChannelBlock.
template <typename Elem>
__global__ void encoder_backward_wte_kernel(float* dwte, const Elem* dout, const int32_t* tokens,
                                            int N, int C) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  const int bucket = blockIdx.y;
  if (c >= C) return;
#pragma unroll 8
  for (int n = 0; n < N; ++n) {
    const int tok = tokens[n];
    if (tok >= 0 && tok % kBuckets == bucket)
      dwte[size_t(tok) * C + c] += widen(dout[size_t(n) * C + c]);
  }
}

template <typename Elem>
__global__ void encoder_backward_wpe_kernel(float* dwpe, const Elem* dout, int B, int T, int C) {
  const size_t TC = size_t(T) * C;
  TRIAD_GRID_STRIDE_LOOP(i, TC) {  // i = t·C + c
    float acc = dwpe[i];
    for (int b = 0; b < B; ++b) acc += widen(dout[size_t(b) * TC + i]);
    dwpe[i] = acc;
  }
}

}  // namespace

template <typename Elem>
void encoder_forward(cudaStream_t s, Elem* out, const int32_t* tokens, const Elem* wte,
                     const Elem* wpe, int B, int T, int C, const int32_t* positions) {
  const size_t total = size_t(B) * T * C;
  if (total == 0) return;
  encoder_forward_kernel<<<grid_for(total), kBlock, 0, s>>>(out, tokens, wte, wpe, positions, T, C,
                                                            total);
  TRIAD_CUDA_CHECK_LAUNCH();
}

template <typename Elem>
void encoder_backward(cudaStream_t s, float* dwte, float* dwpe, const Elem* dout,
                      const int32_t* tokens, int B, int T, int C, const int32_t* positions) {
  if (size_t(B) * T * C == 0) return;
  const dim3 grid((C + kChannelBlock - 1) / kChannelBlock, kBuckets);
  encoder_backward_wte_kernel<<<grid, kChannelBlock, 0, s>>>(dwte, dout, tokens, B * T, C);
  TRIAD_CUDA_CHECK_LAUNCH();
  if (dwpe == nullptr) return;
  if (positions != nullptr) {  // rows sharing a position: the buckets' walk, over positions
    encoder_backward_wte_kernel<<<grid, kChannelBlock, 0, s>>>(dwpe, dout, positions, B * T, C);
    TRIAD_CUDA_CHECK_LAUNCH();
    return;
  }
  encoder_backward_wpe_kernel<<<grid_for(size_t(T) * C), kBlock, 0, s>>>(dwpe, dout, B, T, C);
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
