// Checkpoints written and read by several ranks with sharded tensors (TensorRef ranges; DESIGN.md
// §5, ZeRO-1; tensor-parallel splits, TensorRef::split_*): run as `mpiexec -np 4
// test_checkpoint_mpi` (also passes with 1 and 2 ranks; the tests use the world size, the
// tensor-parallel ones need 4 ranks and are skipped otherwise). Every rank generates the same
// deterministic reference data, so each can check what it reads bit-exactly.
#include <gtest/gtest.h>
#include <hdf5.h>
#include <mpi.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "../../src/io/crc32.h"
#include "../support/mpi_test_helpers.h"
#include "triad/core/error.h"
#include "triad/io/checkpoint.h"

namespace fs = std::filesystem;

namespace {

using triad::testing::error_of;
using triad::testing::on_root;
using triad::testing::world_rank;
using triad::testing::world_size;

std::string bcast_string(std::string s, int root, MPI_Comm comm) {
  int len = static_cast<int>(s.size());
  MPI_Bcast(&len, 1, MPI_INT, root, comm);
  s.resize(len);
  if (len > 0) MPI_Bcast(s.data(), len, MPI_CHAR, root, comm);
  return s;
}

// Every rank got the same message as rank 0 of comm.
void expect_same_on_all_ranks(const std::string& msg, MPI_Comm comm) {
  EXPECT_EQ(msg, bcast_string(msg, 0, comm)) << "the ranks report different errors";
}

// ---- the model: tensors of a small GPT, laid out in one flat buffer ----------------------------

struct Spec {
  std::string name;
  std::vector<int64_t> shape;
};

constexpr int64_t kVocab = 90;  // valid rows of wte
constexpr int64_t kC = 12;

// wte's row count varies (padding); the rest is fixed. Shapes chosen so that slices cut rows
// mid-way; a 3-D tensor and an empty one exercise the general cases.
std::vector<Spec> model_specs(int64_t wte_rows) {
  return {
      {"wte", {wte_rows, kC}},
      {"wpe", {16, kC}},
      {"h/0/ln_1/weight", {kC}},
      {"h/0/attn/c_attn/weight", {3 * kC, kC}},
      {"h/0/attn/c_attn/bias", {3 * kC}},
      {"h/0/mlp/c_fc/weight", {4 * kC, kC}},
      {"h/0/mlp/c_fc/bias", {4 * kC}},
      {"x3d", {3, 5, 7}},
      {"empty", {0, 4}},
      {"tiny", {2}},
      {"ln_f/bias", {kC}},
  };
}

const std::vector<std::string> kGroups = {"model", "optimizer/m", "optimizer/v"};

int64_t numel(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

// The reference value of element e of tensor t of group g: the same on every rank and for any
// wte padding (rows < kVocab of wte do not depend on the row count).
float ref_value(size_t g, size_t t, int64_t e) {
  uint64_t x = (uint64_t(g) << 56) ^ (uint64_t(t) << 48) ^ uint64_t(e);
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  x ^= x >> 31;
  return static_cast<float>(static_cast<int64_t>(x >> 40) - (int64_t(1) << 23)) * 0x1p-20f;
}

constexpr float kSentinel = -12345.0f;

struct Model {
  std::vector<Spec> specs;
  std::vector<int64_t> offset;  // of each tensor in the flat buffer
  int64_t total = 0;            // the flat buffer's length, gaps between tensors included
};

Model make_model(int64_t wte_rows) {
  Model m;
  m.specs = model_specs(wte_rows);
  int64_t off = 0;
  for (size_t i = 0; i < m.specs.size(); ++i) {
    m.offset.push_back(off);
    off += numel(m.specs[i].shape) + static_cast<int64_t>(i % 3);  // uneven padding
  }
  m.total = off + 5;
  return m;
}

using Slice = std::pair<int64_t, int64_t>;

// `parts` uneven contiguous slices of [0, total): with 3 or more parts, part 1 is empty.
std::vector<Slice> partition(int64_t total, int parts) {
  std::vector<int64_t> weight(parts);
  for (int r = 0; r < parts; ++r) weight[r] = (parts >= 3 && r == 1) ? 0 : 2 + (r * 7) % 5;
  int64_t sum = 0;
  for (int64_t w : weight) sum += w;
  std::vector<Slice> s(parts);
  int64_t acc = 0, lo = 0;
  for (int r = 0; r < parts; ++r) {
    acc += weight[r];
    int64_t hi = r + 1 == parts ? total : std::min(total, total * acc / sum + (weight[r] ? 3 : 0));
    hi = std::max(hi, lo);
    s[r] = {lo, hi};
    lo = hi;
  }
  return s;
}

// What one rank holds: per group a buffer and the TensorRefs into it.
struct Held {
  std::vector<std::vector<float>> storage;
  std::vector<triad::TensorGroup> groups;
  std::vector<Slice> slice;  // per group: the flat range the buffer holds ({0, -1}: full tensors)
};

// Holds the slice s of each group's flat buffer (optionally only for groups in `which`);
// filled with the reference values, or the sentinel. valid: set wte's valid_rows (loading).
Held hold_slice(const Model& m, Slice s, bool fill, bool valid,
                const std::vector<std::string>& which = kGroups) {
  Held h;
  h.storage.reserve(which.size());
  for (size_t gi = 0; gi < kGroups.size(); ++gi) {
    if (std::find(which.begin(), which.end(), kGroups[gi]) == which.end()) continue;
    h.storage.emplace_back(std::max<int64_t>(s.second - s.first, 1), kSentinel);
    std::vector<float>& buf = h.storage.back();
    triad::TensorGroup g;
    g.path = kGroups[gi];
    for (size_t i = 0; i < m.specs.size(); ++i) {
      triad::TensorRef t{m.specs[i].name, m.specs[i].shape, buf.data(),
                         valid && m.specs[i].name == "wte" ? kVocab : -1};
      const int64_t lo = std::max(s.first, m.offset[i]);
      const int64_t hi = std::min(s.second, m.offset[i] + numel(m.specs[i].shape));
      if (lo < hi) {
        t.begin = lo - m.offset[i];
        t.end = hi - m.offset[i];
        t.data = buf.data() + (lo - s.first);
        if (fill) {
          for (int64_t e = t.begin; e < t.end; ++e) t.data[e - t.begin] = ref_value(gi, i, e);
        }
      } else {
        t.begin = t.end = 0;
      }
      g.tensors.push_back(std::move(t));
    }
    h.groups.push_back(std::move(g));
    h.slice.push_back(s);
  }
  return h;
}

// Holds whole tensors (end = -1) of the groups in `which`.
Held hold_full(const Model& m, bool fill, bool valid,
               const std::vector<std::string>& which = kGroups) {
  Held h;
  h.storage.reserve(which.size() * m.specs.size());
  for (size_t gi = 0; gi < kGroups.size(); ++gi) {
    if (std::find(which.begin(), which.end(), kGroups[gi]) == which.end()) continue;
    triad::TensorGroup g;
    g.path = kGroups[gi];
    for (size_t i = 0; i < m.specs.size(); ++i) {
      const int64_t n = numel(m.specs[i].shape);
      h.storage.emplace_back(std::max<int64_t>(n, 1), kSentinel);
      float* d = h.storage.back().data();
      if (fill) {
        for (int64_t e = 0; e < n; ++e) d[e] = ref_value(gi, i, e);
      }
      g.tensors.push_back(
          {m.specs[i].name, m.specs[i].shape, d, valid && m.specs[i].name == "wte" ? kVocab : -1});
    }
    h.groups.push_back(std::move(g));
  }
  return h;
}

size_t group_index(const std::string& path) {
  return std::find(kGroups.begin(), kGroups.end(), path) - kGroups.begin();
}

// Checks every held element against the reference (0 for wte rows >= kVocab when valid_rows is
// set) and that the gaps of slice buffers were not touched. Reports the first mismatch.
void expect_reference(const Held& h, const std::string& where) {
  int64_t bad = 0;
  std::string first;
  for (const triad::TensorGroup& g : h.groups) {
    const size_t gi = group_index(g.path);
    for (size_t i = 0; i < g.tensors.size(); ++i) {
      const triad::TensorRef& t = g.tensors[i];
      const int64_t n = numel(t.shape);
      const int64_t b = t.begin, e = t.end < 0 ? n : t.end;
      for (int64_t k = b; k < e; ++k) {
        const bool zero = t.valid_rows >= 0 && k >= t.valid_rows * kC;
        const float want = zero ? 0.0f : ref_value(gi, i, k);
        const float got = t.data[k - b];
        if (std::memcmp(&want, &got, sizeof(float)) != 0 && bad++ == 0) {
          first = g.path + "/" + t.name + "[" + std::to_string(k) + "] = " + std::to_string(got) +
                  ", expected " + std::to_string(want);
        }
      }
    }
  }
  // Gaps between tensors in slice buffers keep the sentinel.
  for (size_t k = 0; k < h.slice.size(); ++k) {
    if (h.slice[k].second < 0) continue;
    const std::vector<float>& buf = h.storage[k];
    std::vector<bool> used(buf.size(), false);
    for (const triad::TensorRef& t : h.groups[k].tensors) {
      const int64_t off = t.data - buf.data();
      for (int64_t e = 0; e < t.end - t.begin; ++e) used[off + e] = true;
    }
    for (size_t e = 0; e < buf.size(); ++e) {
      if (!used[e] && buf[e] != kSentinel && bad++ == 0) {
        first =
            "a gap of the " + h.groups[k].path + " buffer was overwritten at " + std::to_string(e);
      }
    }
  }
  EXPECT_EQ(bad, 0) << where << ": " << bad << " wrong elements on rank " << world_rank()
                    << ", first: " << first;
}

// ---- serial HDF5 access to a saved file (rank 0)
// -------------------------------------------------

struct DatasetInfo {
  int64_t checksum = -1;
  std::vector<float> data;
};

DatasetInfo read_dataset(const std::string& file, const std::string& dset) {
  DatasetInfo info;
  hid_t f = H5Fopen(file.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  EXPECT_GE(f, 0) << file;
  if (f < 0) return info;
  hid_t d = H5Dopen2(f, dset.c_str(), H5P_DEFAULT);
  EXPECT_GE(d, 0) << dset;
  hid_t space = H5Dget_space(d);
  info.data.resize(H5Sget_simple_extent_npoints(space));
  H5Sclose(space);
  if (!info.data.empty()) {
    EXPECT_GE(H5Dread(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, info.data.data()), 0);
  }
  hid_t a = H5Aopen(d, "checksum", H5P_DEFAULT);
  EXPECT_GE(a, 0) << dset;
  H5Aread(a, H5T_NATIVE_INT64, &info.checksum);
  H5Aclose(a);
  H5Dclose(d);
  H5Fclose(f);
  return info;
}

// Rank 0: every dataset of `file` holds the reference data of model m, with the zlib CRC-32 of
// those bytes as its checksum; and equals the same dataset of `single` (if given).
void expect_file_holds_reference(const Model& m, const std::string& file,
                                 const std::string& single = "") {
  on_root([&] {
    for (size_t gi = 0; gi < kGroups.size(); ++gi) {
      for (size_t i = 0; i < m.specs.size(); ++i) {
        const std::string name = "/" + kGroups[gi] + "/" + m.specs[i].name;
        const DatasetInfo got = read_dataset(file, name);
        const int64_t n = numel(m.specs[i].shape);
        std::vector<float> want(n);
        for (int64_t e = 0; e < n; ++e) want[e] = ref_value(gi, i, e);
        ASSERT_EQ(got.data.size(), want.size()) << name;
        EXPECT_EQ(std::memcmp(got.data.data(), want.data(), n * sizeof(float)), 0) << name;
        EXPECT_EQ(got.checksum, triad::io::crc32(want.data(), n * sizeof(float))) << name;
        if (!single.empty()) {
          const DatasetInfo ref = read_dataset(single, name);
          EXPECT_EQ(got.checksum, ref.checksum) << name;
          EXPECT_EQ(got.data, ref.data) << name;
        }
      }
    }
  });
}

// Flips one bit of element `element` of dataset dset in the file (rank 0, then a barrier).
void damage(const std::string& file, const std::string& dset, int64_t element) {
  on_root([&] {
    hid_t f = H5Fopen(file.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
    ASSERT_GE(f, 0);
    hid_t d = H5Dopen2(f, dset.c_str(), H5P_DEFAULT);
    ASSERT_GE(d, 0);
    const haddr_t off = H5Dget_offset(d);
    H5Dclose(d);
    H5Fclose(f);
    ASSERT_NE(off, HADDR_UNDEF);
    std::fstream io(file, std::ios::in | std::ios::out | std::ios::binary);
    const auto pos = static_cast<std::streamoff>(off + element * sizeof(float) + 1);
    io.seekg(pos);
    char c = 0;
    io.read(&c, 1);
    c = static_cast<char>(c ^ 0x10);
    io.seekp(pos);
    io.write(&c, 1);
  });
}

triad::CheckpointState make_state(int64_t step) {
  triad::CheckpointState s;
  s.step = step;
  s.tokens_seen = step * 100;
  s.next_sequence = 3;
  s.epoch = 0;
  s.config = "[model]\nn_embd = 12\n";
  s.grid = "dp=" + std::to_string(world_size()) + " pp=1 tp=1";
  s.model = {1, 2, kC, 16, kVocab, 100};
  return s;
}

// The first n ranks of the world (MPI_COMM_NULL on the others).
MPI_Comm first_ranks(int n) {
  MPI_Comm c = MPI_COMM_NULL;
  MPI_Comm_split(MPI_COMM_WORLD, world_rank() < n ? 0 : MPI_UNDEFINED, world_rank(), &c);
  return c;
}

int comm_rank(MPI_Comm c) {
  int r = 0;
  MPI_Comm_rank(c, &r);
  return r;
}

class MpiCheckpoint : public ::testing::Test {
 protected:
  void SetUp() override {
    static int counter = 0;
    std::string name;
    if (world_rank() == 0) {
      const auto ticks = std::chrono::steady_clock::now().time_since_epoch().count();
      fs::path d =
          fs::temp_directory_path() / ("triad_test_ckpt_mpi_" + std::to_string(getpid()) + "_" +
                                       std::to_string(ticks) + "_" + std::to_string(counter++));
      fs::create_directories(d);
      name = d.string();
    }
    dir_ = bcast_string(name, 0, MPI_COMM_WORLD);
  }
  void TearDown() override {
    on_root([&] {
      std::error_code ec;
      fs::remove_all(dir_, ec);
    });
  }
  std::string path(const std::string& name) const { return (dir_ / name).string(); }

  fs::path dir_;
};

// ---- tests
// ---------------------------------------------------------------------------------------

TEST(MpiSlices, PartitionCoversTheBuffer) {
  for (int parts : {1, 2, 3, 4, 8}) {
    const std::vector<Slice> s = partition(1000, parts);
    EXPECT_EQ(s.front().first, 0);
    EXPECT_EQ(s.back().second, 1000);
    for (int r = 1; r < parts; ++r) EXPECT_EQ(s[r].first, s[r - 1].second);
    if (parts >= 3) {
      EXPECT_EQ(s[1].first, s[1].second);  // an empty slice
    }
  }
}

// Each rank saves its uneven slice; the file equals a single-rank save of the same data
// (datasets and checksums), and loads back bit-exactly as full tensors on every rank and as
// the trainer loads it (full parameters everywhere, optimizer state in slices).
TEST_F(MpiCheckpoint, SlicedSaveEqualsSingleRankSave) {
  const int P = world_size(), rank = world_rank();
  const Model m = make_model(100);
  const std::vector<Slice> slices = partition(m.total, P);
  const std::string sliced = path("sliced.h5"), single = path("single.h5");

  Held mine = hold_slice(m, slices[rank], /*fill=*/true, /*valid=*/false);
  triad::save_checkpoint(MPI_COMM_WORLD, sliced, make_state(7), mine.groups);
  if (rank == 0) {
    Held full = hold_full(m, true, false);
    triad::save_checkpoint(MPI_COMM_SELF, single, make_state(7), full.groups);
  }
  MPI_Barrier(MPI_COMM_WORLD);
  expect_file_holds_reference(m, sliced, single);
  EXPECT_EQ(triad::read_checkpoint_state(MPI_COMM_WORLD, sliced).step, 7);

  Held full = hold_full(m, false, false);
  triad::load_checkpoint_tensors(MPI_COMM_WORLD, sliced, full.groups);
  expect_reference(full, "full tensors");

  Held params = hold_full(m, false, /*valid=*/true, {"model"});
  Held opt = hold_slice(m, slices[rank], false, true, {"optimizer/m", "optimizer/v"});
  std::vector<triad::TensorGroup> groups = params.groups;
  groups.insert(groups.end(), opt.groups.begin(), opt.groups.end());
  triad::load_checkpoint_tensors(MPI_COMM_WORLD, sliced, groups);
  expect_reference(params, "parameters");
  expect_reference(opt, "optimizer slices");
}

// Save with the slices of S ranks, load with the slices of L ranks (sub-communicators of the
// first ranks), for S, L in {world, 2, 1}; the loading model pads wte differently (128 rows,
// valid 90) so that valid_rows is exercised with ranges.
TEST_F(MpiCheckpoint, ReshardBetweenRankCounts) {
  const int P = world_size();
  const Model saved_model = make_model(100), loaded_model = make_model(128);
  std::vector<int> counts;  // P, 2, 1 without repeats
  for (int c : {P, std::min(2, P), 1})
    if (counts.empty() || counts.back() != c) counts.push_back(c);
  for (int S : counts) {
    const std::string file = path("reshard_" + std::to_string(S) + ".h5");
    MPI_Comm sc = first_ranks(S);
    if (sc != MPI_COMM_NULL) {
      Held h = hold_slice(saved_model, partition(saved_model.total, S)[comm_rank(sc)], true, false);
      triad::save_checkpoint(sc, file, make_state(S), h.groups);
      MPI_Comm_free(&sc);
    }
    MPI_Barrier(MPI_COMM_WORLD);
    expect_file_holds_reference(saved_model, file);
    for (int L : counts) {
      SCOPED_TRACE("saved by " + std::to_string(S) + " ranks, loaded by " + std::to_string(L));
      MPI_Comm lc = first_ranks(L);
      if (lc != MPI_COMM_NULL) {
        for (const Model* m : {&saved_model, &loaded_model}) {
          Held h = hold_slice(*m, partition(m->total, L)[comm_rank(lc)], false, true);
          triad::load_checkpoint_tensors(lc, file, h.groups);
          expect_reference(h, "slices of " + std::to_string(m->specs[0].shape[0]) + " wte rows");
        }
        MPI_Comm_free(&lc);
      }
      MPI_Barrier(MPI_COMM_WORLD);
    }
  }
}

// Every rank reads random, overlapping ranges (some empty, some whole tensors).
TEST_F(MpiCheckpoint, OverlappingRandomRanges) {
  const int P = world_size(), rank = world_rank();
  const Model m = make_model(100);
  const std::string file = path("random.h5");
  Held mine = hold_slice(m, partition(m.total, P)[rank], true, false);
  triad::save_checkpoint(MPI_COMM_WORLD, file, make_state(1), mine.groups);

  std::mt19937 rng(1000 + rank);
  for (int trial = 0; trial < 60; ++trial) {
    SCOPED_TRACE(trial);
    const bool valid = trial % 2 == 1;
    Held h = hold_full(m, false, valid);
    for (triad::TensorGroup& g : h.groups) {
      for (triad::TensorRef& t : g.tensors) {
        const int64_t n = numel(t.shape);
        switch (rng() % 4) {
          case 0:
            break;  // whole tensor
          case 1:
            t.begin = t.end = n == 0 ? 0 : rng() % n;  // empty
            break;
          default: {
            int64_t a = n == 0 ? 0 : rng() % (n + 1), b = n == 0 ? 0 : rng() % (n + 1);
            t.begin = std::min(a, b);
            t.end = std::max(a, b);
          }
        }
      }
    }
    triad::load_checkpoint_tensors(MPI_COMM_WORLD, file, h.groups);
    expect_reference(h, "random ranges");
  }
}

// Saves with random partitions of the flat buffer (cuts anywhere, empty slices, ranks in any
// order along the buffer); the file always holds the reference data and checksums.
TEST_F(MpiCheckpoint, RandomPartitionsSave) {
  const int P = world_size(), rank = world_rank();
  const Model m = make_model(100);
  std::mt19937 rng(77);  // the same on every rank
  for (int trial = 0; trial < 15; ++trial) {
    SCOPED_TRACE(trial);
    std::vector<int64_t> cuts = {0, m.total};
    for (int k = 1; k < P; ++k) cuts.push_back(rng() % (m.total + 1));
    std::sort(cuts.begin(), cuts.end());
    std::vector<int> order(P);
    for (int r = 0; r < P; ++r) order[r] = r;
    std::shuffle(order.begin(), order.end(), rng);
    const int piece = order[rank];
    const std::string file = path("random_" + std::to_string(trial) + ".h5");
    Held h = hold_slice(m, {cuts[piece], cuts[piece + 1]}, true, false);
    triad::save_checkpoint(MPI_COMM_WORLD, file, make_state(trial), h.groups);
    expect_file_holds_reference(m, file);
    on_root([&] { fs::remove(file); });
  }
}

// Replicas: ranks with write = false never write (they hold garbage here, which would show in
// the file), and whole tensors passed with write = true by several ranks are written by the
// lowest of them only; mixed with slices in the same save.
TEST_F(MpiCheckpoint, ReplicasDoNotWrite) {
  const int P = world_size(), rank = world_rank();
  const Model m = make_model(100);

  // 1. Every rank holds everything; tensor i of group g is written by rank (g + i) % P.
  {
    const std::string file = path("replicas.h5");
    Held h = hold_full(m, true, false);
    for (size_t gi = 0; gi < h.groups.size(); ++gi) {
      for (size_t i = 0; i < h.groups[gi].tensors.size(); ++i) {
        triad::TensorRef& t = h.groups[gi].tensors[i];
        t.write = static_cast<int>((gi + i) % P) == rank;
        if (!t.write) std::fill(t.data, t.data + numel(t.shape), -1.0f);
      }
    }
    triad::save_checkpoint(MPI_COMM_WORLD, file, make_state(2), h.groups);
    expect_file_holds_reference(m, file);
  }
  // 2. Whole tensors with write = true everywhere (DP replicas as callers passed them before
  //    ranges existed) for the parameters, slices for the optimizer state: rank 0 writes the
  //    parameters; the others hold garbage.
  {
    const std::string file = path("legacy.h5");
    Held params = hold_full(m, true, false, {"model"});
    if (rank != 0) {
      for (auto& s : params.storage) std::fill(s.begin(), s.end(), -2.0f);
    }
    Held opt = hold_slice(m, partition(m.total, P)[P - 1 - rank], true, false,
                          {"optimizer/m", "optimizer/v"});
    std::vector<triad::TensorGroup> groups = params.groups;
    groups.insert(groups.end(), opt.groups.begin(), opt.groups.end());
    triad::save_checkpoint(MPI_COMM_WORLD, file, make_state(3), groups);
    expect_file_holds_reference(m, file);
  }
}

// A damaged dataset is refused on every rank with the same message, whether the damage lies in
// a part some rank reads or in a part no rank asks for (padding rows beyond valid_rows).
TEST_F(MpiCheckpoint, DamagedDatasetIsRefusedOnAllRanks) {
  const int P = world_size(), rank = world_rank();
  const Model m = make_model(100);
  const std::string file = path("damaged.h5");
  Held mine = hold_slice(m, partition(m.total, P)[rank], true, false);
  triad::save_checkpoint(MPI_COMM_WORLD, file, make_state(4), mine.groups);

  // Loading full tensors or slices, every rank reports the damaged dataset alike.
  auto expect_refused = [&](const std::string& dataset) {
    for (bool full : {false, true}) {
      SCOPED_TRACE(full ? "full tensors" : "slices");
      Held h = full ? hold_full(m, false, true)
                    : hold_slice(m, partition(m.total, P)[rank], false, true);
      const std::string msg =
          error_of([&] { triad::load_checkpoint_tensors(MPI_COMM_WORLD, file, h.groups); });
      EXPECT_CONTAINS(msg, "checkpoint " + file + ": dataset " + dataset + " fails its checksum");
      expect_same_on_all_ranks(msg, MPI_COMM_WORLD);
    }
  };
  const std::string dset = "/optimizer/v/h/0/mlp/c_fc/weight";
  damage(file, dset, 4 * kC * kC - 1);  // its last element
  expect_refused(dset);

  // Undo, then damage a padding row of wte that nobody reads with valid_rows = 90.
  damage(file, dset, 4 * kC * kC - 1);
  Held ok = hold_slice(m, partition(m.total, P)[rank], false, true);
  triad::load_checkpoint_tensors(MPI_COMM_WORLD, file, ok.groups);
  expect_reference(ok, "after undoing the damage");
  damage(file, "/model/wte", 95 * kC + 3);
  expect_refused("/model/wte");
}

TEST_F(MpiCheckpoint, SaveIntoMissingDirectoryFailsOnAllRanks) {
  const int P = world_size(), rank = world_rank();
  const Model m = make_model(100);
  const std::string file = path("no/such/dir/step_00000001.h5");
  Held mine = hold_slice(m, partition(m.total, P)[rank], true, false);
  const std::string msg =
      error_of([&] { triad::save_checkpoint(MPI_COMM_WORLD, file, make_state(1), mine.groups); });
  EXPECT_CONTAINS(msg, "checkpoint " + file + ":");
  EXPECT_CONTAINS(msg, "does not exist");
  expect_same_on_all_ranks(msg, MPI_COMM_WORLD);
  EXPECT_FALSE(fs::exists(file));
  EXPECT_FALSE(fs::exists(file + ".partial"));
  // The next save into a valid place works.
  triad::save_checkpoint(MPI_COMM_WORLD, path("ok.h5"), make_state(1), mine.groups);
  expect_file_holds_reference(m, path("ok.h5"));
}

// Slices that do not partition a tensor (a gap, an overlap) and a bad range on one rank only
// fail on every rank with the same message; nothing is left behind.
TEST_F(MpiCheckpoint, BadRangesFailOnAllRanks) {
  const int P = world_size(), rank = world_rank();
  const Model m = make_model(100);
  const std::string file = path("bad.h5");
  const std::vector<Slice> slices = partition(m.total, P);

  // A gap: the last rank drops the last element of the first optimizer/m tensor it holds.
  {
    Held h = hold_slice(m, slices[rank], true, false);
    if (rank == P - 1) {
      for (triad::TensorRef& t : h.groups[1].tensors) {
        if (t.end > t.begin) {
          t.end -= 1;
          break;
        }
      }
    }
    const std::string msg =
        error_of([&] { triad::save_checkpoint(MPI_COMM_WORLD, file, make_state(1), h.groups); });
    EXPECT_CONTAINS(msg, "checkpoint " + file + ": internal error: the ranges the ranks write");
    EXPECT_CONTAINS(msg, "do not partition it");
    expect_same_on_all_ranks(msg, MPI_COMM_WORLD);
  }
  // An overlap (with several ranks): the last rank also writes element 0 of optimizer/v's wte,
  // which is in rank 0's slice.
  if (P > 1) {
    Held h = hold_slice(m, slices[rank], true, false);
    std::vector<float> one = {ref_value(2, 0, 0)};
    if (rank == P - 1) {
      triad::TensorRef& t = h.groups[2].tensors[0];
      t.begin = 0;
      t.end = 1;
      t.data = one.data();
    }
    const std::string msg =
        error_of([&] { triad::save_checkpoint(MPI_COMM_WORLD, file, make_state(1), h.groups); });
    EXPECT_CONTAINS(msg, "tensor /optimizer/v/wte do not partition it: overlap at element 0");
    expect_same_on_all_ranks(msg, MPI_COMM_WORLD);
  }
  // A range outside the tensor on one rank only.
  {
    Held h = hold_slice(m, slices[rank], true, false);
    if (rank == P - 1) h.groups[0].tensors[2].end = 1000;
    const std::string msg =
        error_of([&] { triad::save_checkpoint(MPI_COMM_WORLD, file, make_state(1), h.groups); });
    EXPECT_CONTAINS(msg, "tensor /model/h/0/ln_1/weight has the range [");
    expect_same_on_all_ranks(msg, MPI_COMM_WORLD);
    Held l = hold_slice(m, slices[rank], false, false);
    if (rank == P - 1) l.groups[0].tensors[2].end = 1000;
    triad::save_checkpoint(MPI_COMM_WORLD, file, make_state(1),
                           hold_slice(m, slices[rank], true, false).groups);
    const std::string msg2 =
        error_of([&] { triad::load_checkpoint_tensors(MPI_COMM_WORLD, file, l.groups); });
    EXPECT_CONTAINS(msg2, "tensor /model/h/0/ln_1/weight has the range [");
    expect_same_on_all_ranks(msg2, MPI_COMM_WORLD);
    on_root([&] { fs::remove(file); });
  }
  EXPECT_FALSE(fs::exists(file));
  EXPECT_FALSE(fs::exists(file + ".partial"));
}

// ---- tensor-parallel shards (TensorRef::split_*)
// -------------------------------------------------
//
// A GPT layer's tensors split as Megatron splits them, saved and loaded on grids of 4 ranks
// (these tests are skipped on other rank counts). Each rank checks every element it loads
// against the reference value of the full tensor's element, found from coordinates here
// (independently of src/io).

struct TpSpec {
  std::string name;
  std::vector<int64_t> shape;
  int axis = -1;  // split axis under tensor parallelism; -1: replicated
  int64_t blocks = 1;
};

std::vector<TpSpec> tp_specs(int64_t wte_rows) {
  return {
      {"wte", {wte_rows, kC}, 0, 1},
      {"h/0/ln_1/weight", {kC}},
      {"h/0/attn/c_attn/weight", {3 * kC, kC}, 0, 3},
      {"h/0/attn/c_attn/bias", {3 * kC}, 0, 3},
      {"h/0/attn/c_proj/weight", {kC, kC}, 1, 1},
      {"h/0/attn/c_proj/bias", {kC}},
      {"h/0/mlp/c_fc/weight", {4 * kC, kC}, 0, 1},
      {"h/0/mlp/c_fc/bias", {4 * kC}, 0, 1},
      {"h/0/mlp/c_proj/weight", {kC, 4 * kC}, 1, 1},
      {"x3d", {3, 8, 5}, 1, 2},  // a split in the middle of three dimensions, two blocks
  };
}

Model tp_model(int64_t wte_rows) {
  Model m;
  for (const TpSpec& s : tp_specs(wte_rows)) m.specs.push_back({s.name, s.shape});
  return m;
}

// The full tensor's flat index of element x of part `part` of `parts` of tensor s (its local
// row-major order), from coordinates.
int64_t full_index(const TpSpec& s, int parts, int part, int64_t x) {
  if (s.axis < 0 || parts == 1) return x;
  const size_t nd = s.shape.size();
  std::vector<int64_t> local = s.shape;
  local[s.axis] /= parts;
  std::vector<int64_t> idx(nd);
  for (size_t k = nd; k-- > 0;) {
    idx[k] = x % local[k];
    x /= local[k];
  }
  const int64_t per_part = local[s.axis] / s.blocks, per_block = s.shape[s.axis] / s.blocks;
  idx[s.axis] = idx[s.axis] / per_part * per_block + part * per_part + idx[s.axis] % per_part;
  int64_t e = 0;
  for (size_t k = 0; k < nd; ++k) e = e * s.shape[k] + idx[k];
  return e;
}

// How one rank holds one group: tensor-parallel part `part` of `tp` of the split tensors (the
// replicated ones whole), and of each local tensor the ZeRO-like slice dp_rank of dp (dp == 1:
// the whole local tensor, end = -1). write: TensorRef::write per tensor.
struct TpView {
  std::string group;
  int tp = 1, part = 0, dp = 1, dp_rank = 0;
  std::function<bool(const TpSpec&)> write = [](const TpSpec&) { return true; };
};

// Slice r of n of [0, numel): even cuts moved by one element (so that they fall mid-row).
Slice zero_slice(int64_t numel, int r, int n) {
  auto cut = [&](int k) {
    return k == n ? numel : std::min(numel, numel * k / n + (k > 0 ? 1 : 0));
  };
  return {cut(r), cut(r + 1)};
}

struct TpHeld {
  std::vector<std::vector<float>> storage;
  std::vector<triad::TensorGroup> groups;
  std::vector<TpSpec> specs;
};

// The tensors of `specs` held as the views say; filled with the reference values (non-writers
// with garbage, which would show in the file), or the sentinel. valid: wte's valid_rows.
TpHeld hold_tp(const std::vector<TpSpec>& specs, const std::vector<TpView>& views, bool fill,
               bool valid) {
  TpHeld h;
  h.specs = specs;
  h.storage.reserve(specs.size() * views.size());
  for (const TpView& v : views) {
    const size_t gi = group_index(v.group);
    triad::TensorGroup g;
    g.path = v.group;
    for (size_t i = 0; i < specs.size(); ++i) {
      const TpSpec& s = specs[i];
      triad::TensorRef t{s.name, s.shape, nullptr, valid && s.name == "wte" ? kVocab : -1};
      const bool split = s.axis >= 0 && v.tp > 1;
      if (split) {
        t.split_axis = s.axis;
        t.split_blocks = s.blocks;
        t.split_parts = v.tp;
        t.split_part = v.part;
      }
      const int64_t local = numel(s.shape) / (split ? v.tp : 1);
      Slice r{0, local};
      if (v.dp > 1) {
        r = zero_slice(local, v.dp_rank, v.dp);
        t.begin = r.first;
        t.end = r.second;
      }
      h.storage.emplace_back(std::max<int64_t>(r.second - r.first, 1), kSentinel);
      t.data = h.storage.back().data();
      t.write = v.write(s);
      if (fill) {
        for (int64_t x = r.first; x < r.second; ++x) {
          t.data[x - r.first] =
              t.write ? ref_value(gi, i, full_index(s, t.split_parts, t.split_part, x)) : -1.0f;
        }
      }
      g.tensors.push_back(std::move(t));
    }
    h.groups.push_back(std::move(g));
  }
  return h;
}

// Every held element equals the reference value of its full element (0 in wte rows >=
// valid_rows). Reports the first mismatch.
void expect_tp_reference(const TpHeld& h, const std::string& where) {
  int64_t bad = 0, checked = 0;
  std::string first;
  for (const triad::TensorGroup& g : h.groups) {
    const size_t gi = group_index(g.path);
    for (size_t i = 0; i < g.tensors.size(); ++i) {
      const triad::TensorRef& t = g.tensors[i];
      const TpSpec& s = h.specs[i];
      const int parts = t.split_axis >= 0 ? t.split_parts : 1;
      const int64_t row = numel(s.shape) / s.shape[0];
      const int64_t b = t.begin, e = t.end < 0 ? numel(s.shape) / parts : t.end;
      for (int64_t x = b; x < e; ++x) {
        const int64_t full = full_index(s, parts, t.split_part, x);
        const bool zero = t.valid_rows >= 0 && full / row >= t.valid_rows;
        const float want = zero ? 0.0f : ref_value(gi, i, full);
        const float got = t.data[x - b];
        ++checked;
        if (std::memcmp(&want, &got, sizeof(float)) != 0 && bad++ == 0) {
          first = g.path + "/" + t.name + " local [" + std::to_string(x) + "] (full " +
                  std::to_string(full) + ") = " + std::to_string(got) + ", expected " +
                  std::to_string(want);
        }
      }
    }
  }
  EXPECT_EQ(bad, 0) << where << ": " << bad << " of " << checked << " elements wrong on rank "
                    << world_rank() << ", first: " << first;
}

bool replicated(const TpSpec& s) { return s.axis < 0; }

// tp = 2 x dp = 2 (rank = 2 * dp_rank + part): the parameters as whole local tensors, written by
// the first dp replica (replicated ones by rank 0 alone; the others pass write = false); the
// optimizer state in ZeRO-like slices of the local tensors over dp (replicated tensors' slices
// written by tp part 0). swap_dp: the dp ranks of optimizer/m reversed.
std::vector<TpView> grid_tp2_dp2(int rank, bool swap_dp = false) {
  const int part = rank % 2, dpr = rank / 2, mdp = swap_dp ? 1 - dpr : dpr;
  auto opt_write = [part](const TpSpec& s) { return !replicated(s) || part == 0; };
  return {
      {"model", 2, part, 1, 0,
       [part, dpr](const TpSpec& s) { return dpr == 0 && (!replicated(s) || part == 0); }},
      {"optimizer/m", 2, part, 2, mdp, opt_write},
      {"optimizer/v", 2, part, 2, 1 - mdp, opt_write},
  };
}

// tp = 4: whole local tensors, every rank passing write = true (replicated tensors: the lowest
// rank writes them).
std::vector<TpView> grid_tp4(int rank) {
  return {{"model", 4, rank}, {"optimizer/m", 4, rank}, {"optimizer/v", 4, rank}};
}

std::vector<TpView> grid_single() { return {{"model"}, {"optimizer/m"}, {"optimizer/v"}}; }

// Every loading layout, each on all ranks of `comm` (a sub-communicator for fewer ranks): loads
// `file` with the tensors of wte_rows rows and checks every element.
void load_everywhere(const std::string& file, int64_t wte_rows, uint32_t seed) {
  const int rank = world_rank();
  const std::vector<TpSpec> specs = tp_specs(wte_rows);
  const std::string rows = std::to_string(wte_rows) + " wte rows";
  // One rank, no split.
  if (MPI_Comm one = first_ranks(1); one != MPI_COMM_NULL) {
    TpHeld h = hold_tp(specs, grid_single(), false, true);
    triad::load_checkpoint_tensors(one, file, h.groups);
    expect_tp_reference(h, "1 rank, full tensors, " + rows);
    MPI_Comm_free(&one);
  }
  MPI_Barrier(MPI_COMM_WORLD);
  // Two ranks, tp = 2, whole local tensors.
  if (MPI_Comm two = first_ranks(2); two != MPI_COMM_NULL) {
    TpHeld h = hold_tp(specs, {{"model", 2, rank}, {"optimizer/m", 2, rank}}, false, true);
    triad::load_checkpoint_tensors(two, file, h.groups);
    expect_tp_reference(h, "2 ranks, tp = 2, " + rows);
    MPI_Comm_free(&two);
  }
  MPI_Barrier(MPI_COMM_WORLD);
  // tp = 2 x dp = 2 with ZeRO-like slices (dp ranks swapped).
  {
    TpHeld h = hold_tp(specs, grid_tp2_dp2(rank, /*swap_dp=*/true), false, true);
    triad::load_checkpoint_tensors(MPI_COMM_WORLD, file, h.groups);
    expect_tp_reference(h, "tp = 2 x dp = 2, " + rows);
  }
  // tp = 4: whole local parameters, random (possibly empty) ranges of the optimizer state.
  {
    TpHeld h = hold_tp(specs, grid_tp4(rank), false, true);
    std::mt19937 rng(seed + rank);
    for (size_t g = 1; g < h.groups.size(); ++g) {
      for (triad::TensorRef& t : h.groups[g].tensors) {
        const int64_t local = numel(t.shape) / (t.split_axis >= 0 ? t.split_parts : 1);
        int64_t a = rng() % (local + 1), b = rng() % (local + 1);
        if (a > b) std::swap(a, b);
        t.begin = a;
        t.end = b;
        t.data += a;  // the buffer holds the whole local tensor
      }
    }
    triad::load_checkpoint_tensors(MPI_COMM_WORLD, file, h.groups);
    expect_tp_reference(h, "tp = 4, random ranges, " + rows);
  }
  // Mixed on one communicator: ranks 0 and 1 tp = 2 with whole local tensors, ranks 2 and 3
  // unsplit tensors in slices over dp = 2.
  {
    std::vector<TpView> views = grid_single();
    for (TpView& v : views) {
      if (rank < 2) {
        v.tp = 2;
        v.part = rank;
      } else {
        v.dp = 2;
        v.dp_rank = rank - 2;
      }
    }
    TpHeld h = hold_tp(specs, views, false, true);
    triad::load_checkpoint_tensors(MPI_COMM_WORLD, file, h.groups);
    expect_tp_reference(h, "mixed splits, " + rows);
  }
}

// Saved on tp = 2 x dp = 2 and on tp = 4, with wte padded to 256 or 128 rows, a file holds the
// full tensors with the CRC-32 of each full host array as its checksum, and loads on every layout
// (1 rank unsplit, 2 ranks tp = 2, tp = 2 x dp = 2, tp = 4 with random ranges, mixed splits),
// with the other padding too.
TEST_F(MpiCheckpoint, TensorParallelShardsLoadOnAnyGrid) {
  if (world_size() != 4) GTEST_SKIP() << "needs 4 ranks";
  const int rank = world_rank();
  uint32_t seed = 1;
  for (int64_t saved_rows : {256, 128}) {
    for (bool tp4 : {false, true}) {
      const std::string grid = tp4 ? "tp4" : "tp2_dp2";
      SCOPED_TRACE("saved on " + grid + " with " + std::to_string(saved_rows) + " wte rows");
      const std::string file = path(grid + "_" + std::to_string(saved_rows) + ".h5");
      TpHeld h =
          hold_tp(tp_specs(saved_rows), tp4 ? grid_tp4(rank) : grid_tp2_dp2(rank), true, false);
      triad::save_checkpoint(MPI_COMM_WORLD, file, make_state(1), h.groups);
      expect_file_holds_reference(tp_model(saved_rows), file);
      for (int64_t loaded_rows : {256, 128}) load_everywhere(file, loaded_rows, seed++);
    }
  }
}

// The file of a tp = 2 x dp = 2 save equals that of a single-rank save of the full tensors.
TEST_F(MpiCheckpoint, TensorParallelSaveEqualsSingleRankSave) {
  if (world_size() != 4) GTEST_SKIP() << "needs 4 ranks";
  const std::string sharded = path("sharded.h5"), single = path("single.h5");
  TpHeld h = hold_tp(tp_specs(256), grid_tp2_dp2(world_rank()), true, false);
  triad::save_checkpoint(MPI_COMM_WORLD, sharded, make_state(5), h.groups);
  if (world_rank() == 0) {
    TpHeld full = hold_tp(tp_specs(256), grid_single(), true, false);
    triad::save_checkpoint(MPI_COMM_SELF, single, make_state(5), full.groups);
  }
  MPI_Barrier(MPI_COMM_WORLD);
  expect_file_holds_reference(tp_model(256), sharded, single);
}

// Damage is found on every rank with the same message, wherever it lies: in elements the ranks
// load, in wte's padding rows (loaded by nobody), in elements of a part nobody asks for.
TEST_F(MpiCheckpoint, TensorParallelDamageIsFoundOnAllRanks) {
  if (world_size() != 4) GTEST_SKIP() << "needs 4 ranks";
  const int rank = world_rank();
  const std::string file = path("damaged.h5");
  TpHeld saved = hold_tp(tp_specs(256), grid_tp2_dp2(rank), true, false);
  triad::save_checkpoint(MPI_COMM_WORLD, file, make_state(4), saved.groups);
  // tp = 4 whole local tensors, but each rank asks only for the first half of its part of
  // c_attn's weight (so rows 24..26 of part 0's third block are read by nobody).
  auto half_attn = [&](int64_t rows) {
    TpHeld h = hold_tp(tp_specs(rows), grid_tp4(rank), false, true);
    for (triad::TensorGroup& g : h.groups) {
      triad::TensorRef& t = g.tensors[2];
      t.begin = 0;
      t.end = numel(t.shape) / 4 / 2;
    }
    return h;
  };
  const std::vector<std::pair<std::string, int64_t>> damages = {
      {"/optimizer/v/h/0/mlp/c_proj/weight", 5 * 4 * kC + 37},  // loaded by some rank
      {"/model/wte", 100 * kC + 7},                             // a padding row
      {"/optimizer/m/h/0/attn/c_attn/weight", 25 * kC + 5},     // asked for by nobody
  };
  for (const auto& [dset, element] : damages) {
    SCOPED_TRACE(dset);
    damage(file, dset, element);
    for (int layout = 0; layout < 4; ++layout) {
      SCOPED_TRACE(layout);
      TpHeld h = layout == 0   ? hold_tp(tp_specs(256), grid_tp2_dp2(rank, true), false, true)
                 : layout == 1 ? hold_tp(tp_specs(128), grid_tp4(rank), false, true)
                 : layout == 2 ? half_attn(256)
                               : hold_tp(tp_specs(128), grid_tp2_dp2(rank), false, true);
      const std::string msg =
          error_of([&] { triad::load_checkpoint_tensors(MPI_COMM_WORLD, file, h.groups); });
      EXPECT_CONTAINS(msg, "checkpoint " + file + ": dataset " + dset + " fails its checksum");
      expect_same_on_all_ranks(msg, MPI_COMM_WORLD);
    }
    damage(file, dset, element);  // undo
    TpHeld ok = half_attn(128);
    triad::load_checkpoint_tensors(MPI_COMM_WORLD, file, ok.groups);
    expect_tp_reference(ok, "after undoing the damage");
  }
}

// The writers' elements must partition each tensor across splits: ranks with different splits
// may share the work; a gap or an overlap within a part or between splits fails on every rank.
TEST_F(MpiCheckpoint, SplitWritersMustPartitionTheTensor) {
  if (world_size() != 4) GTEST_SKIP() << "needs 4 ranks";
  const int rank = world_rank();
  const TpSpec fc = tp_specs(256)[6];  // h/0/mlp/c_fc/weight [48, 12], split along axis 0
  const std::string file = path("bad.h5");
  const std::string name = "/model/" + fc.name;
  auto save = [&](const std::vector<TpView>& views,
                  const std::function<void(triad::TensorRef&)>& edit) {
    TpHeld h = hold_tp({fc}, views, true, false);
    edit(h.groups[0].tensors[0]);
    return error_of([&] { triad::save_checkpoint(MPI_COMM_WORLD, file, make_state(1), h.groups); });
  };
  // Valid, with two splits: rank 0 writes part 0 of 2 (rows 0..23), rank 1 the unsplit flat
  // range of rows 24..47, ranks 2 and 3 (unsplit) nothing.
  {
    std::vector<TpView> views = {rank == 0 ? TpView{"model", 2, 0} : TpView{"model"}};
    views[0].write = [rank](const TpSpec&) { return rank < 2; };
    TpHeld h = hold_tp({fc}, views, true, false);
    if (rank == 1) {
      triad::TensorRef& t = h.groups[0].tensors[0];
      t.begin = 24 * kC;
      t.end = 48 * kC;
      t.data += t.begin;  // the buffer holds the whole tensor
    }
    triad::save_checkpoint(MPI_COMM_WORLD, path("mixed.h5"), make_state(1), h.groups);
    on_root([&] {
      const DatasetInfo got = read_dataset(path("mixed.h5"), name);
      std::vector<float> want(48 * kC);
      for (int64_t e = 0; e < 48 * kC; ++e) want[e] = ref_value(0, 0, e);
      EXPECT_EQ(got.data, want);
      EXPECT_EQ(got.checksum, triad::io::crc32(want.data(), want.size() * sizeof(float)));
    });
  }
  // A gap within a part: the last rank (part 1, second dp slice) drops its last element.
  std::string msg = save({{"model", 2, rank % 2, 2, rank / 2}}, [&](triad::TensorRef& t) {
    if (rank == 3) t.end -= 1;
  });
  EXPECT_CONTAINS(msg,
                  "internal error: the ranges the ranks write of part 1 of 2 along axis 0 "
                  "of tensor " +
                      name +
                      " do not partition it: nothing written from local "
                      "element 287 of 288");
  expect_same_on_all_ranks(msg, MPI_COMM_WORLD);
  // An overlap within a part: both dp replicas of part 0 write their whole local tensor as an
  // explicit range.
  msg = save({{"model", 2, rank % 2}}, [&](triad::TensorRef& t) {
    t.begin = 0;
    t.end = 24 * kC;
  });
  EXPECT_CONTAINS(msg, "of part 0 of 2 along axis 0 of tensor " + name +
                           " do not partition it: overlap at local element 0");
  expect_same_on_all_ranks(msg, MPI_COMM_WORLD);
  // An overlap between splits: ranks 0 and 1 write the two parts, rank 2 also elements 0..9
  // unsplit.
  {
    std::vector<TpView> views = {rank < 2 ? TpView{"model", 2, rank} : TpView{"model"}};
    views[0].write = [rank](const TpSpec&) { return rank < 3; };
    msg = save(views, [&](triad::TensorRef& t) {
      if (rank == 2) {
        t.begin = 0;
        t.end = 10;
      }
    });
  }
  EXPECT_CONTAINS(msg, "tensor " + name +
                           " (split differently on different ranks) do not partition it: "
                           "overlap at element 0");
  expect_same_on_all_ranks(msg, MPI_COMM_WORLD);
  EXPECT_FALSE(fs::exists(file));
  EXPECT_FALSE(fs::exists(file + ".partial"));
}

// Prints failures of the ranks other than 0 (their normal output is silenced), with the rank.
class RankFailurePrinter : public ::testing::EmptyTestEventListener {
 public:
  explicit RankFailurePrinter(int rank) : rank_(rank) {}
  void OnTestPartResult(const ::testing::TestPartResult& r) override {
    if (!r.failed()) return;
    std::fprintf(stderr, "[rank %d] %s:%d: failure\n%s\n", rank_,
                 r.file_name() ? r.file_name() : "?", r.line_number(), r.summary());
  }

 private:
  int rank_;
};

}  // namespace

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  ::testing::InitGoogleTest(&argc, argv);
  const int rank = world_rank();
  if (rank != 0) {
    ::testing::TestEventListeners& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
    listeners.Append(new RankFailurePrinter(rank));
  }
  int failed = RUN_ALL_TESTS() != 0 ? 1 : 0;
  MPI_Allreduce(MPI_IN_PLACE, &failed, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  if (rank == 0 && failed) std::fprintf(stderr, "test_checkpoint_mpi: some rank failed\n");
  MPI_Finalize();
  return failed;
}
