#include "triad/data/pretokenize.h"

#include <algorithm>

namespace triad::pretok {

CharClass char_class(uint32_t cp) {
  const UnicodeRange* const first = kUnicodeRanges;
  const UnicodeRange* const last = kUnicodeRanges + kUnicodeRangeCount;
  // The first range whose end is >= cp.
  const UnicodeRange* r = std::lower_bound(
      first, last, cp, [](const UnicodeRange& a, uint32_t v) { return a.last < v; });
  return (r != last && r->first <= cp) ? r->cls : kOther;
}

LetterCase letter_case(uint32_t cp) {
  const CaseRange* const first = kCaseRanges;
  const CaseRange* const last = kCaseRanges + kCaseRangeCount;
  const CaseRange* r =
      std::lower_bound(first, last, cp, [](const CaseRange& a, uint32_t v) { return a.last < v; });
  return (r != last && r->first <= cp) ? r->kind : kNoCase;
}

bool in_ranges(const CodeRange* first, size_t count, uint32_t cp) {
  const CodeRange* const last = first + count;
  const CodeRange* r =
      std::lower_bound(first, last, cp, [](const CodeRange& a, uint32_t v) { return a.last < v; });
  return r != last && r->first <= cp;
}

bool is_punct_or_symbol(uint32_t cp) {
  return in_ranges(kPunctSymbolRanges, kPunctSymbolRangeCount, cp);
}

bool is_han(uint32_t cp) { return in_ranges(kHanRanges, kHanRangeCount, cp); }

bool is_punct(uint32_t cp) { return in_ranges(kPunctRanges, kPunctRangeCount, cp); }

int decode_utf8(const unsigned char* p, const unsigned char* end, uint32_t& cp) {
  // Well-formed sequences (Unicode Table 3-7); anything else is one invalid byte.
  const unsigned char b0 = p[0];
  const ptrdiff_t avail = end - p;
  auto cont = [](unsigned char b) { return (b & 0xC0) == 0x80; };
  if (b0 < 0x80) {
    cp = b0;
    return 1;
  }
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    if (avail >= 2 && cont(p[1])) {
      cp = (uint32_t(b0 & 0x1F) << 6) | (p[1] & 0x3F);
      return 2;
    }
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    if (avail >= 3 && cont(p[1]) && cont(p[2])) {
      const unsigned char lo = b0 == 0xE0 ? 0xA0 : 0x80;  // no overlong forms
      const unsigned char hi = b0 == 0xED ? 0x9F : 0xBF;  // no surrogates
      if (p[1] >= lo && p[1] <= hi) {
        cp = (uint32_t(b0 & 0x0F) << 12) | (uint32_t(p[1] & 0x3F) << 6) | (p[2] & 0x3F);
        return 3;
      }
    }
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    if (avail >= 4 && cont(p[1]) && cont(p[2]) && cont(p[3])) {
      const unsigned char lo = b0 == 0xF0 ? 0x90 : 0x80;  // no overlong forms
      const unsigned char hi = b0 == 0xF4 ? 0x8F : 0xBF;  // nothing above U+10FFFF
      if (p[1] >= lo && p[1] <= hi) {
        cp = (uint32_t(b0 & 0x07) << 18) | (uint32_t(p[1] & 0x3F) << 12) |
             (uint32_t(p[2] & 0x3F) << 6) | (p[3] & 0x3F);
        return 4;
      }
    }
  }
  cp = kInvalidCodePoint;
  return 1;
}

void encode_utf8(uint32_t cp, std::string& out) {
  if (cp < 0x80) {
    out.push_back(char(cp));
  } else if (cp < 0x800) {
    out.push_back(char(0xC0 | (cp >> 6)));
    out.push_back(char(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back(char(0xE0 | (cp >> 12)));
    out.push_back(char(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(char(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(char(0xF0 | (cp >> 18)));
    out.push_back(char(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(char(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(char(0x80 | (cp & 0x3F)));
  }
}

std::vector<std::string_view> split(std::string_view text, Scheme scheme) {
  std::vector<std::string_view> out;
  for_each_piece(scheme, text, [&](std::string_view s) { out.push_back(s); });
  return out;
}

const char* scheme_name(Scheme s) {
  switch (s) {
    case Scheme::gpt2:
      return "gpt2";
    case Scheme::llama3:
      return "llama3";
    case Scheme::qwen2:
      return "qwen2";
    case Scheme::gpt2_digits:
      return "gpt2_digits";
    case Scheme::tekken:
      return "tekken";
    case Scheme::deepseek3:
      return "deepseek3";
    case Scheme::o200k:
      return "o200k";
    case Scheme::kimi:
      return "kimi";
    case Scheme::deepseek_llm:
      return "deepseek_llm";
    case Scheme::deepseek_coder:
      return "deepseek_coder";
  }
  return "?";
}

std::optional<Scheme> parse_scheme(std::string_view name) {
  for (const Scheme s : {Scheme::gpt2, Scheme::llama3, Scheme::qwen2, Scheme::gpt2_digits,
                         Scheme::tekken, Scheme::deepseek3, Scheme::o200k, Scheme::kimi,
                         Scheme::deepseek_llm, Scheme::deepseek_coder})
    if (name == scheme_name(s)) return s;
  return std::nullopt;
}

}  // namespace triad::pretok
