#include "hdf5_handle.h"

#include <mutex>

namespace triad::io {

void silence_hdf5_errors() {
  static std::once_flag once;
  std::call_once(once, [] { H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr); });
}

std::unique_lock<std::recursive_mutex> hdf5_lock() {
  static std::recursive_mutex m;
  std::unique_lock<std::recursive_mutex> lock(m);
  silence_hdf5_errors();
  return lock;
}

namespace {

herr_t innermost_message(unsigned n, const H5E_error2_t* err, void* out) {
  auto* s = static_cast<std::string*>(out);
  if (n == 0 && err != nullptr && err->desc != nullptr) *s = err->desc;
  return 0;
}

}  // namespace

std::string hdf5_error_detail() {
  std::string s;
  H5Ewalk2(H5E_DEFAULT, H5E_WALK_UPWARD, innermost_message, &s);
  return s;
}

void fail_hdf5(const std::string& what) {
  const std::string detail = hdf5_error_detail();
  if (detail.empty()) fail(what);
  fail(what, " (HDF5: ", detail, ")");
}

H5Id own_file(hid_t id, const std::string& what) { return H5Id(h5check(id, what), H5Fclose); }
H5Id own_group(hid_t id, const std::string& what) { return H5Id(h5check(id, what), H5Gclose); }
H5Id own_dataset(hid_t id, const std::string& what) { return H5Id(h5check(id, what), H5Dclose); }
H5Id own_dataspace(hid_t id, const std::string& what) { return H5Id(h5check(id, what), H5Sclose); }
H5Id own_datatype(hid_t id, const std::string& what) { return H5Id(h5check(id, what), H5Tclose); }
H5Id own_attribute(hid_t id, const std::string& what) { return H5Id(h5check(id, what), H5Aclose); }
H5Id own_plist(hid_t id, const std::string& what) { return H5Id(h5check(id, what), H5Pclose); }

H5Id make_plist(hid_t cls) { return own_plist(H5Pcreate(cls), "cannot create a property list"); }

H5Id make_fapl(MPI_Comm comm, bool for_create) {
  H5Id fapl = make_plist(H5P_FILE_ACCESS);
  if (comm != MPI_COMM_NULL) {
    h5check(H5Pset_fapl_mpio(fapl, comm, MPI_INFO_NULL), "cannot select the MPI-IO driver");
  }
// H5Pset_file_locking: HDF5 1.10.7+ and 1.12.1+.
#if (H5_VERSION_GE(1, 10, 7) && !H5_VERSION_GE(1, 11, 0)) || H5_VERSION_GE(1, 12, 1)
  h5check(H5Pset_file_locking(fapl, false, true), "cannot disable file locking");
#endif
  if (for_create) {
    h5check(H5Pset_libver_bounds(fapl, H5F_LIBVER_V18, H5F_LIBVER_V18),
            "cannot set the file format version bounds");
  }
  return fapl;
}

bool link_exists(hid_t loc, const std::string& name) {
  return h5check(H5Lexists(loc, name.c_str(), H5P_DEFAULT), "cannot look up link " + name) > 0;
}

bool path_exists(hid_t loc, const std::string& path) {
  std::string prefix;
  size_t pos = 0;
  while (pos <= path.size()) {
    size_t next = path.find('/', pos);
    if (next == std::string::npos) next = path.size();
    const std::string part = path.substr(pos, next - pos);
    if (!part.empty()) {
      prefix += (prefix.empty() ? "" : "/") + part;
      if (!link_exists(loc, prefix)) return false;
    }
    pos = next + 1;
  }
  return true;
}

bool attr_exists(hid_t loc, const std::string& name) {
  return h5check(H5Aexists(loc, name.c_str()), "cannot look up attribute " + name) > 0;
}

namespace {

void write_scalar_attr(hid_t loc, const std::string& name, hid_t file_type, hid_t mem_type,
                       const void* value) {
  const std::string what = "cannot write attribute " + name;
  if (attr_exists(loc, name)) h5check(H5Adelete(loc, name.c_str()), what);
  H5Id space = own_dataspace(H5Screate(H5S_SCALAR), what);
  H5Id attr = own_attribute(
      H5Acreate2(loc, name.c_str(), file_type, space, H5P_DEFAULT, H5P_DEFAULT), what);
  h5check(H5Awrite(attr, mem_type, value), what);
  attr.close(what);
}

// Opens attribute `name` and checks that it holds a single value; nullopt if absent.
std::optional<H5Id> open_scalar_attr(hid_t loc, const std::string& name) {
  if (!attr_exists(loc, name)) return std::nullopt;
  const std::string what = "cannot read attribute " + name;
  H5Id attr = own_attribute(H5Aopen(loc, name.c_str(), H5P_DEFAULT), what);
  H5Id space = own_dataspace(H5Aget_space(attr), what);
  const hssize_t n = h5check(H5Sget_simple_extent_npoints(space), what);
  TRIAD_CHECK(n == 1, "attribute ", name, " holds ", n, " values, expected a single value");
  return attr;
}

H5T_class_t attr_class(hid_t attr, const std::string& name) {
  H5Id type = own_datatype(H5Aget_type(attr), "cannot read the type of attribute " + name);
  return H5Tget_class(type);
}

}  // namespace

