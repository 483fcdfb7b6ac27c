// The activation plan of the GPT (private to src/model): every buffer the forward pass keeps
// for the backward pass, and the scratch the backward pass needs, carved out of two backend
// allocations (activations of type A, fp32 statistics) sized for the largest micro-batch.
// Nothing is allocated in the step loop.
//
// A is the activation type: float (fp32 model) or bf16_t (mixed precision: activations and
// their gradients in bf16; LayerNorm statistics, losses and the attention's saved state fp32).
//
// A rank holds one or more chunks of layers (pipeline stages, virtual stages). Each chunk has
// `slots` activation sets, one per micro-batch the pipeline schedule keeps in flight on it;
// the backward scratch is shared by all; recomputation (Recompute in gpt.h) moves a set's
// layer internals into that shared scratch too. A schedule that splits the backward pass keeps
// a set until its weight pass, with the layers' output gradients (9C per token and layer at
// tp = 1; a layer with experts keeps its experts' rows' and its router's instead of the MLP's)
// added to it. A model for forward passes only (ActivationOptions::inference) has one set
// per chunk, no backward scratch, and every layer's internals in the shared scratch but its q|k|v,
// which decoding keeps. Widths are this rank's tensor-parallel shards:
// attention C/tp, MLP fc_rows/tp and hidden/tp (4C/tp for GPT-2), vocabulary Vp/tp; the residual
// stream is full width C.
#pragma once

#include <algorithm>
#include <type_traits>
#include <utility>
#include <vector>

#include "triad/kernels/backend.h"
#include "triad/model/gpt.h"

