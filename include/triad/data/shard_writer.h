// Text files to token shards (the format of triad/data/token_shard.h), as `triad-tokenize
// shards` does.
//
// Documents: each input file is one document, its raw bytes encoded as ordinary text (a
// "<|endoftext|>" inside a file is text, not the special token); with jsonl_field set, each
// input file is JSON Lines and each line's value of that field is a document
// (triad/data/json_lines.h), in file and line order. The token stream is, for the
// files in the order given, the tokenizer's document_start (GPT-2: <|endoftext|>, 50256; Llama
// 3: <|begin_of_text|>, 128000) followed by the file's tokens — the separator comes BEFORE each
// document, as in llm.c's and nanoGPT's data preparation.
//
// Format: GPT-2's uint16 shards when every id of the tokenizer fits in 16 bits (vocabulary at
// most 65536), else llm.c's uint32 format for Llama 3 (triad/data/token_shard.h).
//
// Split: the last round(val_fraction · N) tokens of the stream of N tokens are the validation
// split and the rest is the training split. The cut is at a token, not a document boundary
// (so a corpus of one big file splits too); the validation tokens are the end of the last
// documents, text the training split never sees.
//
// Files: <out>/<prefix>_train_000000.bin, _000001.bin, ... and <out>/<prefix>_val_000000.bin,
// ..., each at most shard_tokens tokens, in stream order (every shard full but the last of
// its split). Each is written atomically; the output directory is created if needed, and
// files of an earlier run with the same prefix and split that this run did not write (e.g.
// <prefix>_train_000007.bin) are removed, so that the loader's globs see this run only.
//
// Chat (chat set): the files are JSON Lines of conversations (jsonl_field: the array of
// messages, json_lines.h), each encoded by chat_example in the format given (chat_format.h), its
// own begin token first (no document_start added); beside each shard goes its loss mask,
// <shard>.mask (token_shard.h), counting the assistant replies only. Without chat, masks of
// earlier runs beside this prefix's shards are removed.
//
// Completions (prompt_field set): each JSON Lines line's prompt_field and jsonl_field strings
// are one document: the document start, the prompt, the completion (encoded on its own, as a
// continuation) and the tokenizer's first stop token; the mask counts the completion and the
// stop token.
//
// Threads: large files are cut into chunks of about chunk_bytes at positions where the
// encoding is known not to change (Tokenizer::cut_is_safe: an ASCII non-space byte, for some
// pre-tokenizers only certain ones, followed by an ASCII space, tab, VT or FF byte), chunks are
// encoded in parallel, and results are joined in
// order: the output is the same for every thread count and chunk size, and equals encoding each
// file whole.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <ostream>
#include <string>
#include <string_view>
#include <vector>

#include "triad/data/chat_format.h"
#include "triad/data/tokenizer.h"

namespace triad {

struct ShardWriterOptions {
  std::string out_dir;
  std::string prefix = "tokens";
  double val_fraction = 0.05;          // in [0, 1); 0 writes no validation shard
  int64_t shard_tokens = 100'000'000;  // tokens per shard at most, 1 .. 2^31 - 1
  int threads = 0;                     // 0: std::thread::hardware_concurrency()
  size_t chunk_bytes = size_t(1) << 20;
  std::string jsonl_field;  // non-empty: the files are JSON Lines, documents this field's values
  std::optional<ChatFormat> chat;  // conversations in jsonl_field, written with loss masks
  // With chat: the tokenizer's document start (not counted) before each conversation that does
  // not begin with it (ChatML's and Qwen2's begin with <|im_start|>, as every message does), so
  // that data.document_mask tells packed conversations apart.
  bool chat_document_start = false;
  std::string prompt_field;  // non-empty: prompt and completion (jsonl_field) pairs, with masks
  // Files are read and encoded in batches of about this many bytes (bounding the text in memory);
  // with more than one batch, a progress line per batch goes to *progress (if not null): bytes
  // and share done, documents, tokens, MB/s and the time left.
  size_t batch_bytes = size_t(256) << 20;
  std::ostream* progress = nullptr;
};

struct ShardSummary {
  int64_t documents = 0;  // conversations with chat, pairs with prompt_field
  int64_t counted = 0;    // with masks: the targets they count
  int64_t bytes = 0;      // input bytes (of the files, JSON Lines included)
  int64_t tokens = 0;     // all tokens, document separators included
  int token_bytes = 2;    // of the shards written: 2 (uint16) or 4 (uint32)
  int64_t train_tokens = 0;
  int64_t val_tokens = 0;
  std::vector<std::string> train_files, val_files;  // written, in order
  std::vector<std::string> removed_files;           // stale shards of an earlier run
  double encode_seconds = 0;                        // reading and encoding
  double seconds = 0;                               // everything
  int threads = 1;
};

// Encodes text with `threads` threads (0: hardware concurrency); the same ids as
// tokenizer.encode(text).
// The whole of an input file; errors name it ("input file PATH: ...").
std::string read_input_file(const std::string& path);

// A prompt and its completion (the examples of prompt_field above): the document start, the
// prompt, then the completion (encoded on its own, as a continuation) and the tokenizer's first
// stop token; counts mark the completion and the stop token.
ChatExample completion_example(const Tokenizer& tokenizer, std::string_view prompt,
                               std::string_view completion);

std::vector<int32_t> encode_parallel(const Tokenizer& tokenizer, std::string_view text,
                                     int threads = 0, size_t chunk_bytes = size_t(1) << 20);

// The token stream of the documents (see above). Throws triad::Error naming a file that cannot
// be read. Fills summary's documents, bytes, tokens, encode_seconds and threads when given.
std::vector<uint32_t> tokenize_documents(const Tokenizer& tokenizer,
                                         const std::vector<std::string>& files, int threads = 0,
                                         size_t chunk_bytes = size_t(1) << 20,
                                         ShardSummary* summary = nullptr);

// Tokenizes the files and writes the shards. Throws triad::Error for bad options (naming the
// option), unreadable inputs, no input files, a split that leaves the training or (with
// val_fraction > 0) the validation split empty, or an output directory that cannot be written.
ShardSummary write_shards(const Tokenizer& tokenizer, const std::vector<std::string>& files,
                          const ShardWriterOptions& options);

}  // namespace triad
