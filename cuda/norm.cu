// norm.cu — RMSNorm and LayerNorm (gains and biases optional): one block per row, block reductions in F32.
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
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) o[i] = w ? (xr[i] * scale) * w[i] : xr[i] * scale;
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
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x)
        o[i] = (xr[i] - mean) * inv * (w ? w[i] : 1.0f) + (b ? b[i] : 0.0f);
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

}  // namespace cuda
}  // namespace aircache
