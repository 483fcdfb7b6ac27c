// train.activations_every: the sums of squares of a forward pass's activations (Gpt::
// set_activation_sums), from which the trainer takes their root mean squares: μP's coordinate
// check (the activations of a μP model keep their scale as the width grows; under the standard
// parametrization they grow with it once Adam has taken a few steps).
#include "triad/model/gpt.h"

namespace triad {

std::vector<std::string> Gpt::activation_names(int n_layer) {
  std::vector<std::string> names = {"embed"};
  for (int l = 0; l < n_layer; ++l)
    for (const char* k : {"attn", "mlp", "out"}) {
      // (Appended piece by piece: GCC 12 warns, wrongly, of an overlapping copy in "h" + ...)
      std::string name = "h";
      name += std::to_string(l);
      name += '_';
      name += k;
      names.push_back(std::move(name));
    }
  return names;
}

template <class A>
void Gpt::add_activation_sums(size_t at, std::initializer_list<const A*> xs, size_t n) {
  if (activation_sums_ == nullptr || decoding_) return;  // off, or not a whole forward pass
  // Each row once over the tensor-parallel group: every rank holds all rows unless sequence
  // parallelism splits them (the caller's n is this rank's rows either way).
  if (mp_.tp_rank != 0 && !mp_.split_rows()) return;
  for (const A* x : xs) activation_sums_[at++] += be_.sum_squares(x, n);
}

template void Gpt::add_activation_sums<float>(size_t, std::initializer_list<const float*>, size_t);
template void Gpt::add_activation_sums<bf16_t>(size_t, std::initializer_list<const bf16_t*>,
                                               size_t);

}  // namespace triad
