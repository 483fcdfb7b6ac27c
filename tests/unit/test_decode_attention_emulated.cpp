// The decoding attention block program (src/kernels/cuda/decode_attention_block.h), run on the
// CPU through the SIMT emulator, against causal attention in double over the whole sequence:
// new rows at positions p .. p+n-1 against the keys and values of rows 0 .. p+n-1, for one
// sequence or several stored apart, fp32 and
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

// B sequences, each stride rows apart in qkv (the rows between are never read).
void check(int p, int n, int C, int NH, bool bf16, int B = 1, int stride = 0) {
  if (stride == 0) stride = p + n;
  SCOPED_TRACE(::testing::Message()
               << "p=" << p << " n=" << n << " C=" << C << " NH=" << NH << " B=" << B
               << " stride=" << stride << (bf16 ? " bf16" : " fp32"));
  const size_t seq = size_t(stride) * 3 * C, nqkv = size_t(B) * seq, nout = size_t(B) * n * C;
  const size_t smem = decode_attention::smem_bytes(p + n, C / NH);
  std::vector<double> values(nqkv), got(nout);
  auto body = [&](auto* out, const auto* qkv) {
    simt::launch(NH, B * n, decode_attention::kThreads, smem, simt::CopyTiming::at_issue,
                 [&](simt::Thread& x) { decode_attention::row(x, out, qkv, stride, p, n, C, NH); });
  };
  if (bf16) {
    simt::Bf16Buffer qkv = simt::random_bf16_buffer(nqkv, 7, -2.0f, 2.0f), out(nout);
    for (size_t i = 0; i < nqkv; ++i) values[i] = qkv.at(i);
    body(out.data(), qkv.data());
    for (size_t i = 0; i < nout; ++i) got[i] = out.at(i);
  } else {
    std::mt19937 gen(7);
    std::uniform_real_distribution<float> u(-2.0f, 2.0f);
    std::vector<float> qkv(nqkv), out(nout, NAN);
    for (size_t i = 0; i < nqkv; ++i) values[i] = qkv[i] = u(gen);
    body(out.data(), qkv.data());
    for (size_t i = 0; i < nout; ++i) got[i] = out[i];
  }
  std::vector<double> want;
  for (int b = 0; b < B; ++b) {
    const std::vector<double> one(values.begin() + long(b * seq),
                                  values.begin() + long(b * seq + size_t(p + n) * 3 * C));
    const std::vector<double> w = reference(one, p, n, C, NH);
    want.insert(want.end(), w.begin(), w.end());
  }
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
TEST(DecodeAttentionEmulated, ThreeSequencesApartFp32) { check(20, 2, 128, 2, false, 3, 30); }
TEST(DecodeAttentionEmulated, TwoSequencesApartBf16) { check(9, 1, 64, 1, true, 2, 16); }

}  // namespace
}  // namespace triad
