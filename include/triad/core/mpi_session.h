// A private Open MPI session directory for a process started without a launcher.
//
// Open MPI keeps each job's session directory (the files of its shared-memory transports and of
// the shared-file-pointer component) under a top directory that every Open MPI process of the
// user on the node shares (orte_tmpdir_base: $TMPDIR, else /tmp). A program started without
// mpirun or srun is a singleton: Open MPI 4 runs every isolated singleton as the same job
// ([0,1]), so two running side by side (two evaluations on a login node, tests on several
// workers) use one job directory, and the first to end removes it under the other: MPI_Init fails
// ("ORTE_ERROR_LOG ... session_dir.c") or a running program loses its files.
#pragma once

#include <string>

namespace triad {

// Before MPI_Init: Open MPI's shared-file-pointer components sm and lockedfile left out
// (OMPI_MCA_sharedfp, where the environment does not set it). triad never uses shared file
// pointers, and those two do harm: sm prints spurious errors when several singletons share a
// temp directory; lockedfile writes a lock file beside every file MPI_File_open opens, so on a
// full disk no checkpoint could be opened, not even to be read (and the lock files stay behind).
void leave_out_shared_file_pointers();

class SingletonSessionDir {
 public:
  // Before MPI_Init. Where no launcher started this process (none of the variables Open MPI's
  // mpirun, PMIx or PMI set) and OMPI_MCA_orte_tmpdir_base is not set already, creates a fresh
  // directory and sets OMPI_MCA_orte_tmpdir_base to it: under the orte_tmpdir_base of Open MPI's
  // parameter files (~/.openmpi/mca-params.conf, then $OPAL_PREFIX's and Debian's
  // openmpi-mca-params.conf), else $TMPDIR, else /tmp; where it cannot (a read-only parent, a file
  // in its place), warns on stderr naming the parent and where it came from, and leaves Open
  // MPI its shared directory. Otherwise does nothing. A singleton
  // killed outright leaves its directory behind (as Open MPI's own).
  SingletonSessionDir();
  // After MPI_Finalize: removes the directory it created, with what Open MPI left there.
  ~SingletonSessionDir();
  SingletonSessionDir(const SingletonSessionDir&) = delete;
  SingletonSessionDir& operator=(const SingletonSessionDir&) = delete;

  // The directory, or "" where none was made.
  const std::string& path() const { return dir_; }

 private:
  std::string dir_;
};

}  // namespace triad
