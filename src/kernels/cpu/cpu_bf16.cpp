// The mixed-precision op set on the CPU (backend.h): each op widens its bf16 inputs to fp32,
// runs the fp32 kernel of this directory and rounds its bf16 outputs once. This is the
// contract's literal form, so it is the reference the CUDA bf16 kernels are tested against and
// lets CI train in bf16 without a GPU; it is not meant to be fast (widening costs a pass over
// every operand, weights included).
//
// The widened copies live in per-thread scratch vectors that grow to the largest call and are
// then reused: the step loop allocates nothing once every shape has been seen.
#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <vector>

#include "cpu_math.h"
#include "cpu_ops.h"
#include "triad/kernels/backend.h"
#include "triad/kernels/dropout_mask.h"

namespace triad::cpu {
namespace {

constexpr int kSlots = 7;
thread_local std::array<std::vector<float>, kSlots> tls_scratch;

float* scratch(int slot, size_t n) {
  auto& v = tls_scratch[size_t(slot)];
  if (v.size() < n) v.resize(n);
  return v.data();
}

void widen_into(float* dst, const bf16_t* src, size_t n) {
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
  for (size_t i = 0; i < n; ++i) dst[i] = to_float(src[i]);
}

// A widened copy of src in scratch slot `slot` (nullptr stays nullptr).
const float* widen(int slot, const bf16_t* src, size_t n) {
  if (src == nullptr) return nullptr;
  float* w = scratch(slot, n);
  widen_into(w, src, n);
  return w;
}
// An in/out bf16 operand (an accumulated gradient, logits replaced by their gradient): f gets
// its widened copy (in scratch slot `slot`), whose result is rounded back into p once.
// p == nullptr gives f a nullptr.
template <class F>
void through_fp32(int slot, bf16_t* p, size_t n, F f) {
  float* w = const_cast<float*>(widen(slot, p, n));
  f(w);
  if (p != nullptr) to_bf16(p, w, n);
}

}  // namespace

void zero_bf16(bf16_t* p, size_t n) { std::fill(p, p + n, bf16_t{}); }

void to_bf16(bf16_t* dst, const float* src, size_t n) {
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
  for (size_t i = 0; i < n; ++i) dst[i] = triad::to_bf16(src[i]);
}

void to_fp32(float* dst, const bf16_t* src, size_t n) { widen_into(dst, src, n); }

void encoder_forward(bf16_t* out, const int32_t* tokens, const bf16_t* wte, const bf16_t* wpe,
                     int B, int T, int C, const int32_t* positions) {
  // Row by row (widening all of wte would cost a pass over the whole table).
  const int N = B * T;
#pragma omp parallel for schedule(static) if (size_t(N) * C >= kParallelMin)
  for (int n = 0; n < N; ++n) {
    const int32_t tok = tokens[n];
    const size_t p = positions != nullptr ? size_t(positions[n]) : size_t(n % T);
    const bf16_t* pos = wpe != nullptr ? wpe + p * C : nullptr;
    const bf16_t* row = tok >= 0 ? wte + size_t(tok) * C : nullptr;
    bf16_t* o = out + size_t(n) * C;
    for (int c = 0; c < C; ++c) {  // the fp32 kernel's arithmetic (no "+ 0" that turns -0 to +0)
      const float t = row ? to_float(row[c]) : 0.0f;
      o[c] = triad::to_bf16(pos ? t + to_float(pos[c]) : t);
    }
  }
}

void encoder_backward(float* dwte, float* dwpe, const bf16_t* dout, const int32_t* tokens, int B,
                      int T, int C, const int32_t* positions) {
  encoder_backward(dwte, dwpe, widen(0, dout, size_t(B) * T * C), tokens, B, T, C, positions);
}

void layernorm_forward(bf16_t* out, float* mean, float* rstd, const bf16_t* inp,
                       const bf16_t* weight, const bf16_t* bias, int N, int C, float eps) {
  const size_t n = size_t(N) * C;
  float* o = scratch(0, n);
  layernorm_forward(o, mean, rstd, widen(1, inp, n), widen(2, weight, size_t(C)),
                    widen(3, bias, size_t(C)), N, C, eps);
  to_bf16(out, o, n);
}

void layernorm_backward(bf16_t* dinp, float* dweight, float* dbias, const bf16_t* dout,
                        const bf16_t* inp, const bf16_t* weight, const float* mean,
                        const float* rstd, int N, int C) {
  const size_t n = size_t(N) * C;
  through_fp32(0, dinp, n, [&](float* di) {
    layernorm_backward(di, dweight, dbias, widen(1, dout, n), widen(2, inp, n),
                       widen(3, weight, size_t(C)), mean, rstd, N, C);
  });
}

void qk_norm_forward(bf16_t* out, float* rstd, const bf16_t* qkv, const bf16_t* wq,
                     const bf16_t* wk, int N, int C, int NH, int NKV, float eps) {
  const size_t n = size_t(N) * size_t(qkv_width(C, NH, NKV)), hd = size_t(C / NH);
  float* o = scratch(0, n);
  qk_norm_forward(o, rstd, widen(1, qkv, n), widen(2, wq, hd), widen(3, wk, hd), N, C, NH, NKV,
                  eps);
  to_bf16(out, o, n);
}

void qk_norm_backward(bf16_t* dqkv, float* dwq, float* dwk, const bf16_t* dout, const bf16_t* qkv,
                      const bf16_t* wq, const bf16_t* wk, const float* rstd, int N, int C, int NH,
                      int NKV, bool accumulate) {
  const size_t n = size_t(N) * size_t(qkv_width(C, NH, NKV)), hd = size_t(C / NH);
  // dout is widened before dqkv (which may be the same buffer) is read or written.
  const float* d = widen(1, dout, n);
  const float* x = widen(2, qkv, n);
  const float* w_q = widen(3, wq, hd);
  const float* w_k = widen(5, wk, hd);
  if (!accumulate) {
    float* di = scratch(0, n);
    qk_norm_backward(di, dwq, dwk, d, x, w_q, w_k, rstd, N, C, NH, NKV, false);
    to_bf16(dqkv, di, n);
    return;
  }
  through_fp32(0, dqkv, n, [&](float* di) {
    qk_norm_backward(di, dwq, dwk, d, x, w_q, w_k, rstd, N, C, NH, NKV, true);
  });
}

void qk_full_norm_sums(float* sums, const bf16_t* qkv, const bf16_t* dout, const bf16_t* wq,
                       const bf16_t* wk, const float* rstd, int N, int C, int NH, int NKV) {
  const size_t n = size_t(N) * size_t(qkv_width(C, NH, NKV)), K = size_t(NKV) * size_t(C / NH);
  if (dout == nullptr) {
    qk_full_norm_sums(sums, widen(1, qkv, n), nullptr, nullptr, nullptr, nullptr, N, C, NH, NKV);
    return;
  }
  qk_full_norm_sums(sums, widen(1, qkv, n), widen(2, dout, n), widen(3, wq, size_t(C)),
                    widen(5, wk, K), rstd, N, C, NH, NKV);
}

void qk_full_norm_forward(bf16_t* out, float* rstd, const bf16_t* qkv, const float* sums,
                          const bf16_t* wq, const bf16_t* wk, int N, int C, int NH, int NKV, int Dq,
                          int Dk, float eps) {
  const size_t n = size_t(N) * size_t(qkv_width(C, NH, NKV)), K = size_t(NKV) * size_t(C / NH);
  float* o = scratch(0, n);
  qk_full_norm_forward(o, rstd, widen(1, qkv, n), sums, widen(2, wq, size_t(C)), widen(3, wk, K), N,
                       C, NH, NKV, Dq, Dk, eps);
  to_bf16(out, o, n);
}

void qk_full_norm_backward(bf16_t* dqkv, float* dwq, float* dwk, const bf16_t* dout,
                           const bf16_t* qkv, const bf16_t* wq, const bf16_t* wk, const float* rstd,
                           const float* dots, int N, int C, int NH, int NKV, int Dq, int Dk,
                           bool accumulate) {
  const size_t n = size_t(N) * size_t(qkv_width(C, NH, NKV)), K = size_t(NKV) * size_t(C / NH);
  // dout is widened before dqkv (which may be the same buffer) is read or written.
  const float* d = widen(1, dout, n);
  const float* x = widen(2, qkv, n);
  const float* w_q = widen(3, wq, size_t(C));
  const float* w_k = widen(5, wk, K);
  if (!accumulate) {
    float* di = scratch(0, n);
    qk_full_norm_backward(di, dwq, dwk, d, x, w_q, w_k, rstd, dots, N, C, NH, NKV, Dq, Dk, false);
    to_bf16(dqkv, di, n);
    return;
  }
  through_fp32(0, dqkv, n, [&](float* di) {
    qk_full_norm_backward(di, dwq, dwk, d, x, w_q, w_k, rstd, dots, N, C, NH, NKV, Dq, Dk, true);
  });
}

void matmul_forward(bf16_t* out, const bf16_t* inp, const bf16_t* weight, const bf16_t* bias, int N,
                    int IC, int OC) {
  float* o = scratch(0, size_t(N) * OC);
  matmul_forward(o, widen(1, inp, size_t(N) * IC), widen(2, weight, size_t(OC) * IC),
                 widen(3, bias, size_t(OC)), N, IC, OC);
  to_bf16(out, o, size_t(N) * OC);
}

void matmul_backward(bf16_t* dinp, float* dweight, float* dbias, const bf16_t* dout,
                     const bf16_t* inp, const bf16_t* weight, int N, int IC, int OC) {
  through_fp32(0, dinp, size_t(N) * IC, [&](float* di) {
    // inp is read for dweight only (the input-gradient pass of a split backward has none).
    matmul_backward(di, dweight, dbias, widen(1, dout, size_t(N) * OC),
                    dweight ? widen(2, inp, size_t(N) * IC) : nullptr,
                    widen(3, weight, size_t(OC) * IC), N, IC, OC);
  });
}

void bias_backward(float* dbias, const bf16_t* dout, int N, int OC) {
  bias_backward(dbias, widen(1, dout, size_t(N) * OC), N, OC);
}

// lse[b,h,i − q0] = ln Σ_{lo<=j<=i} exp(s_ij), s_ij = scale · q_i·k_j (softcap·tanh of it /
// softcap under a cap), lo = key_begin[b,i] (0 without), for the range's rows q0 <= i < L, from
// the widened qkv (max-shifted); with sinks (widened) exp(sinks[h]) is a term of the sum.
static void attention_lse(float* lse, const float* qkv, int B, int T, int C, int NH, int NKV,
                          const int32_t* key_begin, QueryRows rows, float scale_or_0, float softcap,
                          const float* sinks) {
  const int hd = C / NH;
  const float scale = attention_scale(scale_or_0, hd);
  const size_t ld = size_t(qkv_width(C, NH, NKV));
  const int L = rows.keys(T), n = rows.rows(T), q0 = L - n;
#pragma omp parallel for collapse(2) schedule(static)
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < NH; ++h) {
      std::vector<float> s(static_cast<size_t>(L));
      const float* base = qkv + size_t(b) * T * ld;
      for (int i = q0; i < L; ++i) {
        const float* q = base + size_t(i) * ld + size_t(h) * hd;
        float mx = sinks != nullptr ? sinks[h] : -std::numeric_limits<float>::infinity();
        const int lo = key_begin != nullptr ? key_begin[size_t(b) * T + i] : 0;
        for (int j = lo; j <= i; ++j) {
          const float* k = base + size_t(j) * ld + C + size_t(h % NKV) * hd;
          float dot = 0.0f;
          for (int d = 0; d < hd; ++d) dot += q[d] * k[d];
          s[size_t(j)] = softcap > 0.0f ? softcap * std::tanh(dot * scale / softcap) : dot * scale;
          mx = std::max(mx, s[size_t(j)]);
        }
        double sum = 0.0;
        for (int j = lo; j <= i; ++j) sum += std::exp(double(s[size_t(j)] - mx));
        if (sinks != nullptr) sum += std::exp(double(sinks[h] - mx));
        lse[(size_t(b) * NH + h) * n + (i - q0)] = mx + float(std::log(sum));
      }
    }
}

