#include "run_directory.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <vector>

#include "triad/core/error.h"

namespace fs = std::filesystem;

namespace triad {
namespace {

constexpr const char* kRecord[] = {"metrics.h5", "log.txt", "samples.txt", "config.ini"};

}  // namespace

int lock_run_directory(const std::string& run_path, std::string& note) {
  const std::string path = run_path + "/.lock";
  const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  TRIAD_CHECK(fd >= 0, "run directory ", run_path, ": cannot open its lock file .lock (",
              std::strerror(errno), ")");
  if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
    const int err = errno;
    if (err == EWOULDBLOCK) {
      std::string holder(200, '\0');
      const ssize_t n = ::pread(fd, holder.data(), holder.size(), 0);
      holder.resize(n > 0 ? size_t(n) : 0);
      while (!holder.empty() && (holder.back() == '\n' || holder.back() == '\0')) holder.pop_back();
      ::close(fd);
      fail("run directory ", run_path, " is in use by another triad-train (",
           holder.empty() ? "its process is not named" : holder,
           "): one run at a time in a directory; wait for it to end or give another run.name");
    }
    ::close(fd);
    note = "warning: run directory " + run_path + ": cannot lock .lock (" + std::strerror(err) +
           "); nothing keeps a second run out of it";
    return -1;
  }
  // Who holds it, for the message of a run that finds it held.
  char host[256] = {};
  ::gethostname(host, sizeof host - 1);
  const std::string who =
      "pid " + std::to_string(::getpid()) + " on " + (host[0] ? host : "this host") + "\n";
  if (::ftruncate(fd, 0) != 0 || ::pwrite(fd, who.data(), who.size(), 0) < 0) {
    // (The lock holds without the note.)
  }
  return fd;
}

void unlock_run_directory(int fd) {
  if (fd >= 0) ::close(fd);  // (drops the flock)
}

void check_run_record(const std::string& run_path) {
  for (const char* name : kRecord) {
    const std::string p = run_path + "/" + name;
    std::error_code ec;
    const auto st = fs::status(p, ec);
    TRIAD_CHECK(!fs::exists(st) || fs::is_regular_file(st), "run directory ", run_path, ": ", name,
                " is not a regular file (a directory, pipe or device); the run writes it");
  }
}

std::string set_aside_earlier_record(const std::string& run_path) {
  std::vector<std::string> present;
  std::error_code ec;
  for (const char* name : kRecord)
    if (fs::exists(run_path + "/" + name, ec)) present.push_back(name);
  if (present.empty()) return "";
  int n = 1;
  while (fs::exists(run_path + "/earlier_" + std::to_string(n), ec)) ++n;
  const std::string dir = run_path + "/earlier_" + std::to_string(n);
  fs::create_directory(dir, ec);
  TRIAD_CHECK(!ec, "run directory ", run_path, ": cannot make ", dir,
              " to keep the earlier run's record in (", ec.message(), ")");
  std::string moved;
  for (const std::string& name : present) {
    fs::rename(run_path + "/" + name, dir + "/" + name, ec);
    TRIAD_CHECK(!ec, "run directory ", run_path, ": cannot move ", name, " to ", dir, " (",
                ec.message(), ")");
    moved += (moved.empty() ? "" : ", ") + name;
  }
  return "this run starts a history of its own: the earlier run's " + moved + " moved to " + dir;
}

}  // namespace triad
