// dequant.cu — dequantization of every supported weight type on the device.
//
// One thread per output element, grid-stride; the element formula is the shared BlockFormat<T>
// (cpp/quant_blocks.h), so the CPU and the GPU read the block layouts from one definition.
// Compiled with -fmad=false (CMakeLists.txt): results are bit-identical to the CPU reference.
#include "cuda_api.h"
#include "cuda_common.cuh"
#include "ops.cuh"
#include "quants.h"

namespace aircache {
namespace cuda {

namespace {

template <class F, class T>
__global__ void dequantize_kernel(const uint8_t* __restrict__ src, T* __restrict__ dst, int64_t n) {
    const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
    for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
        const int64_t ib = i / F::QK;
        const int e = static_cast<int>(i - ib * F::QK);
        dst[i] = from_f32<T>(F::value(src + ib * F::BYTES, e));
    }
}

template <class T>
void dequantize_any(GGMLType type, const void* d_src, T* d_dst, int64_t n, cudaStream_t stream) {
    if (n <= 0) return;
    constexpr int kThreads = 256;
    const unsigned blocks = grid_for(n, kThreads);
    const bool ok = dispatch_block_format(type, [&](auto fmt) {
        using F = decltype(fmt);
        dequantize_kernel<F, T><<<blocks, kThreads, 0, stream>>>(static_cast<const uint8_t*>(d_src), d_dst, n);
    });
    if (!ok) require_supported(type, std::string("CUDA dequantization of ") + type_info(type).name);
    AC_CUDA_CHECK_LAUNCH();
}

}  // namespace

// Device pointers in, device pointer out; asynchronous on `stream`.
void dequantize_device(GGMLType type, const void* d_src, float* d_dst, int64_t n, cudaStream_t stream) {
    dequantize_any(type, d_src, d_dst, n, stream);
}

void dequantize_f16(GGMLType type, const void* d_src, __half* d_dst, int64_t n, cudaStream_t stream) {
    dequantize_any(type, d_src, d_dst, n, stream);
}

void dequantize_on_device(GGMLType type, const void* src, size_t src_bytes, float* dst, int64_t n, int device) {
    const TypeInfo* ti = type_info(static_cast<uint32_t>(type));
    if (!ti || !ti->supported) require_supported(type, "data");
    if (n < 0 || n % ti->block_size != 0 || row_bytes(*ti, n) > src_bytes)
        throw InputError(strprintf("cannot dequantize %lld elements of %s from %zu bytes", static_cast<long long>(n),
                                   ti->name, src_bytes));
    DeviceGuard guard(device);
    DeviceBuffer d_src(row_bytes(*ti, n));
    DeviceBuffer d_dst(static_cast<size_t>(n) * sizeof(float));
    AC_CUDA_CHECK(cudaMemcpy(d_src.get(), src, d_src.bytes(), cudaMemcpyHostToDevice));
    dequantize_device(type, d_src.get(), d_dst.as<float>(), n, nullptr);
    AC_CUDA_CHECK(cudaDeviceSynchronize());
    AC_CUDA_CHECK(cudaMemcpy(dst, d_dst.get(), d_dst.bytes(), cudaMemcpyDeviceToHost));
}

}  // namespace cuda
}  // namespace aircache
