// probes/kernels.cuh — device helpers the probes' CUDA halves share: a warp's dot product of a
// query with a cache key, and the row pass (per query head and selected row: the row maximum of
// the scaled logits over its causal keys, the inverse softmax denominator, and the count of logits
// below max + ln p).
#pragma once

#include <memory>
#include <vector>

#include "compress/probe.h"
#include "cuda_common.cuh"
#include "ops.cuh"

namespace aircache {
namespace compress {
namespace probe_cuda {

struct SelRow {
    int32_t t;    // row in the chunk
    int32_t p;    // its prompt row (= number of causal keys - 1)
};

template <class KT>
__device__ __forceinline__ float dot_key(const float* __restrict__ q, const KT* __restrict__ k, int D, int lane) {
    float p = 0.0f;
    for (int d = lane; d < D; d += 32) p += q[d] * cuda::to_f32(k[d]);
    return cuda::warp_sum(p);
}

// grid (H, n_sel): rowmax/rowinv/count [H][n_sel]
template <class KT>
__global__ void row_kernel(const float* __restrict__ q, const KT* __restrict__ Kc, int64_t head_stride, int H,
                           int group, int D, const SelRow* __restrict__ sel, int n_sel, float scale, double ln_p,
                           float* __restrict__ rowmax, float* __restrict__ rowinv, int* __restrict__ count) {
    __shared__ float red[32];
    __shared__ float qs[cuda::kMaxHeadDim];
    const int h = blockIdx.x, i = blockIdx.y, tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int nw = blockDim.x >> 5;
    const SelRow r = sel[i];
    const KT* K = Kc + static_cast<int64_t>(h / group) * head_stride;
    for (int d = tid; d < D; d += blockDim.x) qs[d] = q[(static_cast<int64_t>(r.t) * H + h) * D + d];
    __syncthreads();
    const int L = r.p + 1;
    float mx = -INFINITY;
    for (int j = warp; j < L; j += nw) mx = fmaxf(mx, dot_key(qs, K + static_cast<int64_t>(j) * D, D, lane) * scale);
    mx = cuda::block_max(mx, red);
    const double thr = static_cast<double>(mx) + ln_p;
    float sum = 0.0f, cnt = 0.0f;
    for (int j = warp; j < L; j += nw) {
        const float s = dot_key(qs, K + static_cast<int64_t>(j) * D, D, lane) * scale;
        sum += expf(s - mx);
        cnt += static_cast<double>(s) < thr ? 1.0f : 0.0f;
    }
    if (lane != 0) sum = cnt = 0.0f;  // every lane holds the warp's values: count them once
    sum = cuda::block_sum(sum, red);
    cnt = cuda::block_sum(cnt, red);
    if (tid == 0) {
        rowmax[static_cast<int64_t>(h) * n_sel + i] = mx;
        rowinv[static_cast<int64_t>(h) * n_sel + i] = 1.0f / sum;
        if (count) count[static_cast<int64_t>(h) * n_sel + i] = static_cast<int>(cnt);
    }
}

constexpr int kRowThreads = 128;

template <class T>
T* grow(cuda::DeviceBuffer& b, size_t n) {
    b.reserve(n * sizeof(T));
    return b.as<T>();
}

inline void sync_download(void* dst, const void* src, size_t bytes, cudaStream_t st) {
    if (bytes == 0) return;
    AC_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, st));
    AC_CUDA_CHECK(cudaStreamSynchronize(st));
}

// Runs the row pass for the chunk rows `sel` (uploaded into `d_sel`); count may be null.
inline void row_pass(const DeviceChunk& c, int H, int Hkv, int D, const std::vector<SelRow>& sel,
                     cuda::DeviceBuffer& d_sel, float* rowmax, float* rowinv, int* count, double ln_p) {
    cudaStream_t st = static_cast<cudaStream_t>(c.stream);
    const int ns = static_cast<int>(sel.size());
    SelRow* ds = grow<SelRow>(d_sel, sel.size());
    AC_CUDA_CHECK(cudaMemcpyAsync(ds, sel.data(), sizeof(SelRow) * sel.size(), cudaMemcpyHostToDevice, st));
    const dim3 g(static_cast<unsigned>(H), static_cast<unsigned>(ns));
    const int64_t head_stride = c.capacity * D;
    const float scale = 1.0f / sqrtf(static_cast<float>(D));
    if (c.f16)
        row_kernel<__half><<<g, kRowThreads, 0, st>>>(c.q, static_cast<const __half*>(c.k), head_stride, H, H / Hkv, D,
                                                      ds, ns, scale, ln_p, rowmax, rowinv, count);
    else
        row_kernel<float><<<g, kRowThreads, 0, st>>>(c.q, static_cast<const float*>(c.k), head_stride, H, H / Hkv, D,
                                                     ds, ns, scale, ln_p, rowmax, rowinv, count);
    AC_CUDA_CHECK_LAUNCH();
}

}  // namespace probe_cuda
}  // namespace compress
}  // namespace aircache
