// Reading the tokenizer's text files (tokenizer.cpp's ranks files, tokenizer_pieces.cpp's pieces
// and merges, tokenizer_description.cpp's descriptions): the whole file, its lines, a line's
// excerpt for messages, base64, and the hash of a token's bytes.
#pragma once

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "triad/core/error.h"

namespace triad::tokenizer_files {

// The first 60 bytes of a line, with "..." when there are more.
inline std::string excerpt(std::string_view line) {
  // Control bytes as \xNN: a NUL (a binary file) would end the message where it stands.
  std::string s;
  for (const char c : line.substr(0, 60)) {
    const auto u = static_cast<unsigned char>(c);
    if ((u < 0x20 && c != '\t') || u == 0x7f) {
      static constexpr char kHex[] = "0123456789abcdef";
      s += {'\\', 'x', kHex[u >> 4], kHex[u & 15]};
    } else {
      s += c;
    }
  }
  if (line.size() > 60) s += "...";
  return s;
}

// The file's bytes; throws triad::Error naming `where` if it cannot be read.
inline std::string read_whole(const std::string& path, const std::string& where) {
  std::error_code ec;  // (a directory opens as a stream that reads nothing)
  const auto status = std::filesystem::status(path, ec);
  TRIAD_CHECK(!std::filesystem::is_directory(status), where, ": is a directory");
  // Opening a named pipe waits for a writer, for ever; a device reads without end.
  TRIAD_CHECK(!std::filesystem::exists(status) || std::filesystem::is_regular_file(status), where,
              ": not a regular file (a pipe, socket or device)");
  std::ifstream in(path, std::ios::binary);
  TRIAD_CHECK(in.is_open(), where, ": cannot open (missing or unreadable)");
  std::stringstream buf;
  buf << in.rdbuf();
  TRIAD_CHECK(!in.bad(), where, ": read error");
  return buf.str();
}

// Calls fn(line_no, line) for each line of text (numbered from 1, without its "\n" or "\r\n").
template <typename F>
void for_each_line(std::string_view text, F&& fn) {
  int64_t line_no = 0;
  for (size_t pos = 0; pos < text.size();) {
    size_t nl = text.find('\n', pos);
    if (nl == std::string::npos) nl = text.size();
    std::string_view line(text.data() + pos, nl - pos);
    pos = nl + 1;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    fn(++line_no, line);
  }
}

// The words of a line separated by spaces or tabs.
inline std::vector<std::string_view> words_of(std::string_view line) {
  std::vector<std::string_view> words;
  for (size_t i = 0; i < line.size();) {
    while (i < line.size() && (line[i] == ' ' || line[i] == '\t')) ++i;
    size_t j = i;
    while (j < line.size() && line[j] != ' ' && line[j] != '\t') ++j;
    if (j > i) words.push_back(line.substr(i, j - i));
    i = j;
  }
  return words;
}

inline uint64_t hash_bytes(const char* p, size_t n) {
  uint64_t h = 0x9E3779B97F4A7C15ull ^ (uint64_t(n) * 0xFF51AFD7ED558CCDull);
  while (n >= 8) {
    uint64_t v;
    std::memcpy(&v, p, 8);
    h = (h ^ v) * 0x9E3779B97F4A7C15ull;
    h ^= h >> 29;
    p += 8;
    n -= 8;
  }
  uint64_t v = 0;
  std::memcpy(&v, p, n);
  h = (h ^ v) * 0xBF58476D1CE4E5B9ull;
  h ^= h >> 31;
  h *= 0x94D049BB133111EBull;
  h ^= h >> 32;
  return h;
}

// Strict base64 (standard alphabet, '=' padding to a multiple of 4). False if malformed.
inline bool base64_decode(std::string_view s, std::string& out) {
  static constexpr auto table = [] {
    struct T {
      int8_t v[256];
    } t{};
    for (int i = 0; i < 256; ++i) t.v[i] = -1;
    const char* a = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    for (int i = 0; i < 64; ++i) t.v[static_cast<unsigned char>(a[i])] = int8_t(i);
    return t;
  }();
  out.clear();
  if (s.empty() || s.size() % 4 != 0) return false;
  size_t pad = 0;
  if (s.back() == '=') pad = s[s.size() - 2] == '=' ? 2 : 1;
  for (size_t i = 0; i < s.size(); i += 4) {
    const bool last = i + 4 == s.size();
    uint32_t acc = 0;
    for (size_t j = 0; j < 4; ++j) {
      const unsigned char c = static_cast<unsigned char>(s[i + j]);
      int v;
      if (last && j >= 4 - pad) {
        v = 0;  // a padding position ('=' checked above for the final one or two)
        if (c != '=') return false;
      } else {
        v = table.v[c];
        if (v < 0) return false;
      }
      acc = (acc << 6) | uint32_t(v);
    }
    out.push_back(char(acc >> 16));
    if (!(last && pad == 2)) out.push_back(char((acc >> 8) & 0xFF));
    if (!(last && pad >= 1)) out.push_back(char(acc & 0xFF));
  }
  return true;
}

// The ids of words already encoded: words that need merging recur (names, rare words, and across
// documents and chat messages the same common words), and each is merged once. One cache serves
// one thread and one tokenizer (owner: Tokenizer's instance number, so a cache never hands one
// tokenizer's ids to another); it starts over when it holds kMaxIds ids, which bounds its memory
// (about 4 MB of ids and their words per thread).
class WordCache {
 public:
  static constexpr size_t kMaxIds = size_t(1) << 20;
  // Appends word's ids to out: the cached ones, or encode(word, out)'s, then cached.
  template <typename F>
  void append(std::string_view word, std::vector<int32_t>& out, F&& encode) {
    const auto it = map_.find(word);
    if (it != map_.end()) {
      const int32_t* ids = ids_.data() + it->second.first;
      out.insert(out.end(), ids, ids + it->second.second);
      return;
    }
    const size_t before = out.size();
    encode(word, out);
    if (ids_.size() + (out.size() - before) > kMaxIds) clear();
    map_.emplace(std::string(word),
                 std::make_pair(uint32_t(ids_.size()), uint32_t(out.size() - before)));
    ids_.insert(ids_.end(), out.begin() + std::ptrdiff_t(before), out.end());
  }
  // The cache of this thread for the tokenizer numbered `owner`: emptied when it last served
  // another one.
  static WordCache& of_thread(uint64_t owner) {
    thread_local WordCache cache;
    if (cache.owner_ != owner) {
      cache.clear();
      cache.owner_ = owner;
    }
    return cache;
  }
  void clear() {
    map_.clear();
    ids_.clear();
  }

 private:
  struct Hash {
    using is_transparent = void;  // found by string_view, stored as string
    size_t operator()(std::string_view s) const { return size_t(hash_bytes(s.data(), s.size())); }
  };
  std::unordered_map<std::string, std::pair<uint32_t, uint32_t>, Hash, std::equal_to<>> map_;
  std::vector<int32_t> ids_;  // the cached ids: word's are [first, first + count)
  uint64_t owner_ = 0;
};

}  // namespace triad::tokenizer_files
