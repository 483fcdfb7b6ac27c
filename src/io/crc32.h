// Internal: CRC-32 (IEEE 802.3, reflected polynomial 0xEDB88320, the one zlib.crc32 and
// Python's binascii.crc32 compute), slicing-by-8 table-driven.
#pragma once

#include <cstddef>
#include <cstdint>

namespace triad::io {

// Continues `crc` (0 to start) over n bytes: crc32(b, crc32(a)) == crc32(a ++ b).
uint32_t crc32(const void* data, size_t n, uint32_t crc = 0);

}  // namespace triad::io
