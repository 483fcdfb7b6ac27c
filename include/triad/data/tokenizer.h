// GPT-2's byte-level BPE tokenizer, reading tiktoken's rank files (DESIGN.md: module data).
//
// A ranks file has one token per line, `base64(token bytes) rank`, ranks 0..n-1 each once
// (GPT-2: n = 50,256 in data/vocab/gpt2.tiktoken, the count from_file expects by default). The
// special token <|endoftext|> gets id n (50256), so vocab_size() = n + 1 (50257).
//
// encode() gives exactly tiktoken's encode_ordinary(): the text is split by GPT-2's
// pre-tokenizer (triad/data/pretokenize.h), a piece that is itself a token becomes that token,
// and any other piece starts as its single bytes, of which the adjacent pair whose
// concatenation has the lowest rank (the leftmost of equals) is merged repeatedly. The text is
// bytes: invalid UTF-8 is encoded too, so decode(encode(s)) == s for every byte string s.
// "<|endoftext|>" in the text is ordinary text, never the special token.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace triad {

class Tokenizer {
 public:
  // GPT-2's number of ranks; from_file expects it unless told otherwise.
  static constexpr int32_t kGpt2Ranks = 50256;

  // Loads a ranks file. Throws triad::Error naming the file (and the line, for a malformed
  // one): missing or unreadable file, no tokens, a line not of the form `base64 rank`, bad
  // base64, a rank that is not a non-negative integer, a rank given twice or missing from
  // 0..n-1, the same bytes given two ranks, a single byte without a token, or a number of
  // ranks other than expect_ranks (a truncated file; 0 accepts any number, e.g. for tests).
  static Tokenizer from_file(const std::string& ranks_path, int32_t expect_ranks = kGpt2Ranks);

  // Ordinary text to token ids; no special tokens are recognized.
  std::vector<int32_t> encode(std::string_view text) const;
  // Appends the ids of text to out (the same ids as encode).
  void encode_append(std::string_view text, std::vector<int32_t>& out) const;

  // Ids to raw bytes (eot() decodes to "<|endoftext|>"). Throws triad::Error for an id
  // outside [0, vocab_size()).
  std::string decode(std::span<const int32_t> ids) const;
  std::string token_bytes(int32_t id) const;

  int32_t eot() const { return n_ranks_; }
  int32_t vocab_size() const { return n_ranks_ + 1; }
  const std::string& path() const { return path_; }

 private:
  Tokenizer() = default;
  int32_t lookup(const char* p, size_t n) const;  // rank of these bytes, or -1
  void insert(int32_t rank);                      // into the hash table
  void bpe(const char* p, size_t n, std::vector<int32_t>& out) const;
  void bpe_long(const char* p, size_t n, std::vector<int32_t>& out) const;

  struct Slot {
    uint32_t tag;  // high bits of the hash
    int32_t rank;  // -1 = empty
  };
  std::string path_;
  int32_t n_ranks_ = 0;
  size_t max_token_len_ = 0;
  std::string bytes_;              // all tokens' bytes, by rank
  std::vector<uint32_t> offsets_;  // token r is bytes_[offsets_[r], offsets_[r + 1])
  std::vector<Slot> slots_;        // open addressing, linear probing
  size_t mask_ = 0;
  int32_t byte_rank_[256] = {};
};

}  // namespace triad
