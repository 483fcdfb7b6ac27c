// Rotary position embedding (backend.h rope): one thread per rotated pair of a q or k head,
// in place; the formula of the CPU backend (src/kernels/cpu/cpu_rope.cpp), computed in fp32
// and rounded once per element. Memory-bound: each thread reads and writes two elements and
// reads its position's cosine and sine from the table (seq_len·hd floats, cached in L2).
#include "cuda_ops.cuh"

namespace triad::cuda {
namespace {

template <typename Elem>
__global__ void rope_kernel(Elem* qkv, const float* table, int N, int T, int pos0, int C, int NH,
                            float sign) {
  const int hd = C / NH, half = hd / 2;
  const size_t pairs = size_t(N) * C;  // per row: 2·NH heads of half pairs = C pairs
  TRIAD_GRID_STRIDE_LOOP(k, pairs) {
    const int i = int(k % size_t(half));
    const size_t head = k / size_t(half);  // row · 2NH + j
    const int j = int(head % size_t(2 * NH));
    const size_t r = head / size_t(2 * NH);
    const float* cs = table + size_t(pos0 + int(r % size_t(T))) * hd;
    Elem* x = qkv + r * 3 * size_t(C) + size_t(j) * hd;
    const float c = cs[i], s = sign * cs[half + i];
    const float a = widen(x[i]), b = widen(x[half + i]);
    x[i] = narrow<Elem>(a * c - b * s);
    x[half + i] = narrow<Elem>(b * c + a * s);
  }
}

}  // namespace

template <typename Elem>
void rope(cudaStream_t s, Elem* qkv, const float* table, int N, int T, int pos0, int C, int NH,
          bool inverse) {
  const size_t pairs = size_t(N) * size_t(C);
  if (pairs == 0) return;
  rope_kernel<<<grid_for(pairs), kBlock, 0, s>>>(qkv, table, N, T, pos0, C, NH,
                                                 inverse ? -1.0f : 1.0f);
  TRIAD_CUDA_CHECK_LAUNCH();
}

template void rope<float>(cudaStream_t, float*, const float*, int, int, int, int, int, bool);
template void rope<bf16>(cudaStream_t, bf16*, const float*, int, int, int, int, int, bool);

}  // namespace triad::cuda
