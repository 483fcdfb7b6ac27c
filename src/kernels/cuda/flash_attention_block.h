// What one thread block of each fused causal flash-attention kernel does (FlashAttention-2
// style, bf16 operands, fp32 accumulation), written once against a thread context `X` so that
// the same code is compiled for the GPU (flash_attention_kernels.cuh: X = DeviceThread, PTX
// mma.sync, ldmatrix, cp.async) and for the CPU (tests/support/simt_emulator.h: the same warp
// instructions emulated from their PTX definitions), where CI runs it against a double
// reference without a GPU.
//
// Layouts (those of flash_attention.cuh): qkv [B,T,W] (q | k | v per row: NH query heads, then
// NKV key and value heads each, head h at columns h·HD.. of its part; W = C + 2·NKV·HD, 3C
// without grouped-query attention), out and dout [B,T,C], lse [B,NH,T] (natural log), dqkv
// [B,T,W]. Query head h reads key/value head h % NKV (backend.h). bf16 values are their raw
// 16-bit patterns here (uint16_t), so this header needs no CUDA header.
//
// Query ranges (Rows, below; Backend's QueryRows, context parallelism): a call may compute the
// query rows first .. first+count-1 of each sequence only, against keys 0 .. first+count-1; then
// qkv, dqkv and key_begin keep their `seq` rows per sequence, while out, dout, lse, D and the dQ
// accumulator hold the range's rows (row t at t − first). first is a multiple of the 64-row
// tile, so query and key tiles line up as over a whole sequence, whose T is first + count.
//
// Attention dropout (AttentionDropMask, dropout_mask.h; the Dropout variants): each
// probability's mask formed where it is used, from its query's head key (the query's row key,
// the layer and the model's head) and its key's position: nothing of it is stored.
//
// Document masks: key_begin (nullptr: plain causal) [B,T], query t of sequence b seeing keys
// key_begin[b·T+t] .. t, key_begin never decreasing along a sequence. So the key tiles a query
// block needs start at the tile of its first row's key_begin (forward, dQ), and the query tiles
// a key block feeds end before the first tile whose first row begins after the block (dK/dV):
// whole tiles outside a document are skipped, not computed and masked.
//
// Tiles: 64 query rows × 64 keys, 4 warps (128 threads); a warp owns 16 rows (forward, dQ) or 16
// keys (dK/dV) of the block's 64. Products run on mma.m16n8k16 (A 16×16 row-major, B 16×8
// column-major, fp32 C/D); fragments come from shared memory through ldmatrix (the .trans form
// where the tile is the B operand along its rows). Scores, probabilities and gradients never
// leave registers: the accumulator layout of a 16×16 pair of S tiles is the A-operand layout of
// P, so P·V needs no shared-memory round trip. Tiles of the streamed operand are double-buffered,
// loaded by the policy's pipe: cp.async by every thread (CpAsyncPipe, below), or bulk tensor
// copies (TMA) issued by one thread and completing on an mbarrier (TmaPipe,
// flash_attention_tma.h).
//
// The thread context X provides (all lanes of a warp call the warp operations together):
//   thread(), block_x(), block_y()               thread and block indices
//   smem(), smem_address(p)                      the block's dynamic shared memory (16-aligned),
//                                                and a pointer's shared-memory address
//   sync_threads()                               __syncthreads
//   shfl_xor(float v, int mask)                  __shfl_xor_sync over the full warp
//   ldsm_x4(r, row), ldsm_x4_t(r, row)           ldmatrix.m8n8.x4(.trans).b16; row: this lane's
//                                                row address (lane 8m + i: row i of matrix m)
//   mma(d[4], a[4], b0, b1)                      d += A·B, mma.m16n8k16.row.col.f32.bf16.bf16.f32
//   cp_async16(dst, src, valid), cp_commit(), cp_wait<N>()
//                                                16-byte async copy (zero fill when !valid)
//   store_shared32(p, v)                         4-byte st.shared
//   mbarrier_init(bar, n), fence_barrier_init(), mbarrier_expect_tx(bar, bytes),
//   mbarrier_arrive(bar), mbarrier_wait(bar, parity),
//   tma_load_3d(dst, map, c0, c1, c2, bar)       (TmaPipe only) mbarriers and the 3-d bulk
//                                                tensor copy, sm_90
//   atomic_add2(p, a, b)                         p[0] += a, p[1] += b in global memory, atomically
//   load_l2_2(p, a, b)                           a, b = p[0], p[1] from global memory, bypassing
//                                                the SM's L1 (data other blocks write)
//   wait_equal(p, v), store_release(p, v)        a global int: spin until *p == v (acquire, GPU
//                                                scope); *p = v (release, GPU scope)
//   take_ticket(p)                               atomically ++*p on a global int; the old value
//   fence_device()                               __threadfence
//   store16(p, v)                                16-byte store
//   exp2(x), log2(x)                             fp32, exp2(-inf) = 0
//   pack_bf16(lo, hi)                            two floats → bf16 pair (round to nearest even)
//   bf16_float(bits)                             a bf16 pattern widened to float
#pragma once

#include <cmath>  // INFINITY
#include <cstddef>
#include <cstdint>

#include "block_program.h"
#include "triad/kernels/dropout_mask.h"

