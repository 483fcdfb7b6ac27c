// The loss of one preference pair (train.dpo_loss), shared by the training step
// (Gpt::set_preference) and the evaluation of held-out pairs (eval.preferences). With π a
// sequence's summed log-probability of its counted targets, ρ the same under the reference model
// and n its counted targets, h = (π_c − ρ_c) − (π_r − ρ_r) and β = train.dpo_beta:
//   sigmoid (DPO, Rafailov et al. 2023): −log σ(β·h); with label smoothing ε (cDPO, for noisy
//     labels): −(1 − ε)·log σ(β·h) − ε·log σ(−β·h);
//   hinge (SLiC-HF's, Zhao et al. 2023): max(0, 1 − β·h);
//   ipo (Azar et al. 2023): (h' − 1/(2β))², h' the same difference of per-token means
//     ((π − ρ) / n of each sequence), as TRL computes it.
// The rewards β·(π − ρ) are reported alike for every loss.
#pragma once

#include <algorithm>
#include <cmath>
#include <string>

namespace triad {

enum class PreferenceLoss { sigmoid, hinge, ipo };

// "sigmoid", "hinge" or "ipo"; throws triad::Error naming train.dpo_loss otherwise.
PreferenceLoss parse_preference_loss(const std::string& name);

struct PreferenceLossSpec {
  PreferenceLoss kind = PreferenceLoss::sigmoid;
  double beta = 0.1;
  double label_smoothing = 0;  // sigmoid only
};

struct PairLoss {
  double chosen = 0, rejected = 0;  // the rewards, β·(π − ρ)
  double loss = 0;
  double d_chosen = 0, d_rejected = 0;  // d loss / d π of each sequence
  bool right() const { return chosen > rejected; }
};

namespace preference_detail {
// −log σ(x) = log(1 + e^−x) and σ(x), without overflow for any x
inline double softplus_neg(double x) {
  return x > 0 ? std::log1p(std::exp(-x)) : -x + std::log1p(std::exp(x));
}
inline double sigmoid(double x) {
  return x >= 0 ? 1.0 / (1.0 + std::exp(-x)) : std::exp(x) / (1.0 + std::exp(x));
}
}  // namespace preference_detail

// π, ρ and n of the chosen (c) and the rejected (r) sequence.
inline PairLoss preference_pair_loss(const PreferenceLossSpec& s, double pi_c, double ref_c,
                                     double n_c, double pi_r, double ref_r, double n_r) {
  using preference_detail::sigmoid;
  using preference_detail::softplus_neg;
  PairLoss p;
  p.chosen = s.beta * (pi_c - ref_c);
  p.rejected = s.beta * (pi_r - ref_r);
  const double h = (pi_c - ref_c) - (pi_r - ref_r);
  double dh = 0;  // d loss / d h (ipo: / d h')
  switch (s.kind) {
    case PreferenceLoss::sigmoid: {
      const double z = s.beta * h, e = s.label_smoothing;
      p.loss = (1 - e) * softplus_neg(z) + e * softplus_neg(-z);
      dh = -s.beta * ((1 - e) * sigmoid(-z) - e * sigmoid(z));
      break;
    }
    case PreferenceLoss::hinge:
      p.loss = std::max(0.0, 1 - s.beta * h);
      dh = 1 - s.beta * h > 0 ? -s.beta : 0.0;
      break;
    case PreferenceLoss::ipo: {
      const double hm = (pi_c - ref_c) / n_c - (pi_r - ref_r) / n_r, d = hm - 1 / (2 * s.beta);
      p.loss = d * d;
      p.d_chosen = 2 * d / n_c;
      p.d_rejected = -2 * d / n_r;
      return p;
    }
  }
  p.d_chosen = dh;
  p.d_rejected = -dh;
  return p;
}

}  // namespace triad
