// The CUDA backend's grouped-query expansion (src/kernels/cuda/grouped_heads_block.h, as
// cuda_grouped_heads.cu launches it), run on the CPU through the SIMT emulator, against a
// reference written here head by head (backend.h's grouping: query head h reads kv head h % NKV):
// the expansion copies exactly, the prepared gradient holds dqkv's q columns (accumulate) or
// zeros, and the reduction gives each kv head the sum of its query heads' gradients in
// increasing h, onto the old value with accumulate (fp32 bit for bit; bf16 within one rounding).
// Needs no GPU.
#include <gtest/gtest.h>

#include <vector>

#include "../../src/kernels/cuda/grouped_heads_block.h"
#include "../support/block_data.h"
#include "../support/random_data.h"
#include "../support/simt_emulator.h"
#include "../support/strided_launch.h"

namespace triad {
namespace {

using Vec = std::vector<float>;

constexpr int kThreads = testing::kStridedThreads;
using testing::kStride;
using testing::launch_strided;

void check(int N, int NH, int NKV, int hd) {
  SCOPED_TRACE(::testing::Message() << "N=" << N << " NH=" << NH << " NKV=" << NKV << " hd=" << hd);
  const int C = NH * hd;
  const size_t W = size_t(C) + 2 * size_t(NKV) * hd, ld = 3 * size_t(C);
  const Vec qkv = testing::random_vec(size_t(N) * W, 1);
  // Expansion.
  Vec mha(size_t(N) * ld, NAN);
  launch_strided([&](simt::Thread& x) {
    grouped_heads_block::expand(x, mha.data(), qkv.data(), C, hd, NKV, W, size_t(N) * ld, kThreads,
                                kStride);
  });
  for (int n = 0; n < N; ++n)
    for (int h = 0; h < NH; ++h)
      for (int d = 0; d < hd; ++d) {
        const size_t e = size_t(n) * ld + size_t(h) * hd + d, c = size_t(n) * W;
        const int g = h % NKV;
        ASSERT_EQ(mha[e], qkv[c + size_t(h) * hd + d]) << "q";
        ASSERT_EQ(mha[e + C], qkv[c + C + size_t(g) * hd + d]) << "k of query head " << h;
        ASSERT_EQ(mha[e + 2 * size_t(C)], qkv[c + C + size_t(NKV + g) * hd + d]) << "v";
      }
  // The gradient's preparation and reduction, fp32 and bf16.
  const Vec dmha32 = testing::random_vec(size_t(N) * ld, 2),
            old32 = testing::random_vec(size_t(N) * W, 3);
  for (bool accumulate : {false, true}) {
    SCOPED_TRACE(accumulate ? "accumulate" : "overwrite");
    Vec prepared(size_t(N) * ld, NAN);
    launch_strided([&](simt::Thread& x) {
      grouped_heads_block::prepare_gradient(x, prepared.data(), old32.data(), C, W, accumulate,
                                            size_t(N) * ld, kThreads, kStride);
    });
    for (int n = 0; n < N; ++n)
      for (size_t col = 0; col < ld; ++col)
        ASSERT_EQ(prepared[size_t(n) * ld + col],
                  accumulate && col < size_t(C) ? old32[size_t(n) * W + col] : 0.0f);
    Vec want = old32;  // the reference: head by head
    for (int n = 0; n < N; ++n) {
      const float* src = dmha32.data() + size_t(n) * ld;
      float* dst = want.data() + size_t(n) * W;
      for (int c = 0; c < C; ++c) dst[c] = src[c];
      for (int kv = 0; kv < 2; ++kv)
        for (int g = 0; g < NKV; ++g)
          for (int d = 0; d < hd; ++d) {
            float sum = 0.0f;
            for (int h = g; h < NH; h += NKV) sum += src[size_t(C) * (1 + kv) + size_t(h) * hd + d];
            float& out = dst[size_t(C) + size_t(kv * NKV + g) * hd + d];
            out = accumulate ? out + sum : sum;
          }
    }
    Vec got = old32;
    launch_strided([&](simt::Thread& x) {
      grouped_heads_block::reduce(x, got.data(), dmha32.data(), C, hd, NH, NKV, W, accumulate,
                                  size_t(N) * W, kThreads, kStride);
    });
    EXPECT_EQ(got, want) << "fp32";
    const testing::Bf16Bits dmha_b = testing::bf16_bits(dmha32), old_b = testing::bf16_bits(old32);
    testing::Bf16Bits got_b = old_b;
    launch_strided([&](simt::Thread& x) {
      grouped_heads_block::reduce(x, got_b.data(), dmha_b.data(), C, hd, NH, NKV, W, accumulate,
                                  size_t(N) * W, kThreads, kStride);
    });
    EXPECT_LE(testing::max_rel_error(testing::widened(got_b), want), 1e-2) << "bf16";
  }
}

TEST(GroupedHeadsEmulated, TwoQueryHeadsPerKvHead) { check(5, 4, 2, 16); }
TEST(GroupedHeadsEmulated, MultiQuery) { check(3, 6, 1, 24); }

}  // namespace
}  // namespace triad
