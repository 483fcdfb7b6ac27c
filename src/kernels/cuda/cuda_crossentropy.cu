// Fused softmax + cross-entropy over the first V of Vp logits per row, one block per row; the
// logits are replaced by dloss/dlogits in place (zeros in the padded columns V..Vp).
//   loss = log Σ_j e^{x_j − max} − (x_target − max)   (the sum in double)
//   dlogits = softmax · dloss_scale · (1 + 2·z_loss·log Z) − dloss_scale · onehot(target)
//             (log Z = max + log Σ; z_loss 0: no z-loss), log_z = log Z where asked
// With a softcap c > 0 (model.logit_softcap: the logits were capped, scale_cap_logits) each
// gradient value is multiplied by the cap's derivative 1 − (x_j/c)².
// correct = 1 where the first index holding the maximum (torch.argmax) equals the target.
// A row whose target is negative (kIgnoredTarget, a masked target) gets loss 0, correct 0 and a
// zero gradient; in the vocabulary-parallel backward only kIgnoredTarget does (other negative
// targets are on another rank's slice).
//
// The vocabulary-parallel form (backend.h) splits it into three per-row kernels, one block per
// row as well (row max and first argmax; Σ exp in double and the target logit; the backward),
// with the same arithmetic, between which the caller reduces over the tensor-parallel ranks.
// Templated on the storage type Elem (float or bf16) of the logits: read as float, the
// gradient rounded once when written back; losses and row statistics are fp32 in both.
//
// bf16 logits with Vp a multiple of 8 (the model's padded vocabulary) and 16-byte aligned rows
// take the one-pass kernel of crossentropy_block.h instead: each row is read once into
// registers (1024 threads, 16-byte loads) and its gradient written from there.
#include <climits>
#include <type_traits>

#include "crossentropy_block.h"
#include "cuda_ops.cuh"
#include "device_thread.cuh"
#include "triad/kernels/backend.h"  // kIgnoredTarget

namespace triad::cuda {
namespace {

constexpr int kRowBlock = 512;
static_assert(crossentropy::kIgnored == kIgnoredTarget);

struct ArgMax {
  float val;
  int idx;
};

// The larger value; on equal values the smaller index (the first maximum).
__device__ ArgMax better(ArgMax a, ArgMax b) {
  if (b.val > a.val || (b.val == a.val && b.idx < a.idx)) return b;
  return a;
}

__device__ ArgMax block_argmax(ArgMax v) {
  __shared__ ArgMax partial[32];
  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;
  const int n_warps = blockDim.x / 32;
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    ArgMax o{__shfl_xor_sync(0xffffffffu, v.val, offset),
             __shfl_xor_sync(0xffffffffu, v.idx, offset)};
    v = better(v, o);
  }
  __syncthreads();
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  ArgMax r = lane < n_warps ? partial[lane] : ArgMax{-INFINITY, INT_MAX};
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    ArgMax o{__shfl_xor_sync(0xffffffffu, r.val, offset),
             __shfl_xor_sync(0xffffffffu, r.idx, offset)};
    r = better(r, o);
  }
  return r;
}

template <typename Elem>
__global__ void crossentropy_kernel(Elem* logits, float* losses, float* correct,
                                    const int32_t* targets, int V, int Vp, float dloss_scale,
                                    float z_loss, float* log_z, float softcap) {
  const size_t n = blockIdx.x;
  Elem* row = logits + n * Vp;
  const int target = targets[n];
  if (target < 0) {  // an ignored row: the same branch in every thread of the block
    for (int j = threadIdx.x; j < Vp; j += blockDim.x) row[j] = narrow<Elem>(0.0f);
    if (threadIdx.x == 0) {
      losses[n] = 0.0f;
      if (correct != nullptr) correct[n] = 0.0f;
      if (log_z != nullptr) log_z[n] = 0.0f;
    }
    return;
  }
  const float target_logit = widen(row[target]);  // read by every thread before any write below

  ArgMax best{-INFINITY, INT_MAX};
  for (int j = threadIdx.x; j < V; j += blockDim.x) {
    const float x = widen(row[j]);
    if (x > best.val) best = ArgMax{x, j};  // j increases: keeps this thread's first maximum
  }
  best = block_argmax(best);
  const float max_val = best.val;

  double sum = 0.0;
  for (int j = threadIdx.x; j < V; j += blockDim.x) sum += double(expf(widen(row[j]) - max_val));
  sum = block_reduce(sum, SumOp{}, 0.0);  // its __syncthreads order every read before the writes

  const double log_sum = log(sum), lz = double(max_val) + log_sum;
  const float factor = float(crossentropy::z_loss_scale(dloss_scale, z_loss, lz) / sum);
  for (int j = threadIdx.x; j < V; j += blockDim.x) {
    const float y = widen(row[j]);
    float g = expf(y - max_val) * factor;
    if (j == target) g -= dloss_scale;
    row[j] = narrow<Elem>(g * crossentropy::cap_slope(y, softcap));
  }
  for (int j = V + threadIdx.x; j < Vp; j += blockDim.x) row[j] = narrow<Elem>(0.0f);
  if (threadIdx.x == 0) {
    losses[n] = float(log_sum - double(target_logit - max_val));
    if (log_z != nullptr) log_z[n] = float(lz);
    if (correct != nullptr) {
      const int argmax = best.idx == INT_MAX ? 0 : best.idx;  // all −inf (or NaN): index 0
      correct[n] = argmax == target ? 1.0f : 0.0f;
    }
  }
}

