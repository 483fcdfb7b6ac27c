// How a GPT model's parameters are laid out and cut across ranks: the rank's tensor-parallel
// coordinate and pipeline stage (ModelParallel), each tensor's place and shard (ParamSpec), the
// full and per-rank layouts (src/model/gpt.cpp) that checkpoints and resharding read.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "triad/model/gpt_shape.h"
#include "triad/parallel/comm.h"
#include "triad/parallel/pipeline_schedule.h"

namespace triad {

// How this rank's part of the model is cut (DESIGN.md §3): its tensor-parallel coordinate and
// its pipeline stage. Layers receive the communicators from here; the defaults are one rank
// holding the whole model. The pipeline cuts the n_layer layers into pp·virtual_stages
// consecutive chunks, equal ones unless stage_layers says otherwise; rank s holds chunks s,
// s + pp, s + 2·pp, ... (Megatron's interleaved assignment, one chunk per rank when
// virtual_stages = 1), or under ZB-V's V placement chunks s and 2·pp − 1 − s
// (pipeline_schedule.h). Global chunk 0 also holds the embeddings, the last global chunk the
// final LayerNorm and the tied head (a copy of wte where another rank holds chunk 0).
struct ModelParallel {
  int tp = 1, tp_rank = 0;
  int pp = 1, pp_rank = 0, virtual_stages = 1;
  ChunkPlacement placement = ChunkPlacement::Interleaved;
  // Sequence parallelism (tp > 1): the residual stream, LayerNorms and the chunk boundaries
  // hold this rank's 1/tp of the micro-batch's rows; all-gathers and reduce-scatters replace the
  // tensor-parallel all-reduces (Megatron's sequence parallelism).
  bool sequence_parallel = false;
  // Context parallelism (cp > 1; docs/parallelism.md): each sequence of T tokens is cut into 2·cp
  // equal pieces and this rank holds two of them, cp_rank and 2·cp − 1 − cp_rank (an early and a
  // late one, so that the causal attention costs every rank the same), its rows ordered piece by
  // piece: [2][B][T/(2·cp)]. Everything but attention is row by row; attention all-gathers the
  // keys and values of the other ranks' pieces over cp_comm and its backward reduce-scatters
  // their gradients.
  int cp = 1, cp_rank = 0;
  Comm* tp_comm = nullptr;  // needed when tp > 1
  Comm* pp_comm = nullptr;  // needed when pp > 1
  Comm* cp_comm = nullptr;  // needed when cp > 1
  // Expert parallelism (ep > 1; ProcessGrid): this rank holds experts [ep_rank·E/ep,
  // (ep_rank+1)·E/ep) of every layer and exchanges token rows with its group over ep_comm
  // (gpt_moe.cpp).
  int ep = 1, ep_rank = 0;
  Comm* ep_comm = nullptr;  // needed when ep > 1
  int chunks() const { return pp * virtual_stages; }
  bool split_rows() const { return sequence_parallel && tp > 1; }
  // Tokens of a T-token sequence this rank holds (T / cp), and the first position of its piece k
  // (0: the early one, 1: the late one) of rank `rank`'s.
  int seq_rows(int T) const { return T / cp; }
  int piece_start(int k, int T, int rank) const {
    const int piece = T / (2 * cp);
    return (k == 0 ? rank : 2 * cp - 1 - rank) * piece;
  }
  // The layers of each stage when they differ (virtual_stages = 1; parallel.stage_layers): pp
  // counts summing to n_layer, so that the last stage's head can be balanced against the
  // others' layers; the first and the last stage may have none (they hold the embeddings and
  // the head), a stage in between not. Empty: n_layer / chunks() in every chunk.
  std::vector<int> stage_layers;
  int chunk_layers(int g, int n_layer) const {  // layers of global chunk g
    return stage_layers.empty() ? n_layer / chunks() : stage_layers[size_t(g)];
  }
  int first_layer(int g, int n_layer) const {  // index of global chunk g's first layer
    int first = 0;
    for (int c = 0; c < g; ++c) first += chunk_layers(c, n_layer);
    return first;
  }
  int most_chunk_layers(int n_layer) const {  // the most layers any chunk holds
    int most = 0;
    for (int g = 0; g < chunks(); ++g) most = std::max(most, chunk_layers(g, n_layer));
    return most;
  }
  int rank_layers(int n_layer) const {  // the layers of this rank's chunks together
    int n = 0;
    for (int c = 0; c < virtual_stages; ++c) n += chunk_layers(global_chunk(c), n_layer);
    return n;
  }
  int global_chunk(int local_chunk) const {
    return global_chunk_of(placement, pp, pp_rank, local_chunk);
  }
  int stage_of(int g) const { return chunk_rank(placement, pp, g); }  // the rank holding chunk g
  int local_chunk(int g) const {  // this rank's index of its global chunk g
    for (int c = 0; c < virtual_stages; ++c)
      if (global_chunk(c) == g) return c;
    return -1;
  }
  bool first_stage() const { return pp_rank == 0; }  // it holds global chunk 0, the embeddings
  int head_stage() const { return stage_of(chunks() - 1); }  // the rank of the last chunk
  bool holds_head() const { return pp_rank == head_stage(); }
  // The tied head's copy of wte lives apart from wte (the head on another rank than chunk 0), and
  // this rank holds one of the two.
  bool tied_copy() const { return head_stage() != 0 && (first_stage() || holds_head()); }
};

struct ParamSpec {
  std::string name;            // DESIGN.md §3, e.g. "h/3/mlp/c_fc/weight"
  std::vector<int64_t> shape;  // full shape
  std::vector<int64_t> local;  // the shape this rank holds (its tensor-parallel shard)
  size_t offset = 0;           // into the parameter buffer, in floats
  size_t numel = 0;            // local elements
  bool decay = false;          // weight decay applies (rank >= 2)
  // Tensor-parallel split (see TensorRef in io/checkpoint.h): dimension split_axis of the full
  // tensor is split_blocks blocks, each cut into split_parts (tp) parts; this rank holds part
  // split_part (tp_rank) of every block. -1: the tensor is whole (replicated over the
  // tensor-parallel group).
  int split_axis = -1;
  int split_blocks = 1;
  int split_parts = 1, split_part = 0;
  // Expert parallelism (expert_parallel: an expert tensor [E, ...] under ep > 1): of the
  // split's local tensor (its E experts' tensor-parallel parts, in expert order) this rank
  // holds the contiguous range of experts [expert_part·E/expert_parts, ...), numel elements
  // from expert_range_begin(). Its replicas are the expert replicas (ProcessGrid::edp()), not
  // the data-parallel ones.
  bool expert_parallel = false;
  int expert_parts = 1, expert_part = 0;
  size_t expert_range_begin() const { return size_t(expert_part) * numel; }
  // Another rank owns this tensor's values for checkpoints and the gradient norm: a copy of a
  // tensor replicated over the tensor-parallel group (tp_rank > 0), or the last stage's copy of
  // the tied wte when pp > 1.
  bool replica = false;
};

// The parameter layout of DESIGN.md §3 in buffer order (wte, wpe, 12 tensors per layer, ln_f;
// no wpe under rope, no LayerNorm biases under rmsnorm, no biases at all without bias, q_norm and
// k_norm after c_attn under qk_norm, and lm_head last when untied), each tensor 16-float aligned.
// Tools that need names and shapes without a model use it too.
std::vector<ParamSpec> gpt_parameter_layout(const GptShape& shape);
// The tensors one rank holds under tensor and pipeline parallelism, in its buffer order:
// [wte, wpe] on the first stage, its chunks' layers, [ln_f] and the head's wte (when not the
// first stage) on the last stage; local shapes are the Megatron shards of §3.
std::vector<ParamSpec> gpt_rank_layout(const GptShape& shape, const ModelParallel& mp);

// Copies a rank's shard of a tensor (spec from gpt_rank_layout: its split) out of / into the
// full tensor.
void extract_shard(const ParamSpec& s, const float* full, float* local);
void insert_shard(const ParamSpec& s, const float* local, float* full);

}  // namespace triad
