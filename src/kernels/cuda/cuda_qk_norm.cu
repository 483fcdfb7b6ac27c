// Per-head RMSNorm of q and k (backend.h qk_norm_forward / qk_norm_backward, model.qk_norm): in
// each row of qkv [N, W] (W = C + 2·NKV·hd: NH q heads, then NKV k heads, then NKV v heads, hd
// values each) the q heads become x·r·wq and the k heads x·r·wk, r = 1/sqrt(mean(x²) + 1e-5);
// the v heads are copied. Templated on the storage type Elem (float or bf16) of out, qkv, wq, wk,
// dqkv and dout; rstd [N, NH + NKV], dwq and dwk [hd] are fp32 in both. Computed in fp32, each
// Elem output rounded once (accumulating: round(old + gradient)).
//
// The kernels are the block programs of qk_norm_block.h, run here with DeviceThread and in the
// CPU tests through the SIMT emulator (test_qk_norm_emulated). Launch shapes:
//  - forward and input gradient: one warp per head-row, N·(NH + 2·NKV) of them (the v heads
//    included: copied, or their gradient dout's), kThreads threads per block, a grid-stride loop
//    over the warps (grid_for). The lanes stride over the hd values (any hd); Σx² and
//    Σ g·x̂ are double warp shuffles (warp_sum: a fixed tree), as the CPU's sums. Each lane reads
//    and writes only its own elements, and reads an element of dout before writing the same element
//    of dqkv, so the backward may run in place (dqkv == dout, overwriting).
//  - weight gradients dwq, dwk += Σ dout·x̂ over the rows and heads: column sums of the
//    virtual matrices [N·NH, hd] (q heads) and [N·NKV, hd] (k heads), x̂ recomputed from qkv
//    and rstd, in the two deterministic passes of the LayerNorm weight gradients
//    (cuda_layernorm.cu, column_sum_accumulate in cuda_reduce.cu): grid (ceil(hd / kColumns),
//    2·slices), kColumns·kRowGroups threads; block (x, y) sums its columns over a row slice of
//    matrix y / slices (0: q, 1: k) in a fixed order into the per-slice partials, then
//    column_sum_finish adds the slices in order. No atomics: the sums depend on the shapes only
//    (bit-identical run to run). The partials (column_sum_partials_floats of both matrices,
//    slices·hd floats each) live in the backend's reduction scratch. This pass runs before the
//    input gradient, which may overwrite dout.
#include "cuda_ops.cuh"
#include "device_thread.cuh"
#include "qk_norm_block.h"

