// triad-tokenize: byte-level BPE (GPT-2's, or a tokenizer description's) on the command line.
//   triad-tokenize encode --vocab FILE            text (bytes) on stdin -> ids, one per line
//   triad-tokenize decode --vocab FILE            ids (whitespace-separated) on stdin -> bytes
//   triad-tokenize shards --vocab FILE --out DIR [--prefix NAME] [--val-fraction F]
//                         [--shard-tokens N] [--threads N] [--jsonl [--field NAME]]
//                         [--chat FORMAT|auto] FILE...
//   triad-tokenize chat --vocab FILE [--format NAME] [--system TEXT | --messages FILE]
//   triad-tokenize pieces --vocab FILE            text on stdin -> its pre-tokenizer's pieces
//   triad-tokenize preferences --vocab FILE --out FILE.h5 [--chat FORMAT|auto] FILE...
// Every error: one line "triad-tokenize: error: ..." on stderr and exit code 1.
#include <mpi.h>

#include <algorithm>
#include <boost/program_options.hpp>
#include <charconv>
#include <cstdio>
#include <iostream>
#include <optional>
#include <span>
#include <sstream>
#include <string>
#include <vector>

#include "triad/core/error.h"
#include "triad/data/chat_format.h"
#include "triad/data/json_lines.h"
#include "triad/data/pretokenize.h"
#include "triad/data/shard_writer.h"
#include "triad/data/tokenizer.h"
#include "triad/data/unicode_nfc.h"
#include "triad/io/preference_file.h"
#include "triad/parallel/comm.h"
#include "triad/train/app_main.h"
#include "triad/train/positional_arguments.h"

namespace po = boost::program_options;

namespace {

constexpr const char* kProg = "triad-tokenize";

constexpr const char* kUsage =
    "usage: triad-tokenize COMMAND [OPTIONS]\n"
    "--vocab is GPT-2's ranks file (tiktoken's format; <|endoftext|> is the id after the last\n"
    "rank) or a tokenizer description (triad-convert tokenizer: Llama 3, Qwen2, Mistral, ...).\n"
    "\n"
    "commands:\n"
    "  encode --vocab FILE     read text (any bytes) on stdin, write token ids, one per line\n"
    "  decode --vocab FILE     read token ids (whitespace-separated) on stdin, write the bytes\n"
    "  shards --vocab FILE --out DIR [--prefix NAME] [--val-fraction F] [--shard-tokens N]\n"
    "         [--threads N] FILE...\n"
    "                          tokenize text files (one document each, the tokenizer's\n"
    "                          document start, GPT-2's <|endoftext|>, before each) into llm.c\n"
    "                          token shards DIR/NAME_{train,val}_NNNNNN.bin (uint16 ids, or\n"
    "                          uint32 for a vocabulary above 65536); --jsonl [--field NAME]:\n"
    "                          JSON Lines files, each line's text field a document;\n"
    "                          --chat FORMAT|auto [--field NAME]: JSON Lines conversations\n"
    "                          (\"messages\": [{\"role\": ..., \"content\": ...}]) in a chat\n"
    "                          format, with loss masks (.mask) counting the replies only\n"
    "                          (--document-start: the document start before each one);\n"
    "                          --jsonl --prompt-field P [--field C]: prompt and completion\n"
    "                          pairs, the masks counting the completions\n"
    "  pieces --vocab FILE     read text on stdin, write its pre-tokenizer's pieces (after NFC\n"
    "                          where the description normalizes; added tokens not looked\n"
    "                          for), one JSON string per line, an ill-formed byte 0xNN as\n"
    "                          \\uDCNN (Python's surrogateescape)\n"
    "  chat --vocab FILE [--format NAME] [--system TEXT | --messages FILE]\n"
    "                          read a user message on stdin, write the ids of a chat prompt\n"
    "                          (in a chat format: --format, default the description's),\n"
    "                          one per line;\n"
    "                          --messages: JSON Lines conversations ending with the user's\n"
    "                          message (multi-turn), each prompt's ids on a line\n"
    "  preferences --vocab FILE --out FILE.h5 [--chat FORMAT|auto] [--max-tokens N] FILE...\n"
    "                          JSON Lines of {\"prompt\", \"chosen\", \"rejected\"} (strings,\n"
    "                          or with --chat arrays of messages) into a preference file\n"
    "                          for DPO (data.preferences): each pair's two sequences, the\n"
    "                          responses' (last replies') targets counted\n"
    "\n"
    "'triad-tokenize COMMAND --help' lists a command's options.\n";

std::string read_stdin() {
  std::string data;
  char buf[1 << 16];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), stdin)) > 0) data.append(buf, n);
  TRIAD_CHECK(!std::ferror(stdin), "cannot read standard input");
  return data;
}

