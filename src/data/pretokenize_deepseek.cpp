// deepseek3's split (DeepSeek-V3's and R1's tokenizer.json: a Sequence of three Split
// pre-tokenizers with behavior Isolated, then ByteLevel without its regex), written out by hand
// like the others in triad/data/pretokenize.h. Each split cuts every piece of the one before it
// into its matches and the stretches between them (a stretch of characters no alternative
// starts at is one piece), and no match reaches past the piece it is in:
//   1. \p{N}{1,3}: runs of numbers, in threes from the left;
//   2. [一-龥぀-ゟ゠-ヿ]+: runs of CJK ideographs (U+4E00..U+9FA5) and kana (U+3040..U+30FF);
//   3. leftmost-first, at each position:
//      A  [!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+   ASCII punctuation, ASCII letters
//      B  [^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+              letters and marks, one char before
//      C   ?[\p{P}\p{S}]+[\r\n]*                           punctuation and symbols
//      D  \s*[\r\n]+ | E \s+(?!\S) | F \s+                  white space, as llama3's
// Digits reach split 3 only as pieces of their own (split 1 took them all), where no alternative
// matches them: they stay as split 1 cut them. An ill-formed byte is a character of no class.
#include "triad/data/pretokenize.h"

namespace triad::pretok {
namespace {

using Ptr = const unsigned char*;

// A character's classes for split 3.
struct DChar {
  int len;
  CharClass cls;      // letter, number, space or other (pretokenize.h's)
  bool mark;          // \p{M}
  bool punct_symbol;  // \p{P} or \p{S}
  bool cjk;           // in split 2's class
};

DChar dchar_at(Ptr p, Ptr end) {
  const detail::Char c = detail::char_at(p, end);
  if (*p < 0x80) {
    const bool ps = c.cls == kOther && *p >= 0x21 && *p <= 0x7E;  // ASCII punctuation, symbols
    return {c.len, c.cls, false, ps, false};
  }
  uint32_t cp;
  decode_utf8(p, end, cp);
  if (cp == kInvalidCodePoint) return {c.len, kOther, false, false, false};
  const bool cjk = (cp >= 0x4E00 && cp <= 0x9FA5) || (cp >= 0x3040 && cp <= 0x30FF);
  if (c.cls != kOther) return {c.len, c.cls, false, false, cjk};
  return {c.len, kOther, letter_case(cp) == kMark, is_punct_or_symbol(cp), cjk};
}

bool ascii_letter(unsigned char b) { return (b >= 'a' && b <= 'z') || (b >= 'A' && b <= 'Z'); }
bool newline(unsigned char b) { return b == '\r' || b == '\n'; }

// The end of split 3's match at p (p < end), or null where no alternative starts.
Ptr match_at(Ptr p, Ptr end) {
  const DChar c = dchar_at(p, end);
  // A: one ASCII punctuation or symbol character, then ASCII letters.
  if (*p < 0x80 && c.punct_symbol && p + 1 < end && ascii_letter(p[1])) {
    Ptr q = p + 2;
    while (q < end && ascii_letter(*q)) ++q;
    return q;
  }
  // B: letters and marks, after one character that is none of CR, LF, a letter, punctuation or
  // a symbol (a mark may be that character: the match ends where the run does either way).
  auto letters_end = [&](Ptr q) {
    while (q < end) {
      const DChar n = dchar_at(q, end);
      if (n.cls != kLetter && !n.mark) break;
      q += n.len;
    }
    return q;
  };
  if (c.cls == kLetter || c.mark) return letters_end(p + c.len);
  if (!newline(*p) && !c.punct_symbol && p + c.len < end) {
    const DChar n = dchar_at(p + c.len, end);
    if (n.cls == kLetter || n.mark) return letters_end(p + c.len + n.len);
  }
  // C: an optional space, punctuation and symbols, then CR and LF.
  Ptr q = nullptr;
  if (c.punct_symbol)
    q = p + c.len;
  else if (*p == ' ' && p + 1 < end) {
    const DChar n = dchar_at(p + 1, end);
    if (n.punct_symbol) q = p + 1 + n.len;
  }
  if (q) {
    while (q < end) {
      const DChar n = dchar_at(q, end);
      if (!n.punct_symbol) break;
      q += n.len;
    }
    while (q < end && newline(*q)) ++q;
    return q;
  }
  if (c.cls == kSpace) return detail::space_piece_end(p, end);  // D, E, F
  return nullptr;
}

// Split 3 over [p, end): each match, and each stretch of characters no match starts at.
template <typename Emit>
void split3(Ptr p, Ptr end, Emit&& emit) {
  detail::isolate(p, end, match_at, emit);
}

// Split 2 over [p, end) (a piece of split 1 without numbers): runs of its class, and the
// stretches between them, each through split 3.
template <typename Emit>
void split2(Ptr p, Ptr end, Emit&& emit) {
  while (p < end) {
    const bool cjk = dchar_at(p, end).cjk;
    Ptr q = p;
    while (q < end) {
      const DChar n = dchar_at(q, end);
      if (n.cjk != cjk) break;
      q += n.len;
    }
    split3(p, q, emit);
    p = q;
  }
}

}  // namespace

void for_each_piece_deepseek3(std::string_view text, void (*piece)(void*, std::string_view),
                              void* ctx) {
  const auto* const base = reinterpret_cast<const unsigned char*>(text.data());
  const auto* const end = base + text.size();
  auto emit = [&](Ptr from, Ptr to) {
    piece(ctx, std::string_view(reinterpret_cast<const char*>(from), size_t(to - from)));
  };
  // Split 1: numbers in threes (no later split cuts them: split 2 finds none of its class in
  // them, and split 3 no match); the stretches between them through splits 2 and 3.
  Ptr stretch = base;
  for (Ptr p = base; p < end;) {
    const detail::Char c = detail::char_at(p, end);
    if (c.cls != kNumber) {
      p += c.len;
      continue;
    }
    split2(stretch, p, emit);
    Ptr q = p + c.len;
    for (int k = 1; k < 3 && q < end; ++k) {
      const detail::Char n = detail::char_at(q, end);
      if (n.cls != kNumber) break;
      q += n.len;
    }
    emit(p, q);
    p = stretch = q;
  }
  split2(stretch, end, emit);
}

}  // namespace triad::pretok
