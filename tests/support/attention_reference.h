// A naive causal attention in double (forward and backward, one head at a time) and the error
// measure the flash-attention tests use, shared by the GPU test (test_flash_attention) and the
// emulated one (test_flash_attention_emulated).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "triad/core/bf16.h"
#include "triad/kernels/dropout_mask.h"

namespace triad::attention_reference {

using Bits = std::vector<uint16_t>;

// N(0,1) values rounded to bf16: the bits and their exact values.
inline void random_bf16(size_t n, uint32_t seed, Bits& bits, std::vector<double>& vals) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  bits.resize(n);
  vals.resize(n);
  for (size_t x = 0; x < n; ++x) {
    bits[x] = to_bf16(dist(rng)).bits;
    vals[x] = to_float(bf16_t{bits[x]});
  }
}

// A document mask ([B,T] key_begin, backend.h) from the positions where documents start in
// each sequence (ascending; rows before the first start see from key 0).
inline std::vector<int32_t> key_begin_of_starts(int B, int T,
                                                const std::vector<std::vector<int>>& starts) {
  std::vector<int32_t> kb(size_t(B) * T, 0);
  for (int b = 0; b < B; ++b) {
    int lo = 0;
    size_t next = 0;
    for (int t = 0; t < T; ++t) {
      while (next < starts[size_t(b)].size() && starts[size_t(b)][next] <= t)
        lo = starts[size_t(b)][next++];
      kb[size_t(b) * T + t] = lo;
    }
  }
  return kb;
}

// An attention dropout's row keys [B, T] as a backend holds them (two int32 words each, low
// first): sequence first + b of the data order, position t, the run's seed.
inline std::vector<int32_t> dropout_row_keys(int B, int T, uint64_t seed, uint64_t first) {
  std::vector<int32_t> k(2 * size_t(B) * size_t(T));
  dropout_row_key_words(k.data(), seed, first, B, T);
  return k;
}

struct Reference {
  std::vector<double> out, lse, dqkv;
};

// Naive causal attention in double: forward and backward, one head at a time; with key_begin
// ([B,T]) query t of sequence b sees keys key_begin[b·T+t] .. t only. scale: the scores' (0:
// 1/sqrt(hd)). cap > 0: each scaled score s is cap·tanh(s / cap) (backend.h's softcap). drop
// (an attention dropout, its keys [B,T]): probability (i, j) of head h times drop's factor (1/(1 −
// p) or 0) where the output and dV read it, and dP likewise, as PyTorch's dropout after softmax.
inline Reference reference(const std::vector<double>& qkv, const std::vector<double>& dout, int B,
                           int T, int C, int NH, const std::vector<int32_t>* key_begin = nullptr,
                           double scale_or_0 = 0.0, double cap = 0.0,
                           const AttentionDropMask* drop = nullptr) {
  const int hd = C / NH;
  const double scale = scale_or_0 > 0.0 ? scale_or_0 : 1.0 / std::sqrt(double(hd));
  Reference r;
  r.out.assign(size_t(B) * T * C, 0.0);
  r.lse.assign(size_t(B) * NH * T, 0.0);
  r.dqkv.assign(size_t(B) * T * 3 * C, 0.0);
  const size_t pitch = size_t(3) * C;
#pragma omp parallel for schedule(dynamic)
  for (int bh = 0; bh < B * NH; ++bh) {
    const int b = bh / NH, h = bh % NH;
    auto q = [&](int t) { return &qkv[(size_t(b) * T + t) * pitch + size_t(h) * hd]; };
    auto k = [&](int t) { return q(t) + C; };
    auto v = [&](int t) { return q(t) + 2 * C; };
    auto dq = [&](int t) { return &r.dqkv[(size_t(b) * T + t) * pitch + size_t(h) * hd]; };
    auto o = [&](int t) { return &r.out[(size_t(b) * T + t) * C + size_t(h) * hd]; };
    auto dO = [&](int t) { return &dout[(size_t(b) * T + t) * C + size_t(h) * hd]; };
    std::vector<double> P(size_t(T) * T, 0.0);                 // row i: keys lo(i)..i
    std::vector<double> slope(cap > 0.0 ? size_t(T) * T : 0);  // the cap's derivative
    auto lo = [&](int i) { return key_begin ? int((*key_begin)[size_t(b) * T + i]) : 0; };
    // The dropout's factor written out from its definition (dropout_mask.h's header), the head
    // the call's h is in the model by drop's mapping.
    auto z = [&](int i, int j) {
      if (drop == nullptr) return 1.0;
      const uint64_t row_key = dropout_key_of(drop->keys, size_t(b) * T + size_t(i));
      const uint64_t a =
          dropout_mix(row_key ^ (uint64_t(0x80000000u | drop->layer) << 32 | drop->global_head(h)));
      return uint32_t(dropout_mix(a ^ uint64_t(j)) >> 40) >= drop->threshold ? double(drop->scale)
                                                                             : 0.0;
    };
    for (int i = 0; i < T; ++i) {
      double* p = &P[size_t(i) * T];
      double mx = -INFINITY;
      for (int j = lo(i); j <= i; ++j) {
        double s = 0.0;
        for (int d = 0; d < hd; ++d) s += q(i)[d] * k(j)[d];
        p[j] = s * scale;
        if (cap > 0.0) {
          const double t = std::tanh(p[j] / cap);
          p[j] = cap * t;
          slope[size_t(i) * T + j] = 1.0 - t * t;
        }
        mx = std::max(mx, p[j]);
      }
      double sum = 0.0;
      for (int j = lo(i); j <= i; ++j) sum += std::exp(p[j] - mx);
      r.lse[size_t(bh) * T + i] = mx + std::log(sum);
      for (int j = lo(i); j <= i; ++j) p[j] = std::exp(p[j] - mx) / sum;
      for (int j = lo(i); j <= i; ++j)
        for (int d = 0; d < hd; ++d) o(i)[d] += p[j] * z(i, j) * v(j)[d];
    }
    for (int i = 0; i < T; ++i) {
      const double* p = &P[size_t(i) * T];
      std::vector<double> dp(size_t(i) + 1);
      double Di = 0.0;
      for (int j = lo(i); j <= i; ++j) {
        double s = 0.0;
        for (int d = 0; d < hd; ++d) s += dO(i)[d] * v(j)[d];
        dp[j] = s * z(i, j);
        Di += p[j] * dp[j];
      }
      for (int j = lo(i); j <= i; ++j) {
        const double ds =
            p[j] * (dp[j] - Di) * scale * (cap > 0.0 ? slope[size_t(i) * T + j] : 1.0);
        for (int d = 0; d < hd; ++d) {
          dq(i)[d] += ds * k(j)[d];
          dq(j)[C + d] += ds * q(i)[d];
          dq(j)[2 * C + d] += p[j] * z(i, j) * dO(i)[d];
        }
      }
    }
  }
  return r;
}