void write_stdout(std::string_view data) {
  if (!data.empty())
    TRIAD_CHECK(std::fwrite(data.data(), 1, data.size(), stdout) == data.size(),
                "cannot write standard output");
  TRIAD_CHECK(std::fflush(stdout) == 0, "cannot write standard output");
}

// Parses args (the command's arguments) into vm; prints help and returns false on --help.
// hidden: options not shown in the help (the positional input files).
bool parse(const char* command, const std::vector<std::string>& args, po::options_description& desc,
           const po::options_description* hidden,
           const po::positional_options_description* positional, po::variables_map& vm) {
  desc.add_options()("help,h", "show this help");
  po::options_description all;
  all.add(desc);
  if (hidden) all.add(*hidden);
  try {
    po::command_line_parser parser(args);
    parser.options(all);
    if (positional) parser.positional(*positional);
    const po::parsed_options parsed = parser.run();
    triad::reject_positional_arguments(
        parsed, command,
        std::string("every option starts with --; see 'triad-tokenize ") + command + " --help'");
    po::store(parsed, vm);
    if (vm.count("help")) {
      std::ostringstream os;
      os << "usage: triad-tokenize " << command << " [OPTIONS]" << (positional ? " FILE..." : "")
         << "\n"
         << desc;
      write_stdout(os.str());
      return false;
    }
    po::notify(vm);
  } catch (const po::error& e) {
    triad::fail(command, ": ", e.what(), " (see 'triad-tokenize ", command, " --help')");
  }
  return true;
}

// The ids as text, one per line.
std::string ids_text(const std::vector<int32_t>& ids) {
  std::string out;
  out.reserve(ids.size() * 6);
  char num[16];
  for (const int32_t id : ids) {
    const auto r = std::to_chars(num, num + sizeof(num), id);
    out.append(num, r.ptr);
    out.push_back('\n');
  }
  return out;
}

int cmd_encode(const std::vector<std::string>& args) {
  po::options_description desc("encode options");
  std::string vocab;
  int threads = 0;
  desc.add_options()("vocab", po::value(&vocab)->required(),
                     "ranks file (gpt2.tiktoken) or tokenizer description")(
      "threads", po::value(&threads)->default_value(0), "encoding threads (0: one per core)");
  po::variables_map vm;
  if (!parse("encode", args, desc, nullptr, nullptr, vm)) return 0;
  const auto tok = triad::Tokenizer::from_file(vocab);
  const std::string text = read_stdin();
  write_stdout(ids_text(triad::encode_parallel(tok, text, threads)));
  return 0;
}

// A piece as a JSON string: quotes, backslashes and control characters escaped, well-formed
// UTF-8 as it is but control characters and U+0085, U+2028, U+2029, an ill-formed byte b as
// \uDCbb (what Python's surrogateescape decodes it to).
void append_json_piece(std::string_view piece, std::string& out) {
  out += '"';
  const auto* p = reinterpret_cast<const unsigned char*>(piece.data());
  const auto* const end = p + piece.size();
  char hex[8];
  while (p < end) {
    uint32_t cp;
    const int len = triad::pretok::decode_utf8(p, end, cp);
    if (cp == triad::pretok::kInvalidCodePoint) {
      std::snprintf(hex, sizeof(hex), "\\u%04X", 0xDC00u + *p);
      out += hex;
    } else if (cp == '"' || cp == '\\') {
      out += '\\';
      out += char(cp);
    } else if (cp < 0x20 || cp == 0x7F || cp == 0x85 || cp == 0x2028 || cp == 0x2029) {
      // (also the characters that end a line in Python's splitlines and in JavaScript)
      std::snprintf(hex, sizeof(hex), "\\u%04X", unsigned(cp));
      out += hex;
    } else {
      out.append(reinterpret_cast<const char*>(p), size_t(len));
    }
    p += len;
  }
  out += "\"\n";
}

