// pybind11 module: what is not a tensor op (build information). Tensor ops register themselves
// with the torch dispatcher from their own translation units when this library is loaded.
#include <torch/extension.h>

#include <string>

#ifndef HNAS_FAST_VERSION
#define HNAS_FAST_VERSION "0.0.0"
#endif
#ifndef HNAS_CUDA_ARCH_LIST
#define HNAS_CUDA_ARCH_LIST ""
#endif

namespace {

pybind11::dict build_info() {
  pybind11::dict info;
  info["version"] = HNAS_FAST_VERSION;
#ifdef HNAS_WITH_CUDA
  info["with_cuda"] = true;
  info["cuda_arch_list"] = std::string(HNAS_CUDA_ARCH_LIST);
#else
  info["with_cuda"] = false;
  info["cuda_arch_list"] = std::string();
#endif
#ifdef _OPENMP
  info["openmp"] = true;
#else
  info["openmp"] = false;
#endif
  info["compiler"] = std::string(__VERSION__);
  info["torch_version_built"] = std::string(TORCH_VERSION);
  pybind11::list backends;
  backends.append("cpu");
#ifdef HNAS_WITH_CUDA
  backends.append("cuda");
#endif
  info["backends"] = backends;
  return info;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "hnas_fast compiled kernels: build information; ops live under torch.ops.hnas_fast";
  m.def("build_info", &build_info, "Version, compiled backends and CUDA arch list of this build.");
}
