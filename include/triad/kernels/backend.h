// The op set of the GPT model behind one interface (DESIGN.md §2). The CPU backend (fp32,
// OpenMP, BLAS sgemm) is the reference; the CUDA backend implements the same calls on
// device pointers. The ops come in two precisions: fp32 throughout, and the mixed-precision
// set at the end (bf16 activations and weights, fp32 parameter gradients and statistics).
//
// Conventions (all ops):
//  - Shapes are row-major. N = B*T rows of width C. Linear weights are [OC, IC] (y = x·Wᵀ + b).
//  - Every *backward* op ACCUMULATES (+=) into all of its gradient outputs (input gradients
//    and parameter gradients alike); the caller zeroes them when a new accumulation starts.
//    This makes micro-batch accumulation and residual branches free. matmul, GELU and
//    attention backward can instead overwrite their input gradient (GradMode::overwrite).
//  - Pointers may be nullptr only where a comment says so (e.g. a missing bias).
#pragma once

#include <climits>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>

#include "triad/core/bf16.h"
#include "triad/core/error.h"
#include "triad/kernels/dropout_mask.h"
#include "triad/kernels/moe_routing.h"

namespace triad {

// How a backward op writes the gradient of its input (dinp, dqkv): added to what the buffer holds
// (the default, so residual branches and micro-batches sum for free), or written over it, which
// spares the caller zeroing a fresh buffer (on a GPU a whole extra pass over it). Parameter
// gradients always accumulate.
enum class GradMode { accumulate, overwrite };

// The MLP activations that run as a pass of their own after c_fc's product (GELU's tanh
// approximation rides in the product's epilogue instead, gelu_forward):
//   relu2       max(x, 0)², its derivative 2·max(x, 0) (model.mlp = relu2: Primer's squared ReLU)
//   gelu_exact  ½·x·(1 + erf(x/√2)), its derivative ½·(1 + erf(x/√2)) + x·φ(x) with φ the normal
//               density (model.mlp = gelu_exact: GPT-NeoX's, BERT's GELU)
//   relu        max(x, 0), its derivative 1 where x > 0, else 0 (model.mlp = relu: OPT's)
enum class Activation { relu2, gelu_exact, relu };

// The SwiGLU's shape (model.glu_alpha, glu_limit, glu_offset; Backend::swiglu_forward): the
// gate's silu is g·σ(alpha·g), gate and up are clamped at limit (0: not), offset is added to the
// clamped up. The default is Llama's SwiGLU; gpt-oss's is {1.702, 7, 1}.
struct GluShape {
  float alpha = 1.0f, limit = 0.0f, offset = 0.0f;
  bool plain() const { return alpha == 1.0f && limit == 0.0f && offset == 0.0f; }
};

// The width of an attention op's qkv rows (see attention_forward): q for NH heads (C wide), k and
// v for NKV heads each.
inline int qkv_width(int C, int NH, int NKV) { return C + 2 * NKV * (C / NH); }

// The target of a row without a loss (a masked target, data.loss_mask): every cross-entropy op
// gives it loss 0, no hit and a zero gradient row. The fused op takes any negative target so;
// in the vocabulary-parallel ops other negative targets mean "on another rank's slice".
inline constexpr int32_t kIgnoredTarget = INT32_MIN;

// The normalizations' epsilon unless a model says otherwise (model.norm_eps): GPT-2's and Llama's.
inline constexpr float kNormEps = 1e-5f;

// The query rows an attention call computes (context parallelism, where a rank holds some of a
// sequence's rows and gathers the keys and values of the others): queries first .. first+count-1
// of each sequence, against its keys 0 .. first+count-1 (narrowed by key_begin as usual). The
// default, count 0, is every row (first 0, count T). With a range, out and dout are [B, count, C]
// (the range's rows only), att [B, NH, count, first+count] and lse [B, NH, count]; qkv, dqkv and
// key_begin keep their T rows per sequence; backward adds the gradient of the range's q rows and
// of the keys and values they read (rows 0 .. first+count-1), and GradMode::overwrite writes all
// of dqkv (zero where the range reads nothing).
struct QueryRows {
  int first = 0, count = 0;
  bool whole(int T) const { return count == 0 || (first == 0 && count == T); }
  int rows(int T) const { return count == 0 ? T : count; }          // queries per sequence
  int keys(int T) const { return count == 0 ? T : first + count; }  // key extent
};

// The attention dropout of one attention call (train.attention_dropout; the mask of
// kernels/dropout_mask.h): probability P[i, j] of query head h is kept times 1/(1 − p) or zeroed,
// after the softmax (whose normalizer is the undropped one). keys [B, T] holds the 64-bit row key
// of each row of the call's sequences (two int32 words, low first, in the backend's memory; row
// b·T + t, as key_begin's); the key of position j is j. layer is the model's layer. The call's
// query head h is the model's head0 + h, or, with kv_heads > 0 (tensor parallelism: a rank's
// query heads are those of its key/value heads, docs/parallelism.md), (h / NKV)·kv_heads +
// head0 + h mod NKV for the call's NKV (head0 then the rank's first key/value head). Default: no
// dropout.
struct AttentionDropout {
  const int32_t* keys = nullptr;
  float p = 0.0f;
  uint32_t layer = 0;
  int head0 = 0;
  int kv_heads = 0;
  bool on() const { return keys != nullptr && p > 0.0f; }
  // The kernels' form for a call with NKV key/value heads.
  AttentionDropMask mask(int NKV) const {
    if (!on()) return {};
    TRIAD_CHECK(kv_heads == 0 || NKV > 0, "attention dropout: a grouped head mapping (kv_heads ",
                kv_heads, ") needs the call's key/value heads (got ", NKV, ")");
    return AttentionDropMask{keys,
                             dropout_threshold(p),
                             layer,
                             uint32_t(head0),
                             dropout_scale(p),
                             uint32_t(kv_heads > 0 ? NKV : 0),
                             uint32_t(kv_heads)};
  }
};

// The attention backward's sinks arguments: a gradient (dsinks) only of sinks the forward used.
inline void check_sinks_gradient(const char* backend, const void* sinks, const float* dsinks) {
  TRIAD_CHECK(dsinks == nullptr || sinks != nullptr, backend,
              " attention: a gradient of attention sinks asked for without the sinks");
}

// The attention ops' score scale: `scale` where given (> 0), else 1/sqrt(hd).
inline float attention_scale(float scale, int hd) {
  return scale > 0.0f ? scale : float(1.0 / std::sqrt(double(hd)));
}

class Backend {
 public:
  virtual ~Backend() = default;
  virtual const char* name() const = 0;

