// probes/elite.cu — the elite probe's device half: one block per query head finds the elite
// window from the reference row m-1, then each elite row's softmax over the visual keys and the
// non-visual elite keys it can see, renormalised over that set and averaged over the elite rows
// (double accumulation, as the host half). Runs in the chunk holding the last prompt row.
#include "compress/probes/elite.h"
#include "compress/probes/kernels.cuh"

namespace aircache {
namespace compress {

namespace {

constexpr int kEliteThreads = 256;

struct Scratch {
    cuda::DeviceBuffer visual, is_visual, sref, elite, elite_nv, scores, acc, imp, esize;
};

__device__ double block_sum_d(double v, double* red) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = cuda::warp_sum_d(v);
    __syncthreads();
    if (lane == 0) red[warp] = v;
    __syncthreads();
    double r = 0.0;
    for (int i = 0; i < nw; ++i) r += red[i];
    return r;
}

// 3. the AirCache elite pass: one block per query head. q holds the chunk's rows from position pos0.
template <class KT>
__global__ void elite_kernel(const float* __restrict__ q, const KT* __restrict__ Kc, int64_t head_stride, int H,
                             int group, int D, int32_t pos0, int64_t m, int64_t T0, double ln_alpha, float scale,
                             const int32_t* __restrict__ visual, int64_t Nv, const uint8_t* __restrict__ is_visual,
                             float* __restrict__ sref_all, int32_t* __restrict__ elite_all,
                             int32_t* __restrict__ elite_nv_all, float* __restrict__ scores_all,
                             double* __restrict__ acc_all, float* __restrict__ importance,
                             float* __restrict__ elite_size) {
    __shared__ float red[32];
    __shared__ double redd[32];
    __shared__ int n_elite, n_elite_nv, n_vis_row, n_nv_row;
    const int h = blockIdx.x, tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, nw = blockDim.x >> 5;
    const int64_t w = m - T0;
    const KT* K = Kc + static_cast<int64_t>(h / group) * head_stride;
    auto qrow = [&](int64_t p) { return q + ((p - pos0) * H + h) * D; };
    float* sref = sref_all + static_cast<int64_t>(h) * w;
    int32_t* E = elite_all + static_cast<int64_t>(h) * w;
    int32_t* EN = elite_nv_all + static_cast<int64_t>(h) * w;
    float* sc = scores_all + static_cast<int64_t>(h) * (Nv + w);
    double* acc = acc_all + static_cast<int64_t>(h) * Nv;

    // elite window: logits of the reference row m-1 over T = [T0, m)
    const float* qref = qrow(m - 1);
    for (int64_t j = T0 + warp; j < m; j += nw) {
        const float s = probe_cuda::dot_key(qref, K + j * D, D, lane) * scale;
        if (lane == 0) sref[j - T0] = s;
    }
    __syncthreads();
    float mx = -INFINITY;
    for (int64_t i = tid; i < w; i += blockDim.x) mx = fmaxf(mx, sref[i]);
    mx = cuda::block_max(mx, red);
    if (tid == 0) {
        int ne = 0, nn = 0;
        const double thr = static_cast<double>(mx) + ln_alpha;
        for (int64_t j = T0; j < m; ++j)
            if (static_cast<double>(sref[j - T0]) >= thr) {
                E[ne++] = static_cast<int32_t>(j);
                if (!is_visual[j]) EN[nn++] = static_cast<int32_t>(j);
            }
        n_elite = ne;
        n_elite_nv = nn;
    }
    for (int64_t i = tid; i < Nv; i += blockDim.x) acc[i] = 0.0;
    __syncthreads();

    // each elite row: softmax over the visual keys <= j and the non-visual elite keys <= j
    for (int e = 0; e < n_elite; ++e) {
        const int64_t j = E[e];
        if (tid == 0) {
            int64_t a = 0, b = Nv;  // visual positions <= j: a binary search (ascending)
            while (a < b) {
                const int64_t mid = (a + b) / 2;
                if (visual[mid] <= j) a = mid + 1;
                else b = mid;
            }
            n_vis_row = static_cast<int>(a);
            int c = 0;
            while (c < n_elite_nv && EN[c] <= j) ++c;
            n_nv_row = c;
        }
        __syncthreads();
        const int nv = n_vis_row, nk = n_vis_row + n_nv_row;
        const float* qj = qrow(j);
        for (int kidx = warp; kidx < nk; kidx += nw) {
            const int64_t key = kidx < nv ? visual[kidx] : EN[kidx - nv];
            const float s = probe_cuda::dot_key(qj, K + key * D, D, lane) * scale;
            if (lane == 0) sc[kidx] = s;
        }
        __syncthreads();
        float rmx = -INFINITY;
        for (int kidx = tid; kidx < nk; kidx += blockDim.x) rmx = fmaxf(rmx, sc[kidx]);
        rmx = cuda::block_max(rmx, red);
        double part = 0.0;
        for (int kidx = tid; kidx < nk; kidx += blockDim.x) {
            const float ex = expf(sc[kidx] - rmx);
            sc[kidx] = ex;
            part += static_cast<double>(ex);
        }
        const double sum = block_sum_d(part, redd);  // synchronises: sc is complete
        for (int kidx = tid; kidx < nv; kidx += blockDim.x) acc[kidx] += static_cast<double>(sc[kidx]) / sum;
        __syncthreads();  // before sc and the row counts are rewritten
    }
    for (int64_t i = tid; i < Nv; i += blockDim.x)
        importance[static_cast<int64_t>(h) * Nv + i] = static_cast<float>(acc[i] / static_cast<double>(n_elite));
    if (tid == 0) elite_size[h] = static_cast<float>(n_elite);
}

}  // namespace

bool EliteProbe::observe_device(const DeviceChunk& c) {
    using namespace probe_cuda;
    const PromptLayout& layout = *s_.layout;
    const int64_t m = layout.m;
    if (c.rows[c.n - 1] != m - 1) return true;  // the pass runs in the chunk holding the last row
    const int H = s_.shape.n_head, Hkv = s_.shape.n_head_kv, D = static_cast<int>(s_.head_dim);
    if (D > cuda::kMaxHeadDim) return false;
    if (first_ < c.rows[0])
        throw Error(strprintf("internal: the AirCache window starts at %lld but the last prefill chunk at %d",
                              static_cast<long long>(first_), c.rows[0]));
    cuda::DeviceGuard guard(c.device);
    cudaStream_t st = static_cast<cudaStream_t>(c.stream);
    if (!device_scratch_) device_scratch_ = std::make_shared<Scratch>();
    Scratch& ds = *static_cast<Scratch*>(device_scratch_.get());
    const int64_t Nv = static_cast<int64_t>(layout.visual.size()), T0 = first_, w = m - T0;
    int32_t* d_vis = grow<int32_t>(ds.visual, static_cast<size_t>(std::max<int64_t>(Nv, 1)));
    uint8_t* d_isv = grow<uint8_t>(ds.is_visual, static_cast<size_t>(m));
    if (Nv > 0)
        AC_CUDA_CHECK(cudaMemcpyAsync(d_vis, layout.visual.data(), sizeof(int32_t) * Nv, cudaMemcpyHostToDevice, st));
    AC_CUDA_CHECK(cudaMemcpyAsync(d_isv, layout.is_visual.data(), static_cast<size_t>(m), cudaMemcpyHostToDevice, st));
    float* sref = grow<float>(ds.sref, static_cast<size_t>(H) * w);
    int32_t* E = grow<int32_t>(ds.elite, static_cast<size_t>(H) * w);
    int32_t* EN = grow<int32_t>(ds.elite_nv, static_cast<size_t>(H) * w);
    float* scores = grow<float>(ds.scores, static_cast<size_t>(H) * (Nv + w));
    double* acc = grow<double>(ds.acc, static_cast<size_t>(H) * std::max<int64_t>(Nv, 1));
    float* imp = grow<float>(ds.imp, static_cast<size_t>(H) * std::max<int64_t>(Nv, 1));
    float* esize = grow<float>(ds.esize, static_cast<size_t>(H));
    const int64_t head_stride = c.capacity * D;
    const float scale = 1.0f / sqrtf(static_cast<float>(D));
    if (c.f16)
        elite_kernel<__half><<<H, kEliteThreads, 0, st>>>(c.q, static_cast<const __half*>(c.k), head_stride, H, H / Hkv,
                                                          D, c.rows[0], m, T0, ln_alpha_, scale, d_vis, Nv, d_isv, sref,
                                                          E, EN, scores, acc, imp, esize);
    else
        elite_kernel<float><<<H, kEliteThreads, 0, st>>>(c.q, static_cast<const float*>(c.k), head_stride, H, H / Hkv,
                                                         D, c.rows[0], m, T0, ln_alpha_, scale, d_vis, Nv, d_isv, sref,
                                                         E, EN, scores, acc, imp, esize);
    AC_CUDA_CHECK_LAUNCH();
    if (Nv > 0)
        sync_download(imp_[static_cast<size_t>(c.layer)].data(), imp, sizeof(float) * static_cast<size_t>(H) * Nv, st);
    sync_download(size_[static_cast<size_t>(c.layer)].data(), esize, sizeof(float) * static_cast<size_t>(H), st);
    return true;
}

}  // namespace compress
}  // namespace aircache
