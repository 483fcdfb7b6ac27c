// Reading the tokenizer's text files (tokenizer.cpp's ranks files, tokenizer_description.cpp's
// descriptions): the whole file, its lines, a line's excerpt for messages.
#pragma once

#include <cstdint>
#include <fstream>
#include <sstream>
#include <string>
#include <string_view>

#include "triad/core/error.h"

namespace triad::tokenizer_files {

// The first 60 bytes of a line, with "..." when there are more.
inline std::string excerpt(std::string_view line) {
  std::string s(line.substr(0, 60));
  if (line.size() > 60) s += "...";
  return s;
}

// The file's bytes; throws triad::Error naming `where` if it cannot be read.
inline std::string read_whole(const std::string& path, const std::string& where) {
  std::ifstream in(path, std::ios::binary);
  TRIAD_CHECK(in.is_open(), where, ": cannot open (missing or unreadable)");
  std::stringstream buf;
  buf << in.rdbuf();
  TRIAD_CHECK(!in.bad(), where, ": read error");
  return buf.str();
}

// Calls fn(line_no, line) for each line of text (numbered from 1, without its "\n" or "\r\n").
template <typename F>
void for_each_line(std::string_view text, F&& fn) {
  int64_t line_no = 0;
  for (size_t pos = 0; pos < text.size();) {
    size_t nl = text.find('\n', pos);
    if (nl == std::string::npos) nl = text.size();
    std::string_view line(text.data() + pos, nl - pos);
    pos = nl + 1;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    fn(++line_no, line);
  }
}

}  // namespace triad::tokenizer_files
