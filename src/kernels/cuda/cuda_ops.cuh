// The CUDA backend's ops as free functions that enqueue work on a stream (one .cu file per
// concern next to this one); CudaBackend (cuda_backend.cu) forwards the Backend calls here.
// All pointers are device pointers; see backend.h for the semantics of each op. None of them
// synchronizes, except sum_squares (which returns a host value).
#pragma once

#include "cuda_common.cuh"

namespace triad::cuda {

// ---- encoder (cuda_encoder.cu) -------------------------------------------------------------
void encoder_forward(cudaStream_t s, float* out, const int32_t* tokens, const float* wte,
                     const float* wpe, int B, int T, int C);
void encoder_backward(cudaStream_t s, float* dwte, float* dwpe, const float* dout,
                      const int32_t* tokens, int B, int T, int C);

// ---- layernorm (cuda_layernorm.cu) ---------------------------------------------------------
void layernorm_forward(cudaStream_t s, float* out, float* mean, float* rstd, const float* inp,
                       const float* weight, const float* bias, int N, int C);
void layernorm_backward(cudaStream_t s, float* dinp, float* dweight, float* dbias,
                        const float* dout, const float* inp, const float* weight, const float* mean,
                        const float* rstd, int N, int C);

// ---- matmul (cuda_matmul.cu); the cuBLAS handle is bound to s ------------------------------
void matmul_forward(cudaStream_t s, cublasHandle_t h, float* out, const float* inp,
                    const float* weight, const float* bias, int N, int IC, int OC);
void matmul_backward(cudaStream_t s, cublasHandle_t h, float* dinp, float* dweight, float* dbias,
                     const float* dout, const float* inp, const float* weight, int N, int IC,
                     int OC);

// ---- attention (cuda_attention.cu) ---------------------------------------------------------
// workspace: at least attention_workspace_floats(B, T, C) floats, owned by the backend.
size_t attention_workspace_floats(int B, int T, int C);
void attention_forward(cudaStream_t s, cublasHandle_t h, float* workspace, float* out, float* att,
                       const float* qkv, int B, int T, int C, int NH);
void attention_backward(cudaStream_t s, cublasHandle_t h, float* workspace, float* dqkv,
                        float* scratch, const float* dout, const float* qkv, const float* att,
                        int B, int T, int C, int NH);

// ---- elementwise (cuda_elementwise.cu) -----------------------------------------------------
void gelu_forward(cudaStream_t s, float* out, const float* inp, size_t n);
void gelu_backward(cudaStream_t s, float* dinp, const float* inp, const float* dout, size_t n);
void add(cudaStream_t s, float* out, const float* a, const float* b, size_t n);
void accumulate(cudaStream_t s, float* dst, const float* src, size_t n);
void scale(cudaStream_t s, float* x, float factor, size_t n);

// ---- cross-entropy (cuda_crossentropy.cu) --------------------------------------------------
void crossentropy_forward_backward(cudaStream_t s, float* logits, float* losses, float* correct,
                                   const int32_t* targets, int N, int V, int Vp, float dloss_scale);
// Vocabulary-parallel cross-entropy (backend.h): row max, partial sums, backward.
void logits_row_max(cudaStream_t s, float* row_max, float* argmax, const float* logits, int N,
                    int V, int Vp);
void softmax_partial_sums(cudaStream_t s, float* sum_exp, float* target_logit, const float* logits,
                          const float* row_max, const int32_t* targets, int N, int V, int Vp);
void crossentropy_backward_partial(cudaStream_t s, float* logits, const float* row_max,
                                   const float* sum_exp, const int32_t* targets, int N, int V,
                                   int Vp, float dloss_scale);

// ---- reductions (cuda_reduce.cu) -----------------------------------------------------------
// dst[c] += Σ_n src[n, c] over the N rows of a row-major [N, C] matrix (deterministic).
void column_sum_accumulate(cudaStream_t s, float* dst, const float* src, int N, int C);
// Σ x² in double. partials: kSumSquaresPartials + 1 doubles of device memory. Synchronizes s.
inline constexpr int kSumSquaresPartials = 1024;
double sum_squares(cudaStream_t s, double* partials, const float* x, size_t n);

// ---- optimizers (cuda_optimizer.cu) --------------------------------------------------------
void adamw_update(cudaStream_t s, float* p, const float* g, float* m, float* v, size_t n, float lr,
                  float beta1, float beta2, float eps, float wd, float bc1, float bc2);
void sgd_update(cudaStream_t s, float* p, const float* g, float* buf, size_t n, float lr,
                float momentum, float wd);

}  // namespace triad::cuda
