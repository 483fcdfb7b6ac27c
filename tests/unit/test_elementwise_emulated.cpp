// The CUDA backend's elementwise ops (src/kernels/cuda/elementwise_block.h, as
// cuda_elementwise.cu launches them), run on the CPU through the SIMT emulator, against the CPU
// backend: GELU (tanh and exact) and squared ReLU and their gradients (overwritten and
// accumulated), residual add,
// accumulate, the logits' scale and soft cap, fp32 scaling and the conversions. fp32 within 1e-5
// (the CPU backend's tanh is its own vectorized approximation) and bf16 within 1e-2 of the largest
// magnitude, the conversions and the scaling bit for bit, with fewer threads than elements (the
// stride loop). Needs no GPU; test_cuda_backend and test_cuda_bf16 run the
// kernels on one.
#include <gtest/gtest.h>

#include <cstring>
#include <vector>

#include "../../src/kernels/cuda/elementwise_block.h"
#include "../support/block_data.h"
#include "../support/random_data.h"
#include "../support/simt_emulator.h"
#include "../support/strided_launch.h"
#include "triad/kernels/backend.h"
#include "triad/kernels/dropout_mask.h"

namespace triad {
namespace {

using testing::as_bf16;
using testing::kStride;
using testing::launch_strided;
using Vec = std::vector<float>;
using Bits = testing::Bf16Bits;

constexpr int kThreads = testing::kStridedThreads;
constexpr size_t kN = 1000;  // about five passes of the strided grid

// Buffers of kN values in [lo, hi), each rounded to bf16 so that both precisions start from the
// same numbers: the op's outputs and inputs alike.
std::vector<Vec> buffers(int count, float lo, float hi) {
  std::vector<Vec> v;
  for (int k = 0; k < count; ++k) v.push_back(testing::bf16_values(kN, 10 + k, lo, hi));
  return v;
}

template <class T, class E>
std::vector<T*> pointers(std::vector<std::vector<E>>& b) {
  std::vector<T*> p;
  for (auto& v : b) p.push_back(reinterpret_cast<T*>(v.data()));
  return p;
}

// One op on both backends and both precisions from the same starting buffers: cpu(be, b) runs
// the CPU backend's op, gpu(x, b) the block program, b the buffers' pointers (float*, then
// bf16_t* for the CPU backend and uint16_t* for the block program). Every buffer is compared
// afterwards: fp32 within 1e-5, bf16 within 1e-2 of its largest magnitude.
template <bool kBf16, class Cpu, class Gpu>
void check_in(const std::vector<Vec>& inputs, Cpu cpu, Gpu gpu) {
  using P = testing::Precision<kBf16>;
  auto be = make_cpu_backend();
  std::vector<std::vector<typename P::Gpu>> want;
  for (const Vec& v : inputs) want.push_back(P::from(v));
  auto got = want;
  cpu(*be, pointers<typename P::Cpu>(want));
  launch_strided([&](simt::Thread& x) { gpu(x, pointers<typename P::Gpu>(got)); });
  for (size_t k = 0; k < want.size(); ++k)
    EXPECT_LE(testing::max_rel_error(P::widen(got[k]), P::widen(want[k])), P::kTol)
        << P::kName << ", buffer " << k;
}
template <class Cpu, class Gpu>
void check(const std::vector<Vec>& inputs, Cpu cpu, Gpu gpu) {
  check_in<false>(inputs, cpu, gpu);
  check_in<true>(inputs, cpu, gpu);
}

TEST(ElementwiseEmulated, Gelu) {
  const std::vector<Vec> in = buffers(3, -6.0f, 6.0f);  // out or dinp, inp, dout
  check(
      in, [](Backend& be, auto b) { be.gelu_forward(b[0], b[1], kN); },
      [](simt::Thread& x, auto b) {
        elementwise_block::gelu_forward(x, b[0], b[1], kN, kThreads, kStride);
      });
  for (bool accumulate : {false, true}) {
    SCOPED_TRACE(accumulate ? "accumulate" : "overwrite");
    const GradMode mode = accumulate ? GradMode::accumulate : GradMode::overwrite;
    check(
        in, [&](Backend& be, auto b) { be.gelu_backward(b[0], b[1], b[2], kN, mode); },
        [&](simt::Thread& x, auto b) {
          elementwise_block::gelu_backward(x, b[0], b[1], b[2], kN, accumulate, kThreads, kStride);
        });
  }
}

// The squared ReLU and the ReLU (half the inputs negative: both branches taken) and the exact
// GELU.
TEST(ElementwiseEmulated, PointwiseActivations) {
  const std::vector<Vec> in = buffers(3, -6.0f, 6.0f);  // out or dinp, inp, dout
  for (Activation f : {Activation::relu2, Activation::gelu_exact, Activation::relu}) {
    const int kind = int(f);
    SCOPED_TRACE(kind);
    check(
        in, [&](Backend& be, auto b) { be.activation_forward(f, b[0], b[1], kN); },
        [&](simt::Thread& x, auto b) {
          elementwise_block::activation_forward(x, kind, b[0], b[1], kN, kThreads, kStride);
        });
    for (bool accumulate : {false, true}) {
      SCOPED_TRACE(accumulate ? "accumulate" : "overwrite");
      const GradMode mode = accumulate ? GradMode::accumulate : GradMode::overwrite;
      check(
          in, [&](Backend& be, auto b) { be.activation_backward(f, b[0], b[1], b[2], kN, mode); },
          [&](simt::Thread& x, auto b) {
            elementwise_block::activation_backward(x, kind, b[0], b[1], b[2], kN, accumulate,
                                                   kThreads, kStride);
          });
    }
  }
}

TEST(ElementwiseEmulated, AddAndAccumulate) {
  const std::vector<Vec> in = buffers(3, -2.0f, 2.0f);
  check(
      in, [](Backend& be, auto b) { be.add(b[0], b[1], b[2], kN); },
      [](simt::Thread& x, auto b) {
        elementwise_block::add(x, b[0], b[1], b[2], kN, kThreads, kStride);
      });
  check(  // in place: out = a
      in, [](Backend& be, auto b) { be.add(b[1], b[1], b[2], kN); },
      [](simt::Thread& x, auto b) {
        elementwise_block::add(x, b[1], b[1], b[2], kN, kThreads, kStride);
      });
  check(
      in, [](Backend& be, auto b) { be.accumulate(b[0], b[1], kN); },
      [](simt::Thread& x, auto b) {
        elementwise_block::accumulate(x, b[0], b[1], kN, kThreads, kStride);
      });
}

// μP's output multiplier alone (c = 0), and with a soft cap (Gemma 2's 30) reached by some logits.
TEST(ElementwiseEmulated, ScaleAndCapLogits) {
  const std::vector<Vec> in = buffers(1, -80.0f, 80.0f);
  for (float c : {0.0f, 30.0f}) {
    SCOPED_TRACE(::testing::Message() << "cap " << c);
    check(
        in, [&](Backend& be, auto b) { be.scale_cap_logits(b[0], kN, 0.75f, c); },
        [&](simt::Thread& x, auto b) {
          elementwise_block::scale_cap_logits(x, b[0], kN, 0.75f, c, kThreads, kStride);
        });
  }
}

// OLMo's clamp of q, k and v (model.clip_qkv = 1.5 over values in [−3, 3]: about half cut), and
// its gradient, which zeroes where the clamp cut (b[1] the clamp's input).
TEST(ElementwiseEmulated, ClampAndItsGradient) {
  const std::vector<Vec> in = buffers(2, -3.0f, 3.0f);
  check(
      in, [](Backend& be, auto b) { be.clamp(b[0], b[1], kN, 1.5f); },
      [](simt::Thread& x, auto b) {
        elementwise_block::clamp(x, b[0], b[1], kN, 1.5f, kThreads, kStride);
      });
  check(  // in place
      in, [](Backend& be, auto b) { be.clamp(b[1], b[1], kN, 1.5f); },
      [](simt::Thread& x, auto b) {
        elementwise_block::clamp(x, b[1], b[1], kN, 1.5f, kThreads, kStride);
      });
  check(
      in, [](Backend& be, auto b) { be.clamp_backward(b[0], b[1], kN, 1.5f); },
      [](simt::Thread& x, auto b) {
        elementwise_block::clamp_backward(x, b[0], b[1], kN, 1.5f, kThreads, kStride);
      });
  // And what they compute, on the CPU backend: inside values kept, the rest at ±1.5; the
  // gradient kept inside (the bounds included, as torch.clamp's), zero outside.
  auto be = make_cpu_backend();
  Vec v = in[1], out(kN), d(kN, 2.0f);
  v[0] = 1.5f;
  v[1] = -1.5f;
  be->clamp(out.data(), v.data(), kN, 1.5f);
  be->clamp_backward(d.data(), v.data(), kN, 1.5f);
  for (size_t i = 0; i < kN; ++i) {
    const bool inside = v[i] >= -1.5f && v[i] <= 1.5f;
    EXPECT_EQ(out[i], inside ? v[i] : v[i] < 0 ? -1.5f : 1.5f) << i;
    EXPECT_EQ(d[i], inside ? 2.0f : 0.0f) << i;
  }
}

// Hidden dropout (train.hidden_dropout) at p = 0.3 over 40 rows of 25 (kN values), keys of
// arbitrary rows: the same mask and the same kept values in both precisions.
TEST(ElementwiseEmulated, DropoutMatchesCpu) {
  std::vector<int32_t> keys(2 * 40);
  for (size_t r = 0; r < 40; ++r) {
    const uint64_t k = dropout_row_key(7, 1000 + r / 8, uint32_t(r % 8));
    keys[2 * r] = int32_t(uint32_t(k));
    keys[2 * r + 1] = int32_t(uint32_t(k >> 32));
  }
  const int32_t* kp = keys.data();
  check(
      buffers(1, -2.0f, 2.0f), [kp](Backend& be, auto b) { be.dropout(b[0], kp, 40, 25, 5, 0.3f); },
      [kp](simt::Thread& x, auto b) {
        elementwise_block::dropout(x, b[0], kp, 40, 25, 5, dropout_threshold(0.3f),
                                   dropout_scale(0.3f), kThreads, kStride);
      });
}

// The weights' moving average (optim.ema_decay d) against the formula in double: ema + w·(p − ema)
// with w = 1 − d, within fp32 rounding (d = 0.99 and 0.99999).
TEST(ElementwiseEmulated, EmaUpdate) {
  const Vec ema = testing::random_vec(kN, 21, -2.0f, 2.0f);
  const Vec p = testing::random_vec(kN, 22, -2.0f, 2.0f);
  auto be = make_cpu_backend();
  for (const double decay : {0.99, 0.99999}) {
    const double w = 1.0 - decay;
    Vec cpu = ema, got = ema;
    be->ema_update(cpu.data(), p.data(), kN, float(w));
    launch_strided([&](simt::Thread& x) {
      elementwise_block::ema_update(x, got.data(), p.data(), float(w), kN, kThreads, kStride);
    });
    for (size_t i = 0; i < kN; ++i) {
      const double want = double(ema[i]) + w * (double(p[i]) - double(ema[i]));
      EXPECT_NEAR(cpu[i], want, 1e-6) << decay << " " << i;
      EXPECT_NEAR(got[i], want, 1e-6) << decay << " " << i;
    }
  }
}

// fp32 scaling and both conversions, bit for bit (one multiplication; the rounding to nearest
// even of core/bf16.h, NaN and infinities included).
TEST(ElementwiseEmulated, ScaleAndConversionsExactly) {
  Vec v = testing::random_vec(kN, 20, -1e4f, 1e4f);
  v[3] = INFINITY;
  v[5] = -INFINITY;
  v[7] = NAN;
  v[9] = 1.0f + 0x1p-8f;   // a tie: rounds to even (1.0)
  v[11] = 1.0f + 0x3p-8f;  // a tie: rounds to even (1 + 2^-6)
  v[13] = 3.4e38f;         // rounds to infinity
  auto be = make_cpu_backend();
  Vec want = v, got = v;
  be->scale(want.data(), 0.3f, kN);
  launch_strided([&](simt::Thread& x) {
    elementwise_block::scale(x, got.data(), 0.3f, kN, kThreads, kStride);
  });
  EXPECT_EQ(0, std::memcmp(got.data(), want.data(), kN * sizeof(float))) << "scale";

  Bits want16(kN), got16(kN, 0xFFFFu);
  be->convert(as_bf16(want16), v.data(), kN);
  launch_strided([&](simt::Thread& x) {
    elementwise_block::convert(x, got16.data(), v.data(), kN, kThreads, kStride);
  });
  EXPECT_EQ(got16, want16) << "fp32 -> bf16";
  EXPECT_EQ(got16[9], 0x3F80u);
  EXPECT_EQ(got16[13], 0x7F80u);

  Vec want32(kN), got32(kN, -1.0f);
  be->convert(want32.data(), as_bf16(want16), kN);
  launch_strided([&](simt::Thread& x) {
    elementwise_block::convert(x, got32.data(), want16.data(), kN, kThreads, kStride);
  });
  EXPECT_EQ(0, std::memcmp(got32.data(), want32.data(), kN * sizeof(float))) << "bf16 -> fp32";
}

// The matmuls' bias passes against their definitions, bit for bit: every row of out the bias
// (or zeros); the FP8 products' epilogue round(acc + bias) into a column-major result with a
// leading dimension larger than its rows.
TEST(ElementwiseEmulated, BiasRowsAndRoundedBiasEpilogue) {
  constexpr int OC = 37, N = 23;
  const Vec bias = testing::bf16_values(OC, 30);
  const Bits bias16 = testing::bf16_bits(bias);
  Vec out(size_t(N) * OC, NAN);
  launch_strided([&](simt::Thread& x) {
    elementwise_block::broadcast_rows(x, out.data(), bias.data(), OC, out.size(), kThreads,
                                      kStride);
  });
  Bits out16(size_t(N) * OC, 0xFFFFu), zeros16 = out16;
  launch_strided([&](simt::Thread& x) {
    elementwise_block::broadcast_rows(x, out16.data(), bias16.data(), OC, out16.size(), kThreads,
                                      kStride);
    elementwise_block::broadcast_rows(x, zeros16.data(), static_cast<const uint16_t*>(nullptr), OC,
                                      zeros16.size(), kThreads, kStride);
  });
  for (int n = 0; n < N; ++n)
    for (int o = 0; o < OC; ++o) {
      const size_t i = size_t(n) * OC + o;
      ASSERT_EQ(out[i], bias[o]) << "fp32, row " << n;
      ASSERT_EQ(out16[i], bias16[o]) << "bf16, row " << n;
      ASSERT_EQ(zeros16[i], 0u) << "no bias, row " << n;
    }

  constexpr int m = 29, n = 31, ldd = 40;  // acc column-major m×n, d with leading dimension 40
  const Vec acc = testing::random_vec(size_t(m) * n, 31, -3.0f, 3.0f);
  const Bits b16 = testing::bf16_bits(testing::random_vec(m, 32));
  Bits d(size_t(ldd) * n, 0xABCDu);
  launch_strided([&](simt::Thread& x) {
    elementwise_block::bias_round(x, d.data(), ldd, acc.data(), b16.data(), m, acc.size(), kThreads,
                                  kStride);
  });
  for (int j = 0; j < n; ++j)
    for (int i = 0; i < ldd; ++i) {
      const uint16_t want =
          i < m ? to_bf16(acc[size_t(j) * m + i] + to_float(bf16_t{b16[i]})).bits : 0xABCDu;
      ASSERT_EQ(d[size_t(j) * ldd + i], want) << "row " << i << " column " << j;
    }
}

}  // namespace
}  // namespace triad
