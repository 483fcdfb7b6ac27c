// triad-bench kernels: every op of one training step of a GPT-2 layer (and the classifier and
// optimizer) through the Backend interface, timed on its own, with its rate (TFLOP/s for the
// products and attention, GB/s of minimum memory traffic for the rest) beside the two roofline
// ceilings measured in the same run: the backend's large-matmul rate and a plain device copy.
#pragma once

#include <string>
#include <vector>

#include "triad/kernels/backend.h"

namespace triad {

struct KernelBenchShape {
  int B = 16, T = 1024, C = 768, NH = 12, V = 50257, layers = 12;
  int window = 0;  // attention within each query's last `window` keys (0: causal over all)
};

// The keys the T queries of a sequence see under a sliding window (0: causal), summed: the
// attention's work is 4·hd·NH·B times this per forward (two products).
double attention_key_count(int T, int window);

struct KernelRate {
  std::string name, shape;
  double seconds = 0;  // per call (best of the timed rounds' averages)
  double work = 0;     // FLOPs (compute-bound ops) or bytes (memory-bound ops) per call
  bool flops = false;  // which of the two `work` counts
  // false: a variant timed for comparison (the separate kernels a fused op replaces), left out
  // of the step sum and listed after the step's ops.
  bool in_step = true;
};

struct KernelBench {
  double matmul_ceiling = 0;  // FLOP/s: the backend's n³ product in the bench's precision
  double copy_ceiling = 0;    // bytes/s: read + write of a plain copy
  std::vector<KernelRate> rows;
  // The ops of one training step added up (each layer op times the layer count; the residual
  // adds, the bias/LayerNorm reductions outside these ops and communication left out): a lower
  // bound on the step time, and the tokens per second it would allow.
  double step_seconds = 0, step_tokens = 0;
};

// Runs every op `repeat` times per round (three rounds, after a warm-up call), bf16 or fp32.
KernelBench run_kernel_bench(Backend& be, const KernelBenchShape& shape, bool bf16, int repeat);

// The table (one row per op: time, rate, fraction of its ceiling) with a header naming the
// ceilings; each row also as a line "KERNEL name=... ms=... rate=... unit=... of_ceiling=...".
std::string format_kernel_bench(const KernelBench& r, const std::string& title);

}  // namespace triad
