// NcclComm (train/nccl_comm.h): NCCL 2 loaded with dlopen. The declarations below are the
// parts of nccl.h that hwaga calls; their values are NCCL's stable ABI (ncclFloat32 = 7,
// ncclSum = 0, ncclSuccess = 0, a 128-byte id passed by value).
#include "train/nccl_comm.h"

#include <dlfcn.h>

#include <cstring>
#include <mutex>

#include "backend/cuda/cuda_backend.h"
#include "core/error.h"
#include "train/train_ops.h"

namespace hwaga::train {

namespace {

constexpr size_t kIdBytes = 128;  // NCCL_UNIQUE_ID_BYTES
struct NcclId {
  char internal[kIdBytes];
};
using ncclComm_t = void*;
using ncclResult_t = int;
constexpr ncclResult_t kNcclSuccess = 0;
constexpr int kNcclFloat32 = 7;
constexpr int kNcclSum = 0;

struct NcclApi {
  void* lib = nullptr;
  std::string why;
  ncclResult_t (*get_unique_id)(NcclId*) = nullptr;
  ncclResult_t (*comm_init_rank)(ncclComm_t*, int, NcclId, int) = nullptr;
  ncclResult_t (*all_reduce)(const void*, void*, size_t, int, int, ncclComm_t, void*) = nullptr;
  ncclResult_t (*group_start)() = nullptr;
  ncclResult_t (*group_end)() = nullptr;
  ncclResult_t (*comm_destroy)(ncclComm_t) = nullptr;
  const char* (*error_string)(ncclResult_t) = nullptr;
};

// Loads the library once per process; on failure api.lib stays null and api.why says why.
NcclApi& api() {
  static NcclApi a;
  static std::once_flag once;
  std::call_once(once, [] {
    std::string tried;
    for (const char* name : {"libnccl.so.2", "libnccl.so"}) {
      a.lib = dlopen(name, RTLD_NOW | RTLD_LOCAL);
      if (a.lib) break;
      const char* e = dlerror();
      tried += std::string(tried.empty() ? "" : "; ") + (e ? e : name);
    }
    if (!a.lib) {
      a.why = "NCCL was not found (" + tried +
              "); install NVIDIA's libnccl2 or add the folder of a libnccl.so.2 to LD_LIBRARY_PATH";
      return;
    }
    auto sym = [&](const char* n) {
      void* p = dlsym(a.lib, n);
      if (!p && a.why.empty()) a.why = std::string("the NCCL library lacks ") + n;
      return p;
    };
    a.get_unique_id = reinterpret_cast<decltype(a.get_unique_id)>(sym("ncclGetUniqueId"));
    a.comm_init_rank = reinterpret_cast<decltype(a.comm_init_rank)>(sym("ncclCommInitRank"));
    a.all_reduce = reinterpret_cast<decltype(a.all_reduce)>(sym("ncclAllReduce"));
    a.group_start = reinterpret_cast<decltype(a.group_start)>(sym("ncclGroupStart"));
    a.group_end = reinterpret_cast<decltype(a.group_end)>(sym("ncclGroupEnd"));
    a.comm_destroy = reinterpret_cast<decltype(a.comm_destroy)>(sym("ncclCommDestroy"));
    a.error_string = reinterpret_cast<decltype(a.error_string)>(sym("ncclGetErrorString"));
    if (!a.why.empty()) {
      dlclose(a.lib);
      a.lib = nullptr;
    }
  });
  return a;
}

NcclApi& loaded() {
  NcclApi& a = api();
  if (!a.lib) fail("--dist-backend nccl: ", a.why);
  return a;
}

void check(ncclResult_t r, const char* call) {
  if (r != kNcclSuccess) {
    const char* s = api().error_string ? api().error_string(r) : nullptr;
    fail("NCCL error in ", call, ": ", s ? s : "unknown", " (", r, ")");
  }
}

#if __has_include(<nccl.h>)  // the toolkit ships the header: check the declarations against it
}  // namespace
}  // namespace hwaga::train
#include <nccl.h>
namespace hwaga::train {
namespace {
static_assert(sizeof(NcclId) == sizeof(ncclUniqueId) && kIdBytes == NCCL_UNIQUE_ID_BYTES);
static_assert(kNcclFloat32 == int(ncclFloat32) && kNcclSum == int(ncclSum) && kNcclSuccess == int(ncclSuccess));
static_assert(sizeof(ncclResult_t) == sizeof(::ncclResult_t) && sizeof(ncclComm_t) == sizeof(::ncclComm_t));
#endif

}  // namespace

struct NcclComm::Impl {
  ncclComm_t comm = nullptr;
  void* stream = nullptr;
  int rank = 0, world = 1;
};

bool nccl_available(std::string* why) {
  NcclApi& a = api();
  if (why) *why = a.why;
  return a.lib != nullptr;
}

std::string NcclComm::unique_id() {
  NcclApi& a = loaded();
  NcclId id;
  check(a.get_unique_id(&id), "ncclGetUniqueId");
  return std::string(id.internal, kIdBytes);
}

NcclComm::NcclComm(int rank, int world, const std::string& id, TrainOps& ops) : impl_(std::make_unique<Impl>()) {
  NcclApi& a = loaded();
  HWAGA_CHECK(ops.device() == Device::CUDA, "--dist-backend nccl needs the GPU's training ops (--device cuda)");
  HWAGA_CHECK(id.size() == kIdBytes, "NCCL id of ", id.size(), " bytes, expected ", kIdBytes);
  HWAGA_CHECK(world >= 1 && rank >= 0 && rank < world, "NCCL: rank ", rank, " outside [0, ", world, ")");
  NcclId nid;
  std::memcpy(nid.internal, id.data(), kIdBytes);
  impl_->stream = cuda_stream(ops.backend());
  impl_->rank = rank;
  impl_->world = world;
  ops.synchronize();  // the device is current and idle before NCCL sets up
  check(a.comm_init_rank(&impl_->comm, world, nid, rank), "ncclCommInitRank");
}

NcclComm::~NcclComm() {
  if (impl_ && impl_->comm && api().comm_destroy) api().comm_destroy(impl_->comm);
}

void NcclComm::all_reduce_sum(const std::vector<std::pair<float*, int64_t>>& buffers) {
  NcclApi& a = loaded();
  check(a.group_start(), "ncclGroupStart");
  for (const auto& [p, n] : buffers)
    if (n > 0) check(a.all_reduce(p, p, size_t(n), kNcclFloat32, kNcclSum, impl_->comm, impl_->stream), "ncclAllReduce");
  check(a.group_end(), "ncclGroupEnd");
}

int NcclComm::rank() const { return impl_->rank; }
int NcclComm::world() const { return impl_->world; }

}  // namespace hwaga::train
