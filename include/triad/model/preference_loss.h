// DPO's loss of one pair (Rafailov et al. 2023), shared by the training step
// (Gpt::set_preference) and the evaluation of held-out pairs (eval.preferences).
#pragma once

#include <cmath>

namespace triad {

struct PairLoss {
  double chosen = 0, rejected = 0;  // the rewards, β·(π − ρ)
  double loss = 0;                  // −log σ(z), z = chosen − rejected
  double weight = 0;                // σ(−z): −d loss / d z
  bool right() const { return chosen > rejected; }
};

// π: a sequence's summed log-probability of its counted targets; ρ: the same under the
// reference model. Computed without overflow for any z.
inline PairLoss dpo_pair_loss(double beta, double pi_chosen, double ref_chosen, double pi_rejected,
                              double ref_rejected) {
  PairLoss p;
  p.chosen = beta * (pi_chosen - ref_chosen);
  p.rejected = beta * (pi_rejected - ref_rejected);
  const double z = p.chosen - p.rejected;
  // −log σ(z) = log(1 + e^−z); σ(−z) = 1 / (1 + e^z)
  p.loss = z > 0 ? std::log1p(std::exp(-z)) : -z + std::log1p(std::exp(z));
  p.weight = z > 0 ? std::exp(-z) / (1.0 + std::exp(-z)) : 1.0 / (1.0 + std::exp(z));
  return p;
}

}  // namespace triad
