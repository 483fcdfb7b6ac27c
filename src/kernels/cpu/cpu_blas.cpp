// OpenBLAS setup and the one sgemm entry point of the CPU backend.
//
// Threading: OpenBLAS (pthreads build) and OpenMP each keep a thread pool, and both spin for a
// while after their work ends. Alternating OpenBLAS-threaded sgemm with OpenMP loops makes the
// two pools fight over the cores: a transformer block on 2 cores took ~55-100 ms that way
// against ~37 ms with one pool (measured, B=4 T=256 C=256). So OpenBLAS runs single-threaded
// and parallel_sgemm splits each product over the OpenMP threads itself; attention calls
// sgemm from inside its own OpenMP loop over (batch, head).
//
// Kernel selection: OpenBLAS built with DYNAMIC_ARCH (the Debian/Ubuntu packages) picks its
// kernels from cpuid when the library loads. A release that does not know the CPU model falls
// back to the generic "Prescott" (SSE3) kernels, about 5x slower: OpenBLAS 0.3.21 does this on
// Emerald Rapids (family 6, model 0xCF). OPENBLAS_CORETYPE fixes it, but it is read at load
// time, before main. So when the user has not set it and the detected kernels are clearly a
// fallback (pre-AVX2) on a CPU with AVX2/AVX-512, we set it and ask OpenBLAS to redo its kernel
// selection (gotoblas_dynamic_quit/init: exported by every DYNAMIC_ARCH build, declared weak
// here so that other builds still link). This runs once, before the backend's first BLAS call.
#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <cstdlib>
#include <mutex>
#include <string>

#include "cpu_ops.h"
#include "triad/kernels/cpu_backend.h"

extern "C" {
void gotoblas_dynamic_init(void) __attribute__((weak));
void gotoblas_dynamic_quit(void) __attribute__((weak));
}

namespace triad {
namespace {

std::string g_fallback_core;  // what OpenBLAS had detected, when we replaced it

bool is_pre_avx2_core(const std::string& core) {
  for (const char* name : {"Unknown", "Katmai", "Coppermine", "Northwood", "Prescott", "Banias",
                           "Atom", "Core2", "Penryn", "Dunnington", "Nehalem", "Sandybridge"}) {
    if (core == name) return true;
  }
  return false;
}

// The best OpenBLAS kernel set this CPU (and OS) supports; nullptr when there is nothing
// better than the generic ones. __builtin_cpu_supports also checks that the OS saves the
// AVX/AVX-512 register state.
const char* best_core_for_this_cpu() {
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512cd")) {
    return "SkylakeX";
  }
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return "Haswell";
  return nullptr;
}

void fix_misdetected_core() {
  if (std::getenv("OPENBLAS_CORETYPE") != nullptr) return;  // the user's choice stands
  if (gotoblas_dynamic_init == nullptr || gotoblas_dynamic_quit == nullptr) return;
  const std::string detected = openblas_get_corename();
  const char* better = best_core_for_this_cpu();
  if (better == nullptr || !is_pre_avx2_core(detected)) return;
  setenv("OPENBLAS_CORETYPE", better, 0);  // also inherited by child processes
  gotoblas_dynamic_quit();
  gotoblas_dynamic_init();
  g_fallback_core = detected;
}

// Below this many multiply-adds a product runs on one thread (tests, bias-sized products).
constexpr double kParallelGemmMin = double(1 << 20);
// Block boundaries between threads fall on multiples of this many rows/columns, so that each
// block is a whole number of OpenBLAS micro-tiles except at the matrix edge.
constexpr int kSplitUnit = 16;

}  // namespace

namespace cpu {

void configure_blas() {
  static std::once_flag once;
  std::call_once(once, fix_misdetected_core);
  ensure_single_threaded_blas();
}

void ensure_single_threaded_blas() {
  if (openblas_get_num_threads() != 1) openblas_set_num_threads(1);
}

void parallel_sgemm(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* A,
                    int lda, const float* B, int ldb, float beta, float* C, int ldc) {
  ensure_single_threaded_blas();
  const CBLAS_TRANSPOSE ta = trans_a ? CblasTrans : CblasNoTrans;
  const CBLAS_TRANSPOSE tb = trans_b ? CblasTrans : CblasNoTrans;
  const bool split_rows = M >= N;  // split the larger side of C
  const int len = split_rows ? M : N;
  const bool parallel = double(M) * N * K >= kParallelGemmMin;
#pragma omp parallel if (parallel)
  {
    const int threads = omp_get_num_threads();
    const int t = omp_get_thread_num();
    const long units = (len + kSplitUnit - 1) / kSplitUnit;
    const int begin = int(std::min<long>(len, units * t / threads * kSplitUnit));
    const int end = int(std::min<long>(len, units * (t + 1) / threads * kSplitUnit));
    if (end > begin && split_rows) {
      // rows begin..end of op(A) and of C
      const float* a = trans_a ? A + begin : A + size_t(begin) * lda;
      cblas_sgemm(CblasRowMajor, ta, tb, end - begin, N, K, alpha, a, lda, B, ldb, beta,
                  C + size_t(begin) * ldc, ldc);
    } else if (end > begin) {
      // columns begin..end of op(B) and of C
      const float* b = trans_b ? B + size_t(begin) * ldb : B + begin;
      cblas_sgemm(CblasRowMajor, ta, tb, M, end - begin, K, alpha, A, lda, b, ldb, beta, C + begin,
                  ldc);
    }
  }
}

}  // namespace cpu

std::string cpu_blas_description() {
  std::string s = openblas_get_config();
  s += ", core ";
  s += openblas_get_corename();
  if (!g_fallback_core.empty()) {
    s += " (selected by triad; OpenBLAS detected " + g_fallback_core + ")";
  }
  s += ", " + std::to_string(openblas_get_num_threads()) + " BLAS thread(s) under " +
       std::to_string(omp_get_max_threads()) + " OpenMP thread(s)";
  return s;
}

}  // namespace triad
