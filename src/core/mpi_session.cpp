#include "triad/core/mpi_session.h"

#include <stdlib.h>  // mkdtemp, setenv

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <vector>

namespace triad {

void leave_out_shared_file_pointers() { setenv("OMPI_MCA_sharedfp", "^sm,lockedfile", 0); }

namespace {

bool launched() {
  for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK", "PMI_SIZE"})
    if (std::getenv(v) != nullptr) return true;
  return false;
}

// The orte_tmpdir_base a parameter file sets ("orte_tmpdir_base = /scratch"), or "".
std::string configured_base(const std::string& file) {
  std::ifstream in(file);
  std::string line;
  while (std::getline(in, line)) {
    const size_t eq = line.find('=');
    if (eq == std::string::npos || line.find('#') < eq) continue;
    auto trim = [](std::string s) {
      const size_t a = s.find_first_not_of(" \t"), b = s.find_last_not_of(" \t\r");
      return a == std::string::npos ? std::string() : s.substr(a, b - a + 1);
    };
    if (trim(line.substr(0, eq)) == "orte_tmpdir_base") return trim(line.substr(eq + 1));
  }
  return "";
}

// Where the private directory goes: under the base a site or the user configured for Open MPI
// (node-local scratch, say; the user's file first, as Open MPI reads it), else $TMPDIR, else /tmp.
// `from` says which of them.
std::string parent_dir(std::string* from) {
  std::vector<std::string> files;
  if (const char* home = std::getenv("HOME"))
    files.push_back(std::string(home) + "/.openmpi/mca-params.conf");
  if (const char* prefix = std::getenv("OPAL_PREFIX"))
    files.push_back(std::string(prefix) + "/etc/openmpi-mca-params.conf");
  files.push_back("/etc/openmpi/openmpi-mca-params.conf");  // Debian's
  for (const std::string& f : files) {
    if (std::string base = configured_base(f); !base.empty()) {
      *from = "orte_tmpdir_base of " + f;
      return base;
    }
  }
  const char* tmp = std::getenv("TMPDIR");
  const bool set = tmp != nullptr && *tmp != '\0';
  *from = set ? "$TMPDIR" : "the default";
  return set ? tmp : "/tmp";
}

}  // namespace

SingletonSessionDir::SingletonSessionDir() {
  if (launched() || std::getenv("OMPI_MCA_orte_tmpdir_base") != nullptr) return;
  std::string from;
  const std::string parent = parent_dir(&from);
  const std::string pattern = parent + "/triad-mpi-XXXXXX";
  std::vector<char> buf(pattern.begin(), pattern.end());
  buf.push_back('\0');
  // No directory (a read-only or missing parent, a file): say so, and leave Open MPI its own
  // (shared) one there, whose error, if it cannot make one either, names the directory.
  if (mkdtemp(buf.data()) == nullptr) {
    std::fprintf(stderr,
                 "triad: warning: cannot make a private MPI session directory under %s (%s): %s; "
                 "Open MPI's shared one is used\n",
                 parent.c_str(), from.c_str(), std::strerror(errno));
    return;
  }
  dir_ = buf.data();
  setenv("OMPI_MCA_orte_tmpdir_base", dir_.c_str(), 1);
}

SingletonSessionDir::~SingletonSessionDir() {
  if (dir_.empty()) return;
  std::error_code ec;
  std::filesystem::remove_all(dir_, ec);
}

}  // namespace triad
