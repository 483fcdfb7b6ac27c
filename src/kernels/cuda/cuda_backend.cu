// CudaBackend: the Backend ops on device memory, the fp32 path and the mixed-precision (bf16)
// one. One CUDA stream carries every op in order (ops return without waiting; synchronize()
// waits), and one cuBLAS handle is bound to it with the pedantic math mode (plain fp32 sgemm:
// no TF32, no BF16x9 emulation, whatever NVIDIA_TF32_OVERRIDE or CUBLAS_EMULATE_* say). The bf16
// products go through cuBLASLt (LtMatmul: bf16 inputs, fp32 compute, its own workspace). The
// ops themselves live in one .cu file per concern next to this one (cuda_ops.cuh).
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>

#include "cuda_ops.cuh"
#include "triad/core/error.h"
#include "triad/kernels/allocation_ledger.h"
#include "triad/kernels/cuda_backend.h"

namespace triad {

// The Backend's bf16_t buffers are read and written as CUDA's __nv_bfloat16.
static_assert(sizeof(bf16_t) == sizeof(cuda::bf16) && alignof(bf16_t) <= alignof(cuda::bf16));

namespace cuda_detail {

void throw_cuda_error(int code, const char* call, const char* file, int line) {
  const auto err = static_cast<cudaError_t>(code);
  fail("CUDA error ", code, " (", cudaGetErrorName(err), ": ", cudaGetErrorString(err), ") in ",
       call, " at ", file, ":", line);
}

void throw_cublas_error(int code, const char* call, const char* file, int line) {
  const auto status = static_cast<cublasStatus_t>(code);
  fail("cuBLAS error ", code, " (", cublasGetStatusName(status), ": ",
       cublasGetStatusString(status), ") in ", call, " at ", file, ":", line);
}

}  // namespace cuda_detail

namespace {

cuda::bf16* dev(bf16_t* p) { return reinterpret_cast<cuda::bf16*>(p); }
const cuda::bf16* dev(const bf16_t* p) { return reinterpret_cast<const cuda::bf16*>(p); }

// Device count, or the error that prevents using any device (no driver, no device, ...).
cudaError_t device_count(int* count) {
  *count = 0;
  const cudaError_t err = cudaGetDeviceCount(count);
  if (err != cudaSuccess) {
    *count = 0;
    cudaGetLastError();  // clear it (not a sticky error) so later calls do not report it
  }
  return err;
}

// The fp32 CUDA attention computes whole sequences: query ranges (QueryRows, context parallelism)
// run in bf16, on the flash kernels.
void check_whole_rows(QueryRows rows, int T) {
  TRIAD_CHECK(rows.whole(T), "cuda attention: query rows ", rows.first, " + ", rows.count, " of ",
              T,
              ": the fp32 CUDA attention computes whole sequences only (context "
              "parallelism on the GPU runs in bf16, run.precision = bf16)");
}

class CudaBackend final : public Backend {
 public:
  explicit CudaBackend(int device) : device_(device) {
    const std::string blas = cublas_status();
    TRIAD_CHECK(blas.empty(), "CUDA backend: ", blas);
    TRIAD_CUDA_CHECK(cudaSetDevice(device_));
    TRIAD_CUDA_CHECK(cudaStreamCreate(&stream_));
    TRIAD_CUBLAS_CHECK(cublasCreate(&cublas_));
    TRIAD_CUBLAS_CHECK(cublasSetStream(cublas_, stream_));
    TRIAD_CUBLAS_CHECK(cublasSetMathMode(cublas_, CUBLAS_PEDANTIC_MATH));
    TRIAD_CUBLAS_CHECK(cublasSetAtomicsMode(cublas_, CUBLAS_ATOMICS_NOT_ALLOWED));
    TRIAD_CUDA_CHECK(cudaMalloc(&partials_, (cuda::kSumSquaresPartials + 1) * sizeof(double)));
    lt_ = std::make_unique<cuda::LtMatmul>(cublas_);
  }

  ~CudaBackend() override {
    // No throwing here: errors at teardown are ignored.
    cudaStreamSynchronize(stream_);
    lt_.reset();
    attention_scratch_.fp32_workspace.release();
    attention_scratch_.flash.release();
    attention_scratch_.widened.release();
    attention_scratch_.grouped.release();
    reduce_partials_.release();
    fp8_operands_.release();
    moe_counts_.release();
    if (partials_ != nullptr) cudaFree(partials_);
    if (cublas_ != nullptr) cublasDestroy(cublas_);
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
  }

  CudaBackend(const CudaBackend&) = delete;
  CudaBackend& operator=(const CudaBackend&) = delete;

  const char* name() const override { return "cuda"; }

