// elementwise.cu — residual adds and products (same shape or one row broadcast), scaling, plain
// and gated activations, row softmax, row gathers and scatters.
#include "cuda_api.h"
#include "ops.cuh"

namespace aircache {
namespace cuda {

namespace {

constexpr int kThreads = 256;

#define AC_GRID_STRIDE(i, n)                                                                   \
    for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < (n); \
         i += static_cast<int64_t>(gridDim.x) * blockDim.x)

// y_cols > 0: y is one row of that many columns, broadcast over x's rows
__global__ void add_kernel(float* __restrict__ x, const float* __restrict__ y, int64_t n, int64_t y_cols) {
    AC_GRID_STRIDE(i, n) x[i] += y[y_cols ? i % y_cols : i];
}

__global__ void mul_kernel(float* __restrict__ x, const float* __restrict__ y, int64_t n, int64_t y_cols) {
    AC_GRID_STRIDE(i, n) x[i] *= y[y_cols ? i % y_cols : i];
}

__global__ void scale_kernel(float* __restrict__ x, float s, int64_t n) { AC_GRID_STRIDE(i, n) x[i] *= s; }

// Activation kinds (backend.h): 0 GELU (erf), 1 quick GELU, 2 SiLU, 3 GELU (tanh approximation)
__device__ __forceinline__ float act(float v, int kind) {
    if (kind == 0) return 0.5f * v * (1.0f + erff(v * 0.70710678118654752f));
    if (kind == 1) return v / (1.0f + expf(-1.702f * v));
    if (kind == 2) return v / (1.0f + expf(-v));
    return 0.5f * v * (1.0f + tanhf(0.79788456080286535588f * v * (1.0f + 0.044715f * v * v)));
}

__global__ void activation_kernel(float* __restrict__ x, int64_t n, int kind) { AC_GRID_STRIDE(i, n) x[i] = act(x[i], kind); }

__global__ void glu_kernel(float* __restrict__ gate, const float* __restrict__ up, int64_t n, int kind) {
    AC_GRID_STRIDE(i, n) gate[i] = act(gate[i], kind) * up[i];
}

__global__ void softmax_kernel(float* __restrict__ x, int64_t n) {
    __shared__ float red[32];
    float* r = x + static_cast<int64_t>(blockIdx.x) * n;
    float mx = -INFINITY;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) mx = fmaxf(mx, r[i]);
    mx = block_max(mx, red);
    float s = 0.0f;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
        const float e = expf(r[i] - mx);
        r[i] = e;
        s += e;
    }
    const float inv = 1.0f / block_sum(s, red);
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) r[i] *= inv;
}

__global__ void gather_rows_kernel(const float* __restrict__ src, const int32_t* __restrict__ idx, int64_t n_idx,
                                   int64_t n, float* __restrict__ dst) {
    AC_GRID_STRIDE(i, n_idx * n) dst[i] = src[static_cast<int64_t>(idx[i / n]) * n + i % n];
}

__global__ void scatter_rows_kernel(float* __restrict__ dst, const int32_t* __restrict__ idx, int64_t n_idx,
                                    int64_t n, const float* __restrict__ src) {
    AC_GRID_STRIDE(i, n_idx * n) dst[static_cast<int64_t>(idx[i / n]) * n + i % n] = src[i];
}

void check_act(int kind) {
    if (kind < 0 || kind > 3) throw Error(strprintf("internal: activation kind %d", kind));
}

}  // namespace

void add(const Exec& ex, float* x, const float* y, int64_t n, int64_t y_cols) {
    if (n <= 0) return;
    add_kernel<<<grid_for(n, kThreads), kThreads, 0, ex.stream()>>>(x, y, n, y_cols);
    AC_CUDA_CHECK_LAUNCH();
}

void mul(const Exec& ex, float* x, const float* y, int64_t n, int64_t y_cols) {
    if (n <= 0) return;
    mul_kernel<<<grid_for(n, kThreads), kThreads, 0, ex.stream()>>>(x, y, n, y_cols);
    AC_CUDA_CHECK_LAUNCH();
}

void scale(const Exec& ex, float* x, float s, int64_t n) {
    if (n <= 0) return;
    scale_kernel<<<grid_for(n, kThreads), kThreads, 0, ex.stream()>>>(x, s, n);
    AC_CUDA_CHECK_LAUNCH();
}

void glu(const Exec& ex, float* gate, const float* up, int64_t n, int kind) {
    if (n <= 0) return;
    check_act(kind);
    glu_kernel<<<grid_for(n, kThreads), kThreads, 0, ex.stream()>>>(gate, up, n, kind);
    AC_CUDA_CHECK_LAUNCH();
}

void activation(const Exec& ex, float* x, int64_t n, int kind) {
    if (n <= 0) return;
    check_act(kind);
    activation_kernel<<<grid_for(n, kThreads), kThreads, 0, ex.stream()>>>(x, n, kind);
    AC_CUDA_CHECK_LAUNCH();
}

void softmax(const Exec& ex, float* x, int64_t T, int64_t n) {
    if (T <= 0 || n <= 0) return;
    softmax_kernel<<<static_cast<unsigned>(T), kThreads, 0, ex.stream()>>>(x, n);
    AC_CUDA_CHECK_LAUNCH();
}

void gather_rows(const Exec& ex, const float* src, const int32_t* idx, int64_t n_idx, int64_t n, float* dst) {
    if (n_idx <= 0 || n <= 0) return;
    gather_rows_kernel<<<grid_for(n_idx * n, kThreads), kThreads, 0, ex.stream()>>>(src, idx, n_idx, n, dst);
    AC_CUDA_CHECK_LAUNCH();
}

void scatter_rows(const Exec& ex, float* dst, const int32_t* idx, int64_t n_idx, int64_t n, const float* src) {
    if (n_idx <= 0 || n <= 0) return;
    scatter_rows_kernel<<<grid_for(n_idx * n, kThreads), kThreads, 0, ex.stream()>>>(dst, idx, n_idx, n, src);
    AC_CUDA_CHECK_LAUNCH();
}

}  // namespace cuda
}  // namespace aircache
