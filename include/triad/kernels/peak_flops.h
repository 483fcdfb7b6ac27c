// The peak rate MFU is measured against: for the CPU backend, the best of a few square
// 1024³ matmuls through the backend (the machine's practical sgemm peak on its threads).
#pragma once

#include "triad/kernels/backend.h"

namespace triad {

double measure_peak_flops(Backend& be);

}  // namespace triad
