// RMSNorm of q and k over all their heads (backend.h qk_full_norm_sums / forward / backward,
// model.qk_norm_full): in each row of qkv [N, W] (W = C + 2·K: q's C values, k's K = NKV·hd, then
// v's) q becomes x·r_q·wq and k x·r_k·wk, r = 1/sqrt(Σx²/D + eps) with Σx² all-reduced by the
// model over the tensor-parallel group (sums) and D the whole vector's width; v is copied.
// Templated on the storage type Elem (float or bf16) of out, qkv, wq, wk, dqkv and dout; sums,
// rstd and dots [N, 2], dwq [C] and dwk [K] are fp32 in both.
//
// The kernels are the block programs of qk_full_norm_block.h, run here with DeviceThread and in
// the CPU tests through the SIMT emulator (test_qk_full_norm_emulated). Launch shapes:
//  - sums: one warp per vector (2·N: each row's q, then its k), kThreads threads per block, a
//    grid-stride loop over the warps; the lanes stride over the vector, the sum a double warp
//    butterfly (a fixed tree).
//  - forward and input gradient: one thread per element (N·W), grid_for blocks, a grid-stride
//    loop. Each thread reads an element of dout before writing the same element of dqkv, so the
//    backward may run in place (dqkv == dout, overwriting).
//  - weight gradients dwq, dwk += Σ dout·x̂ over the rows: column sums of [N, C] and [N, K] in the
//    two deterministic passes of the LayerNorm weight gradients (cuda_layernorm.cu,
//    column_sum_accumulate in cuda_reduce.cu): grid (ceil(max(C, K) / kColumns), 2·slices),
//    kColumns·kRowGroups threads, then column_sum_finish adds the slices in order. No atomics:
//    bit-identical run to run. The partials live in the backend's reduction scratch. This pass
//    runs before the input gradient, which may overwrite dout.
#include "cuda_ops.cuh"
#include "device_thread.cuh"
#include "qk_full_norm_block.h"

