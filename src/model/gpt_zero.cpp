// What ZeRO-2 and ZeRO-3 change in where the model's gradients go and where its weights come
// from (ZeroOptions, gpt.h): gradient buckets handed to the grad-ready hook, and weights
// gathered from every rank's slice into buffers the layers read.
#include <algorithm>
#include <memory>
#include <type_traits>
#include <vector>

#include "gpt_activations.h"
#include "triad/core/error.h"
#include "triad/model/gpt.h"

namespace triad {

// ---- gradients (ZeRO-2) ---------------------------------------------------------------------

size_t Gpt::ends_index(size_t offset) const {
  TRIAD_ASSERT(offset < grad_lo_ || (offset >= grad_hi_ && offset < n_floats_));
  return offset < grad_lo_ ? offset : grad_lo_ + (offset - grad_hi_);
}

size_t Gpt::layer_end(int first) const {
  const std::string& name = specs_[size_t(first)].name;  // "h/<l>/..." or "mtp/<j>/..."
  const int j = mtp_module_of(name);
  const int l = j >= 0 ? shape_.mtp_layer(j) : std::stoi(name.substr(2));
  const size_t next = size_t(first) + size_t(layer_count(l));
  return next < specs_.size() ? specs_[next].offset : n_floats_;
}

float* Gpt::grad_at(size_t offset) {
  if (!bucketed_) return grads_ + offset;
  return grad_ends_ + ends_index(offset);
}

float* Gpt::layer_grad_bucket(int l, size_t at) {
  if (!bucketed_) return grads_ + at;
  CommRequest& previous = ring_pending_[l % 2];
  previous.wait();
  float* bucket = grad_ring_[l % 2];
  be_.zero(bucket, layer_floats_);
  return bucket;
}

void Gpt::grad_ready(size_t offset, size_t count, float* data, CommRequest* into) {
  if (!grad_hook_ || !final_pass_) return;
  // The stage's copy of the tied wte gradient is final only once the pipeline step has added the
  // other stage's (sum_tied_embedding_grads): a range holding it waits for that.
  if (shape_.tied && mp_.tied_copy()) {
    const ParamSpec& s = specs_[size_t(mp_.first_stage() ? wte_ : head_)];
    if (offset < s.offset + s.numel && s.offset < offset + count) {
      TRIAD_ASSERT(into == nullptr);
      after_tied_sum_.push_back({offset, count, data});
      return;
    }
  }
  CommRequest r = grad_hook_(offset, count, data);
  if (into != nullptr)
    *into = std::move(r);
  else
    grad_pending_.push_back(std::move(r));
}

// ---- weights (ZeRO-3) -----------------------------------------------------------------------

void Gpt::weights_changed() {
  decoded_.clear();  // the kept keys and values came from the old weights
  if (!gathers_) return;
  for (int k = 0; k < 3; ++k) {
    ring_gather_[k].wait();  // a pending gather must not land after this
    ring_layer_[k] = -1;
  }
  ends_current_ = false;
}

namespace {

// Elements [lo, hi) of a buffer cut into equal slices of `slice` elements over comm, of which this
// rank holds the one from `begin` (mine: the bf16 copy, or the fp32 weights in fp32), into dst,
// in words.
template <class A>
CommRequest gather_slices(Comm& comm, const A* mine, size_t begin, size_t slice, size_t lo,
                          size_t hi, A* dst) {
  constexpr size_t per_word = sizeof(float) / sizeof(A);
  std::vector<size_t> counts = slice_pieces(lo, hi, slice, comm.size());
  // Every piece starts at lo or a slice's start, both 16-float aligned: whole words.
  TRIAD_ASSERT(lo % per_word == 0 && slice % per_word == 0);
  for (size_t& c : counts) {
    TRIAD_ASSERT(c % per_word == 0);
    c /= per_word;
  }
  const size_t a = std::max(lo, begin);
  const A* send = mine + (a < begin + slice ? a - begin : 0);
  return comm.iall_gather_pieces(words(send), words(dst), counts);
}

}  // namespace

template <class A>
CommRequest Gpt::gather_dense(size_t lo, size_t hi, A* dst) {
  const A* mine = nullptr;
  if constexpr (std::is_same_v<A, float>)
    mine = params_;
  else
    mine = params_bf16_;
  return gather_slices(*zero_comm_, mine, master_begin_, master_end_ - master_begin_, lo, hi, dst);
}

// Buffer elements [lo, hi) into dst: from the data-parallel slices, and the pieces in expert
// extents (packed experts) from the expert replicas' packed slices, one collective per piece.
template <class A>
CommRequest Gpt::gather_weights(size_t lo, size_t hi, A* dst) {
  if (!packed_experts()) return gather_dense(lo, hi, dst);
  const A* mine = nullptr;
  if constexpr (std::is_same_v<A, float>)
    mine = expert_params_;
  else
    mine = expert_params_bf16_;
  auto reqs = std::make_shared<std::vector<CommRequest>>();
  size_t at = lo;
  for (const auto& e : packing_.extents) {
    const size_t a = std::max(e.lo, lo), b = std::min(e.hi, hi);
    if (a >= b) continue;
    if (at < a) reqs->push_back(gather_dense(at, a, dst + (at - lo)));
    const size_t p = e.packed + (a - e.lo);
    reqs->push_back(gather_slices(*expert_comm_, mine, expert_begin_, expert_end_ - expert_begin_,
                                  p, p + (b - a), dst + (a - lo)));
    at = b;
  }
  if (at < hi) reqs->push_back(gather_dense(at, hi, dst + (at - lo)));
  if (reqs->size() == 1) return std::move(reqs->front());
  CommRequest all;
  all.on_complete([reqs] {
    for (auto& r : *reqs) r.wait();
  });
  return all;
}

template <class A>
const A* Gpt::weight_at(size_t offset) {
  if (!gathers_) return weights<A>() + offset;
  A* ends = reinterpret_cast<A*>(gw_ends_);
  if (!ends_current_) {
    // wte and wpe, then ln_f with an untied head: once after each update (every micro-batch
    // and evaluation of a step reads the same ones).
    CommRequest front = gather_weights<A>(0, grad_lo_, ends);
    CommRequest back = gather_weights<A>(grad_hi_, n_floats_, ends + grad_lo_);
    front.wait();
    back.wait();
    ends_current_ = true;
  }
  return ends + ends_index(offset);
}

template <class A>
void Gpt::prefetch_layer_weights(int l) {
  if (!gathers_ || l < 0 || l >= shape_.n_layer || ring_layer_[l % 3] == l) return;
  const int k = l % 3, first = layer_[size_t(l)];
  ring_gather_[k].wait();
  ring_gather_[k] = gather_weights<A>(specs_[size_t(first)].offset, layer_end(first),
                                      reinterpret_cast<A*>(gw_ring_[k]));
  ring_layer_[k] = l;
}

template <class A>
const A* Gpt::layer_weight_base(int l, size_t* origin) {
  *origin = 0;
  if (!gathers_) return weights<A>();
  if (l >= shape_.n_layer) {  // a multi-token prediction module's block: with the ends
    *origin = specs_[size_t(layer_[size_t(l)])].offset;
    return weight_at<A>(*origin);
  }
  prefetch_layer_weights<A>(l);  // nothing when it is held or on its way
  ring_gather_[l % 3].wait();
  *origin = specs_[size_t(layer_[size_t(l)])].offset;
  return reinterpret_cast<const A*>(gw_ring_[l % 3]);
}

void Gpt::join_forward_gathers() {
  if (!gathers_) return;
  auto pass = [this](auto zero) {
    using A = decltype(zero);
    // forward_chunk's order: the ends (the embedding), the first layer (its ln_1), then at each
    // layer the next two and the layer itself and the next one (the fused ln_1).
    weight_at<A>(0);
    size_t origin = 0;
    layer_weight_base<A>(0, &origin);
    for (int i = 0; i < shape_.n_layer; ++i) {
      prefetch_layer_weights<A>(i + 1);
      prefetch_layer_weights<A>(i + 2);
      layer_weight_base<A>(i, &origin);
      if (i + 1 < shape_.n_layer) layer_weight_base<A>(i + 1, &origin);
    }
  };
  if (precision_ == Precision::bf16)
    pass(bf16_t{});
  else
    pass(0.0f);
}

#define TRIAD_GPT_ZERO(A)                                          \
  template const A* Gpt::weight_at<A>(size_t);                     \
  template void Gpt::prefetch_layer_weights<A>(int);               \
  template const A* Gpt::layer_weight_base<A>(int, size_t*);       \
  template CommRequest Gpt::gather_weights<A>(size_t, size_t, A*); \
  template CommRequest Gpt::gather_dense<A>(size_t, size_t, A*);
TRIAD_GPT_ZERO(float)
TRIAD_GPT_ZERO(bf16_t)
#undef TRIAD_GPT_ZERO

}  // namespace triad
