// How triad-generate prints a sample, token by token as the sampler draws them: with --stream
// straight to the terminal, otherwise into a buffer printed once the sample (and those drawn in
// lockstep with it) end. Both go through the same code, so a streamed sample reads exactly as
// a buffered one.
#pragma once

#include <cstdint>
#include <ostream>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "triad/data/tokenizer.h"
#include "triad/train/sampler.h"

namespace triad {

// What triad-generate's --output, --stop, --chat and --suffix ask of the printing.
struct SamplePrinting {
  enum class Output { text, ids, logprobs } output = Output::text;
  const Tokenizer* tokenizer = nullptr;  // --output text decodes with it
  std::vector<std::string> stops;        // --stop: cut off with what follows
  std::string before, after;             // text printed around the continuation
  // Tokens not printed (a chat reply's or a middle's stop token, which ends the sample).
  std::vector<int32_t> hidden_tokens;
};

// A --output text continuation as its bytes come: everything is printed but a tail that could
// still grow into one of the stop strings; at the first stop string the text ends.
class StopStringFilter {
 public:
  explicit StopStringFilter(std::vector<std::string> stops) : stops_(std::move(stops)) {}
  // Appends bytes and returns those now certain to be printed (none once a stop string is
  // complete).
  std::string add(std::string_view bytes);
  // The held-back tail, at the end of the sample.
  std::string finish();
  bool stopped() const { return stopped_; }

 private:
  std::vector<std::string> stops_;
  std::string text_;  // what is not printed yet
  bool stopped_ = false;
};

// One sample printed to `os` (sample `index`: samples after the first begin with a line "---",
// except in --output ids, a line per sample). `flush_each`: flush after every token (--stream).
class SamplePrinter {
 public:
  SamplePrinter(const SamplePrinting& how, int index, std::ostream& os, bool flush_each);
  // A token the sample keeps, with its log-probability where --output logprobs.
  void token(int32_t id, const TokenLogprob* logprob);
  // The end of the sample.
  void finish();

 private:
  const SamplePrinting& how_;
  std::ostream& os_;
  bool flush_each_;
  StopStringFilter filter_;
  size_t count_ = 0;
};

}  // namespace triad
