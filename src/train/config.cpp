#include "triad/train/config.h"

#include <boost/program_options.hpp>
#include <cctype>
#include <charconv>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iomanip>
#include <map>
#include <memory>
#include <sstream>
#include <string_view>

#include "triad/core/comma_list.h"
#include "triad/core/error.h"
#include "triad/data/blend.h"
#include "triad/data/fim.h"
#include "triad/data/tokenizer.h"
#include "triad/io/checkpoint.h"
#include "triad/kernels/cuda_backend.h"  // cuda_flash_head_dim, cuda_flash_drops
#include "triad/kernels/moe_routing.h"
#include "triad/model/gpt.h"
#include "triad/optim/optimizer.h"  // frozen_tensor: a name against comma-separated globs
#include "triad/parallel/pipeline_schedule.h"
#include "triad/train/positional_arguments.h"
#include "triad/train/run_plan.h"
#include "triad/train/sampler.h"

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
    add("model.rotary_dim", c.model.rotary_dim,
        "rope: partial rotary, only the first N of each q and k head's values rotate (even, at "
        "most the head's width; GPT-NeoX's rotary_pct 0.25: head_dim / 4; 0: all of them)");
    add("model.rope_scaling", c.model.rope_scaling,
        "rope: none | llama3 (Llama 3.1's scaling of the low frequencies, for long contexts) | "
        "yarn (YaRN, as Qwen2.5 and Qwen3 for long contexts) | longrope (LongRoPE, as Phi-3's "
        "long-context models)");
    add("model.rope_scaling_factor", c.model.rope_scaling_factor,
        "llama3, yarn: the low frequencies' divisor; longrope: the stretch of the original "
        "context (max positions / rope_original_positions), which scales cos and sin by "
        "sqrt(1 + ln(factor) / ln(rope_original_positions))");
    add("model.rope_short_factor", c.model.rope_short_factor,
        "longrope: each rotated pair's frequency divisor, comma-separated (rotary_dim / 2 or "
        "head_dim / 2 of them), used where seq_len <= rope_original_positions");
    add("model.rope_long_factor", c.model.rope_long_factor,
        "longrope: the same, used where seq_len > rope_original_positions");
    add("model.rope_yarn_beta_fast", c.model.rope_yarn_beta_fast,
        "yarn: frequencies turning more than this many times in rope_original_positions are "
        "kept");
    add("model.rope_yarn_beta_slow", c.model.rope_yarn_beta_slow,
        "yarn: frequencies turning fewer than this many times are divided");
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
    add("model.bias", c.model.bias,
        "biases in the linear layers and LayerNorms (false: none, as nanoGPT's bias = False)");
    add("model.kv_lora_rank", c.model.kv_lora_rank,
        "> 0: multi-head latent attention (DeepSeek-V2's MLA): keys and values up-projected from "
        "a latent of this many values per token (attn/kv_a, RMSNorm attn/kv_a_norm, attn/kv_b); "
        "needs rope, and the qk_*_head_dim and v_head_dim keys; 0: off");
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
};

// Boost's messages name the option as "--train.lr" or "train.lr"; prefix where it came from.
[[noreturn]] void rethrow(const std::exception& e, const std::string& origin) {
  fail(origin, ": ", e.what());
}

void check(bool ok, const std::string& key, const std::string& problem) {
  TRIAD_CHECK(ok, "config: ", key, " ", problem);
}

}  // namespace

namespace {
// "none" → -1, else a token id < vocab_size (key: the config key, what: the token's role).
int32_t parse_token_id(const std::string& text, int vocab_size, const char* key, const char* what) {
  if (text == "none") return -1;
  int64_t v = -1;
  const auto r = std::from_chars(text.data(), text.data() + text.size(), v);
  TRIAD_CHECK(!text.empty() && r.ec == std::errc() && r.ptr == text.data() + text.size() && v >= 0,
              "config: ", key, " must be none or the token id ", what, " (got '", text, "')");
  TRIAD_CHECK(v < vocab_size, "config: ", key, " ", v,
              " is not a token of the vocabulary (model.vocab_size ", vocab_size, ")");
  return int32_t(v);
}
}  // namespace

void resolve_token_names(Config& c) {
  std::unique_ptr<Tokenizer> tokenizer;  // read once, where a key names a token
  for (auto [value, key] : {std::pair{&c.data.document_mask, "data.document_mask"},
                            std::pair{&c.data.eod_mask_loss, "data.eod_mask_loss"}}) {
    const std::string& v = *value;
    if (v == "none" || v.empty() || std::isdigit(static_cast<unsigned char>(v[0])) || v[0] == '-')
      continue;  // an id (or a bad value, which validate() names)
    TRIAD_CHECK(!trim_blanks(c.data.vocab).empty(), "config: ", key, ": '", v,
                "' is neither a token id nor, without data.vocab, a special token's name (set "
                "data.vocab to the data's tokenizer, which names it)");
    if (!tokenizer) {
      std::ifstream probe(c.data.vocab);
      TRIAD_CHECK(probe.is_open(), "config: ", key, " resolves its name '", v,
                  "' with data.vocab, and data.vocab ", c.data.vocab,
                  " cannot be opened (missing or unreadable)");
      tokenizer = std::make_unique<Tokenizer>(Tokenizer::from_file(c.data.vocab));
    }
    const int32_t id = tokenizer->special_id(v);
    TRIAD_CHECK(id >= 0, "config: ", key, ": '", v,
                "' is neither a token id nor a special token of data.vocab ", c.data.vocab);
    *value = std::to_string(id);
  }
}

int32_t parse_document_mask(const std::string& text, int vocab_size) {
  return parse_token_id(text, vocab_size, "data.document_mask", "that starts a document");
}

int32_t parse_eod_mask_loss(const std::string& text, int vocab_size) {
  return parse_token_id(text, vocab_size, "data.eod_mask_loss", "that ends a document");
}

FimSpec parse_fim(const DataConfig& d, int vocab_size, uint64_t seed, const Tokenizer* tokenizer) {
  TRIAD_CHECK(std::isfinite(d.fim_rate) && d.fim_rate >= 0 && d.fim_rate <= 1,
              "config: data.fim_rate must be in [0, 1] (0: off; got ", d.fim_rate, ")");
  TRIAD_CHECK(std::isfinite(d.fim_spm_rate) && d.fim_spm_rate >= 0 && d.fim_spm_rate <= 1,
              "config: data.fim_spm_rate must be in [0, 1] (got ", d.fim_spm_rate, ")");
  FimSpec f;
  f.rate = d.fim_rate;
  f.spm_rate = d.fim_spm_rate;
  f.seed = seed;
  // A token of data.fim_*: none (-1), an id, or the text of one of data.vocab's special tokens
  // ("<fim_prefix>", "<|endoftext|>"): its id with the tokenizer, kUnresolved without.
  constexpr int32_t kUnresolved = -2;
  auto token_of = [&](const std::string& item, const char* key, const char* what) -> int32_t {
    if (item == "none" || item.empty() || std::isdigit(static_cast<unsigned char>(item[0])) ||
        item[0] == '-')
      return parse_token_id(item, vocab_size, key, what);
    TRIAD_CHECK(!trim_blanks(d.vocab).empty(), "config: ", key, ": '", item,
                "' is neither a token id nor, without data.vocab, a special token's name (set "
                "data.vocab to the data's tokenizer, which names it)");
    f.named = true;
    if (tokenizer == nullptr) return kUnresolved;
    const int32_t id = tokenizer->special_id(item);
    TRIAD_CHECK(id >= 0, "config: ", key, ": '", item, "' is not a special token of data.vocab ",
                d.vocab);
    TRIAD_CHECK(id < vocab_size, "config: ", key, ": '", item, "' is token ", id,
                " of data.vocab, not one of the model's ", vocab_size);
    return id;
  };
  f.split = token_of(d.fim_split, "data.fim_split", "the fragments are cut at");
  TRIAD_CHECK(d.fim_granularity == "token" || d.fim_granularity == "character",
              "config: data.fim_granularity must be token or character (got '", d.fim_granularity,
              "')");
  f.characters = d.fim_granularity == "character";
  f.fragment_split =
      token_of(d.fim_fragment_split, "data.fim_fragment_split", "the parts are cut at");
  f.no_prefix = d.fim_no_prefix;
  if (d.fim_rate == 0) {
    TRIAD_CHECK(trim_blanks(d.fim_tokens).empty() && d.fim_split == "none" &&
                    d.fim_spm_rate == DataConfig{}.fim_spm_rate && !f.characters &&
                    d.fim_fragment_split == "none" &&
                    d.fim_fragment_rate == DataConfig{}.fim_fragment_rate && f.no_prefix.empty(),
                "config: data.fim_tokens, data.fim_split, data.fim_spm_rate, "
                "data.fim_granularity, data.fim_fragment_split, data.fim_fragment_rate and "
                "data.fim_no_prefix need data.fim_rate > 0");
    return f;
  }
  if (f.fragment_split != -1) {
    TRIAD_CHECK(
        std::isfinite(d.fim_fragment_rate) && d.fim_fragment_rate >= 0 && d.fim_fragment_rate <= 1,
        "config: data.fim_fragment_rate must be in [0, 1] with data.fim_fragment_split "
        "(got ",
        d.fim_fragment_rate, ")");
    TRIAD_CHECK(f.fragment_split != f.split || f.split == kUnresolved,
                "config: data.fim_fragment_split must differ from data.fim_split");
    f.fragment_rate = d.fim_fragment_rate;
  } else {
    TRIAD_CHECK(d.fim_fragment_rate == DataConfig{}.fim_fragment_rate,
                "config: data.fim_fragment_rate needs data.fim_fragment_split");
  }
  const std::vector<std::string> ids = split_comma_list(d.fim_tokens);
  const size_t want = f.characters ? 4 : 3;
  TRIAD_CHECK(ids.size() == want, "config: data.fim_tokens must be the ",
              f.characters ? "four token ids \"PREFIX, MIDDLE, SUFFIX, PAD\" (sentinels, then the "
                             "padding: data.fim_granularity = character; "
                           : "three sentinel token ids \"PREFIX, MIDDLE, SUFFIX\" (",
              "e.g. StarCoder's 1, 2, 3", f.characters ? ", 4" : "", "; got '", d.fim_tokens, "')");
  int32_t v[4] = {-1, -1, -1, -1};
  for (size_t i = 0; i < want; ++i) {
    TRIAD_CHECK(ids[i] != "none", "config: data.fim_tokens: '", d.fim_tokens, "' must name ", want,
                " token ids");
    v[i] = token_of(ids[i], "data.fim_tokens", i < 3 ? "of a sentinel" : "of the padding");
  }
  if (f.named && tokenizer == nullptr) {  // the ids once the tokenizer has them
    f.prefix = f.middle = f.suffix = f.pad = f.split = f.fragment_split = -1;
    return f;
  }
  bool distinct = true;
  for (size_t i = 0; i < want; ++i) {
    distinct = distinct && v[i] != f.split && v[i] != f.fragment_split;
    for (size_t j = 0; j < i; ++j) distinct = distinct && v[i] != v[j];
  }
  TRIAD_CHECK(distinct, "config: data.fim_tokens '", d.fim_tokens, "' must be ",
              f.characters ? "four" : "three",
              " distinct token ids, none of them data.fim_split or data.fim_fragment_split");
  f.prefix = v[0];
  f.middle = v[1];
  f.suffix = v[2];
  f.pad = v[3];
  return f;
}

