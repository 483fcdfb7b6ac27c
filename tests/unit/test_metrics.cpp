// metrics.h5 (DESIGN.md §5): MetricsWriter, read back with the HDF5 C API.
#include <gtest/gtest.h>
#include <hdf5.h>
#include <mpi.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <string>
#include <thread>
#include <vector>

#include "../support/mpi_environment.h"
#include "../support/mpi_test_helpers.h"
#include "triad/core/error.h"
#include "triad/io/metrics.h"

namespace fs = std::filesystem;

namespace {

class MetricsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    int rank = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    if (rank != 0) GTEST_SKIP() << "metrics are written by rank 0 only";
    static int counter = 0;
    const auto ticks = std::chrono::steady_clock::now().time_since_epoch().count();
    dir_ = fs::temp_directory_path() / ("triad_test_metrics_" + std::to_string(getpid()) + "_" +
                                        std::to_string(ticks) + "_" + std::to_string(counter++));
    fs::create_directories(dir_);
    path_ = (dir_ / "metrics.h5").string();
  }
  void TearDown() override {
    std::error_code ec;
    if (!dir_.empty()) fs::remove_all(dir_, ec);
  }

  fs::path dir_;
  std::string path_;
};

triad::MetricsAttributes attrs(const std::string& tag = "a") {
  triad::MetricsAttributes a;
  a.config = "[run]\nname = " + tag + "\n";
  a.grid = "dp=1 pp=1 tp=1";
  a.n_params = 124439808;
  a.flops_per_token = 7.5e8;
  a.peak_flops = 1.9e11;
  return a;
}

triad::TrainRow train_row(int64_t step) {
  triad::TrainRow r;
  r.step = step;
  r.loss = 10.0 - 0.01 * static_cast<double>(step);
  r.lr = 6e-4 * static_cast<double>(step + 1);
  r.grad_norm = 1.5 + static_cast<double>(step);
  r.tokens_per_sec = 1000.0 + static_cast<double>(step);
  r.mfu = 0.001 * static_cast<double>(step);
  r.step_ms = 250.0 + static_cast<double>(step);
  r.tokens = (step + 1) * 4096;
  return r;
}

triad::ValRow val_row(int64_t step) {
  return {step, 9.0 - 0.1 * static_cast<double>(step), 0.01 * static_cast<double>(step),
          0.25 + 0.001 * static_cast<double>(step)};
}

// Reads a whole 1-D dataset with the serial C API.
template <typename T>
std::vector<T> read_column(const std::string& file, const std::string& dset) {
  // In this process the file may still be open in the writer, which disables file locking;
  // HDF5 shares an open file within a process only when the locking flags match.
  hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
  H5Pset_file_locking(fapl, false, true);
  hid_t f = H5Fopen(file.c_str(), H5F_ACC_RDONLY, fapl);
  H5Pclose(fapl);
  EXPECT_GE(f, 0) << file;
  if (f < 0) return {};
  hid_t d = H5Dopen2(f, dset.c_str(), H5P_DEFAULT);
  EXPECT_GE(d, 0) << dset;
  hid_t s = H5Dget_space(d);
  hsize_t n = 0;
  EXPECT_EQ(H5Sget_simple_extent_ndims(s), 1);
  H5Sget_simple_extent_dims(s, &n, nullptr);
  std::vector<T> v(n);
  const hid_t mem = std::is_same_v<T, int64_t> ? H5T_NATIVE_INT64 : H5T_NATIVE_DOUBLE;
  if (n > 0) {
    EXPECT_GE(H5Dread(d, mem, H5S_ALL, H5S_ALL, H5P_DEFAULT, v.data()), 0);
  }
  H5Sclose(s);
  H5Dclose(d);
  H5Fclose(f);
  return v;
}

// Whether the file has a link at `path` (a group or a dataset).
bool has_link(const std::string& file, const std::string& path) {
  hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
  H5Pset_file_locking(fapl, false, true);
  hid_t f = H5Fopen(file.c_str(), H5F_ACC_RDONLY, fapl);
  H5Pclose(fapl);
  EXPECT_GE(f, 0) << file;
  if (f < 0) return false;
  const bool has = H5Lexists(f, path.c_str(), H5P_DEFAULT) > 0;
  H5Fclose(f);
  return has;
}

