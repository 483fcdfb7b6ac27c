// The thread context of the kernels written as block programs (flash_attention_block.h,
// crossentropy_block.h) on the GPU: each operation is the CUDA built-in or the PTX instruction
// the program names. On the CPU, tests/support/simt_emulator.h provides the same interface.
// Internal to src/kernels/cuda; include only from .cu files.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "block_program.h"
#include "triad/core/fp8.h"

namespace triad::cuda {

// A kernel's fp32 or bf16 data as the block programs read it: fp32 as it is, bf16 as its bits
// (block_program.h's load and store).
template <typename Elem>
using BlockElem = std::conditional_t<std::is_same_v<Elem, __nv_bfloat16>, uint16_t, Elem>;
template <typename Elem>
__host__ __device__ __forceinline__ BlockElem<Elem>* bits(Elem* p) {
  return reinterpret_cast<BlockElem<Elem>*>(p);
}
template <typename Elem>
__host__ __device__ __forceinline__ const BlockElem<Elem>* bits(const Elem* p) {
  return reinterpret_cast<const BlockElem<Elem>*>(p);
}

// A grid-stride block program's launch as it takes it (the emulator passes its own launch's):
// the threads of a block, and of the whole grid (the loop's stride).
__device__ __forceinline__ int block_threads() { return int(blockDim.x); }
__device__ __forceinline__ size_t grid_threads() { return size_t(gridDim.x) * blockDim.x; }

struct DeviceThread {
  __device__ __forceinline__ int thread() const { return int(threadIdx.x); }
  __device__ __forceinline__ int block_x() const { return int(blockIdx.x); }
  __device__ __forceinline__ int block_y() const { return int(blockIdx.y); }
  __device__ __forceinline__ unsigned char* smem() {
    extern __shared__ __align__(128) unsigned char dynamic_smem[];
    return dynamic_smem;
  }
  __device__ __forceinline__ void sync_threads() { __syncthreads(); }
  template <class T>  // float, int or double
  __device__ __forceinline__ T shfl_xor(T v, int mask) {
    return __shfl_xor_sync(0xffffffffu, v, mask);
  }
  __device__ __forceinline__ Vec16 load16(const void* p) {
    const uint4 v = *static_cast<const uint4*>(p);
    return Vec16{{v.x, v.y, v.z, v.w}};
  }
  __device__ __forceinline__ void store16(void* p, const Vec16& v) {
    *static_cast<uint4*>(p) = make_uint4(v.w[0], v.w[1], v.w[2], v.w[3]);
  }
  // A 4-byte store to shared memory (a plain st.shared: the emulator tracks it for the proxy
  // fence wgmma needs before reading what ordinary stores wrote).
  __device__ __forceinline__ void store_shared32(void* p, uint32_t v) {
    *static_cast<uint32_t*>(p) = v;
  }
  // p[0] += a, p[1] += b in global memory, each atomically (p 8-byte aligned): one vector
  // atomic on sm_90 and later, two scalar ones before.
  __device__ __forceinline__ void atomic_add2(float* p, float a, float b) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    atomicAdd(reinterpret_cast<float2*>(p), make_float2(a, b));
#else
    atomicAdd(p, a);
    atomicAdd(p + 1, b);
#endif
  }
  // p[0], p[1] (p 8-byte aligned) through L2 only (ld.global.cg): data another block wrote.
  __device__ __forceinline__ void load_l2_2(const float* p, float& a, float& b) {
    const float2 v = __ldcg(reinterpret_cast<const float2*>(p));
    a = v.x;
    b = v.y;
  }
  // Spins until *p == v (an acquire load at GPU scope each time); traps after about 2^34 clock
  // cycles (a turn that never comes: a bug) instead of hanging the GPU.
  __device__ __forceinline__ void wait_equal(const int* p, int v) {
    const long long start = clock64();
    for (;;) {
      int seen;
      asm volatile("ld.acquire.gpu.global.b32 %0, [%1];\n" : "=r"(seen) : "l"(p) : "memory");
      if (seen == v) return;
      __nanosleep(32);
      if (clock64() - start > (1ll << 34)) __trap();
    }
  }
  __device__ __forceinline__ void store_release(int* p, int v) {
    asm volatile("st.release.gpu.global.b32 [%0], %1;\n" ::"l"(p), "r"(v) : "memory");
  }
  __device__ __forceinline__ void fence_device() { __threadfence(); }
  __device__ __forceinline__ int take_ticket(int* p) { return atomicAdd(p, 1); }
  __device__ __forceinline__ float exp(float x) { return expf(x); }
  __device__ __forceinline__ float tanh(float x) { return tanhf(x); }
  __device__ __forceinline__ float erf(float x) { return erff(x); }
  __device__ __forceinline__ double log(double x) { return ::log(x); }
  __device__ __forceinline__ double sqrt(double x) { return ::sqrt(x); }
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
  // The fp8 byte of v (round to nearest even, saturating to ±fp8_max, NaN kept); fp8x2: two, lo
  // in the low byte.
  __device__ __forceinline__ uint8_t fp8(float v, Fp8Format f) {
    return __nv_cvt_float_to_fp8(v, __NV_SATFINITE, interpretation(f));
  }
  __device__ __forceinline__ uint32_t fp8x2(float lo, float hi, Fp8Format f) {
    return uint32_t(
        __nv_cvt_float2_to_fp8x2(make_float2(lo, hi), __NV_SATFINITE, interpretation(f)));
  }
  static __device__ __forceinline__ __nv_fp8_interpretation_t interpretation(Fp8Format f) {
    return f == Fp8Format::e4m3 ? __NV_E4M3 : __NV_E5M2;
  }
  __device__ __forceinline__ void atomic_max(unsigned* p, unsigned v) { atomicMax(p, v); }
  __device__ __forceinline__ void store8(void* p, uint32_t lo, uint32_t hi) {
    *static_cast<uint2*>(p) = make_uint2(lo, hi);
  }
  __device__ __forceinline__ float bf16_float(uint16_t bits) {
    return __uint_as_float(uint32_t(bits) << 16);
  }
  // D (64×N over the warpgroup; d: this thread's N/2 floats) += A · B, B from a shared-memory
  // descriptor; A from one (ss) or from registers (rs). TransA / TransB: the operand is stored
  // MN-major (M or N contiguous within a core matrix) instead of K-major. The instantiations:
  // ss m64n64 K-major (S = Q·Kᵀ), ss m64n64 / m64n128 with both MN-major (dQ = dS·K from dSᵀ),
  // rs m64n64 / m64n128 with B MN-major (P·V), rs m64n64 with B K-major (S from held rows).
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
// The accumulator operands of an m64n64 (32 floats) or m64n128 (64 floats) wgmma.
#define TRIAD_WGMMA_D8(i)                                                                     \
  "+f"(d[i]), "+f"(d[i + 1]), "+f"(d[i + 2]), "+f"(d[i + 3]), "+f"(d[i + 4]), "+f"(d[i + 5]), \
      "+f"(d[i + 6]), "+f"(d[i + 7])
#define TRIAD_WGMMA_D32 TRIAD_WGMMA_D8(0), TRIAD_WGMMA_D8(8), TRIAD_WGMMA_D8(16), TRIAD_WGMMA_D8(24)
#define TRIAD_WGMMA_D64 \
  TRIAD_WGMMA_D32, TRIAD_WGMMA_D8(32), TRIAD_WGMMA_D8(40), TRIAD_WGMMA_D8(48), TRIAD_WGMMA_D8(56)
#define TRIAD_WGMMA_R32                                                                         \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, " \
  "%20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}"
#define TRIAD_WGMMA_R64                                                                         \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, " \
  "%20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, "  \
  "%38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, "  \
  "%56, %57, %58, %59, %60, %61, %62, %63}"
  template <int N, int TransA, int TransB>
  __device__ __forceinline__ void wgmma_ss(float* d, uint64_t da, uint64_t db) {
    static_assert((N == 64 && TransA == 0 && TransB == 0) ||
                      ((N == 64 || N == 128) && TransA == 1 && TransB == 1),
                  "only m64n64k16 K-major and m64n64k16 / m64n128k16 MN-major are instantiated");
    if constexpr (N == 64 && TransA == 0) {
      asm volatile(
          "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
          "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 " TRIAD_WGMMA_R32
          ", %32, %33, p, 1, 1, 0, 0;\n}\n"
          : TRIAD_WGMMA_D32
          : "l"(da), "l"(db), "r"(1));
    } else if constexpr (N == 64) {
      asm volatile(
          "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
          "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 " TRIAD_WGMMA_R32
          ", %32, %33, p, 1, 1, 1, 1;\n}\n"
          : TRIAD_WGMMA_D32
          : "l"(da), "l"(db), "r"(1));
    } else {
      asm volatile(
          "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
          "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 " TRIAD_WGMMA_R64
          ", %64, %65, p, 1, 1, 1, 1;\n}\n"
          : TRIAD_WGMMA_D64
          : "l"(da), "l"(db), "r"(1));
    }
  }
  template <int N, int TransB>
  __device__ __forceinline__ void wgmma_rs(float* d, const uint32_t (&a)[4], uint64_t db) {
    static_assert(((N == 64 || N == 128) && TransB == 1) || (N == 64 && TransB == 0),
                  "only m64n64k16 / m64n128k16 with B MN-major, m64n64k16 with B K-major");
    if constexpr (N == 64 && TransB == 0) {
      asm volatile(
          "{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
          "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 " TRIAD_WGMMA_R32
          ", {%32, %33, %34, %35}, %36, p, 1, 1, 0;\n}\n"
          : TRIAD_WGMMA_D32
          : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(1));
    } else if constexpr (N == 64) {
      asm volatile(
          "{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
          "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 " TRIAD_WGMMA_R32
          ", {%32, %33, %34, %35}, %36, p, 1, 1, 1;\n}\n"
          : TRIAD_WGMMA_D32
          : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(1));
    } else {
      asm volatile(
          "{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
          "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 " TRIAD_WGMMA_R64
          ", {%64, %65, %66, %67}, %68, p, 1, 1, 1;\n}\n"
          : TRIAD_WGMMA_D64
          : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(1));
    }
  }
#undef TRIAD_WGMMA_D8
#undef TRIAD_WGMMA_D32
#undef TRIAD_WGMMA_D64
#undef TRIAD_WGMMA_R32
#undef TRIAD_WGMMA_R64
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
  template <int N, int TransA, int TransB>
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
  // mbarriers and the bulk tensor copy (sm_90; the launcher runs the kernels that use them only
  // where wgmma runs). bar: an 8-byte aligned mbarrier in shared memory.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  __device__ __forceinline__ void mbarrier_init(uint64_t* bar, uint32_t arrivals) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(smem_address(bar)), "r"(arrivals)
                 : "memory");
  }
  // Orders this thread's mbarrier.init before what the copy engine and other threads do with it.
  __device__ __forceinline__ void fence_barrier_init() {
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  }
  __device__ __forceinline__ void mbarrier_expect_tx(uint64_t* bar, uint32_t bytes) {
    asm volatile(
        "mbarrier.expect_tx.relaxed.cta.shared::cta.b64 [%0], %1;\n" ::"r"(smem_address(bar)),
        "r"(bytes)
        : "memory");
  }
  __device__ __forceinline__ void mbarrier_arrive(uint64_t* bar) {
    asm volatile("{\n.reg .b64 state;\nmbarrier.arrive.shared::cta.b64 state, [%0];\n}\n" ::"r"(
                     smem_address(bar))
                 : "memory");
  }
  // Returns once the phase of parity `parity` has completed. A phase that never completes (bytes
  // announced that no copy delivers: a bug) traps after about 2^34 clock cycles (several seconds)
  // instead of hanging the GPU: the launch fails and the caller's error check reports it.
  __device__ __forceinline__ void mbarrier_wait(uint64_t* bar, uint32_t parity) {
    const uint32_t a = smem_address(bar);
    const long long start = clock64();
    for (uint32_t polls = 1;; ++polls) {
      uint32_t done;
      asm volatile(
          "{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
          "selp.u32 %0, 1, 0, p;\n}\n"
          : "=r"(done)
          : "r"(a), "r"(parity)
          : "memory");
      if (done) return;
      if (polls % 1024 == 0 && clock64() - start > (1ll << 34)) __trap();
    }
  }
  // The box at coordinates (c0, c1, c2) of the tensor map at `map` (the address of a
  // __grid_constant__ kernel parameter) → shared memory at dst (128-byte aligned, 1 KB with the
  // 128-byte swizzle); its bytes
  // complete on bar.
  __device__ __forceinline__ void tma_load_3d(void* dst, const void* map, int c0, int c1, int c2,
                                              uint64_t* bar) {
    asm volatile(
        "cp.async.bulk.tensor.3d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], "
        "[%1, {%2, %3, %4}], [%5];\n" ::"r"(smem_address(dst)),
        "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(c2), "r"(smem_address(bar))
        : "memory");
  }
#else
  __device__ __forceinline__ void mbarrier_init(uint64_t*, uint32_t) { __trap(); }
  __device__ __forceinline__ void fence_barrier_init() { __trap(); }
  __device__ __forceinline__ void mbarrier_expect_tx(uint64_t*, uint32_t) { __trap(); }
  __device__ __forceinline__ void mbarrier_arrive(uint64_t*) { __trap(); }
  __device__ __forceinline__ void mbarrier_wait(uint64_t*, uint32_t) { __trap(); }
  __device__ __forceinline__ void tma_load_3d(void*, const void*, int, int, int, uint64_t*) {
    __trap();
  }
#endif
  // Keeps the compiler from moving accesses to v across this point (the registers of an
  // in-flight wgmma must not be touched before its wait).
  __device__ __forceinline__ void keep(float& v) { asm volatile("" : "+f"(v)::"memory"); }
  __device__ __forceinline__ void keep(uint32_t& v) { asm volatile("" : "+r"(v)::"memory"); }
  __device__ __forceinline__ uint32_t smem_address(const void* p) {
    return unsigned(__cvta_generic_to_shared(p));
  }
};

}  // namespace triad::cuda
