// A training run's state and its checkpoints (see trainer_state.h): what is saved and from which
// buffers, the background save (checkpoint.async), the best checkpoint kept (checkpoint.keep_best),
// and loading: the model's shape checked against the file's, then weights, optimizer state and the
// run's counters for a resume.
#include <algorithm>
#include <atomic>
#include <charconv>
#include <exception>
#include <filesystem>
#include <limits>
#include <thread>

#include "async_save.h"
#include "trainer_state.h"
#include "triad/kernels/cuda_comm.h"
#include "triad/train/model_tensors.h"
#include "triad/train/run_plan.h"

namespace fs = std::filesystem;

namespace triad {

std::vector<TensorRef> Trainer::State::tensor_refs(float* base, size_t first, bool whole) const {
  return model_tensor_refs(*model, base, first, whole, shard_lo, shard_hi, expert_lo, expert_hi);
}

float* Trainer::State::param_base() {
  if (!on_device && !model->sharded_master()) return model->params();
  host_params.resize(model->buffer_floats());
  return host_params.data();
}

float* Trainer::State::expert_param_base() {
  if (!on_device) return model->expert_params();
  host_expert_params.resize(expert_hi - expert_lo);
  return host_expert_params.data();
}

float* Trainer::State::slot_base(size_t i, bool experts) {
  Optimizer& o = experts ? *expert_opt : *opt;
  if (!on_device) return o.slot(i);
  auto& mirror = experts ? host_expert_slots : host_slots;
  mirror.resize(o.slot_count());
  mirror[i].resize(o.end() - o.begin());
  return mirror[i].data();
}

void Trainer::State::stage_to_host() {
  // A sharded master fills its slice, the only part a save writes (tensor_refs).
  if (param_base() != model->params())
    be->copy_to_host(param_base() + model->master_begin(), model->params(),
                     model->master_end() - model->master_begin());
  if (model->packed_experts() && expert_param_base() != model->expert_params())
    be->copy_to_host(expert_param_base(), model->expert_params(), expert_hi - expert_lo);
  if (on_device)
    for (bool experts : {false, true}) {
      if (experts && !expert_opt) continue;
      Optimizer& o = experts ? *expert_opt : *opt;
      for (size_t i = 0; i < o.slot_count(); ++i)
        be->copy_to_host(slot_base(i, experts), o.slot(i), o.end() - o.begin());
    }
}

void Trainer::State::stage_to_device(bool with_optimizer) {
  if (on_device && with_optimizer)
    for (bool experts : {false, true}) {
      if (experts && !expert_opt) continue;
      Optimizer& o = experts ? *expert_opt : *opt;
      for (size_t i = 0; i < o.slot_count(); ++i)
        be->copy_from_host(o.slot(i), slot_base(i, experts), o.end() - o.begin());
    }
  if (param_base() != model->params())
    model->set_params(param_base());
  else
    model->params_updated();  // loaded in place (CPU): refresh the bf16 copy
}

void Trainer::State::experts_from_their_slice(std::vector<TensorRef>& refs, float* base) const {
  const auto own =
      model_tensor_refs(*model, base, expert_lo, false, expert_lo, expert_hi, expert_lo, expert_hi);
  for (size_t i = 0; i < refs.size(); ++i)
    if (is_expert_tensor(refs[i].name)) refs[i] = own[i];
}

std::vector<TensorGroup> Trainer::State::groups(bool with_optimizer, bool for_save) {
  std::vector<TensorGroup> g{{"model", tensor_refs(param_base(), 0, !for_save), true}};
  if (for_save && model->packed_experts())  // ZeRO-3's experts: the packed slice (loads: whole)
    experts_from_their_slice(g.front().tensors, expert_param_base());
  if (for_save && cfg.model.moe_experts > 0) {  // (loads: load_router_bias)
    host_router_bias = model->router_bias();
    g.push_back(router_bias_group(model->shape(), host_router_bias.data()));
  }
  if (with_optimizer) {
    const bool zero = cfg.parallel.zero >= 1;
    for (const auto& sg : opt->state_groups()) {
      const size_t first = zero ? shard_lo : 0;
      // Every rank keeps the same names (the reads and writes are collective).
      auto refs = tensor_refs(slot_base(sg.slot), first, !for_save && !zero);
      if (expert_opt)  // ZeRO with expert parallelism: the experts' state is its own slice
        experts_from_their_slice(refs, slot_base(sg.slot, true));
      std::erase_if(
          refs, [&](const TensorRef& t) { return !Optimizer::group_holds(sg.tensors, t.name); });
      g.push_back({"optimizer/" + sg.name, std::move(refs), false, sg.name == "v"});
    }
  }
  return g;
}

CheckpointState Trainer::State::checkpoint_state() const {
  CheckpointState st;
  st.step = step;
  st.tokens_seen = consumed * cfg.model.seq_len;
  const int64_t n = preferences  ? preferences->num_sequences()
                    : train_data ? train_data->num_sequences()
                                 : 1;
  st.next_sequence = position % n;
  if (preferences) st.preference_reference = preferences->reference();
  if (val_preferences) st.preference_val_reference = val_preferences->reference();
  st.epoch = position / n;
  st.config = to_ini(cfg);
  st.grid = grid.describe();
  st.model = triad::model_shape(cfg);
  st.loss_window = loss_window.values();
  st.norm_window = norm_window.values();
  st.skipped_in_a_row = skipped_in_a_row;
  return st;
}

void Trainer::State::save_checkpoint() {
  finish_save();  // one save at a time
  // The metrics of the steps up to this one go to disk first: a run resumed from this checkpoint
  // after a crash continues its history without a gap (rows are otherwise written at
  // evaluations, a second apart at the least, and every half minute).
  if (metrics) metrics->flush();
  const std::string dir = cfg.checkpoint_dir();
  const std::string name = checkpoint_file_name(step);
  const std::string path = dir + "/" + name;
  // This exact state is already saved: never overwrite it. Rank 0's view decides (another
  // node's may lag behind a file moved or written there).
  // And the run's record must still be there: a run directory removed under the run (its
  // metrics and log going to files no one can open any more) stops it here, on every rank.
  std::error_code exists_ec;  // (a path the file system refuses is reported by the save below)
  int state[2] = {root() && fs::exists(path, exists_ec) ? 1 : 0, 0};
  if (root() && metrics) {
    std::error_code ec;
    state[1] = fs::exists(cfg.run_path() + "/metrics.h5", ec) ? 0 : 1;
  }
  TRIAD_MPI_CHECK(MPI_Bcast(state, 2, MPI_INT, 0, grid.world()));
  TRIAD_CHECK(!state[1], "run directory ", cfg.run_path(),
              ": metrics.h5 is gone (removed while the run wrote it); the run stops before "
              "saving step ",
              step);
  const int saved = state[0];
  if (saved) return;
  if (root()) {
    std::error_code ec;
    fs::create_directories(dir, ec);
    TRIAD_CHECK(!ec, "checkpoint.dir: cannot make ", dir, ": ", ec.message());
  }
  MPI_Barrier(grid.world());
  own_file_step = step;
  Timer t;
  stage_to_host();
  if (!cfg.checkpoint.async) {
    triad::save_checkpoint(grid.world(), path, checkpoint_state(), groups(true, true));
    if (root())
      publish_checkpoint(dir, name, cfg.checkpoint.keep, cfg.checkpoint.keep_every, best_name);
    MPI_Barrier(grid.world());
    std::ostringstream os;
    os << "checkpoint " << path << " (" << std::fixed << std::setprecision(2) << t.seconds()
       << " s)";
    say(os.str());
    return;
  }
  if (save_comm == MPI_COMM_NULL) TRIAD_MPI_CHECK(MPI_Comm_dup(grid.world(), &save_comm));
  auto save = std::make_unique<AsyncSave>();
  save->path = path;
  save->state = checkpoint_state();
  save->groups = groups(true, true);
  // The next step changes the weights and the optimizer's state in place: the thread writes a
  // copy of this rank's part.
  for (TensorGroup& g : save->groups)
    for (TensorRef& r : g.tensors) {
      const size_t n = held_elements(r);
      save->copy.emplace_back(r.data, r.data + n);
      r.data = save->copy.back().data();
    }
  AsyncSave& s = *save;
  const bool publish = root();
  const int keep = cfg.checkpoint.keep;
  const int64_t keep_every = cfg.checkpoint.keep_every;
  const std::string protect = best_name;  // (ckpt/best's, as when the save began)
  const MPI_Comm comm = save_comm;
  s.thread = std::thread([&s, comm, publish, dir, name, keep, keep_every, protect] {
    try {
      triad::save_checkpoint(comm, s.path, s.state, s.groups);
      if (publish) publish_checkpoint(dir, name, keep, keep_every, protect);
    } catch (...) {
      s.error = std::current_exception();
    }
    MPI_Barrier(comm);  // published before any rank reports it
    s.seconds = s.timer.seconds();
    s.done = true;
  });
  async_save = std::move(save);
  std::ostringstream os;
  os << "checkpoint " << path << ": copied aside in " << std::fixed << std::setprecision(2)
     << t.seconds() << " s, writing in the background";
  say(os.str());
}

bool Trainer::State::save_done() const { return !async_save || async_save->done; }

void Trainer::State::load_best(const std::string& resumed_path) {
  const std::string dir = cfg.checkpoint_dir();
  std::error_code ec;  // (resumed from a checkpoint of this directory)
  const bool here =
      !resumed_path.empty() && fs::equivalent(fs::path(resumed_path).parent_path(), dir, ec);
  double loss = std::numeric_limits<double>::infinity();
  if (root()) {
    std::optional<std::pair<std::string, double>> best;
    std::string why;
    const bool exists = fs::exists(dir + "/best");
    if (exists && resumed_path.empty()) {
      why = "this run starts anew";  // (whatever it holds)
    } else if (exists) {
      best = read_best(dir);  // (malformed: an error naming it)
      if (!best) why = "it is empty";
    }
    if (best && !here) {
      why = "the run resumed from another directory's checkpoint";
    } else if (best && best->first > checkpoint_file_name(step)) {
      why = "it names a step after the resumed step " + std::to_string(step);
    } else if (best && !fs::exists(dir + "/" + best->first)) {
      why = "the checkpoint it names is gone";
    } else if (best) {
      best_name = best->first;  // (rank 0 alone publishes, so alone needs it)
      loss = best->second;
    }
    if (!why.empty()) {
      fs::remove(dir + "/best");
      say("checkpoint.best: removed " + dir + "/best (" + why + ")");
    }
  }
  // Rank 0 decides; every rank compares with the same loss.
  TRIAD_MPI_CHECK(MPI_Bcast(&loss, 1, MPI_DOUBLE, 0, grid.world()));
  best_val = loss;
  // The weights of the resumed step are its checkpoint's (which keep_if_best may then name).
  if (here && fs::path(resumed_path).filename() == checkpoint_file_name(step)) own_file_step = step;
}

void Trainer::State::keep_if_best() {
  // The loss is the same number on every rank (all-reduced), so all ranks agree.
  if (step == 0 || last_eval.sequences == 0 || !(last_eval.loss < best_val)) return;
  save_checkpoint();  // (nothing new where this step's checkpoint exists)
  finish_save();      // published before it is named
  const std::string name = checkpoint_file_name(step);
  if (own_file_step != step) {  // an earlier history's file at this step: not these weights
    say("checkpoint.best: " + cfg.checkpoint_dir() + "/" + name +
        " is not this run's (a file of an earlier history, which is never overwritten): not named "
        "in ckpt/best");
    return;
  }
  if (root()) publish_best(cfg.checkpoint_dir(), name, last_eval.loss);
  MPI_Barrier(grid.world());
  best_val = last_eval.loss;
  best_name = name;
  std::ostringstream os;
  os << "best validation loss so far (" << std::fixed << std::setprecision(6) << best_val
     << "): ckpt/best names " << name;
  say(os.str());
}

void Trainer::State::finish_save() {
  if (!async_save) return;
  const std::unique_ptr<AsyncSave> s = std::move(async_save);
  s->thread.join();
  if (s->error) std::rethrow_exception(s->error);
  std::ostringstream os;
  os << "checkpoint " << s->path << " (written in the background in " << std::fixed
     << std::setprecision(2) << s->seconds << " s)";
  say(os.str());
}

std::string Trainer::State::check_model_shape(const CheckpointState& st, const std::string& path,
                                              bool extend, bool init_from) const {
  const auto& m = st.model;
  const auto& c = cfg.model;
  // Context extension (--extend-positions): no tensor of a rotary model depends on its
  // positions, so they are the config's.
  const bool free = extend && m.position == "rope" && c.position == "rope";
  const char* hint =
      m.position == "rope" && c.position == "rope" && !extend
          ? " (to extend a rotary model's context from it: --init-from with --extend-positions)"
          : "";
  if (m.n_layer != c.n_layer || m.n_head != c.n_head || m.n_embd != c.n_embd ||
      (m.seq_len != c.seq_len && !free) || m.vocab_size != c.vocab_size) {
    fail("checkpoint ", path, " holds a model with n_layer=", m.n_layer, " n_head=", m.n_head,
         " n_embd=", m.n_embd, " seq_len=", m.seq_len, " vocab_size=", m.vocab_size,
         " but the config asks for n_layer=", c.n_layer, " n_head=", c.n_head, " n_embd=", c.n_embd,
         " seq_len=", c.seq_len, " vocab_size=", c.vocab_size, m.seq_len != c.seq_len ? hint : "");
  }
  // A learned table and rotary positions hold different tensors (wpe or none), and a model
  // trained with one rope_theta does not read positions with another (unless extended).
  if (m.position != c.position || (c.position == "rope" && m.rope_theta != c.rope_theta && !free)) {
    auto describe = [](const std::string& position, double theta) {
      char buf[32];
      const auto r = std::to_chars(buf, buf + sizeof(buf), theta);
      return position == "rope" ? "rope with rope_theta=" + std::string(buf, r.ptr)
                                : std::string("learned (wpe)");
    };
    fail("checkpoint ", path, " holds a model with positions ", describe(m.position, m.rope_theta),
         " but the config asks for model.position = ", describe(c.position, c.rope_theta),
         m.position == c.position ? hint : "");
  }
  // ... nor do the windowed layers with another base of their own (model.rope_local_theta).
  const double local_theta = c.position == "rope" ? c.rope_local_theta : 0.0;
  TRIAD_CHECK(m.rope_local_theta == local_theta || free, "checkpoint ", path,
              " holds a model whose windowed layers rotate by the base ", m.rope_local_theta,
              " (0: rope_theta's) but the config asks for model.rope_local_theta = ", local_theta,
              hint);
  // Scaled frequencies are other positions too: the config's scaling, as a checkpoint holds it
  // (the numbers of the scaling it names; the others at their defaults, as the file's reader
  // leaves them).
  const ModelShape asked = triad::model_shape(cfg);
  const bool same_scaling = m.rope_scaling == asked.rope_scaling &&
                            m.rope_scaling_factor == asked.rope_scaling_factor &&
                            m.rope_low_freq_factor == asked.rope_low_freq_factor &&
                            m.rope_high_freq_factor == asked.rope_high_freq_factor &&
                            m.rope_original_positions == asked.rope_original_positions &&
                            m.rope_yarn_beta_fast == asked.rope_yarn_beta_fast &&
                            m.rope_yarn_beta_slow == asked.rope_yarn_beta_slow &&
                            m.rope_yarn_mscale == asked.rope_yarn_mscale &&
                            m.rope_yarn_mscale_all_dim == asked.rope_yarn_mscale_all_dim &&
                            m.rope_yarn_truncate == asked.rope_yarn_truncate &&
                            m.rope_short_factor == asked.rope_short_factor &&
                            m.rope_long_factor == asked.rope_long_factor;
  // (YaRN's ramp ends, gpt-oss's unrounded ones, by their key: an imported gpt-oss resumed
  // without model.rope_yarn_truncate = false.)
  TRIAD_CHECK(free || m.rope_scaling != "yarn" || asked.rope_scaling != "yarn" ||
                  m.rope_yarn_truncate == asked.rope_yarn_truncate,
              "checkpoint ", path, " holds a model whose YaRN ramp ends are ",
              m.rope_yarn_truncate ? "rounded" : "not rounded (gpt-oss's)",
              " but the config asks for model.rope_yarn_truncate = ",
              asked.rope_yarn_truncate ? "true" : "false", hint);
  TRIAD_CHECK(free || same_scaling, "checkpoint ", path, " holds a model with rope_scaling ",
              m.rope_scaling,
              m.rope_scaling != "none" ? " (its factors in the file's /model attributes)" : "",
              " but the config asks for model.rope_scaling = ", c.rope_scaling,
              c.rope_scaling != "none" ? " with other factors or original positions" : "", hint);
  // LayerNorm and RMSNorm differ in their tensors (the biases) and in what they compute.
  TRIAD_CHECK(m.norm == c.norm, "checkpoint ", path, " holds a model with norm ", m.norm,
              " but the config asks for model.norm = ", c.norm);
  // The model's switches: what the checkpoint's model has "with" or "without".
  struct Switch {
    bool held, asked;
    const char *what, *key;
  };
  for (const Switch& s :
       {Switch{m.bias, c.bias, "biases", "bias"},
        Switch{m.qkv_bias, c.qkv_bias, "a c_attn bias of its own", "qkv_bias"},
        Switch{m.mlp_bias, c.mlp_bias, "MLP biases beside bias-free attention", "mlp_bias"},
        Switch{m.norm_bias, c.norm_bias, "LayerNorm biases beside bias-free linear layers",
               "norm_bias"},
        Switch{m.norm_weight, c.norm_weight, "learned norm weights", "norm_weight"},
        Switch{m.parallel_residual, c.parallel_residual, "parallel attention and MLP",
               "parallel_residual"},
        Switch{m.head_bias, c.head_bias, "a bias on its head's logits", "head_bias"},
        Switch{m.shared_norm, c.shared_norm, "one norm for both parallel branches", "shared_norm"},
        Switch{m.branch_norm, c.branch_norm, "norms on the branches' outputs", "branch_norm"},
        Switch{m.pre_norm, c.pre_norm, "norms before the branches (ln_1, ln_2)", "pre_norm"}})
    TRIAD_CHECK(s.held == s.asked, "checkpoint ", path, " holds a model ",
                s.held ? "with " : "without ", s.what, " but the config asks for model.", s.key,
                " = ", s.asked ? "true" : "false");
  // (Multi-head latent attention's heads: their sizes are compared below.)
  TRIAD_CHECK(m.kv_lora_rank > 0 || c.mla() ||
                  (m.head_dim > 0 ? m.head_dim : m.n_embd / m.n_head) == c.hd(),
              "checkpoint ", path, " holds a model with heads ",
              m.head_dim > 0 ? m.head_dim : m.n_embd / m.n_head, " wide but the config's are ",
              c.hd(), " (model.head_dim = ", c.head_dim, ")");
  // 0 and the head's width both rotate every value.
  const int64_t rotated = m.rotary_dim > 0 ? m.rotary_dim : c.hd();
  TRIAD_CHECK(rotated == (c.rotary_dim > 0 ? c.rotary_dim : c.hd()), "checkpoint ", path,
              " holds a model whose heads rotate ",
              m.rotary_dim > 0 ? std::to_string(m.rotary_dim) + " values" : "all their values",
              " but the config asks for model.rotary_dim = ", c.rotary_dim);
  TRIAD_CHECK(m.nope_every == (c.position == "rope" ? c.nope_every : 0), "checkpoint ", path,
              " holds a model whose every ", m.nope_every,
              "th layer rotates nothing (0: every layer rotates) but the config asks for "
              "model.nope_every = ",
              c.nope_every);
  TRIAD_CHECK(
      m.sliding_window == c.sliding_window, "checkpoint ", path,
      " holds a model whose attention window is ",
      m.sliding_window > 0 ? std::to_string(m.sliding_window) + " keys" : "the whole context",
      " but the config asks for model.sliding_window = ", c.sliding_window);
  TRIAD_CHECK(m.full_attention_every == c.full_attention_every, "checkpoint ", path,
              " holds a model whose every ", m.full_attention_every,
              "th layer attends to the whole context (0: none) but the config asks for ",
              "model.full_attention_every = ", c.full_attention_every);
  TRIAD_CHECK(m.full_attention_first == c.full_attention_first, "checkpoint ", path,
              " holds a model whose full-attention layers ",
              m.full_attention_first ? "start" : "end",
              " each group of model.full_attention_every layers but the config asks for "
              "model.full_attention_first = ",
              c.full_attention_first ? "true" : "false");
  // The model's scalars (fp32 in the model: compared as such).
  struct Scalar {
    double held, asked;
    const char *what, *key, *none;
  };
  for (const Scalar& s :
       {Scalar{m.logit_softcap, c.logit_softcap, "logits are capped at", "logit_softcap",
               " (0: none)"},
        Scalar{m.attn_softcap, c.attn_softcap, "attention scores are capped at", "attn_softcap",
               " (0: none)"},
        Scalar{m.clip_qkv, c.clip_qkv, "q, k and v are clamped at", "clip_qkv", " (0: none)"},
        Scalar{m.glu_alpha, c.glu_alpha, "SwiGLU's gate activation has alpha", "glu_alpha", ""},
        Scalar{m.glu_limit, c.glu_limit, "SwiGLU's gate and up are clamped at", "glu_limit",
               " (0: none)"},
        Scalar{m.glu_offset, c.glu_offset, "SwiGLU's up projection is offset by", "glu_offset", ""},
        Scalar{m.logit_scale, c.logit_scale, "logits are scaled by", "logit_scale", ""},
        Scalar{m.residual_scale, c.residual_scale, "branches' outputs are scaled by",
               "residual_scale", ""},
        Scalar{m.embed_scale, c.embed_scale, "embedding is scaled by", "embed_scale", ""}})
    TRIAD_CHECK(float(s.held) == float(s.asked), "checkpoint ", path, " holds a model whose ",
                s.what, " ", s.held, s.none, " but the config asks for model.", s.key, " = ",
                s.asked);
  TRIAD_CHECK(float(m.attn_scale) == float(c.attn_scale), "checkpoint ", path,
              " holds a model whose attention scale is ", m.attn_scale,
              " (0: 1/sqrt(head width)) but the config asks for model.attn_scale = ", c.attn_scale);
  TRIAD_CHECK(m.mup_base_width == c.mup_base_width, "checkpoint ", path,
              " holds a model of μP base width ", m.mup_base_width,
              " (0: no μP) but the config asks for model.mup_base_width = ", c.mup_base_width);
  TRIAD_CHECK(float(m.norm_eps) == float(c.norm_eps), "checkpoint ", path,
              " holds a model with norm_eps ", m.norm_eps, " but the config asks for ",
              "model.norm_eps = ", c.norm_eps);
  TRIAD_CHECK(m.mlp == c.mlp && m.mlp_hidden == cfg.mlp_hidden_size(), "checkpoint ", path,
              " holds a model with a ", m.mlp, " MLP of ", m.mlp_hidden,
              " hidden units but the config asks for model.mlp = ", c.mlp, " with ",
              cfg.mlp_hidden_size());
  TRIAD_CHECK(
      m.tied == c.tie_embeddings, "checkpoint ", path, " holds a model whose output layer ",
      m.tied ? "is wte (tied)" : "is lm_head (untied)",
      " but the config asks for model.tie_embeddings = ", c.tie_embeddings ? "true" : "false");
  TRIAD_CHECK(m.n_kv_head == c.kv_heads(), "checkpoint ", path, " holds a model with ", m.n_kv_head,
              " key/value heads but the config asks for ", c.kv_heads(),
              " (model.n_kv_head = ", c.n_kv_head, ")");
  TRIAD_CHECK(
      m.qk_norm == c.qk_norm, "checkpoint ", path, " holds a model ",
      m.qk_norm ? "with" : "without",
      " q and k norms but the config asks for model.qk_norm = ", c.qk_norm ? "true" : "false");
  TRIAD_CHECK(m.qk_norm_full == c.qk_norm_full, "checkpoint ", path,
              " holds a model whose q and k norms are ",
              m.qk_norm_full ? "over all heads" : "per head",
              " but the config asks for model.qk_norm_full = ", c.qk_norm_full ? "true" : "false");
  TRIAD_CHECK(m.attn_sinks == c.attn_sinks, "checkpoint ", path, " holds a model ",
              m.attn_sinks ? "with" : "without",
              " attention sinks but the config asks for model.attn_sinks = ",
              c.attn_sinks ? "true" : "false");
  auto mla = [](int64_t kv, int64_t q, int64_t nope, int64_t rope, int64_t v) {
    if (kv == 0) return std::string("no multi-head latent attention");
    return "multi-head latent attention (kv_lora_rank " + std::to_string(kv) + ", q_lora_rank " +
           std::to_string(q) + ", qk_nope_head_dim " + std::to_string(nope) +
           ", qk_rope_head_dim " + std::to_string(rope) + ", v_head_dim " + std::to_string(v) + ")";
  };
  const std::string mla_held =
      mla(m.kv_lora_rank, m.q_lora_rank, m.qk_nope_head_dim, m.qk_rope_head_dim, m.v_head_dim);
  const std::string mla_asked =
      mla(c.kv_lora_rank, c.q_lora_rank, c.qk_nope_head_dim, c.qk_rope_head_dim, c.v_head_dim);
  TRIAD_CHECK(mla_held == mla_asked, "checkpoint ", path, " holds a model with ", mla_held,
              " but the config asks for ", mla_asked, " (model.kv_lora_rank ...)");
  // The epsilon the latent norms use (0: norm_eps's, which is compared above).
  auto latent_eps = [](double mla, double norm) { return mla > 0 ? mla : norm; };
  const double held_eps = latent_eps(m.mla_norm_eps, m.norm_eps);
  TRIAD_CHECK(float(held_eps) == float(latent_eps(c.mla_norm_eps, c.norm_eps)), "checkpoint ", path,
              " holds a model whose latent norms' epsilon is ", held_eps,
              " but the config asks for model.mla_norm_eps = ", c.mla_norm_eps,
              " (0: model.norm_eps)");
  TRIAD_CHECK(m.moe_experts == c.moe_experts &&
                  (c.moe_experts == 0 ||
                   (m.moe_top_k == c.moe_top_k && m.moe_normalize == c.moe_normalize)),
              "checkpoint ", path, " holds a model with ", m.moe_experts,
              " experts per layer (top ", m.moe_top_k, ", normalize ",
              m.moe_normalize ? "true" : "false",
              ") but the config asks for model.moe_experts = ", c.moe_experts,
              ", model.moe_top_k = ", c.moe_top_k,
              ", model.moe_normalize = ", c.moe_normalize ? "true" : "false");
  TRIAD_CHECK(c.moe_experts == 0 ||
                  (m.moe_score == c.moe_score && m.moe_routed_scale == c.moe_routed_scale &&
                   m.moe_groups == c.moe_groups && m.moe_group_top_k == c.moe_group_top_k &&
                   m.moe_group_score == c.moe_group_score),
              "checkpoint ", path, " holds a model whose router scores by ", m.moe_score,
              " with its gates times ", m.moe_routed_scale, ", choosing from ", m.moe_group_top_k,
              " of ", m.moe_groups, " groups scored by ", m.moe_group_score,
              ", but the config asks for model.moe_score = ", c.moe_score,
              ", model.moe_routed_scale = ", c.moe_routed_scale,
              ", model.moe_groups = ", c.moe_groups,
              ", model.moe_group_top_k = ", c.moe_group_top_k,
              ", model.moe_group_score = ", c.moe_group_score);
  TRIAD_CHECK(
      m.moe_shared_hidden == c.moe_shared_hidden, "checkpoint ", path,
      " holds a model with shared experts of ", m.moe_shared_hidden,
      " hidden units but the config asks for model.moe_shared_hidden = ", c.moe_shared_hidden);
  TRIAD_CHECK(m.moe_shared_gate == c.moe_shared_gate, "checkpoint ", path, " holds a model ",
              m.moe_shared_gate ? "with" : "without",
              " a gate of its shared experts but the config asks for model.moe_shared_gate = ",
              c.moe_shared_gate ? "true" : "false");
  TRIAD_CHECK(m.mtp_depth == c.mtp_depth || init_from, "checkpoint ", path, " holds a model with ",
              m.mtp_depth,
              " multi-token prediction modules but the config asks for "
              "model.mtp_depth = ",
              c.mtp_depth);
  TRIAD_CHECK(m.moe_bias == c.moe_bias, "checkpoint ", path, " holds a model ",
              m.moe_bias ? "with" : "without",
              " biases of its router and experts but the config asks for model.moe_bias = ",
              c.moe_bias ? "true" : "false");
  TRIAD_CHECK(
      c.moe_experts == 0 || (m.moe_first_dense == c.moe_first_dense && m.moe_every == c.moe_every),
      "checkpoint ", path, " holds a model whose experts start after ", m.moe_first_dense,
      " dense layers, every ", m.moe_every,
      " layers, but the config asks for model.moe_first_dense = ", c.moe_first_dense,
      ", model.moe_every = ", c.moe_every);
  TRIAD_CHECK(m.moe_dense_hidden == c.moe_dense_hidden, "checkpoint ", path,
              " holds a model whose dense layers among the experts are ", m.moe_dense_hidden,
              " units wide (0: the experts' width) but the config asks for "
              "model.moe_dense_hidden = ",
              c.moe_dense_hidden);
  if (!free) return "";
  // What the extension changes, as the two models' /model attributes say it.
  std::ostringstream os;
  if (m.seq_len != asked.seq_len) os << ", seq_len " << m.seq_len << " -> " << asked.seq_len;
  if (m.rope_theta != asked.rope_theta)
    os << ", rope_theta " << m.rope_theta << " -> " << asked.rope_theta;
  if (m.rope_local_theta != asked.rope_local_theta)
    os << ", rope_local_theta " << m.rope_local_theta << " -> " << asked.rope_local_theta;
  if (!same_scaling)
    os << ", rope scaling " << m.rope_scaling << " -> " << asked.rope_scaling
       << (asked.rope_scaling != "none" ? " (the config's factors)" : "");
  return os.str().empty() ? "" : os.str().substr(2);
}

CheckpointState Trainer::State::load_weights(const std::string& path) {
  const CheckpointState st = read_checkpoint_state(grid.world(), path);
  const bool init_from = path == cl.init_from;
  const std::string extended =
      check_model_shape(st, path, cl.extend_positions && init_from, init_from);
  if (!extended.empty())
    say("--extend-positions: " + path +
        "'s rotary positions extended as the config asks: " + extended);
  // The load fills every tensor, wte's padding rows with zeros, so nothing needs staging first;
  // but the multi-token prediction modules the checkpoint lacks (--init-from), which keep their
  // initialization.
  auto weights = groups(false, false);
  const int held = int(st.model.mtp_depth), asked = cfg.model.mtp_depth;
  if (held < asked) {
    for (TensorGroup& g : weights)
      std::erase_if(g.tensors, [&](const TensorRef& r) { return mtp_module_of(r.name) >= held; });
    say("--init-from: " + path + " holds " + std::to_string(held) +
        " multi-token prediction module(s) of the config's " + std::to_string(asked) +
        ": the others start from their initialization");
  } else if (held > asked) {
    // (The file's attributes describe tensors the load leaves unread: not a disagreement.)
    for (TensorGroup& g : weights) g.whole = false;
    say("--init-from: " + path + " holds " + std::to_string(held) +
        " multi-token prediction module(s), the config " + std::to_string(asked) +
        ": the others are left out");
  }
  if (cl.from_ema) {  // the moving average's tensors are named and shaped as the model's
    weights.front().path = "optimizer/ema";
    TRIAD_CHECK(checkpoint_has_group(grid.world(), path, "optimizer/ema"), "--from-ema: ", path,
                " holds no moving average of the weights (/optimizer/ema): its run did not set "
                "optim.ema_decay");
  }
  load_checkpoint_tensors(grid.world(), path, weights);
  stage_to_device(false);
  load_router_bias(grid.world(), path, *model, held);
  return st;
}

void Trainer::State::load_from(const std::string& path, bool resume) {
  if (!resume) {
    load_weights(path);
    opt->reset();
    if (expert_opt) expert_opt->reset();
    start_ema();
    say("initialized weights from " + path + (cl.from_ema ? "'s moving average" : "") +
        " (fresh optimizer)");
    return;
  }
  const CheckpointState st = read_checkpoint_state(grid.world(), path);
  check_model_shape(st, path);
  if (preferences) {  // DPO's reference stays the one the run started from
    TRIAD_CHECK(!st.preference_reference.empty(), "checkpoint ", path,
                " holds no DPO reference (attribute preference_reference): it was not saved by a "
                "run on data.preferences; start one from it with --init-from");
    TRIAD_CHECK(int64_t(st.preference_reference.size()) == preferences->num_sequences(),
                "checkpoint ", path, " holds DPO reference values of ",
                st.preference_reference.size(), " sequences, but data.preferences has ",
                preferences->num_sequences(),
                " (resume with the preference file the run started with)");
    preferences->set_reference(st.preference_reference);
  }
  if (val_preferences) {
    TRIAD_CHECK(int64_t(st.preference_val_reference.size()) == val_preferences->num_sequences(),
                "checkpoint ", path, " holds DPO reference values of ",
                st.preference_val_reference.size(),
                " held-out sequences, but eval.preferences has ", val_preferences->num_sequences(),
                " (the reference of a held-out set is computed when the run starts: give the "
                "file the run started with, or none)");
    val_preferences->set_reference(st.preference_val_reference);
  }
  // The optimizer the checkpoint was saved with, from its config where it parses (files
  // written by other tools may carry none): its state cannot continue another optimizer.
  std::string saved_optim;
  try {
    saved_optim = parse_config_text(st.config, path).optim.name;
  } catch (const Error&) {
  }
  TRIAD_CHECK(saved_optim.empty() || saved_optim == cfg.optim.name, "checkpoint ", path,
              " holds the state of optim.name = ", saved_optim, ", not ", cfg.optim.name,
              " (resume with the optimizer it was saved with, or use --init-from)");
  // optim.ema_decay on a checkpoint without a moving average: it starts from the weights loaded.
  const bool saved_average = checkpoint_has_group(grid.world(), path, "optimizer/ema");
  const bool start_average = opt->ema() && !saved_average;
  for (const auto& sg : opt->state_groups()) {
    const std::string slot = "optimizer/" + sg.name;
    if (sg.name == "ema" && start_average) continue;
    TRIAD_CHECK(checkpoint_has_group(grid.world(), path, slot), "checkpoint ", path, " has no /",
                slot, " state for optim.name = ", cfg.optim.name,
                " (resume with the optimizer it was saved with, or use --init-from)");
  }
  if (!opt->ema() && saved_average)
    say("warning: checkpoint " + path +
        " holds a moving average of the weights, which this run "
        "(optim.ema_decay = 0) does not keep: its checkpoints will have none");
  auto loaded = groups(true, false);
  if (start_average)
    std::erase_if(loaded, [](const TensorGroup& g) { return g.path == "optimizer/ema"; });
  load_checkpoint_tensors(grid.world(), path, loaded);
  stage_to_device(true);
  if (start_average) {
    start_ema();
    say("checkpoint " + path +
        " holds no moving average of the weights: optim.ema_decay starts "
        "one from its weights");
  }
  load_router_bias(grid.world(), path, *model);
  step = st.step;
  const int64_t n = data().num_sequences();
  TRIAD_CHECK(st.next_sequence >= 0 && st.epoch >= 0, "checkpoint ", path,
              ": negative loader position");
  TRIAD_CHECK(st.epoch <= (std::numeric_limits<int64_t>::max() - st.next_sequence) /
                              std::max<int64_t>(n, 1),
              "checkpoint ", path, ": its loader position (epoch ", st.epoch, ", next_sequence ",
              st.next_sequence, ") is beyond any run over ", n, " sequences: the file is damaged");
  position = st.epoch * n + st.next_sequence;
  // The sequences trained on, which a batch-size ramp-up follows (the loader's position does not
  // count them where the data changed between the runs).
  TRIAD_CHECK(st.tokens_seen >= 0 && st.tokens_seen % cfg.model.seq_len == 0, "checkpoint ", path,
              ": tokens_seen (", st.tokens_seen, ") is not a whole number of sequences of ",
              cfg.model.seq_len, " tokens");
  consumed = st.tokens_seen / cfg.model.seq_len;
  loss_window.restore(st.loss_window);
  norm_window.restore(st.norm_window);
  skipped_in_a_row = st.skipped_in_a_row;
  say("resumed from " + path + " at step " + std::to_string(step));
}

}  // namespace triad
