// bf16 linear layers through cuBLASLt: bf16 A/B, fp32 compute (CUBLAS_COMPUTE_32F) and scale.
//   forward       out   = inp · Wᵀ + b          D bf16, bias by CUBLASLT_EPILOGUE_BIAS (bf16)
//   matmul_gelu   pre   = inp · Wᵀ + b, out = gelu(pre)   CUBLASLT_EPILOGUE_GELU_AUX(_BIAS):
//                 D = out, the aux output = pre (both bf16; gelu is the tanh approximation and
//                 is applied to the fp32 pre-activation)
//   backward      dinp += dout · W   (D bf16, β = 1: each element round(old + product))
//                 dW   += doutᵀ · inp (D fp32, β = 1; bf16 inputs with fp32 C/D is one of
//                 cuBLASLt's supported type combinations), db += Σ_rows dout: the dW product's
//                 BGRADB epilogue (dout is its B, summed over the k = N rows; fp32, the type of
//                 D) writes it into scratch, then one small add; column sums where cuBLASLt
//                 declines that. The FFN's first layer gets its bias gradient this way too: its
//                 dW product reads dpre anyway.
//   backward through the GELU (the FFN's second layer)
//                 dpre = gelu'(pre) ∘ (dout · W): CUBLASLT_EPILOGUE_DGELU with pre as aux.
//
// The row-major ↔ column-major mapping is that of the fp32 sgemm path (cuda_matmul.cu): a
// row-major [R, K] matrix with leading dimension K is a column-major K×R matrix, so
//   out[N,OC] = inp[N,IC]·W[OC,IC]ᵀ  ⇔  outᵀ (OC×N, ld OC) = op_T(W: IC×OC, ld IC) · inpᵀ (IC×N)
// and the backward products likewise (derived next to each call). In that column-major view the
// bias (one per output feature) is one value per row of D, which is what the epilogue adds.
//
// Determinism: the heuristic's choice for a problem is cached, so the same algorithm runs every
// step; cuBLASLt's split-K reduction schemes all reduce in a fixed order (no atomics). The
// cublasGemmEx path for products cuBLASLt declines runs on the backend's handle, whose atomics
// are disabled.
//
// FP8 products (cuda_fp8.cu builds them) go through the same run(): A and B of an FP8 type, their
// scale pointers set and FAST_ACCUM off (each partial sum promoted to fp32, not Hopper's faster
// reduced-precision accumulation). There is no cublasGemmEx fallback for them (it would not be
// FP8): a problem cuBLASLt has no algorithm for throws, except that a declined BIAS epilogue
// becomes the FP8 product into fp32 scratch plus bias_round_kernel.
#include <cstdio>
#include <string>

#include "cuda_ops.cuh"
#include "device_thread.cuh"
#include "elementwise_block.h"

namespace triad::cuda {
namespace {

// Owning wrappers: descriptors are destroyed even when a check throws.
struct MatmulDesc {
  cublasLtMatmulDesc_t p = nullptr;
  ~MatmulDesc() {
    if (p != nullptr) cublasLtMatmulDescDestroy(p);
  }
};
struct Layout {
  cublasLtMatrixLayout_t p = nullptr;
  ~Layout() {
    if (p != nullptr) cublasLtMatrixLayoutDestroy(p);
  }
};
struct Preference {
  cublasLtMatmulPreference_t p = nullptr;
  ~Preference() {
    if (p != nullptr) cublasLtMatmulPreferenceDestroy(p);
  }
};

template <typename V>
void set_desc(cublasLtMatmulDesc_t d, cublasLtMatmulDescAttributes_t attr, V value) {
  TRIAD_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(d, attr, &value, sizeof value));
}
template <typename V>
void set_pref(cublasLtMatmulPreference_t p, cublasLtMatmulPreferenceAttributes_t attr, V value) {
  TRIAD_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(p, attr, &value, sizeof value));
}

