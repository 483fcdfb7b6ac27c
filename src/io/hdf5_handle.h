// Internal helpers of the io module: RAII ownership of HDF5 identifiers, silencing of HDF5's
// automatic error printing, the innermost HDF5 error message for our own messages, and
// string / int64 / float64 attributes. Everything here throws triad::Error with a message
// that does not name the file; the public functions prefix the file name.
#pragma once

#include <hdf5.h>
#include <mpi.h>

#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "triad/core/error.h"

namespace triad::io {

// Turns off HDF5's printing of its error stack (process-wide, idempotent) so that a failure
// reaches the user as one triad::Error. Called at every public entry point of the module.
void silence_hdf5_errors();

// The HDF5 library here is built without its thread-safe option, so one thread at a time may be
// inside it. Every public entry point of the module that calls HDF5 holds this process-wide lock
// for its whole run (an asynchronous checkpoint is written by a thread of its own while the
// training thread flushes metrics), and silences HDF5's error printing. Recursive: an entry
// point may call another.
[[nodiscard]] std::unique_lock<std::recursive_mutex> hdf5_lock();

// The most specific message on the current HDF5 error stack, e.g. "truncated file: eof = ...",
// or "" when the stack is empty. Call right after the failing HDF5 call: any later API call
// clears the stack.
std::string hdf5_error_detail();

// Throws triad::Error("<what>: <HDF5's own message>").
[[noreturn]] void fail_hdf5(const std::string& what);

// Checks the result of an HDF5 call (herr_t, hid_t, htri_t: negative = failure).
template <typename T>
T h5check(T ret, const std::string& what) {
  if (ret < 0) fail_hdf5(what);
  return ret;
}

// Owns one hid_t and closes it with the matching H5?close. Move-only.
class H5Id {
 public:
  using Closer = herr_t (*)(hid_t);
  H5Id() = default;
  H5Id(hid_t id, Closer closer) : id_(id), closer_(closer) {}
  H5Id(const H5Id&) = delete;
  H5Id& operator=(const H5Id&) = delete;
  H5Id(H5Id&& o) noexcept : id_(std::exchange(o.id_, H5I_INVALID_HID)), closer_(o.closer_) {}
  H5Id& operator=(H5Id&& o) noexcept {
    if (this != &o) {
      reset();
      id_ = std::exchange(o.id_, H5I_INVALID_HID);
      closer_ = o.closer_;
    }
    return *this;
  }
  ~H5Id() { reset(); }

  hid_t get() const { return id_; }
  operator hid_t() const { return id_; }  // NOLINT: used directly in HDF5 calls
  bool valid() const { return id_ >= 0; }

  // Closes now, ignoring failure (cleanup paths).
  void reset() {
    if (id_ >= 0 && closer_ != nullptr) closer_(id_);
    id_ = H5I_INVALID_HID;
  }
  // Closes now and reports failure (H5Fclose flushes: a full disk shows up here).
  void close(const std::string& what) {
    if (id_ < 0) return;
    const herr_t r = closer_(std::exchange(id_, H5I_INVALID_HID));
    if (r < 0) fail_hdf5(what);
  }

 private:
  hid_t id_ = H5I_INVALID_HID;
  Closer closer_ = nullptr;
};

// Checked constructors: each throws with `what` when the id is invalid.
H5Id own_file(hid_t id, const std::string& what);
H5Id own_group(hid_t id, const std::string& what);
H5Id own_dataset(hid_t id, const std::string& what);
H5Id own_dataspace(hid_t id, const std::string& what);
H5Id own_datatype(hid_t id, const std::string& what);
H5Id own_attribute(hid_t id, const std::string& what);
H5Id own_plist(hid_t id, const std::string& what);

// A property list of class cls (H5P_FILE_ACCESS, H5P_DATASET_CREATE, ...).
H5Id make_plist(hid_t cls);

// File access property list shared by checkpoints and metrics. comm != MPI_COMM_NULL: the
// MPI-IO driver over comm, else the default (sec2) driver. No file locking, so that a reader
// such as h5py can open a file while triad holds it open. for_create: new objects use the
// HDF5 1.8 format (readable by any h5py / h5dump; needed for attributes beyond 64 KiB).
H5Id make_fapl(MPI_Comm comm, bool for_create);

// True when `name` is a link in loc (no intermediate groups followed beyond what exists).
bool link_exists(hid_t loc, const std::string& name);
// True when the "/"-separated path exists below loc, checking each component in turn.
bool path_exists(hid_t loc, const std::string& path);
bool attr_exists(hid_t loc, const std::string& name);

// Scalar attributes. write_* replace an existing attribute of the same name. Strings are
// fixed-length, null-terminated ASCII (h5py reads them as bytes / str).
void write_string_attr(hid_t loc, const std::string& name, const std::string& value);
void write_int64_attr(hid_t loc, const std::string& name, int64_t value);
void write_uint32_attr(hid_t loc, const std::string& name, uint32_t value);
void write_double_attr(hid_t loc, const std::string& name, double value);

// Readers: std::nullopt when the attribute does not exist; throw when it exists but has the
// wrong class (e.g. a string where a number is expected) or is not a scalar.
std::optional<std::string> read_string_attr(hid_t loc, const std::string& name);
std::optional<int64_t> read_int64_attr(hid_t loc, const std::string& name);
std::optional<double> read_double_attr(hid_t loc, const std::string& name);
// A 1-D float64 attribute (any length, also 0); the reader throws on another class or rank.
void write_doubles_attr(hid_t loc, const std::string& name, const std::vector<double>& values);
std::optional<std::vector<double>> read_doubles_attr(hid_t loc, const std::string& name);

// The current dimensions of a dataset.
std::vector<hsize_t> dataset_dims(hid_t dset);

// "[256, 8]"
template <typename T>
std::string shape_string(const std::vector<T>& dims) {
  std::string s = "[";
  for (size_t i = 0; i < dims.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(dims[i]);
  }
  return s + "]";
}

}  // namespace triad::io
