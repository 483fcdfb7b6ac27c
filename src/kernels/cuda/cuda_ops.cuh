// The CUDA backend's ops as free functions that enqueue work on a stream (one .cu file per
// concern next to this one); CudaBackend (cuda_backend.cu) forwards the Backend calls here.
// All pointers are device pointers; see backend.h for the semantics of each op. None of them
// synchronizes, except sum_squares (which returns a host value) and the first use of a larger
// scratch size (DeviceScratch, cuda_common.cuh).
//
// Mixed precision: the ops templated on Elem exist for Elem = float (the fp32 path) and
// Elem = bf16 (backend.h's bf16 overloads), instantiated in their .cu files. Both load values as
// float, compute in fp32 and round each Elem output once; parameter gradients, LayerNorm
// statistics, losses and row statistics are float in both.
#pragma once

#include <cublasLt.h>

#include <map>
#include <vector>

#include "cuda_common.cuh"

namespace triad {
class Backend;
}

namespace triad::cuda {

// ---- conversions (cuda_elementwise.cu): dst = src, bf16 rounded to nearest even ------------
// Instantiated for <bf16, float> and <float, bf16>.
template <typename Dst, typename Src>
void convert(cudaStream_t s, Dst* dst, const Src* src, size_t n);

// ---- encoder (cuda_encoder.cu) -------------------------------------------------------------
template <typename Elem>
void encoder_forward(cudaStream_t s, Elem* out, const int32_t* tokens, const Elem* wte,
                     const Elem* wpe, int B, int T, int C, const int32_t* positions = nullptr);
template <typename Elem>
void encoder_backward(cudaStream_t s, float* dwte, float* dwpe, const Elem* dout,
                      const int32_t* tokens, int B, int T, int C,
                      const int32_t* positions = nullptr);

// ---- layernorm (cuda_layernorm.cu) ---------------------------------------------------------
template <typename Elem>
void layernorm_forward(cudaStream_t s, Elem* out, float* mean, float* rstd, const Elem* inp,
                       const Elem* weight, const Elem* bias, int N, int C, float eps);
// sum = a + b (rounded to Elem), out = LayerNorm(sum): backend.h residual_layernorm_forward.
template <typename Elem>
void residual_layernorm_forward(cudaStream_t s, Elem* sum, Elem* out, float* mean, float* rstd,
                                const Elem* a, const Elem* b, const Elem* weight, const Elem* bias,
                                int N, int C, float eps);
template <typename Elem>
void layernorm_backward(cudaStream_t s, DeviceScratch& scratch, Elem* dinp, float* dweight,
                        float* dbias, const Elem* dout, const Elem* inp, const Elem* weight,
                        const float* mean, const float* rstd, int N, int C);

// ---- matmul, fp32 (cuda_matmul.cu); the cuBLAS handle is bound to s ------------------------
void matmul_forward(cudaStream_t s, cublasHandle_t h, float* out, const float* inp,
                    const float* weight, const float* bias, int N, int IC, int OC);
void matmul_backward(cudaStream_t s, cublasHandle_t h, DeviceScratch& scratch, float* dinp,
                     float* dweight, float* dbias, const float* dout, const float* inp,
                     const float* weight, int N, int IC, int OC);

// ---- matmul, bf16, through cuBLASLt (cuda_matmul_lt.cu) ------------------------------------
// One column-major cuBLASLt product D = α·op(A)·op(B) + β·D (C and D the same buffer), fp32
// compute and scale; A and B bf16, D bf16 or fp32. Optional epilogue with a bias (type of D,
// length m) and an aux output (the GELU input, type of D, leading dimension aux_ld).
// FP8 products (cuda_fp8.cu) set a_type / b_type to CUDA_R_8F_E4M3 or CUDA_R_8F_E5M2 and
// a_scale / b_scale to device floats the fp32 product is multiplied by (cuBLASLt's A/B scale
// pointers: the dequantization factors 1/s); they run with full fp32 accumulation (FAST_ACCUM
// off) and never fall back to a product that is not FP8.
struct LtGemm {
  cublasOperation_t trans_a = CUBLAS_OP_N;
  cublasOperation_t trans_b = CUBLAS_OP_N;
  int m = 0, n = 0, k = 0;
  const void* a = nullptr;
  int lda = 0;
  const void* b = nullptr;
  int ldb = 0;
  cudaDataType_t a_type = CUDA_R_16BF;
  cudaDataType_t b_type = CUDA_R_16BF;
  const float* a_scale = nullptr;
  const float* b_scale = nullptr;
  void* d = nullptr;
  cudaDataType_t d_type = CUDA_R_16BF;
  int ldd = 0;
  float alpha = 1.0f;
  float beta = 0.0f;
  cublasLtEpilogue_t epilogue = CUBLASLT_EPILOGUE_DEFAULT;
  // The bias read by the BIAS epilogues, or the bias gradient BGRADB writes (overwriting); of
  // D's element type, cuBLASLt's default.
  const void* bias = nullptr;
  void* aux = nullptr;
  int64_t aux_ld = 0;
};

// The cuBLASLt state of one backend: the handle, a workspace allocated once, and the heuristic's
// algorithm per problem (queried once per distinct shape / type / epilogue / pointer alignment,
// then reused, so that a training step allocates nothing and asks no heuristic).
class LtMatmul {
 public:
  // blas: the backend's cuBLAS handle (bound to its stream), for the products cuBLASLt declines.
  explicit LtMatmul(cublasHandle_t blas);
  ~LtMatmul();
  LtMatmul(const LtMatmul&) = delete;
  LtMatmul& operator=(const LtMatmul&) = delete;

