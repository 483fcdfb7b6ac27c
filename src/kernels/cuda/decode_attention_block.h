// Attention of a few new rows against a cache of keys and values (Backend::attention_decode) as
// a block program (see block_program.h): generation's attention, one query row at a time. The
// CUDA backend runs it for fp32 and bf16 (cuda_attention_decode.cu); the CPU test
// test_decode_attention_emulated runs it through the SIMT emulator against a plain reference and
// the CPU backend.
//
// Block (h, b·n + r), kThreads threads: new row r (position p + r) of query head h of sequence b,
// against key/value head h % NKV (grouped-query attention when NKV < NH, backend.h: the cache
// stays compact, rows W = C + 2·NKV·hd wide; the NH/NKV blocks of a kv head read the same cache
// rows, mostly from L2). Its query goes to shared memory; thread t scores keys t, t + kThreads,
// ... (each reads whole key rows); a max and a sum over the block (a fixed tree, so the result
// depends on the shapes only) give the softmax; then thread d forms output element d
// (consecutive threads read consecutive elements of each value row). Decoding reads the whole
// cache once per new row: memory-bound, with n·NH blocks for n new rows. Shared memory: the
// query, the scores of the keys the row sees (0 .. p + r, or a window's last ones: a window
// decodes over caches of any length), and the reduction's kThreads.
#pragma once

#include <cstddef>
#include <cstdint>

#include "block_program.h"

namespace triad::decode_attention {

constexpr int kThreads = 128;

// Dynamic shared memory of a launch whose longest row sees `keys` keys (p + n, or at most the
// window: only the keys a row sees have a score slot), head dim hd.
TRIAD_BLOCK_SIZE size_t smem_bytes(int keys, int hd) {
  return (size_t(hd) + size_t(keys) + kThreads) * sizeof(float);
}
TRIAD_BLOCK_SIZE int keys_seen(int p, int n, int window) {
  return window > 0 && window < p + n ? window : p + n;
}

// red[0] = max (is_max) or sum of red[0 .. kThreads), through a fixed tree; every thread
// returns it. Starts and ends with a barrier, so red may be reused right after.
template <class X>
TRIAD_BLOCK_FN float block_reduce(X& x, float* red, float v, bool is_max) {
  const int t = x.thread();
  red[t] = v;
  x.sync_threads();
  for (int s = kThreads / 2; s > 0; s /= 2) {
    if (t < s) red[t] = is_max ? (red[t] > red[t + s] ? red[t] : red[t + s]) : red[t] + red[t + s];
    x.sync_threads();
  }
  const float r = red[0];
  x.sync_threads();
  return r;
}

// E: float (fp32) or uint16_t (bf16 bits). out [B, n, C], sequence b's rows at qkv + b·stride
// rows of W = C + 2·NKV·hd, as in backend.h. window > 0: a row sees its last `window` keys.
// scale: the scores' (0: 1/sqrt(hd)); cap > 0: each score s becomes cap·tanh(s / cap). sinks
// (nullptr: none): [NH] logits, head h's a term exp(sinks[h]) of its softmax's denominator.
template <class X, class E>
TRIAD_BLOCK_FN void row(X& x, E* out, const E* qkv, int stride, int p, int n, int C, int NH,
                        int NKV, int window, float scale_or_0 = 0.0f, float cap = 0.0f,
                        const E* sinks = nullptr) {
  const int h = x.block_x(), b = x.block_y() / n, r = x.block_y() % n, t = x.thread();
  const int hd = C / NH, keys = p + r + 1;  // row p + r sees keys lo .. p + r
  const int lo = window > 0 && keys > window ? keys - window : 0;
  const size_t ld = size_t(C) + 2 * size_t(NKV) * hd;
  const size_t k_col = size_t(C) + size_t(h % NKV) * hd;  // this head's key, then value, columns
  const size_t v_col = k_col + size_t(NKV) * hd;
  qkv += size_t(b) * stride * ld;
  out += size_t(b) * n * C;
  float* q = reinterpret_cast<float*>(x.smem());  // [hd], scaled
  float* s = q + hd;                              // [keys - lo]: key j's score at s[j - lo]
  float* red = s + (keys - lo);                   // [kThreads]
  const float scale = scale_or_0 > 0.0f ? scale_or_0 : 1.0f / float(x.sqrt(double(hd)));
  for (int d = t; d < hd; d += kThreads)
    q[d] = scale * load(x, qkv + size_t(p + r) * ld + size_t(h) * hd + d);
  x.sync_threads();
  float mx = -3.0e38f;
  for (int j = lo + t; j < keys; j += kThreads) {
    const E* k = qkv + size_t(j) * ld + k_col;
    float dot = 0.0f;
    for (int d = 0; d < hd; ++d) dot += q[d] * load(x, k + d);
    if (cap > 0.0f) dot = cap * x.tanh(dot / cap);
    s[j - lo] = dot;
    mx = dot > mx ? dot : mx;
  }
  mx = block_reduce(x, red, mx, true);
  const float sink = sinks != nullptr ? load(x, sinks + h) : 0.0f;
  if (sinks != nullptr && sink > mx) mx = sink;
  float sum = 0.0f;
  for (int j = lo + t; j < keys; j += kThreads) {
    const float e = x.exp(s[j - lo] - mx);
    s[j - lo] = e;
    sum += e;
  }
  sum = block_reduce(x, red, sum, false);  // its barriers also publish every s[j]
  if (sinks != nullptr) sum += x.exp(sink - mx);
  const float inv = 1.0f / sum;
  for (int d = t; d < hd; d += kThreads) {
    const E* v = qkv + v_col + d;
    float acc = 0.0f;
    for (int j = lo; j < keys; ++j) acc += s[j - lo] * load(x, v + size_t(j) * ld);
    store(x, out + size_t(r) * C + size_t(h) * hd + d, acc * inv);
  }
}

}  // namespace triad::decode_attention
