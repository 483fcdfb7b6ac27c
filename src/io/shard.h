// Internal: the geometry of the parts of a tensor that checkpoints move (TensorRef::begin/end and
// split_*) and CRC-32s of pieces placed at their position in a tensor.
//
// A rank's local tensor is the full tensor, or a tensor-parallel shard of it: part `part` of
// `parts` of each of `blocks` equal blocks along dimension `axis`, concatenated in block order.
// With O the product of the dimensions before `axis`, Dp = dims[axis] / (blocks * parts) and I the
// product of the dimensions after it, the local tensor is O * blocks segments of S = Dp * I
// elements, each contiguous in the full tensor: local segment k (k = o * blocks + b) is the full
// tensor's flat elements [(k * parts + part) * S, ... + S). So a flat range of the local tensor is
// a partial segment, whole segments (strided by parts * S in the full tensor) and a partial
// segment, and the local order is the full tensor's row-major order restricted to the shard.
#pragma once

#include <hdf5.h>

#include <algorithm>
#include <cstdint>
#include <vector>

namespace triad::io {

// Elements [begin, end) in the row-major order of a tensor.
struct FlatRange {
  hsize_t begin = 0, end = 0;
  hsize_t size() const { return end > begin ? end - begin : 0; }
  bool empty() const { return end <= begin; }
};

// An N-D box of a dataset: start and count per dimension.
struct Box {
  std::vector<hsize_t> start, count;
};

// Appends the boxes covering the flat elements [b, e) of a tensor of shape dims, in increasing
// flat order: in 2-D a partial first row, a block of whole rows and a partial last row (at most
// 2 * N - 1 boxes in N-D).
void flat_range_boxes(const std::vector<hsize_t>& dims, hsize_t b, hsize_t e,
                      std::vector<Box>& out);

// A rank's local tensor inside the full tensor (see the top of this file).
class Shard {
 public:
  Shard() = default;
  // dims: the full shape. axis < 0 or parts == 1: the local tensor is the full tensor. The
  // caller has checked that dims[axis] is divisible by blocks * parts and part < parts.
  Shard(std::vector<hsize_t> dims, int axis, hsize_t blocks, hsize_t parts, hsize_t part);

  bool split() const { return parts_ > 1; }
  const std::vector<hsize_t>& full_dims() const { return dims_; }
  const std::vector<hsize_t>& local_dims() const { return local_dims_; }
  hsize_t full_numel() const { return full_numel_; }
  hsize_t local_numel() const { return local_numel_; }

  // The full tensor's flat index of local flat index x.
  hsize_t to_full(hsize_t x) const;

  // Calls fn(local_begin, full_begin, count) for each piece of the local range [b, e) that is
  // contiguous in the full tensor (one per segment touched), in increasing order.
  template <typename F>
  void for_each_run(hsize_t b, hsize_t e, F&& fn) const {
    if (b >= e) return;
    if (!split()) {
      fn(b, b, e - b);
      return;
    }
    for (hsize_t x = b; x < e;) {
      const hsize_t k = x / seg_, r = x % seg_, n = std::min(seg_ - r, e - x);
      fn(x, (k * parts_ + part_) * seg_ + r, n);
      x += n;
    }
  }

  // Appends the boxes, in the full tensor's coordinates, that select the local range [b, e): the
  // boxes of the range in the local tensor (flat_range_boxes), each cut at the block boundaries
  // along the split axis. In 2-D: at most 3 boxes per block (a partial first row, whole rows, a
  // partial last row); never one box per row.
  void boxes(hsize_t b, hsize_t e, std::vector<Box>& out) const;

  // The local elements whose full row (index along dimension 0) is below `rows`: always a prefix
  // of the local tensor (a prefix of the full rows is a prefix of each block's part, and a block's
  // part is cut only if the later blocks' parts are empty).
  FlatRange rows_below(hsize_t rows) const;

 private:
  std::vector<hsize_t> dims_, local_dims_;
  int axis_ = -1;
  hsize_t blocks_ = 1, parts_ = 1, part_ = 0;
  hsize_t full_numel_ = 0, local_numel_ = 0;
  hsize_t seg_ = 0;  // elements per segment (split only)
};

// ---- placed CRCs
// ---------------------------------------------------------------------------------
//
// CRC-32 is affine over GF(2): crc32_combine(c1, c2, n) = Z(n) * c1 ^ c2, where Z(n) is the linear
// operator "append n zero bytes" (zlib: multmodp(x^(8n) mod P, c1)). Unrolled over the pieces
// p_1 .. p_m that tile a message of N bytes in order, crc32(message) = XOR_k Z(N - end_k) *
// crc32(p_k), where end_k is the byte position where p_k ends. So every piece contributes a term
// that depends only on its bytes and position: ranks holding arbitrary disjoint pieces each XOR
// their terms, and the XOR over all ranks (MPI_BXOR) is the CRC-32 of the whole message.

// x^(8n) mod P, the operator Z(n) as a polynomial (reflected, as zlib's x2nmodp(n, 3)).
uint32_t crc32_zeros_operator(uint64_t n);
// Z(n) * crc for op = crc32_zeros_operator(n) (zlib's multmodp); 32 steps.
uint32_t crc32_apply(uint32_t op, uint32_t crc);

// The XOR of the terms of pieces of a message of total_bytes bytes, added in increasing order of
// position (disjoint). Consecutive pieces at a constant distance (the segments of a shard) reuse
// one operator, so a piece costs one crc32_apply.
class PlacedCrc {
 public:
  explicit PlacedCrc(uint64_t total_bytes) : total_(total_bytes) {}
  // A piece that ends at byte `end` (>= the previous piece's end) and has CRC-32 crc.
  void add(uint64_t end, uint32_t crc);
  // The XOR of Z(total - end_k) * crc_k over the pieces added.
  uint32_t value() const;

 private:
  uint32_t shift(uint32_t crc, uint64_t n) const;
  uint64_t total_;
  uint64_t pos_ = 0;
  uint32_t acc_ = 0;
  mutable uint64_t cached_n_ = 0;
  mutable uint32_t cached_op_ = 1u << 31;  // Z(0) = x^0
};

// A piece of fp32 data at a position of a tensor: `count` floats ending at element `end`.
struct CrcPiece {
  const float* data = nullptr;
  hsize_t count = 0;
  hsize_t end = 0;
};

// The XOR of the terms of the pieces (disjoint, any order) in a tensor of total_elements fp32
// elements. CRCs are computed in parallel (OpenMP), long pieces in chunks.
uint32_t placed_crc(std::vector<CrcPiece> pieces, hsize_t total_elements);

}  // namespace triad::io
