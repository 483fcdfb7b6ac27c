// The run configuration (DESIGN.md §4): INI sections and keys, `[train] lr = 6e-4` being the
// same as `--train.lr 6e-4` on the command line. Config files (--config, repeatable) are
// applied in order and the command line overrides them all. Unknown keys and invalid values
// are errors that name the key and, for files, the file.
#pragma once

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

namespace triad {

struct ModelConfig {
  int n_layer = 12, n_head = 12, n_embd = 768, seq_len = 1024, vocab_size = 50257;
  int n_kv_head = 0;                  // key/value heads (0: n_head; fewer: grouped-query attention)
  std::string position = "learned";   // learned (GPT-2's wpe) | rope (rotary, no wpe)
  double rope_theta = 10000.0;        // rope: the base of the rotation frequencies
  double rope_local_theta = 0;        // > 0: the windowed layers' base, unscaled (Gemma 3's)
  std::string rope_scaling = "none";  // none | llama3 | yarn | longrope | linear
  double rope_scaling_factor = 8.0, rope_low_freq_factor = 1.0, rope_high_freq_factor = 4.0;
  int rope_original_positions = 8192;  // llama3, yarn: the context first trained on
  double rope_yarn_beta_fast = 32.0, rope_yarn_beta_slow = 1.0;  // yarn: the ramp's ends
  bool rope_yarn_truncate = true;  // yarn: the ends rounded to whole pairs (gpt-oss: false)
  // yarn, DeepSeek's form: cos and sin times m(mscale)/m(mscale_all_dim), the scores times
  // m(mscale_all_dim)², m(x) = 0.1·x·ln(factor) + 1 (m(0) = 1: Qwen's YaRN at the defaults).
  double rope_yarn_mscale = 1.0, rope_yarn_mscale_all_dim = 0.0;
  // longrope (Phi-3's): each rotated pair's frequency divisor, comma-separated (rot / 2 of
  // them); the long list where seq_len > rope_original_positions, else the short one.
  std::string rope_short_factor, rope_long_factor;
  int rotary_dim = 0;  // rope: the values of each head that rotate (0: all; GPT-NeoX: hd / 4)
  int nope_every = 0;  // rope: layers N, 2N, .. (1-based) rotate nothing (NoPE; SmolLM3: 4)
  std::string norm = "layernorm";  // layernorm (weight, bias) | rmsnorm (weight only)
  bool bias = true;                // false: no biases in linear layers and LayerNorms
  bool qkv_bias = false;           // with bias = false: c_attn keeps its bias (as Qwen2)
  bool mlp_bias = false;           // with bias = false: c_fc and c_proj keep theirs (GPT-J)
  bool norm_bias = false;          // with bias = false: the LayerNorms keep theirs (Nemotron)
  bool norm_weight = true;  // false: the norms learn no weight or bias (OLMo's non-parametric)
  double norm_eps = 1e-5;   // the LayerNorms'/RMSNorms' epsilon (Qwen2: 1e-6)
  int head_dim = 0;         // each head's width (0: n_embd / n_head; Qwen3: 128)
  // Multi-head latent attention (GptShape::mla, DeepSeek-V2's; kv_lora_rank > 0): keys and values
  // from a latent of kv_lora_rank values per token, queries from one of q_lora_rank (0: from the
  // token itself), each head's q and k qk_nope_head_dim values plus qk_rope_head_dim rotated
  // ones (the rotated key shared by the heads), its v v_head_dim values.
  int kv_lora_rank = 0, q_lora_rank = 0;
  int qk_nope_head_dim = 0, qk_rope_head_dim = 0, v_head_dim = 0;
  // The latent norms' epsilon (attn/q_a_norm, attn/kv_a_norm); 0: norm_eps. DeepSeek's code gives
  // them 1e-6 whatever its rms_norm_eps says.
  double mla_norm_eps = 0;
  bool mla() const { return kv_lora_rank > 0; }
  // The rotated pairs of a head (one LongRoPE divisor each): MLA's qk_rope_head_dim, else
  // rotary_dim or the head's width, halved.
  int rotated_pairs() const {
    return (mla() ? qk_rope_head_dim : rotary_dim > 0 ? rotary_dim : hd()) / 2;
  }
  // The attention's head width: under MLA the wider of q·k's and v's (the other padded).
  int hd() const {
    if (mla()) return std::max(qk_nope_head_dim + qk_rope_head_dim, v_head_dim);
    return head_dim > 0 ? head_dim : n_embd / n_head;
  }
  std::string mlp = "gelu";    // gelu (GPT-2) | gelu_exact | swiglu (Llama) | geglu (Gemma) | relu2
  int mlp_hidden = 0;          // hidden units (0: 4·n_embd, or ~8·n_embd/3 for swiglu)
  bool tie_embeddings = true;  // false: an output layer lm_head of its own (as Llama)
  bool qk_norm = false;        // per-head RMSNorm of q and k (as Qwen3, Gemma 3)
  bool qk_norm_full = false;   // with qk_norm: over all heads' q, and all k (OLMo-2, OLMoE)
  bool attn_sinks = false;     // a learned logit per head in each softmax's denominator (gpt-oss)
  // With mlp = swiglu: the gate's activation g·σ(alpha·g), gate and up clamped at limit (0: not),
  // offset added to the up projection (gpt-oss: 1.702, 7, 1; defaults: Llama's SwiGLU).
  double glu_alpha = 1, glu_limit = 0, glu_offset = 0;
  int sliding_window = 0;        // each query attends to its last N keys at most (0: all; Mistral)
  int full_attention_every = 0;  // with a window: every N-th layer attends to all (Gemma 3: 6)
  bool full_attention_first = false;  // ... layers 0, N, 2N, .. instead (GPT-Neo's)
  double logit_softcap = 0;           // > 0: logits c·tanh(logit/c) (Gemma 2: 30); 0: none
  double clip_qkv = 0;                // > 0: c_attn's q, k, v clamped to [-c, c] (OLMo-1.7: 8)
  double attn_softcap = 0;            // > 0: attention scores c·tanh(s/c) (Gemma 2: 50); 0: none
  double logit_scale = 1;             // the head's logits times this (Granite: 1/logits_scaling)
  double residual_scale = 1;          // each branch's output times this (Granite's multiplier)
  double embed_scale = 1;             // the embedding's output times this (Gemma: sqrt(n_embd))
  bool parallel_residual = false;     // x + attn(ln_1(x)) + mlp(ln_2(x)) (GPT-J, GPT-NeoX)
  bool branch_norm = false;           // x + norm(attn(ln_1(x))): Gemma 2's and 3's sandwich norms
  bool pre_norm = true;    // false: no ln_1, ln_2; x + norm(attn(x)) with branch_norm (OLMo-2)
  double init_std = 0.02;  // the initialization's deviation σ (Megatron's init_method_std)
  bool init_scaled_residual = true;  // c_proj's σ/sqrt(2·n_layer) (GPT-2); false: σ (OLMo-2)
  double init_truncation = 0;        // > 0: values within ±this·σ (OLMo-2: 3); 0: plain normal
  bool shared_norm = false;          // parallel blocks' one norm: x + attn(ln_1 x) + mlp(ln_1 x)
  bool head_bias = false;            // lm_head/bias on the untied head's logits (Phi-2, GPT-J)
  double attn_scale = 0;             // > 0: attention scores q·k times it; 0: 1/sqrt(head width)
  int mup_base_width = 0;  // > 0: μP relative to a base model this wide (GptShape); 0: off
  // Mixture of experts (GptShape::moe): every layer's MLP becomes moe_experts experts of
  // mlp_hidden units, each token sent to moe_top_k of them; 0: a dense MLP.
  int moe_experts = 0, moe_top_k = 2;
  bool moe_normalize = true;  // the k gates renormalized to sum 1 (Mixtral); false: Switch's
  std::string moe_score = "softmax";  // the router's scores: softmax, or sigmoid (DeepSeek-V3)
  double moe_routed_scale = 1.0;      // the gates times this (DeepSeek-V3's routed_scaling_factor)
  // Node-limited routing (DeepSeek-V3's n_group 8, topk_group 4): the experts in moe_groups
  // groups, each token's experts from its moe_group_top_k best groups; 1: no groups.
  int moe_groups = 1, moe_group_top_k = 1;
  // How a group is scored: top2, the sum of its two best keys (DeepSeek-V3's); max, its best
  // alone (DeepSeek-V2's group_limited_greedy).
  std::string moe_group_score = "top2";
  // Each expert takes at most ceil(f·N·k/E) of a pass's N·k local choices (Switch's and GShard's
  // capacity factor f); later choices are dropped. 0: dropless.
  double moe_capacity_factor = 0.0;
  int moe_shared_hidden = 0;     // > 0: shared experts of this many units beside them (DeepSeek)
  bool moe_shared_gate = false;  // their output scaled by a sigmoid gate per token (Qwen2-MoE)
  bool moe_bias =
      false;  // learned biases of the router's logits and the experts' products (gpt-oss)
  int moe_first_dense = 0, moe_every = 1;  // which layers have the experts (GptShape::moe_layer)
  int mtp_depth = 0;  // multi-token prediction modules after the layers (GptShape::mtp_depth)
  int moe_dense_hidden = 0;  // the dense layers' MLP width among them (0: mlp_hidden)
  int kv_heads() const { return n_kv_head > 0 ? n_kv_head : n_head; }
};

struct TrainConfig {
  // The gradient noise scale (McCandlish et al. 2018): every N steps the squared norms of one
  // micro-batch's gradient and of the batch's (/noise of metrics.h5; 0: never).
  int64_t noise_every = 0;
  int64_t steps = 1000;
  // The run's length in sequences trained on (Megatron's --train-samples): > 0 replaces steps
  // by the fewest steps that train at least this many (resolve_run_length; with a batch-size
  // ramp the steps' batches differ); 0: steps counts.
  int64_t sequences = 0;
  int batch_size = 8, micro_batch_size = 8;
  // Every N steps (0: never), before the step: the root mean squares of the activations of the
  // first validation micro-batch (/activations in metrics.h5; μP's coordinate check).
  int activations_every = 0;
  // Batch-size ramp-up (Megatron's --rampup-batch-size): "START, INCREMENT, SEQUENCES" makes the
  // global batch START sequences at first, growing by INCREMENT in equal shares of the first
  // SEQUENCES sequences trained on, batch_size after them (batch_size_at); "" none.
  std::string batch_rampup;
  // Attention-window warmup (modded-nanogpt's window schedule): "START, STEPS[, MULTIPLE]" makes
  // the windowed layers (every layer of a model without model.sliding_window) keep to a window
  // that grows from START tokens to the model's window (the whole context without one) over the
  // first STEPS steps (window_at); "" none.
  std::string window_warmup;
  // Tensors left as they are (fine-tuning part of a model): comma-separated globs over parameter
  // names ("wte/weight, h/0/*"; trainable_specs in optim/optimizer.h); "" none.
  std::string freeze;
  double lr = 6e-4;
  int64_t warmup_steps = 0;
  std::string schedule = "cosine";  // cosine | linear | constant | wsd
  // What the schedule counts (ScheduleClock): steps, or sequences trained on (with a batch-size
  // ramp the steps grow; Megatron's sample-based schedule), the warmup then warmup_sequences.
  std::string lr_by = "steps";
  int64_t warmup_sequences = 0;
  double min_lr_ratio = 0.1;
  double decay_fraction = 0.2;  // wsd: fraction of steps in the final decay
  // wsd's decay from lr to min_lr over the fraction f of it done: linear (1 − f), 1-sqrt
  // (1 − √f, Hägele et al. 2024's cooldown) or cosine (½(1 + cos πf)).
  std::string decay_shape = "linear";
  double grad_clip = 1.0;  // <= 0 disables clipping
  int64_t seed = 1337;
  int64_t log_every = 1;
  // Activation recomputation: none | gelu | full (Recompute in model/gpt.h). Changes memory and
  // compute, never the result: runs and checkpoints of every mode continue each other.
  std::string recompute = "none";
  int recompute_layers = 0;  // recompute in the first N layers of each pipeline chunk; 0: all
  int logits_chunk = 0;      // tokens of logits the classifier forms at a time; 0: a micro-batch
  // The pipeline step (1-based) whose actions are timed and written with their simulation to
  // pipeline_trace_step_N.csv in the run directory; 0: none.
  int64_t profile_step = 0;
  // Update skipping (train/outlier_window.h): skip the update of a step whose loss (gradient
  // norm) is more than this many standard deviations above the mean of the previous
  // skip_window steps; 0: off.
  double skip_loss_z = 0, skip_norm_z = 0;
  int skip_window = 128;
  // PaLM's z-loss: c·(log Z)² per counted token added to the training loss (Z the softmax's
  // normalizer; 1e-4 in PaLM); the reported loss stays the cross-entropy. 0: none.
  double z_loss = 0;
  // DPO's β (data.preferences; Gpt::set_preference): how far the policy's log-probability
  // ratios to the reference count in the pairs' loss (TRL's default 0.1).
  double dpo_beta = 0.1;
  // The pairs' loss (model/preference_loss.h): sigmoid (DPO's) | hinge | ipo, and sigmoid's label
  // smoothing (cDPO's ε, the chance that a pair's labels are swapped).
  std::string dpo_loss = "sigmoid";
  double dpo_label_smoothing = 0;
  // Hidden dropout (Megatron's hidden_dropout, nanoGPT's dropout but for the attention
  // probabilities'): the probability of zeroing each value of the embedding's output and of each
  // branch's output in training (GptShape::hidden_dropout). 0: none.
  double hidden_dropout = 0;
  // Attention dropout (Megatron's attention_dropout, nanoGPT's attn_dropout): the probability of
  // zeroing each attention probability in training (GptShape::attention_dropout). 0: none.
  double attention_dropout = 0;
  // A mixture of experts' load-balancing loss coefficient (Gpt::set_moe_aux_loss; Switch: 0.01).
  double moe_aux_loss = 0.01;
  // Over which rows its f_e and P_e run: "micro_batch" (Switch's: each rank's micro-batch) or
  // "sequence" (DeepSeek-V3's sequence-wise balance loss: each sequence's, then their mean).
  std::string moe_aux_scope = "micro_batch";
  // A mixture of experts' router z-loss coefficient (Gpt::set_moe_z_loss; ST-MoE: 0.001); 0: none.
  double moe_z_loss = 0;
  // DeepSeek-V3's auxiliary-loss-free balancing (Gpt::balance_router_bias): after each update,
  // each expert's router bias moves by this towards its layer's mean load; 0: the bias stays.
  double moe_bias_rate = 0;
  // model.mtp_depth = D: the multi-token prediction losses' weight λ; the training loss is the
  // main loss plus λ/D times the sum of the D modules' (Megatron's mtp_loss_scaling_factor).
  double mtp_loss_weight = 0.1;
  // Every N steps (0: never) the L2 norms of each layer's gradient and weights go into /norms of
  // metrics.h5 (before the update, the gradient before clipping).
  int64_t norms_every = 0;
  // Every N steps (0: never) each expert's share of each layer's choices goes into /moe_load of
  // metrics.h5 (model.moe_experts).
  int64_t moe_load_every = 0;
};

struct OptimConfig {
  std::string name =
      "adamw";  // adamw | sgd | muon (Muon on the hidden matrices, AdamW else) | lion
  double beta1 = 0.9, beta2 = 0.95, eps = 1e-8, weight_decay = 0.1;
  double momentum = 0.9;  // sgd
  // Muon (optim/muon.h): the matrices' peak learning rate (train.schedule applies to it as to
  // train.lr), momentum, Nesterov, Newton–Schulz steps, the shape's lr factor.
  double muon_lr = 0.02, muon_momentum = 0.95;
  bool muon_nesterov = true;
  int muon_ns_steps = 5;
  std::string muon_adjust_lr = "original";  // original | match_rms_adamw
  // Megatron's --decoupled-lr, nanochat's embedding and unembedding rates: the peak learning
  // rate of the embeddings (wte, wpe; the tied head is wte) and of an untied head (lm_head),
  // on train.schedule with train.min_lr_ratio as train.lr is (0: train.lr's). LrScales.
  double embedding_lr = 0, head_lr = 0;
  // OLMo's decay_embeddings: false keeps weight decay off wte and wpe (and the tied head).
  bool decay_embeddings = true;
  // Megatron's --weight-decay-incr-style: constant (optim.weight_decay throughout) | linear |
  // cosine from optim.weight_decay to optim.weight_decay_end over the run (weight_decay_at).
  std::string weight_decay_schedule = "constant";
  double weight_decay_end = 0;
  // An exponential moving average of the weights kept beside the optimizer state (DeepSeek-V3's
  // early estimate of the model after decay; /optimizer/ema of checkpoints, triad-average --ema
  // takes it out): after every update ema += (1 − ema_decay)·(w − ema), from the weights the run
  // starts with. 0: none.
  double ema_decay = 0;
};

struct DataConfig {
  std::string train, val;  // file globs (train: several, comma-separated, with train_weights)
  // Direct preference optimization instead of data.train: a preference file of chosen and
  // rejected sequences (io/preference_file.h), the loss DPO's (Gpt::set_preference).
  std::string preferences;
  std::string train_weights;  // "" one dataset; else comma-separated weights (data/blend.h)
  bool shuffle = false;
  std::string vocab = "data/vocab/gpt2.tiktoken";  // BPE ranks, for samples and prompts
  // Loss masks beside the shards (data/loader.h): auto (where present) | require | none.
  std::string loss_mask = "auto";
  // Attention within documents (model/attention_mask.h): none, or the token id that starts a
  // document (GPT-2: 50256, Llama 3: 128000); parse_document_mask.
  std::string document_mask = "none";
  // Megatron's --eod-mask-loss: none, or the end-of-document token id; a target whose input is
  // that token does not count (parse_eod_mask_loss).
  std::string eod_mask_loss = "none";
  // Fill-in-the-middle on the training sequences (data/fim.h; parse_fim): the share of
  // fragments rearranged (0: off), the share of those in SPM order, the sentinels' token ids
  // "PREFIX, MIDDLE, SUFFIX", the token the fragments are cut at (none: a whole sequence).
  double fim_rate = 0, fim_spm_rate = 0.5;
  std::string fim_tokens, fim_split = "none";
  // token: cuts between tokens; character: cuts between characters, the pieces encoded anew with
  // data.vocab (Megatron's, SantaCoder's and StarCoder's way).
  std::string fim_granularity = "token";
  // Megatron's second level: a fragment holding this token rearranged part by part (cut at it),
  // each at fim_fragment_rate (-1: not given); and fragments whose text starts with
  // fim_no_prefix kept as they are (with data.vocab).
  std::string fim_fragment_split = "none";
  double fim_fragment_rate = -1;
  std::string fim_no_prefix;
  // Positions restart at every document (GptShape::reset_positions): needs document_mask.
  bool reset_positions = false;
};

struct EvalConfig {
  int64_t every = 100;     // 0: only before and after training
  int64_t sequences = 64;  // first N sequences of the val shards
  std::string choices;     // multiple-choice eval file (llm.c's format, e.g. HellaSwag); "" none
  // Held-out preference pairs (data.preferences' format): DPO's loss, the pairs ranked right and
  // the reward margin at every evaluation, against the run's reference. "" none.
  std::string preferences;
  int64_t choice_examples = 0;          // its first N examples (0: all)
  std::string choice_mode = "batched";  // batched | cached (train/choice_eval.h)
  // More validation sets, "name=GLOB, name=GLOB" (e.g. one per corpus of a blend): each scored
  // like data.val on its first `sequences` sequences, into /val_sets/<name> of metrics.h5.
  std::string sets;
  // Bits per byte of the validation sets too (val/bpb): their loss over the bytes their target
  // tokens decode to with data.vocab, which must be the data's tokenizer.
  bool bits_per_byte = false;
  // data.val's loss at each position of the sequence too (/val_positions of metrics.h5).
  bool loss_by_position = false;
  // data.val and eval.sets rearranged by data.fim_* as the training sequences are (Megatron's
  // validation under FIM), at a seed of their own that train.seed does not change.
  bool fim = false;
  // Every evaluation (data.val, eval.sets, eval.choices) run with optim.ema_decay's moving
  // average of the weights too (/val_ema and /val_ema_sets of metrics.h5), the weights set aside
  // meanwhile and put back bit for bit.
  bool ema = false;
};

struct CheckpointConfig {
  std::string dir;         // default run.dir/run.name/ckpt
  int64_t every = 0;       // 0: only after the last step (and on preemption)
  int keep = 3;            // 0: keep all
  int64_t keep_every = 0;  // > 0: checkpoints at multiples of this step are always kept
  bool at_start = false;
  // Written by a thread of its own from a snapshot in host memory while training goes on.
  bool async = false;
  // nanoGPT's save-on-improvement: an evaluation after step 0 whose validation loss is the lowest
  // so far saves the step's checkpoint (if not saved already) and names it in ckpt/best, which
  // `keep` never deletes.
  bool best = false;
};

struct RunConfig {
  std::string name = "run", dir = "runs";
  std::string backend = "cpu";
  // auto: bf16 mixed precision on cuda, fp32 on cpu (Precision in model/gpt.h).
  std::string precision = "auto";
  // off, or tensorwise: the blocks' linear layers multiply in FP8 (Gpt::set_fp8), each operand
  // scaled by a power of two from its amax; bf16 precision (fp32 too on the cpu backend).
  std::string fp8 = "off";
  // Comma-separated globs over the linear layers run.fp8 leaves in bf16 (Gpt::fp8_layer_names:
  // "h/0/*, h/11/*" keeps the first and last blocks out); empty: none.
  std::string fp8_skip;
  // The head's products in FP8 too (modded-nanogpt's; Transformer Engine and torchao leave it
  // out by default).
  bool fp8_head = false;
  int threads = 0;         // OpenMP/BLAS threads; 0: the library default
  double peak_tflops = 0;  // for MFU; 0: measured (CPU sgemm) or the device's datasheet
  // A time budget (Megatron's --exit-duration-in-mins): the first step that ends this many
  // minutes after the run began (Trainer::run, once the model is built; by rank 0's clock)
  // writes a checkpoint and stops; 0: none.
  double max_minutes = 0;
  // A rank that makes no progress for this many minutes (a peer died or hangs, and it waits in
  // a collective) ends the job with an error naming what it was doing (HangWatchdog); 0: never.
  double hang_minutes = 30;
};

struct ParallelConfig {
  int tp = 1, pp = 1, zero = 0;
  // Context parallelism: each sequence's tokens split over cp ranks (two chunks each, balanced
  // for causal attention), whose attention gathers the others' keys and values.
  int cp = 1;
  // Expert parallelism (model.moe_experts): the data-parallel ranks in groups of ep, each rank
  // of a group holding 1/ep of every layer's experts and exchanging tokens with the others.
  int ep = 1;
  std::string schedule = "1f1b";
  int virtual_stages = 1;
  bool sequence_parallel = false;  // LayerNorm regions split by sequence over the tp group
  // Layers per pipeline stage: "" (equal), "auto" (balance the last stage's head against the
  // others' layers) or pp counts "7,7,7,3" summing to model.n_layer (virtual_stages = 1).
  std::string stage_layers;
  // How device buffers travel between ranks (cuda backend): mpi (staged through host memory),
  // nccl, or auto (nccl when every rank has a GPU of its own and NCCL loads, else mpi).
  std::string comm = "auto";
};

struct SampleConfig {
  int64_t length = 0;  // tokens generated into samples.txt at each evaluation; 0: none
  double temperature = 1.0;
  int top_k = 40;
  double top_p = 1.0;
  double min_p = 0.0;  // and the penalties: SampleOptions (train/sampler.h)
  double repetition_penalty = 1.0, frequency_penalty = 0.0, presence_penalty = 0.0;
  std::string prompt;  // empty: start from <|endoftext|>
};

struct Config {
  ModelConfig model;
  TrainConfig train;
  OptimConfig optim;
  DataConfig data;
  EvalConfig eval;
  CheckpointConfig checkpoint;
  RunConfig run;
  ParallelConfig parallel;
  SampleConfig sample;

