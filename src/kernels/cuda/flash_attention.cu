// Fused causal flash attention, forward and backward (see flash_attention.cuh): the block
// programs of flash_attention_block.h run with DeviceThread, whose warp operations are the PTX
// instructions the programs were written for (mma.sync m16n8k16 bf16, ldmatrix, cp.async; sm_80
// and later). The same programs run on the CPU in test_flash_attention_emulated.
//
//   forward   grid (B·NH, ceil(T/64)), every head's heaviest query block first.
//   backward  (1) D = rowsum(dO ∘ O), one warp per (b, t, h) row, into the workspace;
//             (2) grid (B·NH, nkb): dK, dV of one key block over the query tiles after it;
//             (3) grid (B·NH, nqb): dQ of one query block (recomputing P and dP).
//             No atomics, fixed summation orders: bit-identical run to run.
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>

#include "cuda_common.cuh"
#include "flash_attention.cuh"
#include "flash_attention_block.h"
#include "flash_attention_mma.h"
#include "flash_attention_wgmma.h"
#include "triad/kernels/cuda_backend.h"

namespace triad::cuda {
namespace {

// The thread context of flash_attention_block.h on the GPU.
struct DeviceThread {
  __device__ __forceinline__ int thread() const { return int(threadIdx.x); }
  __device__ __forceinline__ int block_x() const { return int(blockIdx.x); }
  __device__ __forceinline__ int block_y() const { return int(blockIdx.y); }
  __device__ __forceinline__ unsigned char* smem() {
    extern __shared__ __align__(128) unsigned char dynamic_smem[];
    return dynamic_smem;
  }
  __device__ __forceinline__ void sync_threads() { __syncthreads(); }
  __device__ __forceinline__ float shfl_xor(float v, int mask) {
    return __shfl_xor_sync(0xffffffffu, v, mask);
  }
  __device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], const uint16_t* row) {
    const unsigned a = unsigned(__cvta_generic_to_shared(row));
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a));
  }
  __device__ __forceinline__ void ldsm_x4_t(uint32_t (&r)[4], const uint16_t* row) {
    const unsigned a = unsigned(__cvta_generic_to_shared(row));
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a));
  }
  __device__ __forceinline__ void mma(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                      uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
        "{%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
  __device__ __forceinline__ void cp_async16(void* dst, const void* src, bool valid) {
    const unsigned s = unsigned(__cvta_generic_to_shared(dst));
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(src),
                 "r"(valid ? 16 : 0)
                 : "memory");
  }
  __device__ __forceinline__ void cp_commit() {
    asm volatile("cp.async.commit_group;\n" ::: "memory");
  }
  template <int N>
  __device__ __forceinline__ void cp_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
  }
  __device__ __forceinline__ float exp2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
  }
  __device__ __forceinline__ float log2(float x) { return log2f(x); }
  __device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
    const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);  // .x (lo) in the low half
    return *reinterpret_cast<const uint32_t*>(&v);
  }
  __device__ __forceinline__ float bf16_float(uint16_t bits) {
    return __uint_as_float(uint32_t(bits) << 16);
  }
  // D (64×N over the warpgroup; d: this thread's N/2 floats) += A · B, B from a shared-memory
  // descriptor; A from one (ss, K-major) or from registers (rs). TransB: B is stored K×N with
  // N contiguous (MN-major) instead of N×K.
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
  template <int N, int TransB>
  __device__ __forceinline__ void wgmma_ss(float* d, uint64_t da, uint64_t db) {
    static_assert(N == 64 && TransB == 0, "only the m64n64k16 K-major product is instantiated");
    asm volatile(
        "{\n"
        ".reg .pred p;\n"
        "setp.ne.b32 p, %34, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
        "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, "
        "%19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, "
        "%32, %33, p, 1, 1, 0, 0;\n"
        "}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]),
          "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]),
          "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]),
          "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]),
          "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
        : "l"(da), "l"(db), "r"(1));
  }
  template <int N, int TransB>
  __device__ __forceinline__ void wgmma_rs(float* d, const uint32_t (&a)[4], uint64_t db) {
    static_assert((N == 64 || N == 128) && TransB == 1,
                  "only m64n64k16 / m64n128k16 with B MN-major");
    if constexpr (N == 64) {
      asm volatile(
          "{\n"
          ".reg .pred p;\n"
          "setp.ne.b32 p, %37, 0;\n"
          "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
          "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, "
          "%19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, "
          "{%32, %33, %34, %35}, %36, p, 1, 1, 1;\n"
          "}\n"
          : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]),
            "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]),
            "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]),
            "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]),
            "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
          : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(1));
    } else {
      asm volatile(
          "{\n"
          ".reg .pred p;\n"
          "setp.ne.b32 p, %69, 0;\n"
          "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
          "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, "
          "%19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, "
          "%36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, "
          "%53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, "
          "{%64, %65, %66, %67}, %68, p, 1, 1, 1;\n"
          "}\n"
          : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]),
            "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]),
            "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]),
            "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]),
            "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
            "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]),
            "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]),
            "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]),
            "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
            "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]),
            "+f"(d[62]), "+f"(d[63])
          : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(1));
    }
  }
  __device__ __forceinline__ void wgmma_fence() {
    asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
  }
  __device__ __forceinline__ void wgmma_commit() {
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
  }
  template <int N>
  __device__ __forceinline__ void wgmma_wait() {
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
  }
  __device__ __forceinline__ void fence_proxy_async() {
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
  }
