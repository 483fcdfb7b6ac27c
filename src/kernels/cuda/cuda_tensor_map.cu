// Tensor maps for the bulk tensor copies (see cuda_tensor_map.cuh).
#include <cudaTypedefs.h>  // PFN_cuTensorMapEncodeTiled_v12000

#include <mutex>

#include "cuda_common.cuh"
#include "cuda_tensor_map.cuh"

namespace triad::cuda {
namespace {

PFN_cuTensorMapEncodeTiled_v12000 encode_tiled() {
  static std::once_flag done;
  static PFN_cuTensorMapEncodeTiled_v12000 fn = nullptr;
  static cudaDriverEntryPointQueryResult found = cudaDriverEntryPointSymbolNotFound;
  std::call_once(done, [] {
    void* p = nullptr;
    TRIAD_CUDA_CHECK(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &p, 12000,
                                                      cudaEnableDefault, &found));
    fn = reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(p);
  });
  TRIAD_CHECK(found == cudaDriverEntryPointSuccess && fn != nullptr,
              "tensor map: the CUDA driver has no cuTensorMapEncodeTiled (a CUDA 12 or later "
              "driver is needed for bulk tensor copies)");
  return fn;
}

}  // namespace

CUtensorMap bf16_box_map(const void* base, uint64_t cols, uint64_t rows, uint64_t seqs,
                         uint32_t box_cols, uint32_t box_rows) {
  TRIAD_CHECK(reinterpret_cast<uintptr_t>(base) % 16 == 0,
              "tensor map: the tensor's address is not 16-byte aligned");
  TRIAD_CHECK(cols % 8 == 0, "tensor map: ", cols, " columns is not a multiple of 8");
  const cuuint64_t dims[3] = {cols, rows, seqs};
  const cuuint64_t strides[2] = {cols * 2, cols * rows * 2};  // bytes, of dims 1 and 2
  const cuuint32_t box[3] = {box_cols, box_rows, 1};
  const cuuint32_t element_strides[3] = {1, 1, 1};
  CUtensorMap map;
  const CUresult r = encode_tiled()(
      &map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 3, const_cast<void*>(base), dims, strides, box,
      element_strides, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_NONE,
      CU_TENSOR_MAP_L2_PROMOTION_L2_128B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  TRIAD_CHECK(r == CUDA_SUCCESS, "tensor map: cuTensorMapEncodeTiled failed (CUresult ", int(r),
              ") for a [", seqs, "][", rows, "][", cols, "] bf16 tensor with ", box_cols, "×",
              box_rows, " boxes");
  return map;
}

}  // namespace triad::cuda
