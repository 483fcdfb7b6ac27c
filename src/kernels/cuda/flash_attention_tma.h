// The bulk-tensor-copy pipe of the flash-attention block programs (flash_attention_block.h), for
// the wgmma tile policy (flash_attention_wgmma.h, Tma = true): one thread (thread 0) issues the
// copies (cp.async.bulk.tensor, sm_90: the TMA unit moves the tile, zero-filling rows past the
// tensor's end, while the threads compute), and every thread waits for them on an mbarrier
// (a shared-memory barrier that completes a phase when its arrivals and its expected bytes are
// all in).
//
// Each matrix (qkv [B,T,3C], dout [B,T,C]) is described by a 3-d tensor map with the dimensions
// (columns, T, B), boxes of 64 columns × 64 rows × 1 sequence and the 128-byte swizzle
// (tma_tile_shape; flash_attention_kernels.cuh encodes it). One box is one 8 KB panel of the tile
// layout wgmma reads, swizzled as it reads it, so a tile takes HD/64 copies. Batch i (the tiles
// loaded between two commits, as for CpAsyncPipe) completes on barrier i % 2 in its phase i / 2; a
// barrier is reused two batches later, after the barrier that ends the step in which every
// thread waited for it.
//
// The order within a batch: thread 0 announces each tile's bytes (mbarrier.expect_tx) before
// issuing its copies, so the barrier's byte count never goes below zero, and arrives (commit)
// after its last tile. Shared memory the copies write belongs to the async proxy, where wgmma
// reads it: no proxy fence is needed between them.
#pragma once

#include <cstddef>
#include <cstdint>

#include "box_map_shape.h"
#include "flash_attention_block.h"

namespace triad::flash {

// The tensor map of a [B, T, cols] bf16 matrix whose tiles a TmaPipe loads.
inline BoxMapShape tma_tile_shape(uint64_t cols, int T, int B) {
  return bf16_box_shape(cols, uint64_t(T), uint64_t(B), 64, kTile, true);
}

template <class Tiles, class X>
struct TmaPipe {
  static constexpr uint32_t kTileBytes = uint32_t(Tiles::kElems) * 2;
  static_assert(Tiles::kBarrierBytes == 2 * sizeof(uint64_t), "two mbarriers after the data");
  X& x;
  uint64_t* bar;  // [2], 8-byte aligned, after the program's data

  // Initializes both barriers (one arrival per phase: thread 0's commit); the barrier at the end
  // publishes them to every thread.
  TRIAD_BLOCK_FN TmaPipe(X& x_, uint64_t* bars) : x(x_), bar(bars) {
    if (x.thread() == 0) {
      x.mbarrier_init(bar, 1);
      x.mbarrier_init(bar + 1, 1);
      x.fence_barrier_init();  // the inits are visible to the copy engine before it signals
    }
    x.sync_threads();
  }
  TRIAD_BLOCK_FN void load(uint16_t* s, const TileSource& src, int row0, int, int batch) {
    if (x.thread() != 0) return;
    uint64_t* b = bar + (batch & 1);
    x.mbarrier_expect_tx(b, kTileBytes);
    TRIAD_UNROLL
    for (int p = 0; p < Tiles::kHD / 64; ++p)  // one 64-column panel per copy
      x.tma_load_3d(s + p * Tiles::kPanelElems, src.map, src.col0 + 64 * p, row0, src.batch, b);
  }
  TRIAD_BLOCK_FN void commit(int batch) {
    if (x.thread() == 0) x.mbarrier_arrive(bar + (batch & 1));
  }
  template <int>
  TRIAD_BLOCK_FN void wait(int batch) {
    x.mbarrier_wait(bar + (batch & 1), uint32_t(batch >> 1) & 1u);
  }
};

}  // namespace triad::flash
