// A measured pipeline step beside its simulation (train.profile_step): every stage's compute
// actions (forward, backward, weight pass) with their start and end in the step, gathered from
// the pipeline group, and the schedule simulated with each stage's mean measured action times.
// Where the two differ, something other than the schedule costs time (communication, a slow
// rank); where they agree, the simulator's timeline shows what another schedule would do with
// the same actions. Written as CSV for triad-timeline (analysis/plot_timeline.py).
#pragma once

#include <string>
#include <vector>

#include "triad/parallel/comm.h"
#include "triad/parallel/pipeline_schedule.h"

namespace triad {

struct PipelineTrace {
  int step = 0;                                        // the step's number (1-based)
  std::vector<std::vector<ComputeInterval>> measured;  // [stage], seconds from the step's start
  SimResult simulated;
  double measured_seconds = 0, measured_bubble = 0;  // the last action's end; idle / (idle+busy)
};

// Collective over the pipeline group `pp`: each rank hands in its own intervals (the Gpt's
// trace of one pipeline_step), every rank gets all stages' and the simulation.
PipelineTrace gather_pipeline_trace(Comm& pp, const std::vector<ComputeInterval>& mine,
                                    const PipelineSchedule& schedule, int m, int v, int step);

// source,stage,kind,microbatch,chunk,start_ms,end_ms — one row per action, measured first;
// kind F (forward), B (backward, its input-gradient part where the schedule splits it), W.
void write_pipeline_trace_csv(const PipelineTrace& trace, const std::string& path);

// The same CSV with only the simulated rows, for a step the plan simulated (RunPlan::pipeline,
// times in FLOPs per rank) at `tflops` TFLOP/s per rank.
void write_planned_timeline_csv(const SimResult& flops, double tflops, const std::string& path);

// One line for the log: both step times and bubbles.
std::string describe_pipeline_trace(const PipelineTrace& trace, const std::string& path);

}  // namespace triad
