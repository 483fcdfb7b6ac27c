// Per-head RMSNorm of q and k (backend.h qk_norm_forward / qk_norm_backward, model.qk_norm): in
// each row of qkv [N, W] (W = C + 2·NKV·hd: NH q heads, then NKV k heads, then NKV v heads, hd
// values each) the q heads become x·r·wq and the k heads x·r·wk, r = 1/sqrt(mean(x²) + 1e-5);
// the v heads are copied. Templated on the storage type Elem (float or bf16) of out, qkv, wq, wk,
// dqkv and dout; rstd [N, NH + NKV], dwq and dwk [hd] are fp32 in both. Computed in fp32, each
// Elem output rounded once (accumulating: round(old + gradient)).
//
// Launch shapes:
//  - forward and input gradient: one warp per head-row, N·(NH + 2·NKV) of them (the v heads
//    included: copied, or their gradient dout's), kBlock threads per block, a grid-stride loop
//    over the warps (grid_for). The lanes stride over the hd values (any hd); Σx² and
//    Σ g·x̂ are double warp shuffles (warp_reduce: a fixed tree), as the CPU's sums. Each lane reads
//    and writes only its own elements, and reads an element of dout before writing the same element
//    of dqkv, so the backward may run in place (dqkv == dout, overwriting).
//  - weight gradients dwq, dwk += Σ dout·x̂ over the rows and heads: column sums of the
//    virtual matrices [N·NH, hd] (q heads) and [N·NKV, hd] (k heads), x̂ recomputed from qkv
//    and rstd, in the two deterministic passes of the LayerNorm weight gradients
//    (cuda_layernorm.cu, column_sum_accumulate in cuda_reduce.cu): grid (ceil(hd / kColumns),
//    slices, 2), block (kColumns, kRowGroups); block (x, y, z) sums its columns over the y-th
//    row slice of matrix z (0: q, 1: k) in a fixed order into the per-slice partials, then
//    column_sum_finish adds the slices in order. No atomics: the sums depend on the shapes only
//    (bit-identical run to run). The partials (column_sum_partials_floats of both matrices,
//    slices·hd floats each) live in the backend's reduction scratch. This pass runs before the
//    input gradient, which may overwrite dout.
#include "cuda_ops.cuh"