const std::vector<std::string> kTrainCols = {"step",           "loss", "lr",      "grad_norm",
                                             "tokens_per_sec", "mfu",  "step_ms", "tokens"};
const std::vector<std::string> kValCols = {"step", "loss", "accuracy", "choice_accuracy"};

size_t column_length(const std::string& file, const std::string& dset) {
  return read_column<double>(file, dset).size();
}

void expect_train_rows(const std::string& file, const std::vector<int64_t>& steps) {
  EXPECT_EQ(read_column<int64_t>(file, "/train/step"), steps);
  for (const std::string& c : kTrainCols) {
    EXPECT_EQ(column_length(file, "/train/" + c), steps.size()) << c;
  }
  const auto loss = read_column<double>(file, "/train/loss");
  const auto lr = read_column<double>(file, "/train/lr");
  const auto gn = read_column<double>(file, "/train/grad_norm");
  const auto tps = read_column<double>(file, "/train/tokens_per_sec");
  const auto mfu = read_column<double>(file, "/train/mfu");
  const auto ms = read_column<double>(file, "/train/step_ms");
  const auto tokens = read_column<int64_t>(file, "/train/tokens");
  for (size_t i = 0; i < steps.size() && i < loss.size(); ++i) {
    const triad::TrainRow r = train_row(steps[i]);
    EXPECT_EQ(loss[i], r.loss);
    EXPECT_EQ(lr[i], r.lr);
    EXPECT_EQ(gn[i], r.grad_norm);
    EXPECT_EQ(tps[i], r.tokens_per_sec);
    EXPECT_EQ(mfu[i], r.mfu);
    EXPECT_EQ(ms[i], r.step_ms);
    EXPECT_EQ(tokens[i], r.tokens);
  }
}

void expect_val_rows(const std::string& file, const std::vector<int64_t>& steps) {
  EXPECT_EQ(read_column<int64_t>(file, "/val/step"), steps);
  const auto loss = read_column<double>(file, "/val/loss");
  const auto acc = read_column<double>(file, "/val/accuracy");
  const auto choice = read_column<double>(file, "/val/choice_accuracy");
  ASSERT_EQ(loss.size(), steps.size());
  ASSERT_EQ(acc.size(), steps.size());
  ASSERT_EQ(choice.size(), steps.size());
  for (size_t i = 0; i < steps.size(); ++i) {
    EXPECT_EQ(loss[i], val_row(steps[i]).loss);
    EXPECT_EQ(acc[i], val_row(steps[i]).accuracy);
    EXPECT_EQ(choice[i], val_row(steps[i]).choice_accuracy);
  }
}

