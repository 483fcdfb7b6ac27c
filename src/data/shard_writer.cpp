#include "triad/data/shard_writer.h"

#include <sys/stat.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <set>
#include <system_error>
#include <thread>
#include <utility>

#include "triad/core/error.h"
#include "triad/core/thread_count.h"
#include "triad/data/json_lines.h"
#include "triad/data/token_shard.h"

namespace triad {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

int resolve_threads(int threads) {
  TRIAD_CHECK(valid_thread_count(threads), "--threads must be in [0, ", kMaxThreads,
              "] (0: one per core), got ", threads);
  if (threads == 0) threads = int(std::max(1u, std::thread::hardware_concurrency()));
  return threads;
}

// Cuts [0, text.size()) into chunks of about chunk_bytes where the tokenizer allows it.
void cut_chunks(const Tokenizer& tokenizer, std::string_view text, size_t chunk_bytes,
                std::vector<std::string_view>& out) {
  chunk_bytes = std::max<size_t>(chunk_bytes, 1);
  size_t pos = 0;
  while (pos < text.size()) {
    size_t p = pos + chunk_bytes;
    while (p < text.size() && !tokenizer.cut_is_safe(text, p)) ++p;
    if (p > text.size()) p = text.size();
    out.push_back(text.substr(pos, p - pos));
    pos = p;
  }
}

// Runs fn(i) for i in [0, n) on `threads` threads; rethrows the first exception.
template <typename F>
void parallel_for(size_t n, int threads, F&& fn) {
  const size_t workers = std::min<size_t>(size_t(threads), n);
  if (workers <= 1) {
    for (size_t i = 0; i < n; ++i) fn(i);
    return;
  }
  std::atomic<size_t> next{0};
  std::exception_ptr error;
  std::mutex error_mutex;
  auto work = [&] {
    for (size_t i; (i = next.fetch_add(1)) < n;) {
      try {
        fn(i);
      } catch (...) {
        std::lock_guard<std::mutex> lock(error_mutex);
        if (!error) error = std::current_exception();
        next = n;
      }
    }
  };
  std::vector<std::thread> pool;
  try {
    for (size_t t = 1; t < workers; ++t) pool.emplace_back(work);
  } catch (const std::system_error& e) {  // the system gave fewer threads: the started ones
    next = n;                             // finish (a joinable thread destroyed would abort)
    for (auto& t : pool) t.join();
    fail("cannot start ", workers, " threads (", e.what(), "; started ", pool.size() + 1,
         "): give fewer with --threads");
  }
  work();
  for (auto& t : pool) t.join();
  if (error) std::rethrow_exception(error);
}

}  // namespace

std::string read_input_file(const std::string& path) {
  std::error_code ec;
  TRIAD_CHECK(fs::exists(path, ec), "input file ", path, ": does not exist");
  TRIAD_CHECK(fs::is_regular_file(path, ec), "input file ", path, ": not a regular file");
  std::ifstream in(path, std::ios::binary);
  TRIAD_CHECK(in.is_open(), "input file ", path, ": cannot open (unreadable?)");
  const auto size = fs::file_size(path, ec);
  TRIAD_CHECK(!ec, "input file ", path, ": cannot read its size (", ec.message(), ")");
  std::string text(size_t(size), '\0');
  in.read(text.data(), std::streamsize(size));
  TRIAD_CHECK(in.gcount() == std::streamsize(size), "input file ", path, ": read error");
  return text;
}

