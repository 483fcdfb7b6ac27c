// The CUDA backend's strided cross-entropy kernels (src/kernels/cuda/crossentropy_rows_block.h,
// as cuda_crossentropy.cu launches them), run on the CPU through the SIMT emulator, against the
// CPU backend on the same logits, fp32 and bf16:
//  - the fused form (the rows the one-pass program does not take: fp32, a padded width that is
//    not a multiple of 8): losses and log Z within 1e-5, the hit exactly (ties: the first
//    index), the gradient within 1e-5 (fp32) / 1e-2 (bf16) of its largest magnitude, zeros in
//    the padded columns and ignored rows, with a z-loss and a soft cap;
//  - the vocabulary-parallel steps on one rank's slice: the row max and first argmax exactly
//    (a slice with no columns: −inf and −1), Σ exp within 1e-6 and the target logit exactly for
//    targets on this slice, another's and ignored ones, and the gradient as above.
// With 64 threads per row (rows several times wider) and with the 512 of the GPU launch. Needs
// no GPU; test_cuda_backend and test_cuda_bf16 run the kernels on one.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "../../src/kernels/cuda/crossentropy_rows_block.h"
#include "../support/block_data.h"
#include "../support/simt_emulator.h"
#include "triad/kernels/backend.h"

namespace triad {
namespace {

using testing::widened;
using Vec = std::vector<float>;
using Ints = std::vector<int32_t>;

constexpr int32_t kIgnored = crossentropy::kIgnored;

// Logits [N, Vp], uniform in ±9 and rounded to bf16 (both precisions see the same values); with
// ties the row maximum at V/3, at the columns 64 and 512 after it (read by the same thread as
// V/3 with 64 or 512 threads) and at V/2 (another thread's).
Vec logits_for(int N, int V, int Vp, uint32_t seed, bool ties) {
  Vec v = testing::bf16_values(size_t(N) * Vp, seed, -9.0f, 9.0f);
  if (ties)
    for (int n = 0; n < N; ++n) {
      for (int j : {V / 3, V / 3 + 64, V / 3 + 512, V / 2})
        if (j < V) v[size_t(n) * Vp + j] = 40.0f;
    }
  return v;
}

template <bool kBf16>
using Precision = testing::Precision<kBf16>;

template <int kThreads, class Body>
void launch_rows(int N, Body body) {
  simt::launch(N, 1, kThreads, crossentropy::row_smem(), simt::CopyTiming::at_issue, body);
}

struct Fused {
  int N, V, Vp;
  float scale, z_loss = 0.0f, softcap = 0.0f;
};

template <int kThreads, bool kBf16>
void check_fused(const Fused& c, const Ints& targets, uint32_t seed, bool ties = false) {
  using P = Precision<kBf16>;
  SCOPED_TRACE(::testing::Message() << "fused, threads " << kThreads << " " << P::kName
                                    << " N=" << c.N << " V=" << c.V << " Vp=" << c.Vp);
  const Vec in = logits_for(c.N, c.V, c.Vp, seed, ties);
  auto want = P::from(in), got = want;
  Vec want_loss(c.N, NAN), got_loss(c.N, NAN), want_hit(c.N, NAN), got_hit(c.N, NAN),
      want_lz(c.N, NAN), got_lz(c.N, NAN);
  make_cpu_backend()->crossentropy_forward_backward(P::cpu(want), want_loss.data(), want_hit.data(),
                                                    targets.data(), c.N, c.V, c.Vp, c.scale,
                                                    c.z_loss, want_lz.data(), c.softcap);
  launch_rows<kThreads>(c.N, [&](simt::Thread& x) {
    crossentropy::fused_row<kThreads>(x, got.data(), got_loss.data(), got_hit.data(),
                                      targets.data(), c.V, c.Vp, c.scale, c.z_loss, got_lz.data(),
                                      c.softcap);
  });
  for (int n = 0; n < c.N; ++n) {
    EXPECT_NEAR(got_loss[n], want_loss[n], 1e-5 * (1 + std::abs(want_loss[n]))) << "row " << n;
    EXPECT_NEAR(got_lz[n], want_lz[n], 1e-5 * (1 + std::abs(want_lz[n]))) << "row " << n;
    EXPECT_EQ(got_hit[n], want_hit[n]) << "row " << n;
    for (int j = c.V; j < c.Vp; ++j)
      ASSERT_EQ(P::widen(got)[size_t(n) * c.Vp + j], 0.0f) << "padded column " << j;
  }
  EXPECT_LE(testing::max_rel_error(P::widen(got), P::widen(want)), P::kTol) << "gradient";
}

template <int kThreads, bool kBf16>
void check_fused_cases() {
  // Padded width not a multiple of 8; ignored rows between kept ones.
  check_fused<kThreads, kBf16>({4, 1000, 1003, 0.25f}, {5, kIgnored, 999, 0}, 1u);
  // The first index of a tied maximum: row 0's target is it, row 1's the second copy.
  check_fused<kThreads, kBf16>({2, 900, 901, 1.0f}, {300, 450}, 2u, true);
  // z-loss and soft cap (logits within ±9 < 12).
  check_fused<kThreads, kBf16>({3, 700, 701, 0.5f, 0.05f, 12.0f}, {17, 500, kIgnored}, 3u);
}

TEST(CrossEntropyRowsEmulated, FusedFp32) { check_fused_cases<64, false>(); }
TEST(CrossEntropyRowsEmulated, FusedBf16) { check_fused_cases<64, true>(); }
TEST(CrossEntropyRowsEmulated, FusedAtTheGpuBlockSize) {
  check_fused<512, false>({2, 3000, 3001, 1.0f}, {2999, 7}, 4u);
}

// One rank's slice [N, Vp] with V real columns; targets local (negative: another rank's).
template <int kThreads, bool kBf16>
void check_parallel(int N, int V, int Vp, const Ints& targets, uint32_t seed) {
  using P = Precision<kBf16>;
  SCOPED_TRACE(::testing::Message() << "vocabulary-parallel, threads " << kThreads << " "
                                    << P::kName << " V=" << V << " Vp=" << Vp);
  auto be = make_cpu_backend();
  const Vec in = logits_for(N, V > 0 ? V : 1, Vp, seed, /*ties=*/V > 8);
  auto logits = P::from(in);

  Vec want_max(N, NAN), got_max(N, NAN), want_arg(N, NAN), got_arg(N, NAN);
  be->logits_row_max(want_max.data(), want_arg.data(), P::cpu(logits), N, V, Vp);
  launch_rows<kThreads>(N, [&](simt::Thread& x) {
    crossentropy::row_max<kThreads>(x, got_max.data(), got_arg.data(), logits.data(), V, Vp);
  });
  EXPECT_EQ(got_max, want_max) << "row max";
  EXPECT_EQ(got_arg, want_arg) << "argmax";
  if (V == 0) {
    for (int n = 0; n < N; ++n) EXPECT_EQ(got_arg[n], -1.0f);
    return;
  }

  // As after the all-reduce: a global maximum above this slice's.
  Vec global_max = want_max;
  for (float& m : global_max) m += 1.5f;
  Vec want_sum(N, NAN), got_sum(N, NAN), want_t(N, NAN), got_t(N, NAN);
  be->softmax_partial_sums(want_sum.data(), want_t.data(), P::cpu(logits), global_max.data(),
                           targets.data(), N, V, Vp);
  launch_rows<kThreads>(N, [&](simt::Thread& x) {
    crossentropy::partial_sums<kThreads>(x, got_sum.data(), got_t.data(), logits.data(),
                                         global_max.data(), targets.data(), V, Vp);
  });
  for (int n = 0; n < N; ++n)
    EXPECT_NEAR(got_sum[n], want_sum[n], 1e-6 * want_sum[n]) << "Σ exp, row " << n;
  EXPECT_EQ(got_t, want_t) << "target logits";

  // As after the all-reduce: a larger global sum.
  Vec global_sum = want_sum;
  for (float& s : global_sum) s *= 1.75f;
  for (float z_loss : {0.0f, 0.05f}) {
    for (float softcap : {0.0f, 12.0f}) {
      SCOPED_TRACE(::testing::Message() << "z-loss " << z_loss << " softcap " << softcap);
      auto want = logits, got = logits;
      be->crossentropy_backward_partial(P::cpu(want), global_max.data(), global_sum.data(),
                                        targets.data(), N, V, Vp, 0.5f, z_loss, softcap);
      launch_rows<kThreads>(N, [&](simt::Thread& x) {
        crossentropy::backward_partial<kThreads>(x, got.data(), global_max.data(),
                                                 global_sum.data(), targets.data(), V, Vp, 0.5f,
                                                 z_loss, softcap);
      });
      EXPECT_LE(testing::max_rel_error(P::widen(got), P::widen(want)), P::kTol) << "gradient";
      for (int n = 0; n < N; ++n)
        for (int j = targets[n] == kIgnored ? 0 : V; j < Vp; ++j)
          ASSERT_EQ(P::widen(got)[size_t(n) * Vp + j], 0.0f) << "row " << n << " column " << j;
    }
  }
}

// Targets on this slice (one at its last column), on another rank's (-1, -7), and ignored.
const Ints kSliceTargets = {3, -1, kIgnored, 499, -7};

TEST(CrossEntropyRowsEmulated, VocabularyParallelFp32) {
  check_parallel<64, false>(5, 500, 504, kSliceTargets, 5u);
  check_parallel<64, false>(5, 500, 500, kSliceTargets, 6u);
}
TEST(CrossEntropyRowsEmulated, VocabularyParallelBf16) {
  check_parallel<64, true>(5, 500, 503, kSliceTargets, 7u);
}
TEST(CrossEntropyRowsEmulated, VocabularyParallelSliceOfPaddingOnly) {
  check_parallel<64, false>(3, 0, 16, {-1, -2, kIgnored}, 8u);
}
TEST(CrossEntropyRowsEmulated, VocabularyParallelAtTheGpuBlockSize) {
  check_parallel<512, true>(3, 2000, 2008, {1999, -1, 0}, 9u);
}

}  // namespace
}  // namespace triad
