// The classifier in chunks of logits (ActivationOptions::logits_chunk) on the CPU backend:
//  - any chunk (1 row, i.e. 8 after rounding to aligned rows; one that does not divide the
//    micro-batch; the whole micro-batch) gives the
//    loss, the gradients (over two accumulated micro-batches), the evaluation and the logits of
//    the unchunked model to fp32 rounding (only the head's weight gradient is summed in another
//    order), and the same bits when run again;
//  - the logits buffer is exactly the chunk: the activations shrink by (B·T − rows) rows of
//    V values, and Gpt::memory_plan says so.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "triad/kernels/backend.h"
#include "triad/model/gpt.h"

namespace triad {
namespace {

const GptShape kShape{2, 4, 64, 32, 200, 256};
constexpr int kB = 2, kN = kB * 32;

struct Result {
  std::vector<double> loss;
  std::vector<float> grads, logits;
  double eval_loss = 0;
  int64_t eval_correct = 0;
  size_t activation_bytes = 0;
};

Result run(Backend& be, Precision precision, int chunk) {
  Gpt m(kShape, kB, be, 1, {}, nullptr, precision, ActivationOptions(Recompute::none, chunk));
  EXPECT_EQ(m.logits_chunk(), chunk == 0 ? kN : chunk == 1 ? 8 : chunk) << "multiples of 8 rows";
  m.init(5);
  m.zero_grads();
  Result r;
  std::vector<int32_t> in(static_cast<size_t>(kN)), tg(static_cast<size_t>(kN));
  for (int mb = 0; mb < 2; ++mb) {
    for (int i = 0; i < kN; ++i) {
      in[size_t(i)] = (i * 41 + 3 + 11 * mb) % kShape.vocab_size;
      tg[size_t(i)] = (i * 29 + 17 + 5 * mb) % kShape.vocab_size;
    }
    r.loss.push_back(m.forward_backward(in.data(), tg.data(), kB, 1.0f / float(2 * kN)).loss_sum);
  }
  const ForwardStats e = m.evaluate(in.data(), tg.data(), kB);
  r.eval_loss = e.loss_sum;
  r.eval_correct = e.correct;
  r.logits.resize(size_t(kN) * kShape.vocab_size);
  m.forward_logits(in.data(), kB, r.logits.data());
  const float* next = m.next_token_logits(in.data(), 9);
  r.logits.insert(r.logits.end(), next, next + kShape.vocab_size);
  r.grads.assign(m.grads(), m.grads() + m.buffer_floats());
  r.activation_bytes = m.activation_bytes();
  EXPECT_EQ(Gpt::memory_plan(kShape, kB, 1, {}, nullptr, precision,
                             ActivationOptions(Recompute::none, chunk))
                .activations,
            r.activation_bytes);
  return r;
}

// max |a − b| / max |b|
double rel(const std::vector<float>& a, const std::vector<float>& b) {
  double d = 0, m = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    d = std::max(d, std::abs(double(a[i]) - b[i]));
    m = std::max(m, std::abs(double(b[i])));
  }
  return d / m;
}

class LogitsChunk : public ::testing::TestWithParam<Precision> {};

TEST_P(LogitsChunk, ChangesMemoryNotResults) {
  auto be = make_cpu_backend();
  const Precision p = GetParam();
  const Result whole = run(*be, p, 0);
  // bf16: the head's weight gradient is fp32 either way, the activations' rounding the same,
  // but the BLAS may sum the classifier's input gradient in another order for another row count
  // (OpenBLAS on an AVX-512 machine does), and one bf16 rounding that falls the other way moves
  // the gradients below it by up to a bf16 step's share: 9e-4 seen, within 2e-3 here; a wrong or
  // missing row moves them by far more.
  const double tol = 1e-5, grad_tol = p == Precision::bf16 ? 2e-3 : tol;
  for (int chunk : {1, 24, 32, kN}) {
    const Result got = run(*be, p, chunk);
    for (size_t i = 0; i < whole.loss.size(); ++i)
      EXPECT_NEAR(got.loss[i], whole.loss[i], tol * std::abs(whole.loss[i])) << chunk;
    EXPECT_NEAR(got.eval_loss, whole.eval_loss, tol * std::abs(whole.eval_loss)) << chunk;
    EXPECT_EQ(got.eval_correct, whole.eval_correct) << chunk;
    EXPECT_LT(rel(got.grads, whole.grads), grad_tol) << chunk;
    EXPECT_LT(rel(got.logits, whole.logits), tol) << chunk;
    const Result again = run(*be, p, chunk);
    EXPECT_EQ(again.loss, got.loss) << chunk;
    EXPECT_EQ(std::memcmp(again.grads.data(), got.grads.data(), got.grads.size() * sizeof(float)),
              0)
        << chunk << ": not deterministic";
    // The logits buffer is the chunk: rows × padded vocabulary of the activation type.
    const size_t a = p == Precision::bf16 ? 2 : 4;
    const int rows = chunk == 1 ? 8 : chunk;
    EXPECT_EQ(whole.activation_bytes - got.activation_bytes,
              size_t(kN - rows) * kShape.padded_vocab_size * a)
        << chunk;
  }
}

INSTANTIATE_TEST_SUITE_P(Precisions, LogitsChunk,
                         ::testing::Values(Precision::fp32, Precision::bf16),
                         [](const auto& info) { return std::string(precision_name(info.param)); });

}  // namespace
}  // namespace triad
