// Pre-tokenization, written out by hand: the split that a tokenizer's regex makes of a text
// before BPE (leftmost-first alternation, as tiktoken's fancy-regex and Hugging Face's
// Oniguruma do), on UTF-8 bytes. Ten schemes, each named after the first model family that
// used it:
//   gpt2    's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
//   llama3  (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|
//            ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
//           (tiktoken's cl100k_base pattern, also Llama 3's)
//   qwen2   llama3's with \p{N} in place of \p{N}{1,3}: every digit is a piece of its own
//   gpt2_digits  every \p{N} character a piece of its own, and gpt2's split of each stretch
//           between them, ends included as the text's ends (Hugging Face's Digits with
//           individual_digits, then ByteLevel's regex: SmolLM's tokenizer)
//   tekken  [^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|
//           [^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}|
//            ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+
//           (Mistral's Tekken tokenizer: Mistral NeMo, Small 3, Ministral; pretokenize_cased.cpp)
//   o200k   tekken's first two alternatives, each followed by (?i:'s|'t|'re|'ve|'m|'ll|'d)?, then
//           \p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+
//           (tiktoken's o200k_base: GPT-4o's, gpt-oss's; pretokenize_cased.cpp)
//   kimi    [\p{Han}]+ first, then o200k's with Han taken out of tekken's two letter classes
//           ([\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]], likewise the lower) and [\r\n]* after
//           punctuation (Kimi K2's tiktoken pattern; pretokenize_cased.cpp)
//   deepseek3  three splits in turn, each of the pieces of the one before (Hugging Face's
//           Sequence of Split pre-tokenizers, Isolated: the text between matches is a piece too):
//             \p{N}{1,3}, then [一-龥぀-ゟ゠-ヿ]+ (U+4E00..U+9FA5, U+3040..U+30FF), then
//             [!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+|
//              ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
//           (DeepSeek-V3's and R1's tokenizer; pretokenize_deepseek.cpp)
//   deepseek_llm  six splits in turn, likewise: [\r\n], \s?[cased letters]+,
//           \s?[!-/:-~！-／：-～‘-‟　-。]+, \s+$, [一-龥ࠀ-一가-퟿]+, \p{N}+
//           (DeepSeek LLM's tokenizer, DeepSeek-V2's; pretokenize_deepseek_v1.cpp)
//   deepseek_coder  five splits in turn, likewise: [\r\n], \s?\p{L}+, \s?\p{P}+,
//           [一-龥ࠀ-一가-퟿]+, \p{N} (DeepSeek Coder's tokenizer;
//           pretokenize_deepseek_v1.cpp)
// Classes are Unicode 16.0 (src/data/unicode_tables.cpp, generated), as in the Rust regex crate
// that tiktoken uses (deepseek3's reference, Hugging Face's tokenizers, matches with Oniguruma's
// older tables: the two differ on code points categorized after Unicode 14). A byte that is not
// part of a well-formed UTF-8 sequence (stray continuation, overlong form, surrogate, > U+10FFFF,
// truncated sequence) counts as one character of class 'other', so the pieces always cover the
// input exactly, whatever it is.
//
// For every scheme, a position between an ASCII non-space byte and an ASCII space, tab, VT or
// FF byte is a piece boundary that does not depend on the text around it: no piece holds a
// non-space followed by one of those (punctuation pieces do take a CR or LF after them), and no
// rule looks behind. Except that for deepseek_llm the byte must be printable, and for
// deepseek_coder a letter, digit or punctuation: their control characters (and deepseek_coder's
// symbols) belong to no class and keep the spaces beside them ("\x01 \x01", "+ +" are one piece).
// shard_writer.cpp cuts text there to encode it in parallel.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