  // Enqueues g on s. When cuBLASLt offers no algorithm for it: with may_decline, returns false
  // having done nothing; otherwise (epilogue DEFAULT or BIAS only) runs it through cublasGemmEx
  // instead (bf16 inputs, fp32 compute; a bias is added to the fp32 product before the one
  // rounding), with a warning on stderr the first time for each problem, and returns true.
  // An FP8 product has no such fallback: with a declined BIAS epilogue it runs as the FP8
  // product into fp32 scratch, then one kernel adds the bias and rounds; a product cuBLASLt has
  // no FP8 algorithm for at all throws an Error naming the problem.
  bool run(cudaStream_t s, const LtGemm& g, bool may_decline = false);

  static constexpr size_t kWorkspaceBytes = size_t(32) << 20;
  // Problems whose row count changes from call to call (a mixture of experts' products over
  // each expert's rows) would grow the cache without bound: past this many entries it starts
  // over. And the stderr lines about declined problems stop after kMaxReported.
  static constexpr size_t kMaxCached = 4096;
  static constexpr int kMaxReported = 16;

 private:
  struct Choice {
    bool found = false;
    cublasLtMatmulAlgo_t algo{};
  };
  // A problem without a cuBLASLt algorithm (may_decline false): see run.
  void run_fallback(cudaStream_t s, const LtGemm& g);

