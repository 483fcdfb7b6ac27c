// The mixture-of-experts kernels of cuda_moe.cu as block programs (see block_program.h), so that
// the CPU tests run the same code through the SIMT emulator (test_moe_emulated) against the CPU
// backend. Elem is float or uint16_t (bf16 bits): computed in fp32, each output rounded once.
// Every reduction has a fixed order that depends only on the shapes, and nothing uses atomics.
//  - route_rows / route_backward_rows: one warp per row (kWarpsPerBlock rows per block); each lane
//    takes the columns lane, lane + 32, ... in order, combined by a butterfly (the softmax's max
//    and sum, the backward's Σ p·dp). The top-k are k arg-max passes over the columns that come
//    after the previous pick in the order (key = score + bias descending, column ascending),
//    among the chosen groups' columns under node-limited routing: the CPU's picks (strictly
//    larger wins, ties keep the lower column) whenever the scores agree.
//  - dispatch_block: block e scans the N·k choices twice: it counts the choices of lower experts
//    (its first place) and its own, then ranks its own in choice order with a block-wide prefix
//    sum: a stable counting sort.
//  - gather_rows copies rows; combine_rows: one thread per output column, the k choices summed
//    in order; combine_backward_rows: one warp per choice.
//  - shared_gate / shared_gate_backward: one thread per row.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>

#include "block_program.h"
#include "triad/kernels/moe_routing.h"