int cmd_pieces(const std::vector<std::string>& args) {
  po::options_description desc("pieces options");
  std::string vocab;
  desc.add_options()("vocab", po::value(&vocab)->required(),
                     "ranks file (gpt2.tiktoken) or tokenizer description");
  po::variables_map vm;
  if (!parse("pieces", args, desc, nullptr, nullptr, vm)) return 0;
  const auto tok = triad::Tokenizer::from_file(vocab);
  TRIAD_CHECK(!tok.is_sentencepiece(), "pieces: ", vocab,
              " is a SentencePiece-style BPE, which has no pre-tokenizer");
  std::string text = read_stdin();
  if (tok.normalizes_nfc()) text = triad::nfc(text);
  std::string out;
  triad::pretok::for_each_piece(tok.pretokenizer(), text,
                                [&](std::string_view piece) { append_json_piece(piece, out); });
  write_stdout(out);
  return 0;
}

int cmd_chat(const std::vector<std::string>& args) {
  po::options_description desc("chat options");
  std::string vocab, format, system, messages;
  desc.add_options()("vocab", po::value(&vocab)->required(), "tokenizer description")(
      "format", po::value(&format),
      (triad::chat_format_names() + " (default: the description's 'chat' line)").c_str())(
      "system", po::value(&system)->default_value(""), "system message (empty: none)")(
      "messages", po::value(&messages),
      "instead of stdin: JSON Lines conversations ({\"messages\": [{\"role\": ..., \"content\": "
      "...}, ...]}, each ending with the user's message): each prompt's ids on a line");
  po::variables_map vm;
  if (!parse("chat", args, desc, nullptr, nullptr, vm)) return 0;
  // An empty path (an unset shell variable) must not mean "not given": stdin.
  TRIAD_CHECK(!vm.count("messages") || !messages.empty(),
              "chat: --messages is empty (give a file)");
  TRIAD_CHECK(messages.empty() || vm["system"].defaulted(),
              "chat: --messages holds its own system messages; drop --system");
  const auto tok = triad::Tokenizer::from_file(vocab);
  const auto f = triad::resolve_chat_format(tok, vm.count("format") ? format : "auto", "--format");
  if (!vm.count("messages")) {
    write_stdout(ids_text(triad::chat_prompt(tok, f, system, read_stdin())));
    return 0;
  }
  std::string out;
  for (const auto& c : triad::read_conversations(messages, "--messages")) {
    const auto ids = triad::conversation_prompt(tok, f, c, messages, "--messages");
    for (size_t i = 0; i < ids.size(); ++i) {
      if (i > 0) out += ' ';
      out += std::to_string(ids[i]);
    }
    out += "\n";
  }
  write_stdout(out);
  return 0;
}