// One block per row. V = 0: row_max −inf, argmax −1.
template <typename Elem>
__global__ void logits_row_max_kernel(float* row_max, float* argmax, const Elem* logits, int V,
                                      int Vp) {
  const size_t n = blockIdx.x;
  const Elem* row = logits + n * Vp;
  ArgMax best{-INFINITY, INT_MAX};
  for (int j = threadIdx.x; j < V; j += blockDim.x) {
    const float x = widen(row[j]);
    if (x > best.val) best = ArgMax{x, j};
  }
  best = block_argmax(best);
  if (threadIdx.x == 0) {
    row_max[n] = best.val;
    if (V <= 0) {
      argmax[n] = -1.0f;
    } else {
      argmax[n] = float(best.idx == INT_MAX ? 0 : best.idx);  // all −inf (or NaN): index 0
    }
  }
}

template <typename Elem>
__global__ void softmax_partial_sums_kernel(float* sum_exp, float* target_logit, const Elem* logits,
                                            const float* row_max, const int32_t* targets, int V,
                                            int Vp) {
  const size_t n = blockIdx.x;
  const Elem* row = logits + n * Vp;
  const float max_val = row_max[n];
  double sum = 0.0;
  for (int j = threadIdx.x; j < V; j += blockDim.x) sum += double(expf(widen(row[j]) - max_val));
  sum = block_reduce(sum, SumOp{}, 0.0);
  if (threadIdx.x == 0) {
    sum_exp[n] = float(sum);
    const int target = targets[n];
    target_logit[n] = target >= 0 && target < V ? widen(row[target]) : 0.0f;
  }
}

template <typename Elem>
__global__ void crossentropy_backward_partial_kernel(Elem* logits, const float* row_max,
                                                     const float* sum_exp, const int32_t* targets,
                                                     int V, int Vp, float dloss_scale, float z_loss,
                                                     float softcap) {
  const size_t n = blockIdx.x;
  Elem* row = logits + n * Vp;
  const float max_val = row_max[n];
  const int target = targets[n];
  if (target == kIgnoredTarget) {  // an ignored row: the same branch in every thread
    for (int j = threadIdx.x; j < Vp; j += blockDim.x) row[j] = narrow<Elem>(0.0f);
    return;
  }
  const double lz = double(max_val) + log(double(sum_exp[n]));
  const float factor =
      float(crossentropy::z_loss_scale(dloss_scale, z_loss, lz) / double(sum_exp[n]));
  for (int j = threadIdx.x; j < V; j += blockDim.x) {
    const float y = widen(row[j]);
    float g = expf(y - max_val) * factor;
    if (j == target) g -= dloss_scale;
    row[j] = narrow<Elem>(g * crossentropy::cap_slope(y, softcap));
  }
  for (int j = max(V, 0) + threadIdx.x; j < Vp; j += blockDim.x) row[j] = narrow<Elem>(0.0f);
}

constexpr int kOnePassThreads = 1024;
constexpr int kOnePassMaxVec = 8;  // rows of up to 8·8·1024 = 65536 logits

template <int kVec>
__global__ void __launch_bounds__(kOnePassThreads, 1)
    crossentropy_one_pass_kernel(uint16_t* logits, float* losses, float* correct,
                                 const int32_t* targets, int V, int Vp, float dloss_scale,
                                 float z_loss, float* log_z, float softcap) {
  DeviceThread x;
  crossentropy::crossentropy_row<kOnePassThreads, kVec>(x, logits, losses, correct, targets, V, Vp,
                                                        dloss_scale, z_loss, log_z, softcap);
}