namespace triad::flash {

constexpr int kTile = 64;  // query rows per block and keys per step
constexpr int kWarps = 4;
constexpr int kThreads = 32 * kWarps;
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

// A tile is 64 rows × HD bf16 columns in shared memory, laid out as its `Tiles` policy says
// (flash_attention_mma.h: padded rows for ldmatrix; flash_attention_wgmma.h: the 128-byte
// swizzled layout wgmma reads). Tiles::kElems is its size in elements, Tiles::chunk(r, c) the
// offset of the 8 elements (16 bytes) at row r, columns c .. c+7 (c a multiple of 8).
// Tiles::kBarrierBytes: the shared memory its pipe's mbarriers take (after everything else);
// Tiles::kSmemAlign: the alignment its tiles need (the 128-byte swizzle repeats every 1 KB).
template <class Tiles>
TRIAD_BLOCK_SIZE size_t tile_bytes() {
  return size_t(Tiles::kElems) * 2;
}

// Dynamic shared memory of each kernel: what the program lays out (the *_data sizes), then the
// pipe's barriers, and the slack to align the start (the launch only promises 16 bytes).
template <class Tiles>
TRIAD_BLOCK_SIZE size_t forward_data() {
  return 5 * tile_bytes<Tiles>();  // Q, K ×2, V ×2
}
// K, V, Q ×2, dO ×2, lse ×2, D ×2, and with the atomic dQ a 64×64 tile of dSᵀ and a slot for
// the block's ticket (16 bytes); then the query tiles' first keys ×2 (a document mask's).
template <class Tiles, bool AtomicDq>
TRIAD_BLOCK_SIZE size_t dkdv_first_keys_offset() {
  return 6 * tile_bytes<Tiles>() + 4 * kTile * sizeof(float) +
         (AtomicDq ? tile_bytes<typename Tiles::Square>() + 16 : 0);
}
// Dropout: then the query tiles' head keys ×2 (the attention dropout's, AttentionDropMask).
template <class Tiles, bool AtomicDq>
TRIAD_BLOCK_SIZE size_t dkdv_head_keys_offset() {
  return dkdv_first_keys_offset<Tiles, AtomicDq>() + 2 * kTile * sizeof(int32_t);
}
template <class Tiles, bool AtomicDq, bool Dropout = false>
TRIAD_BLOCK_SIZE size_t dkdv_data() {
  return dkdv_head_keys_offset<Tiles, AtomicDq>() + (Dropout ? 2 * kTile * sizeof(uint64_t) : 0);
}
template <class Tiles>
TRIAD_BLOCK_SIZE size_t dq_data() {
  return 6 * tile_bytes<Tiles>();  // Q, dO, K ×2, V ×2
}
template <class Tiles>
TRIAD_BLOCK_SIZE size_t smem_extra() {
  return Tiles::kBarrierBytes + (Tiles::kSmemAlign - 16);
}
template <class Tiles>
TRIAD_BLOCK_SIZE size_t forward_smem() {
  return forward_data<Tiles>() + smem_extra<Tiles>();
}
template <class Tiles, bool AtomicDq, bool Dropout = false>
TRIAD_BLOCK_SIZE size_t dkdv_smem() {
  return dkdv_data<Tiles, AtomicDq, Dropout>() + smem_extra<Tiles>();
}
template <class Tiles>
TRIAD_BLOCK_SIZE size_t dq_smem() {
  return dq_data<Tiles>() + smem_extra<Tiles>();
}

// The start of a program's shared memory: the block's, rounded up to Tiles::kSmemAlign by its
// shared-memory address.
template <class Tiles, class X>
TRIAD_BLOCK_FN unsigned char* aligned_smem(X& x) {
  unsigned char* p = x.smem();
  const uint32_t a = x.smem_address(p) % uint32_t(Tiles::kSmemAlign);
  return a == 0 ? p : p + (uint32_t(Tiles::kSmemAlign) - a);
}

// The rows of a call: `seq` rows per sequence in qkv, dqkv and key_begin; queries first ..
// first+count-1 (first a multiple of kTile), keys 0 .. first+count-1. A whole sequence of T rows:
// {T, 0, T}.
struct Rows {
  int seq, first, count;
  TRIAD_BLOCK_SIZE int keys() const { return first + count; }  // the T of the tile loops
  TRIAD_BLOCK_SIZE int first_tile() const { return first / kTile; }
  TRIAD_BLOCK_SIZE int query_tiles() const { return (count + kTile - 1) / kTile; }
};

// How the kernels are launched for a [B, T, NH·HD] problem (host side; the GPU launchers and
// the emulated test share it): grid (blocks_x, blocks_y) = (B·NH query heads, 64-row query
// tiles) of kThreads threads for the forward and dQ kernels, (kv_blocks_x, key_blocks) = (B·NKV
// key/value heads, 64-row key tiles) for dK/dV, dot_blocks × 1 for D = rowsum(dO ∘ O). Blocks are
// dispatched x first, so every head's heaviest tile (blockIdx.y = 0: the last query block, or the
// first key block) starts before any lighter one: the causal triangle's long rows do not trail at
// the end of the grid.
struct Launch {
  int blocks_x, blocks_y, kv_blocks_x, key_blocks;
  size_t dot_blocks;
  float scale, scale_log2;  // the scores' scale (1/sqrt(HD) by default), and times log2(e)
  float cap_log2;           // the scores' soft cap times log2(e) (0: none)
};
// scale, softcap: the attention ops' (backend.h; 0: 1/sqrt(HD); 0: no cap).
inline Launch launch_shape(int B, const Rows& rows, int NH, int HD, int NKV = 0, float scale = 0.0f,
                           float softcap = 0.0f) {
  Launch l;
  l.blocks_x = B * NH;
  l.kv_blocks_x = B * (NKV > 0 ? NKV : NH);
  l.blocks_y = rows.query_tiles();
  l.key_blocks = (rows.keys() + kTile - 1) / kTile;
  l.dot_blocks = (size_t(B) * rows.count * NH + kWarps - 1) / kWarps;
  l.scale = scale > 0.0f ? scale : float(1.0 / std::sqrt(double(HD)));
  l.scale_log2 = l.scale * kLog2e;
  l.cap_log2 = softcap > 0.0f ? softcap * kLog2e : 0.0f;
  return l;
}
inline Launch launch_shape(int B, int T, int NH, int HD, int NKV = 0) {
  return launch_shape(B, Rows{T, 0, T}, NH, HD, NKV);
}

// Where the tiles of one of the head's matrices (q, k, v or dO) come from: its HD columns at g
// (row 0 of the head's sequence; row pitch `stride` elements), and for bulk tensor copies the
// tensor map of the whole [B, T, W] matrix (null without) with the head's first column and its
// sequence as coordinates.
struct TileSource {
  const uint16_t* g;
  size_t stride;
  const void* map;
  int col0, batch;
};

// Rows [row0, row0 + 64) of a row-major bf16 matrix at g (row pitch `stride` elements, HD
// columns) → the tile at s, async; rows >= T are zero-filled.
template <class Tiles, class X>
TRIAD_BLOCK_FN void load_tile(X& x, uint16_t* s, const uint16_t* g, size_t stride, int row0,
                              int T) {
  constexpr int kChunks = Tiles::kHD / 8;  // 16-byte chunks per row
  // A warp copies 8 rows × 4 chunks: 64 contiguous bytes of each row (whole 32-byte sectors),
  // and its 16-byte shared-memory stores spread over all 32 banks in either tile layout.
  for (int idx = x.thread(); idx < kTile * kChunks; idx += kThreads) {
    const int r = (idx / (8 * kChunks)) * 8 + idx % 8, c = (idx / 8 % kChunks) * 8;
    const bool valid = row0 + r < T;
    const int src_row = valid ? row0 + r : row0;  // a valid address even when nothing is read
    x.cp_async16(s + Tiles::chunk(r, c), g + size_t(src_row) * stride + c, valid);
  }
}

// The pipe of the policies that load with cp.async: every thread copies its share of each tile;
// the tiles loaded between two commits form a batch (numbered 0, 1, .. in commit order), and
// wait<Newer>(batch) returns when `batch` has landed for this thread, with the `Newer` batches
// committed after it still in flight. The barrier after it hands the tiles to every warp.
template <class Tiles, class X>
struct CpAsyncPipe {
  X& x;
  TRIAD_BLOCK_FN CpAsyncPipe(X& x_, uint64_t*) : x(x_) {}
  TRIAD_BLOCK_FN void load(uint16_t* s, const TileSource& src, int row0, int T, int) {
    load_tile<Tiles>(x, s, src.g, src.stride, row0, T);
  }
  TRIAD_BLOCK_FN void commit(int) { x.cp_commit(); }
  template <int Newer>
  TRIAD_BLOCK_FN void wait(int) {
    x.template cp_wait<Newer>();
    Tiles::publish(x);
  }
};

// The products (each warp: its 16 rows; Tiles::abt and Tiles::pv):
//   abt(x, s, A, Y)      s  (16×64) += rows 16w.. of tile A · (tile Y)ᵀ, s[n] the accumulator of
//                        columns n·8 .. n·8+7 (the mma.m16n8 C layout); A a tile, or its rows
//                        held in registers (Held, below);
//   abt2(x, s1, A1, Y1, s2, A2, Y2), pv2(x, acc1, p1, Y1, acc2, p2, Y2)
//                        two independent products (the policy may overlap them);
//   pv(x, acc, p, Y)     acc (16×HD) += P · tile Y, P (16×64) given in the layout of s (rounded
//                        to bf16 on the way);
//   atb(x, acc, A, Y, c0) acc (16×N, N = 64 or HD) += rows 16w.. of (A)ᵀ · columns c0 .. c0+N-1
//                        of tile Y (c0 a multiple of 64), A a 64×64 tile of the Tiles::Square
//                        layout holding the left operand transposed;
//   publish(x)           after this thread's cp.async copies are waited for and before the
//                        barrier that hands them to every warp.

// The left operand of S-type products that stays the same over a kernel's loop (Q in the forward
// and dQ kernels; K and V in dK/dV), held in registers: this warp's 16 rows of the tile as A
// fragments (the mma.m16n8k16 / wgmma register A layout), one set of 4 registers per 16
// columns, loaded once by ldmatrix. Products then read only the streamed operand from shared
// memory (wgmma: the register-A form, half the shared-memory traffic of two descriptors).
template <int HD>
struct Held {
  uint32_t a[HD / 16][4];
};
template <class Tiles, class X>
TRIAD_BLOCK_FN void hold(X& x, Held<Tiles::kHD>& h, const uint16_t* tile) {
  // Lane l addresses row l % 16 of the warp's rows, columns kk·16 + 8·(l / 16): matrices
  // (rows 0-7 | 8-15) × (columns 0-7 | 8-15) in register order a0..a3.
  const int lane = x.thread() % 32, row = (x.thread() / 32) * 16 + (lane & 15);
  TRIAD_UNROLL
  for (int kk = 0; kk < Tiles::kHD / 16; ++kk)
    x.ldsm_x4(h.a[kk], tile + Tiles::chunk(row, kk * 16 + (lane >> 4) * 8));
}

// The A operand (16 rows × keys kk·16 .. kk·16+15, bf16 pairs in the mma/wgmma A register
// layout) of P given in the accumulator layout of s: key tiles 2kk (columns 0-7) and 2kk+1
// (columns 8-15), rows g and g+8.
template <class X>
TRIAD_BLOCK_FN void p_fragment(X& x, const float (&p)[8][4], int kk, uint32_t (&fa)[4]) {
  fa[0] = x.pack_bf16(p[2 * kk][0], p[2 * kk][1]);
  fa[1] = x.pack_bf16(p[2 * kk][2], p[2 * kk][3]);
  fa[2] = x.pack_bf16(p[2 * kk + 1][0], p[2 * kk + 1][1]);
  fa[3] = x.pack_bf16(p[2 * kk + 1][2], p[2 * kk + 1][3]);
}

template <int N, int M>
TRIAD_BLOCK_FN void zero(float (&a)[N][M]) {
  TRIAD_UNROLL
  for (int i = 0; i < N; ++i) TRIAD_UNROLL
  for (int j = 0; j < M; ++j) a[i][j] = 0.0f;
}

// Where the pairs of this thread's part of the warp's 16 rows of an accumulator (acc[n][2r],
// acc[n][2r + 1]: the mma C layout) go in rows row0 + 0..15 of a [*, stride] matrix with HD
// columns: pair(row_at, r, n) for each, its first value at element row_at + n·8 (row_at: the
// thread's first element in the row); rows >= T skipped.
template <int HD, class X, class Pair>
TRIAD_BLOCK_FN void for_each_pair(X& x, size_t stride, int row0, int T, Pair&& pair) {
  const int lane = x.thread() % 32, gr = lane >> 2, tc = (lane & 3) * 2;
  TRIAD_UNROLL
  for (int r = 0; r < 2; ++r) {
    const int row = row0 + gr + 8 * r;
    if (row >= T) continue;
    const size_t row_at = size_t(row) * stride + tc;
    TRIAD_UNROLL
    for (int n = 0; n < HD / 8; ++n) pair(row_at, r, n);
  }
}

// The warp's 16 rows of acc · mul as bf16 into rows row0 + 0..15 of a [*, stride] matrix at g
// (columns 0..HD-1), rows >= T skipped; accumulate: round(old + value) instead of round(value).
template <int HD, class X>
TRIAD_BLOCK_FN void store_rows(X& x, uint16_t* g, size_t stride, int row0, int T,
                               const float (&acc)[HD / 8][4], float mul, bool accumulate) {
  for_each_pair<HD>(x, stride, row0, T, [&](size_t at, int r, int n) {
    float lo = acc[n][2 * r] * mul, hi = acc[n][2 * r + 1] * mul;
    uint32_t* d = reinterpret_cast<uint32_t*>(g + at + n * 8);
    if (accumulate) {
      const uint32_t old = *d;
      lo += x.bf16_float(uint16_t(old & 0xffffu));
      hi += x.bf16_float(uint16_t(old >> 16));
    }
    *d = x.pack_bf16(lo, hi);
  });
}

// The warp's 16 rows of acc added into rows row0 + 0..15 of a [*, stride] fp32 matrix at g
// (columns 0..HD-1), rows >= T skipped: with atomics, or, for a block that holds the rows' turn
// (no other block adds into them meanwhile: in_turn), with plain loads and stores. g and stride
// even (pairs are 8-byte aligned).
template <int HD, class X>
TRIAD_BLOCK_FN void add_rows(X& x, float* g, size_t stride, int row0, int T,
                             const float (&acc)[HD / 8][4], bool in_turn) {
  for_each_pair<HD>(x, stride, row0, T, [&](size_t at, int r, int n) {
    float* dst = g + at + n * 8;
    if (!in_turn) {
      x.atomic_add2(dst, acc[n][2 * r], acc[n][2 * r + 1]);
      return;
    }
    float a, b;
    x.load_l2_2(dst, a, b);
    dst[0] = a + acc[n][2 * r];
    dst[1] = b + acc[n][2 * r + 1];
  });
}

// Query head bh = b·NH + h: where its q columns and its key/value head's (h % NKV) k and v columns
// of qkv [B,seq,W] (row stride W = C + 2·NKV·HD) and its columns of dout [B,count,C] (when given;
// the range's rows) come from; qkv_map and dout_map are the tensor maps of the two matrices (null
// without bulk tensor copies).
struct Head {
  int bh, b, h;
  size_t stride;
  TileSource q, k, v, dout;
};
template <int HD>
TRIAD_BLOCK_FN Head head(int bh, const uint16_t* qkv, const uint16_t* dout, const void* qkv_map,
                         const void* dout_map, const Rows& rows, int C, int NH, int NKV) {
  Head r;
  r.bh = bh;
  r.b = r.bh / NH;
  r.h = r.bh % NH;
  r.stride = size_t(C) + 2 * size_t(NKV) * HD;
  const uint16_t* row0 = qkv + size_t(r.b) * rows.seq * r.stride;
  const int k_col = C + (r.h % NKV) * HD, v_col = k_col + NKV * HD;
  r.q = TileSource{row0 + size_t(r.h) * HD, r.stride, qkv_map, r.h * HD, r.b};
  r.k = TileSource{row0 + k_col, r.stride, qkv_map, k_col, r.b};
  r.v = TileSource{row0 + v_col, r.stride, qkv_map, v_col, r.b};
  r.dout =
      TileSource{dout != nullptr ? dout + size_t(r.b) * rows.count * C + size_t(r.h) * HD : nullptr,
                 size_t(C), dout_map, r.h * HD, r.b};
  return r;
}

// The key-tile loop of the forward and dQ kernels, at the top of its step `step` (0, 1, ..),
// which works on key tile kt of first .. last: starts copying K, V tile kt + 1 (batch step + 1)
// into the other buffers of sK, sV ([2] tiles each; step i uses buffer i & 1), waits for tile kt
// (batch step: loaded by the previous step, or before the loop) and hands it to every warp.
template <class Tiles, class Pipe, class X>
TRIAD_BLOCK_FN void next_kv_tiles(X& x, Pipe& pipe, uint16_t* sK, uint16_t* sV, const Head& here,
                                  int kt, int step, int last, int T) {
  if (kt < last) {
    const int other = ((step & 1) ^ 1) * Tiles::kElems;
    pipe.load(sK + other, here.k, (kt + 1) * kTile, T, step + 1);
    pipe.load(sV + other, here.v, (kt + 1) * kTile, T, step + 1);
    pipe.commit(step + 1);
    pipe.template wait<1>(step);
  } else {
    pipe.template wait<0>(step);
  }
  x.sync_threads();
}

// Sequence b's row of key_begin [B,T], or nullptr without a document mask.
TRIAD_BLOCK_FN const int32_t* sequence_key_begin(const int32_t* key_begin, int b, int T) {
  return key_begin != nullptr ? key_begin + size_t(b) * T : nullptr;
}

// The first key query `row` sees (0 without a mask, or for a row past T).
TRIAD_BLOCK_FN int first_key(const int32_t* kbeg, int row, int T) {
  return kbeg != nullptr && row < T ? int(kbeg[row]) : 0;
}

// ---- forward ------------------------------------------------------------------------------------
// Block (bh, y): query block nqb-1-y of head bh (y = 0: the longest rows; nqb over the keys, so
// with a range the blocks are the range's tiles).
// Per key tile kt <= qb (from the first one the block's rows see): S = Q Kᵀ, online softmax in
// the log2 domain (row max m and the thread's part of the row sum l), O = O·α + P V.
// out = O / l, lse = ln 2 · (m + log2 l). cap_log2 > 0 (a soft cap c, times log2 e): each scaled
// score u (log2 domain) becomes cap_log2 · tanh(u / cap_log2), c·tanh(s/c) in the log2 domain.
// Dropout (the attention dropout, drop: dropout_mask.h; a compile-time choice, so that the
// kernels without it keep their registers): the P of the P V product is P ∘ Z, Z the mask's
// factor (1/(1 − p) kept, 0 dropped), while l sums the undropped P: out = (P ∘ Z) V / l, as
// dropout after the softmax, and lse stays the softmax's.
template <class Tiles, bool Dropout = false, class X>
TRIAD_BLOCK_FN void forward_block(X& x, uint16_t* out, float* lse, const uint16_t* qkv,
                                  const void* qkv_map, Rows rows, int C, int NH, int NKV,
                                  float scale_log2, const int32_t* key_begin, float cap_log2 = 0.0f,
                                  AttentionDropMask drop = {}) {
  const int T = rows.keys();
  constexpr int HD = Tiles::kHD, L = Tiles::kElems;  // L: elements per tile
  unsigned char* smem = aligned_smem<Tiles>(x);
  uint16_t* sQ = reinterpret_cast<uint16_t*>(smem);
  uint16_t* sK = sQ + L;      // [2][64][L]
  uint16_t* sV = sK + 2 * L;  // [2][64][L]
  typename Tiles::template Pipe<X> pipe(x,
                                        reinterpret_cast<uint64_t*>(smem + forward_data<Tiles>()));

  const int nqb = (T + kTile - 1) / kTile;
  const int qb = nqb - 1 - x.block_y();
  const Head here = head<HD>(x.block_x(), qkv, nullptr, qkv_map, nullptr, rows, C, NH, NKV);
  const int bh = here.bh, b = here.b, h = here.h;
  const int q0 = qb * kTile;
  const int warp = x.thread() / 32, lane = x.thread() % 32;
  const int gr = lane >> 2, tc = (lane & 3) * 2;
  const int row0 = q0 + warp * 16 + gr;  // this thread's rows: row0 and row0 + 8
  const int32_t* kbeg = sequence_key_begin(key_begin, b, rows.seq);
  const int lo[2] = {first_key(kbeg, row0, T), first_key(kbeg, row0 + 8, T)};
  const int lo_max = lo[0] > lo[1] ? lo[0] : lo[1];
  const int kt0 = kbeg != nullptr ? int(kbeg[q0]) / kTile : 0;  // the first tile any row sees
  // Dropout: the head keys of this thread's two rows (rows past T drop nothing that counts).
  uint64_t hk[2] = {0, 0};
  if constexpr (Dropout) {
    TRIAD_UNROLL
    for (int r = 0; r < 2; ++r)
      if (row0 + 8 * r < T) hk[r] = drop.head_key(size_t(b), rows.seq, h, row0 + 8 * r);
  }

  pipe.load(sQ, here.q, q0, T, 0);
  pipe.load(sK, here.k, kt0 * kTile, T, 0);
  pipe.load(sV, here.v, kt0 * kTile, T, 0);
  pipe.commit(0);

  float o[HD / 8][4];
  zero(o);
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};