  // ---- memory ------------------------------------------------------------------------------
  float* alloc(size_t n_floats) override {
    return static_cast<float*>(alloc_bytes(n_floats * sizeof(float)));
  }
  void free(float* p) override { free_bytes(p); }
  size_t allocated_bytes() const override { return ledger_.live_bytes(); }
  void zero(float* p, size_t n) override {
    if (n == 0) return;
    TRIAD_CUDA_CHECK(cudaMemsetAsync(p, 0, n * sizeof(float), stream_));
  }
  void copy(float* dst, const float* src, size_t n) override {
    if (n == 0) return;
    TRIAD_CUDA_CHECK(
        cudaMemcpyAsync(dst, src, n * sizeof(float), cudaMemcpyDeviceToDevice, stream_));
  }
  void copy_rows(float* dst, size_t ld_dst, const float* src, size_t ld_src, size_t rows,
                 size_t width) override {
    if (rows == 0 || width == 0) return;
    const size_t f = sizeof(float);
    TRIAD_CUDA_CHECK(cudaMemcpy2DAsync(dst, ld_dst * f, src, ld_src * f, width * f, rows,
                                       cudaMemcpyDeviceToDevice, stream_));
  }
  void copy_to_host(float* host, const float* dev, size_t n) override {
    if (n == 0) return;
    TRIAD_CUDA_CHECK(
        cudaMemcpyAsync(host, dev, n * sizeof(float), cudaMemcpyDeviceToHost, stream_));
    TRIAD_CUDA_CHECK(cudaStreamSynchronize(stream_));
  }
  void copy_from_host(float* dev, const float* host, size_t n) override {
    if (n == 0) return;
    TRIAD_CUDA_CHECK(
        cudaMemcpyAsync(dev, host, n * sizeof(float), cudaMemcpyHostToDevice, stream_));
    TRIAD_CUDA_CHECK(cudaStreamSynchronize(stream_));
  }
  void synchronize() override { TRIAD_CUDA_CHECK(cudaStreamSynchronize(stream_)); }

  int32_t* alloc_ints(size_t n) override {
    return static_cast<int32_t*>(alloc_bytes(n * sizeof(int32_t)));
  }
  void free_ints(int32_t* p) override { free_bytes(p); }
  void copy_ints_from_host(int32_t* dev, const int32_t* host, size_t n) override {
    if (n == 0) return;
    TRIAD_CUDA_CHECK(
        cudaMemcpyAsync(dev, host, n * sizeof(int32_t), cudaMemcpyHostToDevice, stream_));
    TRIAD_CUDA_CHECK(cudaStreamSynchronize(stream_));
  }