  // ---- memory: device-resident buffers (host memory for the CPU backend) -------------------
  virtual float* alloc(size_t n_floats) = 0;  // zero-filled, 64-byte aligned
  virtual void free(float* p) = 0;
  // Bytes of the buffers alloc, alloc_bf16 and alloc_ints handed out and not yet freed, as
  // requested (before the platform rounds them up). The backend's own workspace (cuBLASLt's,
  // attention and reduction scratch) is not counted.
  virtual size_t allocated_bytes() const = 0;
  virtual void zero(float* p, size_t n) = 0;
  virtual void copy_to_host(float* host, const float* dev, size_t n) = 0;
  // dst = src within the backend's memory: a plain copy by the platform (memcpy / cudaMemcpy),
  // which the benchmarks take as the memory-bandwidth ceiling.
  virtual void copy(float* dst, const float* src, size_t n) = 0;
  // `rows` rows of `width` floats from src (rows ld_src apart) to dst (rows ld_dst apart): a
  // column block of a matrix (context parallelism's key and value columns). The default copies
  // row by row; the CUDA backend in one strided copy.
  virtual void copy_rows(float* dst, size_t ld_dst, const float* src, size_t ld_src, size_t rows,
                         size_t width) {
    for (size_t r = 0; r < rows; ++r) copy(dst + r * ld_dst, src + r * ld_src, width);
  }
  virtual void copy_from_host(float* dev, const float* host, size_t n) = 0;
  virtual void synchronize() = 0;

  // ---- int32 buffers (token ids, targets) on the backend's memory ---------------------------
  // The token and target arguments of the ops below are buffers of this kind. The defaults use
  // host memory (right for the CPU backend); the CUDA backend overrides them with device memory.
  virtual int32_t* alloc_ints(size_t n) {  // zero-filled
    return static_cast<int32_t*>(std::calloc(n, sizeof(int32_t)));
  }
  virtual void free_ints(int32_t* p) { std::free(p); }
  virtual void copy_ints_from_host(int32_t* dev, const int32_t* host, size_t n) {
    std::memcpy(dev, host, n * sizeof(int32_t));
  }

  // ---- embedding: out[n,:] = wte[tok[n],:] + wpe[n % T,:] ------------------------------------
  // Vocabulary-parallel form (tensor parallelism): a token < 0 is an id another rank holds; it
  // contributes a zero row (forward) and nothing to dwte (backward). wpe == nullptr: no position
  // term; dwpe == nullptr: no position gradient (a rank that is not the one adding wpe).
  // positions (the backend's ints, [B·T], each below wpe's rows; data.reset_positions): row n
  // adds wpe[positions[n],:] instead of wpe[n % T,:], and its gradient goes there (summed in row
  // order: deterministic).
  virtual void encoder_forward(float* out, const int32_t* tokens, const float* wte,
                               const float* wpe, int B, int T, int C,
                               const int32_t* positions = nullptr) = 0;
  virtual void encoder_backward(float* dwte, float* dwpe, const float* dout, const int32_t* tokens,
                                int B, int T, int C, const int32_t* positions = nullptr) = 0;

  // ---- LayerNorm over the last dim, epsilon eps; mean/rstd [N] saved for backward ----------
  // RMSNorm (model.norm = rmsnorm) is the same op with mean == nullptr: no centering (μ = 0),
  // out = x·r·w with r = 1/sqrt(mean(x²) + eps), and in backward dx = r·(g − x̂·mean(g·x̂))
  // (g = dout·w, x̂ = x·r: no mean(g) term). bias may be nullptr (no bias; RMSNorm has none), and
  // then dbias too. The fused residual form below follows the same rules.
  virtual void layernorm_forward(float* out, float* mean, float* rstd, const float* inp,
                                 const float* weight, const float* bias, int N, int C,
                                 float eps = kNormEps) = 0;
  virtual void layernorm_backward(float* dinp, float* dweight, float* dbias, const float* dout,
                                  const float* inp, const float* weight, const float* mean,
                                  const float* rstd, int N, int C) = 0;

  // ---- the residual add and the LayerNorm that reads it, fused -----------------------------
  // sum = a + b (the residual stream, kept), then out = LayerNorm(sum) with mean/rstd as
  // layernorm_forward: one pass over the rows on a GPU instead of a write and a re-read. The
  // LayerNorm reads sum as stored (in bf16: after its rounding). The default runs the two ops.
  virtual void residual_layernorm_forward(float* sum, float* out, float* mean, float* rstd,
                                          const float* a, const float* b, const float* weight,
                                          const float* bias, int N, int C, float eps = kNormEps) {
    add(sum, a, b, size_t(N) * size_t(C));
    layernorm_forward(out, mean, rstd, sum, weight, bias, N, C, eps);
  }

  // ---- linear: out[N,OC] = inp[N,IC] · weight[OC,IC]ᵀ + bias[OC] (bias may be nullptr) -------
  virtual void matmul_forward(float* out, const float* inp, const float* weight, const float* bias,
                              int N, int IC, int OC) = 0;
  // dinp may be nullptr (not needed); dbias may be nullptr (no bias); dweight may be nullptr
  // with dbias (the input gradient alone: a zero-bubble pipeline forms the weight gradients
  // later, in a second call with dinp = nullptr).
  virtual void matmul_backward(float* dinp, float* dweight, float* dbias, const float* dout,
                               const float* inp, const float* weight, int N, int IC, int OC,
                               GradMode mode = GradMode::accumulate) = 0;

  // FP8 products of fp32 operands (run.fp8 with run.precision = fp32): as the bf16 versions
  // (below), with fp32 outputs. The CPU backend has them: they let a model with FP8 products be
  // compared with a reference that has no bf16 roundings. A GPU's FP8 products read bf16.
  virtual void absmax(float* /*out*/, const float* /*x*/, size_t /*n*/) { no_fp32_fp8(); }
  virtual void absmax_rows(float* out, size_t out_stride, const float* x, size_t width,
                           const int64_t* begin, const int64_t* end, int segments) {
    for (int s = 0; s < segments; ++s)
      absmax(out + size_t(s) * out_stride, x + size_t(begin[s]) * width,
             size_t(end[s] - begin[s]) * width);
  }
  virtual void matmul_forward_fp8(float* /*out*/, const float* /*inp*/, const float* /*weight*/,
                                  const float* /*bias*/, int /*N*/, int /*IC*/, int /*OC*/,
                                  const float* /*amax*/) {
    no_fp32_fp8();
  }
  virtual void matmul_backward_fp8(float* /*dinp*/, float* /*dweight*/, float* /*dbias*/,
                                   const float* /*dout*/, const float* /*inp*/,
                                   const float* /*weight*/, int /*N*/, int /*IC*/, int /*OC*/,
                                   const float* /*amax*/,
                                   GradMode /*mode*/ = GradMode::accumulate) {
    no_fp32_fp8();
  }
  [[noreturn]] static void no_fp32_fp8() {
    fail(
        "run.fp8 with fp32 operands is not implemented by this backend (use run.precision = "
        "bf16)");
  }

