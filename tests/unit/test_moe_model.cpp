// A mixture of experts in the model (GptShape::moe) on the CPU backend, beyond the PyTorch
// comparison of tests/python/test_reference_model.py (the moe cases):
//  - recomputation (gelu, full, in some layers) gives the loss, the gradients accumulated over
//    two micro-batches, the evaluation and the logits bit for bit, in fp32 and bf16;
//  - Gpt::memory_plan equals what the model allocates: training in every recompute mode, and a
//    model for inference;
//  - generation with the key/value cache (decode_logits) gives next_token_logits' logits, on a
//    training model and on one for inference;
//  - bf16 follows fp32 within bf16's rounding;
//  - the parameter count, and the FLOPs per token counting k of E experts;
//  - a capacity recomputes the same bits; an expert-parallel rank allocates what the plan says.
// Variants: GPT-2's blocks; Llama's with shared experts; GPT-2's with dense layers among them.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "triad/kernels/backend.h"
#include "triad/model/gpt.h"

namespace triad {
namespace {

// swiglu: Llama's blocks with shared experts, gated (Qwen2-MoE's); mixed (GPT-2's): layers 0 and 1
// dense, 2 with experts (model.moe_first_dense = 1, model.moe_every = 2).
GptShape moe_shape(bool swiglu, bool mixed = false) {
  GptShape s{3, 4, 64, 32, 200, 256};
  if (mixed) {
    s.moe_first_dense = 1;
    s.moe_every = 2;
  }
  s.moe_experts = swiglu ? 5 : 4;
  s.moe_top_k = swiglu ? 3 : 2;
  s.moe_normalize = !swiglu;
  s.moe_shared_hidden = swiglu ? 32 : 0;  // shared experts beside the routed ones
  s.moe_shared_gate = swiglu;
  s.mlp_hidden = 64;
  s.swiglu = swiglu;
  s.rmsnorm = swiglu;
  s.rope = swiglu;
  return s;
}
constexpr int kB = 2;

struct Result {
  std::vector<double> loss;
  std::vector<float> grads, logits;
  double eval_loss = 0;
};

std::vector<int32_t> ids(int n, int a, int b, int vocab) {
  std::vector<int32_t> v(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) v[size_t(i)] = (i * a + b) % vocab;
  return v;
}

Result run(const GptShape& shape, Precision precision, Recomputation recompute) {
  auto be = make_cpu_backend();
  Result r;
  {
    Gpt m(shape, kB, *be, 1, {}, nullptr, precision, recompute);
    m.set_moe_aux_loss(0.05f);
    m.init(11);
    m.zero_grads();
    const int N = kB * shape.seq_len;
    for (int mb = 0; mb < 2; ++mb) {
      const auto in = ids(N, 37, 11 + 5 * mb, shape.vocab_size);
      const auto tg = ids(N, 53, 5 + 7 * mb, shape.vocab_size);
      r.loss.push_back(m.forward_backward(in.data(), tg.data(), kB, 1.0f / float(2 * N)).loss_sum);
      if (mb == 1) {
        r.eval_loss = m.evaluate(in.data(), tg.data(), kB).loss_sum;
        const float* l = m.next_token_logits(in.data(), 20);
        r.logits.assign(l, l + shape.vocab_size);
      }
    }
    r.grads.assign(m.grads(), m.grads() + m.buffer_floats());
    EXPECT_EQ(Gpt::memory_plan(shape, kB, 1, {}, nullptr, precision, recompute).total(),
              be->allocated_bytes())
        << recompute.describe(shape.n_layer);
    EXPECT_GT(m.take_moe_stats().count, 0);
  }
  return r;
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

class MoeModel : public ::testing::TestWithParam<std::tuple<Precision, int>> {};

// Variant 0: GPT-2's blocks, 1: Llama's with gated shared experts, 2: GPT-2's with dense layers.
GptShape variant(int v) { return moe_shape(v == 1, v == 2); }

TEST_P(MoeModel, RecomputationGivesTheSameBitsAndThePlanIsTheAllocation) {
  const auto [p, v] = GetParam();
  const GptShape shape = variant(v);
  const Result keep = run(shape, p, Recompute::none);
  for (const double l : keep.loss) EXPECT_TRUE(std::isfinite(l));
  for (Recomputation r : {Recomputation(Recompute::gelu), Recomputation(Recompute::full),
                          Recomputation(Recompute::full, 1), Recomputation(Recompute::gelu, 2)}) {
    const Result got = run(shape, p, r);
    const std::string what = r.describe(shape.n_layer);
    EXPECT_EQ(got.loss, keep.loss) << what;
    EXPECT_TRUE(same_bits(got.grads, keep.grads)) << what << ": gradients differ";
    EXPECT_EQ(got.eval_loss, keep.eval_loss) << what;
    EXPECT_TRUE(same_bits(got.logits, keep.logits)) << what << ": logits differ";
  }
}

TEST_P(MoeModel, DecodingWithTheCacheGivesTheFullForwardsLogits) {
  const auto [p, v] = GetParam();
  const GptShape shape = variant(v);
  const auto prompt = ids(24, 29, 3, shape.vocab_size);
  for (bool inference : {false, true}) {
    auto be = make_cpu_backend();
    ActivationOptions o;
    o.inference = inference;
    Gpt m(shape, kB, *be, 1, {}, nullptr, p, o);
    m.init(5);
    if (inference) {
      EXPECT_EQ(Gpt::memory_plan(shape, kB, 1, {}, nullptr, p, o).total(), be->allocated_bytes());
    }
    for (int len = 16; len <= 24; ++len) {
      const float* l = m.next_token_logits(prompt.data(), len);
      const std::vector<float> want(l, l + shape.vocab_size);
      m.forget_decoded();
      if (len > 16) m.decode_logits(prompt.data(), len - 1);  // the cache up to len − 1
      const float* d = m.decode_logits(prompt.data(), len);
      double err = 0, norm = 0;
      for (int v = 0; v < shape.vocab_size; ++v) {
        err = std::max(err, std::fabs(double(d[v]) - want[size_t(v)]));
        norm = std::max(norm, std::fabs(double(want[size_t(v)])));
      }
      EXPECT_LE(err, (p == Precision::bf16 ? 2e-2 : 1e-5) * norm)
          << "len " << len << (inference ? " (inference)" : "");
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Variants, MoeModel,
                         ::testing::Combine(::testing::Values(Precision::fp32, Precision::bf16),
                                            ::testing::Values(0, 1, 2)),
                         [](const auto& info) {
                           const int v = std::get<1>(info.param);
                           return std::string(precision_name(std::get<0>(info.param))) +
                                  (v == 0   ? "_gelu"
                                   : v == 1 ? "_swiglu_shared"
                                            : "_mixed");
                         });

TEST(MoeModel, Bf16FollowsFp32) {
  for (int v : {0, 1, 2}) {
    const GptShape shape = variant(v);
    const Result a = run(shape, Precision::fp32, Recompute::none);
    const Result b = run(shape, Precision::bf16, Recompute::none);
    for (size_t i = 0; i < a.loss.size(); ++i) EXPECT_NEAR(b.loss[i] / a.loss[i], 1.0, 1e-2) << v;
  }
}

// A capacity (model.moe_capacity_factor 0.6: each of 5 experts takes 24 of a micro-batch's 192
// choices, some dropped): recomputation gives the same bits too, and the plan is the allocation.
TEST(MoeModel, CapacityRecomputesTheSameBits) {
  for (Precision p : {Precision::fp32, Precision::bf16}) {
    GptShape shape = variant(1);
    shape.moe_capacity_factor = 0.6;
    const Result keep = run(shape, p, Recompute::none);
    for (const double l : keep.loss) EXPECT_TRUE(std::isfinite(l));
    for (Recomputation r : {Recomputation(Recompute::gelu), Recomputation(Recompute::full)}) {
      const Result got = run(shape, p, r);
      EXPECT_EQ(got.loss, keep.loss) << r.describe(shape.n_layer);
      EXPECT_TRUE(same_bits(got.grads, keep.grads)) << r.describe(shape.n_layer);
    }
    // Without the capacity the run differs (the capacity dropped choices).
    shape.moe_capacity_factor = 0;
    EXPECT_NE(run(shape, p, Recompute::none).loss, keep.loss);
  }
}

// An expert-parallel rank (its 1/ep of the experts; the experts' side sized for every rank's
// rows, or with a capacity for E·c of them) allocates what Gpt::memory_plan says; its parameters
// are the rest plus 1/ep of the experts.
TEST(MoeModel, ExpertParallelRankAllocatesThePlan) {
  for (double capacity : {0.0, 1.25})
    for (int ep : {2, 4}) {
      GptShape shape = variant(0);
      shape.moe_capacity_factor = capacity;
      ModelParallel mp;
      mp.ep = ep;
      mp.ep_rank = ep - 1;
      auto be = make_cpu_backend();
      Gpt m(shape, kB, *be, ep, mp, nullptr, Precision::bf16, Recomputation(Recompute::gelu));
      EXPECT_EQ(Gpt::memory_plan(shape, kB, ep, mp, nullptr, Precision::bf16,
                                 Recomputation(Recompute::gelu))
                    .total(),
                be->allocated_bytes())
          << "ep " << ep << " capacity " << capacity;
      size_t experts = 0, all = 0;
      for (const auto& s : gpt_rank_layout(shape, mp)) {
        all += s.numel;
        if (s.expert_parallel) experts += s.numel;
      }
      size_t whole_experts = 0, whole = 0;
      for (const auto& s : gpt_parameter_layout(shape)) {
        whole += s.numel;
        if (is_expert_tensor(s.name)) whole_experts += s.numel;
      }
      EXPECT_EQ(experts * size_t(ep), whole_experts);
      EXPECT_EQ(all, whole - whole_experts + experts);
    }
}

TEST(MoeModel, CountsParametersAndTheFlopsOfTheChosenExperts) {
  GptShape s = moe_shape(false);  // C 64, 4 experts of 64 hidden units, 2 per token
  GptShape dense = s;
  dense.moe_experts = 0;
  dense.bias = false;  // the experts have no biases: compare against a dense MLP without them
  s.bias = false;
  const int64_t C = 64, H = 64, E = 4, k = 2, L = 3;
  const int64_t experts = L * E * 2 * H * C, router = L * E * C, mlp = L * 2 * H * C;
  EXPECT_EQ(Gpt::num_parameters(s), Gpt::num_parameters(dense) - mlp + experts + router);
  EXPECT_EQ(Gpt::active_parameters(s), Gpt::num_parameters(s) - experts / E * (E - k));
  EXPECT_DOUBLE_EQ(Gpt::flops_per_token(s) - Gpt::flops_per_token(dense),
                   6.0 * double(experts / E * k + router - mlp));
  // With layers 0 and 1 dense, one layer's experts and router replace one layer's MLP.
  GptShape mixed = moe_shape(false, true);
  mixed.bias = false;
  EXPECT_EQ(Gpt::num_parameters(mixed), Gpt::num_parameters(dense) + (experts + router - mlp) / L);
}

}  // namespace
}  // namespace triad