  std::string run_path() const { return run.dir + "/" + run.name; }
  std::string checkpoint_dir() const {
    return checkpoint.dir.empty() ? run_path() + "/ckpt" : checkpoint.dir;
  }
  int padded_vocab_size() const;  // vocab_size rounded up to a multiple of 128·tp
  // The MLP's hidden units: model.mlp_hidden, or by default 4·n_embd for gelu and for swiglu
  // the multiple of 64 at or above 8·n_embd/3 (Llama's rule: about GELU's parameter count).
  int mlp_hidden_size() const;
  bool bf16() const;  // run.precision is bf16, or auto on the cuda backend
};

// Options that are not config keys, for the executables.
struct CommandLine {
  Config config;
  std::vector<std::string> config_files;
  std::string resume = "auto";  // auto | none | PATH
  std::string init_from;        // checkpoint whose weights start a new run
  // --extend-positions: the --init-from checkpoint's rotary model may have had another seq_len,
  // rope_theta or rope scaling (context extension); the config's are used, and said.
  bool extend_positions = false;
  // --from-ema: the weights --init-from (or --eval-only) reads are the checkpoint's moving average
  // of them (/optimizer/ema, optim.ema_decay), not /model.
  bool from_ema = false;
  // A checkpoint whose architecture (the [model] section of its config) replaces the config
  // files' model.* keys; the command line's still override it.
  std::string model_from;
  bool eval_only = false;
  // --plan: print the run's memory per rank and compute (train/run_plan.h) and exit, for
  // plan_ranks ranks (0: the job's) and, with plan_tflops > 0, the step time at that rate.
  bool plan = false;
  int plan_ranks = 0;
  double plan_tflops = 0;
  double plan_gbps = 0;       // with it, the data-parallel reduction's time at this bandwidth
  double plan_memory_gb = 0;  // with it, the least recomputation that fits this memory per rank
  std::string plan_timeline;  // with it, the simulated pipeline step written here (CSV)
  bool help = false;
  std::string help_text;
};

// model.rope_short_factor or rope_long_factor (`key`) as its `pairs` numbers, each finite and
// > 0; throws triad::Error naming the key otherwise.
std::vector<double> parse_rope_factors(const std::string& text, const std::string& key, int pairs);
// parallel.stage_layers as pp counts summing to n_layer ("7,7,7,3", spaces allowed); throws
// triad::Error naming the key otherwise.
std::vector<int> parse_stage_layers(const std::string& text, int pp, int n_layer);
// train.batch_rampup parsed ("" gives start = 0: none); throws triad::Error naming the key when
// it is not three integers START >= 1, INCREMENT >= 1, SEQUENCES >= 1 with START < batch_size
// and batch_size − START a multiple of INCREMENT.
struct BatchRampup {
  int start = 0, increment = 0;
  int64_t sequences = 0;
  bool on() const { return start > 0; }
};
BatchRampup parse_batch_rampup(const std::string& text, int batch_size);
// The global batch of the step that starts once `consumed` sequences have been trained on:
// START + INCREMENT · floor(consumed · n / SEQUENCES), n = (batch_size − START) / INCREMENT
// increments, batch_size from SEQUENCES on (Megatron's rule; without a ramp, batch_size).
int batch_size_at(const BatchRampup& ramp, int batch_size, int64_t consumed);
// The sequences trained on after `steps` more steps from `consumed`.
int64_t sequences_after_steps(const BatchRampup& ramp, int batch_size, int64_t consumed,
                              int64_t steps);
// Where a step sits in the run for the learning-rate schedule (lr_at), in train.lr_by's unit:
// what came before it, the step itself, the whole run, and the warmup. By steps: step s is
// {s, 1, train.steps, warmup_steps}; by sequences: {sequences trained on before it, its batch,
// the run's sequences, warmup_sequences}. Without a ramp the two give the same rates (warmup
// W steps of B sequences being warmup_sequences = W·B).
struct SchedulePoint {
  double done = 0, step = 1, total = 0, warmup = 0;
};
// A run's points: the ramp parsed and the run's sequences counted once, so that each step's
// point (at) is a lookup.
class ScheduleClock {
 public:
  explicit ScheduleClock(const TrainConfig& t);
  SchedulePoint at(int64_t step, int64_t consumed) const;