const char* type_name(cudaDataType_t t) {
  switch (t) {
    case CUDA_R_32F:
      return "fp32";
    case CUDA_R_8F_E4M3:
      return "e4m3";
    case CUDA_R_8F_E5M2:
      return "e5m2";
    default:
      return "bf16";
  }
}

bool is_fp8(cudaDataType_t t) { return t == CUDA_R_8F_E4M3 || t == CUDA_R_8F_E5M2; }
bool fp8_product(const LtGemm& g) { return is_fp8(g.a_type) || is_fp8(g.b_type); }

std::string describe(const LtGemm& g) {
  const std::string inputs = fp8_product(g) ? std::string("FP8 (A ") + type_name(g.a_type) +
                                                  ", B " + type_name(g.b_type) + ") -> "
                                            : std::string();
  return inputs + type_name(g.d_type) + " product m=" + std::to_string(g.m) +
         " n=" + std::to_string(g.n) + " k=" + std::to_string(g.k) + " (op A " +
         (g.trans_a == CUBLAS_OP_N ? "N" : "T") + ", op B " +
         (g.trans_b == CUBLAS_OP_N ? "N" : "T") + ", lda " + std::to_string(g.lda) + ", ldb " +
         std::to_string(g.ldb) + ", ldd " + std::to_string(g.ldd) + ", epilogue " +
         std::to_string(int(g.epilogue)) + ", alignments A/B/D " +
         std::to_string(pointer_alignment(g.a)) + "/" + std::to_string(pointer_alignment(g.b)) +
         "/" + std::to_string(pointer_alignment(g.d)) + " bytes)";
}

// d[j·ldd + i] = round(acc[j·m + i] + bias[i]) over the column-major m×n product acc.
__global__ void bias_round_kernel(uint16_t* d, int ldd, const float* acc, const uint16_t* bias,
                                  int m, size_t total) {
  DeviceThread x;
  elementwise_block::bias_round(x, d, ldd, acc, bias, m, total, block_threads(), grid_threads());
}

// out[n, o] = bias[o], or 0 without a bias: the product of an empty inner dimension.
__global__ void fill_rows_kernel(uint16_t* out, const uint16_t* bias, int OC, size_t total) {
  DeviceThread x;
  elementwise_block::broadcast_rows(x, out, bias, OC, total, block_threads(), grid_threads());
}

// The forward product out = inp · Wᵀ (+ bias), with the given epilogue (DEFAULT/BIAS or a GELU
// one, then aux/aux_ld describe pre).
LtGemm forward_gemm(bf16* out, const bf16* inp, const bf16* weight, const bf16* bias, int N, int IC,
                    int OC) {
  LtGemm g;
  g.trans_a = CUBLAS_OP_T;
  g.trans_b = CUBLAS_OP_N;
  g.m = OC;
  g.n = N;
  g.k = IC;
  g.a = weight;
  g.lda = IC;
  g.b = inp;
  g.ldb = IC;
  g.d = out;
  g.d_type = CUDA_R_16BF;
  g.ldd = OC;
  g.beta = 0.0f;
  g.bias = bias;
  g.epilogue = bias != nullptr ? CUBLASLT_EPILOGUE_BIAS : CUBLASLT_EPILOGUE_DEFAULT;
  return g;
}

// dinp[N,IC] (+)= dout[N,OC] · W[OC,IC]  ⇔  dinpᵀ (IC×N, ld IC) (+)= W (col-major IC×OC, ld IC,
// no transpose) · doutᵀ (col-major OC×N, ld OC, no transpose); β = 1 accumulates.
LtGemm input_grad_gemm(bf16* dinp, const bf16* dout, const bf16* weight, int N, int IC, int OC,
                       bool accumulate) {
  LtGemm g;
  g.trans_a = CUBLAS_OP_N;
  g.trans_b = CUBLAS_OP_N;
  g.m = IC;
  g.n = N;
  g.k = OC;
  g.a = weight;
  g.lda = IC;
  g.b = dout;
  g.ldb = OC;
  g.d = dinp;
  g.d_type = CUDA_R_16BF;
  g.ldd = IC;
  g.beta = accumulate ? 1.0f : 0.0f;
  return g;
}

}  // namespace

