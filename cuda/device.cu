// device.cu — device discovery, error reporting, memory and the execution context.
#include "cuda_api.h"
#include "cuda_common.cuh"

namespace aircache {
namespace cuda {

void throw_cuda_error(cudaError_t err, const char* stmt, const char* file, int line) {
    (void)cudaGetLastError();  // clear the (non-sticky) error state for the next call
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

void memory_info(int device, size_t& free_bytes, size_t& total_bytes) {
    DeviceGuard g(device);
    AC_CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
}

DeviceGuard::DeviceGuard(int device) {
    AC_CUDA_CHECK(cudaGetDevice(&prev_));
    if (prev_ != device) AC_CUDA_CHECK(cudaSetDevice(device));
}

DeviceGuard::~DeviceGuard() {
    int cur = -1;
    if (cudaGetDevice(&cur) == cudaSuccess && cur != prev_ && prev_ >= 0) (void)cudaSetDevice(prev_);
}

static void* checked_malloc(size_t bytes) {
    void* p = nullptr;
    cudaError_t err = cudaMalloc(&p, bytes);
    if (err != cudaSuccess) {
        (void)cudaGetLastError();
        size_t free_b = 0, total_b = 0;
        (void)cudaMemGetInfo(&free_b, &total_b);
        (void)cudaGetLastError();
        if (err == cudaErrorMemoryAllocation)
            throw OutOfMemory(strprintf("CUDA out of memory: asked for %s, %s free of %s", format_bytes(bytes).c_str(),
                                        format_bytes(free_b).c_str(), format_bytes(total_b).c_str()));
        throw_cuda_error(err, "cudaMalloc", __FILE__, __LINE__);
    }
    return p;
}

DeviceBuffer::DeviceBuffer(size_t bytes) : bytes_(bytes) {
    if (bytes == 0) return;
    ptr_ = checked_malloc(bytes);
}

DeviceBuffer::~DeviceBuffer() {
    if (ptr_) (void)cudaFree(ptr_);
}

DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& o) noexcept {
    if (this != &o) {
        if (ptr_) (void)cudaFree(ptr_);
        ptr_ = o.ptr_;
        bytes_ = o.bytes_;
        o.ptr_ = nullptr;
        o.bytes_ = 0;
    }
    return *this;
}

void DeviceBuffer::reserve(size_t bytes) {
    if (bytes <= bytes_) return;
    if (ptr_) AC_CUDA_CHECK(cudaFree(ptr_));
    ptr_ = nullptr;
    bytes_ = 0;
    ptr_ = checked_malloc(bytes);
    bytes_ = bytes;
}

// --- host API (cuda_api.h) ---

void* device_malloc(size_t bytes, int device) {
    DeviceGuard g(device);
    return checked_malloc(bytes == 0 ? 1 : bytes);
}

void device_free(void* p) noexcept {
    if (p) (void)cudaFree(p);
}

void copy_to_device(void* dst, const void* src, size_t bytes, int device) {
    DeviceGuard g(device);
    AC_CUDA_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice));
}

void copy_to_host(void* dst, const void* src, size_t bytes, int device) {
    DeviceGuard g(device);
    AC_CUDA_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost));
}

void copy_on_device(void* dst, const void* src, size_t bytes, int device) {
    DeviceGuard g(device);
    AC_CUDA_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToDevice));
}

void memset_device(void* dst, int value, size_t bytes, int device) {
    DeviceGuard g(device);
    AC_CUDA_CHECK(cudaMemset(dst, value, bytes));
}

// --- Exec ---

Exec::Exec(int device) : device_(device) {
    DeviceGuard g(device);
    AC_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
}

void* Exec::blas() {
    if (!blas_tried_) {
        blas_tried_ = true;
        DeviceGuard g(device_);
        blas_ = blas_create(stream_, nullptr);
    }
    return blas_;
}

Exec::~Exec() {
    int prev = -1;
    (void)cudaGetDevice(&prev);
    (void)cudaSetDevice(device_);
    if (blas_) blas_destroy(blas_);
    if (stream_) (void)cudaStreamSynchronize(stream_);
    for (DeviceBuffer& b : scratch_) b = DeviceBuffer();
    if (stream_) (void)cudaStreamDestroy(stream_);
    if (prev >= 0) (void)cudaSetDevice(prev);
}

void Exec::sync() const { AC_CUDA_CHECK(cudaStreamSynchronize(stream_)); }

void Exec::upload(void* dst, const void* src, size_t bytes) const {
    if (bytes == 0) return;
    AC_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, stream_));
}

void Exec::download(void* dst, const void* src, size_t bytes) const {
    if (bytes == 0) return;
    AC_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, stream_));
    AC_CUDA_CHECK(cudaStreamSynchronize(stream_));
}

DeviceBuffer upload_buffer(const Exec& ex, const void* src, size_t bytes) {
    DeviceBuffer b(bytes);
    ex.upload(b.get(), src, bytes);
    return b;
}

}  // namespace cuda
}  // namespace aircache
