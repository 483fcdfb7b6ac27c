// Mixture of experts (backend.h, "mixture of experts"): the CUDA form of the CPU backend's
// cpu_moe.cpp, fp32 and bf16 (computed in fp32, each output rounded once). Every reduction has a
// fixed order that depends only on the shapes, and no kernel uses atomics, so results are
// bit-identical run to run.
//  - moe_route / moe_route_backward: one warp per row; each lane takes the columns lane,
//    lane + 32, ... in order, combined by a butterfly (the softmax's max and sum, the backward's
//    Σ p·dp). The top-k are k arg-max passes over the columns that come after the previous pick
//    in the order (probability descending, column ascending): the CPU's picks (strictly larger
//    wins, ties keep the lower column) whenever the probabilities are the same.
//  - moe_dispatch: one block per expert scans the N·k choices twice: it counts the choices of
//    lower experts (its first place) and its own, then ranks its own in choice order with a
//    block-wide prefix sum: a stable counting sort. prob_sums are column_sum_accumulate's.
//  - moe_gather copies rows (16-byte units when the rows allow); moe_combine: one thread per
//    output column, summing the k choices in order; moe_combine_backward: one warp per choice.
#include "cuda_ops.cuh"

namespace triad::cuda {
namespace {

constexpr int kWarpsPerBlock = 8;  // the warp-per-row kernels: 256 threads, 8 rows or choices
constexpr int kDispatchThreads = 512;
constexpr int kDispatchItems = 8;  // consecutive choices per thread and step of the rank pass
constexpr int kMaxExperts = 256;   // model.moe_experts' limit

unsigned warp_rows_grid(int rows) { return unsigned((rows + kWarpsPerBlock - 1) / kWarpsPerBlock); }

// The order of moe_route's picks: larger probabilities first (a NaN as below every number, so
// that an all-NaN row still picks its first k columns as the CPU does), equal ones the lower
// column first.
__device__ __forceinline__ float rank_key(float p) { return isnan(p) ? -1.0f : p; }

template <typename Elem>
__global__ void route_kernel(float* probs, int32_t* expert, float* gate, const Elem* logits, int N,
                             int E, int k, bool normalize, float* lse) {
  const int lane = threadIdx.x % 32;
  const int n = blockIdx.x * kWarpsPerBlock + threadIdx.x / 32;
  if (n >= N) return;  // the whole warp: it shares the row
  const Elem* z = logits + size_t(n) * E;
  float* p = probs + size_t(n) * E;
  float mx = -INFINITY;
  for (int e = lane; e < E; e += 32) mx = fmaxf(mx, widen(z[e]));
  mx = warp_reduce(mx, MaxOp{});
  float sum = 0.0f;
  for (int e = lane; e < E; e += 32) sum += expf(widen(z[e]) - mx);
  sum = warp_reduce(sum, SumOp{});
  if (lse != nullptr && lane == 0) lse[n] = mx + logf(sum);
  // Each lane reads back only the columns it wrote: no synchronization needed.
  for (int e = lane; e < E; e += 32) p[e] = expf(widen(z[e]) - mx) / sum;

  int32_t* ex = expert + size_t(n) * k;
  float* g = gate + size_t(n) * k;
  float prev_key = INFINITY;  // every column comes after (+inf, -1)
  int prev_e = -1;
  float picked = 0.0f;
  for (int j = 0; j < k; ++j) {
    float best_key = 0.0f, best_p = 0.0f;
    int best = -1;
    for (int e = lane; e < E; e += 32) {
      const float pe = p[e], key = rank_key(pe);
      const bool after = key < prev_key || (key == prev_key && e > prev_e);
      if (after && (best < 0 || key > best_key)) {  // ascending columns: ties keep the lower
        best_key = key;
        best_p = pe;
        best = e;
      }
    }
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) {  // the same winner on every lane
      const float o_key = __shfl_xor_sync(0xffffffffu, best_key, offset);
      const float o_p = __shfl_xor_sync(0xffffffffu, best_p, offset);
      const int o_e = __shfl_xor_sync(0xffffffffu, best, offset);
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
  if (normalize && lane == 0)
    for (int j = 0; j < k; ++j) g[j] /= picked;
}

// Block-wide exclusive prefix sum of v (every thread must call it); *total = the sum over the
// block. blockDim.x a multiple of 32.
__device__ int block_exclusive_scan(int v, int* total) {
  __shared__ int warp_sums[32];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, n_warps = blockDim.x / 32;
  int incl = v;
#pragma unroll
  for (int offset = 1; offset < 32; offset <<= 1) {
    const int t = __shfl_up_sync(0xffffffffu, incl, offset);
    if (lane >= offset) incl += t;
  }
  __syncthreads();  // a previous call may still be reading warp_sums
  if (lane == 31) warp_sums[warp] = incl;
  __syncthreads();
  int before = 0, all = 0;
  for (int w = 0; w < n_warps; ++w) {
    const int s = warp_sums[w];
    if (w < warp) before += s;
    all += s;
  }
  *total = all;
  return before + incl - v;
}

// Block e: counts[e] and the slots of expert e's choices (M = N·k).
__global__ void dispatch_kernel(int32_t* slot, int* counts, const int32_t* expert, int M) {
  const int e = blockIdx.x;
  int below = 0, mine = 0;
  for (int i = threadIdx.x; i < M; i += blockDim.x) {
    const int x = expert[i];
    below += x < e ? 1 : 0;
    mine += x == e ? 1 : 0;
  }
  below = block_reduce(below, SumOp{}, 0);  // expert e's first place
  mine = block_reduce(mine, SumOp{}, 0);
  if (threadIdx.x == 0) counts[e] = mine;
  if (mine == 0) return;  // the whole block
  int next = below;
  const int step = blockDim.x * kDispatchItems;
  for (int at = 0; at < M; at += step) {
    const int first = at + threadIdx.x * kDispatchItems;
    int own = 0;
#pragma unroll
    for (int q = 0; q < kDispatchItems; ++q) {
      const int i = first + q;
      own += i < M && expert[i] == e ? 1 : 0;
    }
    int total = 0;
    int place = next + block_exclusive_scan(own, &total);
    if (own > 0) {
#pragma unroll
      for (int q = 0; q < kDispatchItems; ++q) {
        const int i = first + q;
        if (i < M && expert[i] == e) slot[i] = place++;
      }
    }
    next += total;
  }
}

// out[slot[i], :] = x[i / k, :] for the M = N·k choices; rows of W units of T.
template <typename T>
__global__ void gather_kernel(T* out, const T* x, const int32_t* slot, int M, int k, int W) {
  for (int i = blockIdx.x; i < M; i += gridDim.x) {
    const T* src = x + size_t(i / k) * size_t(W);
    T* dst = out + size_t(slot[i]) * size_t(W);
    for (int c = threadIdx.x; c < W; c += blockDim.x) dst[c] = src[c];
  }
}

template <typename Elem>
__global__ void combine_kernel(Elem* out, const Elem* y, const int32_t* slot, const float* gate,
                               int N, int k, int C) {
  for (int n = blockIdx.x; n < N; n += gridDim.x) {
    const int32_t* sl = slot + size_t(n) * k;
    const float* g = gate != nullptr ? gate + size_t(n) * k : nullptr;
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
      float s = 0.0f;
      for (int j = 0; j < k; ++j)
        s += (g != nullptr ? g[j] : 1.0f) * widen(y[size_t(sl[j]) * size_t(C) + size_t(c)]);
      out[size_t(n) * size_t(C) + size_t(c)] = narrow<Elem>(s);
    }
  }
}

template <typename Elem>
__global__ void combine_backward_kernel(Elem* dy, float* dgate, const Elem* dout, const Elem* y,
                                        const int32_t* slot, const float* gate, int M, int k,
                                        int C) {
  const int lane = threadIdx.x % 32;
  const int i = blockIdx.x * kWarpsPerBlock + threadIdx.x / 32;
  if (i >= M) return;  // the whole warp: it shares the choice
  const Elem* d = dout + size_t(i / k) * size_t(C);
  const size_t row = size_t(slot[i]) * size_t(C);
  const float g = gate != nullptr ? gate[i] : 1.0f;
  float dot = 0.0f;
  for (int c = lane; c < C; c += 32) {
    const float dc = widen(d[c]), yc = widen(y[row + size_t(c)]);
    dy[row + size_t(c)] = narrow<Elem>(g * dc);
    dot += dc * yc;
  }
  dot = warp_reduce(dot, SumOp{});
  if (lane == 0) dgate[i] = dot;
}

// gate_j = p[e_j] (/ S, S = Σ_j p[e_j], when normalized); dp = aux + dgate's gradient through
// that; dz[e] = p[e]·(dp[e] − Σ p·dp). The per-row scalars in the CPU's order (j ascending).
// The load-balancing loss's coefficients travel by value in the kernel's parameters (1 KB): no
// copy to the device, and no wait for one, per layer.
struct AuxCoefficients {
  float v[kMaxExperts];
  bool on;
};

template <typename Elem>
__global__ void route_backward_kernel(Elem* dlogits, const float* dgate, const float* probs,
                                      const int32_t* expert, const AuxCoefficients aux, int N,
                                      int E, int k, bool normalize, const float* lse,
                                      float z_loss) {
  const int lane = threadIdx.x % 32;
  const int n = blockIdx.x * kWarpsPerBlock + threadIdx.x / 32;
  if (n >= N) return;  // the whole warp: it shares the row
  const float* p = probs + size_t(n) * E;
  const int32_t* ex = expert + size_t(n) * k;
  const float* dg = dgate + size_t(n) * k;
  float S = 1.0f, sel = 0.0f;
  if (normalize) {
    S = 0.0f;
    for (int j = 0; j < k; ++j) S += p[ex[j]];
    for (int j = 0; j < k; ++j) sel += dg[j] * (p[ex[j]] / S);
  }
  // dp[e], recomputed (the same bits) by both passes below
  auto dp_of = [&](int e) {
    float v = aux.on ? aux.v[e] : 0.0f;
    for (int j = 0; j < k; ++j)
      if (ex[j] == e) v += normalize ? (dg[j] - sel) / S : dg[j];
    return v;
  };
  float dot = 0.0f;
  for (int e = lane; e < E; e += 32) dot += p[e] * dp_of(e);
  dot = warp_reduce(dot, SumOp{});
  Elem* dz = dlogits + size_t(n) * E;
  const float zc = z_loss > 0.0f ? 2.0f * z_loss * lse[n] : 0.0f;  // the router z-loss's
  for (int e = lane; e < E; e += 32) dz[e] = narrow<Elem>(p[e] * (dp_of(e) - dot) + zc * p[e]);
}

// Blocks of a loop over `rows` rows of `width` units: one block per row up to a cap (the loops
// cover the rest), and as many threads as the row needs, up to kBlock, in whole warps.
struct RowLaunch {
  unsigned grid, block;
};
RowLaunch row_launch(int rows, int width) {
  const int block = std::min(kBlock, std::max(32, (width + 31) / 32 * 32));
  return {unsigned(std::min(rows, 1 << 16)), unsigned(block)};
}

}  // namespace

template <typename Elem>
void moe_route(cudaStream_t s, float* probs, int32_t* expert, float* gate, const Elem* logits,
               int N, int E, int k, bool normalize, float* lse) {
  if (N <= 0 || E <= 0) return;
  TRIAD_CHECK(k >= 0 && k <= E, "moe_route: k = ", k, " of E = ", E, " experts");
  route_kernel<<<warp_rows_grid(N), 32 * kWarpsPerBlock, 0, s>>>(probs, expert, gate, logits, N, E,
                                                                 k, normalize, lse);
  TRIAD_CUDA_CHECK_LAUNCH();
}

void moe_dispatch(cudaStream_t s, DeviceScratch& scratch, DeviceScratch& partials, int32_t* slot,
                  int* counts, float* prob_sums, const int32_t* expert, const float* probs, int N,
                  int E, int k) {
  if (E <= 0) return;
  const int M = N * k;
  // [E] ints (the counts), then [E] floats (the probabilities' column sums)
  int* d_counts = scratch.get_as<int>(2 * size_t(E), s);
  float* d_sums = reinterpret_cast<float*>(d_counts + E);
  if (M > 0) {
    dispatch_kernel<<<unsigned(E), kDispatchThreads, 0, s>>>(slot, d_counts, expert, M);
    TRIAD_CUDA_CHECK_LAUNCH();
  } else {
    TRIAD_CUDA_CHECK(cudaMemsetAsync(d_counts, 0, size_t(E) * sizeof(int), s));
  }
  TRIAD_CUDA_CHECK(
      cudaMemcpyAsync(counts, d_counts, size_t(E) * sizeof(int), cudaMemcpyDeviceToHost, s));
  if (prob_sums != nullptr) {
    TRIAD_CUDA_CHECK(cudaMemsetAsync(d_sums, 0, size_t(E) * sizeof(float), s));
    column_sum_accumulate(s, partials, d_sums, probs, N, E);  // 0 + Σ: the sum itself
    TRIAD_CUDA_CHECK(
        cudaMemcpyAsync(prob_sums, d_sums, size_t(E) * sizeof(float), cudaMemcpyDeviceToHost, s));
  }
  TRIAD_CUDA_CHECK(cudaStreamSynchronize(s));
}

template <typename Elem>
void moe_gather(cudaStream_t s, Elem* out, const Elem* x, const int32_t* slot, int N, int k,
                int C) {
  const int M = N * k;
  if (M <= 0 || C <= 0) return;
  const size_t row_bytes = size_t(C) * sizeof(Elem);
  if (row_bytes % sizeof(uint4) == 0 && pointer_alignment(out) >= sizeof(uint4) &&
      pointer_alignment(x) >= sizeof(uint4)) {
    const int W = int(row_bytes / sizeof(uint4));
    const RowLaunch l = row_launch(M, W);
    gather_kernel<<<l.grid, l.block, 0, s>>>(reinterpret_cast<uint4*>(out),
                                             reinterpret_cast<const uint4*>(x), slot, M, k, W);
  } else {
    const RowLaunch l = row_launch(M, C);
    gather_kernel<<<l.grid, l.block, 0, s>>>(out, x, slot, M, k, C);
  }
  TRIAD_CUDA_CHECK_LAUNCH();
}

template <typename Elem>
void moe_combine(cudaStream_t s, Elem* out, const Elem* y, const int32_t* slot, const float* gate,
                 int N, int k, int C) {
  if (N <= 0 || C <= 0) return;
  const RowLaunch l = row_launch(N, C);
  combine_kernel<<<l.grid, l.block, 0, s>>>(out, y, slot, gate, N, k, C);
  TRIAD_CUDA_CHECK_LAUNCH();
}

template <typename Elem>
void moe_combine_backward(cudaStream_t s, Elem* dy, float* dgate, const Elem* dout, const Elem* y,
                          const int32_t* slot, const float* gate, int N, int k, int C) {
  const int M = N * k;
  if (M <= 0) return;
  combine_backward_kernel<<<warp_rows_grid(M), 32 * kWarpsPerBlock, 0, s>>>(dy, dgate, dout, y,
                                                                            slot, gate, M, k, C);
  TRIAD_CUDA_CHECK_LAUNCH();
}

template <typename Elem>
void moe_route_backward(cudaStream_t s, Elem* dlogits, const float* dgate, const float* probs,
                        const int32_t* expert, const float* aux, int N, int E, int k,
                        bool normalize, const float* lse, float z_loss) {
  if (N <= 0 || E <= 0) return;
  TRIAD_CHECK(E <= kMaxExperts, "cuda backend: moe_route_backward takes at most ", kMaxExperts,
              " experts (got ", E, ")");
  AuxCoefficients coef{};
  coef.on = aux != nullptr;
  if (aux != nullptr) std::copy(aux, aux + E, coef.v);  // host memory (backend.h)
  route_backward_kernel<<<warp_rows_grid(N), 32 * kWarpsPerBlock, 0, s>>>(
      dlogits, dgate, probs, expert, coef, N, E, k, normalize, lse, z_loss);
  TRIAD_CUDA_CHECK_LAUNCH();
}

namespace {
template <typename Elem>
__global__ void shared_gate_kernel(float* s, const Elem* logits, int N) {
  const int n = blockIdx.x * blockDim.x + threadIdx.x;
  if (n < N) s[n] = 1.0f / (1.0f + expf(-widen(logits[n])));
}
template <typename Elem>
__global__ void shared_gate_backward_kernel(Elem* dlogits, const float* ds, const float* s, int N) {
  const int n = blockIdx.x * blockDim.x + threadIdx.x;
  if (n < N) dlogits[n] = narrow<Elem>(ds[n] * s[n] * (1.0f - s[n]));
}
}  // namespace

template <typename Elem>
void moe_shared_gate(cudaStream_t st, float* s, const Elem* logits, int N) {
  if (N <= 0) return;
  shared_gate_kernel<<<(N + 255) / 256, 256, 0, st>>>(s, logits, N);
  TRIAD_CUDA_CHECK_LAUNCH();
}

template <typename Elem>
void moe_shared_gate_backward(cudaStream_t st, Elem* dlogits, const float* ds, const float* s,
                              int N) {
  if (N <= 0) return;
  shared_gate_backward_kernel<<<(N + 255) / 256, 256, 0, st>>>(dlogits, ds, s, N);
  TRIAD_CUDA_CHECK_LAUNCH();
}

template void moe_shared_gate<float>(cudaStream_t, float*, const float*, int);
template void moe_shared_gate<bf16>(cudaStream_t, float*, const bf16*, int);
template void moe_shared_gate_backward<float>(cudaStream_t, float*, const float*, const float*,
                                              int);
template void moe_shared_gate_backward<bf16>(cudaStream_t, bf16*, const float*, const float*, int);
template void moe_route<float>(cudaStream_t, float*, int32_t*, float*, const float*, int, int, int,
                               bool, float*);
template void moe_route<bf16>(cudaStream_t, float*, int32_t*, float*, const bf16*, int, int, int,
                              bool, float*);
template void moe_gather<float>(cudaStream_t, float*, const float*, const int32_t*, int, int, int);
template void moe_gather<bf16>(cudaStream_t, bf16*, const bf16*, const int32_t*, int, int, int);
template void moe_combine<float>(cudaStream_t, float*, const float*, const int32_t*, const float*,
                                 int, int, int);
template void moe_combine<bf16>(cudaStream_t, bf16*, const bf16*, const int32_t*, const float*, int,
                                int, int);
template void moe_combine_backward<float>(cudaStream_t, float*, float*, const float*, const float*,
                                          const int32_t*, const float*, int, int, int);
template void moe_combine_backward<bf16>(cudaStream_t, bf16*, float*, const bf16*, const bf16*,
                                         const int32_t*, const float*, int, int, int);
template void moe_route_backward<float>(cudaStream_t, float*, const float*, const float*,
                                        const int32_t*, const float*, int, int, int, bool,
                                        const float*, float);
template void moe_route_backward<bf16>(cudaStream_t, bf16*, const float*, const float*,
                                       const int32_t*, const float*, int, int, int, bool,
                                       const float*, float);

}  // namespace triad::cuda