namespace triad::pretok {

enum class Scheme : uint8_t {
  gpt2,
  llama3,
  qwen2,
  gpt2_digits,
  tekken,
  deepseek3,
  o200k,
  kimi,
  deepseek_llm,
  deepseek_coder
};
// "gpt2", "llama3", "qwen2", "gpt2_digits", "tekken", "deepseek3", "o200k", "kimi",
// "deepseek_llm", "deepseek_coder"; parse_scheme gives nullopt for any other.
const char* scheme_name(Scheme s);
std::optional<Scheme> parse_scheme(std::string_view name);

enum CharClass : uint8_t { kOther = 0, kLetter = 1, kNumber = 2, kSpace = 3 };

struct UnicodeRange {
  uint32_t first, last;
  CharClass cls;
};
extern const UnicodeRange kUnicodeRanges[];  // sorted, disjoint; the rest is kOther
extern const size_t kUnicodeRangeCount;

// The class of a code point (kOther for anything outside the tables).
CharClass char_class(uint32_t cp);

// Letter case and marks, for tekken, o200k and kimi: Lu Lt upper, Ll lower, M* marks; kNoCase for
// the rest (of the letters, Lm and Lo, which their patterns count as both cases).
enum LetterCase : uint8_t { kNoCase = 0, kUpperCase = 1, kLowerCase = 2, kMark = 3 };
struct CaseRange {
  uint32_t first, last;
  LetterCase kind;
};
extern const CaseRange kCaseRanges[];  // sorted, disjoint
extern const size_t kCaseRangeCount;
LetterCase letter_case(uint32_t cp);

// tekken's, o200k's or kimi's split (not a template: pretokenize_cased.cpp), calling
// piece(ctx, s) per piece.
void for_each_piece_cased(Scheme scheme, std::string_view text,
                          void (*piece)(void*, std::string_view), void* ctx);

// Punctuation and symbols (P* S*), for deepseek3.
struct CodeRange {
  uint32_t first, last;
};
// Whether cp lies in one of `count` sorted, disjoint ranges.
bool in_ranges(const CodeRange* first, size_t count, uint32_t cp);
extern const CodeRange kPunctSymbolRanges[];  // sorted, disjoint
extern const size_t kPunctSymbolRangeCount;
bool is_punct_or_symbol(uint32_t cp);
// The Han script (\p{Han}), for kimi.
extern const CodeRange kHanRanges[];  // sorted, disjoint
extern const size_t kHanRangeCount;
bool is_han(uint32_t cp);
// Punctuation (P*), for deepseek_coder.
extern const CodeRange kPunctRanges[];  // sorted, disjoint
extern const size_t kPunctRangeCount;
bool is_punct(uint32_t cp);

// deepseek3's split (pretokenize_deepseek.cpp), likewise.
void for_each_piece_deepseek3(std::string_view text, void (*piece)(void*, std::string_view),
                              void* ctx);
// deepseek_llm's or deepseek_coder's split (pretokenize_deepseek_v1.cpp), likewise.
void for_each_piece_deepseek_v1(Scheme scheme, std::string_view text,
                                void (*piece)(void*, std::string_view), void* ctx);

// Decodes one character at p (p < end): returns its length in bytes (1 to 4) and sets cp; an
// ill-formed byte returns 1 and sets cp = kInvalidCodePoint.
inline constexpr uint32_t kInvalidCodePoint = 0xFFFFFFFFu;
int decode_utf8(const unsigned char* p, const unsigned char* end, uint32_t& cp);
// Appends code point cp (at most U+10FFFF) as UTF-8.
void encode_utf8(uint32_t cp, std::string& out);

// Calls piece(std::string_view) for each pre-token of text, in order; the pieces are views
// into text and concatenate to it. The first form is gpt2's.
template <typename F>
void for_each_piece(std::string_view text, F&& piece);
template <typename F>
void for_each_piece(Scheme scheme, std::string_view text, F&& piece);

// The pre-tokens as a vector (for tests and tools).
std::vector<std::string_view> split(std::string_view text, Scheme scheme = Scheme::gpt2);

// ---- implementation ----

namespace detail {

struct Char {
  int len;
  CharClass cls;
};

inline Char char_at(const unsigned char* p, const unsigned char* end) {
  const unsigned char b = *p;
  if (b < 0x80) {
    // ASCII: letters, digits, the White_Space controls and the space; the rest is 'other'.
    static constexpr auto table = [] {
      struct T {
        CharClass c[128];
      } t{};
      for (int i = 0; i < 128; ++i) {
        if ((i >= 'a' && i <= 'z') || (i >= 'A' && i <= 'Z'))
          t.c[i] = kLetter;
        else if (i >= '0' && i <= '9')
          t.c[i] = kNumber;
        else if (i == ' ' || (i >= 0x09 && i <= 0x0D))
          t.c[i] = kSpace;
        else
          t.c[i] = kOther;
      }
      return t;
    }();
    return {1, table.c[b]};
  }
  uint32_t cp;
  const int len = decode_utf8(p, end, cp);
  return {len, cp == kInvalidCodePoint ? kOther : char_class(cp)};
}

// The end of the run of characters of class cls that starts at q.
inline const unsigned char* run_end(const unsigned char* q, const unsigned char* end,
                                    CharClass cls) {
  while (q < end) {
    const Char c = char_at(q, end);
    if (c.cls != cls) break;
    q += c.len;
  }
  return q;
}

// Hugging Face's Split with behavior Isolated, for the schemes that are sequences of them: cuts
// [p, end) into the matches of match_at (the end of the match at q, or null where none starts
// there) and the stretches between them, handing each to next in order.
template <typename Match, typename Next>
void isolate(const unsigned char* p, const unsigned char* end, Match&& match_at, Next&& next) {
  const unsigned char* gap = p;  // start of the current stretch without a match
  while (p < end) {
    const unsigned char* m = match_at(p, end);
    if (!m) {
      p += char_at(p, end).len;
      continue;
    }
    if (gap < p) next(gap, p);
    next(p, m);
    p = gap = m;
  }
  if (gap < end) next(gap, end);
}

// The end of the piece of \s*[\r\n]+|\s+(?!\S)|\s+ at p (a white space character): up to and
// with the run's last CR or LF if it has one; else the whole run at the end of the text, and
// before a non-space the run less its last character when that leaves at least one, else the
// single character.
inline const unsigned char* space_piece_end(const unsigned char* p, const unsigned char* end) {
  const unsigned char* last = p;  // start of the run's last character
  const unsigned char* after_newline = nullptr;
  const unsigned char* q = p;
  while (q < end) {
    const Char n = char_at(q, end);
    if (n.cls != kSpace) break;
    last = q;
    q += n.len;
    if (*last == '\r' || *last == '\n') after_newline = q;
  }
  if (after_newline) return after_newline;
  return (q < end && last > p) ? last : q;
}

// The end of (?i:'s|'t|'re|'ve|'m|'ll|'d) at q (q < end), or q where none starts there:
// case-insensitive, and under Unicode simple case folding 's' also matches U+017F (long s, bytes
// C5 BF). llama3's, qwen2's, o200k's and kimi's contractions.
inline const unsigned char* contraction_end(const unsigned char* q, const unsigned char* end) {
  if (*q != '\'' || end - q < 2) return q;
  auto ascii_letter = [](unsigned char b) {
    return (b >= 'a' && b <= 'z') || (b >= 'A' && b <= 'Z');
  };
  const unsigned char a = q[1] | 0x20;  // ASCII lower case (a non-letter stays no match)
  if (ascii_letter(q[1]) && (a == 's' || a == 't' || a == 'm' || a == 'd')) return q + 2;
  if (end - q < 3) return q;
  if (q[1] == 0xC5 && q[2] == 0xBF) return q + 3;
  const unsigned char b = q[2] | 0x20;
  if (ascii_letter(q[1]) && ascii_letter(q[2]) &&
      ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')))
    return q + 3;
  return q;
}

}  // namespace detail

template <typename F>
void for_each_piece(std::string_view text, F&& piece) {
  const auto* const base = reinterpret_cast<const unsigned char*>(text.data());
  const auto* const end = base + text.size();
  const auto* p = base;
  auto emit = [&](const unsigned char* from, const unsigned char* to) {
    piece(std::string_view(reinterpret_cast<const char*>(from), size_t(to - from)));
  };
  auto run_end = [&](const unsigned char* q, CharClass cls) {
    return detail::run_end(q, end, cls);
  };
  while (p < end) {
    // 's 't 're 've 'm 'll 'd (lowercase only, as in GPT-2).
    if (*p == '\'' && end - p >= 2) {
      const unsigned char a = p[1];
      if (a == 's' || a == 't' || a == 'm' || a == 'd') {
        emit(p, p + 2);
        p += 2;
        continue;
      }
      if (end - p >= 3 &&
          ((a == 'r' && p[2] == 'e') || (a == 'v' && p[2] == 'e') || (a == 'l' && p[2] == 'l'))) {
        emit(p, p + 3);
        p += 3;
        continue;
      }
    }
    const detail::Char c = detail::char_at(p, end);
    if (c.cls != kSpace) {
      // \p{L}+ | \p{N}+ | [^\s\p{L}\p{N}]+
      const auto* q = run_end(p + c.len, c.cls);
      emit(p, q);
      p = q;
      continue;
    }
    if (*p == ' ' && p + 1 < end) {
      // " ?" before a letter, number or other run.
      const detail::Char n = detail::char_at(p + 1, end);
      if (n.cls != kSpace) {
        const auto* q = run_end(p + 1 + n.len, n.cls);
        emit(p, q);
        p = q;
        continue;
      }
    }
    // \s+(?!\S) | \s+ : the whole run at the end of the text; before a non-space, the run
    // less its last character when that leaves at least one, else the single character.
    const auto* last = p;  // start of the run's last character
    const auto* q = p + c.len;
    while (q < end) {
      const detail::Char n = detail::char_at(q, end);
      if (n.cls != kSpace) break;
      last = q;
      q += n.len;
    }
    if (q < end && last > p) q = last;
    emit(p, q);
    p = q;
  }
}

// llama3 and qwen2 (max_digits 3 and 1).
template <typename F>
void for_each_piece_cl100k(std::string_view text, int max_digits, F&& piece) {
  const auto* const base = reinterpret_cast<const unsigned char*>(text.data());
  const auto* const end = base + text.size();
  const auto* p = base;
  auto emit = [&](const unsigned char* from, const unsigned char* to) {
    piece(std::string_view(reinterpret_cast<const char*>(from), size_t(to - from)));
  };
  auto run_end = [&](const unsigned char* q, CharClass cls) {
    return detail::run_end(q, end, cls);
  };
  auto newline_run_end = [&](const unsigned char* q) {
    while (q < end && (*q == '\r' || *q == '\n')) ++q;
    return q;
  };
  while (p < end) {
    // (?i:'s|'t|'re|'ve|'m|'ll|'d)
    if (const auto* q = detail::contraction_end(p, end); q != p) {
      emit(p, q);
      p = q;
      continue;
    }
    const detail::Char c = detail::char_at(p, end);
    // [^\r\n\p{L}\p{N}]?\p{L}+
    if (c.cls == kLetter) {
      const auto* q = run_end(p + c.len, kLetter);
      emit(p, q);
      p = q;
      continue;
    }
    if (c.cls != kNumber && *p != '\r' && *p != '\n' && p + c.len < end) {
      const detail::Char n = detail::char_at(p + c.len, end);
      if (n.cls == kLetter) {
        const auto* q = run_end(p + c.len + n.len, kLetter);
        emit(p, q);
        p = q;
        continue;
      }
    }
    // \p{N}{1,max_digits}
    if (c.cls == kNumber) {
      const auto* q = p + c.len;
      for (int k = 1; k < max_digits && q < end; ++k) {
        const detail::Char n = detail::char_at(q, end);
        if (n.cls != kNumber) break;
        q += n.len;
      }
      emit(p, q);
      p = q;
      continue;
    }
    //  ?[^\s\p{L}\p{N}]+[\r\n]*
    if (c.cls == kOther) {
      const auto* q = newline_run_end(run_end(p + c.len, kOther));
      emit(p, q);
      p = q;
      continue;
    }
    if (*p == ' ' && p + 1 < end) {
      const detail::Char n = detail::char_at(p + 1, end);
      if (n.cls == kOther) {
        const auto* q = newline_run_end(run_end(p + 1 + n.len, kOther));
        emit(p, q);
        p = q;
        continue;
      }
    }
    // \s*[\r\n]+ | \s+(?!\S) | \s+
    const auto* q = detail::space_piece_end(p, end);
    emit(p, q);
    p = q;
  }
}

// gpt2_digits: each number character alone, gpt2's split between them.
template <typename F>
void for_each_piece_digits(std::string_view text, F&& piece) {
  const auto* const base = reinterpret_cast<const unsigned char*>(text.data());
  const auto* const end = base + text.size();
  const auto* stretch = base;  // start of the stretch without numbers
  auto flush = [&](const unsigned char* to) {
    if (to > stretch)
      for_each_piece(std::string_view(reinterpret_cast<const char*>(stretch), size_t(to - stretch)),
                     piece);
  };
  for (const auto* p = base; p < end;) {
    const detail::Char c = detail::char_at(p, end);
    if (c.cls == kNumber) {
      flush(p);
      piece(std::string_view(reinterpret_cast<const char*>(p), size_t(c.len)));
      stretch = p + c.len;
    }
    p += c.len;
  }
  flush(end);
}

template <typename F>
void for_each_piece(Scheme scheme, std::string_view text, F&& piece) {
  switch (scheme) {
    case Scheme::gpt2:
      return for_each_piece(text, piece);
    case Scheme::llama3:
      return for_each_piece_cl100k(text, 3, piece);
    case Scheme::qwen2:
      return for_each_piece_cl100k(text, 1, piece);
    case Scheme::gpt2_digits:
      return for_each_piece_digits(text, piece);
    case Scheme::tekken:
    case Scheme::o200k:
    case Scheme::kimi:
    case Scheme::deepseek3:
    case Scheme::deepseek_llm:
    case Scheme::deepseek_coder: {
      using Fn = std::remove_reference_t<F>;
      auto thunk = [](void* ctx, std::string_view s) { (*static_cast<Fn*>(ctx))(s); };
      void* const ctx = const_cast<void*>(static_cast<const void*>(&piece));
      if (scheme == Scheme::deepseek3) return for_each_piece_deepseek3(text, thunk, ctx);
      if (scheme == Scheme::deepseek_llm || scheme == Scheme::deepseek_coder)
        return for_each_piece_deepseek_v1(scheme, text, thunk, ctx);
      return for_each_piece_cased(scheme, text, thunk, ctx);
    }
  }
}

}  // namespace triad::pretok