  // ---- causal self-attention -----------------------------------------------------------------
  // NH query heads and NKV key/value heads (NKV divides NH; NKV < NH is grouped-query
  // attention), hd = C/NH. qkv [B,T,W], W = C + 2·NKV·hd: per row q (NH heads, C wide) | k (NKV
  // heads) | v (NKV heads), each head-major (head h at h*hd .. (h+1)*hd of its part). Query head
  // h attends with key/value head h % NKV (the kv heads repeat, as torch.Tensor.repeat; see
  // docs/formats.md for why not Hugging Face's interleaved grouping). NKV = NH is GPT-2's
  // attention: W = 3C. out [B,T,C] (head-major). att [B,NH,T,T] keeps the softmax probabilities
  // for backward (entries above the diagonal are unspecified). The scores are q·k times
  // `scale`: 0 (the default) is 1/sqrt(hd); another (model.attn_scale, μP's 1/hd) replaces it.
  // softcap > 0 (model.attn_softcap; Gemma 2's 50, Grok-1's 30) caps each scaled score s at
  // softcap·tanh(s / softcap) before the softmax; the backward pass multiplies the scores'
  // gradient by 1 − tanh², recomputing the scores. 0: no cap.
  // key_begin (nullptr: plain causal attention) narrows the keys a query sees: [B,T] ints in the
  // backend's memory (alloc_ints), query t of sequence b attending keys key_begin[b·T+t] .. t,
  // where 0 <= key_begin[b·T+t] <= t and key_begin never decreases along a sequence (a document
  // mask: each token sees its own document only; model/attention_mask.h). Backward takes the
  // forward's key_begin.
  // `rows` (QueryRows) limits the call to some query rows of each sequence. `dropout`
  // (AttentionDropout, training only) drops probabilities after the softmax: att keeps the
  // undropped ones, and the backward pass forms the same mask again.
  // sinks (nullptr: none; model.attn_sinks, gpt-oss's): a logit z_h per query head [NH] in the
  // backend's memory, the score of a key without a value that every row of head h sees: its
  // softmax is p_j = exp(s_j) / (exp(z_h) + Σ_k exp(s_k)) (z_h neither scaled nor capped), so a
  // row's probabilities add up to 1 − p_sink. att keeps these p_j (the backward pass of the
  // softmax needs no change: the sink's value is zero). Backward adds to dsinks [NH] (nullptr: no
  // gradient) dL/dz_h = −Σ_rows p_sink·Σ_j p_j·dP_j, the rows' sums in a fixed order.
  virtual void attention_forward(float* out, float* att, const float* qkv, int B, int T, int C,
                                 int NH, int NKV, const int32_t* key_begin = nullptr,
                                 QueryRows rows = {}, float scale = 0.0f, float softcap = 0.0f,
                                 AttentionDropout dropout = {}, const float* sinks = nullptr) = 0;
  // dqkv [B,T,W] (+=); scratch is as large as att, floats the op may overwrite. A key/value
  // head's gradient sums over its NH/NKV query heads in a fixed order (deterministic).
  virtual void attention_backward(float* dqkv, float* scratch, const float* dout, const float* qkv,
                                  const float* att, int B, int T, int C, int NH, int NKV,
                                  GradMode mode = GradMode::accumulate,
                                  const int32_t* key_begin = nullptr, QueryRows rows = {},
                                  float scale = 0.0f, float softcap = 0.0f,
                                  AttentionDropout dropout = {}, const float* sinks = nullptr,
                                  float* dsinks = nullptr) = 0;
  // Decoding with a cache of keys and values (generation), for B sequences of equal length: the
  // causal attention of rows p .. p+n-1 of each, whose q|k|v are its rows p .. p+n-1 in qkv,
  // against the keys and values of its rows 0 .. p+n-1 (rows before p: those an earlier call
  // left there, the cache). Sequence b's row t is row b·stride + t of qkv (stride >= p+n rows of
  // W); out [B, n, C]. The same math as rows p .. p+n-1 of attention_forward on each whole
  // sequence, without its T×T work: n·(p+n) scores instead of (p+n)². With NKV < NH the cache
  // (the k and v columns) is NKV/NH of GPT-2's. window > 0 (a sliding window, model.
  // sliding_window): the row at position t sees keys max(0, t − window + 1) .. t only, as
  // attention_forward with that key_begin. scale, softcap and sinks as attention_forward's.
  virtual void attention_decode(float* out, const float* qkv, int B, int stride, int p, int n,
                                int C, int NH, int NKV, int window = 0, float scale = 0.0f,
                                float softcap = 0.0f, const float* sinks = nullptr) = 0;

  // ---- rotary position embedding (model.position = rope) -----------------------------------
  // Rotates in place the NH q heads and NKV k heads of qkv [N, W] (layout as above; v untouched).
  // Row r is position p = pos0 + r % T of its sequence; with hd = C/NH and h = hd/2, each q and
  // k head's pair (x_i, x_{i+h}), i < h, becomes (x_i·c − x_{i+h}·s, x_{i+h}·c + x_i·s) where
  // c = table[p·hd + i] and s = table[p·hd + h + i] (the "rotate half" pairing of GPT-NeoX and
  // Hugging Face's Llama; the table is gpt_shape.h's rope_table, [seq_len, hd] floats in the
  // backend's memory). inverse rotates by the opposite angles: the transpose, i.e. the backward
  // pass, applied to dqkv. positions (the backend's ints, [N], each below the table's rows): row r
  // is at position positions[r] instead, T and pos0 unused (data.reset_positions: each packed
  // document from 0). rot (model.rotary_dim; 0: hd) rotates the first rot of each head's hd values
  // only, pairs (x_i, x_{i+rot/2}), i < rot/2, by a table of [seq_len, rot] (partial rotary, as
  // GPT-NeoX's rotary_pct and Hugging Face's partial_rotary_factor); the rest pass unchanged.
  virtual void rope(float* qkv, const float* table, int N, int T, int pos0, int C, int NH, int NKV,
                    bool inverse, const int32_t* positions = nullptr, int rot = 0) = 0;

  // ---- per-head RMSNorm of q and k (model.qk_norm) -----------------------------------------
  // qkv [N, W] (layout as above) into out [N, W]: each q head's hd values x become x·r·wq and
  // each k head's x·r·wk, r = 1/sqrt(mean(x²) + eps) over the head's hd values (the sum of
  // squares accumulated in double); v is copied. rstd [N, NH + NKV] (per row the q heads' r, then
  // the k heads') is kept for backward; wq, wk [hd]. out must not alias qkv.
  virtual void qk_norm_forward(float* out, float* rstd, const float* qkv, const float* wq,
                               const float* wk, int N, int C, int NH, int NKV,
                               float eps = kNormEps) = 0;
  // dqkv [N, W] = (overwrite) or += (accumulate) the input gradient: per head
  // dx = r·(g − x̂·mean(g·x̂)) with g = dout·w and x̂ = x·r (RMSNorm's); v's is dout's.
  // dwq, dwk [hd] (fp32) += Σ over rows and heads of dout·x̂, summed in a fixed order
  // (deterministic). dqkv may alias dout with GradMode::overwrite (in place).
  virtual void qk_norm_backward(float* dqkv, float* dwq, float* dwk, const float* dout,
                                const float* qkv, const float* wq, const float* wk,
                                const float* rstd, int N, int C, int NH, int NKV,
                                GradMode mode = GradMode::accumulate) = 0;

