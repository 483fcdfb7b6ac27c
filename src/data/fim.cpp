#include "triad/data/fim.h"

#include <algorithm>
#include <optional>
#include <utility>

#include "triad/core/error.h"
#include "triad/data/tokenizer.h"
#include "triad/kernels/dropout_mask.h"

namespace triad {

namespace {

// A fragment's text as units (data/fim.h): its characters and the tokens kept whole.
class FragmentText {
 public:
  FragmentText(const Tokenizer& tok, const int32_t* ids, size_t n) : tok_(tok) {
    size_t i = 0;
    while (i < n) {
      if (whole(ids[i])) {
        units_.push_back({0, 0, ids[i]});
        ++i;
        continue;
      }
      size_t j = i;
      while (j < n && !whole(ids[j])) ++j;
      const size_t begin = text_.size(), first = units_.size();
      text_ += tok.decode(std::span<const int32_t>(ids + i, j - i));
      for (size_t p = begin; p < text_.size(); ++p)
        if (p == begin || (uint8_t(text_[p]) & 0xC0) != 0x80) units_.push_back({p, 0, -1});
      // Each character ends where the next one of its run starts, the last at the run's end.
      for (size_t u = first; u < units_.size(); ++u)
        units_[u].end = u + 1 < units_.size() ? units_[u + 1].begin : text_.size();
      i = j;
    }
  }

  size_t size() const { return units_.size(); }

  // Units [a, b) as tokens appended to out: each run of characters encoded anew.
  void emit(size_t a, size_t b, std::vector<int32_t>& out) const {
    size_t u = a;
    while (u < b) {
      if (units_[u].id >= 0) {
        out.push_back(units_[u].id);
        ++u;
        continue;
      }
      size_t v = u;
      while (v + 1 < b && units_[v + 1].id < 0) ++v;
      const size_t begin = units_[u].begin, end = units_[v].end;
      tok_.encode_append(std::string_view(text_).substr(begin, end - begin), out, true);
      u = v + 1;
    }
  }

 private:
  // A special token, or an id the tokenizer does not have (e.g. a sentinel in a padded
  // vocabulary): kept whole.
  bool whole(int32_t id) const { return id >= tok_.vocab_size() || tok_.is_special(id); }

