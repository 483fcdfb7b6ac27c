// A GPT model's shape: every model.* setting that decides its math and tensors (GptShape), and
// the few facts derived from it alone (vocabulary padding, the MLP kind, the rotary table).
// Header-only but for rope_table (src/model/gpt.cpp); of the backend it uses only its enums and
// constants (Activation, kNormEps, qkv_width in backend.h), no communicator.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "triad/kernels/backend.h"

namespace triad {

// The largest model triad takes, from a config or from a checkpoint's attributes alike: far beyond
// any model trained, and small enough that the layout's sizes and the plan's per-layer tables
// stay well inside their integers.
inline constexpr int64_t kMaxLayers = int64_t(1) << 16, kMaxHeads = int64_t(1) << 16,
                         kMaxWidth = int64_t(1) << 20, kMaxSeqLen = int64_t(1) << 24,
                         kMaxVocab = int64_t(1) << 30;

// Rules across model keys that a config (train/config_validate.cpp) and a checkpoint's attributes
// read without one (io/model_attributes.cpp) both obey, each naming its own input. M is the
// config's ModelConfig or the checkpoint's ModelShape.
// NoPE layers (model.nope_every): in [0, 2^30]; > 0 only with rope, and not with latent
// attention (its rotation is one per layer, shared by the heads).
template <class M>
bool nope_every_built(const M& m) {
  return m.nope_every >= 0 && m.nope_every <= (int64_t(1) << 30) &&
         (m.nope_every == 0 || (m.position == "rope" && m.kv_lora_rank == 0));
}
// The windowed layers' own base (model.rope_local_theta) undoes neither DeepSeek's YaRN score
// scale (every layer's scores, rope_yarn_mscale_all_dim > 0; Qwen's and OLMo 3's YaRN scale the
// full layers' cos and sin alone, which the local table leaves out) nor latent attention's single
// rotation.
template <class M>
bool rope_local_theta_built(const M& m) {
  return m.rope_local_theta == 0 ||
         ((m.rope_scaling != "yarn" || m.rope_yarn_mscale_all_dim == 0) && m.kv_lora_rank == 0);
}

struct GptShape {
  int n_layer = 0, n_head = 0, n_embd = 0, seq_len = 0, vocab_size = 0, padded_vocab_size = 0;
  // Positions (model.position): learned (GPT-2's wpe table added to the embedding), or rotary
  // (rope: no wpe; every layer rotates each head's q and k by angles pos·rope_theta^(−2i/hd),
  // the "rotate half" pairing of GPT-NeoX and Llama; see Backend::rope).
  bool rope = false;
  double rope_theta = 10000.0;
  // The windowed layers' base instead (model.rope_local_theta > 0, Gemma 3's): their rotation
  // pos·rope_local_theta^(−2i/hd), without the scalings below; the full-attention layers keep
  // rope_theta (and the scaling). 0: rope_theta in every layer.
  double rope_local_theta = 0.0;
  // Whether layer `layer` rotates by the local base (rope_table(shape, true)).
  bool local_rope(int layer) const { return rope && rope_local_theta > 0 && windowed(layer); }
  // Layers that rotate nothing (model.nope_every = N: layers N, 2N, .., 1-based; SmolLM3's NoPE
  // layers, attending without positions).
  int nope_every = 0;
  bool rotates(int layer) const {
    return rope && !(nope_every > 0 && (layer + 1) % nope_every == 0);
  }
  // Llama 3.1's rope scaling (model.rope_scaling = llama3; rope_factor 1: none): frequencies
  // whose wavelength exceeds rope_original_positions / rope_low_freq divided by rope_factor,
  // those below rope_original_positions / rope_high_freq kept, those between interpolated
  // smoothly (rope_table).
  double rope_factor = 1.0, rope_low_freq = 1.0, rope_high_freq = 4.0;
  int rope_original_positions = 8192;
  // YaRN instead (model.rope_scaling = yarn; Qwen's long-context setting): each frequency f
  // blends f (pairs turning more than beta_fast times in rope_original_positions) with
  // f / rope_factor (fewer than beta_slow times), linearly between, and cos and sin are scaled by
  // m(rope_mscale) / m(rope_mscale_all_dim) (rope_table), the attention scores by
  // m(rope_mscale_all_dim)² (scores_scale), with YaRN's m(x) = 0.1·x·ln(rope_factor) + 1 (1 where
  // x = 0 or rope_factor <= 1). Qwen's YaRN is mscale 1, mscale_all_dim 0 (cos and sin times
  // 0.1·ln(rope_factor) + 1, the scores as they are); DeepSeek-V3's both 1 (the other way round).
  bool yarn = false;
  double rope_beta_fast = 32.0, rope_beta_slow = 1.0;
  // The ramp's ends rounded to whole pairs (floor, ceil; YaRN's and Qwen's), or not (false:
  // model.rope_yarn_truncate, gpt-oss's).
  bool rope_yarn_truncate = true;
  double rope_mscale = 1.0, rope_mscale_all_dim = 0.0;
  double yarn_m(double x) const {
    return x > 0 && rope_factor > 1 ? 0.1 * x * std::log(rope_factor) + 1 : 1.0;
  }
  // What YaRN multiplies the attention scores by: m(rope_mscale_all_dim)² (1 without YaRN).
  double yarn_scores_mult() const { return yarn ? std::pow(yarn_m(rope_mscale_all_dim), 2) : 1.0; }
  // LongRoPE instead (model.rope_scaling = longrope; Phi-3's long-context setting), where
  // rope_ext holds one divisor per rotated pair (rot() / 2; empty: no longrope): frequency f_i
  // becomes f_i / rope_ext[i], and cos and sin are scaled by sqrt(1 + ln s / ln L) for the
  // stretch s = rope_factor > 1 of the original context L = rope_original_positions (rope_table).
  std::vector<double> rope_ext = {};
  // Linear scaling instead (model.rope_scaling = linear, position interpolation; Gemma 3 4B to
  // 27B's full-attention layers): every frequency f becomes f / rope_factor.
  bool rope_linear = false;
  // Partial rotary (model.rotary_dim > 0, even, at most hd: GPT-NeoX's rotary_pct, Hugging Face's
  // partial_rotary_factor, modded-nanogpt's half-truncated rope): only the first rotary_dim of
  // each q and k head's values rotate, pairs (x_i, x_{i+rotary_dim/2}) by angles
  // pos·rope_theta^(−2i/rotary_dim); the rest carry no position. 0: all hd of them.
  int rotary_dim = 0;
  // Normalization (model.norm): LayerNorm (weight and bias) or RMSNorm (rmsnorm: weight only, no
  // centering, as Llama); ln_1, ln_2 and ln_f alike.
  bool rmsnorm = false;
  // The normalizations' epsilon (model.norm_eps): ln_1, ln_2, ln_f and the QK-norms (1e-5:
  // GPT-2, Llama; Qwen2's is 1e-6).
  float norm_eps = kNormEps;
  // Biases (model.bias): false drops every bias, of the linear layers and of the LayerNorms
  // (nanoGPT's bias = False; Llama has none either).
  bool bias = true;
  // c_attn's bias without the others (model.qkv_bias, with bias false: Qwen2's q, k and v
  // projections have biases, its other linear layers none).
  bool qkv_bias = false;
  // The MLP's biases without the attention's (model.mlp_bias, with bias false: GPT-J's c_fc and
  // c_proj have biases, its q, k, v and output projections none).
  bool mlp_bias = false;
  // The LayerNorms' biases without the linear layers' (model.norm_bias, with bias false and
  // LayerNorm: Nemotron's, StableLM's blocks).
  bool norm_bias = false;
  // The MLP (model.mlp, model.mlp_hidden): GPT-2's gelu(x·W_fcᵀ + b)·W_projᵀ, or SwiGLU (swiglu:
  // c_fc holds the gate rows, then the up rows; (silu(gate)·up)·W_projᵀ, as Llama), with hidden()
  // units: mlp_hidden, or by default 4·n_embd for GELU and for SwiGLU the multiple of 64 at or
  // above 8·n_embd/3 (Llama's rule: about GELU's parameter count). relu2: the GELU MLP's shape
  // with the squared ReLU, max(x, 0)² (So et al.'s Primer; Nemotron-4, modded-nanogpt). geglu:
  // SwiGLU's shape with gelu(gate)·up, GELU's tanh approximation (Gemma's).
  // gelu_exact: the GELU MLP with GELU itself, ½·x·(1 + erf(x/√2)) (GPT-NeoX's, BERT's), not
  // its tanh approximation. relu: the GELU MLP's shape with the ReLU, max(x, 0) (OPT's).
  bool swiglu = false;
  // SwiGLU's shape (model.glu_alpha, glu_limit, glu_offset; gpt-oss's 1.702, 7, 1): the gate's
  // activation g·σ(alpha·g), gate and up clamped at limit (0: not), offset added to the up
  // projection (Backend::swiglu_forward's GluShape). The defaults are Llama's SwiGLU.
  float glu_alpha = 1.0f, glu_limit = 0.0f, glu_offset = 0.0f;
  GluShape glu() const { return GluShape{glu_alpha, glu_limit, glu_offset}; }
  bool relu2 = false;
  bool geglu = false;
  bool gelu_exact = false;
  bool relu = false;
  // The activations relu2, gelu_exact and relu run as a pass of their own.
  Activation pointwise() const {
    return relu2 ? Activation::relu2 : relu ? Activation::relu : Activation::gelu_exact;
  }
  bool gated() const { return swiglu || geglu; }  // c_fc holds gate and up rows
  // GPT-2's tanh GELU, which rides in c_fc's product (its epilogue on the GPU); every other
  // activation is a pass of its own after it.
  bool gelu_in_product() const { return !gated() && !relu2 && !gelu_exact && !relu; }
  int mlp_hidden = 0;
  // The output layer (model.tie_embeddings): wte itself (tied, GPT-2), or a tensor of its own,
  // lm_head/weight [padded_vocab_size, C] on the last stage (false, as Llama).
  bool tied = true;
  // A bias on the untied head's logits (model.head_bias; Phi-2's, GPT-J's): lm_head/bias
  // [padded_vocab_size], split over the tensor-parallel ranks as lm_head's rows (padding zero).
  bool head_bias = false;
  // Key/value heads (model.n_kv_head): 0 = n_head (GPT-2); fewer, dividing n_head, is
  // grouped-query attention: c_attn holds q for n_head heads, then k and v for n_kv_head heads
  // each, and query head h attends with key/value head h % n_kv_head (Backend attention ops).
  int n_kv_head = 0;
  // Per-head RMSNorm of q and k (model.qk_norm): right after c_attn, before the rotation, each
  // q head's hd values normalized and scaled by attn/q_norm/weight [hd], each k head's by
  // attn/k_norm/weight (as Qwen3 and Gemma 3; Backend::qk_norm_forward).
  bool qk_norm = false;
  // model.qk_norm_full: one RMSNorm over each row's whole q (n_head·hd values) and one over its
  // whole k (kv_heads·hd), weights of those widths (OLMo-2's, OLMoE's;
  // Backend::qk_full_norm_forward); with tensor parallelism the weights split with the heads and
  // the sums of squares are all-reduced over the group.
  bool qk_norm_full = false;
  // Attention sinks (model.attn_sinks; gpt-oss's): a learned logit per query head and layer,
  // attn/sinks [n_head], that joins each softmax's denominator as a key without a value, so a
  // head can give a query less than all of its attention: out = Σ_j p_j·v_j with
  // p_j = exp(s_j) / (exp(sink) + Σ_k exp(s_k)). Split over the tensor-parallel ranks as the
  // query heads.
  bool attn_sinks = false;
  // Each head's width (model.head_dim): 0 = n_embd / n_head (GPT-2, Llama); another (Qwen3's
  // 128 at n_embd 1024 and 16 heads) makes the attention attn_width() = n_head·head_dim wide:
  // c_attn [attn_width + 2·kv_heads·head_dim, C] and attn.c_proj [C, attn_width].
  int head_dim = 0;
  // Attention within documents (data.document_mask; model/attention_mask.h): a token equal to
  // document_token starts a document, and in training and evaluation each token attends to the
  // tokens of its own document only. -1: to every earlier token of the sequence (GPT-2).
  // Generation and scoring (decode_logits, sequence_losses) take a prompt as one document.
  int32_t document_token = -1;
  // Positions restart at every document (data.reset_positions, with a document mask): in training
  // and evaluation a token's position is its distance from its document's first token, as if
  // each packed document were a sequence of its own (Megatron's reset_position_ids): the row of
  // wpe it adds, and its rotation under rope. With rotary positions that changes nothing but
  // rounding (a score depends on the distance between query and key, and the mask keeps both in
  // one document); with the learned table it is another model. Generation and scoring take a
  // prompt as one document.
  bool reset_positions = false;
  // Sliding-window attention (model.sliding_window, Mistral 7B v0.1's): each token attends to the
  // last sliding_window tokens at most, itself included, in every layer and in generation too.
  // 0: to every earlier token.
  int sliding_window = 0;
  // Interleaved local and global attention (model.full_attention_every, Gemma 3's
  // sliding_window_pattern; gpt-oss alternates): with a window, layer i (0-based, of the whole
  // model) attends to the whole context when full_attention_every > 0 and (i + 1) is a multiple of
  // it; the other layers keep to the window. 0: every layer keeps to the window.
  int full_attention_every = 0;
  // ... or, full_attention_first (model.full_attention_first, GPT-Neo's), when i is a multiple of
  // it: each group of full_attention_every layers starts with the full one instead of ending.
  bool full_attention_first = false;
  // The attention scores' scale (model.attn_scale): q·k times attn_scale; 0: 1/sqrt(hd()), the
  // usual one (μP's 1/hd, Gemma 2's 1/sqrt(query_pre_attn_scalar) and Granite's multiplier are
  // others).
  float attn_scale = 0.0f;
  // μP, the maximal update parametrization (model.mup_base_width > 0; Tensor Programs V, the rules
  // of the mup package for Adam), relative to a base model mup_base_width wide: with the width
  // multiplier m = n_embd / mup_base_width, the hidden matrices (c_attn, attn.c_proj, c_fc,
  // mlp.c_proj) start with 1/sqrt(m) of the usual deviation and AdamW moves them at lr / m
  // (LrScales::hidden), the logits are multiplied by 1/m, and the attention scores
  // scaled by 1/sqrt(hd·m) unless attn_scale says otherwise (1/sqrt(hd) at the base width, 1/hd
  // in the limit of wider heads: right where the head count stays and the heads widen; where the
  // heads stay as wide and grow in number, μP keeps 1/sqrt(hd), which attn_scale must then
  // say). Embeddings, norms, biases and the head keep their initialization and learning rate.
  // 0: the standard parametrization.
  int mup_base_width = 0;
  double mup_mult() const { return mup_base_width > 0 ? double(n_embd) / mup_base_width : 1.0; }
  // The scale the attention ops take: attn_scale, or μP's, or 0 (their 1/sqrt(hd)); times YaRN's
  // multiplier (DeepSeek's mscale_all_dim) where it is not 1.
  float scores_scale() const {
    const double mult = yarn_scores_mult();
    if (attn_scale > 0.0f) return float(attn_scale * mult);
    const double width = mla() ? mla_qk_dim() : hd();  // (MLA: the zero padding adds nothing)
    if (mup_base_width > 0) return float(mult / std::sqrt(width * mup_mult()));
    return mla() || mult != 1.0 ? float(mult / std::sqrt(width)) : 0.0f;
  }
  // The logits' multiplier: μP's 1/m, else 1.
  float logits_mult() const { return float(1.0 / mup_mult()); }
  // The head's logits times this (model.logit_scale; Granite's 1/logits_scaling, Cohere's
  // logit_scale), before the cap; 1: none.
  float logit_scale = 1.0f;
  // What multiplies the head's products: μP's multiplier and logit_scale.
  float head_mult() const { return logits_mult() * logit_scale; }
  // Each branch's output times this before its residual add (model.residual_scale; Granite's
  // residual_multiplier), after its norm under branch_norm; 1: none.
  float residual_scale = 1.0f;
  // Soft-capped logits (model.logit_softcap; Gemma 2's 30, modded-nanogpt's): the head's logits
  // become c·tanh(logit / c), within (−c, c), before the loss, evaluation and sampling
  // (Backend::scale_cap_logits). 0: none.
  float logit_softcap = 0.0f;
  // Soft-capped attention scores (model.attn_softcap; Gemma 2's 50, Grok-1's 30): each scaled
  // score s becomes c·tanh(s / c) before the softmax, in training, evaluation and decoding
  // (Backend::attention_forward). 0: none.
  float attn_softcap = 0.0f;
  // c_attn's output clamped to [−clip_qkv, clip_qkv] before the rotation (model.clip_qkv:
  // OLMo-1.7's 8); the clamp's input kept (Set::Layer qkv_pre) for its gradient. 0: none.
  float clip_qkv = 0.0f;
  // The embedding's output times this (model.embed_scale; Gemma's √n_embd, which its tied head
  // does not share); 1: none.
  float embed_scale = 1.0f;
  // Parallel attention and MLP (model.parallel_residual; GPT-J's, GPT-NeoX's, PaLM's): ln_2
  // reads the layer's input x, and the layer's output is (x + attn(ln_1(x))) + mlp(ln_2(x)).
  bool parallel_residual = false;
  // One norm for both parallel branches (model.shared_norm, with parallel_residual; GPT-J's,
  // Phi-2's, Cohere's, Falcon-7B's): the MLP reads ln_1's output, and there are no ln_2 tensors.
  bool shared_norm = false;
  // A norm on each branch's output before its residual add (model.branch_norm; Gemma 2's and
  // Gemma 3's "sandwich" norms, Swin v2's and CogView's): residual2 = x + ln_attn_out(attn(..)),
  // residual3 = residual2 + ln_mlp_out(mlp(..)), each norm of the kind and the biases ln_1 has
  // (tensors h/<l>/ln_attn_out/* and h/<l>/ln_mlp_out/*, initialized to weight 1, bias 0).
  bool branch_norm = false;
  // ln_1 and ln_2 before the branches (model.pre_norm, true); false (with branch_norm): none,
  // each branch reads the residual stream as it is, residual2 = x + ln_attn_out(attn(x))
  // (OLMo-2's reordered norms). The branches' inputs are then copies of the stream, in the
  // buffers ln_1's and ln_2's outputs would take (Gpt::pre_norm_forward).
  bool pre_norm = true;
  // The window changes during training (train.window_warmup, Gpt::set_window): the attention
  // mask is planned for even where sliding_window cuts nothing. Not part of the model.
  bool window_scheduled = false;
  // train.hidden_dropout = p: training passes zero each value of the embedding's output and of
  // each branch's output (after its norm and scale, before it joins the residual stream) with
  // probability p and scale the rest by 1/(1 − p) (Megatron's hidden dropout; nanoGPT's dropout
  // but for the attention probabilities'); the masks of kernels/dropout_mask.h, keyed by
  // Gpt::set_dropout_sequence. Evaluation and generation never drop. Not part of the model.
  float hidden_dropout = 0.0f;
  // train.attention_dropout = p: training passes zero each attention probability with
  // probability p and scale the rest by 1/(1 − p), after the softmax (nanoGPT's attn_dropout,
  // Megatron's attention_dropout); the masks of kernels/dropout_mask.h, keyed as the hidden
  // dropout's. Not part of the model.
  float attention_dropout = 0.0f;
  // The dropout site of layer l's attention branch and of its MLP branch (dropout_mask.h): under
  // parallel_residual the branches' sum takes one mask, the MLP's.
  uint32_t attn_dropout_site(int l) const { return parallel_residual ? 2 + 2 * l : 1 + 2 * l; }
  static uint32_t mlp_dropout_site(int l) { return 2 + 2 * uint32_t(l); }
  bool windowed(int layer) const {
    return sliding_window > 0 &&
           !(full_attention_every > 0 &&
             (layer + (full_attention_first ? 0 : 1)) % full_attention_every == 0);
  }
  // The window of layer `layer` for attention_decode (0: none).
  int layer_window(int layer) const { return windowed(layer) ? sliding_window : 0; }
  // Whether sequences of T tokens need an attention mask beyond the causal one.
  bool masks_attention(int T) const {
    return document_token >= 0 || window_scheduled || (sliding_window > 0 && sliding_window < T);
  }
  // Whether the full-attention layers need a mask of their own (the documents without the
  // window).
  bool masks_full_layers() const { return document_token >= 0 && full_attention_every > 0; }
  int kv_heads() const { return n_kv_head > 0 ? n_kv_head : n_head; }
  // Multi-head latent attention (model.kv_lora_rank > 0, DeepSeek-V2's MLA; src/model/
  // gpt_mla.cpp): no c_attn. Per token, the queries come from x (q_lora_rank 0) or from a latent
  // c_q = RMSNorm(attn/q_a · x) of q_lora_rank values, q = attn/q_b · c_q, each head's
  // qk_rope_head_dim rotated values first, then its qk_nope_head_dim others; the keys and values
  // from [c_kv | k_rope] = attn/kv_a · x: the latent c_kv (kv_lora_rank values) through
  // RMSNorm (attn/kv_a_norm) and attn/kv_b gives each head's k values and its v; k_rope, rotated,
  // is every head's. A head's k is [k_rope | its own], so q·k = q_rope·k_rope + q_nope·k_nope.
  // The attention runs on heads of hd() = max(q and k's width, v's) values, the narrower ones
  // padded with zeros, scaled by 1/sqrt(q and k's width); c_proj reads each head's v_head_dim
  // outputs (proj_width()). Tensor parallelism splits q_b's and kv_b's rows by heads and c_proj's
  // input columns; q_a, kv_a and their norms are replicated.
  int kv_lora_rank = 0, q_lora_rank = 0;
  int qk_nope_head_dim = 0, qk_rope_head_dim = 0, v_head_dim = 0;
  // attn/q_a_norm's and attn/kv_a_norm's epsilon (model.mla_norm_eps); 0: norm_eps.
  float mla_norm_eps = 0;
  bool mla() const { return kv_lora_rank > 0; }
  float latent_norm_eps() const { return mla_norm_eps > 0 ? mla_norm_eps : norm_eps; }
  int mla_qk_dim() const { return qk_nope_head_dim + qk_rope_head_dim; }
  int hd() const {
    if (mla()) return std::max(mla_qk_dim(), v_head_dim);
    return head_dim > 0 ? head_dim : n_embd / n_head;
  }
  int attn_width() const { return n_head * hd(); }  // q's width, and the attention output's
  // attn.c_proj's input width: the attention's output, under MLA each head's v_head_dim of it.
  int proj_width() const { return mla() ? n_head * v_head_dim : attn_width(); }
  // The width the attention's products take per token and head, averaged over the scores' (q·k)
  // and the values' products: hd() but under MLA.
  double attn_flops_width() const {
    return mla() ? 0.5 * n_head * double(mla_qk_dim() + v_head_dim) : double(attn_width());
  }
  // The attention's weights a token is multiplied by: c_attn's and c_proj's, or MLA's five.
  double attn_weights_per_token() const {
    const double C = n_embd;
    if (!mla()) return double(qkv_rows() + attn_width()) * C;
    const double q_in = q_lora_rank > 0 ? q_lora_rank : C;
    return (q_lora_rank > 0 ? q_lora_rank * C : 0.0) + n_head * double(mla_qk_dim()) * q_in +
           double(kv_lora_rank + qk_rope_head_dim) * C +
           n_head * double(qk_nope_head_dim + v_head_dim) * kv_lora_rank + C * proj_width();
  }
  int rot() const { return rotary_dim > 0 ? rotary_dim : hd(); }  // rotated values per head
  int qkv_rows() const { return qkv_width(attn_width(), n_head, kv_heads()); }  // c_attn's rows
  int hidden() const {
    if (mlp_hidden > 0) return mlp_hidden;
    return gated() ? (8 * n_embd + 3 * 64 - 1) / (3 * 64) * 64 : 4 * n_embd;
  }
  int fc_rows() const { return gated() ? 2 * hidden() : hidden(); }  // c_fc's output width
  // Mixture of experts (model.moe_experts > 0; src/model/gpt_moe.cpp): every layer's MLP is
  // moe_experts MLPs of hidden() units each (GELU or SwiGLU, no biases), and a router
  // (mlp/router/weight [E, C]) sends each token to moe_top_k of them: the softmax of its logits
  // (or under moe_sigmoid each logit's sigmoid, as DeepSeek-V3), the k largest scores (chosen by
  // score + the layer's router bias, Gpt::router_bias; renormalized to sum 1 under
  // moe_normalize, as Mixtral and DeepSeek-V3, else kept, as Switch; times moe_routed_scale)
  // weigh the chosen experts' outputs. Dropless: every expert takes
  // all the tokens sent to it, unless moe_capacity_factor = f > 0: then each expert takes at most
  // moe_capacity(N) of a pass's N·k choices on a rank, the first in choice order, and a dropped
  // choice's expert output is zero (Switch's and GShard's capacity). The experts' weights are [E,
  // fc_rows, C] (mlp/experts/c_fc) and [E, C, hidden] (mlp/experts/c_proj), each expert's split
  // over tp as the dense MLP's.
  int moe_experts = 0, moe_top_k = 2;
  bool moe_normalize = true;
  bool moe_sigmoid = false;                 // model.moe_score = sigmoid
  float moe_routed_scale = 1.0f;            // model.moe_routed_scale
  int moe_groups = 1, moe_group_top_k = 1;  // model.moe_groups (MoeRouting::groups)
  bool moe_group_by_best = false;           // model.moe_group_score = max
  double moe_capacity_factor = 0.0;
  // The rows an expert takes of a pass of N rows: ceil(f·N·k/E) (at least 1), or all N·k.
  int moe_capacity(int N) const {
    if (moe_capacity_factor <= 0) return N * moe_top_k;
    const double c = std::ceil(moe_capacity_factor * N * moe_top_k / moe_experts);
    return std::max(1, int(std::min<double>(c, double(N) * moe_top_k)));
  }
  // Shared experts (model.moe_shared_hidden > 0; DeepSeekMoE's, Qwen2-MoE's, Llama 4's): a dense
  // MLP of that many hidden units (the experts' activation, no biases) that every token passes
  // through, its output added to the routed experts' (mlp/shared/c_fc [shared_fc_rows, C],
  // mlp/shared/c_proj [C, moe_shared_hidden], split over tp as the dense MLP's).
  int moe_shared_hidden = 0;
  // The shared experts' output scaled by a sigmoid gate of each row (model.moe_shared_gate;
  // Qwen2-MoE's shared_expert_gate): sigmoid(x · mlp/shared/gate [1, C]ᵀ), replicated over tp.
  bool moe_shared_gate = false;
  // Learned biases in the layers with experts (model.moe_bias; gpt-oss's): the router's logits
  // plus mlp/router/bias [E] (before the choice and the gates, unlike Gpt::router_bias, which
  // only chooses), and each expert's c_fc and c_proj products plus its row of
  // mlp/experts/c_fc/bias [E, fc_rows] (split as c_fc's rows) and mlp/experts/c_proj/bias [E, C]
  // (replicated over tp, added by tp rank 0 as the experts' outputs are partial sums).
  bool moe_bias = false;
  // Multi-token prediction (model.mtp_depth = D; DeepSeek-V3's MTP modules, Megatron's
  // --mtp-num-layers): after the layers, D modules in a chain, module j (0-based) predicting the
  // token j + 2 positions ahead. Module j reads the previous hidden state h (what the head reads:
  // ln_f's output, or module j − 1's final norm's output) and the embedding e of the token j + 1
  // ahead (wte[tok] times embed_scale, no positions), and runs one block of layer n_layer + j's
  // kind (moe_layer, windowed, ...) on mtp/j/eh_proj · [norm(e) | norm(h)]; its own final norm's
  // output goes through the model's head. Tensors mtp/j/{ln_e, ln_h, eh_proj [C, 2C], <the
  // block's>, ln_f} on the last pipeline stage (GptShape::mtp_layer). Training adds its losses,
  // weighted (Gpt::set_mtp_weight); evaluation and generation use the layers and the head alone.
  int mtp_depth = 0;
  int mtp_layer(int j) const { return n_layer + j; }  // module j's block, as a layer index
  // Dense layers among them (model.moe_first_dense, model.moe_every): layer i (0-based) has the
  // experts when i >= moe_first_dense and (i − moe_first_dense + 1) is a multiple of moe_every,
  // the others GPT-2's MLP (DeepSeek's first dense layers: moe_first_dense; Llama 4's
  // interleaving: moe_every = 2, layers 1, 3, 5, ...).
  int moe_first_dense = 0, moe_every = 1;
  // The dense layers' MLP width among the experts (model.moe_dense_hidden; 0: hidden(), the
  // experts'): DeepSeek-V2's and V3's first layers (10944 and 18432 units beside experts of 1408
  // and 2048), Qwen-MoE's mlp_only_layers (intermediate_size).
  int moe_dense_hidden = 0;
  bool moe() const { return moe_experts > 0; }
  bool moe_layer(int l) const {
    return moe() && l >= moe_first_dense && (l - moe_first_dense + 1) % moe_every == 0;
  }
  int dense_hidden() const { return moe_dense_hidden > 0 ? moe_dense_hidden : hidden(); }
  int dense_fc_rows() const { return gated() ? 2 * dense_hidden() : dense_hidden(); }
  // Layer l's MLP widths: its experts' (each expert's) or its dense MLP's.
  int layer_hidden(int l) const { return moe_layer(l) ? hidden() : dense_hidden(); }
  // Whether some layer is dense (the widest dense and expert buffers both planned).
  bool has_dense_layer(int n) const {
    for (int l = 0; l < n; ++l)
      if (!moe_layer(l)) return true;
    return false;
  }
  // Whether layer l's parallel branches can be reduced as one over tp tensor-parallel ranks
  // (Gpt::fuses_branches): parallel blocks, tp > 1, no norm on each branch's reduced output
  // (model.branch_norm), no experts (whose outputs travel on their own).
  bool joins_branches(int l, int tp) const {
    return parallel_residual && tp > 1 && !branch_norm && !moe_layer(l);
  }
  int shared_fc_rows() const { return gated() ? 2 * moe_shared_hidden : moe_shared_hidden; }
  // A split backward's weight pass reads layer l's MLP output gradient (Set::Layer::dfcproj):
  // the dense c_proj's, or that of shared experts without a gate (with one, its gated product's).
  bool weight_pass_reads_mlp_output(int l) const {
    return !moe_layer(l) || (moe_shared_hidden > 0 && !moe_shared_gate);
  }
  // The MLP weights a token of layer l is multiplied with: c_fc's and c_proj's, of k experts, the
  // router and the shared experts in a layer with experts.
  double mlp_weights_per_token(int l) const {
    const double C = n_embd, dense = double(fc_rows() + hidden()) * C;
    if (!moe_layer(l)) return double(dense_fc_rows() + dense_hidden()) * C;
    return dense * moe_top_k + double(moe_experts) * C +
           double(shared_fc_rows() + moe_shared_hidden + (moe_shared_gate ? 1 : 0)) * C;
  }
};

// The rotary embedding's angles (shape.rope): [seq_len, r] floats (r = shape.rot(): hd, or the
// rotary_dim of partial rotary), position p's row holding cos(p·f_i) for i < r/2, then
// sin(p·f_i), f_i = rope_theta^(−2i/r); computed in double and rounded once, so every backend
// reads the same table. local: the windowed layers' table (rope_local_theta, no scaling).
std::vector<float> rope_table(const GptShape& shape, bool local = false);

// Whether a parameter has a row per vocabulary entry (wte, an untied head's lm_head and its bias):
// rows from vocab_size on are padding, zero and not parameters of the model.
inline bool has_vocabulary_rows(const std::string& name) {
  return name == "wte/weight" || name == "lm_head/weight" || name == "lm_head/bias";
}

// The prefix of layer l's tensors without its slash: "h/<l>", or a multi-token prediction
// module's block "mtp/<j>" (l = n_layer + j).
inline std::string layer_name(const GptShape& shape, int l) {
  return l < shape.n_layer ? "h/" + std::to_string(l) : "mtp/" + std::to_string(l - shape.n_layer);
}

// The multi-token prediction module j whose tensor (or router bias) `name` is (mtp/<j>/...,
// mtp/<j>), -1 for any other.
inline int mtp_module_of(const std::string& name) {
  return name.starts_with("mtp/") ? std::stoi(name.substr(4)) : -1;
}

// Whether a tensor holds a mixture of experts' weights ([E, ...], mlp/experts/...).
inline bool is_expert_tensor(const std::string& name) {
  return name.find("/mlp/experts/") != std::string::npos;
}

// The weights of a matrix a token is multiplied with (numel of this rank's part): an expert
// tensor's k of E experts, any other 2-D tensor whole; 0 for vectors and biases (the experts'
// [E, ..] of model.moe_bias too).
inline double matmul_weights_per_token(size_t numel, const std::string& name, size_t dims,
                                       const GptShape& shape) {
  if (name.ends_with("/bias")) return 0.0;
  if (is_expert_tensor(name)) return double(numel) * shape.moe_top_k / shape.moe_experts;
  return dims == 2 ? double(numel) : 0.0;
}

// DESIGN.md §3: the rows of wte, vocab_size rounded up to a multiple of 128·tp.
inline int padded_vocab_size(int vocab_size, int tp) {
  const int m = 128 * tp;
  return (vocab_size + m - 1) / m * m;
}

// Sets s's MLP kind from a model.mlp value (gelu, gelu_exact, swiglu, geglu, relu2 or relu);
// false for any other, s unchanged.
inline bool set_mlp(GptShape& s, const std::string& mlp) {
  if (mlp != "gelu" && mlp != "gelu_exact" && mlp != "swiglu" && mlp != "geglu" && mlp != "relu2" &&
      mlp != "relu")
    return false;
  s.swiglu = mlp == "swiglu";
  s.geglu = mlp == "geglu";
  s.relu2 = mlp == "relu2";
  s.gelu_exact = mlp == "gelu_exact";
  s.relu = mlp == "relu";
  return true;
}

}  // namespace triad
