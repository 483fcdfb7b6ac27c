// Checkpoint files (DESIGN.md §5): save_checkpoint, read_checkpoint_state,
// load_checkpoint_tensors, checkpoint_has_group. The directory logic is in checkpoint_dir.cpp.
//
// Parallel structure: every HDF5 metadata operation (file create/open/close, groups,
// datasets, attributes) is made by all ranks of comm with identical arguments; tensor data
// moves with collective transfers in which each rank selects the block it owns (write) or
// needs (read) — owned_block / needed_block are the only places that decide this, so sharded
// owners (ZeRO, tensor-parallel slices) change only those selections. After each phase the
// ranks agree on failure (collective.h), so an error on one rank makes all throw.
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
      TRIAD_CHECK(t.data != nullptr || element_count(to_dims(t.shape)) == 0, "tensor ", p,
                  " has no data buffer");
      TRIAD_CHECK(t.valid_rows >= -1 && t.valid_rows <= t.shape[0], "tensor ", p,
                  " has valid_rows ", t.valid_rows, " outside [-1, ", t.shape[0], "]");
    }
  }
}

// ---- selections: the only code that decides who writes / reads what ----------------------------

// A block [start, start + count) of a dataset and the contiguous host buffer holding it.
// count all zero (or empty) = this rank selects nothing but still joins the collective call.
struct Block {
  std::vector<hsize_t> start, count;
  float* data = nullptr;
};

// Every element is written once: for now every rank holds whole tensors and rank 0 writes
// them. With sharded owners this returns the rank's own slice.
Block owned_block(const TensorRef& t, int rank) {
  const std::vector<hsize_t> dims = to_dims(t.shape);
  Block b;
  b.start.assign(dims.size(), 0);
  b.count = rank == 0 ? dims : std::vector<hsize_t>(dims.size(), 0);
  b.data = t.data;
  return b;
}

// On load every rank reads the whole dataset (file_dims), into `buffer`.
Block needed_block(const std::vector<hsize_t>& file_dims, float* buffer) {
  Block b;
  b.start.assign(file_dims.size(), 0);
  b.count = file_dims;
  b.data = buffer;
  return b;
}

enum class Direction { kWrite, kRead };

// One collective H5Dwrite / H5Dread of block b of dataset dset (fp32 in memory).
void transfer_block(hid_t dset, const Block& b, hid_t dxpl, Direction dir,
                    const std::string& what) {
  H5Id fspace = io::own_dataspace(H5Dget_space(dset), what);
  const hsize_t n = element_count(b.count);
  H5Id mspace;
  if (n == 0) {
    h5check(H5Sselect_none(fspace), what);
    const hsize_t one = 1;
    mspace = io::own_dataspace(H5Screate_simple(1, &one, nullptr), what);
    h5check(H5Sselect_none(mspace), what);
  } else {
    h5check(H5Sselect_hyperslab(fspace, H5S_SELECT_SET, b.start.data(), nullptr, b.count.data(),
                                nullptr),
            what);
    mspace = io::own_dataspace(
        H5Screate_simple(static_cast<int>(b.count.size()), b.count.data(), nullptr), what);
  }
  float dummy = 0;  // HDF5 wants a buffer even for an empty selection
  float* buf = b.data != nullptr ? b.data : &dummy;
  if (dir == Direction::kWrite) {
    h5check(H5Dwrite(dset, H5T_NATIVE_FLOAT, mspace, fspace, dxpl, buf), what);
  } else {
    h5check(H5Dread(dset, H5T_NATIVE_FLOAT, mspace, fspace, dxpl, buf), what);
  }
}

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

// A dataset to load: its handle, file shape, stored checksum and where its data is read to
// (the tensor itself, or `temp` when the file's first dim differs from the model's).
struct LoadItem {
  const TensorRef* tensor = nullptr;
  std::string path;
  H5Id dset;
  std::vector<hsize_t> file_dims;
  std::optional<int64_t> checksum;
  std::vector<float> temp;
  float* buffer = nullptr;
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
  }
  it.checksum = io::read_int64_attr(it.dset, "checksum");
  return it;
}

