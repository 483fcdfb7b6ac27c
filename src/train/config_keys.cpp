// triad-train's command line and config files: every config key once (KeyTable), read from
// INI files, the command line and --model-from, and written back as the resolved INI.

#include <algorithm>
#include <boost/program_options.hpp>
#include <cctype>
#include <charconv>
#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>
#include <string_view>
#include <type_traits>

#include "triad/core/error.h"
#include "triad/io/checkpoint.h"
#include "triad/train/config.h"
#include "triad/train/positional_arguments.h"

namespace po = boost::program_options;

namespace triad {

namespace fs = std::filesystem;
namespace {

// Every config key once: bound to its Config field for parsing, printed back for to_ini.
// Keeping both in one table is what keeps --help, parsing and the resolved config in sync.
class KeyTable {
 public:
  explicit KeyTable(Config& c)
      : desc_("Config keys (INI [section] key = value, or --section.key value)") {
    add("model.n_layer", c.model.n_layer, "transformer layers");
    add("model.n_head", c.model.n_head,
        "attention heads (must divide n_embd unless model.head_dim is given)");
    add("model.n_kv_head", c.model.n_kv_head,
        "key/value heads (0: n_head; fewer, dividing n_head: grouped-query attention)");
    add("model.n_embd", c.model.n_embd, "model width C");
    add("model.seq_len", c.model.seq_len, "sequence length T");
    add("model.vocab_size", c.model.vocab_size, "vocabulary size (GPT-2: 50257)");
    add("model.position", c.model.position,
        "learned (GPT-2's position table wpe) | rope (rotary embedding of q and k in every layer, "
        "no wpe)");
    add("model.rope_theta", c.model.rope_theta, "rope: base of the rotation frequencies");
    add("model.rope_local_theta", c.model.rope_local_theta,
        "rope with model.sliding_window: the windowed layers' base, their rotation without "
        "model.rope_scaling (Gemma 3's rope_local_base_freq, 10000; the full-attention layers keep "
        "model.rope_theta); 0: model.rope_theta in every layer");
    add("model.nope_every", c.model.nope_every,
        "rope: layers N, 2N, .. (1-based) rotate neither q nor k, attending without positions "
        "(NoPE; SmolLM3's no_rope_layer_interval, 4); 0: every layer rotates");
    add("model.rotary_dim", c.model.rotary_dim,
        "rope: partial rotary, only the first N of each q and k head's values rotate (even, at "
        "most the head's width; GPT-NeoX's rotary_pct 0.25: head_dim / 4; 0: all of them)");
    add("model.rope_scaling", c.model.rope_scaling,
        "rope: none | llama3 (Llama 3.1's scaling of the low frequencies, for long contexts) | "
        "yarn (YaRN, as Qwen2.5 and Qwen3 for long contexts) | longrope (LongRoPE, as Phi-3's "
        "long-context models) | linear (every frequency divided by model.rope_scaling_factor: "
        "position interpolation, as Gemma 3 4B-27B's full-attention layers)");
    add("model.rope_scaling_factor", c.model.rope_scaling_factor,
        "llama3, yarn: the low frequencies' divisor; longrope: the stretch of the original "
        "context (max positions / rope_original_positions), which scales cos and sin by "
        "sqrt(1 + ln(factor) / ln(rope_original_positions))");
    add("model.rope_short_factor", c.model.rope_short_factor,
        "longrope: each rotated pair's frequency divisor, comma-separated (rotary_dim / 2, "
        "head_dim / 2 or, with MLA, qk_rope_head_dim / 2 of them), used where seq_len <= "
        "rope_original_positions");
    add("model.rope_long_factor", c.model.rope_long_factor,
        "longrope: the same, used where seq_len > rope_original_positions");
    add("model.rope_yarn_beta_fast", c.model.rope_yarn_beta_fast,
        "yarn: frequencies turning more than this many times in rope_original_positions are "
        "kept");
    add("model.rope_yarn_beta_slow", c.model.rope_yarn_beta_slow,
        "yarn: frequencies turning fewer than this many times are divided");
    add("model.rope_yarn_truncate", c.model.rope_yarn_truncate,
        "yarn: the ramp's ends rounded to whole pairs, the fast one down and the slow one up "
        "(YaRN's and Qwen's; false: the ramp between the unrounded ends, gpt-oss's)");
    add("model.rope_yarn_mscale", c.model.rope_yarn_mscale,
        "yarn: cos and sin times m(this) / m(rope_yarn_mscale_all_dim), with YaRN's m(x) = "
        "0.1·x·ln(rope_scaling_factor) + 1 and m(0) = 1 (DeepSeek's mscale; 1: Qwen's YaRN)");
    add("model.rope_yarn_mscale_all_dim", c.model.rope_yarn_mscale_all_dim,
        "yarn: the attention scores times m(this)² (DeepSeek's mscale_all_dim; DeepSeek-V3: 1; "
        "0: the scores as they are, Qwen's YaRN)");
    add("model.rope_low_freq_factor", c.model.rope_low_freq_factor,
        "llama3: wavelengths above rope_original_positions / this are divided");
    add("model.rope_high_freq_factor", c.model.rope_high_freq_factor,
        "llama3: wavelengths below rope_original_positions / this are kept");
    add("model.rope_original_positions", c.model.rope_original_positions,
        "llama3, yarn, longrope: the context length the frequencies were first trained for");
    add("model.norm", c.model.norm,
        "layernorm (GPT-2's, weight and bias) | rmsnorm (root mean square, weight only, as Llama)");
    add("model.mlp", c.model.mlp,
        "gelu (GPT-2's MLP, GELU's tanh approximation) | gelu_exact (GELU with erf, as "
        "GPT-NeoX) | swiglu (silu(gate)·up, as Llama) | geglu (gelu(gate)·up, as Gemma) | relu2 "
        "(squared ReLU, max(x, 0)²: Primer, Nemotron-4, modded-nanogpt) | relu (max(x, 0), "
        "as OPT)");
    add("model.mlp_hidden", c.model.mlp_hidden,
        "MLP hidden units (0: 4·n_embd for gelu, the multiple of 64 at or above 8·n_embd/3 for "
        "swiglu)");
    add("model.tie_embeddings", c.model.tie_embeddings,
        "the output layer is wte (true, GPT-2) or a tensor lm_head of its own (false, as Llama)");
    add("model.qk_norm", c.model.qk_norm,
        "per-head RMSNorm of q and k after c_attn, with weights q_norm and k_norm (as Qwen3)");
    add("model.qk_norm_full", c.model.qk_norm_full,
        "with model.qk_norm: one RMSNorm over all heads' q values and one over all k values "
        "(q_norm [n_head·head_dim], k_norm [n_kv_head·head_dim], as OLMo-2 and OLMoE) instead "
        "of each head's");
    add("model.attn_sinks", c.model.attn_sinks,
        "attention sinks: a learned logit per query head and layer (attn/sinks, drawn as the "
        "other weights) in each softmax's denominator, a key without a value that lets a head "
        "attend to less than all (gpt-oss's)");
    add("model.bias", c.model.bias,
        "biases in the linear layers and LayerNorms (false: none, as nanoGPT's bias = False)");
    add("model.kv_lora_rank", c.model.kv_lora_rank,
        "> 0: multi-head latent attention (DeepSeek-V2's MLA): keys and values up-projected from "
        "a latent of this many values per token (attn/kv_a, RMSNorm attn/kv_a_norm, attn/kv_b); "
        "needs rope, and the qk_*_head_dim and v_head_dim keys; 0: off");
    add("model.mla_norm_eps", c.model.mla_norm_eps,
        "MLA: the latent norms' epsilon (attn/q_a_norm, attn/kv_a_norm; DeepSeek's 1e-6 whatever "
        "its other norms'); 0: model.norm_eps");
    add("model.q_lora_rank", c.model.q_lora_rank,
        "MLA: the queries' latent rank (attn/q_a, attn/q_a_norm, then attn/q_b); 0: queries "
        "straight from the token (attn/q_b [n_head·(nope+rope), n_embd])");
    add("model.qk_nope_head_dim", c.model.qk_nope_head_dim,
        "MLA: each head's q and k values without rotation (DeepSeek-V2: 128)");
    add("model.qk_rope_head_dim", c.model.qk_rope_head_dim,
        "MLA: each head's rotated q and k values, the rotated key shared by all heads (even; "
        "DeepSeek-V2: 64)");
    add("model.v_head_dim", c.model.v_head_dim, "MLA: each head's value width (DeepSeek-V2: 128)");
    add("model.head_dim", c.model.head_dim,
        "each attention head's width (0: n_embd / n_head; another makes the attention n_head · "
        "head_dim wide, as Qwen3's 128 at n_embd 1024 and 16 heads)");
    add("model.qkv_bias", c.model.qkv_bias,
        "with model.bias = false: c_attn keeps its bias, the q, k and v projections' (as Qwen2)");
    add("model.mlp_bias", c.model.mlp_bias,
        "with model.bias = false: the MLP's c_fc and c_proj keep their biases, the attention's "
        "projections none (as GPT-J)");
    add("model.norm_weight", c.model.norm_weight,
        "false: the norms (ln_1, ln_2, ln_f and the branch norms) learn no weight or bias: they "
        "stay 1 and 0, frozen (OLMo's non-parametric LayerNorm)");
    add("model.norm_bias", c.model.norm_bias,
        "with model.bias = false and model.norm = layernorm: the LayerNorms keep their biases, "
        "the linear layers have none (as Nemotron, StableLM)");
    add("model.sliding_window", c.model.sliding_window,
        "sliding-window attention: each token attends to the last N tokens (itself included) "
        "at most (Mistral 7B v0.1: 4096); 0: to all earlier ones");
    add("model.full_attention_every", c.model.full_attention_every,
        "with model.sliding_window: layers N, 2N, .. (1-based) attend to the whole context, the "
        "others keep to the window (interleaved local and global attention: Gemma 3's 6, "
        "gpt-oss's 2); 0: every layer keeps to the window");
    add("model.full_attention_first", c.model.full_attention_first,
        "with model.full_attention_every = N: layers 1, N+1, 2N+1, .. (1-based) attend to the "
        "whole context instead, each group's first rather than its last (GPT-Neo's global, local "
        "alternation)");
    add("model.parallel_residual", c.model.parallel_residual,
        "attention and MLP side by side: x + attn(ln_1(x)) + mlp(ln_2(x)) (GPT-J, GPT-NeoX, "
        "PaLM) instead of one after the other");
    add("model.head_bias", c.model.head_bias,
        "with model.tie_embeddings = false: a bias on the head's logits, lm_head/bias (Phi-2, "
        "GPT-J)");
    add("model.shared_norm", c.model.shared_norm,
        "with model.parallel_residual: one norm for both branches, x + attn(ln_1(x)) + "
        "mlp(ln_1(x)) (GPT-J, Phi-2, Cohere, Falcon-7B); no ln_2 tensors");
    add("model.branch_norm", c.model.branch_norm,
        "a norm (of model.norm's kind) on each branch's output before its residual add: x + "
        "norm(attn(ln_1(x))) (Gemma 2 and 3's sandwich norms)");
    add("model.init_std", c.model.init_std,
        "the deviation σ of the initialization's embeddings and matrices (GPT-2, OLMo-2: 0.02)");
    add("model.init_scaled_residual", c.model.init_scaled_residual,
        "attn.c_proj and mlp.c_proj initialized with σ/sqrt(2·n_layer) (GPT-2's, Megatron's); "
        "false: σ as the others (OLMo-2)");
    add("model.init_truncation", c.model.init_truncation,
        "> 0: a truncated normal, every initial value within ±this·σ (OLMo-2: 3); 0: normal");
    add("model.pre_norm", c.model.pre_norm,
        "false: no norm before the branches (no ln_1, ln_2 tensors), each reads the residual "
        "stream as it is, x + norm(attn(x)), its output normalized by model.branch_norm (OLMo-2's "
        "reordered norms)");
    add("model.embed_scale", c.model.embed_scale,
        "the embedding's output times this (Gemma: sqrt(n_embd), not shared by a tied head); 1: "
        "none");
    add("model.logit_softcap", c.model.logit_softcap,
        "soft-capped logits: the head's logits become c·tanh(logit / c), within (-c, c), before "
        "the loss and sampling (Gemma 2: 30); 0: none");
    add("model.logit_scale", c.model.logit_scale,
        "the head's logits times this, before any cap (Granite: 1/logits_scaling, Cohere: "
        "logit_scale); 1: none");
    add("model.residual_scale", c.model.residual_scale,
        "each branch's output times this before its residual add: x + s·attn(ln_1(x)) (Granite's "
        "residual_multiplier); 1: none");
    add("model.glu_alpha", c.model.glu_alpha,
        "with model.mlp = swiglu: the gate's activation g·σ(alpha·g) (1: SiLU, Llama's; gpt-oss: "
        "1.702)");
    add("model.glu_limit", c.model.glu_limit,
        "with model.mlp = swiglu: the gate clamped to at most limit and the up projection to "
        "[-limit, limit] before they multiply (gpt-oss: 7); 0: no clamps");
    add("model.glu_offset", c.model.glu_offset,
        "with model.mlp = swiglu: added to the (clamped) up projection: act(gate)·(up + offset) "
        "(gpt-oss: 1); 0: none");
    add("model.clip_qkv", c.model.clip_qkv,
        "> 0: c_attn's q, k and v clamped to [-c, c] before the rotation (OLMo-1.7's 8); 0: none");
    add("model.attn_softcap", c.model.attn_softcap,
        "soft-capped attention scores: each scaled score s becomes c·tanh(s / c) before the "
        "softmax (Gemma 2: 50, Grok-1: 30); 0: none");
    add("model.attn_scale", c.model.attn_scale,
        "the attention scores' scale, q·k times it (0: 1/sqrt(head width), the usual one; μP's "
        "is 1/head width)");
    add("model.mup_base_width", c.model.mup_base_width,
        "μP (maximal update parametrization) relative to a base model of this width, m = "
        "n_embd / it: hidden matrices initialized at 1/sqrt(m) of the usual deviation and moved "
        "by AdamW at lr / m (Muon's matrices keep Muon's rate), logits times 1/m, attention "
        "scores times 1/sqrt(head width · m) unless model.attn_scale (right where the head "
        "count stays fixed; where the heads keep their width and grow in number set "
        "model.attn_scale = 1/sqrt(head width)); a learning rate tuned at the base width then "
        "carries over to wider models. 0: the standard parametrization");
    add("model.moe_experts", c.model.moe_experts,
        "a mixture of experts: every layer's MLP becomes this many expert MLPs of "
        "model.mlp_hidden units (gelu or swiglu, no biases) and a router that sends each token "
        "to model.moe_top_k of them (dropless unless model.moe_capacity_factor); 0: a dense MLP");
    add("model.moe_top_k", c.model.moe_top_k, "experts per token (with model.moe_experts)");
    add("model.moe_normalize", c.model.moe_normalize,
        "the chosen experts' router probabilities renormalized to sum 1 (Mixtral's; false: kept "
        "as they are, as Switch and DeepSeek-V2)");
    add("model.moe_score", c.model.moe_score,
        "with model.moe_experts: the router's scores, softmax (Switch, Mixtral) or sigmoid "
        "(DeepSeek-V3: each expert's own sigmoid of its logit; with model.moe_normalize the "
        "chosen ones' gates sum to 1 before model.moe_routed_scale)");
    add("model.moe_routed_scale", c.model.moe_routed_scale,
        "with model.moe_experts: the routed experts' gates times this (DeepSeek-V3's "
        "routed_scaling_factor, 2.5; 1: as they are)");
    add("model.moe_groups", c.model.moe_groups,
        "with model.moe_experts: node-limited routing (DeepSeek-V3's n_group, 8): the experts in "
        "this many groups of consecutive ones, each token's experts chosen only from its "
        "model.moe_group_top_k groups whose two best scores (with the router bias) sum highest; "
        "1: no groups");
    add("model.moe_group_top_k", c.model.moe_group_top_k,
        "with model.moe_groups > 1: the groups each token's experts come from (DeepSeek-V3's "
        "topk_group, 4)");
    add("model.moe_group_score", c.model.moe_group_score,
        "with model.moe_groups > 1: a group's score, top2 (the sum of its two best scores with "
        "the router bias: DeepSeek-V3's) or max (its best: DeepSeek-V2's group_limited_greedy)");
    add("model.moe_capacity_factor", c.model.moe_capacity_factor,
        "with model.moe_experts: each expert takes at most ceil(f · N · k / E) of the N·k choices "
        "of a rank's micro-batch, in token order; the later ones are dropped (their expert output "
        "is zero; /train/moe_dropped logs the fraction). 0: dropless");
    add("model.moe_first_dense", c.model.moe_first_dense,
        "with model.moe_experts: the first layers keep a dense MLP (DeepSeek's first_k_dense)");
    add("model.moe_every", c.model.moe_every,
        "with model.moe_experts: every N-th layer after model.moe_first_dense has the experts, "
        "the others a dense MLP (Llama 4's interleaving: 2; 1: all of them)");
    add("model.moe_dense_hidden", c.model.moe_dense_hidden,
        "with model.moe_experts and dense layers among them: the dense layers' MLP width "
        "(DeepSeek's first layers: 10944 beside experts of 1408 in V2-Lite; 0: model.mlp_hidden, "
        "the experts')");
    add("model.moe_shared_hidden", c.model.moe_shared_hidden,
        "with model.moe_experts: shared experts, a dense MLP of this many hidden units every token "
        "passes through beside its routed experts (DeepSeekMoE's, Qwen2-MoE's); 0: none");
    add("model.moe_shared_gate", c.model.moe_shared_gate,
        "with model.moe_shared_hidden: the shared experts' output scaled, token by token, by "
        "sigmoid(x · w) of a gate w of its own (Qwen2-MoE's shared_expert_gate)");
    add("model.moe_bias", c.model.moe_bias,
        "with model.moe_experts: learned biases, from 0, on the router's logits (mlp/router/bias "
        "[E], before the choice and the gates) and on each expert's two products "
        "(mlp/experts/c_fc/bias, mlp/experts/c_proj/bias; gpt-oss's); none take weight decay");
    add("model.mtp_depth", c.model.mtp_depth,
        "multi-token prediction (DeepSeek-V3's MTP, Megatron's --mtp-num-layers): D modules after "
        "the layers, module j predicting the token j + 2 ahead from the previous hidden state "
        "and the embedding of the token j + 1 ahead, through a projection mtp/<j>/eh_proj, one "
        "block of the model's kind and the model's head; their losses join the training loss "
        "(train.mtp_loss_weight); evaluation and generation use the model without them (0: none)");
    add("model.norm_eps", c.model.norm_eps,
        "epsilon of the LayerNorms or RMSNorms (and QK-norms): 1e-5 as GPT-2 and Llama, 1e-6 "
        "as Qwen2");
    add("train.steps", c.train.steps, "optimizer steps (replaced where train.sequences > 0)");
    add("train.sequences", c.train.sequences,
        "the run's length in sequences trained on: > 0 sets train.steps to the fewest steps that "
        "train this many (with train.batch_rampup, whose steps grow); 0: train.steps counts");
    add("train.batch_size", c.train.batch_size, "sequences per optimizer step (global)");
    add("train.micro_batch_size", c.train.micro_batch_size, "sequences per micro-batch per rank");
    add("train.batch_rampup", c.train.batch_rampup,
        "batch-size ramp-up \"START, INCREMENT, SEQUENCES\": the global batch starts at START "
        "sequences and grows by INCREMENT in equal shares of the first SEQUENCES sequences, "
        "train.batch_size after them (as Megatron's --rampup-batch-size); empty: none");
    add("train.window_warmup", c.train.window_warmup,
        "attention-window warmup \"START, STEPS[, MULTIPLE]\": the windowed layers (all of a "
        "model without model.sliding_window) attend to the last START tokens at first, the "
        "window growing linearly to the model's (the whole context) over STEPS steps, rounded up "
        "to a multiple of MULTIPLE (64); empty: none");
    add("train.freeze", c.train.freeze,
        "tensors not trained: comma-separated globs over parameter names (* matches any "
        "characters, / too), e.g. \"wte/weight, wpe/weight, h/0/*\"; no update, no weight decay, "
        "left out of the gradient norm; empty: none");
    add("train.lr", c.train.lr, "peak learning rate");
    add("train.warmup_steps", c.train.warmup_steps, "linear warmup steps");
    add("train.schedule", c.train.schedule,
        "cosine | linear | constant | wsd | inverse_sqrt (Megatron's: lr·sqrt(W/n) after n "
        "steps of a warmup of W, not below min_lr)");
    add("train.lr_by", c.train.lr_by,
        "what the lr schedule counts: steps (warmup_steps, decay to train.steps) | sequences "
        "(trained on: warmup_sequences, decay to the run's last; for a batch-size ramp-up, as "
        "Megatron's sample-based schedule)");
    add("train.warmup_sequences", c.train.warmup_sequences,
        "train.lr_by = sequences: linear warmup over the first N sequences trained on");
    add("train.min_lr_ratio", c.train.min_lr_ratio, "final lr / peak lr");
    add("train.decay_fraction", c.train.decay_fraction,
        "wsd: fraction of the run (steps, or sequences) in the decay");
    add("train.decay_shape", c.train.decay_shape,
        "wsd: the decay's shape over its fraction f done: linear (1 - f), 1-sqrt (1 - sqrt f) or "
        "cosine ((1 + cos pi f) / 2), from lr to min_lr");
    add("train.grad_clip", c.train.grad_clip, "global grad-norm clip (0: off)");
    add("train.seed", c.train.seed, "seed of the initialization and data shuffling");
    add("train.log_every", c.train.log_every, "progress line every N steps");
    add("train.recompute", c.train.recompute,
        "activation recomputation: none | gelu (the MLP's GELU output) | full (each layer's "
        "forward rerun in the backward pass; keeps only layer outputs)");
    add("train.recompute_layers", c.train.recompute_layers,
        "recompute in the first N layers of each pipeline chunk only (0: all)");
    add("train.logits_chunk", c.train.logits_chunk,
        "tokens of logits the loss is computed on at a time, rounded up to a multiple of 8 (0: a "
        "whole micro-batch); smaller chunks hold less memory");
    add("train.profile_step", c.train.profile_step,
        "pipeline step (1-based) to time action by action into pipeline_trace_step_N.csv beside "
        "its simulation (0: none; needs parallel.pp > 1)");
    add("train.skip_loss_z", c.train.skip_loss_z,
        "skip the update of a step whose loss is more than this many standard deviations above "
        "the mean of the previous train.skip_window steps (0: never)");
    add("train.skip_norm_z", c.train.skip_norm_z, "the same for the gradient norm (0: never)");
    add("train.z_loss", c.train.z_loss,
        "z-loss coefficient c (PaLM's 1e-4): c·(log Z)² per token joins the training loss, Z the "
        "softmax's normalizer; the logged loss stays the cross-entropy, /train/z_loss the mean "
        "term (0: none)");
    add("train.dpo_beta", c.train.dpo_beta,
        "with data.preferences: DPO's beta, the weight of the log-probability ratios to the "
        "reference in each pair's loss -log sigmoid(beta * (chosen ratio - rejected ratio))");
    add("train.dpo_loss", c.train.dpo_loss,
        "with data.preferences: the pairs' loss, sigmoid (DPO's) | hinge (SLiC's, "
        "max(0, 1 - beta h)) | ipo (IPO's, (h' - 1/(2 beta))^2 on per-token means), h the "
        "chosen log-probability ratio less the rejected one's");
    add("train.dpo_label_smoothing", c.train.dpo_label_smoothing,
        "with train.dpo_loss = sigmoid: cDPO's label smoothing, the assumed chance that a pair's "
        "labels are swapped (0: DPO's loss)");
    add("train.hidden_dropout", c.train.hidden_dropout,
        "dropout probability p of the residual stream's inputs in training: each value of the "
        "embedding's output and of every attention and MLP branch's output is zeroed with "
        "probability p, the rest scaled by 1/(1-p) (Megatron's hidden dropout; the masks a "
        "function of train.seed and each value's sequence, position and column, alike on every "
        "grid and after a resume); evaluation and generation never drop (0: none)");
    add("train.attention_dropout", c.train.attention_dropout,
        "dropout probability p of the attention probabilities in training: each is zeroed with "
        "probability p after the softmax, the rest scaled by 1/(1-p) (nanoGPT's attn_dropout, "
        "Megatron's attention_dropout; the masks a function of train.seed, the sequence, the "
        "query's and the key's positions, the layer and the head, alike on every grid; 0: none)");
    add("train.moe_aux_loss", c.train.moe_aux_loss,
        "with model.moe_experts: the load-balancing loss coefficient α (Switch's 0.01): α·E·Σ_e "
        "f_e·P_e per token joins the training loss (f_e: expert e's share of the choices, P_e: "
        "its mean router probability); /train/moe_aux_loss logs the mean term (0: none)");
    add("train.moe_aux_scope", c.train.moe_aux_scope,
        "with model.moe_experts: the rows the load-balancing loss's f_e and P_e count: "
        "micro_batch (Switch's: each rank's micro-batch) or sequence (DeepSeek-V3's "
        "sequence-wise balance loss: each sequence's, all of it under context parallelism; "
        "the loss the mean over the sequences)");
    add("train.moe_z_loss", c.train.moe_z_loss,
        "with model.moe_experts: the router z-loss coefficient c (ST-MoE's 0.001): c·(log Σ_e "
        "exp(router logit_e))² per token joins the training loss, keeping the router's logits "
        "small; /train/moe_z_loss logs the mean term (0: none)");
    add("train.mtp_loss_weight", c.train.mtp_loss_weight,
        "with model.mtp_depth = D: the weight λ of the multi-token prediction losses (Megatron's "
        "0.1; DeepSeek-V3 trained with 0.3, then 0.1): the training loss is the main loss plus "
        "λ/D times the sum of the modules' mean cross-entropies over the main loss's tokens; "
        "/train/mtp_loss logs their mean");
    add("train.moe_bias_rate", c.train.moe_bias_rate,
        "with model.moe_experts: DeepSeek-V3's auxiliary-loss-free load balancing, its bias "
        "update speed u (0.001): each expert of a layer has a bias added to its score to choose "
        "the experts (not to weigh them), and after each update the bias of an expert that got "
        "more than its layer's mean share of the step's choices (over every rank) falls by u, "
        "one that got less rises by u; the biases are saved in checkpoints (0: they stay as "
        "they are)");
    add("train.activations_every", c.train.activations_every,
        "every N steps (0: never), before the step: the root mean square of each block's "
        "attention and MLP outputs and residual stream on the first validation micro-batch "
        "(/activations in metrics.h5; μP's coordinate check: triad-coord-check)");
    add("train.norms_every", c.train.norms_every,
        "every N steps write each layer's gradient and weight L2 norms to /norms of metrics.h5 "
        "(0: never)");
    add("train.moe_load_every", c.train.moe_load_every,
        "with model.moe_experts: every N steps write each expert's share of each layer's choices "
        "in that step (over every rank and micro-batch, before a capacity drops any) to "
        "/moe_load of metrics.h5, a [rows, experts] dataset per layer (triad-plot-moe draws them; "
        "0: never)");
    add("train.noise_every", c.train.noise_every,
        "every N steps, the squared norms of the first micro-batch's gradient on each replica "
        "(under pipeline parallelism: each replica's share of the step; under expert "
        "parallelism: the expert-parallel group's first micro-batches) and of the whole "
        "batch's, for the gradient noise scale B = tr(Σ)/|G|² (McCandlish et al.; /noise of "
        "metrics.h5, triad-plot-noise; 0: never)");
    add("train.skip_window", c.train.skip_window,
        "steps whose loss and gradient norm the skip z-scores compare with");
    add("optim.name", c.optim.name,
        "adamw | sgd | muon (Muon on the attention and MLP weight matrices, AdamW on the rest) | "
        "lion (Chen et al.: the sign of beta1's interpolation, momentum kept with beta2; "
        "decoupled weight decay)");
    add("optim.beta1", c.optim.beta1, "AdamW beta1 (Lion: the update's interpolation, 0.9)");
    add("optim.beta2", c.optim.beta2, "AdamW beta2 (Lion: the momentum's, 0.99 in its paper)");
    add("optim.eps", c.optim.eps, "AdamW eps");
    add("optim.weight_decay", c.optim.weight_decay, "weight decay (matrices only)");
    add("optim.momentum", c.optim.momentum, "SGD momentum");
    add("optim.muon_lr", c.optim.muon_lr,
        "Muon: peak learning rate of the matrices (train.lr is AdamW's; the same schedule)");
    add("optim.muon_momentum", c.optim.muon_momentum, "Muon: momentum");
    add("optim.muon_nesterov", c.optim.muon_nesterov, "Muon: Nesterov momentum");
    add("optim.muon_ns_steps", c.optim.muon_ns_steps, "Muon: Newton-Schulz iterations");
    add("optim.muon_adjust_lr", c.optim.muon_adjust_lr,
        "Muon: the lr factor of an [m, n] matrix: original sqrt(max(1, m/n)) | match_rms_adamw "
        "0.2 sqrt(max(m, n))");
    add("optim.embedding_lr", c.optim.embedding_lr,
        "peak learning rate of the embeddings wte and wpe (and the tied head, which is wte), on "
        "train.schedule like train.lr (Megatron's --decoupled-lr; 0: train.lr)");
    add("optim.head_lr", c.optim.head_lr,
        "peak learning rate of an untied output head lm_head, on train.schedule like train.lr "
        "(nanochat's unembedding rate; 0: train.lr)");
    add("optim.decay_embeddings", c.optim.decay_embeddings,
        "weight decay on the embeddings wte and wpe (and the tied head) too (OLMo's "
        "decay_embeddings)");
    add("optim.weight_decay_schedule", c.optim.weight_decay_schedule,
        "constant | linear | cosine: the weight decay from optim.weight_decay at the start to "
        "optim.weight_decay_end at the end of the run (Megatron's --weight-decay-incr-style)");
    add("optim.weight_decay_end", c.optim.weight_decay_end,
        "the weight decay at the end of the run under a linear or cosine "
        "optim.weight_decay_schedule");
    add("optim.ema_decay", c.optim.ema_decay,
        "keep an exponential moving average of the weights, ema += (1 - d)·(w - ema) after "
        "every update, in checkpoints as /optimizer/ema (triad-average --ema writes it out as a "
        "model); 0: none");
    add("data.train", c.data.train,
        "train shard glob; with data.train_weights several, comma-separated, to blend");
    add("data.train_weights", c.data.train_weights,
        "weights of the comma-separated data.train globs (e.g. '0.7, 0.3'): a deterministic "
        "blend, each dataset in its own order (empty: one glob)");
    add("data.val", c.data.val, "validation shard glob");
    add("data.preferences", c.data.preferences,
        "direct preference optimization (DPO) instead of data.train: a preference file "
        "(triad-tokenize preferences) of chosen and rejected responses; the training loss is "
        "DPO's over the pairs, each row a sequence (train.batch_size sequences: half as many "
        "pairs), the reference the starting weights (their log-probabilities computed once, "
        "kept in the checkpoints)");
    add("data.shuffle", c.data.shuffle, "seeded per-epoch permutation of the sequences");
    add("data.loss_mask", c.data.loss_mask,
        "loss masks beside the shards (<shard>.mask: which targets count, e.g. only a chat "
        "example's replies): auto (where present) | require (every shard) | none (ignored)");
    add("data.document_mask", c.data.document_mask,
        "attention within documents of packed sequences: none | the token id that starts a "
        "document (GPT-2's <|endoftext|> 50256, Llama 3's <|begin_of_text|> 128000), or its "
        "name among data.vocab's special tokens; each token then attends to its own document's "
        "tokens only");
    add("data.eod_mask_loss", c.data.eod_mask_loss,
        "none | the token id that ends a document (GPT-2's <|endoftext|> 50256), or its name "
        "among data.vocab's special tokens: a target whose input token is it does not count in "
        "the loss, no prediction of a document's first token from the previous one's end "
        "(Megatron's --eod-mask-loss; with data.loss_mask's masks, in training and validation)");
    add("data.reset_positions", c.data.reset_positions,
        "with data.document_mask: positions restart at every document (the learned table's row, "
        "the rotation under rope), as if each packed document were a sequence of its own");
    add("data.vocab", c.data.vocab,
        "tokenizer for samples: GPT-2's BPE ranks file, or a tokenizer description");
    add("eval.every", c.eval.every, "evaluate every N steps (0: start and end only)");
    add("eval.sequences", c.eval.sequences, "validation sequences per evaluation");
    add("data.fim_rate", c.data.fim_rate,
        "fill-in-the-middle: the share of the training sequences' fragments rearranged as "
        "prefix, suffix, middle with sentinel tokens (0: off; docs/formats.md)");
    add("data.fim_spm_rate", c.data.fim_spm_rate,
        "fill-in-the-middle: the share of rearranged fragments in SPM order (the rest PSM)");
    add("data.fim_tokens", c.data.fim_tokens,
        "fill-in-the-middle: the sentinel token ids \"PREFIX, MIDDLE, SUFFIX\", or the names of "
        "data.vocab's special tokens (\"<fim_prefix>, <fim_middle>, <fim_suffix>\")");
    add("data.fim_granularity", c.data.fim_granularity,
        "fill-in-the-middle: token (cuts between tokens) or character (cuts between "
        "characters of the fragment's text, decoded and its pieces encoded anew with data.vocab; "
        "data.fim_tokens then names a fourth id, the padding of a window that comes out short)");
    add("data.fim_fragment_split", c.data.fim_fragment_split,
        "fill-in-the-middle: none, or the token id that cuts a fragment into parts (Megatron's "
        "fim_split_sample, e.g. a file separator in repository-level documents): a fragment "
        "holding it is rearranged, at data.fim_rate, part by part, each at "
        "data.fim_fragment_rate (an id, or the name of one of data.vocab's special tokens)");
    add("data.fim_fragment_rate", c.data.fim_fragment_rate,
        "fill-in-the-middle: the share of a chosen fragment's parts rearranged (with "
        "data.fim_fragment_split; Megatron's fim_fragment_rate)");
    add("data.fim_no_prefix", c.data.fim_no_prefix,
        "fill-in-the-middle: fragments and parts whose text (decoded with data.vocab) starts "
        "with this string are never rearranged (Megatron's fim_no_prefix; empty: none)");
    add("data.fim_split", c.data.fim_split,
        "fill-in-the-middle: none (a training sequence is one fragment) or the token id the "
        "fragments are cut at (a document separator: each document rearranged on its own; an "
        "id, or the name of one of data.vocab's special tokens, e.g. <|endoftext|>)");
    add("eval.loss_by_position", c.eval.loss_by_position,
        "also write data.val's loss at each position 0 .. seq_len-1 of the sequence (the mean "
        "over its counted targets there) to /val_positions/loss of metrics.h5 at every "
        "evaluation, and each of eval.sets' to /val_set_positions/<name>/loss "
        "(triad-plot-positions draws them)");
    add("eval.fim", c.eval.fim,
        "score data.val and eval.sets rearranged by data.fim_* as the training sequences are "
        "(Megatron's validation under FIM), at a seed of their own (the same for every "
        "train.seed)");
    add("eval.ema", c.eval.ema,
        "also run every evaluation (data.val, eval.sets, eval.choices) with optim.ema_decay's "
        "moving average of the weights (\"ema\" scores on the eval line; /val_ema and "
        "/val_ema_sets of metrics.h5): the weights are set aside, the average takes their "
        "place, and they are put back bit for bit");
    add("eval.bits_per_byte", c.eval.bits_per_byte,
        "also report the validation sets' bits per byte (val/bpb; a measure across tokenizers): "
        "their targets' cross-entropy in bits over the bytes those tokens decode to with "
        "data.vocab, which must be the data's tokenizer (its special tokens, of no bytes, left "
        "out of both)");
    add("eval.choices", c.eval.choices,
        "multiple-choice eval file scored at every evaluation (llm.c's format, e.g. HellaSwag "
        "from jobs/prepare_choices.py); empty: none");
    add("eval.preferences", c.eval.preferences,
        "with data.preferences: held-out preference pairs (a preference file) scored at every "
        "evaluation against the run's reference: DPO's loss, the share of pairs ranked right "
        "and the reward margin (/val/dpo_*); empty: none");
    add("eval.choice_examples", c.eval.choice_examples,
        "score the first N examples of eval.choices (0: all)");
    add("eval.sets", c.eval.sets,
        "more validation sets, 'name=GLOB, name=GLOB': each scored like data.val (its first "
        "eval.sequences sequences) into /val_sets/<name> of metrics.h5");
    add("eval.choice_mode", c.eval.choice_mode,
        "batched (rows of several examples per pass, as llm.c) | cached (each context once, the "
        "endings through the KV cache: least arithmetic, in small products)");
    add("checkpoint.dir", c.checkpoint.dir, "checkpoint directory (default RUN/ckpt)");
    add("checkpoint.every", c.checkpoint.every, "checkpoint every N steps (0: end only)");
    add("checkpoint.keep", c.checkpoint.keep, "keep the newest K checkpoints (0: all)");
    add("checkpoint.keep_every", c.checkpoint.keep_every,
        "also keep, for good, the checkpoints of steps that are multiples of N (0: none); they "
        "do not count in checkpoint.keep");
    add("checkpoint.at_start", c.checkpoint.at_start, "write step 0 before training");
    add("checkpoint.async", c.checkpoint.async,
        "write checkpoints in the background: training goes on once this rank's part is "
        "copied to host memory (which holds that copy until the write ends)");
    add("checkpoint.best", c.checkpoint.best,
        "keep the checkpoint of the lowest validation loss: an evaluation after step 0 that "
        "lowers it saves the step's checkpoint and names it in ckpt/best, which checkpoint.keep "
        "never deletes (nanoGPT's save on improvement; needs data.val and eval.sequences > 0)");
    add("run.name", c.run.name, "run name (directory under run.dir)");
    add("run.dir", c.run.dir, "directory of runs");
    add("run.backend", c.run.backend, "cpu (cuda when built with it)");
    add("run.precision", c.run.precision,
        "fp32 | bf16 (mixed: bf16 activations, fp32 master weights) | auto (bf16 on cuda)");
    add("run.fp8", c.run.fp8,
        "off | tensorwise: the blocks' linear layers multiply in FP8 (e4m3 weights and "
        "activations, e5m2 gradients, each tensor scaled by a power of two from its amax; the "
        "head, attention, norms and experts' router as they are; each expert at its own scales); "
        "run.precision = bf16 (cpu: fp32 too)");
    add("run.fp8_skip", c.run.fp8_skip,
        "linear layers run.fp8 leaves out: comma-separated globs over h/<i>/attn/c_attn, "
        "h/<i>/attn/c_proj, h/<i>/mlp/c_fc, h/<i>/mlp/c_proj (* matches / too), e.g. "
        "\"h/0/*, h/11/*\" for the first and last blocks; empty: none");
    add("run.fp8_head", c.run.fp8_head,
        "the output layer's products in FP8 too (with run.fp8; the loss's passes, not "
        "generation's): its vocabulary slice and ln_f's output in e4m3, the logits' gradient in "
        "e5m2");
    add("run.threads", c.run.threads, "CPU threads (0: OpenMP default)");
    add("run.peak_tflops", c.run.peak_tflops, "peak TFLOP/s for MFU (0: measure / datasheet)");
    add("run.max_minutes", c.run.max_minutes,
        "time budget: the first step ending this many minutes after the run began (once its "
        "model was built: loading the data and the checkpoint count) writes a "
        "checkpoint and the run stops there, exit status 0 (--resume auto continues it; "
        "Megatron's --exit-duration-in-mins); 0: none");
    add("run.hang_minutes", c.run.hang_minutes,
        "a rank without progress (a step's part, an evaluation batch began) for this many "
        "minutes ends the job with an error naming what it was doing: a peer that died or "
        "hangs leaves the others waiting in a collective for ever (checkpoint saves are not "
        "timed; an error NCCL reports in a collective ends it at once); 0: never");
    add("parallel.tp", c.parallel.tp, "tensor-parallel size");
    add("parallel.pp", c.parallel.pp, "pipeline-parallel size");
    add("parallel.cp", c.parallel.cp,
        "context-parallel size: each sequence's tokens split over cp ranks");
    add("parallel.ep", c.parallel.ep,
        "expert-parallel size (model.moe_experts): groups of ep data-parallel ranks share every "
        "layer's experts, 1/ep each, and send each token to the rank of its experts");
    add("parallel.zero", c.parallel.zero,
        "ZeRO stage: 0, 1 (optimizer state sharded; in bf16 the master weights too), 2 (and "
        "gradients, pp = 1) or 3 (and the weights the layers read, gathered per layer; pp = 1)");
    add("parallel.schedule", c.parallel.schedule,
        "pipeline schedule (1f1b | gpipe | interleaved | zb-h1 | zb-v; interleaved and zb-h1 take "
        "parallel.virtual_stages, zb-v two)");
    add("parallel.virtual_stages", c.parallel.virtual_stages, "virtual stages per pipeline rank");
    add("parallel.comm", c.parallel.comm,
        "auto | mpi | nccl: device-buffer communication of the cuda backend");
    add("parallel.sequence_parallel", c.parallel.sequence_parallel,
        "split LayerNorm/residual regions by sequence over the tensor-parallel group");
    add("parallel.stage_layers", c.parallel.stage_layers,
        "layers per pipeline stage: empty (equal), auto (balance the head on the last stage) or "
        "pp counts like 7,7,7,3");
    add("sample.length", c.sample.length, "tokens sampled into samples.txt at each eval (0: off)");
    add("sample.temperature", c.sample.temperature, "sampling temperature");
    add("sample.top_k", c.sample.top_k, "top-k sampling (0: all)");
    add("sample.top_p", c.sample.top_p,
        "nucleus sampling among the top-k: the fewest likeliest tokens whose probability reaches "
        "top_p (1: off)");
    add("sample.min_p", c.sample.min_p,
        "then min-p: the candidates at least min_p times as likely as the likeliest (0: off)");
    add("sample.repetition_penalty", c.sample.repetition_penalty,
        "each token of the prompt and the sample so far: its logit divided by this where "
        "positive, multiplied where negative (Hugging Face's; 1: off)");
    add("sample.frequency_penalty", c.sample.frequency_penalty,
        "each token the sample holds n times: its logit lowered by n times this (0: off)");
    add("sample.presence_penalty", c.sample.presence_penalty,
        "each token the sample holds: its logit lowered by this (0: off)");
    add("sample.prompt", c.sample.prompt,
        "sample prompt (after the tokenizer's prompt start; empty and none: its document start, "
        "GPT-2's <|endoftext|>)");
  }
  const po::options_description& desc() const { return desc_; }
  // Boost reads an empty value of a bool option as true: "--model.bias $UNSET" or "bias =" would
  // turn a feature on. Refused, as an empty number is.
  void check_booleans(const po::parsed_options& parsed, const std::string& origin) const {
    for (const po::option& o : parsed.options) {
      if (std::find(bools_.begin(), bools_.end(), o.string_key) == bools_.end()) continue;
      const bool empty =
          o.value.empty() || o.value.front().find_first_not_of(" \t") == std::string::npos;
      TRIAD_CHECK(!empty, origin, ": ", o.string_key, " is empty (give true or false)");
    }
  }
  std::string ini() const {
    std::ostringstream os;
    std::string section;
    for (const auto& [key, print] : printers_) {
      const auto dot = key.find('.');
      const std::string s = key.substr(0, dot);
      if (s != section) {
        os << (section.empty() ? "" : "\n") << "[" << s << "]\n";
        section = s;
      }
      os << key.substr(dot + 1) << " = " << print() << "\n";
    }
    return os.str();
  }