// One random problem: qkv [B,T,3C] and dout [B,T,C] (bf16 bits, from the two seeds) and the
// double reference on them.
struct Problem {
  Bits qkv, dout;
  Reference want;
};
inline Problem random_problem(int B, int T, int C, int NH, uint32_t qkv_seed, uint32_t dout_seed,
                              const std::vector<int32_t>* key_begin = nullptr, double scale = 0.0,
                              double cap = 0.0, const AttentionDropMask* drop = nullptr) {
  Problem p;
  std::vector<double> qkv, dout;
  random_bf16(size_t(B) * T * 3 * C, qkv_seed, p.qkv, qkv);
  random_bf16(size_t(B) * T * C, dout_seed, p.dout, dout);
  p.want = reference(qkv, dout, B, T, C, NH, key_begin, scale, cap, drop);
  return p;
}

// max|got − want| / max|want| over the elements of [rows, width] blocks at column offset off
// within rows of `pitch`; NaN anywhere → infinity. A block whose reference is zero (dq and dk
// for T = 1) is held to an absolute 1e-6: max|want| counts as at least 1e-4.
inline double rel_error(const Bits& got, const std::vector<double>& want, size_t rows, size_t pitch,
                        size_t off, size_t width) {
  double diff = 0.0, ref = 0.0;
  for (size_t r = 0; r < rows; ++r) {
    for (size_t c = off; c < off + width; ++c) {
      const double g = to_float(bf16_t{got[r * pitch + c]});
      if (!std::isfinite(g)) return INFINITY;
      diff = std::max(diff, std::abs(g - want[r * pitch + c]));
      ref = std::max(ref, std::abs(want[r * pitch + c]));
    }
  }
  return diff / std::max(ref, 1e-4);
}

// For a backward that accumulates (each element becomes round(old + gradient)): the worst error
// of got against old + want, in units of what is allowed: 1e-2 of the largest gradient plus the
// final rounding of old + gradient to bf16 (half an ulp, at most 2^-8 relative). <= 1 passes; NaN
// → infinity.
inline double accumulate_error(const Bits& got, const std::vector<double>& old,
                               const std::vector<double>& want) {
  double ref = 0.0;
  for (double w : want) ref = std::max(ref, std::abs(w));
  double worst = 0.0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double g = to_float(bf16_t{got[i]}), w = old[i] + want[i];
    const double allowed = 1e-2 * ref + std::ldexp(std::abs(w), -8);
    worst = std::isfinite(g) ? std::max(worst, std::abs(g - w) / allowed) : INFINITY;
  }
  return worst;
}

}  // namespace triad::attention_reference
