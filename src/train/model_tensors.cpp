#include "triad/train/model_tensors.h"

#include <algorithm>
#include <map>
#include <string>

namespace triad {

std::vector<TensorRef> model_tensor_refs(const Gpt& model, float* base, size_t first, bool whole,
                                         size_t lo, size_t hi, size_t expert_lo, size_t expert_hi) {
  // Every rank passes every tensor of the model, in layout order; one it does not hold (another
  // pipeline stage's) is an empty range that still joins the collective calls.
  std::map<std::string, const ParamSpec*> held;
  for (const auto& p : model.specs()) held[p.name] = &p;
  std::vector<TensorRef> r;
  for (const auto& full : gpt_parameter_layout(model.shape())) {
    TensorRef t;
    t.name = full.name;
    t.shape = full.shape;
    if (has_vocabulary_rows(full.name)) t.valid_rows = model.shape().vocab_size;
    const auto it = held.find(full.name);
    if (it == held.end()) {
      t.begin = t.end = 0;
      t.data = base;
      t.write = false;
      r.push_back(std::move(t));
      continue;
    }
    const ParamSpec& p = *it->second;
    t.split_axis = p.split_axis;
    t.split_blocks = p.split_blocks;
    t.split_parts = p.split_parts;
    t.split_part = p.split_part;
    t.write = !p.replica;  // another rank writes a replica's values
    // An expert-parallel tensor: its range of the split's local tensor (that of all experts).
    const int64_t shift = int64_t(p.expert_range_begin());
    if (whole) {
      t.data = base + (p.offset - first);
      if (p.expert_parallel) {
        t.begin = shift;
        t.end = shift + int64_t(p.numel);
      }
    } else {
      // An expert-parallel tensor's replicas are the expert replicas: their slices.
      // Under ZeRO-3 those slices are of the packed experts (Gpt::packed_experts).
      const size_t from = p.expert_parallel ? expert_lo : lo;
      const size_t to = p.expert_parallel ? expert_hi : hi;
      const size_t at =
          p.expert_parallel && model.packed_experts() ? model.packing().packed(p.offset) : p.offset;
      const size_t a = std::max(from, at), b = std::min(to, at + p.numel);
      if (a < b) {
        t.begin = shift + int64_t(a - at);
        t.end = shift + int64_t(b - at);
        t.data = base + (a - first);
      } else {
        t.begin = t.end = 0;  // nothing of this tensor here; still joins the collectives
        t.data = base;
      }
    }
    r.push_back(std::move(t));
  }
  return r;
}

TensorGroup router_bias_group(const GptShape& shape, float* bias, int modules) {
  TensorGroup g{"router_bias", {}};
  const size_t E = size_t(shape.moe_experts);
  const int depth = modules < 0 ? shape.mtp_depth : std::min(modules, shape.mtp_depth);
  for (int l = 0; l < shape.n_layer + depth; ++l)  // (the modules' blocks: mtp/<j>)
    if (shape.moe_layer(l))
      g.tensors.push_back(TensorRef{layer_name(shape, l), {int64_t(E)}, bias + size_t(l) * E});
  return g;
}

void load_router_bias(MPI_Comm comm, const std::string& path, Gpt& model, int modules) {
  if (!model.shape().moe() || !checkpoint_has_group(comm, path, "router_bias")) return;
  std::vector<float> bias = model.router_bias();
  load_checkpoint_tensors(comm, path, {router_bias_group(model.shape(), bias.data(), modules)});
  model.set_router_bias(bias);
}

}  // namespace triad
