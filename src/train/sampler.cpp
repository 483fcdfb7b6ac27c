#include "triad/train/sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "triad/core/error.h"

namespace triad {

int32_t sample_token(const float* logits, int V, const SampleOptions& opt, Rng& rng,
                     std::vector<int>& order, std::vector<double>& prob) {
  order.resize(size_t(V));
  prob.resize(size_t(V));
  // Candidates: the top-k logits (all of them when top_k is 0 or >= V), likeliest first, equal
  // logits by id.
  int k = (opt.top_k <= 0 || opt.top_k >= V) ? V : opt.top_k;
  std::iota(order.begin(), order.end(), 0);
  std::partial_sort(order.begin(), order.begin() + k, order.end(), [&](int a, int b) {
    return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
  });
  const double mx = logits[order[0]];
  double z = 0;
  for (int i = 0; i < k; ++i) {
    prob[size_t(i)] = std::exp((double(logits[order[size_t(i)]]) - mx) / opt.temperature);
    z += prob[size_t(i)];
  }
  if (opt.top_p < 1.0) {
    // Nucleus: the fewest likeliest candidates whose probability reaches top_p of theirs.
    double mass = 0;
    int keep = 0;
    while (keep < k) {
      mass += prob[size_t(keep++)];
      if (mass >= opt.top_p * z) break;
    }
    k = keep;
    z = mass;
  }
  double u = rng.uniform() * z;
  for (int i = 0; i < k; ++i) {
    u -= prob[size_t(i)];
    if (u <= 0) return order[size_t(i)];
  }
  return order[size_t(k - 1)];
}

std::vector<int32_t> sample_continuation(Gpt& model, std::vector<int32_t> tokens,
                                         const SampleOptions& opt, Rng& rng) {
  TRIAD_CHECK(!tokens.empty(), "sampling needs at least one prompt token");
  const int T = model.shape().seq_len, V = model.shape().vocab_size;
  std::vector<int32_t> out;
  std::vector<int> order;
  std::vector<double> prob;
  model.forget_decoded();  // nothing kept from before this sample
  for (int64_t n = 0; n < opt.length; ++n) {
    // While the sequence fits the context, each step extends the previous one by a token: its
    // layers run over that token only (the KV cache). Once it slides, every step recomputes the
    // window (the positions of every token change).
    const int len = int(std::min<size_t>(tokens.size(), size_t(T)));
    const int32_t* context = tokens.data() + tokens.size() - size_t(len);
    const float* logits =
        opt.kv_cache ? model.decode_logits(context, len) : model.next_token_logits(context, len);
    const int32_t pick = sample_token(logits, V, opt, rng, order, prob);
    tokens.push_back(pick);
    out.push_back(pick);
    if (opt.stop_at_eot >= 0 && pick == opt.stop_at_eot) break;
  }
  return out;
}

}  // namespace triad