void attention_forward(bf16_t* out, float* lse, const bf16_t* qkv, int B, int T, int C, int NH,
                       int NKV, const int32_t* key_begin, QueryRows rows, float scale,
                       float softcap, AttentionDropout dropout, const bf16_t* sinks) {
  const size_t n = size_t(rows.rows(T)), L = size_t(rows.keys(T));
  const size_t nqkv = size_t(B) * T * qkv_width(C, NH, NKV), nout = size_t(B) * n * C;
  const float* q = widen(0, qkv, nqkv);
  float* o = scratch(1, nout);
  float* att = scratch(2, size_t(B) * NH * n * L);
  const float* z = sinks != nullptr ? widen(6, sinks, size_t(NH)) : nullptr;
  attention_forward(o, att, q, B, T, C, NH, NKV, key_begin, rows, scale, softcap, dropout, z);
  attention_lse(lse, q, B, T, C, NH, NKV, key_begin, rows, scale, softcap, z);
  to_bf16(out, o, nout);
}

void attention_backward(bf16_t* dqkv, const bf16_t* dout, const bf16_t* qkv, const bf16_t* out,
                        const float* lse, int B, int T, int C, int NH, int NKV,
                        const int32_t* key_begin, QueryRows rows, float scale, float softcap,
                        AttentionDropout dropout, const bf16_t* sinks, float* dsinks) {
  // The probabilities are recomputed in fp32 from the bf16 qkv, as the forward computed them
  // (the flash kernels use lse for that; here the fp32 forward is the simpler reference).
  (void)out;
  (void)lse;
  const size_t n = size_t(rows.rows(T)), L = size_t(rows.keys(T));
  const size_t nqkv = size_t(B) * T * qkv_width(C, NH, NKV), nout = size_t(B) * n * C;
  const size_t natt = size_t(B) * NH * n * L;
  const float* q = widen(0, qkv, nqkv);
  float* att = scratch(2, natt);
  const float* z = sinks != nullptr ? widen(6, sinks, size_t(NH)) : nullptr;
  attention_forward(scratch(1, nout), att, q, B, T, C, NH, NKV, key_begin, rows, scale, softcap,
                    dropout, z);
  through_fp32(3, dqkv, nqkv, [&](float* dq) {
    attention_backward(dq, scratch(4, natt), widen(5, dout, nout), q, att, B, T, C, NH, NKV,
                       key_begin, rows, scale, softcap, dropout, dsinks);
  });
}