namespace triad::cuda {
namespace {

using qk_full_norm_block::Shape;
static_assert(qk_full_norm_block::kThreads == kBlock, "grid_for's blocks");

template <typename E>
__global__ void __launch_bounds__(qk_full_norm_block::kThreads)
    qk_full_norm_sums_kernel(float* out, const E* qkv, const E* dout, const E* wq, const E* wk,
                             const float* rstd, Shape h, size_t vectors) {
  DeviceThread x;
  qk_full_norm_block::sums(x, out, qkv, dout, wq, wk, rstd, h, vectors,
                           size_t(gridDim.x) * qk_full_norm_block::kWarpsPerBlock);
}

template <typename E>
__global__ void __launch_bounds__(qk_full_norm_block::kThreads)
    qk_full_norm_forward_kernel(E* out, float* rstd, const E* qkv, const float* sums, const E* wq,
                                const E* wk, Shape h, int Dq, int Dk, float eps, size_t total) {
  DeviceThread x;
  qk_full_norm_block::forward(x, out, rstd, qkv, sums, wq, wk, h, Dq, Dk, eps, total,
                              size_t(gridDim.x) * qk_full_norm_block::kThreads);
}

template <typename E>
__global__ void __launch_bounds__(qk_full_norm_block::kThreads)
    qk_full_norm_dinp_kernel(E* dqkv, const E* dout, const E* qkv, const E* wq, const E* wk,
                             const float* rstd, const float* dots, Shape h, int Dq, int Dk,
                             bool accumulate, size_t total) {
  DeviceThread x;
  qk_full_norm_block::backward_input(x, dqkv, dout, qkv, wq, wk, rstd, dots, h, Dq, Dk, accumulate,
                                     total, size_t(gridDim.x) * qk_full_norm_block::kThreads);
}

template <typename E>
__global__ void __launch_bounds__(qk_full_norm_block::kThreads)
    qk_full_norm_params_kernel(float* pq, float* pk, const E* dout, const E* qkv, const float* rstd,
                               Shape h, int N, int slices, int rows) {
  DeviceThread x;
  qk_full_norm_block::weight_partials(x, pq, pk, dout, qkv, rstd, h, N, slices, rows, slices);
}

Shape check_shape(const char* op, int N, int C, int NH, int NKV) {
  TRIAD_CHECK(N >= 0 && NH > 0 && C % NH == 0 && C / NH >= 1 && NKV > 0 && NH % NKV == 0, "cuda ",
              op, ": bad shape (N = ", N, ", C = ", C, ", NH = ", NH, ", NKV = ", NKV, ")");
  return Shape{C, NKV * (C / NH), size_t(qkv_width(C, NH, NKV))};
}

}  // namespace

template <typename Elem>
void qk_full_norm_sums(cudaStream_t s, float* sums, const Elem* qkv, const Elem* dout,
                       const Elem* wq, const Elem* wk, const float* rstd, int N, int C, int NH,
                       int NKV) {
  const Shape h = check_shape("qk_full_norm_sums", N, C, NH, NKV);
  const size_t vectors = 2 * size_t(N);
  if (vectors == 0) return;
  qk_full_norm_sums_kernel<<<grid_for(vectors, qk_full_norm_block::kWarpsPerBlock),
                             qk_full_norm_block::kThreads, 0, s>>>(
      sums, bits(qkv), bits(dout), bits(wq), bits(wk), rstd, h, vectors);
  TRIAD_CUDA_CHECK_LAUNCH();
}

template <typename Elem>
void qk_full_norm_forward(cudaStream_t s, Elem* out, float* rstd, const Elem* qkv,
                          const float* sums, const Elem* wq, const Elem* wk, int N, int C, int NH,
                          int NKV, int Dq, int Dk, float eps) {
  const Shape h = check_shape("qk_full_norm_forward", N, C, NH, NKV);
  const size_t total = size_t(N) * h.W;
  if (total == 0) return;
  qk_full_norm_forward_kernel<<<grid_for(total), qk_full_norm_block::kThreads, 0, s>>>(
      bits(out), rstd, bits(qkv), sums, bits(wq), bits(wk), h, Dq, Dk, eps, total);
  TRIAD_CUDA_CHECK_LAUNCH();
}

template <typename Elem>
void qk_full_norm_backward(cudaStream_t s, DeviceScratch& scratch, Elem* dqkv, float* dwq,
                           float* dwk, const Elem* dout, const Elem* qkv, const Elem* wq,
                           const Elem* wk, const float* rstd, const float* dots, int N, int C,
                           int NH, int NKV, int Dq, int Dk, bool accumulate) {
  const Shape h = check_shape("qk_full_norm_backward", N, C, NH, NKV);
  if (N == 0) return;
  // 1. dwq, dwk, from dout before the input gradient may overwrite it.
  const int slices = column_sum_slices(N);
  const size_t part_q = column_sum_partials_floats(N, h.C);
  float* pq = scratch.get_as<float>(part_q + column_sum_partials_floats(N, h.K), s);
  float* pk = pq + part_q;
  const dim3 grid(
      (std::max(h.C, h.K) + qk_full_norm_block::kColumns - 1) / qk_full_norm_block::kColumns,
      2 * slices);  // q's, then k's
  qk_full_norm_params_kernel<<<grid, qk_full_norm_block::kThreads,
                               qk_full_norm_block::partials_smem(), s>>>(
      pq, pk, bits(dout), bits(qkv), rstd, h, N, slices, (N + slices - 1) / slices);
  TRIAD_CUDA_CHECK_LAUNCH();
  column_sum_finish(s, dwq, pq, N, h.C);
  column_sum_finish(s, dwk, pk, N, h.K);
  // 2. The input gradient.
  const size_t total = size_t(N) * h.W;
  qk_full_norm_dinp_kernel<<<grid_for(total), qk_full_norm_block::kThreads, 0, s>>>(
      bits(dqkv), bits(dout), bits(qkv), bits(wq), bits(wk), rstd, dots, h, Dq, Dk, accumulate,
      total);
  TRIAD_CUDA_CHECK_LAUNCH();
}

#define TRIAD_INSTANTIATE_QK_FULL_NORM(Elem)                                                       \
  template void qk_full_norm_sums<Elem>(cudaStream_t, float*, const Elem*, const Elem*,            \
                                        const Elem*, const Elem*, const float*, int, int, int,     \
                                        int);                                                      \
  template void qk_full_norm_forward<Elem>(cudaStream_t, Elem*, float*, const Elem*, const float*, \
                                           const Elem*, const Elem*, int, int, int, int, int, int, \
                                           float);                                                 \
  template void qk_full_norm_backward<Elem>(                                                       \
      cudaStream_t, DeviceScratch&, Elem*, float*, float*, const Elem*, const Elem*, const Elem*,  \
      const Elem*, const float*, const float*, int, int, int, int, int, int, bool);
TRIAD_INSTANTIATE_QK_FULL_NORM(float)
TRIAD_INSTANTIATE_QK_FULL_NORM(bf16)
#undef TRIAD_INSTANTIATE_QK_FULL_NORM

}  // namespace triad::cuda
