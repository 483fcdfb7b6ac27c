// The run directory's record of a training run (config.ini, log.txt, samples.txt, metrics.h5)
// and the lock that keeps a second triad-train out of a directory one is using.
#pragma once

#include <string>

namespace triad {

// Takes <run_path>/.lock (flock) for this process until unlock_run_directory or its exit,
// however it ends: two runs in one directory would interleave their checkpoints and corrupt
// metrics.h5 (a sweep point submitted again while its job runs). Throws triad::Error naming
// the holder (pid and host) where another process holds it. Returns the lock's descriptor, or
// -1 where the file system offers no locks (then `note` says so).
int lock_run_directory(const std::string& run_path, std::string& note);
void unlock_run_directory(int fd);

// Throws triad::Error where one of the record's files exists and is not a regular file (a
// named pipe there would block opening it for ever).
void check_run_record(const std::string& run_path);

// A run that starts a history of its own where another's record is (--resume none, a checkpoint
// of another directory, a job that stopped before its first checkpoint) moves that record into
// <run_path>/earlier_N rather than overwriting it. Returns what it moved ("" where nothing).
std::string set_aside_earlier_record(const std::string& run_path);

}  // namespace triad