namespace triad {

// The rows of layer `layer`'s q|k|v a model for inference keeps per sequence between decoding
// calls (its share of the cache of keys and values), where fewer than seq_len: a windowed layer
// (model.sliding_window = W, not scheduled) whose 2·W is below seq_len keeps a ring of 2·W rows,
// position t in row t mod 2·W (Gpt::decode_ring); 0 for every other layer (seq_len rows, position
// t in row t). Its query at position t reads keys t − W + 1 .. t only: the ring's W rows more than
// that let a call keep the cache when it shares all but up to W + 1 of the previous call's tokens
// (multiple-choice scoring after a cached context). In bf16 the ring's copies move whole fp32
// words: an odd q|k|v width per rank keeps seq_len rows.
inline int kv_ring_rows(const GptShape& s, const ModelParallel& mp, bool bf16, int layer) {
  const int W = s.layer_window(layer);
  if (W <= 0 || s.window_scheduled || 2 * W >= s.seq_len) return 0;
  if (bf16 && (s.qkv_rows() / mp.tp) % 2 != 0) return 0;
  return 2 * W;
}

// Pointers to one layer's tensors inside a parameter-shaped buffer (weights of type T, or the
// fp32 gradients); null where the layer has no such tensor (or its gradient is not formed).
template <class T>
struct LayerTensors {
  T *ln1w, *ln1b, *qkvw, *qkvb, *qnw, *knw, *projw, *projb, *ln2w, *ln2b, *fcw, *fcb, *fcprojw,
      *fcprojb;
  T* routerw;  // model.moe_experts (fcw and fcprojw then hold every expert's, one after another)
  T *shfcw, *shprojw;            // model.moe_shared_hidden: the shared experts' c_fc and c_proj
  T* shgatew;                    // model.moe_shared_gate: their gate [1, C]
  T *aonw, *aonb, *monw, *monb;  // model.branch_norm: ln_attn_out's and ln_mlp_out's
  // Multi-head latent attention (GptShape::mla): q_a, q_a_norm, q_b, kv_a, kv_a_norm, kv_b.
  T *mqaw, *mqanw, *mqbw, *mkvaw, *mkvanw, *mkvbw;
  T* sinks;    // model.attn_sinks: [NH/tp], this rank's query heads'
  T* routerb;  // model.moe_bias: the router's bias [E] (fcb and fcprojb: the experts', [E, ..])
};

// The layer's tensors are specs[first ..]; pos[k] is where the one of kind k (Gpt::layer_slot_;
// all_layer_tensors' order for a layer with experts) sits among them, -1 for a bias or norm the
// model does not have (a null pointer, as the ops take it). base holds buffer element `origin` at
// base[0].
template <class T>
inline LayerTensors<T> layer_tensors(T* base, const std::vector<ParamSpec>& specs, int first,
                                     const int (&pos)[30], size_t origin = 0) {
  auto at = [&](int k) -> T* {
    return pos[k] < 0 ? nullptr : base + (specs[size_t(first + pos[k])].offset - origin);
  };
  return {at(0),  at(1),  at(2),  at(3),  at(4),  at(5),  at(6),  at(7),  at(8),  at(9),
          at(10), at(11), at(12), at(13), at(14), at(15), at(16), at(17), at(18), at(19),
          at(20), at(21), at(22), at(23), at(24), at(25), at(26), at(27), at(28), at(29)};
}

// gr without the gradients of frozen linear-layer tensors (train.freeze; frozen: per spec, empty
// for none), whose products the ops then skip: a frozen bias's, and a frozen weight's where its
// bias is gone too (the ops take a weight gradient without a bias gradient, not the reverse).
// The norms' stay: their ops form them with the input gradient.
inline LayerTensors<float> without_frozen(LayerTensors<float> gr, const std::vector<char>& frozen,
                                          int first, const int (&pos)[30]) {
  if (frozen.empty()) return gr;
  auto is_frozen = [&](int k) { return pos[k] >= 0 && frozen[size_t(first + pos[k])] != 0; };
  auto drop = [&](float*& w, int kw, float*& b, int kb) {
    if (is_frozen(kb)) b = nullptr;
    if (is_frozen(kw) && b == nullptr) w = nullptr;
  };
  drop(gr.qkvw, 2, gr.qkvb, 3);
  drop(gr.projw, 6, gr.projb, 7);
  drop(gr.fcw, 10, gr.fcb, 11);
  drop(gr.fcprojw, 12, gr.fcprojb, 13);
  drop(gr.routerw, 14, gr.routerb, 29);
  for (auto [k, p] : {std::pair{15, &gr.shfcw},
                      {16, &gr.shprojw},
                      {17, &gr.shgatew},
                      {22, &gr.mqaw},
                      {24, &gr.mqbw},
                      {25, &gr.mkvaw},
                      {27, &gr.mkvbw},
                      {28, &gr.sinks}})
    if (is_frozen(k)) *p = nullptr;
  return gr;
}

template <class A>
struct Gpt::Set {
  struct Layer {
    A *ln1, *ln1g, *ln2g;  // ln_1(x); the same over all rows (sequence parallel; else aliases)
    float *ln1_mean, *ln1_rstd;  //
    A *qkv, *atty;               // attention internals (local heads)
    // model.qk_norm: c_attn's output before the norm (qkv holds it normalized), and each row's
    // per-head 1/rms [rows, NHl + NKVl] (qk_norm_full: its q's and its k's, [rows, 2]).
    A* qkv_pre = nullptr;
    float* qk_rstd = nullptr;
    // Multi-head latent attention (GptShape::mla): the queries' latent before its norm [rows,
    // q_lora_rank] and the keys' and values' [rows, kv_lora_rank], with their norms' 1/rms.
    A *mla_cq = nullptr, *mla_lat = nullptr;
    float *mla_cq_rstd = nullptr, *mla_lat_rstd = nullptr;
    // fp32: probabilities [B,NH,T,T]; bf16: log-sum-exp [B,NH,T]. Context parallel: those of
    // the rank's two pieces of rows, one after the other (cp_attention_rows).
    float* att;
    // c_proj output (shared scratch, forward only; the layer's own under model.branch_norm, whose
    // ln_attn_out reads it in the backward pass, with pn1's statistics)
    A* attproj;
    float *pn1_mean = nullptr, *pn1_rstd = nullptr;
    A* residual2;                // x + attn
    A* ln2;                      // ln_2(residual2)
    float *ln2_mean, *ln2_rstd;  //
    A *fch, *fch_gelu, *fcproj;  // MLP (local hidden units; fcproj shared like attproj)
    float *pn2_mean = nullptr, *pn2_rstd = nullptr;  // ln_mlp_out's statistics
    // Mixture of experts (GptShape::moe): fch and fch_gelu hold the experts' N·k rows in expert
    // order, moe_x their inputs and moe_y their outputs (partial sums over tp); the router's
    // probabilities [N, E], gates [N, k], choices and their places in expert order (ints [N, k]),
    // and the choices of each expert (host, [E]).
    // Expert parallelism (ep > 1): moe_x, fch and fch_gelu hold the rows this rank's experts
    // received from the group (up to ep·N·k), grouped by expert; moe_recv[s·El + j] (host) the
    // rows rank s sent to local expert j, moe_rows[j] their sum over s, and moe_place (ints) each
    // received row's place in the grouping; moe_y the outputs of this rank's choices, returned.
    // A capacity (GptShape::moe_capacity): moe_kept (host, [E]) the choices each expert takes,
    // the first of its block; with ep > 1 only those travel, moe_keep (ints) listing their rows.
    A *moe_x = nullptr, *moe_y = nullptr;
    float *moe_probs = nullptr, *moe_gate = nullptr;
    float* moe_lse = nullptr;  // each row's log Σ exp of the router's logits (the z-loss's)
    int32_t *moe_expert = nullptr, *moe_slot = nullptr, *moe_place = nullptr;
    int32_t* moe_keep = nullptr;
    std::vector<int> moe_counts, moe_kept, moe_recv, moe_rows;
    // train.moe_aux_scope = sequence (Gpt::moe_sequence_stats): per sequence b of the
    // micro-batch, each expert's choices at [b·E + e] and its rows' probability sums at
    // [(B + b)·E + e] (host; over the whole sequence under context parallelism).
    std::vector<double> moe_seq;
    A *sh_fch = nullptr, *sh_act = nullptr;  // shared experts: c_fc's output and the activation
    float* sh_gate = nullptr;  // model.moe_shared_gate: each row's sigmoid gate of their output
    A* residual3;              // residual2 + mlp: the layer's output
    // A split backward (zero-bubble schedule): the output gradients of the four linear layers,
    // over all rows, that the input-gradient pass leaves for the weight pass — mlp.c_proj's
    // (C), c_fc's pre-activation (fc_rows/tp), attn.c_proj's (C) and c_attn's (qkv_rows/tp: 3C/tp
    // without grouped-query attention).
    A *dfcproj = nullptr, *dfch = nullptr, *dproj = nullptr, *dqkv = nullptr;
    // ... under multi-head latent attention, instead of c_attn's: the output gradients of q_b
    // (NHl·(nope + rope)), kv_b (NHl·(nope + v)), q_a (q_lora_rank: q_a_norm's input) and kv_a
    // (kv_lora_rank + rope), which mla_weights reads; dqkv is then the shared scratch's.
    A *mla_dq = nullptr, *mla_dkv = nullptr, *mla_dcq = nullptr, *mla_dckv = nullptr;
    // A layer with experts: dfch holds the experts' rows (as fch), and the weight pass reads the
    // experts' output gradients where their products ran (dexperts, rows as fch), the router's
    // logits' [N, E], the shared experts' output's (dshared, with their gate; else dfcproj is
    // it) and pre-activation's (dshared_fc), and the gate logit's (dshared_gate, [N]).
    A *dexperts = nullptr, *drouter = nullptr, *dshared = nullptr, *dshared_fc = nullptr;
    A* dshared_gate = nullptr;
  };
  A* input = nullptr;  // the chunk's input: wte[tok] + wpe[pos], or received
  std::vector<Layer> layers;
  // Last chunk only: final LayerNorm, and the gradient of its output (this rank's rows) that the
  // classifier leaves for the backward pass.
  A *lnf = nullptr, *dlnf = nullptr;
  float *lnf_mean = nullptr, *lnf_rstd = nullptr;
  A* lnfg = nullptr;  // ln_f over all rows (sequence parallel; else an alias of lnf)
  float *losses = nullptr, *correct = nullptr;
  const A* output() const { return layers.empty() ? input : layers.back().residual3; }
};

template <class A>
struct Gpt::Activations {
  static constexpr bool kFp32 = std::is_same_v<A, float>;
  using Layer = typename Set<A>::Layer;
  std::vector<std::vector<Set<A>>> sets;  // [local chunk][slot]
  // Backward scratch, reused by every layer of every chunk.
  A* dresidual;  // the residual stream's gradient
  // model.branch_norm, model.residual_scale or train.hidden_dropout: the gradient of a branch's
  // output (before its norm), and with a norm and either of the others the scaled (and dropped)
  // gradient the norm's backward reads.
  A *dbranch = nullptr, *dscaled = nullptr;
  // The layers' backward scratch (null on a pipeline stage without layers).
  A *dln = nullptr, *datty = nullptr, *dqkv = nullptr, *dfch = nullptr, *dfch_gelu = nullptr;
  A* dln_mlp = nullptr;  // model.shared_norm: the MLP's part of the shared norm's gradient
  // Recomputation: the GELU output every layer shares (gelu), or the one layer whose internals
  // every layer shares (full; its residual3 is unused).
  A* gelu_work = nullptr;
  Layer work{};
  float* datt_scratch = nullptr;  // fp32 attention backward only
  // Mixture of experts: the router's logits (forward) or their gradient (backward) [N, E]; the
  // experts' output gradients in expert order, then their input gradients [N·k, C]; the gates'
  // gradients [N, k].
  A *moe_logits = nullptr, *moe_dy = nullptr;
  float* moe_dgate = nullptr;
  // Expert parallelism: this rank's choices' rows in expert order before they leave [N·k, C],
  // rows as they arrive (by source) and grouped by expert (up to ep·N·k rows each, or with a
  // capacity E times it); with a capacity, the rows that travel, compacted [N·k, C].
  A *moe_local = nullptr, *moe_arrived = nullptr, *moe_grouped = nullptr, *moe_compact = nullptr;
  // Shared experts: their output before it joins the routed ones' (forward), and the gradients
  // of their activation and of c_fc's output (backward).
  A *sh_out = nullptr, *sh_dact = nullptr, *sh_dfch = nullptr;
  // Their gate (model.moe_shared_gate): its logits (forward) or their gradient (backward) [N];
  // the gated output (forward) or its gradient (backward) [N, C]; the gates' gradient [N]; and
  // the rows' own order 0 .. N−1, with which moe_combine scales rows.
  A *sh_glogit = nullptr, *sh_gated = nullptr;
  float* sh_dgate = nullptr;
  int32_t* row_order = nullptr;
  // tp > 1, last stage: the vocabulary-parallel cross-entropy's row statistics of one chunk of
  // logits (4 per row).
  float* ce_stats = nullptr;
  // model.qk_norm_full: each row's q and k sums of squares (forward) or Σ dout·w·x̂ (backward),
  // [rows, 2], all-reduced over the tensor-parallel group.
  float* qk_sums = nullptr;
  // Multi-head latent attention (Gpt::mla_project, mla_backward), over a pass's rows: the
  // normalized latents (q's, kv's), kv_a's output, q_b's and kv_b's outputs (in the backward
  // pass their gradients), the attention's output as c_proj reads it (each head's v_head_dim)
  // and its gradient; the backward's latents' gradients (after and before their norms) and the
  // shared rotated key's gradient (with one head's, as it is summed).
  A *mla_cqn = nullptr, *mla_latn = nullptr, *mla_ckv = nullptr, *mla_q = nullptr;
  A *mla_kv = nullptr, *mla_o = nullptr, *mla_do = nullptr;
  A *mla_dcqn = nullptr, *mla_dcq = nullptr, *mla_dlatn = nullptr, *mla_dlat = nullptr;
  A *mla_dkpe = nullptr, *mla_tmp = nullptr;
  A* logits = nullptr;  // last chunk held: logits_rows × V/tp, the classifier's chunk (dlogits)
  // Sequence parallel: partial sums over all rows before a reduce-scatter, gathered gradients,
  // and one LayerNorm's weight and bias gradients before their all-reduce (or, tp > 1 and
  // qk_norm, those of q_norm and k_norm).
  A* full = nullptr;
  float* ln_grads = nullptr;
  A *proj = nullptr, *ln_local = nullptr;
  // Parallel branches reduced as one (Gpt::fuses_branches), over all rows: attn.c_proj's partial
  // sums until mlp.c_proj's join them (forward), and the layer output's gradient gathered once
  // for both branches (backward, sequence parallel).
  A* branch_partial = nullptr;
  std::vector<A*> grad_sends;  // outgoing gradients of a pipeline step, one per send
  // bf16 only: fp32 staging of tensor-parallel reductions (MPI has no bf16 sum; summing in
  // fp32 also keeps the reduction's accumulation fp32), and one row of logits widened for the
  // host.
  float* reduce_wide = nullptr;
  float* row_wide = nullptr;
  // Context parallelism (cp > 1): a layer's q|k|v over whole sequences [B, T, Wl] (this rank's
  // rows, the other ranks' keys and values gathered around them), its gradient, and the packed
  // key and value columns that travel ([B·T, 2·NKVl·hd]: sent and received); bf16: their fp32
  // staging for the gradients' reduce-scatter (the packed gradients, then this rank's sum).
  A *cp_qkv = nullptr, *cp_dqkv = nullptr, *cp_send = nullptr, *cp_recv = nullptr;
  float* cp_wide = nullptr;
  // A model for inference with a ring in some layer (kv_ring_rows): the q|k|v rows a ring layer's
  // decoding attends over, each sequence's kept window followed by its new rows (B·seq_len rows:
  // the window and the new rows of a sequence are at most its positions up to the last new one).
  A* kv_window = nullptr;
  // Multi-token prediction (GptShape::mtp_depth; training, the last stage): module j's forward,
  // kept until its backward right after the losses (Gpt::mtp_step), reused by every
  // micro-batch. Rows as the residual stream's (R), but the projection's input (all rows, this
  // rank's 2·C/tp columns: its columns of norm(e), then of norm(h)) and lnfg (ln_f's output over
  // all rows, sequence parallel; else an alias of lnf).
  struct MtpModule {
    A *emb = nullptr, *en = nullptr, *hn = nullptr, *cat = nullptr, *in = nullptr;
    float *en_mean = nullptr, *en_rstd = nullptr, *hn_mean = nullptr, *hn_rstd = nullptr;
    Layer block{};
    A *lnf = nullptr, *lnfg = nullptr, *dlnf = nullptr;
    float *lnf_mean = nullptr, *lnf_rstd = nullptr, *losses = nullptr, *correct = nullptr;
  };
  std::vector<MtpModule> mtp;
  // Their backward scratch: the projection's input gradient [rows, 2·C/tp], one half's columns
  // in place over all rows before their reduction [rows, C], its reduced rows (sequence
  // parallel), and the embedding's gradient.
  A *mtp_dcat = nullptr, *mtp_dpart = nullptr, *mtp_dnorm = nullptr;
  A* mtp_demb = nullptr;

