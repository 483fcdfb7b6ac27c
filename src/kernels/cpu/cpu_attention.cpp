// Causal self-attention, one (batch, head) at a time:
//   S = scale · Q Kᵀ,  P = causal_softmax(S),  O = P V
// (with a soft cap c, S = c·tanh(scale · Q Kᵀ / c); the backward pass recomputes the uncapped
// scores of each row block to multiply the scores' gradient by 1 − tanh²).
// Q, K and V are strided views into qkv (leading dimension W = C + 2·NKV·hd), O a strided view
// into out (leading dimension C), so BLAS reads and writes them in place without any transposes.
// Grouped-query attention (NKV < NH): query head h reads key/value head h % NKV in place.
//
// Causality: the T query rows are processed in blocks of kBlock rows; block [i0, i1) only needs
// keys 0 .. i1-1, so every product skips the blocks above the diagonal (about 40% fewer flops
// at T = 256 than full T×T products, more for longer sequences). A document mask or window
// (key_begin: row i sees keys lo_i .. i, lo never decreasing) also narrows them: block [i0, i1)
// needs keys lo_i0 .. i1-1, and key block [j0, j1) receives from the queries whose lo is below
// j1 only; the probabilities (and their gradients) before each row's lo are written as zeros, so
// the products over the rest of a row add nothing.
//
// A query range (QueryRows: context parallelism) computes rows q0 .. L-1 only, against keys
// 0 .. L-1: the row blocks start at q0, and the key blocks before q0 (which every query of the
// range sees whole) end at q0, so that from q0 on the key blocks are the row blocks and the
// diagonal blocks line up as without a range.
//
// Attention dropout (AttentionDropout): att keeps the undropped probabilities P, which the
// softmax backward needs; the products with V read P' = P ⊙ mask · 1/(1 − p) from a copy of the
// thread's own (forward: a row block at a time; backward: the head's rows), and the backward pass
// multiplies dP' = dO·Vᵀ by the same mask and factor before the softmax backward. The mask is a
// hash of (row key, layer, head, key position): formed again, never stored.
//
// Threading: the (batch, head) pairs are independent, so they are spread over OpenMP threads
// (under grouped-query attention the backward's query heads write their dK and dV apart, summed
// per key/value head afterwards),
// each calling (single-threaded, see cpu_blas.cpp) sgemm for its own head. The per-head gemms
// are small (e.g. 64×256×64), where splitting each over threads costs more than it gains
// (measured: 5-10x slower attention), and one thread keeps a head's P and dP blocks in its own
// cache between the gemms and the softmax.
#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "cpu_math.h"
#include "cpu_ops.h"
#include "triad/kernels/backend.h"

