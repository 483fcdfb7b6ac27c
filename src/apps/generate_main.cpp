// triad-generate: sample a continuation of a prompt from a checkpoint's weights.
#include <omp.h>

#include <algorithm>
#include <array>
#include <boost/program_options.hpp>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "triad/core/comma_list.h"
#include "triad/core/error.h"
#include "triad/core/rng.h"
#include "triad/core/thread_count.h"
#include "triad/data/chat_format.h"
#include "triad/data/json_lines.h"
#include "triad/data/tokenizer.h"
#include "triad/io/checkpoint.h"
#include "triad/kernels/backend.h"
#include "triad/kernels/cuda_backend.h"
#include "triad/kernels/cuda_comm.h"
#include "triad/model/gpt.h"
#include "triad/parallel/comm.h"
#include "triad/parallel/process_grid.h"
#include "triad/train/app_main.h"
#include "triad/train/model_tensors.h"
#include "triad/train/positional_arguments.h"
#include "triad/train/run_plan.h"
#include "triad/train/sample_printer.h"
#include "triad/train/sampler.h"
#include "triad/train/speculative.h"

namespace po = boost::program_options;

namespace {

// This rank's index among the ranks of its node.
int node_rank(MPI_Comm world) {
  MPI_Comm node;
  TRIAD_MPI_CHECK(MPI_Comm_split_type(world, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node));
  const int r = triad::rank_in(node);
  TRIAD_MPI_CHECK(MPI_Comm_free(&node));
  return r;
}

// "--prompt-ids" (`what`): ids in [0, vocab_size) separated by white space, at least one.
std::vector<int32_t> parse_ids(const std::string& text, int64_t vocab_size,
                               const char* what = "--prompt-ids") {
  std::istringstream in(text);
  std::vector<int32_t> ids;
  std::string word;
  while (in >> word) {
    size_t used = 0;
    long long v = -1;
    try {
      v = std::stoll(word, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    TRIAD_CHECK(used == word.size() && v >= 0 && v < vocab_size, what, ": '", word,
                "' is not a token id of this model (0 .. ", vocab_size - 1, ")");
    ids.push_back(int32_t(v));
  }
  TRIAD_CHECK(!ids.empty(), what, ": no token ids");
  return ids;
}

// --fim-tokens "P, M, S": three distinct ids of the model, each a number or the text of one of
// the tokenizer's special tokens (StarCoder's "<fim_prefix>, <fim_middle>, <fim_suffix>").
std::array<int32_t, 3> parse_fim_tokens(const std::string& text, const triad::Tokenizer& tok,
                                        int64_t vocab_size) {
  std::vector<int32_t> ids;
  for (const std::string& item : triad::split_comma_list(text)) {
    const int32_t special = tok.special_id(item);
    TRIAD_CHECK(special >= 0 || item.find_first_not_of("0123456789+- \t") == std::string::npos,
                "--fim-tokens: '", item,
                "' is not a special token of the tokenizer (--vocab) nor a token id");
    const std::vector<int32_t> id =
        special >= 0 ? std::vector<int32_t>{special} : parse_ids(item, vocab_size, "--fim-tokens");
    TRIAD_CHECK(id.size() == 1, "--fim-tokens: '", item, "' is not one token");
    ids.push_back(id[0]);
    TRIAD_CHECK(ids.back() < vocab_size, "--fim-tokens: '", item, "' is token ", ids.back(),
                ", beyond the model's ", vocab_size, " tokens");
  }
  TRIAD_CHECK(ids.size() == 3 && ids[0] != ids[1] && ids[1] != ids[2] && ids[0] != ids[2],
              "--fim-tokens '", text,
              "' must be three distinct token ids \"PREFIX, MIDDLE, SUFFIX\" (numbers or the "
              "tokenizer's special tokens)");
  return {ids[0], ids[1], ids[2]};
}

// The prompt of a middle between `prefix` and `suffix`, as data.fim_* trains it after a document
// start: PSM <P> prefix <S> suffix <M>, or SPM <P> <S> suffix <M> prefix; each text encoded on its
// own as a continuation (no SentencePiece space in front), as between characters.
std::vector<int32_t> infill_prompt(const triad::Tokenizer& tok, const std::string& prefix,
                                   const std::string& suffix, const std::array<int32_t, 3>& fim,
                                   bool spm) {
  const auto [P, M, S] = fim;
  std::vector<int32_t> ids;
  const int32_t start = tok.prompt_start() >= 0 ? tok.prompt_start() : tok.document_start();
  if (start >= 0) ids.push_back(start);
  ids.push_back(P);
  if (spm) {
    ids.push_back(S);
    tok.encode_append(suffix, ids, true);
    ids.push_back(M);
    tok.encode_append(prefix, ids, true);
  } else {
    tok.encode_append(prefix, ids, true);
    ids.push_back(S);
    tok.encode_append(suffix, ids, true);
    ids.push_back(M);
  }
  return ids;
}

}  // namespace

int main(int argc, char** argv) {
  return triad::run_main(argc, argv, "triad-generate", [&](MPI_Comm world) {
    std::string checkpoint, run_dir, vocab, prompt, prompt_ids, backend, precision, output, chat,
        system, messages, suffix, fim_tokens, draft_checkpoint;
    int64_t seed = 0;
    triad::SampleOptions opt;  // the sampling options parse into it
    std::vector<std::string> stops;
    int threads = 0, samples = 1, batch = 0, tp = 1, pp = 1, logprobs = 0, draft_tokens = 4;
    bool no_cache = false, timing = false, stop_at_eot = false, ema = false, fim_spm = false,
         stream = false;
    po::options_description desc("usage: triad-generate (--checkpoint FILE | --run DIR) [options]");
    desc.add_options()("help,h", "print this help")("checkpoint", po::value(&checkpoint),
                                                    "checkpoint file (.h5)")(
        "run", po::value(&run_dir),
        "run directory: use the newest complete checkpoint of RUN/ckpt")(
        "ema", po::bool_switch(&ema),
        "use the checkpoint's moving average of the weights (/optimizer/ema, kept by "
        "optim.ema_decay), not its weights")(
        "vocab", po::value(&vocab)->default_value("data/vocab/gpt2.tiktoken"),
        "tokenizer: GPT-2's BPE ranks file, or a tokenizer description (triad-convert "
        "tokenizer)")("prompt", po::value(&prompt)->default_value(""),
                      "prompt text (after the tokenizer's prompt start, e.g. Llama 3's "
                      "<|begin_of_text|>; empty and none: its document start, GPT-2's "
                      "<|endoftext|>)")("length", po::value(&opt.length)->default_value(128),
                                        "tokens to generate")(
        "temperature", po::value(&opt.temperature)->default_value(0.8), "sampling temperature")(
        "top-k", po::value(&opt.top_k)->default_value(40), "sample among the k likeliest (0: all)")(
        "top-p", po::value(&opt.top_p)->default_value(1.0),
        "nucleus sampling among the top-k: the fewest likeliest tokens whose probability reaches "
        "P (1: off)")(
        "min-p", po::value(&opt.min_p)->default_value(0.0),
        "then min-p: only the candidates at least P times as likely as the likeliest (0: off)")(
        "repetition-penalty", po::value(&opt.repetition_penalty)->default_value(1.0),
        "each token already in the prompt or the continuation: its logit divided by R where "
        "positive, multiplied by R where negative (Hugging Face's; 1: off)")(
        "frequency-penalty", po::value(&opt.frequency_penalty)->default_value(0.0),
        "each token the continuation holds n times: its logit lowered by n·F (OpenAI's; 0: off)")(
        "presence-penalty", po::value(&opt.presence_penalty)->default_value(0.0),
        "each token the continuation holds: its logit lowered by P (OpenAI's; 0: off)")(
        "stop", po::value(&stops)->composing(),
        "end a sample where its text first holds this string, which is cut off with what follows "
        "(repeatable; --output ids: the ids up to the one completing it)")(
        "samples", po::value(&samples)->default_value(1),
        "samples of the same prompt, drawn --batch at a time (the seed and --batch reproduce "
        "them all)")(
        "batch", po::value(&batch)->default_value(8),
        "samples generated together, in lockstep: each step reads the weights once for all of "
        "them (memory grows with it)")(
        "stop-at-eot", po::bool_switch(&stop_at_eot),
        "end a sample at one of the tokenizer's stop tokens (GPT-2: <|endoftext|>)")(
        "seed", po::value(&seed)->default_value(1), "sampling seed")(
        "prompt-ids", po::value(&prompt_ids),
        "the prompt as token ids separated by spaces (instead of --prompt)")(
        "chat", po::value(&chat),
        ("--prompt is a user's message to an instruct model, put in this chat format: " +
         triad::chat_format_names("auto") +
         " (the tokenizer description's); the reply ends at a stop token and is printed alone")
            .c_str())("system", po::value(&system)->default_value(""),
                      "with --chat: a system message")(
        "messages", po::value(&messages),
        "with --chat, instead of --prompt: a JSON Lines file holding one conversation "
        "({\"messages\": [{\"role\": ..., \"content\": ...}, ...]}) that ends with the user's "
        "message; the model writes the next reply")(
        "suffix", po::value(&suffix),
        "fill in the middle: --prompt is the text before it and this the text after it; a "
        "model trained with data.fim_* writes the middle, which ends at a stop token, and the "
        "three are printed together (needs --fim-tokens)")(
        "fim-tokens", po::value(&fim_tokens),
        "with --suffix: the sentinel tokens \"PREFIX, MIDDLE, SUFFIX\" of the model's "
        "training (data.fim_tokens' first three), as ids or the tokenizer's special tokens "
        "(\"<fim_prefix>, <fim_middle>, <fim_suffix>\")")(
        "fim-spm", po::bool_switch(&fim_spm),
        "with --suffix: the prompt in SPM order (<P> <S> suffix <M> prefix) instead of PSM's "
        "(<P> prefix <S> suffix <M>)")("backend", po::value(&backend)->default_value("cpu"),
                                       "cpu or cuda")(
        "precision", po::value(&precision)->default_value("auto"),
        "fp32, bf16, or auto (bf16 on cuda, fp32 on cpu)")(
        "threads", po::value(&threads)->default_value(0), "CPU threads (0: OpenMP's default)")(
        "no-kv-cache", po::bool_switch(&no_cache),
        "recompute the whole context for every token instead of keeping keys and values")(
        "output", po::value(&output)->default_value("text"),
        "text (the prompt and its continuation), ids (the continuation's token ids), or "
        "logprobs: a line per generated token, its id, its log-probability under the model (the "
        "log-softmax of its logits over the tokenizer's ids, before penalties, temperature and "
        "filters) and the "
        "--logprobs likeliest ids with theirs, as id:logprob, tab-separated; samples separated "
        "by a line ---")("logprobs", po::value(&logprobs)->default_value(5),
                         "with --output logprobs: the likeliest ids listed beside each token")(
        "stream", po::bool_switch(&stream),
        "print each token as it is drawn, one sample at a time (with --samples, give --batch 1); "
        "the output reads as without it")("timing", po::bool_switch(&timing),
                                          "print the generation speed to stderr")(
        "tp", po::value(&tp)->default_value(1),
        "tensor-parallel ranks (a model too large for one device: mpirun -np tp·pp)")(
        "pp", po::value(&pp)->default_value(1), "pipeline stages (layers split evenly)")(
        "draft", po::value(&draft_checkpoint),
        "speculative decoding: a small model over the same token ids (a checkpoint file, or a run "
        "directory: its newest complete checkpoint; loaded whole on every rank) drafts tokens, "
        "or `mtp`: the model's own first multi-token prediction module (model.mtp_depth; one "
        "token a round, on one rank), which the model checks several at a time; the "
        "samples are distributed as without it (greedy, --top-k 1: the model's greedy tokens, up "
        "to the rounding of its several rows a pass), drawn one at a time")(
        "draft-tokens", po::value(&draft_tokens)->default_value(4),
        "with --draft: the tokens drafted a round (1 .. 32)");
    po::variables_map vm;
    try {
      const po::parsed_options parsed = po::parse_command_line(argc, argv, desc);
      triad::reject_positional_arguments(parsed, "command line",
                                         "every option starts with --; see triad-generate --help");
      po::store(parsed, vm);
      po::notify(vm);
    } catch (const po::error& e) {
      triad::fail("command line: ", e.what());
    }
    const int rank = triad::rank_in(world), size = triad::size_of(world);
    if (vm.count("help")) {
      if (rank == 0) std::cout << desc;
      return 0;
    }
    TRIAD_CHECK(tp >= 1 && pp >= 1, "--tp and --pp must be >= 1 (got ", tp, ", ", pp, ")");
    TRIAD_CHECK(size == int64_t(tp) * pp, "triad-generate runs on --tp × --pp = ", int64_t(tp) * pp,
                " ranks (got ", size, ")");
    TRIAD_CHECK(opt.length >= 0, "--length must be >= 0 (got ", opt.length, ")");
    if (const triad::SampleRangeError bad = triad::sample_range_error(opt); !bad.name.empty()) {
      std::string option = bad.name;  // the field's name as the option's: top_p → --top-p
      std::replace(option.begin(), option.end(), '_', '-');
      triad::fail("--", option, " ", bad.rule, " (got ", bad.value, ")");
    }
    for (const std::string& s : stops) TRIAD_CHECK(!s.empty(), "--stop: an empty string");
    TRIAD_CHECK(samples >= 1, "--samples must be >= 1 (got ", samples, ")");
    TRIAD_CHECK(batch >= 1, "--batch must be >= 1 (got ", batch, ")");
    // Several samples go through the model together (in lockstep, on any grid): a grid draws
    // what one rank with the same --batch draws.
    const bool drafting = vm.count("draft") != 0;
    TRIAD_CHECK(!drafting || !draft_checkpoint.empty(), "--draft is empty (give a checkpoint)");
    TRIAD_CHECK(drafting || vm["draft-tokens"].defaulted(), "--draft-tokens needs --draft");
    TRIAD_CHECK(draft_tokens >= 1 && draft_tokens <= 32, "--draft-tokens must be in [1, 32] (got ",
                draft_tokens, ")");
    TRIAD_CHECK(!drafting || vm["batch"].defaulted() || batch == 1,
                "--draft decodes one sample at a time: give --batch 1 (got --batch ", batch, ")");
    TRIAD_CHECK(!drafting || !no_cache,
                "--draft checks the drafted tokens against the KV cache: not with --no-kv-cache");
    TRIAD_CHECK(draft_checkpoint != "mtp" || vm["draft-tokens"].defaulted() || draft_tokens == 1,
                "--draft mtp drafts one token a round (with the first multi-token prediction "
                "module): --draft-tokens must be 1 (got ",
                draft_tokens, ")");
    if (draft_checkpoint == "mtp") draft_tokens = 1;
    TRIAD_CHECK(draft_checkpoint != "mtp" || tp * pp == 1,
                "--draft mtp runs on one rank (got --tp ", tp, " --pp ", pp, ")");
    const int together = drafting ? 1 : std::min(samples, batch);
    TRIAD_CHECK(!stream || together == 1, "--stream prints one sample at a time: with --samples ",
                samples, ", give --batch 1 (got --batch ", batch, ")");
    TRIAD_CHECK(seed >= 0, "--seed must be >= 0 (got ", seed, ")");
    TRIAD_CHECK(backend == "cpu" || backend == "cuda", "--backend must be cpu or cuda (got '",
                backend, "')");
    TRIAD_CHECK(backend != "cuda" || triad::cuda_device_available(),
                "--backend cuda: ", triad::cuda_device_description(),
                "; --backend cpu runs everywhere");
    TRIAD_CHECK(precision == "auto" || precision == "fp32" || precision == "bf16",
                "--precision must be auto, fp32 or bf16 (got '", precision, "')");
    TRIAD_CHECK(triad::valid_thread_count(threads), "--threads must be in [0, ", triad::kMaxThreads,
                "] (0: one per core), got ", threads);
    TRIAD_CHECK(output == "text" || output == "ids" || output == "logprobs",
                "--output must be text, ids or logprobs (got '", output, "')");
    TRIAD_CHECK(logprobs >= 0, "--logprobs must be >= 0 (got ", logprobs, ")");
    TRIAD_CHECK(vm["logprobs"].defaulted() || output == "logprobs",
                "--logprobs needs --output logprobs");
    TRIAD_CHECK(!(vm.count("prompt-ids") && !vm["prompt"].defaulted()),
                "give --prompt or --prompt-ids, not both");
    TRIAD_CHECK(!(vm.count("prompt-ids") && vm.count("chat")),
                "--chat formats --prompt, not --prompt-ids");
    TRIAD_CHECK(vm.count("chat") || vm["system"].defaulted(), "--system needs --chat");
    // An empty path (an unset shell variable) must not mean "not given".
    TRIAD_CHECK(!vm.count("messages") || !messages.empty(), "--messages is empty (give a file)");
    TRIAD_CHECK(messages.empty() || vm.count("chat"), "--messages needs --chat");
    TRIAD_CHECK(messages.empty() || (vm["prompt"].defaulted() && vm["system"].defaulted()),
                "--messages holds the conversation: drop --prompt and --system");
    const bool infill = vm.count("suffix") != 0;
    TRIAD_CHECK(!infill || vm.count("fim-tokens"),
                "--suffix needs --fim-tokens \"PREFIX, MIDDLE, SUFFIX\" (the model's sentinels)");
    TRIAD_CHECK(infill || (!vm.count("fim-tokens") && !fim_spm),
                "--fim-tokens and --fim-spm need --suffix");
    TRIAD_CHECK(!infill || (!vm.count("prompt-ids") && !vm.count("chat")),
                "--suffix fills in the middle after --prompt: not with --prompt-ids or --chat");
    if (threads > 0) omp_set_num_threads(threads);
    const bool bf16 = precision == "bf16" || (precision == "auto" && backend == "cuda");
    TRIAD_CHECK(!vm.count("checkpoint") || !vm.count("run"),
                "--checkpoint and --run both name the weights: give one");
    TRIAD_CHECK(!vm.count("checkpoint") || !checkpoint.empty(), "--checkpoint is empty");
    TRIAD_CHECK(!vm.count("run") || !run_dir.empty(), "--run is empty");
    if (checkpoint.empty()) {
      TRIAD_CHECK(!run_dir.empty(), "give --checkpoint FILE or --run DIR");
      checkpoint = triad::find_resume_checkpoint(world, run_dir + "/ckpt");
      TRIAD_CHECK(!checkpoint.empty(), "no complete checkpoint in ", run_dir, "/ckpt");
    }
    const triad::Tokenizer tok = triad::Tokenizer::from_file(vocab);
    const triad::CheckpointState st = triad::read_checkpoint_state(world, checkpoint);
    const auto& m = st.model;
    // --draft CKPT|RUN: its checkpoint found and read (what it holds checked) before any weights
    // load; rank 0 decides whether it names a directory, for all ranks alike.
    const bool module_draft = drafting && draft_checkpoint == "mtp";
    triad::CheckpointState ds;
    if (drafting && !module_draft) {
      int is_dir = rank == 0 && std::filesystem::is_directory(draft_checkpoint) ? 1 : 0;
      TRIAD_MPI_CHECK(MPI_Bcast(&is_dir, 1, MPI_INT, 0, world));
      if (is_dir) {
        const std::string dir = draft_checkpoint;
        draft_checkpoint = triad::find_resume_checkpoint(world, dir + "/ckpt");
        TRIAD_CHECK(!draft_checkpoint.empty(), "--draft ", dir, ": no complete checkpoint in ", dir,
                    "/ckpt");
      }
      ds = triad::read_checkpoint_state(world, draft_checkpoint);
      TRIAD_CHECK(ds.model.vocab_size == m.vocab_size, "--draft ", draft_checkpoint,
                  ": its model has ", ds.model.vocab_size, " tokens and the model ", m.vocab_size,
                  " (", checkpoint, "): a draft must share the model's token ids");
      TRIAD_CHECK(!bf16 || ds.model.n_embd % 2 == 0, "--draft ", draft_checkpoint,
                  ": --precision bf16 needs an even n_embd (its is ", ds.model.n_embd, ")");
    }
    // The prompt's ids, checked before the weights load.
    std::vector<int32_t> ids;
    if (vm.count("prompt-ids")) {
      ids = parse_ids(prompt_ids, m.vocab_size);
      // The text output decodes the prompt with the tokenizer: found out before the weights load.
      if (output == "text")
        for (const int32_t id : ids)
          TRIAD_CHECK(id < tok.vocab_size(), "--prompt-ids: ", id, " is not a token of ", vocab,
                      " (0 .. ", tok.vocab_size() - 1,
                      "), which --output text decodes them with (--output ids does not)");
    } else {
      if (infill) {
        ids = infill_prompt(tok, prompt, suffix, parse_fim_tokens(fim_tokens, tok, m.vocab_size),
                            fim_spm);
      } else if (vm.count("chat")) {
        const auto f = triad::resolve_chat_format(tok, chat, "--chat");
        if (messages.empty()) {
          ids = triad::chat_prompt(tok, f, system, prompt);
        } else {
          const auto convs = triad::read_conversations(messages, "--messages");
          TRIAD_CHECK(convs.size() == 1, "--messages ", messages, ": ", convs.size(),
                      " conversations; give one (the model continues one conversation)");
          ids = triad::conversation_prompt(tok, f, convs[0], messages, "--messages");
        }
      } else {
        ids = tok.encode_prompt(prompt);
      }
      for (const int32_t id : ids)
        TRIAD_CHECK(id < m.vocab_size, "the prompt's token ", id, " (", vocab,
                    ") is beyond the model's ", m.vocab_size,
                    " tokens: give the model's own tokenizer with --vocab");
    }
    // The vocabulary padded for this grid; the checkpoint's padding may differ.
    triad::GptShape shape = triad::gpt_shape(m, triad::padded_vocab_size(int(m.vocab_size), tp));
    TRIAD_CHECK(!bf16 || m.n_embd % 2 == 0,
                "--precision bf16 needs an even n_embd (the checkpoint's is ", m.n_embd, ")");
    TRIAD_CHECK(m.n_head % tp == 0, "--tp ", tp, " does not divide the model's ", m.n_head,
                " heads");
    TRIAD_CHECK(m.n_kv_head % tp == 0, "--tp ", tp, " does not divide the model's ", m.n_kv_head,
                " key/value heads");
    TRIAD_CHECK(m.n_layer % pp == 0, "--pp ", pp, " does not divide the model's ", m.n_layer,
                " layers");
    TRIAD_CHECK(m.mlp_hidden % tp == 0, "--tp ", tp, " does not divide the model's ", m.mlp_hidden,
                " MLP hidden units");
    triad::ProcessGrid grid(world, tp, pp);
    // On a GPU the ranks of a node take its devices in turn; their tensors go through MPI staged
    // in host memory (generation moves one row per token between ranks).
    auto be =
        backend == "cuda"
            ? triad::make_cuda_backend(node_rank(world) % std::max(1, triad::cuda_device_count()))
            : triad::make_cpu_backend();
    if (backend == "cuda" && tp * pp > 1) grid.wrap_comms(triad::make_device_staged_comm);
    triad::ModelParallel mp;
    mp.tp = tp;
    mp.tp_rank = grid.tp_rank();
    mp.pp = pp;
    mp.pp_rank = grid.pp_rank();
    mp.tp_comm = &grid.tp();
    mp.pp_comm = &grid.pp();
    // Forward passes only: no gradients or backward buffers; the logits of the samples decoded
    // together at once.
    triad::ActivationOptions forward_only;
    forward_only.inference = true;
    // (with a draft: the logits of its tokens and the one after, checked in one product)
    forward_only.logits_chunk = drafting ? draft_tokens + 1 : together;
    if (module_draft) {
      TRIAD_CHECK(m.mtp_depth > 0, "--draft mtp: ", checkpoint,
                  " has no multi-token prediction modules (model.mtp_depth 0): give a draft "
                  "model's checkpoint");
      forward_only.mtp_draft = true;
    }
    const triad::Precision precision_kind = bf16 ? triad::Precision::bf16 : triad::Precision::fp32;
    triad::Gpt model(shape, together, *be, 1, mp, nullptr, precision_kind, forward_only);
    // A model's weights from a checkpoint's `group`, and its routers' biases (they choose the
    // experts as in training). On the CPU the parameters are host memory and are loaded in place;
    // device memory is loaded through a host copy.
    auto load_weights = [&](triad::Gpt& g, const std::string& file, const std::string& group) {
      std::vector<float> host(backend == "cpu" ? 0 : g.num_floats());
      float* base = host.empty() ? g.params() : host.data();
      triad::load_checkpoint_tensors(
          world, file, {{group, triad::model_tensor_refs(g, base, 0, true, 0, 0, 0, 0), true}});
      if (!host.empty()) be->copy_from_host(g.params(), host.data(), host.size());
      g.params_updated();
      triad::load_router_bias(world, file, g);
    };
    // --ema: the moving average's tensors are named and shaped as the model's.
    TRIAD_CHECK(!ema || triad::checkpoint_has_group(world, checkpoint, "optimizer/ema"),
                "--ema: ", checkpoint,
                " holds no moving average of the weights (/optimizer/ema): its run did not set "
                "optim.ema_decay");
    load_weights(model, checkpoint, ema ? "optimizer/ema" : "model");
    // --draft: the draft model, whole on every rank (each draws the same tokens).
    std::unique_ptr<triad::Gpt> draft;
    if (drafting && !module_draft) {
      triad::ActivationOptions one_row;
      one_row.inference = true;
      one_row.logits_chunk = 1;
      draft = std::make_unique<triad::Gpt>(
          triad::gpt_shape(ds.model, triad::padded_vocab_size(int(ds.model.vocab_size), 1)), 1, *be,
          1, triad::ModelParallel{}, nullptr, precision_kind, one_row);
      load_weights(*draft, draft_checkpoint, "model");
    }
    triad::SpeculativeStats drafted;
    triad::Rng rng(static_cast<uint64_t>(seed));
    opt.kv_cache = !no_cache;
    opt.logprobs = logprobs;
    // --stop: where a continuation's text first holds one of the strings (none: npos). Every rank
    // decodes the same tokens, so all end a sample alike.
    const auto stop_at = [&](const std::string& text) {
      size_t at = std::string::npos;
      for (const std::string& s : stops) at = std::min(at, text.find(s));
      return at;
    };
    if (!stops.empty())
      opt.stop_when = [&](const std::vector<int32_t>& out) {
        return stop_at(tok.decode(out)) != std::string::npos;
      };
    // A chat reply ends at the tokenizer's stop tokens (Llama 3's <|eot_id|>, Mistral's </s>).
    // So does a middle (data.fim_* trained it to end where the document ends).
    const bool chatting = vm.count("chat") != 0;
    if (stop_at_eot || chatting || infill) opt.stop_tokens = tok.stop_tokens();
    // A model with more embedding rows than its tokenizer has ids (Qwen2's padding) draws among
    // the tokenizer's only, so that every sample decodes.
    if (m.vocab_size > tok.vocab_size()) {
      opt.vocab_limit = tok.vocab_size();
      if (rank == 0)
        std::cerr << "triad-generate: the model has " << m.vocab_size << " tokens and the "
                  << "tokenizer " << vocab << " " << tok.vocab_size()
                  << ": samples are drawn among the tokenizer's ids only (is it the model's "
                  << "tokenizer?)" << std::endl;
    }
    // How rank 0 prints the samples (every rank draws the same tokens).
    triad::SamplePrinting printing;
    printing.output = output == "ids"        ? triad::SamplePrinting::Output::ids
                      : output == "logprobs" ? triad::SamplePrinting::Output::logprobs
                                             : triad::SamplePrinting::Output::text;
    printing.tokenizer = &tok;
    printing.stops = stops;
    if (output == "text") {
      if (infill) {  // the prefix, the middle and the suffix
        printing.before = prompt;
        printing.after = suffix;
      } else if (!chatting) {  // a chat reply is printed alone
        printing.before = vm.count("prompt-ids") ? tok.decode(ids) : prompt;
      }
    }
    if (chatting || infill) printing.hidden_tokens = opt.stop_tokens;  // printed without it
    size_t generated = 0;
    const auto t0 = std::chrono::steady_clock::now();
    for (int first = 0; first < samples; first += together) {
      const int k = std::min(together, samples - first);
      // With --stream a sample is printed as its tokens come; otherwise the samples drawn
      // together are printed in turn once all have ended.
      std::vector<std::ostringstream> buffers(size_t(stream ? 0 : k));
      std::vector<triad::SamplePrinter> printers;
      printers.reserve(size_t(k));
      for (int b = 0; rank == 0 && b < k; ++b)
        printers.emplace_back(printing, first + b, stream ? std::cout : buffers[size_t(b)], stream);
      opt.on_token = [&](int b, int32_t id, const triad::TokenLogprob* lp) {
        if (!printers.empty()) printers[size_t(b)].token(id, lp);
      };
      std::vector<std::vector<triad::TokenLogprob>> lps;
      std::vector<std::vector<int32_t>> outs;
      if (drafting) {
        lps.resize(1);
        std::vector<triad::TokenLogprob>* lp = output == "logprobs" ? &lps[0] : nullptr;
        outs.push_back(
            draft ? triad::speculative_continuation(model, *draft, ids, opt, draft_tokens, rng,
                                                    &drafted, lp)
                  : triad::mtp_speculative_continuation(model, ids, opt, rng, &drafted, lp));
      } else {
        outs = triad::sample_continuations(model, ids, k, opt, rng,
                                           output == "logprobs" ? &lps : nullptr);
      }
      for (const auto& out : outs) generated += out.size();
      for (size_t b = 0; b < printers.size(); ++b) {
        printers[b].finish();
        if (!stream) std::cout << buffers[b].str() << std::flush;
      }
    }
    const double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (timing && rank == 0)
      std::cerr << "triad-generate: " << generated << " tokens after a prompt of " << ids.size()
                << " in " << sec << " s: " << double(generated) / sec << " tokens/s (" << be->name()
                << ", " << (bf16 ? "bf16" : "fp32") << ", KV cache " << (no_cache ? "off" : "on")
                << ", " << together << " at a time)" << std::endl;
    if (timing && rank == 0 && drafting)
      std::cerr << "triad-generate: speculative decoding with " << draft_checkpoint << ": "
                << drafted.rounds << " rounds, " << drafted.accepted << " of " << drafted.proposed
                << " drafted tokens kept ("
                << (drafted.proposed ? 100.0 * double(drafted.accepted) / double(drafted.proposed)
                                     : 0.0)
                << "%), "
                << (drafted.rounds
                        ? double(generated - size_t(drafted.plain)) / double(drafted.rounds)
                        : 0.0)
                << " tokens per round of " << draft_tokens << ", " << drafted.plain
                << " tokens without a draft" << std::endl;
    return 0;
  });
}