  // Plans and allocates the buffers on `be`; without a backend (be == nullptr) only plans them,
  // so that bytes() tells what the allocation would take (Gpt::memory_plan).
  Activations(const GptShape& s, const ModelParallel& mp, int B, const std::vector<int>& slots,
              int n_grad_sends, Recomputation recompute, int logits_rows, bool split_backward,
              bool inference, bool mtp_draft, Backend* be)
      : be_(be) {
    // Rows here: B sequences of seq_len tokens, of which a context-parallel rank holds 1/cp.
    const size_t BT = size_t(B) * size_t(mp.seq_rows(s.seq_len)), C = s.n_embd;
    const bool sp = mp.split_rows();
    const size_t R = sp ? BT / size_t(mp.tp) : BT;  // rows of the residual stream here
    const size_t Vl = size_t(s.padded_vocab_size) / size_t(mp.tp);
    const size_t Wl = size_t(s.qkv_rows()) / size_t(mp.tp);    // q|k|v (3·Cl without GQA)
    const size_t Al = size_t(s.attn_width()) / size_t(mp.tp);  // attention output (Cl)
    // Multi-head latent attention's sizes: c_proj's input (Ol), the heads here, the latents'
    // ranks and the rotated values per head.
    const size_t Ol = size_t(s.proj_width()) / size_t(mp.tp), NHl = size_t(s.n_head / mp.tp);
    const size_t rq = size_t(s.q_lora_rank), rkv = size_t(s.kv_lora_rank);
    const size_t dr = size_t(s.qk_rope_head_dim);
    // The MLP's widths on this rank: c_fc's outputs (the pre-activation, Fl) and the hidden
    // activation c_proj reads (Hl): 4C/tp both for GPT-2, 2·H/tp and H/tp for SwiGLU.
    const size_t Fl = size_t(s.fc_rows()) / size_t(mp.tp), Hl = size_t(s.hidden()) / size_t(mp.tp);
    // ... a dense layer's among experts (model.moe_dense_hidden; else Fl and Hl).
    const size_t dFl = size_t(s.dense_fc_rows()) / size_t(mp.tp);
    const size_t dHl = size_t(s.dense_hidden()) / size_t(mp.tp);
    // Whether this rank holds a layer with experts (GptShape::moe_layer): the scratch every layer
    // shares is sized for it then (the experts' k rows per token); and a dense layer.
    bool experts = false, dense = false;
    // Whether it holds a layer whose parallel branches are reduced as one (GptShape::
    // joins_branches).
    bool joins = false;
    for (size_t c = 0; c < slots.size(); ++c) {
      const int g = mp.global_chunk(int(c)), first = mp.first_layer(g, s.n_layer);
      for (int l = first; l < first + mp.chunk_layers(g, s.n_layer); ++l) {
        experts = experts || s.moe_layer(l);
        dense = dense || !s.moe_layer(l);
        joins = joins || s.joins_branches(l, mp.tp);
      }
    }
    // Training on the last stage: the multi-token prediction modules' blocks too.
    const bool mtp_here = !inference && s.mtp_depth > 0 && mp.holds_head();
    // Inference drafting with module 0 (Gpt::mtp_draft_logits): its block decodes as a layer.
    const bool mtp_decode = inference && mtp_draft && s.mtp_depth > 0 && mp.holds_head();
    for (int j = 0; (mtp_here || mtp_decode) && j < (mtp_here ? s.mtp_depth : 1); ++j) {
      const int l = s.mtp_layer(j);
      experts = experts || s.moe_layer(l);
      dense = dense || !s.moe_layer(l);
      joins = joins || s.joins_branches(l, mp.tp);
    }
    const bool has_layers = mp.rank_layers(s.n_layer) > 0 || mtp_here || mtp_decode;
    const size_t K = experts ? size_t(s.moe_top_k) : 1, E = size_t(s.moe_experts);
    // Rows on the experts' side: expert parallelism may bring this rank every rank's choices (the
    // worst case: its buffers are sized for it), at most ep·N·k rows; with a capacity c per
    // expert and source rank, at most E·c (each of its E/ep experts c from each of ep ranks).
    const size_t EP = size_t(mp.ep);
    const bool capped = s.moe_capacity_factor > 0;
    // (The scratch the dense layers share holds their BT rows too.)
    const size_t XR =
        !experts  ? BT
        : EP == 1 ? BT * K
                  : std::max(BT, std::min(EP * BT * K, capped ? E * size_t(s.moe_capacity(int(BT)))
                                                              : EP * BT * K));
    const size_t SFl = size_t(s.shared_fc_rows()) / size_t(mp.tp);  // shared experts' widths
    const size_t SHl = size_t(s.moe_shared_hidden) / size_t(mp.tp);
    const bool shared_gate = SHl > 0 && s.moe_shared_gate;
    const size_t nh = size_t(B) * size_t(s.n_head / mp.tp) * size_t(mp.seq_rows(s.seq_len));
    // Probabilities, or log-sum-exp. Context parallel: each of the two pieces' queries against
    // the keys up to its end (piece·(start + piece) per head; 2·cp + 1 pieces² together).
    const size_t piece = size_t(s.seq_len) / size_t(2 * mp.cp);
    const size_t att = !kFp32       ? nh
                       : mp.cp == 1 ? nh * s.seq_len
                                    : nh / (2 * piece) * piece * piece * size_t(2 * mp.cp + 1);
    std::vector<std::pair<A**, size_t>> plan;
    std::vector<std::pair<float**, size_t>> plan_f;
    std::vector<std::pair<int32_t**, size_t>> plan_i;
    auto want = [&plan](A*& p, size_t n) { plan.emplace_back(&p, n); };
    auto want_f = [&plan_f](float*& p, size_t n) { plan_f.emplace_back(&p, n); };
    auto want_i = [&plan_i](int32_t*& p, size_t n) { plan_i.emplace_back(&p, n); };
    // RMSNorm keeps no means: the null mean is what makes the LayerNorm ops normalize by the root
    // mean square (backend.h).
    const bool means = !s.rmsnorm;
    // One layer's internals (everything but its output, residual3). Under full recomputation
    // only the scratch layer `work` has them; under gelu its fch_gelu is the shared `gelu_work`.
    // moe: a layer with experts (the scratch layer: where any layer has them); also_dense: the
    // scratch layer where a dense layer shares it too (the larger of their MLP buffers).
    // The MLP's pre-activation and activation elements: the experts' rows or a dense layer's.
    const size_t moe_fc = XR * Fl, moe_h = XR * Hl, dense_fc = BT * dFl, dense_h = BT * dHl;
    const size_t most_fc = std::max(experts ? moe_fc : 0, dense ? dense_fc : 0);
    const size_t most_h = std::max(experts ? moe_h : 0, dense ? dense_h : 0);
    auto want_internals = [&](Layer& L, bool gelu_out, bool moe, bool also_dense = false) {
      const size_t Kl = moe ? size_t(s.moe_top_k) : 1;  // rows per token
      const size_t XRl = moe ? XR : BT;                 // rows on the experts' side
      if (!sp) want(L.ln1, R * C);                      // backward reads it (as ln1g)
      if (means) want_f(L.ln1_mean, R);
      want_f(L.ln1_rstd, R);
      want(L.qkv, BT * Wl);
      if (s.qk_norm || s.clip_qkv > 0) want(L.qkv_pre, BT * Wl);  // the norm's or clamp's input
      if (s.qk_norm)
        want_f(L.qk_rstd,
               s.qk_norm_full ? BT * 2 : BT * size_t(s.n_head + s.kv_heads()) / size_t(mp.tp));
      if (s.mla()) {  // the latents before their norms, which the backward pass reads
        if (rq > 0) want(L.mla_cq, BT * rq);
        if (rq > 0) want_f(L.mla_cq_rstd, BT);
        want(L.mla_lat, BT * rkv);
        want_f(L.mla_lat_rstd, BT);
      }
      if (!inference) want_f(L.att, att);  // inference attends without (attention_decode)
      want(L.atty, BT * Al);
      if (s.branch_norm) {  // the branches' outputs, which their norms' backward reads
        want(L.attproj, R * C);
        want(L.fcproj, R * C);
        if (means) want_f(L.pn1_mean, R);
        if (means) want_f(L.pn2_mean, R);
        want_f(L.pn1_rstd, R);
        want_f(L.pn2_rstd, R);
      }
      want(L.residual2, R * C);
      if (!s.shared_norm) {  // (shared: the MLP reads ln_1's output)
        if (!sp) want(L.ln2, R * C);
        if (means) want_f(L.ln2_mean, R);
        want_f(L.ln2_rstd, R);
      }
      want(L.fch, !moe ? dense_fc : also_dense ? std::max(moe_fc, dense_fc) : moe_fc);
      if (gelu_out)
        want(L.fch_gelu, !moe ? dense_h : also_dense ? std::max(moe_h, dense_h) : moe_h);
      if (moe) {
        want(L.moe_x, XRl * C);
        want(L.moe_y, BT * Kl * C);
        want_f(L.moe_probs, BT * E);
        want_f(L.moe_gate, BT * Kl);
        want_f(L.moe_lse, BT);
        want_i(L.moe_expert, BT * Kl);
        want_i(L.moe_slot, BT * Kl);
        if (EP > 1) want_i(L.moe_place, XRl);
        if (EP > 1 && capped) want_i(L.moe_keep, BT * Kl);
      }
      if (moe && SHl > 0) {
        want(L.sh_fch, BT * SFl);
        want(L.sh_act, BT * SHl);
      }
      if (moe && shared_gate) want_f(L.sh_gate, BT);
      if (sp) {
        want(L.ln1g, BT * C);
        if (!s.shared_norm) want(L.ln2g, BT * C);
      }
    };
    sets.resize(slots.size());
    // Inference: every layer shares the scratch layer's internals, as under full recomputation,
    // but keeps its own q|k|v.
    if (inference) recompute = Recomputation(Recompute::full);
    bool any_recompute = false;  // some chunk has layers that recompute: the scratch is needed
    bool rings = false;          // some layer keeps a ring of rows (kv_ring_rows)
    for (size_t c = 0; c < slots.size(); ++c) {
      const bool last = mp.global_chunk(int(c)) == mp.chunks() - 1;
      const int per_chunk = mp.chunk_layers(mp.global_chunk(int(c)), s.n_layer);
      any_recompute = any_recompute || recompute.count(per_chunk) > 0;
      sets[c].resize(size_t(slots[c]));
      for (auto& S : sets[c]) {
        want(S.input, R * C);
        S.layers.resize(size_t(per_chunk));
        for (int i = 0; i < per_chunk; ++i) {
          Layer& L = S.layers[size_t(i)];
          const Recompute r = recompute.in_layer(i);
          const int l = mp.first_layer(mp.global_chunk(int(c)), s.n_layer) + i;
          if (r != Recompute::full) want_internals(L, r == Recompute::none, s.moe_layer(l));
          if (inference) {  // the cache: seq_len rows per sequence, or a ring's
            const int ring = kv_ring_rows(s, mp, !kFp32, l);
            want(L.qkv, ring > 0 ? size_t(B) * size_t(ring) * Wl : BT * Wl);
            rings = rings || ring > 0;
          }
          want(L.residual3, R * C);
          if (split_backward) {
            const bool moe = s.moe_layer(l);
            // (Branches reduced as one: the weight pass reads their one gradient from dproj.)
            if (s.weight_pass_reads_mlp_output(l) && !s.joins_branches(l, mp.tp))
              want(L.dfcproj, BT * C);
            want(L.dfch, moe ? moe_fc : dense_fc);
            want(L.dproj, BT * C);
            if (!s.mla()) {
              want(L.dqkv, BT * Wl);
            } else {
              want(L.mla_dq, BT * NHl * size_t(s.mla_qk_dim()));
              want(L.mla_dkv, BT * NHl * size_t(s.qk_nope_head_dim + s.v_head_dim));
              if (rq > 0) want(L.mla_dcq, BT * rq);
              want(L.mla_dckv, BT * (rkv + dr));
            }
            if (moe) {
              want(L.dexperts, XR * C);
              want(L.drouter, BT * E);
              if (SHl > 0) want(L.dshared_fc, BT * SFl);
              if (shared_gate) {
                want(L.dshared, BT * C);
                want(L.dshared_gate, BT);
              }
            }
          }
        }
        if (last) {
          if (!sp) want(S.lnf, R * C);
          if (means) want_f(S.lnf_mean, R);
          want_f(S.lnf_rstd, R);
          if (!inference) want(S.dlnf, R * C);
          want_f(S.losses, BT);
          want_f(S.correct, BT);
          if (sp) want(S.lnfg, BT * C);
        }
      }
    }
    // A module's rows before its block: the embedding, the two norms, eh_proj's input (cat_cols
    // of it here) and output.
    auto want_module_inputs = [&](MtpModule& M, size_t cat_cols) {
      want(M.emb, R * C);
      want(M.en, R * C);
      want(M.hn, R * C);
      if (means) want_f(M.en_mean, R);
      if (means) want_f(M.hn_mean, R);
      want_f(M.en_rstd, R);
      want_f(M.hn_rstd, R);
      want(M.cat, BT * cat_cols);
      want(M.in, R * C);
    };
    if (mtp_here) {  // each module's forward kept for its backward, which follows at once
      const size_t Ch2 = 2 * C / size_t(mp.tp);  // eh_proj's input columns here
      mtp.resize(size_t(s.mtp_depth));
      for (int j = 0; j < s.mtp_depth; ++j) {
        MtpModule& M = mtp[size_t(j)];
        want_module_inputs(M, Ch2);
        want_internals(M.block, true, s.moe_layer(s.mtp_layer(j)));
        want(M.block.residual3, R * C);
        if (!sp) want(M.lnf, R * C);
        if (means) want_f(M.lnf_mean, R);
        want_f(M.lnf_rstd, R);
        want(M.dlnf, R * C);
        want_f(M.losses, BT);
        want_f(M.correct, BT);
        if (sp) want(M.lnfg, BT * C);
      }
      want(mtp_dcat, BT * Ch2);
      want(mtp_dpart, BT * C);
      if (sp) want(mtp_dnorm, R * C);
      want(mtp_demb, R * C);
    }
    if (mtp_decode) {  // module 0's rows, its block's internals the scratch layer's (below)
      MtpModule& M = mtp.emplace_back();
      want_module_inputs(M, 2 * C);
      want(M.block.qkv, BT * Wl);  // the block's cache: seq_len rows per sequence
      want(M.block.residual3, R * C);
      want(M.lnf, R * C);
      if (means) want_f(M.lnf_mean, R);
      want_f(M.lnf_rstd, R);
    }
    if (!inference) want(dresidual, R * C);
    if (!inference && has_layers) {
      // (the branch's share of the gradient where a scale or the dropout changes it)
      const bool own_share = s.residual_scale != 1.0f || s.hidden_dropout > 0.0f;
      if (s.branch_norm || own_share) want(dbranch, R * C);
      if (s.branch_norm && own_share) want(dscaled, R * C);
    }
    if (!inference && has_layers) {  // the layers' backward scratch
      want(dln, BT * C);
      if (s.shared_norm) want(dln_mlp, R * C);
      want(datty, BT * Al);
      // (else each layer's own; but the multi-token prediction modules' blocks, whose backward
      // runs whole under any schedule, read these)
      if (!split_backward || s.mla() || mtp_here) want(dqkv, BT * Wl);
      if (kFp32) want_f(datt_scratch, att);
      if (!split_backward || mtp_here) want(dfch, most_fc);
      want(dfch_gelu, most_h);
      if (experts) {
        want(moe_dy, BT * K * C);
        want_f(moe_dgate, BT * K);
      }
      if (experts && SHl > 0) {
        want(sh_dact, BT * SHl);
        want(sh_dfch, BT * SFl);
      }
      if (experts && shared_gate) want_f(sh_dgate, BT);
      if (s.mla()) {
        want(mla_do, BT * Ol);
        if (rq > 0) want(mla_dcqn, BT * rq);
        if (rq > 0) want(mla_dcq, BT * rq);
        want(mla_dlatn, BT * rkv);
        want(mla_dlat, BT * rkv);
        want(mla_dkpe, BT * dr);
        want(mla_tmp, BT * dr);
      }
    }
    if (s.mla() && has_layers) {
      if (rq > 0) want(mla_cqn, BT * rq);
      want(mla_latn, BT * rkv);
      want(mla_ckv, BT * (rkv + dr));
      want(mla_q, BT * NHl * size_t(s.mla_qk_dim()));
      want(mla_kv, BT * NHl * size_t(s.qk_nope_head_dim + s.v_head_dim));
      want(mla_o, BT * Ol);
    }
    if (experts) want(moe_logits, BT * E);
    if (experts && EP > 1) {
      want(moe_local, BT * K * C);
      want(moe_arrived, XR * C);
      want(moe_grouped, XR * C);
      if (capped) want(moe_compact, BT * K * C);
    }
    if (experts && SHl > 0) want(sh_out, BT * C);
    if (experts && shared_gate) {
      want(sh_glogit, BT);
      want(sh_gated, BT * C);
      want_i(row_order, BT);
    }
    if (mp.holds_head()) {  // it holds the last chunk
      want(logits, size_t(logits_rows) * Vl);
      if (mp.tp > 1) want_f(ce_stats, 4 * size_t(logits_rows));
    }
    if (any_recompute && recompute.mode == Recompute::gelu) want(gelu_work, most_h);
    if ((any_recompute || mtp_decode) && recompute.mode == Recompute::full)
      want_internals(work, true, experts, dense);
    want(proj, R * C);
    if (sp) want(ln_local, R * C);
    if (joins) want(branch_partial, BT * C);
    if (sp) want(full, BT * C);
    // One LayerNorm's (sequence parallel) or the q and k norms' (2·hd) weight gradients before
    // their tensor-parallel all-reduce.
    if (sp || (s.qk_norm && !s.qk_norm_full && mp.tp > 1)) want_f(ln_grads, 2 * C);
    if (s.qk_norm_full) want_f(qk_sums, BT * 2);
    if (!kFp32) {
      // (MLA's latents' gradients are all-reduced through it too: wider ranks than C.)
      if (mp.tp > 1) want_f(reduce_wide, std::max(BT * C + R * C, BT * std::max({rq, rkv, dr})));
      want_f(row_wide, size_t(s.padded_vocab_size));
    }
    if (rings) want(kv_window, BT * Wl);
    if (mp.cp > 1 && !inference) {
      const size_t whole = size_t(B) * s.seq_len, KVl = Wl - Al;
      want(cp_qkv, whole * Wl);
      want(cp_dqkv, whole * Wl);
      want(cp_send, whole * KVl);
      want(cp_recv, whole * KVl);
      if (!kFp32) want_f(cp_wide, whole * KVl + BT * KVl);
    }
    grad_sends.resize(size_t(n_grad_sends));
    for (auto& g : grad_sends) want(g, R * C);
    base_ = carve(plan, total_);
    base_f_ = carve(plan_f, total_f_);
    if (!plan_i.empty()) base_i_ = carve(plan_i, total_i_);
    if (be_ == nullptr) return;  // sizes only: no buffers to alias
    if (row_order != nullptr) {
      std::vector<int32_t> order(BT);
      for (size_t i = 0; i < BT; ++i) order[i] = int32_t(i);
      be_->copy_ints_from_host(row_order, order.data(), BT);
    }
    // Buffers shared by every layer: the projections' outputs (consumed by the residual add;
    // under model.branch_norm their norms' outputs, the layers keeping the projections) and,
    // under sequence parallelism, the local LayerNorm outputs (backward reads the gathered
    // ones); without it the "over all rows" views are the buffers themselves.
    auto alias = [&](Layer& L) {
      if (!s.branch_norm) L.attproj = L.fcproj = proj;
      if (sp) {
        L.ln1 = L.ln2 = ln_local;
      } else {
        L.ln1g = L.ln1;
        L.ln2g = L.ln2;
      }
      if (s.shared_norm) {  // the MLP's input is ln_1's output
        L.ln2 = L.ln1;
        L.ln2g = L.ln1g;
      }
    };
    alias(work);
    if (mtp_decode) {  // the scratch layer's internals, its own output and cache
      Layer& L = mtp[0].block;
      A *out = L.residual3, *qkv = L.qkv;
      L = work;
      L.residual3 = out;
      L.qkv = qkv;
    }
    for (MtpModule& M : mtp) {
      alias(M.block);
      if (sp) M.lnf = ln_local;
      if (!sp) M.lnfg = M.lnf;
    }
    for (auto& chunk : sets)
      for (auto& S : chunk) {
        for (int i = 0; i < int(S.layers.size()); ++i) {
          Layer& L = S.layers[size_t(i)];
          const Recompute r = recompute.in_layer(i);
          if (r == Recompute::full) {  // the scratch layer's internals, its own output
            A *out = L.residual3, *qkv = L.qkv;
            L = work;
            L.residual3 = out;
            if (inference) L.qkv = qkv;  // its own: the decoding cache
          }
          if (r == Recompute::gelu) L.fch_gelu = gelu_work;
          alias(L);
        }
        if (sp && S.lnfg) S.lnf = ln_local;
        if (!sp) S.lnfg = S.lnf;
      }
  }
  ~Activations() {
    if (be_ == nullptr) return;
    free(base_);
    free(base_f_);
    if (base_i_ != nullptr) be_->free_ints(base_i_);
  }
  Activations(const Activations&) = delete;
  Activations& operator=(const Activations&) = delete;
  size_t bytes() const {
    return total_ * sizeof(A) + total_f_ * sizeof(float) + total_i_ * sizeof(int32_t);
  }