  // ---- RMSNorm of q and k over all their heads (model.qk_norm_full: OLMo-2's, OLMoE's) ------
  // Each row's q values (C of them: NH heads) are one vector, its k values (NKV·hd) another. On a
  // tensor-parallel rank a row holds some heads of each, so the statistics are formed in two
  // steps: the sums here, which the model all-reduces over the group, then the ops below.
  // sums [N, 2] = per row Σ x² over q, over k; or with dout (the backward's), Σ dout·w·x̂ with
  // x̂ = x·r (r from rstd [N, 2]). Accumulated in double in column order, stored fp32.
  virtual void qk_full_norm_sums(float* sums, const float* qkv, const float* dout, const float* wq,
                                 const float* wk, const float* rstd, int N, int C, int NH,
                                 int NKV) = 0;
  // out [N, W]: q·r_q·wq, k·r_k·wk, v copied; r = 1/sqrt(sums/D + eps) with D = Dq for q, Dk for
  // k (the whole vectors' widths, over every rank); rstd [N, 2] = (r_q, r_k). wq [C], wk [NKV·hd]
  // (this rank's columns). out must not alias qkv.
  virtual void qk_full_norm_forward(float* out, float* rstd, const float* qkv, const float* sums,
                                    const float* wq, const float* wk, int N, int C, int NH, int NKV,
                                    int Dq, int Dk, float eps = kNormEps) = 0;
  // dqkv = (overwrite) or += (accumulate) r·(dout·w − x̂·dots/D) (dots: the backward's sums,
  // all-reduced), v's dout; dwq [C], dwk [NKV·hd] (fp32) += Σ over rows of dout·x̂ in row order.
  // dqkv may alias dout with GradMode::overwrite (in place).
  virtual void qk_full_norm_backward(float* dqkv, float* dwq, float* dwk, const float* dout,
                                     const float* qkv, const float* wq, const float* wk,
                                     const float* rstd, const float* dots, int N, int C, int NH,
                                     int NKV, int Dq, int Dk,
                                     GradMode mode = GradMode::accumulate) = 0;

  // ---- SwiGLU (model.mlp = swiglu) ------------------------------------------------------------
  // pre [N, 2H]: each row the gate (its first H values) then the up projection (the last H; on a
  // tensor-parallel rank its H columns of each); out [N, H] = silu(gate)·up with
  // silu(g) = g·σ(g). Backward: the gradient of pre from dout [N, H], written or added by mode:
  // d gate = dout·up·σ(g)·(1 + g·(1 − σ(g))), d up = dout·silu(g).
  // glu (GluShape, gpt-oss's variant; {}: the above): out = g'·σ(α·g')·(u' + offset) with
  // g' = min(g, limit) and u' = clamp(u, −limit, limit) (limit 0: neither clamped), a clamped
  // value's gradient 0 (one at the limit passes, as torch.clamp's).
  virtual void swiglu_forward(float* out, const float* pre, int N, int H, GluShape glu = {}) = 0;
  virtual void swiglu_backward(float* dpre, const float* pre, const float* dout, int N, int H,
                               GradMode mode = GradMode::accumulate, GluShape glu = {}) = 0;
  // GeGLU (model.mlp = geglu, Gemma's): the same with gelu(gate)·up, GELU's tanh approximation:
  // d gate = dout·up·gelu'(g), d up = dout·gelu(g).
  virtual void geglu_forward(float* out, const float* pre, int N, int H) = 0;
  virtual void geglu_backward(float* dpre, const float* pre, const float* dout, int N, int H,
                              GradMode mode = GradMode::accumulate) = 0;

  // pre = inp · Wᵀ + b and out = gelu(pre) (the FFN's first layer; see the bf16 version).
  virtual void matmul_gelu_forward(float* pre, float* out, const float* inp, const float* weight,
                                   const float* bias, int N, int IC, int OC) {
    matmul_forward(pre, inp, weight, bias, N, IC, OC);
    gelu_forward(out, pre, size_t(N) * size_t(OC));
  }
  // dbias[OC] += Σ_rows dout[N, OC]: a linear layer's bias gradient on its own (what
  // matmul_backward adds when given a dbias; the benchmarks time it apart from the product).
  virtual void bias_backward(float* dbias, const float* dout, int N, int OC) = 0;
  // The backward of a linear layer whose input is act = gelu(pre) (the FFN's second layer),
  // through the GELU: dweight += doutᵀ·act, dbias += Σ dout, dpre (+= or = by mode) the gradient
  // of pre, gelu'(pre) ∘ (dout · W). dact [N, IC] is scratch for dout · W: a backend may never
  // write it (the GPU applies gelu' in the product's epilogue). dweight and dbias may be nullptr
  // together (dpre alone). The default runs matmul_backward into dact, then gelu_backward.
  virtual void matmul_backward_gelu(float* dpre, float* dact, float* dweight, float* dbias,
                                    const float* dout, const float* act, const float* pre,
                                    const float* weight, int N, int IC, int OC,
                                    GradMode mode = GradMode::accumulate) {
    matmul_backward(dact, dweight, dbias, dout, act, weight, N, IC, OC, GradMode::overwrite);
    gelu_backward(dpre, pre, dact, size_t(N) * size_t(IC), mode);
  }

  // ---- GELU, tanh approximation -------------------------------------------------------------
  virtual void gelu_forward(float* out, const float* inp, size_t n) = 0;
  virtual void gelu_backward(float* dinp, const float* inp, const float* dout, size_t n,
                             GradMode mode = GradMode::accumulate) = 0;

  // ---- MLP activations run as a pass of their own (Activation, above) -----------------------
  // out = f(inp); dinp (+)= f'(inp)·dout.
  virtual void activation_forward(Activation f, float* out, const float* inp, size_t n) = 0;
  virtual void activation_backward(Activation f, float* dinp, const float* inp, const float* dout,
                                   size_t n, GradMode mode = GradMode::accumulate) = 0;

  // ---- out = a + b (residual); its backward is two accumulate() calls -----------------------
  virtual void add(float* out, const float* a, const float* b, size_t n) = 0;
  virtual void accumulate(float* dst, const float* src, size_t n) = 0;  // dst += src

  // ---- fused softmax + cross-entropy over the first V of Vp logits per row ------------------
  // logits [N,Vp] is overwritten by dloss/dlogits = (softmax − onehot(target)) · dloss_scale,
  // with zeros in the padded columns V..Vp. losses[N] gets −log p[target];
  // correct[N] (may be nullptr) gets 1.0f where argmax over the first V equals the target.
  // A negative target (kIgnoredTarget) makes the row's loss, hit and gradient 0; targets >= V
  // are a caller error (checked by the data loader).
  // z_loss = c > 0 (train.z_loss, PaLM's auxiliary loss c·(log Z)², Z = Σ_{j<V} e^{logit_j}) adds
  // its gradient: the softmax term becomes softmax · dloss_scale · (1 + 2c·log Z); losses stay
  // the cross-entropy. log_z[N] (may be nullptr) gets log Z (0 for an ignored row).
  // softcap = c > 0 (model.logit_softcap): the logits were capped by scale_cap_logits, and each
  // gradient value is multiplied by the cap's derivative 1 − (y/c)² at the logit y it replaces.
  virtual void crossentropy_forward_backward(float* logits, float* losses, float* correct,
                                             const int32_t* targets, int N, int V, int Vp,
                                             float dloss_scale, float z_loss = 0.0f,
                                             float* log_z = nullptr, float softcap = 0.0f) = 0;

