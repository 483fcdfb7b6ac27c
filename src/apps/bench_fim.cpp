#include "bench_fim.h"

#include <boost/program_options.hpp>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>

#include "triad/core/comma_list.h"
#include "triad/core/error.h"
#include "triad/data/fim.h"
#include "triad/data/loader.h"
#include "triad/data/tokenizer.h"

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

}  // namespace

int bench_fim(const std::vector<std::string>& args) {
  std::string data, vocab, tokens, split, granularity, dump;
  int seq_len = 1024, repeat = 3;
  int64_t sequences = 512;
  double rate = 0.5, spm_rate = 0.5;
  uint64_t seed = 1;
  po::options_description desc("fim options");
  desc.add_options()("help,h", "show this help")(
      "data", po::value(&data), "token shards (a glob), e.g. data/shards/default_train_*.bin")(
      "vocab", po::value(&vocab)->default_value("data/vocab/gpt2.tiktoken"),
      "the shards' tokenizer")("tokens", po::value(&tokens),
                               "\"PREFIX, MIDDLE, SUFFIX, PAD\" token ids (PAD: characters only)")(
      "split", po::value(&split)->default_value("none"),
      "the fragments' separator id (data.fim_split), or none")(
      "granularity", po::value(&granularity)->default_value("character"), "character or token")(
      "rate", po::value(&rate)->default_value(0.5), "data.fim_rate")(
      "spm-rate", po::value(&spm_rate)->default_value(0.5), "data.fim_spm_rate")(
      "seq-len", po::value(&seq_len)->default_value(1024), "tokens per sequence")(
      "sequences", po::value(&sequences)->default_value(512), "sequences read (the first ones)")(
      "seed", po::value(&seed)->default_value(1), "the rearrangement's seed (train.seed)")(
      "repeat", po::value(&repeat)->default_value(3),
      "timed rounds, each on the next --sequences where the shards hold them (the best counts)")(
      "dump", po::value(&dump),
      "write the rearranged sequences' inputs to this file (int32, sequences × seq-len)");
  po::variables_map vm;
  try {
    po::store(po::command_line_parser(args).options(desc).run(), vm);
    if (vm.count("help")) {
      std::cout << "usage: triad-bench fim [OPTIONS]\n" << desc;
      return 0;
    }
    po::notify(vm);
  } catch (const po::error& e) {
    fail("fim: ", e.what(), " (see 'triad-bench fim --help')");
  }
  TRIAD_CHECK(!data.empty(), "fim: give --data (token shards)");
  TRIAD_CHECK(granularity == "character" || granularity == "token",
              "fim: --granularity must be character or token (got '", granularity, "')");
  TRIAD_CHECK(seq_len >= 1 && sequences >= 1 && repeat >= 1,
              "fim: --seq-len, --sequences and --repeat must be >= 1");
  TRIAD_CHECK(rate > 0 && rate <= 1 && spm_rate >= 0 && spm_rate <= 1,
              "fim: --rate must be in (0, 1] and --spm-rate in [0, 1]");
  const Tokenizer tok = Tokenizer::from_file(vocab);
  const bool chars = granularity == "character";
  const auto id_of = [](const std::string& item, const char* option) {
    size_t used = 0;
    int64_t v = -1;
    try {
      v = std::stoll(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    TRIAD_CHECK(used == item.size() && v >= 0 && v < (int64_t(1) << 31), "fim: ", option, ": '",
                item, "' is not a token id");
    return v;
  };
  std::vector<int64_t> ids;
  for (const std::string& item : split_comma_list(tokens)) ids.push_back(id_of(item, "--tokens"));
  TRIAD_CHECK(ids.size() == (chars ? 4u : 3u), "fim: --tokens must be ", chars ? "four" : "three",
              " ids \"PREFIX, MIDDLE, SUFFIX", chars ? ", PAD\"" : "\"");
  int64_t vocab_size = tok.vocab_size();
  for (int64_t id : ids) vocab_size = std::max(vocab_size, id + 1);
  SequenceSource src(data, "--data", seq_len, int(vocab_size));
  sequences = std::min(sequences, src.num_sequences());
  FimSpec f;
  f.rate = rate;
  f.spm_rate = spm_rate;
  f.prefix = int32_t(ids[0]);
  f.middle = int32_t(ids[1]);
  f.suffix = int32_t(ids[2]);
  f.pad = chars ? int32_t(ids[3]) : -1;
  f.characters = chars;
  f.tokenizer = &tok;
  f.seed = seed;
  if (split != "none") f.split = int32_t(id_of(split, "--split"));
  for (size_t i = 0; i < ids.size(); ++i)
    for (size_t j = 0; j <= i; ++j)
      TRIAD_CHECK((j < i ? ids[i] != ids[j] : true) && ids[i] != f.split, "fim: --tokens '", tokens,
                  "' must be distinct ids, none of them --split");
  const size_t n = size_t(sequences) * size_t(seq_len);
  std::vector<int32_t> in(n), tg(n);
  std::vector<int32_t> in2(size_t(std::min(src.num_sequences(), sequences * repeat)) *
                           size_t(seq_len)),
      tg2(in2.size());
  (void)time_reads(src, std::min(src.num_sequences(), sequences * repeat), 1, in2, tg2);  // pages
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
      static_cast<long long>(sequences), seq_len, data.c_str(), rate, split.c_str(), repeat,
      toks / plain / 1e6, granularity.c_str(), toks / rearranged / 1e6, rearranged,
      toks / std::max(rearranged - plain, 1e-12) / 1e6);
  std::printf("RESULT fim granularity=%s tokens=%.0f plain_s=%.6f rearranged_s=%.6f\n",
              granularity.c_str(), toks, plain, rearranged);
  if (!dump.empty()) {
    std::ofstream out(dump, std::ios::binary);
    out.write(reinterpret_cast<const char*>(in.data()), std::streamsize(n * sizeof(int32_t)));
    TRIAD_CHECK(out.good(), "fim: cannot write --dump ", dump);
  }
  return 0;
}

}  // namespace triad