#else
  // Built for an architecture without wgmma (sm_80, or sm_90 without the "a" features): the
  // launcher never selects these kernels there (it checks the binary's version first).
  template <int N, int TransB>
  __device__ __forceinline__ void wgmma_ss(float*, uint64_t, uint64_t) {
    __trap();
  }
  template <int N, int TransB>
  __device__ __forceinline__ void wgmma_rs(float*, const uint32_t (&)[4], uint64_t) {
    __trap();
  }
  __device__ __forceinline__ void wgmma_fence() {}
  __device__ __forceinline__ void wgmma_commit() {}
  template <int N>
  __device__ __forceinline__ void wgmma_wait() {}
  __device__ __forceinline__ void fence_proxy_async() {}
#endif
  // Keeps the compiler from moving accesses to v across this point (the registers of an
  // in-flight wgmma must not be touched before its wait).
  __device__ __forceinline__ void keep(float& v) { asm volatile("" : "+f"(v)::"memory"); }
  __device__ __forceinline__ void keep(uint32_t& v) { asm volatile("" : "+r"(v)::"memory"); }
  __device__ __forceinline__ uint32_t smem_address(const void* p) {
    return unsigned(__cvta_generic_to_shared(p));
  }
};

const uint16_t* bits(const bf16* p) { return reinterpret_cast<const uint16_t*>(p); }
uint16_t* bits(bf16* p) { return reinterpret_cast<uint16_t*>(p); }

template <class Tiles>
__global__ void __launch_bounds__(flash::kThreads)
    forward_kernel(uint16_t* __restrict__ out, float* __restrict__ lse,
                   const uint16_t* __restrict__ qkv, int T, int C, int NH, float scale_log2) {
  DeviceThread x;
  flash::forward_block<Tiles>(x, out, lse, qkv, T, C, NH, scale_log2);
}

template <int HD>
__global__ void __launch_bounds__(flash::kThreads)
    dot_kernel(float* __restrict__ Dv, const uint16_t* __restrict__ dout,
               const uint16_t* __restrict__ out, int B, int T, int NH) {
  DeviceThread x;
  flash::dot_block<HD>(x, Dv, dout, out, B, T, NH);
}

template <class Tiles>
__global__ void __launch_bounds__(flash::kThreads)
    dkdv_kernel(uint16_t* __restrict__ dqkv, const uint16_t* __restrict__ dout,
                const uint16_t* __restrict__ qkv, const float* __restrict__ lse,
                const float* __restrict__ Dv, int T, int C, int NH, float scale, float scale_log2,
                bool accumulate) {
  DeviceThread x;
  flash::dkdv_block<Tiles>(x, dqkv, dout, qkv, lse, Dv, T, C, NH, scale, scale_log2, accumulate);
}

template <class Tiles>
__global__ void __launch_bounds__(flash::kThreads)
    dq_kernel(uint16_t* __restrict__ dqkv, const uint16_t* __restrict__ dout,
              const uint16_t* __restrict__ qkv, const float* __restrict__ lse,
              const float* __restrict__ Dv, int T, int C, int NH, float scale, float scale_log2,
              bool accumulate) {
  DeviceThread x;
  flash::dq_block<Tiles>(x, dqkv, dout, qkv, lse, Dv, T, C, NH, scale, scale_log2, accumulate);
}

