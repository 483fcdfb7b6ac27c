// CPU backend ops against straightforward double-precision implementations written here:
// forwards are compared with the naive forward, backwards with central finite differences of
// the naive forward (in double, so the differences are accurate to ~1e-9 and the tolerance
// only has to cover the backend's float rounding). Each backward is also checked to
// accumulate (+=) into gradients that already hold values.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <random>
#include <vector>

#include "../support/attention_reference.h"
#include "../support/random_data.h"
#include "triad/core/bf16.h"
#include "triad/kernels/backend.h"
#include "triad/kernels/dropout_mask.h"

namespace triad {
namespace {

using Vec = std::vector<float>;
using DVec = std::vector<double>;

using triad::testing::random_vec;

DVec to_double(const Vec& v) { return DVec(v.begin(), v.end()); }

double dot(const DVec& a, const Vec& b) {
  double s = 0.0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i] * double(b[i]);
  return s;
}

// Central differences of loss() with respect to x, at every stride-th coordinate (the others
// are left 0 and skipped by expect_close_at). x is restored afterwards.
DVec finite_diff(DVec& x, const std::function<double()>& loss, size_t stride = 1) {
  constexpr double h = 1e-6;
  DVec g(x.size(), 0.0);
  for (size_t i = 0; i < x.size(); i += stride) {
    const double saved = x[i];
    x[i] = saved + h;
    const double plus = loss();
    x[i] = saved - h;
    const double minus = loss();
    x[i] = saved;
    g[i] = (plus - minus) / (2 * h);
  }
  return g;
}

// |got − want| <= tol · max|want| at every stride-th element (a norm-relative tolerance: a
// gradient is as accurate as its largest entries, small entries are cancellations).
void expect_close(const Vec& got, const DVec& want, double tol, const char* what,
                  size_t stride = 1) {
  ASSERT_EQ(got.size(), want.size()) << what;
  double scale = 0.0;
  for (size_t i = 0; i < want.size(); i += stride) scale = std::max(scale, std::abs(want[i]));
  ASSERT_GT(scale, 0.0) << what << ": reference is all zero";
  for (size_t i = 0; i < want.size(); i += stride) {
    ASSERT_NEAR(got[i], want[i], tol * scale) << what << " at " << i;
  }
}

void expect_close(const Vec& got, const Vec& want, double tol, const char* what) {
  expect_close(got, to_double(want), tol, what);
}

// got − before ≈ want: the op added its gradient to what was already there.
void expect_accumulated(const Vec& got, const Vec& before, const Vec& want, const char* what) {
  Vec diff(got.size());
  for (size_t i = 0; i < got.size(); ++i) diff[i] = got[i] - before[i];
  expect_close(diff, want, 1e-5, what);
}

class CpuKernels : public ::testing::Test {
 protected:
  std::unique_ptr<Backend> be = make_cpu_backend();
};

// ---- naive double-precision forwards -----------------------------------------------------

DVec naive_matmul(const DVec& inp, const DVec& w, const DVec* bias, int N, int IC, int OC) {
  DVec out(size_t(N) * OC);
  for (int n = 0; n < N; ++n) {
    for (int o = 0; o < OC; ++o) {
      double s = bias ? (*bias)[o] : 0.0;
      for (int i = 0; i < IC; ++i) s += inp[size_t(n) * IC + i] * w[size_t(o) * IC + i];
      out[size_t(n) * OC + o] = s;
    }
  }
  return out;
}

DVec naive_layernorm(const DVec& inp, const DVec& w, const DVec& b, int N, int C) {
  DVec out(inp.size());
  for (int n = 0; n < N; ++n) {
    const double* x = &inp[size_t(n) * C];
    double mean = 0.0, var = 0.0;
    for (int c = 0; c < C; ++c) mean += x[c];
    mean /= C;
    for (int c = 0; c < C; ++c) var += (x[c] - mean) * (x[c] - mean);
    var /= C;
    const double rstd = 1.0 / std::sqrt(var + 1e-5);
    for (int c = 0; c < C; ++c) out[size_t(n) * C + c] = (x[c] - mean) * rstd * w[c] + b[c];
  }
  return out;
}

double naive_gelu(double x) {
  return 0.5 * x * (1.0 + std::tanh(std::sqrt(2.0 / M_PI) * (x + 0.044715 * x * x * x)));
}

// Returns out [B,T,C]; fills probs [B,NH,T,T] (0 above the diagonal) when given.
// NKV key/value heads (0: NH); query head h reads key/value head h % NKV (backend.h). With
// key_begin ([B,T]) query t of sequence b sees keys key_begin[b·T+t] .. t only. cap > 0: each
// scaled score s is cap·tanh(s / cap) (model.attn_softcap). drop (attention dropout): out reads
// each probability times its factor (probs stay the undropped ones). sinks ([NH], attention
// sinks): exp(sinks[h]) is a term of each of head h's denominators.
DVec naive_attention(const DVec& qkv, int B, int T, int C, int NH, DVec* probs = nullptr,
                     int NKV = 0, const std::vector<int32_t>* key_begin = nullptr, double cap = 0.0,
                     AttentionDropMask drop = {}, const DVec* sinks = nullptr) {
  if (NKV == 0) NKV = NH;
  const int hd = C / NH;
  const size_t W = size_t(C) + 2 * size_t(NKV) * hd;
  const double scale = 1.0 / std::sqrt(double(hd));
  DVec out(size_t(B) * T * C, 0.0);
  if (probs) probs->assign(size_t(B) * NH * T * T, 0.0);
  std::vector<double> p(T);
  for (int b = 0; b < B; ++b) {
    for (int h = 0; h < NH; ++h) {
      for (int i = 0; i < T; ++i) {
        const double* q = &qkv[(size_t(b) * T + i) * W + h * hd];
        double mx = -std::numeric_limits<double>::infinity();
        const int lo = key_begin ? (*key_begin)[size_t(b) * T + i] : 0;
        for (int j = lo; j <= i; ++j) {
          const double* k = &qkv[(size_t(b) * T + j) * W + C + (h % NKV) * hd];
          double s = 0.0;
          for (int e = 0; e < hd; ++e) s += q[e] * k[e];
          p[j] = cap > 0.0 ? cap * std::tanh(s * scale / cap) : s * scale;
          mx = std::max(mx, p[j]);
        }
        if (sinks) mx = std::max(mx, (*sinks)[size_t(h)]);
        double sum = sinks ? std::exp((*sinks)[size_t(h)] - mx) : 0.0;
        for (int j = lo; j <= i; ++j) sum += (p[j] = std::exp(p[j] - mx));
        for (int j = lo; j <= i; ++j) {
          p[j] /= sum;
          if (probs) (*probs)[((size_t(b) * NH + h) * T + i) * T + j] = p[j];
          const double* v = &qkv[(size_t(b) * T + j) * W + C + (NKV + h % NKV) * hd];
          const double pj = drop.on() ? p[j] * double(drop.factor(size_t(b), T, h, i, j)) : p[j];
          for (int e = 0; e < hd; ++e) out[(size_t(b) * T + i) * C + h * hd + e] += pj * v[e];
        }
      }
    }
  }
  return out;
}

// ---- memory --------------------------------------------------------------------------------

TEST_F(CpuKernels, AllocIsAlignedAndZeroed) {
  for (size_t n : {size_t{1}, size_t{3}, size_t{17}, size_t{1000}, size_t{0}}) {
    float* p = be->alloc(n);
    ASSERT_NE(p, nullptr);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(p) % 64, 0u);
    for (size_t i = 0; i < n; ++i) EXPECT_EQ(p[i], 0.0f);
    be->free(p);
  }
  float* p = be->alloc(5);
  const float host[5] = {1, 2, 3, 4, 5};
  be->copy_from_host(p, host, 5);
  float back[5] = {};
  be->copy_to_host(back, p, 5);
  EXPECT_EQ(back[4], 5.0f);
  be->zero(p, 5);
  EXPECT_EQ(p[2], 0.0f);
  be->synchronize();
  be->free(p);
  EXPECT_STREQ(be->name(), "cpu");
}

// copy_rows: a column block of one matrix into another's, every other element untouched.
TEST_F(CpuKernels, CopyRowsCopiesAColumnBlock) {
  const Vec src = random_vec(7 * 10, 3);
  Vec dst(5 * 9, -1.0f);
  be->copy_rows(dst.data() + 2, 9, src.data() + 4, 10, 5, 6);  // rows 0..4, columns 4..9 → 2..7
  for (int r = 0; r < 5; ++r)
    for (int c = 0; c < 9; ++c)
      EXPECT_EQ(dst[size_t(r) * 9 + c], c >= 2 && c < 8 ? src[size_t(r) * 10 + c + 2] : -1.0f)
          << r << "," << c;
}

// ---- hidden dropout ------------------------------------------------------------------------

// Row keys as a backend holds them: rows·2 int32 words, sequence 5 + r / 16, position r % 16.
std::vector<int32_t> dropout_keys(int rows, uint64_t seed) {
  std::vector<int32_t> k(2 * size_t(rows));
  for (int r = 0; r < rows; ++r) {
    const uint64_t key = dropout_row_key(seed, uint64_t(5 + r / 16), uint32_t(r % 16));
    k[2 * size_t(r)] = int32_t(uint32_t(key));
    k[2 * size_t(r) + 1] = int32_t(uint32_t(key >> 32));
  }
  return k;
}

// train.hidden_dropout's op: each value kept times 1/(1 − p) exactly or zeroed; the fraction
// dropped p (within 5 standard deviations over 2^19 values); the same mask for the same keys
// and site (forward and backward agree), in both precisions; masks of other sites, seeds and
// rows independent (both keep a value about (1 − p)² of the time); p = 0 changes nothing; a
// dropped NaN stays NaN.
TEST_F(CpuKernels, DropoutMaskAndScale) {
  const int rows = 512, C = 1024;
  const size_t n = size_t(rows) * C;
  const float p = 0.25f, scale = dropout_scale(p);
  const std::vector<int32_t> keys = dropout_keys(rows, 11), other_seed = dropout_keys(rows, 12);
  const Vec x = random_vec(n, 41, 0.5f, 2.0f);  // no zeros: a zero out is a dropped value
  auto apply = [&](const std::vector<int32_t>& k, uint32_t site, float prob) {
    Vec v = x;
    be->dropout(v.data(), k.data(), rows, C, site, prob);
    return v;
  };
  const Vec a = apply(keys, 3, p);
  size_t dropped = 0;
  for (size_t i = 0; i < n; ++i) {
    if (a[i] == 0.0f) {
      ++dropped;
    } else {
      ASSERT_EQ(a[i], x[i] * scale) << i;
    }
  }
  const double frac = double(dropped) / double(n), sigma = std::sqrt(p * (1.0 - p) / double(n));
  EXPECT_NEAR(frac, p, 5 * sigma);
  EXPECT_EQ(apply(keys, 3, p), a) << "the same keys and site: the same mask";
  {  // a dropped NaN stays NaN (x·0, as PyTorch's x·mask): a divergence is not hidden
    const size_t at = size_t(std::find(a.begin(), a.end(), 0.0f) - a.begin());
    Vec v = x;
    v[at] = std::numeric_limits<float>::quiet_NaN();
    be->dropout(v.data(), keys.data(), rows, C, 3, p);
    EXPECT_TRUE(std::isnan(v[at]));
  }
  // bf16: the same mask, the kept values x·scale rounded once
  std::vector<bf16_t> h(n);
  for (size_t i = 0; i < n; ++i) h[i] = to_bf16(x[i]);
  be->dropout(h.data(), keys.data(), rows, C, 3, p);
  for (size_t i = 0; i < n; i += 97)
    ASSERT_EQ(h[i].bits, to_bf16(a[i] == 0.0f ? 0.0f : to_float(to_bf16(x[i])) * scale).bits) << i;
  auto both_keep = [&](const Vec& u, const Vec& v) {
    size_t k = 0;
    for (size_t i = 0; i < n; ++i) k += u[i] != 0.0f && v[i] != 0.0f;
    return double(k) / double(n);
  };
  const double q = (1.0 - p) * (1.0 - p), band = 5 * std::sqrt(q * (1 - q) / double(n));
  EXPECT_NEAR(both_keep(a, apply(keys, 4, p)), q, band) << "another site";
  EXPECT_NEAR(both_keep(a, apply(other_seed, 3, p)), q, band) << "another seed";
  // row r against row r + 1 (the next position)
  std::vector<int32_t> next(keys.begin() + 2, keys.end());
  next.insert(next.end(), {0, 0});
  EXPECT_NEAR(both_keep(a, apply(next, 3, p)), q, band) << "another row";
  EXPECT_EQ(apply(keys, 3, 0.0f), x) << "p = 0";
}

// ---- encoder -------------------------------------------------------------------------------

