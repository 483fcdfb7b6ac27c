#include "triad/data/chat_format.h"

#include <string>
#include <vector>

#include "triad/core/error.h"

namespace triad {

const char* chat_format_name(ChatFormat f) {
  switch (f) {
    case ChatFormat::mistral_v1:
      return "mistral_v1";
    case ChatFormat::mistral_v3:
      return "mistral_v3";
    case ChatFormat::mistral_v7:
      return "mistral_v7";
    case ChatFormat::llama3:
      return "llama3";
    case ChatFormat::chatml:
      return "chatml";
    case ChatFormat::qwen2:
      return "qwen2";
    case ChatFormat::kimi:
      return "kimi";
    case ChatFormat::deepseek3:
      return "deepseek3";
  }
  return "?";
}

namespace {
constexpr ChatFormat kChatFormats[] = {
    ChatFormat::mistral_v1, ChatFormat::mistral_v3, ChatFormat::mistral_v7, ChatFormat::llama3,
    ChatFormat::chatml,     ChatFormat::qwen2,      ChatFormat::kimi,       ChatFormat::deepseek3};
}  // namespace

std::optional<ChatFormat> parse_chat_format(std::string_view name) {
  for (const ChatFormat f : kChatFormats)
    if (name == chat_format_name(f)) return f;
  return std::nullopt;
}

std::string chat_format_names(std::string_view last) {
  std::vector<std::string_view> names;
  for (const ChatFormat f : kChatFormats) names.push_back(chat_format_name(f));
  if (!last.empty()) names.push_back(last);
  std::string out;
  for (size_t i = 0; i < names.size(); ++i) {
    if (i > 0) out += i + 1 < names.size() ? ", " : " or ";
    out += names[i];
  }
  return out;
}

ChatFormat resolve_chat_format(const Tokenizer& tokenizer, std::string_view name,
                               const char* option) {
  std::string chosen(name);
  // (An empty value, an unset shell variable's, is not taken for "auto".)
  TRIAD_CHECK(!chosen.empty(), option, " is empty (give ", chat_format_names("auto"), ")");
  if (chosen == "auto") {
    chosen = tokenizer.chat_format();
    TRIAD_CHECK(!chosen.empty(), tokenizer.path(), " names no chat format: give ", option, " (",
                chat_format_names(), ")");
  }
  const auto f = parse_chat_format(chosen);
  TRIAD_CHECK(f.has_value(), "unknown ", option, " '", chosen, "' (expected ",
              chat_format_names("auto"), ")");
  return *f;
}

namespace {

// Checks the order of roles: [system] user assistant user assistant ... ending with `last`.
void check_turns(std::span<const ChatMessage> messages, std::string_view last) {
  TRIAD_CHECK(!messages.empty(), "a conversation without messages");
  size_t i = messages[0].role == "system" ? 1 : 0;
  for (size_t k = 0; k < messages.size(); ++k) {
    const std::string& role = messages[k].role;
    TRIAD_CHECK(role == "system" || role == "user" || role == "assistant", "message ", k + 1,
                ": role '", role, "' (expected system, user or assistant)");
    if (k < i) continue;
    const char* want = (k - i) % 2 == 0 ? "user" : "assistant";
    TRIAD_CHECK(role == want, "message ", k + 1, ": role '", role, "' where the ", want,
                "'s turn is (an optional system message, then user and assistant in turn)");
    if (role == "assistant")
      TRIAD_CHECK(!messages[k].content.empty(), "message ", k + 1, ": an empty assistant reply");
  }
  TRIAD_CHECK(
      messages.size() > i && messages.back().role == last, "the conversation ends with the ",
      messages.size() > i ? messages.back().role : "system", "'s message; it must end with ",
      last == "user" ? "the user's (the reply comes next)" : "an assistant reply");
}

// The messages' ids and counts (see the header); `prompt`: the messages end with the user's and
// the ids with the opening of the reply, as a model is prompted.
ChatExample encode_chat(const Tokenizer& tokenizer, ChatFormat format,
                        std::span<const ChatMessage> messages, bool prompt) {
  check_turns(messages, prompt ? "user" : "assistant");
  auto special = [&](std::string_view text) {
    const int32_t id = tokenizer.special_id(text);
    TRIAD_CHECK(id >= 0, "chat format ", chat_format_name(format), ": the tokenizer (",
                tokenizer.path(), ") has no special token ", text);
    return id;
  };
  ChatExample ex;
  auto put = [&](int32_t id, bool counted = false) {
    ex.ids.push_back(id);
    ex.counts.push_back(counted ? 1 : 0);
  };
  auto text = [&](std::string_view s, bool counted = false) {
    tokenizer.encode_append(s, ex.ids);
    ex.counts.resize(ex.ids.size(), counted ? 1 : 0);
  };
  const bool has_system = messages[0].role == "system";
  const std::string_view system = has_system ? std::string_view(messages[0].content) : "";
  size_t first_user = has_system ? 1 : 0, last_user = first_user;
  for (size_t k = first_user; k < messages.size(); ++k)
    if (messages[k].role == "user") last_user = k;
  auto with_system = [&](size_t k) {  // Mistral's v1 and v3: the system text before a user's
    const size_t at = format == ChatFormat::mistral_v1 ? first_user : last_user;
    return k == at && !system.empty() ? std::string(system) + "\n\n" + messages[k].content
                                      : messages[k].content;
  };
  auto reply = [&](const std::string& s) {  // v3 and later drop the trailing spaces
    if (format == ChatFormat::mistral_v1) return std::string_view(s);
    const size_t end = s.find_last_not_of(' ');
    // (A reply of spaces alone would be an empty one, which check_turns refuses.)
    TRIAD_CHECK(end != std::string::npos, "an assistant reply of spaces only, which ",
                chat_format_name(format), " drops: an empty reply");
    return std::string_view(s).substr(0, end + 1);
  };
  switch (format) {
    case ChatFormat::mistral_v1:
    case ChatFormat::mistral_v3:
    case ChatFormat::mistral_v7:
      put(special("<s>"));
      for (size_t k = 0; k < messages.size(); ++k) {
        const ChatMessage& m = messages[k];
        if (m.role == "system") {
          if (format != ChatFormat::mistral_v7) continue;  // v1, v3: with a user's message
          put(special("[SYSTEM_PROMPT]"));
          text(m.content);
          put(special("[/SYSTEM_PROMPT]"));
        } else if (m.role == "user") {
          if (format == ChatFormat::mistral_v1) {
            text("[INST] " + with_system(k) + " [/INST]");
          } else {
            put(special("[INST]"));
            text(format == ChatFormat::mistral_v7 ? m.content : with_system(k));
            put(special("[/INST]"));
          }
        } else {
          text(reply(m.content), true);
          put(special("</s>"), true);
        }
      }
      break;
    case ChatFormat::llama3: {
      auto header = [&](std::string_view role) {
        put(special("<|start_header_id|>"));
        text(role);
        put(special("<|end_header_id|>"));
        text("\n\n");
      };
      put(special("<|begin_of_text|>"));
      for (const ChatMessage& m : messages) {
        const bool counted = m.role == "assistant";
        header(m.role);
        text(m.content, counted);
        put(special("<|eot_id|>"), counted);
      }
      if (prompt) header("assistant");
      break;
    }
    case ChatFormat::chatml:
    case ChatFormat::qwen2: {
      // "{role}\n{text}" is one stretch of text between special tokens, encoded whole; with
      // `counted`, the tokens ending past the role's line count.
      auto message = [&](std::string_view role, std::string_view content, bool counted) {
        put(special("<|im_start|>"));
        const size_t first = ex.ids.size();
        const std::string head = std::string(role) + "\n";
        text(head + std::string(content));
        size_t end = 0;
        for (size_t t = first; t < ex.ids.size(); ++t) {
          end += tokenizer.token_bytes(ex.ids[t]).size();
          ex.counts[t] = counted && end > head.size() ? 1 : 0;
        }
        put(special("<|im_end|>"), counted);
        text("\n");
      };
      if (!has_system && format == ChatFormat::qwen2)
        message("system", "You are a helpful assistant.", false);
      for (const ChatMessage& m : messages) message(m.role, m.content, m.role == "assistant");
      if (prompt) {
        put(special("<|im_start|>"));
        text("assistant\n");
      }
      break;
    }
    case ChatFormat::kimi: {
      // The role's token, the role's name as text, then the message between <|im_middle|> and
      // <|im_end|>, each a stretch of text of its own.
      auto opening = [&](std::string_view role) {
        put(special(role == "user"        ? "<|im_user|>"
                    : role == "assistant" ? "<|im_assistant|>"
                                          : "<|im_system|>"));
        text(role);
        put(special("<|im_middle|>"));
      };
      auto message = [&](std::string_view role, std::string_view content, bool counted) {
        opening(role);
        text(content, counted);
        put(special("<|im_end|>"), counted);
      };
      if (!has_system)
        message("system", "You are Kimi, an AI assistant created by Moonshot AI.", false);
      for (const ChatMessage& m : messages) message(m.role, m.content, m.role == "assistant");
      if (prompt) opening("assistant");
      break;
    }
    case ChatFormat::deepseek3:
      // The system text straight after the BOS, each message a stretch of text after its role's
      // token; a reply closed by the EOS (no newlines anywhere).
      put(special("<｜begin▁of▁sentence｜>"));
      for (const ChatMessage& m : messages) {
        if (m.role == "system") {
          text(m.content);
        } else if (m.role == "user") {
          put(special("<｜User｜>"));
          text(m.content);
        } else {
          put(special("<｜Assistant｜>"));
          text(m.content, true);
          put(special("<｜end▁of▁sentence｜>"), true);
        }
      }
      if (prompt) put(special("<｜Assistant｜>"));
      break;
  }
  return ex;
}

}  // namespace

std::vector<int32_t> chat_prompt(const Tokenizer& tokenizer, ChatFormat format,
                                 std::string_view system, std::string_view user) {
  std::vector<ChatMessage> messages;
  if (!system.empty()) messages.push_back({"system", std::string(system)});
  messages.push_back({"user", std::string(user)});
  return chat_prompt(tokenizer, format, messages);
}

std::vector<int32_t> chat_prompt(const Tokenizer& tokenizer, ChatFormat format,
                                 std::span<const ChatMessage> messages) {
  return encode_chat(tokenizer, format, messages, /*prompt=*/true).ids;
}

ChatExample chat_example(const Tokenizer& tokenizer, ChatFormat format,
                         std::span<const ChatMessage> messages) {
  return encode_chat(tokenizer, format, messages, /*prompt=*/false);
}

}  // namespace triad
