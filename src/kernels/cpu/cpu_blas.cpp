// OpenBLAS setup for the CPU backend.
//
// OpenBLAS built with DYNAMIC_ARCH (the Debian/Ubuntu packages) picks its kernels from cpuid
// when the library loads. A release that does not know the CPU model falls back to the generic
// "Prescott" (SSE3) kernels, which run sgemm about 5x slower: OpenBLAS 0.3.21 does this on
// Emerald Rapids (family 6, model 0xCF). The environment variable OPENBLAS_CORETYPE fixes it,
// but it is read only at load time, before main. So when the user has not set it and the
// detected kernels are clearly a fallback (pre-AVX2) on a CPU with AVX2/AVX-512, we set it and
// ask OpenBLAS to redo its kernel selection (gotoblas_dynamic_quit/init: exported by every
// DYNAMIC_ARCH build, declared weak here so that other builds still link). This runs once,
// before the backend issues its first BLAS call.
#include <cblas.h>

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

}  // namespace

namespace cpu {

void configure_blas() {
  static std::once_flag once;
  std::call_once(once, [] {
    if (std::getenv("OPENBLAS_CORETYPE") != nullptr) return;  // the user's choice stands
    if (gotoblas_dynamic_init == nullptr || gotoblas_dynamic_quit == nullptr) return;
    const std::string detected = openblas_get_corename();
    const char* better = best_core_for_this_cpu();
    if (better == nullptr || !is_pre_avx2_core(detected)) return;
    setenv("OPENBLAS_CORETYPE", better, 0);  // also inherited by child processes
    gotoblas_dynamic_quit();
    gotoblas_dynamic_init();
    g_fallback_core = detected;
  });
}

SingleThreadedBlas::SingleThreadedBlas() : saved_threads_(openblas_get_num_threads()) {
  if (saved_threads_ > 1) openblas_set_num_threads(1);
}

SingleThreadedBlas::~SingleThreadedBlas() {
  if (saved_threads_ > 1) openblas_set_num_threads(saved_threads_);
}

}  // namespace cpu

std::string cpu_blas_description() {
  std::string s = openblas_get_config();
  s += ", core ";
  s += openblas_get_corename();
  if (!g_fallback_core.empty()) {
    s += " (selected by triad; OpenBLAS detected " + g_fallback_core + ")";
  }
  s += ", " + std::to_string(openblas_get_num_threads()) + " threads";
  return s;
}

}  // namespace triad
