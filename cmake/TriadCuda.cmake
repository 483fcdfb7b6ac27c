# The CUDA backend is built only where nvcc exists, so the same tree builds CPU-only
# elsewhere. CMake 3.25 knows no CUDA20 dialect: pass -std=c++20 to nvcc ourselves.
set(TRIAD_HAVE_CUDA OFF)
if(TRIAD_ENABLE_CUDA)
  include(CheckLanguage)
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
      # 'native' fails on a machine without a GPU; name the targets: H100/H200 (90a, with the
      # Hopper-only instructions) and A100 (80).
      set(CMAKE_CUDA_ARCHITECTURES "90a;80")
    endif()
    enable_language(CUDA)
    set(CMAKE_CUDA_STANDARD_REQUIRED OFF)
    set(CMAKE_CUDA_FLAGS "${CMAKE_CUDA_FLAGS} -std=c++20")
    find_package(CUDAToolkit REQUIRED)
    file(GLOB cuda_srcs CONFIGURE_DEPENDS ${CMAKE_CURRENT_SOURCE_DIR}/src/kernels/cuda/*.cu)
    if(cuda_srcs)
      set(TRIAD_HAVE_CUDA ON)
      add_library(triad_cuda_kernels STATIC ${cuda_srcs})
      target_include_directories(triad_cuda_kernels PUBLIC ${CMAKE_CURRENT_SOURCE_DIR}/include)
      # NCCL is opened with dlopen at run time (cuda_nccl_comm.cu): only its header is needed
      # here (it ships with the toolkit), and builds start where NCCL lives elsewhere or not at
      # all (parallel.comm = mpi). cuBLAS and cuBLASLt too, when a CUDA backend is made
      # (cublas_library.cu): linked, every process, CPU runs and tests included, would load
      # their 600 MB at start-up; TRIAD_CUBLAS_DIR is where to look after the loader's path.
      target_link_libraries(triad_cuda_kernels PUBLIC CUDA::cudart_static ${CMAKE_DL_LIBS})
      get_target_property(cublas_location CUDA::cublas IMPORTED_LOCATION)
      if(cublas_location)
        get_filename_component(cublas_dir "${cublas_location}" DIRECTORY)
      else()
        set(cublas_dir "${CUDAToolkit_LIBRARY_DIR}")
      endif()
      target_compile_definitions(triad_cuda_kernels PRIVATE TRIAD_CUBLAS_DIR="${cublas_dir}")
      # The device-staging Comm (cuda_staged_comm.cu) sees the Comm interface, which includes
      # mpi.h; only the headers: MPI's compile options are meant for the host compiler.
      target_include_directories(triad_cuda_kernels PRIVATE ${MPI_CXX_INCLUDE_DIRS})
      target_compile_definitions(triad_cuda_kernels PUBLIC TRIAD_HAVE_CUDA=1)
    endif()
    message(STATUS "triad: nvcc found (${CMAKE_CUDA_COMPILER}); CUDA backend: ${TRIAD_HAVE_CUDA}")
  else()
    message(STATUS "triad: no nvcc; building the CPU backend only")
  endif()
endif()
