#include "triad/data/token_shard.h"

#include <cstdio>
#include <filesystem>
#include <fstream>

#include "triad/core/error.h"

namespace triad {
namespace {

ShardHeader read_header(std::ifstream& in, const std::string& path) {
  std::error_code ec;
  const auto size = std::filesystem::file_size(path, ec);
  TRIAD_CHECK(!ec, "token shard ", path, ": cannot read (", ec.message(), ")");
  const size_t header_bytes = kShardHeaderInts * sizeof(int32_t);
  TRIAD_CHECK(size >= header_bytes, "token shard ", path, ": file has ", size,
              " bytes, fewer than the ", header_bytes, "-byte header");
  int32_t h[kShardHeaderInts];
  in.read(reinterpret_cast<char*>(h), header_bytes);
  TRIAD_CHECK(in.good(), "token shard ", path, ": cannot read its header");
  const ShardFormat* format = h[0] == kShardUint16.magic   ? &kShardUint16
                              : h[0] == kShardUint32.magic ? &kShardUint32
                                                           : nullptr;
  TRIAD_CHECK(format != nullptr, "token shard ", path, ": wrong magic number ", h[0], " (expected ",
              kShardUint16.magic, " for uint16 tokens or ", kShardUint32.magic,
              " for uint32); not a token shard");
  TRIAD_CHECK(h[1] == format->version, "token shard ", path, ": unsupported version ", h[1],
              " (magic ", h[0], " goes with version ", format->version, ")");
  TRIAD_CHECK(h[2] >= 0, "token shard ", path, ": negative token count ", h[2]);
  const uint64_t expect = header_bytes + uint64_t(h[2]) * uint64_t(format->token_bytes);
  TRIAD_CHECK(size == expect, "token shard ", path, ": header says ", h[2], " tokens (", expect,
              " bytes) but the file has ", size, " bytes (truncated or damaged)");
  return ShardHeader{h[2], format->token_bytes};
}

std::ifstream open_shard(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  TRIAD_CHECK(in.is_open(), "token shard ", path, ": cannot open (missing or unreadable)");
  return in;
}

template <class Token>
std::vector<uint32_t> read_tokens(std::ifstream& in, int64_t count, const std::string& path) {
  std::vector<Token> raw(static_cast<size_t>(count));
  in.read(reinterpret_cast<char*>(raw.data()), std::streamsize(count * int64_t(sizeof(Token))));
  TRIAD_CHECK(in.good() || count == 0, "token shard ", path, ": cannot read its tokens");
  return std::vector<uint32_t>(raw.begin(), raw.end());
}

template <class Token>
void write_tokens(const std::string& path, std::span<const Token> tokens, const ShardFormat& f) {
  TRIAD_CHECK(tokens.size() <= size_t(INT32_MAX), "token shard ", path, ": ", tokens.size(),
              " tokens do not fit the int32 count of the header");
  int32_t h[kShardHeaderInts] = {};
  h[0] = f.magic;
  h[1] = f.version;
  h[2] = int32_t(tokens.size());
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    TRIAD_CHECK(out.is_open(), "token shard ", tmp, ": cannot create");
    out.write(reinterpret_cast<const char*>(h), sizeof(h));
    out.write(reinterpret_cast<const char*>(tokens.data()),
              std::streamsize(tokens.size() * sizeof(Token)));
    out.flush();
    TRIAD_CHECK(out.good(), "token shard ", tmp, ": write failed (disk full?)");
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  TRIAD_CHECK(!ec, "token shard ", path, ": cannot rename from ", tmp, " (", ec.message(), ")");
}

}  // namespace

ShardHeader read_token_shard_header(const std::string& path) {
  auto in = open_shard(path);
  return read_header(in, path);
}

std::vector<uint32_t> read_token_shard(const std::string& path) {
  auto in = open_shard(path);
  const ShardHeader h = read_header(in, path);
  return h.token_bytes == 2 ? read_tokens<uint16_t>(in, h.count, path)
                            : read_tokens<uint32_t>(in, h.count, path);
}

void write_token_shard(const std::string& path, std::span<const uint16_t> tokens) {
  write_tokens(path, tokens, kShardUint16);
}

void write_token_shard(const std::string& path, std::span<const uint32_t> tokens) {
  write_tokens(path, tokens, kShardUint32);
}

}  // namespace triad
