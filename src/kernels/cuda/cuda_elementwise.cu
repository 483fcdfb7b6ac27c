// Elementwise ops: GELU (tanh approximation) and squared ReLU forward/backward, residual add,
// accumulate, scale, the logits' soft cap, and the float ↔ bf16 conversions: the block programs of
// elementwise_block.h (which describes them), launched with DeviceThread. Memory-bound
// grid-stride loops. Templated on the storage type (float or bf16).
#include "cuda_ops.cuh"
#include "device_thread.cuh"
#include "elementwise_block.h"

namespace triad::cuda {
namespace {

template <typename E>
__global__ void gelu_forward_kernel(E* out, const E* inp, size_t n) {
  DeviceThread x;
  elementwise_block::gelu_forward(x, out, inp, n, block_threads(), grid_threads());
}

template <typename E>
__global__ void gelu_backward_kernel(E* dinp, const E* inp, const E* dout, size_t n,
                                     bool accumulate) {
  DeviceThread x;
  elementwise_block::gelu_backward(x, dinp, inp, dout, n, accumulate, int(blockDim.x),
                                   grid_threads());
}

template <typename E>
__global__ void activation_forward_kernel(int kind, E* out, const E* inp, size_t n) {
  DeviceThread x;
  elementwise_block::activation_forward(x, kind, out, inp, n, block_threads(), grid_threads());
}

template <typename E>
__global__ void activation_backward_kernel(int kind, E* dinp, const E* inp, const E* dout, size_t n,
                                           bool accumulate) {
  DeviceThread x;
  elementwise_block::activation_backward(x, kind, dinp, inp, dout, n, accumulate, block_threads(),
                                         grid_threads());
}

template <typename E>
__global__ void add_kernel(E* out, const E* a, const E* b, size_t n) {
  DeviceThread x;
  elementwise_block::add(x, out, a, b, n, block_threads(), grid_threads());
}

template <typename E>
__global__ void accumulate_kernel(E* dst, const E* src, size_t n) {
  DeviceThread x;
  elementwise_block::accumulate(x, dst, src, n, block_threads(), grid_threads());
}

template <typename E>
__global__ void scale_cap_logits_kernel(E* v, size_t n, float mult, float c) {
  DeviceThread x;
  elementwise_block::scale_cap_logits(x, v, n, mult, c, block_threads(), grid_threads());
}

template <typename E>
__global__ void clamp_kernel(E* out, const E* inp, size_t n, float c) {
  DeviceThread x;
  elementwise_block::clamp(x, out, inp, n, c, block_threads(), grid_threads());
}

template <typename E>
__global__ void clamp_backward_kernel(E* d, const E* inp, size_t n, float c) {
  DeviceThread x;
  elementwise_block::clamp_backward(x, d, inp, n, c, block_threads(), grid_threads());
}

template <typename E>
__global__ void dropout_kernel(E* v, const int32_t* keys, int rows, int C, uint32_t site,
                               uint32_t threshold, float scale) {
  DeviceThread x;
  elementwise_block::dropout(x, v, keys, rows, C, site, threshold, scale, block_threads(),
                             grid_threads());
}

__global__ void scale_kernel(float* v, float factor, size_t n) {
  DeviceThread x;
  elementwise_block::scale(x, v, factor, n, block_threads(), grid_threads());
}

__global__ void ema_update_kernel(float* ema, const float* p, float w, size_t n) {
  DeviceThread x;
  elementwise_block::ema_update(x, ema, p, w, n, block_threads(), grid_threads());
}

template <typename D, typename S>
__global__ void convert_kernel(D* dst, const S* src, size_t n) {
  DeviceThread x;
  elementwise_block::convert(x, dst, src, n, block_threads(), grid_threads());
}

}  // namespace

template <typename Elem>
void gelu_forward(cudaStream_t s, Elem* out, const Elem* inp, size_t n) {
  if (n == 0) return;
  gelu_forward_kernel<<<grid_for(n), kBlock, 0, s>>>(bits(out), bits(inp), n);
  TRIAD_CUDA_CHECK_LAUNCH();
}

template <typename Elem>
void gelu_backward(cudaStream_t s, Elem* dinp, const Elem* inp, const Elem* dout, size_t n,
                   bool accumulate) {
  if (n == 0) return;
  gelu_backward_kernel<<<grid_for(n), kBlock, 0, s>>>(bits(dinp), bits(inp), bits(dout), n,
                                                      accumulate);
  TRIAD_CUDA_CHECK_LAUNCH();
}

static_assert(int(Activation::relu2) == elementwise_block::kRelu2 &&
                  int(Activation::gelu_exact) == elementwise_block::kGeluExact &&
                  int(Activation::relu) == elementwise_block::kRelu,
              "the block programs' activation kinds are backend.h Activation's values");

template <typename Elem>
void activation_forward(cudaStream_t s, Activation f, Elem* out, const Elem* inp, size_t n) {
  if (n == 0) return;
  activation_forward_kernel<<<grid_for(n), kBlock, 0, s>>>(int(f), bits(out), bits(inp), n);
  TRIAD_CUDA_CHECK_LAUNCH();
}

template <typename Elem>
void activation_backward(cudaStream_t s, Activation f, Elem* dinp, const Elem* inp,
                         const Elem* dout, size_t n, bool accumulate) {
  if (n == 0) return;
  activation_backward_kernel<<<grid_for(n), kBlock, 0, s>>>(int(f), bits(dinp), bits(inp),
                                                            bits(dout), n, accumulate);
  TRIAD_CUDA_CHECK_LAUNCH();
}

template <typename Elem>
void add(cudaStream_t s, Elem* out, const Elem* a, const Elem* b, size_t n) {
  if (n == 0) return;
  add_kernel<<<grid_for(n), kBlock, 0, s>>>(bits(out), bits(a), bits(b), n);
  TRIAD_CUDA_CHECK_LAUNCH();
}

template <typename Elem>
void accumulate(cudaStream_t s, Elem* dst, const Elem* src, size_t n) {
  if (n == 0) return;
  accumulate_kernel<<<grid_for(n), kBlock, 0, s>>>(bits(dst), bits(src), n);
  TRIAD_CUDA_CHECK_LAUNCH();
}

template <typename Elem>
void scale_cap_logits(cudaStream_t s, Elem* x, size_t n, float mult, float c) {
  if (n == 0) return;
  scale_cap_logits_kernel<<<grid_for(n), kBlock, 0, s>>>(bits(x), n, mult, c);
  TRIAD_CUDA_CHECK_LAUNCH();
}

template <typename Elem>
void clamp(cudaStream_t s, Elem* out, const Elem* inp, size_t n, float c) {
  if (n == 0) return;
  clamp_kernel<<<grid_for(n), kBlock, 0, s>>>(bits(out), bits(inp), n, c);
  TRIAD_CUDA_CHECK_LAUNCH();
}

template <typename Elem>
void clamp_backward(cudaStream_t s, Elem* d, const Elem* inp, size_t n, float c) {
  if (n == 0) return;
  clamp_backward_kernel<<<grid_for(n), kBlock, 0, s>>>(bits(d), bits(inp), n, c);
  TRIAD_CUDA_CHECK_LAUNCH();
}

template <typename Elem>
void dropout(cudaStream_t s, Elem* x, const int32_t* keys, int rows, int C, uint32_t site,
             float p) {
  const size_t n = size_t(rows) * size_t(C);
  if (n == 0) return;
  dropout_kernel<<<grid_for(n), kBlock, 0, s>>>(bits(x), keys, rows, C, site, dropout_threshold(p),
                                                dropout_scale(p));
  TRIAD_CUDA_CHECK_LAUNCH();
}

void scale(cudaStream_t s, float* x, float factor, size_t n) {
  if (n == 0) return;
  scale_kernel<<<grid_for(n), kBlock, 0, s>>>(x, factor, n);
  TRIAD_CUDA_CHECK_LAUNCH();
}

void ema_update(cudaStream_t s, float* ema, const float* p, size_t n, float w) {
  if (n == 0) return;
  ema_update_kernel<<<grid_for(n), kBlock, 0, s>>>(ema, p, w, n);
  TRIAD_CUDA_CHECK_LAUNCH();
}

template <typename Dst, typename Src>
void convert(cudaStream_t s, Dst* dst, const Src* src, size_t n) {
  if (n == 0) return;
  convert_kernel<<<grid_for(n), kBlock, 0, s>>>(bits(dst), bits(src), n);
  TRIAD_CUDA_CHECK_LAUNCH();
}

#define TRIAD_INSTANTIATE_ELEMENTWISE(Elem)                                                       \
  template void gelu_forward<Elem>(cudaStream_t, Elem*, const Elem*, size_t);                     \
  template void gelu_backward<Elem>(cudaStream_t, Elem*, const Elem*, const Elem*, size_t, bool); \
  template void activation_forward<Elem>(cudaStream_t, Activation, Elem*, const Elem*, size_t);   \
  template void activation_backward<Elem>(cudaStream_t, Activation, Elem*, const Elem*,           \
                                          const Elem*, size_t, bool);                             \
  template void add<Elem>(cudaStream_t, Elem*, const Elem*, const Elem*, size_t);                 \
  template void accumulate<Elem>(cudaStream_t, Elem*, const Elem*, size_t);                       \
  template void scale_cap_logits<Elem>(cudaStream_t, Elem*, size_t, float, float);                \
  template void clamp<Elem>(cudaStream_t, Elem*, const Elem*, size_t, float);                     \
  template void clamp_backward<Elem>(cudaStream_t, Elem*, const Elem*, size_t, float);            \
  template void dropout<Elem>(cudaStream_t, Elem*, const int32_t*, int, int, uint32_t, float);
TRIAD_INSTANTIATE_ELEMENTWISE(float)
TRIAD_INSTANTIATE_ELEMENTWISE(bf16)
#undef TRIAD_INSTANTIATE_ELEMENTWISE

template void convert<bf16, float>(cudaStream_t, bf16*, const float*, size_t);
template void convert<float, bf16>(cudaStream_t, float*, const bf16*, size_t);

}  // namespace triad::cuda