  // ---- ops ---------------------------------------------------------------------------------
  void encoder_forward(float* out, const int32_t* tokens, const float* wte, const float* wpe, int B,
                       int T, int C, const int32_t* positions) override {
    cuda::encoder_forward(stream_, out, tokens, wte, wpe, B, T, C, positions);
  }
  void encoder_backward(float* dwte, float* dwpe, const float* dout, const int32_t* tokens, int B,
                        int T, int C, const int32_t* positions) override {
    cuda::encoder_backward(stream_, dwte, dwpe, dout, tokens, B, T, C, positions);
  }
  void residual_layernorm_forward(float* sum, float* out, float* mean, float* rstd, const float* a,
                                  const float* b, const float* weight, const float* bias, int N,
                                  int C, float eps = kNormEps) override {
    cuda::residual_layernorm_forward(stream_, sum, out, mean, rstd, a, b, weight, bias, N, C, eps);
  }
  void layernorm_forward(float* out, float* mean, float* rstd, const float* inp,
                         const float* weight, const float* bias, int N, int C,
                         float eps = kNormEps) override {
    cuda::layernorm_forward(stream_, out, mean, rstd, inp, weight, bias, N, C, eps);
  }
  void layernorm_backward(float* dinp, float* dweight, float* dbias, const float* dout,
                          const float* inp, const float* weight, const float* mean,
                          const float* rstd, int N, int C) override {
    cuda::layernorm_backward(stream_, reduce_partials_, dinp, dweight, dbias, dout, inp, weight,
                             mean, rstd, N, C);
  }
  void matmul_forward(float* out, const float* inp, const float* weight, const float* bias, int N,
                      int IC, int OC) override {
    cuda::matmul_forward(stream_, cublas_, out, inp, weight, bias, N, IC, OC);
  }
  // The fp32 path is the reference: GradMode::overwrite zeroes, then accumulates.
  void matmul_backward(float* dinp, float* dweight, float* dbias, const float* dout,
                       const float* inp, const float* weight, int N, int IC, int OC,
                       GradMode mode) override {
    if (mode == GradMode::overwrite && dinp != nullptr) zero(dinp, size_t(N) * IC);
    cuda::matmul_backward(stream_, cublas_, reduce_partials_, dinp, dweight, dbias, dout, inp,
                          weight, N, IC, OC);
  }
  void bias_backward(float* dbias, const float* dout, int N, int OC) override {
    cuda::column_sum_accumulate(stream_, reduce_partials_, dbias, dout, N, OC);
  }
  void attention_forward(float* out, float* att, const float* qkv, int B, int T, int C, int NH,
                         int NKV, const int32_t* key_begin, QueryRows rows, float scale,
                         float softcap, AttentionDropout dropout, const float* sinks) override {
    check_whole_rows(rows, T);
    cuda::attention_forward(stream_, cublas_, attention_scratch_, out, att, qkv, B, T, C, NH, NKV,
                            key_begin, scale, softcap, dropout.mask(NKV), sinks);
  }
  void attention_backward(float* dqkv, float* scratch, const float* dout, const float* qkv,
                          const float* att, int B, int T, int C, int NH, int NKV, GradMode mode,
                          const int32_t* key_begin, QueryRows rows, float scale, float softcap,
                          AttentionDropout dropout, const float* sinks, float* dsinks) override {
    check_whole_rows(rows, T);
    check_sinks_gradient("cuda", sinks, dsinks);
    cuda::attention_backward(stream_, cublas_, attention_scratch_, dqkv, scratch, dout, qkv, att, B,
                             T, C, NH, NKV, mode == GradMode::accumulate, key_begin, scale, softcap,
                             dropout.mask(NKV), dsinks);
  }
  void attention_decode(float* out, const float* qkv, int B, int stride, int p, int n, int C,
                        int NH, int NKV, int window, float scale, float softcap,
                        const float* sinks) override {
    cuda::attention_decode(stream_, out, qkv, B, stride, p, n, C, NH, NKV, window, scale, softcap,
                           sinks);
  }
  void swiglu_forward(float* out, const float* pre, int N, int H, GluShape glu) override {
    cuda::swiglu_forward(stream_, out, pre, N, H, glu);
  }
  void swiglu_backward(float* dpre, const float* pre, const float* dout, int N, int H,
                       GradMode mode, GluShape glu) override {
    cuda::swiglu_backward(stream_, dpre, pre, dout, N, H, mode == GradMode::accumulate, glu);
  }
  void geglu_forward(float* out, const float* pre, int N, int H) override {
    cuda::geglu_forward(stream_, out, pre, N, H);
  }
  void geglu_backward(float* dpre, const float* pre, const float* dout, int N, int H,
                      GradMode mode) override {
    cuda::geglu_backward(stream_, dpre, pre, dout, N, H, mode == GradMode::accumulate);
  }
  void rope(float* qkv, const float* table, int N, int T, int pos0, int C, int NH, int NKV,
            bool inverse, const int32_t* positions, int rot) override {
    cuda::rope(stream_, qkv, table, N, T, pos0, C, NH, NKV, inverse, positions, rot);
  }
  void qk_norm_forward(float* out, float* rstd, const float* qkv, const float* wq, const float* wk,
                       int N, int C, int NH, int NKV, float eps = kNormEps) override {
    cuda::qk_norm_forward(stream_, out, rstd, qkv, wq, wk, N, C, NH, NKV, eps);
  }
  void qk_norm_backward(float* dqkv, float* dwq, float* dwk, const float* dout, const float* qkv,
                        const float* wq, const float* wk, const float* rstd, int N, int C, int NH,
                        int NKV, GradMode mode) override {
    cuda::qk_norm_backward(stream_, reduce_partials_, dqkv, dwq, dwk, dout, qkv, wq, wk, rstd, N, C,
                           NH, NKV, mode == GradMode::accumulate);
  }
  void qk_full_norm_sums(float* sums, const float* qkv, const float* dout, const float* wq,
                         const float* wk, const float* rstd, int N, int C, int NH,
                         int NKV) override {
    cuda::qk_full_norm_sums(stream_, sums, qkv, dout, wq, wk, rstd, N, C, NH, NKV);
  }
  void qk_full_norm_forward(float* out, float* rstd, const float* qkv, const float* sums,
                            const float* wq, const float* wk, int N, int C, int NH, int NKV, int Dq,
                            int Dk, float eps = kNormEps) override {
    cuda::qk_full_norm_forward(stream_, out, rstd, qkv, sums, wq, wk, N, C, NH, NKV, Dq, Dk, eps);
  }
  void qk_full_norm_backward(float* dqkv, float* dwq, float* dwk, const float* dout,
                             const float* qkv, const float* wq, const float* wk, const float* rstd,
                             const float* dots, int N, int C, int NH, int NKV, int Dq, int Dk,
                             GradMode mode) override {
    cuda::qk_full_norm_backward(stream_, reduce_partials_, dqkv, dwq, dwk, dout, qkv, wq, wk, rstd,
                                dots, N, C, NH, NKV, Dq, Dk, mode == GradMode::accumulate);
  }
  void gelu_forward(float* out, const float* inp, size_t n) override {
    cuda::gelu_forward(stream_, out, inp, n);
  }
  void gelu_backward(float* dinp, const float* inp, const float* dout, size_t n,
                     GradMode mode) override {
    cuda::gelu_backward(stream_, dinp, inp, dout, n, mode == GradMode::accumulate);
  }
  void activation_forward(Activation f, float* out, const float* inp, size_t n) override {
    cuda::activation_forward(stream_, f, out, inp, n);
  }
  void activation_backward(Activation f, float* dinp, const float* inp, const float* dout, size_t n,
                           GradMode mode) override {
    cuda::activation_backward(stream_, f, dinp, inp, dout, n, mode == GradMode::accumulate);
  }
  void add(float* out, const float* a, const float* b, size_t n) override {
    cuda::add(stream_, out, a, b, n);
  }
  void accumulate(float* dst, const float* src, size_t n) override {
    cuda::accumulate(stream_, dst, src, n);
  }
  void crossentropy_forward_backward(float* logits, float* losses, float* correct,
                                     const int32_t* targets, int N, int V, int Vp,
                                     float dloss_scale, float z_loss, float* log_z,
                                     float softcap) override {
    cuda::crossentropy_forward_backward(stream_, logits, losses, correct, targets, N, V, Vp,
                                        dloss_scale, z_loss, log_z, softcap);
  }
  void scale_cap_logits(float* x, size_t n, float mult, float c) override {
    cuda::scale_cap_logits(stream_, x, n, mult, c);
  }
  void clamp(float* out, const float* inp, size_t n, float c) override {
    cuda::clamp(stream_, out, inp, n, c);
  }
  void clamp_backward(float* d, const float* inp, size_t n, float c) override {
    cuda::clamp_backward(stream_, d, inp, n, c);
  }
  void dropout(float* x, const int32_t* keys, int rows, int C, uint32_t site, float p) override {
    cuda::dropout(stream_, x, keys, rows, C, site, p);
  }
  void logits_row_max(float* row_max, float* argmax, const float* logits, int N, int V,
                      int Vp) override {
    cuda::logits_row_max(stream_, row_max, argmax, logits, N, V, Vp);
  }
  void softmax_partial_sums(float* sum_exp, float* target_logit, const float* logits,
                            const float* row_max, const int32_t* targets, int N, int V,
                            int Vp) override {
    cuda::softmax_partial_sums(stream_, sum_exp, target_logit, logits, row_max, targets, N, V, Vp);
  }
  void crossentropy_backward_partial(float* logits, const float* row_max, const float* sum_exp,
                                     const int32_t* targets, int N, int V, int Vp,
                                     float dloss_scale, float z_loss, float softcap) override {
    cuda::crossentropy_backward_partial(stream_, logits, row_max, sum_exp, targets, N, V, Vp,
                                        dloss_scale, z_loss, softcap);
  }
  // Mixture of experts (cuda_moe.cu); moe_dispatch serves both precisions and waits for the
  // device (its counts and prob_sums are host memory).
  void moe_route(float* probs, int32_t* expert, float* gate, const float* logits, int N, int E,
                 int k, const MoeRouting& routing, float* lse) override {
    cuda::moe_route(stream_, probs, expert, gate, logits, N, E, k, routing, lse);
  }
  void moe_dispatch(int32_t* slot, int* counts, float* prob_sums, const int32_t* expert,
                    const float* probs, int N, int E, int k) override {
    cuda::moe_dispatch(stream_, moe_counts_, reduce_partials_, slot, counts, prob_sums, expert,
                       probs, N, E, k);
  }
  void moe_gather(float* out, const float* x, const int32_t* slot, int N, int k, int C) override {
    cuda::moe_gather(stream_, out, x, slot, N, k, C);
  }
  void moe_combine(float* out, const float* y, const int32_t* slot, const float* gate, int N, int k,
                   int C) override {
    cuda::moe_combine(stream_, out, y, slot, gate, N, k, C);
  }
  void moe_combine_backward(float* dy, float* dgate, const float* dout, const float* y,
                            const int32_t* slot, const float* gate, int N, int k, int C) override {
    cuda::moe_combine_backward(stream_, dy, dgate, dout, y, slot, gate, N, k, C);
  }
  void moe_route_backward(float* dlogits, const float* dgate, const float* probs,
                          const int32_t* expert, const float* aux, int N, int E, int k,
                          const MoeRouting& routing, const float* lse, float z_loss) override {
    cuda::moe_route_backward(stream_, dlogits, dgate, probs, expert, aux, N, E, k, routing, lse,
                             z_loss);
  }
  void moe_shared_gate(float* s, const float* logits, int N) override {
    cuda::moe_shared_gate(stream_, s, logits, N);
  }
  void moe_shared_gate_backward(float* dlogits, const float* ds, const float* s, int N) override {
    cuda::moe_shared_gate_backward(stream_, dlogits, ds, s, N);
  }
  // ---- mixed precision (bf16) ----------------------------------------------------------------
  // The fp32 ones keep Backend's two-op defaults.
  using Backend::matmul_backward_gelu;
  using Backend::matmul_gelu_forward;
  void zero(bf16_t* p, size_t n) override {
    if (n == 0) return;
    TRIAD_CUDA_CHECK(cudaMemsetAsync(p, 0, n * sizeof(bf16_t), stream_));  // +0.0 is all zeros
  }
  void convert(bf16_t* dst, const float* src, size_t n) override {
    cuda::convert(stream_, dev(dst), src, n);
  }
  void convert(float* dst, const bf16_t* src, size_t n) override {
    cuda::convert(stream_, dst, dev(src), n);
  }
  void encoder_forward(bf16_t* out, const int32_t* tokens, const bf16_t* wte, const bf16_t* wpe,
                       int B, int T, int C, const int32_t* positions) override {
    cuda::encoder_forward(stream_, dev(out), tokens, dev(wte), dev(wpe), B, T, C, positions);
  }
  void encoder_backward(float* dwte, float* dwpe, const bf16_t* dout, const int32_t* tokens, int B,
                        int T, int C, const int32_t* positions) override {
    cuda::encoder_backward(stream_, dwte, dwpe, dev(dout), tokens, B, T, C, positions);
  }
  void residual_layernorm_forward(bf16_t* sum, bf16_t* out, float* mean, float* rstd,
                                  const bf16_t* a, const bf16_t* b, const bf16_t* weight,
                                  const bf16_t* bias, int N, int C, float eps = kNormEps) override {
    cuda::residual_layernorm_forward(stream_, dev(sum), dev(out), mean, rstd, dev(a), dev(b),
                                     dev(weight), dev(bias), N, C, eps);
  }
  void layernorm_forward(bf16_t* out, float* mean, float* rstd, const bf16_t* inp,
                         const bf16_t* weight, const bf16_t* bias, int N, int C,
                         float eps = kNormEps) override {
    cuda::layernorm_forward(stream_, dev(out), mean, rstd, dev(inp), dev(weight), dev(bias), N, C,
                            eps);
  }
  void layernorm_backward(bf16_t* dinp, float* dweight, float* dbias, const bf16_t* dout,
                          const bf16_t* inp, const bf16_t* weight, const float* mean,
                          const float* rstd, int N, int C) override {
    cuda::layernorm_backward(stream_, reduce_partials_, dev(dinp), dweight, dbias, dev(dout),
                             dev(inp), dev(weight), mean, rstd, N, C);
  }
  void matmul_forward(bf16_t* out, const bf16_t* inp, const bf16_t* weight, const bf16_t* bias,
                      int N, int IC, int OC) override {
    cuda::matmul_forward(stream_, *lt_, dev(out), dev(inp), dev(weight), dev(bias), N, IC, OC);
  }
  void matmul_backward(bf16_t* dinp, float* dweight, float* dbias, const bf16_t* dout,
                       const bf16_t* inp, const bf16_t* weight, int N, int IC, int OC,
                       GradMode mode) override {
    cuda::matmul_backward(stream_, *lt_, reduce_partials_, dev(dinp), dweight, dbias, dev(dout),
                          dev(inp), dev(weight), N, IC, OC, mode == GradMode::accumulate);
  }
  void matmul_gelu_forward(bf16_t* pre, bf16_t* out, const bf16_t* inp, const bf16_t* weight,
                           const bf16_t* bias, int N, int IC, int OC) override {
    cuda::matmul_gelu_forward(stream_, *lt_, dev(pre), dev(out), dev(inp), dev(weight), dev(bias),
                              N, IC, OC);
  }
  void bias_backward(float* dbias, const bf16_t* dout, int N, int OC) override {
    cuda::column_sum_accumulate(stream_, reduce_partials_, dbias, dev(dout), N, OC);
  }
  // FP8 linear layers (cuda_fp8.cu): quantized operands in fp8_operands_, products on lt_.
  // Overloads for other operand types keep Backend's versions.
  using Backend::absmax;
  using Backend::absmax_rows;
  using Backend::matmul_backward_fp8;
  using Backend::matmul_forward_fp8;
  void absmax_rows(float* out, size_t out_stride, const bf16_t* x, size_t width,
                   const int64_t* begin, const int64_t* end, int segments) override {
    cuda::absmax_rows(stream_, out, out_stride, dev(x), width, begin, end, segments);
  }
  void absmax(float* out, const bf16_t* x, size_t n) override {
    cuda::absmax(stream_, out, dev(x), n);
  }
  void matmul_forward_fp8(bf16_t* out, const bf16_t* inp, const bf16_t* weight, const bf16_t* bias,
                          int N, int IC, int OC, const float* amax) override {
    cuda::matmul_forward_fp8(stream_, *lt_, fp8_operands_, dev(out), dev(inp), dev(weight),
                             dev(bias), N, IC, OC, amax);
  }
  void matmul_backward_fp8(bf16_t* dinp, float* dweight, float* dbias, const bf16_t* dout,
                           const bf16_t* inp, const bf16_t* weight, int N, int IC, int OC,
                           const float* amax, GradMode mode) override {
    cuda::matmul_backward_fp8(stream_, *lt_, fp8_operands_, reduce_partials_, dev(dinp), dweight,
                              dbias, dev(dout), dev(inp), dev(weight), N, IC, OC, amax,
                              mode == GradMode::accumulate);
  }
  void matmul_backward_gelu(bf16_t* dpre, bf16_t* dact, float* dweight, float* dbias,
                            const bf16_t* dout, const bf16_t* act, const bf16_t* pre,
                            const bf16_t* weight, int N, int IC, int OC, GradMode mode) override {
    if (mode == GradMode::overwrite &&
        cuda::matmul_backward_dgelu(stream_, *lt_, reduce_partials_, dev(dpre), dweight, dbias,
                                    dev(dout), dev(act), dev(pre), dev(weight), N, IC, OC))
      return;
    Backend::matmul_backward_gelu(dpre, dact, dweight, dbias, dout, act, pre, weight, N, IC, OC,
                                  mode);
  }
  void attention_forward(bf16_t* out, float* lse, const bf16_t* qkv, int B, int T, int C, int NH,
                         int NKV, const int32_t* key_begin, QueryRows rows, float scale,
                         float softcap, AttentionDropout dropout, const bf16_t* sinks) override {
    cuda::attention_forward(stream_, cublas_, attention_scratch_, dev(out), lse, dev(qkv), B, T, C,
                            NH, NKV, key_begin, rows, scale, softcap, dropout.mask(NKV),
                            dev(sinks));
  }
  void attention_backward(bf16_t* dqkv, const bf16_t* dout, const bf16_t* qkv, const bf16_t* out,
                          const float* lse, int B, int T, int C, int NH, int NKV, GradMode mode,
                          const int32_t* key_begin, QueryRows rows, float scale, float softcap,
                          AttentionDropout dropout, const bf16_t* sinks, float* dsinks) override {
    cuda::attention_backward(stream_, cublas_, attention_scratch_, dev(dqkv), dev(dout), dev(qkv),
                             dev(out), lse, B, T, C, NH, NKV, mode == GradMode::accumulate,
                             key_begin, rows, scale, softcap, dropout.mask(NKV), dev(sinks),
                             dsinks);
  }
  void attention_decode(bf16_t* out, const bf16_t* qkv, int B, int stride, int p, int n, int C,
                        int NH, int NKV, int window, float scale, float softcap,
                        const bf16_t* sinks) override {
    cuda::attention_decode(stream_, dev(out), dev(qkv), B, stride, p, n, C, NH, NKV, window, scale,
                           softcap, dev(sinks));
  }
  void swiglu_forward(bf16_t* out, const bf16_t* pre, int N, int H, GluShape glu) override {
    cuda::swiglu_forward(stream_, dev(out), dev(pre), N, H, glu);
  }
  void swiglu_backward(bf16_t* dpre, const bf16_t* pre, const bf16_t* dout, int N, int H,
                       GradMode mode, GluShape glu) override {
    cuda::swiglu_backward(stream_, dev(dpre), dev(pre), dev(dout), N, H,
                          mode == GradMode::accumulate, glu);
  }
  void geglu_forward(bf16_t* out, const bf16_t* pre, int N, int H) override {
    cuda::geglu_forward(stream_, dev(out), dev(pre), N, H);
  }
  void geglu_backward(bf16_t* dpre, const bf16_t* pre, const bf16_t* dout, int N, int H,
                      GradMode mode) override {
    cuda::geglu_backward(stream_, dev(dpre), dev(pre), dev(dout), N, H,
                         mode == GradMode::accumulate);
  }
  void rope(bf16_t* qkv, const float* table, int N, int T, int pos0, int C, int NH, int NKV,
            bool inverse, const int32_t* positions, int rot) override {
    cuda::rope(stream_, dev(qkv), table, N, T, pos0, C, NH, NKV, inverse, positions, rot);
  }
  void qk_norm_forward(bf16_t* out, float* rstd, const bf16_t* qkv, const bf16_t* wq,
                       const bf16_t* wk, int N, int C, int NH, int NKV,
                       float eps = kNormEps) override {
    cuda::qk_norm_forward(stream_, dev(out), rstd, dev(qkv), dev(wq), dev(wk), N, C, NH, NKV, eps);
  }
  void qk_norm_backward(bf16_t* dqkv, float* dwq, float* dwk, const bf16_t* dout, const bf16_t* qkv,
                        const bf16_t* wq, const bf16_t* wk, const float* rstd, int N, int C, int NH,
                        int NKV, GradMode mode) override {
    cuda::qk_norm_backward(stream_, reduce_partials_, dev(dqkv), dwq, dwk, dev(dout), dev(qkv),
                           dev(wq), dev(wk), rstd, N, C, NH, NKV, mode == GradMode::accumulate);
  }
  void qk_full_norm_sums(float* sums, const bf16_t* qkv, const bf16_t* dout, const bf16_t* wq,
                         const bf16_t* wk, const float* rstd, int N, int C, int NH,
                         int NKV) override {
    cuda::qk_full_norm_sums(stream_, sums, dev(qkv), dev(dout), dev(wq), dev(wk), rstd, N, C, NH,
                            NKV);
  }
  void qk_full_norm_forward(bf16_t* out, float* rstd, const bf16_t* qkv, const float* sums,
                            const bf16_t* wq, const bf16_t* wk, int N, int C, int NH, int NKV,
                            int Dq, int Dk, float eps = kNormEps) override {
    cuda::qk_full_norm_forward(stream_, dev(out), rstd, dev(qkv), sums, dev(wq), dev(wk), N, C, NH,
                               NKV, Dq, Dk, eps);
  }
  void qk_full_norm_backward(bf16_t* dqkv, float* dwq, float* dwk, const bf16_t* dout,
                             const bf16_t* qkv, const bf16_t* wq, const bf16_t* wk,
                             const float* rstd, const float* dots, int N, int C, int NH, int NKV,
                             int Dq, int Dk, GradMode mode) override {
    cuda::qk_full_norm_backward(stream_, reduce_partials_, dev(dqkv), dwq, dwk, dev(dout), dev(qkv),
                                dev(wq), dev(wk), rstd, dots, N, C, NH, NKV, Dq, Dk,
                                mode == GradMode::accumulate);
  }
  void gelu_forward(bf16_t* out, const bf16_t* inp, size_t n) override {
    cuda::gelu_forward(stream_, dev(out), dev(inp), n);
  }
  void gelu_backward(bf16_t* dinp, const bf16_t* inp, const bf16_t* dout, size_t n,
                     GradMode mode) override {
    cuda::gelu_backward(stream_, dev(dinp), dev(inp), dev(dout), n, mode == GradMode::accumulate);
  }
  void activation_forward(Activation f, bf16_t* out, const bf16_t* inp, size_t n) override {
    cuda::activation_forward(stream_, f, dev(out), dev(inp), n);
  }
  void activation_backward(Activation f, bf16_t* dinp, const bf16_t* inp, const bf16_t* dout,
                           size_t n, GradMode mode) override {
    cuda::activation_backward(stream_, f, dev(dinp), dev(inp), dev(dout), n,
                              mode == GradMode::accumulate);
  }
  void add(bf16_t* out, const bf16_t* a, const bf16_t* b, size_t n) override {
    cuda::add(stream_, dev(out), dev(a), dev(b), n);
  }
  void accumulate(bf16_t* dst, const bf16_t* src, size_t n) override {
    cuda::accumulate(stream_, dev(dst), dev(src), n);
  }
  void crossentropy_forward_backward(bf16_t* logits, float* losses, float* correct,
                                     const int32_t* targets, int N, int V, int Vp,
                                     float dloss_scale, float z_loss, float* log_z,
                                     float softcap) override {
    cuda::crossentropy_forward_backward(stream_, dev(logits), losses, correct, targets, N, V, Vp,
                                        dloss_scale, z_loss, log_z, softcap);
  }
  void scale_cap_logits(bf16_t* x, size_t n, float mult, float c) override {
    cuda::scale_cap_logits(stream_, dev(x), n, mult, c);
  }
  void clamp(bf16_t* out, const bf16_t* inp, size_t n, float c) override {
    cuda::clamp(stream_, dev(out), dev(inp), n, c);
  }
  void clamp_backward(bf16_t* d, const bf16_t* inp, size_t n, float c) override {
    cuda::clamp_backward(stream_, dev(d), dev(inp), n, c);
  }
  void dropout(bf16_t* x, const int32_t* keys, int rows, int C, uint32_t site, float p) override {
    cuda::dropout(stream_, dev(x), keys, rows, C, site, p);
  }
  void logits_row_max(float* row_max, float* argmax, const bf16_t* logits, int N, int V,
                      int Vp) override {
    cuda::logits_row_max(stream_, row_max, argmax, dev(logits), N, V, Vp);
  }
  void softmax_partial_sums(float* sum_exp, float* target_logit, const bf16_t* logits,
                            const float* row_max, const int32_t* targets, int N, int V,
                            int Vp) override {
    cuda::softmax_partial_sums(stream_, sum_exp, target_logit, dev(logits), row_max, targets, N, V,
                               Vp);
  }
  void crossentropy_backward_partial(bf16_t* logits, const float* row_max, const float* sum_exp,
                                     const int32_t* targets, int N, int V, int Vp,
                                     float dloss_scale, float z_loss, float softcap) override {
    cuda::crossentropy_backward_partial(stream_, dev(logits), row_max, sum_exp, targets, N, V, Vp,
                                        dloss_scale, z_loss, softcap);
  }
  void moe_route(float* probs, int32_t* expert, float* gate, const bf16_t* logits, int N, int E,
                 int k, const MoeRouting& routing, float* lse) override {
    cuda::moe_route(stream_, probs, expert, gate, dev(logits), N, E, k, routing, lse);
  }
  void moe_gather(bf16_t* out, const bf16_t* x, const int32_t* slot, int N, int k, int C) override {
    cuda::moe_gather(stream_, dev(out), dev(x), slot, N, k, C);
  }
  void moe_combine(bf16_t* out, const bf16_t* y, const int32_t* slot, const float* gate, int N,
                   int k, int C) override {
    cuda::moe_combine(stream_, dev(out), dev(y), slot, gate, N, k, C);
  }
  void moe_combine_backward(bf16_t* dy, float* dgate, const bf16_t* dout, const bf16_t* y,
                            const int32_t* slot, const float* gate, int N, int k, int C) override {
    cuda::moe_combine_backward(stream_, dev(dy), dgate, dev(dout), dev(y), slot, gate, N, k, C);
  }
  void moe_route_backward(bf16_t* dlogits, const float* dgate, const float* probs,
                          const int32_t* expert, const float* aux, int N, int E, int k,
                          const MoeRouting& routing, const float* lse, float z_loss) override {
    cuda::moe_route_backward(stream_, dev(dlogits), dgate, probs, expert, aux, N, E, k, routing,
                             lse, z_loss);
  }
  void moe_shared_gate(float* s, const bf16_t* logits, int N) override {
    cuda::moe_shared_gate(stream_, s, dev(logits), N);
  }
  void moe_shared_gate_backward(bf16_t* dlogits, const float* ds, const float* s, int N) override {
    cuda::moe_shared_gate_backward(stream_, dev(dlogits), ds, s, N);
  }

