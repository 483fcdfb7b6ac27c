// Pipeline schedules: the compute order of each rank is built first (GPipe, 1F1B, Megatron's
// interleaved 1F1B), then the transfers are wrapped around each computation, so that the three
// kinds share one rule for where a send or a receive goes.
#include "triad/parallel/pipeline_schedule.h"

#include <algorithm>
#include <deque>
#include <limits>
#include <map>
#include <set>
#include <tuple>
#include <utility>

#include "triad/core/error.h"

namespace triad {

const char* const kScheduleKindNames = "1f1b, gpipe, interleaved, zb-h1 or zb-v";

namespace {
constexpr ScheduleKind kScheduleKinds[] = {ScheduleKind::OneFOneB, ScheduleKind::GPipe,
                                           ScheduleKind::Interleaved, ScheduleKind::ZeroBubble,
                                           ScheduleKind::ZeroBubbleV};
}  // namespace

bool is_schedule_kind(const std::string& name) {
  for (ScheduleKind k : kScheduleKinds)
    if (name == schedule_kind_name(k)) return true;
  return false;
}

ScheduleKind parse_schedule_kind(const std::string& name) {
  for (ScheduleKind k : kScheduleKinds)
    if (name == schedule_kind_name(k)) return k;
  fail("parallel.schedule: unknown pipeline schedule '", name, "' (expected ", kScheduleKindNames,
       ")");
}

const char* schedule_kind_name(ScheduleKind kind) {
  switch (kind) {
    case ScheduleKind::GPipe:
      return "gpipe";
    case ScheduleKind::OneFOneB:
      return "1f1b";
    case ScheduleKind::Interleaved:
      return "interleaved";
    case ScheduleKind::ZeroBubble:
      return "zb-h1";
    case ScheduleKind::ZeroBubbleV:
      return "zb-v";
  }
  return "?";
}

bool splits_backward(ScheduleKind kind) {
  return kind == ScheduleKind::ZeroBubble || kind == ScheduleKind::ZeroBubbleV;
}

ChunkPlacement chunk_placement(ScheduleKind kind) {
  return kind == ScheduleKind::ZeroBubbleV ? ChunkPlacement::V : ChunkPlacement::Interleaved;
}

int chunk_rank(ChunkPlacement placement, int pp, int g) {
  if (placement == ChunkPlacement::V) return g < pp ? g : 2 * pp - 1 - g;
  return g % pp;
}

int global_chunk_of(ChunkPlacement placement, int pp, int rank, int chunk) {
  if (placement == ChunkPlacement::V) return chunk == 0 ? rank : 2 * pp - 1 - rank;
  return chunk * pp + rank;
}

bool is_compute(ActionKind kind) {
  return kind == ActionKind::Forward || kind == ActionKind::Backward ||
         kind == ActionKind::BackwardWeight;
}

const char* action_kind_name(ActionKind kind) {
  switch (kind) {
    case ActionKind::Forward:
      return "Forward";
    case ActionKind::Backward:
      return "Backward";
    case ActionKind::SendActivation:
      return "SendActivation";
    case ActionKind::RecvActivation:
      return "RecvActivation";
    case ActionKind::SendGrad:
      return "SendGrad";
    case ActionKind::RecvGrad:
      return "RecvGrad";
    case ActionKind::BackwardWeight:
      return "BackwardWeight";
  }
  return "?";
}

void validate_schedule_shape(ScheduleKind kind, int pp, int m, int v) {
  const char* name = schedule_kind_name(kind);
  TRIAD_CHECK(pp >= 1, "pipeline schedule ", name, ": pp must be at least 1, got ", pp);
  TRIAD_CHECK(m >= 1, "pipeline schedule ", name,
              ": the number of micro-batches must be at least 1, got ", m);
  if (kind == ScheduleKind::Interleaved) {
    TRIAD_CHECK(
        v >= 2,
        "pipeline schedule interleaved: needs at least 2 virtual stages per rank, got v = ", v);
    TRIAD_CHECK(m % pp == 0, "pipeline schedule interleaved: the number of micro-batches (", m,
                ") must be a multiple of pp (", pp, ")");
  } else if (kind == ScheduleKind::ZeroBubbleV) {
    TRIAD_CHECK(pp >= 2, "pipeline schedule zb-v: needs pp >= 2, got ", pp);
    TRIAD_CHECK(v == 2,
                "pipeline schedule zb-v: takes exactly 2 chunks per rank (v = 2), got v = ", v);
  } else if (kind == ScheduleKind::ZeroBubble) {
    TRIAD_CHECK(v >= 1, "pipeline schedule zb-h1: v must be at least 1, got ", v);
    TRIAD_CHECK(v == 1 || m % pp == 0, "pipeline schedule zb-h1 with ", v,
                " virtual stages: the number of micro-batches (", m, ") must be a multiple of pp (",
                pp, "), as for interleaved");
  } else {
    TRIAD_CHECK(v == 1, "pipeline schedule ", name,
                ": takes one chunk per rank (v = 1), got v = ", v, " (use interleaved for v > 1)");
  }
}

namespace {

struct Compute {
  ActionKind kind;  // Forward, Backward or BackwardWeight
  int microbatch, chunk;
};

// Megatron's interleaved order (schedules.py, forward_backward_pipelining_with_interleaving):
// the k-th forward (backward) of a rank runs chunk (k mod pp·v) / pp (reversed for backward) on
// micro-batch (k / (pp·v))·pp + k mod pp; warm-up is 2·(pp−s−1) + (v−1)·pp forwards, or all of
// them when m = pp.
std::vector<Compute> interleaved_order(int pp, int s, int m, int v) {
  const int total = m * v;
  auto unit = [&](int k, bool forward) {
    const int in_group = k % (pp * v);
    int chunk = in_group / pp;
    if (!forward) chunk = v - 1 - chunk;
    return Compute{forward ? ActionKind::Forward : ActionKind::Backward,
                   (k / (pp * v)) * pp + in_group % pp, chunk};
  };
  const int warmup = m == pp ? total : std::min(total, 2 * (pp - s - 1) + (v - 1) * pp);
  std::vector<Compute> order;
  for (int k = 0; k < warmup; ++k) order.push_back(unit(k, true));
  for (int k = 0; k < total - warmup; ++k) {
    order.push_back(unit(warmup + k, true));
    order.push_back(unit(k, false));
  }
  for (int k = total - warmup; k < total; ++k) order.push_back(unit(k, false));
  return order;
}

// 1F1B: stage s keeps at most pp − s micro-batches in flight: pp − s − 1 warm-up forwards,
// then one forward / one backward, then the remaining backwards.
std::vector<Compute> one_f_one_b_order(int pp, int s, int m) {
  const int warmup = std::min(pp - s - 1, m);
  std::vector<Compute> order;
  for (int i = 0; i < warmup; ++i) order.push_back({ActionKind::Forward, i, 0});
  for (int i = 0; i < m - warmup; ++i) {
    order.push_back({ActionKind::Forward, warmup + i, 0});
    order.push_back({ActionKind::Backward, i, 0});
  }
  for (int i = m - warmup; i < m; ++i) order.push_back({ActionKind::Backward, i, 0});
  return order;
}

// The zero-bubble split of an order: after each backward (now B) comes the W of the backward
// `lag` Bs earlier on this rank, and the Ws still missing after the last B close the step.
std::vector<Compute> with_weight_passes(const std::vector<Compute>& order, int lag) {
  std::vector<Compute> out;
  std::deque<Compute> pending;
  for (const Compute& c : order) {
    out.push_back(c);
    if (c.kind != ActionKind::Backward) continue;
    pending.push_back({ActionKind::BackwardWeight, c.microbatch, c.chunk});
    if (int(pending.size()) > lag) {
      out.push_back(pending.front());
      pending.pop_front();
    }
  }
  out.insert(out.end(), pending.begin(), pending.end());
  return out;
}

// ZB-V's orders for all ranks at once (the header's rule): list scheduling in unit steps, every
// F, B and W one unit, a result usable in the step after the one that computed it. A rank runs a
// chunk's forwards, and its backwards, in micro-batch order (each transfer channel is then in
// order too).
std::vector<std::vector<Compute>> zb_v_orders(int pp, int m) {
  // With m a multiple of pp each chunk may keep pp pairs too: the same steps (tested for pp <= 16,
  // m <= 64), and the activation sets, allocated per chunk for its own peak, are 2·pp in all.
  const int G = 2 * pp, cap = 2 * pp, chunk_cap = m % pp == 0 ? pp : cap;
  constexpr int kNever = std::numeric_limits<int>::max();
  // The unit step after which (micro-batch, global chunk)'s forward / backward is done.
  std::vector<std::vector<int>> fwd_done(size_t(m), std::vector<int>(size_t(G), kNever)),
      bwd_done = fwd_done;
  struct Rank {
    int next_fwd[2] = {0, 0}, next_bwd[2] = {0, 0};
    int live = 0, free_at = 0, chunk_live[2] = {0, 0};
    std::deque<Compute> weights;  // W owed, oldest first
  };
  std::vector<Rank> ranks(static_cast<size_t>(pp));
  std::vector<std::vector<Compute>> order(static_cast<size_t>(pp));
  const size_t total = size_t(6) * size_t(m) * size_t(pp);
  size_t done = 0;
  for (int t = 0; done < total; ++t) {
    bool running = false;
    for (int s = 0; s < pp; ++s) {
      Rank& r = ranks[size_t(s)];
      if (r.free_at > t) {
        running = true;
        continue;
      }
      auto global = [&](int c) { return global_chunk_of(ChunkPlacement::V, pp, s, c); };
      // The B whose input gradient arrived first (the last chunk's own loss: at its forward).
      int pick_b = -1, arrived_b = kNever;
      for (int c = 0; c < 2; ++c) {
        const int mb = r.next_bwd[c], g = global(c);
        if (mb >= m || fwd_done[size_t(mb)][size_t(g)] > t) continue;
        const int arrived =
            g == G - 1 ? fwd_done[size_t(mb)][size_t(g)] : bwd_done[size_t(mb)][size_t(g + 1)];
        if (arrived <= t && arrived < arrived_b) pick_b = c, arrived_b = arrived;
      }
      Compute x{};
      if (pick_b >= 0) {
        const int mb = r.next_bwd[pick_b]++;
        x = {ActionKind::Backward, mb, pick_b};
        bwd_done[size_t(mb)][size_t(global(pick_b))] = t + 1;
        r.weights.push_back({ActionKind::BackwardWeight, mb, pick_b});
      } else {
        int pick_f = -1;
        for (int c = 1; c >= 0 && pick_f < 0 && r.live < cap; --c) {
          const int mb = r.next_fwd[c], g = global(c);
          if (mb < m && r.chunk_live[c] < chunk_cap &&
              (g == 0 || fwd_done[size_t(mb)][size_t(g - 1)] <= t))
            pick_f = c;
        }
        if (pick_f >= 0) {
          const int mb = r.next_fwd[pick_f]++;
          x = {ActionKind::Forward, mb, pick_f};
          fwd_done[size_t(mb)][size_t(global(pick_f))] = t + 1;
          ++r.live;
          ++r.chunk_live[pick_f];
        } else if (!r.weights.empty()) {
          x = r.weights.front();
          r.weights.pop_front();
          --r.live;
          --r.chunk_live[x.chunk];
        } else {
          continue;  // idle this unit
        }
      }
      order[size_t(s)].push_back(x);
      r.free_at = t + 1;
      running = true;
      ++done;
    }
    // Nothing ran and nothing can: the rule is stuck (not seen for pp <= 16, m <= 64).
    TRIAD_CHECK(running, "internal error: the zb-v order for pp = ", pp, ", m = ", m,
                " cannot be built");
  }
  return order;
}

// Every rank's compute order: ZB-V's built for all ranks together, the others rank by rank.
std::vector<std::vector<Compute>> compute_orders(ScheduleKind kind, int pp, int m, int v) {
  if (kind == ScheduleKind::ZeroBubbleV) return zb_v_orders(pp, m);
  std::vector<std::vector<Compute>> orders(static_cast<size_t>(pp));
  for (int s = 0; s < pp; ++s) {
    std::vector<Compute>& order = orders[size_t(s)];
    switch (kind) {
      case ScheduleKind::ZeroBubbleV:
        break;  // above
      case ScheduleKind::GPipe:
        for (int i = 0; i < m; ++i) order.push_back({ActionKind::Forward, i, 0});
        for (int i = 0; i < m; ++i) order.push_back({ActionKind::Backward, i, 0});
        break;
      case ScheduleKind::OneFOneB:
        order = one_f_one_b_order(pp, s, m);
        break;
      case ScheduleKind::ZeroBubble:
        // Stage s lags its Ws s backward passes behind (ZB-H1 for v = 1).
        order = with_weight_passes(
            v == 1 ? one_f_one_b_order(pp, s, m) : interleaved_order(pp, s, m, v), s);
        break;
      case ScheduleKind::Interleaved:
        order = interleaved_order(pp, s, m, v);
        break;
    }
  }
  return orders;
}

}  // namespace

PipelineSchedule make_schedule(ScheduleKind kind, int pp, int m, int v) {
  validate_schedule_shape(kind, pp, m, v);
  const int last = pp * v - 1;  // the global chunk that computes the loss
  PipelineSchedule schedule(pp);
  schedule.placement = chunk_placement(kind);
  const std::vector<std::vector<Compute>> orders = compute_orders(kind, pp, m, v);
  for (int s = 0; s < pp; ++s) {
    std::vector<Action>& a = schedule[s];
    for (const Compute& c : orders[size_t(s)]) {
      const int g = global_chunk_of(schedule.placement, pp, s, c.chunk);
      const int prev_rank = g > 0 ? chunk_rank(schedule.placement, pp, g - 1) : -1;
      const int next_rank = g < last ? chunk_rank(schedule.placement, pp, g + 1) : -1;
      if (c.kind == ActionKind::Forward) {
        if (g > 0) a.push_back({ActionKind::RecvActivation, c.microbatch, c.chunk, prev_rank});
        a.push_back({ActionKind::Forward, c.microbatch, c.chunk, -1});
        if (g < last) a.push_back({ActionKind::SendActivation, c.microbatch, c.chunk, next_rank});
      } else if (c.kind == ActionKind::BackwardWeight) {  // local: nothing to send or receive
        a.push_back({ActionKind::BackwardWeight, c.microbatch, c.chunk, -1});
      } else {
        if (g < last) a.push_back({ActionKind::RecvGrad, c.microbatch, c.chunk, next_rank});
        a.push_back({ActionKind::Backward, c.microbatch, c.chunk, -1});
        if (g > 0) a.push_back({ActionKind::SendGrad, c.microbatch, c.chunk, prev_rank});
      }
    }
  }
  return schedule;
}

namespace {

bool is_send(ActionKind k) { return k == ActionKind::SendActivation || k == ActionKind::SendGrad; }
bool is_recv(ActionKind k) { return k == ActionKind::RecvActivation || k == ActionKind::RecvGrad; }
bool is_activation(ActionKind k) {
  return k == ActionKind::SendActivation || k == ActionKind::RecvActivation;
}

// The global chunk at the other end of a transfer made by global chunk g.
int partner_chunk(ActionKind k, int g) {
  switch (k) {
    case ActionKind::SendActivation:
    case ActionKind::RecvGrad:
      return g + 1;
    default:
      return g - 1;
  }
}

std::string where(int rank, size_t step, const Action& a, int pp, ChunkPlacement placement) {
  return detail::concat("rank ", rank, " step ", step, " (", action_kind_name(a.kind),
                        " micro-batch ", a.microbatch, " chunk ", a.chunk, " = global chunk ",
                        global_chunk_of(placement, pp, rank, a.chunk), a.peer >= 0 ? " peer " : "",
                        a.peer >= 0 ? std::to_string(a.peer) : std::string(), ")");
}

}  // namespace

bool has_weight_pass(const PipelineSchedule& schedule) {
  for (const auto& actions : schedule)
    for (const Action& a : actions)
      if (a.kind == ActionKind::BackwardWeight) return true;
  return false;
}

ActionKind releasing_action(const PipelineSchedule& schedule) {
  return has_weight_pass(schedule) ? ActionKind::BackwardWeight : ActionKind::Backward;
}

namespace {

// (sender, receiver, activation?) → the transfers in program order, as (micro-batch, global
// chunk of the sender).
using Channel = std::tuple<int, int, bool>;

}  // namespace

void check_schedule(const PipelineSchedule& schedule, int pp, int m, int v) {
  TRIAD_CHECK(pp >= 1 && m >= 1 && v >= 1, "check_schedule: bad shape pp=", pp, " m=", m, " v=", v);
  TRIAD_CHECK(int(schedule.size()) == pp, "check_schedule: ", schedule.size(),
              " ranks, expected pp = ", pp);
  const int last = pp * v - 1;
  const ChunkPlacement P = schedule.placement;
  TRIAD_CHECK(P == ChunkPlacement::Interleaved || v == 2,
              "check_schedule: the V placement takes 2 chunks per rank, got v = ", v);
  const bool split = has_weight_pass(schedule);
  std::map<Channel, std::vector<std::pair<int, int>>> sends, recvs;
  for (int s = 0; s < pp; ++s) {
    // Per (micro-batch, local chunk) on this rank: what has happened so far.
    std::set<std::pair<int, int>> fwd, bwd, wgt, act_in, act_out, grad_in, grad_out;
    for (size_t i = 0; i < schedule[s].size(); ++i) {
      const Action& a = schedule[s][i];
      TRIAD_CHECK(a.microbatch >= 0 && a.microbatch < m && a.chunk >= 0 && a.chunk < v,
                  "check_schedule: ", where(s, i, a, pp, P), ": micro-batch or chunk out of range");
      const std::pair<int, int> key{a.microbatch, a.chunk};
      const int g = global_chunk_of(P, pp, s, a.chunk);
      switch (a.kind) {
        case ActionKind::Forward:
          TRIAD_CHECK(fwd.insert(key).second, "check_schedule: ", where(s, i, a, pp, P),
                      ": second forward");
          TRIAD_CHECK(g == 0 || act_in.count(key), "check_schedule: ", where(s, i, a, pp, P),
                      ": forward before its activation was received");
          break;
        case ActionKind::Backward:
          TRIAD_CHECK(fwd.count(key), "check_schedule: ", where(s, i, a, pp, P),
                      ": backward before its forward");
          TRIAD_CHECK(bwd.insert(key).second, "check_schedule: ", where(s, i, a, pp, P),
                      ": second backward");
          TRIAD_CHECK(g == last || grad_in.count(key), "check_schedule: ", where(s, i, a, pp, P),
                      ": backward before its gradient was received");
          break;
        case ActionKind::BackwardWeight:
          TRIAD_CHECK(bwd.count(key), "check_schedule: ", where(s, i, a, pp, P),
                      ": weight pass before its backward");
          TRIAD_CHECK(wgt.insert(key).second, "check_schedule: ", where(s, i, a, pp, P),
                      ": second weight pass");
          break;
        default: {
          const int other = partner_chunk(a.kind, g);
          TRIAD_CHECK(other >= 0 && other <= last, "check_schedule: ", where(s, i, a, pp, P),
                      ": global chunk ", g, " has no neighbour to transfer this with");
          TRIAD_CHECK(a.peer == chunk_rank(P, pp, other), "check_schedule: ", where(s, i, a, pp, P),
                      ": peer should be rank ", chunk_rank(P, pp, other),
                      ", which holds global chunk ", other);
          std::set<std::pair<int, int>>& seen = a.kind == ActionKind::SendActivation   ? act_out
                                                : a.kind == ActionKind::RecvActivation ? act_in
                                                : a.kind == ActionKind::SendGrad       ? grad_out
                                                                                       : grad_in;
          TRIAD_CHECK(seen.insert(key).second, "check_schedule: ", where(s, i, a, pp, P),
                      ": repeated transfer");
          if (a.kind == ActionKind::SendActivation)
            TRIAD_CHECK(fwd.count(key), "check_schedule: ", where(s, i, a, pp, P),
                        ": sent before its forward");
          if (a.kind == ActionKind::SendGrad)
            TRIAD_CHECK(bwd.count(key), "check_schedule: ", where(s, i, a, pp, P),
                        ": sent before its backward");
          const bool act = is_activation(a.kind);
          if (is_send(a.kind)) {
            sends[{s, a.peer, act}].push_back({a.microbatch, g});
          } else {
            recvs[{a.peer, s, act}].push_back({a.microbatch, other});  // as the sender names it
          }
        }
      }
    }
    // Everything computed on this rank, and sent on where it has a consumer.
    for (int c = 0; c < v; ++c) {
      const int g = global_chunk_of(P, pp, s, c);
      for (int mb = 0; mb < m; ++mb) {
        const std::pair<int, int> key{mb, c};
        const auto what = detail::concat("check_schedule: rank ", s, " micro-batch ", mb, " chunk ",
                                         c, " (global chunk ", g, ")");
        TRIAD_CHECK(fwd.count(key), what, ": no forward");
        TRIAD_CHECK(bwd.count(key), what, ": no backward");
        // The executor decides per model whether Backward leaves the weights to a W: all
        // pairs of the schedule are split, or none.
        TRIAD_CHECK(!split || wgt.count(key), what,
                    ": no weight pass (the schedule splits the backward elsewhere)");
        TRIAD_CHECK(g == last || act_out.count(key), what, ": activation never sent");
        TRIAD_CHECK(g == 0 || grad_out.count(key), what, ": gradient never sent");
      }
    }
  }
  // FIFO matching per channel: the k-th receive on a channel must take the k-th send.
  auto check_channels = [&](const auto& from, const auto& to, const char* missing) {
    for (const auto& [ch, list] : from) {
      const auto it = to.find(ch);
      const size_t n = it == to.end() ? 0 : it->second.size();
      for (size_t k = 0; k < list.size(); ++k) {
        const auto& [src, dst, act] = ch;
        const auto describe =
            detail::concat("check_schedule: ", act ? "activation" : "gradient", " channel rank ",
                           src, " -> rank ", dst, ", transfer ", k, " (micro-batch ", list[k].first,
                           " from global chunk ", list[k].second, ")");
        TRIAD_CHECK(k < n, describe, missing);
        TRIAD_CHECK(it->second[k] == list[k], describe, ": the other side has micro-batch ",
                    it->second[k].first, " from global chunk ", it->second[k].second,
                    " at this position (out of order)");
      }
    }
  };
  check_channels(sends, recvs, ": sent but never received");
  check_channels(recvs, sends, ": received but never sent");
}

SimResult simulate(const PipelineSchedule& schedule, int pp, int m, int v, double t_fwd,
                   double t_bwd) {
  TRIAD_CHECK(pp >= 1, "simulate: pp = ", pp);
  return simulate(schedule, pp, m, v, std::vector<double>(size_t(pp), t_fwd),
                  std::vector<double>(size_t(pp), t_bwd), 0);
}

SimResult simulate(const PipelineSchedule& schedule, int pp, int m, int v,
                   const std::vector<double>& t_fwd, const std::vector<double>& t_bwd,
                   int grad_buffers, const std::vector<double>& t_wgt) {
  TRIAD_CHECK(int(t_fwd.size()) == pp && int(t_bwd.size()) == pp,
              "simulate: one forward and one backward time per rank expected");
  TRIAD_CHECK(t_wgt.empty() || int(t_wgt.size()) == pp,
              "simulate: one weight-pass time per rank expected");
  TRIAD_CHECK(v >= 1, "simulate: bad shape");
  ChunkTimes t;  // each chunk 1/v of its rank's
  for (int s = 0; s < pp; ++s) {
    const double w = t_wgt.empty() ? t_bwd[size_t(s)] / 2 : t_wgt[size_t(s)];
    t.fwd.emplace_back(size_t(v), t_fwd[size_t(s)] / v);
    t.bwd.emplace_back(size_t(v), t_bwd[size_t(s)] / v);
    t.wgt.emplace_back(size_t(v), w / v);
  }
  return simulate(schedule, pp, m, v, t, grad_buffers);
}

SimResult simulate(const PipelineSchedule& schedule, int pp, int m, int v, const ChunkTimes& t,
                   int grad_buffers) {
  TRIAD_CHECK(int(schedule.size()) == pp, "simulate: ", schedule.size(),
              " ranks, expected pp = ", pp);
  TRIAD_CHECK(m >= 1 && v >= 1 && grad_buffers >= 0, "simulate: bad shape");
  TRIAD_CHECK(int(t.fwd.size()) == pp && int(t.bwd.size()) == pp && int(t.wgt.size()) == pp,
              "simulate: times for every rank expected");
  for (int s = 0; s < pp; ++s) {
    const size_t r = size_t(s);
    TRIAD_CHECK(int(t.fwd[r].size()) == v && int(t.bwd[r].size()) == v && int(t.wgt[r].size()) == v,
                "simulate: times for each of rank ", s, "'s ", v, " chunks expected");
    for (int c = 0; c < v; ++c)
      TRIAD_CHECK(t.fwd[r][size_t(c)] >= 0 && t.bwd[r][size_t(c)] >= 0 &&
                      t.wgt[r][size_t(c)] >= 0 && t.wgt[r][size_t(c)] <= t.bwd[r][size_t(c)],
                  "simulate: bad times of rank ", s, " chunk ", c);
  }
  // A split backward: B takes bwd − wgt, W wgt, and a micro-batch is live until its W.
  const bool split = has_weight_pass(schedule);
  auto compute_time = [&](ActionKind k, int s, int c) {
    const size_t r = size_t(s), i = size_t(c);
    if (k == ActionKind::Forward) return t.fwd[r][i];
    if (!split) return t.bwd[r][i];
    return k == ActionKind::BackwardWeight ? t.wgt[r][i] : t.bwd[r][i] - t.wgt[r][i];
  };
  const ActionKind release = releasing_action(schedule);
  struct Message {
    int microbatch, global_chunk;
    double time;
  };
  struct Queue {
    std::deque<Message> in_flight;
    size_t sent = 0;
    std::vector<double> received_at;  // [message]: when its receive completed
  };
  std::map<Channel, Queue> channels;
  std::vector<size_t> pc(pp, 0);
  std::vector<double> clock(pp, 0.0);
  std::vector<int> live(pp, 0);
  SimResult r;
  r.busy.assign(pp, 0.0);
  r.peak_live.assign(pp, 0);
  r.timeline.resize(pp);
  size_t left = 0;
  for (const auto& a : schedule) left += a.size();
  // Each rank runs ahead until it blocks (on a receive, or on a gradient send whose buffer is
  // still in flight); a blocked rank resumes at the time that unblocks it, so the times a rank
  // reaches do not depend on the order the ranks are visited in.
  while (left > 0) {
    bool progressed = false;
    for (int s = 0; s < pp; ++s) {
      while (pc[s] < schedule[s].size()) {
        const Action& a = schedule[s][pc[s]];
        const int g = global_chunk_of(schedule.placement, pp, s, a.chunk);
        if (is_compute(a.kind)) {
          const double dt = compute_time(a.kind, s, a.chunk);
          r.timeline[s].push_back({a.kind, a.microbatch, a.chunk, clock[s], clock[s] + dt});
          clock[s] += dt;
          r.busy[s] += dt;
          live[s] += a.kind == ActionKind::Forward ? 1 : a.kind == release ? -1 : 0;
          r.peak_live[s] = std::max(r.peak_live[s], live[s]);
        } else if (is_send(a.kind)) {
          Queue& q = channels[{s, a.peer, is_activation(a.kind)}];
          if (a.kind == ActionKind::SendGrad && grad_buffers > 0 &&
              q.sent >= size_t(grad_buffers)) {
            // The buffer is the one of message sent − grad_buffers: wait until it was received.
            const size_t reuse = q.sent - size_t(grad_buffers);
            if (q.received_at.size() <= reuse) break;  // blocked
            clock[s] = std::max(clock[s], q.received_at[reuse]);
          }
          q.in_flight.push_back({a.microbatch, g, clock[s]});
          ++q.sent;
        } else {
          TRIAD_ASSERT(is_recv(a.kind));
          Queue& q = channels[{a.peer, s, is_activation(a.kind)}];
          if (q.in_flight.empty()) break;  // blocked
          const Message msg = q.in_flight.front();
          TRIAD_CHECK(
              msg.microbatch == a.microbatch && msg.global_chunk == partner_chunk(a.kind, g),
              "simulate: ", where(s, pc[s], a, pp, schedule.placement), " received micro-batch ",
              msg.microbatch, " from global chunk ", msg.global_chunk, " instead");
          q.in_flight.pop_front();
          clock[s] = std::max(clock[s], msg.time);
          q.received_at.push_back(clock[s]);
        }
        ++pc[s];
        --left;
        progressed = true;
      }
    }
    if (!progressed) {
      std::string blocked;
      for (int s = 0; s < pp; ++s) {
        if (pc[s] < schedule[s].size())
          blocked += "\n  " + where(s, pc[s], schedule[s][pc[s]], pp, schedule.placement);
      }
      fail("simulate: deadlock: no rank can progress; blocked at", blocked);
    }
  }
  for (int s = 0; s < pp; ++s) r.makespan = std::max(r.makespan, clock[s]);
  double busy = 0;
  for (double b : r.busy) busy += b;
  r.bubble = r.makespan > 0 ? 1.0 - busy / (pp * r.makespan) : 0.0;
  return r;
}

int grad_send_buffers(const PipelineSchedule& schedule, int pp, int m, int v) {
  int most = 0;  // the most gradient sends of any channel: with as many buffers nothing waits
  for (const auto& actions : schedule) {
    // simulate() bounds each (sender, receiver) channel, as the executor keeps its buffers.
    std::map<int, int> sends;  // per peer
    for (const Action& a : actions)
      if (a.kind == ActionKind::SendGrad) most = std::max(most, ++sends[a.peer]);
  }
  if (most == 0) return 0;
  const std::vector<double> fwd(size_t(pp), 1.0), bwd(size_t(pp), 2.0);
  const double free_makespan = simulate(schedule, pp, m, v, fwd, bwd, 0).makespan;
  for (int k = 1; k < most; ++k) {
    try {
      if (simulate(schedule, pp, m, v, fwd, bwd, k).makespan <= free_makespan)
        return std::min(k + 1, most);  // one spare for timing noise
    } catch (const Error&) {           // deadlock: too few
    }
  }
  return most;
}

double theoretical_bubble(ScheduleKind kind, int pp, int m, int v) {
  validate_schedule_shape(kind, pp, m, v);
  const double p1 = pp - 1;
  if (kind == ScheduleKind::Interleaved) return p1 / (double(v) * m + p1);
  if (kind == ScheduleKind::ZeroBubble) {
    // The step in units of t_fwd = t_B = t_W. v = 1 with fewer micro-batches than stages has no
    // steady state to hide the Ws in; with virtual stages and m = pp, interleaving runs all
    // forwards first and half the gain is lost.
    double makespan = 3.0 * m + p1 / v;
    if (v == 1 && m < pp) makespan = 2.0 * (pp + m) - 1;
    if (v > 1 && m == pp) makespan = 3.0 * m + 2 * p1 / v;
    return 1.0 - 3.0 * m / makespan;
  }
  // A lower bound: the last rank starts pp − 1 chunk units late (F = B = W = half of t_fwd); met
  // for m ≥ pp with most (pp, m) (the header).
  if (kind == ScheduleKind::ZeroBubbleV) return p1 / (6.0 * m + p1);
  return p1 / (m + p1);
}

}  // namespace triad
