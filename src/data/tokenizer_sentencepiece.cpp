// SentencePiece-style BPE (Llama 2's, Mistral's): the pieces and merges files, and encoding.
//
// Why a merge table rather than SentencePiece's rule "merge the adjacent pair whose join is a
// piece, highest score first": Hugging Face's BPE merges by its list of merges, and the two
// differ only in which pairs merge and in what order. A table of (left, right) -> (rank, result)
// holds both: triad-convert writes SentencePiece's rule as every split of every piece ranked by
// the piece's score (equal scores, equal ranks), and Hugging Face's as its list.
#include <algorithm>
#include <filesystem>
#include <limits>
#include <unordered_map>

#include "tokenizer_files.h"
#include "triad/core/error.h"
#include "triad/data/pretokenize.h"
#include "triad/data/tokenizer.h"
#include "triad/data/unicode_nfc.h"

namespace triad {
namespace {

using tokenizer_files::base64_decode;
using tokenizer_files::excerpt;
using tokenizer_files::for_each_line;
using tokenizer_files::read_whole;
using tokenizer_files::words_of;

constexpr std::string_view kLowerBlock = "\xE2\x96\x81";  // U+2581, SentencePiece's space

uint64_t merge_key(int32_t left, int32_t right) {
  return (uint64_t(uint32_t(left) + 1) << 32) | uint64_t(uint32_t(right) + 1);
}

uint64_t mix(uint64_t k) {
  k ^= k >> 33;
  k *= 0xFF51AFD7ED558CCDull;
  k ^= k >> 33;
  return k;
}

std::string hex_byte(unsigned b) {
  const char* digits = "0123456789abcdef";
  return std::string("0x") + digits[(b >> 4) & 15] + digits[b & 15];
}

// The file's text, which must end its last line: a file cut inside the last line can still
// parse (a merge's rank 31726 cut to 31), and the writers end every line.
std::string whole_lines(const std::string& path, const std::string& where) {
  std::string text = read_whole(path, where);
  TRIAD_CHECK(text.empty() || text.back() == '\n', where,
              ": the last line has no line end: the file is cut short (truncated?)");
  return text;
}

}  // namespace

Tokenizer Tokenizer::from_pieces(const std::string& pieces_path, int64_t pieces_count,
                                 const std::string& merges_path, int64_t merges_count,
                                 std::vector<Special> specials,
                                 const std::vector<int64_t>& special_lines, const std::string& by) {
  // Pieces: `base64(bytes) id`, or `base64(byte) id byte` for a byte fallback token.
  const std::string where_p = "pieces file " + pieces_path + " (named by " + by + ")";
  std::vector<FileToken> entries;
  std::string decoded;
  for_each_line(whole_lines(pieces_path, where_p), [&](int64_t line_no, std::string_view line) {
    if (line.empty()) return;
    const auto w = words_of(line);
    TRIAD_CHECK((w.size() == 2 || (w.size() == 3 && w[2] == "byte")), where_p, ", line ", line_no,
                ": expected 'base64(token bytes) id' or 'base64(byte) id byte', got '",
                excerpt(line), "'");
    TRIAD_CHECK(base64_decode(w[0], decoded), where_p, ", line ", line_no, ": '", excerpt(w[0]),
                "' is not valid base64");
    const bool fallback = w.size() == 3;
    TRIAD_CHECK(!fallback || decoded.size() == 1, where_p, ", line ", line_no,
                ": a byte fallback token must be one byte, this one has ", decoded.size());
    entries.push_back(
        FileToken{decoded, parse_id(w[1], where_p, line_no, "id"), line_no, fallback});
  });
  TRIAD_CHECK(int64_t(entries.size()) == pieces_count, where_p, ": has ", entries.size(),
              " tokens, the description says pieces_count ", pieces_count,
              "; truncated or the wrong file?");
  Tokenizer t = assemble(where_p, "id", entries, std::move(specials), special_lines);
  t.path_ = pieces_path;
  t.sentencepiece_ = true;

  std::fill(std::begin(t.byte_token_), std::end(t.byte_token_), -1);
  for (const FileToken& e : entries) {
    if (!e.byte_fallback) continue;
    int32_t& slot = t.byte_token_[static_cast<unsigned char>(e.bytes[0])];
    TRIAD_CHECK(slot < 0, where_p, ", line ", e.line, ": byte ",
                hex_byte(static_cast<unsigned char>(e.bytes[0])),
                " already has a byte fallback token (id ", slot, ")");
    slot = int32_t(e.id);
  }
  for (int b = 0; b < 256; ++b)
    TRIAD_CHECK(t.byte_token_[b] >= 0, where_p, ": byte ", hex_byte(unsigned(b)),
                " has no byte fallback token (a SentencePiece-style vocabulary needs all 256, ",
                "for characters that are no token)");
  // The pairs of ASCII bytes that tokens hold (no merge can join a pair that none holds).
  t.joined_.assign(128 * 128, 0);
  for (const FileToken& e : entries) {
    if (e.byte_fallback) continue;
    for (size_t i = 0; i + 1 < e.bytes.size(); ++i) {
      const auto a = static_cast<unsigned char>(e.bytes[i]);
      const auto b = static_cast<unsigned char>(e.bytes[i + 1]);
      if (a < 0x80 && b < 0x80) t.joined_[a * 128 + b] = 1;
    }
  }

  // Merges: `left right rank`, each pair once; the join of left and right must be a token.
  const std::string where_m = "merges file " + merges_path + " (named by " + by + ")";
  const std::string merges_text = whole_lines(merges_path, where_m);
  // The table is sized by merges_count before the lines are counted: a count the file cannot
  // hold (a merge's line is 6 bytes at least, "1 2 3\n") is refused before it allocates.
  TRIAD_CHECK(uint64_t(merges_count) <= merges_text.size() / 6 + 1, where_m, ": ",
              merges_text.size(), " bytes cannot hold merges_count ", merges_count,
              " merges; truncated or the wrong file?");
  size_t cap = 1024;
  while (cap < size_t(merges_count) * 2) cap *= 2;
  t.merges_.assign(cap, Merge{0, 0, 0});
  t.merge_mask_ = cap - 1;
  std::unordered_map<uint64_t, int64_t> line_of;
  int64_t count = 0;
  for_each_line(merges_text, [&](int64_t line_no, std::string_view line) {
    if (line.empty()) return;
    const auto w = words_of(line);
    TRIAD_CHECK(w.size() == 3, where_m, ", line ", line_no, ": expected 'left right rank' (ids ",
                "and a rank), got '", excerpt(line), "'");
    int32_t id[2];
    for (int k = 0; k < 2; ++k) {
      const int64_t v = parse_id(w[size_t(k)], where_m, line_no, k ? "right id" : "left id");
      TRIAD_CHECK(v < t.vocab_size() && !t.special_[size_t(v)] &&
                      t.lookup(t.bytes_.data() + t.offsets_[size_t(v)],
                               t.offsets_[size_t(v) + 1] - t.offsets_[size_t(v)]) == v,
                  where_m, ", line ", line_no, ": ", k ? "right" : "left", " id ", v,
                  " is not a token of the pieces file (nor a byte fallback or special token)");
      id[k] = int32_t(v);
    }
    const int64_t rank = parse_id(w[2], where_m, line_no, "rank");
    const std::string joined = t.token_bytes(id[0]) + t.token_bytes(id[1]);
    const int32_t result = t.lookup(joined.data(), joined.size());
    TRIAD_CHECK(result >= 0, where_m, ", line ", line_no, ": tokens ", id[0], " and ", id[1],
                " join to '", excerpt(joined), "', which is no token");
    const uint64_t key = merge_key(id[0], id[1]);
    const auto [it, fresh] = line_of.emplace(key, line_no);
    TRIAD_CHECK(fresh, where_m, ", line ", line_no, ": the pair ", id[0], " ", id[1],
                " was already given on line ", it->second);
    TRIAD_CHECK(++count <= merges_count, where_m, ": has more than merges_count ", merges_count,
                " merges");
    size_t i = size_t(mix(key)) & t.merge_mask_;
    while (t.merges_[i].key != 0) i = (i + 1) & t.merge_mask_;
    t.merges_[i] = Merge{key, int32_t(rank), result};
  });
  TRIAD_CHECK(count == merges_count, where_m, ": has ", count,
              " merges, the description says merges_count ", merges_count,
              "; truncated or the wrong file?");
  return t;
}

const Tokenizer::Merge* Tokenizer::find_merge(int32_t left, int32_t right) const {
  const uint64_t key = merge_key(left, right);
  for (size_t i = size_t(mix(key)) & merge_mask_;; i = (i + 1) & merge_mask_) {
    const Merge& m = merges_[i];
    if (m.key == key) return &m;
    if (m.key == 0) return nullptr;
  }
}

std::string Tokenizer::sentencepiece_normalize(std::string_view text, SpacePrefix prefix) const {
  std::string composed;
  std::string_view src = text;
  if (nfc_) src = composed = nfc(text);
  std::string out;
  out.reserve(src.size() + 1);
  const bool space_first = src.starts_with(' ') || src.starts_with(kLowerBlock);
  if (!src.empty() &&
      (prefix == SpacePrefix::always || (prefix == SpacePrefix::unless_space && !space_first)))
    out.push_back(' ');
  for (size_t i = 0; i < src.size();) {
    if (src.substr(i, kLowerBlock.size()) == kLowerBlock) {
      out.push_back(' ');
      i += kLowerBlock.size();
    } else {
      out.push_back(src[i++]);
    }
  }
  return out;
}

struct Tokenizer::WordScratch {
  struct Cand {
    int32_t rank;
    uint32_t left, right;
    int32_t right_id, result;
    bool operator>(const Cand& o) const { return rank != o.rank ? rank > o.rank : left > o.left; }
  };
  std::vector<uint32_t> start, next, prev;
  std::vector<int32_t> id;
  std::vector<char> alive;
  std::vector<Cand> heap;  // a min-heap through std::push_heap / pop_heap with greater
};

void Tokenizer::encode_words(std::string_view text, std::vector<int32_t>& out) const {
  if (text.empty()) return;
  WordScratch scratch;
  tokenizer_files::WordCache& cache = tokenizer_files::WordCache::of_thread(instance_);
  auto merge = [&](std::string_view w, std::vector<int32_t>& o) { merge_word(w, o, scratch); };
  // Words end between two ASCII bytes that no token holds together.
  size_t start = 0;
  for (size_t i = 1; i <= text.size(); ++i) {
    if (i < text.size()) {
      const auto a = static_cast<unsigned char>(text[i - 1]);
      const auto b = static_cast<unsigned char>(text[i]);
      if (a >= 0x80 || b >= 0x80 || joined_[a * 128 + b]) continue;
    }
    cache.append(text.substr(start, i - start), out, merge);
    start = i;
  }
}

// The parts are the word's characters, kept in a linked list; a heap holds the candidate merges
// keyed by (rank, position), and a candidate whose parts have changed since is skipped.
void Tokenizer::merge_word(std::string_view word, std::vector<int32_t>& out, WordScratch& s) const {
  const auto* p = reinterpret_cast<const unsigned char*>(word.data());
  const auto* end = p + word.size();
  s.start.clear();  // byte offset of each character
  for (const unsigned char* q = p; q < end;) {
    s.start.push_back(uint32_t(q - p));
    uint32_t cp;
    q += pretok::decode_utf8(q, end, cp);
  }
  const uint32_t m = uint32_t(s.start.size());
  s.start.push_back(uint32_t(word.size()));
  s.id.resize(m);
  s.next.resize(m);
  s.prev.resize(m);
  s.alive.assign(m, 1);
  for (uint32_t i = 0; i < m; ++i) {
    s.id[i] = lookup(word.data() + s.start[i], s.start[i + 1] - s.start[i]);  // -1: no token
    s.next[i] = i + 1;
    s.prev[i] = i == 0 ? 0 : i - 1;
  }
  using Cand = WordScratch::Cand;
  const std::greater<Cand> later;
  s.heap.clear();
  auto push = [&](uint32_t left) {
    const uint32_t right = s.next[left];
    if (right >= m || s.id[left] < 0 || s.id[right] < 0) return;
    if (const Merge* g = find_merge(s.id[left], s.id[right])) {
      s.heap.push_back(Cand{g->rank, left, right, s.id[right], g->result});
      std::push_heap(s.heap.begin(), s.heap.end(), later);
    }
  };
  for (uint32_t i = 0; i + 1 < m; ++i) push(i);
  while (!s.heap.empty()) {
    std::pop_heap(s.heap.begin(), s.heap.end(), later);
    const Cand c = s.heap.back();
    s.heap.pop_back();
    // Stale if the left part was merged away, or merged with its right neighbour (which moves
    // its next), or the right part merged with its own (which changes its id).
    if (!s.alive[c.left] || s.next[c.left] != c.right || s.id[c.right] != c.right_id) continue;
    s.alive[c.right] = 0;
    s.next[c.left] = s.next[c.right];
    if (s.next[c.left] < m) s.prev[s.next[c.left]] = c.left;
    s.id[c.left] = c.result;
    if (c.left > 0) push(s.prev[c.left]);
    push(c.left);
  }
  for (uint32_t i = 0; i < m; i = s.next[i]) {
    if (s.id[i] >= 0) {
      out.push_back(s.id[i]);
      continue;
    }
    // A part with no token is a single character (merges join tokens): its bytes' tokens.
    for (uint32_t b = s.start[i]; b < s.start[i + 1]; ++b) out.push_back(byte_token_[p[b]]);
  }
}

}  // namespace triad
