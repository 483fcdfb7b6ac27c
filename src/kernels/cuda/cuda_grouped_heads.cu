// Grouped-query attention (NKV < NH, backend.h) for the training attention ops, by expansion:
// the fused flash kernels and the fp32 cuBLAS attention are written for one key/value head per
// query head (rows q | k | v of 3C), so the compact rows (W = C + 2·NKV·hd) are expanded into
// such rows in the backend's scratch, the MHA op runs on them, and its gradient is reduced back.
// The expansion plays the part of Hugging Face's repeat_kv, with backend.h's grouping: expanded
// head h is kv head h % NKV (torch.Tensor.repeat), not repeat_kv's h / (NH/NKV). It costs an
// [N, 3C] copy of qkv (and of dqkv in the backward) and the MHA op's full K/V traffic; a flash
// kernel that indexes the compact rows itself (as the decoding kernel does) is future work.
//
// Kernels: the block programs of grouped_heads_block.h (one thread per element of the written
// matrix, grid-stride loops: memory-bound copies). The reduction sums a kv head's NH/NKV gradients
// in increasing query-head order in fp32 and rounds once: deterministic, no atomics.
#include "cuda_ops.cuh"
#include "device_thread.cuh"
#include "grouped_heads_block.h"

namespace triad::cuda {
namespace {

// The block programs of grouped_heads_block.h, launched with DeviceThread.
template <typename E>
__global__ void expand_kv_heads_kernel(E* mha, const E* qkv, int C, int hd, int NKV, size_t W,
                                       size_t total) {
  DeviceThread x;
  grouped_heads_block::expand(x, mha, qkv, C, hd, NKV, W, total, block_threads(), grid_threads());
}

template <typename E>
__global__ void prepare_expanded_dqkv_kernel(E* dmha, const E* dqkv, int C, size_t W,
                                             bool accumulate, size_t total) {
  DeviceThread x;
  grouped_heads_block::prepare_gradient(x, dmha, dqkv, C, W, accumulate, total, block_threads(),
                                        grid_threads());
}

template <typename E>
__global__ void reduce_kv_heads_kernel(E* dqkv, const E* dmha, int C, int hd, int NH, int NKV,
                                       size_t W, bool accumulate, size_t total) {
  DeviceThread x;
  grouped_heads_block::reduce(x, dqkv, dmha, C, hd, NH, NKV, W, accumulate, total, block_threads(),
                              grid_threads());
}

void check_heads(int N, int C, int NH, int NKV) {
  TRIAD_CHECK(NH > 0 && C % NH == 0 && NKV > 0 && NH % NKV == 0 && N >= 0,
              "cuda grouped heads: bad shape (N = ", N, ", C = ", C, ", NH = ", NH, ", NKV = ", NKV,
              ")");
}

}  // namespace

template <typename Elem>
GroupedHeads<Elem> grouped_heads_scratch(AttentionScratch& scratch, cudaStream_t s, int N, int C,
                                         bool backward) {
  // Each matrix starts 256-byte aligned, as cudaMalloc's blocks do (the flash kernels' vector
  // loads need 16).
  const size_t bytes = (size_t(N) * 3 * C * sizeof(Elem) + 255) / 256 * 256;
  char* p = static_cast<char*>(scratch.grouped.get(backward ? 2 * bytes : bytes, s));
  return GroupedHeads<Elem>{reinterpret_cast<Elem*>(p),
                            backward ? reinterpret_cast<Elem*>(p + bytes) : nullptr};
}

template <typename Elem>
void expand_kv_heads(cudaStream_t s, Elem* mha, const Elem* qkv, int N, int C, int NH, int NKV) {
  check_heads(N, C, NH, NKV);
  const size_t total = size_t(N) * 3 * C;
  if (total == 0) return;
  expand_kv_heads_kernel<<<grid_for(total), kBlock, 0, s>>>(bits(mha), bits(qkv), C, C / NH, NKV,
                                                            size_t(qkv_width(C, NH, NKV)), total);
  TRIAD_CUDA_CHECK_LAUNCH();
}

template <typename Elem>
void prepare_expanded_dqkv(cudaStream_t s, Elem* dmha, const Elem* dqkv, int N, int C, int NH,
                           int NKV, bool accumulate) {
  check_heads(N, C, NH, NKV);
  const size_t total = size_t(N) * 3 * C;
  if (total == 0) return;
  prepare_expanded_dqkv_kernel<<<grid_for(total), kBlock, 0, s>>>(
      bits(dmha), bits(dqkv), C, size_t(qkv_width(C, NH, NKV)), accumulate, total);
  TRIAD_CUDA_CHECK_LAUNCH();
}

template <typename Elem>
void reduce_kv_heads(cudaStream_t s, Elem* dqkv, const Elem* dmha, int N, int C, int NH, int NKV,
                     bool accumulate) {
  check_heads(N, C, NH, NKV);
  const size_t W = size_t(qkv_width(C, NH, NKV)), total = size_t(N) * W;
  if (total == 0) return;
  reduce_kv_heads_kernel<<<grid_for(total), kBlock, 0, s>>>(bits(dqkv), bits(dmha), C, C / NH, NH,
                                                            NKV, W, accumulate, total);
  TRIAD_CUDA_CHECK_LAUNCH();
}

template <typename Elem>
const Elem* mha_qkv(AttentionScratch& scratch, cudaStream_t s, const Elem* qkv, int N, int C,
                    int NH, int NKV) {
  if (NKV == NH) return qkv;
  const GroupedHeads<Elem> g = grouped_heads_scratch<Elem>(scratch, s, N, C, false);
  expand_kv_heads(s, g.qkv, qkv, N, C, NH, NKV);
  return g.qkv;
}

template GroupedHeads<float> grouped_heads_scratch<float>(AttentionScratch&, cudaStream_t, int, int,
                                                          bool);
template GroupedHeads<bf16> grouped_heads_scratch<bf16>(AttentionScratch&, cudaStream_t, int, int,
                                                        bool);
template void expand_kv_heads<float>(cudaStream_t, float*, const float*, int, int, int, int);
template void expand_kv_heads<bf16>(cudaStream_t, bf16*, const bf16*, int, int, int, int);
template const float* mha_qkv<float>(AttentionScratch&, cudaStream_t, const float*, int, int, int,
                                     int);
template const bf16* mha_qkv<bf16>(AttentionScratch&, cudaStream_t, const bf16*, int, int, int,
                                   int);
template void prepare_expanded_dqkv<float>(cudaStream_t, float*, const float*, int, int, int, int,
                                           bool);
template void prepare_expanded_dqkv<bf16>(cudaStream_t, bf16*, const bf16*, int, int, int, int,
                                          bool);
template void reduce_kv_heads<float>(cudaStream_t, float*, const float*, int, int, int, int, bool);
template void reduce_kv_heads<bf16>(cudaStream_t, bf16*, const bf16*, int, int, int, int, bool);

}  // namespace triad::cuda
