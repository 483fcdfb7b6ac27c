// Chat prompts for instruct models: the token ids of a conversation's start (an optional system
// message and the user's message) up to where the assistant's reply begins, in the format the
// model was tuned on. Special tokens go in as ids, the messages as text through the tokenizer
// (so a message cannot forge a special token).
//   mistral_v1  <s> then "[INST] {system\n\n}{user} [/INST]" as text (Mistral 7B Instruct v0.1
//               and v0.2, whose tokenizer has no [INST] token)
//   mistral_v3  <s> [INST] {system\n\n}{user} [/INST]  ([INST] and [/INST] are special tokens:
//               Mistral's v3 SentencePiece and Tekken tokenizers, e.g. Mistral 7B Instruct
//               v0.3, Mistral NeMo Instruct)
//   mistral_v7  <s> [SYSTEM_PROMPT] {system} [/SYSTEM_PROMPT] [INST] {user} [/INST]  (Mistral
//               Small 3 and later)
//   llama3      <|begin_of_text|> then per message <|start_header_id|>{role}<|end_header_id|>
//               "\n\n" {text} <|eot_id|>, and the assistant's header (Llama 3 Instruct)
// as mistral_common's and Meta's reference encoders write them (tests/python compares).
#pragma once

#include <cstdint>
#include <optional>
#include <string_view>
#include <vector>

#include "triad/data/tokenizer.h"

namespace triad {

enum class ChatFormat : uint8_t { mistral_v1, mistral_v3, mistral_v7, llama3 };
const char* chat_format_name(ChatFormat f);
std::optional<ChatFormat> parse_chat_format(std::string_view name);

// The format `name` names, where "auto" (or "") means the tokenizer description's `chat` line.
// Throws triad::Error naming `option` (the command-line option that gave name) for an unknown
// name, or for "auto" with a description that names no format.
ChatFormat resolve_chat_format(const Tokenizer& tokenizer, std::string_view name,
                               const char* option);

// The prompt ids; an empty system means none. Throws triad::Error naming the format and the
// special token the tokenizer lacks.
std::vector<int32_t> chat_prompt(const Tokenizer& tokenizer, ChatFormat format,
                                 std::string_view system, std::string_view user);

}  // namespace triad
