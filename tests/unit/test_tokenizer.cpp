// GPT-2 BPE tokenizer, pre-tokenizer and shard writer. Ids checked here were produced by
// tiktoken (encode_ordinary) on the same ranks file; tests/python/test_tokenizer_tiktoken.py
// compares against tiktoken on many more strings and on the corpus.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <random>
#include <span>
#include <sstream>
#include <string>
#include <vector>

#include "triad/core/error.h"
#include "triad/data/fim.h"
#include "triad/data/json_lines.h"
#include "triad/data/pretokenize.h"
#include "triad/data/shard_writer.h"
#include "triad/data/token_shard.h"
#include "triad/data/tokenizer.h"
#include "triad/data/unicode_nfc.h"

namespace fs = std::filesystem;
using ::testing::ElementsAre;
using ::testing::ElementsAreArray;
using ::testing::HasSubstr;

namespace {

const std::string kVocab = TRIAD_SOURCE_DIR "/data/vocab/gpt2.tiktoken";

// The GPT-2 tokenizer, loaded once; fails the test if the ranks file is absent.
const triad::Tokenizer* gpt2() {
  static const triad::Tokenizer* tok = [] {
    if (!fs::exists(kVocab)) return static_cast<triad::Tokenizer*>(nullptr);
    return new triad::Tokenizer(triad::Tokenizer::from_file(kVocab));
  }();
  return tok;
}

#define REQUIRE_GPT2()                                                              \
  ASSERT_NE(gpt2(), nullptr) << "missing " << kVocab                                \
                             << ": the setup script puts GPT-2's ranks there (see " \
                                "ENVIRONMENT.md 'Real data, offline'); run it before tests"

// A fresh directory under the build tree, removed when the test ends.
class TempDir {
 public:
  explicit TempDir(const std::string& name) {
    path_ = fs::path(TRIAD_BINARY_DIR) / "test_tmp" /
            (name + "_" + std::to_string(std::random_device{}()));
    fs::remove_all(path_);
    fs::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  std::string file(const std::string& name, const std::string& contents) const {
    const std::string p = (path_ / name).string();
    std::ofstream(p, std::ios::binary) << contents;
    return p;
  }
  std::string path(const std::string& name = "") const { return (path_ / name).string(); }

 private:
  fs::path path_;
};

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

std::vector<std::string> pieces(std::string_view text) {
  std::vector<std::string> out;
  for (auto p : triad::pretok::split(text)) out.emplace_back(p);
  return out;
}

std::string base64(std::string_view bytes) {
  static const char* a = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  size_t i = 0;
  for (; i + 3 <= bytes.size(); i += 3) {
    const uint32_t v = uint32_t(uint8_t(bytes[i])) << 16 | uint32_t(uint8_t(bytes[i + 1])) << 8 |
                       uint8_t(bytes[i + 2]);
    for (int k = 18; k >= 0; k -= 6) out += a[(v >> k) & 63];
  }
  if (bytes.size() - i == 1) {
    const uint32_t v = uint32_t(uint8_t(bytes[i])) << 16;
    out += a[v >> 18];
    out += a[(v >> 12) & 63];
    out += "==";
  } else if (bytes.size() - i == 2) {
    const uint32_t v = uint32_t(uint8_t(bytes[i])) << 16 | uint32_t(uint8_t(bytes[i + 1])) << 8;
    out += a[v >> 18];
    out += a[(v >> 12) & 63];
    out += a[(v >> 6) & 63];
    out += '=';
  }
  return out;
}

// A small valid ranks file: the 256 bytes (rank = byte value), then merges.
std::string small_ranks(const std::vector<std::string>& merges = {"ab", "abab", "cd"}) {
  std::string s;
  int r = 0;
  for (int b = 0; b < 256; ++b)
    s += base64(std::string(1, char(b))) + " " + std::to_string(r++) + "\n";
  for (const auto& m : merges) s += base64(m) + " " + std::to_string(r++) + "\n";
  return s;
}

// Text with a bit of everything: prose, code-like whitespace, Unicode, invalid bytes.
std::string mixed_text(std::mt19937& rng, size_t n) {
  static const std::vector<std::string> parts = {"The ",   "quick ",       "brown ",
                                                 "fox's ", "jumps",        " over",
                                                 "  ",     "\n",           "\n\n",
                                                 "\t",     "    ",         "don't",
                                                 "I'll",   "12345",        " 3.14",
                                                 "!!",     "?! ",          "(x)",
                                                 "naïve",  " café",        "日本語",
                                                 " 中文",  "\xc2\xa0",     "\xe3\x80\x80",
                                                 "😀",      "👍🏽",     " \n ",
                                                 "\r\n",   "'S",           "\xff",
                                                 "\xc3",   "\xed\xa0\x80", "a",
                                                 " b",     "--",           "\"q\"",
                                                 "Ⅻ",      "٣٤",           "x\xe2\x80\xa8y"};
  std::string s;
  while (s.size() < n) s += parts[rng() % parts.size()];
  return s;
}

}  // namespace

TEST(Tokenizer, LoadsGpt2Ranks) {
  REQUIRE_GPT2();
  const auto& t = *gpt2();
  EXPECT_EQ(t.vocab_size(), 50257);
  EXPECT_EQ(t.document_start(), 50256);
  EXPECT_EQ(t.token_bytes(15496), "Hello");
  EXPECT_EQ(t.token_bytes(995), " world");
  EXPECT_EQ(t.token_bytes(0), "!");
  EXPECT_EQ(t.token_bytes(50256), "<|endoftext|>");
  EXPECT_THROW(t.token_bytes(50257), triad::Error);
  EXPECT_THROW(t.token_bytes(-1), triad::Error);
}

TEST(Tokenizer, KnownIdsFromTiktoken) {
  REQUIRE_GPT2();
  const auto& t = *gpt2();
  EXPECT_THAT(t.encode("Hello world"), ElementsAre(15496, 995));
  EXPECT_THAT(t.encode(" hello"), ElementsAre(23748));
  EXPECT_THAT(t.encode("hello"), ElementsAre(31373));
  EXPECT_THAT(t.encode("I'm"), ElementsAre(40, 1101));
  EXPECT_THAT(t.encode("they'll've"), ElementsAre(9930, 1183, 1053));
  EXPECT_THAT(t.encode("DON'T"), ElementsAre(41173, 6, 51));
  EXPECT_THAT(t.encode("  leading"), ElementsAre(220, 3756));
  EXPECT_THAT(t.encode("trailing  "), ElementsAre(9535, 4386, 220, 220));
  EXPECT_THAT(t.encode("x\n\n\ny"), ElementsAre(87, 628, 198, 88));
  EXPECT_THAT(t.encode("12345678"), ElementsAre(10163, 2231, 30924));
  EXPECT_THAT(t.encode("naïve café"), ElementsAre(2616, 38776, 40304));
  EXPECT_THAT(t.encode("日本語"), ElementsAre(33768, 98, 17312, 105, 45739, 252));
  EXPECT_THAT(t.encode("<|endoftext|>"), ElementsAre(27, 91, 437, 1659, 5239, 91, 29));
  EXPECT_THAT(t.encode("emoji 👍🏽!"), ElementsAre(368, 31370, 50169, 235, 8582, 237, 121, 0));
  EXPECT_THAT(t.encode("\u00a0x\u3000y"), ElementsAre(1849, 87, 5099, 222, 88));
  EXPECT_THAT(t.encode("a\tb"), ElementsAre(64, 197, 65));
  EXPECT_THAT(t.encode("     "), ElementsAre(220, 220, 220, 220, 220));
  EXPECT_TRUE(t.encode("").empty());
}

TEST(Pretokenize, SplitsLikeGpt2Regex) {
  // Expected pieces from Python: regex.findall(GPT-2 pattern, s).
  EXPECT_THAT(pieces("Hello world"), ElementsAre("Hello", " world"));
  EXPECT_THAT(pieces("they'll've"), ElementsAre("they", "'ll", "'ve"));
  EXPECT_THAT(pieces("DON'T 's"), ElementsAre("DON", "'", "T", " '", "s"));
  EXPECT_THAT(pieces("x\n\n\ny"), ElementsAre("x", "\n\n", "\n", "y"));
  EXPECT_THAT(pieces("a   b"), ElementsAre("a", "  ", " b"));
  EXPECT_THAT(pieces("a \t b"), ElementsAre("a", " \t", " b"));
  EXPECT_THAT(pieces("a\t\tb"), ElementsAre("a", "\t", "\t", "b"));
  EXPECT_THAT(pieces("end  "), ElementsAre("end", "  "));
  EXPECT_THAT(pieces(" 123abc!!?"), ElementsAre(" 123", "abc", "!!?"));
  EXPECT_THAT(pieces("''s"), ElementsAre("''", "s"));
  EXPECT_THAT(pieces("naïve café"), ElementsAre("naïve", " café"));
  EXPECT_THAT(pieces("\u00a0x\u3000y"), ElementsAre("\u00a0", "x", "\u3000", "y"));
  EXPECT_THAT(pieces("emoji 👍🏽!"), ElementsAre("emoji", " 👍🏽!"));
  // U+001C..U+001F are not White_Space (Python's str.isspace says they are).
  EXPECT_THAT(pieces("a\x1c b"), ElementsAre("a", "\x1c", " b"));
  // Invalid bytes are 'other' characters of their own.
  EXPECT_THAT(pieces("a\xff!b \xc3"), ElementsAre("a", "\xff!", "b", " \xc3"));
  EXPECT_TRUE(pieces("").empty());
}

TEST(Pretokenize, Utf8DecoderRejectsIllFormed) {
  auto len = [](std::string_view s) {
    uint32_t cp;
    const auto* p = reinterpret_cast<const unsigned char*>(s.data());
    const int n = triad::pretok::decode_utf8(p, p + s.size(), cp);
    return std::make_pair(n, cp);
  };
  EXPECT_EQ(len("\xc3\xa9"), std::make_pair(2, 0xE9u));
  EXPECT_EQ(len("\xe2\x82\xac"), std::make_pair(3, 0x20ACu));
  EXPECT_EQ(len("\xf0\x9f\x98\x80"), std::make_pair(4, 0x1F600u));
  const uint32_t bad = triad::pretok::kInvalidCodePoint;
  for (std::string_view s :
       {"\x80", "\xc0\xaf", "\xc1\xbf", "\xe0\x80\xaf", "\xed\xa0\x80", "\xf0\x80\x80\xaf",
        "\xf4\x90\x80\x80", "\xf5\x80\x80\x80", "\xff", "\xc3", "\xe2\x82", "\xf0\x9f\x98"})
    EXPECT_EQ(len(s), std::make_pair(1, bad)) << testing::PrintToString(s);
  EXPECT_EQ(triad::pretok::char_class('a'), triad::pretok::kLetter);
  EXPECT_EQ(triad::pretok::char_class(0x4E2D), triad::pretok::kLetter);  // 中
  EXPECT_EQ(triad::pretok::char_class(0x1C89), triad::pretok::kLetter);  // Unicode 16
  EXPECT_EQ(triad::pretok::char_class(0x0663), triad::pretok::kNumber);  // ٣
  EXPECT_EQ(triad::pretok::char_class(0x216B), triad::pretok::kNumber);  // Ⅻ
  EXPECT_EQ(triad::pretok::char_class(0x3000), triad::pretok::kSpace);
  EXPECT_EQ(triad::pretok::char_class(0x0301), triad::pretok::kOther);   // combining acute
  EXPECT_EQ(triad::pretok::char_class(0x1F600), triad::pretok::kOther);  // 😀
  EXPECT_EQ(triad::pretok::char_class(0x10FFFF), triad::pretok::kOther);
}

TEST(Tokenizer, RoundTripsAnyBytes) {
  REQUIRE_GPT2();
  const auto& t = *gpt2();
  std::mt19937 rng(1234);
  for (int i = 0; i < 3000; ++i) {
    std::string s(rng() % 200, '\0');
    if (i % 3 == 0) {
      for (auto& c : s) c = char(rng());  // uniform bytes: mostly invalid UTF-8
    } else if (i % 3 == 1) {
      for (auto& c : s) c = " \t\n\r'sS0aé\x80\xff\xc3"[rng() % 15];  // short runs of everything
    } else {
      s = mixed_text(rng, s.size());
    }
    const std::vector<int32_t> ids = t.encode(s);
    for (const int32_t id : ids) ASSERT_TRUE(id >= 0 && id < t.document_start()) << id;
    ASSERT_EQ(t.decode(ids), s) << "case " << i;
  }
  // Long pieces take the heap-based merge path.
  for (const std::string unit : {"1", " ", "!", "a", "\xff", "é", "ab", "\n "}) {
    std::string s;
    for (int k = 0; k < 3000; ++k) s += unit;
    const auto ids = t.encode(s);
    EXPECT_EQ(t.decode(ids), s);
  }
}

TEST(Tokenizer, DecodeRejectsBadIds) {
  REQUIRE_GPT2();
  const auto& t = *gpt2();
  EXPECT_EQ(t.decode(std::vector<int32_t>{15496, 995, 50256}), "Hello world<|endoftext|>");
  try {
    t.decode(std::vector<int32_t>{15496, 50257});
    FAIL() << "no error";
  } catch (const triad::Error& e) {
    EXPECT_THAT(e.what(), HasSubstr("50257"));
    EXPECT_THAT(e.what(), HasSubstr("position 1"));
  }
  EXPECT_THROW(t.decode(std::vector<int32_t>{-1}), triad::Error);
}

TEST(Tokenizer, SmallVocabularyMerges) {
  TempDir dir("tok_small");
  const auto t = triad::Tokenizer::from_file(dir.file("small.tiktoken", small_ranks()), 0);
  EXPECT_EQ(t.vocab_size(), 260);
  EXPECT_EQ(t.document_start(), 259);
  EXPECT_THAT(t.encode("abab"), ElementsAre(257));         // whole piece is a token
  EXPECT_THAT(t.encode("ababab"), ElementsAre(257, 256));  // leftmost merges first
  EXPECT_THAT(t.encode("abcd"), ElementsAre(256, 258));
  EXPECT_THAT(t.encode("xab"), ElementsAre('x', 256));
  EXPECT_EQ(t.decode(t.encode("ab abab\xff")), "ab abab\xff");
}

// Each thread keeps the words it has encoded for the next calls (a cache per tokenizer): two
// tokenizers with other merges, used in turns on the same words in one thread, each give their
// own ids every time.
TEST(Tokenizer, EncodedWordsAreRememberedPerTokenizer) {
  TempDir dir("tok_cache");
  const auto t1 = triad::Tokenizer::from_file(dir.file("t1.tiktoken", small_ranks()), 0);
  const auto t2 =
      triad::Tokenizer::from_file(dir.file("t2.tiktoken", small_ranks({"cd", "ab", "abcd"})), 0);
  const triad::Tokenizer copy = t1;
  for (int round = 0; round < 3; ++round) {
    EXPECT_THAT(t1.encode("xabcd"), ElementsAre('x', 256, 258)) << round;  // ab, then cd
    EXPECT_THAT(t2.encode("xabcd"), ElementsAre('x', 258)) << round;       // cd, ab, abcd
    EXPECT_THAT(copy.encode("xabcd"), ElementsAre('x', 256, 258)) << round;
  }
}

TEST(Tokenizer, MalformedRanksFilesAreClearErrors) {
  TempDir dir("tok_bad");
  auto expect_error = [&](const std::string& name, const std::string& contents,
                          const std::vector<std::string>& parts) {
    const std::string path = contents == "<missing>" ? dir.path(name) : dir.file(name, contents);
    try {
      triad::Tokenizer::from_file(path, 0);
      ADD_FAILURE() << name << ": no error";
    } catch (const triad::Error& e) {
      EXPECT_THAT(e.what(), HasSubstr(path)) << name;
      for (const auto& p : parts) EXPECT_THAT(e.what(), HasSubstr(p)) << name;
    }
  };
  const std::string good = small_ranks();
  expect_error("missing", "<missing>", {"cannot open"});
  expect_error("empty", "", {"empty"});
  expect_error("blank", "\n\n\n", {"empty"});
  expect_error("no_rank", good + "YWI=\n", {"line 260", "expected"});
  // A binary file: its NUL shown as \x00, the message goes on past it.
  expect_error("binary", std::string("garbage\0\x01 x", 11), {"line 1", "'garbage\\x00\\x01'"});
  expect_error("rank_missing", good + "YWI= \n", {"line 260", "no rank"});
  // Files triad-convert tokenizer reads: the message says which command converts them.
  expect_error("tokenizer.json", "\n  {\"version\": \"1.0\", \"model\": {}}",
               {"a JSON file", "triad-convert tokenizer SRC OUT", "--tekken"});
  expect_error("tokenizer.model", std::string("\n\x0b\n\x05<unk>\x15\0\0\0\0", 13),
               {"SentencePiece model", "triad-convert tokenizer --sentencepiece"});
  expect_error("bad_b64", good + "Y!I= 259\n", {"line 260", "base64"});
  expect_error("bad_b64_len", good + "YWI 259\n", {"line 260", "base64"});
  expect_error("bad_pad", good + "Y=I= 259\n", {"line 260", "base64"});
  expect_error("not_int", good + "eHk= 25x\n", {"line 260", "not a non-negative integer"});
  expect_error("negative", good + "eHk= -3\n", {"line 260", "not a non-negative integer"});
  expect_error("huge", good + "eHk= 99999999999\n", {"line 260", "too large"});
  expect_error("dup_rank", good + "eHk= 12\n", {"line 260", "rank 12", "line 13"});
  expect_error("gap", good + "eHk= 300\n", {"line 260", "out of range"});
  expect_error("dup_bytes", good + base64("ab") + " 259\n",
               {"line 260", "same token bytes", "line 257"});
  std::string no_byte;  // byte 0x41 missing: ranks 0..254 for the other bytes
  for (int b = 0, r = 0; b < 256; ++b)
    if (b != 0x41) no_byte += base64(std::string(1, char(b))) + " " + std::to_string(r++) + "\n";
  expect_error("no_byte", no_byte, {"byte 0x41"});
  // CRLF line ends and blank lines are accepted, as tiktoken's loader does.
  std::string crlf;
  for (char c : good) crlf += c == '\n' ? std::string("\r\n") : std::string(1, c);
  EXPECT_EQ(triad::Tokenizer::from_file(dir.file("crlf", crlf + "\r\n"), 0).vocab_size(), 260);
  // By default the file must hold GPT-2's 50256 ranks: a file cut at a line end is an error.
  try {
    triad::Tokenizer::from_file(dir.file("cut.tiktoken", good));
    ADD_FAILURE() << "no error for a short file";
  } catch (const triad::Error& e) {
    EXPECT_THAT(e.what(), HasSubstr("has 259 tokens, expected 50256"));
  }
  EXPECT_EQ(triad::Tokenizer::from_file(dir.file("cut.tiktoken", good), 259).vocab_size(), 260);
}

TEST(ShardWriter, ParallelEncodeEqualsEncode) {
  REQUIRE_GPT2();
  const auto& t = *gpt2();
  std::mt19937 rng(7);
  for (int i = 0; i < 30; ++i) {
    const std::string s = mixed_text(rng, 2000 + rng() % 20000);
    const auto whole = t.encode(s);
    for (const size_t chunk : {size_t(1), size_t(17), size_t(500)})
      for (const int threads : {1, 2, 3})
        ASSERT_EQ(triad::encode_parallel(t, s, threads, chunk), whole)
            << "case " << i << " chunk " << chunk << " threads " << threads;
  }
}

TEST(ShardWriter, DeterministicAcrossThreadCounts) {
  REQUIRE_GPT2();
  const auto& t = *gpt2();
  TempDir dir("shards");
  std::mt19937 rng(11);
  std::vector<std::string> files;
  files.push_back(dir.file("a.txt", mixed_text(rng, 50000)));
  files.push_back(dir.file("empty.txt", ""));
  files.push_back(dir.file("b.txt", "Hello world"));
  files.push_back(dir.file("c.txt", mixed_text(rng, 120000)));

  // The expected stream: eot before each document, each document encoded whole.
  std::vector<uint16_t> expect;
  for (const auto& f : files) {
    expect.push_back(uint16_t(t.document_start()));
    for (const int32_t id : t.encode(read_bytes(f))) expect.push_back(uint16_t(id));
  }
  const int64_t n = int64_t(expect.size());
  const int64_t n_val = std::llround(0.1 * double(n));

  std::vector<std::vector<std::string>> contents;
  // Batches of 40 KB: a.txt, then empty.txt and b.txt with c.txt, each reported.
  for (const auto& [threads, chunk, batch] :
       std::vector<std::tuple<int, size_t, size_t>>{{1, size_t(1) << 20, size_t(256) << 20},
                                                    {2, 1000, 40000},
                                                    {3, 64, 40000},
                                                    {2, size_t(1) << 20, size_t(256) << 20}}) {
    triad::ShardWriterOptions o;
    o.out_dir = dir.path("out_" + std::to_string(threads) + "_" + std::to_string(chunk));
    o.prefix = "test";
    o.val_fraction = 0.1;
    o.shard_tokens = 10000;
    o.threads = threads;
    o.chunk_bytes = chunk;
    o.batch_bytes = batch;
    std::ostringstream progress;
    o.progress = &progress;
    const triad::ShardSummary s = triad::write_shards(t, files, o);
    if (batch < 170011) {  // the corpus's bytes: several batches, one line each
      EXPECT_THAT(progress.str(), HasSubstr("tokenize: 0.1 of 0.2 MB (29%), 1 documents, "));
      EXPECT_THAT(progress.str(),
                  HasSubstr("(100%), 4 documents, " + std::to_string(n) + " tokens"));
      const std::string lines = progress.str();
      EXPECT_EQ(std::count(lines.begin(), lines.end(), '\n'), 2);
    } else {
      EXPECT_EQ(progress.str(), "");  // one batch: no progress lines
    }
    EXPECT_EQ(s.documents, 4);
    EXPECT_EQ(s.tokens, n);
    EXPECT_EQ(s.val_tokens, n_val);
    EXPECT_EQ(s.train_tokens, n - n_val);
    ASSERT_EQ(int64_t(s.train_files.size()), (n - n_val + 9999) / 10000);
    ASSERT_EQ(int64_t(s.val_files.size()), (n_val + 9999) / 10000);
    EXPECT_EQ(s.train_files[0], o.out_dir + "/test_train_000000.bin");
    EXPECT_EQ(s.val_files[0], o.out_dir + "/test_val_000000.bin");
    // Read back: train then val is the whole stream, every shard full but the last.
    std::vector<uint16_t> got;
    std::vector<std::string> bytes;
    for (const auto* split : {&s.train_files, &s.val_files}) {
      for (size_t i = 0; i < split->size(); ++i) {
        const auto tokens = triad::read_token_shard((*split)[i]);
        if (i + 1 < split->size()) {
          EXPECT_EQ(tokens.size(), 10000u);
        }
        got.insert(got.end(), tokens.begin(), tokens.end());
        bytes.push_back(read_bytes((*split)[i]));
      }
    }
    ASSERT_EQ(got, expect) << threads << " threads, chunk " << chunk;
    contents.push_back(bytes);
  }
  for (size_t i = 1; i < contents.size(); ++i) EXPECT_EQ(contents[i], contents[0]);
}

TEST(ShardWriter, RemovesStaleShardsAndChecksOptions) {
  REQUIRE_GPT2();
  const auto& t = *gpt2();
  TempDir dir("shards_opts");
  const std::string doc = dir.file("doc.txt", std::string(3000, 'x') + " the end");
  triad::ShardWriterOptions o;
  o.out_dir = dir.path("out");
  o.prefix = "p";
  fs::create_directories(o.out_dir);
  dir.file("out/p_train_000042.bin", "old");
  dir.file("out/p_val_000007.bin", "old");
  dir.file("out/other_train_000042.bin", "keep");
  dir.file("out/p_train_notes.txt", "keep");
  o.val_fraction = 0.25;
  const auto s = triad::write_shards(t, {doc}, o);
  EXPECT_EQ(s.removed_files.size(), 2u);
  EXPECT_FALSE(fs::exists(dir.path("out/p_train_000042.bin")));
  EXPECT_FALSE(fs::exists(dir.path("out/p_val_000007.bin")));
  EXPECT_TRUE(fs::exists(dir.path("out/other_train_000042.bin")));
  EXPECT_TRUE(fs::exists(dir.path("out/p_train_notes.txt")));

  o.val_fraction = 0;  // no validation shard
  const auto s0 = triad::write_shards(t, {doc}, o);
  EXPECT_TRUE(s0.val_files.empty());
  EXPECT_FALSE(fs::exists(dir.path("out/p_val_000000.bin")));

  auto expect_error = [&](triad::ShardWriterOptions bad, std::vector<std::string> files,
                          const std::string& part) {
    try {
      triad::write_shards(t, files, bad);
      ADD_FAILURE() << "no error for " << part;
    } catch (const triad::Error& e) {
      EXPECT_THAT(e.what(), HasSubstr(part));
    }
  };
  auto with = [&](auto change) {
    triad::ShardWriterOptions x = o;
    change(x);
    return x;
  };
  expect_error(o, {}, "no input files");
  expect_error(o, {dir.path("nope.txt")}, "nope.txt");
  expect_error(o, {dir.path()}, "not a regular file");
  expect_error(with([](auto& x) { x.val_fraction = 1.0; }), {doc}, "--val-fraction");
  expect_error(with([](auto& x) { x.val_fraction = -0.1; }), {doc}, "--val-fraction");
  expect_error(with([](auto& x) { x.val_fraction = 1e-9; }), {doc}, "no validation tokens");
  expect_error(with([](auto& x) { x.shard_tokens = 0; }), {doc}, "--shard-tokens");
  expect_error(with([](auto& x) { x.prefix = "a/b"; }), {doc}, "--prefix");
  expect_error(with([&](auto& x) { x.out_dir = doc; }), {doc}, "output directory");
}

namespace {

std::vector<std::string> pieces(std::string_view text, triad::pretok::Scheme scheme) {
  std::vector<std::string> out;
  for (auto p : triad::pretok::split(text, scheme)) out.emplace_back(p);
  return out;
}

// A tokenizer description naming `ranks` (a file name beside it) with the given lines after
// the magic, ranks and pretokenizer lines.
std::string description(const std::string& ranks, int ranks_count, const std::string& rest,
                        const std::string& scheme = "llama3") {
  return "triad-tokenizer 1\n# a test\nranks " + ranks + "\nranks_count " +
         std::to_string(ranks_count) + "\npretokenizer " + scheme + "\n" + rest;
}

}  // namespace

TEST(Pretokenize, SplitsLikeLlama3AndQwen2Regexes) {
  // Expected pieces from Python: regex.findall(pattern, s), with the patterns of
  // include/triad/data/pretokenize.h (tiktoken's cl100k_base and Llama 3's; Qwen2's).
  using triad::pretok::Scheme;
  auto l3 = [](std::string_view s) { return pieces(s, Scheme::llama3); };
  auto qw = [](std::string_view s) { return pieces(s, Scheme::qwen2); };
  EXPECT_THAT(l3("Hello world"), ElementsAre("Hello", " world"));
  EXPECT_THAT(l3("they'll've"), ElementsAre("they", "'ll", "'ve"));
  EXPECT_THAT(l3("DON'T 'S"), ElementsAre("DON", "'T", " '", "S"));  // case-insensitive
  EXPECT_THAT(l3("x\n\n\ny"), ElementsAre("x", "\n\n\n", "y"));
  EXPECT_THAT(l3("x\r\n\r\ny"), ElementsAre("x", "\r\n\r\n", "y"));
  EXPECT_THAT(l3("a   b"), ElementsAre("a", "  ", " b"));
  EXPECT_THAT(l3("a \t b"), ElementsAre("a", " \t", " b"));
  EXPECT_THAT(l3("a\t\tb"), ElementsAre("a", "\t", "\tb"));
  EXPECT_THAT(l3("end  "), ElementsAre("end", "  "));
  EXPECT_THAT(l3(" 1234567abc!!?"), ElementsAre(" ", "123", "456", "7", "abc", "!!?"));
  EXPECT_THAT(qw(" 1234567abc!!?"),
              ElementsAre(" ", "1", "2", "3", "4", "5", "6", "7", "abc", "!!?"));
  EXPECT_THAT(l3("2024-11-30"), ElementsAre("202", "4", "-", "11", "-", "30"));
  EXPECT_THAT(l3("''s"), ElementsAre("''", "s"));
  EXPECT_THAT(l3("$hello $$x"), ElementsAre("$hello", " $$", "x"));
  EXPECT_THAT(l3("!!\n\n  x"), ElementsAre("!!\n\n", " ", " x"));
  EXPECT_THAT(l3("a \n\n  b"), ElementsAre("a", " \n\n", " ", " b"));
  EXPECT_THAT(l3("\thello"), ElementsAre("\thello"));
  EXPECT_THAT(l3("(x) [1]"), ElementsAre("(x", ")", " [", "1", "]"));
  EXPECT_THAT(l3("\u00a0x\u3000y"), ElementsAre("\u00a0x", "\u3000y"));
  EXPECT_THAT(l3("emoji 👍🏽!"), ElementsAre("emoji", " 👍🏽!"));
  EXPECT_THAT(l3("a\x1c b"), ElementsAre("a", "\x1c", " b"));
  // Unicode simple case folding: (?i)s also matches U+017F, long s.
  EXPECT_THAT(l3("'\u017fx 'Kx"), ElementsAre("'\u017f", "x", " '", "Kx"));
  // Invalid bytes are 'other' characters of their own (tiktoken takes valid UTF-8 only).
  EXPECT_THAT(l3("a\xff!b \xc3"), ElementsAre("a", "\xff!", "b", " \xc3"));
  EXPECT_TRUE(l3("").empty());
  // gpt2_digits: expected pieces from Hugging Face's Sequence([Digits(individual_digits=True),
  // ByteLevel(add_prefix_space=False)]) (SmolLM's pre-tokenizer).
  auto dg = [](std::string_view s) { return pieces(s, Scheme::gpt2_digits); };
  EXPECT_THAT(dg("it's 2024, ok  123abc"), ElementsAre("it", "'s", " ", "2", "0", "2", "4", ",",
                                                       " ok", "  ", "1", "2", "3", "abc"));
  EXPECT_THAT(dg("a٣b12 ³x ½ Ⅻ 42nd"), ElementsAre("a", "٣", "b", "1", "2", " ", "³", "x", " ", "½",
                                                   " ", "Ⅻ", " ", "4", "2", "nd"));
  EXPECT_THAT(dg("x  \n 7 "), ElementsAre("x", "  \n ", "7", " "));
  EXPECT_THAT(dg("3.14159"), ElementsAre("3", ".", "1", "4", "1", "5", "9"));
  EXPECT_EQ(triad::pretok::parse_scheme("gpt2_digits"), Scheme::gpt2_digits);
  EXPECT_EQ(triad::pretok::parse_scheme("qwen2"), Scheme::qwen2);
  EXPECT_FALSE(triad::pretok::parse_scheme("cl100k").has_value());
}

TEST(Tokenizer, DescriptionWithSpecialTokens) {
  TempDir dir("tok_desc");
  dir.file("small.tiktoken", small_ranks());  // ranks 0..258
  // Special tokens after the ranks, as Llama 3's.
  const auto t = triad::Tokenizer::from_file(dir.file(
      "after.triad", description("small.tiktoken", 259,
                                 "special 259 <|begin|>\nspecial 260 <|end|>\n"
                                 "special 261 <|eot|>\n\n  # comment\ndocument_start <|begin|>\n"
                                 "prompt_start <|begin|>\nstop <|end|>\nstop <|eot|>\n")));
  EXPECT_EQ(t.vocab_size(), 262);
  EXPECT_EQ(t.n_ranks(), 259);
  EXPECT_EQ(t.pretokenizer(), triad::pretok::Scheme::llama3);
  EXPECT_EQ(t.document_start(), 259);
  EXPECT_EQ(t.prompt_start(), 259);
  EXPECT_THAT(t.stop_tokens(), ElementsAre(260, 261));
  EXPECT_EQ(t.special_id("<|eot|>"), 261);
  EXPECT_EQ(t.special_id("<|nope|>"), -1);
  EXPECT_TRUE(t.is_special(260));
  EXPECT_FALSE(t.is_special(258));
  EXPECT_THAT(t.encode_prompt("abcd"), ElementsAre(259, 256, 258));
  EXPECT_THAT(t.encode_prompt(""), ElementsAre(259));
  // Special tokens' texts in the text are ordinary text; decoding gives the texts back.
  const auto ids = t.encode("ab<|end|>");
  EXPECT_EQ(std::count(ids.begin(), ids.end(), 260), 0);
  EXPECT_EQ(t.decode(std::vector<int32_t>{259, 256, 261}), "<|begin|>ab<|eot|>");
  EXPECT_EQ(t.token_bytes(260), "<|end|>");

  // A special token first (a tokenizer trained by Hugging Face's tokenizers): ranks 1..259,
  // no prompt start, and the ranks file in another directory.
  std::string shifted;
  for (int b = 0; b < 256; ++b)
    shifted += base64(std::string(1, char(b))) + " " + std::to_string(b + 1) + "\n";
  shifted += base64("ab") + " 257\n" + base64("abab") + " 258\n" + base64("cd") + " 259\n";
  fs::create_directories(dir.path("ranks"));
  dir.file("ranks/shifted.tiktoken", shifted);
  const auto h = triad::Tokenizer::from_file(
      dir.file("first.triad", description("ranks/shifted.tiktoken", 259,
                                          "special 0 <|endoftext|>\ndocument_start "
                                          "<|endoftext|>\nstop <|endoftext|>\n",
                                          "gpt2")));
  EXPECT_EQ(h.vocab_size(), 260);
  EXPECT_EQ(h.document_start(), 0);
  EXPECT_EQ(h.prompt_start(), -1);
  EXPECT_THAT(h.encode("ababab x"), ElementsAre(258, 257, ' ' + 1, 'x' + 1));
  EXPECT_THAT(h.encode_prompt(""), ElementsAre(0));
  EXPECT_THAT(h.encode_prompt("ab"), ElementsAre(257));  // GPT-2's way: no prompt start
  EXPECT_EQ(h.decode(std::vector<int32_t>{0, 258, 1}), std::string("<|endoftext|>abab") + '\0');
}

TEST(Tokenizer, MalformedDescriptionsAreClearErrors) {
  TempDir dir("tok_desc_bad");
  dir.file("small.tiktoken", small_ranks());
  const std::string specials = "special 259 <|s|>\nspecial 260 <|e|>\n";
  const std::string roles = "document_start <|s|>\nstop <|e|>\n";
  auto expect_error = [&](const std::string& name, const std::string& contents,
                          const std::vector<std::string>& parts) {
    const std::string path = dir.file(name, contents);
    try {
      triad::Tokenizer::from_file(path);
      ADD_FAILURE() << name << ": no error";
    } catch (const triad::Error& e) {
      EXPECT_THAT(e.what(), HasSubstr(path)) << name;
      for (const auto& p : parts) EXPECT_THAT(e.what(), HasSubstr(p)) << name;
    }
  };
  const std::string ok = description("small.tiktoken", 259, specials + roles);
  EXPECT_EQ(triad::Tokenizer::from_file(dir.file("ok.triad", ok)).vocab_size(), 261);
  expect_error("version", "triad-tokenizer 2\n" + ok.substr(ok.find('\n') + 1),
               {"another version", "triad-tokenizer 1"});
  // (Both were read as a ranks file: "'triad-tokenizer' is not valid base64".)
  expect_error("bom", "\xEF\xBB\xBF" + ok,
               {"must begin with its 'triad-tokenizer' line", "a UTF-8 byte-order mark before it"});
  expect_error("blank_first", "\n" + ok,
               {"must begin with its 'triad-tokenizer' line", "other bytes before it"});
  expect_error("unknown_key", ok + "colour blue\n", {"line 10", "unknown key 'colour'"});
  expect_error("repeated", ok + "pretokenizer gpt2\n", {"line 10", "already given on line 5"});
  expect_error("two_words", ok + "stop <|e|> <|s|>\n", {"line 10", "single words"});
  expect_error("no_value", ok + "stop\n", {"line 10", "expected 'stop VALUE'"});
  expect_error("no_ranks",
               "triad-tokenizer 1\nranks_count 259\npretokenizer gpt2\n" + specials + roles,
               {"no 'ranks' line"});
  expect_error("no_specials", description("small.tiktoken", 259, roles), {"no 'special ID TEXT'"});
  expect_error("no_stop", description("small.tiktoken", 259, specials + "document_start <|s|>\n"),
               {"no 'stop' line"});
  expect_error("scheme", description("small.tiktoken", 259, specials + roles, "p50k"),
               {"unknown pretokenizer 'p50k'"});
  expect_error("count", description("small.tiktoken", 300, specials + roles),
               {"small.tiktoken", "has 259 tokens, expected 300", "truncated"});
  expect_error("bad_id", description("small.tiktoken", 259, "special x1 <|s|>\n" + roles),
               {"line 6", "token id 'x1'"});
  expect_error(
      "taken_id",
      description("small.tiktoken", 259, "special 258 <|s|>\nspecial 260 <|e|>\n" + roles),
      {"line 259: rank 258 is already taken by special token id 258 (description line 6)"});
  // Ids 259 and 261: 260 is nobody's, so 261 is past vocab_size - 1.
  expect_error("gap",
               description("small.tiktoken", 259, "special 259 <|s|>\nspecial 261 <|e|>\n" + roles),
               {"<|e|> has id 261, out of range", "0..260"});
  expect_error("same_id",
               description("small.tiktoken", 259, "special 259 <|s|>\nspecial 259 <|e|>\n" + roles),
               {"<|e|> has id 259, already taken by special token id 259 (description line 6)"});
  expect_error("same_text",
               description("small.tiktoken", 259, "special 259 <|s|>\nspecial 260 <|s|>\n" + roles),
               {"line 7", "token '<|s|>' was already given on line 6"});
  expect_error("start",
               description("small.tiktoken", 259, specials + "document_start <|x|>\nstop <|e|>\n"),
               {"document_start '<|x|>' is not one of the special tokens"});
  expect_error("stop_twice", description("small.tiktoken", 259, specials + roles + "stop <|e|>\n"),
               {"stop '<|e|>' is given twice"});
  expect_error("missing_ranks", description("nowhere.tiktoken", 259, specials + roles),
               {"nowhere.tiktoken", "cannot open"});
}

// The cut rule against ranks that join punctuation and the CR and LF after it (".\n" is one
// piece in llama3's, qwen2's, tekken's and deepseek3's schemes) and a control character or an
// ASCII symbol with the spaces around it (one piece in deepseek_llm's, deepseek_coder's): every
// scheme, cut anywhere cut_is_safe allows, encodes as the text whole.
TEST(ShardWriter, ParallelEncodeEqualsEncodeWithPunctuationNewlineTokens) {
  TempDir dir("cuts");
  dir.file("p.tiktoken", small_ranks({".\n", ";\r", ";\r\n", "!!", "!!\n", "x.", "\n\n", " \x01",
                                      "\x01 \x01", " +", "+ +"}));
  std::mt19937 rng(5);
  const std::vector<std::string> joins = {".\n", ";\r\n!!\n", "\x01 \x01\x7f ", "+ + x"};
  std::string s;
  while (s.size() < 30000) s += mixed_text(rng, 40) + joins[rng() % joins.size()];
  for (const char* scheme : {"gpt2", "llama3", "qwen2", "gpt2_digits", "tekken", "deepseek3",
                             "o200k", "kimi", "deepseek_llm", "deepseek_coder"}) {
    const auto t = triad::Tokenizer::from_file(dir.file(
        std::string(scheme) + ".triad",
        description("p.tiktoken", 267,
                    "special 267 <|end|>\ndocument_start <|end|>\nstop <|end|>\n", scheme)));
    const auto whole = t.encode(s);
    for (const size_t chunk : {size_t(1), size_t(29)})
      ASSERT_EQ(triad::encode_parallel(t, s, 2, chunk), whole) << scheme << " chunk " << chunk;
  }
}

TEST(ShardWriter, WideVocabularyWritesUint32) {
  // A vocabulary above 65536 ids: 256 bytes and 65,400 two-byte tokens, then special tokens.
  TempDir dir("shards_wide");
  std::string ranks = small_ranks({});
  int r = 256;
  for (int a = 0; a < 256 && r < 65656; ++a)
    for (int b = 0; b < 256 && r < 65656; ++b)
      ranks += base64(std::string{char(a), char(b)}) + " " + std::to_string(r++) + "\n";
  ASSERT_EQ(r, 65656);
  dir.file("wide.tiktoken", ranks);
  const auto t = triad::Tokenizer::from_file(
      dir.file("wide.triad", description("wide.tiktoken", 65656,
                                         "special 65656 <|begin|>\nspecial 65657 <|end|>\n"
                                         "document_start <|begin|>\nstop <|end|>\n")));
  ASSERT_EQ(t.vocab_size(), 65658);
  const std::vector<std::string> docs = {"the quick zebra", "zz top\n"};
  std::vector<std::string> files;
  std::vector<uint32_t> expect;
  for (size_t i = 0; i < docs.size(); ++i) {
    files.push_back(dir.file("d" + std::to_string(i) + ".txt", docs[i]));
    expect.push_back(65656);
    for (const int32_t id : t.encode(docs[i])) expect.push_back(uint32_t(id));
  }
  EXPECT_GT(*std::max_element(expect.begin() + 1, expect.end()), 65535u);
  triad::ShardWriterOptions o;
  o.out_dir = dir.path("out");
  o.val_fraction = 0;
  const auto s = triad::write_shards(t, files, o);
  EXPECT_EQ(s.token_bytes, 4);
  ASSERT_EQ(s.train_files.size(), 1u);
  EXPECT_EQ(triad::read_token_shard_header(s.train_files[0]).token_bytes, 4);
  EXPECT_EQ(triad::read_token_shard(s.train_files[0]), expect);
  // A GPT-2-sized vocabulary still writes GPT-2's uint16 shards.
  const auto small = triad::Tokenizer::from_file(dir.file("small.tiktoken", small_ranks()), 0);
  const auto s16 = triad::write_shards(small, files, o);
  EXPECT_EQ(s16.token_bytes, 2);
  EXPECT_EQ(triad::read_token_shard_header(s16.train_files[0]).token_bytes, 2);
}

TEST(Nfc, ComposesAsUnicodeSays) {
  // Expected values from Python's unicodedata.normalize("NFC", s).
  using triad::nfc;
  EXPECT_EQ(nfc("plain ASCII, unchanged"), "plain ASCII, unchanged");
  EXPECT_EQ(nfc("cafe\u0301"), "caf\u00e9");        // e + acute
  EXPECT_EQ(nfc("e\u0323\u0302"), "\u1ec7");        // marks in order
  EXPECT_EQ(nfc("e\u0302\u0323"), "\u1ec7");        // reordered by class first
  EXPECT_EQ(nfc("a\u0308\u0308"), "\u00e4\u0308");  // the second is blocked
  EXPECT_EQ(nfc("\u212b"), "\u00c5");               // singleton (Angstrom)
  EXPECT_EQ(nfc("\u0958"), "\u0915\u093c");         // composition exclusion
  EXPECT_EQ(nfc("\u1100\u1161\u11a8"), "\uac01");   // Hangul L V T
  EXPECT_EQ(nfc("\uac00\u11a8"), "\uac01");         // Hangul LV + T
  EXPECT_EQ(nfc("\u0301a"), "\u0301a");             // a mark first: nothing to join
  EXPECT_EQ(nfc("x\xff\u0301 e\xc3\u0301"), "x\xff\u0301 e\xc3\u0301");  // raw bytes block
  EXPECT_EQ(nfc("\u00e9"), "\u00e9");
  EXPECT_EQ(nfc(""), "");
}

TEST(Nfc, TokenizerNormalizesBeforeSplitting) {
  TempDir dir("tok_nfc");
  dir.file("small.tiktoken", small_ranks({"\xc3\xa9", "caf", "caf\xc3\xa9"}));
  const std::string rest = "special 259 <|e|>\ndocument_start <|e|>\nstop <|e|>\n";
  const auto plain = triad::Tokenizer::from_file(
      dir.file("plain.triad", description("small.tiktoken", 259, rest, "qwen2")));
  const auto t = triad::Tokenizer::from_file(dir.file(
      "nfc.triad", description("small.tiktoken", 259, "normalizer nfc\n" + rest, "qwen2")));
  EXPECT_TRUE(t.normalizes_nfc());
  EXPECT_FALSE(plain.normalizes_nfc());
  EXPECT_THAT(t.encode("cafe\u0301"), ElementsAre(258));  // "café", one token
  EXPECT_THAT(t.encode("caf\u00e9"), ElementsAre(258));
  EXPECT_NE(plain.encode("cafe\u0301"), plain.encode("caf\u00e9"));
  EXPECT_EQ(t.decode(t.encode("cafe\u0301 ok")), "caf\u00e9 ok");
  // Parallel encoding cuts the text where NFC cannot reach across.
  std::string text;
  for (int i = 0; i < 2000; ++i) text += i % 3 ? "cafe\u0301 x\u0301\u0323 " : "na\u0308ive ";
  EXPECT_EQ(triad::encode_parallel(t, text, 3, 64), t.encode(text));
  try {
    triad::Tokenizer::from_file(
        dir.file("bad.triad", description("small.tiktoken", 259, "normalizer nfkc\n" + rest)));
    ADD_FAILURE() << "no error";
  } catch (const triad::Error& e) {
    EXPECT_THAT(e.what(), HasSubstr("unknown normalizer 'nfkc'"));
  }
}

TEST(Tokenizer, AddedTokensAreFoundInTheText) {
  // Hugging Face's non-special added tokens (Qwen2.5's <tool_call>): the text is cut at each,
  // leftmost first and the longest there, and the pieces between are encoded as usual.
  TempDir dir("tok_added");
  dir.file("small.tiktoken", small_ranks());
  const auto t = triad::Tokenizer::from_file(
      dir.file("added.triad", description("small.tiktoken", 259,
                                          "special 259 <|e|>\nadded 260 <t>\nadded 261 <t>x\n"
                                          "added 262 </t>\ndocument_start <|e|>\nstop <|e|>\n")));
  EXPECT_EQ(t.vocab_size(), 263);
  EXPECT_THAT(t.encode("ab<t>cd</t>"), ElementsAre(256, 260, 258, 262));
  EXPECT_THAT(t.encode("<t>xab"), ElementsAre(261, 256));  // the longest at that position
  EXPECT_THAT(t.encode("<<t>>"), ElementsAre('<', 260, '>'));
  EXPECT_THAT(t.encode("<|e|>"), ElementsAre('<', '|', 'e', '|', '>'));  // specials stay text
  EXPECT_EQ(t.decode(t.encode("x<t>y</t>z")), "x<t>y</t>z");
  std::string text;
  for (int i = 0; i < 500; ++i) text += i % 2 ? "a <t>b</t> " : "abab <t>x ";
  EXPECT_EQ(triad::encode_parallel(t, text, 3, 40), t.encode(text));
}

namespace {

// A small SentencePiece-style tokenizer: <unk> <s> </s>, the 256 byte fallback tokens (ids
// 3..258), then the pieces below, and merges with their ranks (a rank-0 tie between "ab" and
// "bc"). tests/python/test_tokenizer_sentencepiece.py checks real models against sentencepiece.
const std::vector<std::string> kPieces = {" ", "a", "b", "c", " a", "ab", " ab", "bc", "  "};
constexpr int32_t kFirstPiece = 259;
int32_t piece(const std::string& s) {
  return kFirstPiece + int32_t(std::find(kPieces.begin(), kPieces.end(), s) - kPieces.begin());
}

std::string sp_pieces(std::string extra = "") {
  std::string s;
  for (int b = 0; b < 256; ++b)
    s += base64(std::string(1, char(b))) + " " + std::to_string(3 + b) + " byte\n";
  for (size_t i = 0; i < kPieces.size(); ++i)
    s += base64(kPieces[i]) + " " + std::to_string(kFirstPiece + int32_t(i)) + "\n";
  return s + extra;
}

std::string sp_merges(std::string extra = "") {
  auto m = [](const std::string& a, const std::string& b, int rank) {
    return std::to_string(piece(a)) + " " + std::to_string(piece(b)) + " " + std::to_string(rank) +
           "\n";
  };
  return m("a", "b", 0) + m("b", "c", 0) + m(" ", "a", 1) + m(" ", "ab", 2) + m(" a", "b", 2) +
         m(" ", " ", 3) + extra;
}

std::string sp_description(const std::string& prefix = "true", int pieces = 265, int merges = 6,
                           const std::string& rest = "") {
  return "triad-tokenizer 1\npieces sp.pieces\npieces_count " + std::to_string(pieces) +
         "\nmerges sp.merges\nmerges_count " + std::to_string(merges) + "\nspace_prefix " + prefix +
         "\nspecial 0 <unk>\nspecial 1 <s>\nspecial 2 </s>\ndocument_start <s>\n" +
         "prompt_start <s>\nstop </s>\n" + rest;
}

}  // namespace

// Fill-in-the-middle between characters (data/fim.h) with a SentencePiece-style tokenizer that
// puts a space in front of a text: the pieces are encoded anew as continuations, so none gains a
// space, and each piece's bytes are the window's in PSM's or SPM's order (é, a character of two
// byte-fallback tokens, never cut; <s> kept whole).
TEST(Tokenizer, FillInTheMiddleBetweenCharactersPutsNoSpaceBeforeAPiece) {
  TempDir dir("tok_sp_fim");
  dir.file("sp.pieces", sp_pieces());
  dir.file("sp.merges", sp_merges());
  const auto t = triad::Tokenizer::from_file(dir.file("t.triad", sp_description()));
  constexpr int32_t P = 268, M = 269, S = 270, PAD = 271;  // past the tokenizer's 268 ids
  const size_t n = 25;
  auto render = [&t](std::span<const int32_t> ids) {
    std::string out;
    for (int32_t id : ids)
      out += id < t.vocab_size() ? t.decode(std::span<const int32_t>(&id, 1)) : "#";
    return out;
  };
  const int32_t lead = 3 + 0xC3, trail = 3 + 0xA9;  // é's byte-fallback tokens
  ASSERT_EQ(t.encode("\xC3\xA9").back(), trail);
  std::mt19937 rng(3);
  int psm = 0, spm = 0;
  for (int64_t k = 0; k < 200; ++k) {
    const char* parts[] = {"a", "b", "c", " ", "  ", "\xC3\xA9"};
    std::string text;
    while (text.size() < 80) text += parts[rng() % 6];
    std::vector<int32_t> w = t.encode(text);
    ASSERT_GT(w.size(), n + 1);
    w.resize(w[n - 1] == lead ? n - 1 : n);  // no é cut by the window's end
    w.push_back(piece("a"));
    w.resize(n);
    size_t at_s = rng() % n;  // <s> in place of a token that is no half of an é
    while (w[at_s] == lead || w[at_s] == trail) at_s = (at_s + 1) % n;
    w[at_s] = 1;
    const std::string bytes = render(w);
    std::vector<uint8_t> c(n, 1);
    triad::FimSpec f;
    f.rate = 1.0;
    f.spm_rate = 0.5;
    f.prefix = P;
    f.middle = M;
    f.suffix = S;
    f.seed = 5;
    f.characters = true;
    f.pad = PAD;
    f.tokenizer = &t;
    std::vector<int32_t> out = w;
    triad::fill_in_the_middle(f, k, out, c);
    ASSERT_EQ(out[0], P);
    const auto at = [&out](int32_t id) {
      return size_t(std::find(out.begin(), out.end(), id) - out.begin());
    };
    const size_t end = at(PAD), s = at(S), m = at(M);
    const std::span<const int32_t> all(out.data(), end);
    if (m >= end) continue;  // the suffix ran past the window's end
    std::string prefix, middle, suffix;
    if (s == 1) {
      ++spm;
      suffix = render(all.subspan(2, m - 2));
    } else {
      ++psm;
      prefix = render(all.subspan(1, s - 1));
      suffix = render(all.subspan(s + 1, m - s - 1));
    }
    middle = render(all.subspan(m + 1));  // (SPM: the prefix, then the middle)
    ASSERT_GE(bytes.size(), prefix.size() + middle.size() + suffix.size()) << k;
    EXPECT_EQ(bytes.substr(0, prefix.size()), prefix) << k;
    EXPECT_EQ(bytes.substr(bytes.size() - suffix.size()), suffix) << k;
    EXPECT_EQ(bytes.substr(prefix.size(), middle.size()), middle) << k;
    for (size_t i = 0; i < all.size(); ++i) {  // é whole: its second byte after its first
      if (all[i] == trail) {
        EXPECT_TRUE(i > 0 && all[i - 1] == lead) << k << " " << i;
      }
    }
  }
  EXPECT_GT(psm, 50);
  EXPECT_GT(spm, 50);
}

TEST(Tokenizer, SentencePieceStyleMergesByRankLeftmostFirst) {
  TempDir dir("tok_sp");
  dir.file("sp.pieces", sp_pieces());
  dir.file("sp.merges", sp_merges());
  const auto t = triad::Tokenizer::from_file(dir.file("t.triad", sp_description()));
  EXPECT_TRUE(t.is_sentencepiece());
  EXPECT_EQ(t.vocab_size(), 268);
  // " ab": ab (rank 0) first, then " "+"ab" (rank 2).
  EXPECT_THAT(t.encode("ab"), ElementsAre(piece(" ab")));
  // "abc": ab and bc tie at rank 0; the leftmost wins, so " ab" then c.
  EXPECT_THAT(t.encode("abc"), ElementsAre(piece(" ab"), piece("c")));
  // A character without a piece becomes its bytes' fallback tokens (é = C3 A9).
  EXPECT_THAT(t.encode("\xC3\xA9"), ElementsAre(piece(" "), 3 + 0xC3, 3 + 0xA9));
  // U+2581 counts as a space: "  a" -> "  " (rank 3) loses to " a" (rank 1) at the right.
  EXPECT_THAT(t.encode("\xE2\x96\x81"
                       "a"),
              ElementsAre(piece(" "), piece(" a")));
  EXPECT_TRUE(t.encode("").empty());
  EXPECT_EQ(t.decode(t.encode("abc \xC3\xA9")), " abc \xC3\xA9");
  EXPECT_THAT(t.encode_prompt("a"), ElementsAre(1, piece(" a")));
  // No prefix, and the prefix unless the text begins with a space (Hugging Face's Metaspace).
  dir.file("never.triad", sp_description("false"));
  dir.file("unless.triad", sp_description("unless_space"));
  const auto never = triad::Tokenizer::from_file(dir.path("never.triad"));
  const auto unless = triad::Tokenizer::from_file(dir.path("unless.triad"));
  EXPECT_THAT(never.encode("abc"), ElementsAre(piece("ab"), piece("c")));
  EXPECT_THAT(unless.encode("ab"), ElementsAre(piece(" ab")));
  EXPECT_THAT(unless.encode(" ab"), ElementsAre(piece(" ab")));
  EXPECT_THAT(t.encode(" ab"), ElementsAre(piece(" "), piece(" ab")));
  // Cut into chunks on threads: the same ids as the whole text.
  std::mt19937 rng(3);
  const std::vector<std::string> parts = {" ", "  ",       "a",  "b",
                                          "c", "\xC3\xA9", "\n", "\xE2\x96\x81"};
  for (const auto* tok : {&t, &never, &unless})
    for (int i = 0; i < 20; ++i) {
      std::string s;
      for (int k = 0; k < 3000; ++k) s += parts[rng() % parts.size()];
      const auto whole = tok->encode(s);
      for (const size_t chunk : {size_t(1), size_t(40)})
        ASSERT_EQ(triad::encode_parallel(*tok, s, 3, chunk), whole) << i << " " << chunk;
    }
}

TEST(Tokenizer, MalformedSentencePieceFilesAreClearErrors) {
  TempDir dir("tok_sp_bad");
  auto expect_error = [&](const std::string& name, const std::string& pieces,
                          const std::string& merges, const std::string& desc,
                          const std::vector<std::string>& parts) {
    dir.file("sp.pieces", pieces);
    dir.file("sp.merges", merges);
    const std::string path = dir.file(name + ".triad", desc);
    try {
      triad::Tokenizer::from_file(path);
      ADD_FAILURE() << name << ": no error";
    } catch (const triad::Error& e) {
      for (const auto& p : parts) EXPECT_THAT(e.what(), HasSubstr(p)) << name;
    }
  };
  const std::string P = sp_pieces(), M = sp_merges(), D = sp_description();
  expect_error("with_ranks", P, M, D + "ranks x.tiktoken\n",
               {"'ranks' belongs to a byte-level BPE"});
  expect_error("no_merges", P, M, "triad-tokenizer 1\npieces sp.pieces\n", {"no 'pieces_count'"});
  expect_error("prefix", P, M, sp_description("maybe"), {"space_prefix 'maybe'"});
  expect_error("scheme", P, M, D + "pretokenizer gpt2\n", {"'pretokenizer' belongs to"});
  expect_error("count", P, M, sp_description("true", 300), {"has 265 tokens", "pieces_count 300"});
  expect_error("line", P + "YQ==\n", M, sp_description("true", 266), {"sp.pieces", "line 266"});
  expect_error("wide_byte", P + base64("xy") + " 268 byte\n", M, sp_description("true", 266),
               {"line 266", "must be one byte"});
  std::string no_a = P;
  no_a.replace(no_a.find(base64("A") + " 68 byte"), (base64("A") + " 68 byte").size(),
               base64("A") + " 68");
  expect_error("no_byte_a", no_a, M, D, {"byte 0x41 has no byte fallback token"});
  expect_error("taken", P + base64("z") + " 260\n", M, sp_description("true", 266),
               {"line 266", "id 260 is already taken by id 260 on line 258"});
  expect_error("merge_byte", P, M + "3 4 5\n", sp_description("true", 265, 7),
               {"sp.merges", "line 7", "left id 3 is not a token of the pieces file"});
  expect_error("merge_join", P, M + std::to_string(piece("c")) + " 260\n" + "", D,
               {"line 7", "expected 'left right rank'"});
  expect_error("no_join", P,
               M + std::to_string(piece("c")) + " " + std::to_string(piece("a")) + " 4\n",
               sp_description("true", 265, 7), {"line 7", "join to 'ca', which is no token"});
  expect_error("twice", P,
               M + std::to_string(piece("a")) + " " + std::to_string(piece("b")) + " 9\n",
               sp_description("true", 265, 7), {"line 7", "was already given on line 1"});
  expect_error("merges_count", P, M, sp_description("true", 265, 9), {"has 6 merges"});
  // A count no file of this size holds is refused before the merge table is sized by it.
  expect_error("merges_count_huge", P, M, sp_description("true", 265, 2000000000),
               {"sp.merges", "cannot hold merges_count 2000000000 merges"});
  expect_error("added_lower_block", P, M, D + "added 268 x\xE2\x96\x81y\n", {"holds U+2581"});
}

TEST(Pretokenize, SplitsLikeTekkenRegex) {
  // Expected pieces from Python: regex.findall(pattern, s) with tekken's pattern (Mistral's
  // tekken.json; analysis/hf_tokenizer.py PATTERNS["tekken"]).
  auto tk = [](std::string_view s) { return pieces(s, triad::pretok::Scheme::tekken); };
  EXPECT_THAT(tk("HELLOworld helloWORLD"), ElementsAre("HELLOworld", " hello", "WORLD"));
  EXPECT_THAT(tk("I'm McDonald's"), ElementsAre("I", "'m", " Mc", "Donald", "'s"));
  // Combining acute (a mark: in both letter sets, and also [^\s\p{L}\p{N}]).
  EXPECT_THAT(tk("x\xCC\x81y A\xCC\x81"
                 "B \xCC\x81"
                 "a"),
              ElementsAre("x\xCC\x81y", " A\xCC\x81", "B",
                          " \xCC\x81"
                          "a"));
  EXPECT_THAT(tk("a/b//c\n/ 123 \xD9\xA3"),
              ElementsAre("a", "/b", "//", "c", "\n", "/", " ", "1", "2", "3", " ", "\xD9\xA3"));
  // U+02B0 (modifier letter, Lm) and U+01C5 (title case, Lt).
  EXPECT_THAT(tk("ab\xCA\xB0"
                 "CD\xCA\xB0"
                 "ef \xC7\x85"
                 "a"),
              ElementsAre("ab\xCA\xB0",
                          "CD\xCA\xB0"
                          "ef",
                          " \xC7\x85"
                          "a"));
  EXPECT_THAT(tk("  \n\n x  "), ElementsAre("  \n\n", " x", "  "));
}

TEST(Pretokenize, SplitsLikeKimiAndO200kRegex) {
  // Expected pieces from Hugging Face's tokenizers: pre_tokenize_str of an isolated Split by the
  // pattern (analysis/hf_tokenizer.py PATTERNS["kimi"], PATTERNS["o200k"]).
  auto kimi = [](std::string_view s) { return pieces(s, triad::pretok::Scheme::kimi); };
  auto o200k = [](std::string_view s) { return pieces(s, triad::pretok::Scheme::o200k); };
  const std::string mixed = "\u4e2d\u6587English\u6df7\u5408 it's 12345";
  EXPECT_THAT(kimi(mixed),
              ElementsAre("\u4e2d\u6587", "English", "\u6df7\u5408", " it's", " ", "123", "45"));
  EXPECT_THAT(o200k(mixed),
              ElementsAre("\u4e2d\u6587English\u6df7\u5408", " it's", " ", "123", "45"));
  // Contractions after either letter alternative, in any case, U+017F (long s) as s.
  for (const auto scheme : {triad::pretok::Scheme::kimi, triad::pretok::Scheme::o200k})
    EXPECT_THAT(pieces("HELLO'S World'LL x'\u017f", scheme),
                ElementsAre("HELLO'S", " World'LL", " x'\u017f"));
  // kimi: no '/' after a line end; a Han radical (U+2E80, a symbol) is punctuation after a
  // space; the Han numeral U+3007 and the iteration mark U+3005 are Han.
  const std::string other = ".\n/ \u2e80\u2e80a \u30077";
  EXPECT_THAT(kimi(other), ElementsAre(".\n", "/", " \u2e80\u2e80", "a", " ", "\u3007", "7"));
  EXPECT_THAT(o200k(other), ElementsAre(".\n/", " \u2e80\u2e80", "a", " ", "\u30077"));
  EXPECT_THAT(kimi(" \u4e2d\u3005b"), ElementsAre(" ", "\u4e2d\u3005", "b"));
  EXPECT_THAT(o200k(" \u4e2d\u3005b"), ElementsAre(" \u4e2d\u3005b"));
}

TEST(Pretokenize, SplitsLikeDeepSeekV3PreTokenizer) {
  // Expected pieces from Hugging Face's tokenizers: pre_tokenize_str of DeepSeek-V3's Sequence
  // of three Split pre-tokenizers (Isolated; analysis/hf_tokenizer.py DEEPSEEK3_SPLITS).
  auto ds = [](std::string_view s) { return pieces(s, triad::pretok::Scheme::deepseek3); };
  EXPECT_THAT(ds("Hello world, it's 12345 items!\n"),
              ElementsAre("Hello", " world", ",", " it", "'s", " ", "123", "45", " items", "!\n"));
  EXPECT_THAT(ds("abc123def  x "), ElementsAre("abc", "123", "def", " ", " x", " "));
  // A control character and U+00AD (a format character): no class of their own.
  EXPECT_THAT(ds("\x01"
                 "abc \xC2\xAD"),
              ElementsAre("\x01"
                          "abc",
                          " ", "\xC2\xAD"));
  // Combining acute (a mark) inside a word and after a space.
  EXPECT_THAT(ds("e\xCC\x81te \xCC\x81"
                 "a"),
              ElementsAre("e\xCC\x81te",
                          " \xCC\x81"
                          "a"));
  EXPECT_THAT(ds(".NET a.b (x) \"q\""),
              ElementsAre(".NET", " a", ".b", " (", "x", ")", " \"", "q", "\""));
  // Kana and ideographs (split 2), U+30FB (punctuation in the kana block) after them.
  EXPECT_THAT(
      ds("\xE3\x81\x93\xE3\x82\x93\xE3\x81\xAB\xE3\x81\xA1\xE3\x81\xAF\xE4\xB8\x96\xE7\x95\x8C! "
         "\xE3\x83\x86\xE3\x82\xB9\xE3\x83\x88\xE3\x83\xBB\xE3\x83\x86"),
      ElementsAre(
          "\xE3\x81\x93\xE3\x82\x93\xE3\x81\xAB\xE3\x81\xA1\xE3\x81\xAF\xE4\xB8\x96\xE7\x95\x8C",
          "!", " ", "\xE3\x83\x86\xE3\x82\xB9\xE3\x83\x88", "\xE3\x83\xBB", "\xE3\x83\x86"));
  EXPECT_THAT(ds("  \n\n x  "), ElementsAre("  \n\n", " x", "  "));
  EXPECT_THAT(ds("a\r\n\r\nb"), ElementsAre("a", "\r\n\r\n", "b"));
  EXPECT_THAT(ds("\xE4\xB8\xAD\xE6\x96\x87"
                 "abc\xE4\xB8\xAD"),
              ElementsAre("\xE4\xB8\xAD\xE6\x96\x87", "abc", "\xE4\xB8\xAD"));
  EXPECT_THAT(ds("$100 + 2.5%"), ElementsAre("$", "100", " +", " ", "2", ".", "5", "%"));
  // U+200D (zero width joiner) before a letter; tabs.
  EXPECT_THAT(ds("x\xE2\x80\x8Dy \t\ty"), ElementsAre("x", "\xE2\x80\x8Dy", " \t", "\ty"));
  // Arabic-Indic digits in threes, U+00BD (a number).
  EXPECT_THAT(ds("\xD9\xA1\xD9\xA2\xD9\xA3\xD9\xA4 \xC2\xBD"),
              ElementsAre("\xD9\xA1\xD9\xA2\xD9\xA3", "\xD9\xA4", " ", "\xC2\xBD"));
  // U+3099 (a mark) and U+309B (a symbol), both in split 2's kana block.
  EXPECT_THAT(ds("\xE3\x82\x99"
                 "a \xE3\x82\x9B"),
              ElementsAre("\xE3\x82\x99", "a", " ", "\xE3\x82\x9B"));
}

TEST(Pretokenize, SplitsLikeDeepSeekLlmPreTokenizer) {
  // Expected pieces from Hugging Face's tokenizers: pre_tokenize_str of DeepSeek LLM's Sequence
  // of six Split pre-tokenizers (Isolated; analysis/hf_tokenizer.py DEEPSEEK_LLM_SPLITS).
  auto ds = [](std::string_view s) { return pieces(s, triad::pretok::Scheme::deepseek_llm); };
  EXPECT_THAT(
      ds("Hello world, it's 12345 items!\n"),
      ElementsAre("Hello", " world", ",", " it", "'", "s", " ", "12345", " items", "!", "\n"));
  EXPECT_THAT(ds("abc123def  x "), ElementsAre("abc", "123", "def", " ", " x", " "));
  // A control character keeps the spaces around it; DEL is in no class either.
  EXPECT_THAT(ds("\x01 \x01"
                 "abc \x7f"),
              ElementsAre("\x01 \x01", "abc", " \x7f"));
  // Split 3 cuts split 2's letters again where they leave ASCII: i with diaeresis, e acute. The
  // ohm and Kelvin signs (U+2126, U+212A) are in split 2's class, so split 5 does not join them
  // to the kana beside them; U+2125 (a symbol) it does.
  EXPECT_THAT(ds("na\xC3\xAFve caf\xC3\xA9 \xE2\x84\xA6\xE3\x81\x82\xE2\x84\xAA \xE2\x84\xA5"
                 "\xE3\x81\x82"),
              ElementsAre("na", "\xC3\xAF", "ve", " caf", "\xC3\xA9", " ", "\xE2\x84\xA6",
                          "\xE3\x81\x82", "\xE2\x84\xAA", " ", "\xE2\x84\xA5\xE3\x81\x82"));
  // Ideographs and Hangul (split 5, which also cuts out U+2126); the ideographic space starts a
  // punctuation run.
  EXPECT_THAT(ds("\xE6\x97\xA5\xE6\x9C\xAC \xED\x95\x9C\xEA\xB5\xAD \xC3\x85\xE2\x84\xA6"
                 "\xE3\x80\x80\xE3\x80\x82x"),
              ElementsAre("\xE6\x97\xA5\xE6\x9C\xAC", " ", "\xED\x95\x9C\xEA\xB5\xAD", " \xC3\x85",
                          "\xE2\x84\xA6", "\xE3\x80\x80\xE3\x80\x82", "x"));
  // CR and LF alone; white space at a piece's end (split 4); a tab before punctuation.
  EXPECT_THAT(ds("  \r\n\t.NET a.b (x) \"q\"  "),
              ElementsAre("  ", "\r", "\n", "\t.", "NET", " a", ".", "b", " (", "x", ")", " \"",
                          "q", "\"", "  "));
  EXPECT_THAT(ds("a\xC2\xA0 b \xE3\x80\x80\xE3\x80\x81"
                 "c"),
              ElementsAre("a", "\xC2\xA0", " b", " ", "\xE3\x80\x80\xE3\x80\x81", "c"));
}

TEST(Pretokenize, SplitsLikeDeepSeekCoderPreTokenizer) {
  // Expected pieces from Hugging Face's tokenizers: pre_tokenize_str of DeepSeek Coder's Sequence
  // of five Split pre-tokenizers (Isolated; analysis/hf_tokenizer.py DEEPSEEK_CODER_SPLITS).
  auto ds = [](std::string_view s) { return pieces(s, triad::pretok::Scheme::deepseek_coder); };
  // Numbers one by one; symbols (+, $, =) in no class, left with the spaces beside them.
  EXPECT_THAT(ds("def f(x):\n    return x+ 42  # na\xC3\xAFve"),
              ElementsAre("def", " f", "(", "x", "):", "\n", "   ", " return", " x", "+ ", "4", "2",
                          " ", " #", " na\xC3\xAFve"));
  EXPECT_THAT(ds("a = b  += c; \xE6\x97\xA5\xE6\x9C\xAC\xE2\x84\xA6 $5 \x01 \x01"),
              ElementsAre("a", " =", " b", "  +=", " c", ";", " ",
                          "\xE6\x97\xA5\xE6\x9C\xAC\xE2\x84\xA6", " $", "5", " \x01 \x01"));
}

TEST(JsonLines, ReadsTheFieldOfEachLine) {
  const std::string text =
      "{\"text\": \"Hello\", \"id\": 1}\n"
      "\n"
      "  {\"meta\": {\"a\": [1, -2.5e+3, true, false, null, \"}\"]}, \"text\": \"caf\\u00e9 "
      "\\ud83d\\ude00\\n\\t\\\"q\\\"\\/\\\\\"}\r\n"
      "{\"text\": \"first\", \"text\": \"last\"}\n"
      "{\"te\\u0078t\": \"escaped key\"}";
  EXPECT_THAT(
      triad::json_lines_documents(text, "text", "f"),
      ElementsAre("Hello", "caf\xC3\xA9 \xF0\x9F\x98\x80\n\t\"q\"/\\", "last", "escaped key"));
  EXPECT_TRUE(triad::json_lines_documents("\n \n", "text", "f").empty());
}

TEST(JsonLines, MalformedLinesAreClearErrors) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"[1, 2]", "expected a JSON object"},
      {"{\"text\": \"x\",}", "expected a field name in double quotes at column 14"},
      {"{\"text\": \"x\"} 7", "unexpected text after the object"},
      {"{\"text\": 5}", "field \"text\" is not a string"},
      {"{\"id\": 5}", "no \"text\" field"},
      {"{\"text\": \"a\tb\"}", "raw control character"},
      {"{\"text\": \"\\x\"}", "invalid escape"},
      {"{\"text\": \"\\ud800 \"}", "lone surrogate escape (\\uD800)"},
      {"{\"text\": \"\\udc00\"}", "lone surrogate escape (\\uDC00)"},
      {"{\"text\": \"\\u12G4\"}", "4 hex digits"},
      {"{\"text\": \"open", "a string is not closed"},
      {"{\"a\": 01, \"text\": \"x\"}", "expected ',' or '}'"},
      {"{\"a\": tru, \"text\": \"x\"}", "expected a value"},
      {"{\"a\": [1 2], \"text\": \"x\"}", "expected ',' or ']'"},
      {"{\"a\": 1.}", "digits after '.'"},
      {"{\"text\" \"x\"}", "expected ':'"},
      {"{\"a\": " + std::string(600, '[') + std::string(600, ']') + "}", "deeper than 512"},
  };
  for (const auto& [line, message] : cases) {
    try {
      triad::json_lines_documents("{\"text\": \"ok\"}\n" + line + "\n", "text", "input f.jsonl");
      ADD_FAILURE() << line << ": no error";
    } catch (const triad::Error& e) {
      EXPECT_THAT(e.what(), HasSubstr("input f.jsonl, line 2: ")) << line;
      EXPECT_THAT(e.what(), HasSubstr(message)) << line;
    }
  }
}
