// HDF5 checkpoints (DESIGN.md §5): one file per checkpoint, written collectively by all ranks
// of `comm` with MPI-IO through parallel HDF5. Every parameter is stored at its full,
// unsharded shape in fp32 under /model/<name>; optimizer state under /optimizer/<slot>/<name>.
// A file is written as <path>.partial and renamed to <path> only once complete (attribute
// complete = 1 written last); a file without it is never loaded.
#pragma once

#include <mpi.h>

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace triad {

// A tensor, or a flat range of it, held in host memory by this rank. Every rank of the
// communicator passes the same tensors (names and shapes) in the same order; what each rank
// holds (begin, end) and writes (write) may differ.
struct TensorRef {
  std::string name;            // e.g. "h/0/attn/c_attn/weight"
  std::vector<int64_t> shape;  // full, unsharded shape
  float* data = nullptr;       // host buffer with the elements [begin, end) (see below)
  // Rows of the first dim at or beyond valid_rows are padding (wte's padded vocabulary):
  // a file whose first dim differs is accepted, rows < valid_rows are read and the rest
  // zero-filled. -1: the shape must match exactly. Only loading looks at it.
  int64_t valid_rows = -1;
  // This rank holds only the flat (row-major) elements [begin, end) of the full tensor, stored
  // contiguously at data[0 .. end-begin). end < 0: the whole tensor (begin must be 0).
  // begin == end: nothing (data may be anything); the rank still joins the collective calls.
  int64_t begin = 0, end = -1;
  // Saving: false marks a replica whose elements another rank writes; it joins the collective
  // calls with an empty selection. Each element of the file must be written by exactly one rank
  // (the caller guarantees the owned ranges of all ranks with write=true partition the tensor,
  // whatever their splits; a save whose ranges leave a gap or overlap fails on every rank). One
  // exception keeps replicated whole tensors simple: when several ranks pass the whole local
  // tensor (end < 0) with the same split (or none) and write = true, the lowest of them writes it.
  bool write = true;
  // Tensor-parallel shard (DESIGN.md §3 splits). split_axis < 0: the rank's local tensor is the
  // full tensor. Otherwise dimension split_axis of the full tensor consists of split_blocks equal
  // consecutive blocks, each cut into split_parts equal parts, and the local tensor is part
  // split_part of every block, concatenated in block order: its shape is the full shape with
  // that dimension divided by split_parts. Examples at tp = 2, rank 1: c_attn weight [3C, C]
  // (axis 0, 3 blocks) holds rows [C/2, C), [3C/2, 2C), [5C/2, 3C); mlp.c_proj weight [C, 4C]
  // (axis 1, 1 block) holds columns [2C, 4C) of every row; wte [Vp, C] (axis 0, 1 block) holds
  // rows [Vp/2, Vp). begin/end and data then refer to the LOCAL tensor's row-major flat order,
  // while valid_rows still counts rows of the full tensor (a local row whose full row is at or
  // beyond valid_rows is padding: zero-filled on load). Validated on save and load: split_axis
  // < rank of shape, split_blocks >= 1, 0 <= split_part < split_parts, shape[split_axis]
  // divisible by split_blocks * split_parts, [begin, end) within the local tensor; without an
  // axis (split_axis < 0) split_parts must be 1 and split_part 0 (split_blocks is ignored).
  // The file never depends on the splits: any split, or none, saves and loads the same file.
  int split_axis = -1;
  int64_t split_blocks = 1;
  int split_parts = 1, split_part = 0;
};

// The elements of t this rank holds at t.data: end - begin, or with end < 0 its whole local
// tensor (the full shape with split_axis divided by split_parts). t must be valid (as a save or
// load checks).
size_t held_elements(const TensorRef& t);

// A named group of tensors: "model", "optimizer/m", "optimizer/v", "optimizer/momentum".
struct TensorGroup {
  std::string path;
  std::vector<TensorRef> tensors;
  // The file's group holds these tensors and nothing else: a dataset under it that none of them
  // names is refused on load (a model's weights, which its /model attributes describe whole: a
  // tensor beyond them means the attributes and the tensors disagree).
  bool whole = false;
  // Its values are never negative (AdamW's second moments, averages of squares): a file that
  // holds a negative one is refused on load, as one holding NaN or infinity is.
  bool nonnegative = false;
};

struct ModelShape {
  int64_t n_layer = 0, n_head = 0, n_embd = 0, seq_len = 0, vocab_size = 0, padded_vocab_size = 0;
  // Attributes position ("learned" | "rope"; absent in files from before rotary positions, which
  // are all learned) and rope_theta (rope only).
  std::string position = "learned";
  double rope_theta = 0;
  // Attribute rope_local_theta (double > 1: the windowed layers' rope base; absent or 0: none;
  // written when > 0, rope only).
  double rope_local_theta = 0;
  // Attribute rope_scaling ("none" | "llama3"; absent: none) and, for llama3, the doubles
  // rope_scaling_factor, rope_low_freq_factor, rope_high_freq_factor and the int64
  // rope_original_positions (model.rope_* of the same names).
  std::string rope_scaling = "none";
  double rope_scaling_factor = 0, rope_low_freq_factor = 0, rope_high_freq_factor = 0;
  int64_t rope_original_positions = 0;
  // "yarn" instead: rope_scaling_factor, rope_original_positions and the doubles
  // rope_yarn_beta_fast, rope_yarn_beta_slow.
  double rope_yarn_beta_fast = 0, rope_yarn_beta_slow = 0;
  // And rope_yarn_mscale, rope_yarn_mscale_all_dim (doubles; absent: 1 and 0, Qwen's YaRN).
  double rope_yarn_mscale = 1, rope_yarn_mscale_all_dim = 0;
  // And rope_yarn_truncate (int64 1 | 0: the ramp's ends rounded to whole pairs, or not, as
  // gpt-oss's; absent: 1; written when 0).
  bool rope_yarn_truncate = true;
  // "longrope" instead: rope_scaling_factor (the stretch of the original context),
  // rope_original_positions and the double arrays rope_short_factor and rope_long_factor (one
  // divisor per rotated pair each).
  std::vector<double> rope_short_factor = {}, rope_long_factor = {};
  // Attribute norm ("layernorm" | "rmsnorm"; absent in files from before RMSNorm: layernorm).
  std::string norm = "layernorm";
  // Attribute bias (int64 1 | 0; absent in files from before model.bias: 1).
  bool bias = true;
  // Attribute qkv_bias (int64 1 | 0: c_attn's bias without the others; absent: 0).
  bool qkv_bias = false;
  // Attribute mlp_bias (int64 1 | 0: the MLP's biases without the attention's; absent: 0).
  bool mlp_bias = false;
  // Attribute norm_bias (int64 1 | 0: the LayerNorms' biases without the linear layers'; absent:
  // 0).
  bool norm_bias = false;
  // Attribute norm_weight (int64 1 | 0: the norms (ln_1, ln_2, ln_f and the branch norms) learn
  // no weight or bias, which stay 1 and 0; absent: 1).
  bool norm_weight = true;
  // Attribute norm_eps (double, the normalizations' epsilon; absent in older files: 1e-5).
  double norm_eps = 1e-5;
  // Attribute head_dim (int64, each head's width; absent or 0: n_embd / n_head; written when
  // > 0).
  int64_t head_dim = 0;
  // Attributes mlp ("gelu" | "gelu_exact" | "swiglu" | "geglu" | "relu2"; absent: gelu) and
  // mlp_hidden (int64, the hidden units; absent: 4·n_embd; written when > 0).
  std::string mlp = "gelu";
  int64_t mlp_hidden = 0;
  // Attribute tie_embeddings (int64 1 | 0; absent in older files: 1).
  bool tied = true;
  // Attribute n_kv_head (int64, the key/value heads, dividing n_head; absent in files from before
  // grouped-query attention: n_head; written when > 0).
  int64_t n_kv_head = 0;
  // Attribute qk_norm (int64 1 | 0; absent in older files: 0).
  bool qk_norm = false;
  // Attributes kv_lora_rank, q_lora_rank, qk_nope_head_dim, qk_rope_head_dim, v_head_dim (int64,
  // multi-head latent attention's sizes, model.kv_lora_rank ...; written when kv_lora_rank > 0;
  // absent: 0, no MLA).
  int64_t kv_lora_rank = 0, q_lora_rank = 0;
  int64_t qk_nope_head_dim = 0, qk_rope_head_dim = 0, v_head_dim = 0;
  // Attribute mla_norm_eps (double, the latent norms' epsilon, model.mla_norm_eps; written when >
  // 0; absent: 0, norm_eps's).
  double mla_norm_eps = 0;
  // Attribute qk_norm_full (int64 1: q_norm and k_norm span all heads, model.qk_norm_full; absent:
  // 0, per head).
  bool qk_norm_full = false;
  // Attribute attn_sinks (int64 1: each layer has attn/sinks [n_head], model.attn_sinks; absent:
  // 0, none).
  bool attn_sinks = false;
  // Attribute rotary_dim (int64, partial rotary: the values of each q and k head that rotate;
  // absent or 0: all of them; written when > 0).
  int64_t rotary_dim = 0;
  // Attribute nope_every (int64: with rope, layers N, 2N, .. (1-based) do not rotate; absent or
  // 0: every layer rotates; written when > 0).
  int64_t nope_every = 0;
  // Attribute sliding_window (int64, the keys each query attends to at most; absent or 0: all
  // earlier ones; written when > 0).
  int64_t sliding_window = 0;
  // Attribute full_attention_every (int64: with a window, every N-th layer attends to the whole
  // context; absent or 0: none; written when > 0).
  int64_t full_attention_every = 0;
  // Attribute full_attention_first (int64 1: the full-attention layers are 0, N, 2N, .. rather
  // than N-1, 2N-1, ..; absent: 0; written when 1, with full_attention_every).
  bool full_attention_first = false;
  // Attribute logit_softcap (double: the head's logits are c·tanh(logit/c); absent or 0: none;
  // written when > 0).
  double logit_softcap = 0;
  // Attribute attn_softcap (double: the attention scores are c·tanh(s/c); absent or 0: none;
  // written when > 0).
  double attn_softcap = 0;
  // Attribute clip_qkv (double: c_attn's output clamped to [−c, c]; absent or 0: none).
  double clip_qkv = 0;
  // Attributes glu_alpha, glu_limit, glu_offset (double: SwiGLU's shape, model.glu_*; each
  // written when not its default; absent: 1, 0, 0).
  double glu_alpha = 1, glu_limit = 0, glu_offset = 0;
  // Attributes logit_scale and residual_scale (double: the head's logits, each branch's output
  // times it; absent: 1; written when not 1).
  double logit_scale = 1, residual_scale = 1;
  // Attribute embed_scale (double: the embedding's output times it; absent: 1; written when not
  // 1).
  double embed_scale = 1;
  // Attribute parallel_residual (int64 1 | 0; absent: 0; written when 1).
  bool parallel_residual = false;
  // Attribute branch_norm (int64 1 | 0; absent: 0; written when 1): GptShape::branch_norm.
  bool branch_norm = false;
  // Attribute pre_norm (int64 0 | 1; absent: 1; written when 0): GptShape::pre_norm.
  bool pre_norm = true;
  // Attribute shared_norm (int64 1 | 0; absent: 0; written when 1; only with parallel_residual):
  // GptShape::shared_norm.
  bool shared_norm = false;
  // Attribute head_bias (int64 1 | 0; absent: 0; written when 1; only with an untied head):
  // GptShape::head_bias, the tensor lm_head/bias.
  bool head_bias = false;
  // Attribute attn_scale (double: the attention scores' scale; absent or 0: 1/sqrt(head width);
  // written when > 0).
  double attn_scale = 0;
  // Attribute mup_base_width (int64: μP relative to a base model this wide; absent or 0: the
  // standard parametrization; written when > 0).
  int64_t mup_base_width = 0;
  // Attributes moe_experts (int64: a mixture of experts per layer; absent or 0: dense MLPs;
  // written when > 0), moe_top_k (int64, experts per token) and moe_normalize (int64 1 | 0),
  // written with it.
  int64_t moe_experts = 0, moe_top_k = 2;
  bool moe_normalize = true;
  // Attributes moe_score (string "softmax" | "sigmoid"; absent: softmax; written when sigmoid)
  // and moe_routed_scale (double > 0; absent: 1; written when not 1).
  std::string moe_score = "softmax";
  double moe_routed_scale = 1.0;
  // Attributes moe_groups and moe_group_top_k (int64; absent: 1 and 1; written when moe_groups
  // > 1).
  int64_t moe_groups = 1, moe_group_top_k = 1;
  // Attribute moe_group_score (string "top2" | "max"; absent: top2; written when max).
  std::string moe_group_score = "top2";
  // Attribute moe_shared_hidden (int64: shared experts' hidden units; absent or 0: none; written
  // when > 0).
  int64_t moe_shared_hidden = 0;
  // Attribute moe_shared_gate (int64 1 | 0: their output scaled by a sigmoid gate; absent: 0;
  // written when 1).
  bool moe_shared_gate = false;
  // Attribute moe_bias (int64 1 | 0: mlp/router/bias [E], mlp/experts/c_fc/bias [E, F] and
  // mlp/experts/c_proj/bias [E, C] in each layer with experts; absent: 0; written when 1).
  bool moe_bias = false;
  // Attribute mtp_depth (int64: multi-token prediction modules, tensors mtp/<j>/...; absent: 0;
  // written when > 0).
  int64_t mtp_depth = 0;
  // Attributes moe_first_dense and moe_every (int64: the layers with experts, GptShape::moe_layer;
  // absent: 0 and 1, every layer; written when not those).
  int64_t moe_first_dense = 0, moe_every = 1;
  // Attribute moe_dense_hidden (int64: the dense layers' MLP width among experts; absent: 0, the
  // experts' width; written when > 0).
  int64_t moe_dense_hidden = 0;
};

struct CheckpointState {
  int64_t step = 0;  // optimizer updates applied
  int64_t tokens_seen = 0;
  int64_t next_sequence = 0;  // global sequence index for the loader
  int64_t epoch = 0;
  std::string config;  // resolved INI text
  std::string grid;    // e.g. "dp=1 pp=1 tp=1" (informational)
  ModelShape model;
  // The last train losses and gradient norms (oldest first), for the z-scores of the update
  // skipping (train.skip_*); attributes loss_window, grad_norm_window, empty when absent.
  std::vector<double> loss_window, norm_window;
  int64_t skipped_in_a_row = 0;  // attribute skipped_in_a_row: the steps just before, all skipped
  // DPO (data.preferences): the reference model's log-probability of each pair's chosen and
  // rejected sequence (2i, 2i + 1), attribute preference_reference; empty when absent.
  std::vector<double> preference_reference;
  // ... and of eval.preferences' pairs, attribute preference_val_reference.
  std::vector<double> preference_val_reference;
};

// Writes `path` atomically (via path + ".partial"). Collective over comm: every rank passes
// the same groups (names and shapes) and writes the range it owns of each tensor (TensorRef::
// begin/end/write, of its local tensor when split), with one collective MPI-IO write per tensor
// (each rank selecting a few hyperslab boxes: per block of a split, at most a partial first
// row, whole rows and a partial last row). Each dataset carries a `checksum` attribute (uint32
// CRC-32 of the full tensor's little-endian fp32 bytes, as zlib.crc32 computes it, whoever
// wrote which part with whatever splits: each writer checksums its contiguous runs of the full
// tensor, shifts each CRC to its position in the tensor with crc32_combine's zero operator, and
// the XOR over all ranks of these terms is the CRC of the whole; one uint32 per tensor is
// reduced) checked on load. Throws triad::Error (with the path) on any failure, on
// every rank; the .partial file is then removed and nothing named `path` is created. Space for
// the whole file is reserved (fallocate) before writing, so a full disk is reported up front
// ("not enough space for the checkpoint"). The data reach the disk before the rename (HDF5's
// flush of an MPI-IO file is an MPI_File_sync); the rename itself is not synced.
void save_checkpoint(MPI_Comm comm, const std::string& path, const CheckpointState& state,
                     const std::vector<TensorGroup>& groups);

// Reads and validates the root attributes: format "triad-checkpoint", format_version 1,
// complete = 1, the /model attributes. Throws triad::Error naming the file and the problem
// for a missing, truncated, foreign or incomplete file. Collective over comm (any comm,
// e.g. MPI_COMM_SELF to check a file on one rank).
CheckpointState read_checkpoint_state(MPI_Comm comm, const std::string& path);

// Fills every tensor of every group from the file: each rank reads only the range [begin, end)
// of its local tensor it asks for (one independent MPI-IO read of a few boxes per tensor;
// ranges of different ranks may overlap or leave parts unread; the file may have been written
// by any number of ranks with any ranges and splits). Checks the root attributes as
// read_checkpoint_state does, and that each dataset exists, has the expected shape (see
// TensorRef::valid_rows; elements in rows >= valid_rows are zero-filled) and matches its
// checksum (when it has one: a file written by another tool without checksums loads
// unchecked). The checksum of each full tensor is verified collectively, every element of the
// file exactly once: the elements in the rows every rank loads are split among the ranks in the
// local tensors of one split (the one under which the ranks ask for the most elements, usually
// the only one); each part's readers checksum what they have read anyway, and parts of it no
// reader of that split asked for (unrequested ranges, or elements read only by ranks with
// another split) are read once more, spread over its readers. The rows beyond (padding nobody
// loads, e.g. wte rows >= valid_rows) are read once more, split evenly among all ranks. So the
// extra reads amount to the elements not covered by the chosen split's ranges, once in total;
// none when the ranks together ask for every loaded element with one split. The pieces' CRCs are
// combined as on save (one uint32 per tensor reduced). Throws triad::Error naming the file and
// the dataset otherwise, on every rank, before any tensor is modified for a missing dataset or a
// wrong shape (a checksum failure is found after the data are read). A value that is not finite
// (NaN, infinity) is refused as well, after the checksums: a diverged model or optimizer state
// saved whole is still nothing to evaluate or train. Collective over comm.
void load_checkpoint_tensors(MPI_Comm comm, const std::string& path,
                             const std::vector<TensorGroup>& groups);

// True if the file holds group `path` (e.g. "optimizer/m"). Collective over comm.
bool checkpoint_has_group(MPI_Comm comm, const std::string& file, const std::string& path);

// ---- the checkpoint directory: ckpt/step_XXXXXXXX.h5 and ckpt/latest --------------------------

// "step_00000120.h5" for step 120.
std::string checkpoint_file_name(int64_t step);
// The largest step a checkpoint's name holds (8 digits): train.steps' bound too.
inline constexpr int64_t kMaxCheckpointStep = 99999999;

// File names (not paths) of the checkpoints in dir: regular files named exactly
// step_XXXXXXXX.h5 (8 digits; .partial and other files ignored; contents not checked), sorted
// by step ascending. Missing dir: empty list.
std::vector<std::string> list_checkpoints(const std::string& dir);

// After a successful save: writes dir/latest (atomically, via a temp file + rename) with the
// file name and a newline, then deletes the oldest checkpoints so that at most `keep` remain
// (keep <= 0: keep all); file_name itself is never deleted, nor is a checkpoint whose step is a
// positive multiple of keep_every (> 0: milestones, kept for later evaluation, not counted in
// `keep`), nor `protect` (checkpoint.best's, which dir/best names; "": none).
// Call on one rank only.
void publish_checkpoint(const std::string& dir, const std::string& file_name, int keep,
                        int64_t keep_every = 0, const std::string& protect = "");

// checkpoint.best: dir/best names the checkpoint of the lowest validation loss so far, two lines
// "step_XXXXXXXX.h5" and the loss (printed to 17 digits). publish_best writes it (a temporary
// file renamed over the old one); read_best gives its name and loss, nullopt without the file,
// (or an empty one), and throws triad::Error naming it where it is not of that form. Call on one
// rank only.
void publish_best(const std::string& dir, const std::string& file_name, double val_loss);
std::optional<std::pair<std::string, double>> read_best(const std::string& dir);

// The checkpoint `--resume auto` should load, as a path (dir/name): the file named in
// dir/latest if it is valid (read_checkpoint_state succeeds), else the newest valid one in
// list_checkpoints, skipping damaged ones with a warning on stderr (rank 0 checks the files and
// warns; all ranks get the answer). Empty string: none. An error where the directory has
// checkpoints (or a latest) and none loads. Collective over comm.
std::string find_resume_checkpoint(MPI_Comm comm, const std::string& dir);

// A run that does not go on from dir's newest checkpoint (a new run, --resume none or
// --init-from; one resumed from an earlier step or from another directory) would find its steps'
// file names taken by another history's checkpoints, which are never overwritten, and dir/latest
// naming them. This moves every step_XXXXXXXX.h5 of dir past `step`, and the one at `step` unless
// it is `resumed` (the file the run loaded), into a new subdirectory superseded_<n> with its own
// latest, and points dir/latest at the newest checkpoint left (removing it where none is).
// step < 0: a new run, all of them. Returns "" where nothing moved, else a line saying what moved
// where. Collective over comm (rank 0 moves; a failure is every rank's triad::Error).
std::string set_aside_other_history(MPI_Comm comm, const std::string& dir, int64_t step,
                                    const std::string& resumed);

}  // namespace triad