int cmd_decode(const std::vector<std::string>& args) {
  po::options_description desc("decode options");
  std::string vocab;
  desc.add_options()("vocab", po::value(&vocab)->required(),
                     "ranks file (gpt2.tiktoken) or tokenizer description");
  po::variables_map vm;
  if (!parse("decode", args, desc, nullptr, nullptr, vm)) return 0;
  const auto tok = triad::Tokenizer::from_file(vocab);
  const std::string text = read_stdin();
  std::vector<int32_t> ids;
  auto is_space = [](char c) {
    return c == ' ' || c == '\n' || c == '\t' || c == '\r' || c == '\v' || c == '\f';
  };
  for (size_t p = 0; p < text.size();) {
    if (is_space(text[p])) {
      ++p;
      continue;
    }
    size_t q = p;
    while (q < text.size() && !is_space(text[q])) ++q;
    const std::string_view word(text.data() + p, q - p);
    int64_t id = 0;
    const auto r = std::from_chars(word.data(), word.data() + word.size(), id);
    // The word as the message shows it: bytes that are not printable ASCII (a NUL would end
    // the message) as \xNN.
    std::string shown;
    for (const char c : word.substr(0, 40)) {
      const auto u = static_cast<unsigned char>(c);
      if (u >= 0x20 && u < 0x7f) {
        shown += c;
      } else {
        static constexpr char kHex[] = "0123456789abcdef";
        shown += {'\\', 'x', kHex[u >> 4], kHex[u & 15]};
      }
    }
    TRIAD_CHECK(r.ec == std::errc() && r.ptr == word.data() + word.size(), "decode: '", shown,
                "' (item ", ids.size() + 1, " on stdin) is not a token id");
    TRIAD_CHECK(id >= 0 && id < tok.vocab_size(), "decode: token id ", shown, " (item ",
                ids.size() + 1, " on stdin) is out of range: ids run from 0 to ",
                tok.vocab_size() - 1);
    ids.push_back(int32_t(id));
    p = q;
  }
  write_stdout(tok.decode(ids));
  return 0;
}