  struct Unit {
    size_t begin, end;  // a character: its bytes in text_
    int32_t id;         // a token kept whole, or -1
  };
  const Tokenizer& tok_;
  std::string text_;
  std::vector<Unit> units_;
};

// Whether the text of tokens [ids, ids + n) starts with `prefix` (data.fim_no_prefix): decoded
// until it is as long, or up to an id the tokenizer does not have.
bool starts_with_text(const Tokenizer& tok, const int32_t* ids, size_t n,
                      const std::string& prefix) {
  std::string text;
  for (size_t i = 0; i < n && text.size() < prefix.size() && ids[i] < tok.vocab_size(); ++i)
    text += tok.decode(std::span<const int32_t>(ids + i, 1));
  return text.starts_with(prefix);
}

// The draws of a fragment with key k: h(d) = mix(k ^ d), and u(d) = h(d)'s top 53 bits in [0, 1).
uint64_t draw_bits(uint64_t k, uint64_t d) { return dropout_mix(k ^ d); }
double draw_unit(uint64_t k, uint64_t d) { return double(draw_bits(k, d) >> 11) * 0x1.0p-53; }

}  // namespace

void fill_in_the_middle(const FimSpec& f, int64_t index, std::vector<int32_t>& tokens,
                        std::vector<uint8_t>& counts) {
  TRIAD_ASSERT(tokens.size() == counts.size());
  if (!f.on()) return;
  TRIAD_ASSERT(!f.needs_tokenizer() || f.tokenizer != nullptr);
  const size_t n = tokens.size();
  const uint64_t key = dropout_mix(dropout_mix(f.seed) ^ uint64_t(index));
  std::vector<int32_t> out;
  std::vector<uint8_t> out_counts;
  out.reserve(n + 32);
  out_counts.reserve(n + 32);
  auto put = [&](size_t from, size_t to) {  // window tokens [from, to)
    out.insert(out.end(), tokens.begin() + ptrdiff_t(from), tokens.begin() + ptrdiff_t(to));
    out_counts.insert(out_counts.end(), counts.begin() + ptrdiff_t(from),
                      counts.begin() + ptrdiff_t(to));
  };
  auto sentinel = [&](int32_t id) {
    out.push_back(id);
    out_counts.push_back(1);
  };
  // Tokens [lo, hi) with the draws h(d) = mix(k ^ d): rearranged where u(0) < rate (and the
  // fragment is neither data.fim_no_prefix's nor, between characters, holding an uncounted
  // target), else kept.
  auto fragment = [&](size_t lo, size_t hi, uint64_t k, double rate) {
    auto h = [k](uint64_t d) { return draw_bits(k, d); };
    auto u = [k](uint64_t d) { return draw_unit(k, d); };
    const size_t L = hi - lo;
    const bool drawn =
        u(0) < rate && (f.no_prefix.empty() ||
                        !starts_with_text(*f.tokenizer, tokens.data() + lo, L, f.no_prefix));
    auto all_counted = [&] {
      return std::all_of(counts.begin() + ptrdiff_t(lo), counts.begin() + ptrdiff_t(hi),
                         [](uint8_t c) { return c != 0; });
    };
    if (!drawn || (f.characters && !all_counted())) {
      put(lo, hi);
      return;
    }
    // The cuts over the fragment's units: its tokens, or between characters its characters and
    // whole tokens; piece(x, y) appends units [x, y), tokens with their mask bytes or text
    // encoded anew (counting).
    std::optional<FragmentText> text;
    if (f.characters) text.emplace(*f.tokenizer, tokens.data() + lo, L);
    const size_t C = text ? text->size() : L;
    auto piece = [&](size_t x, size_t y) {
      if (!text) return put(lo + x, lo + y);
      text->emit(x, y, out);
      out_counts.resize(out.size(), 1);
    };
    size_t a = size_t(h(2) % (C + 1)), b = size_t(h(3) % (C + 1));
    if (a > b) std::swap(a, b);
    sentinel(f.prefix);
    if (u(1) < f.spm_rate) {  // SPM: <P> <S> suffix <M> prefix middle
      sentinel(f.suffix);
      piece(b, C);
      sentinel(f.middle);
      piece(0, a);  // the prefix, then the middle, each its own piece
      piece(a, b);
    } else {  // PSM: <P> prefix <S> suffix <M> middle
      piece(0, a);
      sentinel(f.suffix);
      piece(b, C);
      sentinel(f.middle);
      piece(a, b);
    }
  };
  uint64_t j = 0;  // the window's non-empty fragments
  for (size_t lo = 0; lo <= n && out.size() < n;) {
    size_t hi = lo;
    while (hi < n && tokens[hi] != f.split) ++hi;
    if (hi > lo) {
      const uint64_t fkey = dropout_mix(key ^ j);
      const bool parts = f.fragment_split >= 0 &&
                         std::find(tokens.begin() + ptrdiff_t(lo), tokens.begin() + ptrdiff_t(hi),
                                   f.fragment_split) != tokens.begin() + ptrdiff_t(hi);
      if (!parts) {
        fragment(lo, hi, fkey, f.rate);
      } else if (draw_unit(fkey, 0) >= f.rate) {
        put(lo, hi);  // (Megatron's: the document not rearranged, none of its parts)
      } else {
        // Its parts, cut at data.fim_fragment_split (kept in place), each on its own at
        // data.fim_fragment_rate with the draws of mix(fkey ^ (4 + s)), s counting the parts.
        uint64_t s = 0;
        for (size_t a = lo; a <= hi && out.size() < n;) {
          size_t b = a;
          while (b < hi && tokens[b] != f.fragment_split) ++b;
          if (b > a) fragment(a, b, dropout_mix(fkey ^ (4 + s++)), f.fragment_rate);
          if (b < hi) put(b, b + 1);
          a = b + 1;
        }
      }
      ++j;
    }
    if (hi < n) put(hi, hi + 1);  // the separator
    lo = hi + 1;
  }
  if (f.characters) {  // (the pieces encoded anew may be fewer tokens than the fragment)
    out.resize(std::max(out.size(), n), f.pad);
    out_counts.resize(out.size(), 0);
  }
  TRIAD_ASSERT(out.size() >= n);
  std::copy_n(out.begin(), n, tokens.begin());
  std::copy_n(out_counts.begin(), n, counts.begin());
}

}  // namespace triad
