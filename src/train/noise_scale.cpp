#include "triad/train/noise_scale.h"

#include "triad/core/error.h"

namespace triad {

NoiseEstimate noise_estimate(double small_sq, double small_tokens, double big_sq,
                             double big_tokens) {
  TRIAD_ASSERT(small_tokens > 0 && big_tokens > small_tokens);
  return {(big_tokens * big_sq - small_tokens * small_sq) / (big_tokens - small_tokens),
          (small_sq - big_sq) / (1.0 / small_tokens - 1.0 / big_tokens)};
}

void NoiseScale::add(const NoiseEstimate& e) {
  g_sq_ = decay_ * g_sq_ + (1 - decay_) * e.g_sq;
  trace_ = decay_ * trace_ + (1 - decay_) * e.trace;
  ++n_;
}

}  // namespace triad
