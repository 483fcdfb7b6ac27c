// Fused causal flash attention, forward and backward (see flash_attention.cuh).
//
// Tiles: 64 query rows × 64 keys per step, 4 warps (128 threads) per block; warp w owns the 16
// rows w·16 .. w·16+15 of every 64-row tile, so all per-row work (softmax, masking, dS) needs
// only __syncwarp; __syncthreads guards the shared K/V (or Q/dO) tiles. Products run on the
// tensor cores with wmma m16n16k16 bf16 fragments and fp32 accumulators; scores go through
// fp32 shared memory where a lane pair owns one row (32 columns each).
//
//   forward   grid (ceil(T/64), B·NH), heaviest query blocks first. Per key tile kt <= qb:
//             S = Q Kᵀ (smem), online softmax in the log2 domain (m, l per row in registers),
//             O (fp32 smem) = O·α + P V. Out = O / l, lse = ln 2 · (m + log2 l).
//   backward  (1) D = rowsum(dO ∘ O), one warp per row, into the workspace;
//             (2) grid (nkb, B·NH): a key block keeps K, V in smem and dK, dV in fragments;
//                 per query tile qt >= kb: Sᵀ = K Qᵀ, dPᵀ = V dOᵀ, P = exp(S·scale − lse),
//                 dS = P (dP − D), dV += Pᵀ dO, dK += dSᵀ Q; dK scaled by 1/sqrt(hd).
//             (3) grid (nqb, B·NH): a query block keeps Q, dO in smem, dQ in fragments; per key
//                 tile kt <= qb: recompute S, dP, dS; dQ += dS K; scaled by 1/sqrt(hd).
//             Fixed summation orders: bit-identical run to run.
// Masking: key j counts for query i iff j <= i and j < T; rows/keys >= T load as zeros (so no
// garbage can reach a product), get p = 0 and are never written.
#include <mma.h>

#include <cmath>

#include "cuda_common.cuh"
#include "flash_attention.cuh"

