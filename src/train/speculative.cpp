#include "triad/train/speculative.h"

#include <algorithm>

#include "triad/core/error.h"

namespace triad {

namespace {

// The sampling side of speculative decoding, whoever drafts: the sequence and its continuation,
// each position's distribution as sample_token's, the draws, and the rule that keeps or replaces
// a drafted token.
class Speculation {
 public:
  Speculation(const std::vector<int32_t>& prompt, const SampleOptions& opt, int vocab, Rng& rng,
              std::vector<TokenLogprob>* logprobs)
      : seq(prompt),
        opt_(opt),
        V_(opt.vocab_limit > 0 ? std::min(opt.vocab_limit, vocab) : vocab),
        prompt_len_(prompt.size()),
        rng_(rng),
        logprobs_(logprobs) {
    TRIAD_CHECK(!prompt.empty(), "sampling needs at least one prompt token");
    TRIAD_CHECK(opt.kv_cache, "speculative decoding keeps the keys and values");
    if (logprobs_) logprobs_->clear();
    done = opt.length <= 0;
  }

  // The distribution sample_token draws from at a position whose logits are `row`, after the
  // tokens `before` (the penalties read them), as dense probabilities over the first V ids.
  void distribution(const float* row, const std::vector<int32_t>& before,
                    std::vector<double>& dense) {
    if (opt_.penalizes()) {
      penalized_.assign(row, row + V_);
      penalize_logits(penalized_.data(), V_, opt_, before, prompt_len_, tally_);
      row = penalized_.data();
    }
    double z = 0;
    const int k = sample_candidates(row, V_, opt_, order_, prob_, z);
    dense.assign(size_t(V_), 0.0);
    for (int i = 0; i < k; ++i) dense[size_t(order_[size_t(i)])] = prob_[size_t(i)] / z;
  }

  // An id drawn from weights w over the first V ids (their sum `total`).
  int32_t draw(const std::vector<double>& w, double total) {
    double u = rng_.uniform() * total;
    int32_t last = -1;
    for (int t = 0; t < V_; ++t) {
      if (w[size_t(t)] <= 0) continue;
      last = t;
      u -= w[size_t(t)];
      if (u <= 0) break;
    }
    TRIAD_ASSERT(last >= 0);
    return last;
  }

  // A token kept: returned, reported, and the end of the sample where it stops it. row: the
  // model's logits at its position (for its TokenLogprob).
  void keep(int32_t t, const float* row) {
    seq.push_back(t);
    out.push_back(t);
    if (logprobs_) logprobs_->push_back(token_logprob(row, V_, t, opt_.logprobs, order_));
    if (opt_.on_token) opt_.on_token(0, t, logprobs_ ? &logprobs_->back() : nullptr);
    done =
        int64_t(out.size()) >= opt_.length ||
        std::find(opt_.stop_tokens.begin(), opt_.stop_tokens.end(), t) != opt_.stop_tokens.end() ||
        (opt_.stop_when && opt_.stop_when(out));
  }

  // A token drawn from the model's own distribution at `row` (no draft), kept.
  void take(const float* row) {
    distribution(row, seq, p_);
    keep(draw(p_, 1.0), row);
  }

  // A token from the model alone over the sequence's last seq_len tokens (sample_continuations'
  // window), kept. Returns whether the whole sequence fit (no window slid).
  bool take_alone(Gpt& model) {
    const size_t L = seq.size(), len = std::min(L, size_t(model.shape().seq_len));
    take(model.decode_logits(seq.data() + (L - len), 1, int(len)));
    return len == L;
  }

  // Draft token x, drawn from q, at the next position, whose model logits are `row`: kept with
  // probability min(1, p(x) / q(x)), else replaced by a draw from max(0, p − q) renormalized —
  // together exactly p. Returns whether x was kept.
  bool check(const float* row, const std::vector<double>& q, int32_t x) {
    distribution(row, seq, p_);
    if (rng_.uniform() * q[size_t(x)] < p_[size_t(x)]) {
      keep(x, row);
      return true;
    }
    double total = 0;
    for (int t = 0; t < V_; ++t) {
      double& w = p_[size_t(t)];
      w = std::max(0.0, w - q[size_t(t)]);
      total += w;
    }
    if (!(total > 0)) {  // (p ≤ q everywhere only by rounding: p itself)
      distribution(row, seq, p_);
      total = 1.0;
    }
    keep(draw(p_, total), row);
    return false;
  }

  int64_t left() const { return opt_.length - int64_t(out.size()); }

  std::vector<int32_t> seq, out;  // the prompt and every token kept; the tokens kept
  bool done = false;

