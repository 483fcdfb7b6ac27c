// The CPU reference backend (fp32, OpenMP, OpenBLAS sgemm); created with make_cpu_backend()
// declared in backend.h. This header adds what a caller may want to know about its BLAS.
#pragma once

#include <string>

namespace triad {

// One line describing the BLAS the CPU backend runs on, for logs and benchmarks, e.g.
// "OpenBLAS 0.3.21 DYNAMIC_ARCH ... core SkylakeX (selected by triad; OpenBLAS detected
// Prescott), 2 threads". Call it after make_cpu_backend() to see the kernel set in use.
std::string cpu_blas_description();

}  // namespace triad
