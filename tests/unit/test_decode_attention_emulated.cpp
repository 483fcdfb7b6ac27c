// The decoding attention block program (src/kernels/cuda/decode_attention_block.h), run on the
// CPU through the SIMT emulator, against causal attention in double over the whole sequence:
// new rows at positions p .. p+n-1 against the keys and values of rows 0 .. p+n-1, fp32 and
// bf16, head dims 32, 64 and 128 (fewer and more elements than threads), and more keys than the
// block has threads. fp32 within 1e-5 of the largest output, bf16 within 1e-2 relative (one
// rounding of the result). Needs no GPU.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "../../src/kernels/cuda/decode_attention_block.h"
#include "../support/simt_emulator.h"

namespace triad {
namespace {

// Rows p .. p+n-1 of causal attention over qkv [p+n, 3C] (values as doubles).
std::vector<double> reference(const std::vector<double>& qkv, int p, int n, int C, int NH) {
  const int hd = C / NH;
  const size_t ld = 3 * size_t(C);
  std::vector<double> out(size_t(n) * C);
  for (int h = 0; h < NH; ++h)
    for (int r = 0; r < n; ++r) {
      const int i = p + r;
      std::vector<double> s(size_t(i) + 1);
      double mx = -1e300, z = 0;
      for (int j = 0; j <= i; ++j) {
        double dot = 0;
        for (int d = 0; d < hd; ++d) dot += qkv[i * ld + h * hd + d] * qkv[j * ld + C + h * hd + d];
        s[size_t(j)] = dot / std::sqrt(double(hd));
        mx = std::max(mx, s[size_t(j)]);
      }
      for (auto& v : s) z += (v = std::exp(v - mx));
      for (int d = 0; d < hd; ++d) {
        double acc = 0;
        for (int j = 0; j <= i; ++j) acc += s[size_t(j)] * qkv[j * ld + 2 * C + h * hd + d];
        out[size_t(r) * C + h * hd + d] = acc / z;
      }
    }
  return out;
}

void check(int p, int n, int C, int NH, bool bf16) {
  SCOPED_TRACE(::testing::Message() << "p=" << p << " n=" << n << " C=" << C << " NH=" << NH
                                    << (bf16 ? " bf16" : " fp32"));
  const size_t nqkv = size_t(p + n) * 3 * C, nout = size_t(n) * C;
  const size_t smem = decode_attention::smem_bytes(p + n, C / NH);
  std::vector<double> values(nqkv), got(nout);
  if (bf16) {
    simt::Bf16Buffer qkv = simt::random_bf16_buffer(nqkv, 7, -2.0f, 2.0f), out(nout);
    for (size_t i = 0; i < nqkv; ++i) values[i] = qkv.at(i);
    simt::launch(
        NH, n, decode_attention::kThreads, smem, simt::CopyTiming::at_issue,
        [&](simt::Thread& x) { decode_attention::row(x, out.data(), qkv.data(), p, C, NH); });
    for (size_t i = 0; i < nout; ++i) got[i] = out.at(i);
  } else {
    std::mt19937 gen(7);
    std::uniform_real_distribution<float> u(-2.0f, 2.0f);
    std::vector<float> qkv(nqkv), out(nout, NAN);
    for (size_t i = 0; i < nqkv; ++i) values[i] = qkv[i] = u(gen);
    simt::launch(
        NH, n, decode_attention::kThreads, smem, simt::CopyTiming::at_issue,
        [&](simt::Thread& x) { decode_attention::row(x, out.data(), qkv.data(), p, C, NH); });
    for (size_t i = 0; i < nout; ++i) got[i] = out[i];
  }
  const std::vector<double> want = reference(values, p, n, C, NH);
  double largest = 0, worst = 0;
  for (double v : want) largest = std::max(largest, std::abs(v));
  for (size_t i = 0; i < nout; ++i) {
    const double err = bf16 ? std::abs(got[i] - want[i]) / (std::abs(want[i]) + 1e-2)
                            : std::abs(got[i] - want[i]) / largest;
    worst = std::isfinite(got[i]) ? std::max(worst, err) : INFINITY;
  }
  EXPECT_LE(worst, bf16 ? 1e-2 : 1e-5);
}

TEST(DecodeAttentionEmulated, OneNewRowManyKeysFp32) { check(150, 1, 128, 2, false); }
TEST(DecodeAttentionEmulated, OneNewRowManyKeysBf16) { check(150, 1, 128, 2, true); }
TEST(DecodeAttentionEmulated, SeveralNewRowsHeadDim128) { check(5, 3, 256, 2, true); }
TEST(DecodeAttentionEmulated, WholePromptHeadDim32) { check(0, 4, 96, 3, false); }

}  // namespace
}  // namespace triad
