// The splits of DeepSeek's first tokenizers, written out by hand like the others in
// triad/data/pretokenize.h: a Sequence of Split pre-tokenizers with behavior Isolated, then
// ByteLevel without its regex. Each split cuts every piece of the one before it into its matches
// and the stretches between them, and no match reaches past the piece it is in.
//
// deepseek_llm (DeepSeek LLM's tokenizer.json, which DeepSeek-V2's and DeepSeek-Coder-V2's are
// described to share), six splits:
//   1. [\r\n]               each CR and each LF alone;
//   2. \s?[L]+              runs of L, the cased letters its file lists (kCasedLetters), with
//                           one white space character before them;
//   3. \s?[!-/:-~！-／：-～‘-‟　-。]+   likewise for ASCII punctuation and letters, their
//                           full-width forms, quotation marks and U+3000..U+3002 (the
//                           ideographic space is in the class: a run may start with it);
//   4. \s+$                 the white space at the end of a piece (Oniguruma's $ also matches
//                           before an LF, which split 1 has left in no piece but its own);
//   5. [一-龥ࠀ-一가-퟿]+      runs of U+0800..U+9FA5 and U+AC00..U+D7FF;
//   6. \p{N}+               runs of numbers.
// deepseek_coder (DeepSeek Coder's), five: 1; \s?\p{L}+ (letters, one white space character
// before them); \s?\p{P}+ (punctuation, likewise); 5; \p{N} (each number character alone).
// \s is White_Space, as elsewhere (pretokenize.h's kSpace). An ill-formed byte is a character of
// no class.
#include <array>
#include <iterator>

#include "triad/data/pretokenize.h"

