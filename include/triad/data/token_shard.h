// Token shard files (DESIGN.md §5), llm.c's two formats: a header of 256 little-endian int32
// ([0] magic, [1] version, [2] token count), then the tokens: uint16 in GPT-2's format (magic
// 20240520, version 1), uint32 in the format llm.c writes for Llama 3 (magic 20240801, version
// 7), which holds vocabularies above 65536. The loader reads both, shard by shard.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace triad {

struct ShardFormat {
  int32_t magic, version;
  int token_bytes;  // 2 (uint16) or 4 (uint32)
};
inline constexpr ShardFormat kShardUint16{20240520, 1, 2};
inline constexpr ShardFormat kShardUint32{20240801, 7, 4};
inline constexpr size_t kShardHeaderInts = 256;
// Loss masks (triad's own; docs/formats.md): a file beside a shard, <shard>.mask, with the
// same header ([0] magic 20261130, [1] version 1, [2] the shard's token count) and then one
// byte per token: 1 where the token, as a target, counts in the loss, 0 where it does not (the
// prompt of a chat example). Values other than 0 and 1 are refused where they are read.
inline constexpr ShardFormat kLossMask{20261130, 1, 1};
inline std::string loss_mask_path(const std::string& shard) { return shard + ".mask"; }

struct ShardHeader {
  int64_t count = 0;    // tokens
  int token_bytes = 2;  // of the format the magic names
};

// Reads the header only, after checking that the magic names one of the formats, that the
// version is that format's, and that the file size is exactly header + count·token_bytes.
// Throws triad::Error naming the file.
ShardHeader read_token_shard_header(const std::string& path);
inline int64_t read_token_shard_count(const std::string& path) {
  return read_token_shard_header(path).count;
}

// The token count of a loss-mask file, after the same checks for its format.
int64_t read_loss_mask_count(const std::string& path);

// Reads and validates a whole shard of either format (as above).
std::vector<uint32_t> read_token_shard(const std::string& path);

// Writes a shard atomically (path + ".tmp", then rename): uint16 tokens in GPT-2's format,
// uint32 tokens in the wide one.
void write_token_shard(const std::string& path, std::span<const uint16_t> tokens);
void write_token_shard(const std::string& path, std::span<const uint32_t> tokens);
// Writes a loss-mask file atomically (values 0 or 1, one per token of its shard).
void write_loss_mask(const std::string& path, std::span<const uint8_t> mask);
// Reads and validates a whole loss-mask file (header, size and every value).
std::vector<uint8_t> read_loss_mask(const std::string& path);

}  // namespace triad
