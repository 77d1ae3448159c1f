// matmul.cu — dequantizing matrix products for every weight type: Y[t][r] = Σ_c W[r][c] X[t][c].
//
// Decode (T <= 8 rows): one warp per output row walks the row's quantized blocks once, decoding
// each element with the shared BlockFormat (quant_blocks.h) and accumulating all T rows of X, so a
// batch of sequences costs one read of the weights. Prefill (more rows): the weight is dequantized
// to F16 in row chunks (bounded scratch), X converted to F16, and cuBLAS multiplies with F32
// accumulation (tensor cores); F32 weights go to an F32 GEMM as they are. Without cuBLAS, a tiled
// shared-memory kernel does the same products in F32.
#include <algorithm>

#include "cuda_api.h"
#include "ops.cuh"
#include "quants.h"

namespace aircache {
namespace cuda {

namespace {

constexpr int kMatvecWarps = 4;  // output rows per block

template <class F, int TR>
__global__ void matvec_kernel(const uint8_t* __restrict__ W, size_t row_bytes, int64_t n_rows, int64_t n_cols,
                              const float* __restrict__ X, int T, float* __restrict__ Y,
                              const float* __restrict__ bias) {
    const int lane = threadIdx.x & 31;
    const int64_t row = static_cast<int64_t>(blockIdx.x) * kMatvecWarps + (threadIdx.x >> 5);
    if (row >= n_rows) return;
    const uint8_t* wr = W + static_cast<size_t>(row) * row_bytes;
    float acc[TR];
#pragma unroll
    for (int t = 0; t < TR; ++t) acc[t] = 0.0f;
    for (int64_t i = lane; i < n_cols; i += 32) {
        const int64_t ib = i / F::QK;
        const float w = F::value(wr + ib * F::BYTES, static_cast<int>(i - ib * F::QK));
#pragma unroll
        for (int t = 0; t < TR; ++t)
            if (t < T) acc[t] += w * X[static_cast<int64_t>(t) * n_cols + i];
    }
#pragma unroll
    for (int t = 0; t < TR; ++t) {
        if (t >= T) break;
        const float s = warp_sum(acc[t]);
        if (lane == 0) Y[static_cast<int64_t>(t) * n_rows + row] = s + (bias ? bias[row] : 0.0f);
    }
}

template <int TR>
void launch_matvec(const Exec& ex, const DeviceWeight& W, const float* X, int T, float* Y, const float* bias) {
    const unsigned blocks = static_cast<unsigned>((W.n_rows + kMatvecWarps - 1) / kMatvecWarps);
    const bool ok = dispatch_block_format(W.type, [&](auto fmt) {
        using F = decltype(fmt);
        matvec_kernel<F, TR><<<blocks, 32 * kMatvecWarps, 0, ex.stream()>>>(W.data, W.row_bytes, W.n_rows, W.n_cols,
                                                                             X, T, Y, bias);
    });
    if (!ok) require_supported(W.type, "CUDA matmul");
    AC_CUDA_CHECK_LAUNCH();
}

// Tiled F32-accumulating GEMM: a block computes 64 weight rows x 64 activation rows, 4x4 per thread.
constexpr int kTile = 64, kTileK = 16;

template <class WT>
__global__ void gemm_tiled_kernel(const WT* __restrict__ W, const float* __restrict__ X, float* __restrict__ Y,
                                  int64_t R, int64_t T, int64_t n, int64_t ldy, const float* __restrict__ bias) {
    __shared__ float Ws[kTileK][kTile + 1];
    __shared__ float Xs[kTileK][kTile + 1];
    const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
    const int64_t r0 = static_cast<int64_t>(blockIdx.x) * kTile, t0 = static_cast<int64_t>(blockIdx.y) * kTile;
    float acc[4][4];
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
        for (int i = 0; i < 4; ++i) acc[j][i] = 0.0f;
    for (int64_t k0 = 0; k0 < n; k0 += kTileK) {
        for (int e = threadIdx.x; e < kTile * kTileK; e += 256) {
            const int rr = e / kTileK, kk = e % kTileK;
            const int64_t k = k0 + kk, r = r0 + rr, t = t0 + rr;
            Ws[kk][rr] = (r < R && k < n) ? to_f32(W[r * n + k]) : 0.0f;
            Xs[kk][rr] = (t < T && k < n) ? X[t * n + k] : 0.0f;
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < kTileK; ++kk) {
            float w[4], x[4];
#pragma unroll
            for (int i = 0; i < 4; ++i) w[i] = Ws[kk][tx + 16 * i];
#pragma unroll
            for (int j = 0; j < 4; ++j) x[j] = Xs[kk][ty + 16 * j];
#pragma unroll
            for (int j = 0; j < 4; ++j)
#pragma unroll
                for (int i = 0; i < 4; ++i) acc[j][i] += x[j] * w[i];
        }
        __syncthreads();
    }
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        const int64_t t = t0 + ty + 16 * j;
        if (t >= T) continue;
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int64_t r = r0 + tx + 16 * i;
            if (r < R) Y[t * ldy + r] = acc[j][i] + (bias ? bias[r] : 0.0f);
        }
    }
}

template <class WT>
void launch_gemm_tiled(const Exec& ex, const WT* W, const float* X, float* Y, int64_t R, int64_t T, int64_t n,
                       int64_t ldy, const float* bias) {
    const dim3 grid(static_cast<unsigned>((R + kTile - 1) / kTile), static_cast<unsigned>((T + kTile - 1) / kTile));
    if (grid.y > 65535) throw UnsupportedError("too many rows for one CUDA GEMM");
    gemm_tiled_kernel<WT><<<grid, 256, 0, ex.stream()>>>(W, X, Y, R, T, n, ldy, bias);
    AC_CUDA_CHECK_LAUNCH();
}

__global__ void to_f16_kernel(const float* __restrict__ x, __half* __restrict__ y, int64_t n) {
    const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
    for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride)
        y[i] = __float2half_rn(x[i]);
}

