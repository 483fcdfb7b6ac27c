// Rotary position embedding (backend.h rope): the block program of rope_block.h (which describes
// it), one thread per rotated pair, launched here with DeviceThread. Memory-bound: each thread
// reads and writes two elements and reads its position's cosine and sine from the table (seq_len·hd
// floats, cached in L2).
#include "cuda_ops.cuh"
#include "device_thread.cuh"
#include "rope_block.h"

namespace triad::cuda {
namespace {

template <typename E>
__global__ void rope_kernel(E* qkv, const float* table, const int32_t* positions, int T, int pos0,
                            int hd, int rot, int heads, size_t W, size_t pairs, float sign) {
  DeviceThread x;
  rope_block::rotate(x, qkv, table, positions, T, pos0, hd, rot, heads, W, pairs, sign,
                     block_threads(), grid_threads());
}

}  // namespace

template <typename Elem>
void rope(cudaStream_t s, Elem* qkv, const float* table, int N, int T, int pos0, int C, int NH,
          int NKV, bool inverse, const int32_t* positions, int rot) {
  const int hd = NH > 0 ? C / NH : 0;
  if (rot == 0) rot = hd;
  TRIAD_CHECK(NH > 0 && C % NH == 0 && rot % 2 == 0 && rot > 0 && rot <= hd && NKV > 0 &&
                  NH % NKV == 0 && (N == 0 || T > 0),
              "cuda rope: bad shape (N = ", N, ", T = ", T, ", C = ", C, ", NH = ", NH,
              ", NKV = ", NKV, ", rot = ", rot, ")");
  const int heads = NH + NKV;  // rotated heads per row
  const size_t W = size_t(qkv_width(C, NH, NKV));
  const size_t pairs = size_t(N) * heads * size_t(rot / 2);
  if (pairs == 0) return;
  rope_kernel<<<grid_for(pairs), kBlock, 0, s>>>(bits(qkv), table, positions, T, pos0, hd, rot,
                                                 heads, W, pairs, inverse ? -1.0f : 1.0f);
  TRIAD_CUDA_CHECK_LAUNCH();
}

template void rope<float>(cudaStream_t, float*, const float*, int, int, int, int, int, int, bool,
                          const int32_t*, int);
template void rope<bf16>(cudaStream_t, bf16*, const float*, int, int, int, int, int, int, bool,
                         const int32_t*, int);

}  // namespace triad::cuda
