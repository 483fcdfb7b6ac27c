# Finds the dependencies the standard way and wraps the ones without CMake targets.
find_package(MPI REQUIRED COMPONENTS C CXX)
find_package(OpenMP REQUIRED COMPONENTS CXX)
find_package(Boost 1.71 REQUIRED COMPONENTS program_options)

# Parallel HDF5: with serial and parallel HDF5 both installed, FindHDF5 picks serial
# unless told otherwise. triad writes checkpoints collectively with MPI-IO, so serial
# HDF5 is an error, not a fallback.
set(HDF5_PREFER_PARALLEL TRUE)
find_package(HDF5 REQUIRED COMPONENTS C)
if(NOT HDF5_IS_PARALLEL)
  message(FATAL_ERROR "triad needs a parallel (MPI-IO) HDF5; found a serial one at "
                      "${HDF5_INCLUDE_DIRS}. On Debian: apt-get install libhdf5-openmpi-dev")
endif()
add_library(triad_hdf5 INTERFACE)
target_include_directories(triad_hdf5 INTERFACE ${HDF5_INCLUDE_DIRS})
target_link_libraries(triad_hdf5 INTERFACE ${HDF5_C_LIBRARIES} MPI::MPI_C)
target_compile_definitions(triad_hdf5 INTERFACE ${HDF5_DEFINITIONS})

# BLAS: prefer OpenBLAS (the reference BLAS is ~20x slower); cblas.h comes with it.
set(BLA_VENDOR OpenBLAS)
find_package(BLAS)
if(NOT BLAS_FOUND)
  unset(BLA_VENDOR)
  find_package(BLAS REQUIRED)
endif()
find_path(TRIAD_CBLAS_INCLUDE cblas.h PATH_SUFFIXES openblas REQUIRED)
add_library(triad_blas INTERFACE)
target_include_directories(triad_blas INTERFACE ${TRIAD_CBLAS_INCLUDE})
target_link_libraries(triad_blas INTERFACE ${BLAS_LIBRARIES})

if(TRIAD_BUILD_TESTS)
  find_package(GTest REQUIRED)
endif()