  // ---- the head's logits: a multiplier and a soft cap --------------------------------------
  // In place, x[i] = c·tanh(mult·x[i] / c) for i < n with c > 0 (model.logit_softcap: Gemma 2's,
  // modded-nanogpt's; kept within (−c, c)), or mult·x[i] with c = 0 (μP's output multiplier,
  // model.mup_base_width). Its backward: the loss kernels' softcap factor, and dloss_scale
  // times mult.
  virtual void scale_cap_logits(float* x, size_t n, float mult, float c) = 0;

  // ---- a clamp (model.clip_qkv: OLMo's clamp of q, k and v) --------------------------------
  // out[i] = min(max(inp[i], −c), c) for i < n (out may be inp); its gradient in place, d[i] = 0
  // where the clamp cut (inp[i] < −c or > c: inp is the clamp's input), as torch.clamp's.
  virtual void clamp(float* out, const float* inp, size_t n, float c) = 0;
  virtual void clamp_backward(float* d, const float* inp, size_t n, float c) = 0;

  // ---- hidden dropout (train.hidden_dropout; the mask of kernels/dropout_mask.h) ------------
  // In place over `rows` rows of C values: x[r·C + c] = x·dropout_scale(p) where
  // dropout_keeps(key_r, site, c, dropout_threshold(p)), else x·0 (a NaN stays NaN); keys holds
  // each row's 64-bit key as two int32 words (low first). The same call on an output gradient is
  // the backward.
  virtual void dropout(float* x, const int32_t* keys, int rows, int C, uint32_t site, float p) = 0;

  // ---- vocabulary-parallel softmax cross-entropy (tensor parallelism) -----------------------
  // Each rank holds logits [N,Vp] for its slice of the vocabulary, of which the first V columns
  // are real (V may be 0 on a rank holding only padding rows); targets[n] is the target's column
  // in this slice, or < 0 when another rank holds it. The caller combines the per-row results
  // over the tensor-parallel group between the calls:
  //  1. logits_row_max: row_max[n] = max_{j<V} logits[n,j] (-inf when V = 0); argmax[n] = the
  //     first j attaining it, as a float (-1 when V = 0).   Caller: all-reduce max of row_max.
  //  2. softmax_partial_sums (row_max now global): sum_exp[n] = Σ_{j<V} exp(logits[n,j] −
  //     row_max[n]) (0 when V = 0); target_logit[n] = logits[n, targets[n]] when
  //     0 <= targets[n] < V, else 0.   Caller: all-reduce sums; loss = log(sum) + max − target.
  //  3. crossentropy_backward_partial: in place, logits[n,j] = (exp(logits[n,j] − row_max[n]) /
  //     sum_exp[n] · (1 + 2·z_loss·log Z) − [j == targets[n]]) · dloss_scale for j < V, log Z =
  //     row_max + log sum_exp (z_loss 0: no z-loss), and 0 for V <= j < Vp; a row whose target
  //     is kIgnoredTarget becomes all 0 (the caller drops its loss); with softcap = c > 0 each
  //     value j < V times 1 − (logits[n,j] / c)², as crossentropy_forward_backward's.
  // All row vectors are [N] floats in the backend's memory.
  virtual void logits_row_max(float* row_max, float* argmax, const float* logits, int N, int V,
                              int Vp) = 0;
  virtual void softmax_partial_sums(float* sum_exp, float* target_logit, const float* logits,
                                    const float* row_max, const int32_t* targets, int N, int V,
                                    int Vp) = 0;
  virtual void crossentropy_backward_partial(float* logits, const float* row_max,
                                             const float* sum_exp, const int32_t* targets, int N,
                                             int V, int Vp, float dloss_scale, float z_loss = 0.0f,
                                             float softcap = 0.0f) = 0;

  // ---- mixed precision: bf16 activations and weight copies, fp32 parameter gradients --------
  // The same ops as above with every activation, activation gradient, weight and logit in bf16
  // (bf16.h), while parameter gradients (dwte, dwpe, dweight, dbias), LayerNorm mean/rstd,
  // losses, row statistics and the attention log-sum-exp stay fp32. Semantics (the contract the
  // CPU backend implements literally and the CUDA kernels are tested against): widen the bf16
  // inputs to float, compute as the fp32 op does with fp32 accumulation, round each bf16 output
  // once (an accumulated bf16 output: round(old + contribution)).
  virtual bf16_t* alloc_bf16(size_t n) {  // zero-filled, 64-byte aligned
    return reinterpret_cast<bf16_t*>(alloc((n + 1) / 2));
  }
  virtual void free_bf16(bf16_t* p) { free(reinterpret_cast<float*>(p)); }
  virtual void zero(bf16_t* p, size_t n) = 0;
  virtual void convert(bf16_t* dst, const float* src, size_t n) = 0;  // round to nearest even
  virtual void convert(float* dst, const bf16_t* src, size_t n) = 0;

