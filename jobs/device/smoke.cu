// nvcc smoke test for the GPU machine (jobs/device/check.sh): proves that nvcc there builds
// sm_90a code that runs. Build: nvcc -std=c++20 -O2 -gencode arch=compute_90a,code=sm_90a
// smoke.cu -o smoke. Prints the device, checks a kernel's result element by element on fresh
// random inputs, and reports whether the arch-specific (90a) feature macro was on in device code.
#include <cuda_runtime.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#define CHECK(call)                                                           \
  do {                                                                        \
    cudaError_t e_ = (call);                                                  \
    if (e_ != cudaSuccess) {                                                  \
      std::printf("smoke: FAIL %s: %s (%s)\n", #call, cudaGetErrorString(e_), \
                  cudaGetErrorName(e_));                                      \
      return 1;                                                               \
    }                                                                         \
  } while (0)

// y[i] = a*x[i] + y[i]; one block also sums x with warp shuffles (out[0]) and records the
// arch-feature macro (out[1]).
__global__ void saxpy_and_sum(int n, float a, const float* __restrict__ x, float* __restrict__ y,
                              float* __restrict__ out) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) y[i] = a * x[i] + y[i];
  if (blockIdx.x == 0) {
    float s = 0.f;
    for (int j = threadIdx.x; j < n; j += blockDim.x) s += x[j];
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    __shared__ float warp_sums[32];
    if ((threadIdx.x & 31) == 0) warp_sums[threadIdx.x >> 5] = s;
    __syncthreads();
    if (threadIdx.x == 0) {
      float t = 0.f;
      for (int w = 0; w < int(blockDim.x >> 5); ++w) t += warp_sums[w];
      out[0] = t;
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
      out[1] = 90.5f;  // compiled for sm_90a (wgmma/setmaxnreg available)
#elif defined(__CUDA_ARCH__)
      out[1] = float(__CUDA_ARCH__) / 10.f;
#endif
    }
  }
}

int main() {
  int ndev = 0;
  CHECK(cudaGetDeviceCount(&ndev));
  cudaDeviceProp p{};
  CHECK(cudaGetDeviceProperties(&p, 0));
  int rt = 0, drv = 0;
  CHECK(cudaRuntimeGetVersion(&rt));
  CHECK(cudaDriverGetVersion(&drv));
  std::printf(
      "smoke: %d device(s); %s cc %d.%d, %d SMs, L2 %d MB, smem/block optin %zu KB; "
      "runtime %d driver %d\n",
      ndev, p.name, p.major, p.minor, p.multiProcessorCount, p.l2CacheSize >> 20,
      p.sharedMemPerBlockOptin >> 10, rt, drv);

  const int n = 1 << 20;
  std::mt19937 rng(std::random_device{}());
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  std::vector<float> x(n), y(n), got(n);
  for (int i = 0; i < n; ++i) x[i] = u(rng), y[i] = u(rng);
  const float a = u(rng);
  float *dx, *dy, *dout;
  CHECK(cudaMalloc(&dx, n * sizeof(float)));
  CHECK(cudaMalloc(&dy, n * sizeof(float)));
  CHECK(cudaMalloc(&dout, 2 * sizeof(float)));
  CHECK(cudaMemcpy(dx, x.data(), n * sizeof(float), cudaMemcpyHostToDevice));
  CHECK(cudaMemcpy(dy, y.data(), n * sizeof(float), cudaMemcpyHostToDevice));
  const float poison[2] = {NAN, NAN};
  CHECK(cudaMemcpy(dout, poison, sizeof poison, cudaMemcpyHostToDevice));
  saxpy_and_sum<<<(n + 255) / 256, 256>>>(n, a, dx, dy, dout);
  CHECK(cudaGetLastError());
  CHECK(cudaDeviceSynchronize());
  float out[2];
  CHECK(cudaMemcpy(got.data(), dy, n * sizeof(float), cudaMemcpyDeviceToHost));
  CHECK(cudaMemcpy(out, dout, sizeof out, cudaMemcpyDeviceToHost));

  int bad = 0;
  double ref_sum = 0;
  for (int i = 0; i < n; ++i) {
    ref_sum += x[i];
    const float want = a * x[i] + y[i];
    if (!(std::fabs(got[i] - want) <= 1e-6f * (1.f + std::fabs(want)))) ++bad;
  }
  const bool sum_ok = std::fabs(out[0] - ref_sum) <= 1e-3 * (1.0 + std::sqrt(double(n)));
  std::printf("smoke: saxpy %d/%d wrong; sum %.4f vs %.4f %s; device code arch %.1f%s\n", bad, n,
              out[0], ref_sum, sum_ok ? "ok" : "WRONG", out[1],
              out[1] == 90.5f ? " (sm_90a features on)" : "");
  CHECK(cudaFree(dx));
  CHECK(cudaFree(dy));
  CHECK(cudaFree(dout));
  const bool ok = bad == 0 && sum_ok;
  std::printf("smoke: %s\n", ok ? "OK" : "FAIL");
  return ok ? 0 : 1;
}
