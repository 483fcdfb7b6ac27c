// Checkpoint files (DESIGN.md §5): save_checkpoint, read_checkpoint_state,
// load_checkpoint_tensors, checkpoint_has_group. The directory logic is in checkpoint_dir.cpp;
// the geometry of shards and the placed CRCs are in shard.h.
//
// Parallel structure: every HDF5 metadata operation (file create/open/close, groups,
// datasets, attributes) is made by all ranks of comm with identical arguments. Tensor data move
// as flat ranges of each rank's local tensor (TensorRef::begin/end of the full tensor or of a
// tensor-parallel shard, TensorRef::split_*); in the file a range is a union of a few
// hyperslab boxes (Shard::boxes). Saving: the ranks exchange their ranges and splits,
// plan_writes picks the writers (checking that they partition each tensor), each writer
// checksums its pieces at their positions in the full tensor and the XOR of all ranks' terms
// is the full tensor's CRC-32 (shard.h, "placed CRCs"); each tensor is written with one
// collective H5Dwrite. Loading: each rank reads its ranges with independent I/O (see
// read_dxpl), and plan_verification splits each tensor among the ranks for checksumming,
// preferring pieces a rank has read anyway; again the XOR of the ranks' terms is the CRC. After
// each phase the ranks agree on failure (collective.h), so an error on one rank makes all throw.
#include "triad/io/checkpoint.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <set>
#include <tuple>

#include "collective.h"
#include "hdf5_handle.h"
#include "shard.h"
#include "triad/kernels/moe_routing.h"
#include "triad/model/gpt_shape.h"

