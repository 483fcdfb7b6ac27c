#include "triad/train/outlier_window.h"

#include <cmath>
#include <limits>

namespace triad {

double OutlierWindow::push(double x) {
  double z = std::numeric_limits<double>::quiet_NaN();
  if (size_ > 0 && window_.size() == size_) {
    // Recomputed from the stored values each time (no running sums): the same numbers after a
    // restore as in the run that saved them.
    double mean = 0;
    for (double v : window_) mean += v;
    mean /= double(size_);
    double var = 0;
    for (double v : window_) var += (v - mean) * (v - mean);
    const double sd = std::sqrt(var / double(size_));
    z = sd > 0 ? (x - mean) / sd : 0.0;
  }
  window_.push_back(x);
  while (window_.size() > size_) window_.pop_front();
  return z;
}

void OutlierWindow::restore(const std::vector<double>& values) {
  window_.clear();
  const size_t from = values.size() > size_ ? values.size() - size_ : 0;
  window_.assign(values.begin() + std::ptrdiff_t(from), values.end());
}

}  // namespace triad