namespace {
// A comma-separated list of integers >= 1 (blanks around them allowed) into v; false where an
// item is not one or their number is outside [least, most].
bool positive_integers(const std::string& text, size_t least, size_t most,
                       std::vector<int64_t>& v) {
  const std::vector<std::string> items = split_comma_list(text);
  if (items.size() < least || items.size() > most) return false;
  v.assign(items.size(), 0);
  for (size_t i = 0; i < items.size(); ++i) {
    const std::string& item = items[i];
    const auto p = std::from_chars(item.data(), item.data() + item.size(), v[i]);
    if (item.empty() || p.ec != std::errc() || p.ptr != item.data() + item.size() || v[i] < 1)
      return false;
  }
  return true;
}
}  // namespace

BatchRampup parse_batch_rampup(const std::string& text, int batch_size) {
  BatchRampup r;
  if (trim_blanks(text).empty()) return r;
  const std::string key = "config: train.batch_rampup";
  std::vector<int64_t> v;
  const bool ok = positive_integers(text, 3, 3, v);
  TRIAD_CHECK(ok, key,
              " must be empty or \"START, INCREMENT, SEQUENCES\", three integers >= 1 (got '", text,
              "')");
  TRIAD_CHECK(v[0] < batch_size, key, " '", text, "' starts at ", v[0],
              " sequences, which must be below train.batch_size (", batch_size, ")");
  TRIAD_CHECK((batch_size - v[0]) % v[1] == 0, key, " '", text, "': train.batch_size (", batch_size,
              ") − START (", v[0], ") must be a multiple of INCREMENT (", v[1], ")");
  r.start = int(v[0]);
  r.increment = int(v[1]);
  r.sequences = v[2];
  return r;
}

namespace {
// What a window warmup grows to: the model's window, or the whole context without one.
int64_t warmup_target(const ModelConfig& m) {
  return m.sliding_window > 0 ? m.sliding_window : m.seq_len;
}
}  // namespace

WindowWarmup parse_window_warmup(const std::string& text, const ModelConfig& m) {
  WindowWarmup w;
  if (trim_blanks(text).empty()) return w;
  const std::string key = "config: train.window_warmup";
  std::vector<int64_t> v;
  TRIAD_CHECK(positive_integers(text, 2, 3, v) && v[0] <= (int64_t(1) << 30) &&
                  (v.size() < 3 || v[2] <= (int64_t(1) << 30)),
              key, " must be empty or \"START, STEPS[, MULTIPLE]\", integers >= 1 (got '", text,
              "')");
  const int64_t target = warmup_target(m);
  const char* grows_to = m.sliding_window > 0 ? "model.sliding_window (" : "model.seq_len (";
  TRIAD_CHECK((v[0] < target), key, " '", text, "' starts at a window of ", v[0],
              " tokens, which must be below the one it grows to: ", grows_to, target, ")");
  w.start = int(v[0]);
  w.steps = v[1];
  if (v.size() == 3) w.multiple = int(v[2]);
  // The windows are multiples of MULTIPLE: a START between them would be rounded up, and the
  // first window would not be START (or, at a MULTIPLE at or above W, there would be no warmup).
  TRIAD_CHECK(w.start % w.multiple == 0, key, " '", text, "': START (", w.start,
              ") must be a multiple of MULTIPLE (", w.multiple,
              v.size() == 3 ? "" : ", the default: the flash kernels' tile",
              "), the windows' granularity");
  return w;
}

int window_at(const WindowWarmup& w, const ModelConfig& m, int64_t step) {
  if (!w.on() || step >= w.steps) return m.sliding_window;
  const int64_t target = warmup_target(m);
  // 0 <= step < steps: the product in 128 bits cannot overflow.
  int64_t now =
      w.start + int64_t(__int128(target - w.start) * std::max<int64_t>(step, 0) / w.steps);
  now = (now + w.multiple - 1) / w.multiple * w.multiple;
  return now < target ? int(now) : m.sliding_window;
}

int batch_size_at(const BatchRampup& ramp, int batch_size, int64_t consumed) {
  if (!ramp.on() || consumed >= ramp.sequences) return batch_size;
  const int64_t n = (batch_size - ramp.start) / ramp.increment;
  // 0 <= consumed < sequences: the quotient is below n; the product in 128 bits cannot overflow.
  return ramp.start + ramp.increment * int(__int128(consumed) * n / ramp.sequences);
}

int64_t sequences_after_steps(const BatchRampup& ramp, int batch_size, int64_t consumed,
                              int64_t steps) {
  for (; steps > 0 && ramp.on() && consumed < ramp.sequences; --steps)
    consumed += batch_size_at(ramp, batch_size, consumed);
  return consumed + std::max<int64_t>(steps, 0) * batch_size;  // the rest at the full batch
}

ScheduleClock::ScheduleClock(const TrainConfig& t)
    : by_sequences_(t.lr_by == "sequences"),
      ramp_(parse_batch_rampup(t.batch_rampup, t.batch_size)),
      batch_size_(t.batch_size),
      total_(by_sequences_ ? double(sequences_after_steps(ramp_, t.batch_size, 0, t.steps))
                           : double(t.steps)),
      warmup_(by_sequences_ ? double(t.warmup_sequences) : double(t.warmup_steps)) {}

SchedulePoint ScheduleClock::at(int64_t step, int64_t consumed) const {
  if (!by_sequences_) return {double(step), 1.0, total_, warmup_};
  return {double(consumed), double(batch_size_at(ramp_, batch_size_, consumed)), total_, warmup_};
}

int64_t steps_for_sequences(const BatchRampup& ramp, int batch_size, int64_t sequences) {
  int64_t consumed = 0, steps = 0;
  for (; consumed < sequences && ramp.on() && consumed < ramp.sequences; ++steps)
    consumed += batch_size_at(ramp, batch_size, consumed);
  if (consumed < sequences) steps += (sequences - consumed + batch_size - 1) / batch_size;
  return steps;
}

void resolve_run_length(Config& c) {
  // validate() refuses what cannot be resolved (a batch below 1, negative sequences).
  if (c.train.sequences <= 0 || c.train.batch_size < 1) return;
  c.train.steps = steps_for_sequences(parse_batch_rampup(c.train.batch_rampup, c.train.batch_size),
                                      c.train.batch_size, c.train.sequences);
}

std::vector<int> ramp_batch_sizes(const BatchRampup& ramp, int batch_size) {
  std::vector<int> sizes;
  if (ramp.on())
    for (int b = ramp.start; b < batch_size; b += ramp.increment) sizes.push_back(b);
  sizes.push_back(batch_size);
  return sizes;
}

std::vector<double> parse_rope_factors(const std::string& text, const std::string& key, int pairs) {
  const std::vector<std::string> items = split_comma_list(text);
  std::vector<double> v;
  for (const std::string& item : items) {
    double x = 0;
    const auto p = std::from_chars(item.data(), item.data() + item.size(), x);
    TRIAD_CHECK(!item.empty() && p.ec == std::errc() && p.ptr == item.data() + item.size() &&
                    std::isfinite(x) && x > 0,
                "config: ", key, " must be comma-separated finite numbers > 0 (got '", item,
                "' in '", text, "')");
    v.push_back(x);
  }
  TRIAD_CHECK(v.size() == size_t(pairs), "config: ", key, " holds ", v.size(),
              " numbers but rope_scaling longrope needs one per rotated pair: ", pairs,
              " (rotary_dim / 2, or head_dim / 2)");
  return v;
}

