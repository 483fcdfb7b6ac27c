// LayerNorm over the last dimension (eps 1e-5), with mean and 1/std saved for backward.
// One block per row; the row statistics are two-pass sums in double, as in the CPU backend.
// The weight/bias gradients are column sums over the rows, done deterministically like
// column_sum_accumulate (cuda_reduce.cu) with x̂ recomputed.
#include "cuda_ops.cuh"

namespace triad::cuda {
namespace {

constexpr float kEps = 1e-5f;
constexpr int kRowBlock = 256;  // threads per row
constexpr int kColumns = 32;    // columns per block in the parameter-gradient pass
constexpr int kRowGroups = 16;  // rows summed in parallel per column there

__global__ void layernorm_forward_kernel(float* out, float* mean, float* rstd, const float* inp,
                                         const float* weight, const float* bias, int C) {
  const size_t row = blockIdx.x;
  const float* x = inp + row * C;
  double sum = 0.0;
  for (int c = threadIdx.x; c < C; c += blockDim.x) sum += x[c];
  sum = block_reduce(sum, SumOp{}, 0.0);
  const double mu = sum / C;
  double sq = 0.0;
  for (int c = threadIdx.x; c < C; c += blockDim.x) {
    const double d = double(x[c]) - mu;
    sq += d * d;
  }
  sq = block_reduce(sq, SumOp{}, 0.0);
  const float m = float(mu);
  const float r = float(1.0 / sqrt(sq / C + double(kEps)));
  float* o = out + row * C;
  for (int c = threadIdx.x; c < C; c += blockDim.x) o[c] = (x[c] - m) * r * weight[c] + bias[c];
  if (threadIdx.x == 0) {
    mean[row] = m;
    rstd[row] = r;
  }
}

// dx += r·(g − mean(g) − x̂·mean(g·x̂)) with g = dout·w, x̂ = (x − μ)·r.
__global__ void layernorm_backward_dinp_kernel(float* dinp, const float* dout, const float* inp,
                                               const float* weight, const float* mean,
                                               const float* rstd, int C) {
  const size_t row = blockIdx.x;
  const float* x = inp + row * C;
  const float* d = dout + row * C;
  const float m = mean[row];
  const float r = rstd[row];
  double g_sum = 0.0;
  double gx_sum = 0.0;
  for (int c = threadIdx.x; c < C; c += blockDim.x) {
    const float g = d[c] * weight[c];
    g_sum += g;
    gx_sum += g * ((x[c] - m) * r);
  }
  g_sum = block_reduce(g_sum, SumOp{}, 0.0);
  gx_sum = block_reduce(gx_sum, SumOp{}, 0.0);
  const float g_mean = float(g_sum / C);
  const float gx_mean = float(gx_sum / C);
  float* dx = dinp + row * C;
  for (int c = threadIdx.x; c < C; c += blockDim.x) {
    const float xhat = (x[c] - m) * r;
    dx[c] += r * (d[c] * weight[c] - g_mean - xhat * gx_mean);
  }
}

// dweight[c] += Σ_n dout·x̂,  dbias[c] += Σ_n dout. Block (kColumns, kRowGroups).
__global__ void layernorm_backward_params_kernel(float* dweight, float* dbias, const float* dout,
                                                 const float* inp, const float* mean,
                                                 const float* rstd, int N, int C) {
  __shared__ float part_w[kRowGroups][kColumns + 1];
  __shared__ float part_b[kRowGroups][kColumns + 1];
  const int c = blockIdx.x * kColumns + threadIdx.x;
  float dw = 0.0f;
  float db = 0.0f;
  if (c < C) {
    for (int n = threadIdx.y; n < N; n += kRowGroups) {
      const size_t i = size_t(n) * C + c;
      const float d = dout[i];
      dw += d * ((inp[i] - mean[n]) * rstd[n]);
      db += d;
    }
  }
  part_w[threadIdx.y][threadIdx.x] = dw;
  part_b[threadIdx.y][threadIdx.x] = db;
  __syncthreads();
  if (threadIdx.y == 0 && c < C) {
    float sw = 0.0f;
    float sb = 0.0f;
    for (int g = 0; g < kRowGroups; ++g) {
      sw += part_w[g][threadIdx.x];
      sb += part_b[g][threadIdx.x];
    }
    dweight[c] += sw;
    dbias[c] += sb;
  }
}

}  // namespace

void layernorm_forward(cudaStream_t s, float* out, float* mean, float* rstd, const float* inp,
                       const float* weight, const float* bias, int N, int C) {
  if (N <= 0 || C <= 0) return;
  layernorm_forward_kernel<<<N, kRowBlock, 0, s>>>(out, mean, rstd, inp, weight, bias, C);
  TRIAD_CUDA_CHECK_LAUNCH();
}

void layernorm_backward(cudaStream_t s, float* dinp, float* dweight, float* dbias,
                        const float* dout, const float* inp, const float* weight, const float* mean,
                        const float* rstd, int N, int C) {
  if (N <= 0 || C <= 0) return;
  layernorm_backward_dinp_kernel<<<N, kRowBlock, 0, s>>>(dinp, dout, inp, weight, mean, rstd, C);
  TRIAD_CUDA_CHECK_LAUNCH();
  const dim3 block(kColumns, kRowGroups);
  layernorm_backward_params_kernel<<<(C + kColumns - 1) / kColumns, block, 0, s>>>(
      dweight, dbias, dout, inp, mean, rstd, N, C);
  TRIAD_CUDA_CHECK_LAUNCH();
}

}  // namespace triad::cuda
