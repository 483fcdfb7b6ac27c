// Sampling a continuation from the model: penalties on tokens already in the sequence, then
// temperature, top-k, top-p and min-p over the first vocab_size logits (Hugging Face's order),
// with a seeded RNG so that a seed reproduces a sample.
#pragma once

#include <cstdint>
#include <functional>
#include <utility>
#include <vector>

#include "triad/core/rng.h"
#include "triad/model/gpt.h"
#include "triad/train/config.h"

namespace triad {

struct TokenLogprob;

struct SampleOptions {
  int64_t length = 64;
  double temperature = 1.0;
  int top_k = 40;  // 0: the whole vocabulary
  // Nucleus sampling among the top-k: the fewest likeliest tokens whose probability reaches
  // top_p (1: all top-k candidates, and the same draws as without it).
  double top_p = 1.0;
  // Min-p (Hugging Face's min_p; Nguyen et al. 2024), after top-k and top-p: only the candidates
  // whose probability is at least min_p times the likeliest's (0: off). Unlike a fixed top-p, it
  // keeps few tokens where the model is sure and many where it is not.
  double min_p = 0.0;
  // Penalties on the logits before the above, for tokens the sequence already holds.
  // repetition_penalty (CTRL's, Hugging Face's): each distinct token of the prompt and of the
  // continuation so far has its logit divided by it where positive, multiplied where negative
  // (1: off). frequency_penalty and presence_penalty (OpenAI's, vLLM's): a token the continuation
  // has drawn n > 0 times has its logit lowered by n·frequency_penalty + presence_penalty (0: off;
  // the prompt's tokens are not counted).
  double repetition_penalty = 1.0, frequency_penalty = 0.0, presence_penalty = 0.0;
  bool penalizes() const {
    return repetition_penalty != 1.0 || frequency_penalty != 0.0 || presence_penalty != 0.0;
  }
  // Called with a sequence's continuation after each token it draws; true ends that sequence
  // there, as a stop token does (triad-generate's --stop strings). Empty: none.
  std::function<bool(const std::vector<int32_t>&)> stop_when;
  // Called with each token a sequence keeps as it is drawn (triad-generate prints it): the
  // sequence's index and the token's TokenLogprob where logprobs are asked for (else null).
  // Empty: none.
  std::function<void(int, int32_t, const TokenLogprob*)> on_token;
  // With sample_continuations' logprobs: the likeliest alternatives listed beside each token.
  int logprobs = 0;
  // Keep every layer's keys and values between tokens (Gpt::decode_logits); false: recompute the
  // whole context for every token (Gpt::next_token_logits).
  bool kv_cache = true;
  // Token ids that end a sample once drawn (the token is kept), e.g. the tokenizer's
  // stop_tokens(); empty: none.
  std::vector<int32_t> stop_tokens;
  // Draw among the first vocab_limit ids only (0: all of the model's): a model whose embedding
  // has rows past its tokenizer's ids (Qwen2's 151,936 for 151,665 tokens) never draws one.
  int vocab_limit = 0;
};

// The options of the [sample] keys (the in-training samples; the caller adds the vocabulary).
SampleOptions sample_options(const SampleConfig& c);

// The first of opt's sampling values out of its range, with that range: temperature > 0, top_k >=
// 0, top_p in (0, 1], min_p in [0, 1], repetition_penalty in [0.001, 1000], frequency_penalty
// and presence_penalty in [-100, 100] (beyond those, fp32 logits overflow). name is the field's
// ("top_p"); empty where all hold. Both sample.* and triad-generate's options are checked here.
struct SampleRangeError {
  std::string name, rule;  // rule: "must be in (0, 1]"
  double value = 0;
};
SampleRangeError sample_range_error(const SampleOptions& opt);

// One token drawn from logits (the first V): temperature, then top-k, then top-p, then min-p, as
// above (the penalties are penalize_logits'). order and prob are scratch of V entries, kept
// between calls.
int32_t sample_token(const float* logits, int V, const SampleOptions& opt, Rng& rng,
                     std::vector<int>& order, std::vector<double>& prob);

// The distribution sample_token draws from: its k candidates order[0 .. k) (likeliest first) and
// their weights prob[0 .. k), whose sum is z (candidate i is drawn with probability prob[i] / z;
// every other id never). Returns k.
int sample_candidates(const float* logits, int V, const SampleOptions& opt, std::vector<int>& order,
                      std::vector<double>& prob, double& z);

// opt's penalties on the first V logits, in place, for a sequence whose first prompt_len tokens
// are the prompt and the rest its continuation so far. count is scratch of V entries.
void penalize_logits(float* logits, int V, const SampleOptions& opt,
                     const std::vector<int32_t>& sequence, size_t prompt_len,
                     std::vector<int>& count);

// A drawn token's log-probability under the model: the log-softmax of its logits over the first V
// ids, before the penalties, the temperature and the filters (what the model says, not what the
// sampler drew from), and the likeliest ids beside it, most likely first.
struct TokenLogprob {
  double logprob = 0;
  std::vector<std::pair<int32_t, double>> top;
};

// The TokenLogprob of `token` among logits (the first V), with the `top` likeliest ids (equal
// logits by id). order is scratch.
TokenLogprob token_logprob(const float* logits, int V, int32_t token, int top,
                           std::vector<int>& order);

// Appends `length` sampled tokens to `tokens` (which must be non-empty) and returns them (fewer
// when one of opt.stop_tokens is drawn or opt.stop_when says so).
// The context is the last seq_len tokens. Runs the model with its cache of keys and values
// (Gpt::decode_logits): the prompt once, then one token per step while the context fits.
std::vector<int32_t> sample_continuation(Gpt& model, std::vector<int32_t> tokens,
                                         const SampleOptions& opt, Rng& rng);

// `count` continuations of one prompt at once: the model runs the count sequences in lockstep
// (Gpt::decode_logits over a batch, one rank holding the whole model, max_batch >= count), and
// each step draws for sequence 0, 1, ... in turn from rng. count = 1 is sample_continuation.
// With stop_tokens (or stop_when) a sequence ends at the first it draws; the run, when all have.
// logprobs (if given) receives each sequence's TokenLogprob of each token it returns, with
// opt.logprobs alternatives.
std::vector<std::vector<int32_t>> sample_continuations(
    Gpt& model, const std::vector<int32_t>& prompt, int count, const SampleOptions& opt, Rng& rng,
    std::vector<std::vector<TokenLogprob>>* logprobs = nullptr);

}  // namespace triad