namespace {

// A text input's bytes are text: a NUL is found in compressed, UTF-16 and binary files.
void check_text(const std::string& text, const std::string& path) {
  const size_t nul = text.find('\0');
  TRIAD_CHECK(nul == std::string::npos, "input file ", path, ": a NUL byte at offset ", nul,
              ": not UTF-8 text (compressed, UTF-16 or binary?); decompress or convert it first");
}

std::string shard_name(const ShardWriterOptions& o, const char* split, size_t index) {
  char num[32];
  std::snprintf(num, sizeof(num), "%06zu", index);
  return (fs::path(o.out_dir) / (o.prefix + "_" + split + "_" + num + ".bin")).string();
}

// Whether name is <prefix>_train_NNNNNN.bin or <prefix>_val_NNNNNN.bin.
bool is_shard_name(std::string_view name, std::string_view prefix) {
  if (name.substr(0, prefix.size()) != prefix) return false;
  name.remove_prefix(prefix.size());
  if (name.starts_with("_train_"))
    name.remove_prefix(7);
  else if (name.starts_with("_val_"))
    name.remove_prefix(5);
  else
    return false;
  if (name.size() != 10 || !name.ends_with(".bin")) return false;
  return std::all_of(name.begin(), name.begin() + 6, [](char c) { return c >= '0' && c <= '9'; });
}

// Inputs the run would read twice, or replace or remove (this --prefix's shard names and their
// masks in --out), are refused before anything is read.
void check_inputs(const std::vector<std::string>& files, const ShardWriterOptions& o) {
  std::map<std::pair<dev_t, ino_t>, std::string> seen;
  for (const std::string& f : files) {
    struct stat st {};
    if (::stat(f.c_str(), &st) != 0) continue;  // read_file names what is wrong
    const auto [at, fresh] = seen.emplace(std::pair{st.st_dev, st.st_ino}, f);
    TRIAD_CHECK(fresh, "input file ", f, ": given twice (also as ", at->second,
                "); each document would be trained on twice");
    const fs::path path(f);
    std::string name = path.filename().string();
    if (name.ends_with(".mask")) name.resize(name.size() - 5);
    std::error_code ec;
    TRIAD_CHECK(
        !is_shard_name(name, o.prefix) ||
            !fs::equivalent(path.has_parent_path() ? path.parent_path() : ".", o.out_dir, ec),
        "input file ", f, ": in the output directory ", o.out_dir,
        " under a name of this run's shards (--prefix ", o.prefix,
        "), which the run replaces or removes; move it or give another --prefix or --out");
  }
}

}  // namespace

std::vector<int32_t> encode_parallel(const Tokenizer& tokenizer, std::string_view text, int threads,
                                     size_t chunk_bytes) {
  threads = resolve_threads(threads);
  if (threads == 1 || text.size() <= chunk_bytes) return tokenizer.encode(text);
  std::vector<std::string_view> chunks;
  cut_chunks(tokenizer, text, chunk_bytes, chunks);
  std::vector<std::vector<int32_t>> parts(chunks.size());
  parallel_for(chunks.size(), threads, [&](size_t i) {
    tokenizer.encode_append(chunks[i], parts[i], /*continuation=*/i > 0);
  });
  size_t total = 0;
  for (const auto& p : parts) total += p.size();
  std::vector<int32_t> out;
  out.reserve(total);
  for (const auto& p : parts) out.insert(out.end(), p.begin(), p.end());
  return out;
}

