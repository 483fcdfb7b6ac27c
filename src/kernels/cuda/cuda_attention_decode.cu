// Backend::attention_decode on the GPU, fp32 and bf16: the block program of
// decode_attention_block.h, one block per (query head, new row); grouped-query attention
// (NKV < NH) indexes the compact cache directly.
#include <cstdint>

#include "cuda_ops.cuh"
#include "decode_attention_block.h"
#include "device_thread.cuh"

namespace triad::cuda {
namespace {

template <class E>
__global__ void __launch_bounds__(decode_attention::kThreads)
    decode_attention_kernel(E* out, const E* qkv, int stride, int p, int n, int C, int NH, int NKV,
                            int window, float scale, float softcap, const E* sinks) {
  DeviceThread x;
  decode_attention::row(x, out, qkv, stride, p, n, C, NH, NKV, window, scale, softcap, sinks);
}

template <class E>
void launch(cudaStream_t s, E* out, const E* qkv, int B, int stride, int p, int n, int C, int NH,
            int NKV, int window, float scale, float softcap, const E* sinks) {
  TRIAD_CHECK(NH > 0 && C % NH == 0 && NKV > 0 && NKV <= NH && NH % NKV == 0 && p >= 0 && n > 0 &&
                  B > 0 && int64_t(B) * n <= 65535 && stride >= p + n && window >= 0,
              "cuda attention_decode: bad shape (B = ", B, ", stride = ", stride, ", p = ", p,
              ", n = ", n, ", C = ", C, ", NH = ", NH, ", NKV = ", NKV, ", window = ", window, ")");
  const size_t smem =
      decode_attention::smem_bytes(decode_attention::keys_seen(p, n, window), C / NH);
  // Bytes of dynamic shared memory the kernel may ask for (48 KB without opting in); the opt-in
  // beyond (up to 227 KB on Hopper: 57k keys) fails with the runtime's message past the device's
  // limit. One process drives one device.
  static int opted_in = 48 << 10;
  if (smem > size_t(opted_in)) {
    TRIAD_CUDA_CHECK(cudaFuncSetAttribute(decode_attention_kernel<E>,
                                          cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
    opted_in = int(smem);
  }
  decode_attention_kernel<E>
      <<<dim3(unsigned(NH), unsigned(B * n)), decode_attention::kThreads, smem, s>>>(
          out, qkv, stride, p, n, C, NH, NKV, window, scale, softcap, sinks);
  TRIAD_CUDA_CHECK_LAUNCH();
}

}  // namespace

void attention_decode(cudaStream_t s, float* out, const float* qkv, int B, int stride, int p, int n,
                      int C, int NH, int NKV, int window, float scale, float softcap,
                      const float* sinks) {
  launch(s, out, qkv, B, stride, p, n, C, NH, NKV, window, scale, softcap, sinks);
}

void attention_decode(cudaStream_t s, bf16* out, const bf16* qkv, int B, int stride, int p, int n,
                      int C, int NH, int NKV, int window, float scale, float softcap,
                      const bf16* sinks) {
  launch(s, reinterpret_cast<uint16_t*>(out), reinterpret_cast<const uint16_t*>(qkv), B, stride, p,
         n, C, NH, NKV, window, scale, softcap, reinterpret_cast<const uint16_t*>(sinks));
}

}  // namespace triad::cuda
