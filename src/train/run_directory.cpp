#include "run_directory.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <vector>

#include "triad/core/error.h"
#include "triad/io/set_aside_path.h"

namespace fs = std::filesystem;

namespace triad {
namespace {

constexpr const char* kRecord[] = {"metrics.h5", "log.txt", "samples.txt", "config.ini"};

std::string this_host() {
  char host[256] = {};
  ::gethostname(host, sizeof host - 1);
  return host[0] ? host : "this host";
}

// The lock file's note: "pid N on HOST".
std::string holder_of(int fd) {
  std::string holder(200, '\0');
  const ssize_t n = ::pread(fd, holder.data(), holder.size(), 0);
  holder.resize(n > 0 ? size_t(n) : 0);
  while (!holder.empty() && (holder.back() == '\n' || holder.back() == '\0')) holder.pop_back();
  return holder;
}

// How long a lock held from another host is waited for: a node that failed keeps its NFS lock
// until the server's lease for it ends (90 s by default), while SLURM may have requeued its job
// on another node within seconds. TRIAD_RUN_LOCK_WAIT (seconds) sets it.
int lock_wait_seconds() {
  const char* v = std::getenv("TRIAD_RUN_LOCK_WAIT");
  if (v == nullptr || *v == '\0') return 180;
  char* end = nullptr;
  const long n = std::strtol(v, &end, 10);
  TRIAD_CHECK(*end == '\0' && n >= 0 && n <= 86400,
              "TRIAD_RUN_LOCK_WAIT must be a number of seconds in [0, 86400] (got '", v, "')");
  return int(n);
}

}  // namespace

int lock_run_directory(const std::string& run_path, std::string& note) {
  const std::string path = run_path + "/.lock";
  const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  TRIAD_CHECK(fd >= 0, "run directory ", run_path, ": cannot open its lock file .lock (",
              std::strerror(errno), ")");
  int locked = ::flock(fd, LOCK_EX | LOCK_NB);
  if (locked != 0 && errno == EWOULDBLOCK) {
    // Held from another host: perhaps by a node that failed, whose lock outlives it for a while.
    const std::string host = this_host(), holder = holder_of(fd);
    const bool elsewhere = !holder.ends_with(" on " + host);
    for (int waited = 0, wait = elsewhere ? lock_wait_seconds() : 0; waited < wait; waited += 5) {
      if (waited == 0)
        std::cerr << "triad-train: run directory " << run_path << " is locked by "
                  << (holder.empty() ? "another process" : holder) << "; waiting up to " << wait
                  << " s for it (a failed node's lock ends with its lease)" << std::endl;
      ::sleep(5);
      locked = ::flock(fd, LOCK_EX | LOCK_NB);
      if (locked == 0 || errno != EWOULDBLOCK) break;
    }
  }
  if (locked != 0) {
    const int err = errno;
    if (err == EWOULDBLOCK) {
      const std::string holder = holder_of(fd);
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
  const std::string who = "pid " + std::to_string(::getpid()) + " on " + this_host() + "\n";
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
  // With it, the earlier run's pipeline traces (a new run would overwrite a step's).
  for (const auto& entry : fs::directory_iterator(run_path, ec)) {
    const std::string name = entry.path().filename().string();
    if (name.starts_with("pipeline_trace_step_") && name.ends_with(".csv")) present.push_back(name);
  }
  const std::string dir = first_free_numbered_path(run_path + "/earlier_");
  fs::create_directory(dir, ec);
  TRIAD_CHECK(!ec, "run directory ", run_path, ": cannot make ", dir,
              " to keep the earlier run's record in (", ec.message(), ")");
  std::string moved;
  std::vector<std::string> done;
  for (const std::string& name : present) {
    fs::rename(run_path + "/" + name, dir + "/" + name, ec);
    if (ec) {  // all back where they were: the record is never split
      const std::string why = ec.message();
      for (const std::string& back : done) fs::rename(dir + "/" + back, run_path + "/" + back, ec);
      fs::remove(dir, ec);
      fail("run directory ", run_path, ": cannot move ", name, " to ", dir, " (", why, ")");
    }
    done.push_back(name);
    if (!name.starts_with("pipeline_trace_step_")) moved += (moved.empty() ? "" : ", ") + name;
  }
  return "this run starts a history of its own: the earlier run's " + moved + " moved to " + dir;
}

}  // namespace triad