namespace {

// tokenize_documents with the ids held as T: uint16_t where the vocabulary fits, so that a GPT-2
// corpus takes half the memory.
// Files are read and encoded in batches of about o.batch_bytes (a larger file is a batch of its
// own), which bounds the text held in memory; o.jsonl_field, o.threads and o.chunk_bytes as
// ShardWriterOptions says, and progress lines to o.progress when there are several batches.
template <typename T>
std::vector<T> tokenize_stream(const Tokenizer& tokenizer, const std::vector<std::string>& files,
                               const ShardWriterOptions& o, ShardSummary* summary) {
  const auto t0 = Clock::now();
  const int threads = resolve_threads(o.threads);
  const size_t chunk_bytes = o.chunk_bytes;
  const std::string& jsonl_field = o.jsonl_field;
  const auto start = T(tokenizer.document_start());
  std::vector<T> stream;
  int64_t bytes = 0, documents = 0, total_bytes = 0;
  for (const auto& f : files) {
    std::error_code ec;
    const auto size = fs::file_size(f, ec);
    total_bytes += ec ? 0 : int64_t(size);  // read_file reports the error
  }
  const bool report = o.progress != nullptr && total_bytes > int64_t(o.batch_bytes);
  for (size_t first = 0; first < files.size();) {
    // A batch: files [first, last) of about batch_bytes in all, read in parallel.
    size_t last = first, batch_bytes = 0;
    while (last < files.size() && (last == first || batch_bytes < o.batch_bytes)) {
      std::error_code ec;
      const auto size = fs::file_size(files[last], ec);
      batch_bytes += ec ? 0 : size_t(size);  // read_file reports the error
      ++last;
    }
    std::vector<std::string> texts(last - first);
    parallel_for(texts.size(), threads, [&](size_t i) {
      texts[i] = read_input_file(files[first + i]);
      if (jsonl_field.empty()) check_text(texts[i], files[first + i]);
    });
    for (const auto& t : texts) bytes += int64_t(t.size());
    if (!jsonl_field.empty()) {  // the files' lines become the documents
      std::vector<std::vector<std::string>> per_file(texts.size());
      parallel_for(texts.size(), threads, [&](size_t i) {
        per_file[i] = json_lines_documents(texts[i], jsonl_field, "input file " + files[first + i]);
        std::string().swap(texts[i]);
      });
      texts.clear();
      for (auto& docs : per_file)
        for (auto& d : docs) texts.push_back(std::move(d));
    }
    documents += int64_t(texts.size());
    struct Chunk {
      size_t doc;
      std::string_view text;
    };
    std::vector<Chunk> chunks;
    for (size_t d = 0; d < texts.size(); ++d) {
      std::vector<std::string_view> cut;
      cut_chunks(tokenizer, texts[d], chunk_bytes, cut);
      if (cut.empty()) chunks.push_back({d, std::string_view()});
      for (auto c : cut) chunks.push_back({d, c});
    }
    std::vector<std::vector<int32_t>> ids(chunks.size());
    parallel_for(chunks.size(), threads, [&](size_t i) {
      const bool continuation = i > 0 && chunks[i].doc == chunks[i - 1].doc;
      tokenizer.encode_append(chunks[i].text, ids[i], continuation);
    });
    size_t n = texts.size();
    for (const auto& v : ids) n += v.size();
    stream.reserve(stream.size() + n);
    for (size_t i = 0; i < chunks.size(); ++i) {
      if (i == 0 || chunks[i].doc != chunks[i - 1].doc) stream.push_back(start);
      for (const int32_t id : ids[i]) stream.push_back(T(id));
    }
    first = last;
    if (report) {
      const double secs = std::chrono::duration<double>(Clock::now() - t0).count();
      const double rate = double(bytes) / std::max(secs, 1e-9);
      char line[200];
      std::snprintf(line, sizeof(line),
                    "tokenize: %.1f of %.1f MB (%.0f%%), %lld documents, %lld tokens, %.1f MB/s, "
                    "about %.0f s left\n",
                    double(bytes) / 1e6, double(total_bytes) / 1e6,
                    100.0 * double(bytes) / double(std::max<int64_t>(total_bytes, 1)),
                    static_cast<long long>(documents), static_cast<long long>(stream.size()),
                    rate / 1e6, double(std::max<int64_t>(total_bytes - bytes, 0)) / rate);
      *o.progress << line << std::flush;
    }
  }
  if (summary) {
    summary->documents = documents;
    summary->bytes = bytes;
    summary->tokens = int64_t(stream.size());
    summary->encode_seconds = std::chrono::duration<double>(Clock::now() - t0).count();
    summary->threads = threads;
  }
  return stream;
}

}  // namespace

ChatExample completion_example(const Tokenizer& tokenizer, std::string_view prompt,
                               std::string_view completion) {
  TRIAD_CHECK(!tokenizer.stop_tokens().empty(), "the tokenizer (", tokenizer.path(),
              ") has no stop token to end a completion with");
  ChatExample ex;
  ex.ids.push_back(tokenizer.document_start());
  tokenizer.encode_append(prompt, ex.ids);
  ex.counts.assign(ex.ids.size(), 0);
  tokenizer.encode_append(completion, ex.ids, /*continuation=*/true);
  ex.ids.push_back(tokenizer.stop_tokens()[0]);
  ex.counts.resize(ex.ids.size(), 1);
  return ex;
}

