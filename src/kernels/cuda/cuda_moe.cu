// Mixture of experts (backend.h, "mixture of experts"): the CUDA form of the CPU backend's
// cpu_moe.cpp, fp32 and bf16. The kernels are the block programs of moe_block.h (which describes
// them), run here with DeviceThread and in the CPU tests through the SIMT emulator
// (test_moe_emulated). Every reduction has a fixed order that depends only on the shapes, and no
// kernel uses atomics, so results are bit-identical run to run. prob_sums are
// column_sum_accumulate's.
#include "cuda_ops.cuh"
#include "device_thread.cuh"
#include "moe_block.h"

namespace triad::cuda {
namespace {

using moe_block::kDispatchThreads;
using moe_block::kElementwiseThreads;
using moe_block::kWarpThreads;

unsigned warp_rows_grid(int rows) {
  return unsigned((rows + moe_block::kWarpsPerBlock - 1) / moe_block::kWarpsPerBlock);
}

template <typename E>
__global__ void __launch_bounds__(kWarpThreads)
    route_kernel(float* probs, int32_t* expert, float* gate, const E* logits, int N, int n_experts,
                 int k, const MoeRouting routing, float* lse) {
  DeviceThread x;
  moe_block::route_rows(x, probs, expert, gate, logits, N, n_experts, k, routing, lse);
}

__global__ void __launch_bounds__(kDispatchThreads)
    dispatch_kernel(int32_t* slot, int* counts, const int32_t* expert, int M) {
  DeviceThread x;
  moe_block::dispatch_block(x, slot, counts, expert, M);
}

template <typename T>
__global__ void gather_kernel(T* out, const T* in, const int32_t* slot, int M, int k, int W) {
  DeviceThread x;
  moe_block::gather_rows(x, out, in, slot, M, k, W, int(gridDim.x), int(blockDim.x));
}

template <typename E>
__global__ void combine_kernel(E* out, const E* y, const int32_t* slot, const float* gate, int N,
                               int k, int C) {
  DeviceThread x;
  moe_block::combine_rows(x, out, y, slot, gate, N, k, C, int(gridDim.x), int(blockDim.x));
}

template <typename E>
__global__ void __launch_bounds__(kWarpThreads)
    combine_backward_kernel(E* dy, float* dgate, const E* dout, const E* y, const int32_t* slot,
                            const float* gate, int M, int k, int C) {
  DeviceThread x;
  moe_block::combine_backward_rows(x, dy, dgate, dout, y, slot, gate, M, k, C);
}

template <typename E>
__global__ void __launch_bounds__(kWarpThreads)
    route_backward_kernel(E* dlogits, const float* dgate, const float* probs, const int32_t* expert,
                          const moe_block::AuxCoefficients aux, int N, int n_experts, int k,
                          const MoeRouting routing, const float* lse, float z_loss) {
  DeviceThread x;
  moe_block::route_backward_rows(x, dlogits, dgate, probs, expert, aux, N, n_experts, k, routing,
                                 lse, z_loss);
}

template <typename E>
__global__ void shared_gate_kernel(float* s, const E* logits, int N) {
  DeviceThread x;
  moe_block::shared_gate(x, s, logits, N);
}

template <typename E>
__global__ void shared_gate_backward_kernel(E* dlogits, const float* ds, const float* s, int N) {
  DeviceThread x;
  moe_block::shared_gate_backward(x, dlogits, ds, s, N);
}

// Blocks of a loop over `rows` rows of `width` units: one block per row up to a cap (the loops
// cover the rest), and as many threads as the row needs, up to kBlock, in whole warps.
struct RowLaunch {
  unsigned grid, block;
};
RowLaunch row_launch(int rows, int width) {
  const int block = std::min(kBlock, std::max(32, (width + 31) / 32 * 32));
  return {unsigned(std::min(rows, 1 << 16)), unsigned(block)};
}

}  // namespace

template <typename Elem>
void moe_route(cudaStream_t s, float* probs, int32_t* expert, float* gate, const Elem* logits,
               int N, int E, int k, const MoeRouting& routing, float* lse) {
  if (N <= 0 || E <= 0) return;
  TRIAD_CHECK(k >= 0 && k <= E, "moe_route: k = ", k, " of E = ", E, " experts");
  TRIAD_CHECK(groups_fit(routing, E, k) && routing.groups <= moe_block::kMaxGroups,
              "moe_route: ", routing.groups, " groups (top ", routing.group_top_k, ") do not suit ",
              E, " experts and top ", k);
  route_kernel<<<warp_rows_grid(N), kWarpThreads, 0, s>>>(probs, expert, gate, bits(logits), N, E,
                                                          k, routing, lse);
  TRIAD_CUDA_CHECK_LAUNCH();
}

void moe_dispatch(cudaStream_t s, DeviceScratch& scratch, DeviceScratch& partials, int32_t* slot,
                  int* counts, float* prob_sums, const int32_t* expert, const float* probs, int N,
                  int E, int k) {
  if (E <= 0) return;
  const int M = N * k;
  // [E] ints (the counts), then [E] floats (the probabilities' column sums)
  int* d_counts = scratch.get_as<int>(2 * size_t(E), s);
  float* d_sums = reinterpret_cast<float*>(d_counts + E);
  if (M > 0) {
    dispatch_kernel<<<unsigned(E), kDispatchThreads, moe_block::dispatch_smem(), s>>>(
        slot, d_counts, expert, M);
    TRIAD_CUDA_CHECK_LAUNCH();
  } else {
    TRIAD_CUDA_CHECK(cudaMemsetAsync(d_counts, 0, size_t(E) * sizeof(int), s));
  }
  TRIAD_CUDA_CHECK(
      cudaMemcpyAsync(counts, d_counts, size_t(E) * sizeof(int), cudaMemcpyDeviceToHost, s));
  if (prob_sums != nullptr) {
    TRIAD_CUDA_CHECK(cudaMemsetAsync(d_sums, 0, size_t(E) * sizeof(float), s));
    column_sum_accumulate(s, partials, d_sums, probs, N, E);  // 0 + Σ: the sum itself
    TRIAD_CUDA_CHECK(
        cudaMemcpyAsync(prob_sums, d_sums, size_t(E) * sizeof(float), cudaMemcpyDeviceToHost, s));
  }
  TRIAD_CUDA_CHECK(cudaStreamSynchronize(s));
}

template <typename Elem>
void moe_gather(cudaStream_t s, Elem* out, const Elem* x, const int32_t* slot, int N, int k,
                int C) {
  const int M = N * k;
  if (M <= 0 || C <= 0) return;
  const size_t row_bytes = size_t(C) * sizeof(Elem);
  if (row_bytes % sizeof(uint4) == 0 && pointer_alignment(out) >= sizeof(uint4) &&
      pointer_alignment(x) >= sizeof(uint4)) {
    const int W = int(row_bytes / sizeof(uint4));
    const RowLaunch l = row_launch(M, W);
    gather_kernel<<<l.grid, l.block, 0, s>>>(reinterpret_cast<uint4*>(out),
                                             reinterpret_cast<const uint4*>(x), slot, M, k, W);
  } else {
    const RowLaunch l = row_launch(M, C);
    gather_kernel<<<l.grid, l.block, 0, s>>>(out, x, slot, M, k, C);
  }
  TRIAD_CUDA_CHECK_LAUNCH();
}

template <typename Elem>
void moe_combine(cudaStream_t s, Elem* out, const Elem* y, const int32_t* slot, const float* gate,
                 int N, int k, int C) {
  if (N <= 0 || C <= 0) return;
  const RowLaunch l = row_launch(N, C);
  combine_kernel<<<l.grid, l.block, 0, s>>>(bits(out), bits(y), slot, gate, N, k, C);
  TRIAD_CUDA_CHECK_LAUNCH();
}

template <typename Elem>
void moe_combine_backward(cudaStream_t s, Elem* dy, float* dgate, const Elem* dout, const Elem* y,
                          const int32_t* slot, const float* gate, int N, int k, int C) {
  const int M = N * k;
  if (M <= 0) return;
  combine_backward_kernel<<<warp_rows_grid(M), kWarpThreads, 0, s>>>(bits(dy), dgate, bits(dout),
                                                                     bits(y), slot, gate, M, k, C);
  TRIAD_CUDA_CHECK_LAUNCH();
}

template <typename Elem>
void moe_route_backward(cudaStream_t s, Elem* dlogits, const float* dgate, const float* probs,
                        const int32_t* expert, const float* aux, int N, int E, int k,
                        const MoeRouting& routing, const float* lse, float z_loss) {
  if (N <= 0 || E <= 0) return;
  TRIAD_CHECK(!(routing.sigmoid && z_loss > 0.0f),
              "moe_route_backward: the router z-loss needs softmax scores");
  TRIAD_CHECK(E <= kMaxExperts, "cuda backend: moe_route_backward takes at most ", kMaxExperts,
              " experts (got ", E, ")");
  moe_block::AuxCoefficients coef{};
  coef.on = aux != nullptr;
  if (aux != nullptr) std::copy(aux, aux + E, coef.v);  // host memory (backend.h)
  route_backward_kernel<<<warp_rows_grid(N), kWarpThreads, 0, s>>>(
      bits(dlogits), dgate, probs, expert, coef, N, E, k, routing, lse, z_loss);
  TRIAD_CUDA_CHECK_LAUNCH();
}

template <typename Elem>
void moe_shared_gate(cudaStream_t st, float* s, const Elem* logits, int N) {
  if (N <= 0) return;
  shared_gate_kernel<<<unsigned((N + kElementwiseThreads - 1) / kElementwiseThreads),
                       kElementwiseThreads, 0, st>>>(s, bits(logits), N);
  TRIAD_CUDA_CHECK_LAUNCH();
}

template <typename Elem>
void moe_shared_gate_backward(cudaStream_t st, Elem* dlogits, const float* ds, const float* s,
                              int N) {
  if (N <= 0) return;
  shared_gate_backward_kernel<<<unsigned((N + kElementwiseThreads - 1) / kElementwiseThreads),
                                kElementwiseThreads, 0, st>>>(bits(dlogits), ds, s, N);
  TRIAD_CUDA_CHECK_LAUNCH();
}

template void moe_shared_gate<float>(cudaStream_t, float*, const float*, int);
template void moe_shared_gate<bf16>(cudaStream_t, float*, const bf16*, int);
template void moe_shared_gate_backward<float>(cudaStream_t, float*, const float*, const float*,
                                              int);
template void moe_shared_gate_backward<bf16>(cudaStream_t, bf16*, const float*, const float*, int);
template void moe_route<float>(cudaStream_t, float*, int32_t*, float*, const float*, int, int, int,
                               const MoeRouting&, float*);
template void moe_route<bf16>(cudaStream_t, float*, int32_t*, float*, const bf16*, int, int, int,
                              const MoeRouting&, float*);
template void moe_gather<float>(cudaStream_t, float*, const float*, const int32_t*, int, int, int);
template void moe_gather<bf16>(cudaStream_t, bf16*, const bf16*, const int32_t*, int, int, int);
template void moe_combine<float>(cudaStream_t, float*, const float*, const int32_t*, const float*,
                                 int, int, int);
template void moe_combine<bf16>(cudaStream_t, bf16*, const bf16*, const int32_t*, const float*, int,
                                int, int);
template void moe_combine_backward<float>(cudaStream_t, float*, float*, const float*, const float*,
                                          const int32_t*, const float*, int, int, int);
template void moe_combine_backward<bf16>(cudaStream_t, bf16*, float*, const bf16*, const bf16*,
                                         const int32_t*, const float*, int, int, int);
template void moe_route_backward<float>(cudaStream_t, float*, const float*, const float*,
                                        const int32_t*, const float*, int, int, int,
                                        const MoeRouting&, const float*, float);
template void moe_route_backward<bf16>(cudaStream_t, bf16*, const float*, const float*,
                                       const int32_t*, const float*, int, int, int,
                                       const MoeRouting&, const float*, float);

}  // namespace triad::cuda