  Held<HD> q;  // Q's rows in registers, loaded once its tile has landed (step 0)
  for (int kt = kt0; kt <= qb; ++kt) {
    const int step = kt - kt0, buf = step & 1;
    next_kv_tiles<Tiles>(x, pipe, sK, sV, here, kt, step, qb, T);
    if (step == 0) hold<Tiles>(x, q, sQ);

    float s[8][4];
    zero(s);
    Tiles::abt(x, s, q, sK + buf * L);

    // Only the diagonal tile (the last) has keys after a row or past T: every earlier key
    // precedes q0. Keys before a row's first key (a document mask) lie in the tiles before
    // lo_max. Without a mask key 0 counts for every row, so the row max is finite from the first
    // tile on; with one a row may see no key of a tile (its document starts in a later one),
    // whose max stays -inf: its exponentials are taken against 0 then, which makes them 0.
    const int k0 = kt * kTile;
    const bool cut = kt == qb || k0 < lo_max;
    TRIAD_UNROLL
    for (int r = 0; r < 2; ++r) {
      const int row = row0 + 8 * r;
      float mx = -INFINITY;
      TRIAD_UNROLL
      for (int n = 0; n < 8; ++n) TRIAD_UNROLL
      for (int e = 0; e < 2; ++e) {
        const int key = k0 + n * 8 + tc + e;
        float v = s[n][2 * r + e] * scale_log2;
        if (cap_log2 > 0.0f) v = cap_log2 * x.tanh(v / cap_log2);
        if (cut && (key > row || key >= T || key < lo[r])) v = -INFINITY;
        s[n][2 * r + e] = v;
        mx = mx > v ? mx : v;
      }
      const float m1 = x.shfl_xor(mx, 1);
      mx = mx > m1 ? mx : m1;
      const float m2 = x.shfl_xor(mx, 2);
      mx = mx > m2 ? mx : m2;
      const float m_new = m[r] > mx ? m[r] : mx;
      const float m_use = m_new == -INFINITY ? 0.0f : m_new;
      const float alpha = x.exp2(m[r] - m_use);
      float sum = 0.0f;
      TRIAD_UNROLL
      for (int n = 0; n < 8; ++n) TRIAD_UNROLL
      for (int e = 0; e < 2; ++e) {
        const float p = x.exp2(s[n][2 * r + e] - m_use);
        sum += p;
        if constexpr (Dropout) {
          const uint32_t key = uint32_t(k0 + n * 8 + tc + e);
          s[n][2 * r + e] =
              attention_dropout_keeps(hk[r], key, drop.threshold) ? p * drop.scale : 0.0f;
        } else {
          s[n][2 * r + e] = p;
        }
      }
      l[r] = l[r] * alpha + sum;
      m[r] = m_new;
      TRIAD_UNROLL
      for (int n = 0; n < HD / 8; ++n) {
        o[n][2 * r] *= alpha;
        o[n][2 * r + 1] *= alpha;
      }
    }
    Tiles::pv(x, o, s, sV + buf * L);
    x.sync_threads();  // every warp is done with this buffer before it is refilled
  }

