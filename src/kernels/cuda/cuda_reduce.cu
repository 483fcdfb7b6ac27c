// Deterministic reductions: column sums (bias gradients) and the sum of squares (gradient norm).
#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "column_sums_block.h"
#include "cuda_ops.cuh"
#include "device_thread.cuh"
#include "reduce_block.h"

namespace triad::cuda {
namespace {

// Column sums in two deterministic passes (no atomics), so that a few hundred columns over
// tens of thousands of rows still spread over the whole GPU:
//  1. grid (ceil(C / kColumns), R): block (x, y) owns kColumns adjacent columns (coalesced row
//     reads) and the y-th of R equal slices of the rows; thread (tx, ty) sums rows
//     lo + ty, lo + ty + kRowGroups, ... of the slice in order, then thread (tx, 0) adds the
//     kRowGroups partial sums in order into partials[y][c];
//  2. one thread per column adds partials[0..R-1][c] in order onto dst[c].
// R depends on N only, so the order of every sum depends on N and C only. The source is float
// or bf16 (Elem); the sums and dst are fp32.
using reduce_block::kColumnThreads;
constexpr int kRowsPerSlice = 256;
constexpr int kMaxSlices = 64;

int row_slices(int N) { return std::clamp((N + kRowsPerSlice - 1) / kRowsPerSlice, 1, kMaxSlices); }

// The block programs of reduce_block.h, launched with DeviceThread.
template <typename Elem>
__global__ void __launch_bounds__(kColumnThreads)
    column_partial_kernel(float* partials, const Elem* src, int N, int C, int rows) {
  DeviceThread x;
  reduce_block::column_partials(x, partials, src, N, C, rows);
}

__global__ void column_finish_kernel(float* dst, const float* partials, int C, int slices) {
  DeviceThread x;
  reduce_block::column_finish(x, dst, partials, C, slices, int(blockDim.x));
}

template <class T>
__global__ void sum_squares_partial_kernel(double* partials, const T* v, size_t n) {
  DeviceThread x;
  reduce_block::sum_squares_partials(x, partials, v, n, block_threads(), grid_threads());
}

__global__ void sum_partials_kernel(double* out, const double* partials, int count) {
  DeviceThread x;
  reduce_block::sum_partials(x, out, partials, count, int(blockDim.x));
}

}  // namespace

static __global__ void __launch_bounds__(colsum::kThreads)
    column_partial_vector_kernel(float* pw, float* pb, const uint16_t* dout, const uint16_t* inp,
                                 const float* mean, const float* rstd, int N, int C, int rows) {
  DeviceThread x;
  colsum::partial_sums(x, pw, pb, dout, inp, mean, rstd, N, C, rows);
}

bool column_partials_vectorized(cudaStream_t s, float* pw, float* pb, const bf16* dout,
                                const bf16* inp, const float* mean, const float* rstd, int N,
                                int C) {
  const auto aligned = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; };
  if (C % 8 != 0 || !aligned(dout) || (inp != nullptr && !aligned(inp))) return false;
  const int slices = row_slices(N);
  const dim3 grid((C + colsum::kColumns - 1) / colsum::kColumns, slices);
  column_partial_vector_kernel<<<grid, colsum::kThreads, colsum::smem_bytes(), s>>>(
      pw, pb, reinterpret_cast<const uint16_t*>(dout), reinterpret_cast<const uint16_t*>(inp), mean,
      rstd, N, C, (N + slices - 1) / slices);
  TRIAD_CUDA_CHECK_LAUNCH();
  return true;
}

int column_sum_slices(int N) { return row_slices(N); }

size_t column_sum_partials_floats(int N, int C) { return size_t(row_slices(N)) * size_t(C); }

void column_sum_finish(cudaStream_t s, float* dst, const float* partials, int N, int C) {
  column_finish_kernel<<<(C + kBlock - 1) / kBlock, kBlock, 0, s>>>(dst, partials, C,
                                                                    row_slices(N));
  TRIAD_CUDA_CHECK_LAUNCH();
}

template <typename Elem>
void column_sum_accumulate(cudaStream_t s, DeviceScratch& scratch, float* dst, const Elem* src,
                           int N, int C) {
  if (N <= 0 || C <= 0) return;
  const int slices = row_slices(N);
  float* partials = scratch.get_as<float>(column_sum_partials_floats(N, C), s);
  bool vectorized = false;
  if constexpr (std::is_same_v<Elem, bf16>)
    vectorized =
        column_partials_vectorized(s, nullptr, partials, src, nullptr, nullptr, nullptr, N, C);
  if (!vectorized) {
    const dim3 grid((C + reduce_block::kColumns - 1) / reduce_block::kColumns, slices);
    column_partial_kernel<<<grid, kColumnThreads, reduce_block::column_smem(), s>>>(
        partials, bits(src), N, C, (N + slices - 1) / slices);
    TRIAD_CUDA_CHECK_LAUNCH();
  }
  column_sum_finish(s, dst, partials, N, C);
}

template void column_sum_accumulate<float>(cudaStream_t, DeviceScratch&, float*, const float*, int,
                                           int);
template void column_sum_accumulate<bf16>(cudaStream_t, DeviceScratch&, float*, const bf16*, int,
                                          int);

template <class T>
double sum_squares(cudaStream_t s, double* partials, const T* x, size_t n) {
  if (n == 0) return 0.0;
  const size_t blocks = std::min<size_t>((n + kBlock - 1) / kBlock, kSumSquaresPartials);
  sum_squares_partial_kernel<<<unsigned(blocks), kBlock, reduce_block::sum_smem(), s>>>(partials,
                                                                                        bits(x), n);
  TRIAD_CUDA_CHECK_LAUNCH();
  double* result = partials + kSumSquaresPartials;
  sum_partials_kernel<<<1, kBlock, reduce_block::sum_smem(), s>>>(result, partials, int(blocks));
  TRIAD_CUDA_CHECK_LAUNCH();
  double host = 0.0;
  TRIAD_CUDA_CHECK(cudaMemcpyAsync(&host, result, sizeof(double), cudaMemcpyDeviceToHost, s));
  TRIAD_CUDA_CHECK(cudaStreamSynchronize(s));
  return host;
}
template double sum_squares<float>(cudaStream_t, double*, const float*, size_t);
template double sum_squares<bf16>(cudaStream_t, double*, const bf16*, size_t);

}  // namespace triad::cuda
