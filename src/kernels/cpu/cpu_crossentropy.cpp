// Fused softmax + cross-entropy over the first V of Vp logits per row; the logits are replaced
// by dloss/dlogits in place, which saves a [N, Vp] buffer (the largest activation).
#include <cmath>

#include "cpu_math.h"
#include "cpu_ops.h"

namespace triad::cpu {

void crossentropy_forward_backward(float* logits, float* losses, float* correct,
                                   const int32_t* targets, int N, int V, int Vp,
                                   float dloss_scale) {
#pragma omp parallel for schedule(static) if (size_t(N) * Vp >= kParallelMin)
  for (int n = 0; n < N; ++n) {
    float* row = logits + size_t(n) * Vp;
    const int target = targets[n];

    float max_val = row[0];
#pragma omp simd reduction(max : max_val)
    for (int j = 0; j < V; ++j) max_val = std::max(max_val, row[j]);
    if (correct != nullptr) {
      int argmax = 0;  // the first index holding the maximum, as torch.argmax
      while (argmax < V - 1 && row[argmax] != max_val) ++argmax;  // bounded if NaN
      correct[n] = argmax == target ? 1.0f : 0.0f;
    }
    const float target_logit = row[target];

    // Shifted exponentials overwrite the row; their sum is kept in double.
    exp_shifted_inplace(row, V, max_val);
    double sum = 0.0;
#pragma omp simd reduction(+ : sum)
    for (int j = 0; j < V; ++j) sum += row[j];
    // loss = logsumexp − logit[target] = log(Σ e) − (logit[target] − max)
    losses[n] = float(std::log(sum) - double(target_logit - max_val));

    // dlogits = softmax · scale (tiny values flushed to 0: they feed the LM-head gemms, see
    // kFlushBelow), minus scale at the target.
    scale_flush_inplace(row, size_t(V), float(double(dloss_scale) / sum));
    row[target] -= dloss_scale;
    for (int j = V; j < Vp; ++j) row[j] = 0.0f;
  }
}

}  // namespace triad::cpu
