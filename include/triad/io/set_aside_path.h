// Where a file or directory is moved aside so that nothing set aside before is overwritten:
// checkpoints of another history (ckpt/superseded_<n>), an earlier run's record
// (<run>/earlier_<n>), a damaged metrics file (metrics.h5.damaged.<n>).
#pragma once

#include <filesystem>
#include <string>

namespace triad {

// The first of prefix + "<first>", prefix + "<first + 1>", ... that does not exist.
inline std::string first_free_numbered_path(const std::string& prefix, int first = 1) {
  std::error_code ec;
  int n = first;
  while (std::filesystem::exists(prefix + std::to_string(n), ec)) ++n;
  return prefix + std::to_string(n);
}

}  // namespace triad