void check_shape(int B, int T, int C, int NH) {
  TRIAD_CHECK(B > 0 && T > 0, "flash attention: empty batch (B = ", B, ", T = ", T, ")");
  TRIAD_CHECK(NH > 0 && C % NH == 0, "flash attention: C = ", C, " is not a multiple of NH = ", NH);
  const int hd = C / NH;
  TRIAD_CHECK(hd == 64 || hd == 128, "flash attention: head dimension ", hd,
              " is not supported (64 or 128)");
  TRIAD_CHECK(T <= 65535 * flash::kTile, "flash attention: T = ", T, " is too long (at most ",
              65535 * flash::kTile, ")");
}

// Lets kernel k use `bytes` of dynamic shared memory (above the default 48 KB). The attribute
// belongs to the current device's context, so it is set once per device and kernel.
template <typename Kernel>
void allow_smem(Kernel k, size_t bytes) {
  constexpr int kMaxDevices = 64;
  static std::once_flag done[kMaxDevices];
  int dev = 0;
  TRIAD_CUDA_CHECK(cudaGetDevice(&dev));
  TRIAD_CHECK(dev >= 0 && dev < kMaxDevices, "flash attention: device ", dev, " out of range");
  std::call_once(done[dev], [&] {
    TRIAD_CUDA_CHECK(
        cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)));
  });
}

template <class Tiles>
void forward_with(bf16* out, float* lse, const bf16* qkv, int B, int T, int C, int NH,
                  cudaStream_t s) {
  constexpr size_t smem = flash::forward_smem<Tiles>();
  allow_smem(forward_kernel<Tiles>, smem);
  const flash::Launch l = flash::launch_shape(B, T, NH, Tiles::kHD);
  const dim3 grid(unsigned(l.blocks_x), unsigned(l.blocks_y));
  forward_kernel<Tiles>
      <<<grid, flash::kThreads, smem, s>>>(bits(out), lse, bits(qkv), T, C, NH, l.scale_log2);
  TRIAD_CUDA_CHECK_LAUNCH();
}

template <class Tiles>
void backward_with(bf16* dqkv, const bf16* dout, const bf16* qkv, const bf16* out, const float* lse,
                   float* Dv, int B, int T, int C, int NH, cudaStream_t s, bool accumulate) {
  constexpr int HD = Tiles::kHD;
  constexpr size_t dkdv_smem = flash::dkdv_smem<Tiles>(), dq_smem = flash::dq_smem<Tiles>();
  allow_smem(dkdv_kernel<Tiles>, dkdv_smem);
  allow_smem(dq_kernel<Tiles>, dq_smem);
  const flash::Launch l = flash::launch_shape(B, T, NH, HD);
  dot_kernel<HD>
      <<<unsigned(l.dot_blocks), flash::kThreads, 0, s>>>(Dv, bits(dout), bits(out), B, T, NH);
  TRIAD_CUDA_CHECK_LAUNCH();
  const dim3 grid(unsigned(l.blocks_x), unsigned(l.blocks_y));
  dkdv_kernel<Tiles><<<grid, flash::kThreads, dkdv_smem, s>>>(
      bits(dqkv), bits(dout), bits(qkv), lse, Dv, T, C, NH, l.scale, l.scale_log2, accumulate);
  TRIAD_CUDA_CHECK_LAUNCH();
  dq_kernel<Tiles><<<grid, flash::kThreads, dq_smem, s>>>(
      bits(dqkv), bits(dout), bits(qkv), lse, Dv, T, C, NH, l.scale, l.scale_log2, accumulate);
  TRIAD_CUDA_CHECK_LAUNCH();
}

}  // namespace

size_t flash_attention_workspace_floats(int B, int T, int C, int NH) {
  (void)C;
  return size_t(B) * NH * T;
}

const char* flash_kernel_name(FlashKernel k) {
  switch (k) {
    case FlashKernel::mma:
      return "mma";
    case FlashKernel::wgmma:
      return "wgmma";
    default:
      return "auto";
  }
}

namespace {

// Writes 1 where the code running on this device was compiled with the sm_90a features (the
// wgmma of DeviceThread), 0 where it is the __trap fallback (an sm_90 or PTX-only build).
__global__ void wgmma_compiled_kernel(int* out) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  *out = 1;
#else
  *out = 0;
#endif
}