  // ---- reductions and optimizer updates ----------------------------------------------------
  double sum_squares(const float* x, size_t n) override {
    return cuda::sum_squares(stream_, partials_, x, n);
  }
  double sum_squares(const bf16_t* x, size_t n) override {
    return cuda::sum_squares(stream_, partials_, dev(x), n);
  }
  void scale(float* x, float s, size_t n) override { cuda::scale(stream_, x, s, n); }
  void ema_update(float* ema, const float* p, size_t n, float w) override {
    cuda::ema_update(stream_, ema, p, n, w);
  }
  void adamw_update(float* p, const float* g, float* m, float* v, size_t n, float lr, float beta1,
                    float beta2, float eps, float wd, float bc1, float bc2, bf16_t* copy,
                    float grad_scale) override {
    cuda::adamw_update(stream_, p, g, m, v, n, lr, beta1, beta2, eps, wd, bc1, bc2, dev(copy),
                       grad_scale);
  }
  void adamw_update_runs(float* p, const float* g, float* m, float* v, const UpdateRun* runs,
                         size_t nruns, float lr, float beta1, float beta2, float eps, float bc1,
                         float bc2, bf16_t* copy, float grad_scale) override {
    cuda::adamw_update_runs(stream_, runs_host_, runs_device_, p, g, m, v, runs, nruns, lr, beta1,
                            beta2, eps, bc1, bc2, dev(copy), grad_scale);
  }
  void sgd_update(float* p, const float* g, float* buf, size_t n, float lr, float momentum,
                  float wd, bf16_t* copy, float grad_scale) override {
    cuda::sgd_update(stream_, p, g, buf, n, lr, momentum, wd, dev(copy), grad_scale);
  }
  void lion_update(float* p, const float* g, float* m, size_t n, float lr, float beta1, float beta2,
                   float wd, bf16_t* copy, float grad_scale) override {
    cuda::lion_update(stream_, p, g, m, n, lr, beta1, beta2, wd, dev(copy), grad_scale);
  }
  void muon_momentum(float* buf, float* u, const float* g, size_t n, float mu, bool nesterov,
                     float grad_scale) override {
    cuda::muon_momentum(stream_, buf, u, g, n, mu, nesterov, grad_scale);
  }
  void muon_apply(float* p, const float* o, size_t n, float lr, float wd, float scale,
                  bf16_t* copy) override {
    cuda::muon_apply(stream_, p, o, n, lr, wd, scale, dev(copy));
  }

