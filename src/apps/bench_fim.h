// triad-bench fim: the speed of fill-in-the-middle's rearrangement (data/fim.h) as the loader
// reads training sequences, between tokens or between characters, beside the plain reading of
// the same sequences; optionally the rearranged windows written out for a peer to compare.
#pragma once

#include <string>
#include <vector>

namespace triad {

// Runs the command on its arguments (after "fim"); prints the rates; returns the exit code.
int bench_fim(const std::vector<std::string>& args);

}  // namespace triad
