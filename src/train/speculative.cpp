#include "triad/train/speculative.h"

#include <algorithm>

#include "triad/core/error.h"

namespace triad {

std::vector<int32_t> speculative_continuation(Gpt& target, Gpt& draft,
                                              const std::vector<int32_t>& prompt,
                                              const SampleOptions& opt, int draft_tokens, Rng& rng,
                                              SpeculativeStats* stats,
                                              std::vector<TokenLogprob>* logprobs) {
  TRIAD_CHECK(!prompt.empty(), "sampling needs at least one prompt token");
  TRIAD_CHECK(draft_tokens >= 1, "speculative decoding drafts at least one token a round (got ",
              draft_tokens, ")");
  TRIAD_CHECK(opt.kv_cache, "speculative decoding keeps both models' keys and values");
  const int vocab = target.shape().vocab_size;
  TRIAD_CHECK(draft.shape().vocab_size == vocab, "speculative decoding: the draft model has ",
              draft.shape().vocab_size, " tokens and the target ", vocab,
              ": the two must share their token ids");
  const int T = target.shape().seq_len, Td = draft.shape().seq_len;
  const int V = opt.vocab_limit > 0 ? std::min(opt.vocab_limit, vocab) : vocab;
  std::vector<int32_t> seq = prompt, out, proposal;
  std::vector<int> order, tally;
  std::vector<double> prob, target_p;
  std::vector<float> penalized;
  std::vector<std::vector<double>> draft_q(static_cast<size_t>(draft_tokens));
  SpeculativeStats counts;
  if (logprobs) logprobs->clear();

  // The distribution sample_token draws from at a position whose logits are `row`, after the
  // tokens `before` (the penalties read them), as dense probabilities over the first V ids.
  auto distribution = [&](const float* row, const std::vector<int32_t>& before,
                          std::vector<double>& dense) {
    if (opt.penalizes()) {
      penalized.assign(row, row + V);
      penalize_logits(penalized.data(), V, opt, before, prompt.size(), tally);
      row = penalized.data();
    }
    double z = 0;
    const int k = sample_candidates(row, V, opt, order, prob, z);
    dense.assign(size_t(V), 0.0);
    for (int i = 0; i < k; ++i) dense[size_t(order[size_t(i)])] = prob[size_t(i)] / z;
  };
  // An id drawn from weights w over the first V ids (their sum `total`).
  auto draw = [&](const std::vector<double>& w, double total) {
    double u = rng.uniform() * total;
    int32_t last = -1;
    for (int t = 0; t < V; ++t) {
      if (w[size_t(t)] <= 0) continue;
      last = t;
      u -= w[size_t(t)];
      if (u <= 0) break;
    }
    TRIAD_ASSERT(last >= 0);
    return last;
  };
  bool done = opt.length <= 0;
  // A token kept: returned, reported, and the end of the sample where it stops it.
  auto keep = [&](int32_t t, const float* target_row) {
    seq.push_back(t);
    out.push_back(t);
    if (logprobs) logprobs->push_back(token_logprob(target_row, V, t, opt.logprobs, order));
    if (opt.on_token) opt.on_token(0, t, logprobs ? &logprobs->back() : nullptr);
    done = int64_t(out.size()) >= opt.length ||
           std::find(opt.stop_tokens.begin(), opt.stop_tokens.end(), t) != opt.stop_tokens.end() ||
           (opt.stop_when && opt.stop_when(out));
  };

  target.forget_decoded();  // nothing kept from before this sample
  draft.forget_decoded();
  while (!done) {
    // Draft tokens this round: none for the last token asked for, nor where the target's
    // context is full (its positions then slide with every token).
    const int64_t left = opt.length - int64_t(out.size());
    const int room =
        int(std::min<int64_t>({int64_t(draft_tokens), left - 1, int64_t(T) - int64_t(seq.size())}));
    if (room <= 0) {
      const size_t len = std::min(seq.size(), size_t(T));
      const float* row = target.decode_logits(seq.data() + (seq.size() - len), 1, int(len));
      distribution(row, seq, target_p);
      keep(draw(target_p, 1.0), row);
      ++counts.plain;
      continue;
    }
    // The draft's tokens, each drawn from its distribution after the ones before it.
    proposal = seq;
    for (int i = 0; i < room; ++i) {
      const size_t len = std::min(proposal.size(), size_t(Td));
      const float* row =
          draft.decode_logits(proposal.data() + (proposal.size() - len), 1, int(len));
      distribution(row, proposal, draft_q[size_t(i)]);
      proposal.push_back(draw(draft_q[size_t(i)], 1.0));
    }
    // The target's logits after seq and after each draft token, in one pass: row i is the
    // position of draft token i, row `room` the one after the last.
    const float* rows =
        target.decode_logits_last(proposal.data(), 1, int(proposal.size()), room + 1);
    ++counts.rounds;
    counts.proposed += room;
    bool rejected = false;
    for (int i = 0; i < room && !done && !rejected; ++i) {
      const float* row = rows + size_t(i) * size_t(vocab);
      distribution(row, seq, target_p);  // seq: the prompt and every token kept, drafts included
      const std::vector<double>& q = draft_q[size_t(i)];
      const int32_t x = proposal[seq.size()];
      // Kept with probability min(1, p(x) / q(x)) ...
      if (rng.uniform() * q[size_t(x)] < target_p[size_t(x)]) {
        ++counts.accepted;
        keep(x, row);
        continue;
      }
      // ... else replaced by a draw from max(0, p − q), renormalized: together exactly p.
      double total = 0;
      for (int t = 0; t < V; ++t) {
        double& w = target_p[size_t(t)];
        w = std::max(0.0, w - q[size_t(t)]);
        total += w;
      }
      if (!(total > 0)) {  // (p ≤ q everywhere only by rounding: p itself)
        distribution(row, seq, target_p);
        total = 1.0;
      }
      keep(draw(target_p, total), row);
      rejected = true;
    }
    if (!done && !rejected) {  // every draft token kept: one more from the target's last row
      const float* row = rows + size_t(room) * size_t(vocab);
      distribution(row, seq, target_p);
      keep(draw(target_p, 1.0), row);
    }
  }
  if (stats) *stats = counts;
  return out;
}

}  // namespace triad
