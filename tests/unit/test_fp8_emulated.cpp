// The CUDA backend's FP8 operand kernels (src/kernels/cuda/fp8_block.h, as cuda_fp8.cu launches
// them), run on the CPU through the SIMT emulator, against core/fp8.h: the casts give
// fp8_round(x·s) for every element, in place or transposed (shapes that are not multiples of
// the tiles or of the 8-value vectors), with s = fp8_scale(amax) and 1/s written beside; absmax
// gives max |x| (a NaN as +inf, zeros as 0). The emulator's fp8 encoding is checked first
// against fp8_round over every bf16 value, through a decoder written from the OCP formats here.
// What this cannot show is that the GPU's conversion instructions agree with the formats; the
// GPU test (test_cuda_fp8) compares the products with the CPU backend's.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "../../src/kernels/cuda/fp8_block.h"
#include "../support/simt_emulator.h"
#include "triad/core/fp8.h"

namespace triad {
namespace {

using simt::CopyTiming;

// The value of fp8 byte b: sign, exponent (bias 7 or 15), mantissa (3 or 2 bits); subnormals at
// exponent 0; e4m3's 0x7f / 0xff and e5m2's all-ones exponents with a nonzero mantissa are NaN
// (e5m2's with a zero mantissa ±inf, which a saturating conversion never gives).
float decode(uint8_t b, Fp8Format f) {
  const int mbits = f == Fp8Format::e4m3 ? 3 : 2, ebits = 7 - mbits;
  const int bias = (1 << (ebits - 1)) - 1;
  const int e = (b >> mbits) & ((1 << ebits) - 1), m = b & ((1 << mbits) - 1);
  const float sign = b & 0x80 ? -1.0f : 1.0f;
  if (f == Fp8Format::e4m3 && e == 15 && m == 7) return NAN;
  if (f == Fp8Format::e5m2 && e == 31) return m != 0 ? NAN : sign * INFINITY;
  if (e == 0) return sign * std::ldexp(float(m), 1 - bias - mbits);
  return sign * std::ldexp(float((1 << mbits) + m), e - bias - mbits);
}

bool same(float a, float b) {  // equal values (−0 and 0 apart), or both NaN
  return (a != a && b != b) || (a == b && std::signbit(a) == std::signbit(b));
}

const Fp8Format kFormats[] = {Fp8Format::e4m3, Fp8Format::e5m2};
const char* name(Fp8Format f) { return f == Fp8Format::e4m3 ? "e4m3" : "e5m2"; }

TEST(Fp8Emulated, EncodingOfEveryBf16Value) {
  for (Fp8Format f : kFormats)
    for (uint32_t bits = 0; bits < 0x10000u; ++bits) {
      const float v = to_float(bf16_t{uint16_t(bits)});
      const float want = fp8_round(v, f);
      const float got = decode(simt::Thread::fp8(v, f), f);
      ASSERT_TRUE(same(got, want)) << name(f) << " of " << v << ": " << got << " for " << want;
    }
}

constexpr int kThreads = 256;

// max |x| of n bf16 values through the program (vec: 8 at a time), as a float.
float run_absmax(const uint16_t* x, size_t n, bool vec, int blocks) {
  unsigned out = 0;
  simt::launch(blocks, 1, kThreads, fp8_block::absmax_smem(), CopyTiming::at_issue,
               [&](simt::Thread& t) {
                 fp8_block::absmax(t, &out, x, n, vec, kThreads, size_t(blocks) * kThreads);
               });
  float r;
  std::memcpy(&r, &out, sizeof r);
  return r;
}

TEST(Fp8Emulated, Absmax) {
  const size_t n = 3001;  // a tail after the last group of 8
  simt::Bf16Buffer x = simt::random_bf16_buffer(n, 5, -3.0f, 3.0f);
  x.data()[1234] = to_bf16(-7.5f).bits;  // the largest magnitude, negative
  for (bool vec : {true, false}) {
    EXPECT_EQ(run_absmax(x.data(), n, vec, 2), 7.5f) << (vec ? "vec" : "scalar");
    EXPECT_EQ(run_absmax(x.data(), n, vec, 1), 7.5f) << (vec ? "vec" : "scalar") << ", one block";
  }
  x.data()[n - 1] = to_bf16(-9.0f).bits;  // in the tail
  EXPECT_EQ(run_absmax(x.data(), n, true, 2), 9.0f);
  x.data()[17] = 0x7fc1u;  // a NaN
  EXPECT_EQ(run_absmax(x.data(), n, true, 2), INFINITY);
  simt::Bf16Buffer zeros(64);
  for (size_t i = 0; i < 64; ++i) zeros.data()[i] = 0x8000u;  // −0
  EXPECT_EQ(run_absmax(zeros.data(), 64, true, 1), 0.0f);
}

// A mixture of experts' per-expert amax in one launch (absmax_segments, as absmax_rows launches
// it: block row y takes segment y): rows grouped by expert, some experts with none (0), ranges
// with gaps between them (a capacity's dropped rows, which must not count) and of other lengths,
// each segment's maximum into its own word three apart (the (inp, weight, dout) slots); against
// the maximum of |x| over each range computed here.
TEST(Fp8Emulated, AbsmaxOfEachSegment) {
  const size_t width = 24, rows = 70;
  simt::Bf16Buffer x = simt::random_bf16_buffer(rows * width, 9, -2.0f, 2.0f);
  x.data()[40 * width + 5] = to_bf16(-6.0f).bits;  // a dropped row, in no segment
  x.data()[12 * width + 23] = to_bf16(5.25f).bits;  // segment 1's last value
  fp8_block::RowSegments seg{};
  const std::vector<std::pair<uint32_t, uint32_t>> ranges = {
      {0, 3}, {3, 13}, {13, 13}, {20, 40}, {41, 70}, {70, 70}};
  for (size_t s = 0; s < ranges.size(); ++s) {
    seg.begin[s] = ranges[s].first;
    seg.end[s] = ranges[s].second;
  }
  const int segments = int(ranges.size()), blocks = 2;
  for (bool vec : {true, false}) {
    std::vector<unsigned> out(3 * ranges.size(), 0);
    simt::launch(blocks, segments, kThreads, fp8_block::absmax_smem(), CopyTiming::at_issue,
                 [&](simt::Thread& t) {
                   fp8_block::absmax_segments(t, out.data(), 3, x.data(), width, seg, vec,
                                              kThreads, size_t(blocks) * kThreads);
                 });
    for (size_t s = 0; s < ranges.size(); ++s) {
      float want = 0;
      for (size_t i = ranges[s].first * width; i < ranges[s].second * width; ++i)
        want = std::max(want, std::fabs(to_float(bf16_t{x.data()[i]})));
      float got;
      std::memcpy(&got, &out[3 * s], sizeof got);
      EXPECT_EQ(got, want) << "segment " << s << (vec ? " vec" : " scalar");
      EXPECT_EQ(out[3 * s + 1], 0u) << "segment " << s << ": only its own word";
    }
  }
}

// Every element of a cast: dst (through at) is fp8_round(x·s).
template <class At>
void expect_cast(simt::Bf16Buffer& x, size_t n, const std::vector<uint8_t>& dst, float amax,
                 float inv, Fp8Format f, At at) {
  const float s = fp8_scale(amax, f);
  EXPECT_EQ(inv, 1.0f / s);
  size_t wrong = 0;
  for (size_t i = 0; i < n; ++i) {
    const float v = to_float(bf16_t{x.data()[i]});
    const float want = fp8_round(v * s, f), got = decode(dst[at(i)], f);
    if (!same(got, want) && wrong++ < 5)
      ADD_FAILURE() << name(f) << " element " << i << ": " << got << " for " << want;
  }
  EXPECT_EQ(wrong, 0u);
}

TEST(Fp8Emulated, CastKeepsTheLayout) {
  const size_t n = 1003;
  simt::Bf16Buffer x = simt::random_bf16_buffer(n, 6, -5.0f, 5.0f);
  const float amax = 5.0f;
  for (Fp8Format f : kFormats)
    for (bool vec : {true, false}) {
      SCOPED_TRACE(::testing::Message() << name(f) << (vec ? " vec" : " scalar"));
      std::vector<uint8_t> dst(n + 8, 0xAA);
      float inv = NAN;
      const int blocks = 2;
      simt::launch(blocks, 1, kThreads, 0, CopyTiming::at_issue, [&](simt::Thread& t) {
        fp8_block::cast(t, dst.data(), &inv, x.data(), n, &amax, f, vec, kThreads,
                        size_t(blocks) * kThreads);
      });
      expect_cast(x, n, dst, amax, inv, f, [](size_t i) { return i; });
      EXPECT_EQ(dst[n], 0xAA) << "written past the end";
    }
}

// ld = R, and ld = 80 > R = 70: the weight gradient's padding of its inner dimension to a
// multiple of 16 (cuda_fp8.cu), zeros (the fp8 byte 0) in dst's columns [R, ld) of every row, and
// nothing written past [C, ld).
TEST(Fp8Emulated, CastTransposed) {
  const int R = 70, C = 45;  // partial tiles both ways
  simt::Bf16Buffer x = simt::random_bf16_buffer(size_t(R) * C, 7, -0.01f, 0.01f);
  const float amax = 0.01f;
  for (const int ld : {R, 80})
    for (Fp8Format f : kFormats) {
      SCOPED_TRACE(::testing::Message() << name(f) << " ld " << ld);
      std::vector<uint8_t> dst(size_t(ld) * C + 8, 0xAA);
      float inv = NAN;
      const int bx = (ld + fp8_block::kTile - 1) / fp8_block::kTile,
                by = (C + fp8_block::kTile - 1) / fp8_block::kTile;
      simt::launch(bx, by, fp8_block::kTransposeThreads, fp8_block::transpose_smem(),
                   CopyTiming::at_issue, [&](simt::Thread& t) {
                     fp8_block::cast_transposed(t, dst.data(), &inv, x.data(), R, C, ld, &amax, f);
                   });
      // src [R, C] element i = r·C + c lands at dst [C, ld]: c·ld + r.
      expect_cast(x, size_t(R) * C, dst, amax, inv, f,
                  [&](size_t i) { return (i % C) * ld + i / C; });
      for (int c = 0; c < C; ++c)
        for (int r = R; r < ld; ++r)
          ASSERT_EQ(dst[size_t(c) * ld + r], 0) << "padding at row " << c << " column " << r;
      EXPECT_EQ(dst[size_t(ld) * C], 0xAA) << "written past the end";
    }
}

}  // namespace
}  // namespace triad
