// Generation with a cache of keys and values (Backend::attention_decode, Gpt::decode_logits) on
// the CPU backend:
//  - attention_decode's rows equal the same rows of attention_forward over the whole sequence
//    and a plain double-precision reference, in fp32 and bf16, for one new row and for several;
//  - decode_logits, fed a sequence one token longer each call (as sampling does) and then
//    sliding past seq_len, gives next_token_logits' logits to fp32 rounding, in fp32 and bf16,
//    with and without GELU recomputation, and with a sliding attention window
//    (model.sliding_window: attention_decode's window against the forward pass's mask) or
//    another attention scale (model.attn_scale), and
//    computes only the new token while the prefix is kept (decoded_tokens());
//  - full recomputation (no per-layer keys to keep), another prefix, a training step and
//    params_updated() all drop the cache and still give the right logits;
//  - sequence_losses (multiple-choice scoring) gives the logits' cross-entropy, reusing the
//    longest prefix shared with the previous call;
//  - with model.logit_softcap (and μP's multiplier), next_token_logits, decode_logits and
//    sequence_losses see the plain model's logits scaled and capped.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "triad/core/error.h"
#include "triad/kernels/backend.h"
#include "triad/model/gpt.h"

namespace triad {
namespace {

// max |a − b| / max |b|
double rel(const float* a, const float* b, size_t n) {
  double d = 0, m = 0;
  for (size_t i = 0; i < n; ++i) {
    d = std::max(d, std::abs(double(a[i]) - b[i]));
    m = std::max(m, std::abs(double(b[i])));
  }
  return d / m;
}

// Rows p .. p+n-1 of causal attention over qkv [L, W] (NKV key/value heads, query head h
// reading head h % NKV), in double.
std::vector<double> reference_rows(const std::vector<float>& qkv, int p, int n, int C, int NH,
                                   int NKV) {
  const int hd = C / NH;
  const size_t W = size_t(C) + 2 * size_t(NKV) * hd, k0 = size_t(C) + size_t(NKV) * hd;
  std::vector<double> out(size_t(n) * C);
  for (int h = 0; h < NH; ++h)
    for (int r = 0; r < n; ++r) {
      const int i = p + r;
      std::vector<double> s(size_t(i) + 1);
      double mx = -1e300;
      for (int j = 0; j <= i; ++j) {
        double dot = 0;
        for (int d = 0; d < hd; ++d)
          dot +=
              double(qkv[size_t(i) * W + h * hd + d]) * qkv[size_t(j) * W + C + (h % NKV) * hd + d];
        s[size_t(j)] = dot / std::sqrt(double(hd));
        mx = std::max(mx, s[size_t(j)]);
      }
      double z = 0;
      for (auto& v : s) z += (v = std::exp(v - mx));
      for (int d = 0; d < hd; ++d) {
        double acc = 0;
        for (int j = 0; j <= i; ++j)
          acc += s[size_t(j)] * qkv[size_t(j) * W + k0 + (h % NKV) * hd + d];
        out[size_t(r) * C + h * hd + d] = acc / z;
      }
    }
  return out;
}

// NKV key/value heads: 3 of 3 (GPT-2's attention), 2 of 4 (grouped-query), 1 of 4 (multi-query).
class AttentionDecode : public ::testing::TestWithParam<std::pair<int, int>> {};
INSTANTIATE_TEST_SUITE_P(Heads, AttentionDecode,
                         ::testing::Values(std::pair{3, 3}, std::pair{4, 2}, std::pair{4, 1}));

TEST_P(AttentionDecode, RowsEqualTheWholeSequenceForward) {
  auto be = make_cpu_backend();
  const auto [NH, NKV] = GetParam();
  const int C = 96, L = 70;  // keys across two of the forward's 64-row blocks
  std::mt19937 gen(3);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> qkv(size_t(L) * qkv_width(C, NH, NKV));
  for (auto& v : qkv) v = nd(gen);
  std::vector<float> whole(size_t(L) * C), att(size_t(NH) * L * L);
  be->attention_forward(whole.data(), att.data(), qkv.data(), 1, L, C, NH, NKV);
  for (auto [p, n] : {std::pair{0, 1}, {0, L}, {69, 1}, {40, 30}, {63, 2}}) {
    SCOPED_TRACE(::testing::Message() << "p=" << p << " n=" << n);
    std::vector<float> out(size_t(n) * C, NAN);
    be->attention_decode(out.data(), qkv.data(), 1, L, p, n, C, NH, NKV);
    EXPECT_LE(rel(out.data(), whole.data() + size_t(p) * C, out.size()), 1e-6);
    const std::vector<double> ref = reference_rows(qkv, p, n, C, NH, NKV);
    std::vector<float> reff(ref.begin(), ref.end());
    EXPECT_LE(rel(out.data(), reff.data(), out.size()), 1e-5);
    // bf16: the same from the rounded qkv, out rounded once.
    std::vector<bf16_t> qb(qkv.size()), ob(out.size());
    for (size_t i = 0; i < qkv.size(); ++i) qb[i] = to_bf16(qkv[i]);
    std::vector<float> qr(qkv.size());
    for (size_t i = 0; i < qkv.size(); ++i) qr[i] = to_float(qb[i]);
    be->attention_decode(ob.data(), qb.data(), 1, L, p, n, C, NH, NKV);
    const std::vector<double> refb = reference_rows(qr, p, n, C, NH, NKV);
    double worst = 0;
    for (size_t i = 0; i < ob.size(); ++i)
      worst = std::max(worst, std::abs(to_float(ob[i]) - refb[i]) / (std::abs(refb[i]) + 1e-2));
    EXPECT_LE(worst, 1e-2);
  }
}

// Soft-capped scores (model.attn_softcap): decoding's rows equal the capped forward's, which
// the cap changes (scores of about ±1 here against a cap of 0.5); fp32 and bf16.
TEST(AttentionDecodeSoftCap, RowsEqualTheCappedWholeSequenceForward) {
  auto be = make_cpu_backend();
  const int NH = 4, NKV = 2, C = 96, L = 70;
  const float cap = 0.5f;
  std::mt19937 gen(5);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> qkv(size_t(L) * qkv_width(C, NH, NKV));
  for (auto& v : qkv) v = nd(gen);
  std::vector<float> whole(size_t(L) * C), plain(whole.size()), att(size_t(NH) * L * L);
  be->attention_forward(whole.data(), att.data(), qkv.data(), 1, L, C, NH, NKV, nullptr, {}, 0.0f,
                        cap);
  be->attention_forward(plain.data(), att.data(), qkv.data(), 1, L, C, NH, NKV);
  EXPECT_GT(rel(whole.data(), plain.data(), whole.size()), 1e-2);
  for (auto [p, n] : {std::pair{0, L}, {69, 1}, {40, 30}}) {
    SCOPED_TRACE(::testing::Message() << "p=" << p << " n=" << n);
    std::vector<float> out(size_t(n) * C, NAN);
    be->attention_decode(out.data(), qkv.data(), 1, L, p, n, C, NH, NKV, 0, 0.0f, cap);
    EXPECT_LE(rel(out.data(), whole.data() + size_t(p) * C, out.size()), 1e-6);
    std::vector<bf16_t> qb(qkv.size()), ob(out.size());
    for (size_t i = 0; i < qkv.size(); ++i) qb[i] = to_bf16(qkv[i]);
    be->attention_decode(ob.data(), qb.data(), 1, L, p, n, C, NH, NKV, 0, 0.0f, cap);
    std::vector<float> of(ob.size());
    for (size_t i = 0; i < ob.size(); ++i) of[i] = to_float(ob[i]);
    EXPECT_LE(rel(of.data(), whole.data() + size_t(p) * C, of.size()), 2e-2);
  }
}

const GptShape kShape{3, 4, 64, 24, 200, 256};

std::vector<int32_t> tokens(int n, int salt) {
  std::vector<int32_t> t(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) t[size_t(i)] = (i * 37 + 11 + salt) % kShape.vocab_size;
  return t;
}

struct DecodeCase {
  Precision precision;
  Recompute recompute;
  int window = 0;             // model.sliding_window
  int full_every = 0;         // model.full_attention_every
  float attn_scale = 0.0f;    // model.attn_scale
  float attn_softcap = 0.0f;  // model.attn_softcap
  bool full_first = false;    // model.full_attention_first
  bool sinks = false;         // model.attn_sinks
  bool inference = false;     // a model for inference (its windowed layers keep rings)
};

class Decode : public ::testing::TestWithParam<DecodeCase> {};

TEST_P(Decode, FollowsTheRecomputedLogitsOneTokenAtATime) {
  auto be = make_cpu_backend();
  const DecodeCase c = GetParam();
  GptShape shape = kShape;
  shape.sliding_window = c.window;
  shape.full_attention_every = c.full_every;
  shape.full_attention_first = c.full_first;
  shape.attn_scale = c.attn_scale;
  shape.attn_softcap = c.attn_softcap;
  shape.attn_sinks = c.sinks;
  ActivationOptions options(c.recompute);
  options.inference = c.inference;
  Gpt m(shape, 2, *be, 1, {}, nullptr, c.precision, options);
  m.init(7);
  const int V = kShape.vocab_size, T = kShape.seq_len;
  const std::vector<int32_t> seq = tokens(T + 6, 0);
  const double tol = c.precision == Precision::fp32 ? 1e-5 : 2e-2;
  const bool keeps = c.inference || c.recompute != Recompute::full;
  Gpt ref(shape, 2, *be, 1, {}, nullptr, c.precision, c.recompute);
  ref.init(7);
  m.forget_decoded();
  // A prompt of 5 tokens, then one more each call up to seq_len, then a sliding window.
  for (int end = 5; end <= T + 6; ++end) {
    SCOPED_TRACE(::testing::Message() << "tokens 0.." << end);
    const int len = std::min(end, T);
    const int32_t* ctx = seq.data() + (end - len);
    const float* got = m.decode_logits(ctx, len);
    const std::vector<float> g(got, got + V);
    EXPECT_EQ(m.decoded_tokens(), keeps ? len : 0);
    // After the prompt, one token's layers while the context grows; the whole window once it
    // slides (or everything, where nothing is kept).
    EXPECT_EQ(m.last_decoded_rows(), keeps && end > 5 && end <= T ? 1 : len);
    // next_token_logits runs a forward pass, which would drop m's cache: the reference is a
    // second model with the same weights.
    const float* want = ref.next_token_logits(ctx, len);
    EXPECT_LE(rel(g.data(), want, size_t(V)), tol);
  }
}

INSTANTIATE_TEST_SUITE_P(
    Cpu, Decode,
    ::testing::Values(
        DecodeCase{Precision::fp32, Recompute::none}, DecodeCase{Precision::bf16, Recompute::none},
        DecodeCase{Precision::fp32, Recompute::gelu}, DecodeCase{Precision::fp32, Recompute::full},
        DecodeCase{Precision::fp32, Recompute::none, 7},
        DecodeCase{Precision::bf16, Recompute::none, 7},
        DecodeCase{Precision::fp32, Recompute::none, 7, 2},
        DecodeCase{Precision::fp32, Recompute::none, 0, 0, 0.0625f},
        DecodeCase{Precision::bf16, Recompute::none, 0, 0, 0.0625f},
        DecodeCase{Precision::fp32, Recompute::none, 7, 2, 0.0f, 0.05f},
        DecodeCase{Precision::bf16, Recompute::none, 0, 0, 0.0f, 0.05f},
        // GPT-Neo's: the first of each two layers global, unscaled scores
        DecodeCase{Precision::fp32, Recompute::none, 7, 2, 1.0f, 0.0f, true},
        // gpt-oss's: attention sinks, windowed layers beside global ones
        DecodeCase{Precision::fp32, Recompute::none, 7, 2, 0.0f, 0.0f, false, true},
        DecodeCase{Precision::bf16, Recompute::none, 7, 2, 0.0f, 0.0f, false, true},
        // for inference: the windowed layers' rings of 14 of the 24 positions
        DecodeCase{Precision::fp32, Recompute::none, 7, 0, 0.0f, 0.0f, false, false, true},
        DecodeCase{Precision::bf16, Recompute::none, 7, 0, 0.0f, 0.0f, false, false, true},
        DecodeCase{Precision::fp32, Recompute::none, 7, 2, 0.0f, 0.05f, true, true, true},
        DecodeCase{Precision::bf16, Recompute::none, 7, 2, 0.0f, 0.0f, false, true, true}),
    [](const auto& info) {
      return std::string(precision_name(info.param.precision)) + "_" +
             recompute_name(info.param.recompute) + (info.param.window ? "_window" : "") +
             (info.param.full_every ? "_interleaved" : "") +
             (info.param.full_first ? "_first" : "") +
             (info.param.attn_scale > 0 ? "_scaled" : "") +
             (info.param.attn_softcap > 0 ? "_capped" : "") + (info.param.sinks ? "_sinks" : "") +
             (info.param.inference ? "_inference" : "");
    });

TEST(Decode, OtherUsesOfTheModelDropTheCache) {
  auto be = make_cpu_backend();
  Gpt m(kShape, 2, *be);
  m.init(7);
  Gpt ref(kShape, 2, *be);
  ref.init(7);
  const int V = kShape.vocab_size;
  const std::vector<int32_t> seq = tokens(kShape.seq_len, 1);
  auto check = [&](int len, int expect_rows) {
    const float* got = m.decode_logits(seq.data(), len);
    std::vector<float> g(got, got + V);
    const float* want = ref.next_token_logits(seq.data(), len);
    EXPECT_LE(rel(g.data(), want, size_t(V)), 1e-5) << "len " << len;
    EXPECT_EQ(m.decoded_tokens(), len);
    EXPECT_EQ(m.last_decoded_rows(), expect_rows) << "len " << len;
  };
  check(6, 6);
  check(7, 1);  // the kept 6 and one new token
  // A training step's forward pass overwrites the kept rows.
  const std::vector<int32_t> in = tokens(2 * kShape.seq_len, 5), tg = tokens(2 * kShape.seq_len, 9);
  m.zero_grads();
  m.forward_backward(in.data(), tg.data(), 2, 1e-3f);
  EXPECT_EQ(m.decoded_tokens(), 0);
  check(8, 8);
  // Another prefix: computed whole.
  const std::vector<int32_t> other = tokens(8, 3);
  const float* got = m.decode_logits(other.data(), 8);
  std::vector<float> g(got, got + V);
  EXPECT_LE(rel(g.data(), ref.next_token_logits(other.data(), 8), size_t(V)), 1e-5);
  // New weights: the cache is dropped, the logits are the new model's.
  for (size_t i = 0; i < m.num_floats(); ++i) m.params()[i] *= 1.01f;
  m.params_updated();
  EXPECT_EQ(m.decoded_tokens(), 0);
  for (size_t i = 0; i < ref.num_floats(); ++i) ref.params()[i] *= 1.01f;
  ref.params_updated();
  check(9, 9);
  check(10, 1);
  m.forget_decoded();
  EXPECT_EQ(m.decoded_tokens(), 0);
}

// Each sequence's `len` tokens before position `end`, one sequence after another ([B, len]).
std::vector<int32_t> windows(const std::vector<std::vector<int32_t>>& seqs, int end, int len) {
  std::vector<int32_t> out;
  for (const auto& q : seqs) out.insert(out.end(), q.begin() + (end - len), q.begin() + end);
  return out;
}

// Several sequences decoded in lockstep (decode_logits with B > 1): each sequence's logits are
// its own next_token_logits, through the prompt, one token at a time and past the context, for
// the training model and the one for inference, fp32 and bf16; after the prompt a call runs one
// row per sequence.
TEST(Decode, SequencesInLockstepFollowTheirOwnLogits) {
  const int V = kShape.vocab_size, T = kShape.seq_len, B = 3;
  for (Precision precision : {Precision::fp32, Precision::bf16})
    for (bool inference : {false, true}) {
      SCOPED_TRACE(::testing::Message()
                   << precision_name(precision) << (inference ? " inference" : " training"));
      auto be = make_cpu_backend();
      ActivationOptions options;
      options.inference = inference;
      Gpt m(kShape, B, *be, 1, {}, nullptr, precision, options);
      m.init(7);
      Gpt ref(kShape, 1, *be, 1, {}, nullptr, precision);
      ref.init(7);
      const double tol = precision == Precision::fp32 ? 1e-5 : 2e-2;
      std::vector<std::vector<int32_t>> seqs;
      for (int b = 0; b < B; ++b) seqs.push_back(tokens(T + 4, 13 * b));
      for (int end = 5; end <= T + 4; ++end) {
        const int len = std::min(end, T);
        const std::vector<int32_t> window = windows(seqs, end, len);
        const float* got = m.decode_logits(window.data(), B, len);
        const std::vector<float> g(got, got + size_t(B) * V);
        EXPECT_EQ(m.decoded_tokens(), len);
        EXPECT_EQ(m.last_decoded_rows(), B * (end > 5 && end <= T ? 1 : len)) << end;
        for (int b = 0; b < B; ++b) {
          const float* want = ref.next_token_logits(window.data() + size_t(b) * len, len);
          EXPECT_LE(rel(g.data() + size_t(b) * V, want, size_t(V)), tol)
              << "sequence " << b << " end " << end;
        }
      }
      // One sequence again after three: the cache of three is not one's.
      const float* one = m.decode_logits(seqs[1].data(), 1, 6);
      const std::vector<float> o(one, one + V);
      EXPECT_EQ(m.last_decoded_rows(), 6);
      EXPECT_LE(rel(o.data(), ref.next_token_logits(seqs[1].data(), 6), size_t(V)), tol);
    }
}

// Gpt::sequence_losses (multiple-choice scoring): each asked-for position's cross-entropy equals
// −log softmax of next_token_logits' logits at that position (double on the host), for several
// sequences at once, fresh, after the context was decoded (only the asked-for rows run), and
// after a call sharing a shorter prefix (the rows after it run), on training and inference
// models and under full recomputation (everything runs).
TEST(Decode, SequenceLossesAreTheLogitsCrossEntropy) {
  const int V = kShape.vocab_size, B = 2, len = 14, last = 5;
  for (int variant = 0; variant < 3; ++variant) {
    SCOPED_TRACE(::testing::Message() << "variant " << variant);
    auto be = make_cpu_backend();
    ActivationOptions options(variant == 2 ? Recompute::full : Recompute::none);
    options.inference = variant == 1;
    Gpt m(kShape, B, *be, 1, {}, nullptr, Precision::fp32, options);
    m.init(5);
    Gpt ref(kShape, 1, *be, 1, {}, nullptr, Precision::fp32);
    ref.init(5);
    std::vector<int32_t> seqs, targets;
    for (int b = 0; b < B; ++b) {
      const std::vector<int32_t> t = tokens(len + 1, 29 * b);
      seqs.insert(seqs.end(), t.begin(), t.begin() + len);
      for (int j = 0; j < last; ++j) targets.push_back((t[size_t(len - last + j)] * 7 + 3) % V);
    }
    const auto check = [&](int rows_run) {
      const float* got = m.sequence_losses(seqs.data(), B, len, last, targets.data());
      const std::vector<float> g(got, got + size_t(B) * last);
      EXPECT_EQ(m.last_decoded_rows(), B * (variant == 2 ? len : rows_run));
      for (int b = 0; b < B; ++b)
        for (int j = 0; j < last; ++j) {
          const int upto = len - last + j + 1;
          const float* l = ref.next_token_logits(seqs.data() + size_t(b) * len, upto);
          double mx = -1e300, z = 0;
          for (int v = 0; v < V; ++v) mx = std::max(mx, double(l[v]));
          for (int v = 0; v < V; ++v) z += std::exp(double(l[v]) - mx);
          const double want = std::log(z) + mx - l[targets[size_t(b) * last + j]];
          EXPECT_NEAR(g[size_t(b) * last + j], want, 1e-5 * want) << "b " << b << " j " << j;
        }
    };
    check(len);  // nothing kept yet
    m.forget_decoded();
    std::vector<int32_t> ctx;
    for (int b = 0; b < B; ++b)
      ctx.insert(ctx.end(), seqs.begin() + ptrdiff_t(b) * len,
                 seqs.begin() + ptrdiff_t(b) * len + 9);
    m.decode_logits(ctx.data(), B, 9);
    check(last);  // the context kept: only the 5 asked-for rows (9 − 1 of them kept)
    // Another call whose sequences agree with the last one's up to position 4 only.
    for (int b = 0; b < B; ++b) seqs[size_t(b) * len + 4] = (seqs[size_t(b) * len + 4] + 1) % V;
    check(len - 4);
    // Not cached (the batched multiple-choice way): every position of both sequences runs.
    const float* got = m.sequence_losses(seqs.data(), B, len, last, targets.data(), false);
    const std::vector<float> g(got, got + size_t(B) * last);
    EXPECT_EQ(m.last_decoded_rows(), 0);
    EXPECT_EQ(m.decoded_tokens(), 0);  // and the cache dropped
    const float* again = m.sequence_losses(seqs.data(), B, len, last, targets.data());
    for (size_t i = 0; i < g.size(); ++i) EXPECT_NEAR(g[i], again[i], 1e-5 * std::abs(again[i]));
  }
}

// model.logit_softcap = c under μP's multiplier 1/m: every way of reading the head gives
// c·tanh(l / (m·c)) of the same weights' plain logits l (c at the largest l/m, where tanh bends
// them by a quarter), and the scores are those logits' cross-entropy.
TEST(Decode, SoftcappedLogitsAreTheCappedHead) {
  auto be = make_cpu_backend();
  const int V = kShape.vocab_size, len = 12;
  const std::vector<int32_t> seq = tokens(len + 1, 3);
  Gpt plain(kShape, 1, *be);
  plain.init(9);
  const float* p = plain.next_token_logits(seq.data(), len);
  const std::vector<float> l(p, p + V);
  double c = 0;
  for (float v : l) c = std::max(c, std::abs(double(v)) / 2);
  // Under μP with m = 2 too (the logits halved before the cap), with the usual attention scale
  // kept (model.attn_scale) and the same weights, so that only the head's output changes.
  GptShape shape = kShape;
  shape.logit_softcap = float(c);
  shape.mup_base_width = kShape.n_embd / 2;
  shape.attn_scale = float(1.0 / std::sqrt(double(kShape.hd())));
  Gpt capped(shape, 1, *be);
  capped.set_params(plain.params());
  std::vector<double> want(static_cast<size_t>(V), 0.0);
  for (int v = 0; v < V; ++v) want[size_t(v)] = c * std::tanh(double(l[size_t(v)]) / 2 / c);
  auto expect_capped = [&](const float* got, const char* what) {
    double worst = 0;
    for (int v = 0; v < V; ++v) worst = std::max(worst, std::abs(got[v] - want[size_t(v)]) / c);
    EXPECT_LE(worst, 1e-5) << what;
  };
  expect_capped(capped.next_token_logits(seq.data(), len), "next_token_logits");
  capped.forget_decoded();
  capped.decode_logits(seq.data(), len - 1);
  expect_capped(capped.decode_logits(seq.data(), len), "decode_logits, one token on the cache");
  const int32_t target = seq[size_t(len)];
  double mx = -1e300, z = 0;
  for (double w : want) mx = std::max(mx, w);
  for (double w : want) z += std::exp(w - mx);
  const double ce = std::log(z) + mx - want[size_t(target)];
  EXPECT_NEAR(capped.sequence_losses(seq.data(), 1, len, 1, &target)[0], ce, 1e-5 * ce);
  // The cap changes the logits (the test can tell).
  double moved = 0;
  for (int v = 0; v < V; ++v) moved = std::max(moved, std::abs(l[size_t(v)] - want[size_t(v)]));
  EXPECT_GT(moved, 0.2 * c);
}

// A model for forward passes only (ActivationOptions::inference): the same logits, decoding and
// evaluation as the training model, its allocations exactly what memory_plan says (weights, the
// layers' q|k|v and one layer's scratch; no gradients), and training refused.
TEST(Decode, InferenceModelForwardsAsTheTrainingModel) {
  for (Precision precision : {Precision::fp32, Precision::bf16}) {
    SCOPED_TRACE(precision_name(precision));
    auto be_train = make_cpu_backend(), be = make_cpu_backend();
    Gpt train(kShape, 2, *be_train, 1, {}, nullptr, precision);
    train.init(7);
    ActivationOptions forward_only;
    forward_only.inference = true;
    forward_only.logits_chunk = 1;
    Gpt m(kShape, 2, *be, 1, {}, nullptr, precision, forward_only);
    const GptMemory plan = Gpt::memory_plan(kShape, 2, 1, {}, nullptr, precision, forward_only);
    EXPECT_EQ(be->allocated_bytes(), plan.total());
    EXPECT_EQ(plan.grads, 0u);
    EXPECT_EQ(m.grads(), nullptr);
    const GptMemory trained = Gpt::memory_plan(kShape, 2, 1, {}, nullptr, precision);
    EXPECT_LT(plan.activations * 2, trained.activations);  // 3 layers: one is the scratch
    m.init(7);
    const int V = kShape.vocab_size, T = kShape.seq_len;
    const double tol = precision == Precision::fp32 ? 1e-5 : 2e-2;
    const std::vector<int32_t> seq = tokens(T, 2);
    for (int len = 4; len <= T; ++len) {
      const float* got = m.decode_logits(seq.data(), len);
      const std::vector<float> g(got, got + V);
      EXPECT_EQ(m.last_decoded_rows(), len == 4 ? 4 : 1);
      EXPECT_LE(rel(g.data(), train.next_token_logits(seq.data(), len), size_t(V)), tol) << len;
    }
    const std::vector<int32_t> in = tokens(2 * T, 5), tg = tokens(2 * T, 9);
    const ForwardStats a = m.evaluate(in.data(), tg.data(), 2);
    const ForwardStats b = train.evaluate(in.data(), tg.data(), 2);
    EXPECT_NEAR(a.loss_sum, b.loss_sum, 1e-6 * std::abs(b.loss_sum));
    EXPECT_EQ(a.tokens, b.tokens);
    try {
      m.forward_backward(in.data(), tg.data(), 2, 1e-3f);
      ADD_FAILURE() << "a model for inference trained";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("cannot train"), std::string::npos) << e.what();
    }
  }
}

// A model for inference whose windowed layers (model.sliding_window = 5, layers 0 and 2 of 3)
// keep rings of 2·5 of the 24 positions (kv_ring_rows), for two sequences at once, in fp32 and
// bf16:
//  - it holds exactly the rows it needs: the same model with a window of 12 (no rings: 2·12 is the
//    context) plans 2 layers × 14 rows fewer per sequence and one window scratch of 24 rows more;
//  - decoding one token at a time, through the rings' wrapping and past the context, and
//    evaluating give the training model's logits and loss, each call after the prompt running one
//    row per sequence;
//  - scoring choices after a decoded context reuses the cache while the rings still hold the
//    window of the first new row (the previous call dropped up to W + 1 = 6 positions) and
//    recomputes everything when they do not.
TEST(Decode, RingsKeepTheWindowAndFollowTheTrainingModel) {
  GptShape shape = kShape, unringed = kShape;
  shape.sliding_window = 5;
  shape.full_attention_every = 2;
  unringed.sliding_window = 12;
  unringed.full_attention_every = 2;
  const int V = shape.vocab_size, T = shape.seq_len, B = 2;
  const size_t Wl = size_t(shape.qkv_rows());
  for (Precision precision : {Precision::fp32, Precision::bf16}) {
    SCOPED_TRACE(precision_name(precision));
    auto be = make_cpu_backend(), be_train = make_cpu_backend();
    ActivationOptions forward_only;
    forward_only.inference = true;
    Gpt m(shape, B, *be, 1, {}, nullptr, precision, forward_only);
    m.init(3);
    Gpt train(shape, B, *be_train, 1, {}, nullptr, precision);
    train.init(3);
    const size_t bytes = precision == Precision::fp32 ? 4 : 2;
    const GptMemory rings = Gpt::memory_plan(shape, B, 1, {}, nullptr, precision, forward_only);
    const GptMemory whole = Gpt::memory_plan(unringed, B, 1, {}, nullptr, precision, forward_only);
    EXPECT_EQ(whole.activations - rings.activations,
              (2 * B * size_t(T - 10) * Wl - B * size_t(T) * Wl) * bytes);
    EXPECT_EQ(be->allocated_bytes(), rings.total());
    const double tol = precision == Precision::fp32 ? 1e-5 : 2e-2;
    std::vector<std::vector<int32_t>> seqs;
    for (int b = 0; b < B; ++b) seqs.push_back(tokens(T + 4, 17 * b));
    for (int end = 3; end <= T + 4; ++end) {
      const int len = std::min(end, T);
      const std::vector<int32_t> window = windows(seqs, end, len);
      const float* got = m.decode_logits(window.data(), B, len);
      const std::vector<float> g(got, got + size_t(B) * V);
      EXPECT_EQ(m.last_decoded_rows(), B * (end > 3 && end <= T ? 1 : len)) << end;
      for (int b = 0; b < B; ++b)
        EXPECT_LE(rel(g.data() + size_t(b) * V,
                      train.next_token_logits(window.data() + size_t(b) * len, len), size_t(V)),
                  tol)
            << "sequence " << b << " end " << end;
    }
    const std::vector<int32_t> in = tokens(B * T, 5), tg = tokens(B * T, 9);
    const ForwardStats a = m.evaluate(in.data(), tg.data(), B);
    EXPECT_NEAR(a.loss_sum, train.evaluate(in.data(), tg.data(), B).loss_sum,
                (precision == Precision::fp32 ? 1e-6 : 1e-2) * std::abs(a.loss_sum));
    // Choices after a context of 9: a 14-token sequence's last 5 positions scored.
    const int len = 14, last = 5;
    std::vector<int32_t> seq, targets;
    for (int b = 0; b < B; ++b) {
      const std::vector<int32_t> t = tokens(len, 23 * b + 1);
      seq.insert(seq.end(), t.begin(), t.end());
      for (int j = 0; j < last; ++j) targets.push_back((t[size_t(len - last + j)] * 5 + 1) % V);
    }
    const auto score = [&](int rows_run) {
      const float* got = m.sequence_losses(seq.data(), B, len, last, targets.data());
      const std::vector<float> g(got, got + size_t(B) * last);
      EXPECT_EQ(m.last_decoded_rows(), B * rows_run);
      for (int b = 0; b < B; ++b)
        for (int j = 0; j < last; ++j) {
          const float* l =
              train.next_token_logits(seq.data() + size_t(b) * len, len - last + j + 1);
          double mx = -1e300, z = 0;
          for (int v = 0; v < V; ++v) mx = std::max(mx, double(l[v]));
          for (int v = 0; v < V; ++v) z += std::exp(double(l[v]) - mx);
          const double want = std::log(z) + mx - l[targets[size_t(b) * last + j]];
          EXPECT_NEAR(g[size_t(b) * last + j], want,
                      (precision == Precision::fp32 ? 1e-5 : 2e-2) * want)
              << "b " << b << " j " << j;
        }
    };
    std::vector<int32_t> ctx;
    for (int b = 0; b < B; ++b)
      ctx.insert(ctx.end(), seq.begin() + ptrdiff_t(b) * len, seq.begin() + ptrdiff_t(b) * len + 9);
    m.decode_logits(ctx.data(), B, 9);
    score(len - 9);  // the context kept
    // Another choice after the same context: the rings hold positions 4 .. 13, the first new
    // row (position 9) reads 5 .. 9.
    for (int b = 0; b < B; ++b) seq[size_t(b) * len + 9] = (seq[size_t(b) * len + 9] + 1) % V;
    score(len - 9);
    // One that shares 7 positions: 7 − 4 = 3 is no longer held, everything runs again.
    for (int b = 0; b < B; ++b) seq[size_t(b) * len + 7] = (seq[size_t(b) * len + 7] + 1) % V;
    score(len);
  }
}

}  // namespace
}  // namespace triad