  virtual void encoder_forward(bf16_t* out, const int32_t* tokens, const bf16_t* wte,
                               const bf16_t* wpe, int B, int T, int C,
                               const int32_t* positions = nullptr) = 0;
  virtual void encoder_backward(float* dwte, float* dwpe, const bf16_t* dout, const int32_t* tokens,
                                int B, int T, int C, const int32_t* positions = nullptr) = 0;
  virtual void layernorm_forward(bf16_t* out, float* mean, float* rstd, const bf16_t* inp,
                                 const bf16_t* weight, const bf16_t* bias, int N, int C,
                                 float eps = kNormEps) = 0;
  virtual void layernorm_backward(bf16_t* dinp, float* dweight, float* dbias, const bf16_t* dout,
                                  const bf16_t* inp, const bf16_t* weight, const float* mean,
                                  const float* rstd, int N, int C) = 0;
  virtual void matmul_forward(bf16_t* out, const bf16_t* inp, const bf16_t* weight,
                              const bf16_t* bias, int N, int IC, int OC) = 0;
  virtual void matmul_backward(bf16_t* dinp, float* dweight, float* dbias, const bf16_t* dout,
                               const bf16_t* inp, const bf16_t* weight, int N, int IC, int OC,
                               GradMode mode = GradMode::accumulate) = 0;
  virtual void residual_layernorm_forward(bf16_t* sum, bf16_t* out, float* mean, float* rstd,
                                          const bf16_t* a, const bf16_t* b, const bf16_t* weight,
                                          const bf16_t* bias, int N, int C, float eps = kNormEps) {
    add(sum, a, b, size_t(N) * size_t(C));
    layernorm_forward(out, mean, rstd, sum, weight, bias, N, C, eps);
  }
  // The fused FFN's first layer: pre = inp · Wᵀ + b and out = gelu(pre), both kept (the
  // backward needs pre); out may be computed from pre before its rounding to bf16. Its backward
  // is gelu_backward then matmul_backward. The default runs the two ops.
  virtual void matmul_gelu_forward(bf16_t* pre, bf16_t* out, const bf16_t* inp,
                                   const bf16_t* weight, const bf16_t* bias, int N, int IC,
                                   int OC) {
    matmul_forward(pre, inp, weight, bias, N, IC, OC);
    gelu_forward(out, pre, size_t(N) * size_t(OC));
  }
  // As the fp32 versions: a bias gradient alone, and the FFN's second layer backward through
  // the GELU.
  virtual void bias_backward(float* dbias, const bf16_t* dout, int N, int OC) = 0;
  virtual void matmul_backward_gelu(bf16_t* dpre, bf16_t* dact, float* dweight, float* dbias,
                                    const bf16_t* dout, const bf16_t* act, const bf16_t* pre,
                                    const bf16_t* weight, int N, int IC, int OC,
                                    GradMode mode = GradMode::accumulate) {
    matmul_backward(dact, dweight, dbias, dout, act, weight, N, IC, OC, GradMode::overwrite);
    gelu_backward(dpre, pre, dact, size_t(N) * size_t(IC), mode);
  }
  // FP8 linear layers (run.fp8 = tensorwise; core/fp8.h). absmax writes max |x| over the n
  // values into out[0] (a float of this backend's memory; +inf if any value is NaN, which any
  // maximum keeps, unlike a NaN, and fp8_scale turns into NaN), so the caller can take the
  // maximum over the ranks holding pieces of a tensor before the product.
  // matmul_forward_fp8 is matmul_forward with inp and weight through e4m3 at their tensorwise
  // scales s_i = fp8_scale(amax[0], e4m3), s_w = fp8_scale(amax[1], e4m3):
  //   out = round( Σ_k fp8_round(inp·s_i)·fp8_round(W·s_w) / (s_i·s_w) + bias )   (fp32 sums)
  // matmul_backward_fp8 is matmul_backward with both products in fp8: dout through e5m2 at
  // s_d = fp8_scale(amax[2], e5m2), inp and weight through e4m3 as in the forward; the bias
  // gradient sums the bf16 dout itself. amax points at three floats (inp, weight, dout) of this
  // backend's memory. The caller guarantees IC and OC are multiples of 16 (the GPU's FP8
  // products need it); N is any number of rows (an expert's share of a micro-batch).
  virtual void absmax(float* out, const bf16_t* x, size_t n) = 0;
  // absmax of each of `segments` row ranges of x (rows of `width` values): segment s is rows
  // [begin[s], end[s]) (both on the host), its maximum into out[s·out_stride]; an empty one gives
  // 0. As absmax on each range (this default), in one pass where a backend has it (the GPU's:
  // one launch for up to 256 of them: a mixture of experts' per-expert scales).
  virtual void absmax_rows(float* out, size_t out_stride, const bf16_t* x, size_t width,
                           const int64_t* begin, const int64_t* end, int segments) {
    for (int s = 0; s < segments; ++s)
      absmax(out + size_t(s) * out_stride, x + size_t(begin[s]) * width,
             size_t(end[s] - begin[s]) * width);
  }
  virtual void matmul_forward_fp8(bf16_t* out, const bf16_t* inp, const bf16_t* weight,
                                  const bf16_t* bias, int N, int IC, int OC, const float* amax) = 0;
  virtual void matmul_backward_fp8(bf16_t* dinp, float* dweight, float* dbias, const bf16_t* dout,
                                   const bf16_t* inp, const bf16_t* weight, int N, int IC, int OC,
                                   const float* amax, GradMode mode = GradMode::accumulate) = 0;
  // Causal self-attention, flash-attention style: only lse [B,NH,T] (fp32, natural log of the
  // softmax denominator of each query row, of the scaled scores) is kept for backward,
  // no T×T matrix. Backward recomputes the probabilities from qkv and lse; it reads the
  // forward's out; dqkv (+=). Layouts and key_begin as the fp32 attention. With sinks (bf16
  // logits, as the fp32 op's) lse includes the sink's term, ln(exp(z_h) + Σ_k exp(s_k)), and
  // the backward pass adds dL/dz_h = −Σ_rows exp(z_h − lse)·(dout·out) to dsinks (fp32).
  virtual void attention_forward(bf16_t* out, float* lse, const bf16_t* qkv, int B, int T, int C,
                                 int NH, int NKV, const int32_t* key_begin = nullptr,
                                 QueryRows rows = {}, float scale = 0.0f, float softcap = 0.0f,
                                 AttentionDropout dropout = {}, const bf16_t* sinks = nullptr) = 0;
  virtual void attention_backward(bf16_t* dqkv, const bf16_t* dout, const bf16_t* qkv,
                                  const bf16_t* out, const float* lse, int B, int T, int C, int NH,
                                  int NKV, GradMode mode = GradMode::accumulate,
                                  const int32_t* key_begin = nullptr, QueryRows rows = {},
                                  float scale = 0.0f, float softcap = 0.0f,
                                  AttentionDropout dropout = {}, const bf16_t* sinks = nullptr,
                                  float* dsinks = nullptr) = 0;
  // As the fp32 SwiGLU; computed in fp32, each output rounded once.
  virtual void geglu_forward(bf16_t* out, const bf16_t* pre, int N, int H) = 0;
  virtual void geglu_backward(bf16_t* dpre, const bf16_t* pre, const bf16_t* dout, int N, int H,
                              GradMode mode = GradMode::accumulate) = 0;
  virtual void swiglu_forward(bf16_t* out, const bf16_t* pre, int N, int H, GluShape glu = {}) = 0;
  virtual void swiglu_backward(bf16_t* dpre, const bf16_t* pre, const bf16_t* dout, int N, int H,
                               GradMode mode = GradMode::accumulate, GluShape glu = {}) = 0;
  // As the fp32 rope; each rotated element computed in fp32 and rounded once.
  virtual void rope(bf16_t* qkv, const float* table, int N, int T, int pos0, int C, int NH, int NKV,
                    bool inverse, const int32_t* positions = nullptr, int rot = 0) = 0;
  // As the fp32 qk_norm ops; computed in fp32 from the bf16 values (r, dw fp32), each bf16 output
  // rounded once (accumulating: round(old + gradient)).
  virtual void qk_norm_forward(bf16_t* out, float* rstd, const bf16_t* qkv, const bf16_t* wq,
                               const bf16_t* wk, int N, int C, int NH, int NKV,
                               float eps = kNormEps) = 0;
  virtual void qk_norm_backward(bf16_t* dqkv, float* dwq, float* dwk, const bf16_t* dout,
                                const bf16_t* qkv, const bf16_t* wq, const bf16_t* wk,
                                const float* rstd, int N, int C, int NH, int NKV,
                                GradMode mode = GradMode::accumulate) = 0;
  // As the fp32 qk_full_norm ops, in fp32 from the bf16 values, each bf16 output rounded once.
  virtual void qk_full_norm_sums(float* sums, const bf16_t* qkv, const bf16_t* dout,
                                 const bf16_t* wq, const bf16_t* wk, const float* rstd, int N,
                                 int C, int NH, int NKV) = 0;
  virtual void qk_full_norm_forward(bf16_t* out, float* rstd, const bf16_t* qkv, const float* sums,
                                    const bf16_t* wq, const bf16_t* wk, int N, int C, int NH,
                                    int NKV, int Dq, int Dk, float eps = kNormEps) = 0;
  virtual void qk_full_norm_backward(bf16_t* dqkv, float* dwq, float* dwk, const bf16_t* dout,
                                     const bf16_t* qkv, const bf16_t* wq, const bf16_t* wk,
                                     const float* rstd, const float* dots, int N, int C, int NH,
                                     int NKV, int Dq, int Dk,
                                     GradMode mode = GradMode::accumulate) = 0;
  // As the fp32 attention_decode; scores, softmax and sums in fp32, out rounded once.
  virtual void attention_decode(bf16_t* out, const bf16_t* qkv, int B, int stride, int p, int n,
                                int C, int NH, int NKV, int window = 0, float scale = 0.0f,
                                float softcap = 0.0f, const bf16_t* sinks = nullptr) = 0;
  virtual void gelu_forward(bf16_t* out, const bf16_t* inp, size_t n) = 0;
  virtual void gelu_backward(bf16_t* dinp, const bf16_t* inp, const bf16_t* dout, size_t n,
                             GradMode mode = GradMode::accumulate) = 0;
  virtual void activation_forward(Activation f, bf16_t* out, const bf16_t* inp, size_t n) = 0;
  virtual void activation_backward(Activation f, bf16_t* dinp, const bf16_t* inp,
                                   const bf16_t* dout, size_t n,
                                   GradMode mode = GradMode::accumulate) = 0;
  virtual void add(bf16_t* out, const bf16_t* a, const bf16_t* b, size_t n) = 0;
  virtual void accumulate(bf16_t* dst, const bf16_t* src, size_t n) = 0;
  // Cross-entropy over bf16 logits (dlogits written back in bf16); losses/correct/statistics
  // fp32 and computed from the widened logits.
  virtual void crossentropy_forward_backward(bf16_t* logits, float* losses, float* correct,
                                             const int32_t* targets, int N, int V, int Vp,
                                             float dloss_scale, float z_loss = 0.0f,
                                             float* log_z = nullptr, float softcap = 0.0f) = 0;
  // Computed in fp32 from the widened value, rounded once.
  virtual void scale_cap_logits(bf16_t* x, size_t n, float mult, float c) = 0;
  // Compared in fp32 from the widened values (a bound c is exact in bf16 where it is
  // representable; the clamped values are inp's or ±c rounded once).
  virtual void clamp(bf16_t* out, const bf16_t* inp, size_t n, float c) = 0;
  virtual void clamp_backward(bf16_t* d, const bf16_t* inp, size_t n, float c) = 0;
  // The kept values scaled in fp32 from the widened value, rounded once.
  virtual void dropout(bf16_t* x, const int32_t* keys, int rows, int C, uint32_t site, float p) = 0;
  virtual void logits_row_max(float* row_max, float* argmax, const bf16_t* logits, int N, int V,
                              int Vp) = 0;
  virtual void softmax_partial_sums(float* sum_exp, float* target_logit, const bf16_t* logits,
                                    const float* row_max, const int32_t* targets, int N, int V,
                                    int Vp) = 0;
  virtual void crossentropy_backward_partial(bf16_t* logits, const float* row_max,
                                             const float* sum_exp, const int32_t* targets, int N,
                                             int V, int Vp, float dloss_scale, float z_loss = 0.0f,
                                             float softcap = 0.0f) = 0;