  float inv[2];
  TRIAD_UNROLL
  for (int r = 0; r < 2; ++r) {
    l[r] += x.shfl_xor(l[r], 1);
    l[r] += x.shfl_xor(l[r], 2);
    inv[r] = 1.0f / l[r];
    const int row = row0 + 8 * r;
    if ((lane & 3) == 0 && row < T)
      lse[size_t(bh) * rows.count + (row - rows.first)] = (m[r] + x.log2(l[r])) * kLn2;
  }
  TRIAD_UNROLL
  for (int n = 0; n < HD / 8; ++n) TRIAD_UNROLL
  for (int r = 0; r < 2; ++r) {
    o[n][2 * r] *= inv[r];
    o[n][2 * r + 1] *= inv[r];
  }
  store_rows<HD>(x, out + size_t(b) * rows.count * C + size_t(h) * HD, size_t(C),
                 q0 - rows.first + warp * 16, rows.count, o, 1.0f, false);
}

// ---- backward -----------------------------------------------------------------------------------
// D[bh, t] = Σ_d dO[b,t,h,d] · O[b,t,h,d]: warp w of block (blockIdx.x) takes row
// blockIdx.x·4 + w of the [B·T·NH] rows. With dq_accum ([B,T,C] fp32, 16-byte aligned) the
// warp also zeroes that row of it, for the dK/dV kernel to add dQ into; with dq_turns
// ([B·NH][nqb] ints: whose turn it is to add into each query tile, then the dK/dV blocks' ticket
// counter) it zeroes turn number `row` when there is one, and row 0 zeroes the counter.
template <int HD, class X>
TRIAD_BLOCK_FN void dot_block(X& x, float* Dv, float* dq_accum, int* dq_turns, const uint16_t* dout,
                              const uint16_t* out, int B, int T, int NH) {
  const size_t row = size_t(x.block_x()) * kWarps + x.thread() / 32;
  const int lane = x.thread() % 32;
  const bool valid = row < size_t(B) * T * NH;
  float s = 0.0f;
  if (valid) {
    const size_t base = row * HD;  // [B,T,NH,HD] == [B,T,C]
    TRIAD_UNROLL
    for (int d = 2 * lane; d < HD; d += 64) {
      const uint32_t a = *reinterpret_cast<const uint32_t*>(dout + base + d);
      const uint32_t o = *reinterpret_cast<const uint32_t*>(out + base + d);
      s += x.bf16_float(uint16_t(a & 0xffffu)) * x.bf16_float(uint16_t(o & 0xffffu)) +
           x.bf16_float(uint16_t(a >> 16)) * x.bf16_float(uint16_t(o >> 16));
    }
  }
  if (valid && dq_accum != nullptr) {
    TRIAD_UNROLL
    for (int d = 4 * lane; d < HD; d += 128)
      x.store16(dq_accum + row * HD + d, Vec16{{0, 0, 0, 0}});
  }
  const size_t turns = size_t(B) * NH * ((T + kTile - 1) / kTile);
  if (dq_turns != nullptr && lane == 0 && row < turns) dq_turns[row] = 0;
  if (dq_turns != nullptr && lane == 0 && row == 0) dq_turns[turns] = 0;  // the ticket counter
  TRIAD_UNROLL
  for (int mask = 16; mask >= 1; mask /= 2) s += x.shfl_xor(s, mask);
  if (valid && lane == 0) {
    const int h = int(row % NH);
    const size_t bt = row / NH;  // b·T + t
    Dv[(bt / T * NH + h) * T + bt % T] = s;
  }
}

