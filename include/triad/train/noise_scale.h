// The gradient noise scale of McCandlish et al., "An Empirical Model of Large-Batch Training"
// (2018), appendix A: from the squared norms of two gradients of the same weights, over a small
// batch of b tokens and over the whole batch of B tokens, the unbiased estimates
//   |G|²  = (B·|G_B|² − b·|G_b|²) / (B − b)      (the true gradient's squared norm)
//   tr(Σ) = (|G_b|² − |G_B|²) / (1/b − 1/B)      (the per-token gradient's total variance)
// since E|G_b|² = |G|² + tr(Σ)/b. Each estimate is noisy; the simple noise scale
// B_simple = tr(Σ) / |G|², the batch in tokens beyond which a larger one gains little, is the
// ratio of their running means (the paper's choice: not the mean of the ratios).
#pragma once

#include <cstddef>
#include <cstdint>

namespace triad {

// Context parallelism: the ranks' parts of the small batch's gradient (expert parallelism: its
// dense tensors') are summed over the group through one scratch buffer of at most this many
// floats (16 MB), a piece at a time.
inline constexpr size_t kNoiseSumFloats = size_t(1) << 22;

struct NoiseEstimate {
  double g_sq = 0, trace = 0;
};
NoiseEstimate noise_estimate(double small_sq, double small_tokens, double big_sq,
                             double big_tokens);

// Exponential moving averages of |G|² and tr(Σ) (from 0; a bias correction would cancel in the
// ratio), and their ratio once the mean of |G|² is positive (noisy estimates can make it not).
class NoiseScale {
 public:
  explicit NoiseScale(double decay = 0.9) : decay_(decay) {}
  void add(const NoiseEstimate& e);
  bool ready() const { return n_ > 0 && g_sq_ > 0; }
  double b_simple() const { return trace_ / g_sq_; }

 private:
  double decay_, g_sq_ = 0, trace_ = 0;
  int64_t n_ = 0;
};

}  // namespace triad
