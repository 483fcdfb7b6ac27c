// The CUDA backend's SwiGLU (src/kernels/cuda/swiglu_block.h, as cuda_swiglu.cu launches it),
// run on the CPU through the SIMT emulator, against the CPU backend's swiglu ops: the output and
// the gradient (overwritten and accumulated), fp32 within 1e-6 and bf16 within 1e-2 of the
// largest magnitude, with fewer threads than hidden units (the stride loop). Needs no GPU;
// test_cuda_bf16 runs the kernels on one.
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

void check(int N, int H, bool bf16) {
  SCOPED_TRACE(::testing::Message() << "N=" << N << " H=" << H << (bf16 ? " bf16" : " fp32"));
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
    be->swiglu_forward(as_bf16(w), as_bf16(pre), N, H);
    launch_strided([&](simt::Thread& x) {
      swiglu_block::forward(x, g.data(), pre.data(), H, n, kThreads, kStride);
    });
    want = widened(w);
    got = widened(g);
  } else {
    want.assign(n, NAN);
    got.assign(n, NAN);
    be->swiglu_forward(want.data(), pre32.data(), N, H);
    launch_strided([&](simt::Thread& x) {
      swiglu_block::forward(x, got.data(), pre32.data(), H, n, kThreads, kStride);
    });
  }
  EXPECT_LE(testing::max_rel_error(got, want), tol) << "out";
  for (bool accumulate : {false, true}) {
    SCOPED_TRACE(accumulate ? "accumulate" : "overwrite");
    const GradMode mode = accumulate ? GradMode::accumulate : GradMode::overwrite;
    if (bf16) {
      Bits w = old, g = old;
      be->swiglu_backward(as_bf16(w), as_bf16(pre), as_bf16(dout), N, H, mode);
      launch_strided([&](simt::Thread& x) {
        swiglu_block::backward(x, g.data(), pre.data(), dout.data(), H, n, accumulate, kThreads,
                               kStride);
      });
      want = widened(w);
      got = widened(g);
    } else {
      want = old32;
      got = old32;
      be->swiglu_backward(want.data(), pre32.data(), dout32.data(), N, H, mode);
      launch_strided([&](simt::Thread& x) {
        swiglu_block::backward(x, got.data(), pre32.data(), dout32.data(), H, n, accumulate,
                               kThreads, kStride);
      });
    }
    EXPECT_LE(testing::max_rel_error(got, want), tol) << "dpre";
  }
}

TEST(SwigluEmulated, Fp32) { check(7, 100, false); }
TEST(SwigluEmulated, Bf16) { check(5, 130, true); }

}  // namespace
}  // namespace triad
