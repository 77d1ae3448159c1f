// cuda_common.cuh — checked CUDA calls and device memory helpers shared by every kernel family.
#pragma once

#include <cuda_runtime.h>

#include <string>

#include "common.h"

namespace aircache {
namespace cuda {

// Throws aircache::Error with the failing statement, file and line (OutOfMemory for allocation
// failures). Every CUDA runtime call goes through AC_CUDA_CHECK.
[[noreturn]] void throw_cuda_error(cudaError_t err, const char* stmt, const char* file, int line);

#define AC_CUDA_CHECK(stmt)                                                           \
    do {                                                                              \
        cudaError_t ac_err_ = (stmt);                                                 \
        if (ac_err_ != cudaSuccess) ::aircache::cuda::throw_cuda_error(ac_err_, #stmt, __FILE__, __LINE__); \
    } while (0)

// Kernel launches: checks the launch error right after <<<...>>>.
#define AC_CUDA_CHECK_LAUNCH() AC_CUDA_CHECK(cudaGetLastError())

// Makes `device` current for the scope.
class DeviceGuard {
public:
    explicit DeviceGuard(int device);
    ~DeviceGuard();

private:
    int prev_ = -1;
};

// Owning device allocation. Allocation failure is OutOfMemory naming the bytes asked and free.
class DeviceBuffer {
public:
    DeviceBuffer() = default;
    explicit DeviceBuffer(size_t bytes);
    ~DeviceBuffer();
    DeviceBuffer(const DeviceBuffer&) = delete;
    DeviceBuffer& operator=(const DeviceBuffer&) = delete;
    DeviceBuffer(DeviceBuffer&& o) noexcept : ptr_(o.ptr_), bytes_(o.bytes_) { o.ptr_ = nullptr; o.bytes_ = 0; }

    void* get() const { return ptr_; }
    template <class T> T* as() const { return static_cast<T*>(ptr_); }
    size_t bytes() const { return bytes_; }

private:
    void* ptr_ = nullptr;
    size_t bytes_ = 0;
};

}  // namespace cuda
}  // namespace aircache
