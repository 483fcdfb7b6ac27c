// The training data of direct preference optimization (data.preferences): a preference file's
// pairs (io/preference_file.h) as rows of the training loop. Position p (the sequences of the
// steps before, as for token shards) is pair order(p / 2) of its epoch (epoch = p / (2·pairs);
// a seeded permutation of the pairs per epoch with data.shuffle, else the file's order), its
// chosen sequence when p is even, its rejected one when odd: every micro-batch of an even
// number of rows starting at an even position holds whole pairs, chosen first
// (Gpt::set_preference). A row is the sequence's tokens, then padding: inputs t[0..L−2],
// targets t[1..L−1] where counted, else kMaskedTarget, the padding's inputs 0 and its targets
// masked (causal attention: padding after a sequence changes nothing before it).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "triad/data/blend.h"
#include "triad/io/preference_file.h"
#include "triad/model/preference_loss.h"

namespace triad {

class PreferenceData : public TrainingData {
 public:
  // Reads and checks the file (errors name `what`, its config key); every sequence must fit a
  // row of seq_len targets.
  PreferenceData(const std::string& path, int seq_len, int vocab_size, bool shuffle, uint64_t seed,
                 const std::string& what = "data.preferences");

  int64_t pairs() const { return set_.pairs(); }
  int64_t num_sequences() const override { return 2 * pairs(); }
  void fill(int64_t position, int count, int32_t* inputs, int32_t* targets) override;
  int64_t counted_targets(int64_t position, int count) override;
  bool masks_targets() const override { return true; }
  bool counting_encodes() const override { return false; }

  // Sequence k of the file (2i: pair i's chosen one, 2i + 1 its rejected one) as a row, for the
  // reference pass.
  void read(int64_t k, int32_t* inputs, int32_t* targets) const;
  // The reference model's log-probabilities of the sequences, indexed as read(); set once.
  void set_reference(std::vector<double> logps);
  const std::vector<double>& reference() const { return reference_; }
  // reference() of the count rows from position p, in order.
  void reference_rows(int64_t position, int count, double* out);

  // The preference loss's mean over the pairs, the share ranked right and the mean reward
  // margin, from every sequence's log-probability under the model (indexed as read()) against
  // reference().
  struct Scores {
    double loss = 0, accuracy = 0, margin = 0;
  };
  Scores score(const std::vector<double>& logps, const PreferenceLossSpec& loss) const;
  int64_t counted_targets(int64_t k) const;  // of the file's sequence k

 private:
  int64_t sequence_at(int64_t position);  // the file's sequence k at absolute position p
  PreferenceSet set_;
  int seq_len_;
  bool shuffle_;
  uint64_t seed_;
  int64_t perm_epoch_ = -1;
  std::vector<int64_t> perm_;
  std::vector<double> reference_;
};

}  // namespace triad
