// probes/colsum.cu — the column-sum probe's device half: the row pass (row maxima and softmax
// denominators), then per (query head, tile of 32 keys) the column sums of every start row, the
// tile's keys staged in shared memory and each warp walking rows; the chunk's sums are downloaded
// and added to the host statistics.
#include <climits>

#include "compress/probes/colsum.h"
#include "compress/probes/kernels.cuh"

namespace aircache {
namespace compress {

namespace {

using probe_cuda::SelRow;

constexpr int kColThreads = 128, kColWarps = kColThreads / 32, kColKeys = 32, kMaxColsum = 8;

struct ColsumStarts {
    int64_t from[kMaxColsum];
    int n;
};

struct Scratch {
    cuda::DeviceBuffer sel, rowmax, rowinv, colsum;
};

// grid (H, key tiles); out [n_starts][H][m]
template <class KT>
__global__ void col_kernel(const float* __restrict__ q, const KT* __restrict__ Kc, int64_t head_stride, int H,
                           int group, int D, const SelRow* __restrict__ sel, int n_sel, float scale,
                           const float* __restrict__ rowmax, const float* __restrict__ rowinv, ColsumStarts starts,
                           int64_t m, int64_t n_keys, float* __restrict__ out) {
    __shared__ float Ks[kColKeys][cuda::kMaxHeadDim + 1];
    __shared__ float qsh[kColWarps][cuda::kMaxHeadDim];
    __shared__ float red[kColWarps][kMaxColsum][kColKeys];
    const int h = blockIdx.x, tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int64_t j0 = static_cast<int64_t>(blockIdx.y) * kColKeys;
    const KT* K = Kc + static_cast<int64_t>(h / group) * head_stride;
    for (int e = tid; e < kColKeys * D; e += kColThreads) {
        const int jj = e / D, d = e % D;
        const int64_t j = j0 + jj;
        Ks[jj][d] = j < n_keys ? cuda::to_f32(K[j * D + d]) : 0.0f;
    }
    __syncthreads();
    float acc[kMaxColsum];
#pragma unroll
    for (int k = 0; k < kMaxColsum; ++k) acc[k] = 0.0f;
    const int64_t j = j0 + lane;
    for (int i = warp; i < n_sel; i += kColWarps) {
        const SelRow r = sel[i];
        if (r.p < j0) continue;  // uniform over the warp
        for (int d = lane; d < D; d += 32) qsh[warp][d] = q[(static_cast<int64_t>(r.t) * H + h) * D + d];
        __syncwarp();
        float s = 0.0f;
        for (int d = 0; d < D; ++d) s += qsh[warp][d] * Ks[lane][d];
        s *= scale;
        const int64_t hi = static_cast<int64_t>(h) * n_sel + i;
        const float w = j <= r.p ? expf(s - rowmax[hi]) * rowinv[hi] : 0.0f;
#pragma unroll
        for (int k = 0; k < kMaxColsum; ++k)
            if (k < starts.n && r.p >= starts.from[k]) acc[k] += w;
        __syncwarp();  // qsh is rewritten for the next row
    }
#pragma unroll
    for (int k = 0; k < kMaxColsum; ++k) red[warp][k][lane] = acc[k];
    __syncthreads();
    if (warp == 0 && j < n_keys) {
        for (int k = 0; k < starts.n; ++k) {
            float s = 0.0f;
            for (int w = 0; w < kColWarps; ++w) s += red[w][k][lane];
            out[(static_cast<int64_t>(k) * H + h) * m + j] = s;
        }
    }
}

}  // namespace

bool ColsumProbe::observe_device(const DeviceChunk& c) {
    using namespace probe_cuda;
    const int H = s_.shape.n_head, Hkv = s_.shape.n_head_kv, D = static_cast<int>(s_.head_dim);
    if (D > cuda::kMaxHeadDim) return false;
    if (starts_.empty()) return true;
    const int64_t m = s_.layout->m;
    std::vector<SelRow> sel;
    int64_t n_keys = 0;
    for (int64_t t = 0; t < c.n; ++t)
        if (c.rows[t] >= starts_.front()) {
            if (s_.layout->keys_of(c.rows[t]) != c.rows[t] + 1) return false;  // a bidirectional row: the host half
            sel.push_back(SelRow{static_cast<int32_t>(t), c.rows[t]});
            n_keys = std::max<int64_t>(n_keys, c.rows[t] + 1);
        }
    if (sel.empty()) return true;
    cuda::DeviceGuard guard(c.device);
    cudaStream_t st = static_cast<cudaStream_t>(c.stream);
    if (!device_scratch_) device_scratch_ = std::make_shared<Scratch>();
    Scratch& sc = *static_cast<Scratch*>(device_scratch_.get());
    const int ns = static_cast<int>(sel.size());
    const size_t n = static_cast<size_t>(H) * sel.size();
    float* rowmax = grow<float>(sc.rowmax, n);
    float* rowinv = grow<float>(sc.rowinv, n);
    row_pass(c, H, Hkv, D, sel, sc.sel, rowmax, rowinv, nullptr, 0.0);
    const int64_t head_stride = c.capacity * D;
    const float scale = 1.0f / sqrtf(static_cast<float>(D));
    std::vector<std::vector<float>>& cols = col_[static_cast<size_t>(c.layer)];
    for (size_t k0 = 0; k0 < starts_.size(); k0 += kMaxColsum) {
        ColsumStarts cs;
        cs.n = static_cast<int>(std::min<size_t>(kMaxColsum, starts_.size() - k0));
        for (int k = 0; k < cs.n; ++k) cs.from[k] = starts_[k0 + static_cast<size_t>(k)];
        for (int k = cs.n; k < kMaxColsum; ++k) cs.from[k] = INT64_MAX;
        const size_t out_n = static_cast<size_t>(cs.n) * H * m;
        float* out = grow<float>(sc.colsum, out_n);
        const dim3 g2(static_cast<unsigned>(H), static_cast<unsigned>((n_keys + kColKeys - 1) / kColKeys));
        if (c.f16)
            col_kernel<__half><<<g2, kColThreads, 0, st>>>(c.q, static_cast<const __half*>(c.k), head_stride, H,
                                                           H / Hkv, D, sc.sel.as<SelRow>(), ns, scale, rowmax, rowinv,
                                                           cs, m, n_keys, out);
        else
            col_kernel<float><<<g2, kColThreads, 0, st>>>(c.q, static_cast<const float*>(c.k), head_stride, H, H / Hkv,
                                                          D, sc.sel.as<SelRow>(), ns, scale, rowmax, rowinv, cs, m,
                                                          n_keys, out);
        AC_CUDA_CHECK_LAUNCH();
        std::vector<float> host(out_n);
        // only [0, n_keys) of each (start, head) row was written
        AC_CUDA_CHECK(cudaMemcpy2DAsync(host.data(), sizeof(float) * m, out, sizeof(float) * m, sizeof(float) * n_keys,
                                        static_cast<size_t>(cs.n) * H, cudaMemcpyDeviceToHost, st));
        AC_CUDA_CHECK(cudaStreamSynchronize(st));
        for (int k = 0; k < cs.n; ++k) {
            float* col = cols[k0 + static_cast<size_t>(k)].data();
            const float* src = host.data() + static_cast<size_t>(k) * H * m;
            for (int64_t i = 0; i < static_cast<int64_t>(H) * m; ++i)
                if (i % m < n_keys) col[i] += src[i];
        }
    }
    return true;
}

}  // namespace compress
}  // namespace aircache
