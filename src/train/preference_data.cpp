#include "triad/train/preference_data.h"

#include <algorithm>
#include <utility>

#include "triad/core/error.h"
#include "triad/data/loader.h"
#include "triad/model/preference_loss.h"

namespace triad {

PreferenceData::PreferenceData(const std::string& path, int seq_len, int vocab_size, bool shuffle,
                               uint64_t seed, const std::string& what)
    : set_(read_preference_file(path, vocab_size, int64_t(seq_len) + 1, what)),
      seq_len_(seq_len),
      shuffle_(shuffle),
      seed_(seed) {}

int64_t PreferenceData::sequence_at(int64_t position) {
  const int64_t n = pairs(), pair = position / 2, epoch = pair / n, i = pair % n;
  int64_t p = i;
  if (shuffle_) {
    if (epoch != perm_epoch_) {  // (the token shards' order of an epoch, data/loader.h)
      perm_ = epoch_permutation(n, seed_, epoch);
      perm_epoch_ = epoch;
    }
    p = perm_[size_t(i)];
  }
  return 2 * p + position % 2;
}

void PreferenceData::read(int64_t k, int32_t* inputs, int32_t* targets) const {
  const PreferenceSide& side = set_.side(int(k % 2));
  const int64_t i = k / 2, a = side.offsets[size_t(i)], L = side.length(i);
  const int T = seq_len_;
  for (int t = 0; t < T; ++t) {
    if (t + 1 < L) {
      inputs[t] = side.tokens[size_t(a + t)];
      targets[t] = side.counts[size_t(a + t + 1)] ? side.tokens[size_t(a + t + 1)] : kMaskedTarget;
    } else {
      inputs[t] = 0;
      targets[t] = kMaskedTarget;
    }
  }
}

void PreferenceData::fill(int64_t position, int count, int32_t* inputs, int32_t* targets) {
  for (int b = 0; b < count; ++b)
    read(sequence_at(position + b), inputs + size_t(b) * seq_len_, targets + size_t(b) * seq_len_);
}

int64_t PreferenceData::counted_targets(int64_t k) const {
  const PreferenceSide& side = set_.side(int(k % 2));
  const int64_t a = side.offsets[size_t(k / 2)], e = side.offsets[size_t(k / 2) + 1];
  int64_t n = 0;
  for (int64_t j = a + 1; j < e; ++j) n += side.counts[size_t(j)];
  return n;
}

int64_t PreferenceData::counted_targets(int64_t position, int count) {
  int64_t n = 0;
  for (int b = 0; b < count; ++b) n += counted_targets(sequence_at(position + b));
  return n;
}

void PreferenceData::set_reference(std::vector<double> logps) {
  TRIAD_CHECK(int64_t(logps.size()) == num_sequences(), "internal error: ", logps.size(),
              " reference values for ", num_sequences(), " sequences");
  reference_ = std::move(logps);
}

PreferenceData::Scores PreferenceData::score(const std::vector<double>& logps,
                                             const PreferenceLossSpec& loss) const {
  TRIAD_CHECK(logps.size() == reference_.size() && !logps.empty(),
              "internal error: scoring pairs without their reference");
  Scores s;
  for (size_t i = 0; i + 1 < logps.size(); i += 2) {
    const PairLoss p = preference_pair_loss(
        loss, logps[i], reference_[i], double(counted_targets(int64_t(i))), logps[i + 1],
        reference_[i + 1], double(counted_targets(int64_t(i + 1))));
    s.loss += p.loss;
    s.accuracy += p.right() ? 1.0 : 0.0;
    s.margin += p.chosen - p.rejected;
  }
  const double n = double(pairs());
  return {s.loss / n, s.accuracy / n, s.margin / n};
}

void PreferenceData::reference_rows(int64_t position, int count, double* out) {
  TRIAD_CHECK(!reference_.empty(), "internal error: DPO's reference is not computed");
  for (int b = 0; b < count; ++b) out[b] = reference_[size_t(sequence_at(position + b))];
}

}  // namespace triad
