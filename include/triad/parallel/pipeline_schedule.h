// Pipeline-parallel schedules as data (issue 5 item 4): for every pipeline stage (rank) of a
// pp-stage pipeline, the ordered list of computations and point-to-point transfers it performs
// in one optimizer step over m micro-batches. Keeping a schedule as plain data lets it be
// checked (every send has its receive, in order) and simulated (no deadlock, bubble, memory)
// without MPI or a GPU, before a trainer executes it.
//
// Model layout: the model is cut into pp·v consecutive chunks ("global chunks"). Rank s holds
// the v chunks c = chunk·pp + s, chunk = 0..v-1 (Megatron's interleaved assignment; v = 1 is
// the plain one-chunk-per-stage pipeline), or under ZB-V (v = 2) chunks s and 2·pp − 1 − s: the
// V, down the ranks and back up, so that rank 0 holds the first and the last chunk and rank
// pp − 1 the two in the middle. Activations flow from global chunk c to c+1, the gradients from
// c+1 back to c (between rank pp − 1's two chunks of a V without leaving the rank: a transfer
// whose peer is the rank itself); the last global chunk computes the loss locally.
//
// Zero bubble (ZB-H1, Qi et al. 2023): the backward pass is cut in two. Backward computes only
// the gradient of the chunk's input (B), which the previous stage is waiting for; BackwardWeight
// (W) computes the weight gradients later, from the output gradients B left behind. Order: the
// forwards and Bs of 1F1B, with stage s running W of micro-batch i − s right after B of
// micro-batch i (the last stage lags the most, stage 0 not at all), and the remaining Ws at the
// end. Each B then reaches the previous stage a W earlier than 1F1B's backward, and the Ws fill
// the time 1F1B spends waiting. Every stage keeps at most pp micro-batches from forward to W,
// the most 1F1B keeps on stage 0. With v ≥ 2 virtual stages the same rule (W lagging s Bs on
// rank s) splits Megatron's interleaved order: no rank then keeps more (micro-batch, chunk)
// pairs than interleaved keeps on rank 0, and the bubble shrinks by another factor of v.
//
// ZB-V (the V-shaped zero-bubble schedule of Qi et al.'s zero-bubble work): the same split over
// the V placement. Its order is built by list scheduling with unit times (F = B = W): each rank,
// when free, runs the B whose gradient arrived first (chunk 0 on a tie), else a forward (chunk 1
// first) while it keeps fewer than 2·pp (micro-batch, chunk) pairs (and, where m is a multiple of
// pp, fewer than pp of that chunk's), else its oldest W. The cap is 1F1B's stage-0 activation
// memory (pp micro-batches of whole stages), on every rank. For
// m ≥ pp the step takes 6m + pp − 1 units, the bound of the last rank, which starts pp − 1 units
// late: exactly for pp ≤ 4, within 4 units for pp ≤ 8 and m ≤ 16, within 12 for pp ≤ 16 and
// m ≤ 64 (tested). Any m ≥ 1 (no multiple of pp needed).
//
// Bubble: simulate() measures the bubble fraction idle / (idle + busy) summed over the ranks,
// i.e. 1 − Σ busy_s / (pp · makespan). theoretical_bubble() uses the same definition:
//   GPipe, 1F1B:  (pp−1) / (m + pp−1)            (exact for any t_bwd / t_fwd)
//   Interleaved:  (pp−1) / (v·m + pp−1)
//   ZB-H1:        (pp−1) / (3·m + pp−1)          (t_B = t_W = t_fwd; m ≥ pp, else the step
//                                                 takes 2(pp + m) − 1 instead of 3m + pp − 1)
//   ZB, v ≥ 2:    (pp−1) / (3·v·m + pp−1)        (m ≥ 2pp; at m = pp the step takes
//                                                 3m + 2(pp−1)/v)
//   ZB-V:         (pp−1) / (6·m + pp−1)          (the bound above: met for pp ≤ 4, m ≥ pp)
// the interleaved one being Megatron's "bubble time / ideal time" = (pp−1)/(v·m) converted by
// r ↦ r / (1 + r), the ZB-H1 one the paper's (pp−1)(t_F + t_B − t_W) idle per stage. With
// t_bwd / t_fwd = 2 (split evenly into B and W) the simulator meets them all exactly (tested
// for pp ≤ 8, m ≤ 16, v ≤ 3). Peak live activations count (micro-batch, chunk) pairs from
// forward to the end of their backward (to W where the backward is split), each 1/v of a
// stage's activations.
#pragma once

#include <string>
#include <vector>