// P and dS of one 16×64 warp tile from scores s (scaled in the log2 domain) and dp, where element
// (r, n, e) pairs this thread's row row0 + 8r with column col0 + n·8 + tc + e; `valid` says
// whether that pair is inside the causal mask, lse2(r, c) / dd(r, c) give the log2-domain lse and
// D of the pair's query. On return s holds P and dp holds dS = P ∘ (dP − D). Capped (a soft
// cap, cap_log2 > 0: forward_block's) the scores are capped as the forward's, and dS is times
// 1 − tanh² of the cap's argument (the derivative of the cap): a compile-time choice, as the
// backward kernels of head dim 128 have no registers to spare for it (spills without a cap).
// Dropout (compile-time too): keep(r, c) says whether the pair's probability is kept, scale is
// 1/(1 − p); s then holds P ∘ Z (dV's operand) and dp holds dS = P ∘ (Z ∘ dP − D), Z the mask's
// factor (scale or 0): the gradient of dropout after the softmax (D = rowsum(dO ∘ O) already
// sums P ∘ Z ∘ dP, O being the dropped output).
template <bool Capped, bool Dropout = false, class X, class Valid, class Lse, class Dd,
          class Keep = decltype(nullptr)>
TRIAD_BLOCK_FN void probabilities_and_ds(X& x, float (&s)[8][4], float (&dp)[8][4],
                                         float scale_log2, Valid valid, Lse lse2, Dd dd,
                                         float cap_log2, Keep keep = nullptr,
                                         float drop_scale = 1.0f) {
  const int tc = (x.thread() & 3) * 2;
  TRIAD_UNROLL
  for (int n = 0; n < 8; ++n) TRIAD_UNROLL
  for (int r = 0; r < 2; ++r) TRIAD_UNROLL
  for (int e = 0; e < 2; ++e) {
    const int c = n * 8 + tc + e;
    if constexpr (Dropout) {
      static_assert(!Capped, "no kernel drops capped scores (they run the fp32 attention)");
      const float z = keep(r, c) ? drop_scale : 0.0f;
      const float p = valid(r, c) ? x.exp2(s[n][2 * r + e] * scale_log2 - lse2(r, c)) : 0.0f;
      s[n][2 * r + e] = p * z;
      dp[n][2 * r + e] = p * (dp[n][2 * r + e] * z - dd(r, c));
    } else if constexpr (Capped) {
      const float t = x.tanh(s[n][2 * r + e] * scale_log2 / cap_log2);
      const float p = valid(r, c) ? x.exp2(cap_log2 * t - lse2(r, c)) : 0.0f;
      s[n][2 * r + e] = p;
      dp[n][2 * r + e] = p * (dp[n][2 * r + e] - dd(r, c)) * (1.0f - t * t);
    } else {
      const float p = valid(r, c) ? x.exp2(s[n][2 * r + e] * scale_log2 - lse2(r, c)) : 0.0f;
      s[n][2 * r + e] = p;
      dp[n][2 * r + e] = p * (dp[n][2 * r + e] - dd(r, c));
    }
  }
}

// The dK/dV kernel's work in one pass (both) or two (dv, then dk). At HD 192 one pass holds dK's
// and dV's accumulators (96 registers each per thread) beside the Sᵀ and dPᵀ tiles (32 each),
// more than the 255 a thread has: ptxas spilled 440-772 bytes per thread. Two passes hold one
// accumulator each, at the cost of Sᵀ computed twice: 5 tile products per (key, query) tile pair
// instead of 4 (6 instead of 5 with the atomic dQ).
enum class DkdvPass { both, dv, dk };
template <class Tiles>
TRIAD_BLOCK_SIZE bool split_dkdv() {
  return Tiles::kHD > 128;
}

