#include "triad/data/fim.h"

#include <algorithm>
#include <utility>

#include "triad/core/error.h"
#include "triad/kernels/dropout_mask.h"

namespace triad {

void fill_in_the_middle(const FimSpec& f, int64_t index, std::vector<int32_t>& tokens,
                        std::vector<uint8_t>& counts) {
  TRIAD_ASSERT(tokens.size() == counts.size());
  if (!f.on()) return;
  const size_t n = tokens.size();
  const uint64_t key = dropout_mix(dropout_mix(f.seed) ^ uint64_t(index));
  std::vector<int32_t> out;
  std::vector<uint8_t> out_counts;
  out.reserve(n + 32);
  out_counts.reserve(n + 32);
  auto put = [&](size_t from, size_t to) {  // window tokens [from, to)
    out.insert(out.end(), tokens.begin() + ptrdiff_t(from), tokens.begin() + ptrdiff_t(to));
    out_counts.insert(out_counts.end(), counts.begin() + ptrdiff_t(from),
                      counts.begin() + ptrdiff_t(to));
  };
  auto sentinel = [&](int32_t id) {
    out.push_back(id);
    out_counts.push_back(1);
  };
  uint64_t fragment = 0;
  for (size_t lo = 0; lo <= n && out.size() < n;) {
    size_t hi = lo;
    while (hi < n && tokens[hi] != f.split) ++hi;
    const size_t L = hi - lo;
    if (L > 0) {
      const uint64_t fkey = dropout_mix(key ^ fragment);
      auto h = [fkey](uint64_t d) { return dropout_mix(fkey ^ d); };
      auto u = [&h](uint64_t d) { return double(h(d) >> 11) * 0x1.0p-53; };
      if (u(0) < f.rate) {
        size_t a = size_t(h(2) % (L + 1)), b = size_t(h(3) % (L + 1));
        if (a > b) std::swap(a, b);
        if (u(1) < f.spm_rate) {
          sentinel(f.prefix);
          sentinel(f.suffix);
          put(lo + b, hi);
          sentinel(f.middle);
          put(lo, lo + b);  // the prefix, then the middle
        } else {
          sentinel(f.prefix);
          put(lo, lo + a);
          sentinel(f.suffix);
          put(lo + b, hi);
          sentinel(f.middle);
          put(lo + a, lo + b);
        }
      } else {
        put(lo, hi);
      }
      ++fragment;
    }
    if (hi < n) put(hi, hi + 1);  // the separator
    lo = hi + 1;
  }
  TRIAD_ASSERT(out.size() >= n);
  std::copy_n(out.begin(), n, tokens.begin());
  std::copy_n(out_counts.begin(), n, counts.begin());
}

}  // namespace triad