LtMatmul::LtMatmul(cublasHandle_t blas) : blas_(blas) {
  TRIAD_CUBLAS_CHECK(cublasLtCreate(&handle_));
  const cudaError_t err = cudaMalloc(&workspace_, kWorkspaceBytes);
  if (err != cudaSuccess) {
    cublasLtDestroy(handle_);  // the destructor does not run when the constructor throws
    handle_ = nullptr;
    workspace_ = nullptr;
    TRIAD_CUDA_CHECK(err);
  }
}

LtMatmul::~LtMatmul() {
  // No throwing here: errors at teardown are ignored.
  if (workspace_ != nullptr) cudaFree(workspace_);
  if (handle_ != nullptr) cublasLtDestroy(handle_);
}

bool LtMatmul::run(cudaStream_t s, const LtGemm& g, bool may_decline) {
  MatmulDesc desc;
  TRIAD_CUBLAS_CHECK(cublasLtMatmulDescCreate(&desc.p, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  set_desc(desc.p, CUBLASLT_MATMUL_DESC_TRANSA, int32_t(g.trans_a));
  set_desc(desc.p, CUBLASLT_MATMUL_DESC_TRANSB, int32_t(g.trans_b));
  set_desc(desc.p, CUBLASLT_MATMUL_DESC_EPILOGUE, uint32_t(g.epilogue));
  // The bias and aux element types are left at their defaults, the type of D: the header warns
  // that setting them for a combination without such a choice fails the matmul.
  if (g.bias != nullptr) set_desc(desc.p, CUBLASLT_MATMUL_DESC_BIAS_POINTER, g.bias);
  if (g.aux != nullptr) {
    set_desc(desc.p, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, g.aux);
    set_desc(desc.p, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, g.aux_ld);
  }
  const bool fp8 = fp8_product(g);
  if (fp8) {
    // Device pointers, read when the product runs (their values may change from call to call).
    if (g.a_scale != nullptr) set_desc(desc.p, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, g.a_scale);
    if (g.b_scale != nullptr) set_desc(desc.p, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, g.b_scale);
    set_desc(desc.p, CUBLASLT_MATMUL_DESC_FAST_ACCUM, int8_t(0));
  }

  // Layouts describe the matrices as stored (before op): op(A) is m×k, op(B) is k×n.
  const bool ta = g.trans_a != CUBLAS_OP_N;
  const bool tb = g.trans_b != CUBLAS_OP_N;
  Layout la, lb, ld;
  TRIAD_CUBLAS_CHECK(
      cublasLtMatrixLayoutCreate(&la.p, g.a_type, ta ? g.k : g.m, ta ? g.m : g.k, g.lda));
  TRIAD_CUBLAS_CHECK(
      cublasLtMatrixLayoutCreate(&lb.p, g.b_type, tb ? g.n : g.k, tb ? g.k : g.n, g.ldb));
  TRIAD_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&ld.p, g.d_type, g.m, g.n, g.ldd));

  // The heuristic takes the pointers' alignment into account (its default assumes 256 bytes,
  // which views into larger buffers need not have), so the alignments are part of the key.
  const unsigned align_a = pointer_alignment(g.a);
  const unsigned align_b = pointer_alignment(g.b);
  const unsigned align_d = pointer_alignment(g.d);
  const std::vector<int64_t> key = {int64_t(g.trans_a),
                                    int64_t(g.trans_b),
                                    g.m,
                                    g.n,
                                    g.k,
                                    g.lda,
                                    g.ldb,
                                    g.ldd,
                                    g.d_type,
                                    g.a_type,
                                    g.b_type,
                                    int64_t(g.epilogue),
                                    g.aux_ld,
                                    align_a,
                                    align_b,
                                    align_d,
                                    pointer_alignment(g.bias),
                                    pointer_alignment(g.aux)};
  auto it = cache_.find(key);
  if (it == cache_.end()) {
    if (cache_.size() >= kMaxCached) cache_.clear();
    Preference pref;
    TRIAD_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref.p));
    set_pref(pref.p, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, uint64_t(kWorkspaceBytes));
    set_pref(pref.p, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, uint32_t(align_a));
    set_pref(pref.p, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, uint32_t(align_b));
    set_pref(pref.p, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, uint32_t(align_d));
    set_pref(pref.p, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, uint32_t(align_d));
    cublasLtMatmulHeuristicResult_t result{};
    int count = 0;
    const cublasStatus_t status = cublasLtMatmulAlgoGetHeuristic(handle_, desc.p, la.p, lb.p, ld.p,
                                                                 ld.p, pref.p, 1, &result, &count);
    // NOT_SUPPORTED: no algorithm for this configuration; INVALID_VALUE: what the heuristic
    // answers for some degenerate shapes (a single row or column). Both are declines.
    if (status != CUBLAS_STATUS_NOT_SUPPORTED && status != CUBLAS_STATUS_INVALID_VALUE)
      TRIAD_CUBLAS_CHECK(status);
    Choice choice;
    choice.found =
        status == CUBLAS_STATUS_SUCCESS && count > 0 && result.state == CUBLAS_STATUS_SUCCESS;
    if (choice.found) choice.algo = result.algo;
    // Said once per problem: which fused epilogues this GPU's cuBLASLt takes is worth knowing.
    // (An FP8 product without a fallback throws instead, naming the problem.)
    const char* fallback = may_decline ? "its work runs as separate kernels"
                           : !fp8      ? "using cublasGemmEx for it"
                           : g.epilogue == CUBLASLT_EPILOGUE_BIAS
                               ? "the FP8 product runs without it, a kernel adds the bias"
                               : nullptr;
    if (!choice.found && fallback != nullptr && reported_ < kMaxReported) {
      std::fprintf(stderr,
                   "triad cuda backend: cuBLASLt has no algorithm for the %s (heuristic: %s, %d "
                   "result(s)); %s%s\n",
                   describe(g).c_str(), cublasGetStatusName(status), count, fallback,
                   ++reported_ == kMaxReported ? " (further such problems are not reported)" : "");
    }
    it = cache_.emplace(key, choice).first;
  }
  if (!it->second.found) {
    if (may_decline) return false;
    run_fallback(s, g);
    return true;
  }
  // C and D are the same buffer (in place, same layout): with β = 1 the product accumulates.
  const cublasStatus_t status =
      cublasLtMatmul(handle_, desc.p, &g.alpha, g.a, la.p, g.b, lb.p, &g.beta, g.d, ld.p, g.d, ld.p,
                     &it->second.algo, workspace_, kWorkspaceBytes, s);
  // A configuration the heuristic let through but the matmul does not support (a heuristic's
  // success does not promise that the algorithm runs): a decline, remembered for the next call,
  // taking the same way as a problem without an algorithm. (INVALID_VALUE stays an error: it is
  // also what a wrongly set up call gets, which must not pass silently as a fallback.)
  if (status == CUBLAS_STATUS_NOT_SUPPORTED) {
    // (An FP8 product without a bias has no other way: an error names it.)
    TRIAD_CHECK(may_decline || !fp8 || g.epilogue == CUBLASLT_EPILOGUE_BIAS,
                "cuda backend: cuBLASLt chose an algorithm for the ", describe(g),
                " but then refused to run it (", cublasGetStatusName(status),
                "), and FP8 products have no fallback (run.fp8 = off runs the layers in bf16)");
    if (reported_ < kMaxReported)
      std::fprintf(stderr, "triad cuda backend: cuBLASLt refused the %s (%s); %s%s\n",
                   describe(g).c_str(), cublasGetStatusName(status),
                   may_decline ? "its work runs as separate kernels" : "taking its fallback",
                   ++reported_ == kMaxReported ? " (further such problems are not reported)" : "");
    it->second.found = false;
    if (may_decline) return false;
    run_fallback(s, g);
    return true;
  }
  TRIAD_CUBLAS_CHECK(status);
  return true;
}

