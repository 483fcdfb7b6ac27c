// bf16 causal self-attention (backend.h): out [B,T,C] bf16 and lse [B,NH,T] fp32 forward;
// dqkv += backward, recomputing the probabilities from qkv and lse.
//
// Head dims 64, 128 and 192 (with the alignment the vector loads need) run the fused flash kernels
// (flash_attention.cu), whose backward adds into dqkv itself (round(old + gradient)). Any other
// shape runs the fp32 attention (cuda_attention.cu, cuBLAS) on widened copies in the backend's
// scratch memory: forward widens qkv, runs it with the log-sum-exp output and rounds out;
// backward recomputes the fp32 probabilities with the fp32 forward, widens dout and the current
// dqkv, lets the fp32 backward accumulate into the latter and rounds it back, so each dqkv
// element is rounded once from old + gradient. The fallback keeps two T×T matrices per head:
// meant for small models and tests, not for long sequences.
//
// Attention sinks (backend.h): the flash kernels run without them and cuda_attention_sinks.cu
// corrects their out and lse afterwards (attention_sinks_block.h), so their backward, handed
// those, needs no change; the fallback's fp32 softmax includes them, recomputed in its backward.
// The sinks' gradient comes from out, lse and dout alone, whichever path ran.
//
// The attention dropout (AttentionDropMask) runs inside the flash kernels too (their dropout
// variants: P ∘ Z in the P V product and in dV, dS = P ∘ (Z ∘ dP − D)), except with soft-capped
// scores, which take the fallback (its probabilities in memory, masked there).
//
// A query range (QueryRows, context parallelism) runs on the flash kernels only (its first a
// multiple of 64 rows); a backward that overwrites dqkv zeroes it first and then accumulates, as
// the range leaves rows it does not reach.
//
// Grouped-query attention (NKV < NH): the flash kernels read each query head's key/value head in
// place; their backward either does too, each dK/dV block summing its key/value head's gradient
// over the query heads that read it in fp32 registers, rounded once with the old value, or, where
// that grid would be too small for the GPU, runs on expanded rows as the fallback does
// (native_gqa_backward). The fallback runs on rows expanded to
// one key/value head per query head (cuda_grouped_heads.cu): its backward adds into an expanded
// gradient whose dq columns hold the old dq (so dq is rounded once from old + gradient) and whose
// dk and dv columns start at zero; each query head's dk and dv come out rounded to bf16, and each
// kv head's are then summed over its query heads in fp32 and rounded once with the old value.
#include <cstdlib>
#include <string>

#include "cuda_ops.cuh"
#include "flash_attention.cuh"
#include "triad/kernels/cuda_backend.h"  // cuda_flash_head_dim, cuda_flash_drops

