// Several training datasets mixed by weight (data.train = GLOB, GLOB, ... with
// data.train_weights = W, W, ...), as Megatron's blended datasets do, deterministically:
//
// The weights, divided by their sum, are apportioned to a period of P = 10000 positions by the
// largest-remainder method (N_d = floor(w_d·P), the rest to the largest fractional parts, ties to
// the lower d; every N_d must be >= 1). Within a period, position q goes to the dataset d that
// lags most behind its share, the largest N_d·(q+1) − c_d·P where c_d counts d's positions
// before q (ties to the lower d); so every period holds exactly N_d positions of dataset d, in
// the same order. Absolute position p = r·P + q is dataset d's sample j = r·N_d + c_d(q), and
// sample j of dataset d is its own order's (DataLoader over d's shards, shuffled by seed + d when
// data.shuffle): each dataset wraps around on its own. A single dataset (weight 1) gives exactly
// the plain order of DESIGN.md §4. The nominal epoch (checkpoints' next_sequence and epoch) is
// the sum of the datasets' sequences.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "triad/data/loader.h"

namespace triad {

// The datasets of data.train and their weights (data.train_weights; "" = one dataset): the
// comma-separated globs and numbers. Throws triad::Error naming the keys on a count mismatch,
// a weight that is not a finite number > 0 or an empty glob.
struct BlendSpec {
  std::vector<std::string> globs;
  std::vector<double> weights;
  // How errors name dataset d: "data.train", or with its glob where the blend has several.
  std::string key(size_t d) const {
    return globs.size() == 1 ? "data.train" : "data.train (" + globs[d] + ")";
  }
};
BlendSpec parse_blend(const std::string& train, const std::string& weights);

// What the training loop reads its batches from, by absolute position (the sequences of the
// steps before, DESIGN.md §4): a blend of token shards, or preference pairs
// (train/preference_data.h).
class TrainingData {
 public:
  virtual ~TrainingData() = default;
  // Fills count sequences from absolute position p into inputs/targets [count, T].
  virtual void fill(int64_t position, int count, int32_t* inputs, int32_t* targets) = 0;
  // The targets of those count sequences that count in the loss (count · T without masks).
  virtual int64_t counted_targets(int64_t position, int count) = 0;
  virtual bool masks_targets() const = 0;
  virtual bool counting_encodes() const = 0;
  virtual int64_t num_sequences() const = 0;  // the nominal epoch
};

class BlendedLoader : public TrainingData {
 public:
  static constexpr int64_t kPeriod = 10000;

  // Opens every dataset (errors name data.train and the glob), with loss masks by `mask`, and
  // fill-in-the-middle by `fim` (dataset d's seeded fim.seed + d).
  // Throws if a weight is too small to get a position in a period.
  BlendedLoader(const BlendSpec& spec, int seq_len, int vocab_size, bool shuffle, uint64_t seed,
                LossMask mask = LossMask::none, int32_t eod = -1, const FimSpec& fim = {});
  ~BlendedLoader();

  struct Place {
    int dataset;
    int64_t sample;  // the dataset's own sample number (its DataLoader position)
  };
  Place locate(int64_t position) const;
  void fill(int64_t position, int count, int32_t* inputs, int32_t* targets) override;
  int64_t counted_targets(int64_t position, int count) override;
  int masked_shards() const;            // shards of all datasets read with a mask file
  bool masks_targets() const override;  // some dataset's targets may not count (SequenceSource's)
  // Counting them encodes text anew (FIM between characters): each rank had better count its
  // share and sum the counts than count the whole batch.
  bool counting_encodes() const override;
  size_t kept_sequences() const;  // counted, not yet filled (DataLoader::kept_sequences)
  int64_t num_sequences() const override { return total_; }
  int datasets() const { return int(sources_.size()); }
  const SequenceSource& source(int d) const { return *sources_[size_t(d)]; }
  int64_t per_period(int d) const { return per_period_[size_t(d)]; }

 private:
  std::vector<std::unique_ptr<SequenceSource>> sources_;
  std::vector<std::unique_ptr<DataLoader>> loaders_;
  std::vector<int64_t> per_period_;  // N_d
  std::vector<int> dataset_;         // of each position of a period
  std::vector<int64_t> before_;      // c_d(q): that dataset's positions before q in the period
  int64_t total_ = 0;
};

}  // namespace triad
