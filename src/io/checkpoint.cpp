// Checkpoint files (DESIGN.md §5): save_checkpoint, read_checkpoint_state,
// load_checkpoint_tensors, checkpoint_has_group. The directory logic is in checkpoint_dir.cpp.
//
// Parallel structure: every HDF5 metadata operation (file create/open/close, groups,
// datasets, attributes) is made by all ranks of comm with identical arguments. Tensor data move
// as flat ranges of each tensor (TensorRef::begin/end; in the file the union of at most three
// hyperslabs in 2-D). Saving: the ranks exchange their ranges, plan_writes picks the writers
// (checking that they partition each tensor), each writer's CRC of its range is combined into
// the full tensor's checksum (crc32_combine), and each tensor is written with one collective
// H5Dwrite. Loading: each rank reads its ranges with independent I/O (see read_dxpl), and
// plan_verification splits each tensor among the ranks for checksumming, preferring pieces a
// rank has read anyway. After each phase the ranks agree on failure (collective.h), so an
// error on one rank makes all throw.
#include "triad/io/checkpoint.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <set>

#include "collective.h"
#include "crc32.h"
#include "hdf5_handle.h"

namespace triad {
namespace {

namespace fs = std::filesystem;
using io::collective_phase;
using io::h5check;
using io::H5Id;

static_assert(std::endian::native == std::endian::little,
              "checksums are defined over little-endian fp32 bytes");

constexpr const char* kFormat = "triad-checkpoint";
constexpr int64_t kFormatVersion = 1;

int comm_rank(MPI_Comm comm) {
  int rank = 0;
  MPI_Comm_rank(comm, &rank);
  return rank;
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

// Elements [begin, end) in the row-major order of a tensor.
struct FlatRange {
  hsize_t begin = 0, end = 0;
  hsize_t size() const { return end > begin ? end - begin : 0; }
  bool empty() const { return end <= begin; }
};

// The range this rank holds of t (validated by validate_groups).
FlatRange held_range(const TensorRef& t) {
  if (t.end < 0) return {0, element_count(to_dims(t.shape))};
  return {static_cast<hsize_t>(t.begin), static_cast<hsize_t>(t.end)};
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
      const int64_t numel = static_cast<int64_t>(element_count(to_dims(t.shape)));
      if (t.end < 0) {
        TRIAD_CHECK(t.begin == 0, "tensor ", p, " has begin ", t.begin,
                    " with end < 0 (the whole tensor)");
      } else {
        TRIAD_CHECK(t.begin >= 0 && t.begin <= t.end && t.end <= numel, "tensor ", p,
                    " has the range [", t.begin, ", ", t.end, ") outside [0, ", numel, "]");
      }
      TRIAD_CHECK(t.data != nullptr || held_range(t).empty(), "tensor ", p, " has no data buffer");
      TRIAD_CHECK(t.valid_rows >= -1 && t.valid_rows <= t.shape[0], "tensor ", p,
                  " has valid_rows ", t.valid_rows, " outside [-1, ", t.shape[0], "]");
    }
  }
}

// ---- flat ranges and their selections -----------------------------------------------------------
//
// Every transfer moves flat (row-major) element ranges of a dataset to or from a contiguous
// host buffer. Who writes / reads which range is decided by plan_writes (saving) and by the
// TensorRef ranges plus plan_verification (loading); everything else just moves ranges.

// An N-D box of a dataset: start and count per dimension.
struct Box {
  std::vector<hsize_t> start, count;
};

// Appends the boxes covering the flat elements [b, e) of the sub-array dims[axis..] whose
// coordinates in the dimensions before `axis` are origin[0 .. axis): in 2-D [R, C], a partial
// first row, a block of full rows and a partial last row (at most 2·(N-1)+1 boxes in N-D), in
// increasing flat order.
void flat_range_boxes(const std::vector<hsize_t>& dims, size_t axis, std::vector<hsize_t>& origin,
                      hsize_t b, hsize_t e, std::vector<Box>& out) {
  if (b >= e) return;
  const size_t nd = dims.size();
  if (axis + 1 == nd) {
    Box box{origin, std::vector<hsize_t>(nd, 1)};
    box.start[axis] = b;
    box.count[axis] = e - b;
    out.push_back(std::move(box));
    return;
  }
  hsize_t stride = 1;  // elements per index of this axis; > 0 since the range is not empty
  for (size_t k = axis + 1; k < nd; ++k) stride *= dims[k];
  const hsize_t first = b / stride, last = (e - 1) / stride;
  auto partial = [&](hsize_t row, hsize_t lo, hsize_t hi) {
    origin[axis] = row;
    flat_range_boxes(dims, axis + 1, origin, lo, hi, out);
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

// Selects in `space` (a dataspace of shape dims) the union of the ranges (disjoint, increasing),
// or nothing. HDF5 visits a selection in row-major order, which is the order of the ranges, so
// the selected elements map in order onto a contiguous buffer.
void select_flat_ranges(hid_t space, const std::vector<hsize_t>& dims,
                        const std::vector<FlatRange>& ranges, const std::string& what) {
  std::vector<Box> boxes;
  std::vector<hsize_t> origin(dims.size(), 0);
  for (const FlatRange& r : ranges) flat_range_boxes(dims, 0, origin, r.begin, r.end, boxes);
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

// One H5Dwrite / H5Dread (collective or independent, as dxpl says) moving the union of `ranges`
// (flat, disjoint, increasing) of dataset dset to / from the contiguous fp32 buffer `data`. No
// ranges (or empty ones): this rank selects nothing but still joins a collective call.
void transfer_ranges(hid_t dset, const std::vector<hsize_t>& file_dims,
                     const std::vector<FlatRange>& ranges, float* data, hid_t dxpl, Direction dir,
                     const std::string& what) {
  // A dataset without elements has no storage (HDF5 fails on any transfer); every rank sees
  // the same shape, so all skip the call.
  if (element_count(file_dims) == 0) return;
  H5Id fspace = io::own_dataspace(H5Dget_space(dset), what);
  select_flat_ranges(fspace, file_dims, ranges, what);
  hsize_t n = 0;
  for (const FlatRange& r : ranges) n += r.size();
  const hsize_t mem_dim = std::max<hsize_t>(n, 1);
  H5Id mspace = io::own_dataspace(H5Screate_simple(1, &mem_dim, nullptr), what);
  if (n == 0) h5check(H5Sselect_none(mspace), what);
  float dummy = 0;  // HDF5 wants a buffer even for an empty selection
  float* buf = n > 0 && data != nullptr ? data : &dummy;
  if (dir == Direction::kWrite) {
    h5check(H5Dwrite(dset, H5T_NATIVE_FLOAT, mspace, fspace, dxpl, buf), what);
  } else {
    h5check(H5Dread(dset, H5T_NATIVE_FLOAT, mspace, fspace, dxpl, buf), what);
  }
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
  int size = 1;
  MPI_Comm_size(comm, &size);
  std::vector<int64_t> all(local.size() * static_cast<size_t>(size));
  if (!local.empty()) {
    MPI_Allgather(local.data(), static_cast<int>(local.size()), MPI_INT64_T, all.data(),
                  static_cast<int>(local.size()), MPI_INT64_T, comm);
  }
  return all;
}

// A piece [begin, end) of a tensor handled by one rank: written by it (saving), or checksummed
// by it (loading; `extra`: from a second read because no rank asked for those elements).
struct Tile {
  int rank = 0;
  hsize_t begin = 0, end = 0;
  bool extra = false;
};

// What each rank announces about each tensor before a save.
constexpr int kSaveFields = 4;  // numel, begin, end, flags
constexpr int64_t kFlagWrite = 1, kFlagWhole = 2;

// The writers of each tensor, sorted by begin, from every rank's announcement: ranks with
// write = true and a non-empty range; of several whole-tensor (end < 0) writers only the lowest
// rank. Checks that the writers tile [0, numel) exactly and that all ranks agree on the shape.
std::vector<std::vector<Tile>> plan_writes(const std::vector<int64_t>& all, int size,
                                           const std::vector<std::string>& names) {
  const size_t n = names.size();
  std::vector<std::vector<Tile>> plan(n);
  for (size_t i = 0; i < n; ++i) {
    const int64_t numel = all[i * kSaveFields];
    bool whole_taken = false;
    for (int r = 0; r < size; ++r) {
      const int64_t* f = &all[(static_cast<size_t>(r) * n + i) * kSaveFields];
      TRIAD_CHECK(f[0] == numel, "tensor ", names[i], " has ", numel, " elements on rank 0 but ",
                  f[0], " on rank ", r, " (the ranks must pass the same shapes)");
      if (!(f[3] & kFlagWrite) || f[2] <= f[1]) continue;
      if (f[3] & kFlagWhole) {
        if (whole_taken) continue;  // a replica of the whole tensor: the lowest rank writes
        whole_taken = true;
      }
      plan[i].push_back({r, static_cast<hsize_t>(f[1]), static_cast<hsize_t>(f[2])});
    }
    std::sort(plan[i].begin(), plan[i].end(),
              [](const Tile& a, const Tile& b) { return a.begin < b.begin; });
    hsize_t pos = 0;
    for (const Tile& t : plan[i]) {
      TRIAD_CHECK(t.begin == pos, "internal error: the ranges the ranks write of tensor ", names[i],
                  " do not partition it: ",
                  t.begin < pos ? "overlap at element " : "nothing written at element ",
                  std::min(t.begin, pos), " (rank ", t.rank, " writes [", t.begin, ", ", t.end,
                  "))");
      pos = t.end;
    }
    TRIAD_CHECK(pos == static_cast<hsize_t>(numel), "internal error: the ranges the ranks write ",
                "of tensor ", names[i], " do not partition it: nothing written from element ", pos,
                " of ", numel);
  }
  return plan;
}

// Who checksums which piece of a tensor of nf elements on load, given the range each rank
// reads (readable[r], within [0, nf)). The tensor is split evenly into one piece per rank; a
// part of rank k's piece that k reads anyway is checksummed by k, else by the least loaded rank
// that reads it, else (nobody reads it) by k after a second read (extra). Deterministic: every
// rank computes the same tiles from the same inputs.
std::vector<Tile> plan_verification(hsize_t nf, const std::vector<FlatRange>& readable) {
  const int size = static_cast<int>(readable.size());
  auto split = [&](int k) { return static_cast<hsize_t>(k) * nf / static_cast<hsize_t>(size); };
  std::vector<hsize_t> cuts = {0, nf};
  std::vector<int> readers;
  for (int k = 1; k < size; ++k) cuts.push_back(split(k));
  for (int r = 0; r < size; ++r) {
    if (readable[r].empty()) continue;
    readers.push_back(r);
    cuts.push_back(readable[r].begin);
    cuts.push_back(readable[r].end);
  }
  std::sort(cuts.begin(), cuts.end());
  cuts.erase(std::unique(cuts.begin(), cuts.end()), cuts.end());
  std::vector<hsize_t> load(size, 0);
  std::vector<Tile> tiles;
  int k = 0;  // the rank whose even piece holds the current part
  for (size_t c = 0; c + 1 < cuts.size(); ++c) {
    const hsize_t x = cuts[c], y = cuts[c + 1];
    while (k + 1 < size && split(k + 1) <= x) ++k;
    auto covers = [&](int r) { return readable[r].begin <= x && y <= readable[r].end; };
    int who = covers(k) ? k : -1;
    if (who < 0) {
      for (int r : readers) {
        if (covers(r) && (who < 0 || load[r] < load[who])) who = r;
      }
    }
    const bool extra = who < 0;
    if (extra) who = k;
    load[who] += y - x;
    if (!tiles.empty() && tiles.back().rank == who && tiles.back().extra == extra &&
        tiles.back().end == x) {
      tiles.back().end = y;
    } else {
      tiles.push_back({who, x, y, extra});
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

// Reserves `bytes` for `file` with fallocate(2), then removes it again. A full disk (or a
// quota, or a file-size limit) fails here, before HDF5 writes anything: HDF5 1.10 cannot close
// a file whose metadata it fails to write (H5Fclose fails and leaves a dangling identifier
// that crashes the library at exit), so a checkpoint that does not fit must be refused up
// front. File systems without fallocate skip the check.
void reserve_space(const std::string& file, uint64_t bytes) {
#ifdef __linux__
  const int fd = ::open(file.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  TRIAD_CHECK(fd >= 0, "cannot create ", file, ": ", std::strerror(errno));
  int err = 0;
  if (bytes > 0 && ::fallocate(fd, 0, 0, static_cast<off_t>(bytes)) != 0) err = errno;
  ::close(fd);
  ::unlink(file.c_str());
  const bool unsupported = err == EOPNOTSUPP || err == ENOSYS || err == EINVAL;
  TRIAD_CHECK(err == 0 || unsupported, "not enough space for the checkpoint (", bytes,
              " bytes) at ", file, ": ", std::strerror(err));
#else
  (void)file;
  (void)bytes;
#endif
}

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
  const std::optional<std::string> config = io::read_string_attr(file, "config");
  TRIAD_CHECK(config.has_value(), "attribute config of / is missing");
  s.config = *config;
  s.grid = io::read_string_attr(file, "grid").value_or("");

  TRIAD_CHECK(io::link_exists(file, "model"), "group /model is missing");
  H5Id model = io::own_group(H5Gopen2(file, "model", H5P_DEFAULT), "cannot open group /model");
  s.model.n_layer = require_int64(model, "/model", "n_layer");
  s.model.n_head = require_int64(model, "/model", "n_head");
  s.model.n_embd = require_int64(model, "/model", "n_embd");
  s.model.seq_len = require_int64(model, "/model", "seq_len");
  s.model.vocab_size = require_int64(model, "/model", "vocab_size");
  s.model.padded_vocab_size = require_int64(model, "/model", "padded_vocab_size");
  return s;
}

// CRC-32s of many buffers (pointer, float count), computed in parallel in chunks of at most
// 16 MiB that are then combined, so that one large tensor does not serialize the work.
std::vector<uint32_t> crc32_many(const std::vector<std::pair<const float*, size_t>>& spans) {
  constexpr size_t kChunk = size_t{4} << 20;  // floats
  struct Chunk {
    size_t span;
    const float* data;
    size_t count;
  };
  std::vector<Chunk> chunks;
  for (size_t i = 0; i < spans.size(); ++i) {
    const auto [data, count] = spans[i];
    for (size_t off = 0; off < count; off += kChunk) {
      chunks.push_back({i, data + off, std::min(kChunk, count - off)});
    }
  }
  std::vector<uint32_t> part(chunks.size());
#pragma omp parallel for schedule(dynamic, 1)
  for (size_t c = 0; c < chunks.size(); ++c) {
    part[c] = io::crc32(chunks[c].data, chunks[c].count * sizeof(float));
  }
  std::vector<uint32_t> crcs(spans.size(), 0);
  std::vector<bool> started(spans.size(), false);
  for (size_t c = 0; c < chunks.size(); ++c) {
    const size_t i = chunks[c].span;
    crcs[i] =
        started[i] ? io::crc32_combine(crcs[i], part[c], chunks[c].count * sizeof(float)) : part[c];
    started[i] = true;
  }
  return crcs;
}

// The CRC-32 of a whole tensor from the CRCs of its tiles (in order, tiling it).
uint32_t combine_tiles(const std::vector<Tile>& tiles, const uint32_t* crcs) {
  uint32_t crc = 0;
  for (size_t j = 0; j < tiles.size(); ++j) {
    crc = io::crc32_combine(crc, crcs[j], (tiles[j].end - tiles[j].begin) * sizeof(float));
  }
  return crc;
}

// A dataset to load: its handle, file shape and stored checksum, the range this rank asks for
// (held) and the part of it stored in the file (readable: rows < valid_rows; the rest of held is
// zero-filled), and who checksums which piece of it (tiles, when it has a checksum).
struct LoadItem {
  const TensorRef* tensor = nullptr;
  std::string path;
  H5Id dset;
  std::vector<hsize_t> file_dims;
  std::optional<int64_t> checksum;
  FlatRange held, readable;
  std::vector<Tile> tiles;
  size_t first_tile = 0;   // index of tiles[0] in the vector of all tiles' CRCs
  bool has_extra = false;  // some tile needs a second read
};

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
  hsize_t limit = element_count(want);  // flat elements below it are stored in the file
  if (t.valid_rows < 0) {
    TRIAD_CHECK(it.file_dims == want, "dataset ", it.path, " has shape ",
                io::shape_string(it.file_dims), " but the model expects ", io::shape_string(want));
  } else {
    const bool same_rank = it.file_dims.size() == want.size();
    const bool same_tail =
        same_rank && std::equal(want.begin() + 1, want.end(), it.file_dims.begin() + 1);
    TRIAD_CHECK(same_tail && it.file_dims[0] >= static_cast<hsize_t>(t.valid_rows), "dataset ",
                it.path, " has shape ", io::shape_string(it.file_dims), " but the model expects ",
                io::shape_string(want), " with at least ", t.valid_rows, " rows stored");
    // Same row length in the file and the model: flat index e is the same element in both.
    limit = static_cast<hsize_t>(t.valid_rows) * element_count({want.begin() + 1, want.end()});
  }
  it.held = held_range(t);
  it.readable = {std::min(it.held.begin, limit), std::min(it.held.end, limit)};
  it.checksum = io::read_int64_attr(it.dset, "checksum");
  return it;
}

// Reads the readable part of the rank's range (independent I/O) and zero-fills the rest.
void read_item(LoadItem& it, hid_t dxpl) {
  float* data = it.tensor->data;
  if (!it.readable.empty()) {
    transfer_ranges(it.dset, it.file_dims, {it.readable}, data, dxpl, Direction::kRead,
                    "cannot read dataset " + it.path);
  }
  const hsize_t zero_from = std::max(it.held.begin, it.readable.end);
  if (zero_from < it.held.end) {
    std::fill(data + (zero_from - it.held.begin), data + (it.held.end - it.held.begin), 0.0f);
  }
}

// Reads the tiles nobody asked for that this rank checksums (independent I/O) and stores their
// CRCs.
void read_extra_tiles(LoadItem& it, hid_t dxpl, int rank, std::vector<uint32_t>& crcs) {
  std::vector<FlatRange> ranges;
  hsize_t n = 0;
  for (const Tile& t : it.tiles) {
    if (t.extra && t.rank == rank) {
      ranges.push_back({t.begin, t.end});
      n += t.end - t.begin;
    }
  }
  if (n == 0) return;
  std::vector<float> buffer(n);
  transfer_ranges(it.dset, it.file_dims, ranges, buffer.data(), dxpl, Direction::kRead,
                  "cannot read dataset " + it.path);
  hsize_t off = 0;
  for (size_t j = 0; j < it.tiles.size(); ++j) {
    const Tile& t = it.tiles[j];
    if (!t.extra || t.rank != rank) continue;
    crcs[it.first_tile + j] = io::crc32(buffer.data() + off, (t.end - t.begin) * sizeof(float));
    off += t.end - t.begin;
  }
}

// The CRCs of the tiles this rank checksums from what it has read (in its tensors' buffers).
void checksum_read_tiles(const std::vector<LoadItem>& items, int rank,
                         std::vector<uint32_t>& crcs) {
  std::vector<std::pair<const float*, size_t>> spans;
  std::vector<size_t> where;
  for (const LoadItem& it : items) {
    for (size_t j = 0; j < it.tiles.size(); ++j) {
      const Tile& t = it.tiles[j];
      if (t.extra || t.rank != rank) continue;
      TRIAD_ASSERT(it.readable.begin <= t.begin && t.end <= it.readable.end);
      spans.emplace_back(it.tensor->data + (t.begin - it.held.begin), t.end - t.begin);
      where.push_back(it.first_tile + j);
    }
  }
  const std::vector<uint32_t> got = crc32_many(spans);
  for (size_t k = 0; k < got.size(); ++k) crcs[where[k]] = got[k];
}

// Compares each dataset's stored checksum with the one combined from the tiles' CRCs (the same
// values on every rank, so every rank reaches the same verdict).
void verify_items(const std::vector<LoadItem>& items, const std::vector<uint32_t>& crcs) {
  for (const LoadItem& it : items) {
    if (!it.checksum.has_value()) continue;
    const int64_t computed = combine_tiles(it.tiles, crcs.data() + it.first_tile);
    TRIAD_CHECK(computed == *it.checksum, "dataset ", it.path, " fails its checksum (stored ",
                *it.checksum, ", computed ", computed, "): the file is damaged");
  }
}

}  // namespace

// ---- public -----------------------------------------------------------------------------------

void save_checkpoint(MPI_Comm comm, const std::string& path, const CheckpointState& state,
                     const std::vector<TensorGroup>& groups) {
  io::silence_hdf5_errors();
  const std::string partial = path + ".partial";
  const int rank = comm_rank(comm);
  int size = 1;
  MPI_Comm_size(comm, &size);
  try {
    collective_phase(comm, [&] {
      validate_groups(groups);
      const fs::path parent = fs::path(partial).parent_path();
      std::error_code ec;
      TRIAD_CHECK(parent.empty() || fs::is_directory(parent, ec), "directory ", parent.string(),
                  " does not exist");
    });

    // Who writes what: every rank announces its range of each tensor; all ranks derive the
    // same writers (plan_writes) and the checksums of the full tensors from the writers' CRCs
    // of their ranges (every rank must write identical attribute values).
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
      const FlatRange r = held_range(*flat[i]);
      int64_t* f = &announce[i * kSaveFields];
      f[0] = static_cast<int64_t>(element_count(to_dims(flat[i]->shape)));
      f[1] = static_cast<int64_t>(r.begin);
      f[2] = static_cast<int64_t>(r.end);
      f[3] = (flat[i]->write ? kFlagWrite : 0) | (flat[i]->end < 0 ? kFlagWhole : 0);
    }
    const std::vector<int64_t> announced = allgather_int64(comm, announce);
    std::vector<std::vector<Tile>> plan;
    collective_phase(comm, [&] { plan = plan_writes(announced, size, names); });
    // This rank's write range of each tensor (empty if it writes nothing of it).
    std::vector<FlatRange> mine(n);
    for (size_t i = 0; i < n; ++i) {
      for (const Tile& t : plan[i]) {
        if (t.rank == rank) mine[i] = {t.begin, t.end};
      }
    }

    collective_phase(comm, [&] {
      if (rank == 0) reserve_space(partial, estimated_file_bytes(state, groups));
    });

    std::vector<uint32_t> crcs(n, 0);
    {
      std::vector<std::pair<const float*, size_t>> spans(n, {nullptr, 0});
      for (size_t i = 0; i < n; ++i) {
        if (!mine[i].empty()) spans[i] = {flat[i]->data, mine[i].size()};
      }
      const std::vector<uint32_t> local = crc32_many(spans);
      std::vector<uint32_t> all(n * static_cast<size_t>(size));
      if (n > 0) {
        MPI_Allgather(local.data(), static_cast<int>(n), MPI_UINT32_T, all.data(),
                      static_cast<int>(n), MPI_UINT32_T, comm);
      }
      for (size_t i = 0; i < n; ++i) {
        std::vector<uint32_t> tile_crcs;
        for (const Tile& t : plan[i]) tile_crcs.push_back(all[static_cast<size_t>(t.rank) * n + i]);
        crcs[i] = combine_tiles(plan[i], tile_crcs.data());
      }
    }

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

      // Data: one collective write per tensor, each rank selecting its own range.
      for (size_t i = 0; i < n; ++i) {
        collective_phase(comm, [&] {
          transfer_ranges(dsets[i], to_dims(flat[i]->shape), {mine[i]}, flat[i]->data, dxpl,
                          Direction::kWrite, "cannot write dataset " + names[i] + " to " + partial);
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
  io::silence_hdf5_errors();
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
  io::silence_hdf5_errors();
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
      }
      dxpl = read_dxpl();
    });
    collective_phase(comm, [&] { check_same_tensor_count(comm, items.size()); });

    // Who checksums which piece of each tensor, from the ranges every rank reads.
    const int rank = comm_rank(comm);
    int size = 1;
    MPI_Comm_size(comm, &size);
    std::vector<int64_t> local(2 * items.size());
    for (size_t i = 0; i < items.size(); ++i) {
      local[2 * i] = static_cast<int64_t>(items[i].readable.begin);
      local[2 * i + 1] = static_cast<int64_t>(items[i].readable.end);
    }
    const std::vector<int64_t> all = allgather_int64(comm, local);
    size_t n_tiles = 0;
    collective_phase(comm, [&] {
      for (size_t i = 0; i < items.size(); ++i) {
        LoadItem& it = items[i];
        if (!it.checksum.has_value()) continue;
        std::vector<FlatRange> readable(size);
        for (int r = 0; r < size; ++r) {
          const int64_t* f = &all[(static_cast<size_t>(r) * items.size() + i) * 2];
          readable[r] = {static_cast<hsize_t>(f[0]), static_cast<hsize_t>(f[1])};
        }
        it.tiles = plan_verification(element_count(it.file_dims), readable);
        it.first_tile = n_tiles;
        n_tiles += it.tiles.size();
        it.has_extra =
            std::any_of(it.tiles.begin(), it.tiles.end(), [](const Tile& t) { return t.extra; });
      }
    });
    std::vector<uint32_t> crcs(n_tiles, 0);

    // The data: independent reads (read_dxpl), so the ranks agree once, after all of them.
    collective_phase(comm, [&] {
      for (LoadItem& it : items) read_item(it, dxpl);
      for (LoadItem& it : items) {
        if (it.has_extra) read_extra_tiles(it, dxpl, rank, crcs);
      }
      checksum_read_tiles(items, rank, crcs);
    });
    if (n_tiles > 0) {
      MPI_Allreduce(MPI_IN_PLACE, crcs.data(), static_cast<int>(n_tiles), MPI_UINT32_T, MPI_BXOR,
                    comm);
    }
    collective_phase(comm, [&] { verify_items(items, crcs); });
  } catch (const Error& e) {
    fail("checkpoint ", path, ": ", e.what());
  }
}

bool checkpoint_has_group(MPI_Comm comm, const std::string& file, const std::string& path) {
  io::silence_hdf5_errors();
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
