// Deterministic reductions: column sums (bias gradients) and the sum of squares (gradient norm).
#include "cuda_ops.cuh"

namespace triad::cuda {
namespace {

// Column sums: a block of kColumns × kRowGroups threads owns kColumns adjacent columns (so
// each row access is coalesced); thread (x, y) sums rows y, y + kRowGroups, ... in order, and
// thread (x, 0) adds the kRowGroups partial sums in order. The order depends on N only.
// The source is float or bf16 (Elem); the sums and dst are fp32.
constexpr int kColumns = 32;
constexpr int kRowGroups = 16;

template <typename Elem>
__global__ void column_sum_kernel(float* dst, const Elem* src, int N, int C) {
  __shared__ float partial[kRowGroups][kColumns + 1];
  const int c = blockIdx.x * kColumns + threadIdx.x;
  float sum = 0.0f;
  if (c < C) {
    for (int n = threadIdx.y; n < N; n += kRowGroups) sum += widen(src[size_t(n) * C + c]);
  }
  partial[threadIdx.y][threadIdx.x] = sum;
  __syncthreads();
  if (threadIdx.y == 0 && c < C) {
    float total = 0.0f;
    for (int g = 0; g < kRowGroups; ++g) total += partial[g][threadIdx.x];
    dst[c] += total;
  }
}

// Σ x² in double: kSumSquaresPartials blocks at most (the count depends on n only), each
// reducing a grid-stride slice; then one block adds the partial sums in a fixed tree.
__global__ void sum_squares_partial_kernel(double* partials, const float* x, size_t n) {
  double sum = 0.0;
  TRIAD_GRID_STRIDE_LOOP(i, n) {
    const double v = x[i];
    sum += v * v;
  }
  sum = block_reduce(sum, SumOp{}, 0.0);
  if (threadIdx.x == 0) partials[blockIdx.x] = sum;
}

__global__ void sum_partials_kernel(double* out, const double* partials, int count) {
  double sum = 0.0;
  for (int i = threadIdx.x; i < count; i += blockDim.x) sum += partials[i];
  sum = block_reduce(sum, SumOp{}, 0.0);
  if (threadIdx.x == 0) *out = sum;
}

}  // namespace

template <typename Elem>
void column_sum_accumulate(cudaStream_t s, float* dst, const Elem* src, int N, int C) {
  if (N <= 0 || C <= 0) return;
  const dim3 block(kColumns, kRowGroups);
  column_sum_kernel<<<(C + kColumns - 1) / kColumns, block, 0, s>>>(dst, src, N, C);
  TRIAD_CUDA_CHECK_LAUNCH();
}

template void column_sum_accumulate<float>(cudaStream_t, float*, const float*, int, int);
template void column_sum_accumulate<bf16>(cudaStream_t, float*, const bf16*, int, int);

double sum_squares(cudaStream_t s, double* partials, const float* x, size_t n) {
  if (n == 0) return 0.0;
  const size_t blocks = std::min<size_t>((n + kBlock - 1) / kBlock, kSumSquaresPartials);
  sum_squares_partial_kernel<<<unsigned(blocks), kBlock, 0, s>>>(partials, x, n);
  TRIAD_CUDA_CHECK_LAUNCH();
  double* result = partials + kSumSquaresPartials;
  sum_partials_kernel<<<1, kBlock, 0, s>>>(result, partials, int(blocks));
  TRIAD_CUDA_CHECK_LAUNCH();
  double host = 0.0;
  TRIAD_CUDA_CHECK(cudaMemcpyAsync(&host, result, sizeof(double), cudaMemcpyDeviceToHost, s));
  TRIAD_CUDA_CHECK(cudaStreamSynchronize(s));
  return host;
}

}  // namespace triad::cuda
