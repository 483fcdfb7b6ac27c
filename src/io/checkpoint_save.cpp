// Saving a checkpoint (DESIGN.md §5, checkpoint.h): save_checkpoint. Every HDF5 metadata
// operation (file create/close, groups, datasets, attributes) is made by all ranks of comm with
// identical arguments. The ranks exchange their ranges and splits of each tensor, plan_writes
// picks the writers (checking that they partition each tensor), each writer checksums its pieces
// at their positions in the full tensor and the XOR of all ranks' terms is the full tensor's
// CRC-32 (shard.h, "placed CRCs"); each tensor is written with one collective H5Dwrite. After
// each phase the ranks agree on failure (collective.h), so an error on one rank makes all throw.
// The file is written as <path>.partial, in space reserved up front, and renamed once complete.
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>

#include "collective.h"
#include "hdf5_handle.h"
#include "model_attributes.h"
#include "tensor_layout.h"
#include "triad/io/checkpoint.h"
#include "triad/parallel/comm.h"

namespace triad {
namespace {

namespace fs = std::filesystem;
using namespace io;

// A hash of a shape, to check that the ranks agree on it.
int64_t shape_hash(const std::vector<int64_t>& shape) {
  uint64_t h = 1469598103934665603ull;
  for (int64_t d : shape) h = (h ^ static_cast<uint64_t>(d)) * 1099511628211ull;
  return static_cast<int64_t>(h ^ shape.size());
}

// ---- who writes what ---------------------------------------------------------------------------

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

// Writes: collective MPI-IO (the ranks write disjoint ranges; aggregation helps parallel file
// systems).
H5Id collective_dxpl() {
  H5Id dxpl = io::make_plist(H5P_DATASET_XFER);
  h5check(H5Pset_dxpl_mpio(dxpl, H5FD_MPIO_COLLECTIVE), "cannot select collective transfers");
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

}  // namespace

void save_checkpoint(MPI_Comm comm, const std::string& path, const CheckpointState& state,
                     const std::vector<TensorGroup>& groups) {
  const auto hdf5 = io::hdf5_lock();
  const std::string partial = path + ".partial";
  const int rank = rank_in(comm);
  const int size = size_of(comm);
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
        io::write_string_attr(file, "format", kCheckpointFormat);
        io::write_int64_attr(file, "format_version", kCheckpointFormatVersion);
        io::write_int64_attr(file, "step", state.step);
        io::write_int64_attr(file, "tokens_seen", state.tokens_seen);
        io::write_int64_attr(file, "next_sequence", state.next_sequence);
        io::write_int64_attr(file, "epoch", state.epoch);
        io::write_string_attr(file, "config", state.config);
        io::write_string_attr(file, "grid", state.grid);
        io::write_doubles_attr(file, "loss_window", state.loss_window);
        io::write_doubles_attr(file, "grad_norm_window", state.norm_window);
        io::write_int64_attr(file, "skipped_in_a_row", state.skipped_in_a_row);
        if (!state.preference_reference.empty())
          io::write_doubles_attr(file, "preference_reference", state.preference_reference);
        if (!state.preference_val_reference.empty())
          io::write_doubles_attr(file, "preference_val_reference", state.preference_val_reference);

        H5Id lcpl = io::make_plist(H5P_LINK_CREATE);
        h5check(H5Pset_create_intermediate_group(lcpl, 1), "cannot set up link creation");
        H5Id dcpl = io::make_plist(H5P_DATASET_CREATE);
        h5check(H5Pset_layout(dcpl, H5D_CONTIGUOUS), "cannot set up dataset creation");
        h5check(H5Pset_fill_time(dcpl, H5D_FILL_TIME_NEVER), "cannot set up dataset creation");
        h5check(H5Pset_alloc_time(dcpl, H5D_ALLOC_TIME_EARLY), "cannot set up dataset creation");

        {
          H5Id model = open_or_create_group(file, "model", lcpl);
          write_model_attributes(model, state.model);
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

}  // namespace triad