// Launches the one-pass kernel where it applies (see the top of this file); false otherwise.
template <typename Elem>
bool crossentropy_one_pass(cudaStream_t s, Elem* logits, float* losses, float* correct,
                           const int32_t* targets, int N, int V, int Vp, float dloss_scale,
                           float z_loss, float* log_z, float softcap) {
  if constexpr (!std::is_same_v<Elem, bf16>) {
    return false;
  } else {
    const int nvec = Vp / 8;
    const int vec = (nvec + kOnePassThreads - 1) / kOnePassThreads;
    if (Vp % 8 != 0 || reinterpret_cast<uintptr_t>(logits) % 16 != 0 || vec > kOnePassMaxVec)
      return false;
    uint16_t* bits = reinterpret_cast<uint16_t*>(logits);
    const size_t smem = crossentropy::row_smem();
    with_vectors(vec, [&](auto k) {
      crossentropy_one_pass_kernel<decltype(k)::value><<<N, kOnePassThreads, smem, s>>>(
          bits, losses, correct, targets, V, Vp, dloss_scale, z_loss, log_z, softcap);
    });
    TRIAD_CUDA_CHECK_LAUNCH();
    return true;
  }
}

void check_slice(const char* op, int V, int Vp) {
  TRIAD_CHECK(V >= 0 && V <= Vp, "cuda ", op, ": need 0 <= V <= Vp (V = ", V, ", Vp = ", Vp, ")");
}

}  // namespace

template <typename Elem>
void logits_row_max(cudaStream_t s, float* row_max, float* argmax, const Elem* logits, int N, int V,
                    int Vp) {
  if (N <= 0) return;
  check_slice("logits_row_max", V, Vp);
  logits_row_max_kernel<<<N, kRowBlock, 0, s>>>(row_max, argmax, logits, V, Vp);
  TRIAD_CUDA_CHECK_LAUNCH();
}

template <typename Elem>
void softmax_partial_sums(cudaStream_t s, float* sum_exp, float* target_logit, const Elem* logits,
                          const float* row_max, const int32_t* targets, int N, int V, int Vp) {
  if (N <= 0) return;
  check_slice("softmax_partial_sums", V, Vp);
  softmax_partial_sums_kernel<<<N, kRowBlock, 0, s>>>(sum_exp, target_logit, logits, row_max,
                                                      targets, V, Vp);
  TRIAD_CUDA_CHECK_LAUNCH();
}

template <typename Elem>
void crossentropy_backward_partial(cudaStream_t s, Elem* logits, const float* row_max,
                                   const float* sum_exp, const int32_t* targets, int N, int V,
                                   int Vp, float dloss_scale, float z_loss, float softcap) {
  if (N <= 0) return;
  check_slice("crossentropy_backward_partial", V, Vp);
  crossentropy_backward_partial_kernel<<<N, kRowBlock, 0, s>>>(logits, row_max, sum_exp, targets, V,
                                                               Vp, dloss_scale, z_loss, softcap);
  TRIAD_CUDA_CHECK_LAUNCH();
}

template <typename Elem>
void crossentropy_forward_backward(cudaStream_t s, Elem* logits, float* losses, float* correct,
                                   const int32_t* targets, int N, int V, int Vp, float dloss_scale,
                                   float z_loss, float* log_z, float softcap) {
  if (N <= 0) return;
  TRIAD_CHECK(V > 0 && V <= Vp, "cuda cross-entropy: need 0 < V <= Vp (V = ", V, ", Vp = ", Vp,
              ")");
  if (crossentropy_one_pass(s, logits, losses, correct, targets, N, V, Vp, dloss_scale, z_loss,
                            log_z, softcap))
    return;
  crossentropy_kernel<<<N, kRowBlock, 0, s>>>(logits, losses, correct, targets, V, Vp, dloss_scale,
                                              z_loss, log_z, softcap);
  TRIAD_CUDA_CHECK_LAUNCH();
}

#define TRIAD_INSTANTIATE_CROSSENTROPY(Elem)                                                     \
  template void crossentropy_forward_backward<Elem>(cudaStream_t, Elem*, float*, float*,         \
                                                    const int32_t*, int, int, int, float, float, \
                                                    float*, float);                              \
  template void logits_row_max<Elem>(cudaStream_t, float*, float*, const Elem*, int, int, int);  \
  template void softmax_partial_sums<Elem>(cudaStream_t, float*, float*, const Elem*,            \
                                           const float*, const int32_t*, int, int, int);         \
  template void crossentropy_backward_partial<Elem>(cudaStream_t, Elem*, const float*,           \
                                                    const float*, const int32_t*, int, int, int, \
                                                    float, float, float);
TRIAD_INSTANTIATE_CROSSENTROPY(float)
TRIAD_INSTANTIATE_CROSSENTROPY(bf16)
#undef TRIAD_INSTANTIATE_CROSSENTROPY

}  // namespace triad::cuda
