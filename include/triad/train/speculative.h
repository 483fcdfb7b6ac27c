// Speculative decoding (Leviathan, Kalman & Matias 2023; Chen et al. 2023): a small draft model
// proposes a few tokens one at a time, the target model scores all of them in one pass
// (Gpt::decode_logits_last), and a rejection rule keeps a prefix of them and draws one more
// token, so that the continuation is distributed exactly as the target's own sampling (the same
// penalties, temperature, top-k, top-p and min-p) while the target runs once per kept run of
// tokens instead of once per token. Greedy decoding (top-k 1) gives the target's greedy
// continuation itself. The draft is a small model over the same tokens, or the model's own first
// multi-token prediction module (DeepSeek-V3's use of it), which drafts one token a round from the
// hidden state the model's pass has just computed.
#pragma once

#include <cstdint>
#include <vector>

#include "triad/core/rng.h"
#include "triad/model/gpt.h"
#include "triad/train/sampler.h"

namespace triad {

struct SpeculativeStats {
  int64_t rounds = 0;    // target passes over drafted tokens (one per round)
  int64_t proposed = 0;  // draft tokens checked against the target (not those after a stop)
  int64_t accepted = 0;  // ... and kept
  int64_t plain = 0;     // tokens drawn without a draft (the context full: a sliding window)
  SpeculativeStats& operator+=(const SpeculativeStats& o) {
    rounds += o.rounds;
    proposed += o.proposed;
    accepted += o.accepted;
    plain += o.plain;
    return *this;
  }
};

// Appends up to opt.length tokens to `prompt` as sample_continuation does (opt's stop tokens,
// stop_when, on_token and vocab_limit too), drafting up to draft_tokens (>= 1) tokens a round
// with `draft`, a model over the same token ids (vocab_size equal to the target's). Both models
// keep their caches of keys and values (opt.kv_cache must be set) and decode one sequence
// (max_batch >= 1); the target's logits of draft_tokens + 1 positions at once need logits_rows
// that many for one head product (fewer work, by parts). Once the sequence fills the target's
// context, each token is drawn from the target over the last seq_len tokens (a sliding window),
// as sample_continuation does; the draft reads its own last seq_len tokens. Collective over the
// target's ranks (each holding its own whole draft: every rank draws the same tokens). logprobs
// (if given) receives each returned token's TokenLogprob under the target with opt.logprobs
// alternatives; stats (if given) gets this sample's counts added.
std::vector<int32_t> speculative_continuation(Gpt& target, Gpt& draft,
                                              const std::vector<int32_t>& prompt,
                                              const SampleOptions& opt, int draft_tokens, Rng& rng,
                                              SpeculativeStats* stats = nullptr,
                                              std::vector<TokenLogprob>* logprobs = nullptr);

// The same with the model's multi-token prediction module 0 as the draft (a model built with
// ActivationOptions::mtp_draft, on one rank): each pass of the model checks the module's draft
// of the next token and computes the token after it, so a kept draft gives two tokens a pass;
// the module then runs over the new positions (Gpt::mtp_draft_logits) to draft the next one.
std::vector<int32_t> mtp_speculative_continuation(Gpt& model, const std::vector<int32_t>& prompt,
                                                  const SampleOptions& opt, Rng& rng,
                                                  SpeculativeStats* stats = nullptr,
                                                  std::vector<TokenLogprob>* logprobs = nullptr);

}  // namespace triad
