// A strict JSON reader of one object per line, keeping one string field: a small recursive-descent
// parser, since only that field is needed and the rest is checked and skipped.
#include "triad/data/json_lines.h"

#include <algorithm>
#include <cstdint>
#include <span>

#include "tokenizer_files.h"
#include "triad/core/error.h"
#include "triad/data/pretokenize.h"

namespace triad {
namespace {

constexpr int kMaxDepth = 512;

class LineParser {
 public:
  LineParser(std::string_view line, const std::string& where, int64_t line_no)
      : s_(line), where_(where), line_no_(line_no) {}

  // The string values of `fields` (setting found[k] for fields[k]), checking the whole line.
  void parse_string_fields(std::span<const std::string_view> fields, std::string* values,
                           bool* found) {
    parse_line([&](const std::string& key) {
      const auto k = size_t(std::find(fields.begin(), fields.end(), key) - fields.begin());
      if (k == fields.size()) return false;
      if (!peek('"')) {
        if (at_end()) fail_here("expected a value");
        fail(std::string("field \"") + key + "\" is not a string");
      }
      values[k].clear();
      parse_string(&values[k]);
      found[k] = true;
      return true;
    });
  }

  // The object's `field` array of messages (set has_value), checking the whole line.
  void parse_conversation_line(std::string_view field, std::vector<ChatMessage>& messages,
                               bool& has_value) {
    parse_line([&](const std::string& key) {
      if (key != field) return false;
      if (!peek('[')) {
        if (at_end()) fail_here("expected a value");
        fail(std::string("field \"") + std::string(field) + "\" is not an array of messages");
      }
      parse_messages(messages);
      has_value = true;
      return true;
    });
  }

  // The values of `fields`, each a string or an array of messages (present where the line has
  // it), checking the whole line.
  void parse_text_or_messages_fields(std::span<const std::string_view> fields, JsonField* values) {
    parse_line([&](const std::string& key) {
      const auto k = size_t(std::find(fields.begin(), fields.end(), key) - fields.begin());
      if (k == fields.size()) return false;
      values[k] = JsonField{};
      if (peek('[')) {
        values[k].messages.emplace();
        parse_messages(*values[k].messages);
      } else if (peek('"')) {
        parse_string(&values[k].text);
      } else {
        if (at_end()) fail_here("expected a value");
        fail(std::string("field \"") + key + "\" is neither a string nor an array of messages");
      }
      values[k].present = true;
      return true;
    });
  }

 private:
  // At a '[': an array of message objects, each with string "role" and "content" fields
  // (others skipped).
  void parse_messages(std::vector<ChatMessage>& messages) {
    messages.clear();
    if (!open_container(']')) return;
    do {
      skip_space();
      if (!peek('{')) fail_here("expected a message object ('{')");
      ChatMessage m;
      bool has_role = false, has_content = false;
      const size_t n = messages.size() + 1;
      parse_object(2, [&](const std::string& k) {
        std::string* out = k == "role" ? &m.role : k == "content" ? &m.content : nullptr;
        if (out == nullptr) return false;
        if (!peek('"')) fail("message " + std::to_string(n) + ": \"" + k + "\" is not a string");
        out->clear();
        parse_string(out);
        (k == "role" ? has_role : has_content) = true;
        return true;
      });
      if (!has_role) fail("message " + std::to_string(n) + " has no \"role\"");
      if (!has_content) fail("message " + std::to_string(n) + " has no \"content\"");
      messages.push_back(std::move(m));
    } while (next_item(']', "expected ',' or ']' after a message"));
  }

