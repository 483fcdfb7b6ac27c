// The CPU backend's kernels as free functions (fp32, OpenMP, OpenBLAS). CpuBackend
// (cpu_backend.cpp) forwards the Backend calls here; see backend.h for the semantics of each
// op. Internal to src/kernels/cpu.
//
// Determinism: every reduction here has a fixed order that does not depend on the number of
// OpenMP threads (columns are summed serially over rows, chunks are combined in index order),
// so results are bit-identical run to run. OpenBLAS sgemm never splits the k dimension over
// threads, so matmuls are reproducible for a fixed OpenBLAS thread count.
#pragma once

#include <cstddef>
#include <cstdint>

namespace triad::cpu {

// ---- BLAS setup (cpu_blas.cpp) ------------------------------------------------------------
// Called once when a CpuBackend is created: replaces OpenBLAS's kernel set when its cpuid
// detection fell back to generic kernels on a CPU it does not know (see cpu_blas.cpp).
void configure_blas();

// While alive, OpenBLAS runs single-threaded, so that sgemm can be called from inside an
// OpenMP parallel region (one small gemm per thread) without oversubscribing the cores.
class SingleThreadedBlas {
 public:
  SingleThreadedBlas();
  ~SingleThreadedBlas();
  SingleThreadedBlas(const SingleThreadedBlas&) = delete;
  SingleThreadedBlas& operator=(const SingleThreadedBlas&) = delete;

 private:
  int saved_threads_;
};

// ---- ops -----------------------------------------------------------------------------------
void encoder_forward(float* out, const int32_t* tokens, const float* wte, const float* wpe, int B,
                     int T, int C);
void encoder_backward(float* dwte, float* dwpe, const float* dout, const int32_t* tokens, int B,
                      int T, int C);

void layernorm_forward(float* out, float* mean, float* rstd, const float* inp, const float* weight,
                       const float* bias, int N, int C);
void layernorm_backward(float* dinp, float* dweight, float* dbias, const float* dout,
                        const float* inp, const float* weight, const float* mean, const float* rstd,
                        int N, int C);

void matmul_forward(float* out, const float* inp, const float* weight, const float* bias, int N,
                    int IC, int OC);
void matmul_backward(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,
                     const float* weight, int N, int IC, int OC);

void attention_forward(float* out, float* att, const float* qkv, int B, int T, int C, int NH);
void attention_backward(float* dqkv, float* scratch, const float* dout, const float* qkv,
                        const float* att, int B, int T, int C, int NH);

void gelu_forward(float* out, const float* inp, size_t n);
void gelu_backward(float* dinp, const float* inp, const float* dout, size_t n);
void add(float* out, const float* a, const float* b, size_t n);
void accumulate(float* dst, const float* src, size_t n);
void scale(float* x, float s, size_t n);
double sum_squares(const float* x, size_t n);

void crossentropy_forward_backward(float* logits, float* losses, float* correct,
                                   const int32_t* targets, int N, int V, int Vp, float dloss_scale);

void adamw_update(float* p, const float* g, float* m, float* v, size_t n, float lr, float beta1,
                  float beta2, float eps, float wd, float bc1, float bc2);
void sgd_update(float* p, const float* g, float* buf, size_t n, float lr, float momentum, float wd);

}  // namespace triad::cpu
