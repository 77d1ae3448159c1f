// patch.cu — the vision towers' grid ops: the patch-embedding convolution (kernel = stride =
// patch: the image cut into patch columns, then the matmul of matmul.cu) and 2-D average pooling
// of a grid of rows.
#include "cuda_api.h"
#include "ops.cuh"

namespace aircache {
namespace cuda {

namespace {

constexpr int kThreads = 256;

// cols[p][(c * P + ky) * P + kx] = pixels[c][py * P + ky][px * P + kx], p = py * nx + px
__global__ void im2col_kernel(const float* __restrict__ px, int64_t C, int64_t H, int64_t W, int64_t P,
                              float* __restrict__ cols) {
    const int64_t nx = W / P, K = C * P * P, total = (H / P) * nx * K;
    for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
         i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
        const int64_t p = i / K, e = i % K, c = e / (P * P), ky = (e / P) % P, kx = e % P;
        const int64_t py = p / nx, qx = p % nx;
        cols[i] = px[(c * H + py * P + ky) * W + qx * P + kx];
    }
}

// out[(y * ox + x)][c] = mean over the k x k window of in[((y k + ky) W + x k + kx)][c]
__global__ void avg_pool_kernel(const float* __restrict__ in, int64_t W, int64_t C, int64_t k, int64_t oy,
                                int64_t ox, float* __restrict__ out) {
    const int64_t total = oy * ox * C;
    const float inv = 1.0f / static_cast<float>(k * k);
    for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
         i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
        const int64_t c = i % C, r = i / C, y = r / ox, x = r % ox;
        float s = 0.0f;
        for (int64_t ky = 0; ky < k; ++ky)
            for (int64_t kx = 0; kx < k; ++kx) s += in[((y * k + ky) * W + x * k + kx) * C + c];
        out[i] = s * inv;
    }
}

}  // namespace

void patch_embed(Exec& ex, const float* pixels, int64_t C, int64_t H, int64_t W, int64_t P, const DeviceWeight& w,
                 const float* bias, float* out) {
    const int64_t NP = (H / P) * (W / P), K = C * P * P;
    if (NP <= 0) return;
    DeviceBuffer& cols = ex.scratch(2);
    cols.reserve(sizeof(float) * static_cast<size_t>(NP * K));
    im2col_kernel<<<grid_for(NP * K, kThreads), kThreads, 0, ex.stream()>>>(pixels, C, H, W, P, cols.as<float>());
    AC_CUDA_CHECK_LAUNCH();
    matmul(ex, w, cols.as<float>(), NP, out, bias);
}

void avg_pool(const Exec& ex, const float* x, int64_t H, int64_t W, int64_t C, int64_t k, float* out) {
    const int64_t oy = H / k, ox = W / k;
    if (oy * ox * C <= 0) return;
    avg_pool_kernel<<<grid_for(oy * ox * C, kThreads), kThreads, 0, ex.stream()>>>(x, W, C, k, oy, ox, out);
    AC_CUDA_CHECK_LAUNCH();
}

}  // namespace cuda
}  // namespace aircache
