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

}  // namespace triad::cpu