std::vector<int> parse_stage_layers(const std::string& text, int pp, int n_layer) {
  const std::string key = "config: parallel.stage_layers";
  std::vector<int> counts;
  int64_t sum = 0;
  for (const std::string& item : split_comma_list(text)) {
    int v = -1;
    const auto r = std::from_chars(item.data(), item.data() + item.size(), v);
    TRIAD_CHECK(
        !item.empty() && r.ec == std::errc() && r.ptr == item.data() + item.size() && v >= 0, key,
        " must be empty, auto or parallel.pp comma-separated layer counts >= 0 (got '", text, "')");
    counts.push_back(v);
    sum += v;
  }
  TRIAD_CHECK(int(counts.size()) == pp, key, " '", text, "' gives ", counts.size(),
              " stages, parallel.pp is ", pp);
  TRIAD_CHECK(sum == n_layer, key, " '", text, "' holds ", sum, " layers, model.n_layer is ",
              n_layer);
  // The first stage holds the embeddings and the last the head even without layers; a stage in
  // between would hold nothing.
  for (int s = 1; s + 1 < pp; ++s)
    TRIAD_CHECK(counts[size_t(s)] > 0, key, " '", text, "' gives stage ", s,
                " no layers: only the first and the last stage may have none");
  return counts;
}

std::vector<int> stage_layers(const Config& cfg) {
  std::string text = cfg.parallel.stage_layers;
  text.erase(0, text.find_first_not_of(" \t"));
  text.erase(text.find_last_not_of(" \t") + 1);
  const int pp = cfg.parallel.pp, L = cfg.model.n_layer;
  if (text.empty() || pp == 1) return {};
  if (text != "auto") return parse_stage_layers(text, pp, L);
  // Balance the compute per token: a layer costs 72·C² + 6·C·T FLOPs forward and backward (GPT-2),
  // plus 16·C² + 2·C·T where full recomputation reruns it (the first train.recompute_layers of a
  // stage, or all); the last stage adds the head, 6·Vp·C. The last stage gets k layers, the
  // others L − k spread as evenly as possible, at least one each, the extra ones on the stages
  // nearest the end (the first stages keep the most micro-batches in flight under 1F1B); k
  // minimizes the busiest stage, the largest such k on a tie. A mixture of experts' layers cost
  // their own (k experts, the router, shared experts), dense ones among them the dense MLP: each
  // stage is costed from the layers it gets.
  const double C = cfg.model.n_embd, T = cfg.model.seq_len;
  // 6 FLOPs per weight: (c_attn's outputs + A)·C in attention (4C² without grouped-query
  // attention; A = the attention's width, C unless model.head_dim), (c_fc's outputs + hidden
  // units)·C in the MLP (72·C² in all for GPT-2).
  const GptShape shape = gpt_shape(cfg);
  const double A = shape.attn_flops_width();
  const double attn = shape.attn_weights_per_token();
  const double head = 6.0 * cfg.padded_vocab_size() * C;
  const Recomputation recompute = activation_options(cfg).recompute;
  auto layer = [&](int l) { return 6 * (attn + shape.mlp_weights_per_token(l)) + 6 * A * T; };
  auto rerun = [&](int l) {  // gelu reruns an elementwise pass only
    return recompute.mode == Recompute::full ? Gpt::layer_recompute_flops_per_token(shape, l) : 0.0;
  };
  // Layers [first, first + n) as a stage: the first recompute.count(n) of them rerun.
  auto cost = [&](int first, int n) {
    double c = 0;
    for (int i = 0; i < n; ++i)
      c += layer(first + i) + (i < recompute.count(n) ? rerun(first + i) : 0);
    return c;
  };
  auto split_for = [&](int k) {
    std::vector<int> split(size_t(pp), (L - k) / (pp - 1));
    for (int s = 0; s < (L - k) % (pp - 1); ++s) ++split[size_t(pp - 2 - s)];
    split.back() = k;
    return split;
  };
  int best_k = 0;
  double best = 1e300;
  for (int k = 0; k <= L - (pp - 1); ++k) {
    const std::vector<int> split = split_for(k);
    double busiest = 0;
    for (int s = 0, first = 0; s < pp; first += split[size_t(s)], ++s)
      busiest = std::max(busiest, cost(first, split[size_t(s)]) + (s == pp - 1 ? head : 0.0));
    if (busiest <= best * (1 + 1e-12)) {
      best = busiest;
      best_k = k;
    }
  }
  return split_for(best_k);
}

bool Config::bf16() const {
  return run.precision == "bf16" || (run.precision == "auto" && run.backend == "cuda");
}

int Config::mlp_hidden_size() const {
  GptShape s;
  s.n_embd = model.n_embd;
  set_mlp(s, model.mlp);
  s.mlp_hidden = model.mlp_hidden;
  return s.hidden();
}

int Config::padded_vocab_size() const {
  return triad::padded_vocab_size(model.vocab_size, parallel.tp);
}

namespace {

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
      po::store(po::parse_config_file(in, keys.desc(), false), vm);
    } catch (const po::error& e) {
      rethrow(e, "--model-from " + path + " (the [model] section of its config)");
    }
  }
  std::vector<std::string> files;
  if (vm.count("config")) files = vm["config"].as<std::vector<std::string>>();
  for (auto it = files.rbegin(); it != files.rend(); ++it) {
    TRIAD_CHECK(!it->empty(), "command line: --config is empty (give a file)");
    std::error_code ec;  // (a directory opens as a stream that reads nothing)
    TRIAD_CHECK(!fs::is_directory(*it, ec), "config file ", *it, ": is a directory");
    std::ifstream in(*it);
    TRIAD_CHECK(in.is_open(), "config file ", *it, ": cannot open (missing or unreadable)");
    // A UTF-8 byte-order mark (some editors write one) is not part of the first line.
    char bom[3] = {};
    if (!in.read(bom, 3) || std::string_view(bom, 3) != "\xEF\xBB\xBF") {
      in.clear();
      in.seekg(0);
    }
    try {
      po::store(po::parse_config_file(in, keys.desc(), false), vm);
    } catch (const po::error& e) {
      rethrow(e, "config file " + *it);
    }
  }
  try {
    po::notify(vm);
  } catch (const po::error& e) {
    rethrow(e, "command line");
  }
  TRIAD_CHECK(!cl.eval_only || cl.init_from.empty() || cl.resume == "auto" || cl.resume == "none",
              "command line: --eval-only evaluates one checkpoint, and --init-from and --resume "
              "both name one: give one");
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
    po::store(po::parse_config_file(in, keys.desc(), false), vm);
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

std::vector<std::pair<std::string, std::string>> parse_val_sets(const std::string& text) {
  std::vector<std::pair<std::string, std::string>> sets;
  if (text.find_first_not_of(" \t") == std::string::npos) return sets;
  for (const std::string& item : split_comma_list(text)) {
    check(!item.empty(), "eval.sets", "has an empty entry (two commas, or one at an end)");
    const auto eq = item.find('=');
    const std::string name = trim_blanks(item.substr(0, eq)),
                      glob = eq == std::string::npos ? "" : trim_blanks(item.substr(eq + 1));
    check(eq != std::string::npos && !glob.empty(), "eval.sets", "'" + item + "' is not name=GLOB");
    check(!name.empty() && name.find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRS"
                                                  "TUVWXYZ0123456789_-") == std::string::npos,
          "eval.sets", "name '" + name + "' must be letters, digits, _ or -");
    for (const auto& [n, g] : sets) check(n != name, "eval.sets", "name '" + name + "' repeats");
    sets.emplace_back(name, glob);
  }
  return sets;
}

