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
  const bool whole = model.parallel().tp == 1 && model.parallel().pp == 1;
  ChoiceScore sc;
  std::vector<int32_t> ctx_rows, rows, targets;
  std::vector<double> sums, means;
  for (size_t e = first; e < examples.size(); e += stride) {
    const ChoiceExample& ex = examples[e];
    const int n_end = int(ex.endings.size());
    const int m = int(longest_ending(ex));
    TRIAD_ASSERT(m >= 1 && m < T);
    // The context's last `keep` tokens: rows of keep + m − 1 tokens (the longest ending's last
    // token predicts nothing), whose last m positions predict the endings' tokens.
    const int keep = int(std::min(ex.context.size(), size_t(T - m)));
    const int32_t* ctx = ex.context.data() + (ex.context.size() - size_t(keep));
    const int len = keep + m - 1;
    const int group = whole ? std::min(n_end, model.max_batch()) : 1;
    sums.assign(size_t(n_end), 0.0);
    for (int g0 = 0; g0 < n_end; g0 += group) {
      const int g = std::min(group, n_end - g0);
      ctx_rows.clear();
      rows.assign(size_t(g) * len, 0);
      targets.assign(size_t(g) * m, 0);
      for (int b = 0; b < g; ++b) {
        const auto& end = ex.endings[size_t(g0 + b)];
        ctx_rows.insert(ctx_rows.end(), ctx, ctx + keep);
        int32_t* row = rows.data() + size_t(b) * len;
        std::copy(ctx, ctx + keep, row);
        std::copy_n(end.begin(), std::min(end.size(), size_t(m - 1)), row + keep);
        std::copy(end.begin(), end.end(), targets.begin() + ptrdiff_t(size_t(b) * m));
      }
      // The context once (kept keys and values), then the endings' positions.
      model.decode_logits(ctx_rows.data(), g, keep);
      const float* loss = model.sequence_losses(rows.data(), g, len, m, targets.data());
      for (int b = 0; b < g; ++b) {
        const size_t k = ex.endings[size_t(g0 + b)].size();
        double s = 0;
        for (size_t j = 0; j < k; ++j) s += double(loss[size_t(b) * m + j]);
        sums[size_t(g0 + b)] = s;
      }
    }
    means.resize(size_t(n_end));
    for (int i = 0; i < n_end; ++i)
      means[size_t(i)] = sums[size_t(i)] / double(ex.endings[size_t(i)].size());
    const auto best = [](const std::vector<double>& v) {
      return int(std::min_element(v.begin(), v.end()) - v.begin());  // the first of equal ones
    };
    ++sc.examples;
    sc.correct += best(means) == ex.label ? 1 : 0;
    sc.correct_by_sum += best(sums) == ex.label ? 1 : 0;
    for (double x : means) sc.ending_loss_sum += x;
    sc.endings += n_end;
  }
  model.forget_decoded();
  return sc;
}

}  // namespace triad
