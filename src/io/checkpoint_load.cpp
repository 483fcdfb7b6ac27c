// Reading checkpoints (DESIGN.md §5, checkpoint.h): read_checkpoint_state,
// load_checkpoint_tensors, checkpoint_has_group. The directory logic is in checkpoint_dir.cpp,
// saving in checkpoint_save.cpp, the /model attributes in model_attributes.cpp. Every HDF5
// metadata operation (file open/close, groups, datasets, attributes) is made by all ranks of
// comm with identical arguments. Each rank reads its ranges with independent I/O (see
// read_dxpl), and plan_verification splits each tensor among the ranks for checksumming,
// preferring pieces a rank has read anyway; the XOR of the ranks' terms is the tensor's CRC-32
// (shard.h, "placed CRCs"). After each phase the ranks agree on failure (collective.h), so an
// error on one rank makes all throw.
#include <algorithm>
#include <bit>
#include <cmath>
#include <filesystem>
#include <optional>
#include <set>

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

static_assert(std::endian::native == std::endian::little,
              "checksums are defined over little-endian fp32 bytes");

// ---- who verifies what -------------------------------------------------------------------------

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

// Validates the root and /model attributes and returns them.
CheckpointState read_state(hid_t file) {
  const std::optional<std::string> format = io::read_string_attr(file, "format");
  TRIAD_CHECK(format.has_value(), "not a triad checkpoint (no 'format' attribute)");
  TRIAD_CHECK(*format == kCheckpointFormat, "not a triad checkpoint (format is '", *format,
              "', expected '", kCheckpointFormat, "')");
  const std::optional<int64_t> version = io::read_int64_attr(file, "format_version");
  TRIAD_CHECK(version.has_value(), "attribute format_version is missing");
  TRIAD_CHECK(*version == kCheckpointFormatVersion, "unsupported format_version ", *version,
              " (this build reads version ", kCheckpointFormatVersion, ")");
  const std::optional<int64_t> complete = io::read_int64_attr(file, "complete");
  TRIAD_CHECK(
      complete.has_value() && *complete == 1, "incomplete checkpoint (attribute complete is ",
      complete ? std::to_string(*complete) : std::string("missing"), "; the save did not finish)");

  CheckpointState s;
  s.step = require_int64_attr(file, "/", "step");
  s.tokens_seen = require_int64_attr(file, "/", "tokens_seen");
  s.next_sequence = require_int64_attr(file, "/", "next_sequence");
  s.epoch = require_int64_attr(file, "/", "epoch");
  TRIAD_CHECK(s.step >= 0 && s.tokens_seen >= 0 && s.next_sequence >= 0 && s.epoch >= 0,
              "attributes step, tokens_seen, next_sequence and epoch of / must be >= 0 (they are ",
              s.step, ", ", s.tokens_seen, ", ", s.next_sequence, ", ", s.epoch, ")");
  // (train.steps' bound: the step of a checkpoint's name has 8 digits)
  TRIAD_CHECK(s.step <= kMaxCheckpointStep, "attribute step of / is ", s.step, ", beyond any run (",
              kMaxCheckpointStep, ")");
  const std::optional<std::string> config = io::read_string_attr(file, "config");
  TRIAD_CHECK(config.has_value(), "attribute config of / is missing");
  s.config = *config;
  s.grid = io::read_string_attr(file, "grid").value_or("");
  s.loss_window = io::read_doubles_attr(file, "loss_window").value_or(std::vector<double>{});
  s.norm_window = io::read_doubles_attr(file, "grad_norm_window").value_or(std::vector<double>{});
  // The windows hold finite losses and norms only (a non-finite one is skipped, never kept): a
  // NaN would make every z-score NaN and turn the skipping off without a word.
  for (const auto& [name, values] :
       {std::pair<const char*, const std::vector<double>&>{"loss_window", s.loss_window},
        {"grad_norm_window", s.norm_window}})
    for (double v : values)
      TRIAD_CHECK(std::isfinite(v), "attribute ", name, " of / holds ", v,
                  " (a window of finite values only)");
  for (const auto& [name, values] : {std::pair<const char*, std::vector<double>&>{
                                         "preference_reference", s.preference_reference},
                                     {"preference_val_reference", s.preference_val_reference}}) {
    values = io::read_doubles_attr(file, name).value_or(std::vector<double>{});
    for (double v : values)  // log-probabilities
      TRIAD_CHECK(std::isfinite(v), "attribute ", name, " of / holds ", v,
                  " (log-probabilities: finite numbers)");
  }
  s.skipped_in_a_row = io::read_int64_attr(file, "skipped_in_a_row").value_or(0);
  TRIAD_CHECK(s.skipped_in_a_row >= 0, "attribute skipped_in_a_row of / must be >= 0 (it is ",
              s.skipped_in_a_row, ")");

  TRIAD_CHECK(io::link_exists(file, "model"), "group /model is missing");
  H5Id model = io::own_group(H5Gopen2(file, "model", H5P_DEFAULT), "cannot open group /model");
  s.model = read_model_attributes(model);
  return s;
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
  bool nonnegative = false;  // TensorGroup::nonnegative
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

// Whether the n floats at data are all finite, and whether none is below zero (one pass).
struct ValueCheck {
  bool finite = true, nonnegative = true;
};
ValueCheck check_values(const float* data, hsize_t n) {
  bool finite = true, nonnegative = true;
#pragma omp parallel for reduction(&& : finite, nonnegative) schedule(static)
  for (int64_t i = 0; i < static_cast<int64_t>(n); ++i) {
    finite = finite && std::isfinite(data[i]);
    nonnegative = nonnegative && !(data[i] < 0.0f);
  }
  return {finite, nonnegative};
}

LoadItem open_for_load(hid_t file, const TensorGroup& g, const TensorRef& t) {
  LoadItem it;
  it.tensor = &t;
  it.path = dataset_path(g, t);
  it.nonnegative = g.nonnegative;
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
    // (Its checksum is of fp32 bytes: another width would load converted, unverifiable.)
    TRIAD_CHECK(H5Tget_size(type) == 4, "dataset ", it.path, " holds ", 8 * H5Tget_size(type),
                "-bit floats; a triad checkpoint's tensors are fp32");
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
    const int rank = rank_in(comm);
    const int size = size_of(comm);
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
        // (Every writer gives each dataset one: without it a damaged tensor would load unseen.)
        TRIAD_CHECK(items[i].checksum.has_value(), "dataset ", items[i].path,
                    " has no checksum attribute (the CRC-32 every dataset of a triad checkpoint "
                    "has): the file is damaged or not a triad checkpoint");
        if (element_count(items[i].file_dims) > 0) {
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
    // Intact but not finite, or below zero where it never is (TensorGroup::nonnegative): the
    // first such tensor any rank holds, one not finite before one negative, named on every rank.
    // (bad: i for tensor i not finite, n + i for it negative, 2n for none.)
    const int64_t N = static_cast<int64_t>(n), none = 2 * N;
    int64_t bad = none;
    for (size_t i = 0; i < n && bad >= N; ++i) {
      const ValueCheck v = check_values(items[i].tensor->data, items[i].readable.size());
      if (!v.finite)
        bad = static_cast<int64_t>(i);
      else if (items[i].nonnegative && !v.nonnegative && bad == none)
        bad = N + static_cast<int64_t>(i);
    }
    bad = allreduce_min(comm, bad);
    TRIAD_CHECK(bad >= N, "dataset ", items[size_t(bad)].path,
                " holds values that are not finite (NaN or infinity): a model or optimizer state "
                "with them cannot be evaluated or trained");
    TRIAD_CHECK(bad == none, "dataset ", items[size_t(bad - N)].path,
                " holds negative values, which second moments (averages of squares) never are: "
                "the file is damaged");
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