namespace triad::moe_block {

constexpr int kWarpsPerBlock = 8;  // the warp-per-row programs: 256 threads, 8 rows or choices
constexpr int kWarpThreads = 32 * kWarpsPerBlock;
constexpr int kDispatchThreads = 512;
constexpr int kDispatchItems = 8;  // consecutive choices per thread and step of the rank pass
constexpr int kMaxGroups = kMaxExperts / 2;  // node-limited routing: two experts a group at least
constexpr int kElementwiseThreads = 256;

// dispatch_block's shared memory: the block reduction's and the scan's per-warp values.
TRIAD_BLOCK_SIZE size_t dispatch_smem() { return 2 * 32 * sizeof(int); }

// The order of route_rows' picks: larger keys (score + bias) first (a NaN as below every number,
// so that an all-NaN row still picks its first k columns as the CPU does), equal ones the lower
// column first.
TRIAD_BLOCK_FN float rank_key(float v) { return v != v ? -INFINITY : v; }

// probs[N,E] = the scores of each row of logits (softmax, or routing.sigmoid); expert[N,k],
// gate[N,k] its k picks by score + routing.bias (gates: the scores, divided by their sum when
// routing.normalize, times routing.scale); lse[N] (may be null) log Σ_e exp(logits). Block b: rows
// kWarpsPerBlock·b + warp.
template <class X, class Elem>
TRIAD_BLOCK_FN void route_rows(X& x, float* probs, int32_t* expert, float* gate, const Elem* logits,
                               int N, int E, int k, const MoeRouting& routing, float* lse) {
  const int lane = x.thread() % 32;
  const int n = x.block_x() * kWarpsPerBlock + x.thread() / 32;
  if (n >= N) return;  // the whole warp: it shares the row
  const Elem* z = logits + size_t(n) * E;
  float* p = probs + size_t(n) * E;
  float mx = -INFINITY;
  for (int e = lane; e < E; e += 32) {
    const float v = load(x, z + e);
    mx = v > mx ? v : mx;
  }
  mx = warp_max(x, mx);
  float sum = 0.0f;
  for (int e = lane; e < E; e += 32) sum += x.exp(load(x, z + e) - mx);
  sum = warp_sum(x, sum);
  if (lse != nullptr && lane == 0) lse[n] = mx + float(x.log(double(sum)));
  // Each lane reads back only the columns it wrote: no synchronization needed.
  auto score = [&](int e) {
    return routing.sigmoid ? 1.0f / (1.0f + x.exp(-load(x, z + e)))
                           : x.exp(load(x, z + e) - mx) / sum;
  };
  for (int e = lane; e < E; e += 32) p[e] = score(e);
  auto key_of = [&](int e, float pe) {
    return rank_key(pe + (routing.bias != nullptr ? routing.bias[e] : 0.0f));
  };

  // Node-limited routing: lane l scores the groups l, l + 32, ... (the sum of each one's two
  // largest keys, or its largest alone under group_by_best, from scores formed again: the same bits
  // as p's, which other lanes wrote), then group_top_k arg-max passes over the groups not yet taken
  // (larger first, the lower group on a tie, as the CPU), every lane keeping the same mask of the
  // groups taken.
  const int G = routing.groups > 1 ? routing.groups : 1, S = E / G;
  uint32_t taken[kMaxGroups / 32] = {};
  if (G > 1) {
    float group_score[kMaxGroups / 32];
    for (int i = 0; i * 32 + lane < G; ++i) {
      const int q = i * 32 + lane;
      float k1 = -INFINITY, k2 = -INFINITY;
      int e1 = -1, e2 = -1;
      for (int e = q * S; e < (q + 1) * S; ++e) {
        const float v = key_of(e, score(e));
        if (e1 < 0 || v > k1) {
          k2 = k1;
          e2 = e1;
          k1 = v;
          e1 = e;
        } else if (e2 < 0 || v > k2) {
          k2 = v;
          e2 = e;
        }
      }
      group_score[i] = routing.group_by_best ? k1 : k1 + k2;
    }
    for (int j = 0; j < routing.group_top_k; ++j) {
      float best_s = 0.0f;
      int best = -1;
      for (int i = 0; i * 32 + lane < G; ++i) {
        const int q = i * 32 + lane;
        if ((taken[q / 32] >> (q % 32)) & 1u) continue;
        if (best < 0 || group_score[i] > best_s) {  // ascending groups: ties keep the lower
          best_s = group_score[i];
          best = q;
        }
      }
      TRIAD_UNROLL
      for (int offset = 16; offset > 0; offset >>= 1) {
        const float o_s = x.shfl_xor(best_s, offset);
        const int o_q = x.shfl_xor(best, offset);
        if (o_q >= 0 && (best < 0 || o_s > best_s || (o_s == best_s && o_q < best))) {
          best_s = o_s;
          best = o_q;
        }
      }
      taken[best / 32] |= 1u << (best % 32);
    }
  }

  int32_t* ex = expert + size_t(n) * k;
  float* g = gate + size_t(n) * k;
  float prev_key = INFINITY;  // every column comes after (+inf, -1)
  int prev_e = -1;
  float picked = 0.0f;
  for (int j = 0; j < k; ++j) {
    float best_key = 0.0f, best_p = 0.0f;
    int best = -1;
    for (int e = lane; e < E; e += 32) {
      const float pe = p[e];
      const float key = key_of(e, pe);
      const bool allowed = G == 1 || ((taken[(e / S) / 32] >> ((e / S) % 32)) & 1u);
      const bool after = allowed && (key < prev_key || (key == prev_key && e > prev_e));
      if (after && (best < 0 || key > best_key)) {  // ascending columns: ties keep the lower
        best_key = key;
        best_p = pe;
        best = e;
      }
    }
    TRIAD_UNROLL
    for (int offset = 16; offset > 0; offset >>= 1) {  // the same winner on every lane
      const float o_key = x.shfl_xor(best_key, offset);
      const float o_p = x.shfl_xor(best_p, offset);
      const int o_e = x.shfl_xor(best, offset);
      if (o_e >= 0 && (best < 0 || o_key > best_key || (o_key == best_key && o_e < best))) {
        best_key = o_key;
        best_p = o_p;
        best = o_e;
      }
    }
    prev_key = best_key;
    prev_e = best;
    picked += best_p;
    if (lane == 0) {
      ex[j] = best;
      g[j] = best_p;
    }
  }
  if (lane == 0)
    for (int j = 0; j < k; ++j)
      g[j] = (routing.normalize ? g[j] / (picked + routing.floor()) : g[j]) * routing.scale;
}

// The exclusive prefix sum of v over the block's threads in order; *total = the block's sum.
// part: 32 ints of shared memory.
template <class X>
TRIAD_BLOCK_FN int block_exclusive_scan(X& x, int v, int* total, int* part) {
  const int lane = x.thread() % 32, warp = x.thread() / 32;
  // Within the warp: lane l gathers the lanes below it bit by bit (a butterfly over the lane's
  // binary digits: after step b, incl holds the sum of the lanes that agree with l above bit b
  // and are at most l, and block the sum of the 2^(b+1) lanes of l's group).
  int incl = v, group = v;
  TRIAD_UNROLL
  for (int bit = 1; bit < 32; bit <<= 1) {
    const int other = x.shfl_xor(group, bit);
    if (lane & bit) incl += other;
    group += other;
  }
  x.sync_threads();  // a previous call may still be reading part
  if (lane == 31) part[warp] = incl;
  x.sync_threads();
  int before = 0, all = 0;
  for (int w = 0; w < kDispatchThreads / 32; ++w) {
    const int s = part[w];
    if (w < warp) before += s;
    all += s;
  }
  *total = all;
  return before + incl - v;
}

// Block e (kDispatchThreads threads): counts[e] and the slots of expert e's choices (M = N·k).
template <class X>
TRIAD_BLOCK_FN void dispatch_block(X& x, int32_t* slot, int* counts, const int32_t* expert, int M) {
  int* part = reinterpret_cast<int*>(x.smem());  // [32] the reductions', [32] the scan's
  const int e = x.block_x(), t = x.thread();
  int below = 0, mine = 0;
  for (int i = t; i < M; i += kDispatchThreads) {
    const int c = expert[i];
    below += c < e ? 1 : 0;
    mine += c == e ? 1 : 0;
  }
  below = block_sum(x, below, part, kDispatchThreads);  // expert e's first place
  mine = block_sum(x, mine, part, kDispatchThreads);
  if (t == 0) counts[e] = mine;
  if (mine == 0) return;  // the whole block
  int next = below;
  const int step = kDispatchThreads * kDispatchItems;
  for (int at = 0; at < M; at += step) {
    const int first = at + t * kDispatchItems;
    int own = 0;
    TRIAD_UNROLL
    for (int q = 0; q < kDispatchItems; ++q) {
      const int i = first + q;
      own += i < M && expert[i] == e ? 1 : 0;
    }
    int total = 0;
    int place = next + block_exclusive_scan(x, own, &total, part + 32);
    if (own > 0) {
      TRIAD_UNROLL
      for (int q = 0; q < kDispatchItems; ++q) {
        const int i = first + q;
        if (i < M && expert[i] == e) slot[i] = place++;
      }
    }
    next += total;
  }
}

// out[slot[i], :] = x[i / k, :] for the M = N·k choices; rows of W units of T (an element, or
// Vec16). Block b of `blocks` (threads of the block: `threads`): choices b, b + blocks, ...
template <class X, class T>
TRIAD_BLOCK_FN void gather_rows(X& x, T* out, const T* in, const int32_t* slot, int M, int k, int W,
                                int blocks, int threads) {
  for (int i = x.block_x(); i < M; i += blocks) {
    const T* src = in + size_t(i / k) * size_t(W);
    T* dst = out + size_t(slot[i]) * size_t(W);
    for (int c = x.thread(); c < W; c += threads) dst[c] = src[c];
  }
}

// out[n, :] = Σ_j gate[n·k + j]·y[slot[n·k + j], :] (gate null: 1), j in order. Block b of
// `blocks`: rows b, b + blocks, ...; thread t: columns t, t + threads, ...
template <class X, class Elem>
TRIAD_BLOCK_FN void combine_rows(X& x, Elem* out, const Elem* y, const int32_t* slot,
                                 const float* gate, int N, int k, int C, int blocks, int threads) {
  for (int n = x.block_x(); n < N; n += blocks) {
    const int32_t* sl = slot + size_t(n) * k;
    const float* g = gate != nullptr ? gate + size_t(n) * k : nullptr;
    for (int c = x.thread(); c < C; c += threads) {
      float s = 0.0f;
      for (int j = 0; j < k; ++j)
        s += (g != nullptr ? g[j] : 1.0f) * load(x, y + size_t(sl[j]) * size_t(C) + size_t(c));
      store(x, out + size_t(n) * size_t(C) + size_t(c), s);
    }
  }
}

// dy[slot[i], :] = gate[i]·dout[i / k, :]; dgate[i] = Σ_c dout[i / k, c]·y[slot[i], c]. Block b:
// choices kWarpsPerBlock·b + warp.
template <class X, class Elem>
TRIAD_BLOCK_FN void combine_backward_rows(X& x, Elem* dy, float* dgate, const Elem* dout,
                                          const Elem* y, const int32_t* slot, const float* gate,
                                          int M, int k, int C) {
  const int lane = x.thread() % 32;
  const int i = x.block_x() * kWarpsPerBlock + x.thread() / 32;
  if (i >= M) return;  // the whole warp: it shares the choice
  const Elem* d = dout + size_t(i / k) * size_t(C);
  const size_t row = size_t(slot[i]) * size_t(C);
  const float g = gate != nullptr ? gate[i] : 1.0f;
  float dot = 0.0f;
  for (int c = lane; c < C; c += 32) {
    const float dc = load(x, d + c), yc = load(x, y + row + size_t(c));
    store(x, dy + row + size_t(c), g * dc);
    dot += dc * yc;
  }
  dot = warp_sum(x, dot);
  if (lane == 0) dgate[i] = dot;
}

// The load-balancing loss's coefficients (kernel parameters by value on the GPU: no copy to the
// device, and no wait for one, per layer).
struct AuxCoefficients {
  float v[kMaxExperts];
  bool on;
};

// gate_j = scale·p[e_j] (/ S, S = Σ_j p[e_j], when normalized); dp = the balancing loss's (aux
// on the softmax's probabilities; on sigmoid scores over their row's sum Q: (aux[e] −
// Σ aux·p/Q)/Q) + dgate's gradient through the gates; softmax: dz[e] = p[e]·(dp[e] − Σ p·dp) +
// 2c·lse·p[e] (the router z-loss's, z_loss = c > 0); sigmoid: dz[e] = dp[e]·p[e]·(1 − p[e]).
// The per-row scalars in the CPU's order (j ascending); the sums over the columns (Q, Σ aux·p/Q,
// Σ p·dp) the butterfly's. Block b: rows kWarpsPerBlock·b + warp.
template <class X, class Elem>
TRIAD_BLOCK_FN void route_backward_rows(X& x, Elem* dlogits, const float* dgate, const float* probs,
                                        const int32_t* expert, const AuxCoefficients& aux, int N,
                                        int E, int k, const MoeRouting& routing, const float* lse,
                                        float z_loss) {
  const int lane = x.thread() % 32;
  const int n = x.block_x() * kWarpsPerBlock + x.thread() / 32;
  if (n >= N) return;  // the whole warp: it shares the row
  const float* p = probs + size_t(n) * E;
  const int32_t* ex = expert + size_t(n) * k;
  const float* dg = dgate + size_t(n) * k;
  const bool normalize = routing.normalize;
  const float scale = routing.scale;
  float S = 1.0f, sel = 0.0f;
  if (normalize) {
    S = 0.0f;
    for (int j = 0; j < k; ++j) S += p[ex[j]];
    S += routing.floor();
    for (int j = 0; j < k; ++j) sel += scale * dg[j] * (p[ex[j]] / S);
  }
  // Sigmoid scores: the balancing loss reads them over their row's sum Q.
  float Q = 1.0f, aux_dot = 0.0f;
  const bool row_sum = aux.on && routing.sigmoid;
  if (row_sum) {
    Q = 0.0f;
    for (int e = lane; e < E; e += 32) Q += p[e];
    Q = warp_sum(x, Q) + routing.floor();
    for (int e = lane; e < E; e += 32) aux_dot += aux.v[e] * (p[e] / Q);
    aux_dot = warp_sum(x, aux_dot);
  }
  // dp[e], recomputed (the same bits) by both passes below
  auto dp_of = [&](int e) {
    float v = aux.on ? (row_sum ? (aux.v[e] - aux_dot) / Q : aux.v[e]) : 0.0f;
    for (int j = 0; j < k; ++j)
      if (ex[j] == e) v += normalize ? (scale * dg[j] - sel) / S : scale * dg[j];
    return v;
  };
  Elem* dz = dlogits + size_t(n) * E;
  if (routing.sigmoid) {
    for (int e = lane; e < E; e += 32) store(x, dz + e, dp_of(e) * p[e] * (1.0f - p[e]));
    return;
  }
  float dot = 0.0f;
  for (int e = lane; e < E; e += 32) dot += p[e] * dp_of(e);
  dot = warp_sum(x, dot);
  const float zc = z_loss > 0.0f ? 2.0f * z_loss * lse[n] : 0.0f;
  for (int e = lane; e < E; e += 32) store(x, dz + e, p[e] * (dp_of(e) - dot) + zc * p[e]);
}

// s[n] = sigmoid(logits[n]); its backward dlogits[n] = ds[n]·s[n]·(1 − s[n]). One thread per
// row, kElementwiseThreads per block.
template <class X, class Elem>
TRIAD_BLOCK_FN void shared_gate(X& x, float* s, const Elem* logits, int N) {
  const int n = x.block_x() * kElementwiseThreads + x.thread();
  if (n < N) s[n] = 1.0f / (1.0f + x.exp(-load(x, logits + n)));
}
template <class X, class Elem>
TRIAD_BLOCK_FN void shared_gate_backward(X& x, Elem* dlogits, const float* ds, const float* s,
                                         int N) {
  const int n = x.block_x() * kElementwiseThreads + x.thread();
  if (n < N) store(x, dlogits + n, ds[n] * s[n] * (1.0f - s[n]));
}

}  // namespace triad::moe_block
