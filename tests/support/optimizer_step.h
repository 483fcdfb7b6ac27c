// One AdamW or SGD update with fixed hyperparameters (GPT-2's), step-dependent bias
// corrections and an optional bf16 copy: the same call for the CPU and CUDA optimizer tests.
#pragma once

#include <cmath>
#include <cstddef>

#include "triad/core/bf16.h"
#include "triad/kernels/backend.h"

namespace triad::testing {

// adam: AdamW (lr 6e-4, betas 0.9/0.95, eps 1e-8, wd 0.1) with state m, v; else SGD (lr 0.05,
// momentum 0.9 in m, wd 1e-4; v unused). `step` counts from 1.
inline void optimizer_step(Backend& be, bool adam, float* p, const float* g, float* m, float* v,
                           size_t n, int step, bf16_t* copy = nullptr) {
  if (adam) {
    const float bc1 = 1.0f - std::pow(0.9f, float(step));
    const float bc2 = 1.0f - std::pow(0.95f, float(step));
    be.adamw_update(p, g, m, v, n, 6e-4f, 0.9f, 0.95f, 1e-8f, 0.1f, bc1, bc2, copy);
  } else {
    be.sgd_update(p, g, m, n, 0.05f, 0.9f, 1e-4f, copy);
  }
}

}  // namespace triad::testing
