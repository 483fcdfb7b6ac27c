// The CUDA backend's token + position embedding and rotary embedding (src/kernels/cuda/
// encoder_block.h and rope_block.h, as cuda_encoder.cu and cuda_rope.cu launch them), run on the
// CPU through the SIMT emulator, against the CPU backend's ops: the embedding and its gradients
// bit for bit (the same sums in the same order), with repeated tokens, another rank's tokens
// (< 0), no position table, and positions of their own; the rotation within 1e-6 of the largest
// magnitude, forward and inverse, grouped k heads, positions from an offset or per row. fp32 and
// bf16. Needs no GPU; test_cuda_bf16 runs the kernels on one.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "../../src/kernels/cuda/encoder_block.h"
#include "../../src/kernels/cuda/rope_block.h"
#include "../support/block_data.h"
#include "../support/random_data.h"
#include "../support/simt_emulator.h"
#include "triad/kernels/backend.h"

namespace triad {
namespace {

using testing::as_bf16;
using testing::widened;
using Vec = std::vector<float>;
using Ints = std::vector<int32_t>;
using Bits = testing::Bf16Bits;

constexpr int kThreads = 128;  // the elementwise programs' block here (the backend: 256)

template <class Body>
void launch(int grid_x, int grid_y, int threads, Body body) {
  simt::launch(grid_x, grid_y, threads, 0, simt::CopyTiming::at_issue, body);
}

// B sequences of T tokens over V ids: repeats, and with `foreign` every 7th token < 0.
void check_encoder(int B, int T, int C, int V, bool with_wpe, bool with_positions, bool foreign,
                   bool bf16) {
  SCOPED_TRACE(::testing::Message()
               << "B=" << B << " T=" << T << " C=" << C << " V=" << V << (with_wpe ? " wpe" : "")
               << (with_positions ? " positions" : "") << (foreign ? " foreign" : "")
               << (bf16 ? " bf16" : ""));
  const int N = B * T;
  Ints tokens = testing::random_ints(size_t(N), 7, 0, V);
  if (foreign)
    for (int n = 0; n < N; n += 7) tokens[size_t(n)] = -1;
  Ints positions;
  if (with_positions)  // packed documents: each restarts at 0
    for (int n = 0; n < N; ++n) positions.push_back(n % T % 5);
  const int32_t* pos = with_positions ? positions.data() : nullptr;
  const Bits wte = testing::bf16_bits(testing::random_vec(size_t(V) * C, 8)),
             wpe = testing::bf16_bits(testing::random_vec(size_t(T) * C, 9)),
             dout = testing::bf16_bits(testing::random_vec(size_t(N) * C, 10));
  const Vec wte32 = widened(wte), wpe32 = widened(wpe), dout32 = widened(dout);
  auto be = make_cpu_backend();
  const size_t total = size_t(N) * C;
  const int blocks = 3;  // fewer threads than elements: the stride loop
  const size_t stride = size_t(blocks) * kThreads;

  // Forward.
  if (bf16) {
    Bits want(total, 0xFFFFu), got(total, 0xFFFFu);
    be->encoder_forward(as_bf16(want), tokens.data(), as_bf16(wte),
                        with_wpe ? as_bf16(wpe) : nullptr, B, T, C, pos);
    launch(blocks, 1, kThreads, [&](simt::Thread& x) {
      encoder_block::forward(x, got.data(), tokens.data(), wte.data(),
                             with_wpe ? wpe.data() : nullptr, pos, T, C, total, kThreads, stride);
    });
    EXPECT_EQ(got, want) << "out";
  } else {
    Vec want(total, NAN), got(total, NAN);
    be->encoder_forward(want.data(), tokens.data(), wte32.data(), with_wpe ? wpe32.data() : nullptr,
                        B, T, C, pos);
    launch(blocks, 1, kThreads, [&](simt::Thread& x) {
      encoder_block::forward(x, got.data(), tokens.data(), wte32.data(),
                             with_wpe ? wpe32.data() : nullptr, pos, T, C, total, kThreads, stride);
    });
    EXPECT_EQ(got, want) << "out";
  }

  // Backward, onto gradients that hold values already (they accumulate).
  const Vec dwte0 = testing::random_vec(size_t(V) * C, 11),
            dwpe0 = testing::random_vec(size_t(T) * C, 12);
  Vec want_dwte = dwte0, want_dwpe = dwpe0, got_dwte = dwte0, got_dwpe = dwpe0;
  float* want_p = with_wpe ? want_dwpe.data() : nullptr;
  if (bf16)
    be->encoder_backward(want_dwte.data(), want_p, as_bf16(dout), tokens.data(), B, T, C, pos);
  else
    be->encoder_backward(want_dwte.data(), want_p, dout32.data(), tokens.data(), B, T, C, pos);
  const int channel_blocks = (C + encoder_block::kChannelBlock - 1) / encoder_block::kChannelBlock;
  auto rows = [&](float* dw, const int32_t* ids) {
    launch(channel_blocks, encoder_block::kBuckets, encoder_block::kChannelBlock,
           [&](simt::Thread& x) {
             if (bf16)
               encoder_block::backward_rows(x, dw, dout.data(), ids, N, C);
             else
               encoder_block::backward_rows(x, dw, dout32.data(), ids, N, C);
           });
  };
  rows(got_dwte.data(), tokens.data());
  if (with_wpe && with_positions) {
    rows(got_dwpe.data(), pos);
  } else if (with_wpe) {
    launch(blocks, 1, kThreads, [&](simt::Thread& x) {
      if (bf16)
        encoder_block::backward_positions(x, got_dwpe.data(), dout.data(), B, T, C, kThreads,
                                          stride);
      else
        encoder_block::backward_positions(x, got_dwpe.data(), dout32.data(), B, T, C, kThreads,
                                          stride);
    });
  }
  EXPECT_EQ(got_dwte, want_dwte) << "dwte";
  EXPECT_EQ(got_dwpe, want_dwpe) << "dwpe";
}

TEST(EmbeddingEmulated, TokensAndPositions) {
  check_encoder(2, 40, 72, 300, true, false, false, false);
}
TEST(EmbeddingEmulated, TokensAndPositionsBf16) {
  check_encoder(2, 40, 72, 300, true, false, false, true);
}
TEST(EmbeddingEmulated, ForeignTokensNoPositionTable) {
  check_encoder(3, 17, 136, 20, false, false, true, false);
}
TEST(EmbeddingEmulated, PositionsOfTheirOwnBf16) {
  check_encoder(2, 30, 40, 600, true, true, true, true);
}

// q and k heads of N rows rotated by a table of T positions' angles, forward then inverse; the
// first rot values of each head (0: all hd of them, else partial rotary).
void check_rope(int N, int T, int pos0, int C, int NH, int NKV, bool with_positions, bool bf16,
                int rot = 0) {
  SCOPED_TRACE(::testing::Message()
               << "N=" << N << " T=" << T << " pos0=" << pos0 << " C=" << C << " NH=" << NH
               << " NKV=" << NKV << " rot=" << rot << (with_positions ? " positions" : "")
               << (bf16 ? " bf16" : ""));
  const int hd = C / NH, r = rot > 0 ? rot : hd, half = r / 2, heads = NH + NKV;
  const size_t W = size_t(C) + 2 * size_t(NKV) * hd;
  const int rows_of_table = pos0 + T;
  Vec table(size_t(rows_of_table) * r);  // cos then sin of p·θ_i, as gpt_shape.h's rope_table
  for (int p = 0; p < rows_of_table; ++p)
    for (int i = 0; i < half; ++i) {
      const double angle = p * std::pow(10000.0, -2.0 * i / r);
      table[size_t(p) * r + i] = float(std::cos(angle));
      table[size_t(p) * r + half + i] = float(std::sin(angle));
    }
  Ints positions;
  if (with_positions)
    for (int n = 0; n < N; ++n) positions.push_back((n * 3) % rows_of_table);
  const int32_t* pos = with_positions ? positions.data() : nullptr;
  const Bits qkv = testing::bf16_bits(testing::random_vec(size_t(N) * W, 13));
  auto be = make_cpu_backend();
  const size_t pairs = size_t(N) * heads * half;
  const int blocks = 2;
  const size_t stride = size_t(blocks) * kThreads;
  for (bool inverse : {false, true}) {
    SCOPED_TRACE(inverse ? "inverse" : "forward");
    const float sign = inverse ? -1.0f : 1.0f;
    Vec want, got;
    if (bf16) {
      Bits w = qkv, g = qkv;
      be->rope(as_bf16(w), table.data(), N, T, pos0, C, NH, NKV, inverse, pos, rot);
      launch(blocks, 1, kThreads, [&](simt::Thread& x) {
        rope_block::rotate(x, g.data(), table.data(), pos, T, pos0, hd, r, heads, W, pairs, sign,
                           kThreads, stride);
      });
      want = widened(w);
      got = widened(g);
      EXPECT_LE(testing::max_rel_error(got, want), 1e-2);
    } else {
      want = widened(qkv);
      got = want;
      be->rope(want.data(), table.data(), N, T, pos0, C, NH, NKV, inverse, pos, rot);
      launch(blocks, 1, kThreads, [&](simt::Thread& x) {
        rope_block::rotate(x, got.data(), table.data(), pos, T, pos0, hd, r, heads, W, pairs, sign,
                           kThreads, stride);
      });
      EXPECT_LE(testing::max_rel_error(got, want), 1e-6);
    }
    // The v heads are untouched, and each q and k head's values past the first rot.
    const Vec original = widened(qkv);
    for (int n = 0; n < N; ++n) {
      for (size_t c = size_t(C) + size_t(NKV) * hd; c < W; ++c)
        ASSERT_EQ(got[size_t(n) * W + c], original[size_t(n) * W + c]) << "v of row " << n;
      for (int j = 0; j < heads; ++j)
        for (int c = r; c < hd; ++c) {
          const size_t at = size_t(n) * W + size_t(j) * hd + size_t(c);
          ASSERT_EQ(got[at], original[at]) << "unrotated value " << c << " of head " << j;
          ASSERT_EQ(want[at], original[at]) << "unrotated value " << c << " of head " << j;
        }
    }
  }
}

TEST(RopeEmulated, GroupedKeyHeadsFromAnOffset) { check_rope(24, 12, 5, 64, 4, 2, false, false); }
TEST(RopeEmulated, PositionsOfTheirOwnBf16) { check_rope(20, 10, 0, 96, 3, 1, true, true); }
TEST(RopeEmulated, HeadDim128) { check_rope(6, 6, 0, 256, 2, 2, false, false); }
// Partial rotary (model.rotary_dim): a quarter of 64 (GPT-NeoX's rotary_pct), half of 32 with
// grouped key heads and positions of their own in bf16.
TEST(RopeEmulated, PartialRotary) {
  check_rope(12, 6, 3, 128, 2, 2, false, false, 16);
  check_rope(10, 10, 0, 128, 4, 2, true, true, 16);
}

}  // namespace
}  // namespace triad
