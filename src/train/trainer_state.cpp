// The operations of a training run's state (see trainer_state.h); its checkpoints are
// trainer_checkpoints.cpp's.
#include "trainer_state.h"

#include <algorithm>
#include <charconv>
#include <cstdio>
#include <exception>
#include <limits>
#include <set>
#include <sstream>
#include <thread>

#include "async_save.h"
#include "run_directory.h"
#include "triad/kernels/cuda_comm.h"
#include "triad/parallel/comm.h"
#include "triad/train/choice_eval.h"
#include "triad/train/model_tensors.h"
#include "triad/train/pipeline_trace.h"
#include "triad/train/run_plan.h"

namespace fs = std::filesystem;

namespace triad {

Trainer::State::State(MPI_Comm world, const CommandLine& c)
    : cl(c),
      cfg(c.config),
      grid(world, c.config.parallel.tp, c.config.parallel.pp, c.config.parallel.cp,
           c.config.parallel.ep) {}

void Trainer::State::say(const std::string& line) {
  if (!root()) return;
  std::cout << line << std::endl;
  if (log.is_open()) log << line << std::endl;
}

void Trainer::State::setup_backend() {
  // The CPU backend runs every op, matmuls included, on OpenMP threads (OpenBLAS itself
  // single-threaded inside them), so the OpenMP thread count is the one knob.
  if (cfg.run.threads > 0) omp_set_num_threads(cfg.run.threads);
  if (cfg.run.backend == "cuda") {
    // Ranks on one node take the GPUs they see in turn (several ranks may share one).
    MPI_Comm node;
    TRIAD_MPI_CHECK(
        MPI_Comm_split_type(grid.world(), MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node));
    const int local = rank_in(node), local_size = size_of(node);
    const int devices = cuda_device_count();
    const int device = devices > 0 ? local % devices : 0;
    be = make_cuda_backend(device);
    on_device = true;
    // Resolved on every rank, so a bad TRIAD_FLASH_KERNEL or TRIAD_FLASH_BACKWARD stops them
    // all here.
    if (cfg.bf16()) flash_desc = cuda_flash_kernel();
    // Whether two ranks of the node drive one GPU: compare the physical devices (PCI bus ids),
    // not the numbers, since a launcher may give every rank its own GPU as "device 0".
    constexpr int kIdLen = 64;
    char id[kIdLen] = {};
    const std::string bus = cuda_pci_bus_id(device);
    std::snprintf(id, sizeof id, "%s", bus.empty() ? "?" : bus.c_str());
    std::vector<char> ids(size_t(kIdLen) * size_t(local_size));
    TRIAD_MPI_CHECK(MPI_Allgather(id, kIdLen, MPI_CHAR, ids.data(), kIdLen, MPI_CHAR, node));
    TRIAD_MPI_CHECK(MPI_Comm_free(&node));
    std::set<std::string> distinct;
    for (int r = 0; r < local_size; ++r) distinct.insert(std::string(&ids[size_t(r) * kIdLen]));
    setup_device_comms(int(distinct.size()) < local_size);
  } else {
    be = make_cpu_backend();
  }
}

void Trainer::State::setup_device_comms(bool shares_gpu) {
  // Every rank takes the same decision: the facts that differ between ranks are agreed first.
  // (the lowest rank's reason, which rank 0's error must name: the others' may not be printed)
  const std::string status = nccl_status();
  const auto [missing_rank, nccl_problem] =
      lowest_rank_message(grid.world(), !status.empty(), status);
  const bool any_shared = grid.all().all_reduce_max(int64_t(shares_gpu)) != 0;
  const bool any_missing = missing_rank < grid.world_size();
  const std::string& want = cfg.parallel.comm;
  if (want == "nccl") {
    TRIAD_CHECK(!any_shared,
                "parallel.comm = nccl: two ranks of a node drive the same GPU (same PCI bus "
                "id), which NCCL refuses; use parallel.comm = mpi");
    TRIAD_CHECK(!any_missing, "parallel.comm = nccl: rank ", missing_rank, ": ", nccl_problem);
  }
  const bool nccl =
      want == "nccl" || (want == "auto" && grid.world_size() > 1 && !any_shared && !any_missing);
  if (nccl) {
    // NCCL for the groups that move tensors in collectives every step: dp, cp, tp, and with
    // experts ep (the tokens' all-to-alls) and edp (the expert replicas' gradient reductions,
    // which then overlap the backward pass like dp's); the pipeline group (point-to-point, which
    // stays on MPI anyway) and the world (scalars) are staged. Every rank makes its communicators
    // in the grid's one order (ProcessGrid::wrap_comms), so no two groups' set-ups wait on each
    // other.
    const bool experts = grid.shape().ep > 1;
    grid.wrap_comms([this](std::unique_ptr<Comm> c) {
      const std::string n = c->name();
      if (n == "dp" || n == "cp" || n == "tp" || n == "ep" || n == "edp")
        return make_nccl_comm(std::move(c), *be);
      return make_device_staged_comm(std::move(c));
    });
    comm_desc = "nccl " + nccl_version() +
                (experts ? " (dp, cp, tp, ep, edp collectives)" : " (dp, cp, tp collectives)");
  } else if (grid.world_size() > 1) {
    grid.wrap_comms(make_device_staged_comm);
    comm_desc = "mpi (device buffers staged through host memory)";
  }
}

GptShape Trainer::State::model_shape() const { return gpt_shape(cfg); }

namespace {
std::string frozen_globs(const Config& cfg, const std::vector<ParamSpec>& layout) {
  std::string globs = trim_blanks(cfg.train.freeze);
  if (cfg.model.norm_weight) return globs;
  // model.norm_weight = false: every norm's weight and bias (those the model has), not the
  // per-head QK-norms'.
  for (const char* p :
       {"h/*/ln_1/*", "h/*/ln_2/*", "h/*/ln_attn_out/*", "h/*/ln_mlp_out/*", "ln_f/*"}) {
    const bool any = std::any_of(layout.begin(), layout.end(),
                                 [&](const ParamSpec& s) { return frozen_tensor(p, s.name); });
    if (any) globs += (globs.empty() ? "" : ", ") + std::string(p);
  }
  return globs;
}
}  // namespace

void Trainer::State::setup_model() {
  dp = grid.shape().dp;
  dp_rank = grid.dp_rank();
  replicas = grid.replicas();
  replica_rank = grid.replica_rank();
  const int mbs = cfg.train.micro_batch_size;
  const int accum = cfg.train.batch_size / (mbs * dp);
  ModelParallel mp = model_parallel(cfg, grid.pp_rank(), grid.tp_rank());
  mp.tp_comm = &grid.tp();
  mp.pp_comm = &grid.pp();
  mp.cp_rank = grid.cp_rank();
  mp.cp_comm = &grid.cp();
  mp.ep_rank = grid.ep_rank();
  if (mp.ep > 1) mp.ep_comm = &grid.ep();
  expert_replica_rank = grid.expert_replica_rank();
  ramp = parse_batch_rampup(cfg.train.batch_rampup, cfg.train.batch_size);
  window_warmup = parse_window_warmup(cfg.train.window_warmup, cfg.model);
  // The full batch's schedule; the memory holds what a ramp's smaller batches' need too (each
  // built when its batch comes: use_schedule).
  PipelineSchedule schedule;
  if (mp.pp > 1) schedule = pipeline_schedule(cfg, accum);
  const std::unique_ptr<ActivationSlots> also = ramp_slots(cfg, mp, dp);
  ZeroOptions zero = zero_options(cfg, replica_rank, replicas);
  zero.comm = &grid.dp();          // the replicas: ZeRO-3 gathers the weights from their slices
  zero.expert_comm = &grid.edp();  // ... and the experts from their own replicas' (ep > 1)
  zero.expert_shard = grid.expert_replica_rank();
  TRIAD_ASSERT(cfg.parallel.zero == 0 || zero.expert_shards == grid.expert_replicas());
  model = std::make_unique<Gpt>(
      model_shape(), mbs, *be, replicas, mp, mp.pp > 1 ? &schedule : nullptr,
      cfg.bf16() ? Precision::bf16 : Precision::fp32, activation_options(cfg), zero, also.get());
  model->set_z_loss(float(cfg.train.z_loss));
  model->set_mtp_weight(float(cfg.train.mtp_loss_weight));
  if (cfg.eval.bits_per_byte) {
    // The bytes each target id decodes to with the data's tokenizer: none for its special tokens
    // (documents' and chat turns' markers, not text) and for ids past its vocabulary (padding
    // rows of the embedding, never a target of its data).
    load_tokenizer();
    std::vector<int32_t> bytes(size_t(cfg.model.vocab_size), 0);
    const int32_t known = std::min<int32_t>(cfg.model.vocab_size, tokenizer->vocab_size());
    for (int32_t id = 0; id < known; ++id)
      if (!tokenizer->is_special(id))
        bytes[size_t(id)] = int32_t(tokenizer->token_bytes(id).size());
    for (const Tokenizer::Special& t : tokenizer->special_tokens())  // added tokens are text
      if (t.in_text && t.id < known) bytes[size_t(t.id)] = int32_t(t.text.size());
    model->set_target_bytes(std::move(bytes));
  }
  if (cfg.model.moe_experts > 0) {
    model->set_moe_aux_loss(float(cfg.train.moe_aux_loss));
    model->set_moe_aux_per_sequence(cfg.train.moe_aux_scope == "sequence");
    model->set_moe_z_loss(float(cfg.train.moe_z_loss));
  }
  model->set_fp8(
      cfg.run.fp8 != "off",
      [&](const std::string& name) { return frozen_tensor(cfg.run.fp8_skip, name); },
      cfg.run.fp8_head);
  freeze = frozen_globs(cfg, gpt_parameter_layout(model_shape()));
  if (!freeze.empty())  // no gradient products for the frozen tensors
    model->set_frozen([&](const std::string& name) { return frozen_tensor(freeze, name); });
  schedule_m = accum;
  const size_t S = model->buffer_floats() / size_t(replicas);
  shard_lo = size_t(replica_rank) * S;
  shard_hi = shard_lo + S;
  // Expert parallelism: the expert tensors' saves (and under ZeRO their optimizer state and
  // gradient) are sliced over their own replicas: slices of the buffer, or under ZeRO-3 of the
  // packed experts, the model's own (expert_coord).
  size_t SE = model->buffer_floats() / size_t(grid.expert_replicas());
  expert_lo = size_t(grid.expert_replica_rank()) * SE;
  expert_hi = expert_lo + SE;
  if (model->packed_experts()) {
    expert_lo = model->expert_begin();
    expert_hi = model->expert_end();
    SE = expert_hi - expert_lo;
  }
  TRIAD_ASSERT(!model->sharded_master() ||
               (model->master_begin() == shard_lo && model->master_end() == shard_hi));
  // μP (model.mup_base_width): AdamW moves the hidden matrices at lr / m; optim.embedding_lr and
  // optim.head_lr the embeddings and the head at their own peaks.
  const LrScales scales = lr_scales(cfg, model_shape().mup_mult());
  // train.freeze: the optimizer sees the trainable tensors only.
  const std::vector<ParamSpec> trained =
      trainable_specs(model->specs(), gpt_parameter_layout(model_shape()), freeze);
  if (cfg.parallel.zero >= 1) {
    // Expert parallelism: the experts' state and gradient in slices over their own replicas.
    std::vector<ParamSpec> dense, experts;
    for (const auto& s : trained) (s.expert_parallel ? experts : dense).push_back(s);
    for (auto& s : experts) s.offset = expert_coord(s.offset);
    opt = std::make_unique<Optimizer>(cfg.optim, dense, shard_lo, shard_hi, *be, &grid.dp(),
                                      &grid.tp(), true, scales);
    grad_shard = be->alloc(S);
    if (!experts.empty()) {
      expert_opt = std::make_unique<Optimizer>(cfg.optim, experts, expert_lo, expert_hi, *be,
                                               &grid.edp(), &grid.tp(), true, scales);
      expert_grad_shard = be->alloc(SE);
      if (!model->packed_experts()) expert_stash = be->alloc(SE);
    }
  } else {
    opt = std::make_unique<Optimizer>(cfg.optim, trained, 0, model->buffer_floats(), *be,
                                      &grid.dp(), &grid.tp(), false, scales, &grid.edp());
  }
  // The gradient norm counts each trainable parameter once: not the tensor-parallel replicas,
  // not the head's copy of wte, not a frozen tensor. Adjacent counted tensors merge into one
  // range (alignment gaps hold 0).
  const auto& sp = model->specs();
  auto extend = [](std::vector<std::pair<size_t, size_t>>& ranges, size_t lo, size_t hi) {
    if (!ranges.empty() && ranges.back().second == lo)
      ranges.back().second = hi;
    else
      ranges.emplace_back(lo, hi);
  };
  for (size_t i = 0; i < sp.size(); ++i) {
    const size_t lo = sp[i].offset, hi = i + 1 < sp.size() ? sp[i + 1].offset : model->num_floats();
    if (frozen_tensor(freeze, sp[i].name))
      extend(frozen, lo, hi);
    else if (!sp[i].replica)
      extend(sp[i].expert_parallel ? counted_experts : counted, lo, hi);
  }
  for (const auto& e : expert_packing(sp, model->num_floats(), 1).extents)
    expert_extents.emplace_back(e.lo, e.hi);
  // Each range lies in one extent (extents merge frozen tensors too), contiguous when packed.
  for (auto& [lo, hi] : counted_experts) {
    const size_t n = hi - lo;
    lo = expert_coord(lo);
    hi = lo + n;
  }
  // Host token buffers: one micro-batch, or all of a step's for the pipeline.
  inputs.resize(size_t(mp.pp > 1 ? accum : 1) * mbs * cfg.model.seq_len);
  targets.resize(inputs.size());
}

namespace {
// The layer a parameter belongs to: "h/3/mlp/c_fc/weight" -> "h3", "ln_f/bias" -> "ln_f".
std::string layer_of(const std::string& name) {
  const std::string head = name.substr(0, name.find('/'));
  if (head != "h") return head;
  const size_t a = name.find('/') + 1;
  return "h" + name.substr(a, name.find('/', a) - a);
}
}  // namespace

std::vector<std::string> Trainer::State::norm_groups() const {
  std::vector<std::string> groups;
  for (const auto& p : gpt_parameter_layout(model->shape())) {
    const std::string g = layer_of(p.name);
    if (std::find(groups.begin(), groups.end(), g) == groups.end()) groups.push_back(g);
  }
  return groups;
}

void Trainer::State::layer_norms(const float* g, size_t lo, size_t hi, std::vector<double>& grad,
                                 std::vector<double>& weight) {
  const std::vector<std::string> groups = norm_groups();
  std::vector<double> sq(2 * groups.size(), 0.0);  // gradient squares, then weight squares
  // As grad_norm: each parameter once (not replicas); without ZeRO dp rank 0 alone; under ZeRO
  // the slice, where the fp32 weights are current too.
  for (const auto& s : model->specs()) {
    if (!counts_in_norms(s)) continue;
    // ZeRO with expert parallelism: an expert tensor's gradient from the experts' own slice,
    // and under ZeRO-3 its weights too (packed: expert_coord).
    const bool own = expert_opt && s.expert_parallel;
    const bool packed = model->packed_experts() && s.expert_parallel;
    const float* buf = own ? expert_grad_shard : g;
    const size_t from = own || packed ? expert_lo : lo, to = own || packed ? expert_hi : hi;
    const size_t at = packed ? expert_coord(s.offset) : s.offset;
    const size_t x = std::max(at, from), y = std::min(at + s.numel, to);
    if (x >= y) continue;
    const size_t k =
        size_t(std::find(groups.begin(), groups.end(), layer_of(s.name)) - groups.begin());
    // A frozen tensor's gradient is no update's (and no reduction sums it): its weight counts.
    if (!frozen_tensor(freeze, s.name)) sq[k] += be->sum_squares(buf + (x - from), y - x);
    const float* w = packed ? model->expert_params() + (x - expert_lo)
                            : model->params() + (x - model->master_begin());
    sq[groups.size() + k] += be->sum_squares(w, y - x);
  }
  MPI_Allreduce(MPI_IN_PLACE, sq.data(), int(sq.size()), MPI_DOUBLE, MPI_SUM, grid.world());
  grad.resize(groups.size());
  weight.resize(groups.size());
  for (size_t k = 0; k < groups.size(); ++k) {
    grad[k] = std::sqrt(sq[k]);
    weight[k] = std::sqrt(sq[groups.size() + k]);
  }
}

bool Trainer::State::all_frozen(size_t off, size_t n) const {
  for (const auto& [a, b] : frozen)
    if (off >= a && off + n <= b) return true;
  return false;
}

bool Trainer::State::counts_in_norms(const ParamSpec& s) const {
  if (s.replica) return false;
  if (cfg.parallel.zero >= 1) return true;
  return (s.expert_parallel ? expert_replica_rank : replica_rank) == 0;
}

namespace {

// f(a, b, expert) for the pieces of [off, off + n) cut at the expert-parallel tensors' extents,
// in order (expert: the piece lies inside one).
template <class F>
void for_each_extent_piece(const std::vector<std::pair<size_t, size_t>>& extents, size_t off,
                           size_t n, F f) {
  size_t at = off;
  const size_t end = off + n;
  for (const auto& [lo, hi] : extents) {
    const size_t a = std::max(lo, at), b = std::min(hi, end);
    if (a >= b) continue;
    if (at < a) f(at, a, false);
    f(a, b, true);
    at = b;
  }
  if (at < end) f(at, end, false);
}

}  // namespace

CommRequest Trainer::State::reduce_replicas(size_t off, size_t n, float* data) {
  if (expert_extents.empty()) return grid.dp().iall_reduce_sum(data, n);
  // The pieces inside the expert extents over edp(), the others over dp(); one request that
  // waits for them all.
  auto reqs = std::make_shared<std::vector<CommRequest>>();
  for_each_extent_piece(expert_extents, off, n, [&](size_t a, size_t b, bool expert) {
    reqs->push_back((expert ? grid.edp() : grid.dp()).iall_reduce_sum(data + (a - off), b - a));
  });
  return joined(reqs);
}

CommRequest Trainer::State::joined(std::shared_ptr<std::vector<CommRequest>> reqs) {
  CommRequest all;
  all.on_complete([reqs] {
    for (auto& r : *reqs) r.wait();
  });
  return all;
}

CommRequest Trainer::State::reduce_bucket(size_t off, size_t n, float* data, bool accumulate) {
  // The part [a, b) of the bucket into the slices of `ranks` ranks of `slice` elements each,
  // this one's (number `rank`, from `lo`) at shard.
  // The piece [a, b) lies at [at, at + b − a) of the slices' coordinates.
  auto scatter = [&](size_t a, size_t b, size_t at, Comm& comm, size_t lo, size_t slice, int ranks,
                     int rank, float* shard) {
    float* piece = data + (a - off);
    const std::vector<size_t> counts = slice_pieces(at, at + (b - a), slice, ranks);
    const size_t mine = counts[size_t(rank)], x = std::max(at, lo);
    float* sum = shard + (mine > 0 ? x - lo : 0);
    if (accumulate && mine > 0) be->accumulate(piece + (x - at), sum, mine);
    return comm.ireduce_scatter_pieces_sum(piece, sum, counts);
  };
  const size_t S = shard_hi - shard_lo;
  if (!expert_opt)
    return scatter(off, off + n, off, grid.dp(), shard_lo, S, replicas, replica_rank, grad_shard);
  // Expert parallelism: the expert tensors' pieces into their own replicas' slices.
  auto reqs = std::make_shared<std::vector<CommRequest>>();
  for_each_extent_piece(expert_extents, off, n, [&](size_t a, size_t b, bool expert) {
    reqs->push_back(
        expert ? scatter(a, b, expert_coord(a), grid.edp(), expert_lo, expert_hi - expert_lo,
                         grid.expert_replicas(), expert_replica_rank, expert_grad_shard)
               : scatter(a, b, a, grid.dp(), shard_lo, S, replicas, replica_rank, grad_shard));
  });
  return joined(reqs);
}

void Trainer::State::zero_grad_shards() {
  be->zero(grad_shard, shard_hi - shard_lo);
  if (expert_grad_shard) be->zero(expert_grad_shard, expert_hi - expert_lo);
}

float* Trainer::State::dense_update_weights() {
  const size_t lo = cfg.parallel.zero >= 1 ? shard_lo : 0;
  return model->params() + (lo - model->master_begin());
}

float* Trainer::State::expert_update_weights() {
  return model->packed_experts() ? model->expert_params()
                                 : model->params() + (expert_lo - model->master_begin());
}

void Trainer::State::start_ema() {
  opt->start_ema(dense_update_weights());
  if (expert_opt) expert_opt->start_ema(expert_update_weights());
}

void Trainer::State::publish_update() {
  const bool zero = cfg.parallel.zero >= 1;
  const bool gather_bf16 = zero && zero_gathers_bf16(cfg);
  if (model->gathered_weights()) {
    // ZeRO-3: nothing to gather now; the layers gather the weights they read from the slices.
    model->weights_changed();
  } else if (gather_bf16) {
    // Each rank holds the fp32 master weights of its slice only (zero_options).
    bf16_t* copy = model->params_bf16();
    grid.dp().all_gather(reinterpret_cast<float*>(copy + shard_lo), reinterpret_cast<float*>(copy),
                         (shard_hi - shard_lo) / 2);
  } else if (zero) {
    stash_experts();
    grid.dp().all_gather(model->params() + shard_lo, model->params(), shard_hi - shard_lo);
    gather_experts();
    model->params_updated();
  }
  model->sync_tied_embedding(!gather_bf16);
}

std::vector<Trainer::State::SetAside> Trainer::State::use_moving_average() {
  TRIAD_ASSERT(opt->ema());
  std::vector<SetAside> set_aside;
  const auto words = [](bf16_t* p) { return reinterpret_cast<float*>(p); };
  const size_t master = model->master_end() - model->master_begin();
  set_aside.push_back({model->params(), nullptr, master});
  if (model->params_bf16() != nullptr)  // the whole buffer's copy, or ZeRO-3's slice's (even)
    set_aside.push_back({words(model->params_bf16()), nullptr,
                         (model->gathered_weights() ? master : model->buffer_floats()) / 2});
  if (model->packed_experts()) {
    const size_t n = model->expert_end() - model->expert_begin();
    set_aside.push_back({model->expert_params(), nullptr, n});
    if (model->expert_params_bf16() != nullptr)
      set_aside.push_back({words(model->expert_params_bf16()), nullptr, n / 2});
  }
  for (SetAside& a : set_aside) {
    a.copy = be->alloc(a.n);
    be->copy(a.copy, a.at, a.n);
  }
  // Each average where its optimizer's update writes the weights (and of them, bf16, their copy).
  const bool bf16 = model->params_bf16() != nullptr;
  const auto place = [&](float* w, const float* average, bf16_t* copy, size_t n) {
    be->copy(w, average, n);
    if (copy != nullptr) be->convert(copy, w, n);
  };
  place(dense_update_weights(), opt->slot(opt->ema_slot()),
        bf16 ? model->params_bf16() + (opt->begin() - model->copy_begin()) : nullptr,
        opt->end() - opt->begin());
  if (expert_opt) {
    // The experts' after the rest. Unpacked, their optimizer's range of the buffer also spans
    // dense tensors, whose average there is the dense optimizer's (a resumed run loads the
    // experts' slot with the expert tensors alone): only the expert extents are taken.
    const float* average = expert_opt->slot(expert_opt->ema_slot());
    if (model->packed_experts()) {
      place(model->expert_params(), average, model->expert_params_bf16(),
            expert_opt->end() - expert_opt->begin());
    } else {
      for (const auto& [lo, hi] : expert_extents) {
        const size_t a = std::max(lo, expert_lo), b = std::min(hi, expert_hi);
        if (a < b)
          place(model->params() + (a - model->master_begin()), average + (a - expert_lo),
                bf16 ? model->params_bf16() + (a - model->copy_begin()) : nullptr, b - a);
      }
    }
  }
  publish_update();
  model->weights_changed();  // (as restore_weights: nothing kept from the weights' passes)
  return set_aside;
}

void Trainer::State::restore_weights(const std::vector<SetAside>& set_aside) {
  for (const SetAside& a : set_aside) {
    be->copy(a.at, a.copy, a.n);
    be->free(a.copy);
  }
  model->weights_changed();  // ZeRO-3's gathered layers and any kept keys and values are stale
}

void Trainer::State::stash_experts() {
  if (expert_opt)
    be->copy(expert_stash, model->params() + (expert_lo - model->master_begin()),
             expert_hi - expert_lo);
}

void Trainer::State::gather_experts() {
  if (!expert_opt) return;
  // The data-parallel gather brought other expert-parallel ranks' experts into the extents:
  // each piece comes again from the slice of the expert replica that holds it (stashed before).
  float* p = model->params() - model->master_begin();
  for (const auto& [a, b] : expert_extents) {
    const std::vector<size_t> counts =
        slice_pieces(a, b, expert_hi - expert_lo, grid.expert_replicas());
    const size_t x = std::max(a, expert_lo);
    const float* mine =
        expert_stash + (counts[size_t(expert_replica_rank)] > 0 ? x - expert_lo : 0);
    grid.edp().iall_gather_pieces(mine, p + a, counts).wait();
  }
}

double Trainer::State::range_squares(const std::vector<std::pair<size_t, size_t>>& ranges,
                                     const float* buf, size_t from, size_t to) const {
  double sq = 0;
  for (const auto& [a, b] : ranges) {
    const size_t x = std::max(a, from), y = std::min(b, to);
    if (x < y) sq += be->sum_squares(buf + (x - from), y - x);
  }
  return sq;
}

double Trainer::State::grad_norm(const float* g, size_t lo, size_t hi) {
  // The squares of this rank's counted gradients in [lo, hi) (g points at element lo), summed
  // over the world. Without ZeRO every data-parallel replica holds the whole reduced gradient,
  // so only dp rank 0 contributes; with ZeRO each rank holds a disjoint slice.
  // Expert parallelism: the first of each expert tensor's replicas counts it.
  // Under ZeRO with expert parallelism the experts' come from their own slice.
  double sq = 0;
  auto add = [&](const std::vector<std::pair<size_t, size_t>>& ranges, const float* buf,
                 size_t from, size_t to) { sq += range_squares(ranges, buf, from, to); };
  if (cfg.parallel.zero >= 1 || replica_rank == 0) add(counted, g, lo, hi);
  if (expert_opt)
    add(counted_experts, expert_grad_shard, expert_lo, expert_hi);
  else if (cfg.parallel.zero >= 1 || expert_replica_rank == 0)
    add(counted_experts, g, lo, hi);
  if (grid.world_size() > 1) sq = grid.all().all_reduce_sum(sq);
  return std::sqrt(sq);
}

Trainer::State::~State() {
  // A background save still under way (leaving on an error): its writers on the other ranks
  // finish it with this one, or an error elsewhere ends the job (run_main's MPI_Abort).
  if (async_save && async_save->thread.joinable()) async_save->thread.join();
  if (save_comm != MPI_COMM_NULL && std::uncaught_exceptions() == 0) MPI_Comm_free(&save_comm);
  // Leaving on an error: device frees below synchronize the GPU, which must not wait for a
  // collective a peer will never join (the grid outlives the backend and model).
  if (std::uncaught_exceptions() > 0) grid.abort_comms();
  if (grad_shard) be->free(grad_shard);
  if (expert_grad_shard) be->free(expert_grad_shard);
  if (expert_stash) be->free(expert_stash);
  // The record closed before the lock goes: a run that starts the moment it is free must find
  // metrics.h5 whole.
  metrics.reset();
  log.close();
  unlock_run_directory(run_lock);
}

// eval.fim's seed: the validation sets' rearrangement is the same in every run, whatever its
// train.seed, so that their losses compare across a sweep of seeds (Bavarian et al.'s date).
constexpr uint64_t kEvalFimSeed = 20220728;

void Trainer::State::open_val() {
  // A validation set's shards, which must hold the eval.sequences it is scored on; `key` names
  // it in errors.
  auto open = [&](const std::string& glob, const std::string& key) {
    auto src = std::make_unique<SequenceSource>(
        glob, key, cfg.model.seq_len, cfg.model.vocab_size, parse_loss_mask(cfg.data.loss_mask),
        parse_eod_mask_loss(cfg.data.eod_mask_loss, cfg.model.vocab_size));
    if (cfg.eval.fim) src->set_fim(fim(kEvalFimSeed));
    TRIAD_CHECK(src->num_sequences() >= cfg.eval.sequences, "config: ", key, " holds ",
                src->num_sequences(), " sequences of seq_len ", cfg.model.seq_len,
                ", fewer than eval.sequences = ", cfg.eval.sequences);
    if (src->masks_targets() && cfg.eval.sequences > 0) {  // else its loss would be 0 / 0
      int64_t counted = 0;
      for (int64_t i = 0; i < cfg.eval.sequences && counted == 0; ++i)
        counted += src->counted_targets(i);
      TRIAD_CHECK(counted > 0, "config: ", key,
                  ": the loss masks (and data.eod_mask_loss) count no target in its first ",
                  cfg.eval.sequences, " sequences (eval.sequences), so there is no loss to report");
    }
    return src;
  };
  if (!cfg.data.val.empty()) val_src = open(cfg.data.val, "data.val");
  for (const auto& [name, glob] : parse_val_sets(cfg.eval.sets))
    val_sets.emplace_back(name, open(glob, "eval.sets (" + name + ")"));
}

int Trainer::State::batch_size_now() const {
  // From the sequences trained on (0 at a fresh start or --init-from, the checkpoint's
  // tokens_seen on resume), so a resumed ramp continues exactly.
  return batch_size_at(ramp, cfg.train.batch_size, consumed);
}

void Trainer::State::use_schedule(int m) {
  if (grid.shape().pp == 1 || m == schedule_m) return;
  model->set_schedule(pipeline_schedule(cfg, m));
  schedule_m = m;
}

void Trainer::State::use_window(int64_t updates) {
  if (window_warmup.on()) model->set_window(window_at(window_warmup, cfg.model, updates));
}

void Trainer::State::open_val_preferences() {
  if (cfg.eval.preferences.empty()) return;
  val_preferences = std::make_unique<PreferenceData>(
      cfg.eval.preferences, cfg.model.seq_len, cfg.model.vocab_size, false, 0, "eval.preferences");
}

void Trainer::State::open_choices() {
  if (cfg.eval.choices.empty()) return;
  choices = read_choice_file(cfg.eval.choices, cfg.model.vocab_size, "eval.choices");
  // (as eval.sequences: a count the file cannot give is refused, not quietly lowered)
  TRIAD_CHECK(size_t(cfg.eval.choice_examples) <= choices.size(), "config: eval.choices ",
              cfg.eval.choices, " holds ", choices.size(), " examples, fewer than ",
              "eval.choice_examples = ", cfg.eval.choice_examples, " (0: all of them)");
  if (cfg.eval.choice_examples > 0) choices.resize(size_t(cfg.eval.choice_examples));
  check_choices_fit(choices, cfg.model.seq_len, "eval.choices " + cfg.eval.choices);
  // lm-eval's acc_norm divides by the endings' characters, which the file does not hold: the
  // tokenizer decodes them (data.vocab, the one that wrote the file, as for samples).
  const std::string no_chars = "eval.choices: no accuracy by characters (lm-eval's acc_norm): ";
  if (!fs::exists(cfg.data.vocab)) {
    say(no_chars + "data.vocab " + cfg.data.vocab + " does not exist");
    return;
  }
  load_tokenizer();
  if (!count_ending_chars(choices, *tokenizer)) {
    say(no_chars + "the file holds token ids beyond the " +
        std::to_string(tokenizer->vocab_size()) + " of data.vocab " + cfg.data.vocab);
    return;
  }
  // Which tokenizer decoded them: it must be the one that wrote the file, which the file does
  // not record (ids of another vocabulary decode to other text, and to other counts).
  say("eval.choices: characters of the endings (lm-eval's acc_norm) decoded with data.vocab " +
      cfg.data.vocab);
}

FimSpec Trainer::State::fim(uint64_t seed) {
  FimSpec f = parse_fim(cfg.data, cfg.model.vocab_size, seed);
  if (f.needs_tokenizer()) {
    const std::string why = f.characters           ? "data.fim_granularity = character"
                            : !f.no_prefix.empty() ? "data.fim_no_prefix"
                                                   : "a data.fim_* token by name";
    const bool names_only = !f.characters && f.no_prefix.empty();
    TRIAD_CHECK(fs::exists(cfg.data.vocab), "config: ", why,
                names_only ? " resolves its names with data.vocab"
                           : " decodes the fragments with data.vocab",
                ", and data.vocab ", cfg.data.vocab, " does not exist");
    load_tokenizer();
    // The names first: one the tokenizer lacks is the clearer error.
    if (f.named) f = parse_fim(cfg.data, cfg.model.vocab_size, seed, tokenizer.get());
    TRIAD_CHECK(tokenizer->vocab_size() <= cfg.model.vocab_size, "config: data.vocab ",
                cfg.data.vocab, " has ", tokenizer->vocab_size(),
                " tokens, more than model.vocab_size = ", cfg.model.vocab_size,
                ": it is not the tokenizer of the data (", why, ")");
    f.tokenizer = tokenizer.get();
  }
  return f;
}

void Trainer::State::load_tokenizer() {
  if (tokenizer) return;
  try {
    tokenizer = std::make_unique<Tokenizer>(Tokenizer::from_file(cfg.data.vocab));
  } catch (const Error& e) {  // (named: its default is a path relative to the working directory)
    fail("config: data.vocab: ", e.what());
  }
}

EvalResult Trainer::State::evaluate(bool by_position) {
  EvalResult r = evaluate_val(by_position);
  if (val_preferences) {  // eval.preferences against the run's reference
    const PreferenceData::Scores s = val_preferences->score(
        sequence_logps(*val_preferences, "eval.preferences"), preference_loss());
    r.dpo_loss = s.loss;
    r.dpo_accuracy = s.accuracy;
    r.dpo_margin = s.margin;
    r.dpo_pairs = val_preferences->pairs();
  }
  if (!choices.empty()) {
    // Example i goes to data-parallel rank i mod dp; the counts are exact, the loss sum is
    // rounded with the ranks' partial sums (its last bits depend on dp).
    const ChoiceMode mode =
        cfg.eval.choice_mode == "cached" ? ChoiceMode::cached : ChoiceMode::batched;
    const ChoiceScore sc = score_choices(*model, choices, size_t(dp_rank), size_t(dp), mode,
                                         [this] { watch("the multiple-choice evaluation", step); });
    if (model->gathered_weights() || cfg.parallel.ep > 1) {
      // ZeRO-3: the weight gathers are collective over the data-parallel ranks; expert
      // parallelism: the token exchanges of every layer with experts over the expert-parallel
      // group. The ranks run as many forward passes as the busiest of them (every rank counts
      // every rank's): under ZeRO-3 a rank with fewer joins the gathers alone, under expert
      // parallelism it runs a sequence whose result it drops (any pass makes one exchange per
      // layer with experts, whatever its rows).
      int64_t most = 0;
      for (int r = 0; r < dp; ++r)
        most = std::max(most, choice_forward_passes(*model, choices, size_t(r), size_t(dp), mode));
      const int64_t mine =
          choice_forward_passes(*model, choices, size_t(dp_rank), size_t(dp), mode);
      const std::vector<int32_t> zeros(size_t(cfg.model.seq_len), 0);
      for (int64_t i = mine; i < most; ++i) {
        if (cfg.parallel.ep > 1)
          (void)model->sequence_losses(zeros.data(), 1, cfg.model.seq_len, 1, zeros.data(), false);
        else
          model->join_forward_gathers();
      }
    }
    double v[5] = {double(sc.correct), double(sc.correct_by_sum), sc.ending_loss_sum,
                   double(sc.endings), double(sc.correct_by_chars)};
    for (double& x : v) x = grid.dp().all_reduce_sum(x);
    r.choice_examples = int64_t(choices.size());
    r.choice_accuracy = v[0] / double(r.choice_examples);
    r.choice_accuracy_by_sum = v[1] / double(r.choice_examples);
    r.choice_ending_loss = v[2] / v[3];
    if (!choices[0].ending_chars.empty())  // all examples have them, or none
      r.choice_accuracy_by_chars = v[4] / double(r.choice_examples);
  }
  return r;
}

std::vector<double> Trainer::State::activation_rms(int64_t step) {
  use_window(step);  // the window step `step` trains with (train.window_warmup)
  const int T = cfg.model.seq_len;
  const int b = int(std::min<int64_t>(cfg.train.micro_batch_size, val_src->num_sequences()));
  for (int k = 0; k < b; ++k)
    val_src->read(k, inputs.data() + size_t(k) * T, targets.data() + size_t(k) * T);
  // Every replica runs the pass (ZeRO-3's weight gathers are collective over them); the first
  // counts it.
  std::vector<double> sums(Gpt::activation_names(cfg.model.n_layer).size(), 0.0);
  model->set_activation_sums(dp_rank == 0 ? sums.data() : nullptr);
  (void)model->evaluate(inputs.data(), targets.data(), b);
  model->set_activation_sums(nullptr);
  MPI_Allreduce(MPI_IN_PLACE, sums.data(), int(sums.size()), MPI_DOUBLE, MPI_SUM, grid.world());
  for (double& s : sums) s = std::sqrt(s / (double(b) * T * cfg.model.n_embd));
  return sums;
}

EvalResult Trainer::State::evaluate_val(bool by_position) {
  by_position = by_position && cfg.eval.loss_by_position;
  EvalResult r = evaluate_source(val_src.get(), by_position);
  for (const auto& [name, src] : val_sets) {
    EvalResult e = evaluate_source(src.get(), by_position);
    if (e.sequences > 0)
      r.sets.push_back({name, e.loss, e.accuracy, e.bpb, std::move(e.loss_by_position)});
  }
  return r;
}

EvalResult Trainer::State::evaluate_source(const SequenceSource* src, bool by_position) {
  EvalResult r;
  if (src == nullptr || cfg.eval.sequences == 0) return r;
  const int64_t n = cfg.eval.sequences;
  const int T = cfg.model.seq_len;
  double loss = 0, byte_loss = 0;
  // by_position: the sums and counts of the targets' losses at each position, [2][T].
  std::vector<double> at(by_position ? 2 * size_t(T) : 0, 0.0);
  int64_t correct = 0, tokens = 0, bytes = 0;
  evaluation_rounds(
      n, [&](int32_t* in, int32_t* tg) { src->read(0, in, tg); },
      [&](int64_t i, int b) {
        watch("evaluation", step);
        for (int k = 0; k < b; ++k)
          src->read(i + k, inputs.data() + size_t(k) * T, targets.data() + size_t(k) * T);
        if (by_position) model->set_position_losses(at.data(), at.data() + T);
        const ForwardStats st = model->evaluate(inputs.data(), targets.data(), b);
        model->set_position_losses(nullptr, nullptr);
        loss += st.loss_sum;
        correct += st.correct;
        tokens += st.tokens;
        byte_loss += st.byte_loss_sum;
        bytes += st.bytes;
      });
  if (cfg.eval.bits_per_byte) {  // nats over the targets with bytes → bits per byte
    byte_loss = grid.dp().all_reduce_sum(byte_loss);
    bytes = int64_t(grid.dp().all_reduce_sum(double(bytes)));
    r.bpb = bytes > 0 ? byte_loss / (std::log(2.0) * double(bytes))
                      : std::numeric_limits<double>::quiet_NaN();
  }
  if (by_position) {
    // Each target counted on one rank (Gpt::set_position_losses): summed over all of them.
    MPI_Allreduce(MPI_IN_PLACE, at.data(), int(at.size()), MPI_DOUBLE, MPI_SUM, grid.world());
    r.loss_by_position.resize(size_t(T));
    for (int t = 0; t < T; ++t)
      r.loss_by_position[size_t(t)] = at[size_t(T + t)] > 0
                                          ? at[size_t(t)] / at[size_t(T + t)]
                                          : std::numeric_limits<double>::quiet_NaN();
  }
  loss = grid.dp().all_reduce_sum(loss);
  correct = int64_t(grid.dp().all_reduce_sum(double(correct)));
  tokens = int64_t(grid.dp().all_reduce_sum(double(tokens)));
  r.loss = loss / double(tokens);
  r.accuracy = double(correct) / double(tokens);
  r.sequences = n;
  return r;
}

void Trainer::State::evaluation_rounds(int64_t n,
                                       const std::function<void(int32_t*, int32_t*)>& read_first,
                                       const std::function<void(int64_t, int)>& batch) {
  const int B = cfg.train.micro_batch_size;
  const int64_t rounds = (n + int64_t(dp) * B - 1) / (int64_t(dp) * B);
  for (int64_t k = 0; k < rounds; ++k) {
    const int64_t i = (k * dp + dp_rank) * B;
    if (i >= n && cfg.parallel.ep > 1) {
      read_first(inputs.data(), targets.data());
      (void)model->evaluate(inputs.data(), targets.data(), 1);
    } else if (i >= n) {
      model->join_forward_gathers();
    } else {
      batch(i, int(std::min<int64_t>(B, n - i)));
    }
  }
}

std::vector<double> Trainer::State::sequence_logps(const PreferenceData& d, const char* phase) {
  const int64_t n = d.num_sequences();
  const int B = cfg.train.micro_batch_size, T = cfg.model.seq_len;
  use_window(step);
  std::vector<double> sums(size_t(n), 0.0), local(size_t(B), 0.0);
  const auto first = [&d](int32_t* in, int32_t* tg) { d.read(0, in, tg); };
  evaluation_rounds(n, first, [&](int64_t i, int b) {
    watch(phase, step);
    for (int j = 0; j < b; ++j)
      d.read(i + j, inputs.data() + size_t(j) * T, targets.data() + size_t(j) * T);
    std::fill(local.begin(), local.end(), 0.0);
    model->set_sequence_logps(local.data());
    (void)model->evaluate(inputs.data(), targets.data(), b);
    model->set_sequence_logps(nullptr);
    for (int j = 0; j < b; ++j) sums[size_t(i + j)] += local[size_t(j)];
  });
  // Each target counted on one rank (Gpt::set_sequence_logps): summed over all of them.
  MPI_Allreduce(MPI_IN_PLACE, sums.data(), int(sums.size()), MPI_DOUBLE, MPI_SUM, grid.world());
  return sums;
}

void Trainer::State::write_sample() {
  // Sampling is collective over the model's tensor and pipeline groups: the ranks of data-
  // parallel replica 0 take part (all draw the same tokens); rank 0 writes. Under expert
  // parallelism the replicas of replica 0's expert-parallel group too (its experts are theirs):
  // each routes the same rows, so the experts see each of them ep times.
  const int ep = grid.shape().ep;
  const bool whole = grid.shape().tp * grid.shape().pp == 1 && ep == 1;
  // Under ZeRO-3 every data-parallel rank samples too (the same tokens): the weight gathers
  // are collective over them.
  const bool gathers = model->gathered_weights();
  if (cfg.sample.length <= 0 || !tokenizer || (!gathers && (dp_rank >= ep || (whole && !root()))))
    return;
  const std::vector<int32_t> prompt = tokenizer->encode_prompt(cfg.sample.prompt);
  Rng rng(uint64_t(cfg.train.seed) * 31 + uint64_t(step));
  SampleOptions o = sample_options(cfg.sample);
  o.vocab_limit = tokenizer->vocab_size();
  const auto ids = sample_continuation(*model, prompt, o, rng);
  if (!root()) return;
  std::string text = cfg.sample.prompt + tokenizer->decode(ids);
  std::ofstream f(cfg.run_path() + "/samples.txt", std::ios::app);
  f << "=== step " << step << " ===\n" << text << "\n\n";
}

void Trainer::State::write_pipeline_trace(const std::vector<ComputeInterval>& actions, int step,
                                          int m) {
  const PipelineTrace trace = gather_pipeline_trace(grid.pp(), actions, model->schedule(), m,
                                                    cfg.parallel.virtual_stages, step);
  if (!root()) return;
  char name[48];
  std::snprintf(name, sizeof(name), "pipeline_trace_step_%08d.csv", step);
  const std::string path = cfg.run_path() + "/" + name;
  write_pipeline_trace_csv(trace, path);
  say(describe_pipeline_trace(trace, path));
}

void Trainer::State::run_eval() {
  use_window(step);  // the window the next step trains with (the last one's after the last)
  const EvalResult r = evaluate();
  EvalResult average;  // eval.ema: the same evaluation under the moving average of the weights
  if (cfg.eval.ema) {
    const auto set_aside = use_moving_average();
    average = evaluate(false);  // (eval.loss_by_position: the weights' alone)
    restore_weights(set_aside);
  }
  if (r.sequences > 0 || r.choice_examples > 0 || !r.sets.empty() || r.dpo_pairs > 0) {
    std::ostringstream os;
    os << "eval step " << step << std::fixed << std::setprecision(4);
    if (r.sequences > 0) os << " | val loss " << r.loss << " | val accuracy " << r.accuracy;
    if (r.sequences > 0 && cfg.eval.bits_per_byte) os << " | val bpb " << r.bpb;
    if (average.sequences > 0) {
      os << " | ema val loss " << average.loss;
      if (cfg.eval.bits_per_byte) os << " bpb " << average.bpb;
    }
    const auto describe_sets = [&](const EvalResult& e, const char* prefix) {
      for (const auto& v : e.sets) {
        os << " | " << prefix << v.name << " loss " << v.loss;
        if (cfg.eval.bits_per_byte) os << " bpb " << v.bpb;
      }
    };
    describe_sets(r, "");
    describe_sets(average, "ema ");
    if (r.choice_examples > 0) os << " | " << describe_choices(r);
    if (average.choice_examples > 0) os << " | ema " << describe_choices(average);
    const auto describe_pairs = [&](const EvalResult& e, const char* prefix) {
      if (e.dpo_pairs > 0)
        os << " | " << prefix << "DPO val loss " << e.dpo_loss << " | " << prefix
           << "val pairs right " << std::setprecision(3) << e.dpo_accuracy << " | " << prefix
           << "val margin " << std::setprecision(4) << e.dpo_margin;
    };
    describe_pairs(r, "");
    describe_pairs(average, "ema ");
    say(os.str());
    if (metrics) {
      const double nan = std::numeric_limits<double>::quiet_NaN();
      const auto row = [&](const EvalResult& e) {
        const bool val = e.sequences > 0, choices = e.choice_examples > 0;
        return ValRow{step,
                      val ? e.loss : nan,
                      val ? e.accuracy : nan,
                      choices ? e.choice_accuracy : nan,
                      choices ? e.choice_accuracy_by_sum : nan,
                      choices ? e.choice_accuracy_by_chars : nan,
                      val ? e.bpb : nan,
                      e.dpo_loss,
                      e.dpo_accuracy,
                      e.dpo_margin};
      };
      metrics->append(row(r));
      for (size_t i = 0; i < r.sets.size(); ++i) {
        metrics->append_set(i, step, r.sets[i].loss, r.sets[i].accuracy, r.sets[i].bpb);
        if (!r.sets[i].loss_by_position.empty())
          metrics->append_set_position_losses(i, step, r.sets[i].loss_by_position);
      }
      if (cfg.eval.ema) {
        metrics->append_ema(row(average));
        for (size_t i = 0; i < average.sets.size(); ++i)
          metrics->append_ema_set(i, step, average.sets[i].loss, average.sets[i].accuracy,
                                  average.sets[i].bpb);
      }
      if (!r.loss_by_position.empty()) metrics->append_position_losses(step, r.loss_by_position);
      metrics->flush_due();
    }
  }
  write_sample();
  last_eval = r;
}

}  // namespace triad
