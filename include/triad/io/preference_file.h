// Preference pairs for direct preference optimization (data.preferences; DPO, Rafailov et al.
// 2023): for each prompt, a chosen and a rejected response, each stored as the whole sequence
// (prompt and response tokens) with the targets its loss counts (the response's). One HDF5 file,
// written by `triad-tokenize preferences` or by any tool (h5py):
//   root attributes: format = "triad-preferences" (string), version = 1 (integer);
//   /chosen/tokens int32 [n], /chosen/counts uint8 [n], /chosen/offsets int64 [P + 1];
//   /rejected/tokens, /rejected/counts, /rejected/offsets likewise.
// Pair i's chosen sequence is /chosen/tokens[offsets[i], offsets[i + 1]); counts[j] = 1 where the
// loss counts token j as a target (predicted from the tokens before it), 0 elsewhere. offsets
// start at 0 and end at n; every sequence has at least 2 tokens, its first not counted, and at
// least one counted.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace triad {

inline constexpr const char* kPreferenceFormat = "triad-preferences";
inline constexpr int64_t kPreferenceVersion = 1;

// One side (chosen or rejected) of every pair.
struct PreferenceSide {
  std::vector<int32_t> tokens;
  std::vector<uint8_t> counts;
  std::vector<int64_t> offsets{0};  // pairs + 1

  void add(std::span<const int32_t> ids, std::span<const uint8_t> counted);
  int64_t length(int64_t i) const { return offsets[size_t(i) + 1] - offsets[size_t(i)]; }
};

struct PreferenceSet {
  PreferenceSide chosen, rejected;
  int64_t pairs() const { return int64_t(chosen.offsets.size()) - 1; }
  const PreferenceSide& side(int s) const { return s == 0 ? chosen : rejected; }
};

// Reads and checks the whole file: its format and version attributes, the six datasets (1-D,
// integer), the offsets, every token below vocab_size, counts of 0 or 1 as above, and every
// sequence at most max_tokens long (model.seq_len + 1: a sequence is one row of the model).
// Throws triad::Error naming `what` (the config key), the file and, for a bad sequence, its pair
// (0-based) and side.
PreferenceSet read_preference_file(const std::string& path, int vocab_size, int64_t max_tokens,
                                   const std::string& what);

// Writes set to path (through path + ".partial", renamed when complete): an existing file of that
// name is replaced only by a whole one.
void write_preference_file(const std::string& path, const PreferenceSet& set);

}  // namespace triad
