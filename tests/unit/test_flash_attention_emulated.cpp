// The flash-attention kernels' block programs (src/kernels/cuda/flash_attention_block.h), run on
// the CPU through the SIMT emulator (tests/support/simt_emulator.h: mma.m16n8k16, ldmatrix,
// cp.async and shuffles carried out from their PTX definitions), against a naive causal
// attention in double on the same bf16 inputs: out, lse, dq, dk, dv within the tolerance the
// GPU test uses (max|got − want| / max|want| <= 1e-2, lse within 1e-3), for partial tiles, one
// token, several tiles and both head dims, with cp.async copies landing at issue and only at
// their wait; both tile policies, the wgmma one also with its tiles loaded by bulk tensor copies
// on mbarriers (tma), and both backward ways (dQ in its own kernel, or added with atomics by the
// dK/dV kernel), and the attention dropout's variants. What this cannot show is the hardware's
// agreement with the PTX definitions; the GPU test (test_flash_attention) runs the same code on the
// device. Needs no GPU and no CUDA.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <type_traits>
#include <vector>

#include "../../src/kernels/cuda/flash_attention_block.h"
#include "../../src/kernels/cuda/flash_attention_mma.h"
#include "../../src/kernels/cuda/flash_attention_wgmma.h"
#include "../../src/kernels/cuda/flash_probe_block.h"
#include "../support/attention_reference.h"
#include "../support/simt_emulator.h"

