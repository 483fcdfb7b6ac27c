#include "triad/data/token_shard.h"

#include <cstdio>
#include <filesystem>
#include <fstream>

#include "triad/core/error.h"

namespace triad {
namespace {

struct Header {
  int64_t count = 0;
};

Header read_header(std::ifstream& in, const std::string& path) {
  std::error_code ec;
  const auto size = std::filesystem::file_size(path, ec);
  TRIAD_CHECK(!ec, "token shard ", path, ": cannot read (", ec.message(), ")");
  const size_t header_bytes = kShardHeaderInts * sizeof(int32_t);
  TRIAD_CHECK(size >= header_bytes, "token shard ", path, ": file has ", size,
              " bytes, fewer than the ", header_bytes, "-byte header");
  int32_t h[kShardHeaderInts];
  in.read(reinterpret_cast<char*>(h), header_bytes);
  TRIAD_CHECK(in.good(), "token shard ", path, ": cannot read its header");
  TRIAD_CHECK(h[0] == kShardMagic, "token shard ", path, ": wrong magic number ", h[0],
              " (expected ", kShardMagic, "); not a token shard");
  TRIAD_CHECK(h[1] == kShardVersion, "token shard ", path, ": unsupported version ", h[1],
              " (expected ", kShardVersion, ")");
  TRIAD_CHECK(h[2] >= 0, "token shard ", path, ": negative token count ", h[2]);
  const uint64_t expect = header_bytes + uint64_t(h[2]) * sizeof(uint16_t);
  TRIAD_CHECK(size == expect, "token shard ", path, ": header says ", h[2], " tokens (", expect,
              " bytes) but the file has ", size, " bytes (truncated or damaged)");
  return Header{h[2]};
}

std::ifstream open_shard(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  TRIAD_CHECK(in.is_open(), "token shard ", path, ": cannot open (missing or unreadable)");
  return in;
}

}  // namespace

int64_t read_token_shard_count(const std::string& path) {
  auto in = open_shard(path);
  return read_header(in, path).count;
}

std::vector<uint16_t> read_token_shard(const std::string& path) {
  auto in = open_shard(path);
  const Header h = read_header(in, path);
  std::vector<uint16_t> tokens(size_t(h.count));
  in.read(reinterpret_cast<char*>(tokens.data()), std::streamsize(h.count * 2));
  TRIAD_CHECK(in.good() || h.count == 0, "token shard ", path, ": cannot read its tokens");
  return tokens;
}

void write_token_shard(const std::string& path, std::span<const uint16_t> tokens) {
  TRIAD_CHECK(tokens.size() <= size_t(INT32_MAX), "token shard ", path, ": ", tokens.size(),
              " tokens do not fit the int32 count of the header");
  int32_t h[kShardHeaderInts] = {};
  h[0] = kShardMagic;
  h[1] = kShardVersion;
  h[2] = int32_t(tokens.size());
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    TRIAD_CHECK(out.is_open(), "token shard ", tmp, ": cannot create");
    out.write(reinterpret_cast<const char*>(h), sizeof(h));
    out.write(reinterpret_cast<const char*>(tokens.data()), std::streamsize(tokens.size() * 2));
    out.flush();
    TRIAD_CHECK(out.good(), "token shard ", tmp, ": write failed (disk full?)");
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  TRIAD_CHECK(!ec, "token shard ", path, ": cannot rename from ", tmp, " (", ec.message(), ")");
}

}  // namespace triad