namespace triad::cpu {
namespace {

constexpr int kBlock = 64;

// The shape of one attention call and the strides of its views.
struct Dims {
  int T;       // rows per sequence in qkv, dqkv and key_begin
  int q0, L;   // the query rows q0 .. L-1, against keys 0 .. L-1 (whole: 0 and T)
  int hd;      // head dimension C / NH
  int ld_qkv;  // W = C + 2·NKV·hd
  int ld_out;  // C
  float scale;
  float cap;               // the scores' soft cap (0: none)
  AttentionDropMask drop;  // attention dropout (off: no keys)
  int rows() const { return L - q0; }
  size_t att_floats() const { return size_t(rows()) * size_t(L); }  // per head: [rows, L]
};

// s[0..n) ← cap·tanh(s / cap): the soft cap of the scores (Backend::attention_forward).
void cap_scores(float* s, int n, float cap) {
  for (int j = 0; j < n; ++j) s[j] = cap * std::tanh(s[j] / cap);
}

// Row i of S → row i of P over keys lo..i (tiny probabilities flushed to 0, see kFlushBelow).
// Keys 0 .. lo-1 and i+1 .. end-1 (the rest of the diagonal block, which the P·V product reads)
// are set to 0; keys beyond end are left untouched. sink (nullptr: none) is the head's sink
// logit, a term of the denominator without a probability of its own in the row.
void causal_softmax_row(float* row, int lo, int i, int end, const float* sink = nullptr) {
  float* r = row + lo;
  const int n = i + 1 - lo;
  float max_val = sink != nullptr ? std::max(*sink, r[0]) : r[0];
#pragma omp simd reduction(max : max_val)
  for (int j = 0; j < n; ++j) max_val = std::max(max_val, r[j]);
  exp_shifted_inplace(r, size_t(n), max_val);
  float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
  for (int j = 0; j < n; ++j) sum += r[j];
  if (sink != nullptr) sum += std::exp(*sink - max_val);
  scale_flush_inplace(r, size_t(n), 1.0f / sum);
  std::fill(row, r, 0.0f);
  std::fill(row + i + 1, row + end, 0.0f);
}

// Softmax backward for row i: dS_j = P_j·(dP_j − Σ_k P_k dP_k) over keys lo..i, in place over
// dP (tiny values flushed to 0). Keys 0 .. lo-1 and i+1 .. end-1 are set to 0: the dQ and dK
// products read them. Returns Σ_k P_k dP_k (a sink's gradient needs it; the formula is the same
// with a sink, whose value, and so its dP, is zero).
float causal_softmax_backward_row(float* ds, const float* p, int lo, int i, int end) {
  float* d = ds + lo;
  const float* pr = p + lo;
  const int n = i + 1 - lo;
  float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
  for (int j = 0; j < n; ++j) dot += pr[j] * d[j];
#pragma omp simd
  for (int j = 0; j < n; ++j) d[j] = pr[j] * (d[j] - dot);
  scale_flush_inplace(d, size_t(n), 1.0f);
  std::fill(ds, d, 0.0f);
  std::fill(ds + i + 1, ds + end, 0.0f);
  return dot;
}

// A sink's share of row i, 1 − Σ_{lo<=j<=i} P_j (in double: it is what the row's probabilities
// leave).
double sink_share(const float* p, int lo, int i) {
  double sum = 0.0;
  for (int j = lo; j <= i; ++j) sum += p[j];
  return 1.0 - sum;
}

// One (sequence, head)'s attention dropout (off without a mask).
struct HeadDropout {
  const AttentionDropMask* m = nullptr;
  size_t b = 0;
  int T = 0, h = 0;
  bool on() const { return m != nullptr && m->on(); }
  // x[j] for keys lo..i of query row i: kept times the factor, dropped times 0 (a NaN stays
  // NaN); keys before lo are set to 0 (dst may be src).
  void apply(float* dst, const float* src, int lo, int i) const {
    const uint64_t a = m->head_key(b, T, h, i);
    std::fill(dst, dst + lo, 0.0f);
    for (int j = lo; j <= i; ++j)
      dst[j] = src[j] * (attention_dropout_keeps(a, uint32_t(j), m->threshold) ? m->scale : 0.0f);
  }
};

// The calling thread's scratch of at least n floats for a head's dropped probabilities, kept
// between calls (a fresh one per head would be allocated and zeroed as often as the head's
// products run). Callers write every element they read.
float* dropout_scratch(size_t n) {
  static thread_local std::vector<float> scratch;
  if (scratch.size() < n) scratch.resize(n);
  return scratch.data();
}

// The first key row i of a sequence sees: key_begin[i] (the sequence's row of the [B,T] array)
// or 0 without a mask.
int first_key(const int32_t* key_begin, int i) { return key_begin != nullptr ? key_begin[i] : 0; }

// The end of the queries that see a key before j1: the first row i >= j1 whose first key is j1
// or later (T when none is).
int queries_end(const int32_t* key_begin, int j1, int T) {
  if (key_begin == nullptr) return T;
  return int(std::upper_bound(key_begin + j1, key_begin + T, j1 - 1) - key_begin);
}

// att and out hold the range's rows: row i of the sequence at (i − q0). sink: the head's logit
// (nullptr: none).
void head_forward(float* out, float* att, const float* q, const float* k, const float* v,
                  const int32_t* key_begin, const HeadDropout& drop, const Dims& d,
                  const float* sink) {
  const int L = d.L;
  auto p_row = [&](int i) { return att + size_t(i - d.q0) * L; };
  // Under dropout the P·V product reads the block's dropped rows (the thread's own copy).
  float* const dropped = drop.on() ? dropout_scratch(size_t(kBlock) * L) : nullptr;
  for (int i0 = d.q0; i0 < L; i0 += kBlock) {
    const int i1 = std::min(L, i0 + kBlock), k0 = first_key(key_begin, i0);
    // S[i0:i1, k0:i1] = scale · Q[i0:i1] · K[k0:i1]ᵀ
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, i1 - i0, i1 - k0, d.hd, d.scale,
                q + size_t(i0) * d.ld_qkv, d.ld_qkv, k + size_t(k0) * d.ld_qkv, d.ld_qkv, 0.0f,
                p_row(i0) + k0, L);
    for (int i = i0; i < i1; ++i) {
      const int lo = first_key(key_begin, i);
      if (d.cap > 0.0f) cap_scores(p_row(i) + lo, i + 1 - lo, d.cap);
      causal_softmax_row(p_row(i), lo, i, i1, sink);
    }
    const float* pv = p_row(i0);
    if (drop.on()) {  // rows i0..i1-1 of P' over keys k0..i1-1 (zero above the diagonal)
      for (int i = i0; i < i1; ++i) {
        float* r = dropped + size_t(i - i0) * L;
        drop.apply(r, p_row(i), first_key(key_begin, i), i);
        std::fill(r + i + 1, r + i1, 0.0f);
      }
      pv = dropped;
    }
    // O[i0:i1] = P[i0:i1, k0:i1] · V[k0:i1]
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, i1 - i0, d.hd, i1 - k0, 1.0f, pv + k0, L,
                v + size_t(k0) * d.ld_qkv, d.ld_qkv, 0.0f, out + size_t(i0 - d.q0) * d.ld_out,
                d.ld_out);
  }
}