  cudaStream_t stream() const { return stream_; }

 private:
  // Zero-filled device memory (cudaMalloc aligns to 256 bytes, above the 64 the interface asks).
  void* alloc_bytes(size_t requested) {
    // A valid, distinct pointer even for empty buffers.
    const size_t bytes = requested == 0 ? 256 : requested;
    void* p = nullptr;
    const cudaError_t err = cudaMalloc(&p, bytes);
    if (err != cudaSuccess) {
      cudaGetLastError();
      size_t free_b = 0, total_b = 0;
      cudaMemGetInfo(&free_b, &total_b);
      fail("cuda backend: cannot allocate ", bytes, " bytes on device ", device_, " (",
           cudaGetErrorString(err), "; ", free_b >> 20, " MiB free of ", total_b >> 20, " MiB)");
    }
    TRIAD_CUDA_CHECK(cudaMemsetAsync(p, 0, bytes, stream_));
    TRIAD_CUDA_CHECK(cudaStreamSynchronize(stream_));
    ledger_.add(p, requested);
    return p;
  }

  void free_bytes(void* p) {
    if (p == nullptr) return;
    ledger_.remove(p);
    // Work queued on the stream may still use p.
    TRIAD_CUDA_CHECK(cudaStreamSynchronize(stream_));
    TRIAD_CUDA_CHECK(cudaFree(p));
  }

