// cuBLAS and cuBLASLt are opened with dlopen when a CUDA backend is first made, not linked.
// Linked, every triad process maps and relocates their 600 MB at start-up (0.2 s of a core each
// on the CI machines, where the tests start thousands of processes, nearly all on the CPU
// backend), whether it touches a GPU or not.
//
// The cuBLAS functions triad calls are defined here, each forwarding to the library's: the
// call sites stay plain cuBLAS. The prototypes are checked by the compiler against cuBLAS's
// headers (a C function declared twice with other parameters does not compile).
//
// The libraries are those of the toolkit triad was built with (the major version of its
// headers): found on the loader's path (LD_LIBRARY_PATH, ld.so.cache) or else in the toolkit's
// library directory at build time (TRIAD_CUBLAS_DIR), as when linked with its run path.
#include <cublasLt.h>
#include <cublas_v2.h>
#include <dlfcn.h>

#include <cstdint>
#include <iterator>
#include <mutex>
#include <string>

#include "triad/kernels/cuda_backend.h"

#ifndef TRIAD_CUBLAS_DIR
#define TRIAD_CUBLAS_DIR ""
#endif

namespace triad::cuda {

namespace {

#define TRIAD_STRINGIFY_(x) #x
#define TRIAD_STRINGIFY(x) TRIAD_STRINGIFY_(x)

// Every function triad calls: cublas_status() names the first one missing.
constexpr const char* kBlasSymbols[] = {"cublasCreate_v2",      "cublasDestroy_v2",
                                        "cublasSetStream_v2",   "cublasSetMathMode",
                                        "cublasSetAtomicsMode", "cublasGemmEx",
                                        "cublasSgemm_v2",       "cublasSgemmStridedBatched",
                                        "cublasGetStatusName",  "cublasGetStatusString"};
constexpr const char* kLtSymbols[] = {"cublasLtCreate",
                                      "cublasLtDestroy",
                                      "cublasLtMatmul",
                                      "cublasLtMatmulDescCreate",
                                      "cublasLtMatmulDescDestroy",
                                      "cublasLtMatmulDescSetAttribute",
                                      "cublasLtMatrixLayoutCreate",
                                      "cublasLtMatrixLayoutDestroy",
                                      "cublasLtMatmulPreferenceCreate",
                                      "cublasLtMatmulPreferenceDestroy",
                                      "cublasLtMatmulPreferenceSetAttribute",
                                      "cublasLtMatmulAlgoGetHeuristic",
                                      "cublasLtGetVersion"};

struct Libraries {
  void* blas = nullptr;
  void* lt = nullptr;
  std::string error;  // "" when both are open with every symbol above
};

// Opens lib<name>.so.<major>: on the loader's path, else in the build's toolkit directory. The
// first failure's message is the one reported (the second only says the file is not there).
void* open_library(const char* name, std::string& error) {
  const std::string file = std::string("lib") + name + ".so." + TRIAD_STRINGIFY(CUBLAS_VER_MAJOR);
  void* handle = dlopen(file.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (handle != nullptr) return handle;
  const char* why = dlerror();
  const std::string first = why != nullptr ? why : "not found";
  const std::string dir = TRIAD_CUBLAS_DIR;
  if (!dir.empty()) handle = dlopen((dir + "/" + file).c_str(), RTLD_NOW | RTLD_LOCAL);
  if (handle == nullptr && error.empty())
    error = "cannot load " + file + " (" + first +
            "): put the CUDA toolkit's lib directory on LD_LIBRARY_PATH" +
            (dir.empty() ? std::string() : " (the build's was " + dir + ")");
  return handle;
}

const Libraries& libraries() {
  static Libraries libs;
  static std::once_flag once;
  std::call_once(once, [] {
    // cuBLASLt first: cuBLAS needs it, and finds the one already open.
    libs.lt = open_library("cublasLt", libs.error);
    if (libs.lt != nullptr) libs.blas = open_library("cublas", libs.error);
    auto check = [&](void* lib, const char* const* names, size_t n) {
      for (size_t i = 0; lib != nullptr && i < n && libs.error.empty(); ++i)
        if (dlsym(lib, names[i]) == nullptr)
          libs.error = std::string("the cuBLAS library has no ") + names[i] + " (cuBLAS " +
                       TRIAD_STRINGIFY(CUBLAS_VER_MAJOR) + ".x needed)";
    };
    check(libs.blas, kBlasSymbols, std::size(kBlasSymbols));
    check(libs.lt, kLtSymbols, std::size(kLtSymbols));
  });
  return libs;
}

// The library's function `name`, or nullptr where the libraries did not load.
template <class Fn>
Fn symbol(bool lt, const char* name) {
  const Libraries& libs = libraries();
  if (!libs.error.empty()) return nullptr;
  return reinterpret_cast<Fn>(dlsym(lt ? libs.lt : libs.blas, name));
}

}  // namespace

}  // namespace triad::cuda

namespace triad {

std::string cublas_status() { return cuda::libraries().error; }

std::string cublas_version() {
  using Fn = size_t (*)();
  const auto get = cuda::symbol<Fn>(true, "cublasLtGetVersion");
  if (get == nullptr) return "";
  const size_t v = get();  // major·10000 + minor·100 + patch
  return std::to_string(v / 10000) + "." + std::to_string(v / 100 % 100) + "." +
         std::to_string(v % 100);
}

}  // namespace triad

// Each forwarder looks its function up once; where the libraries are missing it returns
// CUBLAS_STATUS_NOT_INITIALIZED (the backend reports cublas_status() before any call).
#define TRIAD_CUBLAS_FORWARD(lt, name, params, args)                \
  extern "C" cublasStatus_t CUBLASWINAPI name params {              \
    using Fn = cublasStatus_t(CUBLASWINAPI*) params;                \
    static const Fn fn = triad::cuda::symbol<Fn>(lt, #name);        \
    return fn != nullptr ? fn args : CUBLAS_STATUS_NOT_INITIALIZED; \
  }

TRIAD_CUBLAS_FORWARD(false, cublasCreate_v2, (cublasHandle_t * handle), (handle))
TRIAD_CUBLAS_FORWARD(false, cublasDestroy_v2, (cublasHandle_t handle), (handle))
TRIAD_CUBLAS_FORWARD(false, cublasSetStream_v2, (cublasHandle_t handle, cudaStream_t stream),
                     (handle, stream))
TRIAD_CUBLAS_FORWARD(false, cublasSetMathMode, (cublasHandle_t handle, cublasMath_t mode),
                     (handle, mode))
TRIAD_CUBLAS_FORWARD(false, cublasSetAtomicsMode, (cublasHandle_t handle, cublasAtomicsMode_t mode),
                     (handle, mode))
TRIAD_CUBLAS_FORWARD(false, cublasGemmEx,
                     (cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb,
                      int m, int n, int k, const void* alpha, const void* A, cudaDataType Atype,
                      int lda, const void* B, cudaDataType Btype, int ldb, const void* beta,
                      void* C, cudaDataType Ctype, int ldc, cublasComputeType_t computeType,
                      cublasGemmAlgo_t algo),
                     (handle, transa, transb, m, n, k, alpha, A, Atype, lda, B, Btype, ldb, beta, C,
                      Ctype, ldc, computeType, algo))
TRIAD_CUBLAS_FORWARD(false, cublasSgemm_v2,
                     (cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb,
                      int m, int n, int k, const float* alpha, const float* A, int lda,
                      const float* B, int ldb, const float* beta, float* C, int ldc),
                     (handle, transa, transb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc))
TRIAD_CUBLAS_FORWARD(false, cublasSgemmStridedBatched,
                     (cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb,
                      int m, int n, int k, const float* alpha, const float* A, int lda,
                      long long int strideA, const float* B, int ldb, long long int strideB,
                      const float* beta, float* C, int ldc, long long int strideC, int batchCount),
                     (handle, transa, transb, m, n, k, alpha, A, lda, strideA, B, ldb, strideB,
                      beta, C, ldc, strideC, batchCount))

TRIAD_CUBLAS_FORWARD(true, cublasLtCreate, (cublasLtHandle_t * handle), (handle))
TRIAD_CUBLAS_FORWARD(true, cublasLtDestroy, (cublasLtHandle_t handle), (handle))
TRIAD_CUBLAS_FORWARD(true, cublasLtMatmul,
                     (cublasLtHandle_t handle, cublasLtMatmulDesc_t desc, const void* alpha,
                      const void* A, cublasLtMatrixLayout_t Adesc, const void* B,
                      cublasLtMatrixLayout_t Bdesc, const void* beta, const void* C,
                      cublasLtMatrixLayout_t Cdesc, void* D, cublasLtMatrixLayout_t Ddesc,
                      const cublasLtMatmulAlgo_t* algo, void* workspace, size_t workspace_bytes,
                      cudaStream_t stream),
                     (handle, desc, alpha, A, Adesc, B, Bdesc, beta, C, Cdesc, D, Ddesc, algo,
                      workspace, workspace_bytes, stream))
TRIAD_CUBLAS_FORWARD(true, cublasLtMatmulDescCreate,
                     (cublasLtMatmulDesc_t * desc, cublasComputeType_t compute,
                      cudaDataType_t scale),
                     (desc, compute, scale))
TRIAD_CUBLAS_FORWARD(true, cublasLtMatmulDescDestroy, (cublasLtMatmulDesc_t desc), (desc))
TRIAD_CUBLAS_FORWARD(true, cublasLtMatmulDescSetAttribute,
                     (cublasLtMatmulDesc_t desc, cublasLtMatmulDescAttributes_t attr,
                      const void* buf, size_t bytes),
                     (desc, attr, buf, bytes))
TRIAD_CUBLAS_FORWARD(true, cublasLtMatrixLayoutCreate,
                     (cublasLtMatrixLayout_t * layout, cudaDataType type, uint64_t rows,
                      uint64_t cols, int64_t ld),
                     (layout, type, rows, cols, ld))
TRIAD_CUBLAS_FORWARD(true, cublasLtMatrixLayoutDestroy, (cublasLtMatrixLayout_t layout), (layout))
TRIAD_CUBLAS_FORWARD(true, cublasLtMatmulPreferenceCreate, (cublasLtMatmulPreference_t * pref),
                     (pref))
TRIAD_CUBLAS_FORWARD(true, cublasLtMatmulPreferenceDestroy, (cublasLtMatmulPreference_t pref),
                     (pref))
TRIAD_CUBLAS_FORWARD(true, cublasLtMatmulPreferenceSetAttribute,
                     (cublasLtMatmulPreference_t pref, cublasLtMatmulPreferenceAttributes_t attr,
                      const void* buf, size_t bytes),
                     (pref, attr, buf, bytes))
TRIAD_CUBLAS_FORWARD(true, cublasLtMatmulAlgoGetHeuristic,
                     (cublasLtHandle_t handle, cublasLtMatmulDesc_t desc,
                      cublasLtMatrixLayout_t Adesc, cublasLtMatrixLayout_t Bdesc,
                      cublasLtMatrixLayout_t Cdesc, cublasLtMatrixLayout_t Ddesc,
                      cublasLtMatmulPreference_t pref, int requested,
                      cublasLtMatmulHeuristicResult_t results[], int* returned),
                     (handle, desc, Adesc, Bdesc, Cdesc, Ddesc, pref, requested, results, returned))

// The status names are for error messages: where the libraries are missing, the code itself.
extern "C" const char* CUBLASWINAPI cublasGetStatusName(cublasStatus_t status) {
  using Fn = const char*(CUBLASWINAPI*)(cublasStatus_t);
  static const Fn fn = triad::cuda::symbol<Fn>(false, "cublasGetStatusName");
  return fn != nullptr ? fn(status) : "cuBLAS status (library not loaded)";
}

extern "C" const char* CUBLASWINAPI cublasGetStatusString(cublasStatus_t status) {
  using Fn = const char*(CUBLASWINAPI*)(cublasStatus_t);
  static const Fn fn = triad::cuda::symbol<Fn>(false, "cublasGetStatusString");
  return fn != nullptr ? fn(status) : "cuBLAS could not be loaded";
}

// (the file may be one of a unity file's: cmake/TriadCuda.cmake)
#undef TRIAD_CUBLAS_FORWARD
#undef TRIAD_STRINGIFY
#undef TRIAD_STRINGIFY_
