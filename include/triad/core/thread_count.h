// The thread counts triad's programs take (--threads, run.threads): 0 for one per core, else at
// most kMaxThreads. A mistyped count would ask the system for that many threads, and OpenMP
// crashes where it cannot make them.
#pragma once

namespace triad {

inline constexpr int kMaxThreads = 1024;

inline bool valid_thread_count(int n) { return n >= 0 && n <= kMaxThreads; }

}  // namespace triad