int cmd_shards(const std::vector<std::string>& args) {
  po::options_description desc("shards options");
  std::string vocab;
  std::vector<std::string> files;
  triad::ShardWriterOptions o;
  bool jsonl = false, document_start = false;
  std::string field, chat, prompt_field;
  desc.add_options()("vocab", po::value(&vocab)->required(),
                     "ranks file (gpt2.tiktoken) or tokenizer description")(
      "out", po::value(&o.out_dir)->required(), "output directory (created if needed)")(
      "prefix", po::value(&o.prefix)->default_value(o.prefix),
      "shard names: PREFIX_train_NNNNNN.bin, PREFIX_val_NNNNNN.bin")(
      "val-fraction", po::value(&o.val_fraction)->default_value(o.val_fraction, "0.05"),
      "fraction of all tokens, taken from the end of the token stream, for validation")(
      "shard-tokens", po::value(&o.shard_tokens)->default_value(o.shard_tokens),
      "tokens per shard at most")("threads", po::value(&o.threads)->default_value(0),
                                  "encoding threads (0: one per core)")(
      "jsonl", po::bool_switch(&jsonl),
      "the files are JSON Lines: each line an object whose --field is a document")(
      "field", po::value(&field)->default_value("text"),
      "with --jsonl: the field holding each document's text; with --chat: the field holding "
      "each conversation's messages (default messages)")(
      "prompt-field", po::value(&prompt_field),
      "with --jsonl: each line is a prompt (this field) and its completion (--field, default "
      "completion); a loss mask beside each shard counts the completion and the stop token "
      "after it")("chat", po::value(&chat),
                  ("the files are JSON Lines conversations, encoded in this chat format (" +
                   triad::chat_format_names("auto") +
                   "; auto: the tokenizer description's); a loss mask beside each shard counts the "
                   "assistant replies (data.loss_mask)")
                      .c_str())(
      "document-start", po::bool_switch(&document_start),
      "with --chat: the tokenizer's document start (not counted) before each conversation that "
      "does not begin with it (chatml, qwen2, kimi), so that data.document_mask = its id (or name) "
      "keeps packed conversations apart");
  po::options_description hidden;
  hidden.add_options()("input", po::value(&files),
                       "text files, one document each (JSON Lines files with --jsonl)");
  po::positional_options_description pos;
  pos.add("input", -1);
  po::variables_map vm;
  if (!parse("shards", args, desc, &hidden, &pos, vm)) return 0;
  TRIAD_CHECK(!files.empty(), "shards: no input files given (see 'triad-tokenize shards --help')");
  const bool chats = vm.count("chat") > 0;
  TRIAD_CHECK(jsonl || chats || vm["field"].defaulted(),
              "shards: --field applies to --jsonl or --chat input only");
  TRIAD_CHECK(!(jsonl && chats), "shards: --chat reads JSON Lines conversations; drop --jsonl");
  TRIAD_CHECK(!field.empty(), "shards: --field must name a field");
  TRIAD_CHECK(!vm.count("prompt-field") || jsonl, "shards: --prompt-field needs --jsonl");
  TRIAD_CHECK(!vm.count("prompt-field") || !prompt_field.empty(),
              "shards: --prompt-field must name a field");
  if (chats && vm["field"].defaulted()) field = "messages";
  if (!prompt_field.empty() && vm["field"].defaulted()) field = "completion";
  o.prompt_field = prompt_field;
  if (jsonl || chats) o.jsonl_field = field;
  o.progress = &std::cerr;  // a corpus larger than one batch reports each
  const auto tok = triad::Tokenizer::from_file(vocab);
  TRIAD_CHECK(!document_start || chats, "shards: --document-start applies to --chat input only");
  o.chat_document_start = document_start;
  if (chats) o.chat = triad::resolve_chat_format(tok, chat, "--chat");
  const triad::ShardSummary s = triad::write_shards(tok, files, o);
  std::ostringstream os;
  os.setf(std::ios::fixed);
  os.precision(2);
  const double secs = std::max(s.encode_seconds, 1e-9);
  if (!o.prompt_field.empty()) {
    os << "documents:    " << s.documents << " prompt and completion pairs ("
       << double(s.bytes) / 1e6 << " MB)\n"
       << "tokens:       " << s.tokens << " (uint" << 8 * s.token_bytes << " shards), " << s.counted
       << " of them counted by the loss masks (completions and stop tokens)\n";
  } else if (o.chat) {
    os << "conversations: " << s.documents << " (" << double(s.bytes) / 1e6 << " MB)\n"
       << "tokens:       " << s.tokens << " (" << triad::chat_format_name(*o.chat)
       << " format; uint" << 8 * s.token_bytes << " shards), " << s.counted
       << " of them counted by the loss masks (the replies)\n";
  } else {
    os << "documents:    " << s.documents << " (" << double(s.bytes) / 1e6 << " MB)\n"
       << "tokens:       " << s.tokens << " (" << tok.token_bytes(tok.document_start())
       << " before each document; uint" << 8 * s.token_bytes << " shards)\n";
  }
  os << "train:        " << s.train_tokens << " tokens in " << s.train_files.size()
     << " shard(s)\n";
  for (const auto& f : s.train_files) os << "              " << f << "\n";
  os << "val:          " << s.val_tokens << " tokens in " << s.val_files.size() << " shard(s)\n";
  for (const auto& f : s.val_files) os << "              " << f << "\n";
  if (!s.removed_files.empty()) {
    os << "removed:      " << s.removed_files.size()
       << " stale shard(s) or mask(s) of an earlier run\n";
    for (const auto& f : s.removed_files) os << "              " << f << "\n";
  }
  os << "speed:        " << double(s.tokens) / secs / 1e6 << " M tokens/s, "
     << double(s.bytes) / secs / 1e6 << " MB/s on " << s.threads << " thread(s) (encode "
     << s.encode_seconds << " s, total " << s.seconds << " s)\n";
  write_stdout(os.str());
  return 0;
}

