#include "triad/train/trainer.h"

#include <omp.h>
#include <unistd.h>

#include <atomic>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <limits>
#include <map>
#include <numeric>
#include <sstream>
#include <vector>

#include "run_directory.h"
#include "trainer_state.h"
#include "triad/core/comma_list.h"
#include "triad/core/error.h"
#include "triad/core/rng.h"
#include "triad/core/timer.h"
#include "triad/data/blend.h"
#include "triad/data/loader.h"
#include "triad/data/tokenizer.h"
#include "triad/io/checkpoint.h"
#include "triad/io/metrics.h"
#include "triad/kernels/backend.h"
#include "triad/kernels/cpu_backend.h"
#include "triad/kernels/cuda_backend.h"
#include "triad/kernels/peak_flops.h"
#include "triad/model/gpt.h"
#include "triad/optim/optimizer.h"
#include "triad/parallel/process_grid.h"
#include "triad/train/run_plan.h"
#include "triad/train/sampler.h"

namespace fs = std::filesystem;

namespace triad {
namespace {

std::atomic<int> g_preempt_signal{0};

extern "C" void on_preempt_signal(int sig) { g_preempt_signal.store(sig); }

// Ctrl-C: the first stops the run as a preemption does (the step finished and checkpointed);
// a second, while that is under way (a long step, a large save), ends the process at once.
extern "C" void on_interrupt_signal(int sig) {
  if (g_preempt_signal.load() == SIGINT) {
    std::signal(SIGINT, SIG_DFL);
    std::raise(SIGINT);
    return;
  }
  g_preempt_signal.store(sig);
  static const char kSaid[] =
      "\ntriad-train: interrupted: stopping after this step with a checkpoint (Ctrl-C again stops "
      "at once, unsaved)\n";
  const ssize_t written = ::write(2, kSaid, sizeof kSaid - 1);  // (async-signal-safe)
  (void)written;
}

std::string format_duration(double s) {
  const int64_t t = int64_t(std::max(0.0, s));
  std::ostringstream os;
  if (t >= 3600) os << t / 3600 << "h";
  if (t >= 60) os << (t % 3600) / 60 << "m";
  os << t % 60 << "s";
  return os.str();
}

}  // namespace

void install_preemption_handlers() {
  std::signal(SIGUSR1, on_preempt_signal);
  std::signal(SIGTERM, on_preempt_signal);
  std::signal(SIGINT, on_interrupt_signal);
}

Trainer::Trainer(MPI_Comm world, const CommandLine& cl) : s_(std::make_unique<State>(world, cl)) {
  auto& s = *s_;
  validate(s.cfg, s.grid.world_size());
  // A wrong data.train is said before the model is built (gigabytes and seconds for a large one),
  // and a wrong data.preferences (read whole here).
  if (!cl.eval_only && !s.cfg.data.preferences.empty()) {
    s.preferences = std::make_unique<PreferenceData>(s.cfg.data.preferences, s.cfg.model.seq_len,
                                                     s.cfg.model.vocab_size, s.cfg.data.shuffle,
                                                     uint64_t(s.cfg.train.seed));
    s.open_val_preferences();
  } else if (!cl.eval_only) {
    const BlendSpec blend = parse_blend(s.cfg.data.train, s.cfg.data.train_weights);
    // A shard two datasets match would be drawn at both weights.
    std::map<std::string, size_t> dataset_of;
    for (size_t d = 0; d < blend.globs.size(); ++d)
      for (const std::string& f : match_shards(blend.globs[d], blend.key(d))) {
        std::error_code ec;
        const fs::path canonical = fs::weakly_canonical(f, ec);
        const auto [at, fresh] = dataset_of.emplace(ec ? f : canonical.string(), d);
        TRIAD_CHECK(fresh || at->second == d, "config: data.train: the shard ", f, " is in ",
                    blend.key(at->second), " and in ", blend.key(d),
                    "; a shard belongs to one dataset");
      }
  }
  s.setup_backend();
  s.setup_model();
}

Trainer::~Trainer() = default;

namespace {
// " | frozen (why): N tensors, P parameters" for the frozen tensors' globs, else "".
std::string frozen_note(const GptShape& shape, const std::string& freeze, const Config& cfg) {
  int64_t tensors = 0, params = 0;
  for (const auto& s : gpt_parameter_layout(shape)) {
    if (!frozen_tensor(freeze, s.name)) continue;
    ++tensors;
    params += int64_t(s.numel);  // the whole model's layout: whole tensors
  }
  if (tensors == 0) return "";
  const std::string why = cfg.model.norm_weight ? "train.freeze"
                          : trim_blanks(cfg.train.freeze).empty()
                              ? "model.norm_weight = false"
                              : "train.freeze, model.norm_weight = false";
  return " | frozen (" + why + "): " + std::to_string(tensors) + " tensors, " +
         std::to_string(params) + " parameters";
}
}  // namespace

std::string describe_position_losses(const std::vector<double>& loss, const std::string& set) {
  std::ostringstream os;
  os << std::fixed << std::setprecision(4) << set << " loss by position:";
  const size_t T = loss.size(), spans = std::min<size_t>(8, T);
  for (size_t k = 0; k < spans; ++k) {
    const size_t lo = k * T / spans, hi = (k + 1) * T / spans;
    double sum = 0;
    size_t n = 0;
    for (size_t t = lo; t < hi; ++t)
      if (!std::isnan(loss[t])) {
        sum += loss[t];
        ++n;
      }
    os << (k > 0 ? "," : "") << " " << lo << "-" << hi - 1 << " "
       << (n > 0 ? sum / double(n) : std::numeric_limits<double>::quiet_NaN());
  }
  return os.str();
}

std::string describe_choices(const EvalResult& r) {
  std::ostringstream os;
  os << std::fixed << std::setprecision(4) << "choice accuracy " << r.choice_accuracy
     << " (by summed loss " << r.choice_accuracy_by_sum;
  if (!std::isnan(r.choice_accuracy_by_chars))
    os << ", by characters " << r.choice_accuracy_by_chars;
  os << ", ending loss " << std::setprecision(6) << r.choice_ending_loss << ") | "
     << r.choice_examples << " examples";
  return os.str();
}

EvalResult Trainer::evaluate_only() {
  auto& s = *s_;
  const bool any_val = !s.cfg.data.val.empty() || !parse_val_sets(s.cfg.eval.sets).empty();
  const bool pairs = !s.cfg.eval.preferences.empty();
  TRIAD_CHECK(any_val || !s.cfg.eval.choices.empty() || pairs,
              "config: data.val, eval.sets, eval.choices and eval.preferences are empty; "
              "--eval-only needs validation shards, a multiple-choice file or held-out pairs");
  TRIAD_CHECK(s.cfg.eval.sequences > 0 || !s.cfg.eval.choices.empty() || pairs,
              "--eval-only: eval.sequences is 0 and eval.choices and eval.preferences are empty: "
              "nothing to evaluate");
  s.open_val();
  s.open_choices();
  s.open_val_preferences();
  std::string path;
  if (!s.cl.init_from.empty()) {
    path = s.cl.init_from;
  } else if (s.cl.resume != "auto" && s.cl.resume != "none") {
    path = s.cl.resume;
  } else {
    path = find_resume_checkpoint(s.grid.world(), s.cfg.checkpoint_dir());
    TRIAD_CHECK(!path.empty(),
                "--eval-only: no checkpoint given (--resume PATH or --init-from "
                "PATH) and none found in ",
                s.cfg.checkpoint_dir());
  }
  const CheckpointState st = s.load_weights(path);
  if (pairs) {
    // Held-out pairs are scored against the reference of the DPO run that saved the checkpoint
    // (its values for them, computed when that run started).
    TRIAD_CHECK(int64_t(st.preference_val_reference.size()) == s.val_preferences->num_sequences(),
                "--eval-only: eval.preferences is scored against the reference of the DPO run "
                "that saved the checkpoint, and ",
                path, " holds reference values of ", st.preference_val_reference.size(),
                " held-out sequences, not of eval.preferences' ",
                s.val_preferences->num_sequences(),
                " (give the held-out file that run scored, or a checkpoint of a run that scored "
                "this one)");
    s.val_preferences->set_reference(st.preference_val_reference);
  }
  if (s.cfg.eval.ema && s.root())
    std::cout << "note: eval.ema applies to training runs; --eval-only scores the checkpoint's "
                 "weights (add --from-ema for its moving average)"
              << std::endl;
  // A checkpoint of this run (--resume, or found) is evaluated as the run evaluated it at that
  // step (train.window_warmup's window); one given by --init-from, as a model: its own window.
  if (s.cl.init_from.empty()) s.use_window(st.step);
  const Timer clock;
  const EvalResult r = s.evaluate();
  const double seconds = clock.seconds();
  if (s.root()) {
    std::cout << std::fixed << std::setprecision(6) << "checkpoint " << path
              << (s.cl.from_ema ? "'s moving average" : "") << " (step " << st.step << ")";
    if (r.sequences > 0)
      std::cout << " | val loss " << r.loss << " | val accuracy " << r.accuracy << " | "
                << r.sequences << " sequences";
    if (r.sequences > 0 && s.cfg.eval.bits_per_byte) std::cout << " | val bpb " << r.bpb;
    for (const auto& v : r.sets) {
      std::cout << " | " << v.name << " loss " << v.loss << " accuracy " << v.accuracy;
      if (s.cfg.eval.bits_per_byte) std::cout << " bpb " << v.bpb;
    }
    if (r.choice_examples > 0) std::cout << " | " << describe_choices(r);
    if (r.dpo_pairs > 0)
      std::cout << " | DPO val loss " << r.dpo_loss << " | val pairs right " << std::setprecision(4)
                << r.dpo_accuracy << " | val margin " << r.dpo_margin << " | " << r.dpo_pairs
                << " pairs";
    std::cout << std::setprecision(2) << " | " << seconds << " s" << std::endl;
    if (!r.loss_by_position.empty())
      std::cout << describe_position_losses(r.loss_by_position) << std::endl;
    for (const auto& v : r.sets)
      if (!v.loss_by_position.empty())
        std::cout << describe_position_losses(v.loss_by_position, v.name) << std::endl;
  }
  return r;
}

std::vector<float> Trainer::parameters() const {
  // Each tensor's owner (replica rank 0, an expert-parallel tensor's first expert replica; not a
  // tensor-parallel replica) places its shard in a full-model vector;
  // the sum over all ranks assembles the model. The others hold −0.0, not +0.0: x + (−0) is x
  // for every x, the sign of a zero included (+0 + (−0) = +0, −0 + (−0) = −0).
  auto& s = *s_;
  std::vector<float> local(s.model->num_floats(), -0.0f);
  if (s.model->sharded_master()) {
    // This rank holds its slice of the fp32 master weights: assemble them first.
    const size_t lo = std::min(s.model->master_begin(), local.size());
    const size_t hi = std::min(s.model->master_end(), local.size());
    s.be->copy_to_host(local.data() + lo, s.model->params(), hi - lo);
    s.grid.dp().all_reduce_sum(local.data(), local.size());
    if (s.model->packed_experts()) {
      // ZeRO-3's experts: from their packed slices over the expert replicas, into their extents.
      const ExpertPacking& pk = s.model->packing();
      std::vector<float> packed(pk.padded, -0.0f);
      s.be->copy_to_host(packed.data() + s.expert_lo, s.model->expert_params(),
                         s.expert_hi - s.expert_lo);
      s.grid.edp().all_reduce_sum(packed.data(), packed.size());
      for (const auto& e : pk.extents)
        std::copy_n(packed.begin() + ptrdiff_t(e.packed), std::min(e.hi, local.size()) - e.lo,
                    local.begin() + ptrdiff_t(e.lo));
    }
  } else {
    s.be->copy_to_host(local.data(), s.model->params(), local.size());
  }
  std::vector<ParamSpec> full = gpt_parameter_layout(s.model_shape());
  std::vector<size_t> at(full.size());
  size_t n = 0;
  for (size_t i = 0; i < full.size(); ++i) {
    at[i] = n;
    n += full[i].numel;
  }
  std::vector<float> out(n, -0.0f);
  for (const auto& p : s.model->specs()) {  // each tensor from its first replica
    if (p.replica || (p.expert_parallel ? s.expert_replica_rank : s.replica_rank) != 0) continue;
    size_t i = 0;
    while (full[i].name != p.name) ++i;
    insert_shard(p, local.data() + p.offset, out.data() + at[i]);
  }
  s.grid.all().all_reduce_sum(out.data(), out.size());
  // wte's padding rows (their number depends on tp) are not parameters: drop them, and an
  // untied head's (and its bias's), from the back so that the offsets hold.
  const size_t pad_rows = size_t(s.cfg.padded_vocab_size() - s.cfg.model.vocab_size);
  for (size_t i = full.size(); i-- > 0;)
    if (has_vocabulary_rows(full[i].name)) {
      const size_t pad = pad_rows * (full[i].numel / size_t(full[i].shape[0]));
      out.erase(out.begin() + long(at[i] + full[i].numel - pad),
                out.begin() + long(at[i] + full[i].numel));
    }
  return out;
}

TrainOutcome Trainer::run() {
  const Timer run_clock;  // run.max_minutes counts from here
  auto& s = *s_;
  const auto& cfg = s.cfg;
  const int T = cfg.model.seq_len, mbs = cfg.train.micro_batch_size;
  if (!s.preferences)  // (DPO's pairs are read already)
    s.train_data = std::make_unique<BlendedLoader>(
        parse_blend(cfg.data.train, cfg.data.train_weights), T, cfg.model.vocab_size,
        cfg.data.shuffle, uint64_t(cfg.train.seed), parse_loss_mask(cfg.data.loss_mask),
        parse_eod_mask_loss(cfg.data.eod_mask_loss, cfg.model.vocab_size),
        s.fim(uint64_t(cfg.train.seed)));
  if (s.train_data && s.train_data->masked_shards() > 0)
    s.say("data.train: " + std::to_string(s.train_data->masked_shards()) +
          " shard(s) with loss masks: the loss is the mean over the targets they count");
  s.open_val();
  s.open_choices();
  if (cfg.sample.length > 0) {
    s.load_tokenizer();
    // The prompt (with the tokenizer's prompt or document start) must be ids the model has.
    const std::vector<int32_t> prompt = s.tokenizer->encode_prompt(cfg.sample.prompt);
    for (int32_t id : prompt)
      TRIAD_CHECK(id < cfg.model.vocab_size, "config: sample.length > 0 samples from token ", id,
                  " of ", cfg.data.vocab, ", beyond model.vocab_size = ", cfg.model.vocab_size,
                  " (set sample.length = 0, or use the tokenizer's vocabulary size)");
    // ... and the samples are drawn among the tokenizer's ids (write_sample), so that a model
    // with embedding rows past them (Qwen2's padding) never draws one that does not decode.
    if (cfg.model.vocab_size > s.tokenizer->vocab_size())
      s.say("samples are drawn among the " + std::to_string(s.tokenizer->vocab_size()) +
            " ids of " + cfg.data.vocab +
            ", fewer than model.vocab_size = " + std::to_string(cfg.model.vocab_size));
  }

  // Where do we start? --resume auto|PATH|none, then --init-from, else a seeded init.
  std::string resume_path;
  if (s.cl.resume == "auto") {
    resume_path = find_resume_checkpoint(s.grid.world(), cfg.checkpoint_dir());
  } else if (s.cl.resume != "none") {
    resume_path = s.cl.resume;
  }
  const bool resumed = !resume_path.empty();
  // Resumed from a checkpoint of its own directory, the run's history goes on; otherwise the run
  // starts one of its own, and an earlier run's record there is set aside (as its checkpoints
  // are, below).
  std::error_code here_ec;
  const bool here = resumed && fs::equivalent(fs::absolute(resume_path, here_ec).parent_path(),
                                              cfg.checkpoint_dir(), here_ec);
  const std::string run_path = cfg.run_path();
  // The checkpoint named on the command line is read (and its model compared) before the run's
  // record is touched: a mistyped path must not set the record aside.
  if (!s.cl.init_from.empty()) {
    const CheckpointState st = read_checkpoint_state(s.grid.world(), s.cl.init_from);
    s.check_model_shape(st, s.cl.init_from, s.cl.extend_positions, true);
  }
  if (resumed && s.cl.resume != "auto")
    s.check_model_shape(read_checkpoint_state(s.grid.world(), resume_path), resume_path);
  std::string lock_note, set_aside_note;
  if (s.root()) {
    std::error_code ec;
    fs::create_directories(run_path, ec);
    TRIAD_CHECK(!ec, "run.dir: cannot make the run directory ", run_path, ": ", ec.message());
    // The checkpoints' directory too, now rather than at the first save, after the training.
    if (!s.cl.eval_only) {
      fs::create_directories(cfg.checkpoint_dir(), ec);
      TRIAD_CHECK(!ec, "checkpoint.dir: cannot make ", cfg.checkpoint_dir(), ": ", ec.message());
    }
    s.run_lock = lock_run_directory(run_path, lock_note);
    check_run_record(run_path);
    if (!here) set_aside_note = set_aside_earlier_record(run_path);
    {
      std::ofstream ini(run_path + "/config.ini");
      ini << to_ini(cfg);
      ini.flush();
      TRIAD_CHECK(ini.good(), "run directory ", run_path, ": cannot write config.ini");
    }
    s.log.open(run_path + "/log.txt", here ? std::ios::app : std::ios::trunc);
    TRIAD_CHECK(s.log.is_open(), "run directory ", run_path, ": cannot open log.txt");
    if (!here) {
      std::ofstream samples(run_path + "/samples.txt", std::ios::trunc);
      TRIAD_CHECK(samples.is_open(), "run directory ", run_path, ": cannot open samples.txt");
    }
  }
  if (!lock_note.empty()) s.say(lock_note);
  if (!set_aside_note.empty()) s.say(set_aside_note);
  s.model->init(uint64_t(cfg.train.seed),
                {cfg.model.init_std, cfg.model.init_scaled_residual, cfg.model.init_truncation});
  s.start_ema();  // (a checkpoint loaded below sets it again)
  // A requeued fine-tuning job resumes its own checkpoints (its --init-from file was checked
  // above, so that a wrong path is reported, not silently ignored).
  if (!s.cl.init_from.empty() && !resume_path.empty())
    s.say("--init-from " + s.cl.init_from + " ignored: the run resumes from its own checkpoint");
  if (!resume_path.empty() && s.cl.resume == "auto") {
    // --resume auto: the newest checkpoint that loads. One whose data fails its checksum (or
    // shapes) is reported and the previous one tried; every rank sees the same failure.
    std::vector<std::string> candidates{resume_path};
    const auto all = list_checkpoints(cfg.checkpoint_dir());
    for (auto it = all.rbegin(); it != all.rend(); ++it) {
      const std::string p = cfg.checkpoint_dir() + "/" + *it;
      if (p != resume_path && fs::path(*it).filename() < fs::path(resume_path).filename())
        candidates.push_back(p);
    }
    std::string failures;
    bool loaded = false;
    for (const auto& c : candidates) {
      try {
        s.load_from(c, true);
        loaded = true;
        resume_path = c;  // (the one loaded)
        break;
      } catch (const Error& e) {
        s.say(std::string("warning: ") + e.what() + "; trying the previous checkpoint");
        failures += std::string("\n  ") + e.what();
      }
    }
    TRIAD_CHECK(loaded, "--resume auto: no checkpoint in ", cfg.checkpoint_dir(),
                " could be loaded:", failures);
  } else if (!resume_path.empty()) {
    s.load_from(resume_path, true);
  } else if (!s.cl.init_from.empty()) {
    s.load_from(s.cl.init_from, false);
  }

  // DPO's reference: the weights as loaded (a resumed run has it from its checkpoint), for the
  // training pairs and eval.preferences' alike.
  if (s.preferences && s.preferences->reference().empty()) {
    const Timer reference_clock;
    s.preferences->set_reference(s.sequence_logps(*s.preferences, "DPO's reference pass"));
    if (s.val_preferences)
      s.val_preferences->set_reference(
          s.sequence_logps(*s.val_preferences, "DPO's reference pass (eval.preferences)"));
    std::ostringstream os;
    os << "DPO's reference: the log-probabilities of "
       << s.preferences->num_sequences() +
              (s.val_preferences ? s.val_preferences->num_sequences() : 0)
       << " sequences under the "
       << (resume_path.empty() && s.cl.init_from.empty() ? "initialized" : "loaded")
       << " weights, in " << std::fixed << std::setprecision(1) << reference_clock.seconds()
       << " s";
    s.say(os.str());
  }
  s.peak_flops = cfg.run.peak_tflops > 0
                     ? cfg.run.peak_tflops * 1e12
                     : measure_peak_flops(*s.be, s.model->precision() == Precision::bf16);
  if (s.root()) {
    MetricsAttributes a{to_ini(cfg), s.grid.describe(), s.model->num_parameters(),
                        s.model->flops_per_token(), s.peak_flops};
    std::vector<std::string> set_names;
    for (const auto& [name, src] : s.val_sets) set_names.push_back(name);
    std::vector<std::string> moe_layers;  // train.moe_load_every: the layers with experts
    if (cfg.train.moe_load_every > 0)
      for (int l = 0; l < cfg.model.n_layer + cfg.model.mtp_depth; ++l)  // (h<i>, mtp<j>)
        if (s.model->shape().moe_layer(l)) {
          const std::string name = layer_name(s.model->shape(), l);
          moe_layers.push_back(name.substr(0, name.find('/')) + name.substr(name.find('/') + 1));
        }
    s.metrics = std::make_unique<MetricsWriter>(
        run_path + "/metrics.h5", a, here ? s.step : int64_t(-1), set_names,
        cfg.train.norms_every > 0 ? s.norm_groups() : std::vector<std::string>{},
        cfg.train.activations_every > 0 ? Gpt::activation_names(cfg.model.n_layer)
                                        : std::vector<std::string>{},
        moe_layers, cfg.model.moe_experts,
        cfg.eval.loss_by_position && !cfg.data.val.empty() ? cfg.model.seq_len : 0,
        cfg.train.noise_every > 0, cfg.eval.ema, cfg.eval.loss_by_position ? cfg.model.seq_len : 0);
  }
  const int full_accum = cfg.train.batch_size / (mbs * s.grid.shape().dp);
  {
    // Memory of the most loaded rank (stages differ: the last one holds the head and its logits).
    auto largest = [&s](size_t bytes) {
      return double(s.grid.all().all_reduce_max(int64_t(bytes))) / 1e6;
    };
    // The weights held: fp32 (a slice where the master is sharded), the bf16 copy, and ZeRO-3's
    // gathered ones.
    const double param_mb = largest(s.model->weight_bytes());
    const double opt_mb =
        largest(s.opt->state_bytes() + (s.expert_opt ? s.expert_opt->state_bytes() : 0));
    const double act_mb = largest(s.model->activation_bytes());
    const double all_mb = largest(s.be->allocated_bytes());
    std::ostringstream os, rates;  // dropout, rates and decay besides the defaults
    if (cfg.train.hidden_dropout > 0) rates << " | hidden dropout " << cfg.train.hidden_dropout;
    if (cfg.train.attention_dropout > 0)
      rates << " | attention dropout " << cfg.train.attention_dropout;
    // optim.embedding_lr, optim.head_lr: the peaks that differ from train.lr's.
    if (cfg.optim.embedding_lr > 0) rates << " | embedding lr " << cfg.optim.embedding_lr;
    if (cfg.optim.head_lr > 0) rates << " | head lr " << cfg.optim.head_lr;
    if (cfg.optim.weight_decay_schedule != "constant")
      rates << " | weight decay " << cfg.optim.weight_decay << " to " << cfg.optim.weight_decay_end
            << " (" << cfg.optim.weight_decay_schedule << ")";
    if (!cfg.optim.decay_embeddings) rates << " | no weight decay on the embeddings";
    if (cfg.optim.ema_decay > 0)
      rates << " | moving average of the weights " << cfg.optim.ema_decay;
    if (cfg.data.fim_rate > 0)
      rates << " | fill-in-the-middle " << cfg.data.fim_rate << " (SPM " << cfg.data.fim_spm_rate
            << (cfg.data.fim_split == "none" ? "" : ", fragments cut at " + cfg.data.fim_split)
            << (cfg.data.fim_granularity == "character" ? ", cut between characters" : "") << ")";
    const std::string rates_note = rates.str();
    std::ostringstream data_os;  // what the steps train on
    if (s.preferences)
      data_os << " | DPO (beta " << cfg.train.dpo_beta << ") on " << s.preferences->pairs()
              << " preference pairs";
    else
      data_os << " | train " << s.train_data->num_sequences() << " sequences";
    const std::string data_note = data_os.str();
    std::string split;  // uneven pipeline stages
    for (int n : s.model->parallel().stage_layers)
      split += (split.empty() ? " (stage layers " : ",") + std::to_string(n);
    if (!split.empty()) split += ")";
    os << "triad: " << s.grid.describe() << split << " | backend " << s.be->name() << " "
       << precision_name(s.model->precision()) << " (" << omp_get_max_threads() << " threads) | "
       << "comm " << s.comm_desc << " | " << s.model->num_parameters() << " parameters | "
       << "largest per rank: parameters " << std::fixed << std::setprecision(1) << param_mb
       << " MB, optimizer state " << opt_mb << " MB, activations " << act_mb << " MB"
       << (s.model->recompute().mode == Recompute::none
               ? ""
               : " (recompute " +
                     s.model->recompute().describe(
                         s.model->parallel().most_chunk_layers(s.model->shape().n_layer)) +
                     ")")
       << ", in all " << all_mb << " MB | batch " << cfg.train.batch_size << " x " << T
       << " tokens, " << full_accum << " micro-batches of " << mbs
       << (s.ramp.on() ? " (ramped up from " + std::to_string(s.ramp.start) + " by " +
                             std::to_string(s.ramp.increment) + " over the first " +
                             std::to_string(s.ramp.sequences) + " sequences)"
                       : std::string())
       << frozen_note(s.model_shape(), s.freeze, cfg) << rates_note
       << (s.window_warmup.on()
               ? " | attention window from " + std::to_string(s.window_warmup.start) + " to " +
                     (cfg.model.sliding_window > 0 ? std::to_string(cfg.model.sliding_window)
                                                   : std::string("the whole context")) +
                     " over " + std::to_string(s.window_warmup.steps) + " steps"
               : std::string())
       << (cfg.train.sequences > 0
               ? ", " + std::to_string(cfg.train.steps) +
                     " steps for train.sequences = " + std::to_string(cfg.train.sequences)
               : std::string())
       << data_note
       << (s.train_data && s.train_data->datasets() > 1
               ? " in " + std::to_string(s.train_data->datasets()) + " blended datasets"
               : std::string())
       << " | peak " << std::setprecision(1) << s.peak_flops / 1e9 << " GFLOP/s";
    s.say(os.str());
    s.say(s.on_device ? "device: " + cuda_device_description() +
                            (s.flash_desc.empty() ? "" : ", flash attention " + s.flash_desc)
                      : "blas: " + cpu_blas_description());
  }

  TrainOutcome out;
  if (cfg.checkpoint.async) {
    int level = MPI_THREAD_SINGLE;
    MPI_Query_thread(&level);
    TRIAD_CHECK(level == MPI_THREAD_MULTIPLE,
                "checkpoint.async needs an MPI library that runs threads at MPI_THREAD_MULTIPLE "
                "(the background save writes over MPI-IO beside the training's communication); "
                "this one provides level ",
                level, ": set checkpoint.async = false");
  }
  // The checkpoints of another history (a new run's, one resumed from an earlier step's) are set
  // aside before this run saves under their names.
  if (s.root())  // (found before training, not at the first save)
    for (const char* pointer : {"latest", "best"}) {
      const fs::path p = fs::path(cfg.checkpoint_dir()) / pointer;
      std::error_code ec;
      TRIAD_CHECK(!fs::exists(p, ec) || fs::is_regular_file(p, ec), "checkpoint directory ",
                  cfg.checkpoint_dir(), ": ", pointer,
                  " is not a file (this run writes the name of its checkpoint there)");
    }
  // (eval.every has a default: an evaluation with nothing to score is said, not silently none)
  const bool scores_sequences =
      cfg.eval.sequences > 0 && (!cfg.data.val.empty() || !cfg.eval.sets.empty());
  if (!scores_sequences && cfg.eval.choices.empty() && !s.val_preferences &&
      s.step < cfg.train.steps)
    s.say(
        "note: no evaluation (no data.val or eval.sets with eval.sequences > 0, no "
        "eval.choices): no validation loss is reported");
  if (s.step >= cfg.train.steps)  // (a job requeued after its run ended, or steps lowered)
    s.say("nothing to train: the run is at step " + std::to_string(s.step) +
          " of train.steps = " + std::to_string(cfg.train.steps));
  if (s.step < cfg.train.steps) {
    // (A run resumed from another directory's file starts a new history in this one.)
    const std::string moved = set_aside_other_history(s.grid.world(), cfg.checkpoint_dir(),
                                                      here ? s.step : int64_t(-1), resume_path);
    if (!moved.empty()) s.say(moved);
  }
  // Before any save prunes (checkpoint.at_start): what ckpt/best this run goes on from.
  if (cfg.checkpoint.best) s.load_best(resume_path);
  const bool eval_now_at_start =
      s.step == 0 || (cfg.eval.every > 0 && s.step % cfg.eval.every == 0);
  if (s.step < cfg.train.steps && eval_now_at_start) s.run_eval();
  if (cfg.checkpoint.at_start && s.step == 0) s.save_checkpoint();
  // A resumed run's first evaluation may name its own checkpoint (one whose naming a stop
  // interrupted).
  if (cfg.checkpoint.best && s.step < cfg.train.steps && eval_now_at_start) s.keep_if_best();

  if (cfg.train.profile_step > 0 && cfg.train.profile_step <= s.step)
    s.say("train.profile_step " + std::to_string(cfg.train.profile_step) +
          " was run before this resumed run's step " + std::to_string(s.step + 1) +
          ": no pipeline trace");
  Timer run_timer;
  const int64_t first_step = s.step;
  // The run's last sequence count, for the ETA by tokens (a ramp's steps grow).
  const int64_t last_consumed =
      sequences_after_steps(s.ramp, cfg.train.batch_size, s.consumed, cfg.train.steps - s.step);
  const int64_t first_consumed = s.consumed;
  const ScheduleClock clock(cfg.train);
  s.grid.dp().reset_stats();
  s.grid.cp().reset_stats();
  s.grid.tp().reset_stats();
  s.grid.pp().reset_stats();
  if (cfg.parallel.ep > 1) {
    s.grid.ep().reset_stats();
    s.grid.edp().reset_stats();
  }
  // run.hang_minutes: from here to the end of the run, a rank without progress ends the job, and
  // so does an error a communicator's transport found in its collectives (NCCL's asynchronous
  // errors), at the watchdog's next poll.
  const int world_rank = s.grid.world_rank();
  std::vector<Comm*> comms = {&s.grid.dp(), &s.grid.tp(), &s.grid.pp(), &s.grid.cp()};
  if (cfg.parallel.ep > 1) comms.insert(comms.end(), {&s.grid.ep(), &s.grid.edp()});
  s.watchdog = std::make_unique<HangWatchdog>(
      60.0 * cfg.run.hang_minutes,
      [world_rank](const std::string& report) {
        std::fprintf(stderr, "triad-train: error (rank %d): %s\n", world_rank, report.c_str());
        std::fflush(stderr);
        MPI_Abort(MPI_COMM_WORLD, 1);
      },
      [comms] {
        for (Comm* c : comms)
          if (std::string e = c->async_error(); !e.empty()) return e;
        return std::string();
      });
  while (s.step < cfg.train.steps) {
    s.watch("the step's start", s.step);
    if (s.save_done()) s.finish_save();  // report a background save that ended (no wait)
    if (cfg.train.activations_every > 0 && s.step % cfg.train.activations_every == 0) {
      const std::vector<double> rms = s.activation_rms(s.step);  // before the step: 0 at init
      if (s.metrics) s.metrics->append_activations(s.step, rms);
    }
    Timer step_timer;
    const int64_t st = s.step;
    const SchedulePoint at = clock.at(st, s.consumed);
    const double lr = lr_at(cfg.train, at);
    // The step's global batch (train.batch_rampup) in micro-batches of mbs on each rank.
    const int batch = s.batch_size_now(), accum = s.micro_batches(batch);
    const double tokens_per_step = double(batch) * T;
    s.use_schedule(accum);
    s.use_window(st);
    s.model->zero_grads();
    s.model->take_moe_stats();       // the step's routing only (not an evaluation's)
    double loss_sum = 0, z_sum = 0;  // z_sum: Σ (log Z)² (train.z_loss)
    PairStats pairs;                 // DPO's
    // This rank's share of the global batch: sequences [dp_rank·B/dp, (dp_rank+1)·B/dp) of
    // the step, in micro-batches; the gradient is the sum over ranks of the local sums, each
    // counted target weighted 1/counted, i.e. exactly the global mean.
    const int64_t base = s.position + int64_t(s.dp_rank) * (batch / s.dp);
    // The mean is over the global batch's targets that count (all B·T of them without loss
    // masks), which every rank counts alike from the masks, or where counting encodes text (FIM
    // between characters) each replica its share, summed; a batch with none has no loss (NaN)
    // and gets no update.
    // DPO's mean is over the batch's pairs.
    TrainingData& data = s.data();
    const double counted =
        s.preferences           ? double(batch / 2)
        : !data.masks_targets() ? tokens_per_step
        : data.counting_encodes()
            ? s.grid.dp().all_reduce_sum(double(data.counted_targets(base, batch / s.dp)))
            : double(data.counted_targets(s.position, batch));
    const float dloss_scale = counted > 0 ? float(1.0 / counted) : 0.0f;
    // DPO: a mixture of experts' routing terms per counted target, as a language model's.
    const float moe_scale =
        s.preferences && cfg.model.moe_experts > 0
            ? float(1.0 / double(s.preferences->counted_targets(s.position, batch)))
            : 0.0f;
    const bool zero = cfg.parallel.zero >= 1;
    // train.noise_every: a small batch's squared gradient norm (mean over the replicas) and its
    // counted tokens (NaN: not measured this step). The small batch is each replica's first
    // micro-batch, or under pipeline parallelism (whose stages interleave the micro-batches)
    // each replica's share of the step, measured before the data-parallel reduction. Under
    // expert parallelism each rank's experts see every micro-batch of its expert-parallel group:
    // the small batch is the group's first micro-batches (their dense gradient summed over it).
    const bool pipeline = s.grid.shape().pp > 1;
    const bool noise_step =
        cfg.train.noise_every > 0 && st % cfg.train.noise_every == 0 && (pipeline || accum >= 2);
    double small_sq = std::numeric_limits<double>::quiet_NaN(), small_tokens = 0;
    double small_squares = 0;  // this rank's part of it, in units of the batch's mean
    // Its mean over its own `mine` counted targets is the buffer times counted / mine; each
    // replica's squares (its tensor-parallel ranks' and stages' parts) then their mean over
    // replicas. With E|G_b|² = |G|² + tr(Σ)/b, the replicas' b (which loss masks make differ)
    // enter the estimate as their harmonic mean. Collective.
    const bool expert_groups = s.grid.shape().ep > 1;
    const auto measure_small = [&](int64_t first, int64_t sequences) {
      double mine = data.masks_targets() ? double(data.counted_targets(first, sequences))
                                         : double(sequences) * T;
      if (expert_groups) mine = s.grid.ep().all_reduce_sum(mine);  // the group's micro-batches
      // One rank of each replica counts it: tensor-parallel rank 0 of the first stage (and of
      // the context-parallel and expert-parallel groups).
      const bool leader = s.grid.tp().rank() == 0 && s.grid.pp().rank() == 0 &&
                          s.grid.cp().rank() == 0 && (!expert_groups || s.grid.ep().rank() == 0) &&
                          mine > 0;
      const double f2 = mine > 0 ? (counted / mine) * (counted / mine) : 0.0;
      double v[3] = {mine > 0 ? small_squares * f2 : 0.0, leader ? 1.0 : 0.0,
                     leader ? 1.0 / mine : 0.0};
      MPI_Allreduce(MPI_IN_PLACE, v, 3, MPI_DOUBLE, MPI_SUM, s.grid.world());
      if (v[1] > 0) {
        small_sq = v[0] / v[1];
        small_tokens = v[1] / v[2];
      }
    };
    // The squares of a gradient range [off, off + n) at data that the norm counts. Context-
    // parallel ranks hold parts of the sequences' gradient, summed first (in a copy: the range
    // goes on to its reduction as it is), of which the group's first rank counts the squares.
    // Expert-parallel ranks hold their own micro-batch's gradient of the dense tensors, summed
    // over the group likewise, and the group's gradient of their own experts, counted by each.
    float* group_sum = nullptr;  // that copy, kNoiseSumFloats at most (allocated at first use)
    const auto range_squares = [&s, &group_sum, expert_groups](size_t off, size_t n,
                                                               const float* data) {
      if (s.grid.shape().cp == 1 && !expert_groups)
        return s.range_squares(s.counted, data, off, off + n);
      // (the experts' ranges are the buffer's: ZeRO-3's packing is refused with ep > 1)
      double sq = expert_groups ? s.range_squares(s.counted_experts, data, off, off + n) : 0.0;
      Comm& group = expert_groups ? s.grid.ep() : s.grid.cp();
      const size_t piece = std::min(kNoiseSumFloats, s.model->buffer_floats());
      if (group_sum == nullptr) group_sum = s.be->alloc(piece);
      for (size_t at = 0; at < n; at += piece) {
        const size_t k = std::min(piece, n - at);
        s.be->copy(group_sum, data + at, k);
        group.all_reduce_sum(group_sum, k);
        if (group.rank() == 0) sq += s.range_squares(s.counted, group_sum, off + at, off + at + k);
      }
      return sq;
    };
    // The reduction of a gradient range final for the step (with pp = 1 the last micro-batch's
    // bucket, with a pipeline a chunk's after its last backward pass): a non-blocking reduction
    // into the slices (ZeRO-1) or all-reduce (no ZeRO). A bucket of frozen tensors only
    // (train.freeze) is not reduced: every rank holds zeros there, which no update reads.
    const bool reduces = zero || s.replicas > 1;
    const Gpt::GradReadyHook reduce_final = [&s, zero](size_t off, size_t n, float* data) {
      if (s.all_frozen(off, n)) return CommRequest{};
      return zero ? s.reduce_bucket(off, n, data, false) : s.reduce_replicas(off, n, data);
    };
    if (pipeline) {
      // The pipeline runs all micro-batches of the step by the schedule; every stage reads
      // the same sequences (the first stage needs the inputs, the last the targets).
      for (int m = 0; m < accum; ++m)
        data.fill(base + int64_t(m) * mbs, mbs, s.inputs.data() + size_t(m) * mbs * T,
                  s.targets.data() + size_t(m) * mbs * T);
      if (s.preferences) s.use_preference_rows(base, accum * mbs, moe_scale);
      const bool profile = cfg.train.profile_step == st + 1;
      std::vector<ComputeInterval> actions;
      if (profile) s.model->trace_next_step(&actions);
      // Each range of the stage's gradient goes to its reduction while the pipeline drains.
      if (zero) s.zero_grad_shards();  // the slices' padding past the parameters is no range's
      // train.noise_every: each range measured before its reduction (the config asks for dp > 1,
      // so each range has one).
      if (noise_step)
        s.model->set_grad_ready_hook([&](size_t off, size_t n, float* data) {
          small_squares += range_squares(off, n, data);
          return reduce_final(off, n, data);
        });
      else if (reduces)
        s.model->set_grad_ready_hook(reduce_final);
      s.model->set_dropout_sequence(uint64_t(cfg.train.seed), base);
      s.watch("the pipeline schedule", st);
      const ForwardStats f =
          s.model->pipeline_step(s.inputs.data(), s.targets.data(), accum, mbs, dloss_scale);
      s.model->set_grad_ready_hook(nullptr);
      loss_sum = f.loss_sum;
      z_sum = f.z_sum;
      pairs.add(f);
      if (profile) s.write_pipeline_trace(actions, int(st + 1), accum);
      if (noise_step) measure_small(base, int64_t(accum) * mbs);
    } else {
      // The slices' padding past the parameters is no bucket's: zero.
      if (zero) s.zero_grad_shards();
      // train.noise_every: the first micro-batch's gradient, whole on each replica's ranks
      // before the last micro-batch reduces (the config keeps it so); under ZeRO-2 and 3, whose
      // buckets are reduced as each micro-batch's backward finishes them, its squares are
      // summed bucket by bucket before each is handed on.
      for (int m = 0; m < accum; ++m) {
        // The last micro-batch's backward hands each finished bucket (ln_f and the head, every
        // layer, the embeddings) to its reduction while it computes the next one; ZeRO-2 and 3
        // reduce every micro-batch's buckets into the slices so.
        if (s.model->bucketed_grads()) {
          const bool measure = noise_step && m == 0;
          s.model->set_grad_ready_hook([&, measure](size_t off, size_t n, float* data) {
            if (measure) small_squares += range_squares(off, n, data);
            return s.all_frozen(off, n) ? CommRequest{} : s.reduce_bucket(off, n, data, true);
          });
        } else if (m == accum - 1 && reduces) {
          s.model->set_grad_ready_hook(reduce_final);
        }
        data.fill(base + int64_t(m) * mbs, mbs, s.inputs.data(), s.targets.data());
        if (s.preferences) s.use_preference_rows(base + int64_t(m) * mbs, mbs, moe_scale);
        s.model->set_dropout_sequence(uint64_t(cfg.train.seed), base + int64_t(m) * mbs);
        s.watch("a micro-batch's forward and backward", st);
        const ForwardStats f =
            s.model->forward_backward(s.inputs.data(), s.targets.data(), mbs, dloss_scale);
        loss_sum += f.loss_sum;
        z_sum += f.z_sum;
        pairs.add(f);
        s.model->set_grad_ready_hook(nullptr);
        if (noise_step && m == 0) {
          if (!s.model->bucketed_grads())
            small_squares = range_squares(0, s.model->num_floats(), s.model->grads());
          measure_small(base, mbs);
        }
      }
    }
    if (group_sum != nullptr) s.be->free(group_sum);
    const double loss_total = s.grid.dp().all_reduce_sum(loss_sum);
    const double loss =
        counted > 0 ? loss_total / counted : std::numeric_limits<double>::quiet_NaN();
    // DPO: the share of pairs ranked right and the mean reward margin (NaN: not DPO).
    double dpo_accuracy = std::numeric_limits<double>::quiet_NaN(), dpo_margin = dpo_accuracy;
    if (s.preferences) {
      double v[3] = {double(pairs.right), pairs.chosen, pairs.rejected};
      for (double& x : v) x = s.grid.dp().all_reduce_sum(x);
      dpo_accuracy = v[0] / counted;
      dpo_margin = (v[1] - v[2]) / counted;
    }
    s.watch("the gradients' reduction and the step's statistics", st);
    // The z-loss term's mean over the counted targets, c·(log Z)² (NaN: no z-loss).
    const double z_loss_mean = cfg.train.z_loss > 0 && counted > 0
                                   ? cfg.train.z_loss * s.grid.dp().all_reduce_sum(z_sum) / counted
                                   : std::numeric_limits<double>::quiet_NaN();
    // A mixture of experts' routing: the mean over every rank's layer passes of the step (tensor
    // parallel ranks route alike and count alike) of α times the balance, and of the busiest
    // expert's load (NaN: dense).
    // Multi-token prediction: the modules' mean loss over their targets, every rank's (the last
    // stage's tensor-parallel rank 0 counts for its group; NaN: none).
    double mtp_loss = std::numeric_limits<double>::quiet_NaN();
    if (cfg.model.mtp_depth > 0) {
      const auto [sum, count] = s.model->take_mtp_stats();
      const bool counts = s.grid.tp_rank() == 0;
      double both[2] = {counts ? sum : 0.0, counts ? double(count) : 0.0};
      MPI_Allreduce(MPI_IN_PLACE, both, 2, MPI_DOUBLE, MPI_SUM, s.grid.world());
      if (both[1] > 0) mtp_loss = both[0] / both[1];
    }
    double moe_aux_mean = std::numeric_limits<double>::quiet_NaN(), moe_load = moe_aux_mean;
    double moe_z_mean = moe_aux_mean, moe_dropped = moe_aux_mean;
    std::vector<double> moe_counts;  // the step's choices of each layer's experts, every rank's
    if (cfg.model.moe_experts > 0) {
      const MoeStats ms = s.model->take_moe_stats();
      double sums[5] = {ms.balance, ms.max_load, double(ms.count), ms.z, ms.dropped};
      MPI_Allreduce(MPI_IN_PLACE, sums, 5, MPI_DOUBLE, MPI_SUM, s.grid.world());
      moe_aux_mean = cfg.train.moe_aux_loss * sums[0] / sums[2];
      moe_load = sums[1] / sums[2];
      if (cfg.train.moe_z_loss > 0) moe_z_mean = cfg.train.moe_z_loss * sums[3] / sums[2];
      if (cfg.model.moe_capacity_factor > 0) moe_dropped = sums[4] / sums[2];
      const bool log_load = cfg.train.moe_load_every > 0 && st % cfg.train.moe_load_every == 0;
      const size_t E = size_t(cfg.model.moe_experts);
      if (log_load || cfg.train.moe_bias_rate > 0) {
        // Over every rank's choices (a stage's layers, a data- or context-parallel rank's rows;
        // tensor-parallel ranks count once).
        moe_counts = ms.loads;
        moe_counts.resize(size_t(cfg.model.n_layer + cfg.model.mtp_depth) * E, 0.0);
        MPI_Allreduce(MPI_IN_PLACE, moe_counts.data(), int(moe_counts.size()), MPI_DOUBLE, MPI_SUM,
                      s.grid.world());
      }
      if (log_load) {  // each expert's share of its layer's choices
        const GptShape& shape = s.model->shape();
        std::vector<double> shares;
        for (int l = 0; l < cfg.model.n_layer + cfg.model.mtp_depth; ++l) {
          if (!shape.moe_layer(l)) continue;
          const auto first = moe_counts.begin() + ptrdiff_t(size_t(l) * E);
          const double total = std::accumulate(first, first + ptrdiff_t(E), 0.0);
          for (size_t e = 0; e < E; ++e) shares.push_back(first[ptrdiff_t(e)] / total);
        }
        if (s.metrics) s.metrics->append_moe_load(st, shares);
      }
    }
    out.losses.push_back(loss);
    // This rank's gradient [lo, hi) of the buffer: all of it, or under ZeRO the slice it
    // receives (bucket by bucket in the backward passes) and updates before the weights are
    // all-gathered. Clipped by the global norm of the whole gradient.
    float* g = zero ? s.grad_shard : s.model->grads();
    const size_t lo = zero ? s.shard_lo : 0, hi = zero ? s.shard_hi : s.model->num_floats();
    const double norm = s.grad_norm(g, lo, hi);
    if (cfg.train.norms_every > 0 && st % cfg.train.norms_every == 0) {
      std::vector<double> grad_norms, weight_norms;
      s.layer_norms(g, lo, hi, grad_norms, weight_norms);
      if (s.metrics) s.metrics->append_norms(st, grad_norms, weight_norms);
    }
    if (std::isfinite(small_sq) && std::isfinite(norm) && counted > small_tokens) {
      s.noise.add(noise_estimate(small_sq, small_tokens, norm * norm, counted));
      if (s.metrics) s.metrics->append_noise(st, {small_sq, small_tokens, norm * norm, counted});
    }
    // Update skipping: every rank has the same loss and norm, so the same windows; the decision
    // is still agreed over the world, as ranks that disagreed would wait in different collectives.
    // A loss or norm that is not a finite number is skipped outright (with skipping on) and
    // kept out of the windows, whose mean and spread it would spoil.
    const bool skipping = cfg.train.skip_loss_z > 0 || cfg.train.skip_norm_z > 0;
    const bool finite = std::isfinite(loss) && std::isfinite(norm);
    const double nan = std::numeric_limits<double>::quiet_NaN();
    const double z_loss = finite ? s.loss_window.push(loss) : nan;
    const double z_norm = finite ? s.norm_window.push(norm) : nan;
    int skip =
        skipping && (!finite || (cfg.train.skip_loss_z > 0 && z_loss > cfg.train.skip_loss_z) ||
                     (cfg.train.skip_norm_z > 0 && z_norm > cfg.train.skip_norm_z));
    if (skipping) MPI_Allreduce(MPI_IN_PLACE, &skip, 1, MPI_INT, MPI_MAX, s.grid.world());
    // A batch whose targets the loss masks all leave out: nothing to learn from, which is no
    // sign of divergence (every rank counted the same).
    const bool nothing_counted = counted == 0;
    if (nothing_counted) {
      skip = 1;
      s.say("step " + std::to_string(st + 1) +
            ": the loss masks count no target of its batch; no update");
    } else {
      s.skipped_in_a_row = skip ? s.skipped_in_a_row + 1 : 0;
    }
    if (skip && !nothing_counted) {
      std::ostringstream os;
      os << std::fixed << std::setprecision(2) << "step " << st + 1 << " skipped: loss "
         << std::setprecision(4) << loss << " (z " << std::setprecision(1) << z_loss
         << "), grad norm " << std::setprecision(3) << norm << " (z " << std::setprecision(1)
         << z_norm << "); the weights and optimizer state stay as they were";
      s.say(os.str());
    }
    // The update writes the bf16 copy of the weights it updates as it goes (bf16 precision);
    // publish_update() brings the other ranks' slices. Clipped by the global norm as the
    // optimizer reads the gradient (no pass of its own).
    s.watch("the optimizer update", st);
    if (!skip) {
      const double wd = weight_decay_at(cfg.optim, at);  // optim.weight_decay_schedule
      s.opt->set_weight_decay(wd);
      if (s.expert_opt) s.expert_opt->set_weight_decay(wd);
      // The bf16 copy of the updated range (bf16 precision; under ZeRO its slice is then
      // gathered, or under ZeRO-3 kept).
      bf16_t* copy = s.model->params_bf16() != nullptr
                         ? s.model->params_bf16() + (lo - s.model->copy_begin())
                         : nullptr;
      s.opt->update(s.dense_update_weights(), g, lr, st + 1, copy,
                    clip_scale(norm, cfg.train.grad_clip), muon_lr_at(cfg.train, cfg.optim, at));
      if (s.expert_opt) {
        // The experts' slice: of the buffer, or under ZeRO-3 the model's packed one.
        bf16_t* ecopy = s.model->packed_experts() ? s.model->expert_params_bf16()
                        : s.model->params_bf16() != nullptr
                            ? s.model->params_bf16() + (s.expert_lo - s.model->copy_begin())
                            : nullptr;
        s.expert_opt->update(s.expert_update_weights(), s.expert_grad_shard, lr, st + 1, ecopy,
                             clip_scale(norm, cfg.train.grad_clip),
                             muon_lr_at(cfg.train, cfg.optim, at));
      }
      s.publish_update();
      // DeepSeek-V3's balancing: every rank moves the same biases alike.
      if (cfg.train.moe_bias_rate > 0)
        s.model->balance_router_bias(moe_counts, float(cfg.train.moe_bias_rate));
    }
    s.position += batch;
    s.consumed += batch;
    s.step = st + 1;
    s.be->synchronize();
    const double dt = step_timer.seconds();
    if (s.on_device && s.step == first_step + 1) {
      // What the plan (--plan) and the start line's "in all" (the backend's buffers) cannot see:
      // the workspace, which grows at the first step, communication buffers, the CUDA context.
      const double in_use =
          double(s.grid.all().all_reduce_max(int64_t(cuda_device_memory_in_use())));
      std::ostringstream os;
      os << std::fixed << std::setprecision(1)
         << "device memory after the first step: " << in_use / 1e6
         << " MB in use on the fullest GPU (the buffers: \"in all\" above)";
      s.say(os.str());
    }
    const double tps = tokens_per_step / dt;
    // MFU per device: the achieved rate of one rank over its peak.
    const double mfu = tps / s.grid.world_size() * s.model->flops_per_token() / s.peak_flops;
    if (s.metrics)
      s.metrics->append(TrainRow{st, loss, lr, norm, tps, mfu, dt * 1e3, s.consumed * T,
                                 skip ? 1.0 : 0.0, z_loss_mean, moe_aux_mean, moe_load, moe_z_mean,
                                 moe_dropped, mtp_loss, dpo_accuracy, dpo_margin});
    TRIAD_CHECK(skip || std::isfinite(loss), "training diverged: loss is ", loss, " at step ",
                st + 1, " (lower train.lr or check the data)");
    TRIAD_CHECK(s.skipped_in_a_row < cfg.train.skip_window, "training diverged: the last ",
                s.skipped_in_a_row, " steps (train.skip_window) were all skipped, up to step ",
                st + 1, " (loss ", loss, ", grad norm ", norm, ")");
    if (st % cfg.train.log_every == 0 || s.step == cfg.train.steps) {
      const double per_sequence = run_timer.seconds() / double(s.consumed - first_consumed);
      std::ostringstream os;
      os << "step " << std::setw(5) << s.step << "/" << cfg.train.steps << " | loss " << std::fixed
         << std::setprecision(4) << loss << " | lr " << std::scientific << std::setprecision(2)
         << lr << " | norm " << std::fixed << std::setprecision(3) << norm << " | "
         << std::setprecision(0) << tps << " tok/s | MFU " << std::setprecision(1) << mfu * 100
         << "% | " << std::setprecision(0) << dt * 1e3 << " ms | ETA "
         << format_duration(per_sequence * double(last_consumed - s.consumed));
      if (cfg.train.z_loss > 0)
        os << " | z-loss " << std::scientific << std::setprecision(2) << z_loss_mean;
      if (s.preferences)
        os << " | pairs right " << std::fixed << std::setprecision(3) << dpo_accuracy
           << " | margin " << std::setprecision(4) << dpo_margin;
      if (cfg.model.mtp_depth > 0)
        os << " | mtp loss " << std::fixed << std::setprecision(4) << mtp_loss;
      if (s.noise.ready())  // train.noise_every's running estimate (none while |G|² <= 0)
        os << " | noise scale " << std::scientific << std::setprecision(2) << s.noise.b_simple()
           << " tokens";
      if (cfg.model.moe_experts > 0)
        os << " | moe aux " << std::scientific << std::setprecision(2) << moe_aux_mean << " load "
           << std::fixed << std::setprecision(2) << moe_load;
      if (cfg.train.moe_z_loss > 0)
        os << " | moe z-loss " << std::scientific << std::setprecision(2) << moe_z_mean;
      if (cfg.model.moe_capacity_factor > 0)
        os << " | dropped " << std::fixed << std::setprecision(2) << moe_dropped * 100 << "%";
      // The schedules while they run: the step's global batch (ramp) and attention window.
      if (batch != cfg.train.batch_size) os << " | batch " << batch;
      if (s.window_warmup.on() && st < s.window_warmup.steps) {
        const int w = window_at(s.window_warmup, cfg.model, st);
        if (w > 0 && w < T) os << " | window " << w;
      }
      s.say(os.str());
    }
    const bool last = s.step == cfg.train.steps;
    const bool evaluates = last || (cfg.eval.every > 0 && s.step % cfg.eval.every == 0);
    if (evaluates) s.run_eval();
    // (saves, and the waits for a background one, are not timed: HangWatchdog::mark_untimed)
    s.watch_untimed("the checkpoint's save", s.step);
    if (last || (cfg.checkpoint.every > 0 && s.step % cfg.checkpoint.every == 0))
      s.save_checkpoint();
    if (evaluates && cfg.checkpoint.best) s.keep_if_best();
    s.watch("the step's end", s.step);
    // Preemption (a signal on any rank) and run.max_minutes (by rank 0's clock): every rank
    // learns of either at the same step boundary.
    const bool out_of_time =
        cfg.run.max_minutes > 0 && s.root() && run_clock.seconds() >= 60.0 * cfg.run.max_minutes;
    int flags[2] = {g_preempt_signal.load(), out_of_time ? 1 : 0}, any[2] = {0, 0};
    MPI_Allreduce(flags, any, 2, MPI_INT, MPI_MAX, s.grid.world());
    if ((any[0] != 0 || any[1] != 0) && !last) {
      s.watch_untimed("the checkpoint's save", s.step);
      s.save_checkpoint();
      s.finish_save();
      std::ostringstream why;
      if (any[0] == SIGINT)
        why << "interrupted at step " << s.step
            << ": stopped with its checkpoint (--resume auto continues)";
      else if (any[0] != 0)
        why << "preempted at step " << s.step;
      else
        why << "run.max_minutes = " << cfg.run.max_minutes << " reached at step " << s.step
            << ": stopped with its checkpoint (--resume auto continues)";
      s.say(why.str());
      out.preempted = true;
      out.interrupted = any[0] == SIGINT;
      break;
    }
  }
  s.watch_untimed("the last checkpoint's save", s.step);
  s.finish_save();
  s.watchdog.reset();
  if (s.metrics) s.metrics->flush();
  out.steps_done = s.step;
  out.dp_traffic = s.grid.dp().stats();
  out.tp_traffic = s.grid.tp().stats();
  out.pp_traffic = s.grid.pp().stats();
  out.cp_traffic = s.grid.cp().stats();
  if (cfg.parallel.ep > 1) {
    out.ep_traffic = s.grid.ep().stats();
    out.edp_traffic = s.grid.edp().stats();
  }
  out.param_floats = s.model->num_floats();
  out.buffer_floats = s.model->buffer_floats();
  out.master_floats = s.model->master_end() - s.model->master_begin();
  out.optimizer_floats =
      (s.opt->state_bytes() + (s.expert_opt ? s.expert_opt->state_bytes() : 0)) / sizeof(float);
  out.allocated_bytes = s.be->allocated_bytes();
  out.last_eval = s.last_eval;
  return out;
}

}  // namespace triad
