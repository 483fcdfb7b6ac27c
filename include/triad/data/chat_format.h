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
//   chatml      per message <|im_start|> "{role}\n{text}" <|im_end|> "\n", then <|im_start|>
//               "assistant\n" (Qwen3, SmolLM2 and other ChatML models, no default system)
//   qwen2       chatml with the system message "You are a helpful assistant." where none is
//               given (Qwen2 Instruct's template, as transformers' Qwen2-Audio default)
//   kimi        per message <|im_system|>, <|im_user|> or <|im_assistant|>, "{role}" <|im_middle|>
//               "{text}" <|im_end|>, with the system message "You are Kimi, an AI assistant
//               created by Moonshot AI." where none is given, then <|im_assistant|> "assistant"
//               <|im_middle|> (Kimi K2 Instruct's template; no BOS, no newlines)
//   deepseek3   <｜begin▁of▁sentence｜> "{system}" then per message <｜User｜> "{text}" or
//               <｜Assistant｜> "{text}" <｜end▁of▁sentence｜>, then <｜Assistant｜> (DeepSeek-V3's
//               template; no default system message, no newlines)
// as mistral_common's and Meta's reference encoders and transformers' Qwen2 template write them
// (tests/python compares; kimi with the prompts Kimi K2's template renders, deepseek3 with
// DeepSeek-V3's template rendered and encoded by Hugging Face's tokenizers).
//
// Whole conversations (chat_example, for fine-tuning: `triad-tokenize shards --chat`) follow the
// same encoders' training form (mistral_common's encode_instruct, Meta's encode_message per
// message): each assistant reply is its text and the end token (</s>; <|eot_id|>) after its
// user turn; mistral_v1 puts the system message before the first user message, mistral_v3 before
// the last (as mistral_common does); v3 and v7 drop a reply's trailing spaces. The loss counts
// the replies and their end tokens, not the prompts, headers or system text (kimi: each reply's
// text and its <|im_end|>; deepseek3: its text and <｜end▁of▁sentence｜>). In ChatML the text
// between two special tokens is encoded whole ("assistant\n" and the reply), so a token that
// spans the header's end counts.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "triad/data/tokenizer.h"

namespace triad {

enum class ChatFormat : uint8_t {
  mistral_v1,
  mistral_v3,
  mistral_v7,
  llama3,
  chatml,
  qwen2,
  kimi,
  deepseek3
};
const char* chat_format_name(ChatFormat f);
std::optional<ChatFormat> parse_chat_format(std::string_view name);
// Every format's name, for messages: "mistral_v1, mistral_v3, ... or kimi", or with another
// choice last: "mistral_v1, ..., kimi or auto".
std::string chat_format_names(std::string_view last = "");

// The format `name` names, where "auto" means the tokenizer description's `chat` line.
// Throws triad::Error naming `option` (the command-line option that gave name) for an unknown
// or empty name, or for "auto" with a description that names no format.
ChatFormat resolve_chat_format(const Tokenizer& tokenizer, std::string_view name,
                               const char* option);

// The prompt ids; an empty system means none. Throws triad::Error naming the format and the
// special token the tokenizer lacks.
std::vector<int32_t> chat_prompt(const Tokenizer& tokenizer, ChatFormat format,
                                 std::string_view system, std::string_view user);

struct ChatMessage {
  std::string role;  // system | user | assistant
  std::string content;
};

// The prompt of a conversation that ends with the user's message (an optional system message
// first, then user and assistant in turn, as chat_example below): the earlier replies as they
// were, then the opening of the next one. Throws triad::Error as chat_example does.
std::vector<int32_t> chat_prompt(const Tokenizer& tokenizer, ChatFormat format,
                                 std::span<const ChatMessage> messages);

// A conversation's ids and, for each, whether the loss counts it as a target (1: a token of an
// assistant reply or its end token; 0: everything else).
struct ChatExample {
  std::vector<int32_t> ids;
  std::vector<uint8_t> counts;
};

// The conversation: an optional system message first, then user and assistant messages taking
// turns, from a user message to an assistant reply (non-empty). Throws triad::Error naming the
// message (1-based) that breaks this, or the special token the tokenizer lacks.
ChatExample chat_example(const Tokenizer& tokenizer, ChatFormat format,
                         std::span<const ChatMessage> messages);

}  // namespace triad
