// stats.cu — the importance pass of KV compression on the device (StatsCollector::observe_device).
//
// The same statistics as compress/stats.cpp, computed from the layer's device-resident queries
// and cache without materialising any m x m matrix:
//   1. row pass: per (query head, selected row) the row maximum of the scaled logits, the inverse
//      of the softmax denominator, and the VL-Cache density count (logits below max + ln p);
//   2. column pass: per (query head, tile of 32 keys) the column sums Σ_rows softmax_row[j] for
//      every requested start row, the keys of the tile staged in shared memory and each warp
//      walking rows (the row statistics of pass 1 turn a logit into a probability);
//   3. elite pass (AirCache): per query head, the elite window from the reference row m-1, then
//      each elite row's softmax over the visual keys and the elite text keys it can see,
//      renormalised over that set and averaged over the elite rows (double accumulation, as the CPU).
// Each observe() downloads this chunk's contribution and adds it to the host statistics.
#include <algorithm>
#include <chrono>
#include <climits>
#include <cmath>

#include "compress/stats.h"
#include "cuda_api.h"
#include "ops.cuh"

namespace aircache {
namespace compress {

namespace {

using cuda::DeviceBuffer;
using cuda::from_f32;
using cuda::to_f32;

constexpr int kRowThreads = 128, kColThreads = 128, kColWarps = kColThreads / 32, kColKeys = 32, kMaxColsum = 8;
constexpr int kEliteThreads = 256;

struct SelRow {
    int32_t t;    // row in the chunk
    int32_t p;    // its prompt position (= number of keys - 1)
    int32_t col;  // contributes to column sums
    int32_t den;  // contributes to density counts
};

struct ColsumStarts {
    int64_t from[kMaxColsum];
    int n;
};

struct DeviceStats {
    DeviceBuffer sel, rowmax, rowinv, count, colsum, visual, is_visual, sref, elite, elite_nv, scores, acc, imp, esize;
};

template <class KT>
__device__ float dot_key(const float* __restrict__ q, const KT* __restrict__ k, int D, int lane) {
    float p = 0.0f;
    for (int d = lane; d < D; d += 32) p += q[d] * to_f32(k[d]);
    return cuda::warp_sum(p);
}

// 1. row statistics: grid (H, n_sel)
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
        count[static_cast<int64_t>(h) * n_sel + i] = static_cast<int>(cnt);
    }
}

// 2. column sums: grid (H, key tiles); out [n_starts][H][m]
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
        Ks[jj][d] = j < n_keys ? to_f32(K[j * D + d]) : 0.0f;
    }
    __syncthreads();
    float acc[kMaxColsum];
#pragma unroll
    for (int k = 0; k < kMaxColsum; ++k) acc[k] = 0.0f;
    const int64_t j = j0 + lane;
    for (int i = warp; i < n_sel; i += kColWarps) {
        const SelRow r = sel[i];
        if (!r.col || r.p < j0) continue;  // uniform over the warp
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
        const float s = dot_key(qref, K + j * D, D, lane) * scale;
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
            const float s = dot_key(qj, K + key * D, D, lane) * scale;
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

template <class T>
T* grow(DeviceBuffer& b, size_t n) {
    b.reserve(n * sizeof(T));
    return b.as<T>();
}

void sync_download(void* dst, const void* src, size_t bytes, cudaStream_t st) {
    if (bytes == 0) return;
    AC_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, st));
    AC_CUDA_CHECK(cudaStreamSynchronize(st));
}

}  // namespace

