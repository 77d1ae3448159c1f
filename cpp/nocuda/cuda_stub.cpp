// cuda_stub.cpp — the CUDA entry points in a build without CUDA (compiled only then): no devices,
// and every use is an UnsupportedError saying so. Host code calls these unconditionally.
#include "backend/backend.h"
#include "common.h"
#include "cuda_api.h"

namespace aircache {

namespace {
[[noreturn]] void no_cuda(const char* what) {
    throw UnsupportedError(std::string(what) + ": this build of aircache.cpp has no CUDA support (built without nvcc "
                                               "or with AIRCACHE_CUDA=OFF)");
}
}  // namespace

std::unique_ptr<Backend> make_cuda_backend(int) { no_cuda("the CUDA backend"); }
bool cuda_supports(Op, GGMLType) { return false; }

namespace cuda {

int device_count() noexcept { return 0; }
bool built_with_cublas() noexcept { return false; }
std::string device_description(int) { no_cuda("CUDA device"); }
void memory_info(int, size_t&, size_t&) { no_cuda("CUDA memory"); }
std::string gemm_backend(int) { no_cuda("CUDA GEMM"); }
void* device_malloc(size_t, int) { no_cuda("CUDA memory"); }
void device_free(void*) noexcept {}
void copy_to_device(void*, const void*, size_t, int) { no_cuda("CUDA memory"); }
void copy_to_host(void*, const void*, size_t, int) { no_cuda("CUDA memory"); }
void copy_on_device(void*, const void*, size_t, int) { no_cuda("CUDA memory"); }
void memset_device(void*, int, size_t, int) { no_cuda("CUDA memory"); }
void dequantize_on_device(GGMLType, const void*, size_t, float*, int64_t, int) { no_cuda("CUDA dequantization"); }

}  // namespace cuda
}  // namespace aircache
