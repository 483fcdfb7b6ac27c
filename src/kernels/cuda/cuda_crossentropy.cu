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
// take the one-pass block program of crossentropy_block.h: each row is read once into registers
// (1024 threads, 16-byte loads) and its gradient written from there. Every other row, and the
// vocabulary-parallel kernels, run the strided block programs of crossentropy_rows_block.h.
#include <type_traits>

#include "crossentropy_block.h"
#include "crossentropy_rows_block.h"
#include "cuda_ops.cuh"
#include "device_thread.cuh"
#include "triad/kernels/backend.h"  // kIgnoredTarget

namespace triad::cuda {
namespace {

constexpr int kRowBlock = 512;
static_assert(crossentropy::kIgnored == kIgnoredTarget);

template <typename E>
__global__ void __launch_bounds__(kRowBlock)
    fused_row_kernel(E* logits, float* losses, float* correct, const int32_t* targets, int V,
                     int Vp, float dloss_scale, float z_loss, float* log_z, float softcap) {
  DeviceThread x;
  crossentropy::fused_row<kRowBlock>(x, logits, losses, correct, targets, V, Vp, dloss_scale,
                                     z_loss, log_z, softcap);
}

template <typename E>
__global__ void __launch_bounds__(kRowBlock)
    row_max_kernel(float* row_max, float* argmax, const E* logits, int V, int Vp) {
  DeviceThread x;
  crossentropy::row_max<kRowBlock>(x, row_max, argmax, logits, V, Vp);
}

template <typename E>
__global__ void __launch_bounds__(kRowBlock)
    partial_sums_kernel(float* sum_exp, float* target_logit, const E* logits, const float* row_max,
                        const int32_t* targets, int V, int Vp) {
  DeviceThread x;
  crossentropy::partial_sums<kRowBlock>(x, sum_exp, target_logit, logits, row_max, targets, V, Vp);
}

template <typename E>
__global__ void __launch_bounds__(kRowBlock)
    backward_partial_kernel(E* logits, const float* row_max, const float* sum_exp,
                            const int32_t* targets, int V, int Vp, float dloss_scale, float z_loss,
                            float softcap) {
  DeviceThread x;
  crossentropy::backward_partial<kRowBlock>(x, logits, row_max, sum_exp, targets, V, Vp,
                                            dloss_scale, z_loss, softcap);
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
  row_max_kernel<<<N, kRowBlock, crossentropy::row_smem(), s>>>(row_max, argmax, bits(logits), V,
                                                                Vp);
  TRIAD_CUDA_CHECK_LAUNCH();
}

template <typename Elem>
void softmax_partial_sums(cudaStream_t s, float* sum_exp, float* target_logit, const Elem* logits,
                          const float* row_max, const int32_t* targets, int N, int V, int Vp) {
  if (N <= 0) return;
  check_slice("softmax_partial_sums", V, Vp);
  partial_sums_kernel<<<N, kRowBlock, crossentropy::row_smem(), s>>>(
      sum_exp, target_logit, bits(logits), row_max, targets, V, Vp);
  TRIAD_CUDA_CHECK_LAUNCH();
}

template <typename Elem>
void crossentropy_backward_partial(cudaStream_t s, Elem* logits, const float* row_max,
                                   const float* sum_exp, const int32_t* targets, int N, int V,
                                   int Vp, float dloss_scale, float z_loss, float softcap) {
  if (N <= 0) return;
  check_slice("crossentropy_backward_partial", V, Vp);
  backward_partial_kernel<<<N, kRowBlock, crossentropy::row_smem(), s>>>(
      bits(logits), row_max, sum_exp, targets, V, Vp, dloss_scale, z_loss, softcap);
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
  fused_row_kernel<<<N, kRowBlock, crossentropy::row_smem(), s>>>(
      bits(logits), losses, correct, targets, V, Vp, dloss_scale, z_loss, log_z, softcap);
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
