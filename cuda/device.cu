// device.cu — device discovery, error reporting and memory helpers.
#include "cuda_api.h"
#include "cuda_common.cuh"

namespace aircache {
namespace cuda {

void throw_cuda_error(cudaError_t err, const char* stmt, const char* file, int line) {
    (void)cudaGetLastError();  // clear the sticky-free error state for the next call
    const std::string msg = strprintf("CUDA error %d (%s: %s) in `%s` at %s:%d", static_cast<int>(err),
                                      cudaGetErrorName(err), cudaGetErrorString(err), stmt, file, line);
    if (err == cudaErrorMemoryAllocation) throw OutOfMemory(msg);
    throw Error(msg);
}

int device_count() noexcept {
    int n = 0;
    cudaError_t err = cudaGetDeviceCount(&n);
    if (err != cudaSuccess) {
        (void)cudaGetLastError();  // e.g. cudaErrorInsufficientDriver / cudaErrorNoDevice on CPU machines
        return 0;
    }
    return n;
}

std::string device_description(int device) {
    cudaDeviceProp p;
    AC_CUDA_CHECK(cudaGetDeviceProperties(&p, device));
    return strprintf("%s (sm_%d%d, %s)", p.name, p.major, p.minor, format_bytes(p.totalGlobalMem).c_str());
}

DeviceGuard::DeviceGuard(int device) {
    AC_CUDA_CHECK(cudaGetDevice(&prev_));
    if (prev_ != device) AC_CUDA_CHECK(cudaSetDevice(device));
}

DeviceGuard::~DeviceGuard() {
    int cur = -1;
    if (cudaGetDevice(&cur) == cudaSuccess && cur != prev_ && prev_ >= 0) (void)cudaSetDevice(prev_);
}

DeviceBuffer::DeviceBuffer(size_t bytes) : bytes_(bytes) {
    if (bytes == 0) return;
    cudaError_t err = cudaMalloc(&ptr_, bytes);
    if (err != cudaSuccess) {
        (void)cudaGetLastError();
        ptr_ = nullptr;
        size_t free_b = 0, total_b = 0;
        (void)cudaMemGetInfo(&free_b, &total_b);
        (void)cudaGetLastError();
        if (err == cudaErrorMemoryAllocation)
            throw OutOfMemory(strprintf("CUDA out of memory: asked for %s, %s free of %s", format_bytes(bytes).c_str(),
                                        format_bytes(free_b).c_str(), format_bytes(total_b).c_str()));
        throw_cuda_error(err, "cudaMalloc", __FILE__, __LINE__);
    }
}

DeviceBuffer::~DeviceBuffer() {
    if (ptr_) (void)cudaFree(ptr_);
}

}  // namespace cuda
}  // namespace aircache
