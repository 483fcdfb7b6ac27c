// The decoding attention block program (src/kernels/cuda/decode_attention_block.h), run on the
// CPU through the SIMT emulator, against causal attention in double over the whole sequence:
// new rows at positions p .. p+n-1 against the keys and values of rows 0 .. p+n-1, for one
// sequence or several stored apart, fp32 and bf16, head dims 32, 64 and 128 (fewer and more
// elements than threads), more keys than the block has threads, and grouped-query attention
// (NKV < NH key/value heads, query head h reading kv head h % NKV of the compact rows). fp32
// within 1e-5 of the largest output, bf16 within 1e-2 relative (one rounding of the result).
// Each case is also compared with the CPU backend's attention_decode on the same inputs (what
// the CUDA backend is tested against on a GPU), within the same tolerances. Needs no GPU.
#include <gtest/gtest.h>

#include <cmath>
#include <memory>
#include <random>
#include <vector>

#include "../../src/kernels/cuda/decode_attention_block.h"
#include "../support/simt_emulator.h"
#include "triad/core/bf16.h"
#include "triad/kernels/backend.h"

namespace triad {
namespace {

// Rows p .. p+n-1 of causal attention over qkv [p+n, W] (values as doubles), query head h
// against key/value head h % NKV; window > 0: row i sees keys i - window + 1 .. i only; scale:
// the scores' (0: 1/sqrt(hd)); cap > 0: each scaled score s is cap·tanh(s / cap); sinks (empty:
// none): head h's exp(sinks[h]) a term of its denominators.
std::vector<double> reference(const std::vector<double>& qkv, int p, int n, int C, int NH, int NKV,
                              int window, double scale, double cap,
                              const std::vector<double>& sinks = {}) {
  const int hd = C / NH;
  const size_t ld = size_t(qkv_width(C, NH, NKV));
  std::vector<double> out(size_t(n) * C);
  for (int h = 0; h < NH; ++h) {
    const size_t k_col = size_t(C) + size_t(h % NKV) * hd, v_col = k_col + size_t(NKV) * hd;
    for (int r = 0; r < n; ++r) {
      const int i = p + r, lo = window > 0 ? std::max(0, i - window + 1) : 0;
      std::vector<double> s(size_t(i) + 1, 0.0);
      double mx = sinks.empty() ? -1e300 : sinks[size_t(h)], z = 0;
      for (int j = lo; j <= i; ++j) {
        double dot = 0;
        for (int d = 0; d < hd; ++d) dot += qkv[i * ld + h * hd + d] * qkv[j * ld + k_col + d];
        s[size_t(j)] = scale > 0 ? dot * scale : dot / std::sqrt(double(hd));
        if (cap > 0) s[size_t(j)] = cap * std::tanh(s[size_t(j)] / cap);
        mx = std::max(mx, s[size_t(j)]);
      }
      for (int j = lo; j <= i; ++j) z += (s[size_t(j)] = std::exp(s[size_t(j)] - mx));
      if (!sinks.empty()) z += std::exp(sinks[size_t(h)] - mx);
      for (int d = 0; d < hd; ++d) {
        double acc = 0;
        for (int j = lo; j <= i; ++j) acc += s[size_t(j)] * qkv[j * ld + v_col + d];
        out[size_t(r) * C + h * hd + d] = acc / z;
      }
    }
  }
  return out;
}

// Worst error of got against want: relative to the largest |want| (fp32) or per element with a
// floor of 1e-2 (bf16); infinite where got is not finite.
double worst_error(const std::vector<double>& got, const std::vector<double>& want, bool bf16) {
  double largest = 0, worst = 0;
  for (double v : want) largest = std::max(largest, std::abs(v));
  for (size_t i = 0; i < got.size(); ++i) {
    const double err = bf16 ? std::abs(got[i] - want[i]) / (std::abs(want[i]) + 1e-2)
                            : std::abs(got[i] - want[i]) / largest;
    worst = std::isfinite(got[i]) ? std::max(worst, err) : INFINITY;
  }
  return worst;
}

// B sequences, each stride rows apart in qkv (the rows between are never read); window > 0: a
// sliding window; scale: the scores' (0: 1/sqrt(hd)); cap: their soft cap (0: none); sinks:
// attention sinks, head h's logit 2h − 1 (bf16-exact).
void check(int p, int n, int C, int NH, int NKV, bool bf16, int B = 1, int stride = 0,
           int window = 0, float scale = 0.0f, float cap = 0.0f, bool sinks = false) {
  if (stride == 0) stride = p + n;
  SCOPED_TRACE(::testing::Message()
               << "p=" << p << " n=" << n << " C=" << C << " NH=" << NH << " NKV=" << NKV << " B="
               << B << " stride=" << stride << (bf16 ? " bf16" : " fp32") << " window=" << window
               << " scale=" << scale << " cap=" << cap << (sinks ? " sinks" : ""));
  std::vector<double> z;
  std::vector<float> zf;
  std::vector<bf16_t> zb;
  for (int h = 0; sinks && h < NH; ++h) {
    z.push_back(2.0 * h - 1.0);
    zf.push_back(float(z.back()));
    zb.push_back(to_bf16(zf.back()));
  }
  std::vector<uint16_t> z_bits;
  for (const bf16_t& v : zb) z_bits.push_back(v.bits);
  const size_t W = size_t(qkv_width(C, NH, NKV));
  const size_t seq = size_t(stride) * W, nqkv = size_t(B) * seq, nout = size_t(B) * n * C;
  const size_t smem =
      decode_attention::smem_bytes(decode_attention::keys_seen(p, n, window), C / NH);
  std::vector<double> values(nqkv), got(nout), cpu_got(nout);
  auto body = [&](auto* out, const auto* qkv, const auto* sink) {
    simt::launch(NH, B * n, decode_attention::kThreads, smem, simt::CopyTiming::at_issue,
                 [&](simt::Thread& x) {
                   decode_attention::row(x, out, qkv, stride, p, n, C, NH, NKV, window, scale, cap,
                                         sink);
                 });
  };
  const std::unique_ptr<Backend> cpu = make_cpu_backend();
  if (bf16) {
    simt::Bf16Buffer qkv = simt::random_bf16_buffer(nqkv, 7, -2.0f, 2.0f), out(nout);
    std::vector<bf16_t> cpu_qkv(nqkv), cpu_out(nout);
    for (size_t i = 0; i < nqkv; ++i) {
      values[i] = qkv.at(i);
      cpu_qkv[i] = bf16_t{qkv.data()[i]};
    }
    body(out.data(), qkv.data(), sinks ? z_bits.data() : nullptr);
    cpu->attention_decode(cpu_out.data(), cpu_qkv.data(), B, stride, p, n, C, NH, NKV, window,
                          scale, cap, sinks ? zb.data() : nullptr);
    for (size_t i = 0; i < nout; ++i) {
      got[i] = out.at(i);
      cpu_got[i] = to_float(cpu_out[i]);
    }
  } else {
    std::mt19937 gen(7);
    std::uniform_real_distribution<float> u(-2.0f, 2.0f);
    std::vector<float> qkv(nqkv), out(nout, NAN), cpu_out(nout, NAN);
    for (size_t i = 0; i < nqkv; ++i) values[i] = qkv[i] = u(gen);
    body(out.data(), qkv.data(), sinks ? zf.data() : nullptr);
    cpu->attention_decode(cpu_out.data(), qkv.data(), B, stride, p, n, C, NH, NKV, window, scale,
                          cap, sinks ? zf.data() : nullptr);
    for (size_t i = 0; i < nout; ++i) {
      got[i] = out[i];
      cpu_got[i] = cpu_out[i];
    }
  }
  std::vector<double> want;
  for (int b = 0; b < B; ++b) {
    const std::vector<double> one(values.begin() + long(b * seq),
                                  values.begin() + long(b * seq + size_t(p + n) * W));
    const std::vector<double> w = reference(one, p, n, C, NH, NKV, window, scale, cap, z);
    want.insert(want.end(), w.begin(), w.end());
  }
  EXPECT_LE(worst_error(got, want, bf16), bf16 ? 1e-2 : 1e-5) << "against the reference";
  EXPECT_LE(worst_error(got, cpu_got, bf16), bf16 ? 1e-2 : 1e-5) << "against the CPU backend";
}

TEST(DecodeAttentionEmulated, OneNewRowManyKeysFp32) { check(150, 1, 128, 2, 2, false); }
TEST(DecodeAttentionEmulated, OneNewRowManyKeysBf16) { check(150, 1, 128, 2, 2, true); }
TEST(DecodeAttentionEmulated, SeveralNewRowsHeadDim128) { check(5, 3, 256, 2, 2, true); }
TEST(DecodeAttentionEmulated, WholePromptHeadDim32) { check(0, 4, 96, 3, 3, false); }
TEST(DecodeAttentionEmulated, ThreeSequencesApartFp32) { check(20, 2, 128, 2, 2, false, 3, 30); }
TEST(DecodeAttentionEmulated, TwoSequencesApartBf16) { check(9, 1, 64, 1, 1, true, 2, 16); }
// model.attn_scale (μP's 1/hd; a larger one): the kernel and the CPU backend against the reference.
TEST(DecodeAttentionEmulated, OtherScales) {
  check(40, 2, 128, 2, 1, false, 1, 0, 0, 1.0f / 64);
  check(40, 1, 128, 2, 2, true, 1, 0, 0, 0.4f);
}
// model.attn_softcap: scores capped at c·tanh(s/c) (scores of a few units here, caps 1 and 2).
TEST(DecodeAttentionEmulated, SoftCap) {
  check(40, 2, 128, 4, 2, false, 2, 50, 20, 0.0f, 1.0f);
  check(40, 1, 128, 2, 1, true, 1, 0, 0, 0.4f, 2.0f);
}

// Attention sinks (model.attn_sinks): logits −1, 1, 3, 5 beside scores of a few units, with
// grouped-query heads, a window and several sequences.
TEST(DecodeAttentionEmulated, SinksFp32) {
  check(40, 2, 128, 4, 2, false, 2, 50, 20, 0.0f, 0.0f, true);
}
TEST(DecodeAttentionEmulated, SinksBf16) {
  check(150, 1, 128, 2, 1, true, 1, 0, 0, 0.0f, 0.0f, true);
}

// Grouped-query attention: 4 query heads over 2 key/value heads and over one (multi-query),
// from the compact cache.
TEST(DecodeAttentionEmulated, GroupedQueryManyKeysFp32) { check(150, 1, 128, 4, 2, false); }
TEST(DecodeAttentionEmulated, GroupedQueryManyKeysBf16) { check(150, 1, 128, 4, 2, true); }

// A sliding window (model.sliding_window): rows whose window starts past key 0, beside rows it
// does not yet cut (the prompt's first ones), several sequences, grouped-query heads.
TEST(DecodeAttentionEmulated, SlidingWindowFp32) { check(140, 3, 128, 4, 2, false, 2, 150, 50); }
TEST(DecodeAttentionEmulated, SlidingWindowWholePromptBf16) {
  check(0, 40, 64, 2, 1, true, 1, 0, 7);
}
TEST(DecodeAttentionEmulated, MultiQueryHeadDim64Bf16) { check(5, 3, 256, 4, 1, true); }
TEST(DecodeAttentionEmulated, GroupedQueryWholePromptHeadDim32) { check(0, 4, 192, 6, 3, false); }
TEST(DecodeAttentionEmulated, GroupedQuerySequencesApartFp32) {
  check(20, 2, 128, 4, 2, false, 3, 30);
}
TEST(DecodeAttentionEmulated, MultiQuerySequencesApartBf16) { check(9, 1, 128, 2, 1, true, 2, 16); }

}  // namespace
}  // namespace triad
