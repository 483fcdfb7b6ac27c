// metrics.h5 (DESIGN.md §5), written by rank 0 only with the default (sec2) driver. Rows are
// buffered in memory and written by flush(): each column is extended once and written with
// one H5Dwrite, then H5Fflush makes them visible to a reader (h5py) that opens the file
// afterwards. File locking is off so such a reader can open the file while it is held here.
// Writes are paced (flush_due): a reader that catches one midway must read again, and a
// parallel file system's metadata server should not see hundreds of flushes a second from a
// small model evaluating every few steps.
#include "triad/io/metrics.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <limits>
#include <vector>

#include "hdf5_handle.h"
#include "triad/io/set_aside_path.h"

namespace triad {
namespace {

namespace fs = std::filesystem;
using io::h5check;
using io::H5Id;

constexpr hsize_t kChunkRows = 1024;
constexpr size_t kAutoFlushRows = 4096;  // bound the buffer if the caller rarely flushes
using Clock = std::chrono::steady_clock;
// flush_due's pace: no sooner than a second after the previous write (rows it keeps back are
// written at the first append a second after it); a live run's training rows are on disk
// within half a minute even between evaluations.
constexpr Clock::duration kMinWriteGap = std::chrono::seconds(1);
constexpr Clock::duration kMaxWriteGap = std::chrono::seconds(30);

// One column: an int64 or a float64 dataset of rows (1-D), or of rows of `width` float64
// values (2-D [rows, width]; width 0: as the file has it), and its rows not yet written.
struct Column {
  std::string name;
  bool is_int = false;
  hsize_t width = 1;
  bool wide = false;  // a 2-D dataset
  H5Id dset;
  std::vector<int64_t> ints;
  std::vector<double> doubles;

  size_t buffered() const {
    return is_int ? ints.size() : doubles.size() / std::max<hsize_t>(width, 1);
  }
  int rank() const { return wide ? 2 : 1; }
  std::vector<hsize_t> dims(hsize_t rows) const {
    return wide ? std::vector<hsize_t>{rows, width} : std::vector<hsize_t>{rows};
  }
  hid_t file_type() const { return is_int ? H5T_STD_I64LE : H5T_IEEE_F64LE; }
  hid_t mem_type() const { return is_int ? H5T_NATIVE_INT64 : H5T_NATIVE_DOUBLE; }
  const void* data() const {
    return is_int ? static_cast<const void*>(ints.data()) : doubles.data();
  }
  void clear() {
    ints.clear();
    doubles.clear();
  }
};

// A group of equal-length columns; column 0 is `step`.
struct Table {
  std::string group;
  std::vector<Column> cols;
  hsize_t rows_in_file = 0;

