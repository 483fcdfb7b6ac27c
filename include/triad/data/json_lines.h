// Documents from JSON Lines files (`triad-tokenize shards --jsonl`): one JSON object per line,
// the document being the string value of one of its fields (e.g. "text", as in FineWeb's and
// most Hugging Face datasets' JSONL exports).
#pragma once

#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "triad/data/chat_format.h"

namespace triad {

// The value of `field` in each non-blank line of text (lines end at "\n", a "\r" before it
// dropped), decoded to UTF-8 (\uXXXX escapes and surrogate pairs included), in order. A field
// given twice in a line takes its last value, as Python's json module does. Throws triad::Error
// naming `where`, the line and the problem for a line that is not one strict JSON object (RFC
// 8259: no trailing commas, comments or raw control characters in strings; nesting at most 512
// deep), a lone surrogate escape, or a missing or non-string field.
std::vector<std::string> json_lines_documents(std::string_view text, std::string_view field,
                                              const std::string& where);

// Prompt and completion pairs (`triad-tokenize shards --jsonl --prompt-field P [--field C]`):
// the string values of both fields of each line, as above.
struct JsonPair {
  int64_t line = 0;
  std::string prompt, completion;
};
std::vector<JsonPair> json_lines_pairs(std::string_view text, std::string_view prompt_field,
                                       std::string_view completion_field, const std::string& where);

// Records of several fields (`triad-tokenize preferences`: prompt, chosen, rejected), each a
// string or an array of messages as below: values[k] is field k's value in that line (present
// false where the line lacks it).
struct JsonField {
  bool present = false;
  std::string text;
  std::optional<std::vector<ChatMessage>> messages;  // an array of messages instead of text
};
struct JsonRecord {
  int64_t line = 0;
  std::vector<JsonField> values;
};
std::vector<JsonRecord> json_lines_records(std::string_view text,
                                           std::span<const std::string_view> fields,
                                           const std::string& where);

// Conversations (`triad-tokenize shards --chat`): in each non-blank line, `field` holds an array
// of message objects, each with string "role" and "content" fields (others are skipped), as
// chat datasets export them ({"messages": [{"role": "user", "content": "..."}, ...]}). The same
// strictness as above; a message without a string role or content is refused, naming the line.
struct JsonConversation {
  int64_t line = 0;  // 1-based, for errors about the conversation
  std::vector<ChatMessage> messages;
};
std::vector<JsonConversation> json_lines_conversations(std::string_view text,
                                                       std::string_view field,
                                                       const std::string& where);
// The conversations of a JSON Lines file (`--messages FILE` of triad-tokenize chat and
// triad-generate), their messages in the field "messages"; `option` names it in errors.
std::vector<JsonConversation> read_conversations(const std::string& path, const char* option);
// chat_prompt of conversation c of that file, an error naming the file and c's line.
std::vector<int32_t> conversation_prompt(const Tokenizer& tokenizer, ChatFormat format,
                                         const JsonConversation& c, const std::string& path,
                                         const char* option);

}  // namespace triad
