// rope.cu — rotary position embedding in place: both pair orders (RopeStyle), any number of
// position axes with each rotary pair turning by its own axis (M-RoPE sections, 2-D vision RoPE).
#include <algorithm>

#include "cuda_api.h"
#include "ops.cuh"

namespace aircache {
namespace cuda {

namespace {

__global__ void rope_kernel(float* __restrict__ x, int64_t T, int64_t n_heads, int64_t head_dim, int64_t half,
                            const int32_t* __restrict__ pos, int n_axes, const int32_t* __restrict__ pair_axis,
                            const float* __restrict__ inv_freq, bool neox) {
    const int64_t total = T * n_heads * half;
    const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
    for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total; idx += stride) {
        const int64_t i = idx % half, th = idx / half;  // th = t * n_heads + h
        const int64_t t = th / n_heads;
        const int axis = pair_axis ? pair_axis[i] : 0;
        const float a = static_cast<float>(pos[t * n_axes + axis]) * inv_freq[i];
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
          int n_axes, const int32_t* pair_axis, const float* inv_freq, bool neox) {
    const int64_t half = n_rot / 2;
    if (T <= 0 || half <= 0) return;
    rope_kernel<<<grid_for(T * n_heads * half, 256), 256, 0, ex.stream()>>>(x, T, n_heads, head_dim, half, pos, n_axes,
                                                                            pair_axis, inv_freq, neox);
    AC_CUDA_CHECK_LAUNCH();
}

}  // namespace cuda
}  // namespace aircache