namespace triad {

enum class ScheduleKind { GPipe, OneFOneB, Interleaved, ZeroBubble, ZeroBubbleV };

// Which rank holds which global chunk (the layout above).
enum class ChunkPlacement { Interleaved, V };
ChunkPlacement chunk_placement(ScheduleKind kind);  // V for ZeroBubbleV
// The rank holding global chunk g of pp·v, and rank's local chunk `chunk` as a global chunk.
int chunk_rank(ChunkPlacement placement, int pp, int g);
int global_chunk_of(ChunkPlacement placement, int pp, int rank, int chunk);

// Backward is the whole backward pass, or only its input-gradient part (B) where the schedule
// has a BackwardWeight (W) for the same micro-batch and chunk.
enum class ActionKind {
  Forward,
  Backward,
  SendActivation,
  RecvActivation,
  SendGrad,
  RecvGrad,
  BackwardWeight
};

struct Action {
  ActionKind kind;
  int microbatch;  // 0..m-1
  int chunk;       // virtual stage on this rank, 0..v-1 (global chunk = chunk·pp + rank)
  int peer;  // the rank sent to / received from (itself: within the rank); -1 for computations
};

// [rank][step], and where the chunks are.
struct PipelineSchedule : std::vector<std::vector<Action>> {
  using std::vector<std::vector<Action>>::vector;
  ChunkPlacement placement = ChunkPlacement::Interleaved;
};

// "gpipe", "1f1b", "interleaved", "zb-h1", "zb-v" (the config's parallel.schedule); triad::Error
// otherwise.
ScheduleKind parse_schedule_kind(const std::string& name);
bool is_schedule_kind(const std::string& name);  // whether parse_schedule_kind takes it
// The names parse_schedule_kind takes, for messages: "1f1b, gpipe, interleaved, zb-h1 or zb-v".
extern const char* const kScheduleKindNames;
const char* schedule_kind_name(ScheduleKind kind);
const char* action_kind_name(ActionKind kind);

// Whether the kind's schedules split the backward into B and W (zb-h1, zb-v).
bool splits_backward(ScheduleKind kind);

// A computation (Forward, Backward, BackwardWeight), not a transfer.
bool is_compute(ActionKind kind);

// Whether a schedule splits the backward pass (has BackwardWeight actions).
bool has_weight_pass(const PipelineSchedule& schedule);
// The action after which a (micro-batch, chunk) pair's activations are no longer needed: its
// BackwardWeight where the schedule splits the backward, else its Backward.
ActionKind releasing_action(const PipelineSchedule& schedule);

// Throws triad::Error unless (pp, m, v) suit the kind: pp, m ≥ 1; GPipe and 1F1B take v = 1;
// Interleaved takes v ≥ 2 and m a multiple of pp (Megatron's constraint), ZeroBubble v = 1 or
// the same as Interleaved; ZeroBubbleV pp ≥ 2 and v = 2.
void validate_schedule_shape(ScheduleKind kind, int pp, int m, int v);

// The per-rank action lists. Receives sit right before the computation that needs them,
// sends right after the computation that produces them.
PipelineSchedule make_schedule(ScheduleKind kind, int pp, int m, int v);

// Throws triad::Error naming the first violation: a compute missing or repeated, a backward
// before its forward, a weight pass before its backward or on some (micro-batch, chunk) pairs
// only, a compute before the receive of its input, a send before the compute that produces it,
// a send to the wrong peer, or a send without exactly one matching receive in the same order
// on its (sender, receiver, kind) channel (FIFO matching).
void check_schedule(const PipelineSchedule& schedule, int pp, int m, int v);

struct ComputeInterval {
  ActionKind kind;  // Forward, Backward or BackwardWeight
  int microbatch, chunk;
  double start, end;
};

struct SimResult {
  double makespan = 0;
  std::vector<double> busy;  // per rank: total compute time
  double bubble = 0;         // 1 − Σ busy / (pp · makespan)
  // Per rank: the most (micro-batch, chunk) pairs whose forward has run and backward (W where
  // the schedule splits it) has not.
  std::vector<int> peak_live;
  std::vector<std::vector<ComputeInterval>> timeline;  // per rank, in execution order
};

// Discrete-event simulation of one step: a receive blocks until its matching send has run,
// sends are buffered (cost nothing, never block), a forward takes t_fwd / v and a backward
// t_bwd / v (a chunk is 1/v of a stage's layers). Throws triad::Error("deadlock ...") when
// no rank can progress while some have actions left, and on a receive whose message is not
// the one it expects. With grad_buffers = K > 0 each rank sends its gradients from K buffers
// in turn: a gradient send blocks until the message sent K earlier from the same rank has been
// received (what the executor does before reusing that buffer). Where the schedule splits the
// backward, W takes half of t_bwd and B the rest.
SimResult simulate(const PipelineSchedule& schedule, int pp, int m, int v, double t_fwd = 1.0,
                   double t_bwd = 2.0);
// The same with each rank's own times (uneven stages: the last one holds the head), t_fwd[s] and
// t_bwd[s] for all of rank s's chunks together (>= 0: a stage without layers may only relay);
// the bubble then counts the imbalance's idle time too. t_wgt[s] (empty: t_bwd[s] / 2) is the
// part of t_bwd[s] that a split backward's W takes.
SimResult simulate(const PipelineSchedule& schedule, int pp, int m, int v,
                   const std::vector<double>& t_fwd, const std::vector<double>& t_bwd,
                   int grad_buffers = 0, const std::vector<double>& t_wgt = {});

// Per-chunk times, [rank][local chunk]: fwd, bwd (the whole backward) and wgt (the part of bwd a
// split backward's W takes), for chunks of unequal work (the head's chunk).
struct ChunkTimes {
  std::vector<std::vector<double>> fwd, bwd, wgt;
};
SimResult simulate(const PipelineSchedule& schedule, int pp, int m, int v, const ChunkTimes& t,
                   int grad_buffers = 0);

// How many buffers the executor gives a rank for the gradients it sends to one peer (ZB-V's
// ranks send to two, or to one and themselves): the fewest K with which the simulated step
// (backward = 2 × forward) neither deadlocks nor takes longer than with one buffer per send, plus
// one spare, at most the sends of the busiest channel (0 without any).
// The buffers reused in turn form a bounded channel, and whether a network of processes with
// blocking receives and bounded channels deadlocks does not depend on timing (Kahn), so the
// simulation's answer holds on any machine; only the speed does not.
int grad_send_buffers(const PipelineSchedule& schedule, int pp, int m, int v);

// The bubble fraction idle / (idle + busy) the formulas of the header comment predict.
double theoretical_bubble(ScheduleKind kind, int pp, int m, int v);

}  // namespace triad
