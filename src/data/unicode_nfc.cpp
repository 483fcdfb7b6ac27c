#include "triad/data/unicode_nfc.h"

#include <algorithm>
#include <cstdint>
#include <vector>

#include "nfc_tables.h"
#include "triad/data/pretokenize.h"

namespace triad {
namespace {

// Hangul syllables (Unicode §3.12): S = SBase + (L·VCount + V)·TCount + T.
constexpr uint32_t kSBase = 0xAC00, kLBase = 0x1100, kVBase = 0x1161, kTBase = 0x11A7;
constexpr uint32_t kLCount = 19, kVCount = 21, kTCount = 28, kNCount = kVCount * kTCount,
                   kSCount = kLCount * kNCount;

// A byte of ill-formed UTF-8 in the code point stream: above every code point, class 0, no
// decomposition or composition.
constexpr uint32_t kRawByte = 0x80000000u;

uint8_t combining_class(uint32_t cp) {
  if (cp < 0x300 || cp >= kRawByte) return 0;
  const nfc_data::CombiningRange* first = nfc_data::kCombiningRanges;
  const nfc_data::CombiningRange* last = first + nfc_data::kCombiningRangeCount;
  const auto* r = std::lower_bound(
      first, last, cp, [](const nfc_data::CombiningRange& a, uint32_t v) { return a.last < v; });
  return (r != last && r->first <= cp) ? r->ccc : 0;
}

void decompose(uint32_t cp, std::vector<uint32_t>& out) {
  if (cp >= kSBase && cp < kSBase + kSCount) {
    const uint32_t s = cp - kSBase;
    out.push_back(kLBase + s / kNCount);
    out.push_back(kVBase + (s % kNCount) / kTCount);
    if (s % kTCount != 0) out.push_back(kTBase + s % kTCount);
    return;
  }
  const nfc_data::Decomposition* first = nfc_data::kDecompositions;
  const nfc_data::Decomposition* last = first + nfc_data::kDecompositionCount;
  const auto* d = std::lower_bound(
      first, last, cp, [](const nfc_data::Decomposition& a, uint32_t v) { return a.cp < v; });
  if (d != last && d->cp == cp)
    out.insert(out.end(), d->to, d->to + d->n);
  else
    out.push_back(cp);
}

// The primary composite of a and b, or 0.
uint32_t compose(uint32_t a, uint32_t b) {
  if (a >= kLBase && a < kLBase + kLCount && b >= kVBase && b < kVBase + kVCount)
    return kSBase + ((a - kLBase) * kVCount + (b - kVBase)) * kTCount;
  if (a >= kSBase && a < kSBase + kSCount && (a - kSBase) % kTCount == 0 && b > kTBase &&
      b < kTBase + kTCount)
    return a + (b - kTBase);
  const nfc_data::Composition* first = nfc_data::kCompositions;
  const nfc_data::Composition* last = first + nfc_data::kCompositionCount;
  const auto* c =
      std::lower_bound(first, last, std::make_pair(a, b),
                       [](const nfc_data::Composition& x, std::pair<uint32_t, uint32_t> v) {
                         return x.first != v.first ? x.first < v.first : x.second < v.second;
                       });
  return (c != last && c->first == a && c->second == b) ? c->composite : 0;
}

void append_utf8(uint32_t cp, std::string& out) {
  if (cp >= kRawByte)
    out.push_back(char(cp & 0xFF));
  else
    pretok::encode_utf8(cp, out);
}

// NFC of one segment (composition never reaches across its ends).
void normalize_segment(std::string_view text, std::string& out, std::vector<uint32_t>& buf) {
  buf.clear();
  const auto* p = reinterpret_cast<const unsigned char*>(text.data());
  const auto* end = p + text.size();
  while (p < end) {
    uint32_t cp;
    const int n = pretok::decode_utf8(p, end, cp);
    decompose(cp == pretok::kInvalidCodePoint ? kRawByte | *p : cp, buf);
    p += n;
  }
  // Canonical ordering: each run of nonzero classes sorted by class, stably.
  for (size_t i = 0; i < buf.size();) {
    if (combining_class(buf[i]) == 0) {
      ++i;
      continue;
    }
    size_t j = i;
    while (j < buf.size() && combining_class(buf[j]) != 0) ++j;
    std::stable_sort(
        buf.begin() + std::ptrdiff_t(i), buf.begin() + std::ptrdiff_t(j),
        [](uint32_t a, uint32_t b) { return combining_class(a) < combining_class(b); });
    i = j;
  }
  // Canonical composition: each character joins the last starter when not blocked from it (no
  // character of the same or a higher class between them, or none at all).
  if (!buf.empty()) {
    size_t starter = 0, kept = 1;
    int last_class = combining_class(buf[0]) == 0 ? 0 : 256;
    for (size_t i = 1; i < buf.size(); ++i) {
      const uint32_t ch = buf[i];
      const int cls = combining_class(ch);
      const uint32_t c = last_class < 256 ? compose(buf[starter], ch) : 0;
      if (c != 0 && (last_class < cls || last_class == 0)) {
        buf[starter] = c;
        continue;
      }
      if (cls == 0) {
        starter = kept;
        last_class = 0;
      } else {
        last_class = cls;
      }
      buf[kept++] = ch;
    }
    buf.resize(kept);
  }
  for (const uint32_t cp : buf) append_utf8(cp, out);
}

}  // namespace

void append_nfc(std::string_view text, std::string& out) {
  // Segments end before an ASCII character that an ASCII character (or the end) follows: such a
  // character is a starter that composes with nothing after it and, being the second of no
  // composition, with nothing before; ASCII before it is copied as it is.
  std::vector<uint32_t> buf;
  const size_t n = text.size();
  auto ascii = [&](size_t i) { return static_cast<unsigned char>(text[i]) < 0x80; };
  size_t i = 0;
  while (i < n) {
    size_t j = i;
    while (j < n && ascii(j) && (j + 1 == n || ascii(j + 1))) ++j;
    out.append(text, i, j - i);
    if (j == n) break;
    size_t k = j + 1;  // the segment [j, k): up to the next safe ASCII character
    while (k < n && !(ascii(k) && (k + 1 == n || ascii(k + 1)))) ++k;
    normalize_segment(text.substr(j, k - j), out, buf);
    i = k;
  }
}

}  // namespace triad
