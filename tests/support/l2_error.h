// Comparing a kernel's output with a reference by the L2 norm of the difference: the CUDA tests'
// tolerance for results whose sums run in another order than the reference's.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <vector>

namespace triad::testing {

// ‖got − want‖₂ / ‖want‖₂ <= tol (the absolute norm when want is all zero); non-finite values
// fail.
inline ::testing::AssertionResult close_l2(const std::vector<float>& got,
                                           const std::vector<float>& want, double tol) {
  if (got.size() != want.size())
    return ::testing::AssertionFailure() << "size " << got.size() << " != " << want.size();
  double d2 = 0.0, w2 = 0.0;
  for (size_t i = 0; i < got.size(); ++i) {
    if (!std::isfinite(got[i]) || !std::isfinite(want[i]))
      return ::testing::AssertionFailure()
             << "non-finite at " << i << ": got " << got[i] << ", want " << want[i];
    d2 += (double(got[i]) - want[i]) * (double(got[i]) - want[i]);
    w2 += double(want[i]) * want[i];
  }
  const double err = w2 > 0.0 ? std::sqrt(d2 / w2) : std::sqrt(d2);
  if (err <= tol) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << (w2 > 0.0 ? "relative" : "absolute") << " L2 error "
                                       << err << " > " << tol << " over " << got.size();
}

}  // namespace triad::testing