TEST_F(CpuKernels, EncoderForwardBackward) {
  const int B = 2, T = 5, C = 12, V = 7;
  // Few distinct tokens, so that several positions share a row of dwte.
  const std::vector<int32_t> tokens = {3, 1, 3, 6, 0, 1, 1, 5, 3, 2};
  const Vec wte = random_vec(size_t(V) * C, 1), wpe = random_vec(size_t(T) * C, 2);
  Vec out(size_t(B) * T * C);
  be->encoder_forward(out.data(), tokens.data(), wte.data(), wpe.data(), B, T, C);
  DVec dwte_d = to_double(wte), dwpe_d = to_double(wpe);
  auto forward = [&] {
    DVec o(size_t(B) * T * C);
    for (int n = 0; n < B * T; ++n)
      for (int c = 0; c < C; ++c)
        o[size_t(n) * C + c] = dwte_d[size_t(tokens[n]) * C + c] + dwpe_d[size_t(n % T) * C + c];
    return o;
  };
  expect_close(out, forward(), 1e-7, "out");

  const Vec R = random_vec(out.size(), 3);
  auto loss = [&] {
    const DVec o = forward();
    return dot(o, R);
  };
  const DVec g_wte = finite_diff(dwte_d, loss), g_wpe = finite_diff(dwpe_d, loss);
  Vec dwte(wte.size(), 0.0f), dwpe(wpe.size(), 0.0f);
  be->encoder_backward(dwte.data(), dwpe.data(), R.data(), tokens.data(), B, T, C);
  expect_close(dwte, g_wte, 1e-5, "dwte");
  expect_close(dwpe, g_wpe, 1e-5, "dwpe");

  Vec dwte2 = random_vec(wte.size(), 4), dwpe2 = random_vec(wpe.size(), 5);
  const Vec dwte0 = dwte2, dwpe0 = dwpe2;
  be->encoder_backward(dwte2.data(), dwpe2.data(), R.data(), tokens.data(), B, T, C);
  expect_accumulated(dwte2, dwte0, dwte, "dwte +=");
  expect_accumulated(dwpe2, dwpe0, dwpe, "dwpe +=");
}

// Rows at positions of their own (data.reset_positions: each packed document from 0, so several
// rows of a sequence share a row of wpe): forward against the definition, backward against finite
// differences, and accumulating onto what dwpe held.
TEST_F(CpuKernels, EncoderAtGivenPositions) {
  const int B = 2, T = 5, C = 70, V = 7;  // C > 64: several channel slices in backward
  const std::vector<int32_t> tokens = {3, 1, 3, 6, 0, 1, 1, 5, 3, 2};
  const std::vector<int32_t> positions = {0, 1, 0, 1, 2, 3, 4, 0, 1, 0};
  const Vec wte = random_vec(size_t(V) * C, 1), wpe = random_vec(size_t(T) * C, 2);
  Vec out(size_t(B) * T * C);
  be->encoder_forward(out.data(), tokens.data(), wte.data(), wpe.data(), B, T, C, positions.data());
  DVec dwte_d = to_double(wte), dwpe_d = to_double(wpe);
  auto forward = [&] {
    DVec o(size_t(B) * T * C);
    for (int n = 0; n < B * T; ++n)
      for (int c = 0; c < C; ++c)
        o[size_t(n) * C + c] =
            dwte_d[size_t(tokens[n]) * C + c] + dwpe_d[size_t(positions[n]) * C + c];
    return o;
  };
  expect_close(out, forward(), 1e-7, "out");
  const Vec R = random_vec(out.size(), 3);
  const DVec g_wpe = finite_diff(dwpe_d, [&] { return dot(forward(), R); });
  Vec dwte(wte.size(), 0.0f), dwpe = random_vec(wpe.size(), 5);
  const Vec dwpe0 = dwpe;
  Vec fresh(wpe.size(), 0.0f);
  be->encoder_backward(dwte.data(), fresh.data(), R.data(), tokens.data(), B, T, C,
                       positions.data());
  expect_close(fresh, g_wpe, 1e-5, "dwpe");
  dwte.assign(wte.size(), 0.0f);
  be->encoder_backward(dwte.data(), dwpe.data(), R.data(), tokens.data(), B, T, C,
                       positions.data());
  expect_accumulated(dwpe, dwpe0, fresh, "dwpe +=");
}

// Vocabulary-parallel form: tokens < 0 (held by another rank) add a zero row and no dwte;
// wpe / dwpe == nullptr leave out the position term. The reference is computed in float in the
// kernel's order (one add per term, positions in order), so the comparison is exact.
TEST_F(CpuKernels, EncoderNegativeTokensAndNullPositions) {
  const int B = 2, T = 5, C = 70, V = 7;  // C > 64: several channel slices in backward
  const std::vector<int32_t> tokens = {3, -1, 3, 6, -7, 1, -1, 5, 3, 0};
  const Vec wte = random_vec(size_t(V) * C, 11), wpe = random_vec(size_t(T) * C, 12);
  const Vec dout = random_vec(size_t(B) * T * C, 13);
  for (bool with_pos : {true, false}) {
    SCOPED_TRACE(with_pos ? "with wpe" : "wpe == nullptr");
    const float* pos = with_pos ? wpe.data() : nullptr;
    Vec out(size_t(B) * T * C, 42.0f);  // overwritten everywhere
    be->encoder_forward(out.data(), tokens.data(), wte.data(), pos, B, T, C);
    for (int n = 0; n < B * T; ++n) {
      for (int c = 0; c < C; ++c) {
        const float tok = tokens[n] >= 0 ? wte[size_t(tokens[n]) * C + c] : 0.0f;
        const float want = with_pos ? tok + wpe[size_t(n % T) * C + c] : tok;
        ASSERT_EQ(out[size_t(n) * C + c], want) << n << "," << c;
      }
    }

    const Vec dwte0 = random_vec(wte.size(), 14), dwpe0 = random_vec(wpe.size(), 15);
    Vec dwte = dwte0, dwpe = dwpe0, want_wte = dwte0, want_wpe = dwpe0;
    be->encoder_backward(dwte.data(), with_pos ? dwpe.data() : nullptr, dout.data(), tokens.data(),
                         B, T, C);
    for (int n = 0; n < B * T; ++n) {
      for (int c = 0; c < C; ++c) {
        const float d = dout[size_t(n) * C + c];
        if (tokens[n] >= 0) want_wte[size_t(tokens[n]) * C + c] += d;
        if (with_pos) want_wpe[size_t(n % T) * C + c] += d;
      }
    }
    EXPECT_EQ(dwte, want_wte);
    EXPECT_EQ(dwpe, want_wpe);  // untouched when dwpe == nullptr
  }
  // Every token held elsewhere and no position term: zeros, and no gradient at all.
  const std::vector<int32_t> none(size_t(B) * T, -1);
  Vec out(size_t(B) * T * C, 42.0f);
  be->encoder_forward(out.data(), none.data(), wte.data(), nullptr, B, T, C);
  EXPECT_EQ(out, Vec(out.size(), 0.0f));
  Vec dwte = wte;
  be->encoder_backward(dwte.data(), nullptr, dout.data(), none.data(), B, T, C);
  EXPECT_EQ(dwte, wte);
}

// Two ranks each hold a slice of wte; tokens are mapped to local ids (or -1), and only rank 0
// adds wpe. The sum of the two outputs is the unsplit output bit for bit, and each slice's dwte
// rows (and rank 0's dwpe) are the unsplit gradients bit for bit.
TEST_F(CpuKernels, EncoderVocabSplitEqualsUnsplit) {
  const int B = 3, T = 4, C = 80, V = 10, V0 = 6;  // slice 0: ids 0..5, slice 1: ids 6..9
  const std::vector<int32_t> tokens = {0, 7, 9, 5, 5, 6, 2, 9, 1, 1, 8, 3};
  const Vec wte = random_vec(size_t(V) * C, 21), wpe = random_vec(size_t(T) * C, 22);
  const Vec dout = random_vec(size_t(B) * T * C, 23);
  const size_t NC = size_t(B) * T * C;

  Vec full(NC), dwte(wte.size(), 0.0f), dwpe(wpe.size(), 0.0f);
  be->encoder_forward(full.data(), tokens.data(), wte.data(), wpe.data(), B, T, C);
  be->encoder_backward(dwte.data(), dwpe.data(), dout.data(), tokens.data(), B, T, C);

  std::vector<int32_t> tok0(tokens.size()), tok1(tokens.size());
  for (size_t n = 0; n < tokens.size(); ++n) {
    tok0[n] = tokens[n] < V0 ? tokens[n] : -1;
    tok1[n] = tokens[n] >= V0 ? tokens[n] - V0 : -1;
  }
  const Vec wte0(wte.begin(), wte.begin() + size_t(V0) * C);
  const Vec wte1(wte.begin() + size_t(V0) * C, wte.end());
  Vec out0(NC), out1(NC);
  be->encoder_forward(out0.data(), tok0.data(), wte0.data(), wpe.data(), B, T, C);
  be->encoder_forward(out1.data(), tok1.data(), wte1.data(), nullptr, B, T, C);
  for (size_t i = 0; i < NC; ++i) ASSERT_EQ(out0[i] + out1[i], full[i]) << i;

  Vec dwte0(wte0.size(), 0.0f), dwte1(wte1.size(), 0.0f), dwpe0(wpe.size(), 0.0f);
  be->encoder_backward(dwte0.data(), dwpe0.data(), dout.data(), tok0.data(), B, T, C);
  be->encoder_backward(dwte1.data(), nullptr, dout.data(), tok1.data(), B, T, C);
  EXPECT_EQ(dwte0, Vec(dwte.begin(), dwte.begin() + size_t(V0) * C));
  EXPECT_EQ(dwte1, Vec(dwte.begin() + size_t(V0) * C, dwte.end()));
  EXPECT_EQ(dwpe0, dwpe);
}

// ---- layernorm -----------------------------------------------------------------------------

TEST_F(CpuKernels, LayerNormForwardBackward) {
  const int N = 10, C = 12;
  const Vec inp = random_vec(size_t(N) * C, 11, -2.0f, 3.0f);
  const Vec w = random_vec(C, 12, 0.5f, 1.5f), b = random_vec(C, 13);
  Vec out(inp.size()), mean(N), rstd(N);
  be->layernorm_forward(out.data(), mean.data(), rstd.data(), inp.data(), w.data(), b.data(), N, C);
  DVec x = to_double(inp), wd = to_double(w), bd = to_double(b);
  expect_close(out, naive_layernorm(x, wd, bd, N, C), 1e-6, "out");
  for (int n = 0; n < N; ++n) {
    double m = 0.0, v = 0.0;
    for (int c = 0; c < C; ++c) m += x[size_t(n) * C + c];
    m /= C;
    for (int c = 0; c < C; ++c) v += std::pow(x[size_t(n) * C + c] - m, 2);
    EXPECT_NEAR(mean[n], m, 1e-6);
    EXPECT_NEAR(rstd[n], 1.0 / std::sqrt(v / C + 1e-5), 1e-5 / std::sqrt(v / C));
  }

  const Vec R = random_vec(out.size(), 14);
  auto loss = [&] { return dot(naive_layernorm(x, wd, bd, N, C), R); };
  const DVec g_x = finite_diff(x, loss), g_w = finite_diff(wd, loss), g_b = finite_diff(bd, loss);
  Vec dx(inp.size(), 0.0f), dw(C, 0.0f), db(C, 0.0f);
  be->layernorm_backward(dx.data(), dw.data(), db.data(), R.data(), inp.data(), w.data(),
                         mean.data(), rstd.data(), N, C);
  expect_close(dx, g_x, 1e-4, "dinp");
  expect_close(dw, g_w, 1e-5, "dweight");
  expect_close(db, g_b, 1e-5, "dbias");

  Vec dx2 = random_vec(dx.size(), 15), dw2 = random_vec(C, 16), db2 = random_vec(C, 17);
  const Vec dx0 = dx2, dw0 = dw2, db0 = db2;
  be->layernorm_backward(dx2.data(), dw2.data(), db2.data(), R.data(), inp.data(), w.data(),
                         mean.data(), rstd.data(), N, C);
  expect_accumulated(dx2, dx0, dx, "dinp +=");
  expect_accumulated(dw2, dw0, dw, "dweight +=");
  expect_accumulated(db2, db0, db, "dbias +=");
}

// RMSNorm (mean and bias null): y = x·w/sqrt(mean(x²) + 1e-5), written here in double; its
// backward against finite differences, accumulating; the fused residual form too.
DVec naive_rmsnorm(const DVec& inp, const DVec& w, int N, int C) {
  DVec out(inp.size());
  for (int n = 0; n < N; ++n) {
    double sq = 0.0;
    for (int c = 0; c < C; ++c) sq += inp[size_t(n) * C + c] * inp[size_t(n) * C + c];
    const double r = 1.0 / std::sqrt(sq / C + 1e-5);
    for (int c = 0; c < C; ++c) out[size_t(n) * C + c] = inp[size_t(n) * C + c] * r * w[c];
  }
  return out;
}

