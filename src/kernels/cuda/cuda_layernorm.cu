// LayerNorm over the last dimension (epsilon eps), with mean and 1/std saved for backward; RMSNorm
// where mean is null (backend.h: no centering, no bias, no mean(g) term in the backward).
// The block programs of layernorm_block.h (which describes them), launched with DeviceThread:
// one block per row; the row statistics are two-pass sums in double, as in the CPU backend.
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

template <typename E>
__global__ void __launch_bounds__(layernorm::kRowThreads)
    block_row_forward_kernel(E* out, float* mean, float* rstd, E* inp, const E* a, const E* b,
                             const E* weight, const E* bias, int C, float eps) {
  DeviceThread x;
  layernorm::block_row_forward(x, out, mean, rstd, inp, a, b, weight, bias, C, eps);
}

// The plain LayerNorm of a row (block_row_forward without the residual sum): inp read only.
template <typename E>
__global__ void __launch_bounds__(layernorm::kRowThreads)
    block_row_norm_kernel(E* out, float* mean, float* rstd, const E* inp, const E* weight,
                          const E* bias, int C, float eps) {
  DeviceThread x;
  layernorm::block_row_norm(x, out, mean, rstd, inp, weight, bias, C, eps);
}

template <typename E>
__global__ void __launch_bounds__(layernorm::kRowThreads)
    block_row_backward_dinp_kernel(E* dinp, const E* dout, const E* inp, const E* weight,
                                   const float* mean, const float* rstd, int C) {
  DeviceThread x;
  layernorm::block_row_backward_dinp(x, dinp, dout, inp, weight, mean, rstd, C);
}

template <typename E>
__global__ void __launch_bounds__(layernorm::kParamThreads)
    param_partials_kernel(float* pw, float* pb, const E* dout, const E* inp, const float* mean,
                          const float* rstd, int N, int C, int rows) {
  DeviceThread x;
  layernorm::param_partials(x, pw, pb, dout, inp, mean, rstd, N, C, rows);
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
  block_row_norm_kernel<<<N, layernorm::kRowThreads, layernorm::row_smem(), s>>>(
      bits(out), mean, rstd, bits(inp), bits(weight), bits(bias), C, eps);
  TRIAD_CUDA_CHECK_LAUNCH();
}

template <typename Elem>
void residual_layernorm_forward(cudaStream_t s, Elem* sum, Elem* out, float* mean, float* rstd,
                                const Elem* a, const Elem* b, const Elem* weight, const Elem* bias,
                                int N, int C, float eps) {
  if (N <= 0 || C <= 0) return;
  if (warp_row_forward<Elem>(s, out, mean, rstd, sum, a, b, weight, bias, N, C, eps)) return;
  block_row_forward_kernel<<<N, layernorm::kRowThreads, layernorm::row_smem(), s>>>(
      bits(out), mean, rstd, bits(sum), bits(a), bits(b), bits(weight), bits(bias), C, eps);
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
    block_row_backward_dinp_kernel<<<N, layernorm::kRowThreads, layernorm::row_smem(), s>>>(
        bits(dinp), bits(dout), bits(inp), bits(weight), mean, rstd, C);
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
    const dim3 grid((C + layernorm::kColumns - 1) / layernorm::kColumns, slices);
    param_partials_kernel<<<grid, layernorm::kParamThreads, layernorm::param_smem(), s>>>(
        pw, pb, bits(dout), bits(inp), mean, rstd, N, C, (N + slices - 1) / slices);
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
