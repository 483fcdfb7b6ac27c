#include "triad/train/choice_eval.h"

#include <algorithm>

#include "triad/core/error.h"
#include "triad/data/tokenizer.h"
#include "triad/model/gpt.h"

namespace triad {

namespace {
size_t longest_ending(const ChoiceExample& ex) {
  size_t m = 0;
  for (const auto& e : ex.endings) m = std::max(m, e.size());
  return m;
}

// The context's last `keep` tokens fit before the example's longest ending of m tokens.
int context_kept(const ChoiceExample& ex, int T, int m) {
  return int(std::min(ex.context.size(), size_t(T - m)));
}

void tally(ChoiceScore& sc, const ChoiceExample& ex, const std::vector<double>& sums) {
  std::vector<double> means(sums.size());
  for (size_t i = 0; i < sums.size(); ++i) means[i] = sums[i] / double(ex.endings[i].size());
  const auto best = [](const std::vector<double>& v) {
    return int(std::min_element(v.begin(), v.end()) - v.begin());  // the first of equal ones
  };
  ++sc.examples;
  sc.correct += best(means) == ex.label ? 1 : 0;
  sc.correct_by_sum += best(sums) == ex.label ? 1 : 0;
  if (!ex.ending_chars.empty()) {
    std::vector<double> per_char(sums.size());
    for (size_t i = 0; i < sums.size(); ++i) per_char[i] = sums[i] / double(ex.ending_chars[i]);
    sc.correct_by_chars += best(per_char) == ex.label ? 1 : 0;
  }
  for (double x : means) sc.ending_loss_sum += x;
  sc.endings += int64_t(sums.size());
}

// One example at a time: the context once, then each ending through the cache.
void score_cached(Gpt& model, const ChoiceExample& ex, ChoiceScore& sc) {
  const int T = model.shape().seq_len;
  const int m = int(longest_ending(ex));
  const int keep = context_kept(ex, T, m);
  const int32_t* ctx = ex.context.data() + (ex.context.size() - size_t(keep));
  // Rows of keep + m − 1 tokens (the longest ending's last token predicts nothing), whose last m
  // positions predict the endings' tokens. The context's keys and values stay in the cache and
  // each ending's call shares them as a prefix: only the ending's rows run through the layers
  // and the classifier (one ending at a time: a batch of them would need a scratch outside the
  // memory plan).
  const int len = keep + m - 1;
  if (model.keeps_decoded()) model.decode_logits(ctx, keep);
  std::vector<double> sums(ex.endings.size(), 0.0);
  std::vector<int32_t> row, targets;
  for (size_t i = 0; i < ex.endings.size(); ++i) {
    const auto& end = ex.endings[i];
    row.assign(ctx, ctx + keep);
    row.insert(row.end(), end.begin(), end.end());
    row.resize(size_t(len), 0);  // the ending's last token dropped, or padding after it
    targets.assign(size_t(m), 0);
    std::copy(end.begin(), end.end(), targets.begin());
    const float* loss = model.sequence_losses(row.data(), 1, len, m, targets.data());
    for (size_t j = 0; j < end.size(); ++j) sums[i] += double(loss[j]);
  }
  tally(sc, ex, sums);
}

// Rows (context + one ending) of several examples in one forward pass, the model's batch of
// them at a time; an example's rows may span two passes.
void score_batched(Gpt& model, const std::vector<ChoiceExample>& examples, size_t first,
                   size_t stride, ChoiceScore& sc, const std::function<void()>& progress) {
  const int T = model.shape().seq_len, R = model.max_batch();
  struct Row {
    size_t ex, end;
    int keep;
  };
  std::vector<Row> all;
  for (size_t e = first; e < examples.size(); e += stride) {
    const int keep = context_kept(examples[e], T, int(longest_ending(examples[e])));
    for (size_t i = 0; i < examples[e].endings.size(); ++i) all.push_back({e, i, keep});
  }
  std::vector<std::vector<double>> sums(examples.size());
  std::vector<int32_t> tokens, targets;
  for (size_t r0 = 0; r0 < all.size(); r0 += size_t(R)) {
    const size_t r1 = std::min(all.size(), r0 + size_t(R));
    int L = 1;
    for (size_t r = r0; r < r1; ++r)
      L = std::max(L, all[r].keep + int(examples[all[r].ex].endings[all[r].end].size()) - 1);
    const int B = int(r1 - r0);
    tokens.assign(size_t(B) * L, 0);
    targets.assign(size_t(B) * L, 0);  // position keep − 1 + j predicts the ending's token j
    for (size_t r = r0; r < r1; ++r) {
      const ChoiceExample& ex = examples[all[r].ex];
      const auto& end = ex.endings[all[r].end];
      const int keep = all[r].keep;
      int32_t* row = tokens.data() + (r - r0) * size_t(L);
      std::copy(ex.context.end() - keep, ex.context.end(), row);
      std::copy(end.begin(), end.end() - 1, row + keep);
      std::copy(end.begin(), end.end(),
                targets.begin() + ptrdiff_t((r - r0) * size_t(L)) + keep - 1);
    }
    if (progress) progress();
    const float* loss = model.sequence_losses(tokens.data(), B, L, L, targets.data(), false);
    for (size_t r = r0; r < r1; ++r) {
      const Row& w = all[r];
      auto& s = sums[w.ex];
      if (s.empty()) s.assign(examples[w.ex].endings.size(), 0.0);
      const float* l = loss + (r - r0) * size_t(L) + size_t(w.keep - 1);
      for (size_t j = 0; j < examples[w.ex].endings[w.end].size(); ++j) s[w.end] += double(l[j]);
    }
  }
  for (size_t e = first; e < examples.size(); e += stride) tally(sc, examples[e], sums[e]);
}

}  // namespace

bool count_ending_chars(std::vector<ChoiceExample>& examples, const Tokenizer& tokenizer) {
  for (const auto& ex : examples)
    for (const auto& end : ex.endings)
      for (int32_t id : end)
        if (id < 0 || id >= tokenizer.vocab_size()) return false;
  for (auto& ex : examples) {
    ex.ending_chars.clear();
    for (const auto& end : ex.endings) {
      const std::string text = tokenizer.decode(end);
      int64_t chars = 0;
      for (unsigned char c : text) chars += (c & 0xC0) != 0x80 ? 1 : 0;  // a character's start
      if (!text.empty() && text[0] == ' ') --chars;
      ex.ending_chars.push_back(std::max<int64_t>(1, chars));
    }
  }
  return true;
}

void check_choices_fit(const std::vector<ChoiceExample>& examples, int seq_len,
                       const std::string& where) {
  for (size_t i = 0; i < examples.size(); ++i) {
    const size_t m = longest_ending(examples[i]);
    TRIAD_CHECK(m < size_t(seq_len), where, ": example ", i, " has an ending of ", m,
                " tokens, which leaves no room for its context within model.seq_len = ", seq_len);
  }
}

ChoiceScore score_choices(Gpt& model, const std::vector<ChoiceExample>& examples, size_t first,
                          size_t stride, ChoiceMode mode, const std::function<void()>& progress) {
  TRIAD_ASSERT(stride >= 1);
  for (size_t e = first; e < examples.size(); e += stride)
    TRIAD_ASSERT(longest_ending(examples[e]) < size_t(model.shape().seq_len));
  ChoiceScore sc;
  if (mode == ChoiceMode::batched) {
    score_batched(model, examples, first, stride, sc, progress);
  } else {
    for (size_t e = first; e < examples.size(); e += stride) {
      if (progress) progress();
      score_cached(model, examples[e], sc);
    }
  }
  model.forget_decoded();
  return sc;
}

int64_t choice_forward_passes(const Gpt& model, const std::vector<ChoiceExample>& examples,
                              size_t first, size_t stride, ChoiceMode mode) {
  TRIAD_ASSERT(stride >= 1);
  int64_t endings = 0, contexts = 0;
  for (size_t e = first; e < examples.size(); e += stride) {
    endings += int64_t(examples[e].endings.size());
    ++contexts;
  }
  if (mode == ChoiceMode::batched) {  // score_batched: the model's batch of rows per pass
    const int64_t R = model.max_batch();
    return (endings + R - 1) / R;
  }
  // score_cached: the context once where the model keeps its keys and values, then each ending.
  return endings + (model.keeps_decoded() ? contexts : 0);
}

}  // namespace triad
