#include "triad/model/attention_mask.h"

#include <cstddef>

namespace triad {

void document_key_begin(int32_t* key_begin, const int32_t* tokens, int B, int T,
                        int32_t document_token, int window) {
  for (int b = 0; b < B; ++b) {
    const size_t row = size_t(b) * size_t(T);
    int32_t begin = 0;
    for (int t = 0; t < T; ++t) {
      if (document_token >= 0 && tokens[row + size_t(t)] == document_token) begin = t;
      const int32_t first = window > 0 && t >= window ? t - window + 1 : 0;
      key_begin[row + size_t(t)] = begin > first ? begin : first;
    }
  }
}

}  // namespace triad