// dK and dV are added at leading dimension ld_dkv (the qkv rows', or a head's own buffer). dq,
// dk and dv rows are the sequence's; dout, att and ds rows the range's (row i at i − q0).
// dsink (nullptr: none) receives the head's sink gradient over these rows, −Σ_i p_sink·Σ_j P dP.
void head_backward(float* dq, float* dk, float* dv, int ld_dkv, float* ds, const float* dout,
                   const float* q, const float* k, const float* v, const float* att,
                   const int32_t* key_begin, const HeadDropout& drop, const Dims& d,
                   double* dsink) {
  const int L = d.L, q0 = d.q0;
  auto p_row = [&](int i) { return att + size_t(i - q0) * L; };
  // Under dropout dV's products read P' (the head's rows, the thread's own copy; zero before each
  // row's first key, as att is).
  float* const dropped = drop.on() ? dropout_scratch(size_t(d.rows()) * L) : nullptr;
  for (int i = q0; drop.on() && i < L; ++i)
    drop.apply(dropped + size_t(i - q0) * L, p_row(i), first_key(key_begin, i), i);
  auto pv_row = [&](int i) { return drop.on() ? dropped + size_t(i - q0) * L : p_row(i); };
  auto ds_row = [&](int i) { return ds + size_t(i - q0) * L; };
  auto dout_row = [&](int i) { return dout + size_t(i - q0) * d.ld_out; };
  // Row blocks: dP = dO·Vᵀ, dS = softmax_backward(P, dP), dQ += scale · dS·K. Under a soft cap
  // dS is then times 1 − tanh²(s / cap) of the block's uncapped scores s, recomputed.
  std::vector<float> raw(d.cap > 0.0f ? size_t(kBlock) * L : 0);
  for (int i0 = q0; i0 < L; i0 += kBlock) {
    const int i1 = std::min(L, i0 + kBlock), k0 = first_key(key_begin, i0);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, i1 - i0, i1 - k0, d.hd, 1.0f, dout_row(i0),
                d.ld_out, v + size_t(k0) * d.ld_qkv, d.ld_qkv, 0.0f, ds_row(i0) + k0, L);
    for (int i = i0; i < i1; ++i) {
      const int lo = first_key(key_begin, i);
      if (drop.on()) drop.apply(ds_row(i), ds_row(i), lo, i);  // dP = dP' ⊙ mask · factor
      const float dot = causal_softmax_backward_row(ds_row(i), p_row(i), lo, i, i1);
      if (dsink != nullptr) *dsink -= sink_share(p_row(i), lo, i) * double(dot);
    }
    if (d.cap > 0.0f) {
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, i1 - i0, i1 - k0, d.hd, d.scale,
                  q + size_t(i0) * d.ld_qkv, d.ld_qkv, k + size_t(k0) * d.ld_qkv, d.ld_qkv, 0.0f,
                  raw.data(), L);
      for (int i = i0; i < i1; ++i) {
        float* g = ds_row(i);
        const float* s = raw.data() + size_t(i - i0) * L - k0;  // s[j]: key j's score
        for (int j = first_key(key_begin, i); j <= i; ++j) {
          const float t = std::tanh(s[j] / d.cap);
          g[j] *= 1.0f - t * t;
        }
      }
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, i1 - i0, d.hd, i1 - k0, d.scale,
                ds_row(i0) + k0, L, k + size_t(k0) * d.ld_qkv, d.ld_qkv, 1.0f,
                dq + size_t(i0) * d.ld_qkv, d.ld_qkv);
  }
  // Key blocks [j0, j1) receive from the queries a <= i < e only (a = max(j0, q0); e =
  // queries_end: L without a mask):
  //   dK[j0:j1] += scale · dS[a:e, j0:j1]ᵀ · Q[a:e],   dV[j0:j1] += P[a:e, j0:j1]ᵀ · dO[a:e]
  // dS is zero above the diagonal within its diagonal blocks (we wrote it). P above the
  // diagonal is unspecified by the interface, so its diagonal block is copied with the upper
  // triangle zeroed and the rows below the block are taken from att directly (zero before each
  // row's first key: the forward wrote those zeros). Blocks before q0 have no diagonal.
  float p_diag[kBlock * kBlock];
  for (int j0 = 0, j1 = 0; j0 < L; j0 = j1) {
    j1 = std::min(j0 < q0 ? q0 : L, j0 + kBlock);
    const int a = std::max(j0, q0), e = queries_end(key_begin, j1, L), w = j1 - j0;
    if (a >= e) continue;
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, w, d.hd, e - a, d.scale, ds_row(a) + j0, L,
                q + size_t(a) * d.ld_qkv, d.ld_qkv, 1.0f, dk + size_t(j0) * ld_dkv, ld_dkv);
    if (j0 >= q0) {  // the diagonal block: queries j0 .. j1-1
      for (int r = 0; r < w; ++r) {
        const float* src = pv_row(j0 + r) + j0;
        float* dst = p_diag + r * kBlock;
        std::copy(src, src + r + 1, dst);
        std::fill(dst + r + 1, dst + w, 0.0f);
      }
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, w, d.hd, w, 1.0f, p_diag, kBlock,
                  dout_row(j0), d.ld_out, 1.0f, dv + size_t(j0) * ld_dkv, ld_dkv);
    }
    const int below = std::max(j1, q0);  // the first query past the diagonal
    if (below < e) {
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, w, d.hd, e - below, 1.0f,
                  pv_row(below) + j0, L, dout_row(below), d.ld_out, 1.0f, dv + size_t(j0) * ld_dkv,
                  ld_dkv);
    }
  }
}

