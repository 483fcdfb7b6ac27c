// BPE tokenizers (DESIGN.md: module data) of two kinds, both read from text files:
//   - byte-level BPE from tiktoken's rank files: GPT-2's, and through a tokenizer description
//     those of Llama 3, Qwen2 and other byte-level BPE models;
//   - SentencePiece-style BPE (Llama 2's, Mistral's, TinyLlama's): characters merged by a
//     table of merges, with bytes as the fallback for characters that are no token.
//
// A ranks file has one token per line, `base64(token bytes) rank`, ranks 0..n-1 each once.
// from_file takes either
//   - a ranks file alone: GPT-2's tokenizer (n = 50,256 in data/vocab/gpt2.tiktoken, the count
//     from_file expects by default), whose one special token <|endoftext|> is id n; or
//   - a tokenizer description (docs/formats.md "Tokenizers"), a text file whose first
//     line is "triad-tokenizer 1", naming a ranks file (or a pieces and a merges file), the
//     pre-tokenizer, the special tokens with their ids, and which of them start documents and
//     prompts and end generation. A token's id is its rank; the special tokens take the ids the
//     ranks leave free (after them for Llama 3's, before them for a tokenizer trained by Hugging
//     Face's tokenizers), so that the ids together are 0..vocab_size-1. `triad-convert
//     tokenizer` writes one from a Hugging Face tokenizer.json, Meta's Llama 3 tokenizer.model
//     or a SentencePiece model.
//
// Byte-level: encode() gives exactly tiktoken's encode_ordinary() with the same ranks and
// pattern: the text is split by the pre-tokenizer (triad/data/pretokenize.h), a piece that is
// itself a token becomes that token, and any other piece starts as its single bytes, of which
// the adjacent pair whose concatenation has the lowest rank (the leftmost of equals) is merged
// repeatedly. The text is bytes: invalid UTF-8 is encoded too, so decode(encode(s)) == s for
// every byte string s, unless the description names `normalizer nfc` (Qwen2's tokenizer): then
// the text is first put in Unicode's NFC (triad/data/unicode_nfc.h) and decode(encode(s)) ==
// nfc(s).
//
// SentencePiece-style (tokenizer_sentencepiece.cpp): tokens are stored as the bytes they decode
// to, a space where SentencePiece writes U+2581, so the text's U+2581 counts as a space; with
// `space_prefix true` a non-empty text gets a space in front (SentencePiece's dummy prefix; with
// `unless_space` only a text that does not begin with one: Hugging Face's Metaspace). The
// text starts as its UTF-8 characters (an invalid byte alone), each its token's id if it is one,
// and the adjacent pair with the lowest merge rank (the leftmost of equals) becomes the merge's
// token until no pair has a merge; a character that is no token becomes its bytes' fallback
// tokens. That is SentencePiece's BPE when the ranks order the merged tokens' scores, and
// Hugging Face's BPE when they are its merges' positions.
//
// Special tokens' texts (e.g. "<|endoftext|>") in the text are ordinary text, never the special
// tokens. Added tokens (`added ID TEXT`) are the exception: the text is first cut at each of
// them (the leftmost, and the longest there), and each becomes its id.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "triad/data/pretokenize.h"

namespace triad {

class Tokenizer {
 public:
  // GPT-2's number of ranks; from_file expects it unless told otherwise.
  static constexpr int32_t kGpt2Ranks = 50256;

  // Loads a ranks file or a tokenizer description (told apart by the first line). Throws
  // triad::Error naming the file (and the line, for a malformed one): missing or unreadable
  // file, no tokens, a line not of the form `base64 rank`, bad base64, a rank that is not a
  // non-negative integer, a rank given twice or missing from 0..n-1, the same bytes given two
  // ranks, a single byte without a token, or a number of ranks other than expected (a
  // truncated file): expect_ranks for a ranks file alone (0 accepts any number, e.g. for
  // tests), the description's ranks_count for a description. A description is also refused
  // for an unknown or repeated key, a missing required key, an unknown pre-tokenizer, a special
  // token given twice, ids that are not exactly 0..vocab_size-1 once each, and a
  // document_start, prompt_start or stop naming no special token.
  static Tokenizer from_file(const std::string& path, int32_t expect_ranks = kGpt2Ranks);