  cublasHandle_t blas_ = nullptr;
  cublasLtHandle_t handle_ = nullptr;
  void* workspace_ = nullptr;
  std::map<std::vector<int64_t>, Choice> cache_;
  int reported_ = 0;       // declines written to stderr
  DeviceScratch product_;  // the fp32 product of a fallback with a bias
};

void matmul_forward(cudaStream_t s, LtMatmul& lt, bf16* out, const bf16* inp, const bf16* weight,
                    const bf16* bias, int N, int IC, int OC);
void matmul_backward(cudaStream_t s, LtMatmul& lt, DeviceScratch& scratch, bf16* dinp,
                     float* dweight, float* dbias, const bf16* dout, const bf16* inp,
                     const bf16* weight, int N, int IC, int OC,
                     bool accumulate = true);  // false: dinp overwritten (β = 0)
void matmul_gelu_forward(cudaStream_t s, LtMatmul& lt, bf16* pre, bf16* out, const bf16* inp,
                         const bf16* weight, const bf16* bias, int N, int IC, int OC);
// Backend::matmul_backward_gelu with dpre overwritten: the input-gradient product with
// cuBLASLt's DGELU epilogue (gelu' of the saved pre-activation applied as the product is
// written). False, having done nothing, where that does not apply or cuBLASLt declines.
bool matmul_backward_dgelu(cudaStream_t s, LtMatmul& lt, DeviceScratch& scratch, bf16* dpre,
                           float* dweight, float* dbias, const bf16* dout, const bf16* act,
                           const bf16* pre, const bf16* weight, int N, int IC, int OC);

// ---- FP8 linear layers (cuda_fp8.cu) ---------------------------------------------------------
// backend.h's absmax, matmul_forward_fp8 and matmul_backward_fp8 (amax: three device floats,
// inp, weight, dout). The quantized operands live in fp8_scratch (grown on demand); the backward's
// bias gradient is column_sum_accumulate's (its partials in scratch). accumulate false: dinp
// overwritten. N, IC and OC must be multiples of 16.
// out[0] = max |x| over the n values (+inf if any is NaN); order-free, so deterministic.
void absmax(cudaStream_t s, float* out, const bf16* x, size_t n);
// backend.h's absmax_rows: begin and end on the host.
void absmax_rows(cudaStream_t s, float* out, size_t out_stride, const bf16* x, size_t width,
                 const int64_t* begin, const int64_t* end, int segments);
void matmul_forward_fp8(cudaStream_t s, LtMatmul& lt, DeviceScratch& fp8_scratch, bf16* out,
                        const bf16* inp, const bf16* weight, const bf16* bias, int N, int IC,
                        int OC, const float* amax);
void matmul_backward_fp8(cudaStream_t s, LtMatmul& lt, DeviceScratch& fp8_scratch,
                         DeviceScratch& scratch, bf16* dinp, float* dweight, float* dbias,
                         const bf16* dout, const bf16* inp, const bf16* weight, int N, int IC,
                         int OC, const float* amax, bool accumulate);

// ---- attention: layouts ---------------------------------------------------------------------
// backend.h's: NH query heads, NKV key/value heads (NKV divides NH), hd = C/NH, qkv rows
// W = C + 2·NKV·hd wide (q | k | v); query head h uses key/value head h % NKV. The training ops
// below are written for NKV = NH (rows of 3C, "MHA"); with NKV < NH their backend entry points
// expand the compact rows into MHA rows first (cuda_grouped_heads.cu). Decoding and rope index
// the compact rows natively.

// The attention ops' shape checks (cuda_attention.cu), for the fp32 and bf16 entry points: C a
// multiple of NH, a batch not empty; NKV key/value heads dividing NH.
void check_attention_shape(int B, int T, int C, int NH);
void check_attention_kv_heads(int NH, int NKV);

// The attention ops' scratch memory, owned by the backend.
struct AttentionScratch {
  DeviceScratch fp32_workspace;  // attention_workspace_floats: the fp32 attention's head copies
  DeviceScratch flash;           // flash_attention_workspace_floats
  DeviceScratch widened;         // the bf16 fallback's fp32 qkv, out, dout, dqkv and T×T matrices
  DeviceScratch grouped;         // NKV < NH: the expanded MHA qkv and dqkv (grouped_heads_scratch)
  DeviceScratch scores;          // a soft cap's backward: the uncapped scores [B,NH,T,T] (fp32)
  DeviceScratch dropped;         // an attention dropout's forward: P' [B,NH,T,T] (fp32)
  DeviceScratch sinks;           // attention sinks: the rows' gradient terms [B,NH,T] (fp32)
  DeviceScratch wide_sinks;      // attention sinks: the bf16 fallback's fp32 logits [NH]
};

// ---- attention, fp32 (cuda_attention.cu) ---------------------------------------------------
// The MHA op (qkv [B,T,3C]); also the bf16 fallback's. workspace: at least
// attention_workspace_floats(B, T, C) floats, owned by the backend. lse (may be nullptr):
// [B,NH,T] log-sum-exp of the scaled scores of each query row. Backward accumulates (+=).
// key_begin: the document mask of backend.h (device memory), or nullptr. scale, softcap:
// backend.h's (0: 1/sqrt(hd); 0: no cap), here and below. With a cap the backward needs
// `scores`, B·NH·T·T floats of scratch (the uncapped scores, recomputed). drop: the attention
// dropout (backend.h's AttentionDropout, resolved); the forward then needs `dropped`, B·NH·T·T
// floats of scratch (the dropped probabilities its P·V product reads).
// sinks (may be null): backend.h's attention sinks [NH] (fp32, device), in the softmax and in
// lse; sink_rows (may be null): the backward's per-row terms of their gradient [B,NH,T]
// (attention_fp32_block.h's causal_softmax_backward), for reduce_sink_terms.
size_t attention_workspace_floats(int B, int T, int C);
void attention_forward(cudaStream_t s, cublasHandle_t h, float* workspace, float* out, float* att,
                       const float* qkv, int B, int T, int C, int NH, float* lse = nullptr,
                       const int32_t* key_begin = nullptr, float scale = 0.0f, float softcap = 0.0f,
                       AttentionDropMask drop = {}, float* dropped = nullptr,
                       const float* sinks = nullptr);
void attention_backward(cudaStream_t s, cublasHandle_t h, float* workspace, float* dqkv,
                        float* scratch, const float* dout, const float* qkv, const float* att,
                        int B, int T, int C, int NH, const int32_t* key_begin = nullptr,
                        float scale = 0.0f, float softcap = 0.0f, float* scores = nullptr,
                        AttentionDropMask drop = {}, float* sink_rows = nullptr);
// Backend::attention_forward / attention_backward (fp32), any NKV: the MHA op above, on the
// expanded rows where NKV < NH. accumulate false: dqkv overwritten.
void attention_forward(cudaStream_t s, cublasHandle_t h, AttentionScratch& scratch, float* out,
                       float* att, const float* qkv, int B, int T, int C, int NH, int NKV,
                       const int32_t* key_begin = nullptr, float scale = 0.0f, float softcap = 0.0f,
                       AttentionDropMask drop = {}, const float* sinks = nullptr);
void attention_backward(cudaStream_t s, cublasHandle_t h, AttentionScratch& scratch, float* dqkv,
                        float* tt_scratch, const float* dout, const float* qkv, const float* att,
                        int B, int T, int C, int NH, int NKV, bool accumulate,
                        const int32_t* key_begin = nullptr, float scale = 0.0f,
                        float softcap = 0.0f, AttentionDropMask drop = {}, float* dsinks = nullptr);
// The uncapped scores' scratch a capped backward needs (null without a cap).
float* capped_scores(AttentionScratch& scratch, cudaStream_t s, int B, int T, int NH,
                     float softcap);
// The dropped probabilities' scratch a forward under attention dropout needs (null without).
float* dropped_probabilities(AttentionScratch& scratch, cudaStream_t s, int B, int T, int NH,
                             const AttentionDropMask& drop);

// ---- attention, bf16 (cuda_attention_bf16.cu) ----------------------------------------------
// The fused flash kernels (flash_attention.cuh) where they apply (head dim 64, 128 or 192, aligned
// pointers); otherwise the fp32 path on widened copies; with NKV < NH either on the expanded
// rows.
// rows: a query range (QueryRows of backend.h), on the flash kernels only. An attention dropout
// (drop) runs the fp32 path: the flash kernels do not drop yet.
// sinks, dsinks (may be null): backend.h's attention sinks and their gradient.
void attention_forward(cudaStream_t s, cublasHandle_t h, AttentionScratch& scratch, bf16* out,
                       float* lse, const bf16* qkv, int B, int T, int C, int NH, int NKV,
                       const int32_t* key_begin = nullptr, QueryRows rows = {}, float scale = 0.0f,
                       float softcap = 0.0f, AttentionDropMask drop = {},
                       const bf16* sinks = nullptr);
void attention_backward(cudaStream_t s, cublasHandle_t h, AttentionScratch& scratch, bf16* dqkv,
                        const bf16* dout, const bf16* qkv, const bf16* out, const float* lse, int B,
                        int T, int C, int NH, int NKV,
                        bool accumulate = true,  // false: dqkv overwritten
                        const int32_t* key_begin = nullptr, QueryRows rows = {}, float scale = 0.0f,
                        float softcap = 0.0f, AttentionDropMask drop = {},
                        const bf16* sinks = nullptr, float* dsinks = nullptr);

// ---- attention sinks (cuda_attention_sinks.cu, attention_sinks_block.h) --------------------
// n query rows per sequence: out and dout [B, n, C], lse [B, NH, n]. apply_attention_sinks turns
// the attention without sinks (out, lse) into the one with them; attention_sinks_backward adds
// the sinks' gradient to dsinks [NH] from the forward's (out', lse') and dout.
void apply_attention_sinks(cudaStream_t s, bf16* out, float* lse, const bf16* sinks, int B, int n,
                           int C, int NH);
void attention_sinks_backward(cudaStream_t s, AttentionScratch& scratch, float* dsinks,
                              const bf16* out, const bf16* dout, const float* lse,
                              const bf16* sinks, int B, int n, int C, int NH);
// The rows' gradient terms' scratch [B, NH, n], and their sum per head onto dsinks [NH].
float* sink_row_terms(AttentionScratch& scratch, cudaStream_t s, int B, int NH, int n);
void reduce_sink_terms(cudaStream_t s, float* dsinks, const float* terms, int B, int n, int NH);

// ---- grouped-query attention through the MHA ops (cuda_grouped_heads.cu) -------------------
// N rows; compact rows W = C + 2·NKV·hd wide, expanded (MHA) rows 3C wide.
// The expanded qkv and, for a backward, dqkv [N, 3C] of Elem in scratch.grouped (256-byte
// aligned; dqkv nullptr for a forward).
template <typename Elem>
struct GroupedHeads {
  Elem* qkv;
  Elem* dqkv;
};
template <typename Elem>
GroupedHeads<Elem> grouped_heads_scratch(AttentionScratch& scratch, cudaStream_t s, int N, int C,
                                         bool backward);
// mha = qkv with the kv heads repeated: q columns copied, expanded k (v) head h = compact k (v)
// head h % NKV.
template <typename Elem>
void expand_kv_heads(cudaStream_t s, Elem* mha, const Elem* qkv, int N, int C, int NH, int NKV);
// The q|k|v rows the MHA kernels read: qkv itself when NKV == NH, else its expansion in the
// scratch's forward buffer.
template <typename Elem>
const Elem* mha_qkv(AttentionScratch& scratch, cudaStream_t s, const Elem* qkv, int N, int C,
                    int NH, int NKV);
// The expanded gradient an accumulating MHA backward starts from: its q columns dqkv's (with
// accumulate) or zero, its k and v columns zero.
template <typename Elem>
void prepare_expanded_dqkv(cudaStream_t s, Elem* dmha, const Elem* dqkv, int N, int C, int NH,
                           int NKV, bool accumulate);
// dqkv from the expanded gradient dmha: q columns copied (prepare_expanded_dqkv put any old
// value there); k (v) of kv head g = Σ dmha's k (v) heads g, g + NKV, g + 2NKV, ... in that
// order, in fp32, plus the old value with accumulate, rounded to Elem once.
template <typename Elem>
void reduce_kv_heads(cudaStream_t s, Elem* dqkv, const Elem* dmha, int N, int C, int NH, int NKV,
                     bool accumulate);

// ---- attention against a cache of keys and values (cuda_attention_decode.cu) ---------------
// Backend::attention_decode: out [B, n, C], sequence b's rows at qkv + b·stride rows of W;
// window > 0: each row's last `window` keys only.
void attention_decode(cudaStream_t s, float* out, const float* qkv, int B, int stride, int p, int n,
                      int C, int NH, int NKV, int window = 0, float scale = 0.0f,
                      float softcap = 0.0f, const float* sinks = nullptr);
void attention_decode(cudaStream_t s, bf16* out, const bf16* qkv, int B, int stride, int p, int n,
                      int C, int NH, int NKV, int window = 0, float scale = 0.0f,
                      float softcap = 0.0f, const bf16* sinks = nullptr);

// ---- SwiGLU (cuda_swiglu.cu): backend.h swiglu_forward / swiglu_backward ------------------
template <typename Elem>
void swiglu_forward(cudaStream_t s, Elem* out, const Elem* pre, int N, int H, GluShape glu = {});
template <typename Elem>
void swiglu_backward(cudaStream_t s, Elem* dpre, const Elem* pre, const Elem* dout, int N, int H,
                     bool accumulate, GluShape glu = {});
// GeGLU (cuda_swiglu.cu too): backend.h geglu_forward / geglu_backward.
template <typename Elem>
void geglu_forward(cudaStream_t s, Elem* out, const Elem* pre, int N, int H);
template <typename Elem>
void geglu_backward(cudaStream_t s, Elem* dpre, const Elem* pre, const Elem* dout, int N, int H,
                    bool accumulate);

// ---- mixture of experts (cuda_moe.cu): backend.h moe_* -------------------------------------
// Elem: the activations' type (logits, x, y and their gradients); probabilities, gates and their
// gradients are float. moe_dispatch's counts and prob_sums (may be null) are host memory: it
// keeps its device counts and sums in scratch (E ints, E floats), the column sums' partials in
// partials (column_sum_accumulate), and synchronizes s. moe_combine_backward's gate may be null
// (weights 1, as moe_combine's).
template <typename Elem>
void moe_route(cudaStream_t s, float* probs, int32_t* expert, float* gate, const Elem* logits,
               int N, int E, int k, const MoeRouting& routing, float* lse);
void moe_dispatch(cudaStream_t s, DeviceScratch& scratch, DeviceScratch& partials, int32_t* slot,
                  int* counts, float* prob_sums, const int32_t* expert, const float* probs, int N,
                  int E, int k);
template <typename Elem>
void moe_gather(cudaStream_t s, Elem* out, const Elem* x, const int32_t* slot, int N, int k, int C);
template <typename Elem>
void moe_combine(cudaStream_t s, Elem* out, const Elem* y, const int32_t* slot, const float* gate,
                 int N, int k, int C);
template <typename Elem>
void moe_combine_backward(cudaStream_t s, Elem* dy, float* dgate, const Elem* dout, const Elem* y,
                          const int32_t* slot, const float* gate, int N, int k, int C);
template <typename Elem>
void moe_route_backward(cudaStream_t s, Elem* dlogits, const float* dgate, const float* probs,
                        const int32_t* expert, const float* aux, int N, int E, int k,
                        const MoeRouting& routing, const float* lse, float z_loss);
template <typename Elem>
void moe_shared_gate(cudaStream_t st, float* s, const Elem* logits, int N);
template <typename Elem>
void moe_shared_gate_backward(cudaStream_t st, Elem* dlogits, const float* ds, const float* s,
                              int N);

// ---- rotary position embedding (cuda_rope.cu): backend.h rope, in place -------------------
template <typename Elem>
void rope(cudaStream_t s, Elem* qkv, const float* table, int N, int T, int pos0, int C, int NH,
          int NKV, bool inverse, const int32_t* positions = nullptr, int rot = 0);

// ---- per-head RMSNorm of q and k (cuda_qk_norm.cu): backend.h qk_norm_forward / backward ----
// The weight gradients' per-slice partials live in scratch (the column sums' scratch);
// accumulate false: dqkv overwritten (it may then be dout).
template <typename Elem>
void qk_norm_forward(cudaStream_t s, Elem* out, float* rstd, const Elem* qkv, const Elem* wq,
                     const Elem* wk, int N, int C, int NH, int NKV, float eps);
template <typename Elem>
void qk_norm_backward(cudaStream_t s, DeviceScratch& scratch, Elem* dqkv, float* dwq, float* dwk,
                      const Elem* dout, const Elem* qkv, const Elem* wq, const Elem* wk,
                      const float* rstd, int N, int C, int NH, int NKV, bool accumulate);

// ---- RMSNorm of q and k over all heads (cuda_qk_full_norm.cu): backend.h qk_full_norm ops ----
// dout null: the forward's Σx². The weight gradients' partials live in scratch; accumulate false:
// dqkv overwritten (it may then be dout).
template <typename Elem>
void qk_full_norm_sums(cudaStream_t s, float* sums, const Elem* qkv, const Elem* dout,
                       const Elem* wq, const Elem* wk, const float* rstd, int N, int C, int NH,
                       int NKV);
template <typename Elem>
void qk_full_norm_forward(cudaStream_t s, Elem* out, float* rstd, const Elem* qkv,
                          const float* sums, const Elem* wq, const Elem* wk, int N, int C, int NH,
                          int NKV, int Dq, int Dk, float eps);
template <typename Elem>
void qk_full_norm_backward(cudaStream_t s, DeviceScratch& scratch, Elem* dqkv, float* dwq,
                           float* dwk, const Elem* dout, const Elem* qkv, const Elem* wq,
                           const Elem* wk, const float* rstd, const float* dots, int N, int C,
                           int NH, int NKV, int Dq, int Dk, bool accumulate);

// ---- elementwise (cuda_elementwise.cu) -----------------------------------------------------
template <typename Elem>
void gelu_forward(cudaStream_t s, Elem* out, const Elem* inp, size_t n);
template <typename Elem>
void gelu_backward(cudaStream_t s, Elem* dinp, const Elem* inp, const Elem* dout, size_t n,
                   bool accumulate = true);  // false: dinp overwritten
template <typename Elem>
void activation_forward(cudaStream_t s, Activation f, Elem* out, const Elem* inp, size_t n);
template <typename Elem>
void activation_backward(cudaStream_t s, Activation f, Elem* dinp, const Elem* inp,
                         const Elem* dout, size_t n, bool accumulate = true);  // false: overwrite
template <typename Elem>
void add(cudaStream_t s, Elem* out, const Elem* a, const Elem* b, size_t n);
template <typename Elem>
void scale_cap_logits(cudaStream_t s, Elem* x, size_t n, float mult,
                      float c);  // x = c·tanh(mult·x/c), or mult·x (c = 0)
template <typename Elem>
void accumulate(cudaStream_t s, Elem* dst, const Elem* src, size_t n);
template <typename Elem>
void clamp(cudaStream_t s, Elem* out, const Elem* inp, size_t n, float c);  // to [−c, c]
template <typename Elem>
void clamp_backward(cudaStream_t s, Elem* d, const Elem* inp, size_t n, float c);  // d = 0 if cut
// Hidden dropout in place (kernels/dropout_mask.h; keys: two int32 words per row).
template <typename Elem>
void dropout(cudaStream_t s, Elem* x, const int32_t* keys, int rows, int C, uint32_t site, float p);
void scale(cudaStream_t s, float* x, float factor, size_t n);
void ema_update(cudaStream_t s, float* ema, const float* p, size_t n, float w);

// ---- cross-entropy (cuda_crossentropy.cu) --------------------------------------------------
template <typename Elem>
void crossentropy_forward_backward(cudaStream_t s, Elem* logits, float* losses, float* correct,
                                   const int32_t* targets, int N, int V, int Vp, float dloss_scale,
                                   float z_loss, float* log_z, float softcap);
// Vocabulary-parallel cross-entropy (backend.h): row max, partial sums, backward.
template <typename Elem>
void logits_row_max(cudaStream_t s, float* row_max, float* argmax, const Elem* logits, int N, int V,
                    int Vp);
template <typename Elem>
void softmax_partial_sums(cudaStream_t s, float* sum_exp, float* target_logit, const Elem* logits,
                          const float* row_max, const int32_t* targets, int N, int V, int Vp);
template <typename Elem>
void crossentropy_backward_partial(cudaStream_t s, Elem* logits, const float* row_max,
                                   const float* sum_exp, const int32_t* targets, int N, int V,
                                   int Vp, float dloss_scale, float z_loss, float softcap);

// ---- reductions (cuda_reduce.cu) -----------------------------------------------------------
// dst[c] += Σ_n src[n, c] over the N rows of a row-major [N, C] matrix (deterministic, fp32):
// per-slice partial sums in scratch (column_sum_partials_floats(N, C) floats), then their sum.
template <typename Elem>
void column_sum_accumulate(cudaStream_t s, DeviceScratch& scratch, float* dst, const Elem* src,
                           int N, int C);
// The pieces, for kernels that form their own per-slice partials (LayerNorm's parameter
// gradients): how many floats the partials of [N, C] take, the number of row slices and
// rows per slice, and the second pass dst[c] += Σ_slices partials[slice][c].
size_t column_sum_partials_floats(int N, int C);
// The first pass of column_sum_accumulate and of the LayerNorm parameter gradients with 16-byte
// loads (column_sums_block.h): pb[y][c] = Σ dout over row slice y and, with inp, pw[y][c] =
// Σ dout·(inp − mean)·rstd. False, having done nothing, unless C % 8 == 0 and the rows are
// 16-byte aligned.
bool column_partials_vectorized(cudaStream_t s, float* pw, float* pb, const bf16* dout,
                                const bf16* inp, const float* mean, const float* rstd, int N,
                                int C);
int column_sum_slices(int N);
void column_sum_finish(cudaStream_t s, float* dst, const float* partials, int N, int C);
// Σ x² in double. partials: kSumSquaresPartials + 1 doubles of device memory. Synchronizes s.
inline constexpr int kSumSquaresPartials = 1024;
template <class T>  // float, bf16
double sum_squares(cudaStream_t s, double* partials, const T* x, size_t n);

// ---- optimizers (cuda_optimizer.cu) --------------------------------------------------------
// `copy` (may be null) receives the updated weights rounded to bf16 in the same pass.
void adamw_update(cudaStream_t s, float* p, const float* g, float* m, float* v, size_t n, float lr,
                  float beta1, float beta2, float eps, float wd, float bc1, float bc2, bf16* copy,
                  float grad_scale);
void sgd_update(cudaStream_t s, float* p, const float* g, float* buf, size_t n, float lr,
                float momentum, float wd, bf16* copy, float grad_scale);
void lion_update(cudaStream_t s, float* p, const float* g, float* m, size_t n, float lr,
                 float beta1, float beta2, float wd, bf16* copy, float grad_scale);
void muon_momentum(cudaStream_t s, float* buf, float* u, const float* g, size_t n, float mu,
                   bool nesterov, float grad_scale);
void muon_apply(cudaStream_t s, float* p, const float* o, size_t n, float lr, float wd, float scale,
                bf16* copy);
// Backend::adamw_update_runs in one kernel: each element finds its run by binary search in a
// device copy of the run table (runs_device), uploaded again only when the table changes
// (runs_host holds what is there).
void adamw_update_runs(cudaStream_t s, std::vector<Backend::UpdateRun>& runs_host,
                       DeviceScratch& runs_device, float* p, const float* g, float* m, float* v,
                       const Backend::UpdateRun* runs, size_t nruns, float lr, float beta1,
                       float beta2, float eps, float bc1, float bc2, bf16* copy, float grad_scale);

// The stream a CUDA backend runs its ops on (cuda_backend.cu); throws for another backend.
cudaStream_t backend_stream(Backend& be);

// Whether p is device memory (cuda_staged_comm.cu); host and unknown pointers are not.
bool is_device_pointer(const void* p);

}  // namespace triad::cuda
