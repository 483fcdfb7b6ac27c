// Causal self-attention, fp32 reference path:
//   S = scale · Q Kᵀ,  P = causal_softmax(S) (stored in att),  O = P V
// q, k and v are first copied out of qkv [B,T,3C] into contiguous [B,NH,T,hd] buffers (the
// backend's workspace), so that every product is one plain strided-batched sgemm over the
// B·NH heads with contiguous, non-interleaved matrices; O is copied back into out [B,T,C].
// The products are full T×T (no causal skipping): the softmax writes exact zeros above the
// diagonal, and before each row's first key under a document mask (key_begin, backend.h), so
// those entries add nothing.
//
// Backward, per head (dO = dout):
//   dV = Pᵀ dO  (P with its upper triangle zeroed: att is unspecified there by the interface)
//   dP = dO Vᵀ,  dS = P ⊙ (dP − rowsum(dP ⊙ P)),  dQ = scale · dS K,  dK = scale · dSᵀ Q
// and dq/dk/dv are added into dqkv. A soft cap c (backend.h) caps S = c·tanh(scale · Q Kᵀ / c) in
// the softmax kernel; the backward recomputes scale · Q Kᵀ into the `scores` scratch and
// multiplies dS by 1 − tanh² of it over c.
//
// Attention sinks (backend.h): the softmax kernel adds each head's exp(z_h) to its rows'
// denominators (and to lse); the backward's softmax kernel leaves each row's term of the sinks'
// gradient, −(1 − Σ_j P_j)·Σ_j P dP, which cuda_attention_sinks.cu sums per head.
//
// Attention dropout (AttentionDropMask): the forward's P·V reads P' = the causal copy of P times
// the mask's factors (in `dropped`, B·NH·T·T floats), att keeping P; the backward's causal copy
// for dV is P', and the softmax backward multiplies dP' by the same factors first.
//
// Grouped-query attention (NKV < NH): the backend's entry points at the end run the above on
// rows expanded to one key/value head per query head (cuda_grouped_heads.cu) and reduce the
// gradient back; NKV = NH calls it on qkv directly.
//
// Row-major ↔ column-major: a row-major [T, w] matrix with leading dimension w is a
// column-major w×T one. For row-major X[T,a] = A[T,k]·B[k,a] cuBLAS computes Xᵀ = Bᵀ·Aᵀ, i.e.
// sgemm(opB, opA, m=a, n=T, k, B, A, X); the four shapes used are spelled out below.
#include <cmath>

#include "attention_fp32_block.h"
#include "cuda_ops.cuh"
#include "device_thread.cuh"

