// The multiple-choice eval file reader (data/choice_file.h) on files built here word by word
// from the format's definition: a good file reads back exactly; every malformation is one
// error naming the key, the file and (inside an example) the example's number.
#include <gtest/gtest.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "triad/core/error.h"
#include "triad/data/choice_file.h"
#include "triad/data/tokenizer.h"
#include "triad/train/choice_eval.h"

namespace triad {
namespace {

namespace fs = std::filesystem;

using Words = std::vector<uint16_t>;

// One example's words: start, size, index, label, endings, context, each ending.
Words example(uint16_t index, uint16_t label, const Words& ctx, const std::vector<Words>& ends) {
  Words w = {65535, 0, index, label, uint16_t(ends.size()), uint16_t(ctx.size())};
  w.insert(w.end(), ctx.begin(), ctx.end());
  for (const auto& e : ends) {
    w.push_back(uint16_t(e.size()));
    w.insert(w.end(), e.begin(), e.end());
  }
  w[1] = uint16_t(2 * w.size());
  return w;
}

std::string write_file(const std::string& name, const std::vector<Words>& examples,
                       std::vector<int32_t> header = {}) {
  const std::string p = (fs::path(::testing::TempDir()) / name).string();
  if (header.empty()) {
    int32_t longest = 0;
    for (const auto& e : examples) longest = std::max<int32_t>(longest, e[1]);
    header = {kChoiceFileMagic, kChoiceFileVersion, int32_t(examples.size()), longest};
  }
  header.resize(256, 0);
  std::ofstream f(p, std::ios::binary);
  f.write(reinterpret_cast<const char*>(header.data()), 1024);
  for (const auto& e : examples)
    f.write(reinterpret_cast<const char*>(e.data()), std::streamsize(2 * e.size()));
  return p;
}

std::string error_of(const std::string& path, int vocab = 1000) {
  try {
    read_choice_file(path, vocab, "eval.choices");
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

const Words kCtx = {5, 6, 7};
const std::vector<Words> kEnds = {{1}, {2, 3}, {4, 4, 4}, {9}};

TEST(ChoiceFile, ReadsWhatWasWritten) {
  const std::string p =
      write_file("good.bin", {example(0, 2, kCtx, kEnds), example(1, 0, {8}, {{1, 2}, {3}})});
  const auto ex = read_choice_file(p, 10, "eval.choices");
  ASSERT_EQ(ex.size(), 2u);
  EXPECT_EQ(ex[0].index, 0);
  EXPECT_EQ(ex[0].label, 2);
  EXPECT_EQ(ex[0].context, (std::vector<int32_t>{5, 6, 7}));
  ASSERT_EQ(ex[0].endings.size(), 4u);
  EXPECT_EQ(ex[0].endings[2], (std::vector<int32_t>{4, 4, 4}));
  EXPECT_EQ(ex[1].index, 1);
  EXPECT_EQ(ex[1].endings[0], (std::vector<int32_t>{1, 2}));
}

TEST(ChoiceFile, RefusesMalformedFiles) {
  const Words good = example(0, 1, kCtx, kEnds);
  struct Case {
    std::string name;
    std::vector<Words> examples;
    std::vector<int32_t> header;
    std::string needle;
  };
  Words bad_start = good, bad_size = good, big_label = good, one_end = example(0, 0, kCtx, {{1}});
  bad_start[0] = 7;
  bad_size[1] = uint16_t(good[1] + 2);
  big_label[3] = 4;
  Words empty_end = example(0, 0, kCtx, {{1}, {}});
  const std::vector<Case> cases = {
      {"magic.bin", {good}, {20240520, 1, 1, good[1]}, "wrong magic number 20240520"},
      {"version.bin", {good}, {kChoiceFileMagic, 2, 1, good[1]}, "unsupported version 2"},
      {"count.bin", {good}, {kChoiceFileMagic, 1, 2, good[1]}, "2 examples, which do not fit"},
      {"cut.bin",
       {good, Words(good.begin(), good.begin() + 5)},
       {kChoiceFileMagic, 1, 2, good[1]},
       "example 1 (of 2): the file ends"},
      {"trailing.bin", {good, {65535}}, {kChoiceFileMagic, 1, 1, good[1]}, "2 bytes after"},
      {"longest.bin", {good}, {kChoiceFileMagic, 1, 1, 4}, "exceeds the header's longest"},
      {"start.bin", {bad_start}, {}, "no start marker"},
      {"size.bin", {bad_size}, {}, "does not fit the file"},
      {"label.bin", {big_label}, {}, "label 4 but 4 endings"},
      {"one.bin", {one_end}, {}, "1 endings (need at least 2)"},
      {"empty.bin", {empty_end}, {}, "empty ending"},
  };
  for (const auto& c : cases) {
    const std::string e = error_of(write_file(c.name, c.examples, c.header));
    EXPECT_NE(e.find("eval.choices"), std::string::npos) << c.name << ": " << e;
    EXPECT_NE(e.find(c.name), std::string::npos) << c.name << ": " << e;
    EXPECT_NE(e.find(c.needle), std::string::npos) << c.name << ": " << e;
  }
  // A file of 4 GiB past its one example (sparse: no disk taken): it was read whole, and the run
  // ended "out of memory"; only what the header's examples can take is read.
  const std::string huge = write_file("huge.bin", {good});
  std::filesystem::resize_file(huge, std::uintmax_t(4) << 30);
  EXPECT_NE(error_of(huge).find(std::to_string((std::uint64_t(4) << 30) - 1024 - 2 * good.size()) +
                                " bytes after the last of the header's 1 examples"),
            std::string::npos);
  std::filesystem::remove(huge);
  EXPECT_NE(error_of(write_file("vocab.bin", {good}), 8)
                .find("token 9 in its ending is outside the vocabulary (vocab_size 8)"),
            std::string::npos);
  EXPECT_NE(error_of((fs::path(::testing::TempDir()) / "absent.bin").string()).find("cannot read"),
            std::string::npos);
}

TEST(ChoiceFile, AnEndingMustLeaveRoomForContext) {
  const auto ex = read_choice_file(write_file("fit.bin", {example(0, 1, kCtx, kEnds)}), 10, "x");
  EXPECT_NO_THROW(check_choices_fit(ex, 4, "eval.choices f"));
  try {
    check_choices_fit(ex, 3, "eval.choices f");
    FAIL() << "an ending of 3 tokens fits no context in 3 positions";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("example 0 has an ending of 3 tokens"), std::string::npos)
        << e.what();
  }
}

TEST(ChoiceChars, CountsTheCharactersOfEachEndingWithoutItsLeadingSpace) {
  // lm-eval-harness's acc_norm length is Python's len() of the ending without the space that
  // separates it from the context: code points, not bytes.
  const Tokenizer gpt2 = Tokenizer::from_file(TRIAD_SOURCE_DIR "/data/vocab/gpt2.tiktoken");
  ChoiceExample ex;
  ex.context = gpt2.encode("The cat");
  for (const char* e : {" café", " naïve — yes", "x", " ", "  two"})
    ex.endings.push_back(gpt2.encode(e));
  std::vector<ChoiceExample> all = {ex, ex};
  ASSERT_TRUE(count_ending_chars(all, gpt2));
  for (const auto& e : all) EXPECT_EQ(e.ending_chars, (std::vector<int64_t>{4, 11, 1, 1, 4}));
  // A tokenizer without the file's ids (the first 300 of GPT-2's ranks) sets nothing.
  const std::string small = (fs::path(::testing::TempDir()) / "small.tiktoken").string();
  {
    std::ifstream in(TRIAD_SOURCE_DIR "/data/vocab/gpt2.tiktoken");
    std::ofstream out(small);
    std::string line;
    for (int i = 0; i < 300 && std::getline(in, line); ++i) out << line << '\n';
  }
  std::vector<ChoiceExample> fresh = {ex};
  EXPECT_FALSE(count_ending_chars(fresh, Tokenizer::from_file(small, 0)));
  EXPECT_TRUE(fresh[0].ending_chars.empty());
}

}  // namespace
}  // namespace triad
