// The shape of a tensor map for bulk tensor copies (TMA): which tensor, which box, which
// swizzle. Plain C++ (no CUDA header), so that the GPU launchers (cuda_tensor_map.cuh encodes it
// with the driver) and the CPU emulator of the copies (tests/support/simt_emulator.h) describe a
// map from the same numbers.
#pragma once

#include <cstdint>

namespace triad {

struct BoxMapShape {
  uint64_t dims[3];     // elements, innermost first
  uint64_t strides[2];  // bytes between consecutive indices of dims 1 and 2
  uint32_t box[3];      // the box one copy moves, innermost first
  bool swizzle128;      // 128-byte swizzle in shared memory (else none)
};

// The row-major bf16 tensor [seqs][rows][cols] in boxes of box_cols × box_rows × 1.
inline BoxMapShape bf16_box_shape(uint64_t cols, uint64_t rows, uint64_t seqs, uint32_t box_cols,
                                  uint32_t box_rows, bool swizzle128) {
  return BoxMapShape{
      {cols, rows, seqs}, {cols * 2, cols * rows * 2}, {box_cols, box_rows, 1}, swizzle128};
}

}  // namespace triad