 private:
  const SampleOptions& opt_;
  const int V_;
  const size_t prompt_len_;
  Rng& rng_;
  std::vector<TokenLogprob>* logprobs_;
  std::vector<int> order_, tally_;
  std::vector<double> prob_, p_;
  std::vector<float> penalized_;
};

}  // namespace

std::vector<int32_t> speculative_continuation(Gpt& target, Gpt& draft,
                                              const std::vector<int32_t>& prompt,
                                              const SampleOptions& opt, int draft_tokens, Rng& rng,
                                              SpeculativeStats* stats,
                                              std::vector<TokenLogprob>* logprobs) {
  TRIAD_CHECK(draft_tokens >= 1, "speculative decoding drafts at least one token a round (got ",
              draft_tokens, ")");
  const int vocab = target.shape().vocab_size;
  TRIAD_CHECK(draft.shape().vocab_size == vocab, "speculative decoding: the draft model has ",
              draft.shape().vocab_size, " tokens and the target ", vocab,
              ": the two must share their token ids");
  Speculation s(prompt, opt, vocab, rng, logprobs);
  const int T = target.shape().seq_len, Td = draft.shape().seq_len;
  std::vector<int32_t> proposal;
  std::vector<std::vector<double>> draft_q(static_cast<size_t>(draft_tokens));
  SpeculativeStats counts;
  target.forget_decoded();  // nothing kept from before this sample
  draft.forget_decoded();
  while (!s.done) {
    // Draft tokens this round: none for the last token asked for, nor where the target's
    // context is full (its positions then slide with every token).
    const int room = int(std::min<int64_t>(
        {int64_t(draft_tokens), s.left() - 1, int64_t(T) - int64_t(s.seq.size())}));
    if (room <= 0) {
      s.take_alone(target);
      ++counts.plain;
      continue;
    }
    // The draft's tokens, each drawn from its distribution after the ones before it.
    proposal = s.seq;
    for (int i = 0; i < room; ++i) {
      const size_t len = std::min(proposal.size(), size_t(Td));
      const float* row =
          draft.decode_logits(proposal.data() + (proposal.size() - len), 1, int(len));
      s.distribution(row, proposal, draft_q[size_t(i)]);
      proposal.push_back(s.draw(draft_q[size_t(i)], 1.0));
    }
    // The target's logits after seq and after each draft token, in one pass: row i is the
    // position of draft token i, row `room` the one after the last.
    const float* rows =
        target.decode_logits_last(proposal.data(), 1, int(proposal.size()), room + 1);
    ++counts.rounds;
    bool rejected = false;
    for (int i = 0; i < room && !s.done && !rejected; ++i) {  // (proposed: the ones checked)
      ++counts.proposed;
      const float* row = rows + size_t(i) * size_t(vocab);
      const bool kept = s.check(row, draft_q[size_t(i)], proposal[s.seq.size()]);
      counts.accepted += kept ? 1 : 0;
      rejected = !kept;
    }
    // Every draft token kept: one more from the target's last row.
    if (!s.done && !rejected) s.take(rows + size_t(room) * size_t(vocab));
  }
  if (stats) *stats += counts;
  return s.out;
}

std::vector<int32_t> mtp_speculative_continuation(Gpt& model, const std::vector<int32_t>& prompt,
                                                  const SampleOptions& opt, Rng& rng,
                                                  SpeculativeStats* stats,
                                                  std::vector<TokenLogprob>* logprobs) {
  const int vocab = model.shape().vocab_size, T = model.shape().seq_len;
  Speculation s(prompt, opt, vocab, rng, logprobs);
  std::vector<int32_t> proposal;
  std::vector<double> q;
  SpeculativeStats counts;
  int from = 0;          // the module's cache: positions before it
  int32_t drafted = -1;  // the draft of the next token (none: -1), drawn from q
  // After each pass of the model: the module over the positions it has not seen (their hidden
  // states that pass's), and its draft of the token after the last, while one is wanted and the
  // pass with it fits the context.
  auto draft = [&] {
    drafted = -1;
    const int L = int(s.seq.size());
    if (s.done || s.left() < 2 || L + 1 > T) return;
    const float* row = model.mtp_draft_logits(s.seq.data(), L, from);
    from = L - 1;
    s.distribution(row, s.seq, q);
    drafted = s.draw(q, 1.0);
  };
  model.forget_decoded();  // nothing kept from before this sample
  while (!s.done) {
    const size_t L = s.seq.size();
    if (drafted < 0) {  // the prompt's first token, the last asked for, or a full context
      ++counts.plain;
      if (s.take_alone(model)) draft();  // (a sliding window's positions move: no draft after it)
      continue;
    }
    // The model after the last token and after the draft, in one pass.
    proposal = s.seq;
    proposal.push_back(drafted);
    const float* rows = model.decode_logits_last(proposal.data(), 1, int(L) + 1, 2);
    ++counts.rounds;
    ++counts.proposed;
    const bool kept = s.check(rows, q, drafted);
    counts.accepted += kept ? 1 : 0;
    if (kept && !s.done) s.take(rows + size_t(vocab));
    draft();
  }
  if (stats) *stats += counts;
  return s.out;
}

}  // namespace triad
