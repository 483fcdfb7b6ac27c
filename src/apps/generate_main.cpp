// triad-generate: sample a continuation of a prompt from a checkpoint's weights.
#include <boost/program_options.hpp>
#include <iostream>

#include "triad/core/error.h"
#include "triad/core/rng.h"
#include "triad/data/tokenizer.h"
#include "triad/io/checkpoint.h"
#include "triad/kernels/backend.h"
#include "triad/model/gpt.h"
#include "triad/train/app_main.h"
#include "triad/train/sampler.h"

namespace po = boost::program_options;

int main(int argc, char** argv) {
  return triad::run_main(argc, argv, "triad-generate", [&](MPI_Comm world) {
    std::string checkpoint, run_dir, vocab, prompt;
    int64_t length = 0, seed = 0;
    double temperature = 0;
    int top_k = 0;
    po::options_description desc("usage: triad-generate (--checkpoint FILE | --run DIR) [options]");
    desc.add_options()("help,h", "print this help")("checkpoint", po::value(&checkpoint),
                                                    "checkpoint file (.h5)")(
        "run", po::value(&run_dir),
        "run directory: use the newest complete checkpoint of RUN/ckpt")(
        "vocab", po::value(&vocab)->default_value("data/vocab/gpt2.tiktoken"),
        "GPT-2 BPE ranks file (tiktoken format)")("prompt", po::value(&prompt)->default_value(""),
                                                  "prompt text (empty: <|endoftext|>)")(
        "length", po::value(&length)->default_value(128), "tokens to generate")(
        "temperature", po::value(&temperature)->default_value(0.8), "sampling temperature")(
        "top-k", po::value(&top_k)->default_value(40), "sample among the k likeliest (0: all)")(
        "seed", po::value(&seed)->default_value(1), "sampling seed");
    po::variables_map vm;
    try {
      po::store(po::parse_command_line(argc, argv, desc), vm);
      po::notify(vm);
    } catch (const po::error& e) {
      triad::fail("command line: ", e.what());
    }
    int rank = 0, size = 1;
    MPI_Comm_rank(world, &rank);
    MPI_Comm_size(world, &size);
    if (vm.count("help")) {
      if (rank == 0) std::cout << desc;
      return 0;
    }
    TRIAD_CHECK(size == 1, "triad-generate runs on one rank (got ", size, ")");
    TRIAD_CHECK(length >= 0, "--length must be >= 0 (got ", length, ")");
    TRIAD_CHECK(temperature > 0, "--temperature must be > 0 (got ", temperature, ")");
    TRIAD_CHECK(top_k >= 0, "--top-k must be >= 0 (got ", top_k, ")");
    TRIAD_CHECK(seed >= 0, "--seed must be >= 0 (got ", seed, ")");
    if (checkpoint.empty()) {
      TRIAD_CHECK(!run_dir.empty(), "give --checkpoint FILE or --run DIR");
      checkpoint = triad::find_resume_checkpoint(world, run_dir + "/ckpt");
      TRIAD_CHECK(!checkpoint.empty(), "no complete checkpoint in ", run_dir, "/ckpt");
    }
    const triad::Tokenizer tok = triad::Tokenizer::from_file(vocab);
    const triad::CheckpointState st = triad::read_checkpoint_state(world, checkpoint);
    const auto& m = st.model;
    triad::GptShape shape{int(m.n_layer), int(m.n_head),     int(m.n_embd),
                          int(m.seq_len), int(m.vocab_size), int(m.padded_vocab_size)};
    auto be = triad::make_cpu_backend();
    triad::Gpt model(shape, 1, *be);
    std::vector<triad::TensorRef> refs;
    for (const auto& p : model.specs()) {
      triad::TensorRef r{p.name, p.shape, model.params() + p.offset, -1};
      if (p.name == "wte/weight") r.valid_rows = m.vocab_size;
      refs.push_back(std::move(r));
    }
    triad::load_checkpoint_tensors(world, checkpoint, {{"model", refs}});
    model.params_updated();
    std::vector<int32_t> ids =
        prompt.empty() ? std::vector<int32_t>{tok.eot()} : tok.encode(prompt);
    triad::Rng rng(static_cast<uint64_t>(seed));
    const auto out = triad::sample_continuation(model, ids, {length, temperature, top_k}, rng);
    std::cout << prompt << tok.decode(out) << std::endl;
    return 0;
  });
}
