// The CUDA backend's optimizer updates (src/kernels/cuda/optimizer_block.h, as
// cuda_optimizer.cu launches them), run on the CPU through the SIMT emulator, against the CPU
// backend's: AdamW over runs with their own weight decay and learning-rate scale and gaps between
// them (left untouched), AdamW, SGD with momentum, and Muon's two element-wise halves; parameters
// and state within 1e-6 of the largest magnitude, each bf16 copy the rounding of its updated
// parameter. Grids with fewer threads than elements (the stride loop). Needs no GPU;
// test_cuda_backend runs the kernels on one.
#include <gtest/gtest.h>

#include <vector>

#include "../../src/kernels/cuda/optimizer_block.h"
#include "../support/block_data.h"
#include "../support/random_data.h"
#include "../support/simt_emulator.h"
#include "../support/strided_launch.h"
#include "triad/kernels/backend.h"

namespace triad {
namespace {

using Vec = std::vector<float>;
using Bits = testing::Bf16Bits;

constexpr int kThreads = testing::kStridedThreads;
using testing::kStride;
using testing::launch_strided;

// The state of one update: parameters, gradients, two state vectors, the bf16 copy.
struct State {
  Vec p, g, m, v;
  Bits copy;
};
State state(size_t n) {
  State s{testing::random_vec(n, 1), testing::random_vec(n, 2),
          testing::random_vec(n, 3, -0.1f, 0.1f), testing::random_vec(n, 4, 0.0f, 0.01f),
          Bits(n, 0x1234u)};
  return s;
}

void expect_close(const State& got, const State& want, bool copied) {
  EXPECT_LE(testing::max_rel_error(got.p, want.p), 1e-6) << "p";
  EXPECT_LE(testing::max_rel_error(got.m, want.m), 1e-6) << "m";
  EXPECT_LE(testing::max_rel_error(got.v, want.v), 1e-6) << "v";
  for (size_t i = 0; i < got.p.size(); ++i) {
    const uint16_t want_copy = copied ? to_bf16(got.p[i]).bits : uint16_t(0x1234u);
    ASSERT_EQ(got.copy[i], want_copy) << "copy of element " << i;
  }
}

TEST(OptimizerEmulated, AdamWRunsWithGaps) {
  const size_t n = 1000;
  using Run = Backend::UpdateRun;
  const std::vector<Run> runs = {
      {3, 200, 0.1f, 1.0f}, {200, 450, 0.0f, 0.5f}, {600, 1000, 0.1f, 2.0f}};
  State want = state(n), got = want;
  auto be = make_cpu_backend();
  be->adamw_update_runs(want.p.data(), want.g.data(), want.m.data(), want.v.data(), runs.data(),
                        runs.size(), 1e-2f, 0.9f, 0.95f, 1e-8f, 0.1f, 0.05f, nullptr, 0.5f);
  launch_strided([&](simt::Thread& x) {
    optimizer_block::adamw_runs(x, got.p.data(), got.g.data(), got.m.data(), got.v.data(),
                                runs.data(), int(runs.size()), n, 1e-2f, 0.9f, 0.95f, 1e-8f, 0.1f,
                                0.05f, static_cast<uint16_t*>(nullptr), 0.5f, kThreads, kStride);
  });
  expect_close(got, want, false);
  const State before = state(n);
  for (size_t i : {size_t(0), size_t(2), size_t(450), size_t(599)})  // between runs
    EXPECT_EQ(got.p[i], before.p[i]) << "element " << i << " between runs";
  // With the bf16 copy: the copy of each updated element, the rest as it was.
  State with_copy = state(n);
  launch_strided([&](simt::Thread& x) {
    optimizer_block::adamw_runs(x, with_copy.p.data(), with_copy.g.data(), with_copy.m.data(),
                                with_copy.v.data(), runs.data(), int(runs.size()), n, 1e-2f, 0.9f,
                                0.95f, 1e-8f, 0.1f, 0.05f, with_copy.copy.data(), 0.5f, kThreads,
                                kStride);
  });
  for (size_t i = 0; i < n; ++i) {
    const bool updated = (i >= 3 && i < 450) || i >= 600;
    ASSERT_EQ(with_copy.copy[i], updated ? to_bf16(with_copy.p[i]).bits : uint16_t(0x1234u)) << i;
  }
}

TEST(OptimizerEmulated, AdamWSgdAndMuon) {
  const size_t n = 777;
  auto be = make_cpu_backend();
  {
    SCOPED_TRACE("adamw");
    State want = state(n), got = want;
    be->adamw_update(want.p.data(), want.g.data(), want.m.data(), want.v.data(), n, 3e-3f, 0.8f,
                     0.99f, 1e-6f, 0.01f, 0.2f, 0.01f, testing::as_bf16(want.copy), 2.0f);
    launch_strided([&](simt::Thread& x) {
      optimizer_block::adamw(x, got.p.data(), got.g.data(), got.m.data(), got.v.data(), n, 3e-3f,
                             0.8f, 0.99f, 1e-6f, 0.01f, 0.2f, 0.01f, got.copy.data(), 2.0f,
                             kThreads, kStride);
    });
    expect_close(got, want, true);
  }
  {
    SCOPED_TRACE("sgd");
    State want = state(n), got = want;
    be->sgd_update(want.p.data(), want.g.data(), want.m.data(), n, 0.1f, 0.9f, 0.01f,
                   testing::as_bf16(want.copy), 0.5f);
    launch_strided([&](simt::Thread& x) {
      optimizer_block::sgd(x, got.p.data(), got.g.data(), got.m.data(), n, 0.1f, 0.9f, 0.01f,
                           got.copy.data(), 0.5f, kThreads, kStride);
    });
    expect_close(got, want, true);
  }
  {
    SCOPED_TRACE("lion");
    State want = state(n), got = want;
    be->lion_update(want.p.data(), want.g.data(), want.m.data(), n, 0.01f, 0.9f, 0.99f, 0.1f,
                    testing::as_bf16(want.copy), 0.5f);
    launch_strided([&](simt::Thread& x) {
      optimizer_block::lion(x, got.p.data(), got.g.data(), got.m.data(), n, 0.01f, 0.9f, 0.99f,
                            0.1f, got.copy.data(), 0.5f, kThreads, kStride);
    });
    expect_close(got, want, true);
  }
  for (bool nesterov : {false, true}) {
    SCOPED_TRACE(nesterov ? "muon, nesterov" : "muon");
    State want = state(n), got = want;
    be->muon_momentum(want.m.data(), want.v.data(), want.g.data(), n, 0.95f, nesterov, 0.25f);
    launch_strided([&](simt::Thread& x) {
      optimizer_block::muon_momentum(x, got.m.data(), got.v.data(), got.g.data(), n, 0.95f,
                                     nesterov, 0.25f, kThreads, kStride);
    });
    be->muon_apply(want.p.data(), want.g.data(), n, 0.02f, 0.1f, 0.7f, testing::as_bf16(want.copy));
    launch_strided([&](simt::Thread& x) {
      optimizer_block::muon_apply(x, got.p.data(), got.g.data(), n, 0.02f, 0.1f, 0.7f,
                                  got.copy.data(), kThreads, kStride);
    });
    expect_close(got, want, true);
  }
}

}  // namespace
}  // namespace triad
