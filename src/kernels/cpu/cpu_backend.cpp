// CpuBackend: the fp32 reference implementation of Backend (and the literal form of its bf16
// contract, cpu_bf16.cpp). Memory is ordinary host memory;
// every op forwards to a kernel in cpu_ops.h (one file per concern next to this one).
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>

#include "cpu_ops.h"
#include "triad/core/error.h"
#include "triad/kernels/allocation_ledger.h"
#include "triad/kernels/backend.h"

namespace triad {
namespace {

// 64 bytes: one cache line and one AVX-512 register, so no vector load straddles two lines.
constexpr size_t kAlignment = 64;

void check_query_rows(QueryRows rows, int T) {
  TRIAD_CHECK(rows.first >= 0 && rows.count >= 0 && rows.first + rows.count <= T,
              "cpu attention: query rows ", rows.first, " + ", rows.count,
              " outside a sequence of ", T, " rows");
}

class CpuBackend final : public Backend {
 public:
  CpuBackend() { cpu::configure_blas(); }

  const char* name() const override { return "cpu"; }

  // ---- memory ------------------------------------------------------------------------------
  float* alloc(size_t n_floats) override {
    // aligned_alloc wants a size that is a multiple of the alignment (and non-zero).
    size_t bytes = n_floats * sizeof(float);
    bytes = (bytes + kAlignment - 1) / kAlignment * kAlignment;
    if (bytes == 0) bytes = kAlignment;
    void* p = std::aligned_alloc(kAlignment, bytes);
    TRIAD_CHECK(p != nullptr, "cpu backend: out of memory allocating ", bytes, " bytes");
    std::memset(p, 0, bytes);
    ledger_.add(p, n_floats * sizeof(float));
    return static_cast<float*>(p);
  }
  void free(float* p) override {
    ledger_.remove(p);
    std::free(p);
  }
  size_t allocated_bytes() const override { return ledger_.live_bytes(); }
  int32_t* alloc_ints(size_t n) override {
    auto* p = static_cast<int32_t*>(std::calloc(std::max<size_t>(n, 1), sizeof(int32_t)));
    TRIAD_CHECK(p != nullptr, "cpu backend: out of memory allocating ", n, " token ids");
    ledger_.add(p, n * sizeof(int32_t));
    return p;
  }
  void free_ints(int32_t* p) override {
    ledger_.remove(p);
    std::free(p);
  }
  void zero(float* p, size_t n) override { std::memset(p, 0, n * sizeof(float)); }
  void copy(float* dst, const float* src, size_t n) override {
    // In chunks over the OpenMP threads: one thread alone does not reach the memory bandwidth.
    constexpr size_t kChunk = size_t(1) << 18;
    const int64_t chunks = int64_t((n + kChunk - 1) / kChunk);
#pragma omp parallel for schedule(static)
    for (int64_t c = 0; c < chunks; ++c) {
      const size_t lo = size_t(c) * kChunk, len = std::min(kChunk, n - lo);
      std::memcpy(dst + lo, src + lo, len * sizeof(float));
    }
  }
  void copy_to_host(float* host, const float* dev, size_t n) override {
    if (host != dev) std::memcpy(host, dev, n * sizeof(float));
  }
  void copy_from_host(float* dev, const float* host, size_t n) override {
    if (host != dev) std::memcpy(dev, host, n * sizeof(float));
  }
  void synchronize() override {}  // every op has finished when it returns

