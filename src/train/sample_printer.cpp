#include "triad/train/sample_printer.h"

#include <algorithm>
#include <cstdio>
#include <span>
#include <utility>

namespace triad {

std::string StopStringFilter::add(std::string_view bytes) {
  if (stopped_) return {};
  text_.append(bytes);
  // No stop string starts in what was printed (it would have been held back), so the search
  // covers the unprinted tail only.
  size_t at = std::string::npos;
  for (const std::string& s : stops_) at = std::min(at, text_.find(s));
  if (at != std::string::npos) {
    stopped_ = true;
    std::string out = text_.substr(0, at);
    text_.clear();
    return out;
  }
  // Hold back the longest tail that is the start of a stop string.
  size_t hold = 0;
  for (const std::string& s : stops_)
    for (size_t k = std::min(s.empty() ? 0 : s.size() - 1, text_.size()); k > hold; --k)
      if (std::string_view(text_).substr(text_.size() - k) == std::string_view(s).substr(0, k)) {
        hold = k;
        break;
      }
  std::string out = text_.substr(0, text_.size() - hold);
  text_.erase(0, text_.size() - hold);
  return out;
}

std::string StopStringFilter::finish() {
  if (stopped_) return {};
  return std::exchange(text_, {});
}

SamplePrinter::SamplePrinter(const SamplePrinting& how, int index, std::ostream& os,
                             bool flush_each)
    : how_(how), os_(os), flush_each_(flush_each), filter_(how.stops) {
  if (index > 0 && how_.output != SamplePrinting::Output::ids) os_ << "---\n";
  if (how_.output == SamplePrinting::Output::text) os_ << how_.before;
  if (flush_each_) os_.flush();
}

void SamplePrinter::token(int32_t id, const TokenLogprob* logprob) {
  switch (how_.output) {
    case SamplePrinting::Output::ids:
      os_ << (count_ ? " " : "") << id;
      break;
    case SamplePrinting::Output::logprobs: {
      char num[32];
      std::snprintf(num, sizeof num, "%.6f", logprob ? logprob->logprob : 0.0);
      os_ << id << '\t' << num << '\t';
      if (logprob)
        for (size_t a = 0; a < logprob->top.size(); ++a) {
          std::snprintf(num, sizeof num, "%.6f", logprob->top[a].second);
          os_ << (a ? " " : "") << logprob->top[a].first << ':' << num;
        }
      os_ << '\n';
      break;
    }
    case SamplePrinting::Output::text:
      if (std::find(how_.hidden_tokens.begin(), how_.hidden_tokens.end(), id) ==
          how_.hidden_tokens.end())
        os_ << filter_.add(how_.tokenizer->decode(std::span<const int32_t>(&id, 1)));
      break;
  }
  ++count_;
  if (flush_each_) os_.flush();
}

void SamplePrinter::finish() {
  if (how_.output == SamplePrinting::Output::text) os_ << filter_.finish() << how_.after << '\n';
  if (how_.output == SamplePrinting::Output::ids) os_ << '\n';
  os_.flush();
}

}  // namespace triad
