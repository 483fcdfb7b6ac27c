// triad-train: pretraining, resuming, fine-tuning (--init-from), evaluation (--eval-only) and
// planning a grid's memory before a job (--plan).
#include <cmath>
#include <iostream>
#include <utility>

#include "triad/core/error.h"
#include "triad/parallel/comm.h"
#include "triad/train/app_main.h"
#include "triad/train/config.h"
#include "triad/train/pipeline_trace.h"
#include "triad/train/run_plan.h"
#include "triad/train/trainer.h"

int main(int argc, char** argv) {
  // Before anything slow (MPI start-up, data mapping): a SIGTERM/SIGUSR1 that arrives early is
  // remembered and honoured at the first step boundary instead of killing the process.
  triad::install_preemption_handlers();
  return triad::run_main(argc, argv, "triad-train", [&](MPI_Comm world) {
    triad::install_preemption_handlers();  // again, in case MPI_Init replaced them
    const triad::CommandLine cl = triad::parse_train_command_line(argc, argv);
    const int rank = triad::rank_in(world);
    if (cl.help) {
      if (rank == 0) std::cout << cl.help_text;
      return 0;
    }
    TRIAD_CHECK(cl.plan || cl.plan_timeline.empty(), "--plan-timeline is an option of --plan");
    if (cl.plan) {
      for (const auto& [option, value] : {std::pair{"--plan-tflops", cl.plan_tflops},
                                          {"--plan-gbps", cl.plan_gbps},
                                          {"--plan-memory-gb", cl.plan_memory_gb}})
        TRIAD_CHECK(value >= 0 && std::isfinite(value), option,
                    " must be a finite number >= 0 (got ", value, ")");
      const int ranks = cl.plan_ranks != 0 ? cl.plan_ranks : triad::size_of(world);
      const triad::RunPlan plan = triad::plan_run(cl.config, ranks);
      if (!cl.plan_timeline.empty()) {
        TRIAD_CHECK(plan.grid.pp > 1,
                    "--plan-timeline draws a pipeline step and needs parallel.pp > 1");
        TRIAD_CHECK(cl.plan_tflops > 0,
                    "--plan-timeline needs --plan-tflops > 0 (the rate that "
                    "turns the plan's FLOPs into time)");
      }
      if (rank == 0) {
        if (!cl.plan_timeline.empty())
          triad::write_planned_timeline_csv(plan.pipeline, cl.plan_tflops, cl.plan_timeline);
        std::cout << triad::format_run_plan(plan, cl.config, cl.plan_tflops, cl.plan_gbps);
        if (cl.plan_memory_gb > 0)
          std::cout << triad::format_recompute_fit(cl.config, ranks, cl.plan_tflops,
                                                   cl.plan_memory_gb);
        if (!cl.plan_timeline.empty())
          std::cout << "pipeline step as simulated, action by action: " << cl.plan_timeline
                    << " (triad-timeline draws it)\n";
      }
      return 0;
    }
    triad::Trainer trainer(world, cl);
    if (cl.eval_only) {
      trainer.evaluate_only();
      return 0;
    }
    // Stopped by Ctrl-C: not 0, which a job script takes for a preemption to requeue.
    return trainer.run().interrupted ? 130 : 0;
  });
}