  Column& col(size_t i) { return cols[i]; }
};

Table make_table(const std::string& group, const std::vector<std::pair<const char*, bool>>& spec) {
  Table t;
  t.group = group;
  for (const auto& [name, is_int] : spec) {
    Column c;
    c.name = name;
    c.is_int = is_int;
    t.cols.push_back(std::move(c));
  }
  return t;
}

// A table of `step` (int64) and the float64 columns `values` (/norms, /activations).
Table step_table(const std::string& group, const std::vector<std::string>& values) {
  std::vector<std::pair<const char*, bool>> spec{{"step", true}};
  for (const auto& v : values) spec.emplace_back(v.c_str(), false);
  return make_table(group, spec);
}

// A table of `step` and float64 columns of `width` values each (/moe_load; width 0: as the file
// has them).
Table wide_table(const std::string& group, const std::vector<std::string>& values, hsize_t width) {
  Table t = step_table(group, values);
  for (size_t i = 1; i < t.cols.size(); ++i) {
    t.cols[i].wide = true;
    t.cols[i].width = width;
  }
  return t;
}

// /noise's columns besides step (train.noise_every).
const std::vector<std::string> kNoiseColumns{"small_sq", "small_tokens", "big_sq", "big_tokens"};

// An evaluation's table: /val, and /val_ema (eval.ema: the same under the moving average).
Table val_table(const std::string& group) {
  return make_table(group, {{"step", true},
                            {"loss", false},
                            {"accuracy", false},
                            {"choice_accuracy", false},
                            {"choice_accuracy_by_sum", false},
                            {"choice_accuracy_by_chars", false},
                            {"bpb", false},
                            {"dpo_loss", false},
                            {"dpo_accuracy", false},
                            {"dpo_margin", false}});
}

// A row of a val_table; whether the table's buffer is due to be written.
bool append_val_row(Table& t, const ValRow& r) {
  t.col(0).ints.push_back(r.step);
  t.col(1).doubles.push_back(r.loss);
  t.col(2).doubles.push_back(r.accuracy);
  t.col(3).doubles.push_back(r.choice_accuracy);
  t.col(4).doubles.push_back(r.choice_accuracy_by_sum);
  t.col(5).doubles.push_back(r.choice_accuracy_by_chars);
  t.col(6).doubles.push_back(r.bpb);
  t.col(7).doubles.push_back(r.dpo_loss);
  t.col(8).doubles.push_back(r.dpo_accuracy);
  t.col(9).doubles.push_back(r.dpo_margin);
  return t.col(0).buffered() >= kAutoFlushRows;
}

// A validation set's table: /val_sets/<name> (eval.sets), /val_ema_sets/<name> (eval.sets under
// eval.ema's moving average).
Table score_table(const std::string& group) {
  return make_table(group, {{"step", true}, {"loss", false}, {"accuracy", false}, {"bpb", false}});
}

// A row of a score_table; whether the table's buffer is due to be written.
bool append_score(Table& t, int64_t step, double loss, double accuracy, double bpb) {
  t.col(0).ints.push_back(step);
  t.col(1).doubles.push_back(loss);
  t.col(2).doubles.push_back(accuracy);
  t.col(3).doubles.push_back(bpb);
  return t.col(0).buffered() >= kAutoFlushRows;
}

// A row of a table of losses by position (/val_positions, /val_set_positions/<name>); whether
// the table's buffer is due to be written.
bool append_position_row(Table& t, int64_t step, const std::vector<double>& loss) {
  TRIAD_ASSERT(loss.size() == size_t(t.cols[1].width));
  t.col(0).ints.push_back(step);
  t.col(1).doubles.insert(t.col(1).doubles.end(), loss.begin(), loss.end());
  return t.col(0).buffered() >= kAutoFlushRows;
}

}  // namespace

struct MetricsWriter::Impl {
  std::string path;
  H5Id file;
  Table train = make_table("train", {{"step", true},
                                     {"loss", false},
                                     {"lr", false},
                                     {"grad_norm", false},
                                     {"tokens_per_sec", false},
                                     {"mfu", false},
                                     {"step_ms", false},
                                     {"tokens", true},
                                     {"skipped", false},
                                     {"z_loss", false},
                                     {"moe_aux_loss", false},
                                     {"moe_max_load", false},
                                     {"moe_z_loss", false},
                                     {"moe_dropped", false},
                                     {"mtp_loss", false},
                                     {"dpo_accuracy", false},
                                     {"dpo_margin", false}});
  Table val = val_table("val");

  // Set once a write failed (and was reported): the destructor does not try again and report it
  // a second time on the way out.
  mutable bool failed = false;
  Clock::time_point written = Clock::now();  // the last flush
  bool held = false;                         // flush_due kept rows back since then

  // Whether an append should write the rows buffered (besides kAutoFlushRows).
  bool due() const { return Clock::now() - written >= (held ? kMinWriteGap : kMaxWriteGap); }

  [[noreturn]] void fail_here(const std::string& what) const {
    failed = true;
    fail("metrics file ", path, ": ", what);
  }

  void create_file() {
    std::error_code ec;
    fs::remove(path, ec);  // a reader holding the old file keeps a consistent copy
    H5Id fapl = io::make_fapl(MPI_COMM_NULL, /*for_create=*/true);
    file = io::own_file(H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, fapl),
                        "cannot create the file");
  }