void attention_decode(bf16_t* out, const bf16_t* qkv, int B, int stride, int p, int n, int C,
                      int NH, int NKV, int window, float scale, float softcap,
                      const bf16_t* sinks) {
  const size_t W = size_t(qkv_width(C, NH, NKV));
  const size_t nout = size_t(B) * n * C, seq = size_t(p + n) * W;
  float* o = scratch(1, nout);
  // Each sequence's rows 0 .. p+n-1 only (not the rows its stride leaves unused), packed.
  float* q = scratch(0, size_t(B) * seq);
  for (int b = 0; b < B; ++b) widen_into(q + size_t(b) * seq, qkv + size_t(b) * stride * W, seq);
  const float* z = sinks != nullptr ? widen(6, sinks, size_t(NH)) : nullptr;
  attention_decode(o, q, B, p + n, p, n, C, NH, NKV, window, scale, softcap, z);
  to_bf16(out, o, nout);
}

void gelu_forward(bf16_t* out, const bf16_t* inp, size_t n) {
  float* o = scratch(0, n);
  gelu_forward(o, widen(1, inp, n), n);
  to_bf16(out, o, n);
}

void gelu_backward(bf16_t* dinp, const bf16_t* inp, const bf16_t* dout, size_t n) {
  through_fp32(0, dinp, n,
               [&](float* di) { gelu_backward(di, widen(1, inp, n), widen(2, dout, n), n); });
}