TEST_F(CpuKernels, RmsNormForwardBackward) {
  const int N = 10, C = 12;
  const Vec inp = random_vec(size_t(N) * C, 18, -2.0f, 3.0f), w = random_vec(C, 19, 0.5f, 1.5f);
  Vec out(inp.size()), rstd(N);
  be->layernorm_forward(out.data(), nullptr, rstd.data(), inp.data(), w.data(), nullptr, N, C);
  DVec x = to_double(inp), wd = to_double(w);
  expect_close(out, naive_rmsnorm(x, wd, N, C), 1e-6, "out");
  const Vec R = random_vec(out.size(), 20);
  auto loss = [&] { return dot(naive_rmsnorm(x, wd, N, C), R); };
  const DVec g_x = finite_diff(x, loss), g_w = finite_diff(wd, loss);
  Vec dx = random_vec(inp.size(), 21), dw = random_vec(C, 22);
  const Vec dx0 = dx, dw0 = dw;
  be->layernorm_backward(dx.data(), dw.data(), nullptr, R.data(), inp.data(), w.data(), nullptr,
                         rstd.data(), N, C);
  Vec gx(dx.size()), gw(C);
  for (size_t i = 0; i < dx.size(); ++i) gx[i] = dx[i] - dx0[i];
  for (int c = 0; c < C; ++c) gw[size_t(c)] = dw[size_t(c)] - dw0[size_t(c)];
  expect_close(gx, g_x, 1e-4, "dinp +=");
  expect_close(gw, g_w, 1e-5, "dweight +=");
  // sum = a + b, then the RMSNorm of sum.
  const Vec a = random_vec(inp.size(), 23);
  Vec b(inp.size()), sum(inp.size()), out2(inp.size()), rstd2(N);
  for (size_t i = 0; i < b.size(); ++i) b[i] = inp[i] - a[i];
  be->residual_layernorm_forward(sum.data(), out2.data(), nullptr, rstd2.data(), a.data(), b.data(),
                                 w.data(), nullptr, N, C);
  expect_close(out2, naive_rmsnorm(to_double(sum), wd, N, C), 1e-6, "residual form");
}

// ---- matmul --------------------------------------------------------------------------------

void check_matmul(Backend& be, bool with_bias, bool with_dinp) {
  const int N = 10, IC = 12, OC = 37;
  const Vec inp = random_vec(size_t(N) * IC, 21), w = random_vec(size_t(OC) * IC, 22);
  const Vec bias = random_vec(OC, 23);
  Vec out(size_t(N) * OC, 123.0f);  // garbage: forward must overwrite, not accumulate
  be.matmul_forward(out.data(), inp.data(), w.data(), with_bias ? bias.data() : nullptr, N, IC, OC);
  DVec x = to_double(inp), wd = to_double(w), bd = to_double(bias);
  auto forward = [&] { return naive_matmul(x, wd, with_bias ? &bd : nullptr, N, IC, OC); };
  expect_close(out, forward(), 1e-6, "out");

  const Vec R = random_vec(out.size(), 24);
  auto loss = [&] { return dot(forward(), R); };
  const DVec g_x = finite_diff(x, loss), g_w = finite_diff(wd, loss), g_b = finite_diff(bd, loss);
  Vec dx(inp.size(), 0.0f), dw(w.size(), 0.0f), db(OC, 0.0f);
  be.matmul_backward(with_dinp ? dx.data() : nullptr, dw.data(), with_bias ? db.data() : nullptr,
                     R.data(), inp.data(), w.data(), N, IC, OC);
  if (with_dinp) expect_close(dx, g_x, 1e-5, "dinp");
  expect_close(dw, g_w, 1e-5, "dweight");
  if (with_bias) expect_close(db, g_b, 1e-5, "dbias");

  Vec dx2 = random_vec(dx.size(), 25), dw2 = random_vec(dw.size(), 26), db2 = random_vec(OC, 27);
  const Vec dx0 = dx2, dw0 = dw2, db0 = db2;
  be.matmul_backward(with_dinp ? dx2.data() : nullptr, dw2.data(), with_bias ? db2.data() : nullptr,
                     R.data(), inp.data(), w.data(), N, IC, OC);
  if (with_dinp)
    expect_accumulated(dx2, dx0, dx, "dinp +=");
  else
    EXPECT_EQ(dx2, dx0);
  expect_accumulated(dw2, dw0, dw, "dweight +=");
  if (with_bias)
    expect_accumulated(db2, db0, db, "dbias +=");
  else
    EXPECT_EQ(db2, db0);
}

TEST_F(CpuKernels, MatmulWithBias) { check_matmul(*be, true, true); }
TEST_F(CpuKernels, MatmulWithoutBias) { check_matmul(*be, false, true); }
TEST_F(CpuKernels, MatmulWithoutDinp) { check_matmul(*be, true, false); }

// The zero-bubble pipeline's split: the input gradient alone (dweight and dbias null), the
// weight and bias gradients later (dinp null), bit for bit what one call forms; the same for
// the FFN's second layer through the GELU. Nothing else is written by either half.
TEST_F(CpuKernels, MatmulBackwardSplitsIntoInputAndWeightPasses) {
  const int N = 33, IC = 20, OC = 24;
  const Vec inp = random_vec(size_t(N) * IC, 91), w = random_vec(size_t(OC) * IC, 92);
  const Vec dout = random_vec(size_t(N) * OC, 93), pre = random_vec(inp.size(), 94);
  const Vec dx0 = random_vec(inp.size(), 95), dw0 = random_vec(w.size(), 96);
  const Vec db0 = random_vec(OC, 97);
  Vec dx = dx0, dw = dw0, db = db0;
  be->matmul_backward(dx.data(), dw.data(), db.data(), dout.data(), inp.data(), w.data(), N, IC,
                      OC);
  Vec sx = dx0, sw = dw0, sb = db0;
  be->matmul_backward(sx.data(), nullptr, nullptr, dout.data(), inp.data(), w.data(), N, IC, OC);
  EXPECT_EQ(sw, dw0);
  EXPECT_EQ(sb, db0);
  EXPECT_EQ(sx, dx);
  be->matmul_backward(nullptr, sw.data(), sb.data(), dout.data(), inp.data(), w.data(), N, IC, OC);
  EXPECT_EQ(sw, dw);
  EXPECT_EQ(sb, db);
  EXPECT_EQ(sx, dx);

  Vec act(pre.size());
  be->gelu_forward(act.data(), pre.data(), act.size());
  Vec dpre(pre.size()), dact(pre.size());
  dw = dw0;
  db = db0;
  be->matmul_backward_gelu(dpre.data(), dact.data(), dw.data(), db.data(), dout.data(), act.data(),
                           pre.data(), w.data(), N, IC, OC, GradMode::overwrite);
  Vec spre(pre.size()), sact(pre.size());
  sw = dw0;
  sb = db0;
  be->matmul_backward_gelu(spre.data(), sact.data(), nullptr, nullptr, dout.data(), act.data(),
                           pre.data(), w.data(), N, IC, OC, GradMode::overwrite);
  EXPECT_EQ(spre, dpre);
  EXPECT_EQ(sw, dw0);
  be->matmul_backward(nullptr, sw.data(), sb.data(), dout.data(), act.data(), w.data(), N, IC, OC);
  EXPECT_EQ(sw, dw);
  EXPECT_EQ(sb, db);
}

// Shapes large enough for the products to be split over threads, once along rows and once
// along columns of each product (forward, dinp and dweight use all four split/transpose
// combinations between them); checked against the analytic gradients in double.
void check_matmul_split(Backend& be, int N, int IC, int OC) {
  const Vec inp = random_vec(size_t(N) * IC, 81), w = random_vec(size_t(OC) * IC, 82);
  const Vec bias = random_vec(OC, 83), dout = random_vec(size_t(N) * OC, 84);
  Vec out(size_t(N) * OC);
  be.matmul_forward(out.data(), inp.data(), w.data(), bias.data(), N, IC, OC);
  const DVec x = to_double(inp), wd = to_double(w), bd = to_double(bias), dy = to_double(dout);
  expect_close(out, naive_matmul(x, wd, &bd, N, IC, OC), 1e-6, "out");
  DVec dx(inp.size(), 0.0), dw(w.size(), 0.0), db(OC, 0.0);
  for (int n = 0; n < N; ++n)
    for (int o = 0; o < OC; ++o) {
      const double d = dy[size_t(n) * OC + o];
      db[o] += d;
      for (int i = 0; i < IC; ++i) {
        dx[size_t(n) * IC + i] += d * wd[size_t(o) * IC + i];
        dw[size_t(o) * IC + i] += d * x[size_t(n) * IC + i];
      }
    }
  Vec gx(inp.size(), 0.0f), gw(w.size(), 0.0f), gb(OC, 0.0f);
  be.matmul_backward(gx.data(), gw.data(), gb.data(), dout.data(), inp.data(), w.data(), N, IC, OC);
  expect_close(gx, dx, 1e-5, "dinp");
  expect_close(gw, dw, 1e-5, "dweight");
  expect_close(gb, db, 1e-5, "dbias");
}

TEST_F(CpuKernels, MatmulSplitOverThreadsTallOutput) { check_matmul_split(*be, 300, 200, 130); }
TEST_F(CpuKernels, MatmulSplitOverThreadsWideOutput) { check_matmul_split(*be, 40, 200, 300); }

// ---- attention -----------------------------------------------------------------------------

// stride > 1 checks only every stride-th coordinate of dqkv (for the longer sequence). NKV
// key/value heads (0: NH). key_begin: a document mask ([B,T], backend.h), or none. cap: the
// scores' soft cap (0: none). sinks: attention sinks [NH] (none: without), whose gradient is
// checked against finite differences too.
void check_attention(Backend& be, int B, int T, int C, int NH, size_t stride, int NKV = 0,
                     const std::vector<int32_t>* key_begin = nullptr, float cap = 0.0f,
                     AttentionDropout drop = {}, const Vec& sinks = {}) {
  if (NKV == 0) NKV = NH;
  const Vec qkv = random_vec(size_t(B) * T * qkv_width(C, NH, NKV), 31, -2.0f, 2.0f);
  Vec out(size_t(B) * T * C), att(size_t(B) * NH * T * T, 7.0f);
  const int32_t* kb = key_begin ? key_begin->data() : nullptr;
  const float* z = sinks.empty() ? nullptr : sinks.data();
  DVec zd = to_double(sinks);
  const DVec* zp = sinks.empty() ? nullptr : &zd;
  be.attention_forward(out.data(), att.data(), qkv.data(), B, T, C, NH, NKV, kb, {}, 0.0f, cap,
                       drop, z);
  DVec x = to_double(qkv), probs;
  const AttentionDropMask mask = drop.mask(NKV);
  expect_close(out, naive_attention(x, B, T, C, NH, &probs, NKV, key_begin, cap, mask, zp), 1e-5,
               "out");
  for (int bh = 0; bh < B * NH; ++bh)
    for (int i = 0; i < T; ++i)
      for (int j = 0; j <= i; ++j) {
        const size_t k = (size_t(bh) * T + i) * T + j;
        ASSERT_NEAR(att[k], probs[k], 1e-6) << "att at bh=" << bh << " i=" << i << " j=" << j;
      }

  const Vec R = random_vec(out.size(), 32);
  auto loss = [&] {
    return dot(naive_attention(x, B, T, C, NH, nullptr, NKV, key_begin, cap, mask, zp), R);
  };
  const DVec g = finite_diff(x, loss, stride);
  // Garbage above the diagonal of att must not matter to the backward (it is unspecified).
  for (int bh = 0; bh < B * NH; ++bh)
    for (int i = 0; i < T; ++i)
      for (int j = i + 1; j < T; ++j) att[(size_t(bh) * T + i) * T + j] = 1e3f;
  Vec dqkv(qkv.size(), 0.0f), scratch(att.size(), 5.0f);
  Vec dsinks(sinks.size(), 0.5f);  // accumulated onto
  be.attention_backward(dqkv.data(), scratch.data(), R.data(), qkv.data(), att.data(), B, T, C, NH,
                        NKV, GradMode::accumulate, kb, {}, 0.0f, cap, drop, z,
                        z != nullptr ? dsinks.data() : nullptr);
  expect_close(dqkv, g, 1e-4, "dqkv", stride);
  if (z != nullptr) {
    DVec gz = finite_diff(zd, loss);
    for (double& v : gz) v += 0.5;
    expect_close(dsinks, gz, 1e-4, "dsinks");
  }

  Vec dqkv2 = random_vec(qkv.size(), 33);
  const Vec dqkv0 = dqkv2;
  be.attention_backward(dqkv2.data(), scratch.data(), R.data(), qkv.data(), att.data(), B, T, C, NH,
                        NKV, GradMode::accumulate, kb, {}, 0.0f, cap, drop);
  expect_accumulated(dqkv2, dqkv0, dqkv, "dqkv +=");

  // overwrite: whatever dqkv held is replaced by the gradient.
  Vec dqkv3 = random_vec(qkv.size(), 34);
  be.attention_backward(dqkv3.data(), scratch.data(), R.data(), qkv.data(), att.data(), B, T, C, NH,
                        NKV, GradMode::overwrite, kb, {}, 0.0f, cap, drop);
  EXPECT_EQ(dqkv3, dqkv);
}

// Soft-capped scores (model.attn_softcap): a cap of 1.5 bends scores that reach about ±8 here;
// then over several causal blocks with documents and grouped queries (the backward recomputes
// each row block's scores from its first key on).
TEST_F(CpuKernels, AttentionSoftCap) { check_attention(*be, 2, 5, 12, 3, 1, 0, nullptr, 1.5f); }
TEST_F(CpuKernels, AttentionSoftCapSeveralBlocksDocumentsGrouped) {
  std::vector<int32_t> kb(150);
  for (int t = 0; t < 150; ++t) kb[size_t(t)] = t < 70 ? 0 : 70;
  check_attention(*be, 1, 150, 12, 6, 11, 2, &kb, 2.0f);
}

