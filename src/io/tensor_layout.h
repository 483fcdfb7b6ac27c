// Internal: how the tensors a rank passes to a checkpoint save or load (TensorRef, TensorGroup)
// map onto the file's datasets, for checkpoint_save.cpp and checkpoint_load.cpp. A rank holds a
// flat range of its local tensor, which is the full tensor or a tensor-parallel shard of it
// (SplitKey, Shard); in the file a range is a union of a few hyperslab boxes (Shard::boxes), and
// one H5Dwrite / H5Dread moves it (transfer). The exchanges at the end let the ranks agree on
// the tensor lists before they plan who writes or checksums what.
#pragma once

#include <hdf5.h>
#include <mpi.h>

#include <cstdint>
#include <string>
#include <vector>

#include "shard.h"
#include "triad/io/checkpoint.h"

namespace triad::io {

constexpr const char* kCheckpointFormat = "triad-checkpoint";
constexpr int64_t kCheckpointFormatVersion = 1;

// The product of the dimensions.
hsize_t element_count(const std::vector<hsize_t>& dims);
std::vector<hsize_t> to_dims(const std::vector<int64_t>& shape);

// "/<group>/<tensor>"
std::string dataset_path(const TensorGroup& g, const TensorRef& t);

// Throws unless name is a relative HDF5 path: non-empty "/"-separated components, none of them
// "." or "..". `what` names the kind ("group", "tensor") in the error.
void check_name(const std::string& name, const char* what);

// ---- the local tensor of a rank ----------------------------------------------------------------

// A rank's split, normalized: no split (or one part) is axis -1, 1 block, 1 part, part 0.
struct SplitKey {
  int64_t axis = -1, blocks = 1, parts = 1, part = 0;
  bool same_family(const SplitKey& o) const {
    return axis == o.axis && blocks == o.blocks && parts == o.parts;
  }
  bool operator==(const SplitKey&) const = default;
};

SplitKey split_key(const TensorRef& t);

// The local tensor of `dims` under split k.
Shard make_shard(std::vector<hsize_t> dims, const SplitKey& k);

// The local tensor of t (validated by validate_groups).
Shard shard_of(const TensorRef& t);

// "part 1 of 2 along axis 0"
std::string split_string(const SplitKey& k);

// The range of its local tensor (of local_numel elements, or shard_of(t)'s) this rank holds of t
// (validated by validate_groups).
FlatRange held_range(const TensorRef& t, hsize_t local_numel);
FlatRange held_range(const TensorRef& t);

// Throws unless the groups are valid as checkpoint.h describes TensorRef and TensorGroup:
// distinct valid names, shapes, splits, ranges, buffers and valid_rows.
void validate_groups(const std::vector<TensorGroup>& groups);

// ---- moving elements between a dataset and host memory -----------------------------------------

enum class Direction { kWrite, kRead };

// One H5Dwrite / H5Dread (collective or independent, as dxpl says) moving the elements of
// dataset dset selected by `boxes` to / from the elements `mem` (disjoint, increasing flat
// ranges within [0, mem_len)) of the fp32 buffer `data`. No boxes: this rank selects nothing but
// still joins a collective call.
void transfer(hid_t dset, const std::vector<hsize_t>& file_dims, const std::vector<Box>& boxes,
              hsize_t mem_len, const std::vector<FlatRange>& mem, float* data, hid_t dxpl,
              Direction dir, const std::string& what);

// The boxes of the local ranges of a shard.
std::vector<Box> shard_boxes(const Shard& s, const std::vector<FlatRange>& ranges);

// Appends the pieces of a flat range [b, e) of a shard's local tensor whose elements are at
// data[0 .. e - b), at their positions in the full tensor (for placed_crc).
void append_pieces(const Shard& s, hsize_t b, hsize_t e, const float* data,
                   std::vector<CrcPiece>& out);

// ---- agreement on the tensor lists -------------------------------------------------------------

// Throws (on every rank: the values are the same everywhere) when the ranks pass different
// numbers of tensors; checked before any exchange whose size depends on that number.
void check_same_tensor_count(MPI_Comm comm, size_t n);

// Every rank's `fields` int64 values per tensor: result[(r * n + i) * fields + f].
std::vector<int64_t> allgather_int64(MPI_Comm comm, const std::vector<int64_t>& local);

// The smallest of the ranks' values (each rank's first failing item, or n for none).
int64_t allreduce_min(MPI_Comm comm, int64_t v);

// The XOR over the ranks of each tensor's checksum term (shard.h, placed CRCs).
void allreduce_xor(MPI_Comm comm, std::vector<uint32_t>& terms);

}  // namespace triad::io
