// FP8 linear layers on the GPU (backend.h's absmax / matmul_forward_fp8 / matmul_backward_fp8;
// cpu_fp8.cpp is the reference): each operand is quantized by a kernel here, at the tensorwise
// power-of-two scale s = fp8_scale(amax, format) computed in the kernel from the device amax
// (core/fp8.h, shared with the CPU), and the product runs on cuBLASLt's FP8 tensor-core kernels
// (LtMatmul, cuda_matmul_lt.cu) with fp32 accumulation, which multiply the fp32 sums by 1/s of
// both operands (the A/B scale pointers). Quantization: __nv_cvt_float_to_fp8(x·s, SATFINITE):
// round to nearest even, saturating to ±fp8_max, NaN kept: fp8_round's rounding bit for bit
// (x·s is exact, s a power of two). So the GPU computes what the CPU emulates, up to the order of
// the fp32 sums. The operand kernels (absmax, the casts) are the block programs of fp8_block.h,
// which the CPU tests run through the SIMT emulator (test_fp8_emulated).
//
// cuBLASLt's FP8 rules (cuBLAS documentation, cublasLtMatmul, "FP8"; cublasLt.h; the same
// choices as Transformer Engine's cublaslt_gemm.cu):
//  - compute type CUBLAS_COMPUTE_32F, scale type CUDA_R_32F;
//  - on Hopper (sm_90) and Ada only the "TN" form: op(A) = T, op(B) = N, i.e. both operands
//    K-major (the inner dimension contiguous); later GPUs take any form;
//  - A e4m3 or e5m2 and B e4m3 or e5m2 but not both e5m2; D bf16 with C bf16 (β = 1 with C = D
//    accumulates), D fp32 with C fp32; with D bf16 the BIAS epilogue takes a bf16 bias;
//  - 16-byte aligned pointers and leading dimensions that are multiples of 16 bytes (the
//    caller's IC and OC multiples of 16; N, a leading dimension of the weight gradient's
//    transposed operands only, is padded there to Np, a multiple of 16, with zero columns, so
//    that a product takes any number of rows: each expert's, model.moe_experts);
//  - CUBLASLT_MATMUL_DESC_FAST_ACCUM (default 0) kept off: partial sums promoted to fp32.
//
// Row-major [R, K] = column-major K×R; the three products, each in the TN form:
//   forward  out[N,OC] = inp·Wᵀ:  m = OC, n = N, k = IC; A = W (col-major IC×OC, ld IC, op T),
//            B = inp (IC×N, ld IC); D bf16 OC×N, ld OC; bias by the BIAS epilogue.
//   dinp[N,IC] (+)= dout·W:      m = IC, n = N, k = OC; A = Wᵀ (a transposed cast: row-major
//            [IC,OC] = col-major OC×IC, ld OC, op T), B = dout e5m2 (OC×N, ld OC); D bf16,
//            β = 1 for accumulate (round(old + product), as the bf16 op).
//   dW[OC,IC] += doutᵀ·inp:      m = IC, n = OC, k = Np; A = inpᵀ (row-major [IC,Np] =
//            col-major Np×IC, ld Np, op T), B = doutᵀ e5m2 (row-major [OC,Np] = col-major Np×OC,
//            ld Np), their columns N..Np zeros (adding nothing); D fp32 IC×OC, ld IC, β = 1.
//   dbias += column sums of the bf16 dout (not quantized): column_sum_accumulate.
//
// Memory: the quantized operands live in one DeviceScratch of the backend (grown on demand, in
// practice at the first step; nothing here is captured into CUDA graphs): 256 bytes of inverse
// scales, then two operand buffers. The backward reuses them for its two products one after the
// other (stream order), so it needs Np·OC + max(OC·IC, Np·IC) bytes, the forward N·IC + OC·IC.
//
// Determinism: the casts are elementwise, absmax is a maximum (order-free; atomicMax on the bits),
// the products run the cached cuBLASLt algorithm and the bias gradient is the deterministic
// column sum.
#include <cuda_fp8.h>

#include <algorithm>

#include "cuda_ops.cuh"
#include "device_thread.cuh"
#include "fp8_block.h"
#include "triad/core/fp8.h"

