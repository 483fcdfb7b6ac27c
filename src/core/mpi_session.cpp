#include "triad/core/mpi_session.h"

#include <stdlib.h>  // mkdtemp, setenv

#include <cstdlib>
#include <filesystem>
#include <vector>

namespace triad {

namespace {

bool launched() {
  for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK", "PMI_SIZE"})
    if (std::getenv(v) != nullptr) return true;
  return false;
}

}  // namespace

SingletonSessionDir::SingletonSessionDir() {
  if (launched() || std::getenv("OMPI_MCA_orte_tmpdir_base") != nullptr) return;
  const char* tmp = std::getenv("TMPDIR");
  std::string pattern =
      std::string(tmp != nullptr && *tmp != '\0' ? tmp : "/tmp") + "/triad-mpi-XXXXXX";
  std::vector<char> buf(pattern.begin(), pattern.end());
  buf.push_back('\0');
  // No directory (a read-only or missing TMPDIR): leave Open MPI's default, whose own error then
  // names the directory.
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