namespace {

// The examples of one file of a masked corpus: its conversations (o.chat) or prompt and
// completion pairs (o.prompt_field), encoded in parallel; errors name the file and line.
std::vector<ChatExample> masked_examples(const Tokenizer& tokenizer, const std::string& text,
                                         const std::string& where, const ShardWriterOptions& o,
                                         int threads) {
  std::vector<int64_t> lines;
  std::vector<ChatExample> examples;
  auto encode_each = [&](size_t n, auto&& encode) {
    examples.resize(n);
    parallel_for(n, threads, [&](size_t i) {
      try {
        examples[i] = encode(i);
      } catch (const Error& e) {
        fail(where, ", line ", lines[i], ": ", e.what());
      }
    });
  };
  if (o.chat) {
    const auto convs = json_lines_conversations(text, o.jsonl_field, where);
    for (const auto& c : convs) lines.push_back(c.line);
    const int32_t start = tokenizer.document_start();
    TRIAD_CHECK(!o.chat_document_start || start >= 0, "the tokenizer (", tokenizer.path(),
                ") has no document start to put before each conversation");
    encode_each(convs.size(), [&](size_t i) {
      ChatExample ex = chat_example(tokenizer, *o.chat, convs[i].messages);
      if (o.chat_document_start && (ex.ids.empty() || ex.ids[0] != start)) {
        ex.ids.insert(ex.ids.begin(), start);
        ex.counts.insert(ex.counts.begin(), 0);
      }
      return ex;
    });
  } else {
    const auto pairs = json_lines_pairs(text, o.prompt_field, o.jsonl_field, where);
    for (const auto& p : pairs) lines.push_back(p.line);
    encode_each(pairs.size(), [&](size_t i) {
      return completion_example(tokenizer, pairs[i].prompt, pairs[i].completion);
    });
  }
  return examples;
}

// The stream of a masked corpus (ShardWriterOptions::chat or prompt_field) and its loss mask,
// file by file.
template <typename T>
std::vector<T> masked_stream(const Tokenizer& tokenizer, const std::vector<std::string>& files,
                             const ShardWriterOptions& o, ShardSummary* summary,
                             std::vector<uint8_t>& mask) {
  const auto t0 = Clock::now();
  const int threads = resolve_threads(o.threads);
  std::vector<T> stream;
  int64_t bytes = 0, documents = 0, counted = 0;
  for (const auto& f : files) {
    const std::string where = "input file " + f;
    const std::string text = read_input_file(f);
    bytes += int64_t(text.size());
    for (const ChatExample& ex : masked_examples(tokenizer, text, where, o, threads)) {
      for (const int32_t id : ex.ids) stream.push_back(T(id));
      mask.insert(mask.end(), ex.counts.begin(), ex.counts.end());
      for (const uint8_t c : ex.counts) counted += c;
      ++documents;
    }
  }
  if (summary) {
    summary->documents = documents;
    summary->bytes = bytes;
    summary->tokens = int64_t(stream.size());
    summary->counted = counted;
    summary->encode_seconds = std::chrono::duration<double>(Clock::now() - t0).count();
    summary->threads = threads;
  }
  return stream;
}

// The files of an earlier run with this prefix that `written` (file names) does not replace:
// its shards beyond this run's count and their masks (a mask beside a shard this run writes goes
// when the shard is moved in).
std::vector<std::string> stale_entries(const ShardWriterOptions& o,
                                       const std::set<std::string>& written) {
  std::error_code ec;
  std::vector<std::string> stale;
  for (const auto& entry : fs::directory_iterator(o.out_dir, ec)) {
    const std::string name = entry.path().filename().string();
    if (is_shard_name(name, o.prefix) && !written.count(name))
      stale.push_back(entry.path().string());
    const std::string shard = name.size() > 5 ? name.substr(0, name.size() - 5) : "";
    if (name.ends_with(".mask") && is_shard_name(shard, o.prefix) && !written.count(shard))
      stale.push_back(entry.path().string());
  }
  std::sort(stale.begin(), stale.end());
  return stale;
}

// Cuts the token stream into the validation split (its last val_fraction) and the training split
// and writes each as shards of at most shard_tokens, recording them in s.
// With a mask (chat), each shard's slice of it goes beside the shard.
template <typename T>
void write_stream(const std::vector<T>& stream, const ShardWriterOptions& o, ShardSummary& s,
                  const std::vector<uint8_t>* mask = nullptr) {
  const auto total = int64_t(stream.size());
  TRIAD_CHECK(s.documents > 0,
              "no documents in the input files (only blank lines?): nothing to "
              "write");
  s.val_tokens = std::llround(o.val_fraction * double(total));
  s.train_tokens = total - s.val_tokens;
  TRIAD_CHECK(o.val_fraction == 0 || s.val_tokens > 0, "--val-fraction ", o.val_fraction, " of ",
              total, " tokens leaves no validation tokens (use --val-fraction 0 for none)");
  TRIAD_CHECK(s.train_tokens > 0, "--val-fraction ", o.val_fraction, " of ", total,
              " tokens leaves no training tokens");

  std::error_code ec;
  fs::create_directories(o.out_dir, ec);
  TRIAD_CHECK(!ec && fs::is_directory(o.out_dir), "output directory ", o.out_dir,
              ": cannot create (", ec ? ec.message() : "not a directory", ")");
  // Every file is written first into a staging directory beside the shards and moved into place
  // only once the whole corpus is written: a run that fails (a bad input, a full disk) leaves an
  // earlier run's shards as they were, never a mix of the two or a new shard beside an old mask.
  const fs::path staging = fs::path(o.out_dir) / ("." + o.prefix + ".partial");
  fs::remove_all(staging, ec);  // (one a killed run left)
  fs::create_directory(staging, ec);
  TRIAD_CHECK(!ec, "output directory ", o.out_dir, ": cannot create ", staging.string(), " (",
              ec.message(), ")");
  const auto staged = [&](const std::string& path) {
    return (staging / fs::path(path).filename()).string();
  };
  auto write_split = [&](const char* split, int64_t begin, int64_t count,
                         std::vector<std::string>& written) {
    for (int64_t off = 0, i = 0; off < count; off += o.shard_tokens, ++i) {
      const int64_t n = std::min(o.shard_tokens, count - off);
      written.push_back(shard_name(o, split, size_t(i)));
      write_token_shard(staged(written.back()),
                        std::span<const T>(stream.data() + begin + off, size_t(n)));
      if (mask)
        write_loss_mask(staged(loss_mask_path(written.back())),
                        std::span<const uint8_t>(mask->data() + begin + off, size_t(n)));
    }
  };
  // An earlier run's shards this run does not replace go aside into the staging directory
  // before anything moves in, and back if a move fails: the directory never holds the two
  // corpora together.
  const fs::path set_aside = staging / "stale";
  std::vector<std::string> moved_aside;
  const auto restore_stale = [&] {  // false where one could not go back
    bool all = true;
    for (const std::string& f : moved_aside) {
      fs::rename(set_aside / fs::path(f).filename(), f, ec);
      all = all && !ec;
    }
    return all;
  };
  try {
    write_split("train", 0, s.train_tokens, s.train_files);
    write_split("val", s.train_tokens, s.val_tokens, s.val_files);
    // A name taken by something no shard replaces is found before anything moves.
    std::set<std::string> written;
    for (const std::vector<std::string>* files : {&s.train_files, &s.val_files})
      for (const std::string& path : *files) {
        written.insert(fs::path(path).filename().string());
        for (const std::string& f : {path, loss_mask_path(path)})
          TRIAD_CHECK(!fs::exists(f, ec) || fs::is_regular_file(f, ec), "output ", f,
                      ": exists and is not a file (a shard or its mask goes there)");
      }
    const std::vector<std::string> stale = stale_entries(o, written);
    for (const std::string& f : stale)
      TRIAD_CHECK(fs::is_regular_file(fs::symlink_status(f, ec)) ||
                      fs::is_symlink(fs::symlink_status(f, ec)),
                  "cannot remove ", f,
                  ", named as a shard of an earlier run with this --prefix: it is not a file "
                  "(move it, or give another --prefix or --out)");
    fs::create_directory(set_aside, ec);
    TRIAD_CHECK(!ec, "cannot create ", set_aside.string(), " (", ec.message(), ")");
    for (const std::string& f : stale) {
      fs::rename(f, set_aside / fs::path(f).filename(), ec);
      TRIAD_CHECK(!ec, "cannot remove the stale shard ", f, " (", ec.message(),
                  "); the directory is as it was");
      moved_aside.push_back(f);
    }
    // Into place: an earlier run's mask beside a name goes first (it would count the new
    // tokens by the old corpus), then the shard, then its own mask.
    for (const std::vector<std::string>* files : {&s.train_files, &s.val_files}) {
      for (const std::string& path : *files) {
        const std::string mask_path = loss_mask_path(path);
        fs::remove(mask_path, ec);
        TRIAD_CHECK(!ec, "cannot remove the earlier mask ", mask_path, " (", ec.message(), ")");
        for (const std::string& f : mask ? std::vector{path, mask_path} : std::vector{path}) {
          fs::rename(staged(f), f, ec);
          TRIAD_CHECK(!ec, "cannot move ", staged(f), " to ", f, " (", ec.message(), ")");
        }
      }
    }
    s.removed_files = stale;
  } catch (...) {
    if (!restore_stale()) {  // the staging directory (and the earlier shards in it) is kept
      std::string why = "a failure";
      try {
        throw;
      } catch (const std::exception& e) {
        why = e.what();
      } catch (...) {
      }
      fail(why, "; the earlier run's shards that could not be moved back are in ",
           set_aside.string());
    }
    fs::remove_all(staging, ec);
    throw;
  }
  fs::remove_all(staging, ec);
}

}  // namespace