namespace triad::cuda {
namespace {

// The fallback's fp32 buffers, carved from one scratch block: the forward uses the first three
// (4n + A floats), the backward all six (n = B·T·C, A = B·NH·T·T).
struct Widened {
  float* qkv;   // 3n
  float* out;   // n
  float* att;   // A
  float* dout;  // n
  float* dqkv;  // 3n
  float* scr;   // A
};

Widened carve(AttentionScratch& scratch, cudaStream_t s, int B, int T, int C, int NH,
              bool backward) {
  const size_t n = size_t(B) * T * C;
  const size_t A = size_t(B) * NH * T * T;
  float* p = scratch.widened.get_as<float>(backward ? 8 * n + 2 * A : 4 * n + A, s);
  Widened w{};
  w.qkv = p;
  w.out = w.qkv + 3 * n;
  w.att = w.out + n;
  w.dout = w.att + A;
  w.dqkv = w.dout + n;
  w.scr = w.dqkv + 3 * n;
  return w;
}

// A query range needs the flash kernels: the fallback computes whole sequences.
void check_range_runs(bool flash, QueryRows rows, int T) {
  TRIAD_CHECK(rows.whole(T) || flash, "cuda attention: query rows ", rows.first, " + ", rows.count,
              " of ", T, " need the flash kernels (head dim 64, 128 or 192, aligned buffers)");
}

// Whether the flash kernels run a call: their head dims and the alignment of their vector loads
// (qkv's rows, of any NKV, are then 16-byte aligned too: W·2 bytes, W a multiple of 64).
bool flash_runs(int C, int NH, const void* qkv, const void* out, const void* dout = nullptr,
                const void* dqkv = nullptr) {
  return cuda_flash_head_dim(C / NH) && pointer_alignment(qkv) >= 16 &&
         pointer_alignment(out) >= 4 && (dout == nullptr || pointer_alignment(dout) >= 16) &&
         (dqkv == nullptr || pointer_alignment(dqkv) >= 4);
}

// How the flash backward of grouped-query attention runs (TRIAD_FLASH_GQA_BACKWARD): native, each
// dK/dV block summing its key/value head over the NH/NKV query heads that read it (no expanded
// copies, one rounding, but NH/NKV times fewer and longer blocks: a small grid leaves SMs idle);
// expand, the key/value heads expanded to one per query head around the MHA kernels and their
// gradients reduced back (the full grid, 2·B·T·3C elements of scratch and four passes over
// them); auto (default), native where its grid still has 4 blocks per SM. Not yet timed on a GPU.
bool native_gqa_backward(int B, int keys, int NKV) {
  static const std::string mode = [] {
    const char* env = std::getenv("TRIAD_FLASH_GQA_BACKWARD");
    const std::string v = env != nullptr && *env ? env : "auto";
    TRIAD_CHECK(v == "auto" || v == "native" || v == "expand", "TRIAD_FLASH_GQA_BACKWARD = '", v,
                "' is not one of auto, native, expand");
    return v;
  }();
  if (mode != "auto") return mode == "native";
  int dev = 0, sms = 0;
  TRIAD_CUDA_CHECK(cudaGetDevice(&dev));
  TRIAD_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  const long long blocks = (long long)B * NKV * ((keys + 63) / 64);
  return blocks >= 4LL * sms;
}

// The attention sinks widened for the fp32 path (null without).
const float* wide_sinks(AttentionScratch& scratch, cudaStream_t s, const bf16* sinks, int NH) {
  if (sinks == nullptr) return nullptr;
  float* w = scratch.wide_sinks.get_as<float>(size_t(NH), s);
  convert(s, w, sinks, size_t(NH));
  return w;
}

// The fallback's MHA op (qkv and dqkv [B,T,3C]): the fp32 attention on widened copies.
void fallback_forward(cudaStream_t s, cublasHandle_t h, AttentionScratch& scratch, bf16* out,
                      float* lse, const bf16* qkv, int B, int T, int C, int NH,
                      const int32_t* key_begin, float scale, float softcap, AttentionDropMask drop,
                      const float* sinks) {
  const size_t n = size_t(B) * T * C;
  const Widened w = carve(scratch, s, B, T, C, NH, /*backward=*/false);
  float* ws = scratch.fp32_workspace.get_as<float>(attention_workspace_floats(B, T, C), s);
  float* dropped = dropped_probabilities(scratch, s, B, T, NH, drop);
  convert(s, w.qkv, qkv, 3 * n);
  attention_forward(s, h, ws, w.out, w.att, w.qkv, B, T, C, NH, lse, key_begin, scale, softcap,
                    drop, dropped, sinks);
  convert(s, out, static_cast<const float*>(w.out), n);
}

void fallback_backward(cudaStream_t s, cublasHandle_t h, AttentionScratch& scratch, bf16* dqkv,
                       const bf16* dout, const bf16* qkv, int B, int T, int C, int NH,
                       bool accumulate, const int32_t* key_begin, float scale, float softcap,
                       AttentionDropMask drop, const float* sinks) {
  const size_t n = size_t(B) * T * C;
  const Widened w = carve(scratch, s, B, T, C, NH, /*backward=*/true);
  float* ws = scratch.fp32_workspace.get_as<float>(attention_workspace_floats(B, T, C), s);
  float* scores = capped_scores(scratch, s, B, T, NH, softcap);
  convert(s, w.qkv, qkv, 3 * n);
  convert(s, w.dout, dout, n);
  if (accumulate) {
    convert(s, w.dqkv, static_cast<const bf16*>(dqkv), 3 * n);
  } else {
    TRIAD_CUDA_CHECK(cudaMemsetAsync(w.dqkv, 0, 3 * n * sizeof(float), s));
  }
  // The fp32 forward recomputes the probabilities (w.out is not needed but must be written; under
  // dropout its dropped probabilities go to w.scr, which the backward overwrites).
  attention_forward(s, h, ws, w.out, w.att, w.qkv, B, T, C, NH, nullptr, key_begin, scale, softcap,
                    drop, w.scr, sinks);
  attention_backward(s, h, ws, w.dqkv, w.scr, w.dout, w.qkv, w.att, B, T, C, NH, key_begin, scale,
                     softcap, scores, drop);
  convert(s, dqkv, static_cast<const float*>(w.dqkv), 3 * n);
}

}  // namespace

void attention_forward(cudaStream_t s, cublasHandle_t h, AttentionScratch& scratch, bf16* out,
                       float* lse, const bf16* qkv, int B, int T, int C, int NH, int NKV,
                       const int32_t* key_begin, QueryRows rows, float scale, float softcap,
                       AttentionDropMask drop, const bf16* sinks) {
  check_attention_shape(B, T, C, NH);
  check_attention_kv_heads(NH, NKV);
  if (cuda_flash_drops(drop.on(), softcap) && flash_runs(C, NH, qkv, out)) {  // any NKV, natively
    flash_attention_forward(out, lse, qkv, B, T, C, NH, key_begin, s, FlashKernel::automatic, rows,
                            NKV, scale, softcap, drop);
    if (sinks != nullptr) apply_attention_sinks(s, out, lse, sinks, B, rows.rows(T), C, NH);
    return;
  }
  check_range_runs(false, rows, T);
  fallback_forward(s, h, scratch, out, lse, mha_qkv(scratch, s, qkv, B * T, C, NH, NKV), B, T, C,
                   NH, key_begin, scale, softcap, drop, wide_sinks(scratch, s, sinks, NH));
}

void attention_backward(cudaStream_t s, cublasHandle_t h, AttentionScratch& scratch, bf16* dqkv,
                        const bf16* dout, const bf16* qkv, const bf16* out, const float* lse, int B,
                        int T, int C, int NH, int NKV, bool accumulate, const int32_t* key_begin,
                        QueryRows rows, float scale, float softcap, AttentionDropMask drop,
                        const bf16* sinks, float* dsinks) {
  check_attention_shape(B, T, C, NH);
  check_attention_kv_heads(NH, NKV);
  check_sinks_gradient("cuda", sinks, dsinks);
  // The sinks' gradient reads only the forward's out and lse (both with the sinks) and dout.
  if (dsinks != nullptr)
    attention_sinks_backward(s, scratch, dsinks, out, dout, lse, sinks, B, rows.rows(T), C, NH);
  if (!rows.whole(T) && !accumulate) {  // the rows the range does not reach get zero
    TRIAD_CUDA_CHECK(
        cudaMemsetAsync(dqkv, 0, size_t(B) * T * qkv_width(C, NH, NKV) * sizeof(bf16), s));
    accumulate = true;
  }
  const bool flash =
      cuda_flash_drops(drop.on(), softcap) && flash_runs(C, NH, qkv, out, dout, dqkv);
  check_range_runs(flash, rows, T);
  // The backward of nkv key/value heads on rows d (gradient) and q (q|k|v): the flash kernels, or
  // the fallback (MHA rows only).
  auto backward = [&](bf16* d, const bf16* q, int nkv) {
    if (flash) {
      float* ws = scratch.flash.get_as<float>(flash_attention_workspace_floats(B, T, C, NH), s);
      flash_attention_backward(d, dout, q, out, lse, ws, B, T, C, NH, key_begin, s, accumulate,
                               FlashKernel::automatic, FlashBackward::automatic, rows, nkv, scale,
                               softcap, drop);
    } else {
      fallback_backward(s, h, scratch, d, dout, q, B, T, C, NH, accumulate, key_begin, scale,
                        softcap, drop, wide_sinks(scratch, s, sinks, NH));
    }
  };
  if (NKV == NH || (flash && native_gqa_backward(B, rows.keys(T), NKV))) {
    backward(dqkv, qkv, NKV);
    return;
  }
  // Expanded: one key/value head per query head. Overwriting needs no preparation: the MHA
  // backward then writes every expanded element; accumulating starts from the old dq and zero
  // dk, dv.
  const int N = B * T;
  const GroupedHeads<bf16> g = grouped_heads_scratch<bf16>(scratch, s, N, C, true);
  expand_kv_heads(s, g.qkv, qkv, N, C, NH, NKV);
  if (accumulate) {
    prepare_expanded_dqkv(s, g.dqkv, static_cast<const bf16*>(dqkv), N, C, NH, NKV, true);
  }
  backward(g.dqkv, g.qkv, NH);
  reduce_kv_heads(s, dqkv, static_cast<const bf16*>(g.dqkv), N, C, NH, NKV, accumulate);
}

}  // namespace triad::cuda