  // ---- ops ---------------------------------------------------------------------------------
  void encoder_forward(float* out, const int32_t* tokens, const float* wte, const float* wpe, int B,
                       int T, int C, const int32_t* positions) override {
    cpu::encoder_forward(out, tokens, wte, wpe, B, T, C, positions);
  }
  void encoder_backward(float* dwte, float* dwpe, const float* dout, const int32_t* tokens, int B,
                        int T, int C, const int32_t* positions) override {
    cpu::encoder_backward(dwte, dwpe, dout, tokens, B, T, C, positions);
  }
  void layernorm_forward(float* out, float* mean, float* rstd, const float* inp,
                         const float* weight, const float* bias, int N, int C,
                         float eps = kNormEps) override {
    cpu::layernorm_forward(out, mean, rstd, inp, weight, bias, N, C, eps);
  }
  void layernorm_backward(float* dinp, float* dweight, float* dbias, const float* dout,
                          const float* inp, const float* weight, const float* mean,
                          const float* rstd, int N, int C) override {
    cpu::layernorm_backward(dinp, dweight, dbias, dout, inp, weight, mean, rstd, N, C);
  }
  void matmul_forward(float* out, const float* inp, const float* weight, const float* bias, int N,
                      int IC, int OC) override {
    cpu::matmul_forward(out, inp, weight, bias, N, IC, OC);
  }
  void matmul_backward(float* dinp, float* dweight, float* dbias, const float* dout,
                       const float* inp, const float* weight, int N, int IC, int OC,
                       GradMode mode) override {
    if (mode == GradMode::overwrite && dinp != nullptr) zero(dinp, size_t(N) * IC);
    cpu::matmul_backward(dinp, dweight, dbias, dout, inp, weight, N, IC, OC);
  }
  void bias_backward(float* dbias, const float* dout, int N, int OC) override {
    cpu::bias_backward(dbias, dout, N, OC);
  }
  void absmax(float* out, const float* x, size_t n) override { cpu::absmax(out, x, n); }
  void matmul_forward_fp8(float* out, const float* inp, const float* weight, const float* bias,
                          int N, int IC, int OC, const float* amax) override {
    cpu::matmul_forward_fp8(out, inp, weight, bias, N, IC, OC, amax);
  }
  void matmul_backward_fp8(float* dinp, float* dweight, float* dbias, const float* dout,
                           const float* inp, const float* weight, int N, int IC, int OC,
                           const float* amax, GradMode mode) override {
    if (mode == GradMode::overwrite && dinp != nullptr) zero(dinp, size_t(N) * IC);
    cpu::matmul_backward_fp8(dinp, dweight, dbias, dout, inp, weight, N, IC, OC, amax);
  }
  void attention_forward(float* out, float* att, const float* qkv, int B, int T, int C, int NH,
                         int NKV, const int32_t* key_begin, QueryRows rows, float scale,
                         float softcap, AttentionDropout dropout, const float* sinks) override {
    check_query_rows(rows, T);
    cpu::attention_forward(out, att, qkv, B, T, C, NH, NKV, key_begin, rows, scale, softcap,
                           dropout, sinks);
  }
  void attention_backward(float* dqkv, float* scratch, const float* dout, const float* qkv,
                          const float* att, int B, int T, int C, int NH, int NKV, GradMode mode,
                          const int32_t* key_begin, QueryRows rows, float scale, float softcap,
                          AttentionDropout dropout, const float* sinks, float* dsinks) override {
    check_query_rows(rows, T);
    check_sinks_gradient("cpu", sinks, dsinks);
    if (mode == GradMode::overwrite) zero(dqkv, size_t(B) * T * qkv_width(C, NH, NKV));
    cpu::attention_backward(dqkv, scratch, dout, qkv, att, B, T, C, NH, NKV, key_begin, rows, scale,
                            softcap, dropout, dsinks);
  }
  void attention_decode(float* out, const float* qkv, int B, int stride, int p, int n, int C,
                        int NH, int NKV, int window, float scale, float softcap,
                        const float* sinks) override {
    cpu::attention_decode(out, qkv, B, stride, p, n, C, NH, NKV, window, scale, softcap, sinks);
  }
  void swiglu_forward(float* out, const float* pre, int N, int H, GluShape glu) override {
    cpu::swiglu_forward(out, pre, N, H, glu);
  }
  void geglu_forward(float* out, const float* pre, int N, int H) override {
    cpu::geglu_forward(out, pre, N, H);
  }
  void geglu_backward(float* dpre, const float* pre, const float* dout, int N, int H,
                      GradMode mode) override {
    cpu::geglu_backward(dpre, pre, dout, N, H, mode == GradMode::accumulate);
  }
  void swiglu_backward(float* dpre, const float* pre, const float* dout, int N, int H,
                       GradMode mode, GluShape glu) override {
    cpu::swiglu_backward(dpre, pre, dout, N, H, mode == GradMode::accumulate, glu);
  }
  void rope(float* qkv, const float* table, int N, int T, int pos0, int C, int NH, int NKV,
            bool inverse, const int32_t* positions, int rot) override {
    cpu::rope(qkv, table, N, T, pos0, C, NH, NKV, inverse, positions, rot);
  }
  void qk_norm_forward(float* out, float* rstd, const float* qkv, const float* wq, const float* wk,
                       int N, int C, int NH, int NKV, float eps = kNormEps) override {
    cpu::qk_norm_forward(out, rstd, qkv, wq, wk, N, C, NH, NKV, eps);
  }
  void qk_norm_backward(float* dqkv, float* dwq, float* dwk, const float* dout, const float* qkv,
                        const float* wq, const float* wk, const float* rstd, int N, int C, int NH,
                        int NKV, GradMode mode) override {
    cpu::qk_norm_backward(dqkv, dwq, dwk, dout, qkv, wq, wk, rstd, N, C, NH, NKV,
                          mode == GradMode::accumulate);
  }
  void qk_full_norm_sums(float* sums, const float* qkv, const float* dout, const float* wq,
                         const float* wk, const float* rstd, int N, int C, int NH,
                         int NKV) override {
    cpu::qk_full_norm_sums(sums, qkv, dout, wq, wk, rstd, N, C, NH, NKV);
  }
  void qk_full_norm_forward(float* out, float* rstd, const float* qkv, const float* sums,
                            const float* wq, const float* wk, int N, int C, int NH, int NKV, int Dq,
                            int Dk, float eps = kNormEps) override {
    cpu::qk_full_norm_forward(out, rstd, qkv, sums, wq, wk, N, C, NH, NKV, Dq, Dk, eps);
  }
  void qk_full_norm_backward(float* dqkv, float* dwq, float* dwk, const float* dout,
                             const float* qkv, const float* wq, const float* wk, const float* rstd,
                             const float* dots, int N, int C, int NH, int NKV, int Dq, int Dk,
                             GradMode mode) override {
    cpu::qk_full_norm_backward(dqkv, dwq, dwk, dout, qkv, wq, wk, rstd, dots, N, C, NH, NKV, Dq, Dk,
                               mode == GradMode::accumulate);
  }
  void gelu_forward(float* out, const float* inp, size_t n) override {
    cpu::gelu_forward(out, inp, n);
  }
  void gelu_backward(float* dinp, const float* inp, const float* dout, size_t n,
                     GradMode mode) override {
    if (mode == GradMode::overwrite) zero(dinp, n);
    cpu::gelu_backward(dinp, inp, dout, n);
  }
  void activation_forward(Activation f, float* out, const float* inp, size_t n) override {
    cpu::activation_forward(f, out, inp, n);
  }
  void activation_backward(Activation f, float* dinp, const float* inp, const float* dout, size_t n,
                           GradMode mode) override {
    if (mode == GradMode::overwrite) zero(dinp, n);
    cpu::activation_backward(f, dinp, inp, dout, n);
  }
  void add(float* out, const float* a, const float* b, size_t n) override {
    cpu::add(out, a, b, n);
  }
  void accumulate(float* dst, const float* src, size_t n) override { cpu::accumulate(dst, src, n); }
  void crossentropy_forward_backward(float* logits, float* losses, float* correct,
                                     const int32_t* targets, int N, int V, int Vp,
                                     float dloss_scale, float z_loss, float* log_z,
                                     float softcap) override {
    cpu::crossentropy_forward_backward(logits, losses, correct, targets, N, V, Vp, dloss_scale,
                                       z_loss, log_z, softcap);
  }
  void scale_cap_logits(float* x, size_t n, float mult, float c) override {
    cpu::scale_cap_logits(x, n, mult, c);
  }
  void clamp(float* out, const float* inp, size_t n, float c) override {
    cpu::clamp(out, inp, n, c);
  }
  void clamp_backward(float* d, const float* inp, size_t n, float c) override {
    cpu::clamp_backward(d, inp, n, c);
  }
  void dropout(float* x, const int32_t* keys, int rows, int C, uint32_t site, float p) override {
    cpu::dropout(x, keys, rows, C, site, p);
  }
  void logits_row_max(float* row_max, float* argmax, const float* logits, int N, int V,
                      int Vp) override {
    cpu::logits_row_max(row_max, argmax, logits, N, V, Vp);
  }
  void softmax_partial_sums(float* sum_exp, float* target_logit, const float* logits,
                            const float* row_max, const int32_t* targets, int N, int V,
                            int Vp) override {
    cpu::softmax_partial_sums(sum_exp, target_logit, logits, row_max, targets, N, V, Vp);
  }
  void crossentropy_backward_partial(float* logits, const float* row_max, const float* sum_exp,
                                     const int32_t* targets, int N, int V, int Vp,
                                     float dloss_scale, float z_loss, float softcap) override {
    cpu::crossentropy_backward_partial(logits, row_max, sum_exp, targets, N, V, Vp, dloss_scale,
                                       z_loss, softcap);
  }
  double sum_squares(const float* x, size_t n) override { return cpu::sum_squares(x, n); }
  double sum_squares(const bf16_t* x, size_t n) override { return cpu::sum_squares(x, n); }
  void scale(float* x, float s, size_t n) override { cpu::scale(x, s, n); }
  void ema_update(float* ema, const float* p, size_t n, float w) override {
    cpu::ema_update(ema, p, n, w);
  }
  void adamw_update(float* p, const float* g, float* m, float* v, size_t n, float lr, float beta1,
                    float beta2, float eps, float wd, float bc1, float bc2, bf16_t* copy,
                    float grad_scale) override {
    cpu::adamw_update(p, g, m, v, n, lr, beta1, beta2, eps, wd, bc1, bc2, copy, grad_scale);
  }
  void sgd_update(float* p, const float* g, float* buf, size_t n, float lr, float momentum,
                  float wd, bf16_t* copy, float grad_scale) override {
    cpu::sgd_update(p, g, buf, n, lr, momentum, wd, copy, grad_scale);
  }
  void lion_update(float* p, const float* g, float* m, size_t n, float lr, float beta1, float beta2,
                   float wd, bf16_t* copy, float grad_scale) override {
    cpu::lion_update(p, g, m, n, lr, beta1, beta2, wd, copy, grad_scale);
  }
  void muon_momentum(float* buf, float* u, const float* g, size_t n, float mu, bool nesterov,
                     float grad_scale) override {
    cpu::muon_momentum(buf, u, g, n, mu, nesterov, grad_scale);
  }
  void muon_apply(float* p, const float* o, size_t n, float lr, float wd, float scale,
                  bf16_t* copy) override {
    cpu::muon_apply(p, o, n, lr, wd, scale, copy);
  }