  // ---- mixture of experts (model.moe_experts; the model's use: src/model/gpt_moe.cpp) --------
  // N tokens, each sent to k of E experts (top-k routing: Switch, Mixtral, DeepSeek). Activations
  // (logits, x, y and their gradients) come in fp32 and bf16 (computed in fp32, each output
  // rounded once); probabilities, gates and their gradients are fp32; expert and slot are the
  // backend's ints. Choice i = n·k + j is token n's j-th expert.
  //  moe_route (`routing`: moe_routing.h): probs[N,E] = the scores, the softmax of each row of
  //    logits (or with routing.sigmoid each logit's sigmoid); expert[N,k] the columns of the k
  //    largest probs[n,e] + bias[e] (routing.bias; none: 0), largest first (equal ones: the lower
  //    column first), among the experts of the row's chosen groups under routing.groups > 1
  //    (E/groups >= 2 experts each, group_top_k of them, k at most their experts; E <= 512,
  //    kMaxExperts); gate[N,k] their scores (without the bias), divided by their sum when
  //    routing.normalize (Mixtral's choice), times routing.scale; lse[N] (fp32, may be null)
  //    each row's log Σ_e exp(logits), the router z-loss's.
  //  moe_dispatch: the N·k choices ordered by expert, stably (by i within an expert): slot[i] =
  //    choice i's place in that order; counts[e] (host) = the choices of expert e; prob_sums[e]
  //    (host) = Σ_n probs[n,e], summed in row order. Waits for the device (the counts size the
  //    experts' products).
  //  moe_gather: out[slot[i], :] = x[i / k, :], rows of C: each expert's tokens contiguous.
  //  moe_combine: out[n, :] = Σ_j gate[n·k + j]·y[slot[n·k + j], :], j in order, summed in fp32,
  //    written over out; gate null: weights 1 (moe_gather's gradient).
  //  moe_combine_backward: dy[slot[i], :] = gate[i]·dout[i / k, :] (written); dgate[i] =
  //    Σ_c dout[i / k, c]·y[slot[i], c] (fp32, written).
  //  moe_route_backward: dlogits[N,E] (written) from dgate[N,k] through the gates' scale,
  //    normalization and the scores (softmax or sigmoid, as `routing` says; its bias has no
  //    gradient), with the load-balancing loss's aux[e] (HOST memory, [E]; null: none;
  //    read at the call, so the GPU needs no copy of it and no wait): the gradient of
  //    Σ_e aux[e]·P[n,e] for every row, P the softmax's probabilities, or with sigmoid scores
  //    the scores divided by their row's sum (DeepSeek-V3's). z_loss = c > 0 (ST-MoE's router
  //    z-loss, c·lse² per row; lse as moe_route gave it; softmax scores only) adds
  //    2c·lse[n]·probs[n,e] to dlogits[n,e].
  //  moe_shared_gate: s[n] = sigmoid(logits[n]) (fp32), the gate of each row's shared experts'
  //    output (Qwen2-MoE's shared_expert_gate); moe_shared_gate_backward: dlogits[n] =
  //    ds[n]·s[n]·(1 − s[n]) (written). The scaling itself is moe_combine's with k = 1.
  virtual void moe_route(float* probs, int32_t* expert, float* gate, const float* logits, int N,
                         int E, int k, const MoeRouting& routing, float* lse = nullptr) = 0;
  virtual void moe_route(float* probs, int32_t* expert, float* gate, const bf16_t* logits, int N,
                         int E, int k, const MoeRouting& routing, float* lse = nullptr) = 0;
  virtual void moe_dispatch(int32_t* slot, int* counts, float* prob_sums, const int32_t* expert,
                            const float* probs, int N, int E, int k) = 0;
  virtual void moe_gather(float* out, const float* x, const int32_t* slot, int N, int k, int C) = 0;
  virtual void moe_gather(bf16_t* out, const bf16_t* x, const int32_t* slot, int N, int k,
                          int C) = 0;
  virtual void moe_combine(float* out, const float* y, const int32_t* slot, const float* gate,
                           int N, int k, int C) = 0;
  virtual void moe_combine(bf16_t* out, const bf16_t* y, const int32_t* slot, const float* gate,
                           int N, int k, int C) = 0;
  virtual void moe_combine_backward(float* dy, float* dgate, const float* dout, const float* y,
                                    const int32_t* slot, const float* gate, int N, int k,
                                    int C) = 0;
  virtual void moe_combine_backward(bf16_t* dy, float* dgate, const bf16_t* dout, const bf16_t* y,
                                    const int32_t* slot, const float* gate, int N, int k,
                                    int C) = 0;
  virtual void moe_route_backward(float* dlogits, const float* dgate, const float* probs,
                                  const int32_t* expert, const float* aux, int N, int E, int k,
                                  const MoeRouting& routing, const float* lse = nullptr,
                                  float z_loss = 0.0f) = 0;
  virtual void moe_route_backward(bf16_t* dlogits, const float* dgate, const float* probs,
                                  const int32_t* expert, const float* aux, int N, int E, int k,
                                  const MoeRouting& routing, const float* lse = nullptr,
                                  float z_loss = 0.0f) = 0;
  virtual void moe_shared_gate(float* s, const float* logits, int N) = 0;
  virtual void moe_shared_gate(float* s, const bf16_t* logits, int N) = 0;
  virtual void moe_shared_gate_backward(float* dlogits, const float* ds, const float* s, int N) = 0;
  virtual void moe_shared_gate_backward(bf16_t* dlogits, const float* ds, const float* s,
                                        int N) = 0;