// One side of a preference line as a sequence (triad-tokenize preferences): its ids and the
// counts of its response. `names` are the prompt's and this response's fields.
triad::ChatExample preference_sequence(const triad::Tokenizer& tok,
                                       const std::optional<triad::ChatFormat>& format,
                                       const std::string& system, const triad::JsonField& prompt,
                                       const triad::JsonField& response,
                                       const std::string (&names)[2]) {
  TRIAD_CHECK(response.present, "no \"", names[1], "\" field");
  if (!format) {
    for (int k = 0; k < 2; ++k)
      TRIAD_CHECK(!(k == 0 ? prompt : response).messages, "\"", names[k],
                  "\" is a conversation (an array of messages): give --chat FORMAT");
    TRIAD_CHECK(prompt.present, "no \"", names[0], "\" field");
    return triad::completion_example(tok, prompt.text, response.text);
  }
  // The conversation: the prompt's messages (a text prompt: the user's message, after --system),
  // then the response's (a text response: the assistant's reply); a response whose messages
  // start with another role than the assistant's is a whole conversation, its prompt included.
  std::vector<triad::ChatMessage> conv;
  const bool whole = response.messages && !response.messages->empty() &&
                     response.messages->front().role != "assistant";
  if (!whole) {
    TRIAD_CHECK(prompt.present, "no \"", names[0], "\" field (\"", names[1],
                "\" is a reply, not a whole conversation)");
    if (prompt.messages) {
      conv = *prompt.messages;
    } else {
      if (!system.empty()) conv.push_back({"system", system});
      conv.push_back({"user", prompt.text});
    }
  }
  if (response.messages)
    conv.insert(conv.end(), response.messages->begin(), response.messages->end());
  else
    conv.push_back({"assistant", response.text});
  TRIAD_CHECK(conv.back().role == "assistant", "the \"", names[1],
              "\" conversation does not end with the assistant's reply");
  triad::ChatExample ex = triad::chat_example(tok, *format, conv);
  // DPO compares the last replies: what comes before, earlier replies too, is the prompt.
  const std::vector<int32_t> before =
      triad::chat_prompt(tok, *format, std::span(conv).first(conv.size() - 1));
  TRIAD_CHECK(
      before.size() < ex.ids.size() && std::equal(before.begin(), before.end(), ex.ids.begin()),
      "the ", triad::chat_format_name(*format),
      " prompt of the conversation before its last reply is not where the conversation "
      "starts (a format that renders earlier turns otherwise once a reply follows)");
  std::fill(ex.counts.begin(), ex.counts.begin() + ptrdiff_t(before.size()), uint8_t(0));
  return ex;
}