  // Empty string on success, else why the file cannot be opened.
  std::string try_open_file() {
    H5Id fapl = io::make_fapl(MPI_COMM_NULL, /*for_create=*/true);
    const hid_t id = H5Fopen(path.c_str(), H5F_ACC_RDWR, fapl);
    if (id < 0) {
      const std::string detail = io::hdf5_error_detail();
      return detail.empty() ? "unknown error" : detail;
    }
    file = H5Id(id, H5Fclose);
    return "";
  }

  // Opens or creates the group and its datasets; rows_in_file = the shortest column the file
  // had (a column it lacked, from an older triad, is created and extended with NaN to that
  // length by truncate_table's set_rows).
  void open_table(Table& t) {
    H5Id lcpl = io::make_plist(H5P_LINK_CREATE);
    h5check(H5Pset_create_intermediate_group(lcpl, 1), "cannot set up link creation");
    const std::string gwhat = "cannot create group /" + t.group;
    H5Id group =
        io::path_exists(file, t.group)  // each component: val_sets/<name> may lack val_sets
            ? io::own_group(H5Gopen2(file, t.group.c_str(), H5P_DEFAULT), gwhat)
            : io::own_group(H5Gcreate2(file, t.group.c_str(), lcpl, H5P_DEFAULT, H5P_DEFAULT),
                            gwhat);
    hsize_t rows = std::numeric_limits<hsize_t>::max();
    for (size_t i = 0; i < t.cols.size(); ++i) {
      Column& c = t.cols[i];
      const std::string what = "cannot open dataset /" + t.group + "/" + c.name;
      if (io::link_exists(group, c.name)) {
        c.dset = io::own_dataset(H5Dopen2(group, c.name.c_str(), H5P_DEFAULT), what);
        const std::vector<hsize_t> dims = io::dataset_dims(c.dset);
        if (c.wide && c.width == 0 && dims.size() == 2) c.width = dims[1];
        TRIAD_CHECK(int(dims.size()) == c.rank() && (!c.wide || dims[1] == c.width), "dataset /",
                    t.group, "/", c.name, " is not ", c.wide ? "2-D" : "1-D",
                    c.wide ? " of " + std::to_string(c.width) + " columns" : std::string());
        rows = std::min(rows, dims[0]);
      } else {
        TRIAD_ASSERT(c.width > 0);
        const std::vector<hsize_t> zero = c.dims(0), most = {H5S_UNLIMITED, c.width};
        H5Id space = io::own_dataspace(H5Screate_simple(c.rank(), zero.data(), most.data()), what);
        H5Id dcpl = io::make_plist(H5P_DATASET_CREATE);
        // Chunks of about kChunkRows values: fewer rows of a wide column.
        const std::vector<hsize_t> chunk = c.dims(std::max<hsize_t>(1, kChunkRows / c.width));
        h5check(H5Pset_chunk(dcpl, c.rank(), chunk.data()), what);
        if (!c.is_int) {  // rows of a column added to an older file read as NaN
          const double nan = std::numeric_limits<double>::quiet_NaN();
          h5check(H5Pset_fill_value(dcpl, H5T_NATIVE_DOUBLE, &nan), what);
        }
        c.dset = io::own_dataset(
            H5Dcreate2(group, c.name.c_str(), c.file_type(), space, lcpl, dcpl, H5P_DEFAULT), what);
      }
    }
    if (rows == std::numeric_limits<hsize_t>::max()) rows = 0;
    t.rows_in_file = rows;
  }

