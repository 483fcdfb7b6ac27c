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
#include <mutex>

#include "cuda_common.cuh"
#include "flash_attention.cuh"
#include "flash_attention_block.h"
#include "flash_attention_mma.h"

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

void flash_attention_forward(bf16* out, float* lse, const bf16* qkv, int B, int T, int C, int NH,
                             cudaStream_t s) {
  check_shape(B, T, C, NH);
  if (C / NH == 64) {
    forward_with<flash::MmaTiles<64>>(out, lse, qkv, B, T, C, NH, s);
  } else {
    forward_with<flash::MmaTiles<128>>(out, lse, qkv, B, T, C, NH, s);
  }
}

void flash_attention_backward(bf16* dqkv, const bf16* dout, const bf16* qkv, const bf16* out,
                              const float* lse, float* workspace, int B, int T, int C, int NH,
                              cudaStream_t s, bool accumulate) {
  check_shape(B, T, C, NH);
  if (C / NH == 64) {
    backward_with<flash::MmaTiles<64>>(dqkv, dout, qkv, out, lse, workspace, B, T, C, NH, s,
                                       accumulate);
  } else {
    backward_with<flash::MmaTiles<128>>(dqkv, dout, qkv, out, lse, workspace, B, T, C, NH, s,
                                        accumulate);
  }
}

}  // namespace triad::cuda
