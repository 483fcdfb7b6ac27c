// Checkpoint files and the checkpoint directory (DESIGN.md §5). Runs as a singleton; the
// tests are also written to pass under `mpirun -np 2` (file edits happen on rank 0).
#include <gtest/gtest.h>
#include <hdf5.h>
#include <mpi.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "../../src/io/crc32.h"
#include "../../src/io/shard.h"
#include "../support/mpi_environment.h"
#include "../support/mpi_test_helpers.h"
#include "triad/core/error.h"
#include "triad/io/checkpoint.h"

namespace fs = std::filesystem;

namespace {

using triad::testing::error_of;
using triad::testing::on_root;
using triad::testing::world_rank;

// A set of tensors with their storage.
struct Tensors {
  std::vector<std::vector<float>> storage;
  std::vector<triad::TensorGroup> groups;

  triad::TensorRef& find(const std::string& group, const std::string& name) {
    for (auto& g : groups) {
      if (g.path != group) continue;
      for (auto& t : g.tensors) {
        if (t.name == name) return t;
      }
    }
    throw std::runtime_error("no tensor " + group + "/" + name);
  }
};

struct Spec {
  std::string name;
  std::vector<int64_t> shape;
  int64_t valid_rows = -1;
};

const std::vector<Spec> kModelSpecs = {
    {"wte", {256, 8}},
    {"wpe", {16, 8}},
    {"h/0/ln_1/weight", {8}},
    {"h/0/attn/c_attn/weight", {8, 24}},
    {"h/0/attn/c_attn/bias", {24}},
    {"h/1/mlp/c_fc/weight", {8, 32}},
    {"ln_f/weight", {8}},
};

// Groups `paths`, each with tensors `specs`; values random (seed) or zero.
Tensors make_tensors(const std::vector<std::string>& paths, const std::vector<Spec>& specs,
                     uint32_t seed, bool zero = false) {
  Tensors ts;
  size_t total = 0;
  for (size_t p = 0; p < paths.size(); ++p) total += specs.size();
  ts.storage.reserve(total);
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  for (const std::string& path : paths) {
    triad::TensorGroup g;
    g.path = path;
    for (const Spec& s : specs) {
      size_t n = 1;
      for (int64_t d : s.shape) n *= static_cast<size_t>(d);
      std::vector<float> v(n, 0.0f);
      if (!zero) {
        for (float& x : v) x = dist(rng);
      }
      ts.storage.push_back(std::move(v));
      g.tensors.push_back({s.name, s.shape, ts.storage.back().data(), s.valid_rows});
    }
    ts.groups.push_back(std::move(g));
  }
  return ts;
}

const std::vector<std::string> kAdamGroups = {"model", "optimizer/m", "optimizer/v"};

triad::CheckpointState make_state(int64_t step) {
  triad::CheckpointState s;
  s.step = step;
  s.tokens_seen = step * 4096 + 7;
  s.next_sequence = step * 8 + 3;
  s.epoch = 2;
  s.config = "[model]\nn_layer = 2\nn_embd = 8\n\n[train]\nlr = 6e-4  ; comment\n";
  s.grid = "dp=1 pp=1 tp=1";
  s.model = {2, 2, 8, 16, 200, 256};
  return s;
}

// The tests' temporary directory, created on rank 0 and shared by name.
class CheckpointTest : public ::testing::Test {
 protected:
  void SetUp() override {
    static int counter = 0;
    std::string name;
    if (world_rank() == 0) {
      const auto ticks = std::chrono::steady_clock::now().time_since_epoch().count();
      dir_ = fs::temp_directory_path() / ("triad_test_ckpt_" + std::to_string(getpid()) + "_" +
                                          std::to_string(ticks) + "_" + std::to_string(counter++));
      fs::create_directories(dir_);
      name = dir_.string();
    }
    int len = static_cast<int>(name.size());
    MPI_Bcast(&len, 1, MPI_INT, 0, MPI_COMM_WORLD);
    name.resize(len);
    MPI_Bcast(name.data(), len, MPI_CHAR, 0, MPI_COMM_WORLD);
    dir_ = name;
  }
  void TearDown() override {
    on_root([&] {
      std::error_code ec;
      fs::permissions(dir_, fs::perms::owner_all, fs::perm_options::add, ec);
      fs::remove_all(dir_, ec);
    });
  }

  std::string path(const std::string& name) const { return (dir_ / name).string(); }

  // Saves a valid Adam checkpoint for `step`; returns its path.
  std::string save_valid(int64_t step, const std::string& name = "") {
    const std::string p = path(name.empty() ? triad::checkpoint_file_name(step) : name);
    Tensors ts = make_tensors(kAdamGroups, kModelSpecs, 1234 + static_cast<uint32_t>(step));
    triad::save_checkpoint(MPI_COMM_WORLD, p, make_state(step), ts.groups);
    return p;
  }

