// The CUDA backend's SwiGLU and GeGLU (src/kernels/cuda/swiglu_block.h, as cuda_swiglu.cu launches
// them), run on the CPU through the SIMT emulator, against the CPU backend's swiglu and geglu ops:
// the output and the gradient (overwritten and accumulated), fp32 within 1e-6 and bf16 within 1e-2
// of the largest magnitude, with fewer threads than hidden units (the stride loop); SwiGLU in
// gpt-oss's shape too (GluShape: clamps at 2.5 that cut about a third of these inputs). Needs no
// GPU; test_cuda_bf16 runs the kernels on one.
#include <gtest/gtest.h>

#include <vector>

#include "../../src/kernels/cuda/swiglu_block.h"
#include "../support/block_data.h"
#include "../support/random_data.h"
#include "../support/simt_emulator.h"
#include "../support/strided_launch.h"
#include "triad/kernels/backend.h"

namespace triad {
namespace {

using testing::as_bf16;
using testing::widened;
using Vec = std::vector<float>;
using Bits = testing::Bf16Bits;

constexpr int kThreads = testing::kStridedThreads;
using testing::kStride;
using testing::launch_strided;

void check(int N, int H, bool bf16, bool gelu, GluShape glu = {}) {
  SCOPED_TRACE(::testing::Message() << "N=" << N << " H=" << H << (bf16 ? " bf16" : " fp32")
                                    << (gelu ? " geglu" : " swiglu") << " alpha " << glu.alpha
                                    << " limit " << glu.limit << " offset " << glu.offset);
  // The backend's op and the block program of the gate: silu (SwiGLU, in the shape glu) or gelu
  // (GeGLU).
  const swiglu_block::ClampedSilu clamped{glu.alpha, glu.limit, glu.offset};
  auto fwd = [&](Backend& be, auto* out, const auto* pre) {
    gelu ? be.geglu_forward(out, pre, N, H) : be.swiglu_forward(out, pre, N, H, glu);
  };
  auto bwd = [&](Backend& be, auto* d, const auto* pre, const auto* dout, GradMode mode) {
    gelu ? be.geglu_backward(d, pre, dout, N, H, mode)
         : be.swiglu_backward(d, pre, dout, N, H, mode, glu);
  };
  auto fwd_block = [&](simt::Thread& x, auto* out, const auto* pre, size_t n) {
    if (gelu)
      swiglu_block::geglu_forward(x, out, pre, H, n, kThreads, kStride);
    else if (!glu.plain())
      swiglu_block::clamped_forward(x, out, pre, H, n, kThreads, kStride, clamped);
    else
      swiglu_block::forward(x, out, pre, H, n, kThreads, kStride);
  };
  auto bwd_block = [&](simt::Thread& x, auto* d, const auto* pre, const auto* dout, size_t n,
                       bool accumulate) {
    if (gelu)
      swiglu_block::geglu_backward(x, d, pre, dout, H, n, accumulate, kThreads, kStride);
    else if (!glu.plain())
      swiglu_block::clamped_backward(x, d, pre, dout, H, n, accumulate, kThreads, kStride, clamped);
    else
      swiglu_block::backward(x, d, pre, dout, H, n, accumulate, kThreads, kStride);
  };
  const size_t n = size_t(N) * H;
  const Bits pre = testing::bf16_bits(testing::random_vec(2 * n, 1, -4.0f, 4.0f)),
             dout = testing::bf16_bits(testing::random_vec(n, 2)),
             old = testing::bf16_bits(testing::random_vec(2 * n, 3));
  const Vec pre32 = widened(pre), dout32 = widened(dout), old32 = widened(old);
  const double tol = bf16 ? 1e-2 : 1e-6;
  auto be = make_cpu_backend();
  Vec want, got;
  if (bf16) {
    Bits w(n, 0xFFFFu), g(n, 0xFFFFu);
    fwd(*be, as_bf16(w), as_bf16(pre));
    launch_strided([&](simt::Thread& x) { fwd_block(x, g.data(), pre.data(), n); });
    want = widened(w);
    got = widened(g);
  } else {
    want.assign(n, NAN);
    got.assign(n, NAN);
    fwd(*be, want.data(), pre32.data());
    launch_strided([&](simt::Thread& x) { fwd_block(x, got.data(), pre32.data(), n); });
  }
  EXPECT_LE(testing::max_rel_error(got, want), tol) << "out";
  for (bool accumulate : {false, true}) {
    SCOPED_TRACE(accumulate ? "accumulate" : "overwrite");
    const GradMode mode = accumulate ? GradMode::accumulate : GradMode::overwrite;
    if (bf16) {
      Bits w = old, g = old;
      bwd(*be, as_bf16(w), as_bf16(pre), as_bf16(dout), mode);
      launch_strided(
          [&](simt::Thread& x) { bwd_block(x, g.data(), pre.data(), dout.data(), n, accumulate); });
      want = widened(w);
      got = widened(g);
    } else {
      want = old32;
      got = old32;
      bwd(*be, want.data(), pre32.data(), dout32.data(), mode);
      launch_strided([&](simt::Thread& x) {
        bwd_block(x, got.data(), pre32.data(), dout32.data(), n, accumulate);
      });
    }
    EXPECT_LE(testing::max_rel_error(got, want), tol) << "dpre";
  }
}

TEST(SwigluEmulated, Fp32) { check(7, 100, false, false); }
TEST(SwigluEmulated, Bf16) { check(5, 130, true, false); }
TEST(SwigluEmulated, GegluFp32) { check(7, 100, false, true); }
TEST(SwigluEmulated, GegluBf16) { check(5, 130, true, true); }
// gpt-oss's SwiGLU (model.glu_*): alpha 1.702, clamps at 2.5, offset 1.
TEST(SwigluEmulated, ClampedFp32) { check(7, 100, false, false, GluShape{1.702f, 2.5f, 1.0f}); }
TEST(SwigluEmulated, ClampedBf16) { check(5, 130, true, false, GluShape{1.702f, 2.5f, 1.0f}); }

}  // namespace
}  // namespace triad