 private:
  template <typename T>
  void add(const char* key, T& field, const char* help) {
    std::string shown = format(field);
    desc_.add_options()(key, po::value<T>(&field)->default_value(field, shown), help);
    if constexpr (std::is_same_v<T, bool>) bools_.emplace_back(key);
    printers_.emplace_back(key, [&field] { return format(field); });
  }
  template <typename T>
  static std::string format(const T& v) {
    std::ostringstream os;
    if constexpr (std::is_same_v<T, bool>) {
      os << (v ? "true" : "false");
    } else if constexpr (std::is_floating_point_v<T>) {
      // The shortest text that reads back as the same double (6e-4, not 0.000599999...).
      char buf[64];
      const auto r = std::to_chars(buf, buf + sizeof(buf), v);
      os << std::string(buf, r.ptr);
    } else {
      os << v;
    }
    return os.str();
  }

  po::options_description desc_;
  std::vector<std::pair<std::string, std::function<std::string()>>> printers_;
  std::vector<std::string> bools_;
};

// Boost's messages name the option as "--train.lr" or "train.lr"; prefix where it came from.
[[noreturn]] void rethrow(const std::exception& e, const std::string& origin) {
  fail(origin, ": ", e.what());
}

// The lines of an INI text's [model] section, under their header; throws naming path when there
// is none.
std::string model_section(const std::string& ini, const std::string& path) {
  std::istringstream in(ini);
  std::string line, out = "[model]\n";
  bool inside = false, found = false;
  while (std::getline(in, line)) {
    const size_t first = line.find_first_not_of(" \t");
    if (first != std::string::npos && line[first] == '[') {
      inside = line.compare(first, 7, "[model]") == 0;
      found = found || inside;
      continue;
    }
    if (inside) out += line + "\n";
  }
  TRIAD_CHECK(found, "--model-from ", path, ": its config has no [model] section");
  return out;
}

}  // namespace

CommandLine parse_train_command_line(int argc, const char* const* argv) {
  CommandLine cl;
  KeyTable keys(cl.config);
  po::options_description general("triad-train options");
  general.add_options()("help,h", "print this help")(
      "config", po::value<std::vector<std::string>>(&cl.config_files)->composing(),
      "INI config file (repeatable; later files and command-line keys override earlier)")(
      "resume", po::value<std::string>(&cl.resume)->default_value("auto"),
      "auto (newest complete checkpoint of the run, if any) | none | PATH")(
      "init-from", po::value<std::string>(&cl.init_from),
      "start a new run from this checkpoint's weights (fresh optimizer), e.g. fine-tuning")(
      "extend-positions", po::bool_switch(&cl.extend_positions),
      "with --init-from a rotary (model.position = rope) checkpoint: take model.seq_len, "
      "rope_theta and the rope scaling from the config even where the checkpoint's model had "
      "others (context extension: a longer seq_len, YaRN, another base)")(
      "from-ema", po::bool_switch(&cl.from_ema),
      "with --init-from or --eval-only: read the checkpoint's moving average of the weights "
      "(/optimizer/ema, kept by optim.ema_decay) as the weights, not /model")(
      "model-from", po::value<std::string>(&cl.model_from),
      "take the model.* keys from this checkpoint (e.g. one triad-convert imported): they "
      "replace the config files' model keys, command-line --model.* keys still override them")(
      "eval-only", po::bool_switch(&cl.eval_only),
      "evaluate a checkpoint (--resume PATH / --init-from PATH / the run's newest) and exit")(
      "plan", po::bool_switch(&cl.plan),
      "print each rank's memory (weights, gradients, optimizer state, activations) and the "
      "step's compute for this config's grid, without training, data or MPI peers, and exit")(
      "plan-ranks", po::value<int>(&cl.plan_ranks)->default_value(0),
      "--plan: the number of ranks to plan for (0: this job's)")(
      "plan-tflops", po::value<double>(&cl.plan_tflops)->default_value(0),
      "--plan: also the step time at this sustained TFLOP/s per rank")(
      "plan-gbps", po::value<double>(&cl.plan_gbps)->default_value(0),
      "--plan: also the data-parallel reduction's time at this bandwidth per rank (GB/s)")(
      "plan-memory-gb", po::value<double>(&cl.plan_memory_gb)->default_value(0),
      "--plan: also each activation-recomputation setting's memory (and step time), and the "
      "cheapest that fits this many GB (1e9 bytes) per rank")(
      "plan-timeline", po::value<std::string>(&cl.plan_timeline),
      "--plan with --plan-tflops, parallel.pp > 1: write the simulated pipeline step, action by "
      "action, to this CSV file (draw it with triad-timeline)");
  po::options_description all;
  all.add(general).add(keys.desc());
  std::ostringstream help;
  help << "usage: triad-train --config FILE [--section.key value]...\n\n" << all;
  cl.help_text = help.str();

  po::variables_map vm;
  try {
    // Boost keeps the first value stored for a key: store the command line first, then the
    // config files from last to first, so later sources override earlier ones.
    const po::parsed_options parsed = po::command_line_parser(argc, argv).options(all).run();
    keys.check_booleans(parsed, "command line");
    po::store(parsed, vm);
    if (vm.count("help")) {
      cl.help = true;
      return cl;
    }
    reject_positional_arguments(parsed, "command line",
                                "the config file goes after --config; see triad-train --help");
  } catch (const po::error& e) {
    rethrow(e, "command line");
  }
  // An empty path (an unset shell variable) must not mean "not given".
  TRIAD_CHECK(!vm["resume"].as<std::string>().empty(),
              "command line: --resume is empty (auto, none or a checkpoint file)");
  for (const char* option : {"init-from", "model-from", "plan-timeline"})
    TRIAD_CHECK(!vm.count(option) || !vm[option].as<std::string>().empty(), "command line: --",
                option, " is empty (give a file)");
  if (vm.count("model-from")) {
    const std::string path = vm["model-from"].as<std::string>();
    // Each rank reads the (validated) root attributes itself: MPI_COMM_SELF.
    const std::string section =
        model_section(read_checkpoint_state(MPI_COMM_SELF, path).config, path);
    try {
      std::istringstream in(section);
      const po::parsed_options parsed = po::parse_config_file(in, keys.desc(), false);
      keys.check_booleans(parsed, "--model-from " + path + " (the [model] section of its config)");
      po::store(parsed, vm);
    } catch (const po::error& e) {
      rethrow(e, "--model-from " + path + " (the [model] section of its config)");
    }
  }
  std::vector<std::string> files;
  if (vm.count("config")) files = vm["config"].as<std::vector<std::string>>();
  for (auto it = files.rbegin(); it != files.rend(); ++it) {
    TRIAD_CHECK(!it->empty(), "command line: --config is empty (give a file)");
    std::error_code ec;
    const fs::file_status st = fs::status(*it, ec);  // (missing: the open below says so)
    // A directory opens as a stream that reads nothing; a FIFO would block the read for ever, a
    // device (/dev/zero) fill memory without end.
    TRIAD_CHECK(!fs::is_directory(st), "config file ", *it, ": is a directory");
    TRIAD_CHECK(!fs::exists(st) || fs::is_regular_file(st), "config file ", *it,
                ": is not a regular file");
    constexpr uintmax_t kMaxConfigBytes = uintmax_t(16) << 20;
    const uintmax_t bytes = fs::is_regular_file(st) ? fs::file_size(*it, ec) : 0;
    TRIAD_CHECK(ec || bytes <= kMaxConfigBytes, "config file ", *it, ": ", bytes,
                " bytes, more than a config holds (16 MiB at most)");
    std::ifstream in(*it);
    TRIAD_CHECK(in.is_open(), "config file ", *it, ": cannot open (missing or unreadable)");
    // A UTF-8 byte-order mark (some editors write one) is not part of the first line.
    char bom[3] = {};
    if (!in.read(bom, 3) || std::string_view(bom, 3) != "\xEF\xBB\xBF") {
      in.clear();
      in.seekg(0);
    }
    try {
      const po::parsed_options parsed = po::parse_config_file(in, keys.desc(), false);
      keys.check_booleans(parsed, "config file " + *it);
      po::store(parsed, vm);
    } catch (const po::error& e) {
      rethrow(e, "config file " + *it);
    }
  }
  try {
    po::notify(vm);
  } catch (const po::error& e) {
    rethrow(e, "command line");
  }
  {
    // "Auto" or "NONE": a keyword mistyped, not a checkpoint's path.
    std::string lower = cl.resume;
    for (char& ch : lower) ch = char(std::tolower(static_cast<unsigned char>(ch)));
    std::error_code ec;
    TRIAD_CHECK(lower == cl.resume || (lower != "auto" && lower != "none") ||
                    std::filesystem::exists(cl.resume, ec),
                "command line: --resume ", cl.resume,
                ": no such file (the keywords auto and none are lower case)");
  }
  TRIAD_CHECK(!cl.eval_only || cl.init_from.empty() || cl.resume == "auto" || cl.resume == "none",
              "command line: --eval-only evaluates one checkpoint, and --init-from and --resume "
              "both name one: give one");
  TRIAD_CHECK(cl.init_from.empty() || cl.resume == "auto" || cl.resume == "none",
              "command line: --init-from starts a new run from one checkpoint and --resume ",
              cl.resume,
              " continues from another: give one (--resume auto lets a requeued "
              "fine-tuning job continue its own checkpoints)");
  TRIAD_CHECK(!cl.from_ema || !cl.init_from.empty() || cl.eval_only,
              "command line: --from-ema applies to the checkpoint of --init-from or --eval-only, "
              "and there is none");
  TRIAD_CHECK(!cl.extend_positions || !cl.init_from.empty(),
              "command line: --extend-positions applies to the checkpoint of --init-from, and "
              "there is none");
  resolve_run_length(cl.config);
  resolve_token_names(cl.config);
  return cl;
}

Config parse_config_text(const std::string& ini_text, const std::string& origin) {
  Config c;
  KeyTable keys(c);
  po::variables_map vm;
  try {
    std::istringstream in(ini_text);
    const po::parsed_options parsed = po::parse_config_file(in, keys.desc(), false);
    keys.check_booleans(parsed, origin);
    po::store(parsed, vm);
    po::notify(vm);
  } catch (const po::error& e) {
    rethrow(e, origin);
  }
  resolve_run_length(c);
  return c;
}

std::string to_ini(const Config& c) {
  Config copy = c;
  return KeyTable(copy).ini();
}

}  // namespace triad
