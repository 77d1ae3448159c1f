// rope.cu — rotary position embedding in place, both pair orders (cpu::RopeStyle).
#include <algorithm>

#include "cuda_api.h"
#include "ops.cuh"

namespace aircache {
namespace cuda {

namespace {

__global__ void rope_kernel(float* __restrict__ x, int64_t T, int64_t n_heads, int64_t head_dim, int64_t half,
                            const int32_t* __restrict__ pos, const float* __restrict__ inv_freq, bool neox) {
    const int64_t total = T * n_heads * half;
    const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
    for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total; idx += stride) {
        const int64_t i = idx % half, th = idx / half;  // th = t * n_heads + h
        const int64_t t = th / n_heads;
        const float a = static_cast<float>(pos[t]) * inv_freq[i];
        const float c = cosf(a), s = sinf(a);
        float* v = x + th * head_dim;
        const int64_t i0 = neox ? i : 2 * i, i1 = neox ? i + half : 2 * i + 1;
        const float x0 = v[i0], x1 = v[i1];
        v[i0] = x0 * c - x1 * s;
        v[i1] = x1 * c + x0 * s;
    }
}

}  // namespace

void rope(const Exec& ex, float* x, int64_t T, int64_t n_heads, int64_t head_dim, int64_t n_rot, const int32_t* pos,
          const float* inv_freq, bool neox) {
    const int64_t half = n_rot / 2;
    if (T <= 0 || half <= 0) return;
    rope_kernel<<<grid_for(T * n_heads * half, 256), 256, 0, ex.stream()>>>(x, T, n_heads, head_dim, half, pos,
                                                                            inv_freq, neox);
    AC_CUDA_CHECK_LAUNCH();
}

namespace test {
void rope(float* x, int64_t T, int64_t n_heads, int64_t head_dim, int64_t n_rot, const int32_t* pos,
          const float* inv_freq, bool neox, int device) {
    Exec ex(device);
    DeviceGuard g(device);
    const size_t bytes = sizeof(float) * static_cast<size_t>(T * n_heads * head_dim);
    DeviceBuffer dx = upload_buffer(ex, x, bytes);
    DeviceBuffer dp = upload_buffer(ex, pos, sizeof(int32_t) * static_cast<size_t>(T));
    DeviceBuffer df = upload_buffer(ex, inv_freq, sizeof(float) * static_cast<size_t>(std::max<int64_t>(n_rot / 2, 0)));
    cuda::rope(ex, dx.as<float>(), T, n_heads, head_dim, n_rot, dp.as<int32_t>(), df.as<float>(), neox);
    ex.download(x, dx.get(), bytes);
}
}  // namespace test

}  // namespace cuda
}  // namespace aircache