namespace triad::cuda {
namespace {

using namespace nvcuda;

constexpr int kTile = 64;  // query rows per block and keys per step
constexpr int kWarps = 4;
constexpr int kThreads = 32 * kWarps;
constexpr int kLdS = kTile + 4;  // fp32 score tiles [64][68]
constexpr int kLdP = kTile + 8;  // bf16 probability tiles [64][72]
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

using FragA = wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::row_major>;
using FragBc = wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::col_major>;
using FragBr = wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::row_major>;
using FragC = wmma::fragment<wmma::accumulator, 16, 16, 16, float>;

template <int HD>
struct Dims {
  static constexpr int kLdH = HD + 8;  // bf16 [64][HD] tiles (row pitch a multiple of 16 bytes)
  static constexpr int kLdA = HD + 4;  // fp32 [64][HD] tiles
  static constexpr size_t kTileH = size_t(kTile) * kLdH * sizeof(bf16);
  static constexpr size_t kTileA = size_t(kTile) * kLdA * sizeof(float);
  static constexpr size_t kTileS = size_t(kTile) * kLdS * sizeof(float);
  static constexpr size_t kTileP = size_t(kTile) * kLdP * sizeof(bf16);
  static constexpr size_t kRow = size_t(kTile) * sizeof(float);
  static constexpr size_t kFwdSmem = 3 * kTileH + kTileS + kTileP + kTileA;
  static constexpr size_t kDkvSmem = 4 * kTileH + 2 * kTileS + 2 * kTileP + 2 * kRow;
  static constexpr size_t kDqSmem = 4 * kTileH + 2 * kTileS + kTileP + 2 * kRow;
  // Every region starts at a multiple of 128 bytes (wmma needs 32) and the fp32 staging of the
  // dK/dV/dQ results fits in two bf16 tiles.
  static_assert(kTileH % 128 == 0 && kTileA % 128 == 0 && kTileS % 128 == 0 && kTileP % 128 == 0 &&
                kRow % 128 == 0);
  static_assert(2 * kTileH >= kTileA);
};

// rows [row0, row0 + 64) of a row-major matrix at g with row pitch `pitch` elements → s [64][ld];
// rows >= T are zero. 16-byte vectors (pitch and head offsets are multiples of 8 elements).
template <int HD>
__device__ __forceinline__ void load_tile(bf16* s, const bf16* g, size_t pitch, int row0, int T) {
  constexpr int kChunks = HD / 8;
  for (int idx = threadIdx.x; idx < kTile * kChunks; idx += kThreads) {
    const int r = idx / kChunks, c = (idx % kChunks) * 8;
    uint4 v = make_uint4(0u, 0u, 0u, 0u);
    if (row0 + r < T) v = *reinterpret_cast<const uint4*>(g + size_t(row0 + r) * pitch + c);
    *reinterpret_cast<uint4*>(s + r * Dims<HD>::kLdH + c) = v;
  }
}

// 64 values of a [T] row vector from row0 (zero past T) → s[64].
__device__ __forceinline__ void load_row(float* s, const float* g, int row0, int T) {
  for (int r = threadIdx.x; r < kTile; r += kThreads) s[r] = row0 + r < T ? g[row0 + r] : 0.0f;
}

// The warp's 16×64 product X[16][HD] (rows at xa, pitch ldx) · Y[64][HD]ᵀ (rows at y, pitch
// ldy) → fp32 dst[16][kLdS].
template <int HD>
__device__ __forceinline__ void warp_abt(float* dst, const bf16* xa, const bf16* y) {
  constexpr int L = Dims<HD>::kLdH;
  FragC acc[kTile / 16];
#pragma unroll
  for (int j = 0; j < kTile / 16; ++j) wmma::fill_fragment(acc[j], 0.0f);
#pragma unroll
  for (int kk = 0; kk < HD; kk += 16) {
    FragA a;
    wmma::load_matrix_sync(a, xa + kk, L);
#pragma unroll
    for (int j = 0; j < kTile / 16; ++j) {
      FragBc b;  // Yᵀ[k][n] = Y[n][k]: column-major with pitch L
      wmma::load_matrix_sync(b, y + j * 16 * L + kk, L);
      wmma::mma_sync(acc[j], a, b, acc[j]);
    }
  }
#pragma unroll
  for (int j = 0; j < kTile / 16; ++j)
    wmma::store_matrix_sync(dst + j * 16, acc[j], kLdS, wmma::mem_row_major);
}

// acc[n] += A[16][64] (bf16 at a, pitch kLdP) · Y[64][HD] (bf16 at y, pitch kLdH), n over HD/16.
template <int HD>
__device__ __forceinline__ void warp_ab_acc(FragC* acc, const bf16* a, const bf16* y) {
  constexpr int L = Dims<HD>::kLdH;
#pragma unroll
  for (int kk = 0; kk < kTile; kk += 16) {
    FragA fa;
    wmma::load_matrix_sync(fa, a + kk, kLdP);
#pragma unroll
    for (int n = 0; n < HD / 16; ++n) {
      FragBr b;
      wmma::load_matrix_sync(b, y + kk * L + n * 16, L);
      wmma::mma_sync(acc[n], fa, b, acc[n]);
    }
  }
}

// Writes the warp's 16×HD accumulators · mul as bf16 rows of a [*, pitch] matrix at g (row r of
// the warp at g + (row0 + r)·pitch), rows >= T skipped; stage: fp32 [16][kLdA] of this warp.
// accumulate: each element becomes round(old + value) (one rounding) instead of round(value).
template <int HD>
__device__ __forceinline__ void warp_store_rows(bf16* g, size_t pitch, int row0, int T,
                                                const FragC* acc, float* stage, float mul,
                                                bool accumulate) {
  constexpr int LA = Dims<HD>::kLdA;
#pragma unroll
  for (int n = 0; n < HD / 16; ++n)
    wmma::store_matrix_sync(stage + n * 16, acc[n], LA, wmma::mem_row_major);
  __syncwarp();
  const int lane = threadIdx.x % 32;
  const int r = lane / 2, c0 = (lane % 2) * (HD / 2);
  if (row0 + r < T) {
    const float* src = stage + r * LA + c0;
    __nv_bfloat162* dst = reinterpret_cast<__nv_bfloat162*>(g + size_t(row0 + r) * pitch + c0);
#pragma unroll 8
    for (int c = 0; c < HD / 2; c += 2) {
      float2 v = make_float2(src[c] * mul, src[c + 1] * mul);
      if (accumulate) {
        const float2 old = __bfloat1622float2(dst[c / 2]);
        v.x += old.x;
        v.y += old.y;
      }
      dst[c / 2] = __floats2bfloat162_rn(v.x, v.y);
    }
  }
  __syncwarp();
}

// ---- forward ------------------------------------------------------------------------------------

template <int HD>
__global__ void __launch_bounds__(kThreads)
    fa_forward_kernel(bf16* __restrict__ out, float* __restrict__ lse, const bf16* __restrict__ qkv,
                      int T, int C, int NH, float scale_log2) {
  using D = Dims<HD>;
  constexpr int LH = D::kLdH, LA = D::kLdA;
  extern __shared__ __align__(128) unsigned char smem[];
  bf16* sQ = reinterpret_cast<bf16*>(smem);
  bf16* sK = reinterpret_cast<bf16*>(smem + D::kTileH);
  bf16* sV = reinterpret_cast<bf16*>(smem + 2 * D::kTileH);
  float* sS = reinterpret_cast<float*>(smem + 3 * D::kTileH);
  bf16* sP = reinterpret_cast<bf16*>(smem + 3 * D::kTileH + D::kTileS);
  float* sO = reinterpret_cast<float*>(smem + 3 * D::kTileH + D::kTileS + D::kTileP);

  const int nqb = (T + kTile - 1) / kTile;
  const int qb = nqb - 1 - int(blockIdx.x);  // the longest rows first
  const int bh = blockIdx.y, b = bh / NH, h = bh % NH;
  const size_t pitch = size_t(3) * C;
  const bf16* gq = qkv + size_t(b) * T * pitch + size_t(h) * HD;
  const bf16* gk = gq + C;
  const bf16* gv = gq + 2 * size_t(C);
  const int q0 = qb * kTile;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int wr = lane / 2, half = lane % 2;  // this lane's row within the warp's 16, its half
  const int i = q0 + warp * 16 + wr;         // its query position

  load_tile<HD>(sQ, gq, pitch, q0, T);
  for (int x = threadIdx.x; x < kTile * LA; x += kThreads) sO[x] = 0.0f;

  const bf16* sQw = sQ + warp * 16 * LH;
  float* sSw = sS + warp * 16 * kLdS;
  bf16* sPw = sP + warp * 16 * kLdP;
  float* sOw = sO + warp * 16 * LA;
  float m = -INFINITY, l = 0.0f;  // running max (log2 domain) and sum of this lane's row

  for (int kt = 0; kt <= qb; ++kt) {
    const int k0 = kt * kTile;
    __syncthreads();  // the previous tile's K, V are consumed
    load_tile<HD>(sK, gk, pitch, k0, T);
    load_tile<HD>(sV, gv, pitch, k0, T);
    __syncthreads();

    warp_abt<HD>(sSw, sQw, sK);
    __syncwarp();
    {
      float* srow = sSw + wr * kLdS + half * 32;
      bf16* prow = sPw + wr * kLdP + half * 32;
      const int j0 = k0 + half * 32;
      float mx = -INFINITY;
#pragma unroll 8
      for (int c = 0; c < 32; ++c) {
        const int j = j0 + c;
        const float v = (j <= i && j < T) ? srow[c] * scale_log2 : -INFINITY;
        srow[c] = v;
        mx = fmaxf(mx, v);
      }
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      // Key 0 counts for every row, so m_new is finite from the first tile on.
      const float m_new = fmaxf(m, mx);
      const float alpha = exp2f(m - m_new);
      float sum = 0.0f;
#pragma unroll 8
      for (int c = 0; c < 32; ++c) {
        const float p = exp2f(srow[c] - m_new);
        prow[c] = __float2bfloat16(p);
        sum += p;
      }
      sum += __shfl_xor_sync(0xffffffffu, sum, 1);
      l = l * alpha + sum;
      m = m_new;
      float* orow = sOw + wr * LA + half * (HD / 2);
#pragma unroll 8
      for (int c = 0; c < HD / 2; ++c) orow[c] *= alpha;
    }
    __syncwarp();
    // O_w += P_w V: accumulators through shared memory (they were just rescaled there).
    FragC acc[HD / 16];
#pragma unroll
    for (int n = 0; n < HD / 16; ++n)
      wmma::load_matrix_sync(acc[n], sOw + n * 16, LA, wmma::mem_row_major);
    warp_ab_acc<HD>(acc, sPw, sV);
#pragma unroll
    for (int n = 0; n < HD / 16; ++n)
      wmma::store_matrix_sync(sOw + n * 16, acc[n], LA, wmma::mem_row_major);
    __syncwarp();
  }

  if (i < T) {
    const float inv = 1.0f / l;
    const float* orow = sOw + wr * LA + half * (HD / 2);
    __nv_bfloat162* dst = reinterpret_cast<__nv_bfloat162*>(out + (size_t(b) * T + i) * C +
                                                            size_t(h) * HD + half * (HD / 2));
#pragma unroll 8
    for (int c = 0; c < HD / 2; c += 2)
      dst[c / 2] = __floats2bfloat162_rn(orow[c] * inv, orow[c + 1] * inv);
    if (half == 0) lse[size_t(bh) * T + i] = (m + log2f(l)) * kLn2;
  }
}

// ---- backward -----------------------------------------------------------------------------------

// D[bh, t] = Σ_d dO[b,t,h,d] · O[b,t,h,d]; one warp per (b, t, h).
__global__ void fa_backward_dot_kernel(float* __restrict__ Dv, const bf16* __restrict__ dout,
                                       const bf16* __restrict__ out, int B, int T, int NH, int hd) {
  const size_t rows = size_t(B) * T * NH;
  const size_t warp = (size_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (warp >= rows) return;
  const int h = int(warp % NH);
  const size_t bt = warp / NH;  // b·T + t
  const int t = int(bt % T), b = int(bt / T);
  const size_t base = warp * hd;  // [B,T,NH,hd] == [B,T,C]
  float s = 0.0f;
  for (int d = lane; d < hd; d += 32)
    s += __bfloat162float(dout[base + d]) * __bfloat162float(out[base + d]);
  s = warp_reduce(s, SumOp{});
  if (lane == 0) Dv[(size_t(b) * NH + h) * T + t] = s;
}

// dK, dV of one key block.
template <int HD>
__global__ void __launch_bounds__(kThreads)
    fa_backward_dkdv_kernel(bf16* __restrict__ dqkv, const bf16* __restrict__ dout,
                            const bf16* __restrict__ qkv, const float* __restrict__ lse,
                            const float* __restrict__ Dv, int T, int C, int NH, float scale,
                            float scale_log2, bool accumulate) {
  using D = Dims<HD>;
  constexpr int LH = D::kLdH;
  extern __shared__ __align__(128) unsigned char smem[];
  bf16* sK = reinterpret_cast<bf16*>(smem);
  bf16* sV = reinterpret_cast<bf16*>(smem + D::kTileH);
  bf16* sQ = reinterpret_cast<bf16*>(smem + 2 * D::kTileH);
  bf16* sdO = reinterpret_cast<bf16*>(smem + 3 * D::kTileH);
  float* sS = reinterpret_cast<float*>(smem + 4 * D::kTileH);
  float* sdP = reinterpret_cast<float*>(smem + 4 * D::kTileH + D::kTileS);
  bf16* sP = reinterpret_cast<bf16*>(smem + 4 * D::kTileH + 2 * D::kTileS);
  bf16* sdS = reinterpret_cast<bf16*>(smem + 4 * D::kTileH + 2 * D::kTileS + D::kTileP);
  float* sLse = reinterpret_cast<float*>(smem + 4 * D::kTileH + 2 * D::kTileS + 2 * D::kTileP);
  float* sD = sLse + kTile;

  const int nb = (T + kTile - 1) / kTile;
  const int kb = int(blockIdx.x);  // the blocks with the most query tiles (small kb) first
  const int bh = blockIdx.y, b = bh / NH, h = bh % NH;
  const size_t pitch = size_t(3) * C;
  const bf16* gq = qkv + size_t(b) * T * pitch + size_t(h) * HD;
  const bf16* gk = gq + C;
  const bf16* gv = gq + 2 * size_t(C);
  const bf16* gdo = dout + size_t(b) * T * C + size_t(h) * HD;
  const float* glse = lse + size_t(bh) * T;
  const float* gD = Dv + size_t(bh) * T;
  const int k0 = kb * kTile;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int wr = lane / 2, half = lane % 2;
  const int j = k0 + warp * 16 + wr;  // this lane's key position

  load_tile<HD>(sK, gk, pitch, k0, T);
  load_tile<HD>(sV, gv, pitch, k0, T);
  const bf16* sKw = sK + warp * 16 * LH;
  const bf16* sVw = sV + warp * 16 * LH;
  float* sSw = sS + warp * 16 * kLdS;
  float* sdPw = sdP + warp * 16 * kLdS;
  bf16* sPw = sP + warp * 16 * kLdP;
  bf16* sdSw = sdS + warp * 16 * kLdP;

  FragC dK[HD / 16], dV[HD / 16];
#pragma unroll
  for (int n = 0; n < HD / 16; ++n) {
    wmma::fill_fragment(dK[n], 0.0f);
    wmma::fill_fragment(dV[n], 0.0f);
  }

  for (int qt = kb; qt < nb; ++qt) {
    const int q0 = qt * kTile;
    __syncthreads();  // the previous tile's Q, dO, lse, D are consumed
    load_tile<HD>(sQ, gq, pitch, q0, T);
    load_tile<HD>(sdO, gdo, size_t(C), q0, T);
    load_row(sLse, glse, q0, T);
    load_row(sD, gD, q0, T);
    __syncthreads();

    warp_abt<HD>(sSw, sKw, sQ);    // Sᵀ[key][query]
    warp_abt<HD>(sdPw, sVw, sdO);  // dPᵀ[key][query]
    __syncwarp();
    {
      const float* srow = sSw + wr * kLdS + half * 32;
      const float* dprow = sdPw + wr * kLdS + half * 32;
      bf16* prow = sPw + wr * kLdP + half * 32;
      bf16* dsrow = sdSw + wr * kLdP + half * 32;
#pragma unroll 8
      for (int c = 0; c < 32; ++c) {
        const int col = half * 32 + c, i = q0 + col;
        const float p =
            (j <= i && i < T && j < T) ? exp2f(srow[c] * scale_log2 - sLse[col] * kLog2e) : 0.0f;
        prow[c] = __float2bfloat16(p);
        dsrow[c] = __float2bfloat16(p * (dprow[c] - sD[col]));
      }
    }
    __syncwarp();
    warp_ab_acc<HD>(dV, sPw, sdO);  // dV += Pᵀ dO
    warp_ab_acc<HD>(dK, sdSw, sQ);  // dK += dSᵀ Q
  }

  __syncthreads();  // every warp is done with sQ, sdO: they become the fp32 staging
  float* stage = reinterpret_cast<float*>(sQ) + warp * 16 * D::kLdA;
  bf16* gdk = dqkv + size_t(b) * T * pitch + C + size_t(h) * HD;
  warp_store_rows<HD>(gdk + C, pitch, k0 + warp * 16, T, dV, stage, 1.0f, accumulate);
  warp_store_rows<HD>(gdk, pitch, k0 + warp * 16, T, dK, stage, scale, accumulate);
}

// dQ of one query block.
template <int HD>
__global__ void __launch_bounds__(kThreads)
    fa_backward_dq_kernel(bf16* __restrict__ dqkv, const bf16* __restrict__ dout,
                          const bf16* __restrict__ qkv, const float* __restrict__ lse,
                          const float* __restrict__ Dv, int T, int C, int NH, float scale,
                          float scale_log2, bool accumulate) {
  using D = Dims<HD>;
  constexpr int LH = D::kLdH;
  extern __shared__ __align__(128) unsigned char smem[];
  bf16* sK = reinterpret_cast<bf16*>(smem);
  bf16* sV = reinterpret_cast<bf16*>(smem + D::kTileH);
  bf16* sQ = reinterpret_cast<bf16*>(smem + 2 * D::kTileH);
  bf16* sdO = reinterpret_cast<bf16*>(smem + 3 * D::kTileH);
  float* sS = reinterpret_cast<float*>(smem + 4 * D::kTileH);
  float* sdP = reinterpret_cast<float*>(smem + 4 * D::kTileH + D::kTileS);
  bf16* sdS = reinterpret_cast<bf16*>(smem + 4 * D::kTileH + 2 * D::kTileS);
  float* sLse = reinterpret_cast<float*>(smem + 4 * D::kTileH + 2 * D::kTileS + D::kTileP);
  float* sD = sLse + kTile;

  const int nb = (T + kTile - 1) / kTile;
  const int qb = nb - 1 - int(blockIdx.x);  // the longest rows first
  const int bh = blockIdx.y, b = bh / NH, h = bh % NH;
  const size_t pitch = size_t(3) * C;
  const bf16* gq = qkv + size_t(b) * T * pitch + size_t(h) * HD;
  const bf16* gk = gq + C;
  const bf16* gv = gq + 2 * size_t(C);
  const bf16* gdo = dout + size_t(b) * T * C + size_t(h) * HD;
  const int q0 = qb * kTile;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int wr = lane / 2, half = lane % 2;
  const int i = q0 + warp * 16 + wr;  // this lane's query position

  load_tile<HD>(sQ, gq, pitch, q0, T);
  load_tile<HD>(sdO, gdo, size_t(C), q0, T);
  load_row(sLse, lse + size_t(bh) * T, q0, T);
  load_row(sD, Dv + size_t(bh) * T, q0, T);
  const bf16* sQw = sQ + warp * 16 * LH;
  const bf16* sdOw = sdO + warp * 16 * LH;
  float* sSw = sS + warp * 16 * kLdS;
  float* sdPw = sdP + warp * 16 * kLdS;
  bf16* sdSw = sdS + warp * 16 * kLdP;

  FragC dQ[HD / 16];
#pragma unroll
  for (int n = 0; n < HD / 16; ++n) wmma::fill_fragment(dQ[n], 0.0f);

  for (int kt = 0; kt <= qb; ++kt) {
    const int k0 = kt * kTile;
    __syncthreads();  // the previous tile's K, V are consumed (first pass: Q, dO, lse, D loaded)
    load_tile<HD>(sK, gk, pitch, k0, T);
    load_tile<HD>(sV, gv, pitch, k0, T);
    __syncthreads();

    warp_abt<HD>(sSw, sQw, sK);    // S[query][key]
    warp_abt<HD>(sdPw, sdOw, sV);  // dP[query][key]
    __syncwarp();
    {
      const float* srow = sSw + wr * kLdS + half * 32;
      const float* dprow = sdPw + wr * kLdS + half * 32;
      bf16* dsrow = sdSw + wr * kLdP + half * 32;
      const float lse2 = sLse[warp * 16 + wr] * kLog2e, Di = sD[warp * 16 + wr];
#pragma unroll 8
      for (int c = 0; c < 32; ++c) {
        const int jj = k0 + half * 32 + c;
        const float p = (jj <= i && jj < T && i < T) ? exp2f(srow[c] * scale_log2 - lse2) : 0.0f;
        dsrow[c] = __float2bfloat16(p * (dprow[c] - Di));
      }
    }
    __syncwarp();
    warp_ab_acc<HD>(dQ, sdSw, sK);  // dQ += dS K
  }

  __syncthreads();  // every warp is done with sK, sV: they become the fp32 staging
  float* stage = reinterpret_cast<float*>(sK) + warp * 16 * D::kLdA;
  bf16* gdq = dqkv + size_t(b) * T * pitch + size_t(h) * HD;
  warp_store_rows<HD>(gdq, pitch, q0 + warp * 16, T, dQ, stage, scale, accumulate);
}

void check_shape(int B, int T, int C, int NH) {
  TRIAD_CHECK(B > 0 && T > 0, "flash attention: empty batch (B = ", B, ", T = ", T, ")");
  TRIAD_CHECK(NH > 0 && C % NH == 0, "flash attention: C = ", C, " is not a multiple of NH = ", NH);
  const int hd = C / NH;
  TRIAD_CHECK(hd == 64 || hd == 128, "flash attention: head dimension ", hd,
              " is not supported (64 or 128)");
  TRIAD_CHECK(T <= 65535 * kTile && B * NH <= 65535,
              "flash attention: grid too large (B·NH = ", B * NH, ", T = ", T, ")");
}

template <typename Kernel>
void allow_smem(Kernel k, size_t bytes) {
  TRIAD_CUDA_CHECK(
      cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)));
}

template <int HD>
void forward_hd(bf16* out, float* lse, const bf16* qkv, int B, int T, int C, int NH,
                cudaStream_t s) {
  using D = Dims<HD>;
  static const bool once = (allow_smem(fa_forward_kernel<HD>, D::kFwdSmem), true);
  (void)once;
  const float scale = float(1.0 / std::sqrt(double(HD)));
  const dim3 grid(unsigned((T + kTile - 1) / kTile), unsigned(B * NH));
  fa_forward_kernel<HD>
      <<<grid, kThreads, D::kFwdSmem, s>>>(out, lse, qkv, T, C, NH, scale * kLog2e);
  TRIAD_CUDA_CHECK_LAUNCH();
}

template <int HD>
void backward_hd(bf16* dqkv, const bf16* dout, const bf16* qkv, const float* lse, float* Dv, int B,
                 int T, int C, int NH, cudaStream_t s, bool accumulate) {
  using D = Dims<HD>;
  static const bool once = (allow_smem(fa_backward_dkdv_kernel<HD>, D::kDkvSmem),
                            allow_smem(fa_backward_dq_kernel<HD>, D::kDqSmem), true);
  (void)once;
  const float scale = float(1.0 / std::sqrt(double(HD)));
  const dim3 grid(unsigned((T + kTile - 1) / kTile), unsigned(B * NH));
  fa_backward_dkdv_kernel<HD><<<grid, kThreads, D::kDkvSmem, s>>>(
      dqkv, dout, qkv, lse, Dv, T, C, NH, scale, scale * kLog2e, accumulate);
  TRIAD_CUDA_CHECK_LAUNCH();
  fa_backward_dq_kernel<HD><<<grid, kThreads, D::kDqSmem, s>>>(dqkv, dout, qkv, lse, Dv, T, C, NH,
                                                               scale, scale * kLog2e, accumulate);
  TRIAD_CUDA_CHECK_LAUNCH();
}

}  // namespace

