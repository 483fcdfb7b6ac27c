// The splits that tell letters by case (tekken's, o200k's, kimi's), written out by hand like the
// others in triad/data/pretokenize.h. Their letter alternatives are
//   1. A? U* L+ S?      2. A? U+ L* S?
// with A = [^\r\n\p{L}\p{N}], U = [\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}], L = [\p{Ll}\p{Lm}\p{Lo}\p{M}]
// and S = (?i:'s|'t|'re|'ve|'m|'ll|'d) (o200k and kimi; tekken has no S). A backtracking engine
// (tiktoken's fancy-regex) tries alternative 1 with A taken, then without, then alternative 2
// likewise. U and L share Lm, Lo and the marks, so U* may have to give back characters for L+:
// the match then ends after the last character of the U run that is also in L. S? never fails,
// so it only extends the letters' match where a contraction follows it. kimi takes the Han script
// out of U and L and tries [\p{Han}]+ before everything else. The remaining alternatives are
// \p{N} (tekken) or \p{N}{1,3}, ` ?[^\s\p{L}\p{N}]+` followed by [\r\n/]* (tekken, o200k) or
// [\r\n]* (kimi), and llama3's white space.
#include "triad/data/pretokenize.h"

namespace triad::pretok {
namespace {

using Ptr = const unsigned char*;

struct Rules {
  bool han_first;     // [\p{Han}]+ first, Han out of U and L
  bool contractions;  // S? after the letters
  int max_digits;     // \p{N}{1,max_digits}
  bool slash;         // '/' among the characters after punctuation
};

Rules rules_of(Scheme s) {
  switch (s) {
    case Scheme::o200k:
      return {false, true, 3, true};
    case Scheme::kimi:
      return {true, true, 3, false};
    default:  // tekken
      return {false, false, 1, true};
  }
}

struct TChar {
  int len;
  CharClass cls;
  bool upper, lower;  // in U, in L
  bool han;           // \p{Han} (only asked under han_first)
};

TChar tchar_at(Ptr p, Ptr end, bool ask_han) {
  const detail::Char c = detail::char_at(p, end);
  if (*p < 0x80) {
    const bool up = *p >= 'A' && *p <= 'Z', low = *p >= 'a' && *p <= 'z';
    return {c.len, c.cls, up, low, false};
  }
  const bool cased = c.cls == kLetter || c.cls == kOther;  // (marks are 'other')
  if (!cased && !ask_han) return {c.len, c.cls, false, false, false};
  uint32_t cp;
  decode_utf8(p, end, cp);
  if (cp == kInvalidCodePoint) return {c.len, kOther, false, false, false};
  if (ask_han && is_han(cp)) return {c.len, c.cls, false, false, true};
  if (!cased) return {c.len, c.cls, false, false, false};
  const LetterCase k = letter_case(cp);
  if (c.cls == kOther) return {c.len, c.cls, k == kMark, k == kMark, false};
  return {c.len, c.cls, k != kLowerCase, k != kUpperCase, false};  // Lm, Lo (kNoCase): both
}

// What both alternatives need from q: the end of the maximal U run, the end of its last character
// that is also in L (null if none), and the end of the L run after the U run.
struct Scan {
  Ptr u_end;
  Ptr last_both_end;
  Ptr l_end;
};

Scan scan(Ptr q, Ptr end, bool ask_han) {
  Scan s{q, nullptr, q};
  while (s.u_end < end) {
    const TChar c = tchar_at(s.u_end, end, ask_han);
    if (!c.upper) break;
    s.u_end += c.len;
    if (c.lower) s.last_both_end = s.u_end;
  }
  s.l_end = s.u_end;
  while (s.l_end < end) {
    const TChar c = tchar_at(s.l_end, end, ask_han);
    if (!c.lower) break;
    s.l_end += c.len;
  }
  return s;
}

// A? U* L+ from q: its end, or null.
Ptr upper_then_lower(const Scan& s) {
  if (s.l_end > s.u_end) return s.l_end;
  return s.last_both_end;
}

// A? U+ L* from q: its end, or null.
Ptr upper_run(Ptr q, const Scan& s) { return s.u_end > q ? s.l_end : nullptr; }

}  // namespace

void for_each_piece_cased(Scheme scheme, std::string_view text,
                          void (*piece)(void*, std::string_view), void* ctx) {
  const Rules r = rules_of(scheme);
  const bool han = r.han_first;
  const auto* const base = reinterpret_cast<Ptr>(text.data());
  const auto* const end = base + text.size();
  Ptr p = base;
  auto emit = [&](Ptr to) {
    piece(ctx, std::string_view(reinterpret_cast<const char*>(p), size_t(to - p)));
    p = to;
  };
  while (p < end) {
    const TChar c = tchar_at(p, end, han);
    if (c.han) {  // [\p{Han}]+
      Ptr q = p + c.len;
      while (q < end) {
        const TChar n = tchar_at(q, end, true);
        if (!n.han) break;
        q += n.len;
      }
      emit(q);
      continue;
    }
    const bool a = c.cls != kLetter && c.cls != kNumber && *p != '\r' && *p != '\n';
    // Alternatives 1 then 2, each with A taken first. A scan from p itself can match only if
    // p is in U or L, and is made only when the scan after A did not match already.
    const Scan with_a = a && p + c.len < end ? scan(p + c.len, end, han) : Scan{};
    Ptr m = with_a.u_end ? upper_then_lower(with_a) : nullptr;
    Scan without_a{};
    if (!m && (c.upper || c.lower)) {
      without_a = scan(p, end, han);
      m = upper_then_lower(without_a);
    }
    if (!m && with_a.u_end) m = upper_run(p + c.len, with_a);
    if (!m && without_a.u_end) m = upper_run(p, without_a);
    if (m) {
      emit(r.contractions && m < end ? detail::contraction_end(m, end) : m);
      continue;
    }
    if (c.cls == kNumber) {  // \p{N}{1,max_digits}
      Ptr q = p + c.len;
      for (int k = 1; k < r.max_digits && q < end; ++k) {
        const detail::Char n = detail::char_at(q, end);
        if (n.cls != kNumber) break;
        q += n.len;
      }
      emit(q);
      continue;
    }
    //  ?[^\s\p{L}\p{N}]+ then [\r\n/]* or [\r\n]*
    Ptr q = nullptr;
    if (c.cls == kOther)
      q = p + c.len;
    else if (*p == ' ' && p + 1 < end && detail::char_at(p + 1, end).cls == kOther)
      q = p + 1 + detail::char_at(p + 1, end).len;
    if (q) {
      q = detail::run_end(q, end, kOther);
      while (q < end && (*q == '\r' || *q == '\n' || (r.slash && *q == '/'))) ++q;
      emit(q);
      continue;
    }
    emit(detail::space_piece_end(p, end));  // \s*[\r\n]+ | \s+(?!\S) | \s+
  }
}

}  // namespace triad::pretok