TEST_F(CpuKernels, AttentionSmall) { check_attention(*be, 2, 5, 12, 3, 1); }
// Attention sinks (model.attn_sinks): logits around the scores' size, one of them large enough to
// take most of its rows' attention; then over several causal blocks with documents, grouped
// queries, a soft cap (the sinks are not capped) and dropout.
TEST_F(CpuKernels, AttentionSinks) {
  check_attention(*be, 2, 5, 12, 3, 1, 0, nullptr, 0.0f, {}, Vec{0.3f, -1.0f, 2.5f});
}
TEST_F(CpuKernels, AttentionSinksSeveralBlocksDocumentsGroupedCappedDropout) {
  std::vector<int32_t> kb(150);
  for (int t = 0; t < 150; ++t) kb[size_t(t)] = t < 70 ? 0 : 70;
  const std::vector<int32_t> keys = attention_reference::dropout_row_keys(1, 150, 5, 9);
  const AttentionDropout drop{keys.data(), 0.2f, 3, 0, 2};
  check_attention(*be, 1, 150, 12, 6, 11, 2, &kb, 2.0f, drop,
                  Vec{0.5f, -0.7f, 1.5f, 0.0f, -2.0f, 1.0f});
}
TEST_F(CpuKernels, AttentionSingleToken) { check_attention(*be, 2, 1, 8, 2, 1); }
// Grouped-query attention: 4 query heads over 2 key/value heads, and over one (multi-query);
// against the definition (naive_attention reads head h % NKV) and finite differences, whose
// k and v gradients sum over each key/value head's query heads.
TEST_F(CpuKernels, AttentionGroupedQuery) { check_attention(*be, 2, 5, 16, 4, 1, 2); }
TEST_F(CpuKernels, AttentionMultiQuery) { check_attention(*be, 2, 5, 16, 4, 1, 1); }
// Logits spanning a range of ~200: probabilities underflow (the kernel flushes those below
// 1e-30 to 0), yet outputs and gradients stay accurate and free of NaN and denormals.
TEST_F(CpuKernels, AttentionExtremeLogits) {
  const int B = 1, T = 9, C = 8, NH = 2;
  Vec qkv = random_vec(size_t(B) * T * 3 * C, 91, -7.0f, 7.0f);
  Vec out(size_t(B) * T * C), att(size_t(B) * NH * T * T);
  be->attention_forward(out.data(), att.data(), qkv.data(), B, T, C, NH, NH);
  DVec x = to_double(qkv);
  expect_close(out, naive_attention(x, B, T, C, NH), 1e-5, "out");
  const Vec R = random_vec(out.size(), 92);
  const DVec g = finite_diff(x, [&] { return dot(naive_attention(x, B, T, C, NH), R); });
  Vec dqkv(qkv.size(), 0.0f), scratch(att.size());
  be->attention_backward(dqkv.data(), scratch.data(), R.data(), qkv.data(), att.data(), B, T, C, NH,
                         NH);
  expect_close(dqkv, g, 1e-4, "dqkv");
  for (float v : att) EXPECT_NE(std::fpclassify(v), FP_SUBNORMAL);
  for (float v : dqkv) EXPECT_TRUE(std::isfinite(v));
}

// Longer than the kernel's 64-row causal blocks, with a partial last block.
TEST_F(CpuKernels, AttentionSeveralCausalBlocks) { check_attention(*be, 1, 150, 6, 2, 7); }
TEST_F(CpuKernels, AttentionGroupedSeveralCausalBlocks) {
  check_attention(*be, 1, 150, 12, 6, 11, 2);
}

// Document masks (packed sequences): each query sees the keys of its own document only, against
// the definition and finite differences; documents of one token, a document per sequence, and
// boundaries inside and at the edges of the kernel's 64-row blocks.
TEST_F(CpuKernels, AttentionDocumentMask) {
  const std::vector<int32_t> kb = attention_reference::key_begin_of_starts(2, 7, {{0, 3, 4}, {0}});
  check_attention(*be, 2, 7, 12, 3, 1, 0, &kb);
}
// A sliding window of 40 keys over 150 rows (model.sliding_window): the kernel's row blocks start
// their products at their first row's window and its key blocks end theirs at the last query
// that sees them.
TEST_F(CpuKernels, AttentionSlidingWindowSeveralBlocks) {
  std::vector<int32_t> kb(150);
  for (int t = 0; t < 150; ++t) kb[size_t(t)] = std::max(0, t - 39);
  check_attention(*be, 1, 150, 12, 6, 11, 3, &kb);
}
TEST_F(CpuKernels, AttentionDocumentMaskGroupedSeveralBlocks) {
  const std::vector<int32_t> kb =
      attention_reference::key_begin_of_starts(1, 150, {{0, 1, 63, 64, 100, 149}});
  check_attention(*be, 1, 150, 12, 6, 11, 2, &kb);
}

// Query ranges (QueryRows, context parallelism): rows first .. first+count-1 of each sequence
// against keys 0 .. first+count-1, out and att holding the range's rows only. Against the
// definition's rows and the finite differences of their loss; the range starting inside and at
// the edges of the kernel's 64-row blocks, with masks and grouped heads.
void check_attention_rows(Backend& be, int B, int T, int C, int NH, int NKV, QueryRows rows,
                          size_t stride, const std::vector<int32_t>* key_begin = nullptr,
                          AttentionDropout drop = {}, const Vec& sinks = {}) {
  const int n = rows.count, q0 = rows.first, L = q0 + n;
  const Vec qkv = random_vec(size_t(B) * T * qkv_width(C, NH, NKV), 41, -2.0f, 2.0f);
  Vec out(size_t(B) * n * C, 3.0f), att(size_t(B) * NH * n * L, 7.0f);
  const int32_t* kb = key_begin ? key_begin->data() : nullptr;
  const float* z = sinks.empty() ? nullptr : sinks.data();
  DVec zd = to_double(sinks);
  const DVec* zp = sinks.empty() ? nullptr : &zd;
  be.attention_forward(out.data(), att.data(), qkv.data(), B, T, C, NH, NKV, kb, rows, 0.0f, 0.0f,
                       drop, z);
  DVec x = to_double(qkv), probs;
  const AttentionDropMask mask = drop.mask(NKV);
  const DVec full = naive_attention(x, B, T, C, NH, &probs, NKV, key_begin, 0.0, mask, zp);
  auto range_of = [&](const DVec& all) {  // rows q0 .. L-1 of each sequence
    DVec r(size_t(B) * n * C);
    for (int b = 0; b < B; ++b)
      std::copy_n(all.begin() + (size_t(b) * T + q0) * C, size_t(n) * C,
                  r.begin() + size_t(b) * n * C);
    return r;
  };
  expect_close(out, range_of(full), 1e-5, "out");
  for (int bh = 0; bh < B * NH; ++bh)
    for (int i = q0; i < L; ++i)
      for (int j = 0; j <= i; ++j) {
        const float got = att[(size_t(bh) * n + (i - q0)) * L + j];
        ASSERT_NEAR(got, probs[(size_t(bh) * T + i) * T + j], 1e-6)
            << "att at bh=" << bh << " i=" << i << " j=" << j;
      }
  const Vec R = random_vec(out.size(), 42);
  auto loss = [&] {
    return dot(range_of(naive_attention(x, B, T, C, NH, nullptr, NKV, key_begin, 0.0, mask, zp)),
               R);
  };
  const DVec g = finite_diff(x, loss, stride);
  for (int bh = 0; bh < B * NH; ++bh)  // unspecified above the diagonal: must not matter
    for (int i = q0; i < L; ++i)
      for (int j = i + 1; j < L; ++j) att[(size_t(bh) * n + (i - q0)) * L + j] = 1e3f;
  Vec dqkv = random_vec(qkv.size(), 43), scratch(att.size(), 5.0f);
  Vec dsinks(sinks.size(), 0.0f);
  be.attention_backward(dqkv.data(), scratch.data(), R.data(), qkv.data(), att.data(), B, T, C, NH,
                        NKV, GradMode::overwrite, kb, rows, 0.0f, 0.0f, drop, z,
                        z != nullptr ? dsinks.data() : nullptr);
  expect_close(dqkv, g, 1e-4, "dqkv", stride);
  if (z != nullptr) expect_close(dsinks, finite_diff(zd, loss), 1e-4, "dsinks");
  Vec dqkv2 = random_vec(qkv.size(), 44);
  const Vec dqkv0 = dqkv2;
  be.attention_backward(dqkv2.data(), scratch.data(), R.data(), qkv.data(), att.data(), B, T, C, NH,
                        NKV, GradMode::accumulate, kb, rows, 0.0f, 0.0f, drop);
  expect_accumulated(dqkv2, dqkv0, dqkv, "dqkv +=");
}

TEST_F(CpuKernels, AttentionQueryRowsSmall) {
  check_attention_rows(*be, 2, 7, 12, 3, 3, QueryRows{3, 2}, 1);
  check_attention_rows(*be, 2, 7, 12, 3, 3, QueryRows{0, 4}, 1);
  check_attention_rows(*be, 2, 7, 12, 3, 3, QueryRows{5, 2}, 1);
}
TEST_F(CpuKernels, AttentionQueryRowsSeveralBlocks) {
  check_attention_rows(*be, 1, 150, 6, 2, 2, QueryRows{70, 50}, 7);    // inside, unaligned
  check_attention_rows(*be, 1, 150, 6, 2, 2, QueryRows{64, 86}, 7);    // aligned, to the end
  check_attention_rows(*be, 1, 150, 12, 6, 3, QueryRows{37, 80}, 11);  // grouped heads
}
TEST_F(CpuKernels, AttentionQueryRowsMasked) {
  const std::vector<int32_t> kb =
      attention_reference::key_begin_of_starts(1, 150, {{0, 1, 63, 64, 100, 149}});
  check_attention_rows(*be, 1, 150, 12, 6, 2, QueryRows{70, 75}, 11, &kb);
  std::vector<int32_t> window(150);
  for (int t = 0; t < 150; ++t) window[size_t(t)] = std::max(0, t - 39);
  check_attention_rows(*be, 1, 150, 6, 2, 2, QueryRows{100, 30}, 7, &window);
}
// Attention sinks over a query range (context parallelism): the range's rows only add to their
// gradient.
TEST_F(CpuKernels, AttentionQueryRowsSinks) {
  check_attention_rows(*be, 2, 7, 12, 3, 3, QueryRows{3, 2}, 1, nullptr, {},
                       Vec{0.4f, -0.5f, 1.5f});
  check_attention_rows(*be, 1, 150, 12, 6, 2, QueryRows{70, 75}, 11, nullptr, {},
                       Vec{0.5f, -1.5f, 2.0f, 0.0f, 1.0f, -0.2f});
}

// ---- attention dropout ---------------------------------------------------------------------

// Row keys [B, T] (sequence 9 + b, position t) as the model forms them for the attention dropout.
std::vector<int32_t> attention_keys(int B, int T, uint64_t seed) {
  return attention_reference::dropout_row_keys(B, T, seed, 9);
}

// The mask itself: over the causal entries of a few heads about p of the probabilities are
// dropped; another layer, head or seed drops others; p = 0 keeps every one.
TEST_F(CpuKernels, AttentionDropoutMaskRate) {
  const int B = 2, T = 200, NH = 4;
  const std::vector<int32_t> keys = attention_keys(B, T, 3), other = attention_keys(B, T, 4);
  const AttentionDropMask m = AttentionDropout{keys.data(), 0.3f, 2, 0}.mask(NH);
  const AttentionDropMask layer = AttentionDropout{keys.data(), 0.3f, 3, 0}.mask(NH);
  const AttentionDropMask seed = AttentionDropout{other.data(), 0.3f, 2, 0}.mask(NH);
  EXPECT_FALSE((AttentionDropout{keys.data(), 0.0f, 2, 0}.mask(NH).on()));
  size_t n = 0, dropped = 0, same_layer = 0, same_head = 0, same_seed = 0;
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < NH; ++h)
      for (int i = 0; i < T; ++i)
        for (int j = 0; j <= i; ++j, ++n) {
          const float f = m.factor(size_t(b), T, h, i, j);
          ASSERT_TRUE(f == 0.0f || f == dropout_scale(0.3f));
          dropped += f == 0.0f;
          same_layer += f == layer.factor(size_t(b), T, h, i, j);
          same_head += f == m.factor(size_t(b), T, (h + 1) % NH, i, j);
          same_seed += f == seed.factor(size_t(b), T, h, i, j);
        }
  EXPECT_NEAR(double(dropped) / double(n), 0.3, 0.01);
  // Independent masks agree on 0.3² + 0.7² = 58% of the entries.
  for (size_t same : {same_layer, same_head, same_seed})
    EXPECT_NEAR(double(same) / double(n), 0.58, 0.01);
}