  // Keeps the leading rows with step < resume_step (and equal lengths in the group).
  void truncate_table(Table& t, int64_t resume_step) {
    hsize_t keep = t.rows_in_file;
    if (keep > 0) {
      const std::string what = "cannot read /" + t.group + "/step";
      std::vector<int64_t> steps(keep);
      H5Id fspace = io::own_dataspace(H5Dget_space(t.cols[0].dset), what);
      const hsize_t start = 0;
      h5check(H5Sselect_hyperslab(fspace, H5S_SELECT_SET, &start, nullptr, &keep, nullptr), what);
      H5Id mspace = io::own_dataspace(H5Screate_simple(1, &keep, nullptr), what);
      h5check(H5Dread(t.cols[0].dset, H5T_NATIVE_INT64, mspace, fspace, H5P_DEFAULT, steps.data()),
              what);
      keep = std::find_if(steps.begin(), steps.end(), [&](int64_t s) { return s >= resume_step; }) -
             steps.begin();
    }
    set_rows(t, keep);
  }

  void set_rows(Table& t, hsize_t rows) {
    for (Column& c : t.cols) {
      const std::vector<hsize_t> dims = c.dims(rows);
      h5check(H5Dset_extent(c.dset, dims.data()),
              "cannot resize dataset /" + t.group + "/" + c.name);
    }
    t.rows_in_file = rows;
  }

  void write_attributes(const MetricsAttributes& a) {
    io::write_string_attr(file, "config", a.config);
    io::write_string_attr(file, "grid", a.grid);
    io::write_int64_attr(file, "n_params", a.n_params);
    io::write_double_attr(file, "flops_per_token", a.flops_per_token);
    io::write_double_attr(file, "peak_flops", a.peak_flops);
  }

  void write_buffered(Table& t) {
    const hsize_t n = t.cols[0].buffered();
    if (n == 0) return;
    const hsize_t start = t.rows_in_file, total = start + n;
    for (Column& c : t.cols) {
      const std::string what = "cannot append to dataset /" + t.group + "/" + c.name;
      const std::vector<hsize_t> extent = c.dims(total), at = {start, 0}, count = c.dims(n);
      h5check(H5Dset_extent(c.dset, extent.data()), what);
      H5Id fspace = io::own_dataspace(H5Dget_space(c.dset), what);
      h5check(
          H5Sselect_hyperslab(fspace, H5S_SELECT_SET, at.data(), nullptr, count.data(), nullptr),
          what);
      H5Id mspace = io::own_dataspace(H5Screate_simple(c.rank(), count.data(), nullptr), what);
      h5check(H5Dwrite(c.dset, c.mem_type(), mspace, fspace, H5P_DEFAULT, c.data()), what);
      c.clear();
    }
    t.rows_in_file = total;
  }

  std::vector<Table> sets;           // /val_sets/<name>
  std::vector<Table> norms;          // /norms (one table, or none)
  std::vector<Table> activations;    // /activations (one table, or none)
  std::vector<Table> moe_load;       // /moe_load (one table, or none)
  std::vector<Table> positions;      // /val_positions (one table, or none)
  std::vector<Table> set_positions;  // /val_set_positions/<name> (eval.sets' positions)
  std::vector<Table> noise;          // /noise (one table, or none)
  std::vector<Table> val_ema;        // /val_ema (one table, or none)
  std::vector<Table> ema_sets;       // /val_ema_sets/<name> (eval.ema with eval.sets)

  // The tables past /train and /val: /val_sets' and the optional groups'.
  std::vector<Table*> further_tables() {
    std::vector<Table*> all;
    for (auto* group : {&sets, &norms, &activations, &moe_load, &positions, &set_positions, &noise,
                        &val_ema, &ema_sets})
      for (Table& t : *group) all.push_back(&t);
    return all;
  }

  // The names of the links in group `group` of the file (none if it has no such group).
  std::vector<std::string> members(const std::string& group) {
    std::vector<std::string> names;
    if (!io::link_exists(file, group)) return names;
    const std::string what = "cannot read /" + group;
    H5Id g = io::own_group(H5Gopen2(file, group.c_str(), H5P_DEFAULT), what);
    H5G_info_t info;
    h5check(H5Gget_info(g, &info), what);
    for (hsize_t i = 0; i < info.nlinks; ++i) {
      const ssize_t n =
          H5Lget_name_by_idx(g, ".", H5_INDEX_NAME, H5_ITER_INC, i, nullptr, 0, H5P_DEFAULT);
      h5check(int(n), what);
      std::vector<char> name(size_t(n) + 1, '\0');
      H5Lget_name_by_idx(g, ".", H5_INDEX_NAME, H5_ITER_INC, i, name.data(), name.size(),
                         H5P_DEFAULT);
      names.emplace_back(name.data());
    }
    return names;
  }