int cmd_preferences(const std::vector<std::string>& args) {
  po::options_description desc("preferences options");
  std::string vocab, out, chat, system;
  std::string fields[3] = {"prompt", "chosen", "rejected"};
  int64_t max_tokens = 0;
  std::vector<std::string> files;
  desc.add_options()("vocab", po::value(&vocab)->required(),
                     "ranks file (gpt2.tiktoken) or tokenizer description")(
      "out", po::value(&out)->required(), "the preference file to write (HDF5, data.preferences)")(
      "chat", po::value(&chat),
      ("the pairs in this chat format (" + triad::chat_format_names("auto") +
       "; auto: the tokenizer description's): a prompt is the user's message or an array of "
       "messages, a response the assistant's reply or an array of messages (those not starting "
       "with the assistant's: the whole conversation, no prompt needed); the last reply counts. "
       "Without it: the document start, the prompt, then the response and the tokenizer's stop "
       "token")
          .c_str())("system", po::value(&system)->default_value(""),
                    "with --chat: a system message before each text prompt (empty: none)")(
      "max-tokens", po::value(&max_tokens)->default_value(0),
      "leave out the pairs with a sequence longer than this (model.seq_len + 1); 0: keep all")(
      "prompt-field", po::value(&fields[0])->default_value(fields[0]), "the prompt's field")(
      "chosen-field", po::value(&fields[1])->default_value(fields[1]),
      "the chosen response's field")("rejected-field",
                                     po::value(&fields[2])->default_value(fields[2]),
                                     "the rejected response's field");
  po::options_description hidden;
  hidden.add_options()("input", po::value(&files), "JSON Lines files");
  po::positional_options_description pos;
  pos.add("input", -1);
  po::variables_map vm;
  if (!parse("preferences", args, desc, &hidden, &pos, vm)) return 0;
  TRIAD_CHECK(!files.empty(),
              "preferences: no input files given (see 'triad-tokenize preferences --help')");
  TRIAD_CHECK(max_tokens >= 0, "preferences: --max-tokens must be >= 0 (0: keep all)");
  TRIAD_CHECK(!out.empty(), "preferences: --out is empty (give a file)");
  for (const auto& f : fields) TRIAD_CHECK(!f.empty(), "preferences: a --*-field names no field");
  TRIAD_CHECK(fields[0] != fields[1] && fields[0] != fields[2] && fields[1] != fields[2],
              "preferences: the prompt, chosen and rejected fields must differ");
  TRIAD_CHECK(vm.count("chat") || vm["system"].defaulted(), "preferences: --system needs --chat");
  const auto tok = triad::Tokenizer::from_file(vocab);
  std::optional<triad::ChatFormat> format;
  if (vm.count("chat")) format = triad::resolve_chat_format(tok, chat, "--chat");
  const std::string_view names[3] = {fields[0], fields[1], fields[2]};
  triad::PreferenceSet set;
  int64_t dropped = 0, longest = 0, counted = 0;
  for (const auto& f : files) {
    const std::string text = triad::read_input_file(f);
    for (const auto& r : triad::json_lines_records(text, names, "input file " + f)) {
      triad::ChatExample ex[2];
      try {
        for (int s = 0; s < 2; ++s)
          ex[s] = preference_sequence(tok, format, system, r.values[0], r.values[size_t(s) + 1],
                                      {fields[0], fields[size_t(s) + 1]});
      } catch (const triad::Error& e) {
        triad::fail("input file ", f, ", line ", r.line, ": ", e.what());
      }
      const int64_t n = int64_t(std::max(ex[0].ids.size(), ex[1].ids.size()));
      if (max_tokens > 0 && n > max_tokens) {
        ++dropped;
        continue;
      }
      longest = std::max(longest, n);
      set.chosen.add(ex[0].ids, ex[0].counts);
      set.rejected.add(ex[1].ids, ex[1].counts);
      for (const auto& e : ex)
        for (size_t j = 1; j < e.counts.size(); ++j) counted += e.counts[j];
    }
  }
  TRIAD_CHECK(set.pairs() > 0, "preferences: no pair to write",
              dropped > 0 ? " (every pair has a sequence longer than --max-tokens)" : "");
  triad::write_preference_file(out, set);
  std::ostringstream os;
  os << "pairs:        " << set.pairs() << " written to " << out;
  if (dropped > 0) os << " (" << dropped << " left out: a sequence longer than --max-tokens)";
  os << "\ntokens:       " << set.chosen.tokens.size() + set.rejected.tokens.size() << ", "
     << counted << " of them the responses' counted targets"
     << (format ? std::string(" (") + triad::chat_format_name(*format) + " format)" : "")
     << "\nlongest:      " << longest << " tokens (a row of model.seq_len >= " << longest - 1
     << " holds every sequence)\n";
  write_stdout(os.str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  return triad::run_main(argc, argv, kProg, [&](MPI_Comm world) {
    const int size = triad::size_of(world);
    TRIAD_CHECK(size == 1, "this program runs as one process, but was started with ", size,
                " MPI ranks; run it without mpirun (it uses threads: --threads)");
    TRIAD_CHECK(argc >= 2,
                "no command given: encode, decode, shards, chat, pieces or preferences (see "
                "'triad-tokenize --help')");
    const std::string command = argv[1];
    const std::vector<std::string> args(argv + 2, argv + argc);
    if (command == "--help" || command == "-h" || command == "help") {
      write_stdout(kUsage);
      return 0;
    }
    if (command == "encode") return cmd_encode(args);
    if (command == "decode") return cmd_decode(args);
    if (command == "shards") return cmd_shards(args);
    if (command == "chat") return cmd_chat(args);
    if (command == "pieces") return cmd_pieces(args);
    if (command == "preferences") return cmd_preferences(args);
    triad::fail("unknown command '", command,
                "': expected encode, decode, shards, chat, pieces or preferences (see "
                "'triad-tokenize --help')");
  });
}