// The kernels against the definition with the mask (naive_attention) and its finite
// differences: the forward's P·V reads the dropped probabilities, att keeps the undropped ones,
// the backward forms the mask again; over several causal blocks, with documents, grouped heads,
// a soft cap, head 0 of the call being global head 3, and query ranges.
TEST_F(CpuKernels, AttentionDropout) {
  const std::vector<int32_t> keys = attention_keys(2, 70, 5);
  const AttentionDropout drop{keys.data(), 0.3f, 1, 3};
  const std::vector<int32_t> kb =
      attention_reference::key_begin_of_starts(2, 70, {{0, 5, 64, 65}, {0}});
  check_attention(*be, 2, 70, 12, 3, 5, 0, nullptr, 0.0f, drop);
  check_attention(*be, 2, 70, 12, 3, 5, 1, &kb, 1.5f, drop);
  // A tensor-parallel rank's grouped heads: key/value heads 2, 3 of 4, query heads 2, 3, 6, 7.
  const AttentionDropout grouped{keys.data(), 0.3f, 1, 2, 4};
  EXPECT_EQ(grouped.mask(2).global_head(0), 2u);
  EXPECT_EQ(grouped.mask(2).global_head(3), 7u);
  check_attention(*be, 2, 70, 16, 4, 5, 2, &kb, 0.0f, grouped);
}
TEST_F(CpuKernels, AttentionDropoutQueryRows) {
  const std::vector<int32_t> keys = attention_keys(1, 150, 6);
  const AttentionDropout drop{keys.data(), 0.25f, 4, 2};
  check_attention_rows(*be, 1, 150, 12, 6, 3, QueryRows{37, 80}, 11, nullptr, drop);
}

// ---- rotary position embedding --------------------------------------------------------------

// The rotation written from its definition (RoFormer, in the "rotate half" pairing): for head
// dimension hd, frequency f_i = theta^(−2i/hd), the pair (x_i, x_{i+hd/2}) at position p turns
// by the angle p·f_i; v is not touched. In double, with the angles computed here.
// positions (non-empty): row r at positions[r] instead of pos0 + r % T.
DVec naive_rope(const DVec& qkv, int N, int T, int pos0, int C, int NH, int NKV, double theta,
                const std::vector<int32_t>& positions = {}) {
  const int hd = C / NH, half = hd / 2;
  const size_t W = size_t(C) + 2 * size_t(NKV) * hd;
  DVec out = qkv;
  for (int r = 0; r < N; ++r) {
    const double p = positions.empty() ? pos0 + r % T : positions[size_t(r)];
    for (int j = 0; j < NH + NKV; ++j)  // q heads then k heads
      for (int i = 0; i < half; ++i) {
        const double a = p * std::pow(theta, -2.0 * i / hd);
        const size_t x1 = size_t(r) * W + size_t(j) * hd + i, x2 = x1 + half;
        out[x1] = qkv[x1] * std::cos(a) - qkv[x2] * std::sin(a);
        out[x2] = qkv[x2] * std::cos(a) + qkv[x1] * std::sin(a);
      }
  }
  return out;
}

// The op's table, [seq_len, hd]: cosines then sines, as gpt_shape.h's rope_table lays it out.
Vec rope_angles(int seq_len, int hd, double theta) {
  Vec t(size_t(seq_len) * hd);
  for (int p = 0; p < seq_len; ++p)
    for (int i = 0; i < hd / 2; ++i) {
      const double a = p * std::pow(theta, -2.0 * i / hd);
      t[size_t(p) * hd + i] = float(std::cos(a));
      t[size_t(p) * hd + hd / 2 + i] = float(std::sin(a));
    }
  return t;
}

// Forward against the definition for two sequences starting at position pos0 (decoding's
// rows), v unchanged bit for bit; backward (inverse) against finite differences, and as the
// inverse of the forward.
// With NKV < NH (grouped-query attention) the rows are narrower and only NKV k heads turn.
void check_rope(Backend& be, int NH, int NKV) {
  const int B = 2, T = 5, C = 24, seq_len = 16, hd = C / NH;
  const int W = qkv_width(C, NH, NKV);
  const double theta = 500.0;  // small: the slow frequencies turn visibly within 16 positions
  const Vec table = rope_angles(seq_len, hd, theta);
  for (int pos0 : {0, 11}) {
    const Vec qkv = random_vec(size_t(B) * T * W, 61 + uint32_t(pos0), -2.0f, 2.0f);
    Vec out = qkv;
    be.rope(out.data(), table.data(), B * T, T, pos0, C, NH, NKV, false);
    DVec x = to_double(qkv);
    expect_close(out, naive_rope(x, B * T, T, pos0, C, NH, NKV, theta), 1e-6, "rope");
    for (int r = 0; r < B * T; ++r)
      for (int c = C + NKV * hd; c < W; ++c)
        ASSERT_EQ(out[size_t(r) * W + c], qkv[size_t(r) * W + c]) << "v changed";

    const Vec R = random_vec(qkv.size(), 62);
    const DVec g =
        finite_diff(x, [&] { return dot(naive_rope(x, B * T, T, pos0, C, NH, NKV, theta), R); });
    Vec dx = R;
    be.rope(dx.data(), table.data(), B * T, T, pos0, C, NH, NKV, true);
    expect_close(dx, g, 1e-5, "rope backward");

    be.rope(out.data(), table.data(), B * T, T, pos0, C, NH, NKV, true);
    expect_close(out, qkv, 1e-6, "inverse of the forward");
  }
}

TEST_F(CpuKernels, RopeForwardBackward) { check_rope(*be, 3, 3); }  // GPT-2's q|k|v
TEST_F(CpuKernels, RopeForwardBackwardGroupedQuery) { check_rope(*be, 6, 2); }

// Rows at positions of their own (data.reset_positions: each packed document from 0), against the
// definition; the inverse undoes the forward.
TEST_F(CpuKernels, RopeAtGivenPositions) {
  const int N = 10, C = 24, NH = 6, NKV = 2, hd = C / NH, W = qkv_width(C, NH, NKV);
  const double theta = 500.0;
  const Vec table = rope_angles(16, hd, theta);
  const std::vector<int32_t> positions = {3, 4, 0, 1, 2, 0, 15, 0, 1, 9};
  const Vec qkv = random_vec(size_t(N) * W, 63, -2.0f, 2.0f);
  Vec out = qkv;
  // T and pos0 are not read: values that would give other positions.
  be->rope(out.data(), table.data(), N, 2, 5, C, NH, NKV, false, positions.data());
  expect_close(out, naive_rope(to_double(qkv), N, 1, 0, C, NH, NKV, theta, positions), 1e-6,
               "rope at positions");
  be->rope(out.data(), table.data(), N, 2, 5, C, NH, NKV, true, positions.data());
  expect_close(out, qkv, 1e-6, "inverse");
}

// ---- per-head RMSNorm of q and k --------------------------------------------------------------

// The norm from its definition, in double: each q head's hd values x → x·wq/sqrt(mean(x²) + 1e-5),
// each k head's with wk, v unchanged.
DVec naive_qk_norm(const DVec& qkv, const DVec& wq, const DVec& wk, int N, int C, int NH, int NKV) {
  const int hd = C / NH;
  const size_t W = size_t(C) + 2 * size_t(NKV) * hd;
  DVec out = qkv;
  for (int n = 0; n < N; ++n)
    for (int j = 0; j < NH + NKV; ++j) {
      const size_t o = size_t(n) * W + size_t(j) * hd;
      double ss = 0;
      for (int i = 0; i < hd; ++i) ss += qkv[o + i] * qkv[o + i];
      const double r = 1.0 / std::sqrt(ss / hd + 1e-5);
      for (int i = 0; i < hd; ++i) out[o + i] = qkv[o + i] * r * (j < NH ? wq : wk)[size_t(i)];
    }
  return out;
}

// Forward against the definition (v copied bit for bit, rstd per head); backward, inputs and both
// weights, against finite differences of the definition; accumulating adds; in place (dqkv =
// dout) with overwrite equals the out-of-place gradient. GPT-2's heads and grouped-query ones.
void check_qk_norm(Backend& be, int NH, int NKV) {
  const int N = 5, C = 24, hd = C / NH, W = qkv_width(C, NH, NKV);
  const Vec qkv = random_vec(size_t(N) * W, 71, -2.0f, 2.0f);
  const Vec wq = random_vec(size_t(hd), 72, 0.5f, 1.5f),
            wk = random_vec(size_t(hd), 73, 0.5f, 1.5f);
  Vec out(qkv.size(), 9.0f), rstd(size_t(N) * (NH + NKV));
  be.qk_norm_forward(out.data(), rstd.data(), qkv.data(), wq.data(), wk.data(), N, C, NH, NKV);
  DVec x = to_double(qkv), dwq = to_double(wq), dwk = to_double(wk);
  expect_close(out, naive_qk_norm(x, dwq, dwk, N, C, NH, NKV), 1e-6, "qk_norm");
  for (int n = 0; n < N; ++n)
    for (int c = C + NKV * hd; c < W; ++c)
      ASSERT_EQ(out[size_t(n) * W + c], qkv[size_t(n) * W + c]) << "v changed";

  const Vec R = random_vec(qkv.size(), 74);
  auto loss = [&] { return dot(naive_qk_norm(x, dwq, dwk, N, C, NH, NKV), R); };
  const DVec gx = finite_diff(x, loss), gwq = finite_diff(dwq, loss), gwk = finite_diff(dwk, loss);
  Vec dx(qkv.size(), 0.0f), dq(size_t(hd), 0.0f), dk(size_t(hd), 0.0f);
  be.qk_norm_backward(dx.data(), dq.data(), dk.data(), R.data(), qkv.data(), wq.data(), wk.data(),
                      rstd.data(), N, C, NH, NKV);
  expect_close(dx, gx, 1e-4, "qk_norm dqkv");
  expect_close(dq, gwq, 1e-4, "qk_norm dwq");
  expect_close(dk, gwk, 1e-4, "qk_norm dwk");

  Vec acc = random_vec(qkv.size(), 75);
  const Vec acc0 = acc;
  Vec dq2 = dq, dk2 = dk;
  be.qk_norm_backward(acc.data(), dq2.data(), dk2.data(), R.data(), qkv.data(), wq.data(),
                      wk.data(), rstd.data(), N, C, NH, NKV);
  expect_accumulated(acc, acc0, dx, "dqkv +=");
  for (int i = 0; i < hd; ++i) EXPECT_FLOAT_EQ(dq2[size_t(i)], 2 * dq[size_t(i)]) << "dwq +=";

  Vec inplace = R, dq3(size_t(hd), 0.0f), dk3(size_t(hd), 0.0f);
  be.qk_norm_backward(inplace.data(), dq3.data(), dk3.data(), inplace.data(), qkv.data(), wq.data(),
                      wk.data(), rstd.data(), N, C, NH, NKV, GradMode::overwrite);
  EXPECT_EQ(inplace, dx);
  EXPECT_EQ(dq3, dq);
  EXPECT_EQ(dk3, dk);
}

TEST_F(CpuKernels, QkNorm) { check_qk_norm(*be, 3, 3); }
TEST_F(CpuKernels, QkNormGroupedQuery) { check_qk_norm(*be, 4, 2); }

// ---- SwiGLU ----------------------------------------------------------------------------------

// act(gate)·up over rows [gate | up], in double from its definition: silu (SwiGLU) or GELU's tanh
// approximation (GeGLU, Gemma's).
DVec naive_gated(const DVec& pre, int N, int H, bool gelu) {
  DVec out(size_t(N) * H);
  for (int n = 0; n < N; ++n)
    for (int j = 0; j < H; ++j) {
      const double g = pre[size_t(n) * 2 * H + j], u = pre[size_t(n) * 2 * H + H + j];
      out[size_t(n) * H + j] = (gelu ? naive_gelu(g) : g / (1.0 + std::exp(-g))) * u;
    }
  return out;
}

// SwiGLU and GeGLU against naive_gated and its finite differences, overwritten and accumulated.
TEST_F(CpuKernels, GatedForwardBackward) {
  const int N = 7, H = 13;
  for (bool gelu : {false, true}) {
    SCOPED_TRACE(gelu ? "geglu" : "swiglu");
    auto fwd = [&](float* out, const float* pre) {
      gelu ? be->geglu_forward(out, pre, N, H) : be->swiglu_forward(out, pre, N, H);
    };
    auto bwd = [&](float* d, const float* pre, const float* dy, GradMode mode) {
      gelu ? be->geglu_backward(d, pre, dy, N, H, mode)
           : be->swiglu_backward(d, pre, dy, N, H, mode);
    };
    const Vec pre = random_vec(size_t(N) * 2 * H, 71, -6.0f, 6.0f);
    Vec out(size_t(N) * H);
    fwd(out.data(), pre.data());
    DVec x = to_double(pre);
    expect_close(out, naive_gated(x, N, H, gelu), 1e-6, "out");
    const Vec R = random_vec(out.size(), 72);
    const DVec g = finite_diff(x, [&] { return dot(naive_gated(x, N, H, gelu), R); });
    Vec d(pre.size(), 9.0f);  // overwritten
    bwd(d.data(), pre.data(), R.data(), GradMode::overwrite);
    expect_close(d, g, 1e-5, "dpre");
    Vec d2 = random_vec(pre.size(), 73);
    const Vec d0 = d2;
    bwd(d2.data(), pre.data(), R.data(), GradMode::accumulate);
    expect_accumulated(d2, d0, d, "dpre +=");
  }
}

