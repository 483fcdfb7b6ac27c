// Internal: CRC-32 (IEEE 802.3, reflected polynomial 0xEDB88320, the one zlib.crc32 and
// Python's binascii.crc32 compute), slicing-by-8 table-driven, and zlib's crc32_combine.
#pragma once

#include <cstddef>
#include <cstdint>

namespace triad::io {

// Continues `crc` (0 to start) over n bytes: crc32(b, crc32(a)) == crc32(a ++ b).
uint32_t crc32(const void* data, size_t n, uint32_t crc = 0);

// The CRC-32 of a ++ b from crc1 = crc32(a), crc2 = crc32(b) and len2 = the byte length of b,
// without the data (zlib's crc32_combine: GF(2) matrix powers of the one-zero-bit operator,
// O(log len2) 32x32 matrix squarings).
uint32_t crc32_combine(uint32_t crc1, uint32_t crc2, uint64_t len2);

}  // namespace triad::io
