// LayerNorm over the last dimension (epsilon eps), with mean and 1/std saved for backward; RMSNorm
// where mean is null (backend.h: no centering, no bias, no mean(g) term in the backward).
// One block per row; the row statistics are two-pass sums in double, as in the CPU backend.
// The weight/bias gradients are column sums over the rows, done deterministically in two passes
// like column_sum_accumulate (cuda_reduce.cu), with x̂ recomputed.
// Templated on the storage type Elem (float or bf16) of out, inp, weight, bias, dinp and dout;
// mean, rstd, dweight and dbias are fp32 in both.
//
// bf16 rows with C a multiple of 8 (up to 2048) and 16-byte aligned buffers take the
// warp-per-row kernels of layernorm_block.h for the forward passes and the input gradient
// instead: the row is read once into registers and written once, the sums are warp shuffles.
#include <cstdint>
#include <type_traits>

#include "cuda_ops.cuh"
#include "device_thread.cuh"
#include "layernorm_block.h"

namespace triad::cuda {
namespace {

constexpr int kRowBlock = 256;  // threads per row
constexpr int kColumns = 64;    // columns per block in the parameter-gradient pass
constexpr int kRowGroups = 8;   // rows summed in parallel per column there

// LayerNorm of row `row` of inp. Each thread touches the columns threadIdx.x + k·blockDim.x
// only, so a caller may have written those columns of inp in the same thread just before.
template <typename Elem>
__device__ void layernorm_row(Elem* out, float* mean, float* rstd, const Elem* inp,
                              const Elem* weight, const Elem* bias, int C, size_t row, float eps) {
  const Elem* x = inp + row * C;
  double sum = 0.0;
  if (mean != nullptr) {  // uniform over the block: all threads reduce or none
    for (int c = threadIdx.x; c < C; c += blockDim.x) sum += widen(x[c]);
    sum = block_reduce(sum, SumOp{}, 0.0);
  }
  const double mu = sum / C;
  double sq = 0.0;
  for (int c = threadIdx.x; c < C; c += blockDim.x) {
    const double d = double(widen(x[c])) - mu;
    sq += d * d;
  }
  sq = block_reduce(sq, SumOp{}, 0.0);
  const float m = float(mu);
  const float r = float(1.0 / sqrt(sq / C + double(eps)));
  Elem* o = out + row * C;
  for (int c = threadIdx.x; c < C; c += blockDim.x)
    o[c] = narrow<Elem>((widen(x[c]) - m) * r * widen(weight[c]) +
                        (bias != nullptr ? widen(bias[c]) : 0.0f));
  if (threadIdx.x == 0) {
    if (mean != nullptr) mean[row] = m;
    rstd[row] = r;
  }
}

template <typename Elem>
__global__ void layernorm_forward_kernel(Elem* out, float* mean, float* rstd, const Elem* inp,
                                         const Elem* weight, const Elem* bias, int C, float eps) {
  layernorm_row(out, mean, rstd, inp, weight, bias, C, blockIdx.x, eps);
}

// sum = round(a + b) (the residual stream), then the LayerNorm of the stored sum: the row is
// read once from a and b instead of written and read again by a separate LayerNorm.
template <typename Elem>
__global__ void residual_layernorm_forward_kernel(Elem* sum, Elem* out, float* mean, float* rstd,
                                                  const Elem* a, const Elem* b, const Elem* weight,
                                                  const Elem* bias, int C, float eps) {
  const size_t row = blockIdx.x;
  for (int c = threadIdx.x; c < C; c += blockDim.x) {
    const size_t i = row * C + c;
    sum[i] = narrow<Elem>(widen(a[i]) + widen(b[i]));
  }
  layernorm_row(out, mean, rstd, static_cast<const Elem*>(sum), weight, bias, C, row, eps);
}

// dx += r·(g − mean(g) − x̂·mean(g·x̂)) with g = dout·w, x̂ = (x − μ)·r.
template <typename Elem>
__global__ void layernorm_backward_dinp_kernel(Elem* dinp, const Elem* dout, const Elem* inp,
                                               const Elem* weight, const float* mean,
                                               const float* rstd, int C) {
  const size_t row = blockIdx.x;
  const Elem* x = inp + row * C;
  const Elem* d = dout + row * C;
  const float m = mean != nullptr ? mean[row] : 0.0f;
  const float r = rstd[row];
  double g_sum = 0.0;
  double gx_sum = 0.0;
  for (int c = threadIdx.x; c < C; c += blockDim.x) {
    const float g = widen(d[c]) * widen(weight[c]);
    g_sum += g;
    gx_sum += g * ((widen(x[c]) - m) * r);
  }
  g_sum = block_reduce(g_sum, SumOp{}, 0.0);
  gx_sum = block_reduce(gx_sum, SumOp{}, 0.0);
  const float g_mean = mean != nullptr ? float(g_sum / C) : 0.0f;
  const float gx_mean = float(gx_sum / C);
  Elem* dx = dinp + row * C;
  for (int c = threadIdx.x; c < C; c += blockDim.x) {
    const float xhat = (widen(x[c]) - m) * r;
    dx[c] =
        narrow<Elem>(widen(dx[c]) + r * (widen(d[c]) * widen(weight[c]) - g_mean - xhat * gx_mean));
  }
}

// Per-slice partial sums of dweight (Σ dout·x̂) and dbias (Σ dout): block (x, y), of
// (kColumns, kRowGroups) threads, sums its columns over the y-th slice of `rows` rows in a fixed
// order into pw[y][c] and pb[y][c]; column_sum_finish adds the slices (cuda_reduce.cu).
template <typename Elem>
__global__ void layernorm_backward_params_kernel(float* pw, float* pb, const Elem* dout,
                                                 const Elem* inp, const float* mean,
                                                 const float* rstd, int N, int C, int rows) {
  __shared__ float part_w[kRowGroups][kColumns + 1];
  __shared__ float part_b[kRowGroups][kColumns + 1];
  const int c = blockIdx.x * kColumns + threadIdx.x;
  const int lo = blockIdx.y * rows, hi = min(N, lo + rows);
  float dw = 0.0f;
  float db = 0.0f;
  if (c < C) {
    for (int n = lo + int(threadIdx.y); n < hi; n += kRowGroups) {
      const size_t i = size_t(n) * C + c;
      const float d = widen(dout[i]);
      dw += d * ((widen(inp[i]) - (mean != nullptr ? mean[n] : 0.0f)) * rstd[n]);
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
    pw[size_t(blockIdx.y) * C + c] = sw;
    pb[size_t(blockIdx.y) * C + c] = sb;
  }
}

template <int kVec>
__global__ void __launch_bounds__(layernorm::kThreads)
    ln_warp_forward_kernel(uint16_t* out, float* mean, float* rstd, uint16_t* inp,
                           const uint16_t* a, const uint16_t* b, const uint16_t* weight,
                           const uint16_t* bias, int N, int C, float eps) {
  DeviceThread x;
  layernorm::forward_row<kVec>(x, out, mean, rstd, inp, a, b, weight, bias, N, C, eps);
}

template <int kVec>
__global__ void __launch_bounds__(layernorm::kThreads)
    ln_warp_backward_dinp_kernel(uint16_t* dinp, const uint16_t* dout, const uint16_t* inp,
                                 const uint16_t* weight, const float* mean, const float* rstd,
                                 int N, int C) {
  DeviceThread x;
  layernorm::backward_dinp_row<kVec>(x, dinp, dout, inp, weight, mean, rstd, N, C);
}

// The vectors per lane of the warp-per-row kernels for bf16 rows of width C at the given
// buffers, or 0 where they do not apply (float rows, C % 8 != 0, C > 2048, a misaligned buffer).
template <typename Elem>
int warp_row_vectors(int C, std::initializer_list<const void*> buffers) {
  if constexpr (!std::is_same_v<Elem, bf16>) {
    return 0;
  } else {
    if (C % 8 != 0 || C > 8 * 32 * 8) return 0;
    for (const void* p : buffers)
      if (p != nullptr && reinterpret_cast<uintptr_t>(p) % 16 != 0) return 0;
    return (C / 8 + 31) / 32;
  }
}

// The warp-per-row programs take bf16 data as bits, inputs as outputs (its instantiations for
// fp32 return before any launch).
template <typename Elem>
uint16_t* as_bits(Elem* p) {
  return reinterpret_cast<uint16_t*>(const_cast<std::remove_const_t<Elem>*>(p));
}

// The warp-per-row forward (a, b null: plain LayerNorm of inp); false where it does not apply.
template <typename Elem>
bool warp_row_forward(cudaStream_t s, Elem* out, float* mean, float* rstd, const Elem* inp,
                      const Elem* a, const Elem* b, const Elem* weight, const Elem* bias, int N,
                      int C, float eps) {
  const int vec = warp_row_vectors<Elem>(C, {out, inp, a, b, weight, bias});
  if (vec == 0) return false;
  const unsigned blocks = unsigned((N + layernorm::kWarps - 1) / layernorm::kWarps);
  with_vectors(vec, [&](auto k) {
    ln_warp_forward_kernel<decltype(k)::value><<<blocks, layernorm::kThreads, 0, s>>>(
        as_bits(out), mean, rstd, as_bits(inp), a ? as_bits(a) : nullptr, b ? as_bits(b) : nullptr,
        as_bits(weight), bias ? as_bits(bias) : nullptr, N, C, eps);
  });
  TRIAD_CUDA_CHECK_LAUNCH();
  return true;
}

}  // namespace

template <typename Elem>
void layernorm_forward(cudaStream_t s, Elem* out, float* mean, float* rstd, const Elem* inp,
                       const Elem* weight, const Elem* bias, int N, int C, float eps) {
  if (N <= 0 || C <= 0) return;
  if (warp_row_forward<Elem>(s, out, mean, rstd, inp, nullptr, nullptr, weight, bias, N, C, eps))
    return;
  layernorm_forward_kernel<<<N, kRowBlock, 0, s>>>(out, mean, rstd, inp, weight, bias, C, eps);
  TRIAD_CUDA_CHECK_LAUNCH();
}

template <typename Elem>
void residual_layernorm_forward(cudaStream_t s, Elem* sum, Elem* out, float* mean, float* rstd,
                                const Elem* a, const Elem* b, const Elem* weight, const Elem* bias,
                                int N, int C, float eps) {
  if (N <= 0 || C <= 0) return;
  if (warp_row_forward<Elem>(s, out, mean, rstd, sum, a, b, weight, bias, N, C, eps)) return;
  residual_layernorm_forward_kernel<<<N, kRowBlock, 0, s>>>(sum, out, mean, rstd, a, b, weight,
                                                            bias, C, eps);
  TRIAD_CUDA_CHECK_LAUNCH();
}

template <typename Elem>
void layernorm_backward(cudaStream_t s, DeviceScratch& scratch, Elem* dinp, float* dweight,
                        float* dbias, const Elem* dout, const Elem* inp, const Elem* weight,
                        const float* mean, const float* rstd, int N, int C) {
  if (N <= 0 || C <= 0) return;
  if (const int vec = warp_row_vectors<Elem>(C, {dinp, dout, inp, weight}); vec > 0) {
    const unsigned blocks = unsigned((N + layernorm::kWarps - 1) / layernorm::kWarps);
    with_vectors(vec, [&](auto k) {
      ln_warp_backward_dinp_kernel<decltype(k)::value><<<blocks, layernorm::kThreads, 0, s>>>(
          as_bits(dinp), as_bits(dout), as_bits(inp), as_bits(weight), mean, rstd, N, C);
    });
  } else {
    layernorm_backward_dinp_kernel<<<N, kRowBlock, 0, s>>>(dinp, dout, inp, weight, mean, rstd, C);
  }
  TRIAD_CUDA_CHECK_LAUNCH();
  const int slices = column_sum_slices(N);
  const size_t part = column_sum_partials_floats(N, C);
  float* pw = scratch.get_as<float>(2 * part, s);
  float* pb = pw + part;
  bool vectorized = false;
  if constexpr (std::is_same_v<Elem, bf16>)
    vectorized = column_partials_vectorized(s, pw, pb, dout, inp, mean, rstd, N, C);
  if (!vectorized) {
    const dim3 grid((C + kColumns - 1) / kColumns, slices), block(kColumns, kRowGroups);
    layernorm_backward_params_kernel<<<grid, block, 0, s>>>(pw, pb, dout, inp, mean, rstd, N, C,
                                                            (N + slices - 1) / slices);
    TRIAD_CUDA_CHECK_LAUNCH();
  }
  column_sum_finish(s, dweight, pw, N, C);
  if (dbias != nullptr) column_sum_finish(s, dbias, pb, N, C);
}

#define TRIAD_INSTANTIATE_LAYERNORM(Elem)                                                     \
  template void layernorm_forward<Elem>(cudaStream_t, Elem*, float*, float*, const Elem*,     \
                                        const Elem*, const Elem*, int, int, float);           \
  template void residual_layernorm_forward<Elem>(cudaStream_t, Elem*, Elem*, float*, float*,  \
                                                 const Elem*, const Elem*, const Elem*,       \
                                                 const Elem*, int, int, float);               \
  template void layernorm_backward<Elem>(cudaStream_t, DeviceScratch&, Elem*, float*, float*, \
                                         const Elem*, const Elem*, const Elem*, const float*, \
                                         const float*, int, int);
TRIAD_INSTANTIATE_LAYERNORM(float)
TRIAD_INSTANTIATE_LAYERNORM(bf16)
#undef TRIAD_INSTANTIATE_LAYERNORM

}  // namespace triad::cuda
