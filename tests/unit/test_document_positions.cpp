// Positions that restart at every document (data.reset_positions, GptShape::reset_positions) on
// the CPU backend, from what they mean rather than from the implementation: under a document
// mask, a document packed after another gives the logits and the loss it gives as a sequence of
// its own (its first token at position 0). With GPT-2's learned table that is another model than
// without the reset; with rotary positions it is the same one (a score depends on the distance of
// query and key only). A model that resets positions allocates what Gpt::memory_plan says, and
// one without a document mask is refused.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "triad/core/error.h"
#include "triad/kernels/backend.h"
#include "triad/model/gpt.h"

namespace triad {
namespace {

constexpr int kT = 24, kV = 100, kDoc = 7;  // kDoc starts a document

GptShape shape_of(bool rope, bool reset) {
  GptShape s{2, 4, 32, kT, kV, 128};  // GPT-2's blocks and learned positions
  if (rope) {                         // Llama's
    s.rope = true;
    s.rope_theta = 100;  // slow frequencies still turn visibly over 24 positions
    s.rmsnorm = true;
    s.swiglu = true;
    s.mlp_hidden = 64;
    s.n_kv_head = 2;
    s.tied = false;
  }
  s.document_token = kDoc;
  s.reset_positions = reset;
  return s;
}

// max |a − b| / max |b| over rows [a0, a0 + n) of a and [b0, b0 + n) of b (rows of kV logits).
double rows_rel(const std::vector<float>& a, int a0, const std::vector<float>& b, int b0, int n) {
  double d = 0, m = 0;
  for (int r = 0; r < n; ++r)
    for (int v = 0; v < kV; ++v) {
      const double x = a[size_t(a0 + r) * kV + v], y = b[size_t(b0 + r) * kV + v];
      d = std::max(d, std::abs(x - y));
      m = std::max(m, std::abs(y));
    }
  return d / m;
}

std::vector<float> logits(Gpt& m, const std::vector<int32_t>& ids) {
  std::vector<float> out(ids.size() * kV);
  m.forward_logits(ids.data(), 1, out.data());
  return out;
}

// Token t of a filler stream that never starts a document.
int32_t filler(int t, int a, int b) {
  const int32_t x = (t * a + b) % kV;
  return x == kDoc ? kDoc + 1 : x;
}

TEST(DocumentPositions, APackedDocumentIsASequenceOfItsOwn) {
  auto be = make_cpu_backend();
  // Packed: a document of 9 tokens, then one of 15 (positions 9..23 of the sequence). Alone: the
  // second document first, then filler the causal mask keeps it from seeing.
  std::vector<int32_t> packed(kT), alone(kT);
  for (int t = 0; t < kT; ++t) packed[size_t(t)] = filler(t, 13, 20);
  packed[0] = packed[9] = kDoc;
  for (int t = 0; t < 15; ++t) alone[size_t(t)] = packed[size_t(9 + t)];
  for (int t = 15; t < kT; ++t) alone[size_t(t)] = filler(t, 5, 1);
  // The loss of the second document's tokens (every other target ignored).
  std::vector<int32_t> tg_packed(kT, kIgnoredTarget), tg_alone(kT, kIgnoredTarget);
  for (int t = 0; t < 14; ++t)
    tg_packed[size_t(9 + t)] = tg_alone[size_t(t)] = alone[size_t(t + 1)];
  for (const bool rope : {false, true})
    for (const Precision p : {Precision::fp32, Precision::bf16}) {
      SCOPED_TRACE(::testing::Message() << (rope ? "rope " : "learned ") << precision_name(p));
      const double tol = p == Precision::fp32 ? 1e-5 : 2e-2;
      Gpt reset(shape_of(rope, true), 1, *be, 1, {}, nullptr, p);
      reset.init(11);
      EXPECT_LT(rows_rel(logits(reset, packed), 9, logits(reset, alone), 0, 15), tol);
      reset.zero_grads();
      const double a = reset.forward_backward(packed.data(), tg_packed.data(), 1, 1.0f).loss_sum;
      const double b = reset.forward_backward(alone.data(), tg_alone.data(), 1, 1.0f).loss_sum;
      EXPECT_NEAR(a, b, tol * std::abs(b));
      // Without the reset the second document sits at positions 9..: other logits under the
      // learned table, the same ones under rope. The first document is at 0.. either way.
      Gpt plain(shape_of(rope, false), 1, *be, 1, {}, nullptr, p);
      plain.init(11);
      const double moved = rows_rel(logits(plain, packed), 9, logits(plain, alone), 0, 15);
      if (rope)
        EXPECT_LT(moved, tol);
      else
        EXPECT_GT(moved, 1e-2);
      EXPECT_LT(rows_rel(logits(reset, packed), 0, logits(plain, packed), 0, 9), tol);
      // What the model allocates is what the plan says (one more row of ints per token).
      const size_t before = be->allocated_bytes();
      {
        Gpt fresh(shape_of(rope, true), 1, *be, 1, {}, nullptr, p);
        EXPECT_EQ(be->allocated_bytes() - before,
                  Gpt::memory_plan(shape_of(rope, true), 1, 1, {}, nullptr, p).total());
      }
    }
  GptShape no_documents = shape_of(false, true);
  no_documents.document_token = -1;
  EXPECT_THROW(Gpt(no_documents, 1, *be), Error);
}

}  // namespace
}  // namespace triad
