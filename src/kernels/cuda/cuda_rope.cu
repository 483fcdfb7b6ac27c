// Rotary position embedding (backend.h rope): one thread per rotated pair of a q or k head (the
// NH q heads then the NKV k heads of a row, contiguous from column 0), in place; the formula of
// the CPU backend (src/kernels/cpu/cpu_rope.cpp), computed in fp32 and rounded once per element.
// Memory-bound: each thread reads and writes two elements and reads its position's cosine and
// sine from the table (seq_len·hd floats, cached in L2).
#include "cuda_ops.cuh"

namespace triad::cuda {
namespace {

template <typename Elem>
__global__ void rope_kernel(Elem* qkv, const float* table, const int32_t* positions, int T,
                            int pos0, int hd, int heads, size_t W, size_t pairs, float sign) {
  const int half = hd / 2;
  TRIAD_GRID_STRIDE_LOOP(k, pairs) {
    const int i = int(k % size_t(half));
    const size_t head = k / size_t(half);  // row · heads + j
    const int j = int(head % size_t(heads));
    const size_t r = head / size_t(heads);
    const int p = positions != nullptr ? positions[r] : pos0 + int(r % size_t(T));
    const float* cs = table + size_t(p) * hd;
    Elem* x = qkv + r * W + size_t(j) * hd;  // k head g is column C + g·hd = (NH + g)·hd
    const float c = cs[i], s = sign * cs[half + i];
    const float a = widen(x[i]), b = widen(x[half + i]);
    x[i] = narrow<Elem>(a * c - b * s);
    x[half + i] = narrow<Elem>(b * c + a * s);
  }
}

}  // namespace

template <typename Elem>
void rope(cudaStream_t s, Elem* qkv, const float* table, int N, int T, int pos0, int C, int NH,
          int NKV, bool inverse, const int32_t* positions) {
  TRIAD_CHECK(
      NH > 0 && C % NH == 0 && (C / NH) % 2 == 0 && NKV > 0 && NH % NKV == 0 && (N == 0 || T > 0),
      "cuda rope: bad shape (N = ", N, ", T = ", T, ", C = ", C, ", NH = ", NH, ", NKV = ", NKV,
      ")");
  const int hd = C / NH, heads = NH + NKV;  // rotated heads per row
  const size_t W = size_t(qkv_width(C, NH, NKV));
  const size_t pairs = size_t(N) * heads * (hd / 2);
  if (pairs == 0) return;
  rope_kernel<<<grid_for(pairs), kBlock, 0, s>>>(qkv, table, positions, T, pos0, hd, heads, W,
                                                 pairs, inverse ? -1.0f : 1.0f);
  TRIAD_CUDA_CHECK_LAUNCH();
}

template void rope<float>(cudaStream_t, float*, const float*, int, int, int, int, int, int, bool,
                          const int32_t*);
template void rope<bf16>(cudaStream_t, bf16*, const float*, int, int, int, int, int, int, bool,
                         const int32_t*);

}  // namespace triad::cuda
