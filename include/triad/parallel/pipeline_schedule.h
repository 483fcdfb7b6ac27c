// Pipeline-parallel schedules as data (issue 5 item 4): for every pipeline stage (rank) of a
// pp-stage pipeline, the ordered list of computations and point-to-point transfers it performs
// in one optimizer step over m micro-batches. Keeping a schedule as plain data lets it be
// checked (every send has its receive, in order) and simulated (no deadlock, bubble, memory)
// without MPI or a GPU, before a trainer executes it.
//
// Model layout: the model is cut into pp·v consecutive chunks ("global chunks"). Rank s holds
// the v chunks c = chunk·pp + s, chunk = 0..v-1 (Megatron's interleaved assignment; v = 1 is
// the plain one-chunk-per-stage pipeline). Activations flow from global chunk c to c+1, the
// gradients from c+1 back to c; the last global chunk computes the loss locally.
//
// Bubble: simulate() measures the bubble fraction idle / (idle + busy) summed over the ranks,
// i.e. 1 − Σ busy_s / (pp · makespan). theoretical_bubble() uses the same definition:
//   GPipe, 1F1B:  (pp−1) / (m + pp−1)            (exact for any t_bwd / t_fwd)
//   Interleaved:  (pp−1) / (v·m + pp−1)
// the latter being Megatron's "bubble time / ideal time" = (pp−1)/(v·m) converted by
// r ↦ r / (1 + r). With t_bwd / t_fwd = 2 the simulator meets all three exactly (tested for
// pp ≤ 8, m ≤ 16, v ≤ 3). Peak live activations count (micro-batch, chunk) pairs, each 1/v of
// a stage's activations.
#pragma once

#include <string>
#include <vector>

namespace triad {

enum class ScheduleKind { GPipe, OneFOneB, Interleaved };

enum class ActionKind { Forward, Backward, SendActivation, RecvActivation, SendGrad, RecvGrad };

struct Action {
  ActionKind kind;
  int microbatch;  // 0..m-1
  int chunk;       // virtual stage on this rank, 0..v-1 (global chunk = chunk·pp + rank)
  int peer;        // the rank sent to / received from; -1 for computations
};

using PipelineSchedule = std::vector<std::vector<Action>>;  // [rank][step]

// "gpipe", "1f1b", "interleaved" (the config's parallel.schedule); triad::Error otherwise.
ScheduleKind parse_schedule_kind(const std::string& name);
const char* schedule_kind_name(ScheduleKind kind);
const char* action_kind_name(ActionKind kind);

// Throws triad::Error unless (pp, m, v) suit the kind: pp, m ≥ 1; GPipe and 1F1B take v = 1;
// Interleaved takes v ≥ 2 and m a multiple of pp (Megatron's constraint).
void validate_schedule_shape(ScheduleKind kind, int pp, int m, int v);

// The per-rank action lists. Receives sit right before the computation that needs them,
// sends right after the computation that produces them.
PipelineSchedule make_schedule(ScheduleKind kind, int pp, int m, int v);

// Throws triad::Error naming the first violation: a compute missing or repeated, a backward
// before its forward, a compute before the receive of its input, a send before the compute
// that produces it, a send to the wrong peer, or a send without exactly one matching receive
// in the same order on its (sender, receiver, kind) channel (FIFO matching).
void check_schedule(const PipelineSchedule& schedule, int pp, int m, int v);

struct ComputeInterval {
  ActionKind kind;  // Forward or Backward
  int microbatch, chunk;
  double start, end;
};

struct SimResult {
  double makespan = 0;
  std::vector<double> busy;  // per rank: total compute time
  double bubble = 0;         // 1 − Σ busy / (pp · makespan)
  // Per rank: the most (micro-batch, chunk) pairs whose forward has run and backward has not.
  std::vector<int> peak_live;
  std::vector<std::vector<ComputeInterval>> timeline;  // per rank, in execution order
};

// Discrete-event simulation of one step: a receive blocks until its matching send has run,
// sends are buffered (cost nothing, never block), a forward takes t_fwd / v and a backward
// t_bwd / v (a chunk is 1/v of a stage's layers). Throws triad::Error("deadlock ...") when
// no rank can progress while some have actions left, and on a receive whose message is not
// the one it expects. With grad_buffers = K > 0 each rank sends its gradients from K buffers
// in turn: a gradient send blocks until the message sent K earlier from the same rank has been
// received (what the executor does before reusing that buffer).
SimResult simulate(const PipelineSchedule& schedule, int pp, int m, int v, double t_fwd = 1.0,
                   double t_bwd = 2.0);
// The same with each rank's own times (uneven stages: the last one holds the head), t_fwd[s] and
// t_bwd[s] for all of rank s's chunks together (>= 0: a stage without layers may only relay);
// the bubble then counts the imbalance's idle time too.
SimResult simulate(const PipelineSchedule& schedule, int pp, int m, int v,
                   const std::vector<double>& t_fwd, const std::vector<double>& t_bwd,
                   int grad_buffers = 0);

// How many buffers the executor gives each rank for its outgoing gradients: the fewest K with
// which the simulated step (backward = 2 × forward) neither deadlocks nor takes longer than with
// one buffer per send, plus one spare, at most the sends of the busiest rank (0 without any).
// The buffers reused in turn form a bounded channel, and whether a network of processes with
// blocking receives and bounded channels deadlocks does not depend on timing (Kahn), so the
// simulation's answer holds on any machine; only the speed does not.
int grad_send_buffers(const PipelineSchedule& schedule, int pp, int m, int v);

// The bubble fraction idle / (idle + busy) the formulas of the header comment predict.
double theoretical_bubble(ScheduleKind kind, int pp, int m, int v);

}  // namespace triad
