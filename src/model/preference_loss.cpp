#include "triad/model/preference_loss.h"

#include "triad/core/error.h"

namespace triad {

PreferenceLoss parse_preference_loss(const std::string& name) {
  if (name == "sigmoid") return PreferenceLoss::sigmoid;
  if (name == "hinge") return PreferenceLoss::hinge;
  if (name == "ipo") return PreferenceLoss::ipo;
  fail("config: train.dpo_loss must be sigmoid, hinge or ipo (it is '", name, "')");
}

}  // namespace triad