size_t flash_attention_workspace_floats(int B, int T, int C, int NH) {
  (void)C;
  return size_t(B) * NH * T;
}

void flash_attention_forward(bf16* out, float* lse, const bf16* qkv, int B, int T, int C, int NH,
                             cudaStream_t s) {
  check_shape(B, T, C, NH);
  if (C / NH == 64) {
    forward_hd<64>(out, lse, qkv, B, T, C, NH, s);
  } else {
    forward_hd<128>(out, lse, qkv, B, T, C, NH, s);
  }
}

void flash_attention_backward(bf16* dqkv, const bf16* dout, const bf16* qkv, const bf16* out,
                              const float* lse, float* workspace, int B, int T, int C, int NH,
                              cudaStream_t s, bool accumulate) {
  check_shape(B, T, C, NH);
  const int hd = C / NH;
  const size_t rows = size_t(B) * T * NH;
  const unsigned blocks = unsigned((rows * 32 + kBlock - 1) / kBlock);
  fa_backward_dot_kernel<<<blocks, kBlock, 0, s>>>(workspace, dout, out, B, T, NH, hd);
  TRIAD_CUDA_CHECK_LAUNCH();
  if (hd == 64) {
    backward_hd<64>(dqkv, dout, qkv, lse, workspace, B, T, C, NH, s, accumulate);
  } else {
    backward_hd<128>(dqkv, dout, qkv, lse, workspace, B, T, C, NH, s, accumulate);
  }
}

}  // namespace triad::cuda
