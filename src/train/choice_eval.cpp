#include "triad/train/choice_eval.h"

#include <algorithm>

#include "triad/core/error.h"
#include "triad/model/gpt.h"

namespace triad {

namespace {
size_t longest_ending(const ChoiceExample& ex) {
  size_t m = 0;
  for (const auto& e : ex.endings) m = std::max(m, e.size());
  return m;
}
}  // namespace

void check_choices_fit(const std::vector<ChoiceExample>& examples, int seq_len,
                       const std::string& where) {
  for (size_t i = 0; i < examples.size(); ++i) {
    const size_t m = longest_ending(examples[i]);
    TRIAD_CHECK(m < size_t(seq_len), where, ": example ", i, " has an ending of ", m,
                " tokens, which leaves no room for its context within model.seq_len = ", seq_len);
  }
}

ChoiceScore score_choices(Gpt& model, const std::vector<ChoiceExample>& examples, size_t first,
                          size_t stride) {
  TRIAD_ASSERT(stride >= 1);
  const int T = model.shape().seq_len;
  ChoiceScore sc;
  std::vector<int32_t> row, targets;
  std::vector<double> sums(2), means(2);
  for (size_t e = first; e < examples.size(); e += stride) {
    const ChoiceExample& ex = examples[e];
    const size_t n_end = ex.endings.size();
    const int m = int(longest_ending(ex));
    TRIAD_ASSERT(m >= 1 && m < T);
    // The context's last `keep` tokens: rows of keep + m − 1 tokens (the longest ending's last
    // token predicts nothing), whose last m positions predict the endings' tokens.
    const int keep = int(std::min(ex.context.size(), size_t(T - m)));
    const int32_t* ctx = ex.context.data() + (ex.context.size() - size_t(keep));
    const int len = keep + m - 1;
    // The context once: its keys and values stay in the model's cache, and each ending's call
    // shares it as a prefix, so only the ending's rows run through the layers and the classifier
    // (one ending at a time: a batch of them would need a scratch outside the memory plan).
    if (model.keeps_decoded()) model.decode_logits(ctx, keep);
    sums.assign(n_end, 0.0);
    means.assign(n_end, 0.0);
    for (size_t i = 0; i < n_end; ++i) {
      const auto& end = ex.endings[i];
      row.assign(ctx, ctx + keep);
      row.insert(row.end(), end.begin(), end.end());
      row.resize(size_t(len), 0);  // the ending's last token dropped, or padding after it
      targets.assign(size_t(m), 0);
      std::copy(end.begin(), end.end(), targets.begin());
      const float* loss = model.sequence_losses(row.data(), 1, len, m, targets.data());
      for (size_t j = 0; j < end.size(); ++j) sums[i] += double(loss[j]);
      means[i] = sums[i] / double(end.size());
    }
    const auto best = [](const std::vector<double>& v) {
      return int(std::min_element(v.begin(), v.end()) - v.begin());  // the first of equal ones
    };
    ++sc.examples;
    sc.correct += best(means) == ex.label ? 1 : 0;
    sc.correct_by_sum += best(sums) == ex.label ? 1 : 0;
    for (double x : means) sc.ending_loss_sum += x;
    sc.endings += int64_t(n_end);
  }
  model.forget_decoded();
  return sc;
}

}  // namespace triad