void LtMatmul::run_fallback(cudaStream_t s, const LtGemm& g) {
  const bool fp8 = fp8_product(g);
  TRIAD_CHECK(!fp8 || g.epilogue == CUBLASLT_EPILOGUE_BIAS,
              "cuda backend: cuBLASLt has no algorithm for the ", describe(g),
              " on this GPU, and FP8 products have no fallback (they need an FP8 GPU, compute "
              "capability 8.9 or 9.0 and later; run.fp8 = off runs the layers in bf16)");
  TRIAD_CHECK(g.epilogue == CUBLASLT_EPILOGUE_DEFAULT ||
                  (g.epilogue == CUBLASLT_EPILOGUE_BIAS && g.d_type == CUDA_R_16BF),
              "cuda backend: no cublasGemmEx path for the ", describe(g));
  if (g.epilogue == CUBLASLT_EPILOGUE_DEFAULT) {
    // C = D in place; bf16 or fp32 C with bf16 A/B and fp32 compute are GemmEx combinations.
    TRIAD_CUBLAS_CHECK(cublasGemmEx(blas_, g.trans_a, g.trans_b, g.m, g.n, g.k, &g.alpha, g.a,
                                    CUDA_R_16BF, g.lda, g.b, CUDA_R_16BF, g.ldb, &g.beta, g.d,
                                    g.d_type, g.ldd, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    return;
  }
  // With a bias: the fp32 product first, then bias and one rounding (as the epilogue would).
  TRIAD_CHECK(g.beta == 0.0f, "cuda backend: a bias with beta != 0 in the ", describe(g));
  const size_t total = size_t(g.m) * size_t(g.n);
  float* acc = product_.get_as<float>(total, s);
  if (fp8) {  // the same FP8 product without the epilogue, D fp32 (or the error above)
    LtGemm p = g;
    p.epilogue = CUBLASLT_EPILOGUE_DEFAULT;
    p.bias = nullptr;
    p.d = acc;
    p.d_type = CUDA_R_32F;
    p.ldd = g.m;
    run(s, p);
  } else {
    const float zero = 0.0f;
    TRIAD_CUBLAS_CHECK(cublasGemmEx(blas_, g.trans_a, g.trans_b, g.m, g.n, g.k, &g.alpha, g.a,
                                    CUDA_R_16BF, g.lda, g.b, CUDA_R_16BF, g.ldb, &zero, acc,
                                    CUDA_R_32F, g.m, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  }
  bias_round_kernel<<<grid_for(total), kBlock, 0, s>>>(bits(static_cast<bf16*>(g.d)), g.ldd, acc,
                                                       bits(static_cast<const bf16*>(g.bias)), g.m,
                                                       total);
  TRIAD_CUDA_CHECK_LAUNCH();
}

void matmul_forward(cudaStream_t s, LtMatmul& lt, bf16* out, const bf16* inp, const bf16* weight,
                    const bf16* bias, int N, int IC, int OC) {
  if (N <= 0 || OC <= 0) return;
  if (IC <= 0) {
    const size_t total = size_t(N) * OC;
    fill_rows_kernel<<<grid_for(total), kBlock, 0, s>>>(bits(out), bits(bias), OC, total);
    TRIAD_CUDA_CHECK_LAUNCH();
    return;
  }
  lt.run(s, forward_gemm(out, inp, weight, bias, N, IC, OC));
}

void matmul_gelu_forward(cudaStream_t s, LtMatmul& lt, bf16* pre, bf16* out, const bf16* inp,
                         const bf16* weight, const bf16* bias, int N, int IC, int OC) {
  if (N <= 0 || OC <= 0) return;
  // The GELU aux output needs a leading dimension divisible by 8 (cuBLASLt's requirement for
  // EPILOGUE_AUX_LD); a 16-byte aligned pre keeps every row of it vector-aligned. Elsewhere, or
  // when cuBLASLt declines, the two ops run separately (out then comes from the rounded pre,
  // which the interface allows).
  if (IC > 0 && OC % 8 == 0 && pointer_alignment(pre) >= 16) {
    LtGemm g = forward_gemm(out, inp, weight, bias, N, IC, OC);
    g.epilogue = bias != nullptr ? CUBLASLT_EPILOGUE_GELU_AUX_BIAS : CUBLASLT_EPILOGUE_GELU_AUX;
    g.aux = pre;
    g.aux_ld = OC;
    if (lt.run(s, g, /*may_decline=*/true)) return;
  }
  matmul_forward(s, lt, pre, inp, weight, bias, N, IC, OC);
  gelu_forward(s, out, static_cast<const bf16*>(pre), size_t(N) * OC);
}

void matmul_backward(cudaStream_t s, LtMatmul& lt, DeviceScratch& scratch, bf16* dinp,
                     float* dweight, float* dbias, const bf16* dout, const bf16* inp,
                     const bf16* weight, int N, int IC, int OC, bool accumulate) {
  if (N <= 0 || OC <= 0) return;
  if (IC > 0) {
    if (dinp != nullptr) lt.run(s, input_grad_gemm(dinp, dout, weight, N, IC, OC, accumulate));
    if (dweight == nullptr) {  // the input gradient alone (Backend: dbias is null too)
      TRIAD_ASSERT(dbias == nullptr);
      return;
    }
    // dW[OC,IC] += doutᵀ · inp  ⇔  dWᵀ (IC×OC, ld IC) += inpᵀ (col-major IC×N, ld IC, no
    // transpose) · dout (stored as col-major doutᵀ OC×N, ld OC; transposed gives N×OC)
    LtGemm g;
    g.trans_a = CUBLAS_OP_N;
    g.trans_b = CUBLAS_OP_T;
    g.m = IC;
    g.n = OC;
    g.k = N;
    g.a = inp;
    g.lda = IC;
    g.b = dout;
    g.ldb = OC;
    g.d = dweight;
    g.d_type = CUDA_R_32F;
    g.ldd = IC;
    g.beta = 1.0f;
    // db = Σ_rows dout in the same product: BGRADB sums B (dout) over k, one value per column of
    // D (OC of them, fp32 like D). The epilogue overwrites, so it goes to scratch first. Not for
    // a single row (k = 1), where cuBLASLt versions have been reported to get the sum wrong.
    if (dbias != nullptr && N > 1) {
      float* partial = scratch.get_as<float>(size_t(OC), s);
      LtGemm gb = g;
      gb.epilogue = CUBLASLT_EPILOGUE_BGRADB;
      gb.bias = partial;
      if (lt.run(s, gb, /*may_decline=*/true)) {
        cuda::accumulate(s, dbias, static_cast<const float*>(partial), size_t(OC));
        return;
      }
    }
    lt.run(s, g);
  }
  if (dbias != nullptr) column_sum_accumulate(s, scratch, dbias, dout, N, OC);
}

bool matmul_backward_dgelu(cudaStream_t s, LtMatmul& lt, DeviceScratch& scratch, bf16* dpre,
                           float* dweight, float* dbias, const bf16* dout, const bf16* act,
                           const bf16* pre, const bf16* weight, int N, int IC, int OC) {
  // The aux (pre) needs a leading dimension divisible by 8 and 16-byte rows, as in the forward.
  if (N <= 0 || OC <= 0 || IC <= 0 || IC % 8 != 0 || pointer_alignment(pre) < 16) return false;
  // dpre = gelu'(pre) ∘ (dout · W): the input-gradient product (β = 0) with gelu' of the saved
  // pre-activation (aux, laid out like dpre) applied as it is written.
  LtGemm g = input_grad_gemm(dpre, dout, weight, N, IC, OC, /*accumulate=*/false);
  g.epilogue = CUBLASLT_EPILOGUE_DGELU;
  g.aux = const_cast<bf16*>(pre);
  g.aux_ld = IC;
  if (!lt.run(s, g, /*may_decline=*/true)) return false;
  matmul_backward(s, lt, scratch, nullptr, dweight, dbias, dout, act, weight, N, IC, OC);
  return true;
}

}  // namespace triad::cuda