// Whether the wgmma kernels can run on the current device: compute capability 9.0 and the code
// the runtime picked for it has the sm_90a features.
bool wgmma_runs_here() {
  constexpr int kMaxDevices = 64;
  static std::once_flag done[kMaxDevices];
  static bool runs[kMaxDevices] = {};
  int dev = 0;
  TRIAD_CUDA_CHECK(cudaGetDevice(&dev));
  TRIAD_CHECK(dev >= 0 && dev < kMaxDevices, "flash attention: device ", dev, " out of range");
  std::call_once(done[dev], [&] {
    int major = 0, minor = 0;
    TRIAD_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
    TRIAD_CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev));
    if (major == 9 && minor == 0) {
      int* flag = nullptr;
      int host = 0;
      TRIAD_CUDA_CHECK(cudaMalloc(&flag, sizeof(int)));
      wgmma_compiled_kernel<<<1, 1>>>(flag);
      TRIAD_CUDA_CHECK_LAUNCH();
      TRIAD_CUDA_CHECK(cudaMemcpy(&host, flag, sizeof(int), cudaMemcpyDeviceToHost));
      TRIAD_CUDA_CHECK(cudaFree(flag));
      runs[dev] = host == 1;
    }
  });
  return runs[dev];
}

}  // namespace

bool flash_wgmma_available() { return wgmma_runs_here(); }

FlashKernel flash_kernel_for_device(FlashKernel requested) {
  if (requested == FlashKernel::automatic) {
    if (const char* env = std::getenv("TRIAD_FLASH_KERNEL"); env && *env) {
      const std::string v = env;
      TRIAD_CHECK(v == "auto" || v == "mma" || v == "wgmma", "TRIAD_FLASH_KERNEL = '", v,
                  "' is not one of auto, mma, wgmma");
      if (v == "mma") requested = FlashKernel::mma;
      if (v == "wgmma") requested = FlashKernel::wgmma;
    }
  }
  if (requested == FlashKernel::mma) return requested;
  const bool wgmma = wgmma_runs_here();
  TRIAD_CHECK(wgmma || requested == FlashKernel::automatic,
              "flash attention: the wgmma kernel needs a compute capability 9.0 GPU and a build "
              "with sm_90a code (CMAKE_CUDA_ARCHITECTURES including 90a)");
  return wgmma ? FlashKernel::wgmma : FlashKernel::mma;
}

void flash_attention_forward(bf16* out, float* lse, const bf16* qkv, int B, int T, int C, int NH,
                             cudaStream_t s, FlashKernel kernel) {
  check_shape(B, T, C, NH);
  const bool wgmma = flash_kernel_for_device(kernel) == FlashKernel::wgmma;
  const bool hd64 = C / NH == 64;
  if (wgmma && hd64) forward_with<flash::WgmmaTiles<64>>(out, lse, qkv, B, T, C, NH, s);
  if (wgmma && !hd64) forward_with<flash::WgmmaTiles<128>>(out, lse, qkv, B, T, C, NH, s);
  if (!wgmma && hd64) forward_with<flash::MmaTiles<64>>(out, lse, qkv, B, T, C, NH, s);
  if (!wgmma && !hd64) forward_with<flash::MmaTiles<128>>(out, lse, qkv, B, T, C, NH, s);
}

void flash_attention_backward(bf16* dqkv, const bf16* dout, const bf16* qkv, const bf16* out,
                              const float* lse, float* workspace, int B, int T, int C, int NH,
                              cudaStream_t s, bool accumulate, FlashKernel kernel) {
  check_shape(B, T, C, NH);
  const bool wgmma = flash_kernel_for_device(kernel) == FlashKernel::wgmma;
  const bool hd64 = C / NH == 64;
  auto run = [&](auto tiles) {
    using Tiles = decltype(tiles);
    backward_with<Tiles>(dqkv, dout, qkv, out, lse, workspace, B, T, C, NH, s, accumulate);
  };
  if (wgmma && hd64) run(flash::WgmmaTiles<64>{});
  if (wgmma && !hd64) run(flash::WgmmaTiles<128>{});
  if (!wgmma && hd64) run(flash::MmaTiles<64>{});
  if (!wgmma && !hd64) run(flash::MmaTiles<128>{});
}

}  // namespace triad::cuda

namespace triad {
std::string cuda_flash_kernel() {
  return cuda::flash_kernel_name(cuda::flash_kernel_for_device(cuda::FlashKernel::automatic));
}
}  // namespace triad
