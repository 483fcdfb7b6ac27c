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

CUtensorMap bf16_tensor_map(const void* base, const BoxMapShape& shape) {
  TRIAD_CHECK(reinterpret_cast<uintptr_t>(base) % 16 == 0,
              "tensor map: the tensor's address is not 16-byte aligned");
  const cuuint64_t dims[3] = {shape.dims[0], shape.dims[1], shape.dims[2]};
  const cuuint64_t strides[2] = {shape.strides[0], shape.strides[1]};
  const cuuint32_t box[3] = {shape.box[0], shape.box[1], shape.box[2]};
  const cuuint32_t element_strides[3] = {1, 1, 1};
  CUtensorMap map;
  const CUresult r =
      encode_tiled()(&map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 3, const_cast<void*>(base), dims,
                     strides, box, element_strides, CU_TENSOR_MAP_INTERLEAVE_NONE,
                     shape.swizzle128 ? CU_TENSOR_MAP_SWIZZLE_128B : CU_TENSOR_MAP_SWIZZLE_NONE,
                     CU_TENSOR_MAP_L2_PROMOTION_L2_128B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  TRIAD_CHECK(r == CUDA_SUCCESS, "tensor map: cuTensorMapEncodeTiled failed (CUresult ", int(r),
              ") for a [", shape.dims[2], "][", shape.dims[1], "][", shape.dims[0],
              "] bf16 tensor with ", shape.box[0], "×", shape.box[1], " boxes",
              shape.swizzle128 ? ", 128-byte swizzle" : "");
  return map;
}

}  // namespace triad::cuda
