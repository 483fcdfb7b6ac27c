#include "triad/data/chat_format.h"

#include <string>

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
  }
  return "?";
}

std::optional<ChatFormat> parse_chat_format(std::string_view name) {
  for (const ChatFormat f :
       {ChatFormat::mistral_v1, ChatFormat::mistral_v3, ChatFormat::mistral_v7, ChatFormat::llama3})
    if (name == chat_format_name(f)) return f;
  return std::nullopt;
}

ChatFormat resolve_chat_format(const Tokenizer& tokenizer, std::string_view name,
                               const char* option) {
  std::string chosen(name);
  if (chosen.empty() || chosen == "auto") {
    chosen = tokenizer.chat_format();
    TRIAD_CHECK(!chosen.empty(), tokenizer.path(), " names no chat format: give ", option,
                " (mistral_v1, mistral_v3, mistral_v7 or llama3)");
  }
  const auto f = parse_chat_format(chosen);
  TRIAD_CHECK(f.has_value(), "unknown ", option, " '", chosen,
              "' (expected mistral_v1, mistral_v3, mistral_v7, llama3 or auto)");
  return *f;
}

std::vector<int32_t> chat_prompt(const Tokenizer& tokenizer, ChatFormat format,
                                 std::string_view system, std::string_view user) {
  auto special = [&](std::string_view text) {
    const int32_t id = tokenizer.special_id(text);
    TRIAD_CHECK(id >= 0, "chat format ", chat_format_name(format), ": the tokenizer (",
                tokenizer.path(), ") has no special token ", text);
    return id;
  };
  std::vector<int32_t> ids;
  auto text = [&](std::string_view s) { tokenizer.encode_append(s, ids); };
  // Mistral's formats before v7 put the system message before the user's.
  std::string content(user);
  if (!system.empty()) content = std::string(system) + "\n\n" + std::string(user);
  switch (format) {
    case ChatFormat::mistral_v1:
      ids.push_back(special("<s>"));
      text("[INST] " + content + " [/INST]");
      break;
    case ChatFormat::mistral_v3:
      ids.push_back(special("<s>"));
      ids.push_back(special("[INST]"));
      text(content);
      ids.push_back(special("[/INST]"));
      break;
    case ChatFormat::mistral_v7:
      ids.push_back(special("<s>"));
      if (!system.empty()) {
        ids.push_back(special("[SYSTEM_PROMPT]"));
        text(system);
        ids.push_back(special("[/SYSTEM_PROMPT]"));
      }
      ids.push_back(special("[INST]"));
      text(user);
      ids.push_back(special("[/INST]"));
      break;
    case ChatFormat::llama3: {
      auto header = [&](std::string_view role) {
        ids.push_back(special("<|start_header_id|>"));
        text(role);
        ids.push_back(special("<|end_header_id|>"));
        text("\n\n");
      };
      ids.push_back(special("<|begin_of_text|>"));
      if (!system.empty()) {
        header("system");
        text(system);
        ids.push_back(special("<|eot_id|>"));
      }
      header("user");
      text(user);
      ids.push_back(special("<|eot_id|>"));
      header("assistant");
      break;
    }
  }
  return ids;
}

}  // namespace triad
