// The deterministic data order of DESIGN.md §4. A SequenceSource maps the shards of one split
// (files matching a glob, in lexicographic order) and enumerates their sequences: shard j
// yields floor((n_j − 1) / T) sequences, sequence k being tokens [k·T, k·T + T]. A DataLoader
// turns an absolute position (step · batch_size + i) into a global sequence index, through a
// seeded per-epoch permutation when shuffling. Positions, not rank-local cursors, are the
// loader's state, so any grid resumes the same order.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace triad {

class SequenceSource {
 public:
  // `key` names the config key in errors (e.g. "data.train"). Throws triad::Error if nothing
  // matches, a shard is malformed, or the shards hold no complete sequence.
  SequenceSource(const std::string& glob, const std::string& key, int seq_len, int vocab_size);
  ~SequenceSource();
  SequenceSource(const SequenceSource&) = delete;
  SequenceSource& operator=(const SequenceSource&) = delete;

  int64_t num_sequences() const { return total_; }
  int seq_len() const { return seq_len_; }
  const std::vector<std::string>& files() const { return files_; }
  // Copies sequence `index` into inputs[T] and targets[T]; throws triad::Error naming the
  // shard and offset if a token id is >= vocab_size.
  void read(int64_t index, int32_t* inputs, int32_t* targets) const;

 private:
  struct Shard;
  std::string key_;
  int seq_len_, vocab_size_;
  std::vector<std::string> files_;
  std::vector<std::unique_ptr<Shard>> shards_;
  std::vector<int64_t> first_;  // global index of each shard's first sequence
  int64_t total_ = 0;
};

class DataLoader {
 public:
  DataLoader(const SequenceSource& source, bool shuffle, uint64_t seed);
  // Global sequence index at absolute position p (epoch = p / N, then the epoch's order).
  int64_t sequence_at(int64_t position);
  // Fills count sequences starting at absolute position p into inputs/targets [count, T].
  void fill(int64_t position, int count, int32_t* inputs, int32_t* targets);
  int64_t num_sequences() const { return source_.num_sequences(); }

 private:
  const SequenceSource& source_;
  bool shuffle_;
  uint64_t seed_;
  int64_t perm_epoch_ = -1;
  std::vector<int64_t> perm_;
};

}  // namespace triad