  bool at_end() const { return i_ >= s_.size(); }
  bool peek(char c) const { return i_ < s_.size() && s_[i_] == c; }
  void skip_space() {
    while (i_ < s_.size() && (s_[i_] == ' ' || s_[i_] == '\t' || s_[i_] == '\r')) ++i_;
  }
  // At a container's opening '{' or '[': steps past it; false (past `close` too) when the
  // container is empty.
  bool open_container(char close) {
    ++i_;
    skip_space();
    if (!peek(close)) return true;
    ++i_;
    return false;
  }
  // After an item of a container: true past a ',' (another item follows), false past `close`;
  // a line with neither fails with `what`.
  bool next_item(char close, const char* what) {
    skip_space();
    if (peek(',')) {
      ++i_;
      return true;
    }
    if (!peek(close)) fail_here(what);
    ++i_;
    return false;
  }
  // A whole line holding one object; on_field(key) parses the value of a field it wants (the
  // parser at the value) and returns true, or returns false to have it checked and skipped.
  template <class OnField>
  void parse_line(OnField&& on_field) {
    skip_space();
    if (at_end() || s_[i_] != '{') fail_here("expected a JSON object ('{')");
    parse_object(1, on_field);
    skip_space();
    if (!at_end()) fail_here("unexpected text after the object");
  }

  // An object at s_[i_] == '{', nested `depth` deep.
  template <class OnField>
  void parse_object(int depth, OnField&& on_field) {
    if (depth > kMaxDepth) fail("nested deeper than 512 levels");
    if (!open_container('}')) return;
    std::string key;
    do {
      skip_space();
      if (!peek('"')) fail_here("expected a field name in double quotes");
      key.clear();
      parse_string(&key);
      skip_space();
      if (!peek(':')) fail_here("expected ':' after a field name");
      ++i_;
      skip_space();
      if (!on_field(key)) skip_value(depth + 1);
    } while (next_item('}', "expected ',' or '}' after a value"));
  }
  [[noreturn]] void fail(const std::string& what) const {
    triad::fail(where_, ", line ", line_no_, ": ", what);
  }
  [[noreturn]] void fail_here(const char* what) const {
    if (at_end()) fail(std::string(what) + ", found the end of the line");
    fail(std::string(what) + " at column " + std::to_string(i_ + 1) + ", found '" +
         tokenizer_files::excerpt(s_.substr(i_, 12)) + "'");
  }

  uint32_t hex4() {
    if (s_.size() - i_ < 4) fail_here("expected 4 hex digits after \\u");
    uint32_t v = 0;
    for (int k = 0; k < 4; ++k) {
      const char c = s_[i_ + size_t(k)];
      const int d = c >= '0' && c <= '9'   ? c - '0'
                    : c >= 'a' && c <= 'f' ? c - 'a' + 10
                    : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                           : -1;
      if (d < 0) fail_here("expected 4 hex digits after \\u");
      v = v * 16 + uint32_t(d);
    }
    i_ += 4;
    return v;
  }

