// Config parsing and validation: every bad value gets a triad::Error naming the key.
#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>
#include <random>

#include "triad/core/error.h"
#include "triad/optim/optimizer.h"
#include "triad/train/config.h"
#include "triad/train/run_plan.h"

namespace triad {
namespace {

CommandLine parse(std::vector<std::string> args) {
  std::vector<const char*> argv{"triad-train"};
  for (auto& a : args) argv.push_back(a.c_str());
  return parse_train_command_line(int(argv.size()), argv.data());
}

std::string error_of(std::vector<std::string> args, int world = 1) {
  try {
    const auto cl = parse(args);
    validate(cl.config, world);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

std::string write_file(const std::string& name, const std::string& text) {
  const std::string path = ::testing::TempDir() + name;
  std::ofstream(path) << text;
  return path;
}

TEST(Config, DefaultsAreValid) { EXPECT_EQ(error_of({}), ""); }

TEST(Config, CommandLineOverridesFilesAndLaterFilesOverrideEarlier) {
  const auto a = write_file("a.ini", "[train]\nlr = 0.1\nsteps = 7\n[model]\nn_layer = 3\n");
  const auto b = write_file("b.ini", "[train]\nlr = 0.2\n");
  const auto cl = parse({"--config", a, "--config", b, "--model.n_layer", "5"});
  EXPECT_DOUBLE_EQ(cl.config.train.lr, 0.2);
  EXPECT_EQ(cl.config.train.steps, 7);
  EXPECT_EQ(cl.config.model.n_layer, 5);
}

TEST(Config, IniRoundTrip) {
  const auto cl = parse({"--train.lr", "0.000123456789", "--data.train", "x/*.bin",
                         "--data.shuffle", "true", "--sample.prompt", "In the beginning"});
  const Config back = parse_config_text(to_ini(cl.config), "round trip");
  EXPECT_EQ(to_ini(back), to_ini(cl.config));
  EXPECT_DOUBLE_EQ(back.train.lr, 0.000123456789);
  EXPECT_TRUE(back.data.shuffle);
  EXPECT_EQ(back.sample.prompt, "In the beginning");
}

TEST(Config, UnknownKeysAreErrors) {
  EXPECT_NE(error_of({"--train.learning_rate", "1"}).find("train.learning_rate"),
            std::string::npos);
  const auto f = write_file("unknown.ini", "[model]\nn_layers = 3\n");
  const std::string e = error_of({"--config", f});
  EXPECT_NE(e.find("n_layers"), std::string::npos) << e;
  EXPECT_NE(e.find(f), std::string::npos) << e;
}

TEST(Config, MissingConfigFileIsAnError) {
  EXPECT_NE(error_of({"--config", "/nonexistent/x.ini"}).find("/nonexistent/x.ini"),
            std::string::npos);
}

TEST(Config, NonNumericAndNegativeValuesAreErrors) {
  EXPECT_NE(error_of({"--train.lr", "fast"}).find("train.lr"), std::string::npos);
  EXPECT_NE(error_of({"--model.n_layer", "two"}).find("n_layer"), std::string::npos);
  EXPECT_NE(error_of({"--train.steps", "-5"}).find("train.steps"), std::string::npos);
  EXPECT_NE(error_of({"--train.lr", "-1e-3"}).find("train.lr"), std::string::npos);
  EXPECT_NE(error_of({"--model.n_embd", "0"}).find("n_embd"), std::string::npos);
  EXPECT_NE(error_of({"--train.seed", "-3"}).find("train.seed"), std::string::npos);
  EXPECT_NE(error_of({"--model.n_layer", "3.5"}).find("n_layer"), std::string::npos);
  EXPECT_NE(error_of({"--sample.top_p", "0"}).find("sample.top_p"), std::string::npos);
  EXPECT_NE(error_of({"--sample.top_p", "1.5"}).find("sample.top_p"), std::string::npos);
  EXPECT_EQ(error_of({"--sample.top_p", "0.9"}), "");
  EXPECT_NE(error_of({"--sample.min_p", "1.5"}).find("sample.min_p"), std::string::npos);
  EXPECT_NE(error_of({"--sample.repetition_penalty", "0"}).find("sample.repetition_penalty"),
            std::string::npos);
  EXPECT_NE(error_of({"--sample.frequency_penalty", "inf"}).find("sample.frequency_penalty"),
            std::string::npos);
  EXPECT_NE(error_of({"--sample.presence_penalty", "nan"}).find("sample.presence_penalty"),
            std::string::npos);
  EXPECT_EQ(error_of({"--sample.min_p", "0.1", "--sample.repetition_penalty", "1.2",
                      "--sample.frequency_penalty", "-0.5", "--sample.presence_penalty", "0.5"}),
            "");
}

TEST(Config, CrossKeyConstraints) {
  const std::string heads = error_of({"--model.n_embd", "100", "--model.n_head", "12"});
  EXPECT_NE(heads.find("model.n_head"), std::string::npos) << heads;
  EXPECT_NE(heads.find("divide"), std::string::npos) << heads;
  const std::string batch = error_of({"--train.batch_size", "10", "--train.micro_batch_size", "4"});
  EXPECT_NE(batch.find("train.batch_size"), std::string::npos) << batch;
  // Divisibility counts the data-parallel ranks too: 8 / (4 · 4) does not divide.
  EXPECT_NE(error_of({"--train.batch_size", "8", "--train.micro_batch_size", "4"}, 4)
                .find("train.batch_size"),
            std::string::npos);
}

// Grids that do not fit the job or the model (defaults: 12 layers, 12 heads, batch 8 of 1).
TEST(Config, InvalidGridsAreRefused) {
  auto expect = [](const std::string& err, const std::string& key, const std::string& what) {
    EXPECT_NE(err.find(key), std::string::npos) << err;
    EXPECT_NE(err.find(what), std::string::npos) << err;
  };
  expect(error_of({"--parallel.tp", "5"}, 5), "parallel.tp", "must divide model.n_head");
  expect(error_of({"--parallel.tp", "2"}, 3), "parallel.tp", "must divide the number of ranks");
  expect(error_of({"--parallel.pp", "2", "--parallel.tp", "2"}, 6), "parallel.tp",
         "must divide the number of ranks");
  expect(error_of({"--parallel.pp", "16"}, 16), "parallel.pp", "must not exceed model.n_layer");
  // Sizes whose product overflows an int (it was 0, then a division by it), and a rank count
  // whose product with micro_batch_size does (8 % -4 == 0 passed).
  expect(error_of({"--parallel.tp", "65536", "--parallel.pp", "65536"}, 1), "parallel.tp",
         "(65536 · 65536 · 1) must divide the number of ranks (1)");
  expect(error_of({"--train.micro_batch_size", "4"}, 2147483647), "train.batch_size",
         "(8) must be divisible by micro_batch_size · dp (4 · 2147483647)");
  expect(error_of({"--parallel.pp", "5"}, 5), "model.n_layer", "must be divisible");
  expect(error_of({"--parallel.virtual_stages", "2", "--parallel.pp", "2"}, 2),
         "parallel.virtual_stages", "must be 1 for parallel.schedule = 1f1b");
  expect(error_of({"--parallel.schedule", "interleaved", "--parallel.pp", "2"}, 2),
         "parallel.virtual_stages", "must be >= 2");
  expect(error_of({"--parallel.schedule", "interleaved", "--parallel.virtual_stages", "2"}, 1),
         "parallel.schedule", "needs parallel.pp >= 2");
  // 8 sequences in micro-batches of 1 over 2 data-parallel ranks: 4 micro-batches, not a
  // multiple of pp = 3 (12 layers = 3 · 2 · 2 chunks).
  expect(error_of({"--parallel.schedule", "interleaved", "--parallel.virtual_stages", "2",
                   "--parallel.pp", "3", "--train.micro_batch_size", "1"},
                  6),
         "train.batch_size", "multiple of parallel.pp");
  expect(error_of({"--parallel.tp", "2", "--parallel.sequence_parallel", "true", "--model.seq_len",
                   "15"},
                  2),
         "parallel.sequence_parallel", "divisible by parallel.tp");
  expect(
      error_of({"--parallel.schedule", "zb-h1", "--parallel.pp", "2", "--train.recompute", "full"},
               2),
      "train.recompute", "full cannot be combined with parallel.schedule = zb-h1");
  // zb-h1 with virtual stages splits the interleaved order, under interleaved's constraints.
  expect(error_of({"--parallel.schedule", "zb-h1", "--parallel.virtual_stages", "2",
                   "--parallel.pp", "3", "--train.micro_batch_size", "1"},
                  6),
         "train.batch_size", "zb-h1 with virtual stages needs to be a multiple of parallel.pp");
  EXPECT_EQ(error_of({"--parallel.schedule", "zb-h1", "--parallel.virtual_stages", "2",
                      "--parallel.pp", "2", "--train.micro_batch_size", "1"},
                     2),
            "");
  expect(error_of({"--parallel.schedule", "zb-h2"}, 1), "parallel.schedule",
         "must be 1f1b, gpipe, interleaved, zb-h1 or zb-v (got 'zb-h2')");
  // zb-v: two chunks per rank of a real pipeline, no full recomputation; any micro-batch count.
  expect(error_of({"--parallel.schedule", "zb-v", "--parallel.pp", "2"}, 2),
         "parallel.virtual_stages", "must be 2 for parallel.schedule = zb-v");
  expect(error_of({"--parallel.schedule", "zb-v", "--parallel.virtual_stages", "2"}, 1),
         "parallel.schedule", "zb-v needs parallel.pp >= 2");
  expect(error_of({"--parallel.schedule", "zb-v", "--parallel.virtual_stages", "2", "--parallel.pp",
                   "2", "--train.recompute", "full"},
                  2),
         "train.recompute", "full cannot be combined with parallel.schedule = zb-v");
  EXPECT_EQ(
      error_of({"--parallel.schedule", "zb-v", "--parallel.virtual_stages", "2", "--parallel.pp",
                "3", "--model.n_layer", "6", "--train.micro_batch_size", "1"},
               3),
      "");  // 8 micro-batches on 3 stages
  EXPECT_EQ(
      error_of({"--parallel.schedule", "zb-h1", "--parallel.pp", "2", "--train.recompute", "gelu"},
               2),
      "");
  expect(error_of({"--train.profile_step", "3"}, 1), "train.profile_step", "needs parallel.pp > 1");
  expect(error_of({"--parallel.pp", "2", "--train.profile_step", "-1"}, 2), "train.profile_step",
         "must be >= 0");
  expect(error_of({"--parallel.pp", "2", "--train.steps", "10", "--train.profile_step", "11"}, 2),
         "train.profile_step", "(11) must not exceed train.steps (10)");
  EXPECT_EQ(
      error_of({"--parallel.pp", "2", "--train.steps", "10", "--train.profile_step", "10"}, 2), "");
  EXPECT_EQ(error_of({"--parallel.tp", "4", "--parallel.pp", "2"}, 8), "");
  EXPECT_EQ(error_of({"--parallel.schedule", "interleaved", "--parallel.virtual_stages", "2",
                      "--parallel.pp", "2", "--train.micro_batch_size", "1"},
                     2),
            "");
}

// Context parallelism: the grid must hold it, every rank two equal pieces of a sequence, and
// what decodes whole sequences on one rank (samples, multiple-choice scoring) or runs on the GPU
// is refused with it.
TEST(Config, ContextParallelGridsAreChecked) {
  auto expect = [](const std::string& err, const std::string& key, const std::string& what) {
    EXPECT_NE(err.find(key), std::string::npos) << err;
    EXPECT_NE(err.find(what), std::string::npos) << err;
  };
  const std::vector<std::string> seq = {"--model.seq_len", "16"};
  auto with = [&](std::vector<std::string> a) {
    a.insert(a.end(), seq.begin(), seq.end());
    return a;
  };
  expect(error_of(with({"--parallel.cp", "0"})), "parallel.cp", "must be >= 1");
  expect(error_of(with({"--parallel.cp", "3"}), 4), "parallel.tp",
         "· parallel.cp (1 · 1 · 3) must divide the number of ranks (4)");
  expect(error_of({"--parallel.cp", "2", "--model.seq_len", "6"}, 2), "parallel.cp",
         "divisible by 2 · parallel.cp");
  // On the GPU: the flash kernels' bf16, head dims and whole 64-row tiles per piece (GPT-2's 64
  // at seq_len 256 over cp 2).
  const std::vector<std::string> gpu = {"--run.backend", "cuda", "--model.seq_len", "256"};
  auto on_gpu = [&](std::vector<std::string> a) {
    a.insert(a.end(), gpu.begin(), gpu.end());
    return a;
  };
  EXPECT_EQ(error_of(on_gpu({"--parallel.cp", "2"}), 2), "");
  expect(error_of(on_gpu({"--parallel.cp", "2", "--run.precision", "fp32"}), 2), "parallel.cp",
         "needs run.precision = bf16");
  expect(error_of(on_gpu({"--parallel.cp", "2", "--model.n_head", "24"}), 2), "parallel.cp",
         "head dimension of 64, 128 or 192 (got 32)");
  expect(error_of(on_gpu({"--parallel.cp", "4"}), 4), "parallel.cp",
         "divisible by 2 · parallel.cp · 64");
  // The flash kernels drop attention probabilities, but not soft-capped ones (the CPU backend
  // does, on any grid).
  EXPECT_EQ(error_of(on_gpu({"--parallel.cp", "2", "--train.attention_dropout", "0.1"}), 2), "");
  expect(error_of(on_gpu({"--parallel.cp", "2", "--train.attention_dropout", "0.1",
                          "--model.attn_softcap", "50"}),
                  2),
         "train.attention_dropout",
         "parallel.cp > 1 and model.attn_softcap is not implemented by the cuda backend");
  EXPECT_EQ(error_of(with({"--parallel.cp", "2", "--train.attention_dropout", "0.1"}), 2), "");
  expect(error_of(with({"--parallel.cp", "2", "--sample.length", "8"}), 2), "sample.length",
         "must be 0 with parallel.cp > 1");
  expect(error_of(with({"--parallel.cp", "2", "--eval.choices", "hellaswag.bin"}), 2),
         "eval.choices", "parallel.cp > 1");
  // 8 tokens over cp 2: 4 per rank, not divisible by tp = 3 for sequence parallelism.
  expect(
      error_of({"--parallel.cp", "2", "--parallel.tp", "3", "--model.n_head", "3", "--model.n_embd",
                "48", "--model.seq_len", "8", "--parallel.sequence_parallel", "true"},
               6),
      "parallel.sequence_parallel", "model.seq_len / parallel.cp (4) divisible by parallel.tp");
  // dp = world / (tp·pp·cp): 8 sequences over dp 2 · micro-batches of 4.
  EXPECT_EQ(error_of(with({"--parallel.cp", "2", "--train.micro_batch_size", "4"}), 4), "");
  expect(error_of(with({"--parallel.cp", "2", "--train.micro_batch_size", "8"}), 4),
         "train.batch_size", "micro_batch_size · dp (8 · 2)");
}

// data.document_mask: none, or a token id of the vocabulary; gpt_shape carries it to the model.
TEST(Config, DocumentMaskIsNoneOrATokenOfTheVocabulary) {
  EXPECT_EQ(error_of({"--data.document_mask", "none"}), "");
  EXPECT_EQ(error_of({"--data.document_mask", "50256"}), "");
  for (const char* bad : {"50257", "-1", "eot", "", "3x", "1e3"}) {
    const std::string e = error_of({"--data.document_mask", bad});
    EXPECT_NE(e.find("data.document_mask"), std::string::npos) << bad << ": " << e;
  }
  EXPECT_NE(error_of({"--data.document_mask", "50257"}).find("model.vocab_size 50257"),
            std::string::npos);
  EXPECT_EQ(gpt_shape(parse({"--data.document_mask", "50256"}).config).document_token, 50256);
  EXPECT_EQ(gpt_shape(parse({}).config).document_token, -1);
  // data.reset_positions needs the documents it restarts at; gpt_shape carries it.
  EXPECT_NE(error_of({"--data.reset_positions", "true"})
                .find("data.reset_positions needs data.document_mask"),
            std::string::npos);
  EXPECT_NE(error_of({"--data.reset_positions", "yes please"}).find("data.reset_positions"),
            std::string::npos);
  EXPECT_TRUE(
      gpt_shape(parse({"--data.document_mask", "50256", "--data.reset_positions", "true"}).config)
          .reset_positions);
  EXPECT_FALSE(gpt_shape(parse({}).config).reset_positions);
}

// train.batch_rampup: Megatron's rule, and one error naming the key for every bad value.
TEST(Config, BatchRampupFollowsMegatronsRuleAndIsChecked) {
  const std::vector<std::string> full = {"--train.batch_size", "64", "--train.micro_batch_size",
                                         "4"};
  auto with = [&](const std::string& ramp) {
    std::vector<std::string> a = full;
    a.insert(a.end(), {"--train.batch_rampup", ramp});
    return a;
  };
  EXPECT_EQ(error_of(with("16, 16, 300")), "");
  EXPECT_EQ(error_of(with(" 16 ,16,300 ")), "");
  EXPECT_EQ(error_of(with("")), "");
  // 3 increments over 300 sequences: 100 each; batch_size from the 300th on.
  const BatchRampup r = parse_batch_rampup("16, 16, 300", 64);
  ASSERT_TRUE(r.on());
  const std::vector<std::pair<int64_t, int>> want = {{0, 16},   {99, 16},  {100, 32}, {199, 32},
                                                     {200, 48}, {299, 48}, {300, 64}, {10000, 64}};
  for (const auto& [consumed, batch] : want)
    EXPECT_EQ(batch_size_at(r, 64, consumed), batch) << consumed;
  EXPECT_EQ(ramp_batch_sizes(r, 64), (std::vector<int>{16, 32, 48, 64}));
  EXPECT_EQ(ramp_batch_sizes(BatchRampup{}, 64), (std::vector<int>{64}));
  EXPECT_EQ(batch_size_at(BatchRampup{}, 64, 0), 64);
  // The steps' batches: 16 ×7 (112), 32 ×3 (208), 48 ×2 (304), then 64.
  EXPECT_EQ(sequences_after_steps(r, 64, 0, 7), 112);
  EXPECT_EQ(sequences_after_steps(r, 64, 0, 12), 304);
  EXPECT_EQ(sequences_after_steps(r, 64, 0, 14), 304 + 128);
  EXPECT_EQ(sequences_after_steps(BatchRampup{}, 64, 5, 3), 5 + 192);
  // Increments a large ramp's product would overflow in 64 bits: still the rule.
  const BatchRampup big = parse_batch_rampup("1, 1, 4000000000000", 1 << 30);
  EXPECT_EQ(batch_size_at(big, 1 << 30, 2000000000000), 1 + ((1 << 30) - 1) / 2);
  for (const char* bad : {"16", "16, 16", "16, 16, 300, 1", "0, 16, 300", "16, 0, 300", "16, 16, 0",
                          "x, 16, 300", "16, 16, -3", "16,,300", "1e2, 16, 300"}) {
    const std::string e = error_of(with(bad));
    EXPECT_NE(e.find("train.batch_rampup"), std::string::npos) << bad << ": " << e;
  }
  // START below batch_size, batch_size − START whole increments, each batch splittable.
  EXPECT_NE(error_of(with("64, 16, 300")).find("below train.batch_size"), std::string::npos);
  EXPECT_NE(error_of(with("16, 20, 300")).find("multiple of INCREMENT"), std::string::npos);
  EXPECT_NE(error_of(with("4, 4, 300"), 2).find("multiples of micro_batch_size · dp (4 · 2)"),
            std::string::npos);
  EXPECT_EQ(error_of(with("4, 4, 300"), 1), "");
  // Interleaved schedules need each batch's micro-batches a multiple of pp.
  std::vector<std::string> inter = with("8, 8, 300");
  inter.insert(inter.end(), {"--model.n_layer", "8", "--parallel.pp", "4", "--parallel.schedule",
                             "interleaved", "--parallel.virtual_stages", "2"});
  const std::string e = error_of(inter, 4);
  EXPECT_NE(e.find("train.batch_rampup"), std::string::npos) << e;
  EXPECT_NE(e.find("at a batch of 8"), std::string::npos) << e;
}

// train.window_warmup: the window of each step from the documented formula, the model's own
// from STEPS on, and one error naming the key for every bad value.
TEST(Config, WindowWarmupGrowsToTheModelsWindowAndIsChecked) {
  auto with = [](std::vector<std::string> a, const std::string& w) {
    a.insert(a.end(), {"--train.window_warmup", w});
    return a;
  };
  const std::vector<std::string> T1024 = {"--model.seq_len", "1024"};
  EXPECT_EQ(error_of(with(T1024, "128, 1000")), "");
  EXPECT_EQ(error_of(with(T1024, " 128 , 1000 , 1 ")), "");
  EXPECT_EQ(error_of(with(T1024, "")), "");
  // No model window: from 128 towards 1024 over 1000 steps in multiples of 64, then 0 (none).
  ModelConfig m;
  m.seq_len = 1024;
  const WindowWarmup w = parse_window_warmup("128, 1000", m);
  ASSERT_TRUE(w.on());
  EXPECT_EQ(w.multiple, 64);
  // step 1: 128 + floor(896/1000) = 128; 2: 129 -> 192; 500: 576; 999: 1023 -> 1024 (no cut)
  const std::vector<std::pair<int64_t, int>> want = {{0, 128},   {1, 128}, {2, 192},  {500, 576},
                                                     {928, 960}, {999, 0}, {1000, 0}, {5000, 0}};
  for (const auto& [step, window] : want) EXPECT_EQ(window_at(w, m, step), window) << step;
  EXPECT_EQ(window_at(WindowWarmup{}, m, 0), 0);
  // A model window of 256: the warmup grows to it, in multiples of 1 here.
  m.sliding_window = 256;
  const WindowWarmup w1 = parse_window_warmup("16, 10, 1", m);
  EXPECT_EQ(window_at(w1, m, 0), 16);
  EXPECT_EQ(window_at(w1, m, 5), 16 + 120);
  EXPECT_EQ(window_at(w1, m, 9), 16 + 216);
  EXPECT_EQ(window_at(w1, m, 10), 256);
  EXPECT_EQ(window_at(WindowWarmup{}, m, 3), 256);
  // The shape plans the mask for the window to come.
  EXPECT_TRUE(gpt_shape(parse(with(T1024, "128, 1000")).config).window_scheduled);
  EXPECT_FALSE(gpt_shape(parse(T1024).config).window_scheduled);
  EXPECT_TRUE(gpt_shape(parse(with(T1024, "128, 1000")).config).masks_attention(1024));
  for (const char* bad : {"128", "128, 1000, 64, 1", "0, 1000", "128, 0", "128, 1000, 0", "x, 1000",
                          "128, -1", "128,,64", "1e2, 1000"}) {
    const std::string e = error_of(with(T1024, bad));
    EXPECT_NE(e.find("train.window_warmup"), std::string::npos) << bad << ": " << e;
  }
  // START below what it grows to: the context, or the model's window.
  EXPECT_NE(error_of(with(T1024, "1024, 10")).find("model.seq_len (1024)"), std::string::npos);
  std::vector<std::string> windowed = T1024;
  windowed.insert(windowed.end(), {"--model.sliding_window", "256"});
  EXPECT_NE(error_of(with(windowed, "256, 10")).find("model.sliding_window (256)"),
            std::string::npos);
  EXPECT_EQ(error_of(with(windowed, "192, 10")), "");
  // START a multiple of MULTIPLE: the first window is START (not START rounded up, nor, with a
  // MULTIPLE at or above the window, no warmup at all).
  EXPECT_NE(error_of(with(windowed, "100, 10")).find("must be a multiple of MULTIPLE (64"),
            std::string::npos);
  EXPECT_NE(error_of(with(T1024, "4, 10, 2048")).find("multiple of MULTIPLE (2048)"),
            std::string::npos);
  EXPECT_EQ(error_of(with(T1024, "100, 10, 4")), "");
}

// train.decay_shape: one of three, and only for wsd's decay.
TEST(Config, DecayShapeIsWsdsOnly) {
  EXPECT_EQ(error_of({"--train.schedule", "wsd", "--train.decay_shape", "1-sqrt"}), "");
  EXPECT_EQ(error_of({"--train.schedule", "wsd", "--train.decay_shape", "cosine"}), "");
  EXPECT_NE(
      error_of({"--train.schedule", "wsd", "--train.decay_shape", "exp"}).find("train.decay_shape"),
      std::string::npos);
  EXPECT_NE(
      error_of({"--train.schedule", "cosine", "--train.decay_shape", "1-sqrt"}).find("wsd only"),
      std::string::npos);
}

// train.freeze: globs over the parameter names ('*' crosses '/'); a pattern that matches nothing
// and a freeze of everything are refused by name, an empty item by the config.
TEST(Config, FreezeSelectsTensorsByGlob) {
  const GptShape shape = gpt_shape(parse({"--model.n_layer", "2"}).config);
  const auto layout = gpt_parameter_layout(shape);
  EXPECT_TRUE(frozen_tensor("wte/weight, h/0/*", "h/0/mlp/c_fc/bias"));
  EXPECT_TRUE(frozen_tensor("*/ln_*", "h/1/ln_2/weight"));
  EXPECT_FALSE(frozen_tensor("h/0/*", "h/1/attn/c_attn/weight"));
  EXPECT_FALSE(frozen_tensor("", "wte/weight"));
  const auto kept = trainable_specs(layout, layout, "wte/weight, wpe/weight, h/0/*");
  ASSERT_EQ(kept.size(), layout.size() - 2 - (layout.size() - 4) / 2);  // 2 layers alike
  for (const auto& s : kept)
    EXPECT_TRUE(s.name.rfind("h/1/", 0) == 0 || s.name.rfind("ln_f", 0) == 0) << s.name;
  EXPECT_EQ(trainable_specs(layout, layout, "").size(), layout.size());
  auto error = [&](const std::string& freeze) {
    try {
      trainable_specs(layout, layout, freeze);
    } catch (const triad::Error& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  EXPECT_NE(error("h/2/*").find("train.freeze: pattern 'h/2/*' matches no tensor"),
            std::string::npos);
  EXPECT_NE(error("*").find("freezes every tensor"), std::string::npos);
  EXPECT_NE(error_of({"--train.freeze", "wte/weight, ,h/0/*"}).find("empty pattern"),
            std::string::npos);
  EXPECT_EQ(error_of({"--train.freeze", "wte/weight"}), "");
}

// train.sequences: the fewest steps that train that many, through a ramp; it replaces
// train.steps (also one given), and the resolved config parses back to the same steps.
TEST(Config, RunLengthInSequencesSetsTheSteps) {
  auto steps_of = [](std::vector<std::string> a) { return parse(a).config.train.steps; };
  const std::vector<std::string> q = {"--train.batch_size", "16", "--train.micro_batch_size", "8"};
  auto with = [&](std::vector<std::string> more) {
    std::vector<std::string> a = q;
    a.insert(a.end(), more.begin(), more.end());
    return a;
  };
  EXPECT_EQ(steps_of(with({"--train.sequences", "4800"})), 300);
  EXPECT_EQ(steps_of(with({"--train.sequences", "4801"})), 301);
  EXPECT_EQ(steps_of(with({"--train.sequences", "1"})), 1);
  EXPECT_EQ(steps_of(with({"--train.steps", "77"})), 77);
  EXPECT_EQ(steps_of(with({"--train.steps", "77", "--train.sequences", "160"})), 10);
  // 2400 sequences in batches of 8 (300 steps), then 2400 in 16 (150).
  const auto ramp = with({"--train.batch_rampup", "8, 8, 2400", "--train.sequences", "4800"});
  EXPECT_EQ(steps_of(ramp), 450);
  EXPECT_EQ(steps_of(with({"--train.batch_rampup", "8, 8, 2400", "--train.sequences", "2401"})),
            301);
  EXPECT_EQ(sequences_after_steps(parse_batch_rampup("8, 8, 2400", 16), 16, 0, 450), 4800);
  EXPECT_EQ(parse_config_text(to_ini(parse(ramp).config), "test").train.steps, 450);
  EXPECT_NE(error_of({"--train.sequences", "-5"}).find("train.sequences"), std::string::npos);
  // Counted a batch at a time: the same as step by step (batch_size_at after each step), on
  // random ramps.
  std::mt19937 rng(5);
  for (int trial = 0; trial < 3000; ++trial) {
    // (START below batch_size, which is START plus a multiple of INCREMENT: parse_batch_rampup)
    const int inc = 1 + int(rng() % 16), start = 1 + int(rng() % 32);
    const int batch = start + inc * (1 + int(rng() % 4));
    const int64_t ramp_n = 1 + int64_t(rng() % 3000), sequences = 1 + int64_t(rng() % 5000);
    const std::string text =
        std::to_string(start) + ", " + std::to_string(inc) + ", " + std::to_string(ramp_n);
    const BatchRampup r = parse_batch_rampup(text, batch);
    int64_t consumed = 0, steps = 0;
    for (; consumed < sequences && consumed < ramp_n; ++steps)
      consumed += batch_size_at(r, batch, consumed);
    if (consumed < sequences) steps += (sequences - consumed + batch - 1) / batch;
    ASSERT_EQ(steps_for_sequences(r, batch, sequences), steps) << text << " " << sequences;
  }
  // More steps than a checkpoint's name holds: said of train.sequences, and at once (a ramp over
  // 10^12 sequences was counted step by step for minutes).
  for (const char* rampup : {"", "4, 4, 1000000000000"}) {
    const std::string err =
        error_of(with({"--train.sequences", "1000000000000", "--train.batch_rampup", rampup}));
    EXPECT_NE(err.find("train.sequences = 1000000000000 takes more than 99999999 steps"),
              std::string::npos)
        << err;
  }
}

// train.lr_by: steps or sequences, each with its own warmup key, the other's refused.
TEST(Config, ScheduleUnitAndItsWarmupAreChecked) {
  EXPECT_EQ(error_of({"--train.lr_by", "sequences", "--train.warmup_sequences", "512"}), "");
  EXPECT_EQ(error_of({"--train.lr_by", "steps", "--train.warmup_steps", "5"}), "");
  const std::string unit = error_of({"--train.lr_by", "tokens"});
  EXPECT_NE(unit.find("train.lr_by"), std::string::npos) << unit;
  const std::string steps = error_of({"--train.lr_by", "sequences", "--train.warmup_steps", "5"});
  EXPECT_NE(steps.find("train.warmup_steps counts for train.lr_by = steps only"), std::string::npos)
      << steps;
  const std::string seqs = error_of({"--train.warmup_sequences", "64"});
  EXPECT_NE(seqs.find("train.warmup_sequences counts for train.lr_by = sequences only"),
            std::string::npos)
      << seqs;
  EXPECT_NE(error_of({"--train.lr_by", "sequences", "--train.warmup_sequences", "-1"})
                .find("train.warmup_sequences"),
            std::string::npos);
}

TEST(Config, SlidingWindowIsACountOfKeys) {
  EXPECT_EQ(error_of({"--model.sliding_window", "256"}), "");
  EXPECT_NE(error_of({"--model.sliding_window", "-1"}).find("model.sliding_window"),
            std::string::npos);
  EXPECT_EQ(gpt_shape(parse({"--model.sliding_window", "256"}).config).sliding_window, 256);
  EXPECT_EQ(gpt_shape(parse({}).config).sliding_window, 0);
  // Interleaved full-attention layers need a window for the others.
  EXPECT_NE(error_of({"--model.full_attention_every", "2"}).find("needs model.sliding_window"),
            std::string::npos);
  EXPECT_NE(error_of({"--model.sliding_window", "8", "--model.full_attention_every", "-1"})
                .find("model.full_attention_every"),
            std::string::npos);
  const GptShape s =
      gpt_shape(parse({"--model.sliding_window", "8", "--model.full_attention_every", "3"}).config);
  EXPECT_EQ(s.full_attention_every, 3);
  EXPECT_TRUE(s.windowed(0) && s.windowed(1) && !s.windowed(2) && s.windowed(3) && !s.windowed(5));
  EXPECT_EQ(s.layer_window(2), 0);
  EXPECT_EQ(s.layer_window(4), 8);
  // GPT-Neo's: each group starts with its full-attention layer.
  const GptShape first =
      gpt_shape(parse({"--model.sliding_window", "8", "--model.full_attention_every", "3",
                       "--model.full_attention_first", "true"})
                    .config);
  EXPECT_TRUE(!first.windowed(0) && first.windowed(1) && first.windowed(2) && !first.windowed(3) &&
              first.windowed(5) && !first.windowed(6));
  EXPECT_NE(error_of({"--model.sliding_window", "8", "--model.full_attention_first", "true"})
                .find("model.full_attention_first needs model.full_attention_every"),
            std::string::npos);
  // Gemma 3's: the windowed layers rotate by a base of their own.
  const std::vector<std::string> gemma3 = {"--model.position",
                                           "rope",
                                           "--model.sliding_window",
                                           "8",
                                           "--model.full_attention_every",
                                           "6",
                                           "--model.rope_local_theta",
                                           "10000"};
  EXPECT_EQ(error_of(gemma3), "");
  const GptShape g = gpt_shape(parse(gemma3).config);
  EXPECT_TRUE(g.local_rope(0) && g.local_rope(4) && !g.local_rope(5) && g.local_rope(6));
  // SmolLM3's NoPE layers: every 4th (1-based) rotates nothing; with rope only, not with MLA.
  const std::vector<std::string> nope = {"--model.position", "rope", "--model.nope_every", "4",
                                         "--model.n_layer",  "8"};
  EXPECT_EQ(error_of(nope), "");
  const GptShape n = gpt_shape(parse(nope).config);
  EXPECT_TRUE(n.rotates(0) && n.rotates(2) && !n.rotates(3) && n.rotates(4) && !n.rotates(7));
  EXPECT_NE(error_of({"--model.nope_every", "4"})
                .find("model.nope_every must be in [0, 2^30], and > 0 "
                      "only with model.position = rope"),
            std::string::npos);
  EXPECT_NE(error_of({"--model.position", "rope", "--model.nope_every", "-1"})
                .find("model.nope_every must be in [0, 2^30]"),
            std::string::npos);
  // With Qwen's and OLMo 3's YaRN (cos and sin of the full layers scaled) but not DeepSeek's
  // (every layer's scores scaled too).
  const std::vector<std::string> local_yarn = {"--model.position",
                                               "rope",
                                               "--model.sliding_window",
                                               "8",
                                               "--model.full_attention_every",
                                               "4",
                                               "--model.rope_local_theta",
                                               "10000",
                                               "--model.rope_scaling",
                                               "yarn"};
  EXPECT_EQ(error_of(local_yarn), "");
  auto deepseek_yarn = local_yarn;
  deepseek_yarn.insert(deepseek_yarn.end(), {"--model.rope_yarn_mscale_all_dim", "1"});
  EXPECT_NE(
      error_of(deepseek_yarn).find("model.rope_local_theta is not built with YaRN's score scale"),
      std::string::npos);
  EXPECT_NE(error_of({"--model.position", "rope", "--model.rope_local_theta", "10000"})
                .find("model.rope_local_theta needs model.sliding_window"),
            std::string::npos);
  // ... and Gemma 3 4B's linear scaling of the full-attention layers' frequencies.
  const std::vector<std::string> linear = {"--model.position",
                                           "rope",
                                           "--model.rope_scaling",
                                           "linear",
                                           "--model.rope_scaling_factor",
                                           "8"};
  EXPECT_EQ(error_of(linear), "");
  const GptShape l = gpt_shape(parse(linear).config);
  EXPECT_TRUE(l.rope_linear && l.rope_factor == 8.0 && !l.yarn && l.rope_ext.empty());
  EXPECT_NE(error_of({"--model.position", "rope", "--model.rope_scaling", "linear",
                      "--model.rope_scaling_factor", "0.5"})
                .find("model.rope_scaling_factor must be a finite number >= 1"),
            std::string::npos);
  EXPECT_NE(error_of({"--model.position", "rope", "--model.sliding_window", "8",
                      "--model.rope_local_theta", "0.5"})
                .find("model.rope_local_theta must be 0 or a finite number > 1"),
            std::string::npos);
}

TEST(Config, UnknownNamesAndUnbuiltModesAreRefused) {
  EXPECT_NE(error_of({"--train.schedule", "exp"}).find("train.schedule"), std::string::npos);
  EXPECT_NE(error_of({"--optim.name", "adafactor"}).find("optim.name"), std::string::npos);
  EXPECT_NE(error_of({"--parallel.zero", "4"}).find("parallel.zero"), std::string::npos);
  EXPECT_EQ(error_of({"--parallel.zero", "2"}), "");
  // ZeRO-2 reduces each micro-batch's gradient: not under a pipeline. Muon gathers each matrix.
  EXPECT_NE(error_of({"--parallel.zero", "2", "--parallel.pp", "2"}, 2).find("parallel.pp = 1"),
            std::string::npos);
  EXPECT_EQ(error_of({"--parallel.zero", "2", "--optim.name", "muon"}), "");
  EXPECT_EQ(error_of({"--parallel.zero", "3", "--optim.name", "muon"}), "");
  EXPECT_EQ(error_of({"--parallel.zero", "3"}), "");
  EXPECT_NE(error_of({"--parallel.zero", "3", "--parallel.pp", "2"}, 2).find("parallel.pp = 1"),
            std::string::npos);
  EXPECT_NE(error_of({"--run.backend", "tpu"}).find("run.backend"), std::string::npos);
  EXPECT_NE(error_of({"--data.shuffle", "maybe"}).find("data.shuffle"), std::string::npos);
  EXPECT_NE(error_of({"--run.precision", "fp16"}).find("run.precision"), std::string::npos);
  // bf16 rows travel as fp32 words: an odd width is refused up front, not mid-run.
  EXPECT_NE(error_of({"--run.precision", "bf16", "--model.n_embd", "33", "--model.n_head", "3"})
                .find("model.n_embd"),
            std::string::npos);
  EXPECT_EQ(error_of({"--run.precision", "fp32", "--model.n_embd", "33", "--model.n_head", "3"}),
            "");
  EXPECT_NE(error_of({"--parallel.comm", "gloo"}).find("parallel.comm"), std::string::npos);
  // NCCL moves device buffers: asking for it on the cpu backend is a mistake, said up front.
  const std::string nccl_cpu = error_of({"--parallel.comm", "nccl", "--run.backend", "cpu"});
  EXPECT_NE(nccl_cpu.find("parallel.comm"), std::string::npos);
  EXPECT_NE(nccl_cpu.find("run.backend = cuda"), std::string::npos);
  EXPECT_EQ(error_of({"--parallel.comm", "mpi"}), "");
}

TEST(Config, UpdateSkippingSettingsAreChecked) {
  auto expect = [](const std::string& err, const std::string& key, const std::string& what) {
    EXPECT_NE(err.find(key), std::string::npos) << err;
    EXPECT_NE(err.find(what), std::string::npos) << err;
  };
  EXPECT_EQ(error_of({"--train.skip_loss_z", "5", "--train.skip_norm_z", "6"}), "");
  expect(error_of({"--train.skip_loss_z", "-1"}), "train.skip_loss_z", "must be a finite number");
  expect(error_of({"--train.skip_norm_z", "inf"}), "train.skip_norm_z", "must be a finite number");
  expect(error_of({"--train.skip_window", "1"}), "train.skip_window", "must be in [2, 1000000]");
  expect(error_of({"--train.norms_every", "-1"}), "train.norms_every", "must be >= 0");
  EXPECT_EQ(error_of({"--train.norms_every", "10"}), "");
}

// gpt-oss's SwiGLU (model.glu_*): with model.mlp = swiglu only; a limit 0 (no clamps) or one
// that survives fp32; NaN, a non-positive alpha and a huge offset refused.
TEST(Config, GluShapeIsChecked) {
  auto expect = [](const std::string& err, const std::string& what) {
    EXPECT_NE(err.find(what), std::string::npos) << err;
  };
  EXPECT_EQ(error_of({"--model.mlp", "swiglu", "--model.glu_alpha", "1.702", "--model.glu_limit",
                      "7", "--model.glu_offset", "1"}),
            "");
  expect(error_of({"--model.glu_offset", "1"}), "they need model.mlp = swiglu (got gelu)");
  expect(error_of({"--model.mlp", "geglu", "--model.glu_limit", "7"}),
         "they need model.mlp = swiglu (got geglu)");
  expect(error_of({"--model.mlp", "swiglu", "--model.glu_limit", "1e-46"}),
         "model.glu_limit must be 0 (no clamps) or in [1e-6, 1e4]");
  expect(error_of({"--model.mlp", "swiglu", "--model.glu_limit", "nan"}), "model.glu_limit");
  expect(error_of({"--model.mlp", "swiglu", "--model.glu_alpha", "0"}),
         "model.glu_alpha must be in (0, 100]");
  expect(error_of({"--model.mlp", "swiglu", "--model.glu_offset", "1e5"}),
         "model.glu_offset must be in [-1e4, 1e4]");
}

// model.mtp_depth: 0 .. 16 modules, the embedding on the last stage; train.mtp_loss_weight
// finite and >= 0; run.fp8_skip may name the modules' linear layers.
TEST(Config, MultiTokenPredictionIsChecked) {
  auto expect = [](const std::string& err, const std::string& what) {
    EXPECT_NE(err.find(what), std::string::npos) << err;
  };
  EXPECT_EQ(error_of({"--model.mtp_depth", "2", "--train.mtp_loss_weight", "0.3"}), "");
  EXPECT_EQ(error_of({"--model.mtp_depth", "1", "--parallel.pp", "2", "--model.n_layer", "4"}, 2),
            "");
  expect(error_of({"--model.mtp_depth", "17"}), "model.mtp_depth must be 0 .. 16");
  expect(error_of({"--model.mtp_depth", "-1"}), "model.mtp_depth");
  expect(error_of({"--model.mtp_depth", "1", "--train.mtp_loss_weight", "-0.1"}),
         "train.mtp_loss_weight must be a finite number >= 0");
  expect(error_of({"--model.mtp_depth", "1", "--train.mtp_loss_weight", "nan"}),
         "train.mtp_loss_weight");
  // (The modules' blocks are layers n_layer.. : with experts from layer 1 on, theirs too.)
  EXPECT_EQ(error_of({"--model.mtp_depth", "1", "--model.moe_experts", "4", "--model.moe_top_k",
                      "2", "--model.moe_first_dense", "1"}),
            "");
  expect(error_of({"--model.mtp_depth", "1", "--model.tie_embeddings", "false", "--parallel.pp",
                   "2", "--model.n_layer", "4"},
                  2),
         "with an untied head needs parallel.pp = 1");
  EXPECT_EQ(error_of({"--model.mtp_depth", "1", "--parallel.cp", "2"}, 2), "");
  // run.fp8_skip names the modules' blocks' layers and their eh_proj too.
  EXPECT_EQ(error_of({"--model.mtp_depth", "1", "--run.fp8", "tensorwise", "--run.precision",
                      "bf16", "--run.fp8_skip", "mtp/0/eh_proj, mtp/0/mlp/*"}),
            "");
  expect(error_of({"--model.mtp_depth", "1", "--run.fp8", "tensorwise", "--run.precision", "bf16",
                   "--run.fp8_skip", "mtp/1/*"}),
         "mtp/<j>/eh_proj, j < model.mtp_depth");
}

TEST(Config, MilestoneCheckpointsAreChecked) {
  EXPECT_EQ(error_of({"--checkpoint.keep_every", "1000"}), "");
  EXPECT_NE(error_of({"--checkpoint.keep_every", "-5"}).find("checkpoint.keep_every"),
            std::string::npos);
  EXPECT_NE(error_of({"--checkpoint.every", "300", "--checkpoint.keep_every", "1000"})
                .find("must be a multiple of checkpoint.every (300)"),
            std::string::npos);
  EXPECT_EQ(error_of({"--checkpoint.every", "250", "--checkpoint.keep_every", "1000"}), "");
}

TEST(Config, EmbeddingAndHeadRatesAreChecked) {
  auto expect = [](const std::string& err, const std::string& key, const std::string& what) {
    EXPECT_NE(err.find(key), std::string::npos) << err;
    EXPECT_NE(err.find(what), std::string::npos) << err;
  };
  EXPECT_EQ(error_of({"--optim.embedding_lr", "0.01"}), "");
  EXPECT_EQ(error_of({"--model.tie_embeddings", "false", "--optim.head_lr", "1e-4",
                      "--optim.embedding_lr", "0.3", "--optim.name", "muon"}),
            "");
  for (const char* key : {"--optim.embedding_lr", "--optim.head_lr"})
    for (const char* bad : {"-0.1", "nan", "inf"})
      expect(error_of({"--model.tie_embeddings", "false", key, bad}), key + 2,
             "must be a finite number >= 0 (0: train.lr)");
  expect(error_of({"--optim.head_lr", "1e-3"}), "optim.head_lr",
         "needs an untied head (model.tie_embeddings = false)");
  expect(error_of({"--train.lr", "0", "--optim.embedding_lr", "1e-3"}), "optim.embedding_lr",
         "needs train.lr > 0");
}

TEST(Config, WeightDecayScheduleIsChecked) {
  auto expect = [](const std::string& err, const std::string& key, const std::string& what) {
    EXPECT_NE(err.find(key), std::string::npos) << err;
    EXPECT_NE(err.find(what), std::string::npos) << err;
  };
  EXPECT_EQ(error_of({"--optim.weight_decay_schedule", "cosine", "--optim.weight_decay_end", "0.3",
                      "--optim.decay_embeddings", "false"}),
            "");
  expect(error_of({"--optim.weight_decay_schedule", "exponential"}), "optim.weight_decay_schedule",
         "must be constant, linear or cosine (got 'exponential')");
  expect(error_of({"--optim.weight_decay_end", "0.3"}), "optim.weight_decay_end",
         "other than 0 only with a linear or cosine optim.weight_decay_schedule");
  for (const char* bad : {"-0.1", "nan", "inf"}) {
    expect(error_of({"--optim.weight_decay_schedule", "linear", "--optim.weight_decay_end", bad}),
           "optim.weight_decay_end", "must be a finite number >= 0");
    expect(error_of({"--optim.weight_decay", bad}), "optim.weight_decay",
           "must be a finite number >= 0");
  }
  EXPECT_NE(error_of({"--optim.decay_embeddings", "maybe"}).find("optim.decay_embeddings"),
            std::string::npos);
  EXPECT_EQ(error_of({"--optim.ema_decay", "0.999"}), "");
  for (const char* bad : {"1", "-0.1", "nan", "1.5"})
    expect(error_of({"--optim.ema_decay", bad}), "optim.ema_decay", "must be in [0, 1)");
}

TEST(Config, MuonSettingsAreChecked) {
  auto expect = [](const std::string& err, const std::string& key, const std::string& what) {
    EXPECT_NE(err.find(key), std::string::npos) << err;
    EXPECT_NE(err.find(what), std::string::npos) << err;
  };
  EXPECT_EQ(error_of({"--optim.name", "muon"}), "");
  expect(error_of({"--optim.name", "muon", "--optim.muon_lr", "-1"}), "optim.muon_lr",
         "must be a finite number >= 0");
  expect(error_of({"--optim.muon_lr", "nan"}), "optim.muon_lr", "must be a finite number >= 0");
  expect(error_of({"--optim.muon_momentum", "1"}), "optim.muon_momentum", "must be in [0, 1)");
  expect(error_of({"--optim.muon_ns_steps", "0"}), "optim.muon_ns_steps", "must be in [1, 100]");
  expect(error_of({"--optim.muon_adjust_lr", "spectral"}), "optim.muon_adjust_lr",
         "must be original or match_rms_adamw (got 'spectral')");
  EXPECT_NE(error_of({"--optim.muon_nesterov", "sometimes"}).find("optim.muon_nesterov"),
            std::string::npos);
  EXPECT_EQ(error_of({"--optim.name", "muon", "--optim.muon_adjust_lr", "match_rms_adamw",
                      "--optim.muon_nesterov", "false", "--optim.muon_ns_steps", "7"}),
            "");
}

TEST(Config, PaddedVocab) {
  Config c;
  EXPECT_EQ(c.padded_vocab_size(), 50304);
  c.model.vocab_size = 300;
  EXPECT_EQ(c.padded_vocab_size(), 384);
  c.parallel.tp = 2;
  c.model.vocab_size = 50257;
  EXPECT_EQ(c.padded_vocab_size(), 50432);
}

}  // namespace
}  // namespace triad
