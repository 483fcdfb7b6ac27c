// The preference file of include/triad/io/preference_file.h: read whole on every rank (a pair's
// tokens are a few KB; a dataset of 10^5 pairs a few hundred MB at most), checked once.
#include "triad/io/preference_file.h"

#include <filesystem>

#include "hdf5_handle.h"
#include "triad/core/error.h"

namespace triad {
namespace {

namespace fs = std::filesystem;
using io::h5check;
using io::H5Id;

const char* const kSides[2] = {"chosen", "rejected"};

// Dataset `name` (1-D, an integer type) read as mem_type into out.
template <class T>
void read_integers(hid_t file, const std::string& name, hid_t mem_type, std::vector<T>& out,
                   const std::string& where) {
  TRIAD_CHECK(io::path_exists(file, name), where, ": no dataset /", name);
  H5Id d = io::own_dataset(H5Dopen2(file, name.c_str(), H5P_DEFAULT), where + ": /" + name);
  H5Id type = io::own_datatype(H5Dget_type(d), where + ": /" + name);
  TRIAD_CHECK(H5Tget_class(type) == H5T_INTEGER, where, ": /", name, " is not an integer dataset");
  const std::vector<hsize_t> dims = io::dataset_dims(d);
  TRIAD_CHECK(dims.size() == 1, where, ": /", name, " has shape ", io::shape_string(dims),
              ", not one dimension");
  out.resize(size_t(dims[0]));
  if (!out.empty())
    h5check(H5Dread(d, mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, out.data()),
            where + ": reading /" + name);
}

void write_integers(hid_t group, const char* name, hid_t file_type, hid_t mem_type,
                    const void* data, size_t n, const std::string& where) {
  const hsize_t dims[1] = {hsize_t(n)};
  H5Id space = io::own_dataspace(H5Screate_simple(1, dims, nullptr), where);
  H5Id d = io::own_dataset(
      H5Dcreate2(group, name, file_type, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), where);
  if (n > 0) h5check(H5Dwrite(d, mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data), where);
}

}  // namespace

void PreferenceSide::add(std::span<const int32_t> ids, std::span<const uint8_t> counted) {
  TRIAD_ASSERT(ids.size() == counted.size());
  tokens.insert(tokens.end(), ids.begin(), ids.end());
  counts.insert(counts.end(), counted.begin(), counted.end());
  offsets.push_back(int64_t(tokens.size()));
}

PreferenceSet read_preference_file(const std::string& path, int vocab_size, int64_t max_tokens,
                                   const std::string& what) {
  const auto lock = io::hdf5_lock();
  io::silence_hdf5_errors();
  const std::string where = what + " " + path;
  std::error_code ec;
  TRIAD_CHECK(fs::is_regular_file(path, ec), where, ": no such file");
  TRIAD_CHECK(H5Fis_hdf5(path.c_str()) > 0, where, ": not an HDF5 file");
  H5Id file = io::own_file(
      H5Fopen(path.c_str(), H5F_ACC_RDONLY, io::make_fapl(MPI_COMM_NULL, false)), where);
  const auto format = io::read_string_attr(file, "format");
  TRIAD_CHECK(format && *format == kPreferenceFormat, where, ": not a preference file (its format ",
              "attribute is ", format ? "\"" + *format + "\"" : std::string("missing"), ", not \"",
              kPreferenceFormat, "\"; triad-tokenize preferences writes one)");
  const auto version = io::read_int64_attr(file, "version");
  TRIAD_CHECK(version && *version == kPreferenceVersion, where, ": version ",
              version ? std::to_string(*version) : std::string("missing"), ", this build reads ",
              kPreferenceVersion);
  PreferenceSet set;
  for (int s = 0; s < 2; ++s) {
    PreferenceSide& side = s == 0 ? set.chosen : set.rejected;
    const std::string g = kSides[s];
    read_integers(file, g + "/tokens", H5T_NATIVE_INT32, side.tokens, where);
    read_integers(file, g + "/counts", H5T_NATIVE_UINT8, side.counts, where);
    read_integers(file, g + "/offsets", H5T_NATIVE_INT64, side.offsets, where);
  }
  TRIAD_CHECK(set.chosen.offsets.size() == set.rejected.offsets.size(), where, ": ",
              int64_t(set.chosen.offsets.size()) - 1, " chosen sequences but ",
              int64_t(set.rejected.offsets.size()) - 1, " rejected ones");
  for (int s = 0; s < 2; ++s) {
    const PreferenceSide& side = set.side(s);
    const std::string g = kSides[s];
    const int64_t n = int64_t(side.tokens.size());
    TRIAD_CHECK(side.counts.size() == side.tokens.size(), where, ": /", g, "/counts has ",
                side.counts.size(), " values for ", n, " tokens");
    TRIAD_CHECK(side.offsets.size() >= 2, where, ": /", g, "/offsets holds no pair");
    TRIAD_CHECK(side.offsets.front() == 0 && side.offsets.back() == n, where, ": /", g,
                "/offsets must start at 0 and end at the token count ", n, " (they run from ",
                side.offsets.front(), " to ", side.offsets.back(), ")");
    for (size_t i = 0; i + 1 < side.offsets.size(); ++i) {
      const int64_t a = side.offsets[i], b = side.offsets[i + 1];
      const std::string seq = where + ": pair " + std::to_string(i) + "'s " + g + " sequence";
      TRIAD_CHECK(b >= a + 2, seq, " has ", b - a, " tokens (offsets not increasing by 2 or more)");
      TRIAD_CHECK(b - a <= max_tokens, seq, " has ", b - a,
                  " tokens, more than model.seq_len + 1 = ", max_tokens,
                  " (shorten it when tokenizing: triad-tokenize preferences --max-tokens)");
      TRIAD_CHECK(side.counts[size_t(a)] == 0, seq, " counts its first token as a target");
      int64_t counted = 0;
      for (int64_t j = a; j < b; ++j) {
        const int32_t t = side.tokens[size_t(j)];
        TRIAD_CHECK(t >= 0 && t < vocab_size, seq, " has token ", t, " at ", j - a,
                    ", outside the vocabulary [0, ", vocab_size, ")");
        TRIAD_CHECK(side.counts[size_t(j)] <= 1, seq, " has count ", int(side.counts[size_t(j)]),
                    " at ", j - a, " (counts are 0 or 1)");
        counted += side.counts[size_t(j)];
      }
      TRIAD_CHECK(counted > 0, seq, " counts no target (its response is empty)");
    }
  }
  return set;
}

void write_preference_file(const std::string& path, const PreferenceSet& set) {
  const auto lock = io::hdf5_lock();
  io::silence_hdf5_errors();
  TRIAD_CHECK(set.chosen.offsets.size() == set.rejected.offsets.size() && set.pairs() > 0,
              "internal error: a preference set needs pairs on both sides");
  const std::string partial = path + ".partial";
  {
    H5Id file = io::own_file(
        H5Fcreate(partial.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, io::make_fapl(MPI_COMM_NULL, true)),
        "cannot create " + partial);
    io::write_string_attr(file, "format", kPreferenceFormat);
    io::write_int64_attr(file, "version", kPreferenceVersion);
    for (int s = 0; s < 2; ++s) {
      const PreferenceSide& side = set.side(s);
      const std::string where = "writing " + partial + ": /" + kSides[s];
      H5Id g =
          io::own_group(H5Gcreate2(file, kSides[s], H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), where);
      write_integers(g, "tokens", H5T_STD_I32LE, H5T_NATIVE_INT32, side.tokens.data(),
                     side.tokens.size(), where + "/tokens");
      write_integers(g, "counts", H5T_STD_U8LE, H5T_NATIVE_UINT8, side.counts.data(),
                     side.counts.size(), where + "/counts");
      write_integers(g, "offsets", H5T_STD_I64LE, H5T_NATIVE_INT64, side.offsets.data(),
                     side.offsets.size(), where + "/offsets");
    }
    file.close("writing " + partial);
  }
  std::error_code ec;
  fs::rename(partial, path, ec);
  TRIAD_CHECK(!ec, "cannot rename ", partial, " to ", path, ": ", ec.message());
}

}  // namespace triad
