// Token shard files (DESIGN.md §5), llm.c's format: a header of 256 little-endian int32
// ([0] magic 20240520, [1] version 1, [2] token count), then the tokens as uint16.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace triad {

inline constexpr int32_t kShardMagic = 20240520;
inline constexpr int32_t kShardVersion = 1;
inline constexpr size_t kShardHeaderInts = 256;

// Reads the header only and returns the token count, after checking magic, version and that
// the file size is exactly header + 2·count bytes. Throws triad::Error naming the file.
int64_t read_token_shard_count(const std::string& path);

// Reads and validates a whole shard (as above).
std::vector<uint16_t> read_token_shard(const std::string& path);

// Writes a shard atomically (path + ".tmp", then rename).
void write_token_shard(const std::string& path, std::span<const uint16_t> tokens);

}  // namespace triad
