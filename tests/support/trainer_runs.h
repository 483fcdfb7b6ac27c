// Running triad-train's loop in-process on part of MPI_COMM_WORLD and comparing runs: shared by
// the parallel-equivalence suites (test_data_parallel, test_model_parallel).
#pragma once

#include <gtest/gtest.h>
#include <mpi.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <string>
#include <vector>

#include "mpi_test_helpers.h"
#include "triad/core/rng.h"
#include "triad/data/token_shard.h"
#include "triad/train/config.h"
#include "triad/train/trainer.h"

namespace triad::testing {

// A directory shared by all ranks (same machine), made fresh by rank 0, holding one train and
// one val shard of `tokens` seeded random ids below `vocab`.
inline std::string shared_token_dir(const std::string& name, int vocab, size_t tokens,
                                    uint64_t seed) {
  namespace fs = std::filesystem;
  const std::string d = ::testing::TempDir() + name;
  if (world_rank() == 0) {
    fs::remove_all(d);
    fs::create_directories(d);
    Rng rng(seed);
    std::vector<uint16_t> t(tokens);
    for (auto& x : t) x = uint16_t(rng.below(uint64_t(vocab)));
    write_token_shard(d + "/train_000.bin", t);
    for (auto& x : t) x = uint16_t(rng.below(uint64_t(vocab)));
    write_token_shard(d + "/val_000.bin", t);
  }
  MPI_Barrier(MPI_COMM_WORLD);
  return d;
}

// The shape of the equivalence suites' small models.
struct SmallModel {
  int layers, heads, embd, seq, vocab;
};

// The command line (program name first) of a small run: the model `m` trained 6 steps on dir's
// shards (batch `batch` in micro-batches of `micro`, lr 3e-3 after 2 warm-up steps, clipping 0.5,
// shuffled data), evaluated and checkpointed every 3 steps (all kept), as run `name` under
// dir/runs, MFU against 1 TFLOP/s. Suites append their grid's keys.
inline std::vector<std::string> small_run_args(const std::string& dir, const std::string& name,
                                               const SmallModel& m, int batch, int micro) {
  return {"triad-train",
          "--model.n_layer",
          std::to_string(m.layers),
          "--model.n_head",
          std::to_string(m.heads),
          "--model.n_embd",
          std::to_string(m.embd),
          "--model.seq_len",
          std::to_string(m.seq),
          "--model.vocab_size",
          std::to_string(m.vocab),
          "--train.steps",
          "6",
          "--train.batch_size",
          std::to_string(batch),
          "--train.micro_batch_size",
          std::to_string(micro),
          "--train.lr",
          "3e-3",
          "--train.warmup_steps",
          "2",
          "--train.grad_clip",
          "0.5",
          "--data.train",
          dir + "/train_*.bin",
          "--data.val",
          dir + "/val_*.bin",
          "--data.shuffle",
          "true",
          "--eval.every",
          "3",
          "--eval.sequences",
          "20",
          "--checkpoint.every",
          "3",
          "--checkpoint.keep",
          "0",
          "--run.dir",
          dir + "/runs",
          "--run.name",
          name,
          "--run.peak_tflops",
          "1"};
}

struct RunResult {
  TrainOutcome out;  // rank 0's
  std::vector<double> losses;
  std::vector<float> params;
  double val_loss = 0;
};

// Runs triad-train's loop with the command line `args` (args[0] is the program name) on the
// first `ranks` ranks of the world while the others wait; every rank returns rank 0's losses,
// full parameters and last validation loss (rank 0 takes part in every run).
inline RunResult run_trainer(int ranks, const std::vector<std::string>& args) {
  RunResult res;
  const int rank = world_rank();
  MPI_Comm comm;
  MPI_Comm_split(MPI_COMM_WORLD, rank < ranks ? 0 : MPI_UNDEFINED, rank, &comm);
  if (comm != MPI_COMM_NULL) {
    std::vector<const char*> argv;
    for (auto& a : args) argv.push_back(a.c_str());
    const CommandLine cl = parse_train_command_line(int(argv.size()), argv.data());
    Trainer trainer(comm, cl);
    res.out = trainer.run();
    res.losses = res.out.losses;
    res.params = trainer.parameters();
    res.val_loss = res.out.last_eval.loss;
    MPI_Comm_free(&comm);
  }
  int n = int(res.losses.size()), m = int(res.params.size());
  MPI_Bcast(&n, 1, MPI_INT, 0, MPI_COMM_WORLD);
  MPI_Bcast(&m, 1, MPI_INT, 0, MPI_COMM_WORLD);
  res.losses.resize(size_t(n));
  res.params.resize(size_t(m));
  MPI_Bcast(res.losses.data(), n, MPI_DOUBLE, 0, MPI_COMM_WORLD);
  MPI_Bcast(res.params.data(), m, MPI_FLOAT, 0, MPI_COMM_WORLD);
  MPI_Bcast(&res.val_loss, 1, MPI_DOUBLE, 0, MPI_COMM_WORLD);
  return res;
}

// The same training to fp32 rounding: per-step losses and the validation loss within 2e-6
// relative, weights within 2e-4 (mean difference below 1e-6). Differently ordered fp32 sums
// differ in the last bits; Adam divides by sqrt(v), which amplifies that for the few weights
// whose gradient is nearly zero (there m/sqrt(v) is noise-sized). A step moves a weight by up
// to lr = 3e-3: the worst weight may differ by a few percent of one step, the average by far
// less.
inline void expect_same_training(const RunResult& a, const RunResult& b, const std::string& what) {
  ASSERT_EQ(a.losses.size(), b.losses.size()) << what;
  for (size_t i = 0; i < a.losses.size(); ++i)
    EXPECT_NEAR(a.losses[i], b.losses[i], 2e-6 * std::abs(b.losses[i])) << what << " step " << i;
  ASSERT_EQ(a.params.size(), b.params.size()) << what;
  double worst = 0, mean = 0;
  for (size_t i = 0; i < a.params.size(); ++i) {
    const double d = std::abs(double(a.params[i]) - double(b.params[i]));
    worst = std::max(worst, d);
    mean += d / double(a.params.size());
  }
  EXPECT_LT(worst, 2e-4) << what << ": largest weight difference";
  EXPECT_LT(mean, 1e-6) << what << ": mean weight difference";
  EXPECT_NEAR(a.val_loss, b.val_loss, 2e-6 * std::abs(b.val_loss)) << what;
}

}  // namespace triad::testing
