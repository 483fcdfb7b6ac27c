// The deterministic data order of DESIGN.md §4. A SequenceSource maps the shards of one split
// (files matching a glob, in lexicographic order) and enumerates their sequences: shard j
// yields floor((n_j − 1) / T) sequences, sequence k being tokens [k·T, k·T + T]. A DataLoader
// turns an absolute position (the sequences of earlier steps + i) into a global sequence index,
// through a seeded per-epoch permutation when shuffling. Positions, not rank-local cursors, are
// the loader's state, so any grid resumes the same order.
//
// Loss masks (data.loss_mask; token_shard.h): a shard's <shard>.mask file marks the targets that
// count in the loss; a target it does not count is given as kMaskedTarget (−1), which the model
// leaves out of the loss, its gradient and the token count of the mean.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "triad/data/fim.h"

namespace triad {

inline constexpr int32_t kMaskedTarget = -1;

// data.loss_mask: use a shard's mask file where there is one (auto), require one for every
// shard (require), or read none (none: every target counts).
enum class LossMask { auto_, require, none };
// "auto", "require" or "none"; throws triad::Error naming data.loss_mask otherwise.
LossMask parse_loss_mask(const std::string& value);

// The files a token-shard glob matches, sorted (DESIGN.md §4's order); throws triad::Error naming
// `key` (e.g. "data.train") where the glob is empty or matches nothing.
std::vector<std::string> match_shards(const std::string& glob, const std::string& key);

class SequenceSource {
 public:
  // `key` names the config key in errors (e.g. "data.train"). Throws triad::Error if nothing
  // matches, a shard is malformed, or the shards hold no complete sequence.
  // Loss masks by `mask`: a mask file that does not belong to its shard (another token count, a
  // bad header), or a missing one under LossMask::require, is an error naming it.
  // eod >= 0 (data.eod_mask_loss): a target whose input token is eod does not count either
  // (Megatron's --eod-mask-loss: no loss for predicting a document's first token from the
  // end-of-document token).
  SequenceSource(const std::string& glob, const std::string& key, int seq_len, int vocab_size,
                 LossMask mask = LossMask::none, int32_t eod = -1);
  ~SequenceSource();
  SequenceSource(const SequenceSource&) = delete;
  SequenceSource& operator=(const SequenceSource&) = delete;

  int64_t num_sequences() const { return total_; }
  int seq_len() const { return seq_len_; }
  const std::vector<std::string>& files() const { return files_; }
  // Copies sequence `index` into inputs[T] and targets[T] (kMaskedTarget where its shard's mask
  // says 0); throws triad::Error naming the shard and offset if a token id is >= vocab_size, or
  // the mask file and offset if a mask value is not 0 or 1.
  void read(int64_t index, int32_t* inputs, int32_t* targets) const;
  // The targets of sequence `index` that count in the loss: T without a mask.
  int counted_targets(int64_t index) const;
  int masked_shards() const { return masked_; }  // shards read with a mask file
  // Whether some targets may not count (mask files, eod, or FIM's padding between characters):
  // the loss's mean needs the count.
  bool masks_targets() const { return masked_ > 0 || eod_ >= 0 || pads(); }
  // Whether counted_targets() encodes text anew (FIM between characters: far slower than
  // reading mask bytes).
  bool counting_encodes() const { return pads(); }
  // data.fim_rate: read() and counted_targets() give the sequences rearranged (data/fim.h).
  void set_fim(const FimSpec& fim) { fim_ = fim; }

 private:
  struct Shard;
  std::string key_;
  int seq_len_, vocab_size_;
  int32_t eod_ = -1;
  FimSpec fim_;
  std::vector<std::string> files_;
  std::vector<std::unique_ptr<Shard>> shards_;
  std::vector<int64_t> first_;  // global index of each shard's first sequence
  int64_t total_ = 0;
  int masked_ = 0;
  const Shard& shard_of(int64_t index, int64_t& start) const;
  bool pads() const { return fim_.on() && fim_.characters; }  // a window may end in padding
  // Sequence index's T + 1 tokens (checked against the vocabulary) and whether each counts as a
  // target (its mask byte), rearranged by fim_.
  void window(int64_t index, std::vector<int32_t>& tokens, std::vector<uint8_t>& counts) const;
  // Whether the target after input i of a window counts: its mask byte, and its input not eod_.
  bool target_counts(const std::vector<int32_t>& tokens, const std::vector<uint8_t>& counts,
                     size_t i) const;
};

// The order of epoch `epoch` of n items with data.shuffle: a permutation seeded by (seed, epoch)
// alone (Fisher-Yates on a SplitMix stream).
std::vector<int64_t> epoch_permutation(int64_t n, uint64_t seed, int64_t epoch);

class DataLoader {
 public:
  DataLoader(const SequenceSource& source, bool shuffle, uint64_t seed);
  // Global sequence index at absolute position p (epoch = p / N, then the epoch's order).
  int64_t sequence_at(int64_t position);
  // Fills count sequences starting at absolute position p into inputs/targets [count, T].
  void fill(int64_t position, int count, int32_t* inputs, int32_t* targets);
  // The targets of those count sequences that count in the loss (count · T without masks).
  // Where counting encodes text anew (SequenceSource::counting_encodes), the sequences it read
  // are kept until fill() takes them, instead of rearranging them a second time.
  int64_t counted_targets(int64_t position, int count);
  int64_t num_sequences() const { return source_.num_sequences(); }
  // How many sequences counted_targets() read that fill() has not taken yet.
  size_t kept_sequences() const { return read_.size(); }

 private:
  const SequenceSource& source_;
  bool shuffle_;
  uint64_t seed_;
  int64_t perm_epoch_ = -1;
  std::vector<int64_t> perm_;
  // The sequences counted_targets() read (by sequence index: inputs then targets, 2·T each),
  // while counting encodes, until fill() takes them; all dropped where they would pass
  // kKeptBytes (counted and never filled: a run that stopped between the two).
  static constexpr size_t kKeptBytes = size_t(64) << 20;
  std::unordered_map<int64_t, std::vector<int32_t>> read_;
};

}  // namespace triad