// gpt-oss's SwiGLU (GluShape): min(g, L)·σ(α·min(g, L))·(clamp(u, −L, L) + offset), in double.
DVec naive_clamped_glu(const DVec& pre, int N, int H, GluShape s) {
  DVec out(size_t(N) * H);
  for (int n = 0; n < N; ++n)
    for (int j = 0; j < H; ++j) {
      double g = pre[size_t(n) * 2 * H + j], u = pre[size_t(n) * 2 * H + H + j];
      if (s.limit > 0) {
        g = std::min(g, double(s.limit));
        u = std::clamp(u, -double(s.limit), double(s.limit));
      }
      out[size_t(n) * H + j] = g / (1.0 + std::exp(-double(s.alpha) * g)) * (u + s.offset);
    }
  return out;
}

// gpt-oss's SwiGLU (model.glu_*: alpha 1.702, offset 1, clamps at 2.5 that cut about a third of
// the inputs here, and without clamps) against the definition and its finite differences (no
// input within 0.02 of a clamp, where they would straddle it), overwritten and accumulated; and
// an explicit shape of SwiGLU's (1, 0, 0) bit for bit the default's (both take SwiGLU's code).
TEST_F(CpuKernels, ClampedSwiGluForwardBackward) {
  const int N = 7, H = 13;
  for (const GluShape s : {GluShape{1.702f, 2.5f, 1.0f}, GluShape{1.702f, 0.0f, 1.0f}}) {
    SCOPED_TRACE(::testing::Message() << "limit " << s.limit);
    Vec pre = random_vec(size_t(N) * 2 * H, 74, -6.0f, 6.0f);
    for (float& v : pre)
      if (std::abs(std::abs(v) - s.limit) < 0.02f) v += 0.05f;
    Vec out(size_t(N) * H);
    be->swiglu_forward(out.data(), pre.data(), N, H, s);
    DVec x = to_double(pre);
    expect_close(out, naive_clamped_glu(x, N, H, s), 1e-6, "out");
    const Vec R = random_vec(out.size(), 75);
    const DVec g = finite_diff(x, [&] { return dot(naive_clamped_glu(x, N, H, s), R); });
    Vec d(pre.size(), 9.0f);  // overwritten
    be->swiglu_backward(d.data(), pre.data(), R.data(), N, H, GradMode::overwrite, s);
    expect_close(d, g, 1e-5, "dpre");
    Vec d2 = random_vec(pre.size(), 76);
    const Vec d0 = d2;
    be->swiglu_backward(d2.data(), pre.data(), R.data(), N, H, GradMode::accumulate, s);
    expect_accumulated(d2, d0, d, "dpre +=");
  }
  const Vec pre = random_vec(size_t(N) * 2 * H, 77, -6.0f, 6.0f), R = random_vec(size_t(N) * H, 78);
  Vec a(size_t(N) * H), b(a.size()), da(pre.size()), db(pre.size());
  be->swiglu_forward(a.data(), pre.data(), N, H);
  be->swiglu_forward(b.data(), pre.data(), N, H, GluShape{1.0f, 0.0f, 0.0f});
  EXPECT_EQ(a, b);
  be->swiglu_backward(da.data(), pre.data(), R.data(), N, H, GradMode::overwrite);
  be->swiglu_backward(db.data(), pre.data(), R.data(), N, H, GradMode::overwrite, {});
  EXPECT_EQ(da, db);
}

// ---- GELU ----------------------------------------------------------------------------------

TEST_F(CpuKernels, GeluForwardBackward) {
  const size_t n = 37;
  const Vec inp = random_vec(n, 41, -4.0f, 4.0f);
  Vec out(n);
  be->gelu_forward(out.data(), inp.data(), n);
  DVec x = to_double(inp);
  DVec want(n);
  for (size_t i = 0; i < n; ++i) want[i] = naive_gelu(x[i]);
  expect_close(out, want, 1e-6, "out");

  const Vec R = random_vec(n, 42);
  auto loss = [&] {
    double s = 0.0;
    for (size_t i = 0; i < n; ++i) s += naive_gelu(x[i]) * R[i];
    return s;
  };
  const DVec g = finite_diff(x, loss);
  Vec dx(n, 0.0f);
  be->gelu_backward(dx.data(), inp.data(), R.data(), n);
  expect_close(dx, g, 1e-5, "dinp");

  Vec dx2 = random_vec(n, 43);
  const Vec dx0 = dx2;
  be->gelu_backward(dx2.data(), inp.data(), R.data(), n);
  expect_accumulated(dx2, dx0, dx, "dinp +=");
}

// ---- the pointwise activations (model.mlp = relu2, gelu_exact) -------------------------------

// The squared ReLU, max(x, 0)², the exact GELU, ½·x·(1 + erf(x/√2)), and the ReLU, max(x, 0),
// against their definitions in double and their finite differences (no input within 1e-2 of the
// ReLUs' kink, where a central difference straddles it), overwritten and accumulated.
TEST_F(CpuKernels, PointwiseActivationsForwardBackward) {
  const size_t n = 37;
  for (Activation f : {Activation::relu2, Activation::gelu_exact, Activation::relu}) {
    SCOPED_TRACE(int(f));
    Vec inp = random_vec(n, 44, -4.0f, 4.0f);
    for (float& v : inp)
      if (std::fabs(v) < 1e-2f) v = 0.5f;
    auto act = [f](double v) {
      return f == Activation::gelu_exact ? 0.5 * v * (1.0 + std::erf(v / std::sqrt(2.0)))
             : v <= 0.0                  ? 0.0
             : f == Activation::relu     ? v
                                         : v * v;
    };
    Vec out(n);
    be->activation_forward(f, out.data(), inp.data(), n);
    DVec x = to_double(inp);
    DVec want(n);
    for (size_t i = 0; i < n; ++i) want[i] = act(x[i]);
    expect_close(out, want, 1e-6, "out");
    const Vec R = random_vec(n, 45);
    auto loss = [&] {
      double s = 0.0;
      for (size_t i = 0; i < n; ++i) s += act(x[i]) * R[i];
      return s;
    };
    const DVec g = finite_diff(x, loss);
    Vec dx(n, 0.0f);
    be->activation_backward(f, dx.data(), inp.data(), R.data(), n);
    expect_close(dx, g, 1e-5, "dinp");
    Vec dx2 = random_vec(n, 46);
    const Vec dx0 = dx2;
    be->activation_backward(f, dx2.data(), inp.data(), R.data(), n);
    expect_accumulated(dx2, dx0, dx, "dinp +=");
  }
}

// The FFN, y = gelu(x·W1ᵀ + b1)·W2ᵀ + b2, forward and backward as the model runs it:
// matmul_gelu_forward, then matmul_backward_gelu for the second layer (its weight and bias, and
// dpre overwritten), then the first layer's matmul_backward. Every gradient against finite
// differences of the FFN in double.
TEST_F(CpuKernels, FfnBackwardThroughGelu) {
  const int N = 9, C = 6, H = 20;
  const Vec inp = random_vec(size_t(N) * C, 51), w1 = random_vec(size_t(H) * C, 52),
            b1 = random_vec(H, 53), w2 = random_vec(size_t(C) * H, 54), b2 = random_vec(C, 55);
  Vec pre(size_t(N) * H), act(pre.size());
  be->matmul_gelu_forward(pre.data(), act.data(), inp.data(), w1.data(), b1.data(), N, C, H);
  DVec x = to_double(inp), w1d = to_double(w1), b1d = to_double(b1), w2d = to_double(w2),
       b2d = to_double(b2);
  auto forward = [&] {
    DVec h = naive_matmul(x, w1d, &b1d, N, C, H);
    for (double& v : h) v = naive_gelu(v);
    return naive_matmul(h, w2d, &b2d, N, H, C);
  };
  const Vec R = random_vec(size_t(N) * C, 56);
  auto loss = [&] { return dot(forward(), R); };
  const DVec g_x = finite_diff(x, loss), g_w1 = finite_diff(w1d, loss),
             g_b1 = finite_diff(b1d, loss), g_w2 = finite_diff(w2d, loss),
             g_b2 = finite_diff(b2d, loss);

  // Gradients that already hold values (the backward accumulates into them); dpre and dact
  // start as garbage (overwritten / scratch).
  const Vec dw1_0 = random_vec(w1.size(), 57), db1_0 = random_vec(H, 58),
            dw2_0 = random_vec(w2.size(), 59), db2_0 = random_vec(C, 60);
  Vec dw1 = dw1_0, db1 = db1_0, dw2 = dw2_0, db2 = db2_0;
  Vec dpre(pre.size(), 77.0f), dact(pre.size(), 77.0f), dx(inp.size(), 0.0f);
  be->matmul_backward_gelu(dpre.data(), dact.data(), dw2.data(), db2.data(), R.data(), act.data(),
                           pre.data(), w2.data(), N, H, C, GradMode::overwrite);
  be->matmul_backward(dx.data(), dw1.data(), db1.data(), dpre.data(), inp.data(), w1.data(), N, C,
                      H);
  auto added = [](const Vec& now, const Vec& before) {
    Vec d(now.size());
    for (size_t i = 0; i < now.size(); ++i) d[i] = now[i] - before[i];
    return d;
  };
  expect_close(dx, g_x, 1e-5, "dinp");
  expect_close(added(dw1, dw1_0), g_w1, 1e-5, "dW1");
  expect_close(added(db1, db1_0), g_b1, 1e-5, "db1");
  expect_close(added(dw2, dw2_0), g_w2, 1e-5, "dW2");
  expect_close(added(db2, db2_0), g_b2, 1e-5, "db2");
}

// Dense sweep (vector body and scalar tail, saturated tails included): the fast tanh inside
// is accurate to ~1e-7 absolute, so gelu is within a few float ulps of the exact value.
TEST_F(CpuKernels, GeluAccurateOverWideRange) {
  const size_t n = 240003;
  Vec inp(n), out(n), grad(n, 0.0f), ones(n, 1.0f);
  for (size_t i = 0; i < n; ++i) inp[i] = -12.0f + 24.0f * float(i) / float(n - 1);
  be->gelu_forward(out.data(), inp.data(), n);
  be->gelu_backward(grad.data(), inp.data(), ones.data(), n);
  for (size_t i = 0; i < n; ++i) {
    const double x = inp[i];
    ASSERT_NEAR(out[i], naive_gelu(x), 4e-7 * (1.0 + std::abs(x))) << "x=" << x;
    const double h = 1e-6;
    const double slope = (naive_gelu(x + h) - naive_gelu(x - h)) / (2 * h);
    ASSERT_NEAR(grad[i], slope, 2e-6 * (1.0 + std::abs(x))) << "x=" << x;
  }
}

// ---- add / accumulate / scale ----------------------------------------------------------------

TEST_F(CpuKernels, AddAccumulateScale) {
  for (size_t n : {size_t{13}, size_t{70001}}) {  // serial and parallel paths
    const Vec a = random_vec(n, 51), b = random_vec(n, 52);
    Vec out(n);
    be->add(out.data(), a.data(), b.data(), n);
    for (size_t i = 0; i < n; ++i) ASSERT_EQ(out[i], a[i] + b[i]);
    Vec acc = a;
    be->accumulate(acc.data(), b.data(), n);
    for (size_t i = 0; i < n; ++i) ASSERT_EQ(acc[i], a[i] + b[i]);
    be->scale(acc.data(), 0.37f, n);
    for (size_t i = 0; i < n; ++i) ASSERT_EQ(acc[i], (a[i] + b[i]) * 0.37f);
  }
}

// ---- cross-entropy ---------------------------------------------------------------------------

DVec naive_losses(const DVec& logits, const std::vector<int32_t>& targets, int N, int V, int Vp) {
  DVec losses(N);
  for (int n = 0; n < N; ++n) {
    const double* row = &logits[size_t(n) * Vp];
    const double mx = *std::max_element(row, row + V);
    double sum = 0.0;
    for (int j = 0; j < V; ++j) sum += std::exp(row[j] - mx);
    losses[n] = mx + std::log(sum) - row[targets[n]];
  }
  return losses;
}

TEST_F(CpuKernels, CrossEntropyLossGradientAndPadding) {
  const int N = 10, V = 37, Vp = 64;
  const float dloss_scale = 1.0f / N;
  Vec logits = random_vec(size_t(N) * Vp, 61, -4.0f, 4.0f);
  for (int n = 0; n < N; ++n)  // padding must be ignored, whatever it holds
    for (int j = V; j < Vp; ++j)
      logits[size_t(n) * Vp + j] = std::numeric_limits<float>::quiet_NaN();
  std::vector<int32_t> targets(N);
  std::mt19937 rng(62);
  for (int32_t& t : targets) t = int32_t(rng() % V);
  targets[3] = V - 1;

  DVec x = to_double(logits);
  const DVec want_losses = naive_losses(x, targets, N, V, Vp);
  auto loss = [&] {
    double s = 0.0;
    for (double l : naive_losses(x, targets, N, V, Vp)) s += l;
    return s * dloss_scale;
  };
  DVec g = finite_diff(x, loss);
  for (int n = 0; n < N; ++n)
    for (int j = V; j < Vp; ++j) g[size_t(n) * Vp + j] = 0.0;  // NaN - NaN in the padding

  Vec losses(N), correct(N);
  be->crossentropy_forward_backward(logits.data(), losses.data(), correct.data(), targets.data(), N,
                                    V, Vp, dloss_scale);
  expect_close(losses, want_losses, 1e-6, "losses");
  expect_close(logits, g, 1e-5, "dlogits");
  for (int n = 0; n < N; ++n)
    for (int j = V; j < Vp; ++j) ASSERT_EQ(logits[size_t(n) * Vp + j], 0.0f) << n << "," << j;
}