namespace triad::cuda {
namespace {

using qk_norm_block::Heads;
static_assert(qk_norm_block::kThreads == kBlock, "grid_for's blocks");

template <typename E>
__global__ void __launch_bounds__(qk_norm_block::kThreads)
    qk_norm_forward_kernel(E* out, float* rstd, const E* qkv, const E* wq, const E* wk, Heads h,
                           size_t head_rows, float eps) {
  DeviceThread x;
  qk_norm_block::forward(x, out, rstd, qkv, wq, wk, h, head_rows, eps,
                         size_t(gridDim.x) * qk_norm_block::kWarpsPerBlock);
}

template <typename E>
__global__ void __launch_bounds__(qk_norm_block::kThreads)
    qk_norm_backward_dinp_kernel(E* dqkv, const E* dout, const E* qkv, const E* wq, const E* wk,
                                 const float* rstd, Heads h, size_t head_rows, bool accumulate) {
  DeviceThread x;
  qk_norm_block::backward_input(x, dqkv, dout, qkv, wq, wk, rstd, h, head_rows, accumulate,
                                size_t(gridDim.x) * qk_norm_block::kWarpsPerBlock);
}

template <typename E>
__global__ void __launch_bounds__(qk_norm_block::kThreads)
    qk_norm_backward_params_kernel(float* pq, float* pk, const E* dout, const E* qkv,
                                   const float* rstd, Heads h, int N, int slices_q, int slices_k,
                                   int rows_q, int rows_k, int slices_max) {
  DeviceThread x;
  qk_norm_block::weight_partials(x, pq, pk, dout, qkv, rstd, h, N, slices_q, slices_k, rows_q,
                                 rows_k, slices_max);
}

Heads check_heads(const char* op, int N, int C, int NH, int NKV) {
  TRIAD_CHECK(N >= 0 && NH > 0 && C % NH == 0 && C / NH >= 1 && NKV > 0 && NH % NKV == 0, "cuda ",
              op, ": bad shape (N = ", N, ", C = ", C, ", NH = ", NH, ", NKV = ", NKV, ")");
  return Heads{NH, NKV, C / NH, size_t(qkv_width(C, NH, NKV))};
}

}  // namespace

template <typename Elem>
void qk_norm_forward(cudaStream_t s, Elem* out, float* rstd, const Elem* qkv, const Elem* wq,
                     const Elem* wk, int N, int C, int NH, int NKV, float eps) {
  const Heads h = check_heads("qk_norm_forward", N, C, NH, NKV);
  const size_t head_rows = size_t(N) * size_t(NH + 2 * NKV);
  if (head_rows == 0) return;
  qk_norm_forward_kernel<<<grid_for(head_rows, qk_norm_block::kWarpsPerBlock),
                           qk_norm_block::kThreads, 0, s>>>(bits(out), rstd, bits(qkv), bits(wq),
                                                            bits(wk), h, head_rows, eps);
  TRIAD_CUDA_CHECK_LAUNCH();
}

template <typename Elem>
void qk_norm_backward(cudaStream_t s, DeviceScratch& scratch, Elem* dqkv, float* dwq, float* dwk,
                      const Elem* dout, const Elem* qkv, const Elem* wq, const Elem* wk,
                      const float* rstd, int N, int C, int NH, int NKV, bool accumulate) {
  const Heads h = check_heads("qk_norm_backward", N, C, NH, NKV);
  if (N == 0) return;
  // 1. dwq, dwk, from dout before the input gradient may overwrite it.
  const int Mq = N * NH, Mk = N * NKV;  // the rows of the two column sums
  const int slices_q = column_sum_slices(Mq), slices_k = column_sum_slices(Mk);
  const size_t part_q = column_sum_partials_floats(Mq, h.hd);
  float* pq = scratch.get_as<float>(part_q + column_sum_partials_floats(Mk, h.hd), s);
  float* pk = pq + part_q;
  const int slices_max = std::max(slices_q, slices_k);
  const dim3 grid((h.hd + qk_norm_block::kColumns - 1) / qk_norm_block::kColumns,
                  2 * slices_max);  // q's slices, then k's
  qk_norm_backward_params_kernel<<<grid, qk_norm_block::kThreads, qk_norm_block::partials_smem(),
                                   s>>>(pq, pk, bits(dout), bits(qkv), rstd, h, N, slices_q,
                                        slices_k, (Mq + slices_q - 1) / slices_q,
                                        (Mk + slices_k - 1) / slices_k, slices_max);
  TRIAD_CUDA_CHECK_LAUNCH();
  column_sum_finish(s, dwq, pq, Mq, h.hd);
  column_sum_finish(s, dwk, pk, Mk, h.hd);
  // 2. The input gradient.
  const size_t head_rows = size_t(N) * size_t(NH + 2 * NKV);
  qk_norm_backward_dinp_kernel<<<grid_for(head_rows, qk_norm_block::kWarpsPerBlock),
                                 qk_norm_block::kThreads, 0, s>>>(
      bits(dqkv), bits(dout), bits(qkv), bits(wq), bits(wk), rstd, h, head_rows, accumulate);
  TRIAD_CUDA_CHECK_LAUNCH();
}

#define TRIAD_INSTANTIATE_QK_NORM(Elem)                                                      \
  template void qk_norm_forward<Elem>(cudaStream_t, Elem*, float*, const Elem*, const Elem*, \
                                      const Elem*, int, int, int, int, float);               \
  template void qk_norm_backward<Elem>(cudaStream_t, DeviceScratch&, Elem*, float*, float*,  \
                                       const Elem*, const Elem*, const Elem*, const Elem*,   \
                                       const float*, int, int, int, int, bool);
TRIAD_INSTANTIATE_QK_NORM(float)
TRIAD_INSTANTIATE_QK_NORM(bf16)
#undef TRIAD_INSTANTIATE_QK_NORM

}  // namespace triad::cuda