  int device_ = 0;
  cudaStream_t stream_ = nullptr;
  cublasHandle_t cublas_ = nullptr;
  double* partials_ = nullptr;  // sum_squares: kSumSquaresPartials partial sums + the result
  std::unique_ptr<cuda::LtMatmul> lt_;  // the bf16 products
  // attention: the fp32 path's head copies (q, k, v, o, dq, dk, dv), the flash backward's
  // workspace, the bf16 fallback's widened copies and grouped-query attention's expanded rows
  // (each grown on demand, in practice once, at the first step)
  cuda::AttentionScratch attention_scratch_;
  // column sums' per-slice partials (bias, LayerNorm and qk-norm weight gradients)
  cuda::DeviceScratch reduce_partials_;
  // the FP8 products' quantized operands and their inverse scales (cuda_fp8.cu)
  cuda::DeviceScratch fp8_operands_;
  // moe_dispatch's device counts and probability sums (E ints, E floats), copied to the host
  cuda::DeviceScratch moe_counts_;
  std::vector<UpdateRun> runs_host_;  // the optimizer's run table as uploaded to runs_device_
  cuda::DeviceScratch runs_device_;
  AllocationLedger ledger_;  // the buffers alloc* handed out
};

}  // namespace

cudaStream_t cuda::backend_stream(Backend& be) {
  auto* cuda = dynamic_cast<CudaBackend*>(&be);
  TRIAD_CHECK(cuda != nullptr, "internal error: the ", be.name(), " backend has no CUDA stream");
  return cuda->stream();
}

bool cuda_device_available() {
  int count = 0;
  return device_count(&count) == cudaSuccess && count > 0;
}

size_t cuda_device_memory_in_use() {
  size_t free_b = 0, total_b = 0;
  if (cudaMemGetInfo(&free_b, &total_b) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return total_b - free_b;
}

std::string cuda_device_description() {
  int count = 0;
  const cudaError_t err = device_count(&count);
  if (err != cudaSuccess || count == 0) {
    return std::string("no CUDA device (") +
           (err != cudaSuccess ? cudaGetErrorString(err) : "no device found") + ")";
  }
  int device = 0;
  cudaGetDevice(&device);
  cudaDeviceProp prop{};
  if (cudaGetDeviceProperties(&prop, device) != cudaSuccess) {
    cudaGetLastError();
    return "CUDA device " + std::to_string(device) + " (properties unavailable)";
  }
  int driver = 0, runtime = 0;
  cudaDriverGetVersion(&driver);
  cudaRuntimeGetVersion(&runtime);
  char buf[512];
  std::snprintf(buf, sizeof buf,
                "%s, sm_%d%d, %d SMs, %.1f GiB, device %d of %d, driver %d.%d, runtime %d.%d",
                prop.name, prop.major, prop.minor, prop.multiProcessorCount,
                double(prop.totalGlobalMem) / double(1ull << 30), device, count, driver / 1000,
                (driver % 1000) / 10, runtime / 1000, (runtime % 1000) / 10);
  const std::string blas = cublas_version();
  return buf + (blas.empty() ? ", no cuBLAS (" + cublas_status() + ")" : ", cuBLAS " + blas);
}

std::unique_ptr<Backend> make_cuda_backend(int device) {
  int count = 0;
  const cudaError_t err = device_count(&count);
  TRIAD_CHECK(err == cudaSuccess && count > 0, "cuda backend: no CUDA device available (",
              err != cudaSuccess ? cudaGetErrorString(err) : "no device found",
              "); use run.backend = cpu");
  TRIAD_CHECK(device >= 0 && device < count, "cuda backend: device ", device,
              " does not exist (this machine has ", count, " CUDA device(s))");
  return std::make_unique<CudaBackend>(device);
}

}  // namespace triad