std::vector<uint32_t> tokenize_documents(const Tokenizer& tokenizer,
                                         const std::vector<std::string>& files, int threads,
                                         size_t chunk_bytes, ShardSummary* summary) {
  ShardWriterOptions o;
  o.threads = threads;
  o.chunk_bytes = chunk_bytes;
  return tokenize_stream<uint32_t>(tokenizer, files, o, summary);
}

ShardSummary write_shards(const Tokenizer& tokenizer, const std::vector<std::string>& files,
                          const ShardWriterOptions& o) {
  const auto t0 = Clock::now();
  TRIAD_CHECK(!files.empty(), "no input files given");
  TRIAD_CHECK(!o.out_dir.empty(), "no output directory given");
  TRIAD_CHECK(!o.prefix.empty() && o.prefix.find('/') == std::string::npos,
              "--prefix must be a non-empty file name prefix without '/', got '", o.prefix, "'");
  TRIAD_CHECK(o.val_fraction >= 0 && o.val_fraction < 1, "--val-fraction must be in [0, 1), got ",
              o.val_fraction);
  TRIAD_CHECK(o.shard_tokens >= 1 && o.shard_tokens <= INT32_MAX,
              "--shard-tokens must be in [1, 2147483647], got ", o.shard_tokens);

  check_inputs(files, o);
  const bool masked = o.chat.has_value() || !o.prompt_field.empty();
  TRIAD_CHECK(!masked || !o.jsonl_field.empty(), "chat and completion input need a field");
  TRIAD_CHECK(!(o.chat && !o.prompt_field.empty()), "give chat or prompt_field, not both");
  TRIAD_CHECK(o.prompt_field.empty() || o.prompt_field != o.jsonl_field,
              "--prompt-field and --field name the same field '", o.jsonl_field, "'");

  ShardSummary s;
  // GPT-2's uint16 format where every id fits, else the uint32 one; the stream is held so.
  s.token_bytes = tokenizer.vocab_size() <= 65536 ? 2 : 4;
  if (masked) {
    std::vector<uint8_t> mask;
    if (s.token_bytes == 2)
      write_stream(masked_stream<uint16_t>(tokenizer, files, o, &s, mask), o, s, &mask);
    else
      write_stream(masked_stream<uint32_t>(tokenizer, files, o, &s, mask), o, s, &mask);
  } else if (s.token_bytes == 2) {
    write_stream(tokenize_stream<uint16_t>(tokenizer, files, o, &s), o, s);
  } else {
    write_stream(tokenize_stream<uint32_t>(tokenizer, files, o, &s), o, s);
  }

  s.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  return s;
}

}  // namespace triad
