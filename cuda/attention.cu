// attention.cu — softmax attention of query rows over keys/values in device memory.
//
// One block per (query head, query row). Keys are visited in tiles of 64: each warp scores keys
// of the tile (lanes split the head dimension), then the block updates a running maximum, sum and
// output accumulator (online softmax), so no score row of the full length is ever stored and any
// length works. The same kernel serves the KV caches (per-row cache layer and length: causal
// prefill, batched decode over sequences with their own compacted per-layer lengths; GQA by
// query head / group) and the dense buffers of the vision tower (every row sees every key).
#include "cuda_api.h"
#include "kv_cache.h"
#include "ops.cuh"

namespace aircache {
namespace cuda {

namespace {

constexpr int kThreads = 128, kWarps = kThreads / 32, kKeyTile = 64;
constexpr int kDimsPerThread = kMaxHeadDim / kThreads;

// Where the keys of one (row, head) are: element (j, d) of the head at base[(j * row_stride) + d],
// base = layer + kv_head * head_stride.
template <class KT>
__global__ void attention_kernel(const float* __restrict__ q, float* __restrict__ out, int H, int group, int D,
                                 const RowKV* __restrict__ rows, RowKV uniform, int64_t head_stride,
                                 int64_t row_stride, float scale) {
    __shared__ float qs[kMaxHeadDim];
    __shared__ float sc[kKeyTile];
    const int h = blockIdx.x, t = blockIdx.y, tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const RowKV r = rows ? rows[t] : uniform;
    const int kvh = h / group;
    const KT* K = static_cast<const KT*>(r.k) + kvh * head_stride;
    const KT* V = static_cast<const KT*>(r.v) + kvh * head_stride;
    const float* qv = q + (static_cast<int64_t>(t) * H + h) * D;
    for (int d = tid; d < D; d += kThreads) qs[d] = qv[d];
    __syncthreads();

    float M = -INFINITY, S = 0.0f, acc[kDimsPerThread];
#pragma unroll
    for (int i = 0; i < kDimsPerThread; ++i) acc[i] = 0.0f;
    const int L = r.len;
    for (int j0 = 0; j0 < L; j0 += kKeyTile) {
        const int nt = min(kKeyTile, L - j0);
        for (int jj = warp; jj < nt; jj += kWarps) {
            const KT* kr = K + static_cast<int64_t>(j0 + jj) * row_stride;
            float p = 0.0f;
            for (int d = lane; d < D; d += 32) p += qs[d] * to_f32(kr[d]);
            p = warp_sum(p);
            if (lane == 0) sc[jj] = p * scale;
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
    const float inv = L > 0 ? 1.0f / S : 0.0f;
#pragma unroll
    for (int i = 0; i < kDimsPerThread; ++i) {
        const int d = tid + i * kThreads;
        if (d < D) o[d] = acc[i] * inv;
    }
}

void check_shape(int H, int Hkv, int D) {
    if (D <= 0 || D > kMaxHeadDim)
        throw UnsupportedError(strprintf("CUDA attention supports head dimensions up to %d (got %d)", kMaxHeadDim, D));
    if (Hkv <= 0 || H % Hkv != 0) throw Error(strprintf("internal: %d query heads over %d KV heads", H, Hkv));
}

}  // namespace

void attention_cache(const Exec& ex, const float* q, int64_t T, int H, int Hkv, int D, const RowKV* rows,
                     int64_t capacity, bool f16, float* out) {
    if (T <= 0) return;
    check_shape(H, Hkv, D);
    if (T > 65535) throw UnsupportedError("CUDA attention: more than 65535 query rows in one pass");
    const dim3 grid(static_cast<unsigned>(H), static_cast<unsigned>(T));
    const float scale = 1.0f / sqrtf(static_cast<float>(D));
    if (f16)
        attention_kernel<__half><<<grid, kThreads, 0, ex.stream()>>>(q, out, H, H / Hkv, D, rows, RowKV(),
                                                                     capacity * D, D, scale);
    else
        attention_kernel<float><<<grid, kThreads, 0, ex.stream()>>>(q, out, H, H / Hkv, D, rows, RowKV(),
                                                                    capacity * D, D, scale);
    AC_CUDA_CHECK_LAUNCH();
}

void attention_dense(const Exec& ex, const float* q, const float* k, const float* v, int64_t T, int H, int D,
                     float* out) {
    if (T <= 0) return;
    check_shape(H, H, D);
    if (T > 65535) throw UnsupportedError("CUDA attention: more than 65535 tokens");
    RowKV u;
    u.k = const_cast<float*>(k);
    u.v = const_cast<float*>(v);
    u.len = static_cast<int32_t>(T);
    const dim3 grid(static_cast<unsigned>(H), static_cast<unsigned>(T));
    const float scale = 1.0f / sqrtf(static_cast<float>(D));
    // head h of row j at j * H * D + h * D
    attention_kernel<float><<<grid, kThreads, 0, ex.stream()>>>(q, out, H, 1, D, nullptr, u, D,
                                                                static_cast<int64_t>(H) * D, scale);
    AC_CUDA_CHECK_LAUNCH();
}

namespace test {
void attention_dense(const float* q, const float* k, const float* v, int64_t T, int64_t n_head, int64_t head_dim,
                     float* out, int device) {
    Exec ex(device);
    DeviceGuard g(device);
    const size_t bytes = sizeof(float) * static_cast<size_t>(T * n_head * head_dim);
    DeviceBuffer dq = upload_buffer(ex, q, bytes), dk = upload_buffer(ex, k, bytes), dv = upload_buffer(ex, v, bytes);
    DeviceBuffer dout(bytes);
    cuda::attention_dense(ex, dq.as<float>(), dk.as<float>(), dv.as<float>(), T, static_cast<int>(n_head),
                          static_cast<int>(head_dim), dout.as<float>());
    ex.download(out, dout.get(), bytes);
}

void attention(const float* q, int64_t T, int64_t n_head, KVCache* const* caches, const int32_t* seq,
               const int64_t* kv_len, int layer, float* out, int device) {
    const KVCacheConfig& c = caches[0]->config();
    Exec ex(device);
    DeviceGuard g(device);
    std::vector<RowKV> rows(static_cast<size_t>(T));
    for (int64_t t = 0; t < T; ++t) {
        const KVCache& kv = *caches[seq ? seq[t] : 0];
        if (!kv.on_device(layer) || kv.config().device != device)
            throw InputError(strprintf("CUDA attention: layer %d of the cache is not on cuda:%d", layer, device));
        rows[static_cast<size_t>(t)].k = kv.device_k(layer);
        rows[static_cast<size_t>(t)].v = kv.device_v(layer);
        rows[static_cast<size_t>(t)].len = static_cast<int32_t>(kv_len[t]);
    }
    const size_t bytes = sizeof(float) * static_cast<size_t>(T * n_head * c.head_dim);
    DeviceBuffer dq = upload_buffer(ex, q, bytes), dout(bytes);
    DeviceBuffer dr = upload_buffer(ex, rows.data(), sizeof(RowKV) * rows.size());
    cuda::attention_cache(ex, dq.as<float>(), T, static_cast<int>(n_head), c.n_head_kv, c.head_dim, dr.as<RowKV>(),
                          c.capacity, c.type == KVType::F16, dout.as<float>());
    ex.download(out, dout.get(), bytes);
}
}  // namespace test

}  // namespace cuda
}  // namespace aircache
