// Optimizer updates, one fused elementwise pass over parameters, gradients and state (PyTorch
// semantics; the formulas are spelled out in backend.h and match the CPU backend's): the block
// programs of optimizer_block.h (test_optimizer_emulated runs them on the CPU).
#include <algorithm>
#include <vector>

#include "cuda_ops.cuh"
#include "device_thread.cuh"
#include "optimizer_block.h"

namespace triad::cuda {
namespace {

// The block programs of optimizer_block.h, launched with DeviceThread: kBlock threads per block.

__global__ void adamw_kernel(float* p, const float* g, float* m, float* v, size_t n, float lr,
                             float beta1, float beta2, float eps, float wd, float bc1, float bc2,
                             bf16* copy, float grad_scale) {
  DeviceThread x;
  optimizer_block::adamw(x, p, g, m, v, n, lr, beta1, beta2, eps, wd, bc1, bc2, bits(copy),
                         grad_scale, block_threads(), grid_threads());
}

__global__ void sgd_kernel(float* p, const float* g, float* buf, size_t n, float lr, float momentum,
                           float wd, bf16* copy, float grad_scale) {
  DeviceThread x;
  optimizer_block::sgd(x, p, g, buf, n, lr, momentum, wd, bits(copy), grad_scale, block_threads(),
                       grid_threads());
}

__global__ void lion_kernel(float* p, const float* g, float* m, size_t n, float lr, float beta1,
                            float beta2, float wd, bf16* copy, float grad_scale) {
  DeviceThread x;
  optimizer_block::lion(x, p, g, m, n, lr, beta1, beta2, wd, bits(copy), grad_scale,
                        block_threads(), grid_threads());
}

__global__ void muon_momentum_kernel(float* buf, float* u, const float* g, size_t n, float mu,
                                     bool nesterov, float grad_scale) {
  DeviceThread x;
  optimizer_block::muon_momentum(x, buf, u, g, n, mu, nesterov, grad_scale, block_threads(),
                                 grid_threads());
}

__global__ void muon_apply_kernel(float* p, const float* o, size_t n, float lr, float wd,
                                  float scale, bf16* copy) {
  DeviceThread x;
  optimizer_block::muon_apply(x, p, o, n, lr, wd, scale, bits(copy), block_threads(),
                              grid_threads());
}

__global__ void adamw_runs_kernel(float* p, const float* g, float* m, float* v,
                                  const Backend::UpdateRun* runs, int nruns, size_t total, float lr,
                                  float beta1, float beta2, float eps, float bc1, float bc2,
                                  bf16* copy, float grad_scale) {
  DeviceThread x;
  optimizer_block::adamw_runs(x, p, g, m, v, runs, nruns, total, lr, beta1, beta2, eps, bc1, bc2,
                              bits(copy), grad_scale, block_threads(), grid_threads());
}

}  // namespace

void adamw_update_runs(cudaStream_t s, std::vector<Backend::UpdateRun>& runs_host,
                       DeviceScratch& runs_device, float* p, const float* g, float* m, float* v,
                       const Backend::UpdateRun* runs, size_t nruns, float lr, float beta1,
                       float beta2, float eps, float bc1, float bc2, bf16* copy, float grad_scale) {
  if (nruns == 0) return;
  auto same = [](const Backend::UpdateRun& a, const Backend::UpdateRun& b) {
    return a.begin == b.begin && a.end == b.end && a.wd == b.wd &&
           a.lr_scale == b.lr_scale;  // fields, not padding bytes
  };
  const bool cached =
      runs_host.size() == nruns && std::equal(runs, runs + nruns, runs_host.begin(), same);
  auto* table = runs_device.get_as<Backend::UpdateRun>(nruns, s);
  if (!cached) {
    // Each time the table differs from the last one uploaded: an optimizer's is fixed but for
    // optim.weight_decay_schedule's wd (new each step; the host already waited for the step's
    // norm), and a mixture's expert optimizer brings its own. Ordered on s after the kernels
    // that may still read the old table; a pageable source makes the call return once it is
    // copied.
    for (size_t r = 0; r < nruns; ++r)
      TRIAD_CHECK(runs[r].begin < runs[r].end && (r == 0 || runs[r - 1].end <= runs[r].begin),
                  "adamw_update_runs: runs must be non-empty, sorted and disjoint (run ", r, ")");
    runs_host.clear();  // stays empty if the upload fails
    TRIAD_CUDA_CHECK(cudaMemcpyAsync(table, runs, nruns * sizeof(Backend::UpdateRun),
                                     cudaMemcpyHostToDevice, s));
    runs_host.assign(runs, runs + nruns);
  }
  size_t total = 0;
  for (size_t r = 0; r < nruns; ++r) total = std::max(total, runs[r].end);
  if (total == 0) return;
  adamw_runs_kernel<<<grid_for(total), kBlock, 0, s>>>(
      p, g, m, v, table, int(nruns), total, lr, beta1, beta2, eps, bc1, bc2, copy, grad_scale);
  TRIAD_CUDA_CHECK_LAUNCH();
}

void adamw_update(cudaStream_t s, float* p, const float* g, float* m, float* v, size_t n, float lr,
                  float beta1, float beta2, float eps, float wd, float bc1, float bc2, bf16* copy,
                  float grad_scale) {
  if (n == 0) return;
  adamw_kernel<<<grid_for(n), kBlock, 0, s>>>(p, g, m, v, n, lr, beta1, beta2, eps, wd, bc1, bc2,
                                              copy, grad_scale);
  TRIAD_CUDA_CHECK_LAUNCH();
}

void sgd_update(cudaStream_t s, float* p, const float* g, float* buf, size_t n, float lr,
                float momentum, float wd, bf16* copy, float grad_scale) {
  if (n == 0) return;
  sgd_kernel<<<grid_for(n), kBlock, 0, s>>>(p, g, buf, n, lr, momentum, wd, copy, grad_scale);
  TRIAD_CUDA_CHECK_LAUNCH();
}

void lion_update(cudaStream_t s, float* p, const float* g, float* m, size_t n, float lr,
                 float beta1, float beta2, float wd, bf16* copy, float grad_scale) {
  if (n == 0) return;
  lion_kernel<<<grid_for(n), kBlock, 0, s>>>(p, g, m, n, lr, beta1, beta2, wd, copy, grad_scale);
  TRIAD_CUDA_CHECK_LAUNCH();
}

void muon_momentum(cudaStream_t s, float* buf, float* u, const float* g, size_t n, float mu,
                   bool nesterov, float grad_scale) {
  if (n == 0) return;
  muon_momentum_kernel<<<grid_for(n), kBlock, 0, s>>>(buf, u, g, n, mu, nesterov, grad_scale);
  TRIAD_CUDA_CHECK_LAUNCH();
}

void muon_apply(cudaStream_t s, float* p, const float* o, size_t n, float lr, float wd, float scale,
                bf16* copy) {
  if (n == 0) return;
  muon_apply_kernel<<<grid_for(n), kBlock, 0, s>>>(p, o, n, lr, wd, scale, copy);
  TRIAD_CUDA_CHECK_LAUNCH();
}

}  // namespace triad::cuda
