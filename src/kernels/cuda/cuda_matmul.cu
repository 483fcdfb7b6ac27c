// Linear layers through cuBLAS sgemm (fp32; the handle's math mode is pedantic, so neither
// TF32 nor BF16x9 emulation is ever used):
//   forward   out   = inp · Wᵀ + b
//   backward  dinp += dout · W,   dW += doutᵀ · inp,   db += Σ_rows dout
//
// cuBLAS is column-major; a row-major [R, K] matrix with leading dimension K is the same memory
// as a column-major K×R matrix. So the row-major product out[N,OC] = inp[N,IC]·W[OC,IC]ᵀ is the
// column-major outᵀ (OC×N) = W (IC×OC seen, transposed) · inpᵀ (IC×N):
//   sgemm(T, N, m=OC, n=N, k=IC, W, ld IC, inp, ld IC, out, ld OC)
// and likewise for the two backward products (derived next to each call).
#include "cuda_ops.cuh"
#include "device_thread.cuh"
#include "elementwise_block.h"

namespace triad::cuda {
namespace {

// out[n, o] = bias[o] (the product is then accumulated onto it with beta = 1, like the CPU
// backend).
__global__ void broadcast_rows_kernel(float* out, const float* bias, int OC, size_t total) {
  DeviceThread x;
  elementwise_block::broadcast_rows(x, out, bias, OC, total, block_threads(), grid_threads());
}

}  // namespace

void matmul_forward(cudaStream_t s, cublasHandle_t h, float* out, const float* inp,
                    const float* weight, const float* bias, int N, int IC, int OC) {
  if (N <= 0 || OC <= 0) return;
  float beta = 0.0f;
  if (bias != nullptr) {
    const size_t total = size_t(N) * OC;
    broadcast_rows_kernel<<<grid_for(total), kBlock, 0, s>>>(out, bias, OC, total);
    TRIAD_CUDA_CHECK_LAUNCH();
    beta = 1.0f;
  }
  if (IC <= 0) {  // empty product: out is the bias (or zero)
    if (bias == nullptr)
      TRIAD_CUDA_CHECK(cudaMemsetAsync(out, 0, size_t(N) * OC * sizeof(float), s));
    return;
  }
  const float alpha = 1.0f;
  TRIAD_CUBLAS_CHECK(cublasSgemm(h, CUBLAS_OP_T, CUBLAS_OP_N, OC, N, IC, &alpha, weight, IC, inp,
                                 IC, &beta, out, OC));
}

void matmul_backward(cudaStream_t s, cublasHandle_t h, DeviceScratch& scratch, float* dinp,
                     float* dweight, float* dbias, const float* dout, const float* inp,
                     const float* weight, int N, int IC, int OC) {
  if (N <= 0 || OC <= 0) return;
  const float one = 1.0f;
  if (dinp != nullptr && IC > 0) {
    // dinp[N,IC] += dout[N,OC] · W[OC,IC]  ⇔  dinpᵀ (IC×N) += W (col-major IC×OC, ld IC, no
    // transpose) · doutᵀ (col-major OC×N, ld OC, no transpose)
    TRIAD_CUBLAS_CHECK(cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, IC, N, OC, &one, weight, IC, dout,
                                   OC, &one, dinp, IC));
  }
  // dW[OC,IC] += doutᵀ · inp  ⇔  dWᵀ (IC×OC) += inpᵀ (col-major IC×N, ld IC, no transpose)
  // · dout (col-major doutᵀ is OC×N with ld OC; transposed gives N×OC)
  if (dweight != nullptr && IC > 0)
    TRIAD_CUBLAS_CHECK(cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_T, IC, OC, N, &one, inp, IC, dout, OC,
                                   &one, dweight, IC));
  // (also for an empty inner dimension: the bias still reached every output, as on the CPU)
  if (dbias != nullptr) column_sum_accumulate(s, scratch, dbias, dout, N, OC);
}

}  // namespace triad::cuda
