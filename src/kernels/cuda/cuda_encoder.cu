// Token + position embedding. tokens is a device buffer of B·T ids in [0, Vp), or < 0 for an id
// another rank's slice of the vocabulary holds (vocabulary parallelism): such a token adds a zero
// row forward and nothing to dwte backward. wpe / dwpe == nullptr: no position term / gradient.
//
// Backward without atomics: several positions may hold the same token, so a row of dwte gets
// several contributions. Thread (c, bucket) owns channel c of every vocabulary row whose id is
// ≡ bucket (mod kBuckets) and walks all N positions in order, adding the ones that hit its rows.
// So every dwte element is updated by exactly one thread, in position order: race-free,
// deterministic, and the same order as the CPU backend (bit-identical sums). The buckets only
// add parallelism (C·kBuckets threads instead of C); each thread reads all N token ids, which
// are the same address across a warp (one broadcast load).
// dwpe: thread (t, c) sums over the B sequences in order.
#include "cuda_ops.cuh"

namespace triad::cuda {
namespace {

constexpr int kBuckets = 32;
constexpr int kChannelBlock = 128;

__global__ void encoder_forward_kernel(float* out, const int32_t* tokens, const float* wte,
                                       const float* wpe, int T, int C, size_t total) {
  TRIAD_GRID_STRIDE_LOOP(i, total) {
    const size_t n = i / size_t(C);
    const size_t c = i % size_t(C);
    const size_t t = n % size_t(T);
    const int32_t tok = tokens[n];
    if (tok >= 0) {
      const float x = wte[size_t(tok) * C + c];
      out[i] = wpe != nullptr ? x + wpe[t * C + c] : x;
    } else {
      out[i] = wpe != nullptr ? 0.0f + wpe[t * C + c] : 0.0f;  // a zero token row
    }
  }
}

// grid (ceil(C / kChannelBlock), kBuckets), block kChannelBlock.
__global__ void encoder_backward_wte_kernel(float* dwte, const float* dout, const int32_t* tokens,
                                            int N, int C) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  const int bucket = blockIdx.y;
  if (c >= C) return;
  for (int n = 0; n < N; ++n) {
    const int tok = tokens[n];
    if (tok >= 0 && tok % kBuckets == bucket) dwte[size_t(tok) * C + c] += dout[size_t(n) * C + c];
  }
}

__global__ void encoder_backward_wpe_kernel(float* dwpe, const float* dout, int B, int T, int C) {
  const size_t TC = size_t(T) * C;
  TRIAD_GRID_STRIDE_LOOP(i, TC) {  // i = t·C + c
    float acc = dwpe[i];
    for (int b = 0; b < B; ++b) acc += dout[size_t(b) * TC + i];
    dwpe[i] = acc;
  }
}

}  // namespace

void encoder_forward(cudaStream_t s, float* out, const int32_t* tokens, const float* wte,
                     const float* wpe, int B, int T, int C) {
  const size_t total = size_t(B) * T * C;
  if (total == 0) return;
  encoder_forward_kernel<<<grid_for(total), kBlock, 0, s>>>(out, tokens, wte, wpe, T, C, total);
  TRIAD_CUDA_CHECK_LAUNCH();
}

void encoder_backward(cudaStream_t s, float* dwte, float* dwpe, const float* dout,
                      const int32_t* tokens, int B, int T, int C) {
  if (size_t(B) * T * C == 0) return;
  const dim3 grid((C + kChannelBlock - 1) / kChannelBlock, kBuckets);
  encoder_backward_wte_kernel<<<grid, kChannelBlock, 0, s>>>(dwte, dout, tokens, B * T, C);
  TRIAD_CUDA_CHECK_LAUNCH();
  if (dwpe == nullptr) return;
  encoder_backward_wpe_kernel<<<grid_for(size_t(T) * C), kBlock, 0, s>>>(dwpe, dout, B, T, C);
  TRIAD_CUDA_CHECK_LAUNCH();
}

}  // namespace triad::cuda