 private:
  bool by_sequences_;
  BatchRampup ramp_;
  int batch_size_;
  double total_, warmup_;
};
// The fewest steps after which at least `sequences` have been trained on, from none.
int64_t steps_for_sequences(const BatchRampup& ramp, int batch_size, int64_t sequences);
// train.sequences > 0: train.steps = steps_for_sequences (done by the parsers below, so every
// reader of a Config sees the steps the run takes).
void resolve_run_length(Config& c);
// The global batches a ramp passes through, smallest first, batch_size last (one without one).
std::vector<int> ramp_batch_sizes(const BatchRampup& ramp, int batch_size);

// train.window_warmup parsed ("" gives start = 0: none; MULTIPLE 64 where not given, the flash
// kernels' tile); throws triad::Error naming the key when it is not two or three integers >= 1
// with START below the window it grows to and a multiple of MULTIPLE.
struct WindowWarmup {
  int start = 0, multiple = 64;
  int64_t steps = 0;
  bool on() const { return start > 0; }
};
WindowWarmup parse_window_warmup(const std::string& text, const ModelConfig& m);
// The window (as model.sliding_window: 0 none) of the windowed layers once `step` updates are
// applied: with W the model's window (seq_len without one), START + floor((W − START)·step /
// STEPS) rounded up to a multiple of MULTIPLE while that is below W; the model's own window from
// then on, and without a warmup.
int window_at(const WindowWarmup& w, const ModelConfig& m, int64_t step);

// data.document_mask and data.eod_mask_loss may name one of data.vocab's special tokens
// ("<|endoftext|>", "<|begin_of_text|>") instead of its id: replaced here by the id (the
// tokenizer read from data.vocab), so that every later reader, and the config a checkpoint
// records, sees the id. Throws triad::Error naming the key for a name without data.vocab, or
// one the tokenizer lacks (parse_train_command_line calls it).
void resolve_token_names(Config& c);
// data.document_mask: -1 for none, else the token id (below vocab_size) that starts a document;
// throws triad::Error naming the key otherwise.
int32_t parse_document_mask(const std::string& text, int vocab_size);
// data.eod_mask_loss: "none" → -1, else a token id < vocab_size; throws triad::Error naming the
// key otherwise.
int32_t parse_eod_mask_loss(const std::string& text, int vocab_size);
// data.fim_*'s FimSpec (data/fim.h) with the given seed; throws triad::Error naming the key of a
// bad value (fim_tokens: three distinct token ids of the vocabulary, needed when fim_rate > 0,
// and a fourth, the padding, under character granularity, whose tokenizer the caller attaches).
// An item of fim_tokens, fim_split or fim_fragment_split may instead be the text of one of
// data.vocab's special tokens ("<fim_prefix>"): with `tokenizer` (data.vocab's) it becomes that
// token's id; without, it needs data.vocab set, and the FimSpec says `named` with the ids left
// -1 (the caller parses again with the tokenizer).
struct FimSpec;
class Tokenizer;
FimSpec parse_fim(const DataConfig& d, int vocab_size, uint64_t seed,
                  const Tokenizer* tokenizer = nullptr);
// parallel.stage_layers resolved: empty (equal chunks; also for pp = 1), the given counts, or
// for "auto" the split that balances the stages' compute against the last stage's head.
std::vector<int> stage_layers(const Config& cfg);

// Parses triad-train's command line (argv without MPI's arguments). Throws triad::Error.
CommandLine parse_train_command_line(int argc, const char* const* argv);

// Parses INI text (as stored in a checkpoint's `config` attribute) into a Config; `origin`
// names the source in error messages.
Config parse_config_text(const std::string& ini_text, const std::string& origin);

// eval.sets as (name, glob) pairs; throws triad::Error naming eval.sets when an entry is not
// name=GLOB, a name is not [A-Za-z0-9_-]+ or repeats.
std::vector<std::pair<std::string, std::string>> parse_val_sets(const std::string& text);

// Checks every value and cross-key constraint (heads divide the width, batch divisibility,
// positive sizes, known names...). Throws triad::Error naming the key.
void validate(const Config& c, int world_size);

// The resolved config as INI text (every key, in a fixed order); parse_config_text of it
// gives back the same Config.
std::string to_ini(const Config& c);

}  // namespace triad