  fs::path dir_;
};

// ---- HDF5 helpers for the tests (serial access, rank 0) ----------------------------------------

void set_int64_attr(const std::string& file, const std::string& name, int64_t value) {
  hid_t f = H5Fopen(file.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
  ASSERT_GE(f, 0);
  if (H5Aexists(f, name.c_str()) > 0) H5Adelete(f, name.c_str());
  hid_t space = H5Screate(H5S_SCALAR);
  hid_t a = H5Acreate2(f, name.c_str(), H5T_STD_I64LE, space, H5P_DEFAULT, H5P_DEFAULT);
  ASSERT_GE(a, 0);
  ASSERT_GE(H5Awrite(a, H5T_NATIVE_INT64, &value), 0);
  H5Aclose(a);
  H5Sclose(space);
  H5Fclose(f);
}

void delete_attr(const std::string& file, const std::string& name) {
  hid_t f = H5Fopen(file.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
  ASSERT_GE(f, 0);
  ASSERT_GE(H5Adelete(f, name.c_str()), 0);
  H5Fclose(f);
}

haddr_t dataset_offset(const std::string& file, const std::string& dset) {
  hid_t f = H5Fopen(file.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  EXPECT_GE(f, 0);
  hid_t d = H5Dopen2(f, dset.c_str(), H5P_DEFAULT);
  EXPECT_GE(d, 0);
  const haddr_t off = H5Dget_offset(d);
  H5Dclose(d);
  H5Fclose(f);
  return off;
}

void write_bytes(const std::string& file, const std::vector<char>& bytes) {
  std::ofstream out(file, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// ---- round trip ---------------------------------------------------------------------------------

TEST(Crc32, KnownValues) {
  const char* s = "123456789";
  EXPECT_EQ(triad::io::crc32(s, 9), 0xCBF43926u);
  EXPECT_EQ(triad::io::crc32(s, 0), 0u);
  // Continuation over any split equals the whole (exercises the 8-byte and tail paths).
  std::vector<unsigned char> data(1000);
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<unsigned char>(i * 7 + 3);
  const uint32_t whole = triad::io::crc32(data.data(), data.size());
  for (size_t cut : {0, 1, 5, 8, 13, 512, 999, 1000}) {
    const uint32_t a = triad::io::crc32(data.data(), cut);
    EXPECT_EQ(triad::io::crc32(data.data() + cut, data.size() - cut, a), whole) << cut;
  }
}

// The fast path (carry-less multiplication, for 64 bytes and more where the CPU has it) and the
// table path against a bit-at-a-time reference, for every length up to 300 at every alignment.
TEST(Crc32, MatchesBitwiseReference) {
  auto reference = [](const unsigned char* p, size_t n, uint32_t crc) {
    uint32_t c = ~crc;
    for (size_t i = 0; i < n; ++i) {
      c ^= p[i];
      for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ 0xEDB88320u : c >> 1;
    }
    return ~c;
  };
  std::mt19937 rng(9);
  std::vector<unsigned char> data(4096 + 64);
  for (auto& c : data) c = static_cast<unsigned char>(rng());
  for (size_t len = 0; len <= 300; ++len) {
    for (size_t off = 0; off < 16; ++off) {
      for (uint32_t init : {0u, 0x9E3779B9u}) {
        ASSERT_EQ(triad::io::crc32(data.data() + off, len, init),
                  reference(data.data() + off, len, init))
            << "length " << len << ", offset " << off << ", initial crc " << init;
      }
    }
  }
  EXPECT_EQ(triad::io::crc32(data.data() + 3, 4096, 7), reference(data.data() + 3, 4096, 7));
}

TEST(Crc32, CombineEqualsCrcOfConcatenation) {
  // "123456789" split anywhere.
  const char* s = "123456789";
  for (size_t cut = 0; cut <= 9; ++cut) {
    EXPECT_EQ(triad::io::crc32_combine(triad::io::crc32(s, cut), triad::io::crc32(s + cut, 9 - cut),
                                       9 - cut),
              0xCBF43926u)
        << cut;
  }
  std::mt19937 rng(42);
  std::vector<unsigned char> data(3 << 20);
  for (auto& c : data) c = static_cast<unsigned char>(rng());
  const uint32_t whole = triad::io::crc32(data.data(), data.size());
  for (size_t cut : {size_t{0}, size_t{1}, size_t{3}, size_t{4096}, size_t{1} << 20,
                     data.size() - 7, data.size() - 1, data.size()}) {
    const uint32_t a = triad::io::crc32(data.data(), cut);
    const uint32_t b = triad::io::crc32(data.data() + cut, data.size() - cut);
    EXPECT_EQ(triad::io::crc32_combine(a, b, data.size() - cut), whole) << cut;
  }
  // Many pieces of random lengths, combined left to right.
  for (int trial = 0; trial < 20; ++trial) {
    uint32_t crc = 0;
    size_t pos = 0;
    while (pos < data.size()) {
      const size_t len = std::min<size_t>(data.size() - pos, rng() % (1u << (rng() % 20)));
      crc = triad::io::crc32_combine(crc, triad::io::crc32(data.data() + pos, len), len);
      pos += len;
    }
    ASSERT_EQ(crc, whole) << trial;
  }
  // A piece of zero length changes nothing; lengths beyond 4 GiB (zeros: crc32 of n zero bytes
  // continued from crc c equals combining c with the crc of the zeros).
  EXPECT_EQ(triad::io::crc32_combine(0x12345678u, 0, 0), 0x12345678u);
  std::vector<unsigned char> zeros(1 << 16, 0);
  const uint32_t z = triad::io::crc32(zeros.data(), zeros.size());
  EXPECT_EQ(triad::io::crc32_combine(whole, z, zeros.size()),
            triad::io::crc32(zeros.data(), zeros.size(), whole));
  // 2^32 + 2^16 zero bytes: combine(crc(2^32 zeros), crc(2^16 zeros)) == combine of the halves.
  const uint64_t big = uint64_t{1} << 32;
  uint32_t zbig = 0;  // crc32 of 2^32 zero bytes, from 2^16 blocks of 2^16
  {
    uint32_t c = z;
    uint64_t len = zeros.size();
    while (len < big) {
      c = triad::io::crc32_combine(c, c, len);
      len *= 2;
    }
    zbig = c;
  }
  EXPECT_EQ(triad::io::crc32_combine(triad::io::crc32_combine(7u, zbig, big), z, zeros.size()),
            triad::io::crc32_combine(7u, triad::io::crc32_combine(zbig, z, zeros.size()),
                                     big + zeros.size()));
}

// ---- shards and placed CRCs (src/io/shard.h) ---------------------------------------------------

// The full flat index of local element x of part `part` of `parts` of `blocks` blocks along
// `axis` of a tensor of shape `full`, from coordinates (independently of Shard).
int64_t full_index(const std::vector<int64_t>& full, int axis, int64_t blocks, int64_t parts,
                   int64_t part, int64_t x) {
  if (axis < 0 || parts == 1) return x;
  const size_t nd = full.size();
  std::vector<int64_t> local = full;
  local[axis] /= parts;
  std::vector<int64_t> idx(nd);
  for (size_t k = nd; k-- > 0;) {
    idx[k] = x % local[k];
    x /= local[k];
  }
  const int64_t per_part = local[axis] / blocks, per_block = full[axis] / blocks;
  idx[axis] = idx[axis] / per_part * per_block + part * per_part + idx[axis] % per_part;
  int64_t e = 0;
  for (size_t k = 0; k < nd; ++k) e = e * full[k] + idx[k];
  return e;
}

// The full flat indices the boxes select, increasing.
std::vector<int64_t> box_elements(const std::vector<int64_t>& full,
                                  const std::vector<triad::io::Box>& boxes) {
  std::vector<int64_t> out;
  const size_t nd = full.size();
  for (const triad::io::Box& b : boxes) {
    std::vector<hsize_t> idx(nd, 0);
    while (true) {
      int64_t e = 0;
      for (size_t k = 0; k < nd; ++k) e = e * full[k] + static_cast<int64_t>(b.start[k] + idx[k]);
      out.push_back(e);
      size_t k = nd;
      while (k-- > 0 && ++idx[k] == b.count[k]) idx[k] = 0;
      if (k == static_cast<size_t>(-1)) break;
    }
  }
  std::sort(out.begin(), out.end());
  return out;
}

// For every split of some small tensors and every (or a sample of) local range: the boxes select
// exactly the range's elements (no overlap), to_full and for_each_run agree with the
// coordinates, and in 2-D there are at most 3 boxes per block.
TEST(Shard, BoxesAndRunsMatchTheCoordinates) {
  struct Case {
    std::vector<int64_t> shape;
    int axis;
    int64_t blocks, parts;
  };
  const std::vector<Case> cases = {
      {{12, 5}, -1, 1, 1}, {{12, 5}, 0, 1, 2}, {{12, 5}, 0, 3, 2},   {{12, 6}, 1, 1, 3},
      {{6, 12}, 1, 2, 2},  {{24}, 0, 3, 4},    {{3, 8, 5}, 1, 2, 2}, {{2, 3, 4}, 2, 1, 4},
      {{4, 6}, 0, 1, 1},   {{0, 4}, 0, 1, 2},
  };
  std::mt19937 rng(5);
  for (const Case& c : cases) {
    int64_t n = 1;
    for (int64_t d : c.shape) n *= d;
    for (int64_t part = 0; part < c.parts; ++part) {
      const triad::io::Shard s(std::vector<hsize_t>(c.shape.begin(), c.shape.end()), c.axis,
                               c.blocks, c.parts, part);
      const int64_t local = n / c.parts;
      ASSERT_EQ(s.local_numel(), static_cast<hsize_t>(local));
      for (int trial = 0; trial < 40; ++trial) {
        int64_t b = local == 0 ? 0 : rng() % (local + 1), e = local == 0 ? 0 : rng() % (local + 1);
        if (trial == 0) b = 0, e = local;
        if (b > e) std::swap(b, e);
        SCOPED_TRACE(::testing::Message()
                     << "shape " << c.shape.size() << "-D axis " << c.axis << " blocks " << c.blocks
                     << " part " << part << "/" << c.parts << " range " << b << ".." << e);
        std::vector<int64_t> want;
        for (int64_t x = b; x < e; ++x) {
          want.push_back(full_index(c.shape, c.axis, c.blocks, c.parts, part, x));
          ASSERT_EQ(s.to_full(x), static_cast<hsize_t>(want.back()));
        }
        std::vector<triad::io::Box> boxes;
        s.boxes(b, e, boxes);
        EXPECT_EQ(box_elements(c.shape, boxes), want);
        if (c.shape.size() == 2) {
          EXPECT_LE(boxes.size(), 3u * c.blocks);
        }
        std::vector<int64_t> runs;
        hsize_t next = b;
        s.for_each_run(b, e, [&](hsize_t l, hsize_t f, hsize_t count) {
          EXPECT_EQ(l, next);
          next = l + count;
          for (hsize_t k = 0; k < count; ++k) runs.push_back(static_cast<int64_t>(f + k));
        });
        EXPECT_EQ(runs, want);
      }
    }
  }
}

// The shapes of a 124M GPT: a flat range of a shard is a handful of boxes, never one per row.
TEST(Shard, LargeMatricesNeedFewBoxes) {
  struct Case {
    std::vector<hsize_t> shape;
    int axis;
    hsize_t blocks, parts;
    size_t max_boxes;
  };
  for (const Case& c : std::vector<Case>{{{768, 3072}, 1, 1, 2, 3},  // mlp.c_proj
                                         {{768, 768}, 1, 1, 4, 3},   // attn.c_proj
                                         {{2304, 768}, 0, 3, 4, 5},  // c_attn: 3 blocks
                                         {{3072, 768}, 0, 1, 8, 3},  // mlp.c_fc
                                         {{50304, 768}, 0, 1, 2, 3}}) {
    for (hsize_t part = 0; part < c.parts; ++part) {
      const triad::io::Shard s(c.shape, c.axis, c.blocks, c.parts, part);
      const hsize_t local = s.local_numel();
      // ZeRO-like slices of the local tensor over dp = 3, cut mid-row.
      for (hsize_t r = 0; r < 3; ++r) {
        std::vector<triad::io::Box> boxes;
        s.boxes(local * r / 3 + (r ? 5 : 0), r == 2 ? local : local * (r + 1) / 3 + 5, boxes);
        EXPECT_LE(boxes.size(), c.max_boxes)
            << c.shape[0] << "x" << c.shape[1] << " part " << part << " slice " << r;
      }
    }
  }
}

TEST(Shard, RowsBelow) {
  using R = std::pair<hsize_t, hsize_t>;
  auto rows = [](const triad::io::Shard& s, hsize_t n) {
    const triad::io::FlatRange r = s.rows_below(n);
    return R{r.begin, r.end};
  };
  // wte [256, 4] in 2 parts along axis 0: part 1 is rows 128..255.
  EXPECT_EQ(rows(triad::io::Shard({256, 4}, 0, 1, 2, 0), 90), R(0, 360));
  EXPECT_EQ(rows(triad::io::Shard({256, 4}, 0, 1, 2, 1), 90), R(0, 0));
  EXPECT_EQ(rows(triad::io::Shard({256, 4}, 0, 1, 2, 1), 130), R(0, 8));
  EXPECT_EQ(rows(triad::io::Shard({256, 4}, 0, 1, 2, 1), 256), R(0, 512));
  EXPECT_EQ(rows(triad::io::Shard({256, 4}, -1, 1, 1, 0), 90), R(0, 360));
  // Split along axis 1: local rows are full rows.
  EXPECT_EQ(rows(triad::io::Shard({10, 4}, 1, 1, 2, 1), 3), R(0, 6));
  // 3 blocks of 4 rows, 2 parts: part 0 holds rows 0-1, 4-5, 8-9, part 1 rows 2-3, 6-7, 10-11.
  EXPECT_EQ(rows(triad::io::Shard({12, 1}, 0, 3, 2, 1), 7), R(0, 3));
  EXPECT_EQ(rows(triad::io::Shard({12, 1}, 0, 3, 2, 0), 7), R(0, 4));
  EXPECT_EQ(rows(triad::io::Shard({12, 1}, 0, 3, 2, 0), 9), R(0, 5));
  EXPECT_EQ(rows(triad::io::Shard({12, 1}, 0, 3, 2, 1), 12), R(0, 6));
  EXPECT_EQ(rows(triad::io::Shard({12, 1}, 0, 3, 2, 0), 0), R(0, 0));
}

// Pieces checksummed anywhere (any order, on any "rank") and XORed give the CRC-32 of the whole.
TEST(Crc32, PlacedPiecesCombineToTheWhole) {
  std::mt19937 rng(11);
  for (uint64_t n : {uint64_t{0}, uint64_t{1}, uint64_t{5}, uint64_t{4096}, uint64_t{1} << 33,
                     (uint64_t{1} << 40) + 12345}) {
    const uint32_t c = static_cast<uint32_t>(rng());
    EXPECT_EQ(triad::io::crc32_apply(triad::io::crc32_zeros_operator(n), c),
              triad::io::crc32_combine(c, 0, n))
        << n;
  }
  std::vector<float> data(100000);
  for (float& x : data) x = static_cast<float>(static_cast<int32_t>(rng())) * 1e-9f;
  const uint32_t whole = triad::io::crc32(data.data(), data.size() * sizeof(float));
  for (int trial = 0; trial < 20; ++trial) {
    std::vector<std::vector<triad::io::CrcPiece>> ranks(3);
    for (size_t pos = 0; pos < data.size();) {
      const size_t len = std::min<size_t>(data.size() - pos, rng() % 3000);
      ranks[rng() % 3].push_back({data.data() + pos, len, pos + len});
      pos += len;
    }
    uint32_t crc = 0;
    for (auto& pieces : ranks) {
      std::shuffle(pieces.begin(), pieces.end(), rng);
      crc ^= triad::io::placed_crc(pieces, data.size());
    }
    ASSERT_EQ(crc, whole) << trial;
  }
  EXPECT_EQ(triad::io::placed_crc({}, 0), 0u);
}

TEST(CheckpointName, EightDigits) {
  EXPECT_EQ(triad::checkpoint_file_name(0), "step_00000000.h5");
  EXPECT_EQ(triad::checkpoint_file_name(120), "step_00000120.h5");
  EXPECT_EQ(triad::checkpoint_file_name(99999999), "step_99999999.h5");
  EXPECT_THROW(triad::checkpoint_file_name(100000000), triad::Error);
  EXPECT_THROW(triad::checkpoint_file_name(-1), triad::Error);
}

TEST_F(CheckpointTest, RoundTripIsBitExact) {
  const std::string p = path("step_00000042.h5");
  Tensors saved = make_tensors(kAdamGroups, kModelSpecs, 7);
  const triad::CheckpointState state = make_state(42);
  triad::save_checkpoint(MPI_COMM_WORLD, p, state, saved.groups);
  EXPECT_TRUE(fs::exists(p));
  EXPECT_FALSE(fs::exists(p + ".partial"));

  const triad::CheckpointState got = triad::read_checkpoint_state(MPI_COMM_WORLD, p);
  EXPECT_EQ(got.step, 42);
  EXPECT_EQ(got.tokens_seen, state.tokens_seen);
  EXPECT_EQ(got.next_sequence, state.next_sequence);
  EXPECT_EQ(got.epoch, state.epoch);
  EXPECT_EQ(got.config, state.config);
  EXPECT_EQ(got.grid, state.grid);
  EXPECT_EQ(got.model.n_layer, 2);
  EXPECT_EQ(got.model.n_head, 2);
  EXPECT_EQ(got.model.n_embd, 8);
  EXPECT_EQ(got.model.seq_len, 16);
  EXPECT_EQ(got.model.vocab_size, 200);
  EXPECT_EQ(got.model.padded_vocab_size, 256);

  Tensors loaded = make_tensors(kAdamGroups, kModelSpecs, 0, /*zero=*/true);
  triad::load_checkpoint_tensors(MPI_COMM_WORLD, p, loaded.groups);
  ASSERT_EQ(loaded.storage.size(), saved.storage.size());
  for (size_t i = 0; i < saved.storage.size(); ++i) {
    ASSERT_EQ(loaded.storage[i].size(), saved.storage[i].size());
    EXPECT_EQ(std::memcmp(loaded.storage[i].data(), saved.storage[i].data(),
                          saved.storage[i].size() * sizeof(float)),
              0)
        << "tensor " << i;
  }

  EXPECT_TRUE(triad::checkpoint_has_group(MPI_COMM_WORLD, p, "model"));
  EXPECT_TRUE(triad::checkpoint_has_group(MPI_COMM_WORLD, p, "optimizer/m"));
  EXPECT_TRUE(triad::checkpoint_has_group(MPI_COMM_WORLD, p, "optimizer/v"));
  EXPECT_FALSE(triad::checkpoint_has_group(MPI_COMM_WORLD, p, "optimizer/momentum"));
  EXPECT_FALSE(triad::checkpoint_has_group(MPI_COMM_WORLD, p, "model/wte"));  // a dataset
}

// What h5py / h5dump see: standard types, contiguous datasets, checksums of the fp32 bytes.
TEST_F(CheckpointTest, FileLayoutIsPlainHdf5) {
  const std::string p = path("step_00000001.h5");
  Tensors saved = make_tensors(kAdamGroups, kModelSpecs, 11);
  triad::save_checkpoint(MPI_COMM_WORLD, p, make_state(1), saved.groups);
  on_root([&] {
    hid_t f = H5Fopen(p.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
    ASSERT_GE(f, 0);
    // format: fixed-length null-terminated string
    hid_t a = H5Aopen(f, "format", H5P_DEFAULT);
    ASSERT_GE(a, 0);
    hid_t t = H5Aget_type(a);
    EXPECT_EQ(H5Tget_class(t), H5T_STRING);
    EXPECT_EQ(H5Tis_variable_str(t), 0);
    std::string buf(H5Tget_size(t), '\0');
    H5Aread(a, t, buf.data());
    EXPECT_STREQ(buf.c_str(), "triad-checkpoint");
    H5Tclose(t);
    H5Aclose(a);
    for (const char* name : {"format_version", "step", "complete"}) {
      a = H5Aopen(f, name, H5P_DEFAULT);
      ASSERT_GE(a, 0) << name;
      t = H5Aget_type(a);
      EXPECT_TRUE(H5Tequal(t, H5T_STD_I64LE) > 0) << name;
      H5Tclose(t);
      H5Aclose(a);
    }
    const triad::TensorRef& ref = saved.find("optimizer/m", "h/0/attn/c_attn/weight");
    hid_t d = H5Dopen2(f, "/optimizer/m/h/0/attn/c_attn/weight", H5P_DEFAULT);
    ASSERT_GE(d, 0);
    t = H5Dget_type(d);
    EXPECT_TRUE(H5Tequal(t, H5T_IEEE_F32LE) > 0);
    H5Tclose(t);
    hid_t dcpl = H5Dget_create_plist(d);
    EXPECT_EQ(H5Pget_layout(dcpl), H5D_CONTIGUOUS);
    H5Pclose(dcpl);
    a = H5Aopen(d, "checksum", H5P_DEFAULT);
    ASSERT_GE(a, 0);
    int64_t crc = -1;
    H5Aread(a, H5T_NATIVE_INT64, &crc);
    EXPECT_EQ(crc, triad::io::crc32(ref.data, 8 * 24 * sizeof(float)));
    H5Aclose(a);
    std::vector<float> data(8 * 24);
    H5Dread(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, data.data());
    EXPECT_EQ(std::memcmp(data.data(), ref.data, data.size() * sizeof(float)), 0);
    H5Dclose(d);
    H5Fclose(f);
  });
}

TEST_F(CheckpointTest, LargeConfigAttribute) {
  triad::CheckpointState state = make_state(3);
  state.config.clear();
  for (int i = 0; state.config.size() < 200000; ++i) {
    state.config += "key_" + std::to_string(i) + " = value\n";
  }
  const std::string p = path("step_00000003.h5");
  Tensors ts = make_tensors({"model"}, kModelSpecs, 3);
  triad::save_checkpoint(MPI_COMM_WORLD, p, state, ts.groups);
  EXPECT_EQ(triad::read_checkpoint_state(MPI_COMM_WORLD, p).config, state.config);
}

TEST_F(CheckpointTest, SgdMomentumGroupAndOverwrite) {
  const std::string p = path("step_00000005.h5");
  Tensors a = make_tensors({"model", "optimizer/momentum"}, kModelSpecs, 1);
  triad::save_checkpoint(MPI_COMM_WORLD, p, make_state(5), a.groups);
  // Saving again over an existing checkpoint and a stale .partial replaces both.
  on_root([&] { write_bytes(p + ".partial", std::vector<char>(100, 'x')); });
  Tensors b = make_tensors({"model", "optimizer/momentum"}, kModelSpecs, 2);
  triad::save_checkpoint(MPI_COMM_WORLD, p, make_state(5), b.groups);
  EXPECT_FALSE(fs::exists(p + ".partial"));
  EXPECT_TRUE(triad::checkpoint_has_group(MPI_COMM_WORLD, p, "optimizer/momentum"));
  EXPECT_FALSE(triad::checkpoint_has_group(MPI_COMM_WORLD, p, "optimizer/m"));
  Tensors c = make_tensors({"model", "optimizer/momentum"}, kModelSpecs, 0, true);
  triad::load_checkpoint_tensors(MPI_COMM_WORLD, p, c.groups);
  EXPECT_EQ(c.storage, b.storage);
}

// ---- padded vocabulary rows
// ----------------------------------------------------------------------

TEST_F(CheckpointTest, PaddedRowsAreZeroFilled) {
  const std::string p = path("step_00000002.h5");
  Tensors saved =
      make_tensors({"model", "optimizer/m"}, {{"wte", {256, 8}}, {"ln_f/weight", {8}}}, 5);
  triad::save_checkpoint(MPI_COMM_WORLD, p, make_state(2), saved.groups);
  const float* src = saved.find("model", "wte").data;

  for (int64_t rows : {384, 256}) {
    SCOPED_TRACE(rows);
    Tensors loaded =
        make_tensors({"model", "optimizer/m"}, {{"wte", {rows, 8}, 200}, {"ln_f/weight", {8}}}, 99);
    triad::load_checkpoint_tensors(MPI_COMM_WORLD, p, loaded.groups);
    for (const char* g : {"model", "optimizer/m"}) {
      const triad::TensorRef& t = loaded.find(g, "wte");
      const float* want = saved.find(g, "wte").data;
      EXPECT_EQ(std::memcmp(t.data, want, 200 * 8 * sizeof(float)), 0);
      for (int64_t i = 200 * 8; i < rows * 8; ++i) ASSERT_EQ(t.data[i], 0.0f) << i;
    }
    (void)src;
  }
  // Fewer rows in the model than the file (smaller padding) also works.
  Tensors smaller = make_tensors({"model"}, {{"wte", {208, 8}, 200}}, 1);
  triad::load_checkpoint_tensors(MPI_COMM_WORLD, p, smaller.groups);
  EXPECT_EQ(std::memcmp(smaller.storage[0].data(), src, 200 * 8 * sizeof(float)), 0);
  for (int i = 200 * 8; i < 208 * 8; ++i) ASSERT_EQ(smaller.storage[0][i], 0.0f);

  // Without valid_rows the shape must match exactly.
  Tensors exact = make_tensors({"model"}, {{"wte", {384, 8}}}, 1);
  const std::string msg =
      error_of([&] { triad::load_checkpoint_tensors(MPI_COMM_WORLD, p, exact.groups); });
  EXPECT_CONTAINS(msg, p);
  EXPECT_CONTAINS(msg, "dataset /model/wte has shape [256, 8] but the model expects [384, 8]");
}

// ---- ranges
// ------------------------------------------------------------------------------------------

// A TensorRef for elements [begin, end) of tensor (group, name) of `from`, into `buf`.
triad::TensorRef range_ref(const triad::TensorRef& like, int64_t begin, int64_t end,
                           std::vector<float>& buf, int64_t valid_rows = -1) {
  buf.assign(static_cast<size_t>(std::max<int64_t>(end - begin, 1)), -7.0f);
  triad::TensorRef t{like.name, like.shape, buf.data(), valid_rows};
  t.begin = begin;
  t.end = end;
  return t;
}

// Loads ranges of saved tensors, including ranges starting and ending mid-row, single rows,
// ranges within one row, single elements and empty ranges.
TEST_F(CheckpointTest, LoadRanges) {
  const std::string p = path("step_00000004.h5");
  Tensors saved = make_tensors(kAdamGroups, kModelSpecs, 17);
  triad::save_checkpoint(MPI_COMM_WORLD, p, make_state(4), saved.groups);

  const triad::TensorRef& w = saved.find("optimizer/v", "h/0/attn/c_attn/weight");  // [8, 24]
  const triad::TensorRef& b = saved.find("model", "h/0/attn/c_attn/bias");          // [24]
  const std::vector<std::pair<int64_t, int64_t>> ranges2d = {
      {0, 192},  {5, 100}, {24, 48},   {30, 40},  {0, 1},   {191, 192}, {23, 25},
      {47, 168}, {0, 0},   {192, 192}, {24, 192}, {0, 168}, {100, 100}};
  const std::vector<std::pair<int64_t, int64_t>> ranges1d = {{0, 24}, {3, 17}, {0, 0}, {23, 24}};
  for (const auto& [lo, hi] : ranges2d) {
    for (const auto& [lo1, hi1] : ranges1d) {
      SCOPED_TRACE(std::to_string(lo) + ".." + std::to_string(hi) + " / " + std::to_string(lo1) +
                   ".." + std::to_string(hi1));
      std::vector<float> bw, bb;
      triad::TensorGroup v{"optimizer/v", {range_ref(w, lo, hi, bw)}};
      triad::TensorGroup m{"model", {range_ref(b, lo1, hi1, bb)}};
      triad::load_checkpoint_tensors(MPI_COMM_WORLD, p, {m, v});
      EXPECT_EQ(std::memcmp(bw.data(), w.data + lo, (hi - lo) * sizeof(float)), 0);
      EXPECT_EQ(std::memcmp(bb.data(), b.data + lo1, (hi1 - lo1) * sizeof(float)), 0);
      if (hi == lo) {
        EXPECT_EQ(bw[0], -7.0f);  // an empty range touches nothing
      }
    }
  }
  // Whole tensors and ranges mixed in one call; an empty range with no buffer at all.
  Tensors loaded = make_tensors(kAdamGroups, kModelSpecs, 0, /*zero=*/true);
  std::vector<float> part;
  triad::TensorRef& lw = loaded.find("model", "wte");
  const triad::TensorRef& sw = saved.find("model", "wte");
  lw = range_ref(sw, 1001, 1999, part);
  triad::TensorRef& ln = loaded.find("optimizer/m", "ln_f/weight");
  ln.data = nullptr;
  ln.begin = ln.end = 3;
  triad::load_checkpoint_tensors(MPI_COMM_WORLD, p, loaded.groups);
  EXPECT_EQ(std::memcmp(part.data(), sw.data + 1001, 998 * sizeof(float)), 0);
  const triad::TensorRef& fc = saved.find("optimizer/m", "h/1/mlp/c_fc/weight");
  EXPECT_EQ(std::memcmp(loaded.find("optimizer/m", "h/1/mlp/c_fc/weight").data, fc.data,
                        8 * 32 * sizeof(float)),
            0);

  // Invalid ranges are refused before anything is read.
  for (const auto& [lo, hi] : std::vector<std::pair<int64_t, int64_t>>{{5, 4}, {-1, 3}, {0, 193}}) {
    std::vector<float> buf(200);
    triad::TensorRef t{w.name, w.shape, buf.data()};
    t.begin = lo;
    t.end = hi;
    const std::string msg = error_of([&] {
      triad::load_checkpoint_tensors(MPI_COMM_WORLD, p, {{"optimizer/v", {t}}});
    });
    EXPECT_CONTAINS(msg, p);
    EXPECT_CONTAINS(msg, "tensor /optimizer/v/h/0/attn/c_attn/weight has the range [");
  }
  std::vector<float> buf(200);
  triad::TensorRef t{w.name, w.shape, buf.data()};
  t.begin = 2;  // with end < 0
  EXPECT_CONTAINS(error_of([&] {
                    triad::load_checkpoint_tensors(MPI_COMM_WORLD, p, {{"optimizer/v", {t}}});
                  }),
                  "has begin 2 with end < 0");
  t.begin = 0;
  t.end = 10;
  t.data = nullptr;
  EXPECT_CONTAINS(error_of([&] {
                    triad::load_checkpoint_tensors(MPI_COMM_WORLD, p, {{"optimizer/v", {t}}});
                  }),
                  "has no data buffer");
}

// valid_rows with ranges: elements of rows >= valid_rows are zero-filled, the file's row count
// may be larger or smaller than the model's.
TEST_F(CheckpointTest, LoadRangesWithPaddedRows) {
  const std::string p = path("step_00000002.h5");
  Tensors saved = make_tensors({"model"}, {{"wte", {256, 8}}}, 5);
  triad::save_checkpoint(MPI_COMM_WORLD, p, make_state(2), saved.groups);
  const triad::TensorRef& sw = saved.find("model", "wte");
  const int64_t valid = 200 * 8;
  for (int64_t rows : {384, 256, 208}) {
    for (const auto& [lo, hi] : std::vector<std::pair<int64_t, int64_t>>{{0, rows * 8},
                                                                         {1590, 1700},
                                                                         {1603, 1605},
                                                                         {1600, rows * 8},
                                                                         {2000, 2001},
                                                                         {5, 13},
                                                                         {1599, 1600},
                                                                         {rows * 8, rows * 8}}) {
      if (hi > rows * 8) continue;
      SCOPED_TRACE(std::to_string(rows) + " rows, " + std::to_string(lo) + ".." +
                   std::to_string(hi));
      std::vector<float> buf;
      triad::TensorRef t = range_ref(sw, lo, hi, buf, 200);
      t.shape = {rows, 8};
      triad::load_checkpoint_tensors(MPI_COMM_WORLD, p, {{"model", {t}}});
      for (int64_t e = lo; e < hi; ++e) {
        ASSERT_EQ(buf[e - lo], e < valid ? sw.data[e] : 0.0f) << e;
      }
    }
  }
}

// A range-reading rank still verifies the whole tensor: damage outside every requested range is
// found (the unrequested part is read once more for the checksum).
TEST_F(CheckpointTest, ChecksumMismatchOutsideTheRangeRead) {
  const std::string p = save_valid(10);
  const std::string dset = "/model/h/1/mlp/c_fc/weight";  // [8, 32]
  on_root([&] {
    const haddr_t off = dataset_offset(p, dset);
    ASSERT_NE(off, HADDR_UNDEF);
    std::fstream f(p, std::ios::in | std::ios::out | std::ios::binary);
    f.seekg(static_cast<std::streamoff>(off + 4 * 200));  // element 200
    char c = 0;
    f.read(&c, 1);
    c = static_cast<char>(c ^ 0x01);
    f.seekp(static_cast<std::streamoff>(off + 4 * 200));
    f.write(&c, 1);
  });
  std::vector<float> buf;
  Tensors saved = make_tensors(kAdamGroups, kModelSpecs, 1234 + 10);
  triad::TensorRef t = range_ref(saved.find("model", "h/1/mlp/c_fc/weight"), 10, 50, buf);
  const std::string msg = error_of([&] {
    triad::load_checkpoint_tensors(MPI_COMM_WORLD, p, {{"model", {t}}});
  });
  EXPECT_CONTAINS(msg, p);
  EXPECT_CONTAINS(msg, "dataset " + dset + " fails its checksum");
  // The range itself was read (intact) before the check failed.
  EXPECT_EQ(std::memcmp(buf.data(), saved.find("model", "h/1/mlp/c_fc/weight").data + 10,
                        40 * sizeof(float)),
            0);
  // Without the checksum attribute (damaged data would load unseen) the file is refused.
  on_root([&] {
    hid_t f = H5Fopen(p.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
    ASSERT_GE(f, 0);
    hid_t d = H5Dopen2(f, dset.c_str(), H5P_DEFAULT);
    ASSERT_GE(H5Adelete(d, "checksum"), 0);
    H5Dclose(d);
    H5Fclose(f);
  });
  const std::string unchecked = error_of([&] {
    triad::load_checkpoint_tensors(MPI_COMM_WORLD, p, {{"model", {t}}});
  });
  EXPECT_CONTAINS(unchecked, "dataset " + dset + " has no checksum attribute");
}

// A dataset of another float width (its checksum is of fp32 bytes), and second moments below zero
// (an intact file): refused, naming the dataset.
TEST_F(CheckpointTest, Float64DatasetsAndNegativeSecondMomentsAreRefused) {
  const std::string p = save_valid(10);
  const std::string wide = "/model/h/0/ln_1/weight", v = "/optimizer/v/wpe";
  on_root([&] {
    hid_t f = H5Fopen(p.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
    ASSERT_GE(f, 0);
    // ln_1 as float64 (same values, its checksum kept)
    std::vector<double> ones(8, 1.0);
    ASSERT_GE(H5Ldelete(f, wide.c_str(), H5P_DEFAULT), 0);
    hsize_t dims = 8;
    hid_t s = H5Screate_simple(1, &dims, nullptr);
    hid_t d = H5Dcreate2(f, wide.c_str(), H5T_IEEE_F64LE, s, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    ASSERT_GE(H5Dwrite(d, H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, ones.data()), 0);
    H5Dclose(d);
    H5Sclose(s);
    H5Fclose(f);
  });
  Tensors ts = make_tensors(kAdamGroups, kModelSpecs, 0, true);
  std::string msg = error_of([&] { triad::load_checkpoint_tensors(MPI_COMM_WORLD, p, ts.groups); });
  EXPECT_CONTAINS(msg, "dataset " + wide +
                           " holds 64-bit floats; a triad checkpoint's tensors "
                           "are fp32");

  // Second moments all >= 0 but one (the file's checksums its own, as saved).
  const std::string q = path(triad::checkpoint_file_name(11));
  Tensors moments = make_tensors(kAdamGroups, kModelSpecs, 5);
  for (triad::TensorRef& t : moments.groups[2].tensors) {
    size_t n = 1;
    for (int64_t d : t.shape) n *= static_cast<size_t>(d);
    for (size_t i = 0; i < n; ++i) t.data[i] = std::fabs(t.data[i]);
  }
  moments.find("optimizer/v", "wpe").data[5] = -1e-3f;
  triad::save_checkpoint(MPI_COMM_WORLD, q, make_state(11), moments.groups);
  Tensors loaded = make_tensors(kAdamGroups, kModelSpecs, 0, true);
  loaded.groups[2].nonnegative = true;  // optimizer/v, as the trainer marks it
  msg = error_of([&] { triad::load_checkpoint_tensors(MPI_COMM_WORLD, q, loaded.groups); });
  EXPECT_CONTAINS(msg, "dataset " + v + " holds negative values");
  loaded.groups[2].nonnegative = false;  // (a group not marked: loaded as it is)
  triad::load_checkpoint_tensors(MPI_COMM_WORLD, q, loaded.groups);
  EXPECT_FLOAT_EQ(loaded.find("optimizer/v", "wpe").data[5], -1e-3f);
}

// Saving with explicit ranges: one rank's ranges must cover each tensor exactly; write = false
// writes nothing. (tests/mpi/test_checkpoint_mpi.cpp covers several writers.)
TEST_F(CheckpointTest, SaveRangesMustPartitionTheTensor) {
  int size = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  const std::string p = path("step_00000006.h5");
  Tensors saved = make_tensors({"model"}, {{"w", {8, 24}}, {"b", {24}}}, 3);
  triad::TensorRef& w = saved.find("model", "w");
  // The whole tensor as an explicit range, written by rank 0 alone.
  w.begin = 0;
  w.end = 192;
  w.write = world_rank() == 0;
  triad::save_checkpoint(MPI_COMM_WORLD, p, make_state(6), saved.groups);
  Tensors loaded = make_tensors({"model"}, {{"w", {8, 24}}, {"b", {24}}}, 0, true);
  triad::load_checkpoint_tensors(MPI_COMM_WORLD, p, loaded.groups);
  EXPECT_EQ(loaded.storage, saved.storage);

  // A gap, an overlap, nobody writing: internal errors on every rank, nothing saved.
  const std::string q = path("step_00000007.h5");
  w.end = 191;
  std::string msg =
      error_of([&] { triad::save_checkpoint(MPI_COMM_WORLD, q, make_state(7), saved.groups); });
  EXPECT_CONTAINS(msg, "checkpoint " + q +
                           ": internal error: the ranges the ranks write of tensor "
                           "/model/w do not partition it: nothing written from element 191 of 192");
  w.end = 192;
  w.write = false;
  msg = error_of([&] { triad::save_checkpoint(MPI_COMM_WORLD, q, make_state(7), saved.groups); });
  EXPECT_CONTAINS(msg, "do not partition it: nothing written from element 0 of 192");
  if (size > 1) {
    w.write = true;  // every rank writes everything: an overlap
    msg = error_of([&] { triad::save_checkpoint(MPI_COMM_WORLD, q, make_state(7), saved.groups); });
    EXPECT_CONTAINS(msg, "do not partition it: overlap at element 0");
  }
  EXPECT_FALSE(fs::exists(q));
  EXPECT_FALSE(fs::exists(q + ".partial"));
}

TEST_F(CheckpointTest, TooFewRowsForValidRows) {
  const std::string p = path("step_00000002.h5");
  Tensors saved = make_tensors({"model"}, {{"wte", {150, 8}}}, 5);
  triad::save_checkpoint(MPI_COMM_WORLD, p, make_state(2), saved.groups);
  Tensors loaded = make_tensors({"model"}, {{"wte", {256, 8}, 200}}, 1);
  const std::string msg =
      error_of([&] { triad::load_checkpoint_tensors(MPI_COMM_WORLD, p, loaded.groups); });
  EXPECT_CONTAINS(msg, p);
  EXPECT_CONTAINS(msg, "/model/wte has shape [150, 8]");
  EXPECT_CONTAINS(msg, "at least 200 rows");
  // Different trailing dims are an error too.
  Tensors wide = make_tensors({"model"}, {{"wte", {256, 16}, 100}}, 1);
  EXPECT_CONTAINS(error_of([&] { triad::load_checkpoint_tensors(MPI_COMM_WORLD, p, wide.groups); }),
                  "has shape [150, 8]");
}

// ---- tensor-parallel splits ---------------------------------------------------------------------

// Every part of several splits of saved tensors loads element by element (whole local tensors
// and ranges of them), also with padded rows (valid_rows) and a file with another row count.
TEST_F(CheckpointTest, LoadSplitsOfAFullSave) {
  const std::string p = path("step_00000005.h5");
  Tensors saved = make_tensors({"model"}, {{"w", {12, 6}}, {"wte", {16, 3}}}, 21);
  triad::save_checkpoint(MPI_COMM_WORLD, p, make_state(5), saved.groups);
  const triad::TensorRef& sw = saved.find("model", "w");
  const triad::TensorRef& se = saved.find("model", "wte");
  struct Split {
    int axis;
    int64_t blocks;
    int parts;
  };
  const std::vector<Split> w_splits = {{0, 1, 2}, {0, 3, 2}, {0, 2, 3}, {0, 1, 4}, {1, 1, 2},
                                       {1, 3, 2}, {1, 1, 3}, {1, 1, 6}, {1, 2, 1}};
  for (const Split& s : w_splits) {
    for (int part = 0; part < s.parts; ++part) {
      const int64_t local = 72 / s.parts;
      for (const auto& [lo, hi] : std::vector<std::pair<int64_t, int64_t>>{
               {0, -1}, {1, local - 2}, {local / 2, local / 2}, {5, 6}, {0, local}}) {
        SCOPED_TRACE(::testing::Message()
                     << "axis " << s.axis << " blocks " << s.blocks << " part " << part << "/"
                     << s.parts << " range " << lo << ".." << hi);
        std::vector<float> buf(73, -7.0f);
        triad::TensorRef t{"w", {12, 6}, buf.data()};
        t.split_axis = s.axis;
        t.split_blocks = s.blocks;
        t.split_parts = s.parts;
        t.split_part = part;
        t.begin = lo;
        t.end = hi;
        triad::load_checkpoint_tensors(MPI_COMM_WORLD, p, {{"model", {t}}});
        const int64_t b = lo, e = hi < 0 ? local : hi;
        for (int64_t x = b; x < e; ++x) {
          ASSERT_EQ(buf[x - b], sw.data[full_index({12, 6}, s.axis, s.blocks, s.parts, part, x)])
              << x;
        }
        EXPECT_EQ(buf[e - b], -7.0f);  // nothing beyond the range
      }
    }
  }
  // wte: 10 valid rows of 16 in the file; models with 8, 16 and 24 rows in 2 or 4 parts.
  for (int64_t rows : {8, 16, 24}) {
    for (int parts : {2, 4}) {
      for (int part = 0; part < parts; ++part) {
        SCOPED_TRACE(::testing::Message() << rows << " rows, part " << part << "/" << parts);
        const int64_t local = rows * 3 / parts;
        std::vector<float> buf(local, -7.0f);
        triad::TensorRef t{"wte", {rows, 3}, buf.data(), std::min<int64_t>(rows, 10)};
        t.split_axis = 0;
        t.split_parts = parts;
        t.split_part = part;
        triad::load_checkpoint_tensors(MPI_COMM_WORLD, p, {{"model", {t}}});
        for (int64_t x = 0; x < local; ++x) {
          const int64_t full = full_index({rows, 3}, 0, 1, parts, part, x);
          ASSERT_EQ(buf[x], full / 3 < 10 ? se.data[full] : 0.0f) << x;
        }
      }
    }
  }
}

// Invalid split fields are refused, naming the tensor, on save and on load, before anything is
// written or read.
TEST_F(CheckpointTest, InvalidSplitFieldsAreRejected) {
  const std::string p = path("step_00000003.h5"), q = path("step_00000004.h5");
  const std::vector<Spec> specs = {{"w", {8, 24}}, {"b", {24}}};
  Tensors saved = make_tensors({"model"}, specs, 3);
  triad::save_checkpoint(MPI_COMM_WORLD, p, make_state(3), saved.groups);
  struct Bad {
    std::function<void(triad::TensorRef&)> edit;
    std::string message;
  };
  const std::vector<Bad> bad = {
      {[](triad::TensorRef& t) { t.split_axis = 2, t.split_parts = 2; },
       "tensor /model/w has split_axis 2 but only 2 dimensions"},
      {[](triad::TensorRef& t) { t.split_axis = 0, t.split_blocks = 0, t.split_parts = 2; },
       "tensor /model/w has split_blocks 0 (must be at least 1)"},
      {[](triad::TensorRef& t) { t.split_axis = 0, t.split_parts = 0; },
       "tensor /model/w has split_parts 0 (must be at least 1)"},
      {[](triad::TensorRef& t) { t.split_axis = 1, t.split_parts = 2, t.split_part = 2; },
       "tensor /model/w has split_part 2 outside [0, 2)"},
      {[](triad::TensorRef& t) { t.split_axis = 1, t.split_parts = 2, t.split_part = -1; },
       "tensor /model/w has split_part -1 outside [0, 2)"},
      {[](triad::TensorRef& t) { t.split_parts = 2, t.split_part = 1; },
       "tensor /model/w has split_parts 2 and split_part 1 but no split axis (split_axis -1)"},
      {[](triad::TensorRef& t) { t.split_axis = 0, t.split_blocks = 3, t.split_parts = 2; },
       "tensor /model/w cannot be split: dimension 0 has size 8, not divisible by split_blocks * "
       "split_parts = 3 * 2"},
      {[](triad::TensorRef& t) { t.split_axis = 1, t.split_blocks = 5; },
       "tensor /model/w cannot be split: dimension 1 has size 24, not divisible by "
       "split_blocks * split_parts = 5 * 1"},
      {[](triad::TensorRef& t) { t.split_axis = 1, t.split_parts = 2, t.begin = 0, t.end = 100; },
       "tensor /model/w has the range [0, 100) outside [0, 96] (the elements of its local part 0 "
       "of 2 along axis 1)"},
      {[](triad::TensorRef& t) {
         t.split_axis = 0, t.split_blocks = 2, t.split_parts = 4, t.split_part = 3;
         t.begin = 20, t.end = 50;
       },
       "tensor /model/w has the range [20, 50) outside [0, 48] (the elements of its local part 3 "
       "of 4 along axis 0 in each of 2 blocks)"},
  };
  for (const Bad& b : bad) {
    SCOPED_TRACE(b.message);
    Tensors ts = make_tensors({"model"}, specs, 3);
    b.edit(ts.find("model", "w"));
    std::string msg =
        error_of([&] { triad::save_checkpoint(MPI_COMM_WORLD, q, make_state(4), ts.groups); });
    EXPECT_CONTAINS(msg, "checkpoint " + q + ": " + b.message);
    EXPECT_FALSE(fs::exists(q));
    EXPECT_FALSE(fs::exists(q + ".partial"));
    Tensors loaded = make_tensors({"model"}, specs, 0, /*zero=*/true);
    b.edit(loaded.find("model", "w"));
    msg = error_of([&] { triad::load_checkpoint_tensors(MPI_COMM_WORLD, p, loaded.groups); });
    EXPECT_CONTAINS(msg, "checkpoint " + p + ": " + b.message);
    EXPECT_EQ(loaded.storage[0], std::vector<float>(192, 0.0f));  // nothing read
  }
}

// A save of one part of a split tensor leaves the other parts unwritten: refused.
// (tests/mpi/test_checkpoint_mpi.cpp saves with splits on several ranks.)
TEST_F(CheckpointTest, SplitSaveMustCoverEveryPart) {
  const std::string p = path("step_00000006.h5");
  Tensors ts = make_tensors({"model"}, {{"w", {8, 24}}}, 3);
  triad::TensorRef& w = ts.find("model", "w");
  w.split_axis = 1;
  w.split_parts = 2;
  const std::string msg =
      error_of([&] { triad::save_checkpoint(MPI_COMM_WORLD, p, make_state(6), ts.groups); });
  EXPECT_CONTAINS(msg, "checkpoint " + p +
                           ": internal error: the ranges the ranks write of part 1 of 2 along "
                           "axis 1 of tensor /model/w do not partition it: nothing written from "
                           "local element 0 of 96");
  EXPECT_FALSE(fs::exists(p));
  EXPECT_FALSE(fs::exists(p + ".partial"));
}

// ---- bad files ----------------------------------------------------------------------------------

TEST_F(CheckpointTest, MissingFile) {
  const std::string p = path("step_00000009.h5");
  std::string msg = error_of([&] { triad::read_checkpoint_state(MPI_COMM_WORLD, p); });
  EXPECT_CONTAINS(msg, p);
  EXPECT_CONTAINS(msg, "does not exist");
  Tensors ts = make_tensors({"model"}, kModelSpecs, 1);
  msg = error_of([&] { triad::load_checkpoint_tensors(MPI_COMM_WORLD, p, ts.groups); });
  EXPECT_CONTAINS(msg, "does not exist");
  msg = error_of([&] { triad::checkpoint_has_group(MPI_COMM_WORLD, p, "model"); });
  EXPECT_CONTAINS(msg, p);
}

TEST_F(CheckpointTest, NotAnHdf5File) {
  const std::string random = path("random.h5"), shard = path("shard.bin"), empty = path("e.h5");
  on_root([&] {
    std::mt19937 rng(1);
    std::vector<char> bytes(4096);
    for (char& c : bytes) c = static_cast<char>(rng());
    write_bytes(random, bytes);
    // A token shard: 256 int32 header (magic 20240520, version 1, count) + uint16 tokens.
    std::vector<int32_t> header(256, 0);
    header[0] = 20240520;
    header[1] = 1;
    header[2] = 1000;
    std::vector<char> s(1024 + 2000, 'a');
    std::memcpy(s.data(), header.data(), 1024);
    write_bytes(shard, s);
    write_bytes(empty, {});
  });
  for (const std::string& p : {random, shard, empty}) {
    const std::string msg = error_of([&] { triad::read_checkpoint_state(MPI_COMM_WORLD, p); });
    EXPECT_CONTAINS(msg, p);
    EXPECT_CONTAINS(msg, "not an HDF5 file");
  }
}

TEST_F(CheckpointTest, TruncatedFile) {
  const std::string p = save_valid(10);
  on_root([&] { fs::resize_file(p, fs::file_size(p) / 2); });
  const std::string msg = error_of([&] {
    triad::read_checkpoint_state(MPI_COMM_WORLD, p);
    Tensors ts = make_tensors(kAdamGroups, kModelSpecs, 0, true);
    triad::load_checkpoint_tensors(MPI_COMM_WORLD, p, ts.groups);
  });
  EXPECT_CONTAINS(msg, p);
  EXPECT_CONTAINS(msg, "truncated");
}

TEST_F(CheckpointTest, ForeignHdf5File) {
  const std::string p = path("other.h5");
  on_root([&] {
    hid_t f = H5Fcreate(p.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    hid_t g = H5Gcreate2(f, "model", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    H5Gclose(g);
    H5Fclose(f);
  });
  const std::string msg = error_of([&] { triad::read_checkpoint_state(MPI_COMM_WORLD, p); });
  EXPECT_CONTAINS(msg, p);
  EXPECT_CONTAINS(msg, "not a triad checkpoint");
  Tensors ts = make_tensors({"model"}, kModelSpecs, 1);
  EXPECT_CONTAINS(error_of([&] { triad::load_checkpoint_tensors(MPI_COMM_WORLD, p, ts.groups); }),
                  "not a triad checkpoint");
}

TEST_F(CheckpointTest, WrongFormatVersion) {
  const std::string p = save_valid(10);
  on_root([&] { set_int64_attr(p, "format_version", 2); });
  const std::string msg = error_of([&] { triad::read_checkpoint_state(MPI_COMM_WORLD, p); });
  EXPECT_CONTAINS(msg, p);
  EXPECT_CONTAINS(msg, "unsupported format_version 2");
}

TEST_F(CheckpointTest, NegativeSkippedInARow) {  // (a count of steps: it was taken as it was)
  const std::string p = save_valid(10);
  on_root([&] { set_int64_attr(p, "skipped_in_a_row", -3); });
  const std::string msg = error_of([&] { triad::read_checkpoint_state(MPI_COMM_WORLD, p); });
  EXPECT_CONTAINS(msg, p);
  EXPECT_CONTAINS(msg, "attribute skipped_in_a_row of / must be >= 0 (it is -3)");
}

TEST_F(CheckpointTest, IncompleteFile) {
  const std::string p = save_valid(10);
  on_root([&] { set_int64_attr(p, "complete", 0); });
  std::string msg = error_of([&] { triad::read_checkpoint_state(MPI_COMM_WORLD, p); });
  EXPECT_CONTAINS(msg, p);
  EXPECT_CONTAINS(msg, "incomplete checkpoint (attribute complete is 0");
  Tensors ts = make_tensors(kAdamGroups, kModelSpecs, 0, true);
  msg = error_of([&] { triad::load_checkpoint_tensors(MPI_COMM_WORLD, p, ts.groups); });
  EXPECT_CONTAINS(msg, "incomplete checkpoint");

  on_root([&] { delete_attr(p, "complete"); });
  msg = error_of([&] { triad::read_checkpoint_state(MPI_COMM_WORLD, p); });
  EXPECT_CONTAINS(msg, "incomplete checkpoint (attribute complete is missing");
}

TEST_F(CheckpointTest, MissingDataset) {
  const std::string p = save_valid(10);
  std::vector<Spec> specs = kModelSpecs;
  specs.push_back({"h/1/attn/c_proj/weight", {8, 8}});
  Tensors ts = make_tensors(kAdamGroups, specs, 0, true);
  std::string msg = error_of([&] { triad::load_checkpoint_tensors(MPI_COMM_WORLD, p, ts.groups); });
  EXPECT_CONTAINS(msg, p);
  EXPECT_CONTAINS(msg, "dataset /model/h/1/attn/c_proj/weight is missing");
  // A whole optimizer group missing.
  Tensors sgd = make_tensors({"model", "optimizer/momentum"}, kModelSpecs, 0, true);
  msg = error_of([&] { triad::load_checkpoint_tensors(MPI_COMM_WORLD, p, sgd.groups); });
  EXPECT_CONTAINS(msg, "dataset /optimizer/momentum/wte is missing");
  // A group where a dataset is expected.
  Tensors grp = make_tensors({"model"}, {{"h/0", {8}}}, 0, true);
  msg = error_of([&] { triad::load_checkpoint_tensors(MPI_COMM_WORLD, p, grp.groups); });
  EXPECT_CONTAINS(msg, "/model/h/0 is not a dataset");
}

TEST_F(CheckpointTest, WrongShape) {
  const std::string p = save_valid(10);
  std::vector<Spec> specs = kModelSpecs;
  specs[2].shape = {16};  // h/0/ln_1/weight
  Tensors ts = make_tensors(kAdamGroups, specs, 0, true);
  const std::string msg =
      error_of([&] { triad::load_checkpoint_tensors(MPI_COMM_WORLD, p, ts.groups); });
  EXPECT_CONTAINS(msg, "checkpoint " + p +
                           ": dataset /model/h/0/ln_1/weight has shape [8] but the model "
                           "expects [16]");
}

TEST_F(CheckpointTest, ChecksumMismatch) {
  const std::string p = save_valid(10);
  const std::string dset = "/optimizer/v/h/0/attn/c_attn/weight";
  on_root([&] {
    const haddr_t off = dataset_offset(p, dset);
    ASSERT_NE(off, HADDR_UNDEF);
    std::fstream f(p, std::ios::in | std::ios::out | std::ios::binary);
    f.seekg(static_cast<std::streamoff>(off + 40));
    char c = 0;
    f.read(&c, 1);
    c = static_cast<char>(c ^ 0x5A);
    f.seekp(static_cast<std::streamoff>(off + 40));
    f.write(&c, 1);
  });
  // The metadata is intact: the state reads fine.
  EXPECT_EQ(triad::read_checkpoint_state(MPI_COMM_WORLD, p).step, 10);
  Tensors ts = make_tensors(kAdamGroups, kModelSpecs, 0, true);
  const std::string msg =
      error_of([&] { triad::load_checkpoint_tensors(MPI_COMM_WORLD, p, ts.groups); });
  EXPECT_CONTAINS(msg, p);
  EXPECT_CONTAINS(msg, "dataset " + dset + " fails its checksum");
}

TEST_F(CheckpointTest, InvalidTensorListsAreRejected) {
  const std::string p = path("step_00000001.h5");
  Tensors dup = make_tensors({"model"}, {{"a", {2}}, {"a", {2}}}, 1);
  std::string msg =
      error_of([&] { triad::save_checkpoint(MPI_COMM_WORLD, p, make_state(1), dup.groups); });
  EXPECT_CONTAINS(msg, p);
  EXPECT_CONTAINS(msg, "listed twice");
  Tensors bad = make_tensors({"model"}, {{"h//x", {2}}}, 1);
  msg = error_of([&] { triad::save_checkpoint(MPI_COMM_WORLD, p, make_state(1), bad.groups); });
  EXPECT_CONTAINS(msg, "invalid tensor name 'h//x'");
  EXPECT_FALSE(fs::exists(p));
  EXPECT_FALSE(fs::exists(p + ".partial"));
}

// An error on one rank only (here the last one) makes every rank throw the same error instead
// of leaving the others waiting in a collective call.
TEST_F(CheckpointTest, ErrorOnOneRankThrowsOnAllRanks) {
  int size = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  const std::string p = path("step_00000001.h5");
  const bool bad = world_rank() == size - 1;
  Tensors ts = make_tensors({"model"}, {{"a", {2}}, {bad ? "a" : "b", {2}}}, 1);
  const std::string msg =
      error_of([&] { triad::save_checkpoint(MPI_COMM_WORLD, p, make_state(1), ts.groups); });
  EXPECT_CONTAINS(msg, "checkpoint " + p + ": tensor /model/a is listed twice");
  EXPECT_FALSE(fs::exists(p));
}

// ---- atomic saves
// --------------------------------------------------------------------------------

TEST_F(CheckpointTest, SaveIntoMissingDirectoryFails) {
  const std::string p = path("no/such/dir/step_00000010.h5");
  Tensors ts = make_tensors(kAdamGroups, kModelSpecs, 1);
  const std::string msg =
      error_of([&] { triad::save_checkpoint(MPI_COMM_WORLD, p, make_state(10), ts.groups); });
  EXPECT_CONTAINS(msg, "checkpoint " + p + ":");
  EXPECT_CONTAINS(msg, "does not exist");
  EXPECT_FALSE(fs::exists(p));
  EXPECT_FALSE(fs::exists(p + ".partial"));
}

TEST_F(CheckpointTest, SaveIntoReadOnlyDirectoryFails) {
  const fs::path ro = dir_ / "ro";
  on_root([&] {
    fs::create_directories(ro);
    fs::permissions(ro, fs::perms::owner_read | fs::perms::owner_exec);
  });
  // root ignores permission bits: check whether this process can still write there.
  int writable = 0;
  on_root([&] { writable = access(ro.c_str(), W_OK) == 0; });
  MPI_Bcast(&writable, 1, MPI_INT, 0, MPI_COMM_WORLD);
  if (writable) GTEST_SKIP() << "running with permissions that ignore a read-only directory";
  const std::string p = (ro / "step_00000010.h5").string();
  Tensors ts = make_tensors(kAdamGroups, kModelSpecs, 1);
  const std::string msg =
      error_of([&] { triad::save_checkpoint(MPI_COMM_WORLD, p, make_state(10), ts.groups); });
  EXPECT_CONTAINS(msg, "checkpoint " + p + ":");
  EXPECT_FALSE(fs::exists(p));
  EXPECT_FALSE(fs::exists(p + ".partial"));
  EXPECT_TRUE(triad::list_checkpoints(ro.string()).empty());
}

// A full disk, simulated with a file-size limit: writes beyond it fail with EFBIG.
TEST_F(CheckpointTest, SaveOnFullDiskFailsCleanly) {
  const std::string p = path("step_00000010.h5");
  Tensors ts = make_tensors(kAdamGroups, {{"wte", {256, 256}}, {"wpe", {64, 256}}}, 1);
  std::string msg;
  {
    struct rlimit old {};
    getrlimit(RLIMIT_FSIZE, &old);
    auto old_handler = std::signal(SIGXFSZ, SIG_IGN);
    struct rlimit lim = old;
    lim.rlim_cur = 200 * 1024;  // the checkpoint needs ~1.2 MB
    ASSERT_EQ(setrlimit(RLIMIT_FSIZE, &lim), 0);
    msg = error_of([&] { triad::save_checkpoint(MPI_COMM_WORLD, p, make_state(10), ts.groups); });
    setrlimit(RLIMIT_FSIZE, &old);
    std::signal(SIGXFSZ, old_handler);
  }
  EXPECT_CONTAINS(msg, "checkpoint " + p + ":");
  EXPECT_FALSE(fs::exists(p));
  EXPECT_FALSE(fs::exists(p + ".partial"));
  EXPECT_FALSE(fs::exists(p + ".partial.reserve"));  // (the space held for it, released)
  EXPECT_TRUE(triad::list_checkpoints(dir_.string()).empty());
  // And the next save, with room again, works.
  triad::save_checkpoint(MPI_COMM_WORLD, p, make_state(10), ts.groups);
  EXPECT_EQ(triad::read_checkpoint_state(MPI_COMM_WORLD, p).step, 10);
  EXPECT_FALSE(fs::exists(p + ".partial.reserve"));
  struct stat st {};  // the space held ahead (past the file's end) is not kept
  ASSERT_EQ(stat(p.c_str(), &st), 0);
  EXPECT_LE(uint64_t(st.st_blocks) * 512, fs::file_size(p) + (64u << 10));
}

// ---- the checkpoint directory
// --------------------------------------------------------------------

TEST_F(CheckpointTest, ListCheckpoints) {
  EXPECT_TRUE(triad::list_checkpoints((dir_ / "missing").string()).empty());
  on_root([&] {
    for (const char* name :
         {"step_00000010.h5", "step_00000002.h5", "step_00000100.h5", "step_00000005.h5.partial",
          "step_00000200.h5.partial", "step_1.h5", "step_000000001.h5", "step_0000000x.h5",
          "latest", "notes.txt", "xstep_00000003.h5", "step_00000004.h5.bak"}) {
      write_bytes(path(name), {'x'});
    }
    fs::create_directories(dir_ / "step_00000007.h5");  // a directory, not a checkpoint
  });
  EXPECT_EQ(triad::list_checkpoints(dir_.string()),
            (std::vector<std::string>{"step_00000002.h5", "step_00000010.h5", "step_00000100.h5"}));
}

std::string read_text(const fs::path& p) {
  std::ifstream in(p);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// checkpoint.best: ckpt/best holds the name and the loss to the bit; publish_checkpoint never
// prunes (nor counts) the checkpoint it is told to protect; a file not of that form is refused
// by name; none (or an empty one): nullopt.
TEST_F(CheckpointTest, BestIsReadBackAndNeverPruned) {
  if (world_rank() != 0) GTEST_SKIP() << "single-rank function";
  EXPECT_FALSE(triad::read_best(dir_.string()).has_value());
  const double loss = 6.2580733224749565 + 1e-15;
  triad::publish_best(dir_.string(), "step_00000002.h5", loss);
  EXPECT_FALSE(fs::exists(dir_ / "best.tmp"));
  const auto best = triad::read_best(dir_.string());
  ASSERT_TRUE(best.has_value());
  EXPECT_EQ(best->first, "step_00000002.h5");
  EXPECT_EQ(best->second, loss);  // 17 digits: the same double
  for (int s = 1; s <= 5; ++s) write_bytes(path(triad::checkpoint_file_name(s)), {'x'});
  triad::publish_checkpoint(dir_.string(), "step_00000005.h5", 1, 0, "step_00000002.h5");
  EXPECT_EQ(triad::list_checkpoints(dir_.string()),
            (std::vector<std::string>{"step_00000002.h5", "step_00000005.h5"}));
  triad::publish_checkpoint(dir_.string(), "step_00000005.h5", 1);  // nothing protected
  EXPECT_EQ(triad::list_checkpoints(dir_.string()), (std::vector<std::string>{"step_00000005.h5"}));
  { std::ofstream out(dir_ / "best", std::ios::trunc); }
  EXPECT_FALSE(triad::read_best(dir_.string()).has_value()) << "an empty file";
  for (const char* bad : {"step_2.h5\n6.1\n", "step_00000002.h5\n", "step_00000002.h5\nlow\n",
                          "step_00000002.h5\nnan\n", "step_00000002.h5\n6.1\n7\n"}) {
    {
      std::ofstream out(dir_ / "best", std::ios::trunc);
      out << bad;
    }
    const std::string msg = error_of([&] { triad::read_best(dir_.string()); });
    EXPECT_CONTAINS(msg, (dir_ / "best").string());
  }
  for (int s = 1; s <= 5; ++s) fs::remove(path(triad::checkpoint_file_name(s)));
  fs::remove(dir_ / "best");
}

// A run that does not go on from the directory's newest checkpoint moves the later ones (and the
// one at its step where it loaded another file) whole to superseded_<n>, with a latest of their
// own; dir/latest then names the newest left, or is gone. Collective: every rank gets the line.
TEST_F(CheckpointTest, SetAsideOtherHistory) {
  const auto name = [](int s) { return triad::checkpoint_file_name(s); };
  on_root([&] {
    for (int s = 1; s <= 5; ++s) write_bytes(path(name(s)), {char('0' + s)});
    triad::publish_checkpoint(dir_.string(), name(4), 0);  // (5: written, never published)
    triad::publish_best(dir_.string(), name(3), 6.5);
  });
  MPI_Barrier(MPI_COMM_WORLD);
  const auto names = [](const fs::path& d) { return triad::list_checkpoints(d.string()); };
  // Rolled back to step 2 of this directory.
  std::string said =
      triad::set_aside_other_history(MPI_COMM_WORLD, dir_.string(), 2, path(name(2)));
  EXPECT_CONTAINS(said, "3 checkpoints of another history (step_00000003.h5 to step_00000005.h5)");
  EXPECT_CONTAINS(said, "this run goes on from step 2");
  EXPECT_CONTAINS(said, (dir_ / "superseded_1").string());
  EXPECT_EQ(names(dir_), (std::vector<std::string>{name(1), name(2)}));
  EXPECT_EQ(read_text(dir_ / "latest"), name(2) + "\n");
  EXPECT_EQ(names(dir_ / "superseded_1"), (std::vector<std::string>{name(3), name(4), name(5)}));
  EXPECT_EQ(read_text(dir_ / "superseded_1" / "latest"), name(4) + "\n") << "the published one";
  EXPECT_FALSE(fs::exists(dir_ / "best")) << "it named a checkpoint set aside: it goes with it";
  EXPECT_EQ(triad::read_best((dir_ / "superseded_1").string())->first, name(3));
  EXPECT_EQ(read_text(dir_ / "superseded_1" / name(3)), "3") << "moved whole";
  MPI_Barrier(MPI_COMM_WORLD);  // (every rank has looked before rank 0 moves on)
  // Going on from the newest: nothing moves, nothing said.
  EXPECT_EQ(triad::set_aside_other_history(MPI_COMM_WORLD, dir_.string(), 2, path(name(2))), "");
  MPI_Barrier(MPI_COMM_WORLD);  // (every rank has looked before rank 0 moves on)
  // Resumed at step 2 from another file: this directory's step 2 is another history's.
  said = triad::set_aside_other_history(MPI_COMM_WORLD, dir_.string(), 2, path("other.h5"));
  EXPECT_CONTAINS(said, "1 checkpoint of another history (step_00000002.h5) set aside");
  EXPECT_EQ(names(dir_ / "superseded_2"), (std::vector<std::string>{name(2)}));
  EXPECT_EQ(read_text(dir_ / "latest"), name(1) + "\n");
  MPI_Barrier(MPI_COMM_WORLD);  // (every rank has looked before rank 0 moves on)
  // A new run: every one; no latest left.
  said = triad::set_aside_other_history(MPI_COMM_WORLD, dir_.string(), -1, "");
  EXPECT_CONTAINS(said, "this run starts anew");
  EXPECT_TRUE(names(dir_).empty());
  EXPECT_FALSE(fs::exists(dir_ / "latest"));
  EXPECT_EQ(names(dir_ / "superseded_3"), (std::vector<std::string>{name(1)}));
  MPI_Barrier(MPI_COMM_WORLD);
}

TEST_F(CheckpointTest, PublishWritesLatestAndPrunes) {
  if (world_rank() != 0) GTEST_SKIP() << "single-rank function";
  for (int s = 1; s <= 5; ++s) write_bytes(path(triad::checkpoint_file_name(s)), {'x'});
  triad::publish_checkpoint(dir_.string(), "step_00000005.h5", 2);
  EXPECT_EQ(read_text(dir_ / "latest"), "step_00000005.h5\n");
  EXPECT_FALSE(fs::exists(dir_ / "latest.tmp"));
  EXPECT_EQ(triad::list_checkpoints(dir_.string()),
            (std::vector<std::string>{"step_00000004.h5", "step_00000005.h5"}));

  // keep <= 0 keeps everything.
  write_bytes(path("step_00000006.h5"), {'x'});
  triad::publish_checkpoint(dir_.string(), "step_00000006.h5", 0);
  EXPECT_EQ(triad::list_checkpoints(dir_.string()).size(), 3u);
  EXPECT_EQ(read_text(dir_ / "latest"), "step_00000006.h5\n");

  // The checkpoint just published is never deleted, even when it is the oldest.
  write_bytes(path("step_00000001.h5"), {'x'});
  triad::publish_checkpoint(dir_.string(), "step_00000001.h5", 1);
  EXPECT_EQ(triad::list_checkpoints(dir_.string()), (std::vector<std::string>{"step_00000001.h5"}));

  // Milestones (steps that are positive multiples of keep_every) stay and do not count in keep;
  // step 0 (checkpoint.at_start) is not one.
  for (int s = 0; s <= 9; ++s) write_bytes(path(triad::checkpoint_file_name(s)), {'x'});
  triad::publish_checkpoint(dir_.string(), "step_00000009.h5", 2, 4);
  EXPECT_EQ(triad::list_checkpoints(dir_.string()),
            (std::vector<std::string>{"step_00000004.h5", "step_00000007.h5", "step_00000008.h5",
                                      "step_00000009.h5"}));
  for (const char* f :
       {"step_00000000.h5", "step_00000001.h5", "step_00000002.h5", "step_00000003.h5",
        "step_00000004.h5", "step_00000005.h5", "step_00000006.h5", "step_00000007.h5",
        "step_00000008.h5", "step_00000009.h5"})
    fs::remove(dir_ / f);

  // Publishing a file that is not there is an error naming it.
  const std::string msg =
      error_of([&] { triad::publish_checkpoint(dir_.string(), "step_00000009.h5", 1); });
  EXPECT_CONTAINS(msg, "step_00000009.h5");
  EXPECT_CONTAINS(msg, dir_.string());
}

TEST_F(CheckpointTest, FindResumeCheckpoint) {
  const std::string d = dir_.string();
  EXPECT_EQ(triad::find_resume_checkpoint(MPI_COMM_WORLD, (dir_ / "missing").string()), "");
  EXPECT_EQ(triad::find_resume_checkpoint(MPI_COMM_WORLD, d), "");

  save_valid(10);
  save_valid(20);
  const std::string p30 = save_valid(30);
  // Without `latest`: the newest valid one.
  EXPECT_EQ(triad::find_resume_checkpoint(MPI_COMM_WORLD, d), p30);

  // `latest` wins when valid, even if it is not the newest.
  on_root([&] { triad::publish_checkpoint(d, "step_00000020.h5", 0); });
  EXPECT_EQ(triad::find_resume_checkpoint(MPI_COMM_WORLD, d), path("step_00000020.h5"));

  // The newest is damaged and named by latest: fall back to the next valid one.
  on_root([&] {
    triad::publish_checkpoint(d, "step_00000030.h5", 0);
    fs::resize_file(p30, fs::file_size(p30) / 2);
    // A newer .partial is never considered.
    write_bytes(path("step_00000040.h5.partial"), {'x'});
  });
  EXPECT_EQ(triad::find_resume_checkpoint(MPI_COMM_WORLD, d), path("step_00000020.h5"));

  // `latest` names a file that does not exist; an incomplete newest one is skipped too.
  on_root([&] {
    std::ofstream(dir_ / "latest") << "step_00000050.h5\n";
    set_int64_attr(path("step_00000020.h5"), "complete", 0);
  });
  EXPECT_EQ(triad::find_resume_checkpoint(MPI_COMM_WORLD, d), path("step_00000010.h5"));

  // Checkpoints, none valid: an error on every rank (taken for none, the run would start anew
  // and set them aside, though the cause may pass: a full disk, storage that is down).
  on_root([&] { fs::remove(path("step_00000010.h5")); });
  try {
    (void)triad::find_resume_checkpoint(MPI_COMM_WORLD, d);
    ADD_FAILURE() << "no error where no checkpoint loads";
  } catch (const triad::Error& e) {
    EXPECT_NE(std::string(e.what()).find("holds checkpoints, and none can be loaded"),
              std::string::npos)
        << e.what();
  }
  // A latest holding a path (a hand edit), not a name, is ignored: none.
  on_root([&] {
    fs::remove(path("step_00000020.h5"));
    fs::remove(p30);
    std::ofstream(dir_ / "latest") << "../elsewhere/step_00000050.h5\n";
  });
  EXPECT_EQ(triad::find_resume_checkpoint(MPI_COMM_WORLD, d), "");
  // Checkpoints deleted by hand, latest left naming one: none (not "none loads").
  on_root([&] { std::ofstream(dir_ / "latest") << "step_00000050.h5\n"; });
  EXPECT_EQ(triad::find_resume_checkpoint(MPI_COMM_WORLD, d), "");
}

}  // namespace