std::string read_string_attr(const std::string& file, const char* name) {
  hid_t f = H5Fopen(file.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  hid_t a = H5Aopen(f, name, H5P_DEFAULT);
  hid_t t = H5Aget_type(a);
  std::string s(H5Tget_size(t), '\0');
  H5Aread(a, t, s.data());
  H5Tclose(t);
  H5Aclose(a);
  H5Fclose(f);
  return s.c_str();
}

template <typename T>
T read_num_attr(const std::string& file, const char* name) {
  hid_t f = H5Fopen(file.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  hid_t a = H5Aopen(f, name, H5P_DEFAULT);
  T v{};
  H5Aread(a, std::is_same_v<T, int64_t> ? H5T_NATIVE_INT64 : H5T_NATIVE_DOUBLE, &v);
  H5Aclose(a);
  H5Fclose(f);
  return v;
}

std::vector<int64_t> range(int64_t a, int64_t b) {
  std::vector<int64_t> v;
  for (int64_t i = a; i < b; ++i) v.push_back(i);
  return v;
}

TEST_F(MetricsTest, AppendFlushAndReadBack) {
  {
    triad::MetricsWriter w(path_, attrs(), -1);
    for (int64_t s = 0; s < 5; ++s) w.append(train_row(s));
    w.append(val_row(0));
    w.append(val_row(4));
    w.flush();
    // Visible to another reader while the writer still holds the file open.
    expect_train_rows(path_, range(0, 5));
    expect_val_rows(path_, {0, 4});
    // ... including another process (h5dump) when it is installed.
    if (std::system("command -v h5dump > /dev/null 2>&1") == 0) {
      const std::string out = (dir_ / "dump.txt").string();
      const std::string cmd = "h5dump -d /train/tokens " + path_ + " > " + out + " 2>&1";
      EXPECT_EQ(std::system(cmd.c_str()), 0);
      std::ifstream in(out);
      const std::string text((std::istreambuf_iterator<char>(in)), {});
      EXPECT_CONTAINS(text, "4096, 8192, 12288, 16384, 20480");
    }
    w.append(train_row(5));
  }  // the destructor flushes
  expect_train_rows(path_, range(0, 6));

  EXPECT_EQ(read_string_attr(path_, "config"), attrs().config);
  EXPECT_EQ(read_string_attr(path_, "grid"), "dp=1 pp=1 tp=1");
  EXPECT_EQ(read_num_attr<int64_t>(path_, "n_params"), 124439808);
  EXPECT_EQ(read_num_attr<double>(path_, "flops_per_token"), 7.5e8);
  EXPECT_EQ(read_num_attr<double>(path_, "peak_flops"), 1.9e11);

  // Chunked, unlimited, typed as documented.
  hid_t f = H5Fopen(path_.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  for (const char* name : {"/train/step", "/train/loss", "/val/accuracy"}) {
    hid_t d = H5Dopen2(f, name, H5P_DEFAULT);
    hid_t dcpl = H5Dget_create_plist(d);
    EXPECT_EQ(H5Pget_layout(dcpl), H5D_CHUNKED) << name;
    hid_t s = H5Dget_space(d);
    hsize_t dims = 0, maxdims = 0;
    H5Sget_simple_extent_dims(s, &dims, &maxdims);
    EXPECT_EQ(maxdims, H5S_UNLIMITED) << name;
    hid_t t = H5Dget_type(d);
    const bool is_step = std::string(name).ends_with("step");
    EXPECT_TRUE(H5Tequal(t, is_step ? H5T_STD_I64LE : H5T_IEEE_F64LE) > 0) << name;
    H5Tclose(t);
    H5Sclose(s);
    H5Pclose(dcpl);
    H5Dclose(d);
  }
  H5Fclose(f);
}

// flush_due (at evaluations) writes no sooner than a second after the previous write; the rows
// it keeps back are written by the first training row appended after that second.
TEST_F(MetricsTest, EvaluationsWriteAtMostOnceASecond) {
  using Clock = std::chrono::steady_clock;
  const auto start = Clock::now();
  triad::MetricsWriter w(path_, attrs(), -1);  // creating the file is a write
  w.append(train_row(0));
  w.append(val_row(0));
  w.flush_due();
  // (Only when the calls above took under the second, as they do but on a stalled machine.)
  if (Clock::now() - start < std::chrono::milliseconds(900)) {
    expect_train_rows(path_, {});
    expect_val_rows(path_, {});
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(1100));
  w.append(train_row(1));  // a second since the last write: the rows kept back go out
  expect_train_rows(path_, {0, 1});
  expect_val_rows(path_, {0});
  w.append(val_row(1));
  w.flush_due();  // the write just now was under a second ago
  const auto written = Clock::now();
  w.append(train_row(2));
  if (Clock::now() - written < std::chrono::milliseconds(900)) expect_val_rows(path_, {0});
  std::this_thread::sleep_for(std::chrono::milliseconds(1100));
  w.append(val_row(2));
  w.flush_due();  // over a second: written at once
  expect_train_rows(path_, {0, 1, 2});
  expect_val_rows(path_, {0, 1, 2});
}

TEST_F(MetricsTest, ResumeTruncatesRowsAtOrAfterResumeStep) {
  {
    triad::MetricsWriter w(path_, attrs("first"), -1);
    for (int64_t s = 0; s < 10; ++s) w.append(train_row(s));
    for (int64_t s : {0, 5, 10}) w.append(val_row(s));
  }
  {
    // Resume from a checkpoint with 5 updates applied: train rows 0..4 and the val row at 0
    // survive; the run re-evaluates at 5 and continues from step 5.
    triad::MetricsWriter w(path_, attrs("second"), 5);
    expect_train_rows(path_, range(0, 5));
    expect_val_rows(path_, {0});
    w.append(val_row(5));
    for (int64_t s = 5; s < 7; ++s) w.append(train_row(s));
    w.flush();
  }
  expect_train_rows(path_, range(0, 7));
  expect_val_rows(path_, {0, 5});
  EXPECT_EQ(read_string_attr(path_, "config"), attrs("second").config);

  // Resume at 0 keeps nothing; resume past the end keeps everything.
  { triad::MetricsWriter w(path_, attrs(), 100); }
  expect_train_rows(path_, range(0, 7));
  { triad::MetricsWriter w(path_, attrs(), 0); }
  expect_train_rows(path_, {});
  expect_val_rows(path_, {});
}

// A 2-D dataset [rows, width] of float64 (the /moe_load layers), read whole.
std::vector<double> read_wide(const std::string& file, const std::string& dset, hsize_t* rows,
                              hsize_t* width) {
  hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
  H5Pset_file_locking(fapl, false, true);
  hid_t f = H5Fopen(file.c_str(), H5F_ACC_RDONLY, fapl);
  H5Pclose(fapl);
  hid_t d = H5Dopen2(f, dset.c_str(), H5P_DEFAULT);
  EXPECT_GE(d, 0) << dset;
  hid_t s = H5Dget_space(d);
  hsize_t dims[2] = {0, 0};
  EXPECT_EQ(H5Sget_simple_extent_ndims(s), 2) << dset;
  H5Sget_simple_extent_dims(s, dims, nullptr);
  std::vector<double> v(dims[0] * dims[1]);
  if (!v.empty()) {
    EXPECT_GE(H5Dread(d, H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, v.data()), 0);
  }
  H5Sclose(s);
  H5Dclose(d);
  H5Fclose(f);
  *rows = dims[0];
  *width = dims[1];
  return v;
}

// train.moe_load_every: /moe_load/{step, h<i>} with rows of E values per layer; a resume drops
// the rows at or after its step, and one that no longer writes the group cuts it likewise; a
// resume with another number of experts is refused, naming the dataset.
TEST_F(MetricsTest, MoeLoadRowsOfExpertsResumeAndCut) {
  const std::vector<std::string> layers = {"h1", "h3"};
  auto row = [](int64_t s) {  // two layers of 3 experts
    const double a = 0.1 * double(s);
    return std::vector<double>{a, 1 - a, 0, 0.5, 0.25, 0.25};
  };
  {
    triad::MetricsWriter w(path_, attrs(), -1, {}, {}, {}, layers, 3);
    for (int64_t s = 0; s < 5; ++s) w.append_moe_load(2 * s, row(2 * s));
  }
  hsize_t rows = 0, width = 0;
  EXPECT_EQ(read_column<int64_t>(path_, "/moe_load/step"), (std::vector<int64_t>{0, 2, 4, 6, 8}));
  std::vector<double> h1 = read_wide(path_, "/moe_load/h1", &rows, &width);
  ASSERT_EQ(rows, 5u);
  ASSERT_EQ(width, 3u);
  EXPECT_EQ(h1[3 * 4 + 0], 0.8);  // step 8's first expert
  std::vector<double> h3 = read_wide(path_, "/moe_load/h3", &rows, &width);
  EXPECT_EQ(h3[3 * 2 + 1], 0.25);
  {
    triad::MetricsWriter w(path_, attrs(), 5, {}, {}, {}, layers, 3);  // rows 0, 2, 4 stay
    w.append_moe_load(6, row(7));
  }
  EXPECT_EQ(read_column<int64_t>(path_, "/moe_load/step"), (std::vector<int64_t>{0, 2, 4, 6}));
  h1 = read_wide(path_, "/moe_load/h1", &rows, &width);
  ASSERT_EQ(rows, 4u);
  EXPECT_DOUBLE_EQ(h1[3 * 3 + 0], 0.7);
  { triad::MetricsWriter w(path_, attrs(), 3); }  // not written any more: cut at 3
  EXPECT_EQ(read_column<int64_t>(path_, "/moe_load/step"), (std::vector<int64_t>{0, 2}));
  read_wide(path_, "/moe_load/h3", &rows, &width);
  EXPECT_EQ(rows, 2u);
  try {
    triad::MetricsWriter w(path_, attrs(), 2, {}, {}, {}, layers, 4);
    ADD_FAILURE() << "4 experts where the file has 3 were accepted";
  } catch (const triad::Error& e) {
    EXPECT_NE(std::string(e.what()).find("/moe_load/h1 is not 2-D of 4 columns"), std::string::npos)
        << e.what();
  }
}

// eval.loss_by_position with eval.sets: /val_set_positions/<name>/{step, loss} of seq_len
// values per row, beside /val_positions (or without it: eval.sets alone); a resume cuts them as
// /val, a set no longer scored and a run without the positions alike.
TEST_F(MetricsTest, SetPositionLossesResumeAndCut) {
  const std::vector<std::string> sets{"code", "web"};
  const auto row = [](int64_t s, size_t i) {  // 4 positions
    const double a = double(s) + 0.25 * double(i);
    return std::vector<double>{a, a + 1, std::numeric_limits<double>::quiet_NaN(), a + 3};
  };
  {  // positions of the sets alone (no data.val)
    triad::MetricsWriter w(path_, attrs(), -1, sets, {}, {}, {}, 0, 0, false, false, 4);
    for (int64_t s = 0; s <= 8; s += 4)
      for (size_t i = 0; i < sets.size(); ++i) w.append_set_position_losses(i, s, row(s, i));
  }
  EXPECT_FALSE(has_link(path_, "/val_positions"));
  hsize_t rows = 0, width = 0;
  EXPECT_EQ(read_column<int64_t>(path_, "/val_set_positions/web/step"),
            (std::vector<int64_t>{0, 4, 8}));
  std::vector<double> web = read_wide(path_, "/val_set_positions/web/loss", &rows, &width);
  ASSERT_EQ(rows, 3u);
  ASSERT_EQ(width, 4u);
  EXPECT_EQ(web[4 * 1 + 1], 5.25);  // step 4, position 1
  EXPECT_TRUE(std::isnan(web[4 * 2 + 2]));
  EXPECT_EQ(read_wide(path_, "/val_set_positions/code/loss", &rows, &width)[4 * 2 + 3], 11.0);
  {  // resumed at step 5 with data.val's positions too, scoring "code" only: web's cut there
    triad::MetricsWriter w(path_, attrs(), 5, {"code"}, {}, {}, {}, 0, 4, false, false, 4);
    w.append_position_losses(6, row(6, 3));
    w.append_set_position_losses(0, 6, row(6, 0));
  }
  EXPECT_EQ(read_column<int64_t>(path_, "/val_positions/step"), (std::vector<int64_t>{6}));
  EXPECT_EQ(read_column<int64_t>(path_, "/val_set_positions/code/step"),
            (std::vector<int64_t>{0, 4, 6}));
  EXPECT_EQ(read_wide(path_, "/val_set_positions/code/loss", &rows, &width)[4 * 2], 6.0);
  EXPECT_EQ(read_column<int64_t>(path_, "/val_set_positions/web/step"),
            (std::vector<int64_t>{0, 4}));
  read_wide(path_, "/val_set_positions/web/loss", &rows, &width);
  EXPECT_EQ(rows, 2u);
  {  // resumed without eval.loss_by_position (the set still scored): cut at 3
    triad::MetricsWriter w(path_, attrs(), 3, {"code"});
  }
  EXPECT_EQ(read_column<int64_t>(path_, "/val_set_positions/code/step"), (std::vector<int64_t>{0}));
  read_wide(path_, "/val_set_positions/code/loss", &rows, &width);
  EXPECT_EQ(rows, 1u);
  EXPECT_EQ(read_column<int64_t>(path_, "/val_positions/step").size(), 0u);
}

TEST_F(MetricsTest, MovingAverageRowsResumeAndCut) {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const std::vector<std::string> sets{"code", "web"};
  const auto row = [&](int64_t s, double bpb) {
    return triad::ValRow{s, 5.0 - 0.1 * double(s), 0.01 * double(s), 0.25, 0.5, nan, bpb};
  };
  {  // eval.ema: /val_ema (/val's columns) beside /val, /val_ema_sets/<name> beside /val_sets
    triad::MetricsWriter w(path_, attrs(), -1, sets, {}, {}, {}, 0, 0, false, true);
    for (int64_t s = 0; s <= 8; s += 4) {
      w.append_ema(row(s, nan));
      for (size_t i = 0; i < sets.size(); ++i) w.append_ema_set(i, s, double(i) + 0.5, 0.1);
    }
  }
  EXPECT_EQ(read_column<int64_t>(path_, "/val_ema/step"), (std::vector<int64_t>{0, 4, 8}));
  EXPECT_EQ(read_column<double>(path_, "/val_ema/loss"), (std::vector<double>{5.0, 4.6, 4.2}));
  EXPECT_EQ(read_column<double>(path_, "/val_ema/accuracy")[2], 0.08);
  EXPECT_EQ(read_column<double>(path_, "/val_ema/choice_accuracy")[1], 0.25);
  EXPECT_EQ(read_column<double>(path_, "/val_ema/choice_accuracy_by_sum")[1], 0.5);
  EXPECT_TRUE(std::isnan(read_column<double>(path_, "/val_ema/choice_accuracy_by_chars")[1]));
  EXPECT_TRUE(std::isnan(read_column<double>(path_, "/val_ema/bpb")[1]));
  EXPECT_EQ(read_column<int64_t>(path_, "/val_ema_sets/web/step"), (std::vector<int64_t>{0, 4, 8}));
  EXPECT_EQ(read_column<double>(path_, "/val_ema_sets/web/loss")[0], 1.5);
  {  // resumed at step 5 scoring "code" only: rows 0 and 4 stay; web's are cut there too
    triad::MetricsWriter w(path_, attrs(), 5, {"code"}, {}, {}, {}, 0, 0, false, true);
    w.append_ema(row(6, 1.5));
    w.append_ema_set(0, 6, 0.25, 0.2);
  }
  EXPECT_EQ(read_column<int64_t>(path_, "/val_ema/step"), (std::vector<int64_t>{0, 4, 6}));
  EXPECT_EQ(read_column<double>(path_, "/val_ema/bpb")[2], 1.5);
  EXPECT_EQ(read_column<double>(path_, "/val_ema_sets/code/loss"),
            (std::vector<double>{0.5, 0.5, 0.25}));
  EXPECT_EQ(read_column<int64_t>(path_, "/val_ema_sets/web/step"), (std::vector<int64_t>{0, 4}));
  {  // resumed without eval.ema (the set still scored): cut at 3
    triad::MetricsWriter w(path_, attrs(), 3, {"code"});
  }
  EXPECT_EQ(read_column<int64_t>(path_, "/val_ema/step"), (std::vector<int64_t>{0}));
  EXPECT_EQ(read_column<double>(path_, "/val_ema/loss"), (std::vector<double>{5.0}));
  EXPECT_EQ(read_column<int64_t>(path_, "/val_ema_sets/code/step"), (std::vector<int64_t>{0}));
}

TEST_F(MetricsTest, MovingAverageOfAnOlderFileGainsTheChoiceColumns) {
  // /val_ema as eval.ema wrote it before it scored eval.choices (step, loss, accuracy, bpb): a
  // resumed run keeps its rows, whose new columns read NaN.
  const double nan = std::numeric_limits<double>::quiet_NaN();
  {
    triad::MetricsWriter w(path_, attrs(), -1, {}, {}, {}, {}, 0, 0, false, true);
    for (int64_t s : {0, 5}) w.append_ema(triad::ValRow{s, 4.0, 0.1, nan, nan, nan, nan});
  }
  hid_t f = H5Fopen(path_.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
  for (const char* name : {"/val_ema/choice_accuracy", "/val_ema/choice_accuracy_by_sum",
                           "/val_ema/choice_accuracy_by_chars"})
    ASSERT_GE(H5Ldelete(f, name, H5P_DEFAULT), 0);
  H5Fclose(f);
  {
    triad::MetricsWriter w(path_, attrs(), 10, {}, {}, {}, {}, 0, 0, false, true);
    w.append_ema(triad::ValRow{10, 3.0, 0.2, 0.75, 0.5, nan, nan});
  }
  EXPECT_EQ(read_column<int64_t>(path_, "/val_ema/step"), (std::vector<int64_t>{0, 5, 10}));
  const auto choice = read_column<double>(path_, "/val_ema/choice_accuracy");
  ASSERT_EQ(choice.size(), 3u);
  EXPECT_TRUE(std::isnan(choice[0]) && std::isnan(choice[1]));
  EXPECT_EQ(choice[2], 0.75);
}

TEST_F(MetricsTest, ResumeAddsAColumnAnOlderFileLacks) {
  // A file from before /val/choice_accuracy existed: its rows stay, the new column reads NaN
  // for them, and rows appended after the resume carry their values.
  {
    triad::MetricsWriter w(path_, attrs(), -1);
    for (int64_t s : {0, 5}) w.append(val_row(s));
  }
  hid_t f = H5Fopen(path_.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
  ASSERT_GE(H5Ldelete(f, "/val/choice_accuracy", H5P_DEFAULT), 0);
  H5Fclose(f);
  {
    triad::MetricsWriter w(path_, attrs(), 10);
    w.append(val_row(10));
  }
  EXPECT_EQ(read_column<int64_t>(path_, "/val/step"), (std::vector<int64_t>{0, 5, 10}));
  const auto choice = read_column<double>(path_, "/val/choice_accuracy");
  ASSERT_EQ(choice.size(), 3u);
  EXPECT_TRUE(std::isnan(choice[0]) && std::isnan(choice[1]));
  EXPECT_EQ(choice[2], val_row(10).choice_accuracy);
}

TEST_F(MetricsTest, FreshRunReplacesTheFile) {
  {
    triad::MetricsWriter w(path_, attrs("old"), -1);
    for (int64_t s = 0; s < 10; ++s) w.append(train_row(s));
  }
  {
    triad::MetricsWriter w(path_, attrs("new"), -1);
    w.append(train_row(0));
  }
  expect_train_rows(path_, {0});
  expect_val_rows(path_, {});
  EXPECT_EQ(read_string_attr(path_, "config"), attrs("new").config);
}

TEST_F(MetricsTest, ResumeWithoutFileCreatesIt) {
  {
    triad::MetricsWriter w(path_, attrs(), 50);
    w.append(train_row(50));
  }
  expect_train_rows(path_, {50});
}

TEST_F(MetricsTest, ManyRowsWithoutExplicitFlush) {
  {
    triad::MetricsWriter w(path_, attrs(), -1);
    for (int64_t s = 0; s < 5000; ++s) w.append(train_row(s));
  }
  expect_train_rows(path_, range(0, 5000));
}

TEST_F(MetricsTest, DamagedFileOnResumeIsSetAside) {
  {
    std::ofstream out(path_, std::ios::binary);
    out << "this is not an HDF5 file";
  }
  {
    triad::MetricsWriter w(path_, attrs(), 5);
    w.append(train_row(5));
  }
  expect_train_rows(path_, {5});
  EXPECT_TRUE(fs::exists(path_ + ".damaged"));
  // Damaged again: the file set aside before is kept, this one goes beside it.
  {
    std::ofstream out(path_, std::ios::binary);
    out << "damaged again";
  }
  {
    triad::MetricsWriter w(path_, attrs(), 5);
    w.append(train_row(5));
  }
  expect_train_rows(path_, {5});
  std::ifstream first(path_ + ".damaged"), second(path_ + ".damaged.2");
  EXPECT_EQ(std::string(std::istreambuf_iterator<char>(first), {}), "this is not an HDF5 file");
  EXPECT_EQ(std::string(std::istreambuf_iterator<char>(second), {}), "damaged again");
}

TEST_F(MetricsTest, UnwritableLocationIsAnError) {
  const std::string p = (dir_ / "no" / "such" / "metrics.h5").string();
  try {
    triad::MetricsWriter w(p, attrs(), -1);
    ADD_FAILURE() << "expected a triad::Error";
  } catch (const triad::Error& e) {
    EXPECT_CONTAINS(e.what(), "metrics file " + p);
  }
}

}  // namespace
