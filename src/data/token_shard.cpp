#include "triad/data/token_shard.h"

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <initializer_list>

#include "triad/core/error.h"

namespace triad {
namespace {

// Checks the header of a file of one of `formats` (`what` names the kind in errors).
ShardHeader read_header(std::ifstream& in, const std::string& path, const char* what,
                        std::initializer_list<ShardFormat> formats) {
  std::error_code ec;
  const auto size = std::filesystem::file_size(path, ec);
  TRIAD_CHECK(!ec, what, " ", path, ": cannot read (", ec.message(), ")");
  const size_t header_bytes = kShardHeaderInts * sizeof(int32_t);
  TRIAD_CHECK(size >= header_bytes, what, " ", path, ": file has ", size, " bytes, fewer than the ",
              header_bytes, "-byte header");
  int32_t h[kShardHeaderInts];
  in.read(reinterpret_cast<char*>(h), header_bytes);
  TRIAD_CHECK(in.good(), what, " ", path, ": cannot read its header");
  const ShardFormat* format = nullptr;
  for (const ShardFormat& f : formats)
    if (h[0] == f.magic) format = &f;
  if (format == nullptr) {
    std::string expected;
    for (const ShardFormat& f : formats)
      expected += (expected.empty() ? "" : " or ") + std::to_string(f.magic) +
                  (f.token_bytes == 1   ? ""
                   : f.token_bytes == 2 ? " for uint16 tokens"
                                        : " for uint32");
    fail(what, " ", path, ": wrong magic number ", h[0], " (expected ", expected, "); not a ",
         what);
  }
  TRIAD_CHECK(h[1] == format->version, what, " ", path, ": unsupported version ", h[1], " (magic ",
              h[0], " goes with version ", format->version, ")");
  TRIAD_CHECK(h[2] >= 0, what, " ", path, ": negative token count ", h[2]);
  const uint64_t expect = header_bytes + uint64_t(h[2]) * uint64_t(format->token_bytes);
  TRIAD_CHECK(size == expect, what, " ", path, ": header says ", h[2], " tokens (", expect,
              " bytes) but the file has ", size, " bytes (truncated or damaged)");
  return ShardHeader{h[2], format->token_bytes};
}

ShardHeader read_header(std::ifstream& in, const std::string& path) {
  return read_header(in, path, "token shard", {kShardUint16, kShardUint32});
}

std::ifstream open_file(const std::string& path, const char* what) {
  // (A FIFO would block the open until something writes to it: a hang, not an error.)
  std::error_code ec;
  const auto status = std::filesystem::status(path, ec);
  TRIAD_CHECK(!std::filesystem::exists(status) || std::filesystem::is_regular_file(status), what,
              " ", path, ": not a regular file (a directory, pipe or device)");
  std::ifstream in(path, std::ios::binary);
  TRIAD_CHECK(in.is_open(), what, " ", path, ": cannot open (missing or unreadable)");
  return in;
}

std::ifstream open_shard(const std::string& path) { return open_file(path, "token shard"); }

template <class Token>
std::vector<uint32_t> read_tokens(std::ifstream& in, int64_t count, const std::string& path) {
  std::vector<Token> raw(static_cast<size_t>(count));
  in.read(reinterpret_cast<char*>(raw.data()), std::streamsize(count * int64_t(sizeof(Token))));
  TRIAD_CHECK(in.good() || count == 0, "token shard ", path, ": cannot read its tokens");
  return std::vector<uint32_t>(raw.begin(), raw.end());
}

template <class Token>
void write_tokens(const std::string& path, std::span<const Token> tokens, const ShardFormat& f,
                  const char* what = "token shard") {
  TRIAD_CHECK(tokens.size() <= size_t(INT32_MAX), what, " ", path, ": ", tokens.size(),
              " tokens do not fit the int32 count of the header");
  int32_t h[kShardHeaderInts] = {};
  h[0] = f.magic;
  h[1] = f.version;
  h[2] = int32_t(tokens.size());
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    TRIAD_CHECK(out.is_open(), what, " ", tmp, ": cannot create");
    out.write(reinterpret_cast<const char*>(h), sizeof(h));
    out.write(reinterpret_cast<const char*>(tokens.data()),
              std::streamsize(tokens.size() * sizeof(Token)));
    out.flush();
    TRIAD_CHECK(out.good(), what, " ", tmp, ": write failed (disk full?)");
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  TRIAD_CHECK(!ec, what, " ", path, ": cannot rename from ", tmp, " (", ec.message(), ")");
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

int64_t read_loss_mask_count(const std::string& path) {
  auto in = open_file(path, "loss mask");
  return read_header(in, path, "loss mask", {kLossMask}).count;
}

void write_loss_mask(const std::string& path, std::span<const uint8_t> mask) {
  for (size_t i = 0; i < mask.size(); ++i)
    TRIAD_CHECK(mask[i] <= 1, "loss mask ", path, ": value ", int(mask[i]), " at position ", i,
                " (0 or 1)");
  write_tokens(path, mask, kLossMask, "loss mask");
}

std::vector<uint8_t> read_loss_mask(const std::string& path) {
  auto in = open_file(path, "loss mask");
  const int64_t n = read_header(in, path, "loss mask", {kLossMask}).count;
  std::vector<uint8_t> mask(static_cast<size_t>(n));
  in.read(reinterpret_cast<char*>(mask.data()), std::streamsize(n));
  TRIAD_CHECK(in.good() || n == 0, "loss mask ", path, ": cannot read its values");
  for (int64_t i = 0; i < n; ++i)
    TRIAD_CHECK(mask[size_t(i)] <= 1, "loss mask ", path, ": value ", int(mask[size_t(i)]),
                " at position ", i, " (0 or 1)");
  return mask;
}

}  // namespace triad