// Sequence b's row of key_begin [B,T] (nullptr without a mask).
const int32_t* seq_key_begin(const int32_t* key_begin, int b, int T) {
  return key_begin != nullptr ? key_begin + size_t(b) * T : nullptr;
}

Dims make_dims(int T, int C, int NH, int NKV, QueryRows rows, float scale, float cap,
               AttentionDropout drop = {}) {
  const int hd = C / NH;
  const int q0 = rows.whole(T) ? 0 : rows.first, L = rows.keys(T);
  return Dims{
      T, q0, L, hd, qkv_width(C, NH, NKV), C, attention_scale(scale, hd), cap, drop.mask(NKV)};
}

// Sequence b's query head h's dropout.
HeadDropout head_dropout(const Dims& d, int b, int h) {
  return HeadDropout{&d.drop, size_t(b), d.T, h};
}

// Offsets within a qkv row of query head h's k and v (key/value head h % NKV).
size_t k_offset(int C, int NKV, int h, int hd) { return size_t(C) + size_t(h % NKV) * hd; }
size_t v_offset(int C, int NKV, int h, int hd) { return size_t(C) + size_t(NKV + h % NKV) * hd; }

}  // namespace

void attention_decode(float* out, const float* qkv, int B, int stride, int p, int n, int C, int NH,
                      int NKV, int window, float scale, float softcap, const float* sinks) {
  const int L = p + n;  // keys: the cached rows and the new ones
  const Dims d = make_dims(L, C, NH, NKV, {}, scale, softcap);
  ensure_single_threaded_blas();
#pragma omp parallel
  {
    std::vector<float> s(size_t(n) * size_t(L));  // the new rows' scores, then probabilities
#pragma omp for schedule(static)
    for (int bh = 0; bh < B * NH; ++bh) {
      const int b = bh / NH, h = bh % NH;
      const float* seq = qkv + size_t(b) * stride * d.ld_qkv;
      const float* q = seq + size_t(p) * d.ld_qkv + size_t(h) * d.hd;
      const float* k = seq + k_offset(C, NKV, h, d.hd);
      const float* v = seq + v_offset(C, NKV, h, d.hd);
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, L, d.hd, d.scale, q, d.ld_qkv, k,
                  d.ld_qkv, 0.0f, s.data(), L);
      // New row r is position p + r: it sees keys 0 .. p + r, or the window's last ones (the same
      // softmax as the forward's).
      for (int r = 0; r < n; ++r) {
        const int lo = window > 0 ? std::max(0, p + r - window + 1) : 0;
        if (d.cap > 0.0f) cap_scores(s.data() + size_t(r) * L + lo, p + r + 1 - lo, d.cap);
        causal_softmax_row(s.data() + size_t(r) * L, lo, p + r, L, sinks ? sinks + h : nullptr);
      }
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, d.hd, L, 1.0f, s.data(), L, v,
                  d.ld_qkv, 0.0f, out + size_t(b) * n * C + size_t(h) * d.hd, d.ld_out);
    }
  }
}