  void flush() {
    write_buffered(train);
    write_buffered(val);
    for (Table* t : further_tables()) write_buffered(*t);
    h5check(H5Fflush(file, H5F_SCOPE_GLOBAL), "cannot flush the file");
    written = Clock::now();
    held = false;
  }
};

MetricsWriter::MetricsWriter(const std::string& path, const MetricsAttributes& attrs,
                             int64_t resume_step, const std::vector<std::string>& val_sets,
                             const std::vector<std::string>& norm_groups,
                             const std::vector<std::string>& activations,
                             const std::vector<std::string>& moe_layers, int moe_experts,
                             int positions, bool noise, bool val_ema, int set_positions)
    : impl_(std::make_unique<Impl>()) {
  const auto hdf5 = io::hdf5_lock();
  Impl& m = *impl_;
  m.path = path;
  try {
    std::error_code ec;
    const bool resume = resume_step >= 0 && fs::exists(path, ec);
    if (resume) {
      // (A file this process may not write is no damaged one: it would be set aside and the
      // run's history started anew.)
      TRIAD_CHECK(::access(path.c_str(), W_OK) == 0, "cannot be written (", std::strerror(errno),
                  "); a resumed run appends its steps to it");
      if (const std::string why = m.try_open_file(); !why.empty()) {
        // A file damaged by a crash between flushes: keep it aside (beside any kept before),
        // start a new one.
        const std::string aside = fs::exists(path + ".damaged", ec)
                                      ? first_free_numbered_path(path + ".damaged.", 2)
                                      : path + ".damaged";
        fs::rename(path, aside, ec);
        TRIAD_CHECK(!ec, "cannot be opened (", why, ") nor moved aside to ", aside, ": ",
                    ec.message());
        std::cerr << "warning: metrics file " << path << " cannot be opened (" << why
                  << "); moved to " << aside << " and starting a new one\n";
      }
    }
    if (!m.file.valid()) m.create_file();
    m.write_attributes(attrs);
    m.open_table(m.train);
    m.open_table(m.val);
    for (const auto& name : val_sets) {
      m.sets.push_back(score_table("val_sets/" + name));
      if (val_ema) m.ema_sets.push_back(score_table("val_ema_sets/" + name));
      if (set_positions > 0)
        m.set_positions.push_back(
            wide_table("val_set_positions/" + name, {"loss"}, hsize_t(set_positions)));
    }
    for (auto* group : {&m.sets, &m.ema_sets, &m.set_positions})
      for (Table& t : *group) m.open_table(t);
    if (!norm_groups.empty()) {
      std::vector<std::string> names;
      for (const auto& g : norm_groups) names.push_back("grad_" + g);
      for (const auto& g : norm_groups) names.push_back("weight_" + g);
      m.norms.push_back(step_table("norms", names));
      m.open_table(m.norms.back());
    }
    if (!activations.empty()) {
      m.activations.push_back(step_table("activations", activations));
      m.open_table(m.activations.back());
    }
    if (!moe_layers.empty()) {
      TRIAD_ASSERT(moe_experts > 0);
      m.moe_load.push_back(wide_table("moe_load", moe_layers, hsize_t(moe_experts)));
      m.open_table(m.moe_load.back());
    }
    if (positions > 0) {
      m.positions.push_back(wide_table("val_positions", {"loss"}, hsize_t(positions)));
      m.open_table(m.positions.back());
    }
    if (noise) {
      m.noise.push_back(step_table("noise", kNoiseColumns));
      m.open_table(m.noise.back());
    }
    if (val_ema) {
      m.val_ema.push_back(val_table("val_ema"));
      m.open_table(m.val_ema.back());
    }
    if (resume) {
      m.truncate_table(m.train, resume_step);
      m.truncate_table(m.val, resume_step);
      for (Table* t : m.further_tables()) m.truncate_table(*t, resume_step);
      // Sets of the file that this run no longer scores: cut at the resume step as well, so
      // no row of the abandoned run's future is left behind.
      for (const auto& [group, written] :
           {std::pair{"val_sets", true}, std::pair{"val_ema_sets", val_ema},
            std::pair{"val_set_positions", set_positions > 0}})
        for (const std::string& name : m.members(group))
          if (!written || std::find(val_sets.begin(), val_sets.end(), name) == val_sets.end()) {
            const std::string table = std::string(group) + "/" + name;
            Table t = std::string(group) == "val_set_positions" ? wide_table(table, {"loss"}, 0)
                                                                : score_table(table);
            m.open_table(t);
            m.truncate_table(t, resume_step);
            for (Column& c : t.cols) c.dset.reset();
          }
      // The optional groups that this run does not write: cut likewise.
      for (const auto& [group, written] :
           {std::pair{"norms", !norm_groups.empty()},
            std::pair{"activations", !activations.empty()},
            std::pair{"moe_load", !moe_layers.empty()}, std::pair{"val_positions", positions > 0},
            std::pair{"noise", noise}, std::pair{"val_ema", val_ema}})
        if (!written) {
          std::vector<std::string> cols = m.members(group);
          const auto step = std::find(cols.begin(), cols.end(), "step");
          if (step == cols.end()) continue;
          cols.erase(step);  // step_table puts it first, where truncate_table reads it
          const bool wide =
              std::string(group) == "moe_load" || std::string(group) == "val_positions";
          Table t = wide ? wide_table(group, cols, 0) : step_table(group, cols);
          m.open_table(t);
          m.truncate_table(t, resume_step);
          for (Column& c : t.cols) c.dset.reset();
        }
    }
    h5check(H5Fflush(m.file, H5F_SCOPE_GLOBAL), "cannot flush the file");
  } catch (const Error& e) {
    m.fail_here(e.what());
  }
}