void activation_forward(Activation f, bf16_t* out, const bf16_t* inp, size_t n) {
  float* o = scratch(0, n);
  activation_forward(f, o, widen(1, inp, n), n);
  to_bf16(out, o, n);
}

void activation_backward(Activation f, bf16_t* dinp, const bf16_t* inp, const bf16_t* dout,
                         size_t n) {
  through_fp32(0, dinp, n, [&](float* di) {
    activation_backward(f, di, widen(1, inp, n), widen(2, dout, n), n);
  });
}

void add(bf16_t* out, const bf16_t* a, const bf16_t* b, size_t n) {
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
  for (size_t i = 0; i < n; ++i) out[i] = triad::to_bf16(to_float(a[i]) + to_float(b[i]));
}

void accumulate(bf16_t* dst, const bf16_t* src, size_t n) { add(dst, dst, src, n); }

void clamp(bf16_t* out, const bf16_t* inp, size_t n, float c) {
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
  for (size_t i = 0; i < n; ++i) {
    const float v = to_float(inp[i]);
    out[i] = triad::to_bf16(v < -c ? -c : v > c ? c : v);
  }
}

void clamp_backward(bf16_t* d, const bf16_t* inp, size_t n, float c) {
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
  for (size_t i = 0; i < n; ++i) {
    const float v = to_float(inp[i]);
    if (v < -c || v > c) d[i] = triad::to_bf16(0.0f);
  }
}

