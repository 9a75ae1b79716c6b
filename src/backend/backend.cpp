#include "backend/backend.h"

#include "core/error.h"

namespace hwaga {

#ifndef HWAGA_HAVE_CUDA
std::unique_ptr<Backend> make_cuda_backend(std::string* why) {
  if (why) *why = "hwaga was built without the CUDA backend (nvcc was not found at build time)";
  return nullptr;
}
#endif

// ---- defaults of the transformer ops for backends that do not implement them yet ----

namespace {
[[noreturn]] void not_implemented(const Backend& be, const char* op) {
  fail(op, " is not implemented on ", be.name());
}
}  // namespace

Tensor Backend::upload_weight(const Tensor& host) { return upload(host, host.dtype()); }
Tensor Backend::layer_norm(const Tensor&, const Tensor&, const Tensor&, float) { not_implemented(*this, "layer_norm"); }
Tensor Backend::gelu(const Tensor&) { not_implemented(*this, "gelu"); }
Tensor Backend::embedding(const Tensor&, const Tensor&) { not_implemented(*this, "embedding"); }
Tensor Backend::add_rows(const Tensor&, const Tensor&) { not_implemented(*this, "add_rows"); }
Tensor Backend::concat(const std::vector<Tensor>&) { not_implemented(*this, "concat"); }
Backend::KvCache Backend::kv_cache_new(int64_t, int64_t, int64_t, int64_t) { not_implemented(*this, "kv_cache_new"); }
void Backend::kv_cache_gather(KvCache&, const KvCache&, const std::vector<int32_t>&) {
  not_implemented(*this, "kv_cache_gather");
}
Tensor Backend::attention_step(const Tensor&, const Tensor&, const Tensor&, KvCache&, int) {
  not_implemented(*this, "attention_step");
}

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
