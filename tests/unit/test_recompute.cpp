// Activation recomputation (Recompute in model/gpt.h) on the CPU backend:
//  - every mode gives bit for bit the loss, the gradients (accumulated over two micro-batches),
//    the evaluation and the logits of the model that keeps everything, in fp32 and bf16;
//  - also when only the first layers of a chunk recompute (the others keep everything);
//  - what it saves is exactly the buffers it stops keeping: recomputing in k layers, gelu saves
//    k − 1 GELU outputs, full k − 1 layers' internals (counted here from the layer's tensors);
//  - Gpt::memory_plan equals what the model allocates in every mode;
//  - the extra FLOPs of full recomputation are its layers' forward matmuls up to c_fc.
#include <gtest/gtest.h>

#include <cstring>
#include <vector>

#include "triad/core/error.h"
#include "triad/kernels/backend.h"
#include "triad/model/gpt.h"

namespace triad {
namespace {

// 3 layers, 4 heads of 16, seq 32, micro-batch 2: every buffer a multiple of 64 bytes, so
// the plan's alignment adds nothing and the savings are the plain tensor sizes.
const GptShape kShape{3, 4, 64, 32, 200, 256};
constexpr int kB = 2;

struct Result {
  std::vector<double> loss;
  std::vector<float> grads;
  double eval_loss = 0;
  int64_t eval_correct = 0;
  std::vector<float> logits;
  size_t activation_bytes = 0;
};

Result run(Backend& be, Precision precision, Recomputation recompute) {
  Gpt m(kShape, kB, be, 1, {}, nullptr, precision, recompute);
  m.init(11);
  m.zero_grads();
  const int N = kB * kShape.seq_len;
  Result r;
  for (int mb = 0; mb < 2; ++mb) {  // two micro-batches accumulate into the gradients
    std::vector<int32_t> in(static_cast<size_t>(N)), tg(static_cast<size_t>(N));
    for (int i = 0; i < N; ++i) {
      in[size_t(i)] = (i * 37 + 11 + 5 * mb) % kShape.vocab_size;
      tg[size_t(i)] = (i * 53 + 5 + 7 * mb) % kShape.vocab_size;
    }
    r.loss.push_back(m.forward_backward(in.data(), tg.data(), kB, 1.0f / float(2 * N)).loss_sum);
    if (mb == 1) {
      const ForwardStats e = m.evaluate(in.data(), tg.data(), kB);
      r.eval_loss = e.loss_sum;
      r.eval_correct = e.correct;
      const float* l = m.next_token_logits(in.data(), 20);
      r.logits.assign(l, l + kShape.vocab_size);
    }
  }
  r.grads.assign(m.grads(), m.grads() + m.buffer_floats());
  r.activation_bytes = m.activation_bytes();
  EXPECT_EQ(Gpt::memory_plan(kShape, kB, 1, {}, nullptr, precision, recompute).activations,
            r.activation_bytes)
      << precision_name(precision) << " recompute " << recompute.describe(kShape.n_layer);
  return r;
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

class RecomputeModes : public ::testing::TestWithParam<Precision> {};

TEST_P(RecomputeModes, GivesTheSameBitsAndSavesExactlyWhatItDropsKeeping) {
  auto be = make_cpu_backend();
  const Precision p = GetParam();
  const Result keep = run(*be, p, Recompute::none);
  // Every layer, and the first 1 or 2 of the 3 (the others keep everything).
  for (Recomputation r : {Recomputation(Recompute::gelu), Recomputation(Recompute::full),
                          Recomputation(Recompute::gelu, 2), Recomputation(Recompute::full, 1),
                          Recomputation(Recompute::full, 2)}) {
    const Result got = run(*be, p, r);
    const std::string what = r.describe(kShape.n_layer);
    EXPECT_EQ(got.loss, keep.loss) << what;
    EXPECT_TRUE(same_bits(got.grads, keep.grads)) << what << ": gradients differ";
    EXPECT_EQ(got.eval_loss, keep.eval_loss) << what;
    EXPECT_EQ(got.eval_correct, keep.eval_correct) << what;
    EXPECT_TRUE(same_bits(got.logits, keep.logits)) << what << ": logits differ";
  }
  // What a layer keeps without recomputation, counted from DESIGN.md's layer: activations of
  // type A (ln_1, qkv, attention output, x + attn, ln_2, c_fc output and its GELU) and fp32
  // (two LayerNorms' mean and rstd; the attention's probabilities [B,NH,T,T] in fp32, its
  // log-sum-exp [B,NH,T] in bf16).
  const size_t a = p == Precision::bf16 ? 2 : 4;
  const size_t BT = size_t(kB) * kShape.seq_len, C = size_t(kShape.n_embd);
  const size_t att = size_t(kB) * kShape.n_head * kShape.seq_len *
                     (p == Precision::bf16 ? 1 : size_t(kShape.seq_len));
  const size_t gelu_out = BT * 4 * C * a;
  const size_t internals = (C + 3 * C + C + C + C + 4 * C + 4 * C) * BT * a + (4 * BT + att) * 4;
  // Recomputing k layers saves k − 1 layers' buffers: one shared scratch replaces them all.
  for (int k : {1, 2, 3}) {
    const int layers = k == kShape.n_layer ? 0 : k;
    EXPECT_EQ(keep.activation_bytes - run(*be, p, {Recompute::gelu, layers}).activation_bytes,
              size_t(k - 1) * gelu_out)
        << k;
    EXPECT_EQ(keep.activation_bytes - run(*be, p, {Recompute::full, layers}).activation_bytes,
              size_t(k - 1) * internals)
        << k;
  }
}

INSTANTIATE_TEST_SUITE_P(Precisions, RecomputeModes,
                         ::testing::Values(Precision::fp32, Precision::bf16),
                         [](const auto& info) { return std::string(precision_name(info.param)); });

// Full recomputation reruns c_attn, attn.c_proj and c_fc (2 FLOPs per weight and token) and the
// attention forward (a third of its 6·C·T) of every layer a rank holds; the others add none.
TEST(Recomputation, FullAddsTheLayersForwardUpToTheMlpsHiddenActivation) {
  const GptShape gpt2{12, 12, 768, 1024, 50257, 50304};
  const double C = 768, T = 1024;
  const double per_layer = 2 * (3 * C * C + C * C + 4 * C * C) + 2 * C * T;
  EXPECT_DOUBLE_EQ(Gpt::recompute_flops_per_token(gpt2, {}, Recompute::full), 12 * per_layer);
  ModelParallel mp;
  mp.tp = 2;
  mp.pp = 3;
  mp.virtual_stages = 2;  // 12 layers in 6 chunks: 2 chunks of 2 layers per rank
  EXPECT_DOUBLE_EQ(Gpt::recompute_flops_per_token(gpt2, mp, Recompute::full), 4 * per_layer / 2);
  EXPECT_DOUBLE_EQ(Gpt::recompute_flops_per_token(gpt2, {}, {Recompute::full, 5}), 5 * per_layer);
  EXPECT_DOUBLE_EQ(Gpt::recompute_flops_per_token(gpt2, mp, {Recompute::full, 1}),
                   2 * per_layer / 2)
      << "the first layer of each of the rank's 2 chunks";
  EXPECT_EQ(Gpt::recompute_flops_per_token(gpt2, {}, Recompute::gelu), 0.0);
  EXPECT_EQ(Gpt::recompute_flops_per_token(gpt2, {}, Recompute::none), 0.0);
}

TEST(Recomputation, NamesParseAndBadOnesAreRefused) {
  for (Recompute r : {Recompute::none, Recompute::gelu, Recompute::full})
    EXPECT_EQ(parse_recompute(recompute_name(r), "train.recompute"), r);
  try {
    parse_recompute("selective", "train.recompute");
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("train.recompute must be none, gelu or full"),
              std::string::npos)
        << e.what();
  }
}

}  // namespace
}  // namespace triad