void write_string_attr(hid_t loc, const std::string& name, const std::string& value) {
  const std::string what = "cannot write attribute " + name;
  TRIAD_CHECK(value.find('\0') == std::string::npos, "attribute ", name,
              ": the string contains a NUL character");
  H5Id type = own_datatype(H5Tcopy(H5T_C_S1), what);
  h5check(H5Tset_size(type, value.size() + 1), what);
  h5check(H5Tset_strpad(type, H5T_STR_NULLTERM), what);
  h5check(H5Tset_cset(type, H5T_CSET_ASCII), what);
  write_scalar_attr(loc, name, type, type, value.c_str());
}

void write_int64_attr(hid_t loc, const std::string& name, int64_t value) {
  write_scalar_attr(loc, name, H5T_STD_I64LE, H5T_NATIVE_INT64, &value);
}

void write_uint32_attr(hid_t loc, const std::string& name, uint32_t value) {
  write_scalar_attr(loc, name, H5T_STD_U32LE, H5T_NATIVE_UINT32, &value);
}

void write_double_attr(hid_t loc, const std::string& name, double value) {
  write_scalar_attr(loc, name, H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, &value);
}

std::optional<std::string> read_string_attr(hid_t loc, const std::string& name) {
  std::optional<H5Id> attr = open_scalar_attr(loc, name);
  if (!attr) return std::nullopt;
  const std::string what = "cannot read attribute " + name;
  H5Id type = own_datatype(H5Aget_type(*attr), what);
  TRIAD_CHECK(H5Tget_class(type) == H5T_STRING, "attribute ", name, " is not a string");
  if (h5check(H5Tis_variable_str(type), what) > 0) {
    H5Id mem = own_datatype(H5Tcopy(H5T_C_S1), what);
    h5check(H5Tset_size(mem, H5T_VARIABLE), what);
    // h5py writes str attributes as variable-length UTF-8: read in the file's character set
    // (HDF5 converts between ASCII and UTF-8 no more than between other types).
    h5check(H5Tset_cset(mem, H5Tget_cset(type)), what);
    char* p = nullptr;
    h5check(H5Aread(*attr, mem, &p), what);
    std::string s = p != nullptr ? p : "";
    H5free_memory(p);
    return s;
  }
  const size_t size = H5Tget_size(type);
  std::string buf(size, '\0');
  h5check(H5Aread(*attr, type, buf.data()), what);
  const size_t end = buf.find('\0');
  if (end != std::string::npos) buf.resize(end);
  return buf;
}

std::optional<int64_t> read_int64_attr(hid_t loc, const std::string& name) {
  std::optional<H5Id> attr = open_scalar_attr(loc, name);
  if (!attr) return std::nullopt;
  TRIAD_CHECK(attr_class(*attr, name) == H5T_INTEGER, "attribute ", name, " is not an integer");
  int64_t v = 0;
  h5check(H5Aread(*attr, H5T_NATIVE_INT64, &v), "cannot read attribute " + name);
  return v;
}

std::optional<double> read_double_attr(hid_t loc, const std::string& name) {
  std::optional<H5Id> attr = open_scalar_attr(loc, name);
  if (!attr) return std::nullopt;
  const H5T_class_t c = attr_class(*attr, name);
  TRIAD_CHECK(c == H5T_FLOAT || c == H5T_INTEGER, "attribute ", name, " is not a number");
  double v = 0;
  h5check(H5Aread(*attr, H5T_NATIVE_DOUBLE, &v), "cannot read attribute " + name);
  return v;
}

void write_doubles_attr(hid_t loc, const std::string& name, const std::vector<double>& values) {
  const std::string what = "cannot write attribute " + name;
  if (attr_exists(loc, name)) h5check(H5Adelete(loc, name.c_str()), what);
  const hsize_t n = values.size();
  H5Id space = own_dataspace(H5Screate_simple(1, &n, nullptr), what);
  H5Id attr = own_attribute(
      H5Acreate2(loc, name.c_str(), H5T_IEEE_F64LE, space, H5P_DEFAULT, H5P_DEFAULT), what);
  if (n > 0) h5check(H5Awrite(attr, H5T_NATIVE_DOUBLE, values.data()), what);
  attr.close(what);
}

std::optional<std::vector<double>> read_doubles_attr(hid_t loc, const std::string& name) {
  if (!attr_exists(loc, name)) return std::nullopt;
  const std::string what = "cannot read attribute " + name;
  H5Id attr = own_attribute(H5Aopen(loc, name.c_str(), H5P_DEFAULT), what);
  TRIAD_CHECK(attr_class(attr, name) == H5T_FLOAT, "attribute ", name, " is not a float array");
  H5Id space = own_dataspace(H5Aget_space(attr), what);
  TRIAD_CHECK(h5check(H5Sget_simple_extent_ndims(space), what) == 1, "attribute ", name,
              " is not 1-D");
  std::vector<double> v(size_t(h5check(H5Sget_simple_extent_npoints(space), what)));
  if (!v.empty()) h5check(H5Aread(attr, H5T_NATIVE_DOUBLE, v.data()), what);
  return v;
}

std::vector<hsize_t> dataset_dims(hid_t dset) {
  const std::string what = "cannot read the shape of a dataset";
  H5Id space = own_dataspace(H5Dget_space(dset), what);
  const int nd = h5check(H5Sget_simple_extent_ndims(space), what);
  std::vector<hsize_t> dims(nd);
  if (nd > 0) h5check(H5Sget_simple_extent_dims(space, dims.data(), nullptr), what);
  return dims;
}

}  // namespace triad::io
