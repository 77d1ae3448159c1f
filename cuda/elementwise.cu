// elementwise.cu — residual adds, gated and plain activations, row softmax, row gathers.
#include "cuda_api.h"
#include "ops.cuh"

namespace aircache {
namespace cuda {

namespace {

constexpr int kThreads = 256;

#define AC_GRID_STRIDE(i, n)                                                                   \
    for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < (n); \
         i += static_cast<int64_t>(gridDim.x) * blockDim.x)

__global__ void add_kernel(float* __restrict__ x, const float* __restrict__ y, int64_t n) {
    AC_GRID_STRIDE(i, n) x[i] += y[i];
}

__global__ void add_rows_kernel(float* __restrict__ x, const float* __restrict__ row, int64_t T, int64_t n) {
    AC_GRID_STRIDE(i, T * n) x[i] += row[i % n];
}

__global__ void silu_mul_kernel(float* __restrict__ gate, const float* __restrict__ up, int64_t n) {
    AC_GRID_STRIDE(i, n) {
        const float g = gate[i];
        gate[i] = g / (1.0f + expf(-g)) * up[i];
    }
}

// kind: cpu::Activation (0 GELU with erf, 1 quick GELU, 2 SiLU)
__global__ void activation_kernel(float* __restrict__ x, int64_t n, int kind) {
    AC_GRID_STRIDE(i, n) {
        const float v = x[i];
        if (kind == 0) x[i] = 0.5f * v * (1.0f + erff(v * 0.70710678118654752f));
        else if (kind == 1) x[i] = v / (1.0f + expf(-1.702f * v));
        else x[i] = v / (1.0f + expf(-v));
    }
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

}  // namespace

void add(const Exec& ex, float* x, const float* y, int64_t n) {
    if (n <= 0) return;
    add_kernel<<<grid_for(n, kThreads), kThreads, 0, ex.stream()>>>(x, y, n);
    AC_CUDA_CHECK_LAUNCH();
}

void add_rows(const Exec& ex, float* x, const float* row, int64_t T, int64_t n) {
    if (T <= 0 || n <= 0) return;
    add_rows_kernel<<<grid_for(T * n, kThreads), kThreads, 0, ex.stream()>>>(x, row, T, n);
    AC_CUDA_CHECK_LAUNCH();
}

void silu_mul(const Exec& ex, float* gate, const float* up, int64_t n) {
    if (n <= 0) return;
    silu_mul_kernel<<<grid_for(n, kThreads), kThreads, 0, ex.stream()>>>(gate, up, n);
    AC_CUDA_CHECK_LAUNCH();
}

void activation(const Exec& ex, float* x, int64_t n, int kind) {
    if (n <= 0) return;
    if (kind < 0 || kind > 2) throw Error(strprintf("internal: activation kind %d", kind));
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

namespace test {
namespace {
// Runs f(device copy of x) and copies the result back into x.
template <class F> void in_place(float* x, int64_t n, int device, F&& f) {
    Exec ex(device);
    DeviceGuard g(device);
    DeviceBuffer dx = upload_buffer(ex, x, sizeof(float) * static_cast<size_t>(n));
    f(ex, dx.as<float>());
    ex.download(x, dx.get(), dx.bytes());
}
}  // namespace

void silu_mul(float* gate, const float* up, int64_t n, int device) {
    in_place(gate, n, device, [&](Exec& ex, float* d) {
        DeviceBuffer du = upload_buffer(ex, up, sizeof(float) * static_cast<size_t>(n));
        cuda::silu_mul(ex, d, du.as<float>(), n);
        ex.sync();
    });
}

void activation(float* x, int64_t n, int kind, int device) {
    in_place(x, n, device, [&](Exec& ex, float* d) { cuda::activation(ex, d, n, kind); });
}

void softmax(float* x, int64_t T, int64_t n, int device) {
    in_place(x, T * n, device, [&](Exec& ex, float* d) { cuda::softmax(ex, d, T, n); });
}

void add(float* x, const float* y, int64_t n, int device) {
    in_place(x, n, device, [&](Exec& ex, float* d) {
        DeviceBuffer dy = upload_buffer(ex, y, sizeof(float) * static_cast<size_t>(n));
        cuda::add(ex, d, dy.as<float>(), n);
        ex.sync();
    });
}
}  // namespace test

}  // namespace cuda
}  // namespace aircache
