#include "triad/data/choice_file.h"

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "triad/core/error.h"

namespace triad {

namespace {
constexpr size_t kHeaderInts = 256;
constexpr uint16_t kExampleStart = 65535;
constexpr size_t kExampleFields = 6;  // start, bytes, index, label, endings, context count
}  // namespace

std::vector<ChoiceExample> read_choice_file(const std::string& path, int vocab_size,
                                            const std::string& what) {
  const std::string where = what + " " + path;
  std::error_code ec;
  const auto size = std::filesystem::file_size(path, ec);
  TRIAD_CHECK(!ec, where, ": cannot read (", ec.message(), ")");
  TRIAD_CHECK(size >= kHeaderInts * 4 && size % 2 == 0, where, ": ", size,
              " bytes: not an eval file (a 1024-byte header, then uint16 examples)");
  std::ifstream in(path, std::ios::binary);
  TRIAD_CHECK(in.is_open(), where, ": cannot open");
  int32_t h[kHeaderInts];
  in.read(reinterpret_cast<char*>(h), sizeof h);
  TRIAD_CHECK(in.good(), where, ": cannot read");
  const size_t word_count = (size - sizeof h) / 2;
  TRIAD_CHECK(h[0] == kChoiceFileMagic, where, ": wrong magic number ", h[0], " (an eval file has ",
              kChoiceFileMagic, "; token shards have 20240520)");
  TRIAD_CHECK(h[1] == kChoiceFileVersion, where, ": unsupported version ", h[1], " (reads ",
              kChoiceFileVersion, ")");
  // The smallest example takes 11 words (6 fields, a context token, two one-token endings).
  TRIAD_CHECK(h[2] > 0 && size_t(h[2]) <= word_count / 11, where, ": header says ", h[2],
              " examples, which ",
              h[2] > 0    ? "do not fit in the file"
              : h[2] == 0 ? "is none"
                          : "is negative");
  TRIAD_CHECK(h[3] > 0, where, ": header says the longest example has ", h[3], " bytes");
  // What the header's examples can take, and no more, is read (a damaged file of gigabytes was
  // read whole, and the run ended "out of memory"); bytes past them are counted below.
  std::vector<uint16_t> words(
      std::min<uint64_t>(word_count, uint64_t(h[2]) * uint64_t(h[3]) / 2 + kExampleFields));
  in.read(reinterpret_cast<char*>(words.data()), std::streamsize(words.size() * 2));
  TRIAD_CHECK(in.good(), where, ": cannot read");

  std::vector<ChoiceExample> out(static_cast<size_t>(h[2]));
  size_t at = 0;
  for (size_t e = 0; e < out.size(); ++e) {
    const auto bad = [&](const auto&... msg) {
      return Error(detail::concat(where, ": example ", e, " (of ", out.size(), "): ", msg...));
    };
    if (words.size() - at < kExampleFields) throw bad("the file ends inside it (truncated?)");
    const uint16_t* x = words.data() + at;
    if (x[0] != kExampleStart) throw bad("no start marker 65535 where it begins");
    const size_t n = x[1] / 2;
    if (x[1] > h[3]) throw bad("size ", x[1], " bytes exceeds the header's longest, ", h[3]);
    if (x[1] % 2 || n < kExampleFields + 3 || n > words.size() - at)
      throw bad("size ", x[1], " bytes does not fit the file (truncated?)");
    ChoiceExample& c = out[e];
    c.index = x[2];
    c.label = x[3];
    const int endings = x[4];
    if (endings < 2) throw bad(endings, " endings (need at least 2)");
    if (c.label >= endings) throw bad("label ", c.label, " but ", endings, " endings");
    size_t i = 5;
    const auto tokens = [&](std::vector<int32_t>& dst, const char* part) {
      if (i >= n) throw bad("its ", part, " runs past its size");
      const size_t count = x[i++];
      if (count == 0) throw bad("empty ", part);
      if (count > n - i) throw bad("its ", part, " runs past its size");
      for (size_t k = 0; k < count; ++k, ++i) {
        if (x[i] >= vocab_size)
          throw bad("token ", x[i], " in its ", part, " is outside the vocabulary (vocab_size ",
                    vocab_size, ")");
        dst.push_back(x[i]);
      }
    };
    tokens(c.context, "context");
    c.endings.resize(size_t(endings));
    for (auto& end : c.endings) tokens(end, "ending");
    if (i != n) throw bad("size ", x[1], " bytes, but its fields take ", 2 * i);
    at += n;
  }
  TRIAD_CHECK(at == word_count, where, ": ", 2 * (word_count - at),
              " bytes after the last of the header's ", out.size(), " examples");
  return out;
}

}  // namespace triad