// dK, dV of key block blockIdx.y (warp w: keys k0 + 16w ..) of key/value head blockIdx.x (b·NKV +
// j), iterating over the NH/NKV query heads that read it (j, j + NKV, ..) and for each over the
// query tiles qt >= kb (and from the range's first; up to the last one whose rows see a key of
// the block): Sᵀ = K Qᵀ, dPᵀ = V dOᵀ, Pᵀ = exp(Sᵀ·scale − lse), dSᵀ = Pᵀ ∘ (dPᵀ − D),
// dV += Pᵀ dO, dK += dSᵀ Q (summed over the query heads in fp32, rounded once); dK scaled by
// 1/sqrt(HD) at the end.
// AtomicDq: also this key block's part of dQ (unscaled) for every query tile, dQ += dS K with dS
// (bf16, as the dK product rounds it) passed through shared memory, added into dq_accum
// ([B,T,C] fp32, zeroed by dot_block); dq_convert_block finishes it. The additions are atomic,
// in whatever order the blocks get there; or, Ordered, with dq_turns ([B·NH][nqb], zeroed by
// dot_block), in key-block order: block kb waits until turn (bh, qt) is kb, adds with plain loads
// and stores, and passes the turn to kb + 1, so every dQ element is summed in the same order on
// every run. The wait cannot deadlock: in this mode a block does not take its (head, key block)
// from its block index but from a ticket (the counter after the turns, in the order blocks start
// running: ticket t is key/value head t mod B·NKV, key block t / (B·NKV), heaviest first as the
// grid), so a
// block only ever waits for blocks that started before it, which are running or done, whatever
// order the GPU dispatches them in (a block passes its query heads' turns in one order; the next
// key block waits on them in the same). The query tiles a block skips (a document mask) still
// pass their turns on.
// Masked: whether key_begin may be non-null, a compile-time choice: the mask's per-element test
// costs the HD 128 kernels registers they do not have (spills), so the kernels without a mask are
// compiled without it. Capped: the scores soft-capped at cap_log2 (probabilities_and_ds), likewise
// compiled only into the kernels that run with a cap (which take the mask's test too).
// Dropout: the attention dropout's (drop; probabilities_and_ds), each query's head key formed
// once per step into shared memory beside its lse and D; not with Capped.
// Pass: both (dK and dV), or one of the two passes of split_dkdv: dv (Sᵀ, Pᵀ and dV += Pᵀ dO
// only: no V, D or dQ) and dk (dK, and with AtomicDq the dQ, but not dV).
template <class Tiles, bool AtomicDq, bool Ordered, bool Masked, bool Capped = false,
          bool Dropout = false, DkdvPass Pass = DkdvPass::both, class X>