// Reads one dataset (collective) into it.buffer.
void read_item(LoadItem& it, hid_t dxpl) {
  const TensorRef& t = *it.tensor;
  it.buffer = t.data;
  if (it.file_dims != to_dims(t.shape)) {
    it.temp.resize(element_count(it.file_dims));
    it.buffer = it.temp.data();
  }
  transfer_block(it.dset, needed_block(it.file_dims, it.buffer), dxpl, Direction::kRead,
                 "cannot read dataset " + it.path);
}

// Checks the checksums of all read items (in parallel; every rank holds whole tensors).
void verify_items(const std::vector<LoadItem>& items) {
  std::vector<int64_t> computed(items.size(), -1);
#pragma omp parallel for schedule(dynamic, 1)
  for (size_t i = 0; i < items.size(); ++i) {
    if (items[i].checksum.has_value()) {
      computed[i] = io::crc32(items[i].buffer, element_count(items[i].file_dims) * sizeof(float));
    }
  }
  for (size_t i = 0; i < items.size(); ++i) {
    const LoadItem& it = items[i];
    TRIAD_CHECK(!it.checksum.has_value() || computed[i] == *it.checksum, "dataset ", it.path,
                " fails its checksum (stored ", it.checksum.value_or(-1), ", computed ",
                computed[i], "): the file is damaged");
  }
}

// Copies rows < valid_rows from a temporary buffer and zero-fills the padding rows.
void finish_item(LoadItem& it) {
  const TensorRef& t = *it.tensor;
  if (t.valid_rows >= 0) {
    const std::vector<hsize_t> want = to_dims(t.shape);
    const size_t row = element_count(want) / std::max<hsize_t>(want[0], 1);
    const size_t valid = static_cast<size_t>(t.valid_rows) * row;
    if (it.buffer != t.data && valid > 0) std::memcpy(t.data, it.buffer, valid * sizeof(float));
    std::fill(t.data + valid, t.data + element_count(want), 0.0f);
  }
  it.temp = std::vector<float>();
}

}  // namespace

// ---- public -----------------------------------------------------------------------------------

void save_checkpoint(MPI_Comm comm, const std::string& path, const CheckpointState& state,
                     const std::vector<TensorGroup>& groups) {
  io::silence_hdf5_errors();
  const std::string partial = path + ".partial";
  const int rank = comm_rank(comm);
  try {
    collective_phase(comm, [&] {
      validate_groups(groups);
      const fs::path parent = fs::path(partial).parent_path();
      std::error_code ec;
      TRIAD_CHECK(parent.empty() || fs::is_directory(parent, ec), "directory ", parent.string(),
                  " does not exist");
    });

    collective_phase(comm, [&] {
      if (rank == 0) reserve_space(partial, estimated_file_bytes(state, groups));
    });

    // Checksums of the full tensors, computed by rank 0 (which holds them) and shared: every
    // rank must write identical attribute values.
    size_t n_tensors = 0;
    for (const TensorGroup& g : groups) n_tensors += g.tensors.size();
    std::vector<uint32_t> crcs(n_tensors, 0);
    if (rank == 0) {
      std::vector<const TensorRef*> flat;
      for (const TensorGroup& g : groups) {
        for (const TensorRef& t : g.tensors) flat.push_back(&t);
      }
#pragma omp parallel for schedule(dynamic, 1)
      for (size_t i = 0; i < flat.size(); ++i) {
        crcs[i] = io::crc32(flat[i]->data, element_count(to_dims(flat[i]->shape)) * sizeof(float));
      }
    }
    if (n_tensors > 0) {
      MPI_Bcast(crcs.data(), static_cast<int>(n_tensors), MPI_UINT32_T, 0, comm);
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

      // Data: one collective write per tensor.
      size_t i = 0;
      for (const TensorGroup& g : groups) {
        for (const TensorRef& t : g.tensors) {
          collective_phase(comm, [&] {
            transfer_block(dsets[i], owned_block(t, rank), dxpl, Direction::kWrite,
                           "cannot write dataset " + dataset_path(g, t) + " to " + partial);
          });
          ++i;
        }
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
      dxpl = collective_dxpl();
    });
    for (LoadItem& it : items) {
      collective_phase(comm, [&] { read_item(it, dxpl); });
    }
    collective_phase(comm, [&] {
      verify_items(items);
      for (LoadItem& it : items) finish_item(it);
    });
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
