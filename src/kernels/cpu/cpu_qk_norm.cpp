// Per-head RMSNorm of q and k (backend.h qk_norm, model.qk_norm): each q and k head's hd values
// normalized by their root mean square and scaled by the shared weights wq or wk; v copied.
// The rows (token, head) are independent and spread over threads; the weight gradients are
// summed per column over the rows in order (n, then the heads), so they do not depend on the
// thread count.
#include <cmath>
#include <cstring>
#include <vector>

#include "cpu_math.h"
#include "cpu_ops.h"
#include "triad/kernels/backend.h"

namespace triad::cpu {
namespace {

// Head j of a row: q heads j < NH (weight wq), then k heads (weight wk).
struct Heads {
  int C, NH, NKV, hd;
  size_t W;
  Heads(int c, int nh, int nkv)
      : C(c), NH(nh), NKV(nkv), hd(c / nh), W(size_t(qkv_width(c, nh, nkv))) {}
  int count() const { return NH + NKV; }
  size_t offset(int j) const { return size_t(j) * size_t(hd); }  // q then k: contiguous
};

// r of a vector D wide whose squares sum to `sum` (qk_full_norm; in double, as the per-head r).
float qk_full_norm_rstd(float sum, int D, float eps) {
  return float(1.0 / std::sqrt(double(sum) / D + double(eps)));
}

}  // namespace

void qk_norm_forward(float* out, float* rstd, const float* qkv, const float* wq, const float* wk,
                     int N, int C, int NH, int NKV, float eps) {
  const Heads h(C, NH, NKV);
#pragma omp parallel for schedule(static) if (size_t(N) * h.W >= kParallelMin)
  for (int n = 0; n < N; ++n) {
    const float* x_row = qkv + size_t(n) * h.W;
    float* y_row = out + size_t(n) * h.W;
    for (int j = 0; j < h.count(); ++j) {
      const float* x = x_row + h.offset(j);
      const float* w = j < NH ? wq : wk;
      double ss = 0.0;
      for (int i = 0; i < h.hd; ++i) ss += double(x[i]) * x[i];
      const float r = float(1.0 / std::sqrt(ss / h.hd + double(eps)));
      rstd[size_t(n) * h.count() + j] = r;
      for (int i = 0; i < h.hd; ++i) y_row[h.offset(j) + i] = x[i] * r * w[i];
    }
    const size_t v = size_t(C) + size_t(NKV) * h.hd;  // v: copied
    std::memcpy(y_row + v, x_row + v, (h.W - v) * sizeof(float));
  }
}

void qk_norm_backward(float* dqkv, float* dwq, float* dwk, const float* dout, const float* qkv,
                      const float* wq, const float* wk, const float* rstd, int N, int C, int NH,
                      int NKV, bool accumulate) {
  const Heads h(C, NH, NKV);
  // Weight gradients first: dqkv may be dout itself (in place), which the row pass overwrites.
  // Column i of wq sums over rows n and q heads j in that order; wk likewise (one pass over the
  // rows, each column's order fixed: independent of the thread count).
  std::vector<float> gq(size_t(h.hd), 0.0f), gk(size_t(h.hd), 0.0f);
  for (int n = 0; n < N; ++n) {
    const float* x_row = qkv + size_t(n) * h.W;
    const float* d_row = dout + size_t(n) * h.W;
    for (int j = 0; j < h.count(); ++j) {
      const float r = rstd[size_t(n) * h.count() + j];
      const float* x = x_row + h.offset(j);
      const float* d = d_row + h.offset(j);
      float* g = j < NH ? gq.data() : gk.data();
      for (int i = 0; i < h.hd; ++i) g[i] += d[i] * (x[i] * r);
    }
  }
  for (int i = 0; i < h.hd; ++i) {
    dwq[i] += gq[size_t(i)];
    dwk[i] += gk[size_t(i)];
  }
#pragma omp parallel for schedule(static) if (size_t(N) * h.W >= kParallelMin)
  for (int n = 0; n < N; ++n) {
    const float* x_row = qkv + size_t(n) * h.W;
    const float* d_row = dout + size_t(n) * h.W;
    float* dx_row = dqkv + size_t(n) * h.W;
    for (int j = 0; j < h.count(); ++j) {
      const float* x = x_row + h.offset(j);
      const float* d = d_row + h.offset(j);
      const float* w = j < NH ? wq : wk;
      const float r = rstd[size_t(n) * h.count() + j];
      double gx = 0.0;
      for (int i = 0; i < h.hd; ++i) gx += double(d[i]) * w[i] * (x[i] * r);
      const float gx_mean = float(gx / h.hd);
      float* dx = dx_row + h.offset(j);
      for (int i = 0; i < h.hd; ++i) {
        const float g = r * (d[i] * w[i] - (x[i] * r) * gx_mean);
        dx[i] = accumulate ? dx[i] + g : g;
      }
    }
    const size_t v = size_t(C) + size_t(NKV) * h.hd;  // v: the gradient passes through
    for (size_t c = v; c < h.W; ++c) dx_row[c] = accumulate ? dx_row[c] + d_row[c] : d_row[c];
  }
}

// ---- over all heads (model.qk_norm_full) ----------------------------------------------------
// Vector s of a row: q (s = 0, columns [0, C)) or k (s = 1, columns [C, C + K)), K = NKV·hd.

void qk_full_norm_sums(float* sums, const float* qkv, const float* dout, const float* wq,
                       const float* wk, const float* rstd, int N, int C, int NH, int NKV) {
  const size_t W = size_t(qkv_width(C, NH, NKV)), K = (W - size_t(C)) / 2;
#pragma omp parallel for schedule(static) if (size_t(N) * W >= kParallelMin)
  for (int n = 0; n < N; ++n) {
    for (int s = 0; s < 2; ++s) {
      const size_t at = size_t(n) * W + (s == 0 ? 0 : size_t(C)), width = s == 0 ? size_t(C) : K;
      const float* x = qkv + at;
      double sum = 0.0;
      if (dout == nullptr) {
        for (size_t i = 0; i < width; ++i) sum += double(x[i]) * x[i];
      } else {
        const float* d = dout + at;
        const float* w = s == 0 ? wq : wk;
        const float r = rstd[2 * size_t(n) + size_t(s)];
        for (size_t i = 0; i < width; ++i) sum += double(d[i]) * w[i] * (x[i] * r);
      }
      sums[2 * size_t(n) + size_t(s)] = float(sum);
    }
  }
}

void qk_full_norm_forward(float* out, float* rstd, const float* qkv, const float* sums,
                          const float* wq, const float* wk, int N, int C, int NH, int NKV, int Dq,
                          int Dk, float eps) {
  const size_t W = size_t(qkv_width(C, NH, NKV)), K = (W - size_t(C)) / 2;
#pragma omp parallel for schedule(static) if (size_t(N) * W >= kParallelMin)
  for (int n = 0; n < N; ++n) {
    const float* x = qkv + size_t(n) * W;
    float* y = out + size_t(n) * W;
    for (int s = 0; s < 2; ++s) {
      const size_t at = s == 0 ? 0 : size_t(C), width = s == 0 ? size_t(C) : K;
      const float* w = s == 0 ? wq : wk;
      const float r = qk_full_norm_rstd(sums[2 * size_t(n) + size_t(s)], s == 0 ? Dq : Dk, eps);
      rstd[2 * size_t(n) + size_t(s)] = r;
      for (size_t i = 0; i < width; ++i) y[at + i] = x[at + i] * r * w[i];
    }
    const size_t v = size_t(C) + K;  // v: copied
    std::memcpy(y + v, x + v, (W - v) * sizeof(float));
  }
}

void qk_full_norm_backward(float* dqkv, float* dwq, float* dwk, const float* dout, const float* qkv,
                           const float* wq, const float* wk, const float* rstd, const float* dots,
                           int N, int C, int NH, int NKV, int Dq, int Dk, bool accumulate) {
  const size_t W = size_t(qkv_width(C, NH, NKV)), K = (W - size_t(C)) / 2, QK = size_t(C) + K;
  // Weight gradients first (dqkv may be dout): column i sums over the rows in order, in a
  // buffer of its own (independent of the thread count), then added once.
  std::vector<float> g(QK, 0.0f);
  for (int n = 0; n < N; ++n) {
    const float* x = qkv + size_t(n) * W;
    const float* d = dout + size_t(n) * W;
    const float rq = rstd[2 * size_t(n)], rk = rstd[2 * size_t(n) + 1];
    for (size_t i = 0; i < QK; ++i) g[i] += d[i] * (x[i] * (i < size_t(C) ? rq : rk));
  }
  for (size_t i = 0; i < QK; ++i) {
    if (i < size_t(C))
      dwq[i] += g[i];
    else
      dwk[i - size_t(C)] += g[i];
  }
#pragma omp parallel for schedule(static) if (size_t(N) * W >= kParallelMin)
  for (int n = 0; n < N; ++n) {
    const float* x = qkv + size_t(n) * W;
    const float* d = dout + size_t(n) * W;
    float* dx = dqkv + size_t(n) * W;
    for (int s = 0; s < 2; ++s) {
      const size_t at = s == 0 ? 0 : size_t(C), width = s == 0 ? size_t(C) : K;
      const float* w = s == 0 ? wq : wk;
      const float r = rstd[2 * size_t(n) + size_t(s)];
      const float mean = float(double(dots[2 * size_t(n) + size_t(s)]) / (s == 0 ? Dq : Dk));
      for (size_t i = 0; i < width; ++i) {
        const size_t c = at + i;
        const float v = r * (d[c] * w[i] - (x[c] * r) * mean);
        dx[c] = accumulate ? dx[c] + v : v;
      }
    }
    for (size_t c = QK; c < W; ++c) dx[c] = accumulate ? dx[c] + d[c] : d[c];
  }
}

}  // namespace triad::cpu