namespace triad::cuda {
namespace {

using fp8 = __nv_fp8_storage_t;  // one byte, e4m3 or e5m2 by context
constexpr cudaDataType_t cuda_type(Fp8Format f) {
  return f == Fp8Format::e4m3 ? CUDA_R_8F_E4M3 : CUDA_R_8F_E5M2;
}

// ---- operand kernels: the block programs of fp8_block.h ------------------------------------

__global__ void absmax_kernel(unsigned* out, const uint16_t* x, size_t n, bool vec) {
  DeviceThread t;
  fp8_block::absmax(t, out, x, n, vec, block_threads(), grid_threads());
}

__global__ void absmax_segments_kernel(unsigned* out, size_t out_stride, const uint16_t* x,
                                       size_t width, fp8_block::RowSegments rows, bool vec) {
  DeviceThread t;
  fp8_block::absmax_segments(t, out, out_stride, x, width, rows, vec, block_threads(),
                             grid_threads());
}

template <Fp8Format F>
__global__ void cast_kernel(fp8* dst, float* inv_scale, const uint16_t* src, size_t n,
                            const float* amax, bool vec) {
  DeviceThread t;
  fp8_block::cast(t, dst, inv_scale, src, n, amax, F, vec, block_threads(), grid_threads());
}

template <Fp8Format F>
__global__ void __launch_bounds__(fp8_block::kTransposeThreads)
    cast_transpose_kernel(fp8* dst, float* inv_scale, const uint16_t* src, int R, int C, int ld,
                          const float* amax) {
  DeviceThread t;
  fp8_block::cast_transposed(t, dst, inv_scale, src, R, C, ld, amax, F);
}

template <Fp8Format F>
void cast(cudaStream_t s, fp8* dst, float* inv_scale, const bf16* src, size_t n,
          const float* amax) {
  const bool vec = pointer_alignment(src) >= 16 && pointer_alignment(dst) >= 8;
  cast_kernel<F><<<grid_for(std::max<size_t>(vec ? n / 8 : n, 1)), kBlock, 0, s>>>(
      dst, inv_scale, bits(src), n, amax, vec);
  TRIAD_CUDA_CHECK_LAUNCH();
}

// src row-major [R, C] → dst row-major [C, ld], zeros in columns [R, ld).
template <Fp8Format F>
void cast_transposed(cudaStream_t s, fp8* dst, float* inv_scale, const bf16* src, int R, int C,
                     int ld, const float* amax) {
  const dim3 grid((ld + fp8_block::kTile - 1) / fp8_block::kTile,
                  (C + fp8_block::kTile - 1) / fp8_block::kTile);
  TRIAD_CHECK(grid.y <= 65535u, "cuda fp8: a transposed cast of ", C, " columns is too wide");
  cast_transpose_kernel<F><<<grid, fp8_block::kTransposeThreads, fp8_block::transpose_smem(), s>>>(
      dst, inv_scale, bits(src), R, C, ld, amax);
  TRIAD_CUDA_CHECK_LAUNCH();
}

// ---- workspace and products -------------------------------------------------------------------
// The backend's FP8 scratch carved into the inverse scales of a product's A and B operands
// (inv[0], inv[1]) and two operand buffers, each 256-byte aligned.
struct Operands {
  float* inv;
  fp8* a;
  fp8* b;
};

Operands operands(DeviceScratch& scratch, cudaStream_t s, size_t a_bytes, size_t b_bytes) {
  constexpr size_t kAlign = 256;
  const size_t a_padded = (a_bytes + kAlign - 1) / kAlign * kAlign;
  auto* p = static_cast<unsigned char*>(scratch.get(kAlign + a_padded + b_bytes, s));
  return {reinterpret_cast<float*>(p), p + kAlign, p + kAlign + a_padded};
}

void check_shape(const char* op, int N, int IC, int OC) {
  TRIAD_CHECK(N >= 0 && IC >= 0 && OC >= 0 && IC % 16 == 0 && OC % 16 == 0, "cuda ", op,
              ": IC and OC must be multiples of 16 for the FP8 products; got N=", N, " IC=", IC,
              " OC=", OC);
}

int padded_rows(int N) { return (N + 15) / 16 * 16; }

// The TN product D = (1/s_a)(1/s_b)·op_T(A)·B + β·D of quantized operands (scales in inv).
LtGemm fp8_gemm(const Operands& q, Fp8Format fa, Fp8Format fb, int m, int n, int k, void* d,
                cudaDataType_t d_type, float beta) {
  return LtGemm{.trans_a = CUBLAS_OP_T,
                .trans_b = CUBLAS_OP_N,
                .m = m,
                .n = n,
                .k = k,
                .a = q.a,
                .lda = k,
                .b = q.b,
                .ldb = k,
                .a_type = cuda_type(fa),
                .b_type = cuda_type(fb),
                .a_scale = q.inv,
                .b_scale = q.inv + 1,
                .d = d,
                .d_type = d_type,
                .ldd = m,
                .beta = beta};
}

}  // namespace

void absmax(cudaStream_t s, float* out, const bf16* x, size_t n) {
  TRIAD_CUDA_CHECK(cudaMemsetAsync(out, 0, sizeof(float), s));
  if (n == 0) return;
  const bool vec = pointer_alignment(x) >= 16;
  absmax_kernel<<<grid_for(std::max<size_t>(vec ? n / 8 : n, 1)), kBlock, fp8_block::absmax_smem(),
                  s>>>(reinterpret_cast<unsigned*>(out), bits(x), n, vec);
  TRIAD_CUDA_CHECK_LAUNCH();
}

void absmax_rows(cudaStream_t s, float* out, size_t out_stride, const bf16* x, size_t width,
                 const int64_t* begin, const int64_t* end, int segments) {
  if (segments <= 0) return;
  // Every segment's maximum zeroed first: one strided memset (a float each, out_stride apart).
  TRIAD_CUDA_CHECK(
      cudaMemset2DAsync(out, out_stride * sizeof(float), 0, sizeof(float), size_t(segments), s));
  const bool vec = pointer_alignment(x) >= 16 && width % 8 == 0;
  for (int first = 0; first < segments; first += fp8_block::kMaxSegments) {
    const int n = std::min(segments - first, fp8_block::kMaxSegments);
    fp8_block::RowSegments rows{};
    size_t most = 0;  // the longest segment's values, which sets the grid's x
    for (int i = 0; i < n; ++i) {
      const int64_t b = begin[first + i], e = end[first + i];
      TRIAD_CHECK(b >= 0 && b <= e && e <= int64_t(UINT32_MAX),
                  "internal error: absmax_rows' segment ", first + i, " is rows [", b, ", ", e,
                  ")");
      rows.begin[i] = uint32_t(b);
      rows.end[i] = uint32_t(e);
      most = std::max(most, size_t(e - b) * width);
    }
    if (most == 0) continue;
    const dim3 grid(grid_for(std::max<size_t>(vec ? most / 8 : most, 1)), unsigned(n));
    absmax_segments_kernel<<<grid, kBlock, fp8_block::absmax_smem(), s>>>(
        reinterpret_cast<unsigned*>(out + size_t(first) * out_stride), out_stride, bits(x), width,
        rows, vec);
    TRIAD_CUDA_CHECK_LAUNCH();
  }
}

void matmul_forward_fp8(cudaStream_t s, LtMatmul& lt, DeviceScratch& fp8_scratch, bf16* out,
                        const bf16* inp, const bf16* weight, const bf16* bias, int N, int IC,
                        int OC, const float* amax) {
  check_shape("matmul_forward_fp8", N, IC, OC);
  if (N == 0 || OC == 0) return;
  if (IC == 0) {  // no product: out = bias (or 0), as the bf16 op writes it
    matmul_forward(s, lt, out, inp, weight, bias, N, IC, OC);
    return;
  }
  const Operands q = operands(fp8_scratch, s, size_t(OC) * IC, size_t(N) * IC);
  cast<Fp8Format::e4m3>(s, q.a, q.inv, weight, size_t(OC) * IC, amax + 1);
  cast<Fp8Format::e4m3>(s, q.b, q.inv + 1, inp, size_t(N) * IC, amax + 0);
  LtGemm g = fp8_gemm(q, Fp8Format::e4m3, Fp8Format::e4m3, OC, N, IC, out, CUDA_R_16BF, 0.0f);
  g.bias = bias;
  g.epilogue = bias != nullptr ? CUBLASLT_EPILOGUE_BIAS : CUBLASLT_EPILOGUE_DEFAULT;
  lt.run(s, g);
}

void matmul_backward_fp8(cudaStream_t s, LtMatmul& lt, DeviceScratch& fp8_scratch,
                         DeviceScratch& scratch, bf16* dinp, float* dweight, float* dbias,
                         const bf16* dout, const bf16* inp, const bf16* weight, int N, int IC,
                         int OC, const float* amax, bool accumulate) {
  check_shape("matmul_backward_fp8", N, IC, OC);
  if (N == 0 || OC == 0) return;
  if (dbias != nullptr) column_sum_accumulate(s, scratch, dbias, dout, N, OC);
  if (IC == 0 || (dinp == nullptr && dweight == nullptr)) return;
  const int Np = dweight != nullptr ? padded_rows(N) : N;
  const size_t a_bytes =
      std::max(dinp != nullptr ? size_t(OC) * IC : 0, dweight != nullptr ? size_t(Np) * IC : 0);
  const Operands q = operands(fp8_scratch, s, a_bytes, size_t(Np) * OC);
  if (dinp != nullptr) {
    cast_transposed<Fp8Format::e4m3>(s, q.a, q.inv, weight, OC, IC, OC, amax + 1);  // Wᵀ [IC, OC]
    cast<Fp8Format::e5m2>(s, q.b, q.inv + 1, dout, size_t(N) * OC, amax + 2);
    lt.run(s, fp8_gemm(q, Fp8Format::e4m3, Fp8Format::e5m2, IC, N, OC, dinp, CUDA_R_16BF,
                       accumulate ? 1.0f : 0.0f));
  }
  if (dweight != nullptr) {  // after the dinp product in stream order: q's buffers are free again
    cast_transposed<Fp8Format::e4m3>(s, q.a, q.inv, inp, N, IC, Np, amax + 0);       // [IC, Np]
    cast_transposed<Fp8Format::e5m2>(s, q.b, q.inv + 1, dout, N, OC, Np, amax + 2);  // [OC, Np]
    lt.run(s, fp8_gemm(q, Fp8Format::e4m3, Fp8Format::e5m2, IC, OC, Np, dweight, CUDA_R_32F, 1.0f));
  }
}

}  // namespace triad::cuda
