// norm.cu — RMSNorm and LayerNorm: one block per row, block reductions in F32.
#include "cuda_api.h"
#include "ops.cuh"

namespace aircache {
namespace cuda {

namespace {

constexpr int kThreads = 256;

__global__ void rmsnorm_kernel(const float* __restrict__ x, const float* __restrict__ w, int64_t n, float eps,
                               float* __restrict__ out) {
    __shared__ float red[32];
    const float* xr = x + static_cast<int64_t>(blockIdx.x) * n;
    float* o = out + static_cast<int64_t>(blockIdx.x) * n;
    float ss = 0.0f;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) ss += xr[i] * xr[i];
    ss = block_sum(ss, red);
    const float scale = 1.0f / sqrtf(ss / static_cast<float>(n) + eps);
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) o[i] = (xr[i] * scale) * w[i];
}

__global__ void layernorm_kernel(const float* __restrict__ x, const float* __restrict__ w,
                                 const float* __restrict__ b, int64_t n, float eps, float* out) {
    __shared__ float red[32];
    const float* xr = x + static_cast<int64_t>(blockIdx.x) * n;
    float* o = out + static_cast<int64_t>(blockIdx.x) * n;  // may alias x: every read precedes the writes
    float s = 0.0f;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) s += xr[i];
    const float mean = block_sum(s, red) / static_cast<float>(n);
    float v = 0.0f;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
        const float d = xr[i] - mean;
        v += d * d;
    }
    const float var = block_sum(v, red) / static_cast<float>(n);
    const float inv = 1.0f / sqrtf(var + eps);
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) o[i] = (xr[i] - mean) * inv * w[i] + b[i];
}

}  // namespace

void rmsnorm(const Exec& ex, const float* x, const float* w, int64_t T, int64_t n, float eps, float* out) {
    if (T <= 0) return;
    rmsnorm_kernel<<<static_cast<unsigned>(T), kThreads, 0, ex.stream()>>>(x, w, n, eps, out);
    AC_CUDA_CHECK_LAUNCH();
}

void layernorm(const Exec& ex, const float* x, const float* w, const float* b, int64_t T, int64_t n, float eps,
               float* out) {
    if (T <= 0) return;
    layernorm_kernel<<<static_cast<unsigned>(T), kThreads, 0, ex.stream()>>>(x, w, b, n, eps, out);
    AC_CUDA_CHECK_LAUNCH();
}

namespace test {
void rmsnorm(const float* x, const float* w, int64_t T, int64_t n, float eps, float* out, int device) {
    Exec ex(device);
    DeviceGuard g(device);
    const size_t bytes = sizeof(float) * static_cast<size_t>(T * n);
    DeviceBuffer dx = upload_buffer(ex, x, bytes), dw = upload_buffer(ex, w, sizeof(float) * n), dy(bytes);
    cuda::rmsnorm(ex, dx.as<float>(), dw.as<float>(), T, n, eps, dy.as<float>());
    ex.download(out, dy.get(), bytes);
}

void layernorm(const float* x, const float* w, const float* b, int64_t T, int64_t n, float eps, float* out,
               int device) {
    Exec ex(device);
    DeviceGuard g(device);
    const size_t bytes = sizeof(float) * static_cast<size_t>(T * n);
    DeviceBuffer dx = upload_buffer(ex, x, bytes), dw = upload_buffer(ex, w, sizeof(float) * n);
    DeviceBuffer db = upload_buffer(ex, b, sizeof(float) * n), dy(bytes);
    cuda::layernorm(ex, dx.as<float>(), dw.as<float>(), db.as<float>(), T, n, eps, dy.as<float>());
    ex.download(out, dy.get(), bytes);
}
}  // namespace test

}  // namespace cuda
}  // namespace aircache