  // Ordinary text to token ids; no special tokens are recognized.
  std::vector<int32_t> encode(std::string_view text) const;
  // Appends the ids of text to out (the same ids as encode). A continuation is text that
  // follows other text, cut where cut_is_safe allows: a SentencePiece-style tokenizer puts no
  // space before it.
  void encode_append(std::string_view text, std::vector<int32_t>& out,
                     bool continuation = false) const;
  // Whether encoding text[..p) and then text[p..) as a continuation gives the ids of text.
  // Byte-level: text[p - 1] is an ASCII character other than white space (deepseek_llm: a
  // printable one; deepseek_coder: a letter, digit or punctuation) and text[p] is white space
  // other than CR and LF (a space, tab, VT or FF); pre-tokenizers never join such characters
  // into one piece (the CR and LF after punctuation they may: ".\n"), and a match
  // at p never looks behind p. SentencePiece-style: text[p - 1] and text[p] are ASCII characters
  // that no token holds side by side, so no merge joins them.
  bool cut_is_safe(std::string_view text, size_t p) const;

  // Ids to raw bytes (a special token decodes to its text). Throws triad::Error for an id
  // outside [0, vocab_size()).
  std::string decode(std::span<const int32_t> ids) const;
  std::string token_bytes(int32_t id) const;

  // The token before each document in token shards (GPT-2: <|endoftext|>; Llama 3:
  // <|begin_of_text|>), and before an empty prompt.
  int32_t document_start() const { return document_start_; }
  // The token before every prompt (Llama 3: <|begin_of_text|>), or -1 (GPT-2: none).
  int32_t prompt_start() const { return prompt_start_; }
  // The ids a prompt for generation becomes: prompt_start (if any), then the text's tokens; an
  // empty prompt without prompt_start is document_start alone.
  std::vector<int32_t> encode_prompt(std::string_view text) const;
  // Tokens that end a generated sample (GPT-2: <|endoftext|>; Llama 3: <|end_of_text|>,
  // <|eom_id|>, <|eot_id|>).
  const std::vector<int32_t>& stop_tokens() const { return stop_; }

  struct Special {
    int32_t id;
    std::string text;
    // An added token (description line `added ID TEXT`, Hugging Face's non-special added
    // tokens): found in the text and encoded as itself, where a special token's text is
    // ordinary text.
    bool in_text = false;
  };
  int32_t vocab_size() const { return int32_t(special_.size()); }
  int32_t n_ranks() const { return vocab_size() - int32_t(specials_.size()); }
  // SentencePiece-style BPE (a description naming `pieces`), and whether it puts a space before
  // the text.
  bool is_sentencepiece() const { return sentencepiece_; }
  enum class SpacePrefix { never, always, unless_space };
  SpacePrefix space_prefix() const { return space_prefix_; }
  pretok::Scheme pretokenizer() const { return scheme_; }
  bool normalizes_nfc() const { return nfc_; }
  const std::vector<Special>& special_tokens() const { return specials_; }  // by id
  bool is_special(int32_t id) const { return special_[size_t(id)] != 0; }
  // Id of a special token by its text, or -1.
  int32_t special_id(std::string_view text) const;
  const std::string& path() const { return path_; }
  // The chat format its description names (`chat NAME`, triad/data/chat_format.h), or "".
  const std::string& chat_format() const { return chat_; }

