// Update skipping (train.skip_loss_z, train.skip_norm_z), as llm.c offers it: a step whose loss
// or gradient norm lies more than z standard deviations above the mean of the preceding
// train.skip_window steps keeps the weights and optimizer state as they were (the data and the
// learning-rate schedule move on). The windows travel in checkpoints, so a resumed run skips
// exactly the steps the uninterrupted one does.
#pragma once

#include <cstddef>
#include <deque>
#include <vector>

namespace triad {

class OutlierWindow {
 public:
  explicit OutlierWindow(size_t size) : size_(size) {}
  // The z-score of x against the values before it, (x − mean) / std (population std, in
  // double): NaN while fewer than `size` values came before, 0 where they are all equal. Then x
  // joins the window (skipped steps' values too, so a lasting change of level stops counting
  // as an outlier after a while) and the oldest value leaves it.
  double push(double x);
  std::vector<double> values() const { return {window_.begin(), window_.end()}; }
  // From a checkpoint: the newest `size` of `values` (oldest first).
  void restore(const std::vector<double>& values);

 private:
  size_t size_;
  std::deque<double> window_;
};

}  // namespace triad
