// The peak rate MFU is measured against: the best of a few square matmuls through the backend
// (1024³ on the CPU: the machine's practical sgemm peak on its threads; 8192³ on a GPU), in the
// precision the model computes in: fp32 sgemm, or bf16 inputs with fp32 accumulation (on a GPU
// the dense bf16 tensor-core rate the MFU target is stated against).
#pragma once

#include "triad/kernels/backend.h"

namespace triad {

double measure_peak_flops(Backend& be, bool bf16 = false);

}  // namespace triad