void validate(const Config& c, int world_size) {
  const auto& m = c.model;
  check(m.n_layer >= 1, "model.n_layer", "must be >= 1 (got " + std::to_string(m.n_layer) + ")");
  check(m.n_head >= 1, "model.n_head", "must be >= 1 (got " + std::to_string(m.n_head) + ")");
  check(m.n_embd >= 1, "model.n_embd", "must be >= 1 (got " + std::to_string(m.n_embd) + ")");
  // Far beyond any model trained, and small enough that the layout's sizes and the plan's
  // per-layer tables stay well inside their integers.
  check(m.n_layer <= 65536, "model.n_layer",
        "must be <= 65536 (got " + std::to_string(m.n_layer) + ")");
  check(m.n_head <= 65536, "model.n_head",
        "must be <= 65536 (got " + std::to_string(m.n_head) + ")");
  check(m.n_embd <= (1 << 20), "model.n_embd",
        "must be <= 1048576 (got " + std::to_string(m.n_embd) + ")");
  check(m.seq_len <= (1 << 24), "model.seq_len",
        "must be <= 16777216 (got " + std::to_string(m.seq_len) + ")");
  check(m.mlp_hidden <= (1 << 24), "model.mlp_hidden",
        "must be <= 16777216 (got " + std::to_string(m.mlp_hidden) + ")");
  check(m.head_dim >= 0 && m.head_dim <= 4096, "model.head_dim",
        "must be in [0, 4096] (0: n_embd / n_head; got " + std::to_string(m.head_dim) + ")");
  check(m.head_dim > 0 || m.n_embd % m.n_head == 0, "model.n_head",
        "(" + std::to_string(m.n_head) + ") must divide model.n_embd (" + std::to_string(m.n_embd) +
            ")");
  check(m.kv_lora_rank >= 0 && m.q_lora_rank >= 0 && m.qk_nope_head_dim >= 0 &&
            m.qk_rope_head_dim >= 0 && m.v_head_dim >= 0,
        "model.kv_lora_rank",
        "and the other MLA sizes (q_lora_rank, qk_nope_head_dim, "
        "qk_rope_head_dim, v_head_dim) must be >= 0");
  if (m.mla()) {
    const std::string dims = "kv_lora_rank " + std::to_string(m.kv_lora_rank) + ", q_lora_rank " +
                             std::to_string(m.q_lora_rank) + ", qk_nope_head_dim " +
                             std::to_string(m.qk_nope_head_dim) + ", qk_rope_head_dim " +
                             std::to_string(m.qk_rope_head_dim) + ", v_head_dim " +
                             std::to_string(m.v_head_dim);
    // Even sizes: bf16 rows are moved as 32-bit words.
    check(m.qk_rope_head_dim > 0 && m.v_head_dim > 0 && m.kv_lora_rank % 2 == 0 &&
              m.q_lora_rank % 2 == 0 && m.qk_nope_head_dim % 2 == 0 &&
              m.qk_rope_head_dim % 2 == 0 && m.v_head_dim % 2 == 0,
          "model.kv_lora_rank",
          "> 0 (multi-head latent attention) needs model.qk_rope_head_dim and model.v_head_dim "
          "> 0 and every MLA size even (" +
              dims + ")");
    check(m.position == "rope", "model.kv_lora_rank",
          "> 0 (multi-head latent attention) needs model.position = rope (its rotated key)");
    check(m.head_dim == 0 && m.rotary_dim == 0, "model.kv_lora_rank",
          "> 0 sets the heads' widths itself: leave model.head_dim and model.rotary_dim at 0 (" +
              dims + ")");
    check(m.n_kv_head == 0 || m.n_kv_head == m.n_head, "model.n_kv_head",
          "must be 0 or model.n_head with multi-head latent attention (every head has its keys "
          "and values)");
    check(!m.qk_norm && m.clip_qkv == 0 && !m.qkv_bias, "model.kv_lora_rank",
          "> 0 (multi-head latent attention) is not built with model.qk_norm, model.clip_qkv or "
          "model.qkv_bias (it has no c_attn)");
  } else {
    check(m.q_lora_rank == 0 && m.qk_nope_head_dim == 0 && m.qk_rope_head_dim == 0 &&
              m.v_head_dim == 0,
          "model.kv_lora_rank",
          "= 0: model.q_lora_rank, qk_nope_head_dim, qk_rope_head_dim and v_head_dim are for "
          "multi-head latent attention (kv_lora_rank > 0)");
  }
  check(m.n_kv_head >= 0, "model.n_kv_head",
        "must be >= 0 (0: model.n_head; got " + std::to_string(m.n_kv_head) + ")");
  check(m.n_kv_head == 0 || m.n_head % m.n_kv_head == 0, "model.n_kv_head",
        "(" + std::to_string(m.n_kv_head) + ") must divide model.n_head (" +
            std::to_string(m.n_head) + ")");
  check(m.seq_len >= 1, "model.seq_len", "must be >= 1 (got " + std::to_string(m.seq_len) + ")");
  // Above 65536 the token shards must be the uint32 ones (each shard's header says which).
  check(m.vocab_size >= 2 && m.vocab_size <= (1 << 30), "model.vocab_size",
        "must be in [2, 1073741824] (got " + std::to_string(m.vocab_size) + ")");
  check(m.position == "learned" || m.position == "rope", "model.position",
        "must be learned or rope (got '" + m.position + "')");
  check(m.position == "rope" || m.rope_scaling == "none", "model.rope_scaling",
        "needs model.position = rope");
  check(m.position == "rope" || m.rotary_dim == 0, "model.rotary_dim",
        "needs model.position = rope");
  check(m.norm == "layernorm" || m.norm == "rmsnorm", "model.norm",
        "must be layernorm or rmsnorm (got '" + m.norm + "')");
  GptShape mlp_probe;
  check(set_mlp(mlp_probe, m.mlp), "model.mlp",
        "must be gelu, gelu_exact, swiglu, geglu, relu2 or relu (got '" + m.mlp + "')");
  check(std::isfinite(m.embed_scale) && m.embed_scale > 0 && m.embed_scale <= 1e4,
        "model.embed_scale", "must be in (0, 1e4] (1: none)");
  check(std::isfinite(m.norm_eps) && m.norm_eps > 0 && m.norm_eps <= 0.1, "model.norm_eps",
        "must be in (0, 0.1]");
  check(!(m.qkv_bias && m.bias), "model.qkv_bias",
        "applies with model.bias = false (with biases, c_attn has its bias anyway)");
  check(!(m.mlp_bias && m.bias), "model.mlp_bias",
        "applies with model.bias = false (with biases, the MLP has its biases anyway)");
  check(!(m.norm_bias && m.bias), "model.norm_bias",
        "applies with model.bias = false (with biases, the LayerNorms have theirs anyway)");
  check(!(m.norm_bias && m.norm == "rmsnorm"), "model.norm_bias",
        "needs model.norm = layernorm (an RMSNorm has no bias)");
  check(m.sliding_window >= 0, "model.sliding_window",
        "must be >= 0 (0: no window; got " + std::to_string(m.sliding_window) + ")");
  check(m.full_attention_every >= 0, "model.full_attention_every",
        "must be >= 0 (0: every layer keeps to the window)");
  check(m.full_attention_every == 0 || m.sliding_window > 0, "model.full_attention_every",
        "needs model.sliding_window > 0 (the other layers' window)");
  check(std::isfinite(m.logit_softcap) && m.logit_softcap >= 0 && m.logit_softcap <= 1e4,
        "model.logit_softcap", "must be in [0, 1e4] (0: no cap)");
  check(std::isfinite(m.attn_softcap) && m.attn_softcap >= 0 && m.attn_softcap <= 1e4,
        "model.attn_softcap", "must be in [0, 1e4] (0: no cap)");
  check(std::isfinite(m.clip_qkv) && m.clip_qkv >= 0 && m.clip_qkv <= 1e4, "model.clip_qkv",
        "must be in [0, 1e4] (0: no clamp)");
  check(!m.qk_norm_full || m.qk_norm, "model.qk_norm_full", "needs model.qk_norm = true");
  check(m.clip_qkv == 0 || !m.qk_norm, "model.clip_qkv",
        "is not built with model.qk_norm (both would keep c_attn's output)");
  check(std::isfinite(m.logit_scale) && m.logit_scale > 0 && m.logit_scale <= 1e4,
        "model.logit_scale", "must be in (0, 1e4] (1: none)");
  check(std::isfinite(m.residual_scale) && m.residual_scale > 0 && m.residual_scale <= 1e4,
        "model.residual_scale", "must be in (0, 1e4] (1: none)");
  check(!m.head_bias || !m.tie_embeddings, "model.head_bias",
        "needs model.tie_embeddings = false (the bias belongs to an output layer of its own)");
  check(!m.shared_norm || m.parallel_residual, "model.shared_norm",
        "needs model.parallel_residual = true (one norm serves parallel branches only)");
  check(std::isfinite(m.init_std) && m.init_std > 0 && m.init_std <= 1, "model.init_std",
        "must be in (0, 1]");
  check(m.init_truncation == 0 || (m.init_truncation >= 1 && m.init_truncation <= 10),
        "model.init_truncation", "must be 0 (none) or in [1, 10] (multiples of σ)");
  check(m.pre_norm || m.branch_norm, "model.pre_norm",
        "= false needs model.branch_norm = true (a block must normalize somewhere)");
  check(m.pre_norm || !m.parallel_residual, "model.pre_norm",
        "= false is built for sequential blocks only (not with model.parallel_residual)");
  check(std::isfinite(m.attn_scale) && m.attn_scale >= 0 && m.attn_scale <= 100, "model.attn_scale",
        "must be in [0, 100] (0: 1/sqrt(head width))");
  check(m.mup_base_width >= 0 && m.mup_base_width <= (1 << 20), "model.mup_base_width",
        "must be in [0, 2^20] (0: no μP; got " + std::to_string(m.mup_base_width) + ")");
  check(m.mup_base_width == 0 || c.optim.name != "sgd", "model.mup_base_width",
        "μP's learning-rate rules here are Adam's (Muon's matrices keep Muon's own; Lion's "
        "sign update scales as Adam's): use optim.name = adamw, lion or muon, not sgd");
  check(m.moe_experts >= 0 && m.moe_experts <= 256, "model.moe_experts",
        "must be in [0, 256] (0: a dense MLP; got " + std::to_string(m.moe_experts) + ")");
  check(m.moe_shared_hidden >= 0 && (m.moe_shared_hidden == 0 || m.moe_experts > 0),
        "model.moe_shared_hidden",
        "must be >= 0, and > 0 only with model.moe_experts (got " +
            std::to_string(m.moe_shared_hidden) + ")");
  check(!m.moe_shared_gate || m.moe_shared_hidden > 0, "model.moe_shared_gate",
        "gates the shared experts: it needs model.moe_shared_hidden > 0");
  check((m.moe_experts > 0 || (m.moe_first_dense == 0 && m.moe_every == 1)) &&
            m.moe_first_dense >= 0 && m.moe_every >= 1 &&
            (m.moe_experts == 0 || m.moe_first_dense + m.moe_every <= m.n_layer),
        "model.moe_first_dense",
        "and model.moe_every must leave a layer with experts: model.moe_experts > 0, "
        "moe_first_dense >= 0, moe_every >= 1 and moe_first_dense + moe_every <= n_layer (got " +
            std::to_string(m.moe_first_dense) + ", " + std::to_string(m.moe_every) + ", n_layer " +
            std::to_string(m.n_layer) + ")");
  check(m.moe_dense_hidden >= 0 &&
            (m.moe_dense_hidden == 0 ||
             (m.moe_experts > 0 && (m.moe_first_dense > 0 || m.moe_every > 1))),
        "model.moe_dense_hidden",
        "must be >= 0, and > 0 only with model.moe_experts and dense layers among the experts' "
        "(model.moe_first_dense > 0 or model.moe_every > 1; got " +
            std::to_string(m.moe_dense_hidden) + ")");
  check(!(m.mlp_bias && m.moe_experts > 0 && m.moe_first_dense == 0 && m.moe_every == 1),
        "model.mlp_bias", "has no MLP to give biases: every layer has experts, which have none");
  check(m.moe_capacity_factor >= 0 && (m.moe_capacity_factor == 0 || m.moe_experts > 0),
        "model.moe_capacity_factor",
        "must be >= 0, and > 0 only with model.moe_experts (0: dropless)");
  check(m.moe_score == "softmax" || m.moe_score == "sigmoid", "model.moe_score",
        "must be softmax or sigmoid (got \"" + m.moe_score + "\")");
  check(m.moe_score == "softmax" || m.moe_experts > 0, "model.moe_score",
        "= sigmoid scores a router: it needs model.moe_experts > 0");
  {
    const int E = m.moe_experts, G = m.moe_groups, M = m.moe_group_top_k;
    check(G >= 1 && (G == 1 || (E > 0 && E % G == 0 && E / G >= 2)), "model.moe_groups",
          "must be 1 (no groups), or with model.moe_experts divide its " + std::to_string(E) +
              " experts into groups of 2 or more (got " + std::to_string(G) + ")");
    const bool top_k_valid = m.moe_top_k >= 1 && m.moe_top_k <= E;  // else its own error below
    check(
        group_settings_valid(E, G, M, top_k_valid ? m.moe_top_k : 1), "model.moe_group_top_k",
        "must be 1 without model.moe_groups, else in [1, model.moe_groups = " + std::to_string(G) +
            "] with at least model.moe_top_k = " + std::to_string(m.moe_top_k) +
            " experts in that many groups (got " + std::to_string(M) + ")");
  }
  check(routed_scale_valid(m.moe_routed_scale) && (m.moe_experts > 0 || m.moe_routed_scale == 1),
        "model.moe_routed_scale",
        "must be a number in (0, 1e6], and other than 1 only with model.moe_experts");
  if (m.moe_experts > 0) {
    check(m.moe_top_k >= 1 && m.moe_top_k <= m.moe_experts, "model.moe_top_k",
          "must be in [1, model.moe_experts = " + std::to_string(m.moe_experts) + "] (got " +
              std::to_string(m.moe_top_k) + ")");
    check(m.moe_top_k > 1 || !m.moe_normalize, "model.moe_normalize",
          "= true with model.moe_top_k = 1 makes every gate 1: the router would learn from the "
          "load-balancing loss alone; set model.moe_normalize = false (Switch's top-1: the gate is "
          "the router's probability)");
  }
  check(m.mlp_hidden >= 0, "model.mlp_hidden",
        "must be >= 0 (0: the default width; got " + std::to_string(m.mlp_hidden) + ")");
  if (m.position == "rope") {
    check(m.hd() % 2 == 0, "model.position",
          "rope needs an even head dimension (model.head_dim, or n_embd / n_head: " +
              std::to_string(m.hd()) + ")");
    check(std::isfinite(m.rope_theta) && m.rope_theta > 1, "model.rope_theta",
          "must be a finite number > 1");
    check(m.rotary_dim >= 0 && m.rotary_dim % 2 == 0 && m.rotary_dim <= m.hd(), "model.rotary_dim",
          "must be even and in [0, " + std::to_string(m.hd()) +
              "] (the head's width; 0: every value rotates; got " + std::to_string(m.rotary_dim) +
              ")");
    check(m.rope_scaling == "none" || m.rope_scaling == "llama3" || m.rope_scaling == "yarn" ||
              m.rope_scaling == "longrope",
          "model.rope_scaling",
          "must be none, llama3, yarn or longrope (got '" + m.rope_scaling + "')");
    if (m.rope_scaling == "longrope") {
      check(std::isfinite(m.rope_scaling_factor) && m.rope_scaling_factor >= 1,
            "model.rope_scaling_factor", "must be a finite number >= 1");
      check(m.rope_original_positions >= (m.rope_scaling_factor > 1 ? 2 : 1),
            "model.rope_original_positions",
            "must be >= 1, and >= 2 with model.rope_scaling_factor > 1 (the scale divides by its "
            "logarithm)");
      const int pairs = (m.rotary_dim > 0 ? m.rotary_dim : m.hd()) / 2;
      parse_rope_factors(m.rope_short_factor, "model.rope_short_factor", pairs);
      parse_rope_factors(m.rope_long_factor, "model.rope_long_factor", pairs);
    }
    if (m.rope_scaling == "yarn") {
      check(std::isfinite(m.rope_scaling_factor) && m.rope_scaling_factor >= 1,
            "model.rope_scaling_factor", "must be a finite number >= 1");
      check(std::isfinite(m.rope_yarn_beta_slow) && m.rope_yarn_beta_slow > 0,
            "model.rope_yarn_beta_slow", "must be a finite number > 0");
      check(std::isfinite(m.rope_yarn_beta_fast) && m.rope_yarn_beta_fast > m.rope_yarn_beta_slow,
            "model.rope_yarn_beta_fast", "must be a finite number > model.rope_yarn_beta_slow");
      check(m.rope_original_positions >= 1, "model.rope_original_positions", "must be >= 1");
      check(
          std::isfinite(m.rope_yarn_mscale) && m.rope_yarn_mscale >= 0 && m.rope_yarn_mscale <= 100,
          "model.rope_yarn_mscale", "must be a finite number in [0, 100]");
      check(std::isfinite(m.rope_yarn_mscale_all_dim) && m.rope_yarn_mscale_all_dim >= 0 &&
                m.rope_yarn_mscale_all_dim <= 100,
            "model.rope_yarn_mscale_all_dim", "must be a finite number in [0, 100]");
    }
    if (m.rope_scaling == "llama3") {
      check(std::isfinite(m.rope_scaling_factor) && m.rope_scaling_factor >= 1,
            "model.rope_scaling_factor", "must be a finite number >= 1");
      check(std::isfinite(m.rope_low_freq_factor) && m.rope_low_freq_factor > 0,
            "model.rope_low_freq_factor", "must be a finite number > 0");
      check(std::isfinite(m.rope_high_freq_factor) &&
                m.rope_high_freq_factor > m.rope_low_freq_factor,
            "model.rope_high_freq_factor", "must be a finite number > model.rope_low_freq_factor");
      check(m.rope_original_positions >= 1, "model.rope_original_positions", "must be >= 1");
    }
  }
  // YaRN's two scales mean nothing elsewhere: not a silent no-op.
  if (m.position != "rope" || m.rope_scaling != "yarn") {
    check(m.rope_yarn_mscale == 1.0, "model.rope_yarn_mscale",
          "is YaRN's: it needs model.position = rope and model.rope_scaling = yarn");
    check(m.rope_yarn_mscale_all_dim == 0.0, "model.rope_yarn_mscale_all_dim",
          "is YaRN's: it needs model.position = rope and model.rope_scaling = yarn");
  }
  const auto& t = c.train;
  // (A checkpoint's file name holds the step in 8 digits.)
  check(t.steps >= 0 && t.steps <= 99999999, "train.steps",
        "must be in [0, 99999999] (got " + std::to_string(t.steps) + ")");
  check(t.sequences >= 0, "train.sequences",
        "must be >= 0 (got " + std::to_string(t.sequences) + ")");
  check(t.batch_size >= 1, "train.batch_size",
        "must be >= 1 (got " + std::to_string(t.batch_size) + ")");
  check(t.micro_batch_size >= 1, "train.micro_batch_size",
        "must be >= 1 (got " + std::to_string(t.micro_batch_size) + ")");
  const int dp = world_size / std::max(1, c.parallel.tp * c.parallel.pp * c.parallel.cp);
  check(t.batch_size % (t.micro_batch_size * std::max(1, dp)) == 0, "train.batch_size",
        "(" + std::to_string(t.batch_size) + ") must be divisible by micro_batch_size · dp (" +
            std::to_string(t.micro_batch_size) + " · " + std::to_string(dp) + ")");
  // Every batch of a ramp is split as batch_size is: START and INCREMENT divisible like it.
  const BatchRampup ramp = parse_batch_rampup(t.batch_rampup, t.batch_size);
  if (ramp.on()) {
    const int unit = t.micro_batch_size * std::max(1, dp);
    check(ramp.start % unit == 0 && ramp.increment % unit == 0, "train.batch_rampup",
          "'" + t.batch_rampup + "': START and INCREMENT must be multiples of micro_batch_size · " +
              "dp (" + std::to_string(t.micro_batch_size) + " · " + std::to_string(dp) +
              "), as every batch of the ramp is split into micro-batches on each rank");
  }
  parse_window_warmup(t.window_warmup, c.model);  // throws naming the key
  if (!trim_blanks(t.freeze).empty())
    for (const std::string& p : split_comma_list(t.freeze))
      check(!p.empty(), "train.freeze",
            "'" + t.freeze + "' holds an empty pattern (comma-separated globs of tensor names)");
  check(std::isfinite(t.lr) && t.lr >= 0, "train.lr", "must be a finite number >= 0");
  check(t.warmup_steps >= 0, "train.warmup_steps", "must be >= 0");
  check(t.lr_by == "steps" || t.lr_by == "sequences", "train.lr_by",
        "must be steps or sequences (got '" + t.lr_by + "')");
  check(t.warmup_sequences >= 0, "train.warmup_sequences", "must be >= 0");
  check(t.lr_by == "sequences" || t.warmup_sequences == 0, "train.warmup_sequences",
        "counts for train.lr_by = sequences only (with steps, set train.warmup_steps)");
  check(t.lr_by == "steps" || t.warmup_steps == 0, "train.warmup_steps",
        "counts for train.lr_by = steps only (with sequences, set train.warmup_sequences)");
  check(t.schedule == "cosine" || t.schedule == "linear" || t.schedule == "constant" ||
            t.schedule == "wsd" || t.schedule == "inverse_sqrt",
        "train.schedule",
        "must be cosine, linear, constant, wsd or inverse_sqrt (got '" + t.schedule + "')");
  check(t.min_lr_ratio >= 0 && t.min_lr_ratio <= 1, "train.min_lr_ratio", "must be in [0, 1]");
  check(t.decay_shape == "linear" || t.decay_shape == "1-sqrt" || t.decay_shape == "cosine",
        "train.decay_shape", "must be linear, 1-sqrt or cosine (got '" + t.decay_shape + "')");
  check(t.decay_shape == "linear" || t.schedule == "wsd", "train.decay_shape",
        "shapes the decay of train.schedule = wsd only (the schedule is " + t.schedule + ")");
  check(t.decay_fraction >= 0 && t.decay_fraction <= 1, "train.decay_fraction",
        "must be in [0, 1]");
  check(std::isfinite(t.grad_clip) && t.grad_clip >= 0, "train.grad_clip",
        "must be >= 0 (0 disables clipping)");
  check(t.log_every >= 1, "train.log_every", "must be >= 1");
  parse_recompute(t.recompute, "train.recompute");  // none | gelu | full
  check(t.recompute_layers >= 0, "train.recompute_layers", "must be >= 0 (0: every layer)");
  check(t.logits_chunk >= 0, "train.logits_chunk", "must be >= 0 (0: a whole micro-batch)");
  check(t.profile_step >= 0, "train.profile_step", "must be >= 0 (0: no trace)");
  check(t.profile_step == 0 || c.parallel.pp > 1, "train.profile_step",
        "times the actions of a pipeline step and needs parallel.pp > 1");
  check(t.profile_step <= t.steps, "train.profile_step",
        "(" + std::to_string(t.profile_step) + ") must not exceed train.steps (" +
            std::to_string(t.steps) + ")");
  check(t.recompute_layers == 0 || t.recompute != "none", "train.recompute_layers",
        "needs train.recompute = gelu or full (it is none)");
  check(t.seed >= 0, "train.seed", "must be >= 0");
  parse_blend(c.data.train, c.data.train_weights);  // throws on a malformed blend
  parse_loss_mask(c.data.loss_mask);
  parse_document_mask(c.data.document_mask, c.model.vocab_size);
  parse_eod_mask_loss(c.data.eod_mask_loss, c.model.vocab_size);
  parse_fim(c.data, c.model.vocab_size, 0);
  check(!c.data.reset_positions || c.data.document_mask != "none", "data.reset_positions",
        "needs data.document_mask (the token that starts a document)");
  parse_val_sets(c.eval.sets);
  check(std::isfinite(t.skip_loss_z) && t.skip_loss_z >= 0, "train.skip_loss_z",
        "must be a finite number >= 0 (0: off)");
  check(std::isfinite(t.skip_norm_z) && t.skip_norm_z >= 0, "train.skip_norm_z",
        "must be a finite number >= 0 (0: off)");
  check(std::isfinite(t.z_loss) && t.z_loss >= 0 && t.z_loss <= 1, "train.z_loss",
        "must be a number in [0, 1] (PaLM's 1e-4; 0: none)");
  // A dropout probability, as the fp32 the model holds it: 1 - 1e-9 rounds to 1.
  for (const auto& [p, key] : {std::pair{t.hidden_dropout, "train.hidden_dropout"},
                               std::pair{t.attention_dropout, "train.attention_dropout"}})
    check(std::isfinite(p) && p >= 0 && float(p) < 1.0f, key,
          "must be a probability in [0, 1) (0: none)");
  check(std::isfinite(t.moe_aux_loss) && t.moe_aux_loss >= 0 && t.moe_aux_loss <= 1,
        "train.moe_aux_loss", "must be a number in [0, 1] (Switch's 0.01; 0: none)");
  check(std::isfinite(t.moe_z_loss) && t.moe_z_loss >= 0 && t.moe_z_loss <= 1, "train.moe_z_loss",
        "must be a number in [0, 1] (ST-MoE's 0.001; 0: none)");
  check(t.moe_aux_scope == "micro_batch" || t.moe_aux_scope == "sequence", "train.moe_aux_scope",
        "must be micro_batch or sequence (got '" + t.moe_aux_scope + "')");
  check(t.moe_aux_scope == "micro_batch" || c.model.moe_experts > 0, "train.moe_aux_scope",
        "= sequence needs model.moe_experts > 0 (a router to balance)");
  check(std::isfinite(t.moe_bias_rate) && t.moe_bias_rate >= 0 &&
            (t.moe_bias_rate == 0 || c.model.moe_experts > 0),
        "train.moe_bias_rate",
        "must be a finite number >= 0, and > 0 only with model.moe_experts (DeepSeek-V3's 0.001; "
        "0: none)");
  check(t.moe_z_loss == 0 || c.model.moe_score == "softmax", "train.moe_z_loss",
        "is the log-sum-exp of a softmax router's logits: it needs model.moe_score = softmax");
  check(t.norms_every >= 0, "train.norms_every", "must be >= 0 (0: never)");
  check(t.noise_every >= 0, "train.noise_every", "must be >= 0 (0: never)");
  if (t.noise_every > 0) {
    // The small batch's gradient must pass through its ranks' buffers before it is reduced (a
    // micro-batch's at the end of its backward pass, or under ZeRO-2/3 bucket by bucket; under
    // a pipeline, whose stages interleave the micro-batches, a replica's share of the step;
    // context-parallel ranks' parts summed). Under expert parallelism the experts see the
    // expert-parallel group's micro-batches: the small batch is the group's first ones, its
    // dense tensors' gradient summed over the group first (not with a pipeline, context
    // parallelism or ZeRO-3's packed experts).
    check(c.parallel.ep == 1 || (c.parallel.pp == 1 && c.parallel.cp == 1 && c.parallel.zero <= 2),
          "train.noise_every",
          "under expert parallelism (parallel.ep > 1) needs parallel.pp = 1, parallel.cp = 1 and "
          "parallel.zero <= 2");
    if (c.parallel.pp > 1) {
      check(dp >= 2, "train.noise_every",
            "under pipeline parallelism measures each data-parallel replica's share of the step "
            "against the whole batch: it needs two replicas or more (dp >= 2)");
    } else {
      const int64_t per_rank = int64_t(t.micro_batch_size) * std::max(1, dp);
      check(per_rank > 0 && t.batch_size >= 2 * per_rank, "train.noise_every",
            "needs at least two micro-batches per step on each rank (train.batch_size >= 2 · "
            "train.micro_batch_size · dp, the data-parallel ranks), so that one micro-batch's "
            "gradient is seen before the reduction");
    }
  }
  check(t.moe_load_every >= 0 && (t.moe_load_every == 0 || c.model.moe_experts > 0),
        "train.moe_load_every", "must be >= 0, and > 0 only with model.moe_experts (0: never)");
  check(t.activations_every >= 0, "train.activations_every", "must be >= 0 (0: never)");
  check(t.activations_every == 0 || !c.data.val.empty(), "train.activations_every",
        "needs data.val (the activations are those of its first micro-batch)");
  check(t.skip_window >= 2 && t.skip_window <= 1000000, "train.skip_window",
        "must be in [2, 1000000]");
  const auto& o = c.optim;
  check(o.name == "adamw" || o.name == "sgd" || o.name == "muon" || o.name == "lion", "optim.name",
        "must be adamw, sgd, muon or lion (got '" + o.name + "')");
  check(o.beta1 >= 0 && o.beta1 < 1, "optim.beta1", "must be in [0, 1)");
  check(o.beta2 >= 0 && o.beta2 < 1, "optim.beta2", "must be in [0, 1)");
  check(o.eps > 0 && std::isfinite(o.eps), "optim.eps", "must be a finite number > 0");
  check(std::isfinite(o.weight_decay) && o.weight_decay >= 0, "optim.weight_decay",
        "must be a finite number >= 0");
  check(o.weight_decay_schedule == "constant" || o.weight_decay_schedule == "linear" ||
            o.weight_decay_schedule == "cosine",
        "optim.weight_decay_schedule",
        "must be constant, linear or cosine (got '" + o.weight_decay_schedule + "')");
  check(std::isfinite(o.ema_decay) && o.ema_decay >= 0 && o.ema_decay < 1, "optim.ema_decay",
        "must be in [0, 1) (0: no moving average)");
  check(std::isfinite(o.weight_decay_end) && o.weight_decay_end >= 0 &&
            (o.weight_decay_end == 0 || o.weight_decay_schedule != "constant"),
        "optim.weight_decay_end",
        "must be a finite number >= 0, and other than 0 only with a linear or cosine "
        "optim.weight_decay_schedule (constant keeps optim.weight_decay)");
  check(o.momentum >= 0 && o.momentum < 1, "optim.momentum", "must be in [0, 1)");
  check(std::isfinite(o.muon_lr) && o.muon_lr >= 0, "optim.muon_lr",
        "must be a finite number >= 0");
  check(o.muon_momentum >= 0 && o.muon_momentum < 1, "optim.muon_momentum", "must be in [0, 1)");
  check(o.muon_ns_steps >= 1 && o.muon_ns_steps <= 100, "optim.muon_ns_steps",
        "must be in [1, 100]");
  check(o.muon_adjust_lr == "original" || o.muon_adjust_lr == "match_rms_adamw",
        "optim.muon_adjust_lr",
        "must be original or match_rms_adamw (got '" + o.muon_adjust_lr + "')");
  for (const auto& [key, rate] :
       {std::pair{"optim.embedding_lr", o.embedding_lr}, std::pair{"optim.head_lr", o.head_lr}}) {
    check(std::isfinite(rate) && rate >= 0, key, "must be a finite number >= 0 (0: train.lr)");
    // The rate follows train.lr's schedule scaled by rate / train.lr.
    check(rate == 0 || t.lr > 0, key,
          "needs train.lr > 0: it follows train.lr's schedule, times its ratio to train.lr "
          "(train.freeze keeps tensors fixed)");
  }
  check(o.head_lr == 0 || !c.model.tie_embeddings, "optim.head_lr",
        "needs an untied head (model.tie_embeddings = false): the tied head is wte, whose rate "
        "is optim.embedding_lr");
  check(c.eval.every >= 0, "eval.every", "must be >= 0");
  check(c.eval.sequences >= 0, "eval.sequences", "must be >= 0");
  check(c.eval.choice_examples >= 0, "eval.choice_examples", "must be >= 0");
  check(c.eval.choice_mode == "batched" || c.eval.choice_mode == "cached", "eval.choice_mode",
        "must be batched or cached (got '" + c.eval.choice_mode + "')");
  check(c.checkpoint.every >= 0, "checkpoint.every", "must be >= 0");
  check(c.checkpoint.keep >= 0, "checkpoint.keep", "must be >= 0 (0 keeps all)");
  check(c.checkpoint.keep_every >= 0, "checkpoint.keep_every", "must be >= 0 (0: none)");
  check(c.checkpoint.keep_every == 0 || c.checkpoint.every == 0 ||
            c.checkpoint.keep_every % c.checkpoint.every == 0,
        "checkpoint.keep_every",
        "(" + std::to_string(c.checkpoint.keep_every) +
            ") must be a multiple of checkpoint.every (" + std::to_string(c.checkpoint.every) +
            "), or no checkpoint would fall on it but theirs in common");
  check(!c.run.name.empty() && c.run.name.find('/') == std::string::npos && c.run.name != "." &&
            c.run.name != "..",
        "run.name", "must be a non-empty name without '/', not . or .. (got '" + c.run.name + "')");
  check(!c.run.dir.empty(), "run.dir", "must not be empty");
  check(c.run.backend == "cpu" || c.run.backend == "cuda", "run.backend",
        "must be cpu or cuda (got '" + c.run.backend + "')");
  check(c.run.precision == "auto" || c.run.precision == "fp32" || c.run.precision == "bf16",
        "run.precision", "must be auto, fp32 or bf16 (got '" + c.run.precision + "')");
  check(!c.bf16() || m.n_embd % 2 == 0, "model.n_embd",
        "(" + std::to_string(m.n_embd) + ") must be even for bf16 precision");
  check(c.run.threads >= 0, "run.threads", "must be >= 0");
  check(c.run.peak_tflops >= 0 && std::isfinite(c.run.peak_tflops), "run.peak_tflops",
        "must be a finite number >= 0");
  check(!c.eval.loss_by_position ||
            ((!c.data.val.empty() || !c.eval.sets.empty()) && c.eval.sequences > 0),
        "eval.loss_by_position",
        "needs data.val or eval.sets, and eval.sequences > 0 (it scores their sequences)");
  check(!c.eval.fim || c.data.fim_rate > 0, "eval.fim", "needs data.fim_rate > 0");
  check(!c.eval.fim || (c.eval.sequences > 0 && (!c.data.val.empty() || !c.eval.sets.empty())),
        "eval.fim", "needs data.val or eval.sets, and eval.sequences > 0 (it rearranges them)");
  check(!c.eval.fim || !c.eval.bits_per_byte, "eval.bits_per_byte",
        "measures text per byte: not with eval.fim, whose sequences hold sentinels and moved "
        "spans");
  check(!c.eval.ema || c.optim.ema_decay > 0, "eval.ema",
        "needs optim.ema_decay > 0 (the moving average it scores)");
  check(!c.eval.ema || ((!c.data.val.empty() || !c.eval.sets.empty()) && c.eval.sequences > 0) ||
            !c.eval.choices.empty(),
        "eval.ema",
        "needs something to score: data.val or eval.sets with eval.sequences > 0, or "
        "eval.choices");
  check(!c.eval.bits_per_byte || !c.data.vocab.empty(), "eval.bits_per_byte",
        "needs data.vocab: the tokenizer of the validation data, whose bytes it counts");
  check(!c.checkpoint.best || (!c.data.val.empty() && c.eval.sequences > 0), "checkpoint.best",
        "needs a validation loss to compare: data.val and eval.sequences > 0");
  check(std::isfinite(c.run.max_minutes) && c.run.max_minutes >= 0, "run.max_minutes",
        "must be a number of minutes >= 0 (0: no budget)");
  check(c.parallel.tp >= 1, "parallel.tp", "must be >= 1");
  check(c.parallel.pp >= 1, "parallel.pp", "must be >= 1");
  check(c.parallel.cp >= 1, "parallel.cp", "must be >= 1");
  check(c.parallel.ep >= 1, "parallel.ep", "must be >= 1");
  check(c.parallel.zero >= 0 && c.parallel.zero <= 3, "parallel.zero", "must be 0, 1, 2 or 3");
  // ZeRO-2 and 3 reduce each micro-batch's gradient as the backward pass finishes it; a pipeline
  // accumulates every layer's over its micro-batches in flight, so it needs the whole buffer.
  const std::string stage = "= " + std::to_string(c.parallel.zero);
  check(c.parallel.zero < 2 || c.parallel.pp == 1, "parallel.zero",
        stage +
            " needs parallel.pp = 1 (a pipeline keeps every layer's gradient over its "
            "micro-batches; use parallel.zero = 1)");
  check(is_schedule_kind(c.parallel.schedule), "parallel.schedule",
        std::string("must be ") + kScheduleKindNames + " (got '" + c.parallel.schedule + "')");
  check(c.parallel.virtual_stages >= 1, "parallel.virtual_stages", "must be >= 1");
  check(c.parallel.comm == "auto" || c.parallel.comm == "mpi" || c.parallel.comm == "nccl",
        "parallel.comm", "must be auto, mpi or nccl (got '" + c.parallel.comm + "')");
  check(c.parallel.comm != "nccl" || c.run.backend == "cuda", "parallel.comm",
        "nccl needs run.backend = cuda (the cpu backend communicates through MPI)");
  // The grid must fit the job and the model (DESIGN.md §3 splits, §4 dp = world / (tp·pp·cp)).
  const auto& par = c.parallel;
  check(world_size % std::max(1, par.tp * par.pp * par.cp) == 0, "parallel.tp",
        "· parallel.pp · parallel.cp (" + std::to_string(par.tp) + " · " + std::to_string(par.pp) +
            " · " + std::to_string(par.cp) + ") must divide the number of ranks (" +
            std::to_string(world_size) + ")");
  if (par.ep > 1) {
    const int dp = world_size / std::max(1, par.tp * par.pp * par.cp);
    const std::string ep = "= " + std::to_string(par.ep);
    check(m.moe_experts > 0 && m.moe_experts % par.ep == 0, "parallel.ep",
          ep + " needs a mixture of experts whose model.moe_experts (" +
              std::to_string(m.moe_experts) + ") it divides: each rank holds 1/ep of the experts");
    check(dp % par.ep == 0, "parallel.ep",
          ep + " must divide the data-parallel size (" + std::to_string(dp) +
              " = ranks / (parallel.tp · parallel.pp · parallel.cp)): experts are shared by "
              "groups of ep data-parallel ranks");
  }
  if (par.cp > 1) {
    check(m.seq_len % (2 * par.cp) == 0, "parallel.cp",
          "(" + std::to_string(par.cp) + ") needs model.seq_len (" + std::to_string(m.seq_len) +
              ") divisible by 2 · parallel.cp: each rank holds two equal chunks of a sequence");
    // On the GPU the pieces' attention runs on the flash kernels: bf16, their head dims, and
    // pieces of whole 64-row tiles.
    if (c.run.backend == "cuda") {
      const int hd = m.hd();
      check(c.bf16(), "parallel.cp",
            "> 1 on the cuda backend needs run.precision = bf16 (the flash kernels)");
      check(cuda_flash_head_dim(hd), "parallel.cp",
            "> 1 on the cuda backend needs a head dimension of 64, 128 or 192 (got " +
                std::to_string(hd) + ")");
      check(m.seq_len % (2 * par.cp * 64) == 0, "parallel.cp",
            "> 1 on the cuda backend needs model.seq_len (" + std::to_string(m.seq_len) +
                ") divisible by 2 · parallel.cp · 64: each piece whole 64-row tiles");
      check(cuda_flash_drops(c.train.attention_dropout > 0, float(m.attn_softcap)),
            "train.attention_dropout",
            "with parallel.cp > 1 and model.attn_softcap is not implemented by the cuda backend "
            "(its flash kernels, which context parallelism needs there, do not drop capped "
            "scores)");
    }
    // Generation and scoring decode prompts with the KV cache, a whole sequence on one rank.
    check(c.sample.length == 0, "sample.length",
          "must be 0 with parallel.cp > 1: samples are generated without context parallelism");
    check(c.eval.choices.empty(), "eval.choices",
          "cannot be scored with parallel.cp > 1 (scoring runs without context parallelism)");
    check(!par.sequence_parallel || (m.seq_len / par.cp) % std::max(1, par.tp) == 0,
          "parallel.sequence_parallel",
          "with parallel.cp needs model.seq_len / parallel.cp (" +
              std::to_string(m.seq_len / par.cp) + ") divisible by parallel.tp (" +
              std::to_string(par.tp) + ")");
  }
  check(m.n_head % std::max(1, par.tp) == 0, "parallel.tp",
        "(" + std::to_string(par.tp) + ") must divide model.n_head (" + std::to_string(m.n_head) +
            "): attention is split by heads");
  check(m.n_kv_head % std::max(1, par.tp) == 0, "parallel.tp",
        "(" + std::to_string(par.tp) + ") must divide model.n_kv_head (" +
            std::to_string(m.n_kv_head) + "): each rank holds its query heads' keys and values");
  check(m.moe_shared_hidden % std::max(1, par.tp) == 0, "parallel.tp",
        "(" + std::to_string(par.tp) + ") must divide the shared experts' hidden units (" +
            std::to_string(m.moe_shared_hidden) + ", model.moe_shared_hidden)");
  check(m.moe_dense_hidden % std::max(1, par.tp) == 0, "parallel.tp",
        "(" + std::to_string(par.tp) + ") must divide the dense layers' hidden units (" +
            std::to_string(m.moe_dense_hidden) + ", model.moe_dense_hidden)");
  check(c.mlp_hidden_size() % std::max(1, par.tp) == 0, "parallel.tp",
        "(" + std::to_string(par.tp) + ") must divide the MLP's hidden units (" +
            std::to_string(c.mlp_hidden_size()) + ", model.mlp_hidden)");
  check(c.run.fp8 == "off" || c.run.fp8 == "tensorwise", "run.fp8",
        "must be off or tensorwise (got '" + c.run.fp8 + "')");
  if (c.run.fp8 != "off") {
    check(c.bf16() || c.run.backend == "cpu", "run.fp8",
          "= " + c.run.fp8 +
              " on the cuda backend needs run.precision = bf16 (the FP8 products read bf16)");
    // The GPU's FP8 products need every dimension a multiple of 16: each linear layer's widths
    // on a tensor-parallel rank, and the rows of a micro-batch on a context-parallel rank (the
    // experts' products take any number of rows: the GPU pads their weight gradients').
    const GptShape s = gpt_shape(c);
    const int tp = std::max(1, par.tp);
    for (const auto& [name, w] : Gpt::fp8_widths(s, tp))
      check(w % 16 == 0, "run.fp8",
            "needs " + name + " (" + std::to_string(w) +
                (tp > 1 ? " per tensor-parallel rank" : "") + ") to be a multiple of 16");
    const int rows = t.micro_batch_size * m.seq_len / std::max(1, par.cp);
    check(rows % 16 == 0, "run.fp8",
          "needs the rows of a micro-batch (train.micro_batch_size · model.seq_len" +
              std::string(par.cp > 1 ? " / parallel.cp" : "") + " = " + std::to_string(rows) +
              ") to be a multiple of 16");
  }
  check(!c.run.fp8_head || c.run.fp8 != "off", "run.fp8_head", "needs run.fp8 (it is off)");
  check(!c.run.fp8_head || t.logits_chunk % 16 == 0, "run.fp8_head",
        "needs train.logits_chunk (" + std::to_string(t.logits_chunk) +
            ") to be a multiple of 16: the FP8 products take rows 16 at a time");
  if (!trim_blanks(c.run.fp8_skip).empty()) {
    check(c.run.fp8 != "off", "run.fp8_skip", "needs run.fp8 (it is off)");
    const std::vector<std::string> names = Gpt::fp8_layer_names(m.n_layer);
    for (const std::string& p : split_comma_list(c.run.fp8_skip)) {
      bool any = false;
      for (const std::string& n : names) any = any || frozen_tensor(p, n);
      check(!p.empty() && any, "run.fp8_skip",
            "pattern '" + p +
                "' matches no linear layer (names h/<i>/attn/c_attn, "
                "h/<i>/attn/c_proj, h/<i>/mlp/c_fc, h/<i>/mlp/c_proj; i < model.n_layer = " +
                std::to_string(m.n_layer) + ")");
    }
  }
  const int chunks = std::max(1, par.pp * par.virtual_stages);
  int most_layers = m.n_layer / chunks;  // the most layers of a pipeline chunk
  if (par.stage_layers.find_first_not_of(" \t") == std::string::npos) {  // equal chunks
    check(par.pp <= m.n_layer, "parallel.pp",
          "(" + std::to_string(par.pp) + ") must not exceed model.n_layer (" +
              std::to_string(m.n_layer) + "): every stage needs a layer");
    check(m.n_layer % chunks == 0, "model.n_layer",
          "(" + std::to_string(m.n_layer) + ") must be divisible by parallel.pp · " +
              "parallel.virtual_stages (" + std::to_string(par.pp) + " · " +
              std::to_string(par.virtual_stages) +
              "): every pipeline chunk holds as many layers (or set parallel.stage_layers)");
  } else {
    check(par.virtual_stages == 1, "parallel.stage_layers",
          "needs parallel.virtual_stages = 1 (interleaved chunks are equal)");
    const bool automatic = par.stage_layers.find("auto") != std::string::npos;
    if (automatic)
      check(par.pp <= m.n_layer + 1, "parallel.pp",
            "(" + std::to_string(par.pp) + ") must not exceed model.n_layer + 1 (" +
                std::to_string(m.n_layer + 1) +
                ") for parallel.stage_layers = auto: every stage but the last needs a layer");
    if (par.pp > 1 || !automatic) {
      most_layers = 0;
      const auto split =
          par.pp > 1 ? stage_layers(c) : parse_stage_layers(par.stage_layers, 1, m.n_layer);
      for (int n : split) most_layers = std::max(most_layers, n);
    }
  }
  check(t.recompute_layers <= most_layers, "train.recompute_layers",
        "(" + std::to_string(t.recompute_layers) + ") must not exceed the layers of a pipeline " +
            "chunk (" + std::to_string(most_layers) + ")");
  check(!par.sequence_parallel || m.seq_len % std::max(1, par.tp) == 0,
        "parallel.sequence_parallel",
        "needs model.seq_len (" + std::to_string(m.seq_len) + ") divisible by parallel.tp (" +
            std::to_string(par.tp) + ")");
  // zb-h1 takes virtual stages too: it then splits the interleaved order.
  const bool interleaving =
      par.schedule == "interleaved" || (par.schedule == "zb-h1" && par.virtual_stages > 1);
  if (interleaving) {
    check(par.pp >= 2, "parallel.schedule",
          par.schedule + " with parallel.virtual_stages > 1 needs parallel.pp >= 2");
    check(par.virtual_stages >= 2, "parallel.virtual_stages",
          "must be >= 2 for parallel.schedule = interleaved");
    for (int b : ramp_batch_sizes(ramp, t.batch_size)) {
      const int accum = b / std::max(1, t.micro_batch_size * std::max(1, dp));
      check(accum % par.pp == 0, b == t.batch_size ? "train.batch_size" : "train.batch_rampup",
            "gives " + std::to_string(accum) + " micro-batches per step" +
                (b == t.batch_size ? "" : " at a batch of " + std::to_string(b)) + ", which " +
                par.schedule + " with virtual stages needs to be a multiple of parallel.pp (" +
                std::to_string(par.pp) + ")");
    }
  } else if (par.schedule == "zb-v") {
    check(par.pp >= 2, "parallel.schedule",
          "zb-v needs parallel.pp >= 2 (its V runs down the pipeline ranks and back up)");
    check(par.virtual_stages == 2, "parallel.virtual_stages",
          "must be 2 for parallel.schedule = zb-v (each rank holds two chunks of the V)");
  } else if (par.schedule != "zb-h1") {
    check(par.virtual_stages == 1, "parallel.virtual_stages",
          "must be 1 for parallel.schedule = " + par.schedule + " (use interleaved or zb-h1)");
  }
  // The weight pass reads each layer's matmul inputs, which full recomputation does not keep.
  const bool weight_pass = splits_backward(parse_schedule_kind(par.schedule));
  check(!weight_pass || par.pp == 1 || t.recompute != "full", "train.recompute",
        "full cannot be combined with parallel.schedule = " + par.schedule +
            " (its weight pass reads the layer inputs full recomputation discards): use gelu or "
            "none, or the 1f1b schedule");
  check(c.sample.length >= 0, "sample.length", "must be >= 0");
  const SampleRangeError bad = sample_range_error(sample_options(c.sample));
  check(bad.name.empty(), "sample." + bad.name, bad.rule);
  // Counted in floating point, where the sizes' products cannot wrap around: 2^50 parameters
  // (4.5 PB of fp32 weights) keep every element count and offset far inside int64.
  double params = 0;
  for (const ParamSpec& p : gpt_parameter_layout(gpt_shape(c))) {
    double n = 1;
    for (int64_t d : p.shape) n *= double(d);
    params += n;
  }
  std::ostringstream count;
  count << std::setprecision(3) << params;
  check(params <= std::ldexp(1.0, 50), "model",
        "has " + count.str() +
            " parameters, beyond the 2^50 (1.1e15) triad counts in 64-bit integers: check "
            "model.n_layer, n_embd, mlp_hidden, vocab_size and moe_experts");
}

}  // namespace triad
