// attention.cu — softmax attention of query rows over keys/values in device memory.
//
// One block per (query head, query row). Keys are visited in tiles of 64: each warp scores keys
// of the tile (lanes split the head dimension), then the block updates a running maximum, sum and
// output accumulator (online softmax), so no score row of the full length is ever stored and any
// length works. Each row sees the keys [lo, hi) of its KVRow: the KV-cache path (per-row cache
// layer and range: causal prefill, bidirectional spans, sliding windows, batched decode over
// sequences with their own compacted per-layer lengths; GQA by query head / group) and the dense
// path of the vision towers (every row the same buffers; full, or per-row ranges for windows). A
// row's cache may carry logit biases (KVRow::bias, merged rows): added to the scaled scores.
#include "cuda_api.h"
#include "ops.cuh"

namespace aircache {
namespace cuda {

namespace {

constexpr int kThreads = 128, kWarps = kThreads / 32, kKeyTile = 64;
constexpr int kDimsPerThread = kMaxHeadDim / kThreads;

// Where the keys of one (row, head) are: element (j, d) of the head at base[(j * row_stride) + d],
// base = layer + kv_head * head_stride (rows given: the row's own layer allocation, r.cap * D).
// rows null: every row reads `uniform`, with [lo, hi) from ranges[2t], ranges[2t + 1] when given.
template <class KT>
__global__ void attention_kernel(const float* __restrict__ q, float* __restrict__ out, int H, int group, int D,
                                 const KVRow* __restrict__ rows, KVRow uniform, const int32_t* __restrict__ ranges,
                                 int64_t head_stride, int64_t row_stride, float scale) {
    __shared__ float qs[kMaxHeadDim];
    __shared__ float sc[kKeyTile];
    const int h = blockIdx.x, t = blockIdx.y, tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    KVRow r = rows ? rows[t] : uniform;
    if (!rows && ranges) {
        r.lo = ranges[2 * t];
        r.hi = ranges[2 * t + 1];
    }
    const int kvh = h / group;
    const int64_t hs = rows ? static_cast<int64_t>(r.cap) * D : head_stride;
    const KT* K = static_cast<const KT*>(r.k) + kvh * hs;
    const KT* V = static_cast<const KT*>(r.v) + kvh * hs;
    const float* qv = q + (static_cast<int64_t>(t) * H + h) * D;
    for (int d = tid; d < D; d += kThreads) qs[d] = qv[d];
    __syncthreads();

    float M = -INFINITY, S = 0.0f, acc[kDimsPerThread];
#pragma unroll
    for (int i = 0; i < kDimsPerThread; ++i) acc[i] = 0.0f;
    for (int j0 = r.lo; j0 < r.hi; j0 += kKeyTile) {
        const int nt = min(kKeyTile, r.hi - j0);
        for (int jj = warp; jj < nt; jj += kWarps) {
            const KT* kr = K + static_cast<int64_t>(j0 + jj) * row_stride;
            float p = 0.0f;
            for (int d = lane; d < D; d += 32) p += qs[d] * to_f32(kr[d]);
            p = warp_sum(p);
            if (lane == 0) sc[jj] = p * scale + (r.bias ? r.bias[kvh * static_cast<int64_t>(r.cap) + j0 + jj] : 0.0f);
        }
        __syncthreads();
        float mt = -INFINITY;
        for (int jj = 0; jj < nt; ++jj) mt = fmaxf(mt, sc[jj]);
        const float Mn = fmaxf(M, mt);
        const float corr = expf(M - Mn);  // 0 on the first tile (M = -inf)
        __syncthreads();                  // every thread has read the raw scores
        for (int jj = tid; jj < nt; jj += kThreads) sc[jj] = expf(sc[jj] - Mn);
        __syncthreads();
        float ps = 0.0f;
        for (int jj = 0; jj < nt; ++jj) ps += sc[jj];
        S = S * corr + ps;
#pragma unroll
        for (int i = 0; i < kDimsPerThread; ++i) {
            const int d = tid + i * kThreads;
            if (d >= D) break;
            float a = acc[i] * corr;
            for (int jj = 0; jj < nt; ++jj) a += sc[jj] * to_f32(V[static_cast<int64_t>(j0 + jj) * row_stride + d]);
            acc[i] = a;
        }
        M = Mn;
        __syncthreads();  // before the next tile overwrites sc
    }
    float* o = out + (static_cast<int64_t>(t) * H + h) * D;
    const float inv = r.hi > r.lo ? 1.0f / S : 0.0f;
#pragma unroll
    for (int i = 0; i < kDimsPerThread; ++i) {
        const int d = tid + i * kThreads;
        if (d < D) o[d] = acc[i] * inv;
    }
}

void check_shape(int64_t T, int H, int Hkv, int D) {
    if (D <= 0 || D > kMaxHeadDim)
        throw UnsupportedError(strprintf("CUDA attention supports head dimensions up to %d (got %d)", kMaxHeadDim, D));
    if (Hkv <= 0 || H % Hkv != 0) throw Error(strprintf("internal: %d query heads over %d KV heads", H, Hkv));
    if (T > 65535) throw UnsupportedError("CUDA attention: more than 65535 query rows in one pass");
}

}  // namespace

void attention_cache(const Exec& ex, const float* q, int64_t T, int H, int Hkv, int D, const KVRow* rows, bool f16,
                     float scale, float* out) {
    if (T <= 0) return;
    check_shape(T, H, Hkv, D);
    const dim3 grid(static_cast<unsigned>(H), static_cast<unsigned>(T));
    if (f16)
        attention_kernel<__half><<<grid, kThreads, 0, ex.stream()>>>(q, out, H, H / Hkv, D, rows, KVRow(), nullptr, 0,
                                                                     D, scale);
    else
        attention_kernel<float><<<grid, kThreads, 0, ex.stream()>>>(q, out, H, H / Hkv, D, rows, KVRow(), nullptr, 0,
                                                                    D, scale);
    AC_CUDA_CHECK_LAUNCH();
}

void attention_dense(const Exec& ex, const float* q, const float* k, const float* v, int64_t T, int64_t S, int H,
                     int Hkv, int D, const int32_t* ranges, float scale, float* out) {
    if (T <= 0) return;
    check_shape(T, H, Hkv, D);
    KVRow u;
    u.k = const_cast<float*>(k);
    u.v = const_cast<float*>(v);
    u.lo = 0;
    u.hi = static_cast<int32_t>(S);
    const dim3 grid(static_cast<unsigned>(H), static_cast<unsigned>(T));
    // KV head h of row j at j * Hkv * D + h * D
    attention_kernel<float><<<grid, kThreads, 0, ex.stream()>>>(q, out, H, H / Hkv, D, nullptr, u, ranges, D,
                                                                static_cast<int64_t>(Hkv) * D, scale);
    AC_CUDA_CHECK_LAUNCH();
}

}  // namespace cuda
}  // namespace aircache
