#include "triad/data/blend.h"

#include <algorithm>
#include <charconv>
#include <cmath>

#include "triad/core/comma_list.h"
#include "triad/core/error.h"

namespace triad {

BlendSpec parse_blend(const std::string& train, const std::string& weights) {
  BlendSpec b;
  if (weights.empty()) {
    b.globs = {train};
    b.weights = {1.0};
    return b;
  }
  b.globs = split_comma_list(train);
  const std::vector<std::string> ws = split_comma_list(weights);
  TRIAD_CHECK(ws.size() == b.globs.size(), "config: data.train_weights has ", ws.size(),
              " weight(s) but data.train ", b.globs.size(), " comma-separated glob(s)");
  for (size_t d = 0; d < ws.size(); ++d) {
    TRIAD_CHECK(!b.globs[d].empty(), "config: data.train: glob ", d + 1, " of ", b.globs.size(),
                " is empty");
    for (size_t e = 0; e < d; ++e)
      TRIAD_CHECK(b.globs[e] != b.globs[d], "config: data.train: glob ", d + 1, " (", b.globs[d],
                  ") is glob ", e + 1, " again; give a dataset once, with its whole weight");
    double w = 0;  // (decimal only: strtod would take hex and "inf")
    const auto r = std::from_chars(ws[d].data(), ws[d].data() + ws[d].size(), w);
    TRIAD_CHECK(!ws[d].empty() && r.ec == std::errc() && r.ptr == ws[d].data() + ws[d].size() &&
                    std::isfinite(w) && w > 0,
                "config: data.train_weights: '", ws[d], "' (weight ", d + 1,
                ") must be a finite number > 0");
    b.weights.push_back(w);
  }
  return b;
}

BlendedLoader::BlendedLoader(const BlendSpec& spec, int seq_len, int vocab_size, bool shuffle,
                             uint64_t seed, LossMask mask, int32_t eod, const FimSpec& fim) {
  const size_t D = spec.globs.size();
  TRIAD_ASSERT(D >= 1 && spec.weights.size() == D);
  for (size_t d = 0; d < D; ++d) {
    sources_.push_back(std::make_unique<SequenceSource>(spec.globs[d], spec.key(d), seq_len,
                                                        vocab_size, mask, eod));
    FimSpec own = fim;
    own.seed = fim.seed + d;
    sources_.back()->set_fim(own);
    loaders_.push_back(std::make_unique<DataLoader>(*sources_[d], shuffle, seed + d));
    total_ += sources_[d]->num_sequences();
  }
  // Largest remainders: N_d = floor(share), then one more for the largest fractions.
  double sum = 0;
  for (double w : spec.weights) sum += w;
  TRIAD_CHECK(std::isfinite(sum), "config: data.train_weights: their sum is not a finite number");
  std::vector<double> frac(D);
  int64_t given = 0;
  for (size_t d = 0; d < D; ++d) {
    const double share = spec.weights[d] / sum * double(kPeriod);
    per_period_.push_back(int64_t(std::floor(share)));
    frac[d] = share - std::floor(share);
    given += per_period_[d];
  }
  std::vector<size_t> order(D);
  for (size_t d = 0; d < D; ++d) order[d] = d;
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return frac[a] > frac[b]; });
  for (size_t i = 0; given < kPeriod; ++i, ++given) per_period_[order[i % D]] += 1;
  for (size_t d = 0; d < D; ++d)
    TRIAD_CHECK(per_period_[d] >= 1, "config: data.train_weights: the weight ", spec.weights[d],
                " of ", spec.globs[d], " is below 1/", kPeriod, " of their sum");
  // The period's order: the dataset furthest behind its share, in exact integers.
  std::vector<int64_t> count(D, 0);
  for (int64_t q = 0; q < kPeriod; ++q) {
    size_t best = 0;
    int64_t best_lag = 0;
    for (size_t d = 0; d < D; ++d) {
      const int64_t lag = per_period_[d] * (q + 1) - count[d] * kPeriod;
      if (d == 0 || lag > best_lag) {
        best = d;
        best_lag = lag;
      }
    }
    dataset_.push_back(int(best));
    before_.push_back(count[best]++);
  }
  for (size_t d = 0; d < D; ++d)
    TRIAD_ASSERT(count[d] == per_period_[d]);  // every period holds exactly its share
}

BlendedLoader::~BlendedLoader() = default;

BlendedLoader::Place BlendedLoader::locate(int64_t position) const {
  const int64_t r = position / kPeriod, q = position % kPeriod;
  const int d = dataset_[size_t(q)];
  return {d, r * per_period_[size_t(d)] + before_[size_t(q)]};
}

void BlendedLoader::fill(int64_t position, int count, int32_t* inputs, int32_t* targets) {
  const size_t T = size_t(sources_[0]->seq_len());
  for (int b = 0; b < count; ++b) {
    const Place p = locate(position + b);
    loaders_[size_t(p.dataset)]->fill(p.sample, 1, inputs + size_t(b) * T, targets + size_t(b) * T);
  }
}

int64_t BlendedLoader::counted_targets(int64_t position, int count) {
  int64_t n = 0;
  for (int b = 0; b < count; ++b) {
    const Place p = locate(position + b);
    n += loaders_[size_t(p.dataset)]->counted_targets(p.sample, 1);
  }
  return n;
}

bool BlendedLoader::masks_targets() const {
  return std::any_of(sources_.begin(), sources_.end(),
                     [](const auto& s) { return s->masks_targets(); });
}

bool BlendedLoader::counting_encodes() const {
  return std::any_of(sources_.begin(), sources_.end(),
                     [](const auto& s) { return s->counting_encodes(); });
}

size_t BlendedLoader::kept_sequences() const {
  size_t n = 0;
  for (const auto& l : loaders_) n += l->kept_sequences();
  return n;
}

int BlendedLoader::masked_shards() const {
  int n = 0;
  for (const auto& s : sources_) n += s->masked_shards();
  return n;
}

}  // namespace triad
