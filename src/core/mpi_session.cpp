#include "triad/core/mpi_session.h"

#include <stdlib.h>  // mkdtemp, setenv

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <vector>

namespace triad {

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
std::string parent_dir() {
  std::vector<std::string> files;
  if (const char* home = std::getenv("HOME"))
    files.push_back(std::string(home) + "/.openmpi/mca-params.conf");
  if (const char* prefix = std::getenv("OPAL_PREFIX"))
    files.push_back(std::string(prefix) + "/etc/openmpi-mca-params.conf");
  files.push_back("/etc/openmpi/openmpi-mca-params.conf");  // Debian's
  for (const std::string& f : files)
    if (std::string base = configured_base(f); !base.empty()) return base;
  const char* tmp = std::getenv("TMPDIR");
  return tmp != nullptr && *tmp != '\0' ? tmp : "/tmp";
}

}  // namespace

SingletonSessionDir::SingletonSessionDir() {
  if (launched() || std::getenv("OMPI_MCA_orte_tmpdir_base") != nullptr) return;
  const std::string pattern = parent_dir() + "/triad-mpi-XXXXXX";
  std::vector<char> buf(pattern.begin(), pattern.end());
  buf.push_back('\0');
  // No directory (a read-only or missing parent): leave Open MPI's default, whose own error
  // then names the directory.
  if (mkdtemp(buf.data()) == nullptr) return;
  dir_ = buf.data();
  setenv("OMPI_MCA_orte_tmpdir_base", dir_.c_str(), 1);
}

SingletonSessionDir::~SingletonSessionDir() {
  if (dir_.empty()) return;
  std::error_code ec;
  std::filesystem::remove_all(dir_, ec);
}

}  // namespace triad