TRIAD_BLOCK_FN void dkdv_block(X& x, uint16_t* dqkv, float* dq_accum, int* dq_turns,
                               const uint16_t* dout, const uint16_t* qkv, const void* qkv_map,
                               const void* dout_map, const float* lse, const float* Dv, int B,
                               Rows rows, int C, int NH, int NKV, float scale, float scale_log2,
                               bool accumulate, const int32_t* key_begin, float cap_log2 = 0.0f,
                               AttentionDropMask drop = {}) {
  constexpr int HD = Tiles::kHD, L = Tiles::kElems;  // L: elements per tile
  const int T = rows.keys(), first_row = rows.first;
  static_assert((6 * tile_bytes<Tiles>() + 4 * kTile * sizeof(float)) % Tiles::kSmemAlign == 0,
                "the dS tile must start as aligned as the others");
  unsigned char* smem = aligned_smem<Tiles>(x);
  uint16_t* sK = reinterpret_cast<uint16_t*>(smem);
  uint16_t* sV = sK + L;
  uint16_t* sQ = sV + L;                                        // [2][64][L]
  uint16_t* sdO = sQ + 2 * L;                                   // [2][64][L]
  float* sLse = reinterpret_cast<float*>(sdO + 2 * L);          // [2][64], log2 domain
  float* sD = sLse + 2 * kTile;                                 // [2][64]
  uint16_t* sdS = reinterpret_cast<uint16_t*>(sD + 2 * kTile);  // dSᵀ [key][query] (AtomicDq)
  // [2][64]: each query's first key (document mask), read per element from shared memory, not
  // global: the HD 128 kernels have no registers to spare for global addresses.
  int32_t* sKb = reinterpret_cast<int32_t*>(smem + dkdv_first_keys_offset<Tiles, AtomicDq>());
  // [2][64] (Dropout): each query's head key.
  uint64_t* sHk = reinterpret_cast<uint64_t*>(smem + dkdv_head_keys_offset<Tiles, AtomicDq>());
  typename Tiles::template Pipe<X> pipe(
      x, reinterpret_cast<uint64_t*>(smem + dkdv_data<Tiles, AtomicDq, Dropout>()));

  const int nb = (T + kTile - 1) / kTile;
  // The range's query tiles (their turns and dQ rows are numbered from its first).
  const int qt_first = rows.first_tile(), nq = rows.query_tiles();
  static_assert(AtomicDq || !Ordered, "the ordered way is a way of adding the dQ");
  static_assert(Pass != DkdvPass::dv || !AtomicDq, "the dV pass adds no dQ (the dK pass does)");
  constexpr bool kDk = Pass != DkdvPass::dv, kDv = Pass != DkdvPass::dk;
  // This block's (head, key block): the block index, or (Ordered) the ticket. A compile-time
  // choice: the index is a special register the compiler re-reads for free, the ticket a value
  // it must keep (the HD 128 kernels would spill).
  int block = x.block_y() * B * NKV + x.block_x();
  if constexpr (Ordered) {
    int* slot = reinterpret_cast<int*>(sdS + Tiles::Square::kElems);
    if (x.thread() == 0) *slot = x.take_ticket(dq_turns + size_t(B) * NH * nq);
    x.sync_threads();
    block = *slot;
  }
  const int kb = block / (B * NKV);  // the blocks with the most query tiles (small kb) first
  const int b = block % (B * NKV) / NKV, j = block % NKV;  // sequence, key/value head
  const int G = NH / NKV;  // query heads per key/value head: j + g·NKV, g < G
  // The query head of group member g: its q and dO tiles, lse and D rows (the range's rows: query
  // q at q − first), and dQ turns.
  auto member = [&](int g) {
    return head<HD>(b * NH + j + g * NKV, qkv, dout, qkv_map, dout_map, rows, C, NH, NKV);
  };
  const Head here = member(0);  // the key/value head's K and V
  const size_t stride = here.stride;
  const int k0 = kb * kTile;
  const int qs = kb > qt_first ? kb : qt_first;  // the first query tile that sees the block
  const int warp = x.thread() / 32, lane = x.thread() % 32;
  const int key0 = k0 + warp * 16 + (lane >> 2);  // this thread's keys: key0 and key0 + 8
  // The last query tile that sees a key of this block: the tiles from the first one whose first
  // row begins past the block's last key see none (key_begin never decreases). The block's own
  // diagonal tile always sees it; a block before a query range may be seen by none of the
  // range's tiles (qt_last < qs: nothing to compute, only turns to pass on).
  const int32_t* kbeg = Masked ? sequence_key_begin(key_begin, b, rows.seq) : nullptr;
  int qt_last = nb - 1;
  if constexpr (Masked) {  // (the capped kernel, Masked too, may run without a mask)
    const int last_key = (k0 + kTile < T ? k0 + kTile : T) - 1;
    for (int qt = qs; qt < nb && kbeg != nullptr; ++qt)
      if (int(kbeg[qt * kTile]) > last_key) {
        qt_last = qt - 1;
        break;
      }
  }

  // Steps i = 0, 1, .. run query head g = i / tiles of the group, its tile qt = qs + i % tiles.
  const int tiles = qt_last - qs + 1, steps = tiles > 0 ? G * tiles : 0;
  if constexpr (Ordered && Masked) {
    // The query tiles after qt_last get nothing from this block, but their turns pass through
    // it (kb → kb + 1), or the next key block would wait for them forever. First, before any
    // computing: the previous key block skips every tile this one skips (key_begin never
    // decreases) and passes them first too, so these waits never wait on a computing block.
    for (int g = 0; g < G; ++g)
      for (int qt = qt_last + 1; qt < nb; ++qt) {
        int* turn = dq_turns + (size_t(b) * NH + j + g * NKV) * nq + (qt - qt_first);
        if (x.thread() == 0) {
          x.wait_equal(turn, kb);
          x.store_release(turn, kb + 1);
        }
      }
  }
  // Step i's Q and dO tiles into buffer buf (batch i), and its lse (log2 domain), D (not in the dV
  // pass) and (with a mask) the queries' first keys: plain loads, zero past T.
  auto load_step = [&](int i, int buf) {
    const int g = i / tiles, qt = qs + i % tiles;
    const Head m = member(g);
    pipe.load(sQ + buf * L, m.q, qt * kTile, T, i);
    pipe.load(sdO + buf * L, m.dout, qt * kTile - first_row, rows.count, i);
    const int t = x.thread();
    if (t < kTile) {
      const int q = qt * kTile + t;
      const size_t at = size_t(m.bh) * rows.count + size_t(q - first_row);
      sLse[buf * kTile + t] = q < T ? lse[at] * kLog2e : 0.0f;
      if constexpr (kDk) sD[buf * kTile + t] = q < T ? Dv[at] : 0.0f;
      if constexpr (Masked) sKb[buf * kTile + t] = q < T && kbeg != nullptr ? int(kbeg[q]) : 0;
      if constexpr (Dropout)
        sHk[buf * kTile + t] = q < T ? drop.head_key(size_t(b), rows.seq, m.h, q) : 0;
    }
  };
  // Batch i (0, 1, ..) holds step i's tiles (and, in batch 0, this block's K, and V but in the dV
  // pass). dO's rows are the range's (query row t at t − first).
  if (steps > 0) {
    pipe.load(sK, here.k, k0, T, 0);
    if constexpr (kDk) pipe.load(sV, here.v, k0, T, 0);
    load_step(0, 0);
    pipe.commit(0);
  }

  float dk[HD / 8][4], dv[HD / 8][4];
  zero(dk);
  zero(dv);
  // K and V held in registers (from the first step on) where the registers allow: 32 per thread
  // at HD 64; not with the atomic dQ's extra product, nor at HD 128 (nor in a pass of two).
  constexpr bool kHold = HD == 64 && !AtomicDq && Pass == DkdvPass::both;
  Held<HD> kh, vh;

  for (int i = 0; i < steps; ++i) {
    const int buf = i & 1, g = i / tiles, qt = qs + i % tiles;
    if (i + 1 < steps) {
      load_step(i + 1, buf ^ 1);
      pipe.commit(i + 1);
      pipe.template wait<1>(i);
    } else {
      pipe.template wait<0>(i);
    }
    x.sync_threads();

    const uint16_t* q = sQ + buf * L;
    const uint16_t* d_o = sdO + buf * L;
    const float* lse2 = sLse + buf * kTile;
    const float* dd = sD + buf * kTile;
    float s[8][4], dp[8][4];
    zero(s);
    zero(dp);
    if constexpr (kHold) {  // Sᵀ[key][query], dPᵀ[key][query]
      if (i == 0) {
        hold<Tiles>(x, kh, sK);
        hold<Tiles>(x, vh, sV);
      }
      Tiles::abt2(x, s, kh, q, dp, vh, d_o);
    } else if constexpr (kDk) {
      Tiles::abt2(x, s, sK, q, dp, sV, d_o);
    } else {
      Tiles::abt(x, s, sK, q);  // (dp stays zero: the dV pass reads only s)
    }
    const int q0 = qt * kTile;
    // Whether some query of the tile begins after the block's first key (its last query does,
    // if any).
    const int32_t* first = sKb + buf * kTile;
    bool cut = false;
    if constexpr (Masked) cut = first[(T - q0 < kTile ? T - q0 : kTile) - 1] > k0;
    const uint64_t* hks = sHk + buf * kTile;  // (Dropout) the tile's queries' head keys
    probabilities_and_ds<Capped, Dropout>(
        x, s, dp, scale_log2,
        [&](int r, int c) {
          const int key = key0 + 8 * r, query = q0 + c;
          if constexpr (Masked)
            return key <= query && query < T && key < T && (!cut || key >= first[c]);
          else
            return key <= query && query < T && key < T;
        },
        [&](int, int c) { return lse2[c]; }, [&](int, int c) { return kDk ? dd[c] : 0.0f; },
        cap_log2,
        [&](int r, int c) {
          return attention_dropout_keeps(hks[c], uint32_t(key0 + 8 * r), drop.threshold);
        },
        drop.scale);
    if constexpr (Pass == DkdvPass::both)
      Tiles::pv2(x, dv, s, d_o, dk, dp, q);  // dV += Pᵀ dO, dK += dSᵀ Q
    else if constexpr (Pass == DkdvPass::dv)
      Tiles::pv(x, dv, s, d_o);
    else
      Tiles::pv(x, dk, dp, q);
    if constexpr (AtomicDq) {
      using Square = typename Tiles::Square;
      const int tc = (lane & 3) * 2, kr = warp * 16 + (lane >> 2);  // this thread's tile rows
      TRIAD_UNROLL
      for (int n = 0; n < 8; ++n) TRIAD_UNROLL
      for (int r = 0; r < 2; ++r)
        x.store_shared32(sdS + Square::chunk(kr + 8 * r, n * 8) + tc,
                         x.pack_bf16(dp[n][2 * r], dp[n][2 * r + 1]));
      Tiles::publish(x);
      x.sync_threads();
      const int h = j + g * NKV;  // the query head
      float* dq_rows = dq_accum + size_t(b) * rows.count * C + size_t(h) * HD;
      int* turn = Ordered ? dq_turns + (size_t(b) * NH + h) * nq + (qt - qt_first) : nullptr;
      // Rows 16w.. of dQ (queries q0 + 16w ..) += dS K, 64 columns at a time: 32 accumulators
      // beside dK's and dV's instead of HD/2 (at HD 128 the kernel would spill). At HD 64 the
      // product comes before the wait for the turn, outside the part that runs one block at a
      // time; at HD 128 that would keep the first slice live across the wait and spill.
      auto take_turn = [&] {
        if (x.thread() == 0) x.wait_equal(turn, kb);
        x.sync_threads();
      };
      if (HD != 64 && turn != nullptr) take_turn();
      TRIAD_UNROLL
      for (int c0 = 0; c0 < HD; c0 += 64) {
        float dq[8][4];
        zero(dq);
        Tiles::atb(x, dq, sdS, sK, c0);
        if (HD == 64 && turn != nullptr) take_turn();
        add_rows<64>(x, dq_rows + c0, size_t(C), q0 - first_row + warp * 16, rows.count, dq,
                     turn != nullptr);
      }
      if (turn != nullptr) {
        x.fence_device();  // this thread's additions are visible before the turn passes
        x.sync_threads();
        if (x.thread() == 0) x.store_release(turn, kb + 1);
      }
    }
    x.sync_threads();  // every warp is done with these buffers before they are refilled
  }
  uint16_t* gdk = dqkv + size_t(b) * rows.seq * stride + C + size_t(j) * HD;
  if constexpr (kDk) store_rows<HD>(x, gdk, stride, k0 + warp * 16, T, dk, scale, accumulate);
  if constexpr (kDv)
    store_rows<HD>(x, gdk + size_t(NKV) * HD, stride, k0 + warp * 16, T, dv, 1.0f, accumulate);
}