void dropout(bf16_t* x, const int32_t* keys, int rows, int C, uint32_t site, float p) {
  const uint32_t threshold = dropout_threshold(p);
  const float scale = dropout_scale(p);
#pragma omp parallel for schedule(static) if (size_t(rows) * size_t(C) >= kParallelMin)
  for (int r = 0; r < rows; ++r) {
    const uint64_t key = dropout_key_of(keys, size_t(r));
    bf16_t* row = x + size_t(r) * size_t(C);
    for (int c = 0; c < C; ++c)
      row[c] = triad::to_bf16(to_float(row[c]) *
                              (dropout_keeps(key, site, uint32_t(c), threshold) ? scale : 0.0f));
  }
}

void crossentropy_forward_backward(bf16_t* logits, float* losses, float* correct,
                                   const int32_t* targets, int N, int V, int Vp, float dloss_scale,
                                   float z_loss, float* log_z, float softcap) {
  through_fp32(0, logits, size_t(N) * Vp, [&](float* l) {
    crossentropy_forward_backward(l, losses, correct, targets, N, V, Vp, dloss_scale, z_loss, log_z,
                                  softcap);
  });
}

void scale_cap_logits(bf16_t* x, size_t n, float mult, float c) {
  through_fp32(0, x, n, [&](float* l) { scale_cap_logits(l, n, mult, c); });
}

void logits_row_max(float* row_max, float* argmax, const bf16_t* logits, int N, int V, int Vp) {
  logits_row_max(row_max, argmax, widen(0, logits, size_t(N) * Vp), N, V, Vp);
}

void softmax_partial_sums(float* sum_exp, float* target_logit, const bf16_t* logits,
                          const float* row_max, const int32_t* targets, int N, int V, int Vp) {
  softmax_partial_sums(sum_exp, target_logit, widen(0, logits, size_t(N) * Vp), row_max, targets, N,
                       V, Vp);
}

void crossentropy_backward_partial(bf16_t* logits, const float* row_max, const float* sum_exp,
                                   const int32_t* targets, int N, int V, int Vp, float dloss_scale,
                                   float z_loss, float softcap) {
  through_fp32(0, logits, size_t(N) * Vp, [&](float* l) {
    crossentropy_backward_partial(l, row_max, sum_exp, targets, N, V, Vp, dloss_scale, z_loss,
                                  softcap);
  });
}

}  // namespace triad::cpu