namespace triad::cuda {
namespace {

// The kernels: the block programs of attention_fp32_block.h, launched with DeviceThread.
using attention_fp32_block::HeadLayout;
using attention_fp32_block::kSoftmaxThreads;

__global__ void split_qkv_kernel(float* q, float* k, float* v, const float* qkv, HeadLayout L,
                                 int C, size_t total) {
  DeviceThread x;
  attention_fp32_block::split_qkv(x, q, k, v, qkv, L, C, total, block_threads(), grid_threads());
}

__global__ void to_heads_kernel(float* dst, const float* src, HeadLayout L, int C, size_t total) {
  DeviceThread x;
  attention_fp32_block::to_heads(x, dst, src, L, C, total, block_threads(), grid_threads());
}

__global__ void from_heads_kernel(float* dst, const float* src, HeadLayout L, int C, size_t total) {
  DeviceThread x;
  attention_fp32_block::from_heads(x, dst, src, L, C, total, block_threads(), grid_threads());
}

__global__ void accumulate_dqkv_kernel(float* dqkv, const float* dq, const float* dk,
                                       const float* dv, HeadLayout L, int C, size_t total) {
  DeviceThread x;
  attention_fp32_block::accumulate_dqkv(x, dqkv, dq, dk, dv, L, C, total, block_threads(),
                                        grid_threads());
}

__global__ void __launch_bounds__(kSoftmaxThreads)
    causal_softmax_kernel(float* att, float* lse, int T, int NH, const int32_t* key_begin,
                          float cap, const float* sinks) {
  DeviceThread x;
  attention_fp32_block::causal_softmax(x, att, lse, T, NH, key_begin, cap, sinks);
}

__global__ void causal_mask_copy_kernel(float* dst, const float* att, int T, int NH,
                                        const int32_t* key_begin, size_t total,
                                        AttentionDropMask drop) {
  DeviceThread x;
  attention_fp32_block::causal_mask_copy(x, dst, att, T, NH, key_begin, total, block_threads(),
                                         grid_threads(), drop);
}

__global__ void __launch_bounds__(kSoftmaxThreads)
    causal_softmax_backward_kernel(float* ds, const float* att, int T, int NH,
                                   const int32_t* key_begin, const float* raw, float cap,
                                   AttentionDropMask drop, float* sink_rows) {
  DeviceThread x;
  attention_fp32_block::causal_softmax_backward(x, ds, att, T, NH, key_begin, raw, cap, drop,
                                                sink_rows);
}

// Strided-batched sgemm over `batch` heads (all matrices contiguous per head).
void gemm_batched(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                  float alpha, const float* A, int lda, long long sA, const float* B, int ldb,
                  long long sB, float beta, float* Cm, int ldc, long long sC, int batch) {
  TRIAD_CUBLAS_CHECK(cublasSgemmStridedBatched(h, ta, tb, m, n, k, &alpha, A, lda, sA, B, ldb, sB,
                                               &beta, Cm, ldc, sC, batch));
}

struct Views {
  float* q;
  float* k;
  float* v;
  float* o;  // forward: the output heads; backward: dO in head layout
  float* dq;
  float* dk;
  float* dv;
};

Views carve(float* workspace, int B, int T, int C) {
  const size_t n = size_t(B) * T * C;
  return Views{workspace,         workspace + n,     workspace + 2 * n, workspace + 3 * n,
               workspace + 4 * n, workspace + 5 * n, workspace + 6 * n};
}

}  // namespace

void check_attention_shape(int B, int T, int C, int NH) {
  TRIAD_CHECK(NH > 0 && C % NH == 0, "cuda attention: C = ", C, " is not a multiple of NH = ", NH);
  TRIAD_CHECK(B > 0 && T > 0, "cuda attention: empty batch (B = ", B, ", T = ", T, ")");
}

void check_attention_kv_heads(int NH, int NKV) {
  TRIAD_CHECK(NKV > 0 && NKV <= NH && NH % NKV == 0, "cuda attention: NKV = ", NKV,
              " key/value heads do not divide NH = ", NH, " query heads");
}

size_t attention_workspace_floats(int B, int T, int C) { return size_t(7) * B * T * C; }

float* capped_scores(AttentionScratch& scratch, cudaStream_t s, int B, int T, int NH,
                     float softcap) {
  if (softcap <= 0.0f) return nullptr;
  return scratch.scores.get_as<float>(size_t(B) * NH * T * T, s);
}

float* dropped_probabilities(AttentionScratch& scratch, cudaStream_t s, int B, int T, int NH,
                             const AttentionDropMask& drop) {
  if (!drop.on()) return nullptr;
  return scratch.dropped.get_as<float>(size_t(B) * NH * T * T, s);
}

void attention_forward(cudaStream_t s, cublasHandle_t h, float* workspace, float* out, float* att,
                       const float* qkv, int B, int T, int C, int NH, float* lse,
                       const int32_t* key_begin, float scale_or_0, float softcap,
                       AttentionDropMask drop, float* dropped, const float* sinks) {
  TRIAD_CHECK(!drop.on() || dropped != nullptr,
              "internal error: an attention dropout without its probabilities' scratch");
  check_attention_shape(B, T, C, NH);
  const int hd = C / NH;
  const int batch = B * NH;
  const float scale = attention_scale(scale_or_0, hd);
  const long long head = (long long)T * hd;  // stride between heads in q/k/v/o
  const long long tt = (long long)T * T;     // stride between heads in att
  const size_t total = size_t(B) * T * C;
  const HeadLayout L{NH, T, hd};
  const Views w = carve(workspace, B, T, C);

  split_qkv_kernel<<<grid_for(total), kBlock, 0, s>>>(w.q, w.k, w.v, qkv, L, C, total);
  TRIAD_CUDA_CHECK_LAUNCH();
  // S[T,T] = scale · Q[T,hd] · K[T,hd]ᵀ  ⇔  Sᵀ = K (hd×T col-major, transposed) · Qᵀ (hd×T)
  gemm_batched(h, CUBLAS_OP_T, CUBLAS_OP_N, T, T, hd, scale, w.k, hd, head, w.q, hd, head, 0.0f,
               att, T, tt, batch);
  causal_softmax_kernel<<<unsigned(size_t(batch) * T), kSoftmaxThreads,
                          attention_fp32_block::softmax_smem(), s>>>(att, lse, T, NH, key_begin,
                                                                     softcap, sinks);
  TRIAD_CUDA_CHECK_LAUNCH();
  const float* pv = att;
  if (drop.on()) {
    const size_t att_total = size_t(batch) * T * T;
    causal_mask_copy_kernel<<<grid_for(att_total), kBlock, 0, s>>>(dropped, att, T, NH, key_begin,
                                                                   att_total, drop);
    TRIAD_CUDA_CHECK_LAUNCH();
    pv = dropped;
  }
  // O[T,hd] = P[T,T] · V[T,hd]  ⇔  Oᵀ (hd×T) = Vᵀ (hd×T col-major) · Pᵀ (T×T col-major)
  gemm_batched(h, CUBLAS_OP_N, CUBLAS_OP_N, hd, T, T, 1.0f, w.v, hd, head, pv, T, tt, 0.0f, w.o, hd,
               head, batch);
  from_heads_kernel<<<grid_for(total), kBlock, 0, s>>>(out, w.o, L, C, total);
  TRIAD_CUDA_CHECK_LAUNCH();
}

void attention_backward(cudaStream_t s, cublasHandle_t h, float* workspace, float* dqkv,
                        float* scratch, const float* dout, const float* qkv, const float* att,
                        int B, int T, int C, int NH, const int32_t* key_begin, float scale_or_0,
                        float softcap, float* scores, AttentionDropMask drop, float* sink_rows) {
  check_attention_shape(B, T, C, NH);
  TRIAD_CHECK(softcap <= 0.0f || scores != nullptr,
              "internal error: a soft-capped attention backward without its scores' scratch");
  const int hd = C / NH;
  const int batch = B * NH;
  const float scale = attention_scale(scale_or_0, hd);
  const long long head = (long long)T * hd;
  const long long tt = (long long)T * T;
  const size_t total = size_t(B) * T * C;
  const size_t att_total = size_t(batch) * T * T;
  const HeadLayout L{NH, T, hd};
  const Views w = carve(workspace, B, T, C);

  split_qkv_kernel<<<grid_for(total), kBlock, 0, s>>>(w.q, w.k, w.v, qkv, L, C, total);
  TRIAD_CUDA_CHECK_LAUNCH();
  to_heads_kernel<<<grid_for(total), kBlock, 0, s>>>(w.o, dout, L, C, total);  // dO
  TRIAD_CUDA_CHECK_LAUNCH();

  // dV[T,hd] = Pᵀ[T,T] · dO[T,hd] with P lower-triangular (masked copy in scratch)
  //   ⇔ dVᵀ (hd×T) = dOᵀ (hd×T col-major) · P (Pᵀ col-major, transposed)
  causal_mask_copy_kernel<<<grid_for(att_total), kBlock, 0, s>>>(scratch, att, T, NH, key_begin,
                                                                 att_total, drop);
  TRIAD_CUDA_CHECK_LAUNCH();
  gemm_batched(h, CUBLAS_OP_N, CUBLAS_OP_T, hd, T, T, 1.0f, w.o, hd, head, scratch, T, tt, 0.0f,
               w.dv, hd, head, batch);

  // dP[T,T] = dO[T,hd] · V[T,hd]ᵀ  (same form as S = Q Kᵀ), into scratch
  gemm_batched(h, CUBLAS_OP_T, CUBLAS_OP_N, T, T, hd, 1.0f, w.v, hd, head, w.o, hd, head, 0.0f,
               scratch, T, tt, batch);
  if (softcap > 0.0f)  // the uncapped scores again, as the forward formed them
    gemm_batched(h, CUBLAS_OP_T, CUBLAS_OP_N, T, T, hd, scale, w.k, hd, head, w.q, hd, head, 0.0f,
                 scores, T, tt, batch);
  causal_softmax_backward_kernel<<<unsigned(size_t(batch) * T), kSoftmaxThreads,
                                   attention_fp32_block::softmax_smem(), s>>>(
      scratch, att, T, NH, key_begin, scores, softcap, drop, sink_rows);
  TRIAD_CUDA_CHECK_LAUNCH();

  // dQ[T,hd] = scale · dS[T,T] · K[T,hd]  (same form as O = P V)
  gemm_batched(h, CUBLAS_OP_N, CUBLAS_OP_N, hd, T, T, scale, w.k, hd, head, scratch, T, tt, 0.0f,
               w.dq, hd, head, batch);
  // dK[T,hd] = scale · dSᵀ[T,T] · Q[T,hd]  (same form as dV = Pᵀ dO)
  gemm_batched(h, CUBLAS_OP_N, CUBLAS_OP_T, hd, T, T, scale, w.q, hd, head, scratch, T, tt, 0.0f,
               w.dk, hd, head, batch);

  accumulate_dqkv_kernel<<<grid_for(total), kBlock, 0, s>>>(dqkv, w.dq, w.dk, w.dv, L, C, total);
  TRIAD_CUDA_CHECK_LAUNCH();
}

void attention_forward(cudaStream_t s, cublasHandle_t h, AttentionScratch& scratch, float* out,
                       float* att, const float* qkv, int B, int T, int C, int NH, int NKV,
                       const int32_t* key_begin, float scale, float softcap, AttentionDropMask drop,
                       const float* sinks) {
  check_attention_shape(B, T, C, NH);
  check_attention_kv_heads(NH, NKV);
  float* ws = scratch.fp32_workspace.get_as<float>(attention_workspace_floats(B, T, C), s);
  attention_forward(s, h, ws, out, att, mha_qkv(scratch, s, qkv, B * T, C, NH, NKV), B, T, C, NH,
                    nullptr, key_begin, scale, softcap, drop,
                    dropped_probabilities(scratch, s, B, T, NH, drop), sinks);
}

void attention_backward(cudaStream_t s, cublasHandle_t h, AttentionScratch& scratch, float* dqkv,
                        float* tt_scratch, const float* dout, const float* qkv, const float* att,
                        int B, int T, int C, int NH, int NKV, bool accumulate,
                        const int32_t* key_begin, float scale, float softcap,
                        AttentionDropMask drop, float* dsinks) {
  check_attention_shape(B, T, C, NH);
  check_attention_kv_heads(NH, NKV);
  float* ws = scratch.fp32_workspace.get_as<float>(attention_workspace_floats(B, T, C), s);
  float* scores = capped_scores(scratch, s, B, T, NH, softcap);
  // The sinks' gradient: each row's term from the softmax backward, summed per head after it.
  float* sink_rows = dsinks != nullptr ? sink_row_terms(scratch, s, B, NH, T) : nullptr;
  auto add_dsinks = [&] {
    if (dsinks != nullptr) reduce_sink_terms(s, dsinks, sink_rows, B, T, NH);
  };
  if (NKV == NH) {
    // The fp32 path is the reference: overwrite zeroes, then accumulates.
    if (!accumulate) {
      TRIAD_CUDA_CHECK(cudaMemsetAsync(dqkv, 0, size_t(B) * T * 3 * C * sizeof(float), s));
    }
    attention_backward(s, h, ws, dqkv, tt_scratch, dout, qkv, att, B, T, C, NH, key_begin, scale,
                       softcap, scores, drop, sink_rows);
    add_dsinks();
    return;
  }
  // The MHA backward adds into the expanded gradient: dq onto the old dq (so each dq element is
  // old + gradient, as above), dk and dv per query head onto zeros; then the kv heads' sums.
  const int N = B * T;
  const GroupedHeads<float> g = grouped_heads_scratch<float>(scratch, s, N, C, true);
  expand_kv_heads(s, g.qkv, qkv, N, C, NH, NKV);
  prepare_expanded_dqkv(s, g.dqkv, static_cast<const float*>(dqkv), N, C, NH, NKV, accumulate);
  attention_backward(s, h, ws, g.dqkv, tt_scratch, dout, g.qkv, att, B, T, C, NH, key_begin, scale,
                     softcap, scores, drop, sink_rows);
  reduce_kv_heads(s, dqkv, static_cast<const float*>(g.dqkv), N, C, NH, NKV, accumulate);
  add_dsinks();
}

}  // namespace triad::cuda