MetricsWriter::~MetricsWriter() {
  if (!impl_ || !impl_->file.valid()) return;
  const auto hdf5 = io::hdf5_lock();
  try {
    if (!impl_->failed) impl_->flush();
  } catch (const Error& e) {
    std::cerr << "warning: " << e.what() << "\n";
  }
  // Close datasets before the file.
  for (Table* t : {&impl_->train, &impl_->val}) {
    for (Column& c : t->cols) c.dset.reset();
  }
  for (Table* t : impl_->further_tables())
    for (Column& c : t->cols) c.dset.reset();
  impl_->file.reset();
}

void MetricsWriter::append(const TrainRow& r) {
  Table& t = impl_->train;
  t.col(0).ints.push_back(r.step);
  t.col(1).doubles.push_back(r.loss);
  t.col(2).doubles.push_back(r.lr);
  t.col(3).doubles.push_back(r.grad_norm);
  t.col(4).doubles.push_back(r.tokens_per_sec);
  t.col(5).doubles.push_back(r.mfu);
  t.col(6).doubles.push_back(r.step_ms);
  t.col(7).ints.push_back(r.tokens);
  t.col(8).doubles.push_back(r.skipped);
  t.col(9).doubles.push_back(r.z_loss);
  t.col(10).doubles.push_back(r.moe_aux_loss);
  t.col(11).doubles.push_back(r.moe_max_load);
  t.col(12).doubles.push_back(r.moe_z_loss);
  t.col(13).doubles.push_back(r.moe_dropped);
  t.col(14).doubles.push_back(r.mtp_loss);
  t.col(15).doubles.push_back(r.dpo_accuracy);
  t.col(16).doubles.push_back(r.dpo_margin);
  if (t.col(0).buffered() >= kAutoFlushRows || impl_->due()) flush();
}

void MetricsWriter::append(const ValRow& r) {
  if (append_val_row(impl_->val, r)) flush();
}

