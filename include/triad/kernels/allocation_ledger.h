// The buffers a backend has handed out and not yet freed, by pointer: what
// Backend::allocated_bytes() reports, and what the memory plan of a run is checked against.
#pragma once

#include <cstddef>
#include <unordered_map>

namespace triad {

class AllocationLedger {
 public:
  void add(const void* p, size_t bytes) {
    if (p == nullptr) return;
    sizes_[p] = bytes;
    live_ += bytes;
  }
  void remove(const void* p) {  // null and unknown pointers are ignored
    const auto it = sizes_.find(p);
    if (it == sizes_.end()) return;
    live_ -= it->second;
    sizes_.erase(it);
  }
  size_t live_bytes() const { return live_; }

 private:
  std::unordered_map<const void*, size_t> sizes_;
  size_t live_ = 0;
};

}  // namespace triad