namespace triad::cuda {
namespace {

constexpr int kWarpsPerBlock = kBlock / 32;
constexpr int kColumns = 32;   // columns (of a head's hd) per block in the weight-gradient pass
constexpr int kRowGroups = 8;  // head-rows summed in parallel per column there

// The shape of one call: hd values per head, W per row, heads per row (q, k, v).
struct Heads {
  int NH, NKV, hd;
  size_t W;
  __device__ int normed() const { return NH + NKV; }     // q and k heads: rstd's row width
  __device__ int total() const { return NH + 2 * NKV; }  // with the v heads: W / hd
};

// Warp k of the grid-stride loop over n head-rows; every lane of a warp takes the same k.
#define TRIAD_WARP_STRIDE_LOOP(k, n)                                                   \
  for (size_t k = (size_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32; k < size_t(n); \
       k += size_t(gridDim.x) * (blockDim.x / 32))

template <typename Elem>
__global__ void qk_norm_forward_kernel(Elem* out, float* rstd, const Elem* qkv, const Elem* wq,
                                       const Elem* wk, Heads h, size_t head_rows, float eps) {
  const int lane = threadIdx.x % 32;
  TRIAD_WARP_STRIDE_LOOP(k, head_rows) {
    const int j = int(k % size_t(h.total()));  // head j of row r, at column j·hd
    const size_t r = k / size_t(h.total());
    const size_t at = r * h.W + size_t(j) * h.hd;
    const Elem* x = qkv + at;
    Elem* o = out + at;
    if (j >= h.normed()) {  // a v head: copied
      for (int c = lane; c < h.hd; c += 32) o[c] = x[c];
      continue;
    }
    const Elem* w = j < h.NH ? wq : wk;
    double sq = 0.0;  // in double, as the CPU backend (and the LayerNorms)
    for (int c = lane; c < h.hd; c += 32) {
      const double v = widen(x[c]);
      sq += v * v;
    }
    sq = warp_reduce(sq, SumOp{});
    const float rs = float(1.0 / sqrt(sq / h.hd + double(eps)));
    for (int c = lane; c < h.hd; c += 32) o[c] = narrow<Elem>(widen(x[c]) * rs * widen(w[c]));
    if (lane == 0) rstd[r * h.normed() + j] = rs;
  }
}

// dx = r·(g − x̂·mean(g·x̂)), g = dout·w, x̂ = x·r; a v head's dx is dout. Written over dqkv or
// added to it. dqkv may be dout (overwriting): each lane reads an element of dout before it
// writes that element, and touches no other lane's.
template <typename Elem>
__global__ void qk_norm_backward_dinp_kernel(Elem* dqkv, const Elem* dout, const Elem* qkv,
                                             const Elem* wq, const Elem* wk, const float* rstd,
                                             Heads h, size_t head_rows, bool accumulate) {
  const int lane = threadIdx.x % 32;
  TRIAD_WARP_STRIDE_LOOP(k, head_rows) {
    const int j = int(k % size_t(h.total()));
    const size_t r = k / size_t(h.total());
    const size_t at = r * h.W + size_t(j) * h.hd;
    const Elem* d = dout + at;
    Elem* dx = dqkv + at;
    if (j >= h.normed()) {  // a v head
      for (int c = lane; c < h.hd; c += 32)
        dx[c] = accumulate ? narrow<Elem>(widen(dx[c]) + widen(d[c])) : d[c];
      continue;
    }
    const Elem* x = qkv + at;
    const Elem* w = j < h.NH ? wq : wk;
    const float rs = rstd[r * h.normed() + j];
    double gx = 0.0;
    for (int c = lane; c < h.hd; c += 32)
      gx += double(widen(d[c]) * widen(w[c]) * (widen(x[c]) * rs));
    gx = warp_reduce(gx, SumOp{});
    const float gx_mean = float(gx / h.hd);
    for (int c = lane; c < h.hd; c += 32) {
      const float xhat = widen(x[c]) * rs;
      const float v = rs * (widen(d[c]) * widen(w[c]) - xhat * gx_mean);
      dx[c] = narrow<Elem>(accumulate ? widen(dx[c]) + v : v);
    }
  }
}

// Per-slice partial sums of dwq (z = 0) and dwk (z = 1): matrix z's rows m are the head-rows of
// its heads (m = r·heads + i: row r, head i), column c of row m dout·x̂ at that head's value c.
// Block (x, y, z) of (kColumns, kRowGroups) threads sums its columns over the y-th slice of
// `rows` rows in a fixed order into partials[y][c]; column_sum_finish adds the slices.
template <typename Elem>
__global__ void qk_norm_backward_params_kernel(float* pq, float* pk, const Elem* dout,
                                               const Elem* qkv, const float* rstd, Heads h, int N,
                                               int slices_q, int slices_k, int rows_q, int rows_k) {
  __shared__ float part[kRowGroups][kColumns + 1];
  const bool is_q = blockIdx.z == 0;
  if (int(blockIdx.y) >= (is_q ? slices_q : slices_k)) return;  // the whole block
  const int heads = is_q ? h.NH : h.NKV;
  const size_t col0 = is_q ? 0 : size_t(h.NH) * h.hd;  // the first k head's column is C
  const int head0 = is_q ? 0 : h.NH;                   // its r at rstd[row][NH + i]
  const int rows = is_q ? rows_q : rows_k;
  const size_t M = size_t(N) * heads;
  const int c = blockIdx.x * kColumns + threadIdx.x;
  const size_t lo = size_t(blockIdx.y) * rows, hi = min(M, lo + rows);
  float sum = 0.0f;
  if (c < h.hd) {
    for (size_t m = lo + threadIdx.y; m < hi; m += kRowGroups) {
      const size_t r = m / heads;
      const int i = int(m % heads);
      const size_t at = r * h.W + col0 + size_t(i) * h.hd + c;
      sum += widen(dout[at]) * (widen(qkv[at]) * rstd[r * h.normed() + head0 + i]);
    }
  }
  part[threadIdx.y][threadIdx.x] = sum;
  __syncthreads();
  if (threadIdx.y == 0 && c < h.hd) {
    float total = 0.0f;
    for (int g = 0; g < kRowGroups; ++g) total += part[g][threadIdx.x];
    (is_q ? pq : pk)[size_t(blockIdx.y) * h.hd + c] = total;
  }
}

#undef TRIAD_WARP_STRIDE_LOOP

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
  qk_norm_forward_kernel<<<grid_for(head_rows, kWarpsPerBlock), kBlock, 0, s>>>(
      out, rstd, qkv, wq, wk, h, head_rows, eps);
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
  const dim3 grid((h.hd + kColumns - 1) / kColumns, std::max(slices_q, slices_k), 2);
  const dim3 block(kColumns, kRowGroups);
  qk_norm_backward_params_kernel<<<grid, block, 0, s>>>(pq, pk, dout, qkv, rstd, h, N, slices_q,
                                                        slices_k, (Mq + slices_q - 1) / slices_q,
                                                        (Mk + slices_k - 1) / slices_k);
  TRIAD_CUDA_CHECK_LAUNCH();
  column_sum_finish(s, dwq, pq, Mq, h.hd);
  column_sum_finish(s, dwk, pk, Mk, h.hd);
  // 2. The input gradient.
  const size_t head_rows = size_t(N) * size_t(NH + 2 * NKV);
  qk_norm_backward_dinp_kernel<<<grid_for(head_rows, kWarpsPerBlock), kBlock, 0, s>>>(
      dqkv, dout, qkv, wq, wk, rstd, h, head_rows, accumulate);
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
