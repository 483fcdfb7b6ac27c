// Blended training datasets (data/blend.h): the weights' shares of a period, the order inside
// it, what each position reads, and the errors. The training run on a blend is compared with
// the PyTorch reference on the documented order in tests/python/test_reference_model.py.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <set>
#include <string>
#include <vector>

#include "triad/core/error.h"
#include "triad/data/blend.h"
#include "triad/data/token_shard.h"

namespace triad {
namespace {

namespace fs = std::filesystem;

class BlendTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ =
        fs::path(::testing::TempDir()) /
        ("blend_" + std::string(::testing::UnitTest::GetInstance()->current_test_info()->name()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  // A shard of n sequences of T = 4 tokens whose sequence k starts with token base + k.
  std::string dataset(const std::string& name, int n, uint16_t base) {
    std::vector<uint16_t> t;
    for (int k = 0; k < n; ++k)
      for (int i = 0; i < 4; ++i) t.push_back(uint16_t(i == 0 ? base + k : 999));
    t.push_back(999);
    write_token_shard((dir_ / (name + "_000.bin")).string(), t);
    return (dir_ / (name + "_*.bin")).string();
  }
  std::string error_of(const std::string& train, const std::string& weights) {
    try {
      BlendedLoader b(parse_blend(train, weights), 4, 1000, false, 1);
    } catch (const Error& e) {
      return e.what();
    }
    return "";
  }
  fs::path dir_;
};

TEST_F(BlendTest, SharesOfAPeriodAndTheOrderInsideIt) {
  const std::string a = dataset("a", 7, 0), b = dataset("b", 3, 100), c = dataset("c", 5, 200);
  BlendedLoader l(parse_blend(a + ", " + b + "," + c, "1, 1, 1"), 4, 1000, false, 1);
  EXPECT_EQ(l.num_sequences(), 15);
  // 10000 / 3: the one left over goes to the first of the equal remainders.
  EXPECT_EQ(l.per_period(0), 3334);
  EXPECT_EQ(l.per_period(1), 3333);
  EXPECT_EQ(l.per_period(2), 3333);
  // Every prefix of the period is within one position of each dataset's share, and each
  // dataset's sample numbers run 0, 1, 2, ... in order (also into the next period).
  std::vector<int64_t> next(3, 0);
  for (int64_t p = 0; p < 2 * BlendedLoader::kPeriod + 50; ++p) {
    const auto at = l.locate(p);
    ASSERT_EQ(at.sample, next[size_t(at.dataset)]++) << "position " << p;
    const int64_t q = p % BlendedLoader::kPeriod + 1;
    for (int d = 0; d < 3; ++d) {
      const double share = double(l.per_period(d)) * double(q) / double(BlendedLoader::kPeriod);
      const int64_t seen = next[size_t(d)] - (p / BlendedLoader::kPeriod) * l.per_period(d);
      ASSERT_LT(std::abs(double(seen) - share), 1.0) << "dataset " << d << " at position " << p;
    }
  }
  // 7 : 3 exactly, starting with the larger; what a position reads is its dataset's sequence.
  BlendedLoader w(parse_blend(a + "," + b, "0.7,0.3"), 4, 1000, false, 1);
  EXPECT_EQ(w.per_period(0), 7000);
  EXPECT_EQ(w.per_period(1), 3000);
  std::vector<int32_t> in(4 * 10), tg(4 * 10);
  w.fill(0, 10, in.data(), tg.data());
  std::vector<int32_t> first;
  for (int i = 0; i < 10; ++i) first.push_back(in[size_t(i) * 4]);
  // Lags (N_d·(q+1) − c_d·P) worked out by hand: a 7000 b 3000 -> a; a 4000 b 6000 -> b;
  // a 11000 b −1000 -> a; a 8000 b 2000 -> a; a 5000 b 5000 (tie) -> a; a 2000 b 8000 -> b;
  // a 9000 b 1000 -> a; a 6000 b 4000 -> a; a 3000 b 7000 -> b; a 10000 b 0 -> a.
  EXPECT_EQ(first, (std::vector<int32_t>{0, 100, 1, 2, 3, 101, 4, 5, 102, 6}));
}

TEST_F(BlendTest, OneDatasetIsThePlainOrderAndShufflingStaysPerDataset) {
  const std::string a = dataset("a", 9, 0), b = dataset("b", 4, 100);
  BlendedLoader one(parse_blend(a, ""), 4, 1000, true, 7);
  DataLoader plain(one.source(0), true, 7);
  std::vector<int32_t> x(4), y(4), u(4), v(4);
  for (int64_t p = 0; p < 40; ++p) {
    EXPECT_EQ(one.locate(p).sample, p);
    one.fill(p, 1, x.data(), y.data());
    plain.fill(p, 1, u.data(), v.data());
    ASSERT_EQ(x, u) << "position " << p;
  }
  // Shuffled blend: each dataset's first epoch is a permutation of its sequences.
  BlendedLoader s(parse_blend(a + "," + b, "1,1"), 4, 1000, true, 7);
  std::set<int32_t> seen_a, seen_b;
  for (int64_t p = 0; p < 8; ++p) {
    s.fill(p, 1, x.data(), y.data());
    (x[0] < 100 ? seen_a : seen_b).insert(x[0]);
  }
  EXPECT_EQ(seen_a.size(), 4u);  // 4 distinct of a's 9 (a permutation has no repeats)
  EXPECT_EQ(seen_b, (std::set<int32_t>{100, 101, 102, 103}));
}

TEST_F(BlendTest, BadBlendsAreRefused) {
  const std::string a = dataset("a", 3, 0), b = dataset("b", 3, 100);
  EXPECT_NE(error_of(a + "," + b, "1").find("data.train_weights has 1 weight(s) but data.train 2"),
            std::string::npos);
  EXPECT_NE(error_of(a + "," + b, "1, -2").find("'-2' (weight 2) must be a finite number > 0"),
            std::string::npos);
  EXPECT_NE(error_of(a + "," + b, "1, x").find("'x' (weight 2)"), std::string::npos);
  EXPECT_NE(error_of(a + ",", "1, 1").find("glob 2 of 2 is empty"), std::string::npos);
  EXPECT_NE(error_of(a + "," + b, "1, 0.00001").find("below 1/10000 of their sum"),
            std::string::npos);
  const std::string missing = (dir_ / "none_*.bin").string();
  EXPECT_NE(error_of(a + "," + missing, "1, 1").find("data.train (" + missing + ")"),
            std::string::npos);
  EXPECT_EQ(error_of(a + "," + b, "3,1"), "");
}

}  // namespace
}  // namespace triad
