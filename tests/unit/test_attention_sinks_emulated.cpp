// The attention sinks' block programs (src/kernels/cuda/attention_sinks_block.h: what the CUDA
// backend runs after its bf16 flash kernels), through the SIMT emulator. The attention without
// sinks comes from the CPU backend's bf16 op (as the flash kernels' out and lse would); the
// programs' correction of it is held against causal attention with sinks in double written here
// and against the CPU backend's bf16 op given the sinks (which has them in its softmax), and
// their gradient of the sinks against central differences of the double reference and against
// the CPU backend's. Whole sequences and a query range (context parallelism), grouped-query
// heads, a sink below and one above the scores. Needs no GPU.
#include <gtest/gtest.h>

#include <cmath>
#include <memory>
#include <vector>

#include "../../src/kernels/cuda/attention_sinks_block.h"
#include "../support/simt_emulator.h"
#include "../support/strided_launch.h"
#include "triad/core/bf16.h"
#include "triad/kernels/backend.h"

namespace triad {
namespace {

using testing::kStride;
using testing::launch_strided;
constexpr int kThreads = testing::kStridedThreads;

struct Shape {
  int B, T, C, NH, NKV;
  QueryRows rows;
  int n() const { return rows.rows(T); }
  int q0() const { return rows.whole(T) ? 0 : rows.first; }
};

// Rows q0 .. q0+n-1 of causal attention with sinks z in double: out [B, n, C] and lse [B, NH, n]
// (ln of the denominator, the sink's term in it), query head h reading key/value head h % NKV.
void reference(const Shape& s, const std::vector<double>& qkv, const std::vector<double>& z,
               std::vector<double>& out, std::vector<double>& lse) {
  const int hd = s.C / s.NH, n = s.n();
  const size_t W = size_t(qkv_width(s.C, s.NH, s.NKV));
  out.assign(size_t(s.B) * n * s.C, 0.0);
  lse.assign(size_t(s.B) * s.NH * n, 0.0);
  for (int b = 0; b < s.B; ++b)
    for (int h = 0; h < s.NH; ++h)
      for (int r = 0; r < n; ++r) {
        const int i = s.q0() + r;
        const double* q = &qkv[(size_t(b) * s.T + i) * W + size_t(h) * hd];
        std::vector<double> e(size_t(i) + 1);
        double mx = z[size_t(h)];
        for (int j = 0; j <= i; ++j) {
          const double* k = &qkv[(size_t(b) * s.T + j) * W + s.C + size_t(h % s.NKV) * hd];
          double dot = 0;
          for (int d = 0; d < hd; ++d) dot += q[d] * k[d];
          e[size_t(j)] = dot / std::sqrt(double(hd));
          mx = std::max(mx, e[size_t(j)]);
        }
        double sum = std::exp(z[size_t(h)] - mx);
        for (double& v : e) sum += (v = std::exp(v - mx));
        lse[(size_t(b) * s.NH + h) * n + r] = mx + std::log(sum);
        for (int j = 0; j <= i; ++j) {
          const double* v = &qkv[(size_t(b) * s.T + j) * W + s.C + size_t(s.NKV + h % s.NKV) * hd];
          for (int d = 0; d < hd; ++d)
            out[(size_t(b) * n + r) * s.C + size_t(h) * hd + d] += e[size_t(j)] / sum * v[d];
        }
      }
}

void check(const Shape& s) {
  SCOPED_TRACE(::testing::Message()
               << "B=" << s.B << " T=" << s.T << " C=" << s.C << " NH=" << s.NH << " NKV=" << s.NKV
               << " rows " << s.rows.first << " + " << s.rows.count);
  const int n = s.n();
  const size_t nqkv = size_t(s.B) * s.T * qkv_width(s.C, s.NH, s.NKV);
  const size_t nout = size_t(s.B) * n * s.C, nlse = size_t(s.B) * s.NH * n;
  simt::Bf16Buffer qkv = simt::random_bf16_buffer(nqkv, 11, -2.0f, 2.0f);
  simt::Bf16Buffer dout = simt::random_bf16_buffer(nout, 12, -1.0f, 1.0f);
  std::vector<bf16_t> z(size_t(s.NH));
  std::vector<double> zd(size_t(s.NH));
  for (int h = 0; h < s.NH; ++h) {  // −1.5, then sinks above the scores (a few units)
    z[size_t(h)] = to_bf16(h == 0 ? -1.5f : 2.0f + float(h));
    zd[size_t(h)] = double(to_float(z[size_t(h)]));
  }
  const uint16_t* zb = &z[0].bits;
  auto* q = reinterpret_cast<const bf16_t*>(qkv.data());
  const std::unique_ptr<Backend> cpu = make_cpu_backend();

  // The attention without sinks, as a flash kernel leaves it, corrected by the block programs.
  simt::Bf16Buffer out(nout);
  std::vector<float> lse(nlse, NAN);
  cpu->attention_forward(reinterpret_cast<bf16_t*>(out.data()), lse.data(), q, s.B, s.T, s.C, s.NH,
                         s.NKV, nullptr, s.rows);
  launch_strided([&](simt::Thread& x) {
    attention_sinks_block::scale_outputs(x, out.data(), lse.data(), zb, n, s.C, s.NH, nout,
                                         kThreads, kStride);
  });
  launch_strided([&](simt::Thread& x) {
    attention_sinks_block::add_sinks_to_lse(x, lse.data(), zb, n, s.NH, nlse, kThreads, kStride);
  });
  // The CPU backend with the sinks in its softmax, and the double reference.
  std::vector<bf16_t> cpu_out(nout);
  std::vector<float> cpu_lse(nlse, NAN);
  cpu->attention_forward(cpu_out.data(), cpu_lse.data(), q, s.B, s.T, s.C, s.NH, s.NKV, nullptr,
                         s.rows, 0.0f, 0.0f, {}, z.data());
  std::vector<double> values(nqkv), want_out, want_lse;
  for (size_t i = 0; i < nqkv; ++i) values[i] = qkv.at(i);
  reference(s, values, zd, want_out, want_lse);
  double out_err = 0, cpu_err = 0, lse_err = 0;
  for (size_t i = 0; i < nout; ++i) {
    const double got = out.at(i);
    out_err = std::max(out_err, std::abs(got - want_out[i]) / (std::abs(want_out[i]) + 1e-2));
    cpu_err =
        std::max(cpu_err, std::abs(got - to_float(cpu_out[i])) / (std::abs(want_out[i]) + 1e-2));
  }
  for (size_t i = 0; i < nlse; ++i) {
    lse_err = std::max(lse_err, std::abs(lse[i] - want_lse[i]));
    ASSERT_NEAR(lse[i], cpu_lse[i], 1e-5) << "lse " << i << " against the CPU backend";
  }
  EXPECT_LE(out_err, 2e-2) << "out against the reference (bf16: rounded twice)";
  EXPECT_LE(cpu_err, 2e-2) << "out against the CPU backend";
  EXPECT_LE(lse_err, 1e-4) << "lse against the reference";

  // The sinks' gradient from (out', lse') and dout, accumulated onto 0.25.
  std::vector<float> terms(nlse, NAN), dsinks(size_t(s.NH), 0.25f);
  launch_strided([&](simt::Thread& x) {
    attention_sinks_block::row_terms(x, terms.data(), out.data(), dout.data(), lse.data(), zb, n,
                                     s.C, s.NH, nlse, kThreads, kStride);
  });
  simt::launch(s.NH, 1, attention_sinks_block::kReduceThreads, attention_sinks_block::reduce_smem(),
               simt::CopyTiming::at_issue, [&](simt::Thread& x) {
                 attention_sinks_block::reduce_terms(x, dsinks.data(), terms.data(), s.B, n, s.NH);
               });
  // Central differences of Σ dout·out in double, and the CPU backend's gradient.
  std::vector<double> dd(nout);
  for (size_t i = 0; i < nout; ++i) dd[i] = dout.at(i);
  auto loss = [&](const std::vector<double>& zz) {
    std::vector<double> o, l;
    reference(s, values, zz, o, l);
    double sum = 0;
    for (size_t i = 0; i < nout; ++i) sum += o[i] * dd[i];
    return sum;
  };
  std::vector<bf16_t> dqkv(nqkv);
  std::vector<float> cpu_dsinks(size_t(s.NH), 0.25f);
  cpu->attention_backward(dqkv.data(), reinterpret_cast<const bf16_t*>(dout.data()), q,
                          cpu_out.data(), cpu_lse.data(), s.B, s.T, s.C, s.NH, s.NKV,
                          GradMode::overwrite, nullptr, s.rows, 0.0f, 0.0f, {}, z.data(),
                          cpu_dsinks.data());
  for (int h = 0; h < s.NH; ++h) {
    std::vector<double> up = zd, down = zd;
    up[size_t(h)] += 1e-4;
    down[size_t(h)] -= 1e-4;
    const double want = 0.25 + (loss(up) - loss(down)) / 2e-4;
    const double scale = std::abs(want - 0.25) + 1.0;
    EXPECT_NEAR(dsinks[size_t(h)], want, 2e-2 * scale)
        << "dsinks " << h << " against the reference";
    EXPECT_NEAR(cpu_dsinks[size_t(h)], want, 2e-2 * scale) << "the CPU backend's dsinks " << h;
  }
}

TEST(AttentionSinksEmulated, WholeSequences) { check({2, 70, 128, 2, 2, {}}); }
TEST(AttentionSinksEmulated, GroupedQueryHeads) { check({1, 40, 256, 4, 2, {}}); }
TEST(AttentionSinksEmulated, QueryRange) { check({2, 70, 128, 2, 1, QueryRows{64, 6}}); }

}  // namespace
}  // namespace triad
