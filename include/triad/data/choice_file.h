// Multiple-choice evaluation sets (HellaSwag and the like) in llm.c's eval file format, so a
// file llm.c's dev/data/hellaswag.py wrote works as it is (jobs/prepare_choices.py writes one
// from HellaSwag's JSON lines):
//   a header of 256 little-endian int32: [0] magic 20240522, [1] version 1, [2] example
//   count, [3] the longest example's size in bytes;
//   then each example as uint16: 65535 (start), its size in bytes (these fields included),
//   its index, the label (index of the right ending), the number of endings, the context's
//   token count and tokens, then each ending's token count and tokens.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace triad {

inline constexpr int32_t kChoiceFileMagic = 20240522;
inline constexpr int32_t kChoiceFileVersion = 1;

struct ChoiceExample {
  int64_t index = 0;  // as the file numbers it
  int label = 0;      // the right ending
  std::vector<int32_t> context;
  std::vector<std::vector<int32_t>> endings;  // at least 2, none empty
  // Not in the file: each ending's length in characters of its text, for lm-eval-harness's
  // acc_norm (count_ending_chars, train/choice_eval.h); empty when no tokenizer gave them.
  std::vector<int64_t> ending_chars;
};

// Reads and validates the whole file: magic, version, example count and sizes, every example's
// framing, a label below its ending count, every token below vocab_size, nothing after the
// last example. Throws triad::Error naming `what` (the config key), the file and, for a bad
// example, its number.
std::vector<ChoiceExample> read_choice_file(const std::string& path, int vocab_size,
                                            const std::string& what);

}  // namespace triad