  // A string at s_[i_] == '"'; its decoded bytes appended to out (if given).
  void parse_string(std::string* out) {
    ++i_;
    for (;;) {
      const size_t start = i_;
      while (i_ < s_.size() && s_[i_] != '"' && s_[i_] != '\\') {
        const auto u = static_cast<unsigned char>(s_[i_]);
        if (u < 0x20) break;
        if (u < 0x80) {
          ++i_;
          continue;
        }
        // JSON text is UTF-8 (RFC 8259): a stray byte, an overlong form or a surrogate is no
        // character, and the tokenizer would encode its bytes as if it were text.
        uint32_t cp = 0;
        const auto* p = reinterpret_cast<const unsigned char*>(s_.data()) + i_;
        const int len = pretok::decode_utf8(p, p + (s_.size() - i_), cp);
        if (cp == pretok::kInvalidCodePoint) {
          static constexpr char kHex[] = "0123456789abcdef";
          fail(std::string("invalid UTF-8 in a string at column ") + std::to_string(i_ + 1) +
               " (byte 0x" + kHex[u >> 4] + kHex[u & 15] + ")");
        }
        i_ += size_t(len);
      }
      if (out) out->append(s_.data() + start, i_ - start);
      if (at_end()) fail("a string is not closed");
      const char c = s_[i_];
      if (c == '"') {
        ++i_;
        return;
      }
      if (c != '\\') fail_here("a raw control character in a string (it must be escaped)");
      ++i_;
      if (at_end()) fail("a string is not closed");
      const char e = s_[i_++];
      char plain = 0;
      switch (e) {
        case '"':
          plain = '"';
          break;
        case '\\':
          plain = '\\';
          break;
        case '/':
          plain = '/';
          break;
        case 'b':
          plain = '\b';
          break;
        case 'f':
          plain = '\f';
          break;
        case 'n':
          plain = '\n';
          break;
        case 'r':
          plain = '\r';
          break;
        case 't':
          plain = '\t';
          break;
        case 'u': {
          uint32_t cp = hex4();
          if (cp >= 0xD800 && cp <= 0xDBFF) {
            if (s_.size() - i_ < 6 || s_[i_] != '\\' || s_[i_ + 1] != 'u')
              fail("a lone surrogate escape (\\u" + to_hex(cp) + ") is not a character");
            i_ += 2;
            const uint32_t lo = hex4();
            if (lo < 0xDC00 || lo > 0xDFFF)
              fail("a lone surrogate escape (\\u" + to_hex(cp) + ") is not a character");
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
          } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
            fail("a lone surrogate escape (\\u" + to_hex(cp) + ") is not a character");
          }
          if (out) pretok::encode_utf8(cp, *out);
          continue;
        }
        default:
          --i_;
          fail_here("an invalid escape in a string");
      }
      if (out) out->push_back(plain);
    }
  }

  static std::string to_hex(uint32_t v) {
    const char* d = "0123456789ABCDEF";
    return {d[(v >> 12) & 15], d[(v >> 8) & 15], d[(v >> 4) & 15], d[v & 15]};
  }

  void parse_number() {
    const size_t start = i_;
    if (peek('-')) ++i_;
    auto digits = [&] {
      const size_t d = i_;
      while (i_ < s_.size() && s_[i_] >= '0' && s_[i_] <= '9') ++i_;
      return i_ - d;
    };
    if (peek('0')) {
      ++i_;
    } else if (digits() == 0) {
      i_ = start;
      fail_here("expected a value");
    }
    if (peek('.')) {
      ++i_;
      if (digits() == 0) fail_here("expected digits after '.'");
    }
    if (peek('e') || peek('E')) {
      ++i_;
      if (peek('+') || peek('-')) ++i_;
      if (digits() == 0) fail_here("expected digits in an exponent");
    }
  }

  void skip_value(int depth) {
    if (depth > kMaxDepth) fail("nested deeper than 512 levels");
    if (at_end()) fail_here("expected a value");
    const char c = s_[i_];
    if (c == '"') return parse_string(nullptr);
    if (c == '{' || c == '[') {
      const char close = c == '{' ? '}' : ']';
      if (!open_container(close)) return;
      do {
        skip_space();
        if (c == '{') {
          if (!peek('"')) fail_here("expected a field name in double quotes");
          parse_string(nullptr);
          skip_space();
          if (!peek(':')) fail_here("expected ':' after a field name");
          ++i_;
          skip_space();
        }
        skip_value(depth + 1);
      } while (
          next_item(close, c == '{' ? "expected ',' or '}' after a value" : "expected ',' or ']'"));
      return;
    }
    for (const std::string_view lit : {"true", "false", "null"})
      if (s_.substr(i_, lit.size()) == lit) {
        i_ += lit.size();
        return;
      }
    parse_number();
  }

