// Pipeline parallelism: the executor that runs a schedule's actions (pipeline_schedule.h) on
// this rank's chunks, the plain forward chain used by evaluation and generation, and the sum
// of the tied embedding's gradient between the first and the last stage.
//
// Transfers: receives block (each sits right before the computation that needs it); sends are
// non-blocking, as the schedule simulator assumes, so no schedule that passes check_schedule
// can deadlock. An activation is sent straight from the activation set that keeps it for the
// backward pass (the request is completed before the set is reused); a gradient is copied to
// the next of the buffers planned for outgoing gradients to its peer, reused in turn once their
// previous send has completed (grad_send_buffers in pipeline_schedule.h sizes them). A transfer
// addressed to this rank itself (ZB-V's turn between its two chunks) is a copy: an activation
// from the earlier chunk's set when the later one receives it, a gradient through the buffers.
//
// A schedule with weight passes (zero bubble) keeps a micro-batch's activation set from its
// forward to its W; without, to its backward. trace_next_step() times one step's computations.
#include <algorithm>
#include <chrono>
#include <cstring>
#include <deque>
#include <map>
#include <type_traits>
#include <utility>

#include "gpt_activations.h"
#include "triad/core/error.h"
#include "triad/model/gpt.h"

namespace triad {
namespace {
constexpr int kTagActivation = 101, kTagGrad = 102, kTagTied = 103;
}

ForwardStats Gpt::pipeline_step(const int32_t* inputs, const int32_t* targets, int m, int B,
                                float dloss_scale) {
  return precision_ == Precision::bf16 ? pipeline_step_t<bf16_t>(inputs, targets, m, B, dloss_scale)
                                       : pipeline_step_t<float>(inputs, targets, m, B, dloss_scale);
}

const float* Gpt::next_token_logits(const int32_t* tokens, int len) {
  return precision_ == Precision::bf16 ? next_token_logits_t<bf16_t>(tokens, 1, len, false)
                                       : next_token_logits_t<float>(tokens, 1, len, false);
}

const float* Gpt::decode_logits(const int32_t* tokens, int B, int len) {
  return precision_ == Precision::bf16 ? next_token_logits_t<bf16_t>(tokens, B, len, true)
                                       : next_token_logits_t<float>(tokens, B, len, true);
}

const float* Gpt::decode_logits_last(const int32_t* tokens, int B, int len, int last) {
  TRIAD_CHECK(last >= 1 && last <= len, "decode_logits_last: last = ", last, " outside 1..", len);
  return precision_ == Precision::bf16 ? next_token_logits_t<bf16_t>(tokens, B, len, true, last)
                                       : next_token_logits_t<float>(tokens, B, len, true, last);
}

const float* Gpt::sequence_losses(const int32_t* tokens, int B, int len, int last,
                                  const int32_t* targets, bool cached) {
  TRIAD_CHECK(last >= 1 && last <= len, "sequence_losses: last = ", last, " outside 1..", len);
  return precision_ == Precision::bf16
             ? sequence_losses_t<bf16_t>(tokens, B, len, last, targets, cached)
             : sequence_losses_t<float>(tokens, B, len, last, targets, cached);
}

// A model for inference has one: the shared scratch layer's qkv, which no layer uses (each keeps
// its own). A training model allocates one on first use.
template <class A>
A* Gpt::decode_scratch() {
  if (inference_) return acts<A>().work.qkv;
  const size_t n = size_t(max_batch_) * shape_.seq_len * shape_.qkv_rows();
  if constexpr (std::is_same_v<A, float>) {
    if (!decode_scratch_fp32_) decode_scratch_fp32_ = be_.alloc(n);
    return decode_scratch_fp32_;
  } else {
    if (!decode_scratch_bf16_) decode_scratch_bf16_ = be_.alloc_bf16(n);
    return decode_scratch_bf16_;
  }
}
template float* Gpt::decode_scratch<float>();
template bf16_t* Gpt::decode_scratch<bf16_t>();

template <class A>
ForwardStats Gpt::pipeline_step_t(const int32_t* inputs, const int32_t* targets, int m, int B,
                                  float dloss_scale) {
  TRIAD_CHECK(!inference_, "internal error: a model for inference cannot train");
  TRIAD_CHECK(!schedule_.empty(), "internal error: pipeline_step without a schedule");
  dloss_scale_ = preference_reference_ != nullptr ? preference_moe_scale_ : dloss_scale;
  struct Training {  // (an error leaves the flag as it found it too)
    bool& on;
    ~Training() { on = false; }
  } training{training_ = true};
  // Rows per sequence here: Tl (T / cp under context parallelism, in this rank's order).
  const int T = shape_.seq_len, Tl = mp_.seq_rows(T), N = B * Tl, G = mp_.chunks();
  TRIAD_ASSERT(B >= 1 && B <= max_batch_ && m >= 1);
  const int32_t* local_inputs = cp_local_ids(inputs, m, B, cp_inputs_);
  const int32_t* local_targets = cp_local_ids(targets, m, B, cp_targets_);
  // A chunk boundary carries this rank's rows of the residual stream (1/tp of them under
  // sequence parallelism).
  const size_t NC = size_t(local_rows(N)) * shape_.n_embd, per_mb = size_t(N);
  const size_t NW = word_count<A>(NC);  // the transfer in fp32 words
  auto& a = acts<A>();
  Comm& pp = *mp_.pp_comm;
  const size_t v = size_t(mp_.virtual_stages);
  // Which activation set holds (chunk, micro-batch); free sets; pending sends per set.
  std::vector<std::vector<int>> slot(v, std::vector<int>(size_t(m), -1)), free_sets(v);
  std::vector<std::vector<CommRequest>> act_sends(v);
  for (size_t c = 0; c < v; ++c) {
    for (int k = int(a.sets[c].size()) - 1; k >= 0; --k) free_sets[c].push_back(k);
    act_sends[c].resize(a.sets[c].size());
  }
  // Outgoing gradients go out of the planned buffers in turn; a buffer is reused once the send
  // it last carried is complete (the schedule was simulated with as many: no deadlock).
  std::vector<CommRequest> grad_sends(a.grad_sends.size());
  // Per peer: its buffers [first, first + count) of a.grad_sends, how many sends it has made,
  // and (this rank itself) the buffers sent and not yet received, oldest first.
  struct GradPool {
    size_t first = 0, count = 0, sent = 0;
    std::deque<size_t> queued;
  };
  std::map<int, GradPool> pools;
  for (size_t first = 0; const auto& [peer, count] : grad_pools_) {
    pools[peer].first = first;
    pools[peer].count = size_t(count);
    first += size_t(count);
  }
  const int me = mp_.pp_rank;
  auto set_of = [&](int c, int mb) -> Set<A>& {
    int& s = slot[size_t(c)][size_t(mb)];
    if (s < 0) {
      TRIAD_CHECK(!free_sets[size_t(c)].empty(), "internal error: pipeline chunk ", c,
                  " has no free activation set for micro-batch ", mb);
      s = free_sets[size_t(c)].back();
      free_sets[size_t(c)].pop_back();
      act_sends[size_t(c)][size_t(s)].wait();  // its previous activation has been received
    }
    return a.sets[size_t(c)][size_t(s)];
  };
  ForwardStats st;
  using Clock = std::chrono::steady_clock;
  Clock::time_point t0;
  std::vector<ComputeInterval>* trace = std::exchange(trace_, nullptr);  // this step only
  if (trace) {
    trace->clear();
    be_.synchronize();
    pp.barrier();
    t0 = Clock::now();
  }
  auto seconds = [&t0] { return std::chrono::duration<double>(Clock::now() - t0).count(); };
  // A chunk's gradients are final after its last backward pass of the step (under a split
  // backward: the layers' after its last weight pass): only those passes report them to the
  // grad-ready hook, whose reductions then overlap the rest of the step.
  const auto& actions = schedule_[size_t(mp_.pp_rank)];
  std::vector<size_t> last_backward(v, actions.size()), last_weights(v, actions.size());
  for (size_t i = 0; i < actions.size(); ++i) {
    if (actions[i].kind == ActionKind::Backward) last_backward[size_t(actions[i].chunk)] = i;
    if (actions[i].kind == ActionKind::BackwardWeight) last_weights[size_t(actions[i].chunk)] = i;
  }
  struct FinalPass {  // true again after the step, error or not
    bool& final;
    ~FinalPass() { final = true; }
  } final_pass{final_pass_};
  after_tied_sum_.clear();
  for (size_t i = 0; i < actions.size(); ++i) {
    const Action& x = actions[i];
    const int c = x.chunk, mb = x.microbatch, g = mp_.global_chunk(c);
    TRIAD_ASSERT(mb < m);
    const bool timed = trace && is_compute(x.kind);
    const double start = timed ? seconds() : 0.0;
    const int32_t* in = local_inputs + size_t(mb) * per_mb;
    const int32_t* tg = local_targets + size_t(mb) * per_mb;
    const int32_t* whole = inputs + size_t(mb) * B * T;  // the attention mask's
    switch (x.kind) {
      case ActionKind::RecvActivation:
        if (x.peer == me) {  // the output of this rank's chunk before, still in its set
          const size_t before = size_t(mp_.local_chunk(g - 1));
          const int from = slot[before][size_t(mb)];
          TRIAD_ASSERT(from >= 0);
          be_.copy(words(set_of(c, mb).input), words(a.sets[before][size_t(from)].output()), NW);
        } else {
          pp.recv(words(set_of(c, mb).input), NW, x.peer, kTagActivation);
        }
        break;
      case ActionKind::Forward: {
        Set<A>& S = set_of(c, mb);
        if (g == 0) upload_ids(in, nullptr, N);
        set_attention_mask(whole, B, T);  // every stage: its layers' attention
        set_dropout_rows(dropout_first_ + int64_t(mb) * B, B);
        forward_chunk(c, S, B, Tl);
        if (g == G - 1) {
          upload_ids(nullptr, tg, N);
          preference_first_row_ = mb * B;  // (set_preference's rows of this micro-batch)
          const ForwardStats f = classifier(S, tg, B, Tl, dloss_scale, true);
          if (shape_.mtp_depth > 0)
            mtp_step(S, whole, targets + size_t(mb) * B * T, B, Tl, dloss_scale);
          st.loss_sum += f.loss_sum;
          st.z_sum += f.z_sum;
          st.correct += f.correct;
          st.tokens += f.tokens;
          st.pairs += f.pairs;
          st.pairs_right += f.pairs_right;
          st.chosen_reward_sum += f.chosen_reward_sum;
          st.rejected_reward_sum += f.rejected_reward_sum;
        }
        break;
      }
      case ActionKind::SendActivation: {
        const int s = slot[size_t(c)][size_t(mb)];
        TRIAD_ASSERT(s >= 0);
        if (x.peer == me) break;  // the receive copies it
        act_sends[size_t(c)][size_t(s)] =
            pp.isend(words(a.sets[size_t(c)][size_t(s)].output()), NW, x.peer, kTagActivation);
        break;
      }
      case ActionKind::RecvGrad:
        if (x.peer == me) {
          GradPool& pool = pools.at(me);
          TRIAD_ASSERT(!pool.queued.empty());
          be_.copy(words(a.dresidual), words(a.grad_sends[pool.queued.front()]), NW);
          pool.queued.pop_front();
        } else {
          pp.recv(words(a.dresidual), NW, x.peer, kTagGrad);
        }
        break;
      case ActionKind::Backward: {
        int& s = slot[size_t(c)][size_t(mb)];
        TRIAD_ASSERT(s >= 0);
        if (g == 0) upload_ids(in, nullptr, N);
        set_attention_mask(whole, B, T);
        set_dropout_rows(dropout_first_ + int64_t(mb) * B, B);
        final_pass_ = i == last_backward[size_t(c)];
        backward_chunk(c, a.sets[size_t(c)][size_t(s)], B, Tl);
        if (split_backward_) break;  // the set waits for its weight pass
        free_sets[size_t(c)].push_back(s);
        s = -1;
        break;
      }
      case ActionKind::BackwardWeight: {
        int& s = slot[size_t(c)][size_t(mb)];
        TRIAD_ASSERT(s >= 0 && split_backward_);
        final_pass_ = i == last_weights[size_t(c)];
        weight_chunk(c, a.sets[size_t(c)][size_t(s)], B, Tl);
        free_sets[size_t(c)].push_back(s);
        s = -1;
        break;
      }
      case ActionKind::SendGrad: {
        GradPool& pool = pools.at(x.peer);
        TRIAD_ASSERT(pool.count > 0);
        const size_t k = pool.first + pool.sent++ % pool.count;
        grad_sends[k].wait();
        A* buf = a.grad_sends[k];
        be_.zero(buf, NC);
        be_.accumulate(buf, a.dresidual, NC);
        if (x.peer == me) {
          // Its buffer comes round again only after its receive (the simulation sized them).
          TRIAD_CHECK(
              pool.queued.size() < pool.count,
              "internal error: a gradient to this rank itself overwrites one not yet taken");
          pool.queued.push_back(k);
        } else {
          grad_sends[k] = pp.isend(words(buf), NW, x.peer, kTagGrad);
        }
        break;
      }
    }
    if (timed) {
      be_.synchronize();
      trace->push_back({x.kind, mb, c, start, seconds()});
    }
  }
  for (auto& sends : act_sends)
    for (auto& r : sends) r.wait();
  for (auto& r : grad_sends) r.wait();
  sum_tied_embedding_grads();
  for (const ReadyRange& r : after_tied_sum_)
    grad_pending_.push_back(grad_hook_(r.offset, r.count, r.data));
  after_tied_sum_.clear();
  // The reductions the hook started, complete.
  for (auto& r : grad_pending_) r.wait();
  grad_pending_.clear();
  return share_from_last_stage(st);
}

template <class A>
Gpt::Set<A>* Gpt::forward_pipeline(const int32_t* inputs, int B, int T, int pos0) {
  const int G = mp_.chunks(), N = B * T;
  const size_t NW = word_count<A>(size_t(local_rows(N)) * shape_.n_embd);
  TRIAD_CHECK(mp_.pp > 1 || G == 1, "internal error: virtual stages need pp > 1");
  Set<A>* last = nullptr;
  const int me = mp_.pp_rank;
  for (int c = 0; c < mp_.virtual_stages; ++c) {  // this rank's chunks, in the model's order
    const int g = mp_.global_chunk(c);
    Set<A>& S = acts<A>().sets[size_t(c)][0];  // no step is in flight: the first set is free
    if (g == 0) {
      upload_ids(inputs, nullptr, N);
    } else if (mp_.stage_of(g - 1) == me) {  // ZB-V's turn: the chunk before is this rank's too
      be_.copy(words(S.input), words(acts<A>().sets[size_t(mp_.local_chunk(g - 1))][0].output()),
               NW);
    } else {
      mp_.pp_comm->recv(words(S.input), NW, mp_.stage_of(g - 1), kTagActivation);
    }
    forward_chunk(c, S, B, T, pos0);
    if (g == G - 1) {
      last = &S;
    } else if (mp_.stage_of(g + 1) != me) {
      // Blocking is safe: the next chunk's owner waits for exactly this message.
      mp_.pp_comm->send(words(S.output()), NW, mp_.stage_of(g + 1), kTagActivation);
    }
  }
  return last;
}

ForwardStats Gpt::share_from_last_stage(ForwardStats st) {
  if (mp_.pp == 1) return st;
  // Only the last stage holds the statistics; the others add zeros.
  Comm& pp = *mp_.pp_comm;
  st.loss_sum = pp.all_reduce_sum(st.loss_sum);
  st.z_sum = pp.all_reduce_sum(st.z_sum);
  st.correct = int64_t(pp.all_reduce_sum(double(st.correct)));
  st.tokens = int64_t(pp.all_reduce_sum(double(st.tokens)));
  if (preference_reference_ != nullptr) {  // (DPO's training steps)
    st.pairs = int64_t(pp.all_reduce_sum(double(st.pairs)));
    st.pairs_right = int64_t(pp.all_reduce_sum(double(st.pairs_right)));
    st.chosen_reward_sum = pp.all_reduce_sum(st.chosen_reward_sum);
    st.rejected_reward_sum = pp.all_reduce_sum(st.rejected_reward_sum);
  }
  if (!target_bytes_.empty()) {  // (eval.bits_per_byte: set alike on every stage)
    st.byte_loss_sum = pp.all_reduce_sum(st.byte_loss_sum);
    st.bytes = int64_t(pp.all_reduce_sum(double(st.bytes)));
  }
  return st;
}

template <class A>
Gpt::Set<A>* Gpt::decode_forward(const int32_t* tokens, int B, int len, bool cached, int need,
                                 int& n, int& rows) {
  const int T = shape_.seq_len;
  TRIAD_ASSERT(len >= 1 && len <= T && B >= 1 && B <= max_batch_ && need >= 1 && need <= len);
  TRIAD_CHECK(mp_.cp == 1,
              "generation and scoring (multiple-choice evaluation, samples) run without context "
              "parallelism: use parallel.cp = 1");
  // Sequence parallelism cuts the rows into tp equal parts: pad the new rows at their end (the
  // attention is causal, so later positions change neither the outputs of earlier ones nor the
  // kept keys and values before them; a padding row's are overwritten by the next call's).
  const auto padded = [&](int k) {
    return mp_.split_rows() ? (k + mp_.tp - 1) / mp_.tp * mp_.tp : k;
  };
  // Cached: each sequence's first p tokens are those of the previous call, whose keys and values
  // every layer's qkv buffer holds. Full recomputation (outside inference) shares one qkv buffer
  // between the layers, so it keeps none.
  const bool keeps = cached && keeps_decoded();
  int p = 0;
  if (keeps && decoded_batch_ == B) {
    // The kept keys and values are valid up to the longest prefix every sequence shares with
    // the previous call's tokens; the positions asked for are computed in any case.
    const int q = int(decoded_.size()) / B;
    p = std::min(q, len - need);
    for (int b = 0; b < B && p > 0; ++b) {
      const auto kept = decoded_.begin() + ptrdiff_t(b) * q;
      p = int(std::mismatch(kept, kept + p, tokens + size_t(b) * len).first - kept);
    }
    // Sequence parallelism: the padded new rows must fit the context; near its end the last kept
    // tokens are computed again with the new ones (same tokens and positions, so still valid).
    while (p > 0 && p + padded(len - p) > T) --p;
    // A ring (kv_ring_rows) keeps the previous call's last 2·W positions; the first new row
    // reads positions p − W + 1 .. p − 1 (those from 0 while p < W): all of them must be there.
    const int ring = ring_rows();
    if (ring > 0 && p - std::min(p, shape_.sliding_window - 1) < q - ring) p = 0;
  }
  n = len - p;
  decode_new_rows_ = n;
  rows = padded(n);
  last_decoded_rows_ = cached ? B * rows : 0;
  // The new tokens of each sequence, [B, rows].
  const int32_t* ids = tokens + p;
  if (B > 1 || rows != n) {
    padded_.assign(size_t(B) * rows, 0);
    for (int b = 0; b < B; ++b)
      std::copy(tokens + size_t(b) * len + p, tokens + size_t(b + 1) * len,
                padded_.begin() + ptrdiff_t(b) * rows);
    ids = padded_.data();
  }
  struct Decoding {  // decoding_ for this forward pass only, also when it throws
    bool& flag;
    ~Decoding() { flag = false; }
  } scope{decoding_};
  decoding_ = keeps;
  // A prompt is one document. Decoding takes the window through attention_decode; a forward pass
  // over the whole prompt (nothing kept) through the mask.
  if (keeps)
    key_begin_ = key_begin_full_ = nullptr;
  else
    set_attention_mask(ids, B, rows, false);
  Set<A>* last = forward_pipeline<A>(ids, B, rows, p);
  decoding_ = false;
  if (keeps) {  // the forward pass cleared it
    decoded_.assign(tokens, tokens + size_t(B) * len);
    decoded_batch_ = B;
  }
  return last;
}

template <class A>
const float* Gpt::next_token_logits_t(const int32_t* tokens, int B, int len, bool cached,
                                      int last) {
  const int C = shape_.n_embd, Vl = vocab_local_, Vp = shape_.padded_vocab_size;
  const int V = shape_.vocab_size, U = B * last;  // U rows of logits: `last` per sequence
  // Only each sequence's last `last` positions' logits are needed: their rows of the classifier.
  // The U rows go through the head up to logits_rows_ at a time (a product, not U matrix-vector
  // ones that each read the whole head: a prompt's first step of many samples), moved first to
  // the front of lnfg, in order (row u's source, b·rows + n − last + j for u = b·last + j, is
  // never a row written before it).
  const int together = std::min(U, logits_rows_);
  // Host logits: U rows of Vp floats, then (tp > 1) room for `together` gathered rows and this
  // rank's slice of them.
  const size_t room = mp_.tp == 1 ? 0 : size_t(together) * (size_t(Vp) + size_t(Vl));
  if (host_scratch_.size() < size_t(U) * Vp + room) host_scratch_.resize(size_t(U) * Vp + room);
  float* out = host_scratch_.data();
  int n = 0, rows = 0;
  if (Set<A>* S = decode_forward<A>(tokens, B, len, cached, last, n, rows)) {
    A* logits = acts<A>().logits;
    auto source = [&](int u) {
      const int b = u / last, j = u % last;
      return S->lnfg + (size_t(b) * rows + size_t(n - last + j)) * C;
    };
    // (One sequence's rows are in order already: its ln_f rows stay as they are, which
    // mtp_draft_logits reads.)
    const bool compact = together > 1 && B > 1;
    for (int u = 0; compact && u < U; ++u)
      if (source(u) != S->lnfg + size_t(u) * C)
        be_.copy(words(S->lnfg + size_t(u) * C), words(source(u)), word_count<A>(size_t(C)));
    for (int b0 = 0; b0 < U; b0 += together) {
      const int k = std::min(together, U - b0);
      const A* x = compact ? S->lnfg + size_t(b0) * C : source(b0);
      head_logits(logits, x, k, Vl);
      float* dst = out + size_t(b0) * Vp;
      if (mp_.tp == 1) {
        logits_to_host(dst, logits, size_t(k) * Vl);
      } else {
        // The slices in tensor-parallel rank order are the padded vocabulary in order, gathered
        // in the room after the U rows as [tp][k][Vl], the rows [k][tp·Vl] wanted.
        float* gathered = out + size_t(U) * Vp;
        float* mine = gathered + size_t(together) * Vp;
        logits_to_host(mine, logits, size_t(k) * Vl);
        mp_.tp_comm->all_gather(mine, gathered, size_t(k) * Vl);
        for (int r = 0; r < mp_.tp; ++r)
          for (int j = 0; j < k; ++j)
            std::copy_n(gathered + (size_t(r) * k + j) * Vl, Vl,
                        dst + size_t(j) * Vp + size_t(r) * Vl);
      }
    }
  }
  if (mp_.pp > 1) mp_.pp_comm->broadcast(out, size_t(U) * Vp, mp_.head_stage());
  // Rows of vocab_size logits (the padding dropped), `last` per sequence.
  for (int u = 1; u < U; ++u)
    std::memmove(out + size_t(u) * V, out + size_t(u) * Vp, size_t(V) * sizeof(float));
  return out;
}

template <class A>
const float* Gpt::sequence_losses_t(const int32_t* tokens, int B, int len, int last,
                                    const int32_t* targets, bool cached) {
  int n = 0, rows = 0;
  Set<A>* S = decode_forward<A>(tokens, B, len, cached, last, n, rows);
  // The classifier runs over every new row (the rows before the asked-for ones, if any, get
  // target 0 and are ignored): B·rows losses, then the asked-for ones moved to the front.
  const size_t N = size_t(B) * rows;
  scored_targets_.assign(N, 0);
  scored_losses_.assign(N, 0.0f);
  for (int b = 0; b < B; ++b)
    for (int j = 0; j < last; ++j) {
      const int32_t t = targets[size_t(b) * last + j];
      TRIAD_CHECK(t >= 0 && t < shape_.vocab_size, "sequence_losses: target ", t,
                  " outside the vocabulary");
      scored_targets_[size_t(b) * rows + size_t(n - last + j)] = t;
    }
  if (S) {
    upload_ids(nullptr, scored_targets_.data(), int(N));
    // Scoring decodes (its blocks run as generation's): no FP8 head either.
    classifier(*S, scored_targets_.data(), B, rows, 0.0f, false, scored_losses_.data(), false);
    for (int b = 0; b < B; ++b)
      std::copy_n(scored_losses_.begin() + ptrdiff_t(size_t(b) * rows + size_t(n - last)), last,
                  scored_losses_.begin() + ptrdiff_t(size_t(b) * last));
  }
  if (mp_.pp > 1) mp_.pp_comm->broadcast(scored_losses_.data(), size_t(B) * last, mp_.head_stage());
  return scored_losses_.data();
}

template Gpt::Set<float>* Gpt::forward_pipeline<float>(const int32_t*, int, int, int);
template Gpt::Set<bf16_t>* Gpt::forward_pipeline<bf16_t>(const int32_t*, int, int, int);

void Gpt::sync_tied_embedding(bool master_current) {
  if (!shape_.tied || !mp_.tied_copy()) return;
  const ParamSpec& s = specs_[size_t(mp_.first_stage() ? wte_ : head_)];
  if (!master_current) {
    TRIAD_ASSERT(params_bf16_ != nullptr && s.numel % 2 == 0);
    float* copy = words(params_bf16_ + s.offset);  // bf16 pairs as fp32 words (a copy, no sum)
    if (mp_.first_stage())
      mp_.pp_comm->send(copy, s.numel / 2, mp_.head_stage(), kTagTied);
    else
      mp_.pp_comm->recv(copy, s.numel / 2, 0, kTagTied);
    return;
  }
  float* w = params_ + s.offset;
  if (mp_.first_stage()) {
    mp_.pp_comm->send(w, s.numel, mp_.head_stage(), kTagTied);
  } else {
    mp_.pp_comm->recv(w, s.numel, 0, kTagTied);
    if (params_bf16_) be_.convert(params_bf16_ + s.offset, w, s.numel);
  }
}

void Gpt::sum_tied_embedding_grads() {
  if (!shape_.tied || !mp_.tied_copy()) return;
  // wte's gradient from the embedding (first stage) plus the head's (last stage), on both
  // (a + b on one and b + a on the other are the same float); sync_tied_embedding() makes the
  // updated copies identical again after the data-parallel reduction and the update.
  const ParamSpec& s = specs_[size_t(mp_.first_stage() ? wte_ : head_)];
  const int peer = mp_.first_stage() ? mp_.head_stage() : 0;
  float* g = grads_ + s.offset;
  CommRequest req = mp_.pp_comm->isend(g, s.numel, peer, kTagTied);
  mp_.pp_comm->recv(tied_scratch_, s.numel, peer, kTagTied);
  req.wait();
  be_.accumulate(g, tied_scratch_, s.numel);
}

}  // namespace triad
