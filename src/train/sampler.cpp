#include "triad/train/sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "triad/core/error.h"

namespace triad {

namespace {

// order[0 .. k) ← the ids of the k largest of the first V logits, likeliest first, equal logits
// by id.
void order_likeliest(const float* logits, int V, int k, std::vector<int>& order) {
  order.resize(size_t(V));
  std::iota(order.begin(), order.end(), 0);
  std::partial_sort(order.begin(), order.begin() + k, order.end(), [&](int a, int b) {
    return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
  });
}

}  // namespace

SampleOptions sample_options(const SampleConfig& c) {
  SampleOptions o;
  o.length = c.length;
  o.temperature = c.temperature;
  o.top_k = c.top_k;
  o.top_p = c.top_p;
  o.min_p = c.min_p;
  o.repetition_penalty = c.repetition_penalty;
  o.frequency_penalty = c.frequency_penalty;
  o.presence_penalty = c.presence_penalty;
  return o;
}

SampleRangeError sample_range_error(const SampleOptions& o) {
  if (!(o.temperature > 0 && std::isfinite(o.temperature)))
    return {"temperature", "must be a finite number > 0", o.temperature};
  if (o.top_k < 0) return {"top_k", "must be >= 0", double(o.top_k)};
  if (!(o.top_p > 0 && o.top_p <= 1)) return {"top_p", "must be in (0, 1]", o.top_p};
  if (!(o.min_p >= 0 && o.min_p <= 1)) return {"min_p", "must be in [0, 1]", o.min_p};
  if (!(o.repetition_penalty >= 1e-3 && o.repetition_penalty <= 1e3))
    return {"repetition_penalty", "must be in [0.001, 1000]", o.repetition_penalty};
  if (!(std::abs(o.frequency_penalty) <= 100))
    return {"frequency_penalty", "must be in [-100, 100]", o.frequency_penalty};
  if (!(std::abs(o.presence_penalty) <= 100))
    return {"presence_penalty", "must be in [-100, 100]", o.presence_penalty};
  return {};
}

int32_t sample_token(const float* logits, int V, const SampleOptions& opt, Rng& rng,
                     std::vector<int>& order, std::vector<double>& prob) {
  double z = 0;
  const int k = sample_candidates(logits, V, opt, order, prob, z);
  double u = rng.uniform() * z;
  for (int i = 0; i < k; ++i) {
    u -= prob[size_t(i)];
    if (u <= 0) return order[size_t(i)];
  }
  return order[size_t(k - 1)];
}

int sample_candidates(const float* logits, int V, const SampleOptions& opt, std::vector<int>& order,
                      std::vector<double>& prob, double& z) {
  prob.resize(size_t(V));
  // Candidates: the top-k logits (all of them when top_k is 0 or >= V).
  int k = (opt.top_k <= 0 || opt.top_k >= V) ? V : opt.top_k;
  order_likeliest(logits, V, k, order);
  const double mx = logits[order[0]];
  z = 0;
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
  if (opt.min_p > 0) {
    // Min-p: the candidates at least min_p as likely as the first (whose weight is 1); the
    // weights fall along the order, so they are a prefix of it.
    int keep = 1;
    while (keep < k && prob[size_t(keep)] >= opt.min_p) ++keep;
    for (int i = keep; i < k; ++i) z -= prob[size_t(i)];
    k = keep;
  }
  return k;
}

void penalize_logits(float* logits, int V, const SampleOptions& opt,
                     const std::vector<int32_t>& sequence, size_t prompt_len,
                     std::vector<int>& count) {
  // count[t]: −1 for a token of the prompt only, else its draws in the continuation.
  count.assign(size_t(V), 0);
  for (size_t i = 0; i < sequence.size(); ++i) {
    const int32_t t = sequence[i];
    if (t < 0 || t >= V) continue;
    int& c = count[size_t(t)];
    if (i < prompt_len)
      c = c > 0 ? c : -1;
    else
      c = c > 0 ? c + 1 : 1;
  }
  const float r = float(opt.repetition_penalty);
  for (int t = 0; t < V; ++t) {
    const int c = count[size_t(t)];
    if (c == 0) continue;
    float& l = logits[t];
    if (r != 1.0f) l = l < 0 ? l * r : l / r;
    if (c > 0) l = float(double(l) - c * opt.frequency_penalty - opt.presence_penalty);
  }
}

TokenLogprob token_logprob(const float* logits, int V, int32_t token, int top,
                           std::vector<int>& order) {
  double mx = logits[0];
  for (int i = 1; i < V; ++i) mx = std::max(mx, double(logits[i]));
  double z = 0;
  for (int i = 0; i < V; ++i) z += std::exp(double(logits[i]) - mx);
  const double lse = mx + std::log(z);
  TokenLogprob r;
  r.logprob = double(logits[token]) - lse;
  const int k = std::clamp(top, 0, V);
  order_likeliest(logits, V, k, order);
  for (int i = 0; i < k; ++i)
    r.top.emplace_back(order[size_t(i)], double(logits[order[size_t(i)]]) - lse);
  return r;
}

std::vector<int32_t> sample_continuation(Gpt& model, std::vector<int32_t> tokens,
                                         const SampleOptions& opt, Rng& rng) {
  return sample_continuations(model, tokens, 1, opt, rng)[0];
}

std::vector<std::vector<int32_t>> sample_continuations(
    Gpt& model, const std::vector<int32_t>& prompt, int count, const SampleOptions& opt, Rng& rng,
    std::vector<std::vector<TokenLogprob>>* logprobs) {
  TRIAD_CHECK(!prompt.empty(), "sampling needs at least one prompt token");
  TRIAD_CHECK(count >= 1, "sampling needs at least one sequence");
  const int T = model.shape().seq_len, V = opt.vocab_limit > 0
                                               ? std::min(opt.vocab_limit, model.shape().vocab_size)
                                               : model.shape().vocab_size;
  std::vector<std::vector<int32_t>> seqs(static_cast<size_t>(count), prompt);
  std::vector<std::vector<int32_t>> out(static_cast<size_t>(count));
  std::vector<char> done(static_cast<size_t>(count), 0);
  if (logprobs) logprobs->assign(size_t(count), {});
  std::vector<int32_t> window;    // [count, len]: the context of every sequence
  std::vector<int> order, tally;  // tally: penalize_logits' scratch
  std::vector<double> prob;
  std::vector<float> penalized;  // a row of logits with opt's penalties
  model.forget_decoded();        // nothing kept from before this sample
  for (int64_t step = 0; step < opt.length; ++step) {
    // While the sequences fit the context, each step extends the previous one by a token: the
    // layers run over that token only (the KV cache). Once they slide, every step recomputes the
    // window (the positions of every token change).
    const size_t have = seqs[0].size(), len = std::min(have, size_t(T));
    window.resize(size_t(count) * len);
    for (int b = 0; b < count; ++b)
      std::copy(seqs[size_t(b)].end() - ptrdiff_t(len), seqs[size_t(b)].end(),
                window.begin() + ptrdiff_t(size_t(b) * len));
    const float* logits = nullptr;
    if (opt.kv_cache) logits = model.decode_logits(window.data(), count, int(len));
    for (int b = 0; b < count; ++b) {
      const float* row = opt.kv_cache
                             ? logits + size_t(b) * size_t(model.shape().vocab_size)
                             : model.next_token_logits(window.data() + size_t(b) * len, int(len));
      const float* model_row = row;  // what logprobs report
      if (opt.penalizes()) {
        penalized.assign(row, row + V);
        penalize_logits(penalized.data(), V, opt, seqs[size_t(b)], prompt.size(), tally);
        row = penalized.data();
      }
      const int32_t pick = sample_token(row, V, opt, rng, order, prob);
      seqs[size_t(b)].push_back(pick);
      if (done[size_t(b)]) continue;
      out[size_t(b)].push_back(pick);
      if (logprobs)
        (*logprobs)[size_t(b)].push_back(token_logprob(model_row, V, pick, opt.logprobs, order));
      if (opt.on_token) opt.on_token(b, pick, logprobs ? &(*logprobs)[size_t(b)].back() : nullptr);
      if (std::find(opt.stop_tokens.begin(), opt.stop_tokens.end(), pick) !=
              opt.stop_tokens.end() ||
          (opt.stop_when && opt.stop_when(out[size_t(b)])))
        done[size_t(b)] = 1;
    }
    if (std::all_of(done.begin(), done.end(), [](char d) { return d != 0; })) break;
  }
  return out;
}

}  // namespace triad
