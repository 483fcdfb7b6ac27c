// tekken's split (Mistral's Tekken tokenizer), written out by hand like the others in
// triad/data/pretokenize.h. Its first two alternatives tell letters by case:
//   1. A? U* L+      2. A? U+ L*
// with A = [^\r\n\p{L}\p{N}], U = [\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}], L = [\p{Ll}\p{Lm}\p{Lo}\p{M}].
// A backtracking engine (tiktoken's fancy-regex) tries alternative 1 with A taken, then without,
// then alternative 2 likewise. U and L share Lm, Lo and the marks, so U* may have to give back
// characters for L+: the match then ends after the last character of the U run that is also in
// L. The remaining alternatives are \p{N}, ` ?[^\s\p{L}\p{N}]+[\r\n/]*` and llama3's white space.
#include "triad/data/pretokenize.h"

namespace triad::pretok {
namespace {

struct TChar {
  int len;
  CharClass cls;
  bool upper, lower;  // in U, in L
};

TChar tchar_at(const unsigned char* p, const unsigned char* end) {
  const detail::Char c = detail::char_at(p, end);
  if (*p < 0x80) {
    const bool up = *p >= 'A' && *p <= 'Z', low = *p >= 'a' && *p <= 'z';
    return {c.len, c.cls, up, low};
  }
  if (c.cls != kLetter && c.cls != kOther) return {c.len, c.cls, false, false};
  uint32_t cp;
  decode_utf8(p, end, cp);
  const LetterCase k = cp == kInvalidCodePoint ? kNoCase : letter_case(cp);
  if (c.cls == kOther) return {c.len, c.cls, k == kMark, k == kMark};
  return {c.len, c.cls, k != kLowerCase, k != kUpperCase};  // Lm, Lo (kNoCase): both
}

// What both alternatives need from q: the end of the maximal U run, the end of its last character
// that is also in L (null if none), and the end of the L run after the U run.
struct Scan {
  const unsigned char* u_end;
  const unsigned char* last_both_end;
  const unsigned char* l_end;
};

Scan scan(const unsigned char* q, const unsigned char* end) {
  Scan s{q, nullptr, q};
  while (s.u_end < end) {
    const TChar c = tchar_at(s.u_end, end);
    if (!c.upper) break;
    s.u_end += c.len;
    if (c.lower) s.last_both_end = s.u_end;
  }
  s.l_end = s.u_end;
  while (s.l_end < end) {
    const TChar c = tchar_at(s.l_end, end);
    if (!c.lower) break;
    s.l_end += c.len;
  }
  return s;
}

// A? U* L+ from q: its end, or null.
const unsigned char* upper_then_lower(const Scan& s) {
  if (s.l_end > s.u_end) return s.l_end;
  return s.last_both_end;
}

// A? U+ L* from q: its end, or null.
const unsigned char* upper_run(const unsigned char* q, const Scan& s) {
  return s.u_end > q ? s.l_end : nullptr;
}

}  // namespace

void for_each_piece_tekken(std::string_view text, void (*piece)(void*, std::string_view),
                           void* ctx) {
  const auto* const base = reinterpret_cast<const unsigned char*>(text.data());
  const auto* const end = base + text.size();
  const auto* p = base;
  auto emit = [&](const unsigned char* to) {
    piece(ctx, std::string_view(reinterpret_cast<const char*>(p), size_t(to - p)));
    p = to;
  };
  while (p < end) {
    const TChar c = tchar_at(p, end);
    const bool a = c.cls != kLetter && c.cls != kNumber && *p != '\r' && *p != '\n';
    // Alternatives 1 then 2, each with A taken first. A scan from p itself can match only if
    // p is a letter or a mark, and is made only when the scan after A did not match already.
    const Scan with_a = a && p + c.len < end ? scan(p + c.len, end) : Scan{};
    const unsigned char* m = with_a.u_end ? upper_then_lower(with_a) : nullptr;
    Scan without_a{};
    if (!m && (c.upper || c.lower)) {
      without_a = scan(p, end);
      m = upper_then_lower(without_a);
    }
    if (!m && with_a.u_end) m = upper_run(p + c.len, with_a);
    if (!m && without_a.u_end) m = upper_run(p, without_a);
    if (m) {
      emit(m);
      continue;
    }
    if (c.cls == kNumber) {  // \p{N}
      emit(p + c.len);
      continue;
    }
    //  ?[^\s\p{L}\p{N}]+[\r\n/]*
    const unsigned char* q = nullptr;
    if (c.cls == kOther)
      q = p + c.len;
    else if (*p == ' ' && p + 1 < end && detail::char_at(p + 1, end).cls == kOther)
      q = p + 1 + detail::char_at(p + 1, end).len;
    if (q) {
      q = detail::run_end(q, end, kOther);
      while (q < end && (*q == '\r' || *q == '\n' || *q == '/')) ++q;
      emit(q);
      continue;
    }
    emit(detail::space_piece_end(p, end));  // \s*[\r\n]+ | \s+(?!\S) | \s+
  }
}

}  // namespace triad::pretok
