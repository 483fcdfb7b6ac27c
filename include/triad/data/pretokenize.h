// GPT-2 pre-tokenization, written out by hand: the split that GPT-2's regex
//   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
// makes of a text (leftmost-first alternation, as tiktoken's fancy-regex does), on UTF-8
// bytes. Classes are Unicode 16.0 (src/data/unicode_tables.cpp, generated), as in the Rust
// regex crate that tiktoken uses. A byte that is not part of a well-formed UTF-8 sequence
// (stray continuation, overlong form, surrogate, > U+10FFFF, truncated sequence) counts as one
// character of class 'other', so the pieces always cover the input exactly, whatever it is.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>
#include <vector>

namespace triad::pretok {

enum CharClass : uint8_t { kOther = 0, kLetter = 1, kNumber = 2, kSpace = 3 };

struct UnicodeRange {
  uint32_t first, last;
  CharClass cls;
};
extern const UnicodeRange kUnicodeRanges[];  // sorted, disjoint; the rest is kOther
extern const size_t kUnicodeRangeCount;

// The class of a code point (kOther for anything outside the tables).
CharClass char_class(uint32_t cp);

// Decodes one character at p (p < end): returns its length in bytes (1 to 4) and sets cp; an
// ill-formed byte returns 1 and sets cp = kInvalidCodePoint.
inline constexpr uint32_t kInvalidCodePoint = 0xFFFFFFFFu;
int decode_utf8(const unsigned char* p, const unsigned char* end, uint32_t& cp);

// Calls piece(std::string_view) for each pre-token of text, in order; the pieces are views
// into text and concatenate to it.
template <typename F>
void for_each_piece(std::string_view text, F&& piece);

// The pre-tokens as a vector (for tests and tools).
std::vector<std::string_view> split(std::string_view text);

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

}  // namespace detail

template <typename F>
void for_each_piece(std::string_view text, F&& piece) {
  const auto* const base = reinterpret_cast<const unsigned char*>(text.data());
  const auto* const end = base + text.size();
  const auto* p = base;
  auto emit = [&](const unsigned char* from, const unsigned char* to) {
    piece(std::string_view(reinterpret_cast<const char*>(from), size_t(to - from)));
  };
  // Returns the end of the run of class cls that starts at q.
  auto run_end = [&](const unsigned char* q, CharClass cls) {
    while (q < end) {
      const detail::Char c = detail::char_at(q, end);
      if (c.cls != cls) break;
      q += c.len;
    }
    return q;
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

}  // namespace triad::pretok