// The vocabulary-parallel backward of logits [N, Vp] in two slices of Vp/2 columns, from the
// global row max and sum of exponentials (in double, rounded to float as the caller's reduction
// hands them over), gives the fused op's dlogits `fused` to 1e-7.
void expect_vocab_parallel_backward(Backend& be, const Vec& logits, const Vec& fused,
                                    const std::vector<int32_t>& targets, int N, int V, int Vp,
                                    float dloss_scale, float z_loss, float softcap) {
  Vec gmax(N), gsum(N);
  for (int n = 0; n < N; ++n) {
    double mx = -INFINITY, sum = 0.0;
    for (int j = 0; j < V; ++j) mx = std::max(mx, double(logits[size_t(n) * Vp + j]));
    for (int j = 0; j < V; ++j) sum += std::exp(double(logits[size_t(n) * Vp + j]) - mx);
    gmax[n] = float(mx);
    gsum[n] = float(sum);
  }
  for (int r = 0; r < 2; ++r) {
    const int W = Vp / 2, lv = std::clamp(V - r * W, 0, W);
    Vec slice(size_t(N) * W);
    std::vector<int32_t> local(N);
    for (int n = 0; n < N; ++n) {
      std::copy(logits.begin() + ptrdiff_t(n * Vp + r * W),
                logits.begin() + ptrdiff_t(n * Vp + (r + 1) * W), slice.begin() + ptrdiff_t(n * W));
      const int t = targets[n] - r * W;
      local[n] = t >= 0 && t < lv ? t : -1;
    }
    be.crossentropy_backward_partial(slice.data(), gmax.data(), gsum.data(), local.data(), N, lv, W,
                                     dloss_scale, z_loss, softcap);
    for (int n = 0; n < N; ++n)
      for (int j = 0; j < W; ++j)
        ASSERT_NEAR(slice[size_t(n) * W + j], fused[size_t(n) * Vp + r * W + j], 1e-7)
            << "slice " << r << " row " << n << " column " << j;
  }
}

// train.z_loss: the gradient of the mean cross-entropy plus c·(log Z)² per row (finite
// differences of that loss in double), log Z written out, the losses still the cross-entropy; the
// vocabulary-parallel backward (two slices) gives the fused dlogits.
TEST_F(CpuKernels, CrossEntropyZLossGradientMatchesFiniteDifferences) {
  const int N = 6, V = 37, Vp = 64;
  const float dloss_scale = 1.0f / N, c = 0.05f;
  Vec logits = random_vec(size_t(N) * Vp, 71, -4.0f, 4.0f);
  std::vector<int32_t> targets(N);
  std::mt19937 rng(72);
  for (int32_t& t : targets) t = int32_t(rng() % V);
  DVec x = to_double(logits);
  auto log_z_of = [&](const DVec& v, int n) {
    double mx = -INFINITY, sum = 0.0;
    for (int j = 0; j < V; ++j) mx = std::max(mx, v[size_t(n) * Vp + j]);
    for (int j = 0; j < V; ++j) sum += std::exp(v[size_t(n) * Vp + j] - mx);
    return mx + std::log(sum);
  };
  auto loss = [&] {
    double s = 0.0;
    const DVec ce = naive_losses(x, targets, N, V, Vp);
    for (int n = 0; n < N; ++n) s += ce[size_t(n)] + c * log_z_of(x, n) * log_z_of(x, n);
    return s * dloss_scale;
  };
  DVec g = finite_diff(x, loss);
  Vec fused = logits, losses(N), log_z(N);
  be->crossentropy_forward_backward(fused.data(), losses.data(), nullptr, targets.data(), N, V, Vp,
                                    dloss_scale, c, log_z.data());
  expect_close(losses, naive_losses(x, targets, N, V, Vp), 1e-6, "losses");
  for (int n = 0; n < N; ++n) EXPECT_NEAR(log_z[n], log_z_of(x, n), 1e-5) << n;
  for (int n = 0; n < N; ++n)
    for (int j = V; j < Vp; ++j) g[size_t(n) * Vp + j] = 0.0;
  expect_close(fused, g, 1e-5, "dlogits with the z-loss");
  // The vocabulary-parallel backward from the global statistics, two slices of 32 columns.
  expect_vocab_parallel_backward(*be, logits, fused, targets, N, V, Vp, dloss_scale, c, 0.0f);
}

// model.logit_softcap: scale_cap_logits caps raw logits times a multiplier (μP's; c·tanh(m·x/c)
// in double, to 1e-6 of each value even near 0, where 1 − 2/(e^{2u} + 1) would lose its digits),
// and the cross-entropy's softcap factor with dloss_scale times m makes dlogits the gradient with
// respect to the raw logits: finite differences of the mean cross-entropy (with a z-loss too) of
// the capped logits, in double. The
// vocabulary-parallel backward (two slices) gives the fused dlogits.
TEST_F(CpuKernels, CrossEntropySoftcapGradientMatchesFiniteDifferences) {
  const int N = 6, V = 37, Vp = 64;
  const float dloss_scale = 1.0f / N, cap = 8.0f, zc = 0.02f, mult = 0.75f;
  Vec raw = random_vec(size_t(N) * Vp, 73, -30.0f, 30.0f);  // past the cap: tanh bends
  for (int j = 0; j < 8; ++j) raw[size_t(j)] = std::ldexp(1.0f, -3 * j) * (j % 2 ? -1.0f : 1.0f);
  DVec x = to_double(raw);
  auto capped = [&](const DVec& v) {
    DVec y(v.size());
    for (size_t i = 0; i < v.size(); ++i)
      y[i] = double(cap) * std::tanh(double(mult) * v[i] / double(cap));
    return y;
  };
  std::vector<int32_t> targets(N);
  std::mt19937 rng(74);
  for (int32_t& t : targets) t = int32_t(rng() % V);
  auto loss = [&] {
    const DVec y = capped(x);
    const DVec ce = naive_losses(y, targets, N, V, Vp);
    double s = 0.0;
    for (int n = 0; n < N; ++n) {
      double mx = -INFINITY, sum = 0.0;
      for (int j = 0; j < V; ++j) mx = std::max(mx, y[size_t(n) * Vp + j]);
      for (int j = 0; j < V; ++j) sum += std::exp(y[size_t(n) * Vp + j] - mx);
      const double lz = mx + std::log(sum);
      s += ce[size_t(n)] + zc * lz * lz;
    }
    return s * dloss_scale;
  };
  const DVec want_y = capped(x);
  Vec y = raw;
  be->scale_cap_logits(y.data(), y.size(), mult, cap);
  for (size_t i = 0; i < y.size(); ++i)
    ASSERT_NEAR(y[i], want_y[i], 1e-6 * std::abs(want_y[i]) + 1e-30) << "capped logit " << i;
  DVec g = finite_diff(x, loss);
  for (int n = 0; n < N; ++n)
    for (int j = V; j < Vp; ++j) g[size_t(n) * Vp + j] = 0.0;
  Vec fused = y, losses(N);
  be->crossentropy_forward_backward(fused.data(), losses.data(), nullptr, targets.data(), N, V, Vp,
                                    dloss_scale * mult, zc, nullptr, cap);
  expect_close(losses, naive_losses(want_y, targets, N, V, Vp), 1e-6, "losses");
  expect_close(fused, g, 1e-5, "dlogits of the raw logits");
  expect_vocab_parallel_backward(*be, y, fused, targets, N, V, Vp, dloss_scale * mult, zc, cap);
}

// scale_cap_logits without a cap is μP's multiplier alone: x times mult, one fp32 product.
TEST_F(CpuKernels, ScaleCapLogitsWithoutACapMultiplies) {
  const Vec x = random_vec(1000, 75, -9.0f, 9.0f);
  Vec y = x;
  be->scale_cap_logits(y.data(), y.size(), 0.25f, 0.0f);
  for (size_t i = 0; i < x.size(); ++i) ASSERT_EQ(y[i], x[i] * 0.25f) << i;
}

TEST_F(CpuKernels, CrossEntropyAccuracyFlags) {
  const int N = 5, V = 10, Vp = 16;
  Vec logits(size_t(N) * Vp, 0.0f);
  auto row = [&](int n) { return logits.data() + size_t(n) * Vp; };
  // row 0: clear argmax 4, target 4 -> correct
  row(0)[4] = 2.0f;
  // row 1: clear argmax 4, target 5 -> wrong
  row(1)[4] = 2.0f;
  // row 2: tie between 2 and 7, target 2 -> correct (first maximum wins, as torch.argmax)
  row(2)[2] = row(2)[7] = 3.0f;
  // row 3: the same tie, target 7 -> wrong
  row(3)[2] = row(3)[7] = 3.0f;
  // row 4: the largest value sits in the padding (huge), argmax over V is 9 = target
  row(4)[9] = 1.0f;
  row(4)[12] = 100.0f;
  const std::vector<int32_t> targets = {4, 5, 2, 7, 9};
  Vec losses(N), correct(N, -1.0f);
  Vec copy = logits;
  be->crossentropy_forward_backward(logits.data(), losses.data(), correct.data(), targets.data(), N,
                                    V, Vp, 1.0f);
  EXPECT_EQ(correct, (Vec{1.0f, 0.0f, 1.0f, 0.0f, 1.0f}));
  // correct may be nullptr
  Vec losses2(N);
  be->crossentropy_forward_backward(copy.data(), losses2.data(), nullptr, targets.data(), N, V, Vp,
                                    1.0f);
  EXPECT_EQ(losses, losses2);
}

// Masked targets (kIgnoredTarget; the fused op takes any negative one): their rows get loss 0,
// no hit and zero gradients, while the other rows are those of a call without them, bit for bit.
TEST_F(CpuKernels, CrossEntropyIgnoredRows) {
  const int N = 6, V = 37, Vp = 64;
  const Vec logits = random_vec(size_t(N) * Vp, 63, -4.0f, 4.0f);
  const std::vector<int32_t> kept = {3, 9, 36, 0, 5, 20};
  std::vector<int32_t> masked = kept;
  masked[1] = kIgnoredTarget;
  masked[4] = -1;
  Vec a = logits, b = logits, la(N), lb(N), ca(N), cb(N);
  be->crossentropy_forward_backward(a.data(), la.data(), ca.data(), kept.data(), N, V, Vp, 0.5f);
  be->crossentropy_forward_backward(b.data(), lb.data(), cb.data(), masked.data(), N, V, Vp, 0.5f);
  for (int n = 0; n < N; ++n) {
    const bool ignored = masked[n] < 0;
    EXPECT_EQ(lb[n], ignored ? 0.0f : la[n]) << n;
    EXPECT_EQ(cb[n], ignored ? 0.0f : ca[n]) << n;
    for (int j = 0; j < Vp; ++j)
      ASSERT_EQ(b[size_t(n) * Vp + j], ignored ? 0.0f : a[size_t(n) * Vp + j]) << n << "," << j;
  }
  // The vocabulary-parallel backward: kIgnoredTarget zeroes the row, -1 (another rank's
  // target) keeps the softmax.
  Vec row_max(N), argmax(N), sum_exp(N), tl(N);
  be->logits_row_max(row_max.data(), argmax.data(), logits.data(), N, V, Vp);
  be->softmax_partial_sums(sum_exp.data(), tl.data(), logits.data(), row_max.data(), masked.data(),
                           N, V, Vp);
  Vec p = logits, q = logits;
  std::vector<int32_t> elsewhere = masked;
  elsewhere[1] = -1;
  be->crossentropy_backward_partial(p.data(), row_max.data(), sum_exp.data(), masked.data(), N, V,
                                    Vp, 0.5f);
  be->crossentropy_backward_partial(q.data(), row_max.data(), sum_exp.data(), elsewhere.data(), N,
                                    V, Vp, 0.5f);
  for (int n = 0; n < N; ++n)
    for (int j = 0; j < Vp; ++j)
      ASSERT_EQ(p[size_t(n) * Vp + j], n == 1 ? 0.0f : q[size_t(n) * Vp + j]) << n << "," << j;
  EXPECT_GT(q[1 * Vp + 2], 0.0f);  // the softmax of a row whose target is elsewhere
}

