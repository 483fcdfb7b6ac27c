#include "bench_fim.h"

#include <boost/program_options.hpp>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <string_view>
#include <utility>

#include "triad/core/error.h"
#include "triad/data/fim.h"
#include "triad/data/loader.h"
#include "triad/data/tokenizer.h"
#include "triad/train/config.h"
#include "triad/train/positional_arguments.h"

namespace po = boost::program_options;

namespace triad {

namespace {

// Seconds to read n sequences of src (their inputs and targets into in, tg), the best of
// `repeat` rounds, round r reading sequences [r·n, (r + 1)·n) where the shards hold them (else
// [0, n)): the rearrangement of text already seen is not timed again (the tokenizer's cache of
// encoded words stays warm from round to round, as it does in a long run).
double time_reads(const SequenceSource& src, int64_t n, int repeat, std::vector<int32_t>& in,
                  std::vector<int32_t>& tg) {
  double best = 1e300;
  const size_t T = size_t(src.seq_len());
  for (int r = 0; r < repeat; ++r) {
    const int64_t first = (r + 1) * n <= src.num_sequences() ? r * n : 0;
    const auto t0 = std::chrono::steady_clock::now();
    for (int64_t k = 0; k < n; ++k)
      src.read(first + k, in.data() + size_t(k) * T, tg.data() + size_t(k) * T);
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    best = std::min(best, s);
  }
  return best;
}

// parse_fim checks these options as a run's config and names its keys; the message says which
// option of this command holds the bad value instead.
std::string as_options(std::string msg) {
  static const std::pair<const char*, const char*> names[] = {
      {"config: ", "fim: "},
      {"model.vocab_size", "--vocab-size"},
      {"data.vocab", "--vocab"},
      {"data.fim_tokens", "--tokens"},
      {"data.fim_split", "--split"},
      {"data.fim_granularity", "--granularity"},
      {"data.fim_spm_rate", "--spm-rate"},
      {"data.fim_rate", "--rate"},
      {"train.seed", "--seed"}};
  for (const auto& [key, option] : names)
    for (size_t at = msg.find(key); at != std::string::npos; at = msg.find(key, at))
      msg.replace(at, std::string_view(key).size(), option);
  return msg;
}

}  // namespace

int bench_fim(const std::vector<std::string>& args) {
  std::string data, vocab, dump;
  DataConfig fim;  // the options data.fim_* (parse_fim checks them as a run's config)
  int seq_len = 1024, repeat = 3, vocab_size = 0;
  int64_t sequences = 512;
  uint64_t seed = 1;
  po::options_description desc("fim options");
  desc.add_options()("help,h", "show this help")(
      "data", po::value(&data), "token shards (a glob), e.g. data/shards/default_train_*.bin")(
      "vocab", po::value(&vocab)->default_value("data/vocab/gpt2.tiktoken"),
      "the shards' tokenizer")("vocab-size", po::value(&vocab_size)->default_value(0),
                               "model.vocab_size (0: the tokenizer's)")(
      "tokens", po::value(&fim.fim_tokens),
      "data.fim_tokens: \"PREFIX, MIDDLE, SUFFIX[, PAD]\" (PAD between characters), ids or the "
      "tokenizer's special tokens")("split", po::value(&fim.fim_split)->default_value("none"),
                                    "data.fim_split: an id, or none")(
      "granularity", po::value(&fim.fim_granularity)->default_value("character"),
      "data.fim_granularity: character or token")(
      "rate", po::value(&fim.fim_rate)->default_value(0.5), "data.fim_rate")(
      "spm-rate", po::value(&fim.fim_spm_rate)->default_value(0.5), "data.fim_spm_rate")(
      "seq-len", po::value(&seq_len)->default_value(1024), "tokens per sequence")(
      "sequences", po::value(&sequences)->default_value(512), "sequences read (the first ones)")(
      "seed", po::value(&seed)->default_value(1), "the rearrangement's seed (train.seed)")(
      "repeat", po::value(&repeat)->default_value(3),
      "timed rounds, each on the next --sequences where the shards hold them (the best counts)")(
      "dump", po::value(&dump),
      "write the rearranged sequences' inputs to this file (int32, sequences × seq-len)");
  po::variables_map vm;
  try {
    const po::parsed_options parsed = po::command_line_parser(args).options(desc).run();
    reject_positional_arguments(parsed, "fim",
                                "every option starts with --; see 'triad-bench fim --help'");
    po::store(parsed, vm);
    if (vm.count("help")) {
      std::cout << "usage: triad-bench fim [OPTIONS]\n" << desc;
      return 0;
    }
    po::notify(vm);
  } catch (const po::error& e) {
    fail("fim: ", e.what(), " (see 'triad-bench fim --help')");
  }
  TRIAD_CHECK(!data.empty(), "fim: give --data (token shards)");
  TRIAD_CHECK(!vm.count("dump") || !dump.empty(), "fim: --dump is empty (name the file to write)");
  TRIAD_CHECK(dump.empty() || !std::filesystem::is_directory(dump), "fim: --dump ", dump,
              " is a directory (name the file to write)");
  TRIAD_CHECK(seq_len >= 1 && sequences >= 1 && repeat >= 1 && vocab_size >= 0,
              "fim: --seq-len, --sequences and --repeat must be >= 1, --vocab-size >= 0");
  // (a negative or non-finite rate: parse_fim says what --rate must be)
  TRIAD_CHECK(fim.fim_rate != 0, "fim: --rate must be > 0 (0: no rearrangement to time)");
  const Tokenizer tok = Tokenizer::from_file(vocab);
  if (vocab_size == 0) vocab_size = tok.vocab_size();
  fim.vocab = vocab;  // (names in --tokens are the tokenizer's special tokens)
  FimSpec f;
  try {
    f = parse_fim(fim, vocab_size, seed, &tok);
  } catch (const Error& e) {
    throw Error(as_options(e.what()));
  }
  f.tokenizer = &tok;
  SequenceSource src(data, "--data", seq_len, vocab_size);
  sequences = std::min(sequences, src.num_sequences());
  const size_t n = size_t(sequences) * size_t(seq_len);
  std::vector<int32_t> in(n), tg(n);
  (void)time_reads(src, sequences, repeat, in, tg);  // the shards' pages read once first
  const double plain = time_reads(src, sequences, repeat, in, tg);
  src.set_fim(f);
  const double rearranged = time_reads(src, sequences, repeat, in, tg);
  for (int64_t k = 0; k < sequences; ++k)  // sequences [0, n) for --dump
    src.read(k, in.data() + size_t(k) * size_t(seq_len), tg.data() + size_t(k) * size_t(seq_len));
  const double toks = double(n);
  std::printf(
      "triad-bench fim: %lld sequences of %d tokens (%s, rate %.2f, split %s), best of %d\n"
      "  plain reading     %10.2f M tokens/s\n"
      "  rearranged (%s) %8.2f M tokens/s (%.3f s; the rearrangement alone %.2f M tokens/s)\n",
      static_cast<long long>(sequences), seq_len, data.c_str(), fim.fim_rate, fim.fim_split.c_str(),
      repeat, toks / plain / 1e6, fim.fim_granularity.c_str(), toks / rearranged / 1e6, rearranged,
      toks / std::max(rearranged - plain, 1e-12) / 1e6);
  std::printf("RESULT fim granularity=%s tokens=%.0f plain_s=%.6f rearranged_s=%.6f\n",
              fim.fim_granularity.c_str(), toks, plain, rearranged);
  if (!dump.empty()) {
    std::ofstream out(dump, std::ios::binary);
    out.write(reinterpret_cast<const char*>(in.data()), std::streamsize(n * sizeof(int32_t)));
    out.close();  // (the buffered bytes' failure, a full disk, shows at the close)
    TRIAD_CHECK(!out.fail(), "fim: cannot write --dump ", dump);
  }
  return 0;
}

}  // namespace triad