namespace triad {
namespace {

namespace fs = std::filesystem;
using io::Box;
using io::collective_phase;
using io::CrcPiece;
using io::FlatRange;
using io::h5check;
using io::H5Id;
using io::Shard;

static_assert(std::endian::native == std::endian::little,
              "checksums are defined over little-endian fp32 bytes");

constexpr const char* kFormat = "triad-checkpoint";
constexpr int64_t kFormatVersion = 1;

int comm_rank(MPI_Comm comm) {
  int rank = 0;
  MPI_Comm_rank(comm, &rank);
  return rank;
}

int comm_size(MPI_Comm comm) {
  int size = 1;
  MPI_Comm_size(comm, &size);
  return size;
}

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

// A relative HDF5 path: non-empty "/"-separated components, none of them "." or "..".
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

// ---- the local tensor of a rank
// -------------------------------------------------------------------

// A rank's split, normalized: no split (or one part) is axis -1, 1 block, 1 part, part 0.
struct SplitKey {
  int64_t axis = -1, blocks = 1, parts = 1, part = 0;
  bool same_family(const SplitKey& o) const {
    return axis == o.axis && blocks == o.blocks && parts == o.parts;
  }
  bool operator==(const SplitKey&) const = default;
};

SplitKey split_key(const TensorRef& t) {
  if (t.split_axis < 0 || t.split_parts == 1) return {};
  return {t.split_axis, t.split_blocks, t.split_parts, t.split_part};
}

// The local tensor of `dims` under split k.
Shard make_shard(std::vector<hsize_t> dims, const SplitKey& k) {
  return Shard(std::move(dims), static_cast<int>(k.axis), static_cast<hsize_t>(k.blocks),
               static_cast<hsize_t>(k.parts), static_cast<hsize_t>(k.part));
}

// The local tensor of t (validated by validate_groups).
Shard shard_of(const TensorRef& t) { return make_shard(to_dims(t.shape), split_key(t)); }

// "part 1 of 2 along axis 0"
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

// ---- selections ---------------------------------------------------------------------------------
//
// Every transfer moves the elements of a union of boxes of a dataset (a flat range of a rank's
// local tensor, Shard::boxes) to or from flat ranges of a host buffer. HDF5 visits a selection
// in row-major order, which is the local tensor's order (shard.h), so the selected elements map
// in order onto the buffer's ranges.

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

enum class Direction { kWrite, kRead };

// One H5Dwrite / H5Dread (collective or independent, as dxpl says) moving the elements of
// dataset dset selected by `boxes` to / from the elements `mem` (disjoint, increasing flat
// ranges within [0, mem_len)) of the fp32 buffer `data`. No boxes: this rank selects nothing but
// still joins a collective call.
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

// The boxes of the local ranges of a shard.
std::vector<Box> shard_boxes(const Shard& s, const std::vector<FlatRange>& ranges) {
  std::vector<Box> boxes;
  for (const FlatRange& r : ranges) s.boxes(r.begin, r.end, boxes);
  return boxes;
}

// ---- agreement on the tensor lists and on who writes / verifies what -------------------------

// Throws (on every rank: the values are the same everywhere) when the ranks pass different
// numbers of tensors; checked before any exchange whose size depends on that number.
void check_same_tensor_count(MPI_Comm comm, size_t n) {
  int64_t lo = static_cast<int64_t>(n), hi = lo;
  MPI_Allreduce(MPI_IN_PLACE, &lo, 1, MPI_INT64_T, MPI_MIN, comm);
  MPI_Allreduce(MPI_IN_PLACE, &hi, 1, MPI_INT64_T, MPI_MAX, comm);
  TRIAD_CHECK(lo == hi, "the ranks pass different numbers of tensors (", lo, " to ", hi, ")");
}

// Every rank's `fields` int64 values per tensor: result[(r * n + i) * fields + f].
std::vector<int64_t> allgather_int64(MPI_Comm comm, const std::vector<int64_t>& local) {
  const int size = comm_size(comm);
  std::vector<int64_t> all(local.size() * static_cast<size_t>(size));
  if (!local.empty()) {
    MPI_Allgather(local.data(), static_cast<int>(local.size()), MPI_INT64_T, all.data(),
                  static_cast<int>(local.size()), MPI_INT64_T, comm);
  }
  return all;
}

// The smallest of the ranks' values (each rank's first failing item, or n for none).
int64_t allreduce_min(MPI_Comm comm, int64_t v) {
  MPI_Allreduce(MPI_IN_PLACE, &v, 1, MPI_INT64_T, MPI_MIN, comm);
  return v;
}

// The XOR over the ranks of each tensor's checksum term (shard.h, placed CRCs).
void allreduce_xor(MPI_Comm comm, std::vector<uint32_t>& terms) {
  if (terms.empty()) return;
  MPI_Allreduce(MPI_IN_PLACE, terms.data(), static_cast<int>(terms.size()), MPI_UINT32_T, MPI_BXOR,
                comm);
}

// A hash of a shape, to check that the ranks agree on it.
int64_t shape_hash(const std::vector<int64_t>& shape) {
  uint64_t h = 1469598103934665603ull;
  for (int64_t d : shape) h = (h ^ static_cast<uint64_t>(d)) * 1099511628211ull;
  return static_cast<int64_t>(h ^ shape.size());
}

// ---- saving: who writes what
// ----------------------------------------------------------------------

// What each rank announces about each tensor before a save.
enum SaveField { kNumel, kShape, kAxis, kBlocks, kParts, kPart, kBegin, kEnd, kFlags, kSaveFields };
constexpr int64_t kFlagWrite = 1, kFlagWhole = 2;

// A rank writing the range `range` of its local tensor (split `key`).
struct Writer {
  int rank = 0;
  SplitKey key;
  FlatRange range;
};

// A range [begin, end) of a tensor (or of a part) written by `rank`.
struct WriteTile {
  int rank = 0;
  hsize_t begin = 0, end = 0;
};

// Checks that the tiles partition [0, total) of `what` ("tensor X", "part 1 of 2 ... of tensor
// X"), whose elements are called `unit`.
void check_tiling(std::vector<WriteTile> tiles, hsize_t total, const std::string& what,
                  const char* unit) {
  std::sort(tiles.begin(), tiles.end(),
            [](const WriteTile& a, const WriteTile& b) { return a.begin < b.begin; });
  hsize_t pos = 0;
  for (const WriteTile& t : tiles) {
    TRIAD_CHECK(t.begin == pos, "internal error: the ranges the ranks write of ", what,
                " do not partition it: ", t.begin < pos ? "overlap at " : "nothing written at ",
                unit, " ", std::min(t.begin, pos), " (rank ", t.rank, " writes [", t.begin, ", ",
                t.end, "))");
    pos = t.end;
  }
  TRIAD_CHECK(pos == total, "internal error: the ranges the ranks write of ", what,
              " do not partition it: nothing written from ", unit, " ", pos, " of ", total);
}

// The writers of each tensor from every rank's announcement: ranks with write = true and a
// non-empty range; of several ranks passing the same whole local tensor (end < 0, the same
// split and part) only the lowest. Checks that all ranks agree on the shape and that the
// writers' elements partition the tensor: when all writers split the tensor the same way, each
// part's local ranges must partition that part (plain ranges when nobody splits); writers with
// different splits are checked by their runs in the full tensor.
std::vector<std::vector<Writer>> plan_writes(const std::vector<int64_t>& all, int size,
                                             const std::vector<const TensorRef*>& tensors,
                                             const std::vector<std::string>& names) {
  const size_t n = names.size();
  std::vector<std::vector<Writer>> plan(n);
  for (size_t i = 0; i < n; ++i) {
    const int64_t* f0 = &all[i * kSaveFields];
    std::vector<SplitKey> whole_taken;
    std::vector<Writer>& writers = plan[i];
    for (int r = 0; r < size; ++r) {
      const int64_t* f = &all[(static_cast<size_t>(r) * n + i) * kSaveFields];
      TRIAD_CHECK(f[kNumel] == f0[kNumel], "tensor ", names[i], " has ", f0[kNumel],
                  " elements on rank 0 but ", f[kNumel], " on rank ", r,
                  " (the ranks must pass the same shapes)");
      TRIAD_CHECK(f[kShape] == f0[kShape], "tensor ", names[i], " has another shape on rank ", r,
                  " than on rank 0 (the ranks must pass the same shapes)");
      if (!(f[kFlags] & kFlagWrite) || f[kEnd] <= f[kBegin]) continue;
      const SplitKey key{f[kAxis], f[kBlocks], f[kParts], f[kPart]};
      if (f[kFlags] & kFlagWhole) {
        // A replica of the whole local tensor: the lowest rank writes.
        if (std::find(whole_taken.begin(), whole_taken.end(), key) != whole_taken.end()) continue;
        whole_taken.push_back(key);
      }
      writers.push_back({r, key, {static_cast<hsize_t>(f[kBegin]), static_cast<hsize_t>(f[kEnd])}});
    }

    const std::vector<hsize_t> dims = to_dims(tensors[i]->shape);
    const hsize_t numel = element_count(dims);
    const bool same = std::all_of(writers.begin(), writers.end(), [&](const Writer& w) {
      return w.key.same_family(writers.front().key);
    });
    std::vector<WriteTile> tiles;
    if (writers.empty() || (same && writers.front().key.parts == 1)) {
      for (const Writer& w : writers) tiles.push_back({w.rank, w.range.begin, w.range.end});
      check_tiling(tiles, numel, "tensor " + names[i], "element");
    } else if (same) {
      for (int64_t q = 0; q < writers.front().key.parts; ++q) {
        SplitKey key = writers.front().key;
        key.part = q;
        tiles.clear();
        for (const Writer& w : writers) {
          if (w.key.part == q) tiles.push_back({w.rank, w.range.begin, w.range.end});
        }
        check_tiling(tiles, make_shard(dims, key).local_numel(),
                     split_string(key) + " of tensor " + names[i], "local element");
      }
    } else {
      for (const Writer& w : writers) {
        make_shard(dims, w.key)
            .for_each_run(w.range.begin, w.range.end, [&](hsize_t, hsize_t full, hsize_t count) {
              tiles.push_back({w.rank, full, full + count});
            });
      }
      check_tiling(tiles, numel, "tensor " + names[i] + " (split differently on different ranks)",
                   "element");
    }
  }
  return plan;
}

// ---- loading: who verifies what
// -------------------------------------------------------------------

// What each rank announces about each tensor before a load: its split (SplitKey), the first
// dimension of its model shape, the range of its local tensor it asks for, and the number of
// full rows it loads from the file (valid_rows, or all).
enum LoadField {
  kLAxis,
  kLBlocks,
  kLParts,
  kLPart,
  kLRows0,
  kLBegin,
  kLEnd,
  kLLoaded,
  kLoadFields
};

// A piece [begin, end) of a part's local tensor checksummed by `rank` on load; extra: read once
// more for that, because the rank has not read it.
struct VerifyTile {
  int rank = 0;
  hsize_t begin = 0, end = 0;
  bool extra = false;
};

// A reader of a part: a rank and the range of the part's local tensor it reads.
struct Reader {
  int rank = 0;
  FlatRange range;
};

// Who checksums which piece of the elements `domain` of a part's local tensor of nl elements,
// given the readers of that part (in rank order; every reader reads domain ∩ its range). The
// part is split evenly among its readers (among all `size` ranks when it has none); a piece of
// reader k's share that k reads is checksummed by k, else by the least loaded reader that reads
// it, else (nobody reads it) by k after a second read (extra). Deterministic: every rank
// computes the same tiles from the same inputs.
std::vector<VerifyTile> plan_verification(hsize_t nl, FlatRange domain,
                                          const std::vector<Reader>& readers, int size) {
  std::vector<int> owners;
  for (const Reader& r : readers) owners.push_back(r.rank);
  if (owners.empty()) {
    for (int r = 0; r < size; ++r) owners.push_back(r);
  }
  const hsize_t m = owners.size();
  auto split = [&](hsize_t j) { return j * nl / m; };
  std::vector<hsize_t> cuts = {0, nl, domain.begin, domain.end};
  for (hsize_t j = 1; j < m; ++j) cuts.push_back(split(j));
  for (const Reader& r : readers) {
    cuts.push_back(std::min(r.range.begin, nl));
    cuts.push_back(std::min(r.range.end, nl));
  }
  std::sort(cuts.begin(), cuts.end());
  cuts.erase(std::unique(cuts.begin(), cuts.end()), cuts.end());
  std::vector<hsize_t> load(readers.size(), 0);
  std::vector<VerifyTile> tiles;
  hsize_t j = 0;  // the owner whose even share holds the current piece
  for (size_t c = 0; c + 1 < cuts.size(); ++c) {
    const hsize_t x = cuts[c], y = cuts[c + 1];
    if (x < domain.begin || y > domain.end) continue;
    while (j + 1 < m && split(j + 1) <= x) ++j;
    auto covers = [&](size_t k) {
      return readers[k].range.begin <= x && y <= readers[k].range.end;
    };
    int who = -1;  // index into readers
    if (!readers.empty() && covers(j)) {
      who = static_cast<int>(j);
    } else {
      for (size_t k = 0; k < readers.size(); ++k) {
        if (covers(k) && (who < 0 || load[k] < load[who])) who = static_cast<int>(k);
      }
    }
    const bool extra = who < 0;
    const int rank = extra ? owners[j] : readers[who].rank;
    if (!extra) load[who] += y - x;
    if (!tiles.empty() && tiles.back().rank == rank && tiles.back().extra == extra &&
        tiles.back().end == x) {
      tiles.back().end = y;
    } else {
      tiles.push_back({rank, x, y, extra});
    }
  }
  return tiles;
}

// Writes: collective MPI-IO (the ranks write disjoint ranges; aggregation helps parallel file
// systems).
H5Id collective_dxpl() {
  H5Id dxpl = io::make_plist(H5P_DATASET_XFER);
  h5check(H5Pset_dxpl_mpio(dxpl, H5FD_MPIO_COLLECTIVE), "cannot select collective transfers");
  return dxpl;
}

// Reads: independent MPI-IO; each rank reads its own ranges, when it likes (a rank with nothing
// to read of a dataset makes no call), and the ranks agree on errors once after all reads.
// Collective reads are also wrong here: the ranges of different ranks overlap on load (full
// parameters on every rank next to sliced optimizer state), and Open MPI 4.1's OMPIO returns
// wrong data for collective reads of such overlapping, differently shaped selections (its read
// data sieving, open-mpi/ompi#10546, fixed in 4.1.5; Debian 12 ships 4.1.4): the test
// MpiCheckpoint.OverlappingRandomRanges reads zeros there. Independent reads of contiguous
// ranges avoid the aggregation layer altogether and are as fast for large blocks.
H5Id read_dxpl() {
  H5Id dxpl = io::make_plist(H5P_DATASET_XFER);
  h5check(H5Pset_dxpl_mpio(dxpl, H5FD_MPIO_INDEPENDENT), "cannot select independent transfers");
  return dxpl;
}

// Opens group `path` below the root, creating it (and missing parents) if needed.
H5Id open_or_create_group(hid_t file, const std::string& path, hid_t lcpl) {
  const std::string what = "cannot create group /" + path;
  if (io::path_exists(file, path)) {
    return io::own_group(H5Gopen2(file, path.c_str(), H5P_DEFAULT), what);
  }
  return io::own_group(H5Gcreate2(file, path.c_str(), lcpl, H5P_DEFAULT, H5P_DEFAULT), what);
}

// The space a checkpoint file will take, held from before HDF5 creates the file until the file
// has it (Reservation::hand_to_file): with fallocate(2), first in a file of its own (`file` +
// ".reserve"), then in the file itself, without changing its size. A full disk (or a quota, or
// a file-size limit) fails before HDF5 writes anything: HDF5 1.10 cannot close a file whose
// metadata it fails to write (H5Fclose fails and leaves a dangling identifier that crashes the
// library at exit), and parallel HDF5 writes the metadata from rank 0 alone, so that a flush
// failing there while the other ranks wait in the file's collective sync hangs them all (a disk
// that another job fills during a save). Only the instant between the two allocations is open
// to a concurrent writer. File systems without fallocate skip both (best effort).
class Reservation {
 public:
  Reservation() = default;
  Reservation(const Reservation&) = delete;
  Reservation& operator=(const Reservation&) = delete;
  ~Reservation() { release(); }

