// Tokenizer descriptions (docs/formats.md "Tokenizers"): the `key value` lines that name a ranks
// file and the pre-tokenizer (byte-level BPE) or a pieces and a merges file (SentencePiece-style
// BPE), the normalizer, the special and added tokens and their roles.
#include <algorithm>
#include <filesystem>
#include <limits>
#include <string>
#include <unordered_map>
#include <vector>

#include "tokenizer_files.h"
#include "triad/core/error.h"
#include "triad/data/chat_format.h"
#include "triad/data/tokenizer.h"

namespace triad {

using tokenizer_files::excerpt;
using tokenizer_files::for_each_line;

// Parses "key value" lines (blank lines and # comments skipped) after the magic line.
Tokenizer Tokenizer::from_description(const std::string& path, const std::string& text) {
  const std::string where = "tokenizer description " + path;
  std::string ranks, scheme, document_start, prompt_start, normalizer, pieces, merges, space_prefix,
      chat;
  int64_t ranks_count = -1, pieces_count = -1, merges_count = -1;
  std::vector<Special> specials;
  std::vector<int64_t> special_lines;
  std::vector<std::string> stops;
  std::unordered_map<std::string, int64_t> seen;  // single-valued key -> line
  int64_t line_no = 0;  // of the line being parsed, for parse_count's message
  auto parse_count = [&](std::string_view v, const char* what) {
    int64_t n = 0;
    bool ok = !v.empty() && v.size() <= 10;
    for (const char c : v) {
      ok = ok && c >= '0' && c <= '9';
      if (ok) n = n * 10 + (c - '0');
    }
    TRIAD_CHECK(ok && n < std::numeric_limits<int32_t>::max(), where, ", line ", line_no, ": ",
                what, " '", excerpt(v), "' is not a non-negative 32-bit integer");
    return n;
  };
  for_each_line(text, [&](int64_t no, std::string_view line) {
    line_no = no;
    if (line_no == 1) return;  // the magic line
    const std::vector<std::string_view> words = tokenizer_files::words_of(line);
    if (words.empty() || words[0].front() == '#') return;
    const std::string key(words[0]);
    const bool token = key == "special" || key == "added";
    TRIAD_CHECK(words.size() == (token ? 3u : 2u), where, ", line ", line_no, ": '", excerpt(line),
                "': expected '", key, token ? " ID TEXT'" : " VALUE'",
                " (single words separated by spaces)");
    const std::string_view value = words[1];
    if (token) {
      const auto id = int32_t(parse_count(value, "token id"));
      specials.push_back(Special{id, std::string(words[2]), key == "added"});
      special_lines.push_back(line_no);
      return;
    }
    if (key == "stop") {
      stops.emplace_back(value);
      return;
    }
    std::string count;
    std::string* target = key == "ranks"            ? &ranks
                          : key == "pieces"         ? &pieces
                          : key == "merges"         ? &merges
                          : key == "space_prefix"   ? &space_prefix
                          : key.ends_with("_count") ? &count
                          : key == "pretokenizer"   ? &scheme
                          : key == "document_start" ? &document_start
                          : key == "prompt_start"   ? &prompt_start
                          : key == "normalizer"     ? &normalizer
                          : key == "chat"           ? &chat
                                                    : nullptr;
    int64_t* count_of = key == "ranks_count"    ? &ranks_count
                        : key == "pieces_count" ? &pieces_count
                        : key == "merges_count" ? &merges_count
                                                : nullptr;
    TRIAD_CHECK(target && (target != &count || count_of), where, ", line ", line_no,
                ": unknown key '", excerpt(key),
                "' (expected ranks, ranks_count, pretokenizer, pieces, pieces_count, merges, ",
                "merges_count, space_prefix, normalizer, special, added, document_start, ",
                "prompt_start, stop or chat)");
    const auto [it, fresh] = seen.emplace(key, line_no);
    TRIAD_CHECK(fresh, where, ", line ", line_no, ": '", key, "' was already given on line ",
                it->second);
    *target = std::string(value);
    if (count_of) {
      *count_of = parse_count(value, key.c_str());
      TRIAD_CHECK(*count_of > 0, where, ", line ", line_no, ": ", key, " must be positive");
    }
  });
  // Byte-level BPE names a ranks file and a pre-tokenizer; SentencePiece-style names pieces and
  // merges files and whether a space goes before the text.
  const bool sentencepiece = seen.count("pieces") != 0;
  const std::vector<const char*> byte_level_keys = {"ranks", "ranks_count", "pretokenizer"};
  const std::vector<const char*> sentencepiece_keys = {"pieces", "pieces_count", "merges",
                                                       "merges_count", "space_prefix"};
  for (const char* k : sentencepiece ? byte_level_keys : sentencepiece_keys)
    TRIAD_CHECK(!seen.count(k), where, ", line ", seen[k], ": '", k, "' belongs to ",
                sentencepiece ? "a byte-level BPE (ranks), but this description names 'pieces'"
                              : "a SentencePiece-style BPE (pieces), but this description has no "
                                "'pieces' line");
  for (const char* k : sentencepiece ? sentencepiece_keys : byte_level_keys)
    TRIAD_CHECK(seen.count(k), where, ": no '", k, "' line");
  TRIAD_CHECK(seen.count("document_start"), where, ": no 'document_start' line");
  TRIAD_CHECK(chat.empty() || parse_chat_format(chat).has_value(), where, ", line ", seen["chat"],
              ": unknown chat format '", excerpt(chat), "' (expected ", chat_format_names(), ")");
  TRIAD_CHECK(!sentencepiece || space_prefix == "true" || space_prefix == "false" ||
                  space_prefix == "unless_space",
              where, ", line ", seen["space_prefix"], ": space_prefix '", excerpt(space_prefix),
              "' must be true, false or unless_space");
  TRIAD_CHECK(
      std::any_of(specials.begin(), specials.end(), [](const Special& s) { return !s.in_text; }),
      where, ": no 'special ID TEXT' line (its special tokens)");
  TRIAD_CHECK(!stops.empty(), where, ": no 'stop' line (the tokens that end generation)");
  TRIAD_CHECK(normalizer.empty() || normalizer == "nfc", where, ": unknown normalizer '",
              excerpt(normalizer), "' (expected nfc, or no normalizer line)");
  const auto sch = sentencepiece ? pretok::Scheme::gpt2 : pretok::parse_scheme(scheme);
  TRIAD_CHECK(sch.has_value(), where, ": unknown pretokenizer '", excerpt(scheme),
              "' (expected gpt2, llama3, qwen2, gpt2_digits, tekken, deepseek3, o200k, kimi, "
              "deepseek_llm or deepseek_coder)");
  for (size_t i = 0; i < specials.size(); ++i)
    for (size_t j = 0; j < i; ++j)
      TRIAD_CHECK(specials[i].text != specials[j].text, where, ", line ", special_lines[i],
                  ": token '", excerpt(specials[i].text), "' was already given on line ",
                  special_lines[j]);

  namespace fs = std::filesystem;
  auto beside = [&](const std::string& name) {  // relative to the description's directory
    fs::path rp(name);
    if (rp.is_relative()) rp = fs::path(path).parent_path() / rp;
    return rp.string();
  };
  Tokenizer t;
  if (sentencepiece) {
    t = from_pieces(beside(pieces), pieces_count, beside(merges), merges_count, std::move(specials),
                    special_lines, path);
    t.space_prefix_ = space_prefix == "true"    ? SpacePrefix::always
                      : space_prefix == "false" ? SpacePrefix::never
                                                : SpacePrefix::unless_space;
  } else {
    const std::string rp = beside(ranks);
    const std::string where_ranks = "ranks file " + rp + " (named by " + path + ")";
    t = from_ranks(tokenizer_files::read_whole(rp, where_ranks), rp, where_ranks,
                   int32_t(ranks_count), std::move(specials), special_lines);
  }
  t.path_ = path;
  t.scheme_ = *sch;
  t.nfc_ = normalizer == "nfc";
  t.chat_ = chat;
  for (size_t i = 0; i < t.specials_.size(); ++i) {
    if (!t.specials_[i].in_text) continue;
    // SentencePiece-style added tokens are found in the normalized text, where a space and
    // U+2581 are one character.
    TRIAD_CHECK(
        !t.sentencepiece_ || (t.specials_[i].text.find("\xE2\x96\x81") == std::string::npos), where,
        ": added token '", excerpt(t.specials_[i].text),
        "' holds U+2581, which a SentencePiece-style tokenizer reads as a space");
    t.added_.push_back(i);
    t.added_first_[static_cast<unsigned char>(t.specials_[i].text[0])] = true;
  }
  auto id_of = [&](const std::string& name, const char* key) {
    const int32_t id = t.special_id(name);
    TRIAD_CHECK(id >= 0, where, ": ", key, " '", excerpt(name),
                "' is not one of the special tokens listed");
    return id;
  };
  t.document_start_ = id_of(document_start, "document_start");
  if (!prompt_start.empty()) t.prompt_start_ = id_of(prompt_start, "prompt_start");
  for (const std::string& s : stops) {
    const int32_t id = id_of(s, "stop");
    TRIAD_CHECK(std::find(t.stop_.begin(), t.stop_.end(), id) == t.stop_.end(), where, ": stop '",
                excerpt(s), "' is given twice");
    t.stop_.push_back(id);
  }
  return t;
}

}  // namespace triad
