#include "backend/backend.h"

#include "core/error.h"

namespace hwaga {

#ifndef HWAGA_HAVE_CUDA
std::unique_ptr<Backend> make_cuda_backend(std::string* why) {
  if (why) *why = "hwaga was built without the CUDA backend (nvcc was not found at build time)";
  return nullptr;
}
#endif

std::unique_ptr<Backend> make_backend(const std::string& which) {
  if (which == "cpu") return make_cpu_backend();
  if (which == "cuda" || which == "auto") {
    std::string why;
    auto be = make_cuda_backend(&why);
    if (be) return be;
    if (which == "cuda") fail("--device cuda: ", why);
    return make_cpu_backend();
  }
  fail("--device: unknown device '", which, "' (expected cpu, cuda or auto)");
}

}  // namespace hwaga