  // ---- mixed precision (cpu_bf16.cpp) -------------------------------------------------------
  // (GradMode::overwrite: here a zeroed input gradient, then the accumulating kernel.)
  void zero(bf16_t* p, size_t n) override { cpu::zero_bf16(p, n); }
  void convert(bf16_t* dst, const float* src, size_t n) override { cpu::to_bf16(dst, src, n); }
  void convert(float* dst, const bf16_t* src, size_t n) override { cpu::to_fp32(dst, src, n); }
  void encoder_forward(bf16_t* out, const int32_t* tokens, const bf16_t* wte, const bf16_t* wpe,
                       int B, int T, int C, const int32_t* positions) override {
    cpu::encoder_forward(out, tokens, wte, wpe, B, T, C, positions);
  }
  void encoder_backward(float* dwte, float* dwpe, const bf16_t* dout, const int32_t* tokens, int B,
                        int T, int C, const int32_t* positions) override {
    cpu::encoder_backward(dwte, dwpe, dout, tokens, B, T, C, positions);
  }
  void layernorm_forward(bf16_t* out, float* mean, float* rstd, const bf16_t* inp,
                         const bf16_t* weight, const bf16_t* bias, int N, int C,
                         float eps = kNormEps) override {
    cpu::layernorm_forward(out, mean, rstd, inp, weight, bias, N, C, eps);
  }
  void layernorm_backward(bf16_t* dinp, float* dweight, float* dbias, const bf16_t* dout,
                          const bf16_t* inp, const bf16_t* weight, const float* mean,
                          const float* rstd, int N, int C) override {
    cpu::layernorm_backward(dinp, dweight, dbias, dout, inp, weight, mean, rstd, N, C);
  }
  void matmul_forward(bf16_t* out, const bf16_t* inp, const bf16_t* weight, const bf16_t* bias,
                      int N, int IC, int OC) override {
    cpu::matmul_forward(out, inp, weight, bias, N, IC, OC);
  }
  void matmul_backward(bf16_t* dinp, float* dweight, float* dbias, const bf16_t* dout,
                       const bf16_t* inp, const bf16_t* weight, int N, int IC, int OC,
                       GradMode mode) override {
    if (mode == GradMode::overwrite && dinp != nullptr) zero(dinp, size_t(N) * IC);
    cpu::matmul_backward(dinp, dweight, dbias, dout, inp, weight, N, IC, OC);
  }
  void bias_backward(float* dbias, const bf16_t* dout, int N, int OC) override {
    cpu::bias_backward(dbias, dout, N, OC);
  }
  void absmax(float* out, const bf16_t* x, size_t n) override { cpu::absmax(out, x, n); }
  void matmul_forward_fp8(bf16_t* out, const bf16_t* inp, const bf16_t* weight, const bf16_t* bias,
                          int N, int IC, int OC, const float* amax) override {
    cpu::matmul_forward_fp8(out, inp, weight, bias, N, IC, OC, amax);
  }
  void matmul_backward_fp8(bf16_t* dinp, float* dweight, float* dbias, const bf16_t* dout,
                           const bf16_t* inp, const bf16_t* weight, int N, int IC, int OC,
                           const float* amax, GradMode mode) override {
    if (mode == GradMode::overwrite && dinp != nullptr) zero(dinp, size_t(N) * IC);
    cpu::matmul_backward_fp8(dinp, dweight, dbias, dout, inp, weight, N, IC, OC, amax);
  }
  void attention_forward(bf16_t* out, float* lse, const bf16_t* qkv, int B, int T, int C, int NH,
                         int NKV, const int32_t* key_begin, QueryRows rows, float scale,
                         float softcap, AttentionDropout dropout, const bf16_t* sinks) override {
    check_query_rows(rows, T);
    cpu::attention_forward(out, lse, qkv, B, T, C, NH, NKV, key_begin, rows, scale, softcap,
                           dropout, sinks);
  }
  void attention_backward(bf16_t* dqkv, const bf16_t* dout, const bf16_t* qkv, const bf16_t* out,
                          const float* lse, int B, int T, int C, int NH, int NKV, GradMode mode,
                          const int32_t* key_begin, QueryRows rows, float scale, float softcap,
                          AttentionDropout dropout, const bf16_t* sinks, float* dsinks) override {
    check_query_rows(rows, T);
    check_sinks_gradient("cpu", sinks, dsinks);
    if (mode == GradMode::overwrite) zero(dqkv, size_t(B) * T * qkv_width(C, NH, NKV));
    cpu::attention_backward(dqkv, dout, qkv, out, lse, B, T, C, NH, NKV, key_begin, rows, scale,
                            softcap, dropout, sinks, dsinks);
  }
  void attention_decode(bf16_t* out, const bf16_t* qkv, int B, int stride, int p, int n, int C,
                        int NH, int NKV, int window, float scale, float softcap,
                        const bf16_t* sinks) override {
    cpu::attention_decode(out, qkv, B, stride, p, n, C, NH, NKV, window, scale, softcap, sinks);
  }
  void swiglu_forward(bf16_t* out, const bf16_t* pre, int N, int H, GluShape glu) override {
    cpu::swiglu_forward(out, pre, N, H, glu);
  }
  void geglu_forward(bf16_t* out, const bf16_t* pre, int N, int H) override {
    cpu::geglu_forward(out, pre, N, H);
  }
  void geglu_backward(bf16_t* dpre, const bf16_t* pre, const bf16_t* dout, int N, int H,
                      GradMode mode) override {
    cpu::geglu_backward(dpre, pre, dout, N, H, mode == GradMode::accumulate);
  }
  void swiglu_backward(bf16_t* dpre, const bf16_t* pre, const bf16_t* dout, int N, int H,
                       GradMode mode, GluShape glu) override {
    cpu::swiglu_backward(dpre, pre, dout, N, H, mode == GradMode::accumulate, glu);
  }
  void rope(bf16_t* qkv, const float* table, int N, int T, int pos0, int C, int NH, int NKV,
            bool inverse, const int32_t* positions, int rot) override {
    cpu::rope(qkv, table, N, T, pos0, C, NH, NKV, inverse, positions, rot);
  }
  void qk_norm_forward(bf16_t* out, float* rstd, const bf16_t* qkv, const bf16_t* wq,
                       const bf16_t* wk, int N, int C, int NH, int NKV,
                       float eps = kNormEps) override {
    cpu::qk_norm_forward(out, rstd, qkv, wq, wk, N, C, NH, NKV, eps);
  }
  void qk_norm_backward(bf16_t* dqkv, float* dwq, float* dwk, const bf16_t* dout, const bf16_t* qkv,
                        const bf16_t* wq, const bf16_t* wk, const float* rstd, int N, int C, int NH,
                        int NKV, GradMode mode) override {
    cpu::qk_norm_backward(dqkv, dwq, dwk, dout, qkv, wq, wk, rstd, N, C, NH, NKV,
                          mode == GradMode::accumulate);
  }
  void qk_full_norm_sums(float* sums, const bf16_t* qkv, const bf16_t* dout, const bf16_t* wq,
                         const bf16_t* wk, const float* rstd, int N, int C, int NH,
                         int NKV) override {
    cpu::qk_full_norm_sums(sums, qkv, dout, wq, wk, rstd, N, C, NH, NKV);
  }
  void qk_full_norm_forward(bf16_t* out, float* rstd, const bf16_t* qkv, const float* sums,
                            const bf16_t* wq, const bf16_t* wk, int N, int C, int NH, int NKV,
                            int Dq, int Dk, float eps = kNormEps) override {
    cpu::qk_full_norm_forward(out, rstd, qkv, sums, wq, wk, N, C, NH, NKV, Dq, Dk, eps);
  }
  void qk_full_norm_backward(bf16_t* dqkv, float* dwq, float* dwk, const bf16_t* dout,
                             const bf16_t* qkv, const bf16_t* wq, const bf16_t* wk,
                             const float* rstd, const float* dots, int N, int C, int NH, int NKV,
                             int Dq, int Dk, GradMode mode) override {
    cpu::qk_full_norm_backward(dqkv, dwq, dwk, dout, qkv, wq, wk, rstd, dots, N, C, NH, NKV, Dq, Dk,
                               mode == GradMode::accumulate);
  }
  void gelu_forward(bf16_t* out, const bf16_t* inp, size_t n) override {
    cpu::gelu_forward(out, inp, n);
  }
  void gelu_backward(bf16_t* dinp, const bf16_t* inp, const bf16_t* dout, size_t n,
                     GradMode mode) override {
    if (mode == GradMode::overwrite) zero(dinp, n);
    cpu::gelu_backward(dinp, inp, dout, n);
  }
  void activation_forward(Activation f, bf16_t* out, const bf16_t* inp, size_t n) override {
    cpu::activation_forward(f, out, inp, n);
  }
  void activation_backward(Activation f, bf16_t* dinp, const bf16_t* inp, const bf16_t* dout,
                           size_t n, GradMode mode) override {
    if (mode == GradMode::overwrite) zero(dinp, n);
    cpu::activation_backward(f, dinp, inp, dout, n);
  }
  void add(bf16_t* out, const bf16_t* a, const bf16_t* b, size_t n) override {
    cpu::add(out, a, b, n);
  }
  void accumulate(bf16_t* dst, const bf16_t* src, size_t n) override {
    cpu::accumulate(dst, src, n);
  }
  void crossentropy_forward_backward(bf16_t* logits, float* losses, float* correct,
                                     const int32_t* targets, int N, int V, int Vp,
                                     float dloss_scale, float z_loss, float* log_z,
                                     float softcap) override {
    cpu::crossentropy_forward_backward(logits, losses, correct, targets, N, V, Vp, dloss_scale,
                                       z_loss, log_z, softcap);
  }
  void scale_cap_logits(bf16_t* x, size_t n, float mult, float c) override {
    cpu::scale_cap_logits(x, n, mult, c);
  }
  void clamp(bf16_t* out, const bf16_t* inp, size_t n, float c) override {
    cpu::clamp(out, inp, n, c);
  }
  void clamp_backward(bf16_t* d, const bf16_t* inp, size_t n, float c) override {
    cpu::clamp_backward(d, inp, n, c);
  }
  void dropout(bf16_t* x, const int32_t* keys, int rows, int C, uint32_t site, float p) override {
    cpu::dropout(x, keys, rows, C, site, p);
  }
  void logits_row_max(float* row_max, float* argmax, const bf16_t* logits, int N, int V,
                      int Vp) override {
    cpu::logits_row_max(row_max, argmax, logits, N, V, Vp);
  }
  void softmax_partial_sums(float* sum_exp, float* target_logit, const bf16_t* logits,
                            const float* row_max, const int32_t* targets, int N, int V,
                            int Vp) override {
    cpu::softmax_partial_sums(sum_exp, target_logit, logits, row_max, targets, N, V, Vp);
  }
  void crossentropy_backward_partial(bf16_t* logits, const float* row_max, const float* sum_exp,
                                     const int32_t* targets, int N, int V, int Vp,
                                     float dloss_scale, float z_loss, float softcap) override {
    cpu::crossentropy_backward_partial(logits, row_max, sum_exp, targets, N, V, Vp, dloss_scale,
                                       z_loss, softcap);
  }