  // ---- reductions and optimizer updates ------------------------------------------------------
  virtual double sum_squares(const float* x, size_t n) = 0;   // accumulated in double
  virtual double sum_squares(const bf16_t* x, size_t n) = 0;  // of the widened values, in double
  virtual void scale(float* x, float s, size_t n) = 0;        // x *= s
  // The exponential moving average of weights (optim.ema_decay d): ema += w·(p − ema) with the
  // new weights' share w = 1 − d (formed in double by the caller: d itself rounded to fp32 would
  // lose w for d near 1).
  virtual void ema_update(float* ema, const float* p, size_t n, float w) = 0;
  // AdamW (PyTorch semantics; bias corrections precomputed by the caller):
  //   m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g²;
  //   p -= lr * (wd * p + (m / bc1) / (sqrt(v / bc2) + eps))
  // With `copy`, the same pass also writes copy[i] = p[i] rounded to bf16 (the model's bf16
  // weights; equal to convert() after the update, without a second pass over the weights).
  // g enters as g·grad_scale (fp32): the clipping factor, applied in the same pass instead of
  // a scale() over the gradient before it.
  virtual void adamw_update(float* p, const float* g, float* m, float* v, size_t n, float lr,
                            float beta1, float beta2, float eps, float wd, float bc1, float bc2,
                            bf16_t* copy = nullptr, float grad_scale = 1.0f) = 0;
  // adamw_update over several ranges at once: for each run r, the elements [r.begin, r.end) of
  // p, g, m, v (and copy) with weight decay r.wd; elements between runs are not touched. Runs
  // are non-empty (begin < end), sorted and disjoint. The optimizer's whole update is one call (one
  // kernel on the GPU instead of one per tensor); the default calls adamw_update per run.
  struct UpdateRun {
    size_t begin, end;
    float wd;
    // The run's learning rate is lr times it (LrScales: μP's hidden matrices, the embeddings'
    // and the head's own rates).
    float lr_scale = 1.0f;
  };
  virtual void adamw_update_runs(float* p, const float* g, float* m, float* v,
                                 const UpdateRun* runs, size_t nruns, float lr, float beta1,
                                 float beta2, float eps, float bc1, float bc2,
                                 bf16_t* copy = nullptr, float grad_scale = 1.0f) {
    for (size_t r = 0; r < nruns; ++r) {
      const size_t at = runs[r].begin, n = runs[r].end - runs[r].begin;
      adamw_update(p + at, g + at, m + at, v + at, n, lr * runs[r].lr_scale, beta1, beta2, eps,
                   runs[r].wd, bc1, bc2, copy != nullptr ? copy + at : nullptr, grad_scale);
    }
  }
  // SGD with momentum (PyTorch semantics, dampening 0, decoupled-free L2 as PyTorch):
  //   g' = g + wd p;  buf = mu buf + g';  p -= lr buf.  `copy`, grad_scale as for adamw_update.
  virtual void sgd_update(float* p, const float* g, float* buf, size_t n, float lr, float momentum,
                          float wd, bf16_t* copy = nullptr, float grad_scale = 1.0f) = 0;
  // Lion (Chen et al. 2023; decoupled weight decay): g' = g·grad_scale;
  //   c = b1 m + (1-b1) g';  p = p (1 - lr wd) - lr sign(c);  m = b2 m + (1-b2) g'.
  //   `copy` as for adamw_update.
  virtual void lion_update(float* p, const float* g, float* m, size_t n, float lr, float beta1,
                           float beta2, float wd, bf16_t* copy = nullptr,
                           float grad_scale = 1.0f) = 0;
  // Muon (torch.optim.Muon), the two element-wise halves around the orthogonalization of a
  // matrix's update, which the optimizer composes from matmuls (optim/muon.h):
  //   muon_momentum: g' = g·grad_scale;  buf = mu buf + g';  u = nesterov ? g' + mu buf : buf
  //   muon_apply:    p = p (1 - lr wd) - lr·scale·o  (o: the orthogonalized u);  `copy` as for
  //                  adamw_update.
  virtual void muon_momentum(float* buf, float* u, const float* g, size_t n, float mu,
                             bool nesterov, float grad_scale = 1.0f) = 0;
  virtual void muon_apply(float* p, const float* o, size_t n, float lr, float wd, float scale,
                          bf16_t* copy = nullptr) = 0;
};

std::unique_ptr<Backend> make_cpu_backend();

}  // namespace triad