  void hold(const std::string& file, uint64_t bytes) {
    file_ = file;
    bytes_ = bytes;
#ifdef __linux__
    ballast_ = file + ".reserve";
    const int fd = ::open(ballast_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    TRIAD_CHECK(fd >= 0, "cannot create ", ballast_, ": ", std::strerror(errno));
    const int err = allocate(fd, 0);
    ::close(fd);
    if (err != 0) release();
    check(err);
#endif
  }

  // The space into the file HDF5 created (its size stays HDF5's).
  void hand_to_file() {
#ifdef __linux__
    if (ballast_.empty()) return;
    release();
    const int fd = ::open(file_.c_str(), O_WRONLY | O_CLOEXEC);
    TRIAD_CHECK(fd >= 0, "cannot open ", file_, ": ", std::strerror(errno));
    const int err = allocate(fd, FALLOC_FL_KEEP_SIZE);
    ::close(fd);
    check(err);
#endif
  }

  void release() {
    if (ballast_.empty()) return;
    ::unlink(ballast_.c_str());
    ballast_.clear();
  }

 private:
  // errno of fallocate (0: done, or the file system does not allocate ahead).
  int allocate(int fd, int mode) const {
    if (bytes_ == 0 || ::fallocate(fd, mode, 0, static_cast<off_t>(bytes_)) == 0) return 0;
    const int err = errno;
    return err == EOPNOTSUPP || err == ENOSYS || err == EINVAL ? 0 : err;
  }
  void check(int err) const {
    TRIAD_CHECK(err == 0, "not enough space for the checkpoint (", bytes_, " bytes) at ", file_,
                ": ", std::strerror(err));
  }

  std::string file_, ballast_;
  uint64_t bytes_ = 0;
};

// An upper bound of the file size: the data plus generous room for the metadata.
uint64_t estimated_file_bytes(const CheckpointState& state,
                              const std::vector<TensorGroup>& groups) {
  uint64_t bytes = (1u << 20) + 2 * (state.config.size() + state.grid.size());
  for (const TensorGroup& g : groups) {
    for (const TensorRef& t : g.tensors) {
      bytes += element_count(to_dims(t.shape)) * sizeof(float) + 4096;
    }
  }
  return bytes;
}

// ---- reading ----------------------------------------------------------------------------------

// Opens path read-only with the MPI-IO driver (collective). Checks first, on every rank, that
// the file exists and is an HDF5 file.
H5Id open_checkpoint(MPI_Comm comm, const std::string& path) {
  collective_phase(comm, [&] {
    std::error_code ec;
    const fs::file_status st = fs::status(path, ec);
    TRIAD_CHECK(fs::exists(st), "file does not exist");
    TRIAD_CHECK(fs::is_regular_file(st), "not a regular file");
    const htri_t is_hdf5 = H5Fis_hdf5(path.c_str());
    TRIAD_CHECK(is_hdf5 >= 0, "cannot read the file",
                io::hdf5_error_detail().empty() ? "" : " (HDF5: " + io::hdf5_error_detail() + ")");
    TRIAD_CHECK(is_hdf5 > 0, "not an HDF5 file");
  });
  H5Id fapl;
  collective_phase(comm, [&] { fapl = io::make_fapl(comm, /*for_create=*/false); });
  H5Id file;
  collective_phase(comm, [&] {
    file = io::own_file(H5Fopen(path.c_str(), H5F_ACC_RDONLY, fapl),
                        "cannot open the HDF5 file (truncated or damaged?)");
  });
  return file;
}

int64_t require_int64(hid_t loc, const std::string& where, const std::string& name) {
  const std::optional<int64_t> v = io::read_int64_attr(loc, name);
  TRIAD_CHECK(v.has_value(), "attribute ", name, " of ", where, " is missing");
  return *v;
}

// Validates the root and /model attributes and returns them.
CheckpointState read_state(hid_t file) {
  const std::optional<std::string> format = io::read_string_attr(file, "format");
  TRIAD_CHECK(format.has_value(), "not a triad checkpoint (no 'format' attribute)");
  TRIAD_CHECK(*format == kFormat, "not a triad checkpoint (format is '", *format, "', expected '",
              kFormat, "')");
  const std::optional<int64_t> version = io::read_int64_attr(file, "format_version");
  TRIAD_CHECK(version.has_value(), "attribute format_version is missing");
  TRIAD_CHECK(*version == kFormatVersion, "unsupported format_version ", *version,
              " (this build reads version ", kFormatVersion, ")");
  const std::optional<int64_t> complete = io::read_int64_attr(file, "complete");
  TRIAD_CHECK(
      complete.has_value() && *complete == 1, "incomplete checkpoint (attribute complete is ",
      complete ? std::to_string(*complete) : std::string("missing"), "; the save did not finish)");

  CheckpointState s;
  s.step = require_int64(file, "/", "step");
  s.tokens_seen = require_int64(file, "/", "tokens_seen");
  s.next_sequence = require_int64(file, "/", "next_sequence");
  s.epoch = require_int64(file, "/", "epoch");
  TRIAD_CHECK(s.step >= 0 && s.tokens_seen >= 0 && s.next_sequence >= 0 && s.epoch >= 0,
              "attributes step, tokens_seen, next_sequence and epoch of / must be >= 0 (they are ",
              s.step, ", ", s.tokens_seen, ", ", s.next_sequence, ", ", s.epoch, ")");
  const std::optional<std::string> config = io::read_string_attr(file, "config");
  TRIAD_CHECK(config.has_value(), "attribute config of / is missing");
  s.config = *config;
  s.grid = io::read_string_attr(file, "grid").value_or("");
  s.loss_window = io::read_doubles_attr(file, "loss_window").value_or(std::vector<double>{});
  s.norm_window = io::read_doubles_attr(file, "grad_norm_window").value_or(std::vector<double>{});
  s.skipped_in_a_row = io::read_int64_attr(file, "skipped_in_a_row").value_or(0);

  TRIAD_CHECK(io::link_exists(file, "model"), "group /model is missing");
  H5Id model = io::own_group(H5Gopen2(file, "model", H5P_DEFAULT), "cannot open group /model");
  s.model.n_layer = require_int64(model, "/model", "n_layer");
  s.model.n_head = require_int64(model, "/model", "n_head");
  s.model.n_embd = require_int64(model, "/model", "n_embd");
  s.model.seq_len = require_int64(model, "/model", "seq_len");
  s.model.vocab_size = require_int64(model, "/model", "vocab_size");
  s.model.padded_vocab_size = require_int64(model, "/model", "padded_vocab_size");
  // A config's bounds (gpt_shape.h): a file is read without a config where triad-generate
  // samples from it, and its counts size every allocation.
  for (auto [name, v, most] : {std::tuple{"n_layer", s.model.n_layer, kMaxLayers},
                               std::tuple{"n_head", s.model.n_head, kMaxHeads},
                               std::tuple{"n_embd", s.model.n_embd, kMaxWidth},
                               std::tuple{"seq_len", s.model.seq_len, kMaxSeqLen},
                               std::tuple{"vocab_size", s.model.vocab_size, kMaxVocab}})
    TRIAD_CHECK(v >= 1 && v <= most, "attribute ", name, " of /model is ", v, ", not in [1, ", most,
                "]");
  // vocab_size rounded up for the saving run's grid (DESIGN.md §3: to a multiple of 128·tp; a
  // reader pads for its own grid, so only the order and the range are checked).
  TRIAD_CHECK(s.model.padded_vocab_size >= s.model.vocab_size &&
                  s.model.padded_vocab_size - s.model.vocab_size <= (int64_t(1) << 23),
              "attribute padded_vocab_size of /model is ", s.model.padded_vocab_size,
              ", not vocab_size (", s.model.vocab_size, ") rounded up for a grid");
  s.model.position = io::read_string_attr(model, "position").value_or("learned");
  TRIAD_CHECK(s.model.position == "learned" || s.model.position == "rope",
              "attribute position of /model is '", s.model.position, "', not learned or rope");
  if (s.model.position == "rope") {
    const std::optional<double> theta = io::read_double_attr(model, "rope_theta");
    TRIAD_CHECK(theta.has_value() && std::isfinite(*theta) && *theta > 1,
                "attribute rope_theta of /model is ",
                theta ? "not a finite number > 1" : "missing (position is rope)");
    s.model.rope_theta = *theta;
    s.model.rope_scaling = io::read_string_attr(model, "rope_scaling").value_or("none");
    TRIAD_CHECK(s.model.rope_scaling == "none" || s.model.rope_scaling == "llama3" ||
                    s.model.rope_scaling == "yarn" || s.model.rope_scaling == "longrope",
                "attribute rope_scaling of /model is '", s.model.rope_scaling,
                "', not none, llama3, yarn or longrope");
    // A scaling's numbers: finite doubles > 0, and the original context.
    auto positive = [&](const char* name) {
      const std::optional<double> v = io::read_double_attr(model, name);
      TRIAD_CHECK(v.has_value() && std::isfinite(*v) && *v > 0, "attribute ", name,
                  " of /model is ",
                  v ? std::string("not a finite number > 0")
                    : "missing (rope_scaling is " + s.model.rope_scaling + ")");
      return *v;
    };
    if (s.model.rope_scaling != "none") {
      s.model.rope_scaling_factor = positive("rope_scaling_factor");
      s.model.rope_original_positions = require_int64(model, "/model", "rope_original_positions");
    }
    if (s.model.rope_scaling == "yarn") {
      s.model.rope_yarn_beta_fast = positive("rope_yarn_beta_fast");
      s.model.rope_yarn_beta_slow = positive("rope_yarn_beta_slow");
      TRIAD_CHECK(s.model.rope_original_positions >= 1 &&
                      s.model.rope_yarn_beta_fast > s.model.rope_yarn_beta_slow,
                  "attributes rope_original_positions and rope_yarn_beta_* of /model are "
                  "inconsistent (need >= 1 positions and fast > slow)");
      // DeepSeek's form (absent: Qwen's, which files from before these attributes hold).
      s.model.rope_yarn_mscale = io::read_double_attr(model, "rope_yarn_mscale").value_or(1.0);
      s.model.rope_yarn_mscale_all_dim =
          io::read_double_attr(model, "rope_yarn_mscale_all_dim").value_or(0.0);
      TRIAD_CHECK(
          std::isfinite(s.model.rope_yarn_mscale) && s.model.rope_yarn_mscale >= 0 &&
              s.model.rope_yarn_mscale <= 100 && std::isfinite(s.model.rope_yarn_mscale_all_dim) &&
              s.model.rope_yarn_mscale_all_dim >= 0 && s.model.rope_yarn_mscale_all_dim <= 100,
          "attributes rope_yarn_mscale (", s.model.rope_yarn_mscale,
          ") and rope_yarn_mscale_all_dim (", s.model.rope_yarn_mscale_all_dim,
          ") of /model are not both in [0, 100]");
    }
    if (s.model.rope_scaling == "longrope") {
      // One divisor per rotated pair in each list (checked below, with the head's width).
      auto divisors = [&](const char* name) {
        const std::optional<std::vector<double>> v = io::read_doubles_attr(model, name);
        TRIAD_CHECK(v.has_value() && !v->empty() &&
                        std::all_of(v->begin(), v->end(),
                                    [](double x) { return std::isfinite(x) && x > 0; }),
                    "attribute ", name, " of /model is ",
                    v ? "not a list of finite numbers > 0" : "missing (rope_scaling is longrope)");
        return *v;
      };
      s.model.rope_short_factor = divisors("rope_short_factor");
      s.model.rope_long_factor = divisors("rope_long_factor");
      // (The attention scale divides by ln L: a stretched context needs L >= 2.)
      TRIAD_CHECK(s.model.rope_original_positions >= 1 && s.model.rope_scaling_factor >= 1 &&
                      (s.model.rope_scaling_factor == 1 || s.model.rope_original_positions >= 2),
                  "attributes rope_* of /model are inconsistent (need >= 1 original positions, "
                  ">= 2 with a scaling factor > 1, and a scaling factor >= 1)");
    }
    if (s.model.rope_scaling == "llama3") {
      s.model.rope_low_freq_factor = positive("rope_low_freq_factor");
      s.model.rope_high_freq_factor = positive("rope_high_freq_factor");
      TRIAD_CHECK(s.model.rope_original_positions >= 1 &&
                      s.model.rope_high_freq_factor > s.model.rope_low_freq_factor,
                  "attributes rope_original_positions and rope_*_freq_factor of /model are "
                  "inconsistent (need >= 1 positions and high > low)");
    }
  }
  s.model.norm = io::read_string_attr(model, "norm").value_or("layernorm");
  TRIAD_CHECK(s.model.norm == "layernorm" || s.model.norm == "rmsnorm",
              "attribute norm of /model is '", s.model.norm, "', not layernorm or rmsnorm");
  // The model's 0/1 switches, GPT-2's setting where absent (1, or `absent`).
  auto flag = [&](const char* name, int64_t absent = 1) {
    const int64_t v = io::read_int64_attr(model, name).value_or(absent);
    TRIAD_CHECK(v == 0 || v == 1, "attribute ", name, " of /model is ", v, ", not 0 or 1");
    return v == 1;
  };
  s.model.bias = flag("bias");
  s.model.tied = flag("tie_embeddings");
  s.model.qk_norm = flag("qk_norm", 0);
  s.model.qk_norm_full = flag("qk_norm_full", 0);
  TRIAD_CHECK(s.model.qk_norm || !s.model.qk_norm_full,
              "attribute qk_norm_full of /model is 1 without qk_norm");
  s.model.qkv_bias = flag("qkv_bias", 0);
  TRIAD_CHECK(!(s.model.qkv_bias && s.model.bias),
              "attributes bias and qkv_bias of /model are both 1 (qkv_bias goes with bias 0)");
  s.model.mlp_bias = flag("mlp_bias", 0);
  TRIAD_CHECK(!(s.model.mlp_bias && s.model.bias),
              "attributes bias and mlp_bias of /model are both 1 (mlp_bias goes with bias 0)");
  s.model.norm_bias = flag("norm_bias", 0);
  s.model.norm_weight = flag("norm_weight", 1);
  s.model.parallel_residual = flag("parallel_residual", 0);
  s.model.branch_norm = flag("branch_norm", 0);
  s.model.pre_norm = flag("pre_norm", 1);
  TRIAD_CHECK(s.model.pre_norm || s.model.branch_norm,
              "attribute pre_norm of /model is 0 without branch_norm (no norm in the blocks)");
  s.model.shared_norm = flag("shared_norm", 0);
  s.model.head_bias = flag("head_bias", 0);
  TRIAD_CHECK(!s.model.head_bias || !s.model.tied,
              "attribute head_bias of /model is 1 with a tied head (tie_embeddings 1)");
  TRIAD_CHECK(!s.model.shared_norm || s.model.parallel_residual,
              "attribute shared_norm of /model is 1 without parallel_residual (one norm serves "
              "parallel branches only)");
  TRIAD_CHECK(!(s.model.norm_bias && s.model.bias),
              "attributes bias and norm_bias of /model are both 1 (norm_bias goes with bias 0)");
  TRIAD_CHECK(!(s.model.norm_bias && s.model.norm == "rmsnorm"),
              "attribute norm_bias of /model is 1 with norm rmsnorm (an RMSNorm has no bias)");
  s.model.norm_eps = io::read_double_attr(model, "norm_eps").value_or(1e-5);
  s.model.head_dim = io::read_int64_attr(model, "head_dim").value_or(0);
  s.model.kv_lora_rank = io::read_int64_attr(model, "kv_lora_rank").value_or(0);
  s.model.q_lora_rank = io::read_int64_attr(model, "q_lora_rank").value_or(0);
  s.model.qk_nope_head_dim = io::read_int64_attr(model, "qk_nope_head_dim").value_or(0);
  s.model.qk_rope_head_dim = io::read_int64_attr(model, "qk_rope_head_dim").value_or(0);
  s.model.v_head_dim = io::read_int64_attr(model, "v_head_dim").value_or(0);
  TRIAD_CHECK(
      s.model.kv_lora_rank >= 0 && s.model.q_lora_rank >= 0 && s.model.qk_nope_head_dim >= 0 &&
          s.model.qk_rope_head_dim >= 0 && s.model.v_head_dim >= 0 &&
          (s.model.kv_lora_rank > 0 || s.model.q_lora_rank + s.model.qk_nope_head_dim +
                                               s.model.qk_rope_head_dim + s.model.v_head_dim ==
                                           0) &&
          (s.model.kv_lora_rank == 0 || (s.model.qk_rope_head_dim > 0 && s.model.v_head_dim > 0)),
      "attributes kv_lora_rank, q_lora_rank, qk_nope_head_dim, qk_rope_head_dim and "
      "v_head_dim of /model do not describe a multi-head latent attention (",
      s.model.kv_lora_rank, ", ", s.model.q_lora_rank, ", ", s.model.qk_nope_head_dim, ", ",
      s.model.qk_rope_head_dim, ", ", s.model.v_head_dim, ")");
  s.model.rotary_dim = io::read_int64_attr(model, "rotary_dim").value_or(0);
  {
    const int64_t hd = s.model.head_dim > 0 ? s.model.head_dim
                                            : s.model.n_embd / std::max<int64_t>(1, s.model.n_head);
    TRIAD_CHECK(s.model.rotary_dim >= 0 && s.model.rotary_dim % 2 == 0 &&
                    s.model.rotary_dim <= hd &&
                    (s.model.rotary_dim == 0 || s.model.position == "rope"),
                "attribute rotary_dim of /model is ", s.model.rotary_dim,
                ", not an even count in [0, ", hd, "] (the head's width; > 0 only with rope)");
    const size_t pairs = size_t(s.model.rotary_dim > 0 ? s.model.rotary_dim : hd) / 2;
    TRIAD_CHECK(s.model.rope_scaling != "longrope" || (s.model.rope_short_factor.size() == pairs &&
                                                       s.model.rope_long_factor.size() == pairs),
                "attributes rope_short_factor and rope_long_factor of /model hold ",
                s.model.rope_short_factor.size(), " and ", s.model.rope_long_factor.size(),
                " factors, not one per rotated pair (", pairs, ")");
  }
  s.model.sliding_window = io::read_int64_attr(model, "sliding_window").value_or(0);
  TRIAD_CHECK(s.model.sliding_window >= 0 && s.model.sliding_window <= (int64_t(1) << 30),
              "attribute sliding_window of /model is ", s.model.sliding_window,
              ", not in [0, 2^30]");
  s.model.full_attention_every = io::read_int64_attr(model, "full_attention_every").value_or(0);
  TRIAD_CHECK(s.model.full_attention_every >= 0 &&
                  (s.model.full_attention_every == 0 || s.model.sliding_window > 0),
              "attribute full_attention_every of /model is ", s.model.full_attention_every,
              ", not >= 0 (and > 0 only with sliding_window)");
  s.model.attn_scale = io::read_double_attr(model, "attn_scale").value_or(0.0);
  TRIAD_CHECK(
      std::isfinite(s.model.attn_scale) && s.model.attn_scale >= 0 && s.model.attn_scale <= 100,
      "attribute attn_scale of /model is ", s.model.attn_scale, ", not in [0, 100]");
  s.model.mup_base_width = io::read_int64_attr(model, "mup_base_width").value_or(0);
  TRIAD_CHECK(s.model.mup_base_width >= 0 && s.model.mup_base_width <= (int64_t(1) << 20),
              "attribute mup_base_width of /model is ", s.model.mup_base_width,
              ", not in [0, 2^20]");
  s.model.moe_experts = io::read_int64_attr(model, "moe_experts").value_or(0);
  TRIAD_CHECK(s.model.moe_experts >= 0 && s.model.moe_experts <= 256,
              "attribute moe_experts of /model is ", s.model.moe_experts, ", not in [0, 256]");
  if (s.model.moe_experts > 0) {
    s.model.moe_top_k = io::read_int64_attr(model, "moe_top_k").value_or(0);
    TRIAD_CHECK(s.model.moe_top_k >= 1 && s.model.moe_top_k <= s.model.moe_experts,
                "attribute moe_top_k of /model is ", s.model.moe_top_k, ", not in [1, ",
                s.model.moe_experts, "] (moe_experts)");
    s.model.moe_normalize = flag("moe_normalize");
    s.model.moe_score = io::read_string_attr(model, "moe_score").value_or("softmax");
    TRIAD_CHECK(s.model.moe_score == "softmax" || s.model.moe_score == "sigmoid",
                "attribute moe_score of /model is \"", s.model.moe_score,
                "\", not softmax or sigmoid");
    s.model.moe_routed_scale = io::read_double_attr(model, "moe_routed_scale").value_or(1.0);
    TRIAD_CHECK(routed_scale_valid(s.model.moe_routed_scale),
                "attribute moe_routed_scale of /model is ", s.model.moe_routed_scale,
                ", not in (0, 1e6]");
    s.model.moe_groups = io::read_int64_attr(model, "moe_groups").value_or(1);
    s.model.moe_group_top_k = io::read_int64_attr(model, "moe_group_top_k").value_or(1);
    {
      const int64_t E = s.model.moe_experts, G = s.model.moe_groups, M = s.model.moe_group_top_k;
      TRIAD_CHECK(group_settings_valid(E, G, M, s.model.moe_top_k), "attributes moe_groups (", G,
                  ") and moe_group_top_k (", M, ") of /model do not suit its ", E,
                  " experts and top ", s.model.moe_top_k);
    }
    s.model.moe_group_score = io::read_string_attr(model, "moe_group_score").value_or("top2");
    TRIAD_CHECK((s.model.moe_group_score == "top2" || s.model.moe_group_score == "max") &&
                    (s.model.moe_group_score == "top2" || s.model.moe_groups > 1),
                "attribute moe_group_score of /model is \"", s.model.moe_group_score,
                "\", not top2, or max with groups (moe_groups)");
    s.model.moe_shared_hidden = io::read_int64_attr(model, "moe_shared_hidden").value_or(0);
    s.model.moe_shared_gate = flag("moe_shared_gate", 0);
    TRIAD_CHECK(!s.model.moe_shared_gate || s.model.moe_shared_hidden > 0,
                "attribute moe_shared_gate of /model is 1 without shared experts "
                "(moe_shared_hidden)");
    TRIAD_CHECK(s.model.moe_shared_hidden >= 0 && s.model.moe_shared_hidden <= (int64_t(1) << 30),
                "attribute moe_shared_hidden of /model is ", s.model.moe_shared_hidden,
                ", not in [0, 2^30]");
    s.model.moe_first_dense = io::read_int64_attr(model, "moe_first_dense").value_or(0);
    s.model.moe_every = io::read_int64_attr(model, "moe_every").value_or(1);
    TRIAD_CHECK(s.model.moe_first_dense >= 0 && s.model.moe_every >= 1 &&
                    s.model.moe_first_dense + s.model.moe_every <= s.model.n_layer,
                "attributes moe_first_dense (", s.model.moe_first_dense, ") and moe_every (",
                s.model.moe_every, ") of /model leave no layer with experts among ",
                s.model.n_layer);
    s.model.moe_dense_hidden = io::read_int64_attr(model, "moe_dense_hidden").value_or(0);
    TRIAD_CHECK(s.model.moe_dense_hidden >= 0 && s.model.moe_dense_hidden <= (int64_t(1) << 30),
                "attribute moe_dense_hidden of /model is ", s.model.moe_dense_hidden,
                ", not in [0, 2^30]");
  }
  s.model.logit_softcap = io::read_double_attr(model, "logit_softcap").value_or(0.0);
  TRIAD_CHECK(std::isfinite(s.model.logit_softcap) && s.model.logit_softcap >= 0 &&
                  s.model.logit_softcap <= 1e4,
              "attribute logit_softcap of /model is ", s.model.logit_softcap, ", not in [0, 1e4]");
  for (auto [name, v] : {std::pair{"logit_scale", &s.model.logit_scale},
                         std::pair{"residual_scale", &s.model.residual_scale}}) {
    *v = io::read_double_attr(model, name).value_or(1.0);
    TRIAD_CHECK(std::isfinite(*v) && *v > 0 && *v <= 1e4, "attribute ", name, " of /model is ", *v,
                ", not in (0, 1e4]");
  }
  s.model.attn_softcap = io::read_double_attr(model, "attn_softcap").value_or(0.0);
  TRIAD_CHECK(std::isfinite(s.model.attn_softcap) && s.model.attn_softcap >= 0 &&
                  s.model.attn_softcap <= 1e4,
              "attribute attn_softcap of /model is ", s.model.attn_softcap, ", not in [0, 1e4]");
  s.model.clip_qkv = io::read_double_attr(model, "clip_qkv").value_or(0.0);
  TRIAD_CHECK(std::isfinite(s.model.clip_qkv) && s.model.clip_qkv >= 0 && s.model.clip_qkv <= 1e4,
              "attribute clip_qkv of /model is ", s.model.clip_qkv, ", not in [0, 1e4]");
  s.model.embed_scale = io::read_double_attr(model, "embed_scale").value_or(1.0);
  TRIAD_CHECK(
      std::isfinite(s.model.embed_scale) && s.model.embed_scale > 0 && s.model.embed_scale <= 1e4,
      "attribute embed_scale of /model is ", s.model.embed_scale, ", not in (0, 1e4]");
  TRIAD_CHECK(
      s.model.head_dim >= 0 && s.model.head_dim <= 4096 &&
          (s.model.head_dim > 0 || s.model.n_embd % std::max<int64_t>(1, s.model.n_head) == 0),
      "attribute head_dim of /model is ", s.model.head_dim,
      ", not in [0, 4096] (0 needs n_head to divide n_embd)");
  TRIAD_CHECK(std::isfinite(s.model.norm_eps) && s.model.norm_eps > 0 && s.model.norm_eps <= 0.1,
              "attribute norm_eps of /model is ", s.model.norm_eps, ", not in (0, 0.1]");
  s.model.mlp = io::read_string_attr(model, "mlp").value_or("gelu");
  TRIAD_CHECK(s.model.mlp == "gelu" || s.model.mlp == "gelu_exact" || s.model.mlp == "swiglu" ||
                  s.model.mlp == "geglu" || s.model.mlp == "relu2" || s.model.mlp == "relu",
              "attribute mlp of /model is '", s.model.mlp,
              "', not gelu, gelu_exact, swiglu, geglu, relu2 or relu");
  s.model.mlp_hidden = io::read_int64_attr(model, "mlp_hidden").value_or(4 * s.model.n_embd);
  TRIAD_CHECK(s.model.mlp_hidden >= 1, "attribute mlp_hidden of /model is ", s.model.mlp_hidden,
              ", not a positive count");
  s.model.n_kv_head = io::read_int64_attr(model, "n_kv_head").value_or(s.model.n_head);
  TRIAD_CHECK(s.model.n_kv_head >= 1 && s.model.n_head % s.model.n_kv_head == 0,
              "attribute n_kv_head of /model is ", s.model.n_kv_head,
              ", not a positive divisor of n_head (", s.model.n_head, ")");
  return s;
}

// The pieces of a flat range [b, e) of a shard's local tensor whose elements are at
// data[0 .. e - b), at their positions in the full tensor.
void append_pieces(const Shard& s, hsize_t b, hsize_t e, const float* data,
                   std::vector<CrcPiece>& out) {
  s.for_each_run(b, e, [&](hsize_t local, hsize_t full, hsize_t count) {
    out.push_back({data + (local - b), count, full + count});
  });
}

// This rank's checksumming of a dataset on load: tiles of the local tensors of the parts of
// the split chosen for it (plan_load_verification), and a share of the rows that nobody loads.
struct VerifyPart {
  Shard shard;
  std::vector<VerifyTile> tiles;  // this rank's tiles of that part
};

// A dataset to load: its handle, file shape and stored checksum; this rank's local tensor
// (shard), the range of it asked for (held), the full rows loaded from the file (rows:
// valid_rows, or all) and the part of held in those rows (readable; the rest of held is
// zero-filled); and what this rank checksums of it.
struct LoadItem {
  const TensorRef* tensor = nullptr;
  std::string path;
  H5Id dset;
  std::vector<hsize_t> file_dims;
  std::optional<int64_t> checksum;
  Shard shard;
  FlatRange held;
  hsize_t rows = 0;
  FlatRange readable;
  std::vector<VerifyPart> verify;
  FlatRange unloaded;  // flat elements of the file, in rows nobody loads
};

// Throws when group g.path of the file holds a dataset that none of g.tensors names.
void refuse_other_datasets(hid_t file, const TensorGroup& g) {
  const std::string where = "/" + g.path;
  if (!io::link_exists(file, g.path)) return;  // (open_for_load names the missing datasets)
  H5Id group = io::own_group(H5Gopen2(file, g.path.c_str(), H5P_DEFAULT), "cannot open " + where);
  struct Visit {
    std::set<std::string> names;
    std::string other;
  } visit;
  for (const TensorRef& t : g.tensors) visit.names.insert(t.name);
  auto each = [](hid_t grp, const char* name, const H5L_info_t*, void* data) -> herr_t {
    Visit& v = *static_cast<Visit*>(data);
    const hid_t obj = H5Oopen(grp, name, H5P_DEFAULT);
    if (obj < 0) return -1;
    const bool dataset = H5Iget_type(obj) == H5I_DATASET;
    H5Oclose(obj);
    if (!dataset || v.names.count(name)) return 0;
    v.other = name;
    return 1;  // stop at the first
  };
  const herr_t r = H5Lvisit(group, H5_INDEX_NAME, H5_ITER_INC, each, &visit);
  TRIAD_CHECK(r >= 0, "cannot list the datasets of ", where);
  TRIAD_CHECK(visit.other.empty(), "dataset ", where, "/", visit.other,
              " is not a tensor of the model its attributes describe (the file's attributes and "
              "tensors disagree)");
}

// Whether the n floats at data are all finite.
bool all_finite(const float* data, hsize_t n) {
  bool finite = true;
#pragma omp parallel for reduction(&& : finite) schedule(static)
  for (int64_t i = 0; i < static_cast<int64_t>(n); ++i) finite = finite && std::isfinite(data[i]);
  return finite;
}

LoadItem open_for_load(hid_t file, const TensorGroup& g, const TensorRef& t) {
  LoadItem it;
  it.tensor = &t;
  it.path = dataset_path(g, t);
  const std::string rel = it.path.substr(1);
  TRIAD_CHECK(io::path_exists(file, rel), "dataset ", it.path, " is missing");
  {
    H5Id obj(h5check(H5Oopen(file, rel.c_str(), H5P_DEFAULT), "cannot open " + it.path), H5Oclose);
    TRIAD_CHECK(H5Iget_type(obj) == H5I_DATASET, it.path, " is not a dataset");
  }
  it.dset =
      io::own_dataset(H5Dopen2(file, rel.c_str(), H5P_DEFAULT), "cannot open dataset " + it.path);
  {
    H5Id type = io::own_datatype(H5Dget_type(it.dset), "cannot read the type of " + it.path);
    TRIAD_CHECK(H5Tget_class(type) == H5T_FLOAT, "dataset ", it.path, " is not floating point");
  }
  it.file_dims = io::dataset_dims(it.dset);
  const std::vector<hsize_t> want = to_dims(t.shape);
  if (t.valid_rows < 0) {
    TRIAD_CHECK(it.file_dims == want, "dataset ", it.path, " has shape ",
                io::shape_string(it.file_dims), " but the model expects ", io::shape_string(want));
    it.rows = want[0];
  } else {
    const bool same_rank = it.file_dims.size() == want.size();
    const bool same_tail =
        same_rank && std::equal(want.begin() + 1, want.end(), it.file_dims.begin() + 1);
    TRIAD_CHECK(same_tail && it.file_dims[0] >= static_cast<hsize_t>(t.valid_rows), "dataset ",
                it.path, " has shape ", io::shape_string(it.file_dims), " but the model expects ",
                io::shape_string(want), " with at least ", t.valid_rows, " rows stored");
    // Same row length in the file and the model: a full row index is the same row in both.
    it.rows = static_cast<hsize_t>(t.valid_rows);
  }
  it.shard = shard_of(t);
  it.held = held_range(t, it.shard.local_numel());
  const FlatRange loaded = it.shard.rows_below(it.rows);
  it.readable = {std::min(it.held.begin, loaded.end), std::min(it.held.end, loaded.end)};
  it.checksum = io::read_int64_attr(it.dset, "checksum");
  return it;
}

// Who checksums what of item `it` (index i of n), from every rank's announcement (all): the
// elements in the rows every rank loads are checksummed in the local tensors of one split (the
// one under which the ranks ask for the most elements; its parts' readers checksum what they
// read, plan_verification), the rows beyond them (padding) are split evenly among the ranks and
// read once more. Stores this rank's share in it.verify and it.unloaded.
void plan_load_verification(LoadItem& it, size_t i, size_t n, const std::vector<int64_t>& all,
                            int size, int rank) {
  auto field = [&](int r, int f) {
    return all[(static_cast<size_t>(r) * n + i) * kLoadFields + f];
  };
  // The rows every rank loads.
  hsize_t rows = it.file_dims[0];
  for (int r = 0; r < size; ++r) rows = std::min(rows, static_cast<hsize_t>(field(r, kLLoaded)));
  // The split (and model row count, which may differ with valid_rows) with the most elements
  // asked for; ties: the lowest rank's.
  struct Family {
    SplitKey key;  // part unused
    int64_t rows0;
    hsize_t volume;
  };
  std::vector<Family> families;
  for (int r = 0; r < size; ++r) {
    const SplitKey key{field(r, kLAxis), field(r, kLBlocks), field(r, kLParts), 0};
    const hsize_t volume =
        static_cast<hsize_t>(std::max<int64_t>(field(r, kLEnd) - field(r, kLBegin), 0));
    auto f = std::find_if(families.begin(), families.end(), [&](const Family& x) {
      return x.key.same_family(key) && x.rows0 == field(r, kLRows0);
    });
    if (f == families.end()) {
      families.push_back({key, field(r, kLRows0), volume});
    } else {
      f->volume += volume;
    }
  }
  const Family* best = &families.front();
  for (const Family& f : families) {
    if (f.volume > best->volume) best = &f;
  }
  std::vector<hsize_t> dims = to_dims(it.tensor->shape);  // the trailing dims are the file's
  dims[0] = static_cast<hsize_t>(best->rows0);
  for (int64_t q = 0; q < best->key.parts; ++q) {
    SplitKey key = best->key;
    key.part = q;
    Shard s = make_shard(dims, key);
    std::vector<Reader> readers;
    for (int r = 0; r < size; ++r) {
      const SplitKey k{field(r, kLAxis), field(r, kLBlocks), field(r, kLParts), field(r, kLPart)};
      if (k == key && field(r, kLRows0) == best->rows0 && field(r, kLEnd) > field(r, kLBegin)) {
        readers.push_back(
            {r, {static_cast<hsize_t>(field(r, kLBegin)), static_cast<hsize_t>(field(r, kLEnd))}});
      }
    }
    std::vector<VerifyTile> mine;
    for (const VerifyTile& t :
         plan_verification(s.local_numel(), s.rows_below(rows), readers, size)) {
      if (t.rank == rank) mine.push_back(t);
    }
    if (!mine.empty()) it.verify.push_back({std::move(s), std::move(mine)});
  }
  const hsize_t nf = element_count(it.file_dims);
  const hsize_t from = it.file_dims[0] == 0 ? 0 : rows * (nf / it.file_dims[0]);
  const hsize_t np = nf - from, ranks = static_cast<hsize_t>(size), me = static_cast<hsize_t>(rank);
  it.unloaded = {from + np * me / ranks, from + np * (me + 1) / ranks};
}

// Reads the readable part of the rank's range (independent I/O: one H5Dread) and zero-fills
// the rest.
void read_item(LoadItem& it, hid_t dxpl) {
  float* data = it.tensor->data;
  if (!it.readable.empty()) {
    transfer(it.dset, it.file_dims, shard_boxes(it.shard, {it.readable}), it.held.size(),
             {{0, it.readable.size()}}, data, dxpl, Direction::kRead,
             "cannot read dataset " + it.path);
  }
  const hsize_t zero_from = std::max(it.held.begin, it.readable.end);
  if (zero_from < it.held.end) {
    std::fill(data + (zero_from - it.held.begin), data + (it.held.end - it.held.begin), 0.0f);
  }
}

// This rank's checksum term of item it: its tiles, from what it has read (in the tensor's
// buffer) or read once more (extra tiles, its share of the unloaded rows; independent I/O).
uint32_t verify_term(const LoadItem& it, hid_t dxpl) {
  std::vector<CrcPiece> pieces;
  std::vector<std::vector<float>> buffers;
  const std::string what = "cannot read dataset " + it.path;
  for (const VerifyPart& part : it.verify) {
    for (const VerifyTile& t : part.tiles) {
      const float* data = nullptr;
      if (t.extra) {
        std::vector<float>& buf = buffers.emplace_back(t.end - t.begin);
        transfer(it.dset, it.file_dims, shard_boxes(part.shard, {{t.begin, t.end}}), buf.size(),
                 {{0, buf.size()}}, buf.data(), dxpl, Direction::kRead, what);
        data = buf.data();
      } else {
        // A piece of the rank's own readable range, in its own local tensor (the same shard).
        TRIAD_ASSERT(it.held.begin <= t.begin && t.end <= it.held.end);
        data = it.tensor->data + (t.begin - it.held.begin);
      }
      append_pieces(part.shard, t.begin, t.end, data, pieces);
    }
  }
  if (!it.unloaded.empty()) {
    std::vector<float>& buf = buffers.emplace_back(it.unloaded.size());
    std::vector<Box> boxes;
    io::flat_range_boxes(it.file_dims, it.unloaded.begin, it.unloaded.end, boxes);
    transfer(it.dset, it.file_dims, boxes, buf.size(), {{0, buf.size()}}, buf.data(), dxpl,
             Direction::kRead, what);
    pieces.push_back({buf.data(), buf.size(), it.unloaded.end});
  }
  return io::placed_crc(std::move(pieces), element_count(it.file_dims));
}

}  // namespace

// ---- public -----------------------------------------------------------------------------------

size_t held_elements(const TensorRef& t) { return size_t(held_range(t).size()); }

void save_checkpoint(MPI_Comm comm, const std::string& path, const CheckpointState& state,
                     const std::vector<TensorGroup>& groups) {
  const auto hdf5 = io::hdf5_lock();
  const std::string partial = path + ".partial";
  const int rank = comm_rank(comm);
  const int size = comm_size(comm);
  try {
    collective_phase(comm, [&] {
      validate_groups(groups);
      const fs::path parent = fs::path(partial).parent_path();
      std::error_code ec;
      TRIAD_CHECK(parent.empty() || fs::is_directory(parent, ec), "directory ", parent.string(),
                  " does not exist");
    });

    // Who writes what: every rank announces its split and range of each tensor; all ranks
    // derive the same writers (plan_writes) and the checksums of the full tensors from the
    // writers' placed CRCs of their pieces (every rank must write identical attribute values).
    std::vector<const TensorRef*> flat;
    std::vector<std::string> names;
    for (const TensorGroup& g : groups) {
      for (const TensorRef& t : g.tensors) {
        flat.push_back(&t);
        names.push_back(dataset_path(g, t));
      }
    }
    const size_t n = flat.size();
    collective_phase(comm, [&] { check_same_tensor_count(comm, n); });
    std::vector<int64_t> announce(n * kSaveFields);
    for (size_t i = 0; i < n; ++i) {
      const TensorRef& t = *flat[i];
      const FlatRange r = held_range(t);
      const SplitKey key = split_key(t);
      int64_t* f = &announce[i * kSaveFields];
      f[kNumel] = static_cast<int64_t>(element_count(to_dims(t.shape)));
      f[kShape] = shape_hash(t.shape);
      f[kAxis] = key.axis;
      f[kBlocks] = key.blocks;
      f[kParts] = key.parts;
      f[kPart] = key.part;
      f[kBegin] = static_cast<int64_t>(r.begin);
      f[kEnd] = static_cast<int64_t>(r.end);
      f[kFlags] = (t.write ? kFlagWrite : 0) | (t.end < 0 ? kFlagWhole : 0);
    }
    const std::vector<int64_t> announced = allgather_int64(comm, announce);
    std::vector<std::vector<Writer>> plan;
    collective_phase(comm, [&] { plan = plan_writes(announced, size, flat, names); });
    // This rank's write range of each tensor's local tensor (empty if it writes nothing of it).
    std::vector<FlatRange> mine(n);
    for (size_t i = 0; i < n; ++i) {
      for (const Writer& w : plan[i]) {
        if (w.rank == rank) mine[i] = w.range;
      }
    }

    Reservation space;  // (released on every exit path)
    collective_phase(comm, [&] {
      if (rank == 0) space.hold(partial, estimated_file_bytes(state, groups));
    });

    std::vector<Shard> shards;
    for (const TensorRef* t : flat) shards.push_back(shard_of(*t));
    std::vector<uint32_t> crcs(n, 0);
    for (size_t i = 0; i < n; ++i) {
      if (mine[i].empty()) continue;
      std::vector<CrcPiece> pieces;
      append_pieces(shards[i], mine[i].begin, mine[i].end, flat[i]->data, pieces);
      crcs[i] = io::placed_crc(std::move(pieces), shards[i].full_numel());
    }
    allreduce_xor(comm, crcs);

    {
      // Declared before the datasets so that it is closed after them on every exit path.
      H5Id file;
      std::vector<H5Id> dsets;
      H5Id fapl, dxpl;
      collective_phase(comm, [&] {
        fapl = io::make_fapl(comm, /*for_create=*/true);
        dxpl = collective_dxpl();
      });
      collective_phase(comm, [&] {
        file = io::own_file(H5Fcreate(partial.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, fapl),
                            "cannot create " + partial);
      });
      collective_phase(comm, [&] {
        if (rank == 0) space.hand_to_file();
      });

      // Metadata: root attributes, groups, datasets with their checksums.
      collective_phase(comm, [&] {
        io::write_string_attr(file, "format", kFormat);
        io::write_int64_attr(file, "format_version", kFormatVersion);
        io::write_int64_attr(file, "step", state.step);
        io::write_int64_attr(file, "tokens_seen", state.tokens_seen);
        io::write_int64_attr(file, "next_sequence", state.next_sequence);
        io::write_int64_attr(file, "epoch", state.epoch);
        io::write_string_attr(file, "config", state.config);
        io::write_string_attr(file, "grid", state.grid);
        io::write_doubles_attr(file, "loss_window", state.loss_window);
        io::write_doubles_attr(file, "grad_norm_window", state.norm_window);
        io::write_int64_attr(file, "skipped_in_a_row", state.skipped_in_a_row);

        H5Id lcpl = io::make_plist(H5P_LINK_CREATE);
        h5check(H5Pset_create_intermediate_group(lcpl, 1), "cannot set up link creation");
        H5Id dcpl = io::make_plist(H5P_DATASET_CREATE);
        h5check(H5Pset_layout(dcpl, H5D_CONTIGUOUS), "cannot set up dataset creation");
        h5check(H5Pset_fill_time(dcpl, H5D_FILL_TIME_NEVER), "cannot set up dataset creation");
        h5check(H5Pset_alloc_time(dcpl, H5D_ALLOC_TIME_EARLY), "cannot set up dataset creation");

        {
          H5Id model = open_or_create_group(file, "model", lcpl);
          io::write_int64_attr(model, "n_layer", state.model.n_layer);
          io::write_int64_attr(model, "n_head", state.model.n_head);
          io::write_int64_attr(model, "n_embd", state.model.n_embd);
          io::write_int64_attr(model, "seq_len", state.model.seq_len);
          io::write_int64_attr(model, "vocab_size", state.model.vocab_size);
          io::write_int64_attr(model, "padded_vocab_size", state.model.padded_vocab_size);
          io::write_string_attr(model, "position", state.model.position);
          if (state.model.position == "rope")
            io::write_double_attr(model, "rope_theta", state.model.rope_theta);
          if (state.model.rope_scaling != "none") {  // every scaling's, then its own numbers
            io::write_string_attr(model, "rope_scaling", state.model.rope_scaling);
            io::write_double_attr(model, "rope_scaling_factor", state.model.rope_scaling_factor);
            io::write_int64_attr(model, "rope_original_positions",
                                 state.model.rope_original_positions);
          }
          if (state.model.rope_scaling == "yarn") {
            io::write_double_attr(model, "rope_yarn_beta_fast", state.model.rope_yarn_beta_fast);
            io::write_double_attr(model, "rope_yarn_beta_slow", state.model.rope_yarn_beta_slow);
            io::write_double_attr(model, "rope_yarn_mscale", state.model.rope_yarn_mscale);
            io::write_double_attr(model, "rope_yarn_mscale_all_dim",
                                  state.model.rope_yarn_mscale_all_dim);
          }
          if (state.model.rope_scaling == "longrope") {
            io::write_doubles_attr(model, "rope_short_factor", state.model.rope_short_factor);
            io::write_doubles_attr(model, "rope_long_factor", state.model.rope_long_factor);
          }
          if (state.model.rope_scaling == "llama3") {
            io::write_double_attr(model, "rope_low_freq_factor", state.model.rope_low_freq_factor);
            io::write_double_attr(model, "rope_high_freq_factor",
                                  state.model.rope_high_freq_factor);
          }
          io::write_string_attr(model, "norm", state.model.norm);
          io::write_int64_attr(model, "bias", state.model.bias ? 1 : 0);
          io::write_int64_attr(model, "tie_embeddings", state.model.tied ? 1 : 0);
          io::write_string_attr(model, "mlp", state.model.mlp);
          if (state.model.mlp_hidden > 0)  // 0: not given (the default, 4·n_embd)
            io::write_int64_attr(model, "mlp_hidden", state.model.mlp_hidden);
          io::write_int64_attr(model, "qk_norm", state.model.qk_norm ? 1 : 0);
          if (state.model.qk_norm_full) io::write_int64_attr(model, "qk_norm_full", 1);
          io::write_int64_attr(model, "qkv_bias", state.model.qkv_bias ? 1 : 0);
          if (state.model.mlp_bias) io::write_int64_attr(model, "mlp_bias", 1);
          if (state.model.norm_bias) io::write_int64_attr(model, "norm_bias", 1);
          if (!state.model.norm_weight) io::write_int64_attr(model, "norm_weight", 0);
          io::write_double_attr(model, "norm_eps", state.model.norm_eps);
          if (state.model.head_dim > 0)  // 0: n_embd / n_head
            io::write_int64_attr(model, "head_dim", state.model.head_dim);
          if (state.model.kv_lora_rank > 0) {  // multi-head latent attention
            io::write_int64_attr(model, "kv_lora_rank", state.model.kv_lora_rank);
            io::write_int64_attr(model, "q_lora_rank", state.model.q_lora_rank);
            io::write_int64_attr(model, "qk_nope_head_dim", state.model.qk_nope_head_dim);
            io::write_int64_attr(model, "qk_rope_head_dim", state.model.qk_rope_head_dim);
            io::write_int64_attr(model, "v_head_dim", state.model.v_head_dim);
          }
          if (state.model.rotary_dim > 0)  // 0: every value of a head rotates
            io::write_int64_attr(model, "rotary_dim", state.model.rotary_dim);
          if (state.model.sliding_window > 0)  // 0: no window
            io::write_int64_attr(model, "sliding_window", state.model.sliding_window);
          if (state.model.full_attention_every > 0)  // 0: every layer keeps to the window
            io::write_int64_attr(model, "full_attention_every", state.model.full_attention_every);
          if (state.model.attn_scale > 0)  // 0: 1/sqrt(head width)
            io::write_double_attr(model, "attn_scale", state.model.attn_scale);
          if (state.model.mup_base_width > 0)  // 0: the standard parametrization
            io::write_int64_attr(model, "mup_base_width", state.model.mup_base_width);
          if (state.model.moe_experts > 0) {  // 0: dense MLPs
            io::write_int64_attr(model, "moe_experts", state.model.moe_experts);
            io::write_int64_attr(model, "moe_top_k", state.model.moe_top_k);
            io::write_int64_attr(model, "moe_normalize", state.model.moe_normalize ? 1 : 0);
            if (state.model.moe_score != "softmax")
              io::write_string_attr(model, "moe_score", state.model.moe_score);
            if (state.model.moe_routed_scale != 1.0)
              io::write_double_attr(model, "moe_routed_scale", state.model.moe_routed_scale);
            if (state.model.moe_groups > 1) {
              io::write_int64_attr(model, "moe_groups", state.model.moe_groups);
              io::write_int64_attr(model, "moe_group_top_k", state.model.moe_group_top_k);
            }
            if (state.model.moe_group_score != "top2")
              io::write_string_attr(model, "moe_group_score", state.model.moe_group_score);
            if (state.model.moe_shared_hidden > 0)
              io::write_int64_attr(model, "moe_shared_hidden", state.model.moe_shared_hidden);
            if (state.model.moe_shared_gate) io::write_int64_attr(model, "moe_shared_gate", 1);
            if (state.model.moe_first_dense != 0 || state.model.moe_every != 1) {
              io::write_int64_attr(model, "moe_first_dense", state.model.moe_first_dense);
              io::write_int64_attr(model, "moe_every", state.model.moe_every);
            }
            if (state.model.moe_dense_hidden > 0)
              io::write_int64_attr(model, "moe_dense_hidden", state.model.moe_dense_hidden);
          }
          if (state.model.logit_softcap > 0)  // 0: no cap
            io::write_double_attr(model, "logit_softcap", state.model.logit_softcap);
          if (state.model.attn_softcap > 0)  // 0: no cap
            io::write_double_attr(model, "attn_softcap", state.model.attn_softcap);
          if (state.model.clip_qkv > 0)  // 0: no clamp
            io::write_double_attr(model, "clip_qkv", state.model.clip_qkv);
          if (state.model.logit_scale != 1)  // 1: none
            io::write_double_attr(model, "logit_scale", state.model.logit_scale);
          if (state.model.residual_scale != 1)  // 1: none
            io::write_double_attr(model, "residual_scale", state.model.residual_scale);
          if (state.model.embed_scale != 1)  // 1: none
            io::write_double_attr(model, "embed_scale", state.model.embed_scale);
          if (state.model.parallel_residual) io::write_int64_attr(model, "parallel_residual", 1);
          if (state.model.branch_norm) io::write_int64_attr(model, "branch_norm", 1);
          if (!state.model.pre_norm) io::write_int64_attr(model, "pre_norm", 0);
          if (state.model.shared_norm) io::write_int64_attr(model, "shared_norm", 1);
          if (state.model.head_bias) io::write_int64_attr(model, "head_bias", 1);
          if (state.model.n_kv_head > 0)  // 0: not given (n_head)
            io::write_int64_attr(model, "n_kv_head", state.model.n_kv_head);
        }
        size_t i = 0;
        for (const TensorGroup& g : groups) {
          H5Id group = open_or_create_group(file, g.path, lcpl);
          for (const TensorRef& t : g.tensors) {
            const std::string what = "cannot create dataset " + dataset_path(g, t);
            const std::vector<hsize_t> dims = to_dims(t.shape);
            H5Id space = io::own_dataspace(
                H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr), what);
            H5Id dset = io::own_dataset(
                H5Dcreate2(group, t.name.c_str(), H5T_IEEE_F32LE, space, lcpl, dcpl, H5P_DEFAULT),
                what);
            io::write_uint32_attr(dset, "checksum", crcs[i++]);
            dsets.push_back(std::move(dset));
          }
        }
      });

      // Data: one collective write per tensor, each rank selecting its own range (a few boxes).
      for (size_t i = 0; i < n; ++i) {
        collective_phase(comm, [&] {
          transfer(dsets[i], shards[i].full_dims(), shard_boxes(shards[i], {mine[i]}),
                   mine[i].size(), {{0, mine[i].size()}}, flat[i]->data, dxpl, Direction::kWrite,
                   "cannot write dataset " + names[i] + " to " + partial);
        });
      }

      // `complete` last, then flush and close (a full disk may surface only here).
      collective_phase(comm, [&] {
        for (H5Id& d : dsets) d.close("cannot close a dataset of " + partial);
        io::write_int64_attr(file, "complete", 1);
        h5check(H5Fflush(file, H5F_SCOPE_GLOBAL), "cannot flush " + partial);
        file.close("cannot close " + partial);
      });
    }

    collective_phase(comm, [&] {
      if (rank != 0) return;
      std::error_code ec;
      // The space held past the file's end (Reservation) is given back: truncating a file to its
      // own size frees the blocks beyond it.
      const std::uintmax_t size = fs::file_size(partial, ec);
      if (!ec) fs::resize_file(partial, size, ec);  // (best effort: the file is whole either way)
      fs::rename(partial, path, ec);
      TRIAD_CHECK(!ec, "cannot rename ", partial, " to ", path, ": ", ec.message());
    });
  } catch (const Error& e) {
    // Every rank is here (the phases agree); the HDF5 handles are closed.
    if (rank == 0) {
      std::error_code ec;
      fs::remove(partial, ec);
    }
    MPI_Barrier(comm);
    fail("checkpoint ", path, ": ", e.what());
  }
}

CheckpointState read_checkpoint_state(MPI_Comm comm, const std::string& path) {
  const auto hdf5 = io::hdf5_lock();
  try {
    H5Id file = open_checkpoint(comm, path);
    CheckpointState state;
    collective_phase(comm, [&] { state = read_state(file); });
    return state;
  } catch (const Error& e) {
    fail("checkpoint ", path, ": ", e.what());
  }
}

void load_checkpoint_tensors(MPI_Comm comm, const std::string& path,
                             const std::vector<TensorGroup>& groups) {
  const auto hdf5 = io::hdf5_lock();
  try {
    H5Id file = open_checkpoint(comm, path);
    std::vector<LoadItem> items;
    H5Id dxpl;
    // All metadata first, so a missing dataset or a wrong shape fails before any data moves.
    collective_phase(comm, [&] {
      validate_groups(groups);
      read_state(file);
      for (const TensorGroup& g : groups) {
        for (const TensorRef& t : g.tensors) items.push_back(open_for_load(file, g, t));
        if (g.whole) refuse_other_datasets(file, g);
      }
      dxpl = read_dxpl();
    });
    collective_phase(comm, [&] { check_same_tensor_count(comm, items.size()); });

    // Who checksums which piece of each tensor, from the splits and ranges every rank reads.
    const int rank = comm_rank(comm);
    const int size = comm_size(comm);
    const size_t n = items.size();
    std::vector<int64_t> local(n * kLoadFields);
    for (size_t i = 0; i < n; ++i) {
      const LoadItem& it = items[i];
      const SplitKey key = split_key(*it.tensor);
      int64_t* f = &local[i * kLoadFields];
      f[kLAxis] = key.axis;
      f[kLBlocks] = key.blocks;
      f[kLParts] = key.parts;
      f[kLPart] = key.part;
      f[kLRows0] = it.tensor->shape[0];
      f[kLBegin] = static_cast<int64_t>(it.held.begin);
      f[kLEnd] = static_cast<int64_t>(it.held.end);
      f[kLLoaded] = static_cast<int64_t>(it.rows);
    }
    const std::vector<int64_t> all = allgather_int64(comm, local);
    collective_phase(comm, [&] {
      for (size_t i = 0; i < n; ++i) {
        if (items[i].checksum.has_value() && element_count(items[i].file_dims) > 0) {
          plan_load_verification(items[i], i, n, all, size, rank);
        }
      }
    });

    // The data, then the checksum terms: independent reads (read_dxpl), so the ranks agree
    // once, after all of them.
    std::vector<uint32_t> terms(n, 0);
    collective_phase(comm, [&] {
      for (LoadItem& it : items) read_item(it, dxpl);
      for (size_t i = 0; i < n; ++i) {
        if (items[i].checksum.has_value()) terms[i] = verify_term(items[i], dxpl);
      }
    });
    allreduce_xor(comm, terms);
    // The same values on every rank, so every rank reaches the same verdict.
    collective_phase(comm, [&] {
      for (size_t i = 0; i < n; ++i) {
        const LoadItem& it = items[i];
        if (!it.checksum.has_value()) continue;
        const int64_t computed = terms[i];
        TRIAD_CHECK(computed == *it.checksum, "dataset ", it.path, " fails its checksum (stored ",
                    *it.checksum, ", computed ", computed, "): the file is damaged");
      }
    });
    // Intact but not finite: the first such tensor any rank holds, named on every rank.
    int64_t bad = static_cast<int64_t>(n);
    for (size_t i = 0; i < n && bad == static_cast<int64_t>(n); ++i) {
      if (!all_finite(items[i].tensor->data, items[i].readable.size()))
        bad = static_cast<int64_t>(i);
    }
    bad = allreduce_min(comm, bad);
    TRIAD_CHECK(bad == static_cast<int64_t>(n), "dataset ", items[size_t(bad)].path,
                " holds values that are not finite (NaN or infinity): a model or optimizer state "
                "with them cannot be evaluated or trained");
  } catch (const Error& e) {
    fail("checkpoint ", path, ": ", e.what());
  }
}

bool checkpoint_has_group(MPI_Comm comm, const std::string& file, const std::string& path) {
  const auto hdf5 = io::hdf5_lock();
  try {
    H5Id f = open_checkpoint(comm, file);
    bool found = false;
    collective_phase(comm, [&] {
      check_name(path, "group");
      if (!io::path_exists(f, path)) return;
      H5Id obj(h5check(H5Oopen(f, path.c_str(), H5P_DEFAULT), "cannot open /" + path), H5Oclose);
      found = H5Iget_type(obj) == H5I_GROUP;
    });
    return found;
  } catch (const Error& e) {
    fail("checkpoint ", file, ": ", e.what());
  }
}

}  // namespace triad
