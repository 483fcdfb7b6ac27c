// Attention sinks on the GPU (model.attn_sinks): the block programs of attention_sinks_block.h
// (which describes the math) around the bf16 flash kernels, and the per-head reduction of the
// rows' gradient terms that the fp32 softmax backward and the bf16 path both leave.
#include <cstdint>

#include "attention_sinks_block.h"
#include "cuda_ops.cuh"
#include "device_thread.cuh"

namespace triad::cuda {
namespace {

template <class E>
__global__ void sinks_scale_outputs_kernel(E* out, const float* lse, const E* sinks, int n, int C,
                                           int NH, size_t total) {
  DeviceThread x;
  attention_sinks_block::scale_outputs(x, out, lse, sinks, n, C, NH, total, block_threads(),
                                       grid_threads());
}

template <class E>
__global__ void sinks_add_to_lse_kernel(float* lse, const E* sinks, int n, int NH, size_t rows) {
  DeviceThread x;
  attention_sinks_block::add_sinks_to_lse(x, lse, sinks, n, NH, rows, block_threads(),
                                          grid_threads());
}

template <class E>
__global__ void sinks_row_terms_kernel(float* terms, const E* out, const E* dout, const float* lse,
                                       const E* sinks, int n, int C, int NH, size_t rows) {
  DeviceThread x;
  attention_sinks_block::row_terms(x, terms, out, dout, lse, sinks, n, C, NH, rows, block_threads(),
                                   grid_threads());
}

__global__ void __launch_bounds__(attention_sinks_block::kReduceThreads)
    sinks_reduce_terms_kernel(float* dsinks, const float* terms, int B, int n, int NH) {
  DeviceThread x;
  attention_sinks_block::reduce_terms(x, dsinks, terms, B, n, NH);
}

}  // namespace

float* sink_row_terms(AttentionScratch& scratch, cudaStream_t s, int B, int NH, int n) {
  return scratch.sinks.get_as<float>(size_t(B) * NH * n, s);
}

void reduce_sink_terms(cudaStream_t s, float* dsinks, const float* terms, int B, int n, int NH) {
  sinks_reduce_terms_kernel<<<unsigned(NH), attention_sinks_block::kReduceThreads,
                              attention_sinks_block::reduce_smem(), s>>>(dsinks, terms, B, n, NH);
  TRIAD_CUDA_CHECK_LAUNCH();
}

void apply_attention_sinks(cudaStream_t s, bf16* out, float* lse, const bf16* sinks, int B, int n,
                           int C, int NH) {
  const size_t total = size_t(B) * n * C, rows = size_t(B) * NH * n;
  sinks_scale_outputs_kernel<<<grid_for(total), kBlock, 0, s>>>(bits(out), lse, bits(sinks), n, C,
                                                                NH, total);
  TRIAD_CUDA_CHECK_LAUNCH();
  sinks_add_to_lse_kernel<<<grid_for(rows), kBlock, 0, s>>>(lse, bits(sinks), n, NH, rows);
  TRIAD_CUDA_CHECK_LAUNCH();
}

void attention_sinks_backward(cudaStream_t s, AttentionScratch& scratch, float* dsinks,
                              const bf16* out, const bf16* dout, const float* lse,
                              const bf16* sinks, int B, int n, int C, int NH) {
  const size_t rows = size_t(B) * NH * n;
  float* terms = sink_row_terms(scratch, s, B, NH, n);
  sinks_row_terms_kernel<<<grid_for(rows), kBlock, 0, s>>>(terms, bits(out), bits(dout), lse,
                                                           bits(sinks), n, C, NH, rows);
  TRIAD_CUDA_CHECK_LAUNCH();
  reduce_sink_terms(s, dsinks, terms, B, n, NH);
}

}  // namespace triad::cuda