__global__ void add_bias_kernel(float* __restrict__ Y, const float* __restrict__ bias, int64_t T, int64_t R) {
    const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
    for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < T * R; i += stride)
        Y[i] += bias[i % R];
}

constexpr int64_t kScratchElems = int64_t(64) << 20;  // weight rows dequantized at once (128 MiB of F16)

}  // namespace

void matmul(Exec& ex, const DeviceWeight& W, const float* X, int64_t T, float* Y, const float* bias) {
    const int64_t R = W.n_rows, n = W.n_cols;
    if (T <= 0 || R <= 0) return;
    if (T <= kMatvecMaxRows) {
        const int t = static_cast<int>(T);
        if (t == 1) launch_matvec<1>(ex, W, X, t, Y, bias);
        else if (t == 2) launch_matvec<2>(ex, W, X, t, Y, bias);
        else if (t <= 4) launch_matvec<4>(ex, W, X, t, Y, bias);
        else launch_matvec<8>(ex, W, X, t, Y, bias);
        return;
    }
    void* blas = ex.blas();
    if (W.type == GGMLType::F32) {
        const float* Wf = reinterpret_cast<const float*>(W.data);
        if (blas) {
            blas_gemm(blas, false, Wf, X, Y, R, T, n, R);
            if (bias) {
                add_bias_kernel<<<grid_for(T * R, 256), 256, 0, ex.stream()>>>(Y, bias, T, R);
                AC_CUDA_CHECK_LAUNCH();
            }
        } else {
            launch_gemm_tiled<float>(ex, Wf, X, Y, R, T, n, R, bias);
        }
        return;
    }
    // other types: weight rows to F16 in chunks
    const int64_t chunk = std::max<int64_t>(1, std::min<int64_t>(R, kScratchElems / std::max<int64_t>(n, 1)));
    DeviceBuffer& wbuf = ex.scratch(0);
    wbuf.reserve(static_cast<size_t>(chunk * n) * sizeof(__half));
    __half* W16 = wbuf.as<__half>();
    __half* X16 = nullptr;
    if (blas) {
        DeviceBuffer& xbuf = ex.scratch(1);
        xbuf.reserve(static_cast<size_t>(T * n) * sizeof(__half));
        X16 = xbuf.as<__half>();
        to_f16_kernel<<<grid_for(T * n, 256), 256, 0, ex.stream()>>>(X, X16, T * n);
        AC_CUDA_CHECK_LAUNCH();
    }
    for (int64_t r0 = 0; r0 < R; r0 += chunk) {
        const int64_t rc = std::min(chunk, R - r0);
        dequantize_f16(W.type, W.data + static_cast<size_t>(r0) * W.row_bytes, W16, rc * n, ex.stream());
        if (blas) blas_gemm(blas, true, W16, X16, Y + r0, rc, T, n, R);
        else launch_gemm_tiled<__half>(ex, W16, X, Y + r0, rc, T, n, R, bias ? bias + r0 : nullptr);
    }
    if (blas && bias) {
        add_bias_kernel<<<grid_for(T * R, 256), 256, 0, ex.stream()>>>(Y, bias, T, R);
        AC_CUDA_CHECK_LAUNCH();
    }
}

}  // namespace cuda
}  // namespace aircache
