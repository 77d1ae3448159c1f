// cuda_common.cuh — checked CUDA calls, device memory, the execution context of a runner and the
// small device helpers (reductions, conversions) every kernel family shares.
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <string>
#include <vector>

#include "common.h"
#include "quant_blocks.h"

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
    DeviceBuffer& operator=(DeviceBuffer&& o) noexcept;

    void* get() const { return ptr_; }
    template <class T> T* as() const { return static_cast<T*>(ptr_); }
    size_t bytes() const { return bytes_; }
    // Grows (contents lost) to at least `bytes`.
    void reserve(size_t bytes);

private:
    void* ptr_ = nullptr;
    size_t bytes_ = 0;
};

// The execution context of one runner (a model's decoder, its vision tower, one test op): a
// device, a stream, a cuBLAS handle when the library could be loaded, and GEMM scratch. Runners do
// not share contexts, so two models on one device can run from two threads.
class Exec {
public:
    explicit Exec(int device);
    ~Exec();
    Exec(const Exec&) = delete;
    Exec& operator=(const Exec&) = delete;

    int device() const { return device_; }
    cudaStream_t stream() const { return stream_; }
    // cublasHandle_t (created on first use), or null: cuBLAS is not available, use the built-in kernels.
    void* blas();
    DeviceBuffer& scratch(int i) { return scratch_[i]; }
    void sync() const;

    // Host <-> device on this stream (the host side is pageable: each call returns when the host
    // buffer may be reused).
    void upload(void* dst, const void* src, size_t bytes) const;
    void download(void* dst, const void* src, size_t bytes) const;  // waits for the stream first

private:
    int device_;
    cudaStream_t stream_ = nullptr;
    void* blas_ = nullptr;
    bool blas_tried_ = false;
    DeviceBuffer scratch_[3];
};

// A device buffer filled from host data.
DeviceBuffer upload_buffer(const Exec& ex, const void* src, size_t bytes);

// A weight on the device: its raw GGUF blocks, rows of n_cols elements.
struct DeviceWeight {
    GGMLType type = GGMLType::F32;
    int64_t n_rows = 0, n_cols = 0;
    size_t row_bytes = 0;
    const uint8_t* data = nullptr;
};

// cuBLAS, loaded at run time (cublas.cu): a handle for `stream`, or null with the reason.
void* blas_create(cudaStream_t stream, std::string* why_not);
void blas_destroy(void* handle) noexcept;
std::string blas_description();
// C = A^T B in cuBLAS column-major terms: Y[T][R] = X[T][n] W[R][n]^T with W and X both F16
// (f16 = true) or both F32, Y F32, accumulation in F32.
void blas_gemm(void* handle, bool f16, const void* W, const void* X, float* Y, int64_t R, int64_t T, int64_t n,
               int64_t ldy);

// --- device helpers ---
#if defined(__CUDACC__)
__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}
__device__ __forceinline__ double warp_sum_d(double v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
// Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the result.
// `red` is __shared__ float[32]. Contains __syncthreads(): call from every thread.
__device__ __forceinline__ float block_sum(float v, float* red) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads();  // red may still be read by a previous call
    if (lane == 0) red[warp] = v;
    __syncthreads();
    float r = 0.0f;
    for (int i = 0; i < nw; ++i) r += red[i];
    return r;
}
__device__ __forceinline__ float block_max(float v, float* red) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) red[warp] = v;
    __syncthreads();
    float r = -INFINITY;
    for (int i = 0; i < nw; ++i) r = fmaxf(r, red[i]);
    return r;
}
__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(__half x) { return __half2float(x); }
template <class T> __device__ __forceinline__ T from_f32(float x);
template <> __device__ __forceinline__ float from_f32<float>(float x) { return x; }
template <> __device__ __forceinline__ __half from_f32<__half>(float x) { return __float2half_rn(x); }
#endif

// Blocks for n items at `threads` per block, capped for grid-stride loops.
inline unsigned grid_for(int64_t n, int threads) {
    const int64_t b = (n + threads - 1) / threads;
    return static_cast<unsigned>(b < 1 ? 1 : (b > 1048576 ? 1048576 : b));
}

}  // namespace cuda
}  // namespace aircache