 private:
  Tokenizer() = default;
  // The ranks file's text (read from ranks_path) and the special tokens (their ids and, for
  // messages, description lines; none for a ranks file alone, whose one special token then takes
  // the id after the ranks).
  // A token of a ranks or pieces file: its bytes, id, line, and whether it is a byte fallback
  // token (SentencePiece's <0xAB>: decodes to that byte, never the result of a merge).
  struct FileToken {
    std::string bytes;
    int64_t id;
    int64_t line;
    bool byte_fallback = false;
  };
  // The ranks file's text (read from ranks_path) and the special tokens (their ids and, for
  // messages, description lines; none for a ranks file alone, whose one special token then takes
  // the id after the ranks).
  static Tokenizer from_ranks(const std::string& text, const std::string& ranks_path,
                              const std::string& where, int32_t expect_ranks,
                              std::vector<Special> specials,
                              const std::vector<int64_t>& special_lines);
  // A SentencePiece-style tokenizer from its pieces and merges files (tokenizer_sentencepiece.cpp).
  static Tokenizer from_pieces(const std::string& pieces_path, int64_t pieces_count,
                               const std::string& merges_path, int64_t merges_count,
                               std::vector<Special> specials,
                               const std::vector<int64_t>& special_lines, const std::string& by);
  static Tokenizer from_description(const std::string& path, const std::string& text);
  // The tokens of a file and the special tokens, checked to have the ids 0..V-1 once each, with
  // the hash table of the file's tokens (byte fallback tokens left out). id_word names a file
  // token's id in messages ("rank").
  static Tokenizer assemble(const std::string& where, const char* id_word,
                            const std::vector<FileToken>& entries, std::vector<Special> specials,
                            const std::vector<int64_t>& special_lines);
  // A non-negative 32-bit decimal; throws naming where, the line and what it is.
  static int64_t parse_id(std::string_view num, const std::string& where, int64_t line_no,
                          const char* what);
  int32_t lookup(const char* p, size_t n) const;  // rank of these bytes, or -1
  void insert(int32_t rank);                      // into the hash table
  void bpe(const char* p, size_t n, std::vector<int32_t>& out) const;
  void bpe_long(const char* p, size_t n, std::vector<int32_t>& out) const;
  void encode_pieces(std::string_view text, std::vector<int32_t>& out) const;   // no normalizing
  void encode_segment(std::string_view text, std::vector<int32_t>& out) const;  // no added tokens
  // Encodes each stretch of text between added tokens with `segment`, their ids between.
  using SegmentEncoder = void (Tokenizer::*)(std::string_view, std::vector<int32_t>&) const;
  void cut_at_added(std::string_view text, std::vector<int32_t>& out, SegmentEncoder segment) const;
  const Special* added_at(std::string_view text, size_t pos) const;  // the longest, or null
  // SentencePiece-style: the normalized text (U+2581 as a space, the space prefix), a stretch of
  // it between added tokens cut into words, and one word merged.
  std::string sentencepiece_normalize(std::string_view text, SpacePrefix prefix) const;
  void encode_words(std::string_view text, std::vector<int32_t>& out) const;
  struct WordScratch;  // merge_word's buffers, reused across the words of a text
  void merge_word(std::string_view word, std::vector<int32_t>& out, WordScratch& s) const;
  struct Merge {
    uint64_t key;    // (left id + 1) << 32 | (right id + 1); 0 = empty slot
    int32_t rank;    // lower merges first; equal ranks: the leftmost first
    int32_t result;  // the merged token's id
  };
  const Merge* find_merge(int32_t left, int32_t right) const;  // or null

  struct Slot {
    uint32_t tag;  // high bits of the hash
    int32_t rank;  // -1 = empty
  };
  // This tokenizer's number, for the per-thread caches of encoded words (WordCache): a copy
  // shares it, being the same tokenizer; every other tokenizer has its own.
  uint64_t instance_ = next_instance();
  static uint64_t next_instance();
  std::string path_;
  std::string chat_;
  pretok::Scheme scheme_ = pretok::Scheme::gpt2;
  bool nfc_ = false;               // normalizer nfc: text to NFC before the pre-tokenizer
  std::vector<Special> specials_;  // by id
  std::vector<uint8_t> special_;   // by id: 1 for a special token
  std::vector<size_t> added_;      // indices into specials_ of those found in text (in_text)
  bool added_first_[256] = {};     // bytes an added token starts with
  int32_t document_start_ = -1;
  int32_t prompt_start_ = -1;
  std::vector<int32_t> stop_;
  size_t max_token_len_ = 0;
  std::string bytes_;              // all tokens' bytes, by rank
  std::vector<uint32_t> offsets_;  // token id i is bytes_[offsets_[i], offsets_[i + 1])
  std::vector<Slot> slots_;        // open addressing, linear probing
  size_t mask_ = 0;
  int32_t byte_rank_[256] = {};
  // SentencePiece-style only.
  bool sentencepiece_ = false;
  SpacePrefix space_prefix_ = SpacePrefix::never;
  // joined_[a * 128 + b]: some token holds ASCII byte a followed by b. Between two ASCII bytes
  // that no token holds together no merge can happen, so the text is cut into words there.
  std::vector<uint8_t> joined_;
  std::vector<Merge> merges_;  // open addressing, linear probing
  size_t merge_mask_ = 0;
  int32_t byte_token_[256] = {};  // the byte fallback tokens
};

}  // namespace triad