void MetricsWriter::append_norms(int64_t step, const std::vector<double>& grad,
                                 const std::vector<double>& weight) {
  TRIAD_ASSERT(!impl_->norms.empty() && grad.size() == weight.size() &&
               impl_->norms[0].cols.size() == 1 + 2 * grad.size());
  Table& t = impl_->norms[0];
  t.col(0).ints.push_back(step);
  for (size_t i = 0; i < grad.size(); ++i) t.col(1 + i).doubles.push_back(grad[i]);
  for (size_t i = 0; i < weight.size(); ++i)
    t.col(1 + grad.size() + i).doubles.push_back(weight[i]);
  if (t.col(0).buffered() >= kAutoFlushRows) flush();
}

void MetricsWriter::append_activations(int64_t step, const std::vector<double>& rms) {
  TRIAD_ASSERT(!impl_->activations.empty() && impl_->activations[0].cols.size() == 1 + rms.size());
  Table& t = impl_->activations[0];
  t.col(0).ints.push_back(step);
  for (size_t i = 0; i < rms.size(); ++i) t.col(1 + i).doubles.push_back(rms[i]);
  if (t.col(0).buffered() >= kAutoFlushRows) flush();
}

void MetricsWriter::append_moe_load(int64_t step, const std::vector<double>& load) {
  TRIAD_ASSERT(!impl_->moe_load.empty());
  Table& t = impl_->moe_load[0];
  const size_t E = size_t(t.cols.size() > 1 ? t.cols[1].width : 0);
  TRIAD_ASSERT(load.size() == (t.cols.size() - 1) * E);
  t.col(0).ints.push_back(step);
  for (size_t i = 1; i < t.cols.size(); ++i)
    t.col(i).doubles.insert(t.col(i).doubles.end(), load.begin() + ptrdiff_t((i - 1) * E),
                            load.begin() + ptrdiff_t(i * E));
  if (t.col(0).buffered() >= kAutoFlushRows) flush();
}

void MetricsWriter::append_position_losses(int64_t step, const std::vector<double>& loss) {
  TRIAD_ASSERT(!impl_->positions.empty());
  if (append_position_row(impl_->positions[0], step, loss)) flush();
}

void MetricsWriter::append_set_position_losses(size_t i, int64_t step,
                                               const std::vector<double>& loss) {
  TRIAD_ASSERT(i < impl_->set_positions.size());
  if (append_position_row(impl_->set_positions[i], step, loss)) flush();
}

void MetricsWriter::append_noise(int64_t step, const std::vector<double>& values) {
  TRIAD_ASSERT(!impl_->noise.empty() && values.size() == kNoiseColumns.size());
  Table& t = impl_->noise[0];
  t.col(0).ints.push_back(step);
  for (size_t i = 0; i < values.size(); ++i) t.col(1 + i).doubles.push_back(values[i]);
  if (t.col(0).buffered() >= kAutoFlushRows) flush();
}

void MetricsWriter::append_ema(const ValRow& r) {
  TRIAD_ASSERT(!impl_->val_ema.empty());
  if (append_val_row(impl_->val_ema[0], r)) flush();
}

void MetricsWriter::append_ema_set(size_t i, int64_t step, double loss, double accuracy,
                                   double bpb) {
  TRIAD_ASSERT(i < impl_->ema_sets.size());
  if (append_score(impl_->ema_sets[i], step, loss, accuracy, bpb)) flush();
}

void MetricsWriter::append_set(size_t i, int64_t step, double loss, double accuracy, double bpb) {
  TRIAD_ASSERT(i < impl_->sets.size());
  if (append_score(impl_->sets[i], step, loss, accuracy, bpb)) flush();
}

void MetricsWriter::flush() {
  const auto hdf5 = io::hdf5_lock();
  try {
    impl_->flush();
  } catch (const Error& e) {
    impl_->fail_here(e.what());
  }
}

void MetricsWriter::flush_due() {
  if (Clock::now() - impl_->written >= kMinWriteGap)
    flush();
  else
    impl_->held = true;
}

}  // namespace triad
