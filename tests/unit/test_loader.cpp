// The data order of DESIGN.md §4 and the checks on token shards.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <numeric>
#include <random>
#include <set>
#include <span>

#include "triad/core/error.h"
#include "triad/data/blend.h"
#include "triad/data/fim.h"
#include "triad/data/loader.h"
#include "triad/data/token_shard.h"
#include "triad/data/tokenizer.h"

namespace triad {
namespace {

namespace fs = std::filesystem;

class LoaderTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ =
        fs::path(::testing::TempDir()) /
        ("loader_" + std::string(::testing::UnitTest::GetInstance()->current_test_info()->name()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  std::string shard(const std::string& name, std::vector<uint16_t> tokens) {
    const std::string p = (dir_ / name).string();
    write_token_shard(p, tokens);
    return p;
  }
  std::string error_of(const std::string& glob, int T = 4, int V = 1000) {
    try {
      SequenceSource s(glob, "data.train", T, V);
      std::vector<int32_t> in(static_cast<size_t>(T)), tg(static_cast<size_t>(T));
      for (int64_t i = 0; i < s.num_sequences(); ++i) s.read(i, in.data(), tg.data());
    } catch (const Error& e) {
      return e.what();
    }
    return "";
  }
  fs::path dir_;
};

std::vector<uint16_t> iota(int n, int start) {
  std::vector<uint16_t> v(static_cast<size_t>(n));
  std::iota(v.begin(), v.end(), uint16_t(start));
  return v;
}

TEST_F(LoaderTest, SequencesFollowTheContract) {
  // Shard b (10 tokens) sorts before c (14 tokens) whatever the creation order.
  shard("c.bin", iota(14, 100));
  shard("b.bin", iota(10, 0));
  SequenceSource src((dir_ / "*.bin").string(), "data.train", 4, 1000);
  // floor((10-1)/4) = 2 and floor((14-1)/4) = 3 sequences.
  ASSERT_EQ(src.num_sequences(), 5);
  std::vector<int32_t> in(4), tg(4);
  src.read(1, in.data(), tg.data());  // shard b, sequence 1: tokens [4, 8]
  EXPECT_EQ(in, (std::vector<int32_t>{4, 5, 6, 7}));
  EXPECT_EQ(tg, (std::vector<int32_t>{5, 6, 7, 8}));
  src.read(4, in.data(), tg.data());  // shard c, sequence 2: tokens [8, 12]
  EXPECT_EQ(in, (std::vector<int32_t>{108, 109, 110, 111}));
  EXPECT_EQ(tg, (std::vector<int32_t>{109, 110, 111, 112}));
}

TEST_F(LoaderTest, PositionsWrapToTheNextEpoch) {
  shard("a.bin", iota(21, 0));  // 5 sequences of 4
  SequenceSource src((dir_ / "*.bin").string(), "data.train", 4, 1000);
  DataLoader plain(src, false, 1);
  EXPECT_EQ(plain.sequence_at(3), 3);
  EXPECT_EQ(plain.sequence_at(5), 0);
  EXPECT_EQ(plain.sequence_at(12), 2);
  DataLoader shuffled(src, true, 7), again(src, true, 7), other(src, true, 8);
  std::set<int64_t> epoch0, epoch1;
  bool differs = false, differs_seed = false;
  for (int p = 0; p < 5; ++p) {
    epoch0.insert(shuffled.sequence_at(p));
    epoch1.insert(shuffled.sequence_at(p + 5));
    differs |= shuffled.sequence_at(p) != shuffled.sequence_at(p + 5);
    differs_seed |= shuffled.sequence_at(p) != other.sequence_at(p);
    EXPECT_EQ(shuffled.sequence_at(p + 5), again.sequence_at(p + 5));  // seeded
  }
  EXPECT_EQ(epoch0.size(), 5u);  // a permutation
  EXPECT_EQ(epoch1.size(), 5u);
  EXPECT_TRUE(differs);
  EXPECT_TRUE(differs_seed);
}

// FIM between characters counts a batch's targets by reading its windows (their text encoded
// anew), and the loader keeps them for fill(): what fill() gives after counting, for the
// counted sequences, a part of them and others, is what a loader that never counted reads; the
// count is the targets that count there (the padding left out), across epochs of a shuffle.
TEST_F(LoaderTest, CountedWindowsAreTheOnesFilled) {
  const std::string vocab = TRIAD_SOURCE_DIR "/data/vocab/gpt2.tiktoken";
  if (!fs::exists(vocab)) GTEST_SKIP() << "missing " << vocab << " (jobs/setup.sh)";
  const Tokenizer tok = Tokenizer::from_file(vocab);
  std::vector<uint16_t> tokens;  // letters a byte each: windows encoded anew come out short
  for (int i = 0; i < 40 * 17 + 1; ++i)
    tokens.push_back(uint16_t(tok.encode(std::string(1, "abcdef gh"[i * 7 % 9]))[0]));
  const int T = 16;
  SequenceSource src(shard("fim_000.bin", tokens), "data.train", T, 50304);
  FimSpec f{1.0, 0.5, 50300, 50301, 50302, -1, 3};
  f.characters = true;
  f.pad = 50303;
  f.tokenizer = &tok;
  src.set_fim(f);
  ASSERT_TRUE(src.counting_encodes());
  DataLoader counting(src, true, 5), plain(src, true, 5);
  const size_t n = 8 * size_t(T);
  for (int64_t position : {0, 8, 36, 44}) {  // 40 sequences an epoch: 36 and 44 span two
    int64_t want = 0;
    std::vector<int32_t> in(n), tg(n), in2(n), tg2(n);
    plain.fill(position, 8, in2.data(), tg2.data());
    for (int32_t t : tg2) want += t != kMaskedTarget ? 1 : 0;
    EXPECT_LT(want, int64_t(n)) << "some window padded";
    EXPECT_EQ(counting.counted_targets(position, 8), want) << position;
    counting.fill(position, 8, in.data(), tg.data());
    EXPECT_EQ(in, in2) << position;
    EXPECT_EQ(tg, tg2) << position;
    counting.fill(position + 4, 8, in.data(), tg.data());  // half counted, half not
    plain.fill(position + 4, 8, in2.data(), tg2.data());
    EXPECT_EQ(in, in2) << position;
    EXPECT_EQ(tg, tg2) << position;
  }
  // As training reads: through the blend (one sequence a call), a step counted then filled.
  BlendedLoader blend({{dir_.string() + "/fim_*.bin"}, {1.0}}, T, 50304, true, 5, LossMask::none,
                      -1, f);
  ASSERT_TRUE(blend.counting_encodes());
  std::vector<int32_t> in(n), tg(n), in2(n), tg2(n);
  for (int64_t position : {0, 8, 36}) {
    blend.counted_targets(position, 8);
    EXPECT_EQ(blend.kept_sequences(), 8u) << position;
    blend.fill(position, 8, in.data(), tg.data());
    EXPECT_EQ(blend.kept_sequences(), 0u) << position;  // each read once
    plain.fill(position, 8, in2.data(), tg2.data());
    EXPECT_EQ(in, in2) << position;
    EXPECT_EQ(tg, tg2) << position;
  }
}

TEST_F(LoaderTest, BadShardsAreRefusedWithTheirName) {
  const std::string bad_magic = shard("m.bin", iota(20, 0));
  {
    std::fstream f(bad_magic, std::ios::in | std::ios::out | std::ios::binary);
    const int32_t wrong = 12345;
    f.write(reinterpret_cast<const char*>(&wrong), 4);
  }
  std::string e = error_of(bad_magic);
  EXPECT_NE(e.find("m.bin"), std::string::npos) << e;
  EXPECT_NE(e.find("magic"), std::string::npos) << e;

  const std::string truncated = shard("t.bin", iota(20, 0));
  fs::resize_file(truncated, fs::file_size(truncated) - 6);
  e = error_of(truncated);
  EXPECT_NE(e.find("t.bin"), std::string::npos) << e;
  EXPECT_NE(e.find("truncated"), std::string::npos) << e;

  const std::string tiny = (dir_ / "tiny.bin").string();
  std::ofstream(tiny) << "abc";
  e = error_of(tiny);
  EXPECT_NE(e.find("header"), std::string::npos) << e;

  const std::string big_ids = shard("v.bin", {1, 2, 3, 999, 1000, 5, 6, 7, 8});
  e = error_of(big_ids, 4, 1000);
  EXPECT_NE(e.find("v.bin"), std::string::npos) << e;
  EXPECT_NE(e.find("1000"), std::string::npos) << e;
  EXPECT_NE(e.find("vocab_size"), std::string::npos) << e;
}

// Loss masks beside shards: a target whose mask byte is 0 comes out as kMaskedTarget, the
// count of counted targets follows the mask, a shard without one counts all (auto), and
// data.loss_mask = none reads no mask.
TEST_F(LoaderTest, LossMasksMarkTargetsThatDoNotCount) {
  const std::string a = shard("a.bin", iota(9, 10));  // 2 sequences of 4
  shard("b.bin", iota(5, 50));                        // 1 sequence, no mask
  const std::vector<uint8_t> mask = {1, 0, 0, 1, 1, 0, 1, 1, 0};
  write_loss_mask(loss_mask_path(a), mask);
  EXPECT_EQ(read_loss_mask(loss_mask_path(a)), mask);
  {  // the header
    std::ifstream f(loss_mask_path(a), std::ios::binary);
    int32_t head[3];
    f.read(reinterpret_cast<char*>(head), sizeof head);
    EXPECT_EQ(head[0], 20261130);
    EXPECT_EQ(head[1], 1);
    EXPECT_EQ(head[2], 9);
  }
  EXPECT_EQ(fs::file_size(loss_mask_path(a)), 1024u + 9u);
  const std::string glob = (dir_ / "*.bin").string();  // the .mask files do not match it
  SequenceSource src(glob, "data.train", 4, 1000, LossMask::auto_);
  ASSERT_EQ(src.num_sequences(), 3);
  EXPECT_EQ(src.masked_shards(), 1);
  std::vector<int32_t> in(4), tg(4);
  src.read(0, in.data(), tg.data());  // tokens 10..14; targets are tokens 1..4 of the shard
  EXPECT_EQ(in, (std::vector<int32_t>{10, 11, 12, 13}));
  EXPECT_EQ(tg, (std::vector<int32_t>{kMaskedTarget, kMaskedTarget, 13, 14}));
  EXPECT_EQ(src.counted_targets(0), 2);
  src.read(1, in.data(), tg.data());  // tokens 14..18; targets 5..8
  EXPECT_EQ(tg, (std::vector<int32_t>{kMaskedTarget, 16, 17, kMaskedTarget}));
  EXPECT_EQ(src.counted_targets(1), 2);
  src.read(2, in.data(), tg.data());  // b.bin: no mask, every target counts
  EXPECT_EQ(tg, (std::vector<int32_t>{51, 52, 53, 54}));
  EXPECT_EQ(src.counted_targets(2), 4);
  DataLoader loader(src, false, 1);
  EXPECT_EQ(loader.counted_targets(0, 3), 8);
  EXPECT_EQ(loader.counted_targets(2, 2), 4 + 2);  // wraps to sequence 0

  SequenceSource plain(glob, "data.train", 4, 1000, LossMask::none);
  EXPECT_EQ(plain.masked_shards(), 0);
  plain.read(0, in.data(), tg.data());
  EXPECT_EQ(tg, (std::vector<int32_t>{11, 12, 13, 14}));
}

TEST_F(LoaderTest, BadLossMasksAreRefusedWithTheirName) {
  const std::string a = shard("a.bin", iota(9, 10));
  const std::string glob = (dir_ / "*.bin").string();
  auto error = [&](LossMask m) {
    try {
      SequenceSource s(glob, "data.train", 4, 1000, m);
      std::vector<int32_t> in(4), tg(4);
      for (int64_t i = 0; i < s.num_sequences(); ++i) s.read(i, in.data(), tg.data());
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  std::string e = error(LossMask::require);  // none beside the shard
  EXPECT_NE(e.find("a.bin.mask"), std::string::npos) << e;
  EXPECT_NE(e.find("missing"), std::string::npos) << e;
  EXPECT_EQ(error(LossMask::auto_), "");

  write_loss_mask(loss_mask_path(a), std::vector<uint8_t>(8, 1));  // another shard's
  e = error(LossMask::auto_);
  EXPECT_NE(e.find("8 values for the 9 tokens"), std::string::npos) << e;
  EXPECT_EQ(error(LossMask::none), "");

  write_token_shard(loss_mask_path(a), iota(9, 0));  // a token shard, not a mask
  e = error(LossMask::auto_);
  EXPECT_NE(e.find("wrong magic number 20240520"), std::string::npos) << e;

  std::vector<uint8_t> two(9, 1);
  write_loss_mask(loss_mask_path(a), two);
  {  // a value of 2, written past the writer's check
    std::fstream f(loss_mask_path(a), std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(1024 + 6);
    const char v = 2;
    f.write(&v, 1);
  }
  e = error(LossMask::auto_);
  EXPECT_NE(e.find("a.bin.mask: value 2 at position 6"), std::string::npos) << e;
  EXPECT_THROW(write_loss_mask(loss_mask_path(a), std::vector<uint8_t>{0, 3}), Error);
  EXPECT_THROW(parse_loss_mask("yes"), Error);
}

// llm.c's uint32 shards (magic 20240801, version 7, as its Llama 3 data scripts write them) for
// vocabularies above 65536, read beside GPT-2's uint16 ones in one glob, each by its header.
TEST_F(LoaderTest, Uint32ShardsHoldIdsAbove65535) {
  shard("a.bin", iota(9, 40));  // uint16: 2 sequences of 4
  const std::vector<uint32_t> wide = {70000, 65535, 65536, 131071, 5, 99999, 7, 100000, 1};
  const std::string b = (dir_ / "b.bin").string();
  write_token_shard(b, std::span<const uint32_t>(wide));
  const ShardHeader h = read_token_shard_header(b);
  EXPECT_EQ(h.count, 9);
  EXPECT_EQ(h.token_bytes, 4);
  EXPECT_EQ(fs::file_size(b), 1024u + 4u * 9u);
  {  // the header, as llm.c writes it
    std::ifstream f(b, std::ios::binary);
    int32_t head[3];
    f.read(reinterpret_cast<char*>(head), sizeof head);
    EXPECT_EQ(head[0], 20240801);
    EXPECT_EQ(head[1], 7);
    EXPECT_EQ(head[2], 9);
  }
  EXPECT_EQ(read_token_shard(b), wide);
  SequenceSource src((dir_ / "*.bin").string(), "data.train", 4, 131072);
  ASSERT_EQ(src.num_sequences(), 4);
  std::vector<int32_t> in(4), tg(4);
  src.read(1, in.data(), tg.data());
  EXPECT_EQ(in, (std::vector<int32_t>{44, 45, 46, 47}));
  src.read(2, in.data(), tg.data());
  EXPECT_EQ(in, (std::vector<int32_t>{70000, 65535, 65536, 131071}));
  EXPECT_EQ(tg, (std::vector<int32_t>{65535, 65536, 131071, 5}));
  src.read(3, in.data(), tg.data());
  EXPECT_EQ(tg, (std::vector<int32_t>{99999, 7, 100000, 1}));
  // An id at or above the vocabulary is refused, naming the shard; a magic with the other
  // format's version, and a size that does not match 4-byte tokens, are refused too.
  std::string e = error_of(b, 4, 100000);
  EXPECT_NE(e.find("b.bin"), std::string::npos) << e;
  EXPECT_NE(e.find("token id 131071"), std::string::npos) << e;
  {
    std::fstream f(b, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(4);
    const int32_t v1 = 1;
    f.write(reinterpret_cast<const char*>(&v1), 4);
  }
  e = error_of(b, 4, 200000);
  EXPECT_NE(e.find("unsupported version 1"), std::string::npos) << e;
  EXPECT_NE(e.find("version 7"), std::string::npos) << e;
  write_token_shard(b, std::span<const uint32_t>(wide));
  fs::resize_file(b, fs::file_size(b) - 2);
  e = error_of(b, 4, 200000);
  EXPECT_NE(e.find("truncated"), std::string::npos) << e;
}

TEST_F(LoaderTest, MissingEmptyAndTooShortDataAreRefused) {
  std::string e = error_of((dir_ / "nothing_*.bin").string());
  EXPECT_NE(e.find("matches no files"), std::string::npos) << e;
  e = error_of("");
  EXPECT_NE(e.find("data.train"), std::string::npos) << e;
  shard("empty.bin", {});
  e = error_of((dir_ / "empty.bin").string());
  EXPECT_NE(e.find("no complete sequence"), std::string::npos) << e;
  shard("short.bin", iota(4, 0));  // 4 tokens: not enough for T=4 plus the shifted target
  e = error_of((dir_ / "short.bin").string());
  EXPECT_NE(e.find("no complete sequence"), std::string::npos) << e;
}

// Fill-in-the-middle's rearrangement (data/fim.h) on windows of distinct tokens 0 .. n-1 whose
// mask byte is their parity: the length stays, every token keeps its byte, each rearranged
// fragment holds each sentinel once in PSM's or SPM's order, separators stay in place.
TEST(FillInTheMiddle, RearrangesFragmentsKeepingTheirTokensAndMasks) {
  constexpr int32_t P = 1000, M = 1001, S = 1002;
  const int n = 40;
  auto window = [n](std::vector<int32_t>& t, std::vector<uint8_t>& c) {
    t.resize(n);
    c.resize(n);
    for (int i = 0; i < n; ++i) {
      t[size_t(i)] = i;
      c[size_t(i)] = uint8_t(i % 2);
    }
  };
  std::vector<int32_t> t;
  std::vector<uint8_t> c;
  FimSpec off;
  window(t, c);
  fill_in_the_middle(off, 3, t, c);
  for (int i = 0; i < n; ++i) EXPECT_EQ(t[size_t(i)], i);
  int psm = 0, spm = 0;
  for (int64_t k = 0; k < 200; ++k) {
    FimSpec f{1.0, 0.5, P, M, S, -1, 7};
    window(t, c);
    fill_in_the_middle(f, k, t, c);
    ASSERT_EQ(t.size(), size_t(n));
    ASSERT_EQ(t[0], P) << k;
    (t[1] == S ? spm : psm) += 1;
    std::set<int32_t> seen;
    size_t sentinels = 0;
    for (int i = 0; i < n; ++i) {
      const int32_t v = t[size_t(i)];
      if (v >= P) {
        EXPECT_EQ(c[size_t(i)], 1);  // the sentinels count
        ++sentinels;
        continue;
      }
      EXPECT_TRUE(v >= 0 && v < n && seen.insert(v).second) << k;
      EXPECT_EQ(c[size_t(i)], v % 2) << k;  // each token keeps its mask byte
    }
    // Three sentinels in, the last three places cut (a sentinel among them, where the middle or
    // the suffix is short).
    EXPECT_TRUE(sentinels >= 1 && sentinels <= 3) << k;
    EXPECT_EQ(seen.size() + sentinels, size_t(n)) << k;
    // The same index and seed give the same window (no state); another seed another one.
    std::vector<int32_t> again;
    std::vector<uint8_t> again_c;
    window(again, again_c);
    fill_in_the_middle(f, k, again, again_c);
    EXPECT_EQ(again, t);
  }
  EXPECT_GT(psm, 60);
  EXPECT_GT(spm, 60);
  // Fragments cut at token 10 and 25: those stay at their places where nothing before them
  // grew, and no fragment is rearranged at rate 0 + ε.
  FimSpec split{1e-300, 0.5, P, M, S, 10, 7};
  window(t, c);
  fill_in_the_middle(split, 5, t, c);
  for (int i = 0; i < n; ++i) EXPECT_EQ(t[size_t(i)], i);
  split.rate = 1.0;
  int sentinels = 0;
  window(t, c);
  fill_in_the_middle(split, 5, t, c);
  for (int i = 0; i < n; ++i) sentinels += t[size_t(i)] == P ? 1 : 0;
  EXPECT_EQ(sentinels, 2);  // both fragments rearranged (the second one's start is in reach)
  EXPECT_EQ(t[0], P);
  EXPECT_EQ(t[13], 10);  // 3 sentinels before the separator
}

// Fill-in-the-middle between characters (data.fim_granularity = character) with GPT-2's
// tokenizer on random windows of byte tokens (invalid UTF-8 among them), ordinary tokens,
// <|endoftext|> and ids past the tokenizer: the pieces' bytes are the window's, in PSM's or
// SPM's order (the last piece cut where the window ends), the tokens kept whole stay whole, a
// window that comes out short ends in padding that does not count, and one with a target not
// counted stays as it is.
TEST(FillInTheMiddle, ByCharactersKeepsTheBytesInTheirPiecesOrder) {
  const std::string vocab = TRIAD_SOURCE_DIR "/data/vocab/gpt2.tiktoken";
  if (!fs::exists(vocab)) GTEST_SKIP() << "missing " << vocab << " (jobs/setup.sh)";
  const Tokenizer tok = Tokenizer::from_file(vocab);
  constexpr int32_t P = 50300, M = 50301, S = 50302, PAD = 50303, EOT = 50256;
  const int n = 48;
  // Bytes of ids: a tokenizer id as it decodes, another one as "<#id>" (kept whole).
  auto render = [&tok](std::span<const int32_t> ids) {
    std::string out;
    for (int32_t id : ids)
      out += id < tok.vocab_size() ? tok.decode(std::span<const int32_t>(&id, 1))
                                   : "<#" + std::to_string(id) + ">";
    return out;
  };
  std::mt19937 rng(5);
  int psm = 0, spm = 0, padded = 0;
  for (int64_t k = 0; k < 300; ++k) {
    std::vector<int32_t> t(size_t(n) + 1);
    for (int32_t& id : t) {
      if (k % 3 == 0) {  // letters a byte each: encoded anew, far fewer tokens
        id = tok.encode(std::string(1, "abcdefgh "[rng() % 9]))[0];
        continue;
      }
      const uint32_t r = rng() % 100;
      id = r < 40   ? tok.encode(std::string(1, char(rng() % 256)))[0]  // one byte's token
           : r < 94 ? int32_t(rng() % 50256)
           : r < 97 ? EOT
                    : 50257 + int32_t(rng() % 40);  // past the tokenizer (not a sentinel)
    }
    std::vector<uint8_t> c(t.size(), 1);
    const std::string text = render(t);
    FimSpec f{1.0, 0.5, P, M, S, -1, 11};
    f.characters = true;
    f.pad = PAD;
    f.tokenizer = &tok;
    std::vector<int32_t> out = t;
    fill_in_the_middle(f, k, out, c);
    ASSERT_EQ(out.size(), t.size());
    ASSERT_EQ(out[0], P) << k;
    const auto at = [&out](int32_t id) {
      return size_t(std::find(out.begin(), out.end(), id) - out.begin());
    };
    size_t end = at(PAD);  // the padding, if any, ends the window
    for (size_t i = 0; i < out.size(); ++i) EXPECT_EQ(c[i], i < end ? 1 : 0) << k << " " << i;
    for (size_t i = end; i < out.size(); ++i) EXPECT_EQ(out[i], PAD) << k;
    padded += end < out.size() ? 1 : 0;
    const size_t s = at(S), m = at(M);
    ASSERT_LT(s, end) << k;
    const std::span<const int32_t> all(out.data(), end);
    if (m >= end) {  // the suffix ran past the window's end: the prefix alone is whole
      if (s > 1) {
        EXPECT_EQ(text.substr(0, render(all.subspan(1, s - 1)).size()),
                  render(all.subspan(1, s - 1)))
            << k;
      }
      continue;
    }
    ASSERT_LT(s, m) << k;
    std::string prefix, middle, suffix;
    if (s == 1) {  // SPM: P S suffix M prefix+middle
      ++spm;
      suffix = render(all.subspan(2, m - 2));
      middle = render(all.subspan(m + 1));  // the prefix, then the middle (its end cut)
    } else {                                // PSM: P prefix S suffix M middle
      ++psm;
      prefix = render(all.subspan(1, s - 1));
      suffix = render(all.subspan(s + 1, m - s - 1));
      middle = render(all.subspan(m + 1));
    }
    ASSERT_GE(text.size(), prefix.size() + middle.size() + suffix.size()) << k;
    EXPECT_EQ(text.substr(0, prefix.size()), prefix) << k;
    EXPECT_EQ(text.substr(text.size() - suffix.size()), suffix) << k;
    EXPECT_EQ(text.substr(prefix.size(), middle.size()), middle) << k;
    // Kept whole: each id past the tokenizer and <|endoftext|> of the prefix and suffix.
    for (int32_t id : all) {
      if (id != P && id != M && id != S && id >= EOT) {
        EXPECT_NE(std::find(t.begin(), t.end(), id), t.end()) << k;
      }
    }
  }
  EXPECT_GT(psm, 100);
  EXPECT_GT(spm, 100);
  EXPECT_GT(padded, 30);  // bytes merge into fewer tokens when encoded anew
  // Whole tokens inside a window whose text encoded anew takes fewer tokens (all of it in
  // reach): each once, as a token.
  {
    std::vector<int32_t> t = tok.encode("ab");
    t.push_back(EOT);
    t.push_back(50290);
    for (char ch : std::string("cd ef gh ab cd ef gh ab cd")) t.push_back(tok.encode({&ch, 1})[0]);
    std::vector<uint8_t> c(t.size(), 1);
    FimSpec f{1.0, 0.5, P, M, S, -1, 11};
    f.characters = true;
    f.pad = PAD;
    f.tokenizer = &tok;
    for (int64_t k = 0; k < 20; ++k) {
      std::vector<int32_t> out = t;
      std::vector<uint8_t> oc = c;
      fill_in_the_middle(f, k, out, oc);
      ASSERT_EQ(out.back(), PAD) << k;
      EXPECT_EQ(std::count(out.begin(), out.end(), EOT), 1) << k;
      EXPECT_EQ(std::count(out.begin(), out.end(), 50290), 1) << k;
    }
  }
  // A target not counted: the window stays as it is.
  std::vector<int32_t> t = tok.encode("def f(x):\n    return x + 1  # façade\n");
  t.resize(24, EOT);
  std::vector<uint8_t> c(t.size(), 1);
  c[7] = 0;
  std::vector<int32_t> out = t;
  FimSpec f{1.0, 0.5, P, M, S, -1, 11};
  f.characters = true;
  f.pad = PAD;
  f.tokenizer = &tok;
  fill_in_the_middle(f, 0, out, c);
  EXPECT_EQ(out, t);
}

}  // namespace
}  // namespace triad
