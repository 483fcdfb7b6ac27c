// The training loop of DESIGN.md §4: set-up (grid, backend, model, optimizer, data, run
// directory), resume or init-from, the step loop with accumulation, clipping and the LR
// schedule, evaluation, progress lines, metrics.h5, checkpoints and preemption signals.
#pragma once

#include <mpi.h>

#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "triad/parallel/comm.h"
#include "triad/train/config.h"

namespace triad {

struct EvalResult {
  double loss = 0, accuracy = 0;
  // eval.bits_per_byte: the loss in bits per byte of the targets' text (NaN: off)
  double bpb = std::numeric_limits<double>::quiet_NaN();
  int64_t sequences = 0;
  // eval.choices (train/choice_eval.h): the share of examples whose right ending has the least
  // mean token loss (llm.c's HellaSwag accuracy), least summed loss (lm-eval's acc) or least
  // summed loss per character (lm-eval's acc_norm; NaN when the tokenizer could not count the
  // characters), and the mean over all endings of their mean token loss.
  double choice_accuracy = 0, choice_accuracy_by_sum = 0, choice_ending_loss = 0;
  double choice_accuracy_by_chars = std::numeric_limits<double>::quiet_NaN();
  int64_t choice_examples = 0;
  // eval.sets, in its order: name, loss, accuracy (eval.loss_by_position: its loss at each
  // position too).
  struct Set {
    std::string name;
    double loss = 0, accuracy = 0;
    double bpb = std::numeric_limits<double>::quiet_NaN();
    std::vector<double> loss_by_position;
  };
  std::vector<Set> sets;
  // eval.loss_by_position: data.val's mean loss at each position (NaN where none counted).
  std::vector<double> loss_by_position;
  // eval.preferences: DPO's mean loss over its pairs, the share ranked right, the mean reward
  // margin (NaN: none), and the pairs.
  double dpo_loss = std::numeric_limits<double>::quiet_NaN();
  double dpo_accuracy = std::numeric_limits<double>::quiet_NaN();
  double dpo_margin = std::numeric_limits<double>::quiet_NaN();
  int64_t dpo_pairs = 0;
};

// "choice accuracy 0.2955 (by summed loss 0.2859, by characters 0.3114, ending loss 3.123456) |
// 10042 examples" (no "by characters" where it is NaN)
std::string describe_choices(const EvalResult& r);
// "val loss by position: 0-127 4.1234, 128-255 3.9876, ...": eval.loss_by_position's losses
// averaged over up to 8 equal spans of positions (the positions with a loss, each once); `set`
// names the set in place of "val" (eval.sets).
std::string describe_position_losses(const std::vector<double>& loss,
                                     const std::string& set = "val");

struct TrainOutcome {
  int64_t steps_done = 0;
  bool preempted = false;    // stopped early with a checkpoint (a signal, or run.max_minutes)
  bool interrupted = false;  // ... by Ctrl-C (SIGINT): triad-train exits 130, as a shell's job
  EvalResult last_eval;
  std::vector<double> losses;  // the loss of every step this call ran (identical on all ranks)
  // What the data-parallel communicator moved during the training steps (evaluations
  // included), and the sizes it follows from (docs/parallelism.md, "Communication volume").
  CommStats dp_traffic;
  CommStats tp_traffic, pp_traffic;  // the tensor- and pipeline-parallel groups, likewise
  CommStats cp_traffic;              // and the context-parallel group
  CommStats ep_traffic;   // and the expert-parallel group's token exchanges (parallel.ep > 1)
  CommStats edp_traffic;  // and the experts' replicas' gradient reductions (parallel.ep > 1)
  size_t param_floats = 0, buffer_floats = 0;  // this rank's part of the model
  size_t master_floats = 0;     // the fp32 (master) weights it keeps: its ZeRO-1 slice in bf16
  size_t optimizer_floats = 0;  // this rank's optimizer state
  size_t allocated_bytes = 0;   // live on this rank's backend at the end (Backend::allocated_bytes)
};

class Trainer {
 public:
  Trainer(MPI_Comm world, const CommandLine& cl);
  ~Trainer();
  TrainOutcome run();          // train to train.steps (or a preemption signal, or run.max_minutes)
  EvalResult evaluate_only();  // --eval-only
  // The full parameters (every tensor of DESIGN.md §3, layout order, without wte's padding
  // rows) on the host of every rank, assembled from all ranks' shards (collective).
  std::vector<float> parameters() const;

 private:
  struct State;
  std::unique_ptr<State> s_;
};

// Installs SIGUSR1/SIGTERM/SIGINT handlers that request a checkpoint-and-exit at the next step
// boundary (DESIGN.md §5); a second SIGINT ends the process at once.
void install_preemption_handlers();

}  // namespace triad