// A GPT-2-sized vocabulary with a wide logit range: the loss stays accurate (the exponentials
// and their sum run through the backend's own exp).
TEST_F(CpuKernels, CrossEntropyLargeVocabulary) {
  const int N = 2, V = 50257, Vp = 50304;
  Vec logits = random_vec(size_t(N) * Vp, 71, -30.0f, 30.0f);
  const std::vector<int32_t> targets = {17, 50256};
  const DVec want = naive_losses(to_double(logits), targets, N, V, Vp);
  DVec x = to_double(logits);
  Vec losses(N);
  be->crossentropy_forward_backward(logits.data(), losses.data(), nullptr, targets.data(), N, V, Vp,
                                    1.0f);
  for (int n = 0; n < N; ++n) EXPECT_NEAR(losses[n], want[n], 1e-5 * std::abs(want[n]));
  // dlogits of row 0 sum to 0 (softmax minus one-hot) and match the probabilities.
  double sum = 0.0;
  const double mx = *std::max_element(x.begin(), x.begin() + V);
  double z = 0.0;
  for (int j = 0; j < V; ++j) z += std::exp(x[j] - mx);
  for (int j = 0; j < V; ++j) {
    const double p = std::exp(x[j] - mx) / z - (j == targets[0] ? 1.0 : 0.0);
    ASSERT_NEAR(logits[j], p, 1e-6 * std::max(1.0, std::abs(p)) + 1e-12) << j;
    sum += logits[j];
  }
  EXPECT_NEAR(sum, 0.0, 1e-5);
}

// ---- vocabulary-parallel cross-entropy -----------------------------------------------------

// (V, Vp) slices: padding, no padding, a slice holding only padding (V = 0), tiny slices, a
// width that is not a multiple of the 8-wide exp vectors.
struct SliceShape {
  int V, Vp;
};
const SliceShape kSliceShapes[] = {{37, 64}, {64, 64}, {0, 16}, {1, 8}, {13, 13}, {300, 301}};

// Random logits [N, Vp] with huge values (which the ops must ignore) in the padding.
Vec slice_logits(int N, const SliceShape& s, uint32_t seed) {
  Vec logits = random_vec(size_t(N) * s.Vp, seed, -4.0f, 4.0f);
  for (int n = 0; n < N; ++n)
    for (int j = s.V; j < s.Vp; ++j) logits[size_t(n) * s.Vp + j] = 1000.0f;
  return logits;
}

TEST_F(CpuKernels, LogitsRowMaxMatchesNaive) {
  const int N = 6;
  for (const SliceShape& s : kSliceShapes) {
    SCOPED_TRACE(::testing::Message() << "V=" << s.V << " Vp=" << s.Vp);
    Vec logits = slice_logits(N, s, 31);
    auto row = [&](int n) { return logits.data() + size_t(n) * s.Vp; };
    if (s.V >= 2) {
      row(1)[s.V / 2] = row(1)[s.V - 1] = 9.0f;  // tie: the first column wins
      row(2)[s.V - 1] = row(2)[0] = 9.0f;        // tie: column 0 wins
      std::fill(row(3), row(3) + s.V, -2.5f);    // constant row: column 0
    }
    Vec row_max(N, 7.0f), argmax(N, 7.0f);
    be->logits_row_max(row_max.data(), argmax.data(), logits.data(), N, s.V, s.Vp);
    for (int n = 0; n < N; ++n) {
      if (s.V == 0) {
        EXPECT_EQ(row_max[n], -std::numeric_limits<float>::infinity()) << n;
        EXPECT_EQ(argmax[n], -1.0f) << n;
        continue;
      }
      double mx = -std::numeric_limits<double>::infinity();
      int first = -1;
      for (int j = 0; j < s.V; ++j) {
        if (double(row(n)[j]) > mx) {
          mx = row(n)[j];
          first = j;
        }
      }
      EXPECT_EQ(double(row_max[n]), mx) << n;
      EXPECT_EQ(argmax[n], float(first)) << n;
    }
    if (s.V >= 2) {
      EXPECT_EQ(argmax[1], float(s.V / 2));
      EXPECT_EQ(argmax[2], 0.0f);
      EXPECT_EQ(argmax[3], 0.0f);
    }
  }
}

// The shift is a global maximum (>= the local one, as after the all-reduce); targets are in
// the slice, held elsewhere (-1) or beyond the slice's real columns.
TEST_F(CpuKernels, SoftmaxPartialSumsMatchesNaive) {
  const int N = 6;
  for (const SliceShape& s : kSliceShapes) {
    SCOPED_TRACE(::testing::Message() << "V=" << s.V << " Vp=" << s.Vp);
    const Vec logits = slice_logits(N, s, 41);
    Vec row_max(N);
    std::vector<int32_t> targets(N);
    for (int n = 0; n < N; ++n) {
      const float* row = logits.data() + size_t(n) * s.Vp;
      const float local = s.V > 0 ? *std::max_element(row, row + s.V) : -3.0f;
      row_max[n] = local + 0.75f * float(n % 3);  // n % 3 == 0: the local max itself
      targets[n] = n % 3 == 1 || s.V == 0 ? -1 : (n == 5 ? s.V : (7 * n) % s.V);
    }
    Vec sum_exp(N, 7.0f), target_logit(N, 7.0f);
    be->softmax_partial_sums(sum_exp.data(), target_logit.data(), logits.data(), row_max.data(),
                             targets.data(), N, s.V, s.Vp);
    for (int n = 0; n < N; ++n) {
      const float* row = logits.data() + size_t(n) * s.Vp;
      double want = 0.0;
      for (int j = 0; j < s.V; ++j) want += std::exp(double(row[j]) - double(row_max[n]));
      EXPECT_NEAR(sum_exp[n], want, 1e-6 * want) << n;
      if (s.V == 0) {
        EXPECT_EQ(sum_exp[n], 0.0f) << n;
      }
      const bool held = targets[n] >= 0 && targets[n] < s.V;
      EXPECT_EQ(target_logit[n], held ? row[targets[n]] : 0.0f) << n;
    }
  }
}

TEST_F(CpuKernels, CrossEntropyBackwardPartialMatchesNaive) {
  const int N = 6;
  const float dloss_scale = 1.0f / N;
  for (const SliceShape& s : kSliceShapes) {
    SCOPED_TRACE(::testing::Message() << "V=" << s.V << " Vp=" << s.Vp);
    Vec logits = slice_logits(N, s, 51);
    Vec row_max(N), sum_exp(N);
    std::vector<int32_t> targets(N);
    for (int n = 0; n < N; ++n) {
      const float* row = logits.data() + size_t(n) * s.Vp;
      const float local = s.V > 0 ? *std::max_element(row, row + s.V) : -3.0f;
      row_max[n] = local + 0.5f * float(n % 2);
      double sum = 0.0;
      for (int j = 0; j < s.V; ++j) sum += std::exp(double(row[j]) - double(row_max[n]));
      sum_exp[n] = float(sum + 0.3 * n + (s.V == 0 ? 1.0 : 0.0));  // + other ranks' terms
      targets[n] = n % 3 == 1 || s.V == 0 ? -1 : (5 * n) % s.V;
    }
    const Vec x = logits;
    be->crossentropy_backward_partial(logits.data(), row_max.data(), sum_exp.data(), targets.data(),
                                      N, s.V, s.Vp, dloss_scale);
    for (int n = 0; n < N; ++n) {
      for (int j = 0; j < s.Vp; ++j) {
        const float got = logits[size_t(n) * s.Vp + j];
        if (j >= s.V) {
          ASSERT_EQ(got, 0.0f) << n << "," << j;
          continue;
        }
        const double p =
            std::exp(double(x[size_t(n) * s.Vp + j]) - double(row_max[n])) / double(sum_exp[n]);
        const double want = (p - (j == targets[n] ? 1.0 : 0.0)) * dloss_scale;
        ASSERT_NEAR(got, want, 1e-6 * dloss_scale) << n << "," << j;
      }
    }
  }
}

// The three ops on 1, 2 and 3 slices of a padded vocabulary, combined across the slices on the
// host as a tensor-parallel caller does, give the fused op's losses, accuracy flags and dlogits.
TEST_F(CpuKernels, VocabParallelSplitEqualsFused) {
  const int N = 9;
  const float dloss_scale = 1.0f / N;
  // (V, Vp): with 3 slices of 24 columns, V = 40 leaves the last slice only padding; the last
  // shape is large enough for the ops to run on several OpenMP threads.
  for (const SliceShape& full :
       {SliceShape{40, 72}, SliceShape{71, 72}, SliceShape{300, 312}, SliceShape{5000, 6000}}) {
    const int V = full.V, Vp = full.Vp;
    Vec logits = random_vec(size_t(N) * Vp, 81, -4.0f, 4.0f);
    std::vector<int32_t> targets(N);
    std::mt19937 rng(82);
    for (int32_t& t : targets) t = int32_t(rng() % V);
    auto row = [&](int n) { return logits.data() + size_t(n) * Vp; };
    for (int n = 0; n < N; ++n)
      for (int j = V; j < Vp; ++j) row(n)[j] = 1000.0f;  // padding: ignored
    row(0)[targets[0]] += 10.0f;                         // a clear, correct maximum
    // Ties across slices: the first (smallest global column) wins.
    const int a = 3, b = V - 2;
    row(1)[a] = row(1)[b] = 20.0f;
    targets[1] = a;  // correct
    row(2)[a] = row(2)[b] = 20.0f;
    targets[2] = b;  // wrong
    targets[3] = V - 1;
    targets[4] = 0;

    Vec fused = logits, losses(N), correct(N);
    be->crossentropy_forward_backward(fused.data(), losses.data(), correct.data(), targets.data(),
                                      N, V, Vp, dloss_scale);
    EXPECT_EQ(correct[1], 1.0f);
    EXPECT_EQ(correct[2], 0.0f);

    for (int S : {1, 2, 3}) {
      SCOPED_TRACE(::testing::Message() << "V=" << V << " Vp=" << Vp << " slices=" << S);
      ASSERT_EQ(Vp % S, 0);
      const int W = Vp / S;
      std::vector<Vec> slice(S), row_max(S, Vec(N)), argmax(S, Vec(N)), sum_exp(S, Vec(N)),
          target_logit(S, Vec(N));
      std::vector<std::vector<int32_t>> local_targets(S, std::vector<int32_t>(N));
      std::vector<int> local_V(S);
      for (int r = 0; r < S; ++r) {
        local_V[r] = std::clamp(V - r * W, 0, W);
        slice[r].resize(size_t(N) * W);
        for (int n = 0; n < N; ++n) {
          std::copy(row(n) + r * W, row(n) + (r + 1) * W, slice[r].data() + size_t(n) * W);
          const int t = targets[n] - r * W;
          local_targets[r][n] = t >= 0 && t < local_V[r] ? t : -1;
        }
      }
      if (S == 3 && V == 40) {
        ASSERT_EQ(local_V[2], 0);
      }

      // 1. local maxima, combined (all-reduce max; first global column among the maxima).
      for (int r = 0; r < S; ++r)
        be->logits_row_max(row_max[r].data(), argmax[r].data(), slice[r].data(), N, local_V[r], W);
      Vec gmax(N, -std::numeric_limits<float>::infinity());
      std::vector<int> gargmax(N, -1);
      for (int n = 0; n < N; ++n) {
        for (int r = 0; r < S; ++r) gmax[n] = std::max(gmax[n], row_max[r][n]);
        for (int r = 0; r < S && gargmax[n] < 0; ++r)
          if (argmax[r][n] >= 0.0f && row_max[r][n] == gmax[n])
            gargmax[n] = r * W + int(argmax[r][n]);
      }
      // 2. partial sums with the global max, combined (all-reduce sum, rank order).
      for (int r = 0; r < S; ++r)
        be->softmax_partial_sums(sum_exp[r].data(), target_logit[r].data(), slice[r].data(),
                                 gmax.data(), local_targets[r].data(), N, local_V[r], W);
      Vec gsum(N, 0.0f), gtarget(N, 0.0f);
      for (int r = 0; r < S; ++r) {
        for (int n = 0; n < N; ++n) {
          gsum[n] += sum_exp[r][n];
          gtarget[n] += target_logit[r][n];
        }
      }
      for (int n = 0; n < N; ++n) {
        const double loss = std::log(double(gsum[n])) + double(gmax[n]) - double(gtarget[n]);
        EXPECT_NEAR(loss, losses[n], 1e-6 * std::max(1.0, std::abs(double(losses[n])))) << n;
        EXPECT_EQ(gargmax[n] == targets[n] ? 1.0f : 0.0f, correct[n]) << n;
      }
      // 3. backward per slice, gathered back into full rows.
      Vec dlogits(size_t(N) * Vp, 7.0f);
      for (int r = 0; r < S; ++r) {
        be->crossentropy_backward_partial(slice[r].data(), gmax.data(), gsum.data(),
                                          local_targets[r].data(), N, local_V[r], W, dloss_scale);
        for (int n = 0; n < N; ++n)
          std::copy(slice[r].data() + size_t(n) * W, slice[r].data() + size_t(n + 1) * W,
                    dlogits.data() + size_t(n) * Vp + r * W);
      }
      for (size_t i = 0; i < dlogits.size(); ++i)
        ASSERT_NEAR(dlogits[i], fused[i], 1e-7) << "dlogits at " << i / Vp << "," << i % Vp;
    }
  }
}

}  // namespace
}  // namespace triad