 private:
  // One allocation for all the planned buffers of type T (each 64-byte aligned), then aliases.
  template <class T>
  T* carve(std::vector<std::pair<T**, size_t>>& plan, size_t& total) {
    constexpr size_t q = 64 / sizeof(T);
    total = 0;
    for (auto& [p, n] : plan) total += (n + q - 1) / q * q;
    if (be_ == nullptr) return nullptr;
    T* base = alloc<T>(total);
    size_t off = 0;
    for (auto& [p, n] : plan) {
      *p = base + off;
      off += (n + q - 1) / q * q;
    }
    return base;
  }
  template <class T>
  T* alloc(size_t n) {
    if constexpr (std::is_same_v<T, float>)
      return be_->alloc(n);
    else if constexpr (std::is_same_v<T, int32_t>)
      return be_->alloc_ints(n);
    else
      return be_->alloc_bf16(n);
  }
  void free(float* p) { be_->free(p); }
  void free(bf16_t* p) { be_->free_bf16(p); }

  Backend* be_;  // null: planned, not allocated
  A* base_ = nullptr;
  float* base_f_ = nullptr;
  int32_t* base_i_ = nullptr;  // mixture of experts: the router's choices
  size_t total_ = 0, total_f_ = 0, total_i_ = 0;
};

}  // namespace triad

namespace triad {
// MPI moves activations as fp32 words: bf16 ones two to a word (their counts are even, as
// n_embd is under bf16). Only copies use these, never reductions.
inline float* words(float* p) { return p; }
inline const float* words(const float* p) { return p; }
inline float* words(bf16_t* p) { return reinterpret_cast<float*>(p); }
inline const float* words(const bf16_t* p) { return reinterpret_cast<const float*>(p); }
template <class A>
size_t word_count(size_t n) {
  return n * sizeof(A) / sizeof(float);
}

// Defined in gpt.cpp (declared here, before any use, as explicit specializations must be).
template <>
Gpt::Activations<float>& Gpt::acts<float>();
template <>
Gpt::Activations<bf16_t>& Gpt::acts<bf16_t>();
template <>
const float* Gpt::weights<float>() const;
template <>
const bf16_t* Gpt::weights<bf16_t>() const;
}  // namespace triad
