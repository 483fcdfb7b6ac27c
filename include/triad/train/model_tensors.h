// A model's parameters as the tensors of a checkpoint (io/checkpoint.h) on this rank, for the
// trainer's saves and loads and triad-generate's loads on any grid.
#pragma once

#include <mpi.h>

#include <cstddef>
#include <string>
#include <vector>

#include "triad/io/checkpoint.h"
#include "triad/model/gpt.h"

namespace triad {

// Every tensor of the model in layout order, as every rank must pass them: one this rank does
// not hold (another pipeline stage's) is an empty range that still joins the collective calls; a
// held one carries its tensor-parallel split (DESIGN.md §3) and the replica mark. Its elements lie
// at base + (offset − first) for a parameter buffer offset: the whole local tensor (whole), or
// only its part within [lo, hi) of the buffer (a ZeRO-1 slice of the optimizer state; for an
// expert-parallel tensor, whose replicas differ, within [expert_lo, expert_hi): of the buffer,
// or with the model's packed experts (ZeRO-3) of their packing, the offsets too).
// wte's rows at or beyond vocab_size are padding (TensorRef::valid_rows).
std::vector<TensorRef> model_tensor_refs(const Gpt& model, float* base, size_t first, bool whole,
                                         size_t lo, size_t hi, size_t expert_lo, size_t expert_hi);

// The routers' biases (Gpt::router_bias, [(n_layer + mtp_depth) · E] at `bias`) as checkpoint
// group router_bias: a tensor h/<l> [E] per layer with experts (mtp/<j> per multi-token
// prediction module's block with them, of the first `modules` modules; -1: all), which every
// rank holds whole (the lowest rank writes it). No tensors for a dense model.
TensorGroup router_bias_group(const GptShape& shape, float* bias, int modules = -1);

// Gives `model` the routers' biases of checkpoint `path` (the trainer's loads, triad-generate's),
// those of its first `modules` multi-token prediction modules (-1: all; --init-from a file with
// fewer): nothing for a dense model or a file from before the biases were saved (no group
// router_bias: they stay zero). Collective over comm.
void load_router_bias(MPI_Comm comm, const std::string& path, Gpt& model, int modules = -1);

}  // namespace triad
