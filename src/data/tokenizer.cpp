#include "triad/data/tokenizer.h"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <iomanip>
#include <limits>
#include <queue>
#include <sstream>
#include <unordered_map>

#include "tokenizer_files.h"
#include "triad/core/error.h"
#include "triad/data/pretokenize.h"
#include "triad/data/unicode_nfc.h"

namespace triad {
namespace {

using tokenizer_files::base64_decode;
using tokenizer_files::excerpt;
using tokenizer_files::for_each_line;
using tokenizer_files::hash_bytes;
using tokenizer_files::read_whole;

constexpr std::string_view kEotText = "<|endoftext|>";
constexpr std::string_view kDescriptionMagic = "triad-tokenizer 1";
constexpr int32_t kNoRank = std::numeric_limits<int32_t>::max();
// Pieces up to this many bytes use the quadratic merge loop (fastest for short pieces);
// longer ones (long digit, space or punctuation runs) use a heap, O(n log n).
constexpr size_t kShortPiece = 128;

}  // namespace

Tokenizer Tokenizer::from_file(const std::string& path, int32_t expect_ranks) {
  const std::string where = "vocabulary file " + path;
  const std::string text = read_whole(path, where);
  const bool description =
      text.starts_with(kDescriptionMagic) &&
      (text.size() == kDescriptionMagic.size() || text[kDescriptionMagic.size()] == '\n' ||
       text[kDescriptionMagic.size()] == '\r');
  if (description) {
    Tokenizer t = from_description(path, text);
    t.instance_ = next_instance();  // built in steps: numbered once complete
    return t;
  }
  // A description whose first line is not its magic one (a byte-order mark an editor wrote, blank
  // lines): said so, not read as a ranks file with bad base64 ('-' is none of its characters).
  const size_t magic_at = text.substr(0, 4096).find("triad-tokenizer");
  TRIAD_CHECK(magic_at == std::string::npos || magic_at == 0, where,
              ": a tokenizer description must begin with its 'triad-tokenizer' line; this one has ",
              text.starts_with("\xEF\xBB\xBF") ? "a UTF-8 byte-order mark" : "other bytes",
              " before it");
  TRIAD_CHECK(!text.starts_with("triad-tokenizer"), where, ": a tokenizer description of another ",
              "version (first line '", excerpt(text.substr(0, text.find('\n'))),
              "'; this build reads '", kDescriptionMagic, "')");
  // Files a user may give here that triad-convert tokenizer turns into a description (a ranks
  // file never holds '{' or a NUL byte: base64, digits and white space only).
  const size_t first = text.find_first_not_of(" \t\r\n");
  TRIAD_CHECK(first == std::string::npos || text[first] != '{', where,
              ": a JSON file, not a ranks file or a tokenizer description; convert it with "
              "'triad-convert tokenizer SRC OUT' (a Hugging Face tokenizer.json or its "
              "directory; Mistral's tekken.json with --tekken) and give OUT");
  TRIAD_CHECK(!text.starts_with('\n') || text.substr(0, 4096).find('\0') == std::string::npos,
              where,
              ": a binary file that looks like a SentencePiece model (Llama 2's or Mistral's "
              "tokenizer.model); convert it with 'triad-convert tokenizer --sentencepiece SRC OUT' "
              "and give OUT");
  // GPT-2: <|endoftext|> after the ranks (from_ranks gives it the id n), starting documents and
  // ending samples.
  Tokenizer t = from_ranks(text, path, where, expect_ranks, {{-1, std::string(kEotText)}}, {});
  t.document_start_ = t.n_ranks();
  t.stop_ = {t.n_ranks()};
  t.instance_ = next_instance();
  return t;
}

uint64_t Tokenizer::next_instance() {
  static std::atomic<uint64_t> count{0};
  return ++count;
}

Tokenizer Tokenizer::from_ranks(const std::string& text, const std::string& ranks_path,
                                const std::string& where, int32_t expect_ranks,
                                std::vector<Special> specials,
                                const std::vector<int64_t>& special_lines) {
  // Parse every line: `base64 rank`, blank lines skipped (as tiktoken does).
  std::vector<FileToken> entries;
  std::string decoded;
  for_each_line(text, [&](int64_t line_no, std::string_view line) {
    if (line.empty()) return;
    const size_t sp = line.find_first_of(" \t");
    TRIAD_CHECK(sp != std::string_view::npos && sp > 0, where, ", line ", line_no,
                ": expected 'base64(token bytes) rank', got '", excerpt(line), "'");
    const std::string_view b64 = line.substr(0, sp);
    std::string_view num = line.substr(sp);
    while (!num.empty() && (num.front() == ' ' || num.front() == '\t')) num.remove_prefix(1);
    TRIAD_CHECK(base64_decode(b64, decoded), where, ", line ", line_no, ": '", excerpt(b64),
                "' is not valid base64");
    TRIAD_CHECK(!num.empty(), where, ", line ", line_no, ": no rank after the token");
    entries.push_back(FileToken{decoded, parse_id(num, where, line_no, "rank"), line_no});
  });
  TRIAD_CHECK(!entries.empty(), where,
              ": empty (expected one 'base64(token bytes) rank' line per token)");
  const int64_t n = int64_t(entries.size());
  TRIAD_CHECK(expect_ranks <= 0 || n == expect_ranks, where, ": has ", n, " tokens, expected ",
              expect_ranks,
              expect_ranks == kGpt2Ranks && where.starts_with("vocabulary file")
                  ? " (GPT-2's gpt2.tiktoken)"
                  : "",
              "; truncated or the wrong file?");
  // A ranks file alone (no description lines) has ranks 0..n-1 and <|endoftext|> after them.
  if (special_lines.empty()) {
    specials.front().id = int32_t(n);
    for (const FileToken& e : entries)
      TRIAD_CHECK(e.id < n, where, ", line ", e.line, ": rank ", e.id,
                  " is out of range: the file has ", n, " tokens, so ranks must be 0..", n - 1);
  }
  Tokenizer t = assemble(where, "rank", entries, std::move(specials), special_lines);
  t.path_ = ranks_path;
  for (int b = 0; b < 256; ++b) {
    const char c = char(b);
    t.byte_rank_[b] = t.lookup(&c, 1);
    if (t.byte_rank_[b] < 0) {
      std::ostringstream os;
      os << std::hex << std::setw(2) << std::setfill('0') << b;
      fail(where, ": byte 0x", os.str(),
           " has no token (a byte-level BPE vocabulary needs all 256 single bytes)");
    }
  }
  return t;
}

int64_t Tokenizer::parse_id(std::string_view num, const std::string& where, int64_t line_no,
                            const char* what) {
  int64_t v = 0;
  TRIAD_CHECK(!num.empty(), where, ", line ", line_no, ": no ", what);
  for (const char c : num) {
    TRIAD_CHECK(c >= '0' && c <= '9', where, ", line ", line_no, ": ", what, " '", excerpt(num),
                "' is not a non-negative integer");
    v = v * 10 + (c - '0');
    TRIAD_CHECK(v < std::numeric_limits<int32_t>::max(), where, ", line ", line_no, ": ", what,
                " '", excerpt(num), "' is too large");
  }
  return v;
}

Tokenizer Tokenizer::assemble(const std::string& where, const char* id_word,
                              const std::vector<FileToken>& entries, std::vector<Special> specials,
                              const std::vector<int64_t>& special_lines) {
  const int64_t n = int64_t(entries.size());
  const int64_t V = n + int64_t(specials.size());
  TRIAD_CHECK(V < std::numeric_limits<int32_t>::max(), where, ": too many tokens");
  // The ids of the file's and the special tokens together must be exactly 0..V-1, each once.
  std::vector<int64_t> line_of_id(size_t(V), 0);  // file line, or -(description line)
  auto owner = [&](int64_t id) {
    const int64_t l = line_of_id[size_t(id)];
    return l > 0 ? std::string(id_word) + " " + std::to_string(id) + " on line " + std::to_string(l)
                 : "special token id " + std::to_string(id) + " (description line " +
                       std::to_string(-l) + ")";
  };
  for (size_t i = 0; i < specials.size(); ++i) {
    const Special& sp = specials[i];
    const int64_t line = special_lines.size() > i ? special_lines[i] : 0;
    TRIAD_CHECK(sp.id < V, where, ": special token ", sp.text, " has id ", sp.id,
                ", out of range: with ", n, " tokens in the file and ", specials.size(),
                " special tokens the ids run 0..", V - 1);
    TRIAD_CHECK(line_of_id[size_t(sp.id)] == 0, where, ": special token ", sp.text, " has id ",
                sp.id, ", already taken by ", owner(sp.id));
    line_of_id[size_t(sp.id)] = -std::max<int64_t>(line, 1);
  }
  for (const FileToken& e : entries) {
    TRIAD_CHECK(e.id < V, where, ", line ", e.line, ": ", id_word, " ", e.id,
                " is out of range: the file has ", n, " tokens, so ids must be 0..", V - 1,
                " (special tokens' ids included)");
    TRIAD_CHECK(line_of_id[size_t(e.id)] == 0, where, ", line ", e.line, ": ", id_word, " ", e.id,
                " is already taken by ", owner(e.id));
    line_of_id[size_t(e.id)] = e.line;
  }
  std::vector<const FileToken*> entry_of(static_cast<size_t>(V), nullptr);
  for (const FileToken& e : entries) entry_of[size_t(e.id)] = &e;
  std::sort(specials.begin(), specials.end(),
            [](const Special& a, const Special& b) { return a.id < b.id; });

  Tokenizer t;
  t.special_.assign(size_t(V), 0);
  std::vector<const std::string*> by_id(static_cast<size_t>(V), nullptr);
  for (const FileToken& e : entries) by_id[size_t(e.id)] = &e.bytes;
  for (const Special& sp : specials) {
    by_id[size_t(sp.id)] = &sp.text;
    t.special_[size_t(sp.id)] = 1;
  }
  t.offsets_.reserve(size_t(V) + 1);
  t.offsets_.push_back(0);
  for (int64_t id = 0; id < V; ++id) {
    const std::string& bytes = *by_id[size_t(id)];
    t.bytes_ += bytes;
    TRIAD_CHECK(t.bytes_.size() < std::numeric_limits<uint32_t>::max(), where,
                ": token bytes too large");
    t.offsets_.push_back(uint32_t(t.bytes_.size()));
    if (!t.special_[size_t(id)]) t.max_token_len_ = std::max(t.max_token_len_, bytes.size());
  }
  t.specials_ = std::move(specials);
  size_t cap = 1024;
  while (cap < size_t(n) * 2) cap *= 2;
  t.slots_.assign(cap, Slot{0, -1});
  t.mask_ = cap - 1;
  for (int32_t id = 0; id < V; ++id) {
    const FileToken* e = entry_of[size_t(id)];
    if (e == nullptr || e->byte_fallback) continue;
    const int32_t prev = t.lookup(e->bytes.data(), e->bytes.size());
    TRIAD_CHECK(prev < 0, where, ", line ", e->line, ": the same token bytes were already given ",
                id_word, " ", prev, " on line ", line_of_id[size_t(prev)]);
    t.insert(id);
  }
  return t;
}

int32_t Tokenizer::lookup(const char* p, size_t n) const {
  if (n > max_token_len_) return -1;
  const uint64_t h = hash_bytes(p, n);
  const uint32_t tag = uint32_t(h >> 32);
  for (size_t i = size_t(h) & mask_;; i = (i + 1) & mask_) {
    const Slot& s = slots_[i];
    if (s.rank < 0) return -1;
    if (s.tag == tag) {
      const uint32_t off = offsets_[size_t(s.rank)];
      if (offsets_[size_t(s.rank) + 1] - off == n && std::memcmp(bytes_.data() + off, p, n) == 0)
        return s.rank;
    }
  }
}

void Tokenizer::insert(int32_t rank) {
  const uint32_t off = offsets_[size_t(rank)];
  const size_t n = offsets_[size_t(rank) + 1] - off;
  const uint64_t h = hash_bytes(bytes_.data() + off, n);
  size_t i = size_t(h) & mask_;
  while (slots_[i].rank >= 0) i = (i + 1) & mask_;
  slots_[i] = Slot{uint32_t(h >> 32), rank};
}

// Merges the leftmost lowest-rank adjacent pair until no pair is a token (tiktoken's rule).
void Tokenizer::bpe(const char* p, size_t n, std::vector<int32_t>& out) const {
  if (n > kShortPiece) return bpe_long(p, n, out);
  // Part i is bytes [start[i], start[i + 1]) with token id[i]; pair[i] is the rank of parts
  // i and i + 1 joined (kNoRank if not a token).
  uint32_t start[kShortPiece + 1];
  int32_t id[kShortPiece];
  int32_t pair[kShortPiece];
  size_t m = n;
  for (size_t i = 0; i < n; ++i) {
    start[i] = uint32_t(i);
    id[i] = byte_rank_[static_cast<unsigned char>(p[i])];
  }
  start[n] = uint32_t(n);
  auto pair_rank = [&](size_t i) {  // parts i, i+1 (i + 1 < m)
    const int32_t r = lookup(p + start[i], start[i + 2] - start[i]);
    return r < 0 ? kNoRank : r;
  };
  for (size_t i = 0; i + 1 < m; ++i) pair[i] = pair_rank(i);
  while (m > 1) {
    size_t best = 0;
    for (size_t i = 1; i + 1 < m; ++i)
      if (pair[i] < pair[best]) best = i;
    if (pair[best] == kNoRank) break;
    id[best] = pair[best];
    // Remove part best + 1 (its start boundary, its id and the pair it began).
    for (size_t i = best + 1; i < m; ++i) start[i] = start[i + 1];
    for (size_t i = best + 1; i + 1 < m; ++i) id[i] = id[i + 1];
    for (size_t i = best + 1; i + 2 < m; ++i) pair[i] = pair[i + 1];
    --m;
    if (best + 1 < m) pair[best] = pair_rank(best);
    if (best > 0) pair[best - 1] = pair_rank(best - 1);
  }
  out.insert(out.end(), id, id + m);
}

// The same rule with a heap of candidate pairs keyed by (rank, start), stale entries skipped.
void Tokenizer::bpe_long(const char* p, size_t n, std::vector<int32_t>& out) const {
  // Parts are named by their first byte; next[s] is the start of the following part (n at
  // the end), prev[s] the start of the preceding one; alive[s] whether s starts a part.
  std::vector<uint32_t> next(n), prev(n);
  std::vector<int32_t> id(n);
  std::vector<char> alive(n, 1);
  for (size_t i = 0; i < n; ++i) {
    next[i] = uint32_t(i + 1);
    prev[i] = uint32_t(i == 0 ? 0 : i - 1);
    id[i] = byte_rank_[static_cast<unsigned char>(p[i])];
  }
  struct Cand {
    int32_t rank;
    uint32_t left, mid, end;  // parts [left, mid) and [mid, end)
    bool operator>(const Cand& o) const { return rank != o.rank ? rank > o.rank : left > o.left; }
  };
  std::priority_queue<Cand, std::vector<Cand>, std::greater<Cand>> heap;
  auto push = [&](uint32_t left) {
    const uint32_t mid = next[left];
    if (mid >= n) return;
    const uint32_t end = next[mid];
    const int32_t r = lookup(p + left, end - left);
    if (r >= 0) heap.push(Cand{r, left, mid, end});
  };
  for (uint32_t i = 0; i + 1 < n; ++i) push(i);
  while (!heap.empty()) {
    const Cand c = heap.top();
    heap.pop();
    if (!alive[c.left] || next[c.left] != c.mid || !alive[c.mid] || next[c.mid] != c.end)
      continue;  // stale: one of the two parts has changed since
    alive[c.mid] = 0;
    next[c.left] = c.end;
    if (c.end < n) prev[c.end] = c.left;
    id[c.left] = c.rank;
    if (c.left > 0) push(prev[c.left]);
    push(c.left);
  }
  for (uint32_t s = 0; s < n; s = next[s]) out.push_back(id[s]);
}

void Tokenizer::encode_append(std::string_view text, std::vector<int32_t>& out,
                              bool continuation) const {
  if (sentencepiece_) {
    const std::string normalized =
        sentencepiece_normalize(text, continuation ? SpacePrefix::never : space_prefix_);
    return cut_at_added(normalized, out, &Tokenizer::encode_words);
  }
  cut_at_added(text, out, &Tokenizer::encode_segment);
}

bool Tokenizer::cut_is_safe(std::string_view text, size_t p) const {
  if (p == 0 || p >= text.size()) return p == text.size();
  const auto a = static_cast<unsigned char>(text[p - 1]);
  const auto b = static_cast<unsigned char>(text[p]);
  auto space = [](unsigned char c) { return c == ' ' || (c >= 0x09 && c <= 0x0D); };
  if (sentencepiece_) return a < 0x80 && b < 0x80 && !joined_[a * 128 + b];
  // (Not before CR or LF: llama3's, qwen2's, tekken's and deepseek3's punctuation pieces take
  // the CR and LF after them, ".\n". deepseek_llm's pieces end at a printable ASCII character,
  // but a control character stays in one piece with the spaces around it: "\x01 \x01";
  // deepseek_coder's likewise, and also an ASCII symbol (no class of its own there): "+ +".)
  const bool printable = a >= 0x21 && a <= 0x7E;
  if (scheme_ == pretok::Scheme::deepseek_llm && !printable) return false;
  if (scheme_ == pretok::Scheme::deepseek_coder &&
      (!printable || std::string_view("$+<=>^`|~").find(char(a)) != std::string_view::npos))
    return false;
  return a < 0x80 && !space(a) && space(b) && b != '\r' && b != '\n';
}

void Tokenizer::cut_at_added(std::string_view text, std::vector<int32_t>& out,
                             SegmentEncoder segment) const {
  if (added_.empty()) return (this->*segment)(text, out);
  size_t from = 0;  // start of the text not yet encoded
  for (size_t i = 0; i < text.size();) {
    const Special* a =
        added_first_[static_cast<unsigned char>(text[i])] ? added_at(text, i) : nullptr;
    if (a == nullptr) {
      ++i;
      continue;
    }
    (this->*segment)(text.substr(from, i - from), out);
    out.push_back(a->id);
    i += a->text.size();
    from = i;
  }
  (this->*segment)(text.substr(from), out);
}

const Tokenizer::Special* Tokenizer::added_at(std::string_view text, size_t pos) const {
  const Special* best = nullptr;
  for (const size_t i : added_) {
    const Special& a = specials_[i];
    if (text.substr(pos, a.text.size()) == a.text &&
        (best == nullptr || a.text.size() > best->text.size()))
      best = &a;
  }
  return best;
}

void Tokenizer::encode_segment(std::string_view text, std::vector<int32_t>& out) const {
  if (text.empty()) return;
  if (nfc_) return encode_pieces(nfc(text), out);
  encode_pieces(text, out);
}

void Tokenizer::encode_pieces(std::string_view text, std::vector<int32_t>& out) const {
  tokenizer_files::WordCache& cache = tokenizer_files::WordCache::of_thread(instance_);
  pretok::for_each_piece(scheme_, text, [&](std::string_view piece) {
    const int32_t r = lookup(piece.data(), piece.size());
    if (r >= 0) {
      out.push_back(r);
      return;
    }
    if (piece.size() > kShortPiece) return bpe(piece.data(), piece.size(), out);
    cache.append(piece, out,
                 [&](std::string_view w, std::vector<int32_t>& o) { bpe(w.data(), w.size(), o); });
  });
}

std::vector<int32_t> Tokenizer::encode(std::string_view text) const {
  std::vector<int32_t> out;
  out.reserve(text.size() / 4 + 16);
  encode_append(text, out);
  return out;
}

std::vector<int32_t> Tokenizer::encode_prompt(std::string_view text) const {
  std::vector<int32_t> out;
  if (prompt_start_ >= 0)
    out.push_back(prompt_start_);
  else if (text.empty())
    out.push_back(document_start_);
  encode_append(text, out);
  return out;
}

int32_t Tokenizer::special_id(std::string_view text) const {
  for (const Special& sp : specials_)
    if (sp.text == text) return sp.id;
  return -1;
}

std::string Tokenizer::token_bytes(int32_t id) const {
  TRIAD_CHECK(id >= 0 && id < vocab_size(), "token id ", id, " is out of range: ids run from 0 to ",
              vocab_size() - 1);
  const uint32_t off = offsets_[size_t(id)];
  return bytes_.substr(off, offsets_[size_t(id) + 1] - off);
}

std::string Tokenizer::decode(std::span<const int32_t> ids) const {
  std::string out;
  out.reserve(ids.size() * 4);
  for (size_t i = 0; i < ids.size(); ++i) {
    const int32_t id = ids[i];
    TRIAD_CHECK(id >= 0 && id < vocab_size(), "cannot decode token id ", id, " (position ", i,
                "): ids run from 0 to ", vocab_size() - 1);
    const uint32_t off = offsets_[size_t(id)];
    out.append(bytes_, off, offsets_[size_t(id) + 1] - off);
  }
  return out;
}

}  // namespace triad
