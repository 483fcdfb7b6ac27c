// Drawing a token (sample_token in train/sampler.h) against the distribution it promises,
// computed here from the logits in double: temperature, top-k, top-p (nucleus), min-p and their
// combination; the penalties on a row of logits by hand. 200,000 seeded draws each; every frequency
// within 5 standard deviations of its probability, and tokens outside the candidates never drawn.
// And the --stop strings of a streamed text against std::string::find on the whole sample's text.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <string>
#include <vector>

#include "triad/train/sample_printer.h"
#include "triad/train/sampler.h"

namespace triad {
namespace {

const std::vector<float> kLogits = {1.0f, 3.0f, 0.5f, 2.5f, -1.0f, 2.0f, 0.0f, 3.0f};

// The probabilities the options promise: softmax(logits / temperature) over the top-k (equal
// logits by id), cut to the fewest likeliest whose mass reaches top_p, then to those at least
// min_p times as likely as the likeliest, renormalized.
std::vector<double> promised(const SampleOptions& o) {
  const int V = int(kLogits.size());
  std::vector<int> order(static_cast<size_t>(V));
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [](int a, int b) { return kLogits[size_t(a)] > kLogits[size_t(b)]; });
  const int k = o.top_k > 0 && o.top_k < V ? o.top_k : V;
  std::vector<double> p(static_cast<size_t>(V), 0.0);
  double z = 0;
  for (int i = 0; i < k; ++i) z += std::exp(kLogits[size_t(order[size_t(i)])] / o.temperature);
  double mass = 0;
  std::vector<int> kept;
  for (int i = 0; i < k; ++i) {
    const int t = order[size_t(i)];
    kept.push_back(t);
    mass += std::exp(kLogits[size_t(t)] / o.temperature) / z;
    if (mass >= o.top_p) break;
  }
  const double top = kLogits[size_t(order[0])];
  std::erase_if(
      kept, [&](int t) { return std::exp((kLogits[size_t(t)] - top) / o.temperature) < o.min_p; });
  mass = 0;
  for (int t : kept) mass += std::exp(kLogits[size_t(t)] / o.temperature) / z;
  for (int t : kept) p[size_t(t)] = std::exp(kLogits[size_t(t)] / o.temperature) / z / mass;
  return p;
}

void check(const SampleOptions& o) {
  SCOPED_TRACE(::testing::Message() << "temperature " << o.temperature << " top_k " << o.top_k
                                    << " top_p " << o.top_p << " min_p " << o.min_p);
  const int V = int(kLogits.size()), n = 200000;
  Rng rng(17);
  std::vector<int> order;
  std::vector<double> prob;
  std::vector<int> count(static_cast<size_t>(V), 0);
  for (int i = 0; i < n; ++i) ++count[size_t(sample_token(kLogits.data(), V, o, rng, order, prob))];
  const std::vector<double> p = promised(o);
  for (int t = 0; t < V; ++t) {
    if (p[size_t(t)] == 0.0) {
      EXPECT_EQ(count[size_t(t)], 0) << "token " << t << " is not a candidate";
      continue;
    }
    const double sd = std::sqrt(n * p[size_t(t)] * (1 - p[size_t(t)]));
    EXPECT_NEAR(count[size_t(t)], n * p[size_t(t)], 5 * sd + 1) << "token " << t;
  }
}

SampleOptions options(double temperature, int top_k, double top_p, double min_p = 0) {
  SampleOptions o;
  o.temperature = temperature;
  o.top_k = top_k;
  o.top_p = top_p;
  o.min_p = min_p;
  return o;
}

TEST(SampleToken, Temperature) {
  check(options(1.0, 0, 1.0));
  check(options(0.5, 0, 1.0));
  check(options(2.0, 0, 1.0));
}

TEST(SampleToken, TopK) {
  check(options(1.0, 3, 1.0));  // ids 1 and 7 tie at 3.0, then 3
  check(options(1.0, 1, 1.0));  // the first of the tied maxima: always id 1
}

TEST(SampleToken, TopP) {
  check(options(1.0, 0, 0.5));
  check(options(1.0, 0, 0.9));
  check(options(0.7, 0, 0.8));
  check(options(1.0, 0, 1e-9));  // the likeliest alone
}

TEST(SampleToken, TopKThenTopP) { check(options(1.0, 4, 0.7)); }

TEST(SampleToken, MinP) {
  check(options(1.0, 0, 1.0, 0.3));  // 3.0, 3.0, 2.5 and 2.0 (e^-1 ≥ 0.3); not 1.0
  check(options(2.0, 0, 1.0, 0.3));  // hotter: 1.0 too (e^-1 ≥ 0.3), not 0.5
  check(options(1.0, 0, 1.0, 1.0));  // the tied maxima alone
  check(options(1.0, 5, 0.9, 0.5));  // after top-k and top-p
}

TEST(PenalizeLogits, RepetitionFrequencyAndPresence) {
  // Prompt 1 3 3, continuation 3 5 5 2 (id 4 never): the repetition penalty on 1, 2, 3 and 5
  // (prompt and continuation, once each however often), the others on the continuation's 3
  // (once), 5 (twice) and 2 (once).
  const std::vector<int32_t> seq = {1, 3, 3, 3, 5, 5, 2};
  SampleOptions o;
  o.repetition_penalty = 2.0;
  o.frequency_penalty = 0.25;
  o.presence_penalty = 0.5;
  std::vector<float> l = {1.0f, 3.0f, 0.5f, 2.5f, -1.0f, 2.0f, 0.0f, -3.0f};
  std::vector<int> scratch;
  penalize_logits(l.data(), 8, o, seq, 3, scratch);
  const std::vector<float> want = {1.0f,  1.5f,        0.25f - 0.75f, 1.25f - 0.75f,
                                   -1.0f, 1.0f - 1.0f, 0.0f,          -3.0f};
  for (int t = 0; t < 8; ++t) EXPECT_FLOAT_EQ(l[size_t(t)], want[size_t(t)]) << "token " << t;
  // A negative logit is multiplied; ids past V are skipped.
  std::vector<float> neg = {-1.0f, -2.0f};
  penalize_logits(neg.data(), 2, o, {0, 7}, 2, scratch);
  EXPECT_FLOAT_EQ(neg[0], -2.0f);
  EXPECT_FLOAT_EQ(neg[1], -2.0f);
}

TEST(SampleToken, TopPOfOneDrawsAsWithout) {
  // top_p = 1 changes nothing: the same seed gives the same tokens as any top_p that keeps every
  // candidate.
  const int V = int(kLogits.size());
  Rng a(5), b(5);
  std::vector<int> order;
  std::vector<double> prob;
  for (int i = 0; i < 1000; ++i)
    EXPECT_EQ(sample_token(kLogits.data(), V, options(1.0, 5, 1.0), a, order, prob),
              sample_token(kLogits.data(), V, options(1.0, 5, 1.0 - 1e-12), b, order, prob));
}

// --stop strings on a streamed text (triad-generate --stream): whatever way the bytes arrive, what
// is printed is what the whole sample's text gives, found with std::string::find.
std::string streamed(const std::vector<std::string>& stops, const std::string& text,
                     const std::vector<size_t>& pieces) {
  StopStringFilter f(stops);
  std::string out;
  size_t at = 0;
  for (const size_t n : pieces) {
    out += f.add(std::string_view(text).substr(at, n));
    at += n;
  }
  return out + f.finish();
}

// What triad-generate prints without streaming: the sample ends with the token (piece) after
// which its text holds a stop string, and that text is cut before the earliest one it holds.
std::string cut(const std::vector<std::string>& stops, const std::string& text,
                const std::vector<size_t>& pieces) {
  size_t end = 0;
  for (const size_t n : pieces) {
    end += n;
    size_t at = std::string::npos;
    for (const std::string& s : stops) at = std::min(at, text.substr(0, end).find(s));
    if (at != std::string::npos) return text.substr(0, at);
  }
  return text;
}

TEST(StopStringFilter, HoldsBackOnlyWhatCouldStartAStopString) {
  const std::vector<std::string> stops = {"abc", "bd"};
  StopStringFilter f(stops);
  EXPECT_EQ(f.add("xa"), "x");  // "a" may begin "abc"
  EXPECT_EQ(f.add("b"), "");    // "ab" may still be "abc", "b" "bd"
  EXPECT_EQ(f.add("e"), "abe");
  EXPECT_EQ(f.add("ab"), "");
  EXPECT_EQ(f.add("d!"), "a");  // "bd" found: the text ends before it
  EXPECT_TRUE(f.stopped());
  EXPECT_EQ(f.add("more"), "");
  EXPECT_EQ(f.finish(), "");
  StopStringFilter none({});
  EXPECT_EQ(none.add("ab"), "ab");
  EXPECT_EQ(none.finish(), "");
  StopStringFilter tail(stops);
  EXPECT_EQ(tail.add("zab"), "z");
  EXPECT_EQ(tail.finish(), "ab");  // the end of the sample prints what was held back
}

TEST(StopStringFilter, AnyChunkingPrintsTheTextCutAtTheEarliestStop) {
  Rng rng(7);
  const auto below = [&](size_t n) { return size_t(rng.next_u64() % n); };
  const auto word = [&](size_t max_len) {
    std::string w(1 + below(max_len), 'a');
    for (char& c : w) c = char('a' + below(3));
    return w;
  };
  for (int trial = 0; trial < 2000; ++trial) {
    std::vector<std::string> stops(below(4));
    for (std::string& s : stops) s = word(4);
    const std::string text = word(40);
    std::vector<size_t> pieces;
    for (size_t left = text.size(); left > 0;) {
      pieces.push_back(std::min(left, below(5)));  // empty pieces too (a hidden token)
      left -= pieces.back();
    }
    ASSERT_EQ(streamed(stops, text, pieces), cut(stops, text, pieces))
        << "text " << text << ", stops " << testing::PrintToString(stops) << ", pieces "
        << testing::PrintToString(pieces);
  }
}

}  // namespace
}  // namespace triad