  // Mixture of experts, fp32 and bf16 alike (cpu_moe.cpp).
  void moe_route(float* probs, int32_t* expert, float* gate, const float* logits, int N, int E,
                 int k, const MoeRouting& routing, float* lse) override {
    cpu::moe_route(probs, expert, gate, logits, N, E, k, routing, lse);
  }
  void moe_route(float* probs, int32_t* expert, float* gate, const bf16_t* logits, int N, int E,
                 int k, const MoeRouting& routing, float* lse) override {
    cpu::moe_route(probs, expert, gate, logits, N, E, k, routing, lse);
  }
  void moe_dispatch(int32_t* slot, int* counts, float* prob_sums, const int32_t* expert,
                    const float* probs, int N, int E, int k) override {
    cpu::moe_dispatch(slot, counts, prob_sums, expert, probs, N, E, k);
  }
  void moe_gather(float* out, const float* x, const int32_t* slot, int N, int k, int C) override {
    cpu::moe_gather(out, x, slot, N, k, C);
  }
  void moe_gather(bf16_t* out, const bf16_t* x, const int32_t* slot, int N, int k, int C) override {
    cpu::moe_gather(out, x, slot, N, k, C);
  }
  void moe_combine(float* out, const float* y, const int32_t* slot, const float* gate, int N, int k,
                   int C) override {
    cpu::moe_combine(out, y, slot, gate, N, k, C);
  }
  void moe_combine(bf16_t* out, const bf16_t* y, const int32_t* slot, const float* gate, int N,
                   int k, int C) override {
    cpu::moe_combine(out, y, slot, gate, N, k, C);
  }
  void moe_combine_backward(float* dy, float* dgate, const float* dout, const float* y,
                            const int32_t* slot, const float* gate, int N, int k, int C) override {
    cpu::moe_combine_backward(dy, dgate, dout, y, slot, gate, N, k, C);
  }
  void moe_combine_backward(bf16_t* dy, float* dgate, const bf16_t* dout, const bf16_t* y,
                            const int32_t* slot, const float* gate, int N, int k, int C) override {
    cpu::moe_combine_backward(dy, dgate, dout, y, slot, gate, N, k, C);
  }
  void moe_route_backward(float* dlogits, const float* dgate, const float* probs,
                          const int32_t* expert, const float* aux, int N, int E, int k,
                          const MoeRouting& routing, const float* lse, float z_loss) override {
    cpu::moe_route_backward(dlogits, dgate, probs, expert, aux, N, E, k, routing, lse, z_loss);
  }
  void moe_route_backward(bf16_t* dlogits, const float* dgate, const float* probs,
                          const int32_t* expert, const float* aux, int N, int E, int k,
                          const MoeRouting& routing, const float* lse, float z_loss) override {
    cpu::moe_route_backward(dlogits, dgate, probs, expert, aux, N, E, k, routing, lse, z_loss);
  }
  void moe_shared_gate(float* s, const float* logits, int N) override {
    cpu::moe_shared_gate(s, logits, N);
  }
  void moe_shared_gate(float* s, const bf16_t* logits, int N) override {
    cpu::moe_shared_gate(s, logits, N);
  }
  void moe_shared_gate_backward(float* dlogits, const float* ds, const float* s, int N) override {
    cpu::moe_shared_gate_backward(dlogits, ds, s, N);
  }
  void moe_shared_gate_backward(bf16_t* dlogits, const float* ds, const float* s, int N) override {
    cpu::moe_shared_gate_backward(dlogits, ds, s, N);
  }

 private:
  AllocationLedger ledger_;
};

}  // namespace

std::unique_ptr<Backend> make_cpu_backend() { return std::make_unique<CpuBackend>(); }

}  // namespace triad