namespace triad::pretok {
namespace {

using Ptr = const unsigned char*;

// Split 2's class: the cased letters (Lu, Ll, Lt) DeepSeek LLM's regex lists, as ranges.
constexpr CodeRange kCasedLetters[] = {
    {0x41, 0x5A},       {0x61, 0x7A},       {0xB5, 0xB5},       {0xC0, 0xD6},
    {0xD8, 0xF6},       {0xF8, 0x1BA},      {0x1BC, 0x1BF},     {0x1C4, 0x293},
    {0x295, 0x2AF},     {0x370, 0x373},     {0x376, 0x377},     {0x37B, 0x37D},
    {0x37F, 0x37F},     {0x386, 0x386},     {0x388, 0x38A},     {0x38C, 0x38C},
    {0x38E, 0x3A1},     {0x3A3, 0x3F5},     {0x3F7, 0x481},     {0x48A, 0x52F},
    {0x531, 0x556},     {0x10A0, 0x10C5},   {0x13A0, 0x13F5},   {0x13F8, 0x13FD},
    {0x1C90, 0x1CBA},   {0x1CBD, 0x1CBF},   {0x1D00, 0x1D2B},   {0x1D6B, 0x1D77},
    {0x1D79, 0x1D9A},   {0x1E00, 0x1F15},   {0x1F18, 0x1F1D},   {0x1F20, 0x1F45},
    {0x1F48, 0x1F4D},   {0x1F50, 0x1F57},   {0x1F59, 0x1F59},   {0x1F5B, 0x1F5B},
    {0x1F5D, 0x1F5D},   {0x1F5F, 0x1F7D},   {0x1F80, 0x1FB4},   {0x1FB6, 0x1FBC},
    {0x1FBE, 0x1FBE},   {0x1FC2, 0x1FC4},   {0x1FC6, 0x1FCC},   {0x1FD0, 0x1FD3},
    {0x1FD6, 0x1FDB},   {0x1FE0, 0x1FEC},   {0x1FF2, 0x1FF4},   {0x1FF6, 0x1FFC},
    {0x2102, 0x2102},   {0x2107, 0x2107},   {0x210A, 0x2113},   {0x2115, 0x2115},
    {0x2119, 0x211D},   {0x2124, 0x2124},   {0x2126, 0x2126},   {0x2128, 0x2128},
    {0x212A, 0x212D},   {0x212F, 0x2134},   {0x2139, 0x2139},   {0x213C, 0x213F},
    {0x2145, 0x2149},   {0x214E, 0x214E},   {0x2183, 0x2184},   {0x2C00, 0x2C7B},
    {0x2C7E, 0x2CE4},   {0x2CEB, 0x2CEE},   {0x2CF2, 0x2CF3},   {0xA640, 0xA66D},
    {0xA680, 0xA69B},   {0xA722, 0xA76F},   {0xA771, 0xA787},   {0xA78B, 0xA78E},
    {0xAB70, 0xABBF},   {0xFB00, 0xFB06},   {0xFB13, 0xFB17},   {0xFF21, 0xFF3A},
    {0xFF41, 0xFF5A},   {0x10400, 0x1044F}, {0x104B0, 0x104D3}, {0x104D8, 0x104FB},
    {0x10C80, 0x10CB2}, {0x10CC0, 0x10CF2}, {0x118A0, 0x118DF}, {0x1E900, 0x1E943}};
// Split 3's class.
constexpr CodeRange kPunctuation[] = {{0x21, 0x2F},     {0x3A, 0x7E},     {0x2018, 0x201F},
                                      {0x3000, 0x3002}, {0xFF01, 0xFF0F}, {0xFF1A, 0xFF5E}};

// A character's classes for the splits: letter and punct are the scheme's second and third
// splits' (deepseek_llm's lists, deepseek_coder's \p{L} and \p{P}).
struct LChar {
  int len;
  bool space, number, letter, punct, cjk;
};

// (A template: the scheme is known once per text, not looked up per character.)
template <bool kCoder>
LChar classify(Ptr p, Ptr end) {
  const detail::Char c = detail::char_at(p, end);
  LChar r{c.len, c.cls == kSpace, c.cls == kNumber, false, false, false};
  uint32_t cp = *p;
  if (*p >= 0x80) decode_utf8(p, end, cp);
  if (cp == kInvalidCodePoint) return r;
  r.letter = kCoder ? c.cls == kLetter : in_ranges(kCasedLetters, std::size(kCasedLetters), cp);
  r.punct = kCoder ? is_punct(cp) : in_ranges(kPunctuation, std::size(kPunctuation), cp);
  r.cjk = (cp >= 0x800 && cp <= 0x9FA5) || (cp >= 0xAC00 && cp <= 0xD7FF);
  return r;
}

// classify, with ASCII (most of most text) from a table made once: each split looks at every
// character of its pieces again, and the classes cost a few table searches (without it 4.2 MB/s
// on one thread, with it 18.3: docs/performance.md).
template <bool kCoder>
LChar lchar_at(Ptr p, Ptr end) {
  static const std::array<LChar, 128> ascii = [] {
    std::array<LChar, 128> t{};
    for (int b = 0; b < 128; ++b) {
      const auto c = static_cast<unsigned char>(b);
      t[size_t(b)] = classify<kCoder>(&c, &c + 1);
    }
    return t;
  }();
  if (*p < 0x80) return ascii[*p];
  return classify<kCoder>(p, end);
}

// The end of the run of characters with `has` from q.
template <bool kCoder, typename Has>
Ptr run_end(Ptr q, Ptr end, Has has) {
  while (q < end) {
    const LChar c = lchar_at<kCoder>(q, end);
    if (!has(c)) break;
    q += c.len;
  }
  return q;
}

// \s?[class]+ at q: a run of the class, with one white space character before it.
template <bool kCoder, typename Has>
Ptr spaced_run_at(Ptr q, Ptr end, Has has) {
  const LChar c = lchar_at<kCoder>(q, end);
  if (has(c)) return run_end<kCoder>(q + c.len, end, has);
  if (c.space && q + c.len < end && has(lchar_at<kCoder>(q + c.len, end)))
    return run_end<kCoder>(q + c.len, end, has);
  return nullptr;
}

template <bool kCoder>
void split(std::string_view text, void (*piece)(void*, std::string_view), void* ctx) {
  const auto* const base = reinterpret_cast<const unsigned char*>(text.data());
  auto emit = [&](Ptr from, Ptr to) {
    piece(ctx, std::string_view(reinterpret_cast<const char*>(from), size_t(to - from)));
  };
  auto at = [](Ptr q, Ptr e) { return lchar_at<kCoder>(q, e); };
  auto letter = [](const LChar& c) { return c.letter; };
  auto punct = [](const LChar& c) { return c.punct; };
  auto number = [](const LChar& c) { return c.number; };
  auto cjk = [](const LChar& c) { return c.cjk; };
  // The last split: runs of numbers (deepseek_llm), or each number alone (deepseek_coder).
  auto numbers = [&](Ptr p, Ptr end) {
    detail::isolate(
        p, end,
        [&](Ptr q, Ptr e) -> Ptr {
          const LChar c = at(q, e);
          if (!c.number) return nullptr;
          return kCoder ? q + c.len : run_end<kCoder>(q, e, number);
        },
        emit);
  };
  auto ideographs = [&](Ptr p, Ptr end) {
    detail::isolate(
        p, end, [&](Ptr q, Ptr e) { return cjk(at(q, e)) ? run_end<kCoder>(q, e, cjk) : nullptr; },
        numbers);
  };
  auto trailing_space = [&](Ptr p, Ptr end) {  // deepseek_llm's 4: the white space at the end
    Ptr t = p;                                 // start of the trailing run of white space
    for (Ptr q = p; q < end;) {
      const LChar c = at(q, end);
      q += c.len;
      if (!c.space) t = q;
    }
    if (p < t) ideographs(p, t);
    if (t < end) ideographs(t, end);
  };
  auto punctuation = [&](Ptr p, Ptr end) {
    auto match = [&](Ptr q, Ptr e) { return spaced_run_at<kCoder>(q, e, punct); };
    if constexpr (kCoder)
      detail::isolate(p, end, match, ideographs);
    else
      detail::isolate(p, end, match, trailing_space);
  };
  auto letters = [&](Ptr p, Ptr end) {
    detail::isolate(
        p, end, [&](Ptr q, Ptr e) { return spaced_run_at<kCoder>(q, e, letter); }, punctuation);
  };
  detail::isolate(
      base, base + text.size(),
      [](Ptr q, Ptr) { return *q == '\r' || *q == '\n' ? q + 1 : nullptr; }, letters);
}

}  // namespace

void for_each_piece_deepseek_v1(Scheme scheme, std::string_view text,
                                void (*piece)(void*, std::string_view), void* ctx) {
  if (scheme == Scheme::deepseek_coder) return split<true>(text, piece, ctx);
  split<false>(text, piece, ctx);
}

}  // namespace triad::pretok
