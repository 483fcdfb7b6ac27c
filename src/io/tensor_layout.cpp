// How a rank's tensors map onto a checkpoint's datasets (tensor_layout.h).
#include "tensor_layout.h"

#include <algorithm>
#include <set>

#include "hdf5_handle.h"
#include "triad/parallel/comm.h"

namespace triad::io {

hsize_t element_count(const std::vector<hsize_t>& dims) {
  hsize_t n = 1;
  for (hsize_t d : dims) n *= d;
  return n;
}

std::vector<hsize_t> to_dims(const std::vector<int64_t>& shape) {
  return std::vector<hsize_t>(shape.begin(), shape.end());
}

std::string dataset_path(const TensorGroup& g, const TensorRef& t) {
  return "/" + g.path + "/" + t.name;
}

void check_name(const std::string& name, const char* what) {
  TRIAD_CHECK(!name.empty(), "empty ", what, " name");
  size_t pos = 0;
  while (true) {
    const size_t next = name.find('/', pos);
    const std::string part =
        name.substr(pos, next == std::string::npos ? std::string::npos : next - pos);
    TRIAD_CHECK(!part.empty() && part != "." && part != "..", "invalid ", what, " name '", name,
                "'");
    if (next == std::string::npos) break;
    pos = next + 1;
  }
}

// ---- the local tensor of a rank ----------------------------------------------------------------

SplitKey split_key(const TensorRef& t) {
  if (t.split_axis < 0 || t.split_parts == 1) return {};
  return {t.split_axis, t.split_blocks, t.split_parts, t.split_part};
}

Shard make_shard(std::vector<hsize_t> dims, const SplitKey& k) {
  return Shard(std::move(dims), static_cast<int>(k.axis), static_cast<hsize_t>(k.blocks),
               static_cast<hsize_t>(k.parts), static_cast<hsize_t>(k.part));
}

Shard shard_of(const TensorRef& t) { return make_shard(to_dims(t.shape), split_key(t)); }

std::string split_string(const SplitKey& k) {
  return "part " + std::to_string(k.part) + " of " + std::to_string(k.parts) + " along axis " +
         std::to_string(k.axis) +
         (k.blocks > 1 ? " in each of " + std::to_string(k.blocks) + " blocks" : "");
}

// The range of its local tensor this rank holds of t (validated by validate_groups).
FlatRange held_range(const TensorRef& t, hsize_t local_numel) {
  if (t.end < 0) return {0, local_numel};
  return {static_cast<hsize_t>(t.begin), static_cast<hsize_t>(t.end)};
}

FlatRange held_range(const TensorRef& t) { return held_range(t, shard_of(t).local_numel()); }

namespace {

// The split fields of t (path p): a valid axis, blocks, parts and part, and a dimension that
// divides into blocks * parts.
void validate_split(const TensorRef& t, const std::string& p) {
  if (t.split_axis < 0) {
    TRIAD_CHECK(t.split_parts == 1 && t.split_part == 0, "tensor ", p, " has split_parts ",
                t.split_parts, " and split_part ", t.split_part, " but no split axis (split_axis ",
                t.split_axis, ")");
    return;
  }
  const int nd = static_cast<int>(t.shape.size());
  TRIAD_CHECK(t.split_axis < nd, "tensor ", p, " has split_axis ", t.split_axis, " but only ", nd,
              nd == 1 ? " dimension" : " dimensions");
  TRIAD_CHECK(t.split_blocks >= 1, "tensor ", p, " has split_blocks ", t.split_blocks,
              " (must be at least 1)");
  TRIAD_CHECK(t.split_parts >= 1, "tensor ", p, " has split_parts ", t.split_parts,
              " (must be at least 1)");
  TRIAD_CHECK(t.split_part >= 0 && t.split_part < t.split_parts, "tensor ", p, " has split_part ",
              t.split_part, " outside [0, ", t.split_parts, ")");
  const int64_t dim = t.shape[t.split_axis];
  TRIAD_CHECK(dim % t.split_blocks == 0 && (dim / t.split_blocks) % t.split_parts == 0, "tensor ",
              p, " cannot be split: dimension ", t.split_axis, " has size ", dim,
              ", not divisible by split_blocks * split_parts = ", t.split_blocks, " * ",
              t.split_parts);
}

}  // namespace

void validate_groups(const std::vector<TensorGroup>& groups) {
  std::set<std::string> group_paths;
  for (const TensorGroup& g : groups) {
    check_name(g.path, "group");
    TRIAD_CHECK(group_paths.insert(g.path).second, "group ", g.path, " is listed twice");
    std::set<std::string> names;
    for (const TensorRef& t : g.tensors) {
      check_name(t.name, "tensor");
      const std::string p = dataset_path(g, t);
      TRIAD_CHECK(names.insert(t.name).second, "tensor ", p, " is listed twice");
      TRIAD_CHECK(!t.shape.empty(), "tensor ", p, " has no dimensions");
      for (int64_t d : t.shape) TRIAD_CHECK(d >= 0, "tensor ", p, " has a negative dimension");
      validate_split(t, p);
      const SplitKey key = split_key(t);
      const int64_t numel = static_cast<int64_t>(element_count(to_dims(t.shape))) / key.parts;
      if (t.end < 0) {
        TRIAD_CHECK(t.begin == 0, "tensor ", p, " has begin ", t.begin,
                    " with end < 0 (the whole tensor)");
      } else {
        TRIAD_CHECK(t.begin >= 0 && t.begin <= t.end && t.end <= numel, "tensor ", p,
                    " has the range [", t.begin, ", ", t.end, ") outside [0, ", numel, "]",
                    key.parts > 1 ? " (the elements of its local " + split_string(key) + ")" : "");
      }
      TRIAD_CHECK(t.data != nullptr || held_range(t).empty(), "tensor ", p, " has no data buffer");
      TRIAD_CHECK(t.valid_rows >= -1 && t.valid_rows <= t.shape[0], "tensor ", p,
                  " has valid_rows ", t.valid_rows, " outside [-1, ", t.shape[0], "]");
    }
  }
}

// ---- moving elements between a dataset and host memory -----------------------------------------
//
// Every transfer moves the elements of a union of boxes of a dataset (a flat range of a rank's
// local tensor, Shard::boxes) to or from flat ranges of a host buffer. HDF5 visits a selection
// in row-major order, which is the local tensor's order (shard.h), so the selected elements map
// in order onto the buffer's ranges.

namespace {

// Selects in `space` the union of the boxes (disjoint), or nothing.
void select_boxes(hid_t space, const std::vector<Box>& boxes, const std::string& what) {
  if (boxes.empty()) {
    h5check(H5Sselect_none(space), what);
    return;
  }
  for (size_t i = 0; i < boxes.size(); ++i) {
    h5check(H5Sselect_hyperslab(space, i == 0 ? H5S_SELECT_SET : H5S_SELECT_OR,
                                boxes[i].start.data(), nullptr, boxes[i].count.data(), nullptr),
            what);
  }
}

}  // namespace

void transfer(hid_t dset, const std::vector<hsize_t>& file_dims, const std::vector<Box>& boxes,
              hsize_t mem_len, const std::vector<FlatRange>& mem, float* data, hid_t dxpl,
              Direction dir, const std::string& what) {
  // A dataset without elements has no storage (HDF5 fails on any transfer); every rank sees
  // the same shape, so all skip the call.
  if (element_count(file_dims) == 0) return;
  H5Id fspace = io::own_dataspace(H5Dget_space(dset), what);
  select_boxes(fspace, boxes, what);
  hsize_t n = 0;
  for (const FlatRange& r : mem) n += r.size();
  const hsize_t mem_dim = std::max<hsize_t>(mem_len, 1);
  H5Id mspace = io::own_dataspace(H5Screate_simple(1, &mem_dim, nullptr), what);
  if (n == 0) {
    h5check(H5Sselect_none(mspace), what);
  } else if (n != mem_len) {
    bool first = true;
    for (const FlatRange& r : mem) {
      if (r.empty()) continue;
      const hsize_t start = r.begin, count = r.size();
      h5check(H5Sselect_hyperslab(mspace, first ? H5S_SELECT_SET : H5S_SELECT_OR, &start, nullptr,
                                  &count, nullptr),
              what);
      first = false;
    }
  }
  TRIAD_ASSERT(H5Sget_select_npoints(fspace) == static_cast<hssize_t>(n));
  float dummy = 0;  // HDF5 wants a buffer even for an empty selection
  float* buf = n > 0 && data != nullptr ? data : &dummy;
  if (dir == Direction::kWrite) {
    h5check(H5Dwrite(dset, H5T_NATIVE_FLOAT, mspace, fspace, dxpl, buf), what);
  } else {
    h5check(H5Dread(dset, H5T_NATIVE_FLOAT, mspace, fspace, dxpl, buf), what);
  }
}

std::vector<Box> shard_boxes(const Shard& s, const std::vector<FlatRange>& ranges) {
  std::vector<Box> boxes;
  for (const FlatRange& r : ranges) s.boxes(r.begin, r.end, boxes);
  return boxes;
}

// ---- agreement on the tensor lists -------------------------------------------------------------

void check_same_tensor_count(MPI_Comm comm, size_t n) {
  int64_t lo = static_cast<int64_t>(n), hi = lo;
  MPI_Allreduce(MPI_IN_PLACE, &lo, 1, MPI_INT64_T, MPI_MIN, comm);
  MPI_Allreduce(MPI_IN_PLACE, &hi, 1, MPI_INT64_T, MPI_MAX, comm);
  TRIAD_CHECK(lo == hi, "the ranks pass different numbers of tensors (", lo, " to ", hi, ")");
}

std::vector<int64_t> allgather_int64(MPI_Comm comm, const std::vector<int64_t>& local) {
  const int size = size_of(comm);
  std::vector<int64_t> all(local.size() * static_cast<size_t>(size));
  if (!local.empty()) {
    MPI_Allgather(local.data(), static_cast<int>(local.size()), MPI_INT64_T, all.data(),
                  static_cast<int>(local.size()), MPI_INT64_T, comm);
  }
  return all;
}

int64_t allreduce_min(MPI_Comm comm, int64_t v) {
  MPI_Allreduce(MPI_IN_PLACE, &v, 1, MPI_INT64_T, MPI_MIN, comm);
  return v;
}

void allreduce_xor(MPI_Comm comm, std::vector<uint32_t>& terms) {
  if (terms.empty()) return;
  MPI_Allreduce(MPI_IN_PLACE, terms.data(), static_cast<int>(terms.size()), MPI_UINT32_T, MPI_BXOR,
                comm);
}

void append_pieces(const Shard& s, hsize_t b, hsize_t e, const float* data,
                   std::vector<CrcPiece>& out) {
  s.for_each_run(b, e, [&](hsize_t local, hsize_t full, hsize_t count) {
    out.push_back({data + (local - b), count, full + count});
  });
}

}  // namespace triad::io

namespace triad {

size_t held_elements(const TensorRef& t) { return size_t(io::held_range(t).size()); }

}  // namespace triad