void StatsCollector::observe_device(int layer, const float* d_q, const int32_t* pos, int64_t n, const KVCache& kv,
                                    void* stream_ptr) {
    if (n <= 0 || pos[n - 1] < first_row_) return;
    const auto t_start = std::chrono::steady_clock::now();
    cudaStream_t st = static_cast<cudaStream_t>(stream_ptr);
    const int64_t m = layout_.m;
    const bool has_last = pos[n - 1] == m - 1;
    if (req_.elite && has_last && elite_first_ < pos[0])
        throw Error(strprintf("internal: the AirCache window starts at %lld but the last prefill chunk at %d",
                              static_cast<long long>(elite_first_), pos[0]));
    if (!kv.on_device(layer)) throw Error(strprintf("internal: observe_device on host layer %d", layer));
    const int H = shape_.n_head, Hkv = shape_.n_head_kv, G = H / Hkv, D = static_cast<int>(head_dim_);
    if (D > cuda::kMaxHeadDim)
        throw UnsupportedError(strprintf("the CUDA importance pass supports head dimensions up to %d", cuda::kMaxHeadDim));
    cuda::DeviceGuard guard(kv.config().device);
    if (!device_) device_ = std::shared_ptr<void>(new DeviceStats(), [](void* p) { delete static_cast<DeviceStats*>(p); });
    DeviceStats& ds = *static_cast<DeviceStats*>(device_.get());
    const bool f16 = kv.config().type == KVType::F16;
    const int64_t head_stride = kv.capacity() * D;
    const float scale = 1.0f / std::sqrt(static_cast<float>(D));
    LayerStats& stl = stats_[static_cast<size_t>(layer)];

    // rows 1 + 2
    const int64_t colsum_first = req_.colsum_from.empty() ? m : req_.colsum_from.front();
    std::vector<SelRow> sel;
    int64_t n_keys = 0;
    for (int64_t t = 0; t < n; ++t) {
        const int64_t p = pos[t];
        const bool want_col = p >= colsum_first, want_den = req_.density && p >= req_.density_from;
        if (!want_col && !want_den) continue;
        sel.push_back(SelRow{static_cast<int32_t>(t), static_cast<int32_t>(p), want_col ? 1 : 0, want_den ? 1 : 0});
        if (want_col) n_keys = std::max<int64_t>(n_keys, p + 1);
    }
    if (!sel.empty()) {
        const int ns = static_cast<int>(sel.size());
        SelRow* d_sel = grow<SelRow>(ds.sel, sel.size());
        AC_CUDA_CHECK(cudaMemcpyAsync(d_sel, sel.data(), sizeof(SelRow) * sel.size(), cudaMemcpyHostToDevice, st));
        float* rowmax = grow<float>(ds.rowmax, static_cast<size_t>(H) * ns);
        float* rowinv = grow<float>(ds.rowinv, static_cast<size_t>(H) * ns);
        int* count = grow<int>(ds.count, static_cast<size_t>(H) * ns);
        const dim3 g1(static_cast<unsigned>(H), static_cast<unsigned>(ns));
        const double ln_p = req_.density ? req_.density_ln_p : 0.0;
        if (f16)
            row_kernel<__half><<<g1, kRowThreads, 0, st>>>(d_q, static_cast<const __half*>(kv.device_k(layer)),
                                                           head_stride, H, G, D, d_sel, ns, scale, ln_p, rowmax,
                                                           rowinv, count);
        else
            row_kernel<float><<<g1, kRowThreads, 0, st>>>(d_q, static_cast<const float*>(kv.device_k(layer)),
                                                          head_stride, H, G, D, d_sel, ns, scale, ln_p, rowmax,
                                                          rowinv, count);
        AC_CUDA_CHECK_LAUNCH();
        if (req_.density) {
            std::vector<int> cnt(static_cast<size_t>(H) * ns);
            sync_download(cnt.data(), count, sizeof(int) * cnt.size(), st);
            for (int h = 0; h < H; ++h)
                for (int i = 0; i < ns; ++i)
                    if (sel[static_cast<size_t>(i)].den)
                        stl.density_count[static_cast<size_t>(h)] += cnt[static_cast<size_t>(h) * ns + i];
        }
        const size_t nstart = req_.colsum_from.size();
        if (n_keys > 0 && nstart > 0) {
            for (size_t k0 = 0; k0 < nstart; k0 += kMaxColsum) {
                ColsumStarts cs;
                cs.n = static_cast<int>(std::min<size_t>(kMaxColsum, nstart - k0));
                for (int k = 0; k < cs.n; ++k) cs.from[k] = req_.colsum_from[k0 + static_cast<size_t>(k)];
                for (int k = cs.n; k < kMaxColsum; ++k) cs.from[k] = INT64_MAX;
                const size_t out_n = static_cast<size_t>(cs.n) * H * m;
                float* out = grow<float>(ds.colsum, out_n);
                const dim3 g2(static_cast<unsigned>(H), static_cast<unsigned>((n_keys + kColKeys - 1) / kColKeys));
                if (f16)
                    col_kernel<__half><<<g2, kColThreads, 0, st>>>(d_q, static_cast<const __half*>(kv.device_k(layer)),
                                                                   head_stride, H, G, D, d_sel, ns, scale, rowmax,
                                                                   rowinv, cs, m, n_keys, out);
                else
                    col_kernel<float><<<g2, kColThreads, 0, st>>>(d_q, static_cast<const float*>(kv.device_k(layer)),
                                                                  head_stride, H, G, D, d_sel, ns, scale, rowmax,
                                                                  rowinv, cs, m, n_keys, out);
                AC_CUDA_CHECK_LAUNCH();
                std::vector<float> host(out_n);
                // only [0, n_keys) of each (start, head) row was written
                AC_CUDA_CHECK(cudaMemcpy2DAsync(host.data(), sizeof(float) * m, out, sizeof(float) * m,
                                                sizeof(float) * n_keys, static_cast<size_t>(cs.n) * H,
                                                cudaMemcpyDeviceToHost, st));
                AC_CUDA_CHECK(cudaStreamSynchronize(st));
                for (int k = 0; k < cs.n; ++k) {
                    float* col = stl.colsum[k0 + static_cast<size_t>(k)].data();
                    const float* src = host.data() + static_cast<size_t>(k) * H * m;
                    for (int64_t i = 0; i < static_cast<int64_t>(H) * m; ++i)
                        if (i % m < n_keys) col[i] += src[i];
                }
            }
        }
    }

    // 3. the elite pass, in the chunk holding the last prompt row
    if (req_.elite && has_last) {
        const int64_t Nv = static_cast<int64_t>(layout_.visual.size()), T0 = elite_first_, w = m - T0;
        int32_t* d_vis = grow<int32_t>(ds.visual, static_cast<size_t>(std::max<int64_t>(Nv, 1)));
        uint8_t* d_isv = grow<uint8_t>(ds.is_visual, static_cast<size_t>(m));
        if (Nv > 0)
            AC_CUDA_CHECK(cudaMemcpyAsync(d_vis, layout_.visual.data(), sizeof(int32_t) * Nv, cudaMemcpyHostToDevice, st));
        AC_CUDA_CHECK(cudaMemcpyAsync(d_isv, layout_.is_visual.data(), static_cast<size_t>(m), cudaMemcpyHostToDevice, st));
        float* sref = grow<float>(ds.sref, static_cast<size_t>(H) * w);
        int32_t* E = grow<int32_t>(ds.elite, static_cast<size_t>(H) * w);
        int32_t* EN = grow<int32_t>(ds.elite_nv, static_cast<size_t>(H) * w);
        float* scores = grow<float>(ds.scores, static_cast<size_t>(H) * (Nv + w));
        double* acc = grow<double>(ds.acc, static_cast<size_t>(H) * std::max<int64_t>(Nv, 1));
        float* imp = grow<float>(ds.imp, static_cast<size_t>(H) * std::max<int64_t>(Nv, 1));
        float* esize = grow<float>(ds.esize, static_cast<size_t>(H));
        if (f16)
            elite_kernel<__half><<<H, kEliteThreads, 0, st>>>(d_q, static_cast<const __half*>(kv.device_k(layer)),
                                                              head_stride, H, G, D, pos[0], m, T0, req_.elite_ln_alpha,
                                                              scale, d_vis, Nv, d_isv, sref, E, EN, scores, acc, imp,
                                                              esize);
        else
            elite_kernel<float><<<H, kEliteThreads, 0, st>>>(d_q, static_cast<const float*>(kv.device_k(layer)),
                                                             head_stride, H, G, D, pos[0], m, T0, req_.elite_ln_alpha,
                                                             scale, d_vis, Nv, d_isv, sref, E, EN, scores, acc, imp,
                                                             esize);
        AC_CUDA_CHECK_LAUNCH();
        if (Nv > 0) sync_download(stl.elite_importance.data(), imp, sizeof(float) * static_cast<size_t>(H) * Nv, st);
        sync_download(stl.elite_size.data(), esize, sizeof(float) * static_cast<size_t>(H), st);
    }
    AC_CUDA_CHECK(cudaStreamSynchronize(st));
    ms_ += std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t_start).count();
}

}  // namespace compress
}  // namespace aircache