// dqkv's q columns from the atomic-dQ accumulator ([B,count,C] fp32, 16-byte aligned: the range's
// rows): thread t of block blockIdx.x takes 8 elements, (blockIdx.x · kConvertThreads + t) · 8 ..,
// of the B·count·C; each becomes round(scale · acc), or round(old + scale · acc) with accumulate,
// in its row of dqkv [B,seq,W]. C % 8 == 0.
constexpr int kConvertThreads = 256;
template <class X>
TRIAD_BLOCK_FN void dq_convert_block(X& x, uint16_t* dqkv, const float* dq_accum, Rows rows,
                                     size_t total, int C, int W, float scale, bool accumulate) {
  const size_t e0 = (size_t(x.block_x()) * kConvertThreads + x.thread()) * 8;
  if (e0 >= total) return;
  const size_t at = e0 / size_t(C), col = e0 % size_t(C);  // the range's row b·count + t
  const size_t row =
      at / size_t(rows.count) * size_t(rows.seq) + size_t(rows.first) + at % size_t(rows.count);
  float v[8];
  TRIAD_UNROLL
  for (int half = 0; half < 2; ++half) {
    const Vec16 a = x.load16(dq_accum + e0 + 4 * half);
    TRIAD_UNROLL
    for (int i = 0; i < 4; ++i) v[4 * half + i] = float_from_bits(a.w[i]) * scale;
  }
  uint32_t* dst = reinterpret_cast<uint32_t*>(dqkv + row * size_t(W) + col);
  TRIAD_UNROLL
  for (int i = 0; i < 4; ++i) {
    float lo = v[2 * i], hi = v[2 * i + 1];
    if (accumulate) {
      const uint32_t old = dst[i];
      lo += x.bf16_float(uint16_t(old & 0xffffu));
      hi += x.bf16_float(uint16_t(old >> 16));
    }
    dst[i] = x.pack_bf16(lo, hi);
  }
}

// dQ of query block nqb-1-blockIdx.y (warp w: rows q0 + 16w ..), iterating over the key tiles
// kt <= qb (from the first one the block's rows see): S = Q Kᵀ, dP = dO Vᵀ, P = exp(S·scale − lse),
// dS = P ∘ (dP − D), dQ += dS K; scaled by 1/sqrt(HD) at the end. Capped, Dropout: dkdv_block's
// (the thread's two rows' head keys formed once).
template <class Tiles, bool Capped = false, bool Dropout = false, class X>
TRIAD_BLOCK_FN void dq_block(X& x, uint16_t* dqkv, const uint16_t* dout, const uint16_t* qkv,
                             const void* qkv_map, const void* dout_map, const float* lse,
                             const float* Dv, Rows rows, int C, int NH, int NKV, float scale,
                             float scale_log2, bool accumulate, const int32_t* key_begin,
                             float cap_log2 = 0.0f, AttentionDropMask drop = {}) {
  constexpr int HD = Tiles::kHD, L = Tiles::kElems;  // L: elements per tile
  const int T = rows.keys();
  unsigned char* smem = aligned_smem<Tiles>(x);
  uint16_t* sQ = reinterpret_cast<uint16_t*>(smem);
  uint16_t* sdO = sQ + L;
  uint16_t* sK = sdO + L;     // [2][64][L]
  uint16_t* sV = sK + 2 * L;  // [2][64][L]
  typename Tiles::template Pipe<X> pipe(x, reinterpret_cast<uint64_t*>(smem + dq_data<Tiles>()));

  const int nb = (T + kTile - 1) / kTile;
  const int qb = nb - 1 - x.block_y();  // the longest rows first
  const Head here = head<HD>(x.block_x(), qkv, dout, qkv_map, dout_map, rows, C, NH, NKV);
  const int bh = here.bh, b = here.b, h = here.h;
  const size_t stride = here.stride;
  const int q0 = qb * kTile;
  const int warp = x.thread() / 32, lane = x.thread() % 32;
  const int row0 = q0 + warp * 16 + (lane >> 2);  // this thread's rows: row0 and row0 + 8
  const int32_t* kbeg = sequence_key_begin(key_begin, b, rows.seq);
  const int lo[2] = {first_key(kbeg, row0, T), first_key(kbeg, row0 + 8, T)};
  const int kt0 = kbeg != nullptr ? int(kbeg[q0]) / kTile : 0;  // the first tile any row sees
  uint64_t hk[2] = {0, 0};  // (Dropout) the head keys of this thread's two rows
  if constexpr (Dropout) {
    TRIAD_UNROLL
    for (int r = 0; r < 2; ++r)
      if (row0 + 8 * r < T) hk[r] = drop.head_key(size_t(b), rows.seq, h, row0 + 8 * r);
  }

  pipe.load(sQ, here.q, q0, T, 0);
  pipe.load(sdO, here.dout, q0 - rows.first, rows.count, 0);  // the range's rows
  pipe.load(sK, here.k, kt0 * kTile, T, 0);
  pipe.load(sV, here.v, kt0 * kTile, T, 0);
  pipe.commit(0);
  float lse2[2], dd[2];
  TRIAD_UNROLL
  for (int r = 0; r < 2; ++r) {
    const int row = row0 + 8 * r;
    const size_t at = size_t(bh) * rows.count + size_t(row - rows.first);
    lse2[r] = row < T ? lse[at] * kLog2e : 0.0f;
    dd[r] = row < T ? Dv[at] : 0.0f;
  }

  float dq[HD / 8][4];
  zero(dq);
  // Q and dO held in registers (from the first step on) where the registers allow (HD 64).
  constexpr bool kHold = HD == 64;
  Held<HD> qh, doh;
  for (int kt = kt0; kt <= qb; ++kt) {
    const int step = kt - kt0, buf = step & 1;
    next_kv_tiles<Tiles>(x, pipe, sK, sV, here, kt, step, qb, T);

    const uint16_t* k = sK + buf * L;
    float s[8][4], dp[8][4];
    zero(s);
    zero(dp);
    if constexpr (kHold) {  // S[query][key], dP[query][key]
      if (step == 0) {
        hold<Tiles>(x, qh, sQ);
        hold<Tiles>(x, doh, sdO);
      }
      Tiles::abt2(x, s, qh, k, dp, doh, sV + buf * L);
    } else {
      Tiles::abt2(x, s, sQ, k, dp, sdO, sV + buf * L);
    }
    const int k0 = kt * kTile;
    probabilities_and_ds<Capped, Dropout>(
        x, s, dp, scale_log2,
        [&](int r, int c) {
          const int row = row0 + 8 * r, key = k0 + c;
          return key <= row && key < T && row < T && key >= lo[r];
        },
        [&](int r, int) { return lse2[r]; }, [&](int r, int) { return dd[r]; }, cap_log2,
        [&](int r, int c) {
          return attention_dropout_keeps(hk[r], uint32_t(k0 + c), drop.threshold);
        },
        drop.scale);
    Tiles::pv(x, dq, dp, k);  // dQ += dS K
    x.sync_threads();
  }
  store_rows<HD>(x, dqkv + size_t(b) * rows.seq * stride + size_t(h) * HD, stride, q0 + warp * 16,
                 T, dq, scale, accumulate);
}

}  // namespace triad::flash
