#include "shard.h"

#include <array>
#include <utility>

#include "crc32.h"

namespace triad::io {
namespace {

hsize_t product(const std::vector<hsize_t>& dims, size_t from, size_t to) {
  hsize_t n = 1;
  for (size_t k = from; k < to; ++k) n *= dims[k];
  return n;
}

// The boxes of the flat elements [b, e) of the sub-array dims[axis..] whose coordinates in the
// dimensions before `axis` are origin[0 .. axis).
void flat_range_boxes_at(const std::vector<hsize_t>& dims, size_t axis,
                         std::vector<hsize_t>& origin, hsize_t b, hsize_t e,
                         std::vector<Box>& out) {
  if (b >= e) return;
  const size_t nd = dims.size();
  if (axis + 1 == nd) {
    Box box{origin, std::vector<hsize_t>(nd, 1)};
    box.start[axis] = b;
    box.count[axis] = e - b;
    out.push_back(std::move(box));
    return;
  }
  const hsize_t stride = product(dims, axis + 1, nd);  // > 0: the range is not empty
  const hsize_t first = b / stride, last = (e - 1) / stride;
  auto partial = [&](hsize_t row, hsize_t lo, hsize_t hi) {
    origin[axis] = row;
    flat_range_boxes_at(dims, axis + 1, origin, lo, hi, out);
    origin[axis] = 0;
  };
  if (first == last) {
    partial(first, b - first * stride, e - first * stride);
    return;
  }
  hsize_t full_begin = first;
  if (b % stride != 0) {
    partial(first, b % stride, stride);
    full_begin = first + 1;
  }
  const hsize_t full_end = e / stride;  // rows [full_begin, full_end) are whole
  if (full_end > full_begin) {
    Box box{origin, std::vector<hsize_t>(nd, 1)};
    box.start[axis] = full_begin;
    box.count[axis] = full_end - full_begin;
    for (size_t k = axis + 1; k < nd; ++k) box.count[k] = dims[k];
    out.push_back(std::move(box));
  }
  if (e % stride != 0) partial(full_end, 0, e % stride);
}

constexpr uint32_t kPoly = 0xEDB88320u;  // reflected

constexpr uint32_t multmodp(uint32_t a, uint32_t b) {
  uint32_t m = 1u << 31, p = 0;
  for (;;) {
    if (a & m) {
      p ^= b;
      if ((a & (m - 1)) == 0) break;
    }
    m >>= 1;
    b = (b & 1) ? (b >> 1) ^ kPoly : b >> 1;
  }
  return p;
}

// x^(2^k) mod P.
constexpr std::array<uint32_t, 32> make_x2n_table() {
  std::array<uint32_t, 32> t{};
  uint32_t p = 1u << 30;  // x^1
  t[0] = p;
  for (int k = 1; k < 32; ++k) t[k] = p = multmodp(p, p);
  return t;
}

constexpr std::array<uint32_t, 32> kX2n = make_x2n_table();

}  // namespace

void flat_range_boxes(const std::vector<hsize_t>& dims, hsize_t b, hsize_t e,
                      std::vector<Box>& out) {
  std::vector<hsize_t> origin(dims.size(), 0);
  flat_range_boxes_at(dims, 0, origin, b, e, out);
}

Shard::Shard(std::vector<hsize_t> dims, int axis, hsize_t blocks, hsize_t parts, hsize_t part)
    : dims_(std::move(dims)) {
  local_dims_ = dims_;
  full_numel_ = local_numel_ = product(dims_, 0, dims_.size());
  if (axis < 0 || parts <= 1) return;
  axis_ = axis;
  blocks_ = blocks;
  parts_ = parts;
  part_ = part;
  local_dims_[axis] = dims_[axis] / parts;
  local_numel_ = full_numel_ / parts;
  seg_ = dims_[axis] / (blocks * parts) * product(dims_, axis + 1, dims_.size());
}

hsize_t Shard::to_full(hsize_t x) const {
  if (!split()) return x;
  return (x / seg_ * parts_ + part_) * seg_ + x % seg_;
}

void Shard::boxes(hsize_t b, hsize_t e, std::vector<Box>& out) const {
  if (b >= e) return;
  if (!split()) {
    flat_range_boxes(dims_, b, e, out);
    return;
  }
  std::vector<Box> local;
  flat_range_boxes(local_dims_, b, e, local);
  const size_t a = static_cast<size_t>(axis_);
  const hsize_t dp = local_dims_[a] / blocks_, db = dims_[a] / blocks_;  // dp > 0: e > b
  for (Box& box : local) {
    hsize_t s = box.start[a], c = box.count[a];
    while (c > 0) {
      const hsize_t block = s / dp, j = s % dp, n = std::min(dp - j, c);
      Box piece = box;
      piece.start[a] = block * db + part_ * dp + j;
      piece.count[a] = n;
      out.push_back(std::move(piece));
      s += n;
      c -= n;
    }
  }
}

FlatRange Shard::rows_below(hsize_t rows) const {
  if (local_numel_ == 0) return {};
  const hsize_t r = dims_[0];  // > 0: the tensor has elements
  if (rows >= r) return {0, local_numel_};
  if (axis_ != 0) return {0, rows * (local_numel_ / r)};  // local row i is full row i
  const hsize_t row = full_numel_ / r, db = r / blocks_, dp = db / parts_;
  hsize_t n = 0;  // local rows
  for (hsize_t b = 0; b < blocks_; ++b) {
    const hsize_t first = b * db + part_ * dp;  // the full row of the block's first local row
    n += rows > first ? std::min(rows - first, dp) : 0;
  }
  return {0, n * row};
}

uint32_t crc32_zeros_operator(uint64_t n) {
  uint32_t p = 1u << 31;  // x^0
  for (unsigned k = 3; n != 0; n >>= 1, ++k) {
    if (n & 1) p = multmodp(kX2n[k & 31], p);
  }
  return p;
}

uint32_t crc32_apply(uint32_t op, uint32_t crc) { return multmodp(op, crc); }

uint32_t PlacedCrc::shift(uint32_t crc, uint64_t n) const {
  if (crc == 0 || n == 0) return crc;
  if (n != cached_n_) {
    cached_op_ = crc32_zeros_operator(n);
    cached_n_ = n;
  }
  return multmodp(cached_op_, crc);
}

void PlacedCrc::add(uint64_t end, uint32_t crc) {
  acc_ = shift(acc_, end - pos_) ^ crc;
  pos_ = end;
}

uint32_t PlacedCrc::value() const { return shift(acc_, total_ - pos_); }

uint32_t placed_crc(std::vector<CrcPiece> pieces, hsize_t total_elements) {
  constexpr hsize_t kChunk = hsize_t{4} << 20;  // floats
  std::vector<CrcPiece> chunks;
  hsize_t work = 0;
  for (const CrcPiece& p : pieces) {
    const hsize_t begin = p.end - p.count;
    for (hsize_t off = 0; off < p.count; off += kChunk) {
      const hsize_t n = std::min(kChunk, p.count - off);
      chunks.push_back({p.data + off, n, begin + off + n});
    }
    work += p.count;
  }
  std::sort(chunks.begin(), chunks.end(),
            [](const CrcPiece& a, const CrcPiece& b) { return a.end < b.end; });
  std::vector<uint32_t> crcs(chunks.size());
  const auto n_chunks = static_cast<int64_t>(chunks.size());
#pragma omp parallel for schedule(dynamic, 4) if (work > (hsize_t{1} << 18) && n_chunks > 1)
  for (int64_t c = 0; c < n_chunks; ++c) {
    crcs[c] = crc32(chunks[c].data, chunks[c].count * sizeof(float));
  }
  PlacedCrc acc(total_elements * sizeof(float));
  for (size_t c = 0; c < chunks.size(); ++c) acc.add(chunks[c].end * sizeof(float), crcs[c]);
  return acc.value();
}

}  // namespace triad::io
