// The CPU backend's kernels as free functions (fp32, OpenMP, OpenBLAS). CpuBackend
// (cpu_backend.cpp) forwards the Backend calls here; see backend.h for the semantics of each
// op. Internal to src/kernels/cpu.
//
// Determinism: every reduction here has a fixed order that does not depend on the number of
// OpenMP threads (columns are summed serially over rows, chunks are combined in index order),
// so results are bit-identical run to run. Matmuls are split over threads along rows or columns
// of the output, never along k, so they are reproducible for a fixed thread count.
#pragma once

#include <cstddef>
#include <cstdint>

#include "triad/core/bf16.h"
#include "triad/kernels/backend.h"

namespace triad::cpu {

// ---- BLAS (cpu_blas.cpp) ------------------------------------------------------------------
// Called when a CpuBackend is created: makes OpenBLAS single-threaded (all parallelism comes
// from OpenMP, see parallel_sgemm) and, the first time, replaces its kernel set when its cpuid
// detection fell back to generic kernels on a CPU it does not know.
void configure_blas();

// Puts OpenBLAS back to one thread if someone (e.g. openblas_set_num_threads in an app) raised
// it: every BLAS call here runs inside an OpenMP team, where a threaded OpenBLAS would
// oversubscribe the cores. Cheap (reads a global); called before each product.
void ensure_single_threaded_blas();

// Row-major C[M,N] = alpha·op(A)·op(B) + beta·C, split over the OpenMP threads along the
// larger of M and N; each thread runs single-threaded OpenBLAS on its block. k is never split,
// so every element is one serial dot product (deterministic for a given thread count).
void parallel_sgemm(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* A,
                    int lda, const float* B, int ldb, float beta, float* C, int ldc);

// ---- ops -----------------------------------------------------------------------------------
void encoder_forward(float* out, const int32_t* tokens, const float* wte, const float* wpe, int B,
                     int T, int C, const int32_t* positions);
void encoder_backward(float* dwte, float* dwpe, const float* dout, const int32_t* tokens, int B,
                      int T, int C, const int32_t* positions);

void layernorm_forward(float* out, float* mean, float* rstd, const float* inp, const float* weight,
                       const float* bias, int N, int C, float eps);
void layernorm_backward(float* dinp, float* dweight, float* dbias, const float* dout,
                        const float* inp, const float* weight, const float* mean, const float* rstd,
                        int N, int C);

void matmul_forward(float* out, const float* inp, const float* weight, const float* bias, int N,
                    int IC, int OC);
void matmul_backward(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,
                     const float* weight, int N, int IC, int OC);
void bias_backward(float* dbias, const float* dout, int N, int OC);

// key_begin: Backend::attention_forward's ([B,T], nullptr without a mask).
// scale, softcap: Backend's (0: 1/sqrt(hd); 0: no cap).
void attention_forward(float* out, float* att, const float* qkv, int B, int T, int C, int NH,
                       int NKV, const int32_t* key_begin = nullptr, QueryRows rows = {},
                       float scale = 0.0f, float softcap = 0.0f, AttentionDropout dropout = {},
                       const float* sinks = nullptr);
void attention_backward(float* dqkv, float* scratch, const float* dout, const float* qkv,
                        const float* att, int B, int T, int C, int NH, int NKV,
                        const int32_t* key_begin = nullptr, QueryRows rows = {}, float scale = 0.0f,
                        float softcap = 0.0f, AttentionDropout dropout = {},
                        float* dsinks = nullptr);
void attention_decode(float* out, const float* qkv, int B, int stride, int p, int n, int C, int NH,
                      int NKV, int window = 0, float scale = 0.0f, float softcap = 0.0f,
                      const float* sinks = nullptr);
// SwiGLU over rows [gate | up] (cpu_swiglu.cpp); fp32 and bf16 (computed in fp32). glu:
// Backend::swiglu_forward's shape.
void swiglu_forward(float* out, const float* pre, int N, int H, GluShape glu = {});
void swiglu_forward(bf16_t* out, const bf16_t* pre, int N, int H, GluShape glu = {});
void swiglu_backward(float* dpre, const float* pre, const float* dout, int N, int H,
                     bool accumulate, GluShape glu = {});
void swiglu_backward(bf16_t* dpre, const bf16_t* pre, const bf16_t* dout, int N, int H,
                     bool accumulate, GluShape glu = {});
// GeGLU likewise (cpu_swiglu.cpp): gelu(gate)·up, GELU's tanh approximation.
void geglu_forward(float* out, const float* pre, int N, int H);
void geglu_forward(bf16_t* out, const bf16_t* pre, int N, int H);
void geglu_backward(float* dpre, const float* pre, const float* dout, int N, int H,
                    bool accumulate);
void geglu_backward(bf16_t* dpre, const bf16_t* pre, const bf16_t* dout, int N, int H,
                    bool accumulate);
// Per-head RMSNorm of q and k (cpu_qk_norm.cpp; bf16 in cpu_bf16.cpp). The backward may run in
// place (dqkv == dout) when not accumulating.
void qk_norm_forward(float* out, float* rstd, const float* qkv, const float* wq, const float* wk,
                     int N, int C, int NH, int NKV, float eps);
void qk_norm_backward(float* dqkv, float* dwq, float* dwk, const float* dout, const float* qkv,
                      const float* wq, const float* wk, const float* rstd, int N, int C, int NH,
                      int NKV, bool accumulate);
void qk_norm_forward(bf16_t* out, float* rstd, const bf16_t* qkv, const bf16_t* wq,
                     const bf16_t* wk, int N, int C, int NH, int NKV, float eps);
void qk_norm_backward(bf16_t* dqkv, float* dwq, float* dwk, const bf16_t* dout, const bf16_t* qkv,
                      const bf16_t* wq, const bf16_t* wk, const float* rstd, int N, int C, int NH,
                      int NKV, bool accumulate);
// RMSNorm of q and k over all their heads (cpu_qk_norm.cpp; bf16 in cpu_bf16.cpp): backend.h's
// qk_full_norm ops. The backward may run in place when not accumulating.
void qk_full_norm_sums(float* sums, const float* qkv, const float* dout, const float* wq,
                       const float* wk, const float* rstd, int N, int C, int NH, int NKV);
void qk_full_norm_forward(float* out, float* rstd, const float* qkv, const float* sums,
                          const float* wq, const float* wk, int N, int C, int NH, int NKV, int Dq,
                          int Dk, float eps);
void qk_full_norm_backward(float* dqkv, float* dwq, float* dwk, const float* dout, const float* qkv,
                           const float* wq, const float* wk, const float* rstd, const float* dots,
                           int N, int C, int NH, int NKV, int Dq, int Dk, bool accumulate);
void qk_full_norm_sums(float* sums, const bf16_t* qkv, const bf16_t* dout, const bf16_t* wq,
                       const bf16_t* wk, const float* rstd, int N, int C, int NH, int NKV);
void qk_full_norm_forward(bf16_t* out, float* rstd, const bf16_t* qkv, const float* sums,
                          const bf16_t* wq, const bf16_t* wk, int N, int C, int NH, int NKV, int Dq,
                          int Dk, float eps);
void qk_full_norm_backward(bf16_t* dqkv, float* dwq, float* dwk, const bf16_t* dout,
                           const bf16_t* qkv, const bf16_t* wq, const bf16_t* wk, const float* rstd,
                           const float* dots, int N, int C, int NH, int NKV, int Dq, int Dk,
                           bool accumulate);
// Rotary position embedding in place (cpu_rope.cpp); fp32 and bf16 (computed in fp32).
void rope(float* qkv, const float* table, int N, int T, int pos0, int C, int NH, int NKV,
          bool inverse, const int32_t* positions, int rot = 0);
void rope(bf16_t* qkv, const float* table, int N, int T, int pos0, int C, int NH, int NKV,
          bool inverse, const int32_t* positions, int rot = 0);

void gelu_forward(float* out, const float* inp, size_t n);
void gelu_backward(float* dinp, const float* inp, const float* dout, size_t n);
// The pointwise MLP activations (backend.h Activation); the backward adds f'(x)·dout into dinp.
void activation_forward(Activation f, float* out, const float* inp, size_t n);
void activation_backward(Activation f, float* dinp, const float* inp, const float* dout, size_t n);
void add(float* out, const float* a, const float* b, size_t n);
void accumulate(float* dst, const float* src, size_t n);
void scale(float* x, float s, size_t n);
void ema_update(float* ema, const float* p, size_t n, float w);
double sum_squares(const float* x, size_t n);
void clamp(float* out, const float* inp, size_t n, float c);
void clamp_backward(float* d, const float* inp, size_t n, float c);
void dropout(float* x, const int32_t* keys, int rows, int C, uint32_t site, float p);

void crossentropy_forward_backward(float* logits, float* losses, float* correct,
                                   const int32_t* targets, int N, int V, int Vp, float dloss_scale,
                                   float z_loss, float* log_z, float softcap);
void scale_cap_logits(float* x, size_t n, float mult, float c);
// Vocabulary-parallel cross-entropy (backend.h): row max, partial sums, backward.
void logits_row_max(float* row_max, float* argmax, const float* logits, int N, int V, int Vp);
void softmax_partial_sums(float* sum_exp, float* target_logit, const float* logits,
                          const float* row_max, const int32_t* targets, int N, int V, int Vp);
void crossentropy_backward_partial(float* logits, const float* row_max, const float* sum_exp,
                                   const int32_t* targets, int N, int V, int Vp, float dloss_scale,
                                   float z_loss, float softcap);

void adamw_update(float* p, const float* g, float* m, float* v, size_t n, float lr, float beta1,
                  float beta2, float eps, float wd, float bc1, float bc2, bf16_t* copy,
                  float grad_scale);
void sgd_update(float* p, const float* g, float* buf, size_t n, float lr, float momentum, float wd,
                bf16_t* copy, float grad_scale);
void lion_update(float* p, const float* g, float* m, size_t n, float lr, float beta1, float beta2,
                 float wd, bf16_t* copy, float grad_scale);
void muon_momentum(float* buf, float* u, const float* g, size_t n, float mu, bool nesterov,
                   float grad_scale);
double sum_squares(const bf16_t* x, size_t n);
void muon_apply(float* p, const float* o, size_t n, float lr, float wd, float scale, bf16_t* copy);

// ---- mixed precision (cpu_bf16.cpp): widen, run the fp32 kernel, round once --------------
void zero_bf16(bf16_t* p, size_t n);
void to_bf16(bf16_t* dst, const float* src, size_t n);
void to_fp32(float* dst, const bf16_t* src, size_t n);
void encoder_forward(bf16_t* out, const int32_t* tokens, const bf16_t* wte, const bf16_t* wpe,
                     int B, int T, int C, const int32_t* positions);
void encoder_backward(float* dwte, float* dwpe, const bf16_t* dout, const int32_t* tokens, int B,
                      int T, int C, const int32_t* positions);
void layernorm_forward(bf16_t* out, float* mean, float* rstd, const bf16_t* inp,
                       const bf16_t* weight, const bf16_t* bias, int N, int C, float eps);
void layernorm_backward(bf16_t* dinp, float* dweight, float* dbias, const bf16_t* dout,
                        const bf16_t* inp, const bf16_t* weight, const float* mean,
                        const float* rstd, int N, int C);
void matmul_forward(bf16_t* out, const bf16_t* inp, const bf16_t* weight, const bf16_t* bias, int N,
                    int IC, int OC);
void matmul_backward(bf16_t* dinp, float* dweight, float* dbias, const bf16_t* dout,
                     const bf16_t* inp, const bf16_t* weight, int N, int IC, int OC);
void bias_backward(float* dbias, const bf16_t* dout, int N, int OC);
// FP8 linear layers (cpu_fp8.cpp): emulated exactly, as backend.h specifies them.
void absmax(float* out, const float* x, size_t n);
void absmax(float* out, const bf16_t* x, size_t n);
void matmul_forward_fp8(float* out, const float* inp, const float* weight, const float* bias, int N,
                        int IC, int OC, const float* amax);
void matmul_backward_fp8(float* dinp, float* dweight, float* dbias, const float* dout,
                         const float* inp, const float* weight, int N, int IC, int OC,
                         const float* amax);
void matmul_forward_fp8(bf16_t* out, const bf16_t* inp, const bf16_t* weight, const bf16_t* bias,
                        int N, int IC, int OC, const float* amax);
void matmul_backward_fp8(bf16_t* dinp, float* dweight, float* dbias, const bf16_t* dout,
                         const bf16_t* inp, const bf16_t* weight, int N, int IC, int OC,
                         const float* amax);
void attention_forward(bf16_t* out, float* lse, const bf16_t* qkv, int B, int T, int C, int NH,
                       int NKV, const int32_t* key_begin = nullptr, QueryRows rows = {},
                       float scale = 0.0f, float softcap = 0.0f, AttentionDropout dropout = {},
                       const bf16_t* sinks = nullptr);
void attention_backward(bf16_t* dqkv, const bf16_t* dout, const bf16_t* qkv, const bf16_t* out,
                        const float* lse, int B, int T, int C, int NH, int NKV,
                        const int32_t* key_begin = nullptr, QueryRows rows = {}, float scale = 0.0f,
                        float softcap = 0.0f, AttentionDropout dropout = {},
                        const bf16_t* sinks = nullptr, float* dsinks = nullptr);
void attention_decode(bf16_t* out, const bf16_t* qkv, int B, int stride, int p, int n, int C,
                      int NH, int NKV, int window = 0, float scale = 0.0f, float softcap = 0.0f,
                      const bf16_t* sinks = nullptr);
void gelu_forward(bf16_t* out, const bf16_t* inp, size_t n);
void gelu_backward(bf16_t* dinp, const bf16_t* inp, const bf16_t* dout, size_t n);
void activation_forward(Activation f, bf16_t* out, const bf16_t* inp, size_t n);
void activation_backward(Activation f, bf16_t* dinp, const bf16_t* inp, const bf16_t* dout,
                         size_t n);
void add(bf16_t* out, const bf16_t* a, const bf16_t* b, size_t n);
void accumulate(bf16_t* dst, const bf16_t* src, size_t n);
void clamp(bf16_t* out, const bf16_t* inp, size_t n, float c);
void clamp_backward(bf16_t* d, const bf16_t* inp, size_t n, float c);
void dropout(bf16_t* x, const int32_t* keys, int rows, int C, uint32_t site, float p);
void crossentropy_forward_backward(bf16_t* logits, float* losses, float* correct,
                                   const int32_t* targets, int N, int V, int Vp, float dloss_scale,
                                   float z_loss, float* log_z, float softcap);
void scale_cap_logits(bf16_t* x, size_t n, float mult, float c);
void logits_row_max(float* row_max, float* argmax, const bf16_t* logits, int N, int V, int Vp);
void softmax_partial_sums(float* sum_exp, float* target_logit, const bf16_t* logits,
                          const float* row_max, const int32_t* targets, int N, int V, int Vp);
void crossentropy_backward_partial(bf16_t* logits, const float* row_max, const float* sum_exp,
                                   const int32_t* targets, int N, int V, int Vp, float dloss_scale,
                                   float z_loss, float softcap);

// Mixture of experts (cpu_moe.cpp; backend.h's moe_* ops), fp32 and bf16.
void moe_route(float* probs, int32_t* expert, float* gate, const float* logits, int N, int E, int k,
               const MoeRouting& routing, float* lse);
void moe_route(float* probs, int32_t* expert, float* gate, const bf16_t* logits, int N, int E,
               int k, const MoeRouting& routing, float* lse);
void moe_dispatch(int32_t* slot, int* counts, float* prob_sums, const int32_t* expert,
                  const float* probs, int N, int E, int k);
void moe_gather(float* out, const float* x, const int32_t* slot, int N, int k, int C);
void moe_gather(bf16_t* out, const bf16_t* x, const int32_t* slot, int N, int k, int C);
void moe_combine(float* out, const float* y, const int32_t* slot, const float* gate, int N, int k,
                 int C);
void moe_combine(bf16_t* out, const bf16_t* y, const int32_t* slot, const float* gate, int N, int k,
                 int C);
void moe_combine_backward(float* dy, float* dgate, const float* dout, const float* y,
                          const int32_t* slot, const float* gate, int N, int k, int C);
void moe_combine_backward(bf16_t* dy, float* dgate, const bf16_t* dout, const bf16_t* y,
                          const int32_t* slot, const float* gate, int N, int k, int C);
void moe_route_backward(float* dlogits, const float* dgate, const float* probs,
                        const int32_t* expert, const float* aux, int N, int E, int k,
                        const MoeRouting& routing, const float* lse, float z_loss);
void moe_route_backward(bf16_t* dlogits, const float* dgate, const float* probs,
                        const int32_t* expert, const float* aux, int N, int E, int k,
                        const MoeRouting& routing, const float* lse, float z_loss);
void moe_shared_gate(float* s, const float* logits, int N);
void moe_shared_gate(float* s, const bf16_t* logits, int N);
void moe_shared_gate_backward(float* dlogits, const float* ds, const float* s, int N);
void moe_shared_gate_backward(bf16_t* dlogits, const float* ds, const float* s, int N);

}  // namespace triad::cpu
