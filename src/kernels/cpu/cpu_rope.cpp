// Rotary position embedding (backend.h rope): each q and k head's pairs (x_i, x_{i+rot/2}) of its
// first rot values (rot = hd but under partial rotary) rotated by their position's angles, in
// place. fp32, and bf16 computed in fp32 and rounded once per element.
#include "cpu_math.h"
#include "cpu_ops.h"
#include "triad/kernels/backend.h"

namespace triad::cpu {
namespace {

template <class E>
void rope_rows(E* qkv, const float* table, int N, int T, int pos0, int C, int NH, int NKV,
               bool inverse, const int32_t* positions, int rot) {
  const int hd = C / NH, half = (rot > 0 ? rot : hd) / 2;
  const size_t W = size_t(qkv_width(C, NH, NKV));
  // The backward pass rotates by −angle: the same cosines, the sines negated.
  const float sign = inverse ? -1.0f : 1.0f;
#pragma omp parallel for schedule(static) if (size_t(N) * 2 * C >= kParallelMin)
  for (int r = 0; r < N; ++r) {
    const float* cs = table + size_t(positions ? positions[r] : pos0 + r % T) * size_t(2 * half);
    E* row = qkv + size_t(r) * W;
    for (int j = 0; j < NH + NKV; ++j) {  // the q heads, then the k heads
      E* x = row + size_t(j) * hd;
      for (int i = 0; i < half; ++i) {
        const float c = cs[i], s = sign * cs[half + i];
        const float a = load_elem(x + i), b = load_elem(x + half + i);
        store_elem(x + i, a * c - b * s);
        store_elem(x + half + i, b * c + a * s);
      }
    }
  }
}

}  // namespace

void rope(float* qkv, const float* table, int N, int T, int pos0, int C, int NH, int NKV,
          bool inverse, const int32_t* positions, int rot) {
  rope_rows(qkv, table, N, T, pos0, C, NH, NKV, inverse, positions, rot);
}

void rope(bf16_t* qkv, const float* table, int N, int T, int pos0, int C, int NH, int NKV,
          bool inverse, const int32_t* positions, int rot) {
  rope_rows(qkv, table, N, T, pos0, C, NH, NKV, inverse, positions, rot);
}

}  // namespace triad::cpu