  std::string_view s_;
  size_t i_ = 0;
  const std::string& where_;
  int64_t line_no_;
};

// Calls fn(parser, line number, has_value) for each non-blank line of text (lines end at "\n");
// fn parses the line and sets has_value where it held `field`.
template <class F>
void for_each_line(std::string_view text, std::string_view field, const std::string& where,
                   F&& fn) {
  int64_t line_no = 0;
  // A UTF-8 byte-order mark (some Windows editors write one) is no part of the first line.
  if (text.starts_with("\xEF\xBB\xBF")) text.remove_prefix(3);
  for (size_t pos = 0; pos < text.size();) {
    size_t nl = text.find('\n', pos);
    if (nl == std::string_view::npos) nl = text.size();
    std::string_view line = text.substr(pos, nl - pos);
    pos = nl + 1;
    ++line_no;
    if (line.find_first_not_of(" \t\r") == std::string_view::npos) continue;
    LineParser p(line, where, line_no);
    bool has_value = false;
    fn(p, line_no, has_value);
    TRIAD_CHECK(has_value, where, ", line ", line_no, ": no \"", field, "\" field");
  }
}

}  // namespace

std::vector<std::string> json_lines_documents(std::string_view text, std::string_view field,
                                              const std::string& where) {
  std::vector<std::string> docs;
  for_each_line(text, field, where, [&](LineParser& p, int64_t, bool& has_value) {
    std::string value;
    p.parse_string_fields({&field, 1}, &value, &has_value);
    docs.push_back(std::move(value));
  });
  return docs;
}

std::vector<JsonPair> json_lines_pairs(std::string_view text, std::string_view prompt_field,
                                       std::string_view completion_field,
                                       const std::string& where) {
  std::vector<JsonPair> out;
  const std::string_view fields[] = {completion_field, prompt_field};
  for_each_line(
      text, completion_field, where, [&](LineParser& p, int64_t line_no, bool& has_completion) {
        std::string values[2];
        bool found[2] = {false, false};
        p.parse_string_fields(fields, values, found);
        TRIAD_CHECK(found[1], where, ", line ", line_no, ": no \"", prompt_field, "\" field");
        has_completion = found[0];
        out.push_back({line_no, std::move(values[1]), std::move(values[0])});
      });
  return out;
}

std::vector<JsonRecord> json_lines_records(std::string_view text,
                                           std::span<const std::string_view> fields,
                                           const std::string& where) {
  TRIAD_ASSERT(!fields.empty());
  std::vector<JsonRecord> out;
  // (every line has a value of fields[0] to for_each_line: absent ones are the caller's to judge)
  for_each_line(text, fields[0], where, [&](LineParser& p, int64_t line_no, bool& has_first) {
    JsonRecord r;
    r.line = line_no;
    r.values.resize(fields.size());
    p.parse_text_or_messages_fields(fields, r.values.data());
    has_first = true;
    out.push_back(std::move(r));
  });
  return out;
}

std::vector<JsonConversation> json_lines_conversations(std::string_view text,
                                                       std::string_view field,
                                                       const std::string& where) {
  std::vector<JsonConversation> out;
  for_each_line(text, field, where, [&](LineParser& p, int64_t line_no, bool& has_value) {
    JsonConversation c;
    c.line = line_no;
    p.parse_conversation_line(field, c.messages, has_value);
    out.push_back(std::move(c));
  });
  return out;
}

std::vector<JsonConversation> read_conversations(const std::string& path, const char* option) {
  const std::string where = std::string(option) + " " + path;
  auto convs =
      json_lines_conversations(tokenizer_files::read_whole(path, where), "messages", where);
  TRIAD_CHECK(!convs.empty(), where, ": no conversation in it");
  return convs;
}

std::vector<int32_t> conversation_prompt(const Tokenizer& tokenizer, ChatFormat format,
                                         const JsonConversation& c, const std::string& path,
                                         const char* option) {
  try {
    return chat_prompt(tokenizer, format, c.messages);
  } catch (const Error& e) {
    fail(option, " ", path, ", line ", c.line, ": ", e.what());
  }
}

}  // namespace triad