void attention_forward(float* out, float* att, const float* qkv, int B, int T, int C, int NH,
                       int NKV, const int32_t* key_begin, QueryRows rows, float scale,
                       float softcap, AttentionDropout dropout, const float* sinks) {
  const Dims d = make_dims(T, C, NH, NKV, rows, scale, softcap, dropout);
  const int hd = d.hd;
  ensure_single_threaded_blas();
#pragma omp parallel for schedule(static)
  for (int bh = 0; bh < B * NH; ++bh) {
    const int b = bh / NH;
    const int h = bh % NH;
    const float* seq = qkv + size_t(b) * T * d.ld_qkv;
    head_forward(out + size_t(b) * d.rows() * C + size_t(h) * hd, att + size_t(bh) * d.att_floats(),
                 seq + size_t(h) * hd, seq + k_offset(C, NKV, h, hd), seq + v_offset(C, NKV, h, hd),
                 seq_key_begin(key_begin, b, T), head_dropout(d, b, h), d,
                 sinks != nullptr ? sinks + h : nullptr);
  }
}

void attention_backward(float* dqkv, float* scratch, const float* dout, const float* qkv,
                        const float* att, int B, int T, int C, int NH, int NKV,
                        const int32_t* key_begin, QueryRows rows, float scale, float softcap,
                        AttentionDropout dropout, float* dsinks) {
  const Dims d = make_dims(T, C, NH, NKV, rows, scale, softcap, dropout);
  const int hd = d.hd;
  const size_t per_att = d.att_floats(), per_out = size_t(d.rows()) * C;
  ensure_single_threaded_blas();
  // The sinks' gradients per (sequence, head), added over the sequences in order at the end.
  std::vector<double> dsink(dsinks != nullptr ? size_t(B) * NH : 0, 0.0);
  auto head_dsink = [&](int bh) { return dsinks != nullptr ? &dsink[size_t(bh)] : nullptr; };
  auto add_dsinks = [&] {
    for (int h = 0; dsinks != nullptr && h < NH; ++h) {
      double sum = 0.0;
      for (int b = 0; b < B; ++b) sum += dsink[size_t(b) * NH + h];
      dsinks[h] += float(sum);
    }
  };
  if (NKV == NH) {  // each head its own dK and dV: straight into dqkv
#pragma omp parallel for schedule(static)
    for (int bh = 0; bh < B * NH; ++bh) {
      const int b = bh / NH, h = bh % NH;
      const size_t q = size_t(b) * T * d.ld_qkv + size_t(h) * hd, k = q + C, v = k + C;
      head_backward(dqkv + q, dqkv + k, dqkv + v, d.ld_qkv, scratch + size_t(bh) * per_att,
                    dout + size_t(b) * per_out + size_t(h) * hd, qkv + q, qkv + k, qkv + v,
                    att + size_t(bh) * per_att, seq_key_begin(key_begin, b, T),
                    head_dropout(d, b, h), d, head_dsink(bh));
    }
    add_dsinks();
    return;
  }
  // Grouped-query attention: the query heads sharing a key/value head would add into the same
  // dK and dV. Each (batch, query head) writes its own into a buffer of its own, in parallel over
  // all B·NH of them, and a second pass adds a key/value head's NH/NKV of them into dqkv in
  // query-head order: the same sums whatever the thread count.
  const size_t per_head = size_t(d.L) * hd;  // one head's dK (then its dV), keys 0 .. L-1
  std::vector<float> buffer(2 * size_t(B) * NH * per_head, 0.0f);
  float* const own = buffer.data();
#pragma omp parallel for schedule(static)
  for (int bh = 0; bh < B * NH; ++bh) {
    const int b = bh / NH, h = bh % NH;
    const size_t seq = size_t(b) * T * d.ld_qkv;
    const size_t q = seq + size_t(h) * hd, k = seq + k_offset(C, NKV, h, hd),
                 v = seq + v_offset(C, NKV, h, hd);
    float* dk = own + 2 * size_t(bh) * per_head;
    head_backward(dqkv + q, dk, dk + per_head, hd, scratch + size_t(bh) * per_att,
                  dout + size_t(b) * per_out + size_t(h) * hd, qkv + q, qkv + k, qkv + v,
                  att + size_t(bh) * per_att, seq_key_begin(key_begin, b, T), head_dropout(d, b, h),
                  d, head_dsink(bh));
  }
  add_dsinks();
#pragma omp parallel for collapse(2) schedule(static)
  for (int b = 0; b < B; ++b)
    for (int t = 0; t < d.L; ++t) {
      float* row = dqkv + (size_t(b) * T + t) * d.ld_qkv;
      for (int g = 0; g < NKV; ++g)
        for (int h = g; h < NH; h += NKV) {
          const float* dk = own + 2 * (size_t(b) * NH + h) * per_head + size_t(t) * hd;
          float* to_k = row + k_offset(C, NKV, g, hd);
          float* to_v = row + v_offset(C, NKV, g, hd);
          for (int e = 0; e < hd; ++e) {
            to_k[e] += dk[e];
            to_v[e] += dk[per_head + e];
          }
        }
    }
}

}  // namespace triad::cpu
