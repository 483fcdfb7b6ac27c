#include "triad/kernels/peak_flops.h"

#include <algorithm>
#include <string>
#include <type_traits>

#include "triad/core/timer.h"

namespace triad {
namespace {

// Best of three timed n³ products (after one warm-up) of buffers of type T.
template <class T>
double best_matmul_rate(Backend& be, int n) {
  const size_t nn = size_t(n) * n;
  T *a, *b, *c;
  if constexpr (std::is_same_v<T, float>) {
    a = be.alloc(nn), b = be.alloc(nn), c = be.alloc(nn);
  } else {
    a = be.alloc_bf16(nn), b = be.alloc_bf16(nn), c = be.alloc_bf16(nn);
  }
  double best = 0;
  for (int rep = 0; rep < 4; ++rep) {  // the first call warms up threads, caches, heuristics
    Timer t;
    be.matmul_forward(c, a, b, nullptr, n, n, n);
    be.synchronize();
    const double s = t.seconds();
    if (rep > 0) best = std::max(best, 2.0 * n * n * double(n) / s);
  }
  for (T* p : {a, b, c}) {
    if constexpr (std::is_same_v<T, float>)
      be.free(p);
    else
      be.free_bf16(p);
  }
  return best;
}

}  // namespace

double measure_peak_flops(Backend& be, bool bf16) {
  // 1024³ saturates two CPU cores; a GPU needs a larger product to reach its peak.
  const int n = std::string(be.name()) == "cpu" ? 1024 : 8192;
  return bf16 ? best_matmul_rate<bf16_t>(be, n) : best_matmul_rate<float>(be, n);
}

}  // namespace triad