namespace triad {
namespace {

using namespace attention_reference;
using simt::CopyTiming;

struct Outputs {
  Bits out, dqkv;
  std::vector<float> lse;
};

// The tile policies (mma.sync + ldmatrix, sm_80 on; wgmma from shared memory, sm_90a, its tiles
// loaded with cp.async or with bulk tensor copies) and the two backward ways (dQ in its own
// kernel; dQ added with atomics by the dK/dV kernel).
enum class Kernel { mma, wgmma, tma };
const char* kernel_name(Kernel k) {
  return k == Kernel::mma ? "mma" : k == Kernel::wgmma ? "wgmma" : "tma";
}
enum class Backward { deterministic, atomic, ordered };

// Whether run() computes dK and dV in two passes at every head dim (flash::split_dkdv: at 192
// only, as the GPU does): the passes' code is the same at each head dim and quicker to emulate
// at 64.
bool force_two_pass_dkdv = false;

// Forward then backward (D, dK/dV, dQ) exactly as flash_attention_kernels.cuh launches them, for
// the query rows `rows` of sequences of rows.seq rows (dout, out, lse: the range's rows). dqkv
// starts as `dqkv0` (accumulate) or NaN patterns (overwrite); so does the atomic way's accumulator
// (dot_block zeroes it).
template <class Tiles>
Outputs run(const Bits& qkv, const Bits& dout, int B, flash::Rows rows, int NH, int NKV,
            CopyTiming timing, Backward backward, const Bits* dqkv0, const int32_t* key_begin,
            float scale = 0.0f, float cap = 0.0f, const AttentionDropMask* drop = nullptr) {
  constexpr int HD = Tiles::kHD;
  const int C = NH * HD, W = C + 2 * NKV * HD, T = rows.seq, n = rows.count;
  Outputs r;
  r.out.assign(size_t(B) * n * C, 0xFFFFu);
  r.lse.assign(size_t(B) * NH * n, NAN);
  r.dqkv = dqkv0 ? *dqkv0 : Bits(size_t(B) * T * W, 0xFFFFu);
  std::vector<float> D(size_t(B) * NH * n, NAN);
  const flash::Launch l = flash::launch_shape(B, rows, NH, HD, NKV, scale, cap);
  const int threads = flash::kThreads;
  // The tensor maps flash_attention_kernels.cuh makes, for the tma policy.
  const simt::TensorMap qkv_map =
      simt::tensor_map(qkv.data(), flash::tma_tile_shape(uint64_t(W), T, B));
  const simt::TensorMap dout_map =
      simt::tensor_map(dout.data(), flash::tma_tile_shape(uint64_t(C), n, B));
  const void* qm = Tiles::kTma ? &qkv_map : nullptr;
  const void* dm = Tiles::kTma ? &dout_map : nullptr;
  simt::launch(
      l.blocks_x, l.blocks_y, threads, flash::forward_smem<Tiles>(), timing, [&](simt::Thread& x) {
        if (drop != nullptr)
          flash::forward_block<Tiles, true>(x, r.out.data(), r.lse.data(), qkv.data(), qm, rows, C,
                                            NH, NKV, l.scale_log2, key_begin, l.cap_log2, *drop);
        else
          flash::forward_block<Tiles>(x, r.out.data(), r.lse.data(), qkv.data(), qm, rows, C, NH,
                                      NKV, l.scale_log2, key_begin, l.cap_log2);
      });
  const bool acc = dqkv0 != nullptr;
  const bool atomic = backward != Backward::deterministic;
  const bool ordered = backward == Backward::ordered;
  std::vector<float> dq_accum(atomic ? size_t(B) * n * C : 0, NAN);
  // The ordered way's turns: garbage until dot_block zeroes them.
  std::vector<int> turns(size_t(B) * NH * l.blocks_y + 1, -7);  // and the ticket counter
  int* dq_turns = ordered ? turns.data() : nullptr;
  simt::launch(int(l.dot_blocks), 1, threads, 0, timing, [&](simt::Thread& x) {
    flash::dot_block<HD>(x, D.data(), atomic ? dq_accum.data() : nullptr, dq_turns, dout.data(),
                         r.out.data(), B, n, NH);
  });
  auto dkdv_pass = [&](auto atomic_dq, auto ordered_dq, auto pass) {
    constexpr bool kAtomic = decltype(atomic_dq)::value, kOrdered = decltype(ordered_dq)::value;
    constexpr flash::DkdvPass kPass = decltype(pass)::value;
    // The kernel with the mask's test compiled in where there is a mask, and the cap's where
    // there is a cap (with the mask's), as flash_attention_kernels.cuh chooses them; under dropout
    // the one with the mask's test and the dropout's.
    auto body = [&](simt::Thread& x) {
      if (drop != nullptr)
        flash::dkdv_block<Tiles, kAtomic, kOrdered, true, false, true, kPass>(
            x, r.dqkv.data(), dq_accum.data(), dq_turns, dout.data(), qkv.data(), qm, dm,
            r.lse.data(), D.data(), B, rows, C, NH, NKV, l.scale, l.scale_log2, acc, key_begin,
            l.cap_log2, *drop);
      else if (cap > 0.0f)
        flash::dkdv_block<Tiles, kAtomic, kOrdered, true, true, false, kPass>(
            x, r.dqkv.data(), dq_accum.data(), dq_turns, dout.data(), qkv.data(), qm, dm,
            r.lse.data(), D.data(), B, rows, C, NH, NKV, l.scale, l.scale_log2, acc, key_begin,
            l.cap_log2);
      else if (key_begin != nullptr)
        flash::dkdv_block<Tiles, kAtomic, kOrdered, true, false, false, kPass>(
            x, r.dqkv.data(), dq_accum.data(), dq_turns, dout.data(), qkv.data(), qm, dm,
            r.lse.data(), D.data(), B, rows, C, NH, NKV, l.scale, l.scale_log2, acc, key_begin,
            l.cap_log2);
      else
        flash::dkdv_block<Tiles, kAtomic, kOrdered, false, false, false, kPass>(
            x, r.dqkv.data(), dq_accum.data(), dq_turns, dout.data(), qkv.data(), qm, dm,
            r.lse.data(), D.data(), B, rows, C, NH, NKV, l.scale, l.scale_log2, acc, nullptr,
            l.cap_log2);
    };
    // The dQ additions of different blocks meet only when the blocks run at the same time.
    const size_t smem = drop != nullptr ? flash::dkdv_smem<Tiles, kAtomic, true>()
                                        : flash::dkdv_smem<Tiles, kAtomic>();
    if (atomic)
      simt::launch_concurrent(l.kv_blocks_x, l.key_blocks, threads, smem, timing, body);
    else
      simt::launch(l.kv_blocks_x, l.key_blocks, threads, smem, timing, body);
  };
  // In one pass, or in two (flash::split_dkdv, or forced): dV, then dK (and the dQ additions).
  auto dkdv = [&](auto atomic_dq, auto ordered_dq) {
    using Pass = flash::DkdvPass;
    if (flash::split_dkdv<Tiles>() || force_two_pass_dkdv) {
      dkdv_pass(std::false_type{}, std::false_type{}, std::integral_constant<Pass, Pass::dv>{});
      dkdv_pass(atomic_dq, ordered_dq, std::integral_constant<Pass, Pass::dk>{});
    } else {
      dkdv_pass(atomic_dq, ordered_dq, std::integral_constant<Pass, Pass::both>{});
    }
  };
  if (atomic) {
    if (ordered)
      dkdv(std::true_type{}, std::true_type{});
    else
      dkdv(std::true_type{}, std::false_type{});
    const size_t total = size_t(B) * n * C;
    const int blocks = int((total / 8 + flash::kConvertThreads - 1) / flash::kConvertThreads);
    simt::launch(blocks, 1, flash::kConvertThreads, 0, timing, [&](simt::Thread& x) {
      flash::dq_convert_block(x, r.dqkv.data(), dq_accum.data(), rows, total, C, W, l.scale, acc);
    });
  } else {
    dkdv(std::false_type{}, std::false_type{});
    simt::launch(
        l.blocks_x, l.blocks_y, threads, flash::dq_smem<Tiles>(), timing, [&](simt::Thread& x) {
          if (drop != nullptr)
            flash::dq_block<Tiles, false, true>(x, r.dqkv.data(), dout.data(), qkv.data(), qm, dm,
                                                r.lse.data(), D.data(), rows, C, NH, NKV, l.scale,
                                                l.scale_log2, acc, key_begin, 0.0f, *drop);
          else if (cap > 0.0f)
            flash::dq_block<Tiles, true>(x, r.dqkv.data(), dout.data(), qkv.data(), qm, dm,
                                         r.lse.data(), D.data(), rows, C, NH, NKV, l.scale,
                                         l.scale_log2, acc, key_begin, l.cap_log2);
          else
            flash::dq_block<Tiles>(x, r.dqkv.data(), dout.data(), qkv.data(), qm, dm, r.lse.data(),
                                   D.data(), rows, C, NH, NKV, l.scale, l.scale_log2, acc,
                                   key_begin);
        });
  }
  return r;
}

Outputs run_kernel(Kernel k, Backward bw, int hd, const Bits& qkv, const Bits& dout, int B, int T,
                   int NH, CopyTiming timing, const Bits* dqkv0 = nullptr,
                   const int32_t* key_begin = nullptr, flash::Rows rows = {0, 0, 0}, int NKV = 0,
                   float scale = 0.0f, float cap = 0.0f, const AttentionDropMask* drop = nullptr) {
  if (rows.seq == 0) rows = flash::Rows{T, 0, T};
  if (NKV == 0) NKV = NH;
  auto go = [&](auto tiles) {
    return run<decltype(tiles)>(qkv, dout, B, rows, NH, NKV, timing, bw, dqkv0, key_begin, scale,
                                cap, drop);
  };
  if (k == Kernel::mma)
    return hd == 64    ? go(flash::MmaTiles<64>{})
           : hd == 128 ? go(flash::MmaTiles<128>{})
                       : go(flash::MmaTiles<192>{});
  if (k == Kernel::tma)
    return hd == 64    ? go(flash::WgmmaTiles<64, true>{})
           : hd == 128 ? go(flash::WgmmaTiles<128, true>{})
                       : go(flash::WgmmaTiles<192, true>{});
  return hd == 64    ? go(flash::WgmmaTiles<64>{})
         : hd == 128 ? go(flash::WgmmaTiles<128>{})
                     : go(flash::WgmmaTiles<192>{});
}

// key_begin: a document mask ([B,T]), or none. scale: the scores' (0: 1/sqrt(hd)). cap: their
// soft cap (0: none).
void check(int B, int T, int NH, int hd, CopyTiming timing, Kernel kernel = Kernel::mma,
           Backward backward = Backward::deterministic,
           const std::vector<int32_t>* key_begin = nullptr, float scale = 0.0f, float cap = 0.0f,
           const AttentionDropMask* drop = nullptr) {
  const int C = NH * hd;
  SCOPED_TRACE(::testing::Message()
               << kernel_name(kernel)
               << (backward == Backward::atomic    ? " atomic dQ"
                   : backward == Backward::ordered ? " ordered dQ"
                                                   : "")
               << " B=" << B << " T=" << T << " NH=" << NH << " hd=" << hd
               << (timing == CopyTiming::at_wait ? " copies at wait" : " copies at issue")
               << (key_begin ? " documents" : "") << " scale " << scale << " cap " << cap
               << (drop ? " dropout" : ""));
  const Problem p = random_problem(B, T, C, NH, 4321u + T, 777u + T, key_begin, scale, cap, drop);
  const Reference& want = p.want;
  const Outputs got =
      run_kernel(kernel, backward, hd, p.qkv, p.dout, B, T, NH, timing, nullptr,
                 key_begin ? key_begin->data() : nullptr, {0, 0, 0}, 0, scale, cap, drop);

  const size_t rows = size_t(B) * T;
  EXPECT_LE(rel_error(got.out, want.out, rows, C, 0, C), 1e-2) << "out";
  double lse_err = 0.0;
  for (size_t i = 0; i < got.lse.size(); ++i) {
    const double e = std::abs(double(got.lse[i]) - want.lse[i]);
    lse_err = std::isfinite(e) ? std::max(lse_err, e) : INFINITY;
  }
  EXPECT_LE(lse_err, 1e-3) << "lse";
  EXPECT_LE(rel_error(got.dqkv, want.dqkv, rows, 3 * size_t(C), 0, C), 1e-2) << "dq";
  EXPECT_LE(rel_error(got.dqkv, want.dqkv, rows, 3 * size_t(C), C, C), 1e-2) << "dk";
  EXPECT_LE(rel_error(got.dqkv, want.dqkv, rows, 3 * size_t(C), 2 * size_t(C), C), 1e-2) << "dv";
}

TEST(FlashAttentionEmulated, SingleToken) { check(2, 1, 2, 64, CopyTiming::at_issue); }

TEST(FlashAttentionEmulated, PartialTileCopiesAtWait) { check(1, 77, 2, 64, CopyTiming::at_wait); }

TEST(FlashAttentionEmulated, ThreeTiles) { check(1, 150, 2, 64, CopyTiming::at_issue); }

TEST(FlashAttentionEmulated, ThreeTilesCopiesAtWait) { check(1, 150, 1, 64, CopyTiming::at_wait); }

TEST(FlashAttentionEmulated, HeadDim128) { check(1, 130, 1, 128, CopyTiming::at_wait); }

// model.attn_scale: μP's 1/hd (the scores 8 times smaller at hd 64) and a larger one, through
// the forward's exp2 scale and the backward's dS scale, both ways of forming dQ.
TEST(FlashAttentionEmulated, OtherScales) {
  check(1, 77, 2, 64, CopyTiming::at_issue, Kernel::mma, Backward::deterministic, nullptr,
        1.0f / 64);
  check(1, 77, 2, 64, CopyTiming::at_wait, Kernel::mma, Backward::atomic, nullptr, 0.3f);
  check(1, 77, 1, 64, CopyTiming::at_wait, Kernel::wgmma, Backward::deterministic, nullptr, 0.3f);
}

// model.attn_softcap: the scores capped at c·tanh(s/c) in the forward's online softmax and in
// the backward's recomputed probabilities, dS times the cap's derivative; a cap that bends the
// scores (the scaled scores reach about ±1 here, the cap is 0.5 or 0.25 with a larger scale),
// both ways of forming dQ, both tile policies, a document mask.
TEST(FlashAttentionEmulated, SoftCap) {
  check(1, 77, 2, 64, CopyTiming::at_issue, Kernel::mma, Backward::deterministic, nullptr, 0.0f,
        0.5f);
  check(1, 77, 2, 64, CopyTiming::at_wait, Kernel::mma, Backward::atomic, nullptr, 0.3f, 0.25f);
  const std::vector<int32_t> kb = key_begin_of_starts(1, 130, {{0, 40, 100}});
  check(1, 130, 1, 128, CopyTiming::at_wait, Kernel::wgmma, Backward::deterministic, &kb, 0.0f,
        0.5f);
}

// The backward's accumulate mode: every element of dqkv becomes round(old + gradient).
void check_accumulate(Kernel kernel, Backward backward = Backward::deterministic) {
  const int B = 1, T = 70, NH = 2, hd = 64, C = NH * hd;
  const Problem p = random_problem(B, T, C, NH, 11u, 12u);
  Bits old_bits;
  std::vector<double> old;
  random_bf16(size_t(B) * T * 3 * C, 13u, old_bits, old);
  const Outputs got =
      run_kernel(kernel, backward, hd, p.qkv, p.dout, B, T, NH, CopyTiming::at_issue, &old_bits);
  EXPECT_LE(accumulate_error(got.dqkv, old, p.want.dqkv), 1.0);
}

TEST(FlashAttentionEmulated, BackwardAccumulates) { check_accumulate(Kernel::mma); }

// The Hopper policies: the same block programs with wgmma products from shared-memory
// descriptors, their tiles loaded by cp.async (wgmma) or by bulk tensor copies completing on
// mbarriers (tma): one token, partial tiles (rows past T zero-filled), several tiles (buffers and
// barriers reused across steps), head dim 128, copies landing at issue and at the wait, +=.
class Hopper : public ::testing::TestWithParam<Kernel> {};

TEST_P(Hopper, SingleToken) { check(2, 1, 2, 64, CopyTiming::at_wait, GetParam()); }

TEST_P(Hopper, PartialTile) { check(1, 77, 2, 64, CopyTiming::at_issue, GetParam()); }

TEST_P(Hopper, FourTilesCopiesAtWait) { check(2, 230, 1, 64, CopyTiming::at_wait, GetParam()); }

TEST_P(Hopper, FourTilesCopiesAtIssue) { check(1, 256, 1, 64, CopyTiming::at_issue, GetParam()); }

TEST_P(Hopper, HeadDim128) { check(1, 130, 1, 128, CopyTiming::at_wait, GetParam()); }

TEST_P(Hopper, BackwardAccumulates) { check_accumulate(GetParam()); }

INSTANTIATE_TEST_SUITE_P(Policies, Hopper, ::testing::Values(Kernel::wgmma, Kernel::tma),
                         [](const ::testing::TestParamInfo<Kernel>& info) {
                           return std::string(kernel_name(info.param));
                         });

// The atomic backward: dQ = dS·K in the dK/dV kernel (dS through shared memory, added into an
// fp32 accumulator), for both policies: partial tiles, several tiles, both head dims, +=.
class AtomicDq : public ::testing::TestWithParam<Kernel> {};

TEST_P(AtomicDq, PartialTile) {
  check(1, 77, 2, 64, CopyTiming::at_wait, GetParam(), Backward::atomic);
}

TEST_P(AtomicDq, ThreeTiles) {
  check(2, 150, 1, 64, CopyTiming::at_issue, GetParam(), Backward::atomic);
}

TEST_P(AtomicDq, HeadDim128) {
  check(1, 130, 1, 128, CopyTiming::at_wait, GetParam(), Backward::atomic);
}

TEST_P(AtomicDq, Accumulates) { check_accumulate(GetParam(), Backward::atomic); }

// The ordered backward: the dK/dV blocks run at the same time and take turns per query tile to
// add their dQ in key-block order; the result matches the reference and is bit-identical from
// one run to the next (the atomic way's additions happen in whatever order the threads get
// there).
TEST_P(AtomicDq, OrderedMatchesAndRepeats) {
  check(1, 200, 2, 64, CopyTiming::at_issue, GetParam(), Backward::ordered);
  const int B = 1, T = 200, NH = 2, hd = 64, C = NH * hd;
  const Problem p = random_problem(B, T, C, NH, 31u, 32u);
  const Outputs a =
      run_kernel(GetParam(), Backward::ordered, hd, p.qkv, p.dout, B, T, NH, CopyTiming::at_wait);
  const Outputs b =
      run_kernel(GetParam(), Backward::ordered, hd, p.qkv, p.dout, B, T, NH, CopyTiming::at_issue);
  EXPECT_TRUE(a.dqkv == b.dqkv) << "the ordered backward's dqkv differs between two runs";
}

INSTANTIATE_TEST_SUITE_P(Policies, AtomicDq,
                         ::testing::Values(Kernel::mma, Kernel::wgmma, Kernel::tma),
                         [](const ::testing::TestParamInfo<Kernel>& info) {
                           return std::string(kernel_name(info.param));
                         });

// Document masks (packed sequences; key_begin): every policy and backward way, boundaries inside
// tiles and on tile edges, one-token documents, documents long enough that a query block skips
// whole key tiles (forward, dQ) and rows see no key of a tile they still visit, and key blocks
// whose later query tiles are skipped (dK/dV; the ordered way's turns still pass through them).
struct MaskCase {
  Kernel kernel;
  Backward backward;
};
class DocumentMask : public ::testing::TestWithParam<MaskCase> {};

TEST_P(DocumentMask, PackedDocuments) {
  const std::vector<int32_t> kb =
      key_begin_of_starts(2, 260, {{0, 1, 63, 64, 65, 200, 259}, {0, 130}});
  check(2, 260, 1, 64, CopyTiming::at_wait, GetParam().kernel, GetParam().backward, &kb);
}

// A sliding window of 100 keys (model.sliding_window): every query block past the first two
// skips key tiles, every key block but the last ones skips query tiles.
TEST_P(DocumentMask, SlidingWindow) {
  std::vector<int32_t> kb(260);
  for (int t = 0; t < 260; ++t) kb[size_t(t)] = t < 100 ? 0 : t - 99;
  check(1, 260, 1, 64, CopyTiming::at_issue, GetParam().kernel, GetParam().backward, &kb);
}

TEST_P(DocumentMask, HeadDim128) {
  const std::vector<int32_t> kb = key_begin_of_starts(1, 200, {{0, 70, 128}});
  check(1, 200, 1, 128, CopyTiming::at_issue, GetParam().kernel, GetParam().backward, &kb);
}

std::vector<MaskCase> mask_cases() {
  std::vector<MaskCase> v;
  for (Kernel k : {Kernel::mma, Kernel::wgmma, Kernel::tma})
    for (Backward b : {Backward::deterministic, Backward::atomic, Backward::ordered})
      v.push_back({k, b});
  return v;
}
INSTANTIATE_TEST_SUITE_P(Policies, DocumentMask, ::testing::ValuesIn(mask_cases()),
                         [](const ::testing::TestParamInfo<MaskCase>& info) {
                           const Backward b = info.param.backward;
                           return std::string(kernel_name(info.param.kernel)) + "_" +
                                  (b == Backward::atomic    ? "atomic"
                                   : b == Backward::ordered ? "ordered"
                                                            : "deterministic");
                         });

// Query ranges (context parallelism): the queries first .. first+count-1 of each sequence against
// keys 0 .. first+count-1, out, lse and dout holding the range's rows only; against the whole
// sequence's reference with dout zero outside the range (whose dq there is zero, and whose dk, dv
// are the range's), dqkv accumulated onto zeros (what the backend's overwrite then means).
void check_range(int B, int T, int NH, int hd, flash::Rows rows, Kernel kernel, Backward backward,
                 const std::vector<int32_t>* key_begin = nullptr,
                 const AttentionDropMask* drop = nullptr) {
  const int C = NH * hd, n = rows.count;
  SCOPED_TRACE(::testing::Message() << kernel_name(kernel) << " backward " << int(backward) << " T="
                                    << T << " rows " << rows.first << " + " << n << " hd=" << hd
                                    << (key_begin ? " masked" : "") << (drop ? " dropout" : ""));
  Bits qkv, dout_all;
  std::vector<double> qkv_v, dout_v;
  random_bf16(size_t(B) * T * 3 * C, 61u + T, qkv, qkv_v);
  random_bf16(size_t(B) * T * C, 62u + T, dout_all, dout_v);
  Bits dout(size_t(B) * n * C);  // the range's rows
  for (int b = 0; b < B; ++b)
    for (int t = 0; t < T; ++t)
      for (int c = 0; c < C; ++c) {
        const size_t at = (size_t(b) * T + t) * C + c;
        if (t >= rows.first && t < rows.first + n) {
          dout[(size_t(b) * n + (t - rows.first)) * C + c] = dout_all[at];
        } else {
          dout_v[at] = 0.0;
        }
      }
  const Reference want = reference(qkv_v, dout_v, B, T, C, NH, key_begin, 0.0, 0.0, drop);
  const Bits zeros(size_t(B) * T * 3 * C, 0);
  const Outputs got =
      run_kernel(kernel, backward, hd, qkv, dout, B, T, NH, CopyTiming::at_wait, &zeros,
                 key_begin ? key_begin->data() : nullptr, rows, 0, 0.0f, 0.0f, drop);
  std::vector<double> want_out(size_t(B) * n * C), want_lse(size_t(B) * NH * n);
  for (int b = 0; b < B; ++b) {
    for (int t = 0; t < n; ++t)
      for (int c = 0; c < C; ++c)
        want_out[(size_t(b) * n + t) * C + c] = want.out[(size_t(b) * T + rows.first + t) * C + c];
    for (int h = 0; h < NH; ++h)
      for (int t = 0; t < n; ++t)
        want_lse[(size_t(b) * NH + h) * n + t] =
            want.lse[(size_t(b) * NH + h) * T + rows.first + t];
  }
  EXPECT_LE(rel_error(got.out, want_out, size_t(B) * n, C, 0, C), 1e-2) << "out";
  double lse_err = 0.0;
  for (size_t i = 0; i < got.lse.size(); ++i) {
    const double e = std::abs(double(got.lse[i]) - want_lse[i]);
    lse_err = std::isfinite(e) ? std::max(lse_err, e) : INFINITY;
  }
  EXPECT_LE(lse_err, 1e-3) << "lse";
  const size_t all = size_t(B) * T, pitch = 3 * size_t(C);
  EXPECT_LE(rel_error(got.dqkv, want.dqkv, all, pitch, 0, C), 1e-2) << "dq";
  EXPECT_LE(rel_error(got.dqkv, want.dqkv, all, pitch, C, C), 1e-2) << "dk";
  EXPECT_LE(rel_error(got.dqkv, want.dqkv, all, pitch, 2 * size_t(C), C), 1e-2) << "dv";
  for (size_t i = 0; i < got.dqkv.size(); ++i) {  // nothing outside the range's reach is written
    if (want.dqkv[i] == 0.0) {
      ASSERT_EQ(got.dqkv[i], 0u) << "dqkv element " << i;
    }
  }
}

// Ranges over several tiles: an early one, a late one ending at the sequence's end, one ending in
// a partial tile at the sequence's end; a document mask and a sliding window over them (key blocks
// before the range that none of its queries sees); head dim 128.
TEST_P(DocumentMask, QueryRanges) {
  const Kernel k = GetParam().kernel;
  const Backward bw = GetParam().backward;
  check_range(1, 256, 2, 64, flash::Rows{256, 64, 64}, k, bw);
  check_range(2, 256, 1, 64, flash::Rows{256, 192, 64}, k, bw);
  check_range(1, 300, 1, 64, flash::Rows{300, 128, 172}, k, bw);  // a partial last tile
  const std::vector<int32_t> docs = key_begin_of_starts(1, 256, {{0, 30, 100, 150}});
  check_range(1, 256, 1, 64, flash::Rows{256, 128, 128}, k, bw, &docs);
  std::vector<int32_t> window(256);
  for (int t = 0; t < 256; ++t) window[size_t(t)] = t < 70 ? 0 : t - 69;
  check_range(1, 256, 1, 64, flash::Rows{256, 192, 64}, k, bw, &window);
  check_range(1, 200, 1, 128, flash::Rows{200, 64, 128}, k, bw);
}

// Grouped-query attention, natively (NKV < NH: query head h reads key/value head h % NKV, each
// dK/dV block summing over the query heads of its key/value head): against the reference on the
// rows expanded to one key/value head per query head, whose dk and dv are then summed per
// key/value head; whole sequences and a query range, with a document mask, dqkv accumulated.
void check_grouped(int B, int T, int NH, int NKV, int hd, Kernel kernel, Backward backward,
                   flash::Rows rows, const std::vector<int32_t>* key_begin = nullptr,
                   const AttentionDropMask* drop = nullptr) {
  const int C = NH * hd, W = C + 2 * NKV * hd, n = rows.count;
  SCOPED_TRACE(::testing::Message()
               << kernel_name(kernel) << " backward " << int(backward) << " NH=" << NH
               << " NKV=" << NKV << " hd=" << hd << " rows " << rows.first << " + " << n
               << (key_begin ? " masked" : "") << (drop ? " dropout" : ""));
  Bits qkv, dout_all, dqkv0;
  std::vector<double> qkv_v, dout_v, old;
  random_bf16(size_t(B) * T * W, 71u + T, qkv, qkv_v);
  random_bf16(size_t(B) * T * C, 72u + T, dout_all, dout_v);
  random_bf16(size_t(B) * T * W, 73u + T, dqkv0, old);
  Bits dout(size_t(B) * n * C);  // the range's rows; dout zero outside it for the reference
  for (int b = 0; b < B; ++b)
    for (int t = 0; t < T; ++t)
      for (int c = 0; c < C; ++c) {
        const size_t at = (size_t(b) * T + t) * C + c;
        if (t >= rows.first && t < rows.first + n)
          dout[(size_t(b) * n + (t - rows.first)) * C + c] = dout_all[at];
        else
          dout_v[at] = 0.0;
      }
  // The expanded rows: query head h's k and v are key/value head h % NKV's.
  std::vector<double> wide(size_t(B) * T * 3 * C);
  for (size_t r = 0; r < size_t(B) * T; ++r)
    for (int h = 0; h < NH; ++h)
      for (int d = 0; d < hd; ++d) {
        const int kv = h % NKV;
        wide[r * 3 * C + size_t(h) * hd + d] = qkv_v[r * W + size_t(h) * hd + d];
        wide[r * 3 * C + C + size_t(h) * hd + d] = qkv_v[r * W + C + size_t(kv) * hd + d];
        wide[r * 3 * C + 2 * C + size_t(h) * hd + d] = qkv_v[r * W + C + size_t(NKV + kv) * hd + d];
      }
  const Reference ref = reference(wide, dout_v, B, T, C, NH, key_begin, 0.0, 0.0, drop);
  std::vector<double> want(size_t(B) * T * W, 0.0);  // old + the grouped gradient
  for (size_t r = 0; r < size_t(B) * T; ++r) {
    for (int i = 0; i < W; ++i) want[r * W + i] = old[r * W + i];
    for (int h = 0; h < NH; ++h)
      for (int d = 0; d < hd; ++d) {
        const int kv = h % NKV;
        want[r * W + size_t(h) * hd + d] += ref.dqkv[r * 3 * C + size_t(h) * hd + d];
        want[r * W + C + size_t(kv) * hd + d] += ref.dqkv[r * 3 * C + C + size_t(h) * hd + d];
        want[r * W + C + size_t(NKV + kv) * hd + d] +=
            ref.dqkv[r * 3 * C + 2 * C + size_t(h) * hd + d];
      }
  }
  const Outputs got =
      run_kernel(kernel, backward, hd, qkv, dout, B, T, NH, CopyTiming::at_wait, &dqkv0,
                 key_begin ? key_begin->data() : nullptr, rows, NKV, 0.0f, 0.0f, drop);
  double out_diff = 0, out_ref = 0;
  for (int b = 0; b < B; ++b)
    for (int t = 0; t < n; ++t)
      for (int c = 0; c < C; ++c) {
        const double w = ref.out[(size_t(b) * T + rows.first + t) * C + c];
        const double g = to_float(bf16_t{got.out[(size_t(b) * n + t) * C + c]});
        out_diff = std::max(out_diff, std::abs(g - w));
        out_ref = std::max(out_ref, std::abs(w));
      }
  EXPECT_LE(out_diff / out_ref, 1e-2) << "out";
  double lse_err = 0.0;
  for (int bh = 0; bh < B * NH; ++bh)
    for (int t = 0; t < n; ++t) {
      const double e =
          std::abs(double(got.lse[size_t(bh) * n + t]) - ref.lse[size_t(bh) * T + rows.first + t]);
      lse_err = std::isfinite(e) ? std::max(lse_err, e) : INFINITY;
    }
  EXPECT_LE(lse_err, 1e-3) << "lse";
  // Accumulated onto old values: each element round(old + gradient), within 1e-2 of the largest
  // gradient (accumulate_error).
  std::vector<double> grad(want.size());
  for (size_t i = 0; i < want.size(); ++i) grad[i] = want[i] - old[i];
  EXPECT_LE(accumulate_error(got.dqkv, old, grad), 1.0) << "dqkv";
}

TEST_P(DocumentMask, GroupedQueryHeads) {
  const Kernel k = GetParam().kernel;
  const Backward bw = GetParam().backward;
  // Shapes kept small (the emulator runs every thread of the grid): partial last tiles, a batch of
  // two, a query range whose dK/dV blocks before it are skipped, HD 128 with four heads per kv
  // head.
  check_grouped(1, 130, 4, 2, 64, k, bw, flash::Rows{130, 0, 130});
  check_grouped(2, 70, 3, 1, 64, k, bw, flash::Rows{70, 0, 70});  // multi-query
  const std::vector<int32_t> docs = key_begin_of_starts(1, 192, {{0, 30, 100, 150}});
  check_grouped(1, 192, 4, 2, 64, k, bw, flash::Rows{192, 128, 64}, &docs);
  // Four query heads per key/value head at HD 128 under a mask: the ordered way's turns of skipped
  // tiles passed for every query head before the block computes.
  const std::vector<int32_t> docs130 = key_begin_of_starts(1, 130, {{0, 70, 128}});
  check_grouped(1, 130, 4, 1, 128, k, bw, flash::Rows{130, 0, 130}, &docs130);
}

// Head dim 192 (multi-head latent attention's heads: DeepSeek-V2's and V3's 128 + 64 query-key
// values, v padded to them): every policy and backward way, partial tiles, a batch of two, a
// document mask, a query range, grouped query heads (the backward accumulating), a soft cap, the
// attention dropout.
TEST_P(DocumentMask, HeadDim192) {
  const Kernel k = GetParam().kernel;
  const Backward bw = GetParam().backward;
  check(2, 100, 1, 192, CopyTiming::at_wait, k, bw);
  const std::vector<int32_t> docs = key_begin_of_starts(1, 130, {{0, 50, 64}});
  check(1, 130, 1, 192, CopyTiming::at_issue, k, bw, &docs);
  check_range(1, 256, 1, 192, flash::Rows{256, 128, 128}, k, bw);
  check_grouped(1, 130, 2, 1, 192, k, bw, flash::Rows{130, 0, 130});
  check(1, 130, 1, 192, CopyTiming::at_wait, k, bw, &docs, 0.0f, 30.0f);
  const std::vector<int32_t> keys = dropout_row_keys(1, 130, 99u, 7u);
  const AttentionDropMask drop{
      keys.data(), dropout_threshold(0.3f), 3u, 0u, dropout_scale(0.3f), 0u, 0u};
  check(1, 130, 1, 192, CopyTiming::at_issue, k, bw, nullptr, 0.0f, 0.0f, &drop);
}

// An attention dropout of probability p in `layer` as the backend hands it to the kernels:
// this call's query head h is the model's head0 + h, or with kv_global > 0 (grouped heads under
// tensor parallelism, kv_local of them here) (h / kv_local)·kv_global + head0 + h mod kv_local.
AttentionDropMask drop_mask(const std::vector<int32_t>& keys, float p, uint32_t layer,
                            uint32_t head0, uint32_t kv_local = 0, uint32_t kv_global = 0) {
  return AttentionDropMask{
      keys.data(), dropout_threshold(p), layer, head0, dropout_scale(p), kv_local, kv_global};
}

// The attention dropout (train.attention_dropout) inside the kernels: the forward's P V product
// and the backward's dV and dS read P ∘ Z, Z the mask of dropout_mask.h (p = 0.3, 1/(1 − p) where
// kept), against the reference forming the same mask from the formula; every policy and backward
// way: whole sequences over partial tiles, a document mask, head dim 128, a query range (its
// queries' absolute positions key the mask), and grouped query heads under a tensor-parallel
// head mapping (this call's heads 0.. are the model's from 1 on, of 4 key/value heads).
TEST_P(DocumentMask, Dropout) {
  const Kernel k = GetParam().kernel;
  const Backward bw = GetParam().backward;
  const std::vector<int32_t> keys130 = dropout_row_keys(2, 130, 99u, 7u);
  const AttentionDropMask drop = drop_mask(keys130, 0.3f, 3u, 0);
  check(1, 130, 2, 64, CopyTiming::at_wait, k, bw, nullptr, 0.0f, 0.0f, &drop);
  const std::vector<int32_t> docs = key_begin_of_starts(2, 130, {{0, 50, 64}, {0, 100}});
  check(2, 130, 1, 64, CopyTiming::at_issue, k, bw, &docs, 0.0f, 0.0f, &drop);
  check(1, 130, 1, 128, CopyTiming::at_wait, k, bw, nullptr, 0.0f, 0.0f, &drop);
  const std::vector<int32_t> keys256 = dropout_row_keys(1, 256, 5u, 0u);
  const AttentionDropMask drop256 = drop_mask(keys256, 0.3f, 0u, 0);
  check_range(1, 256, 1, 64, flash::Rows{256, 128, 128}, k, bw, nullptr, &drop256);
  const AttentionDropMask mapped = drop_mask(keys130, 0.3f, 1u, 1, 2, 4);
  check_grouped(1, 130, 4, 2, 64, k, bw, flash::Rows{130, 0, 130}, nullptr, &mapped);
}

// The dK/dV kernel's two passes (flash::split_dkdv; the GPU's at head dim 192 only), forced at
// head dim 64: every policy and backward way, partial tiles, a document mask, grouped query
// heads over a query range, a soft cap, the attention dropout, and the backward accumulating.
TEST_P(DocumentMask, TwoPassDkdv) {
  const Kernel k = GetParam().kernel;
  const Backward bw = GetParam().backward;
  struct Forced {  // (reset however the test ends)
    Forced() { force_two_pass_dkdv = true; }
    ~Forced() { force_two_pass_dkdv = false; }
  } forced;
  check(2, 100, 2, 64, CopyTiming::at_wait, k, bw);
  const std::vector<int32_t> docs = key_begin_of_starts(1, 130, {{0, 50, 64}});
  check(1, 130, 1, 64, CopyTiming::at_issue, k, bw, &docs);
  check_grouped(1, 256, 2, 1, 64, k, bw, flash::Rows{256, 128, 128});
  check(1, 130, 1, 64, CopyTiming::at_wait, k, bw, &docs, 0.0f, 30.0f);
  const std::vector<int32_t> keys = dropout_row_keys(1, 130, 99u, 7u);
  const AttentionDropMask drop = drop_mask(keys, 0.3f, 3u, 0);
  check(1, 130, 2, 64, CopyTiming::at_issue, k, bw, nullptr, 0.0f, 0.0f, &drop);
  check_accumulate(k, bw);
}

// The dropout's mask reaches the results: a mask of another layer (or none) moves the output and
// every gradient by far more than the tolerance, so the test above could not pass with the mask
// ignored or formed for the wrong head or row.
TEST(FlashAttentionEmulated, DropoutMaskMatters) {
  const int B = 1, T = 130, NH = 2, hd = 64, C = NH * hd;
  const std::vector<int32_t> keys = dropout_row_keys(B, T, 99u, 7u);
  const AttentionDropMask drop = drop_mask(keys, 0.3f, 3u, 0);
  const AttentionDropMask other = drop_mask(keys, 0.3f, 4u, 0);
  const Problem p = random_problem(B, T, C, NH, 4321u + T, 777u + T, nullptr, 0.0, 0.0, &drop);
  const Outputs got =
      run_kernel(Kernel::mma, Backward::deterministic, hd, p.qkv, p.dout, B, T, NH,
                 CopyTiming::at_issue, nullptr, nullptr, {0, 0, 0}, 0, 0.0f, 0.0f, &other);
  const size_t rows = size_t(B) * T;
  EXPECT_GT(rel_error(got.out, p.want.out, rows, C, 0, C), 0.1) << "out";
  for (int part = 0; part < 3; ++part)
    EXPECT_GT(rel_error(got.dqkv, p.want.dqkv, rows, 3 * size_t(C), size_t(part) * C, C), 0.1)
        << "dqkv part " << part;
}

// The primitive probes the GPU test runs to tell which building block the hardware reads
// differently (flash_probe_block.h), checked here against the same host reference: each probe of
// each policy, both head dims, the pipes' copies landing at their wait.
template <class Tiles>
void check_probes() {
  constexpr int HD = Tiles::kHD;
  for (int i = 0; i < flash::kProbes; ++i) {
    const flash::ProbeInputs in(
        flash::Probe(i), HD, [](float f) { return to_bf16(f).bits; },
        [](uint16_t b) { return to_float(bf16_t{b}); });
    const simt::TensorMap map =
        simt::tensor_map(in.wide.data(), flash::tma_tile_shape(3 * uint64_t(HD), in.rows, 2));
    std::vector<float> got(in.out_size(), NAN);
    simt::launch(1, 1, flash::kThreads, flash::probe_smem<Tiles>(), CopyTiming::at_wait,
                 [&](simt::Thread& x) {
                   flash::probe_block<Tiles>(x, got.data(), in.a.data(), in.p.data(), in.y.data(),
                                             in.wide.data(), Tiles::kTma ? &map : nullptr, in.rows,
                                             in.probe);
                 });
    EXPECT_LE(in.error(got), 1e-5) << "hd=" << HD << " " << flash::probe_name(in.probe);
  }
}

TEST(FlashProbesEmulated, Mma) {
  check_probes<flash::MmaTiles<64>>();
  check_probes<flash::MmaTiles<128>>();
}

TEST(FlashProbesEmulated, Wgmma) {
  check_probes<flash::WgmmaTiles<64>>();
  check_probes<flash::WgmmaTiles<128>>();
}

TEST(FlashProbesEmulated, Tma) {
  check_probes<flash::WgmmaTiles<64, true>>();
  check_probes<flash::WgmmaTiles<128, true>>();
}

}  // namespace
}  // namespace triad
