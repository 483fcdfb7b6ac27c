// The peak rate MFU is measured against: the best of a few square matmuls through the backend
// (1024³ on the CPU: the machine's practical sgemm peak on its threads; 8192³ on a GPU).
#pragma once

#include "triad/kernels/backend.h"

namespace triad {

double measure_peak_flops(Backend& be);

}  // namespace triad
