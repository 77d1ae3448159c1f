// kv.cu — the KV cache on the device: storing new rows (F32 -> cache type) and compaction (the
// gather of kept rows to the front of each head). Layout as in kv_cache.h: K and V of a layer are
// [n_head_kv][capacity][head_dim], the capacity the layer's own (a stored row's KVRow::cap).
#include "cuda_api.h"
#include "ops.cuh"

namespace aircache {
namespace cuda {

namespace {

constexpr int kThreads = 256;

template <class KT>
__global__ void kv_store_kernel(const float* __restrict__ k, const float* __restrict__ v, int64_t T, int Hkv, int D,
                                const KVRow* __restrict__ rows) {
    const int64_t total = T * Hkv * D;
    const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
    for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += stride) {
        const int64_t d = i % D, th = i / D;  // th = t * Hkv + head
        const int64_t t = th / Hkv, head = th % Hkv;
        const KVRow r = rows[t];
        if (r.dst < 0) continue;
        const int64_t off = (head * r.cap + r.dst) * D + d;
        static_cast<KT*>(r.k)[off] = from_f32<KT>(k[i]);
        static_cast<KT*>(r.v)[off] = from_f32<KT>(v[i]);
    }
}

// dst[h][i][:] = src[h][kept[h][i]][:] for the n_kept rows of every head (16- or 32-bit elements)
template <class E>
__global__ void gather_kernel(const E* __restrict__ src, E* __restrict__ dst, const int32_t* __restrict__ kept,
                              int64_t n_kept, int Hkv, int D, int64_t capacity) {
    const int64_t total = static_cast<int64_t>(Hkv) * n_kept * D;
    const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
    for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += stride) {
        const int64_t d = i % D, hi = i / D;  // hi = head * n_kept + row
        const int64_t head = hi / n_kept;
        dst[i] = src[(head * capacity + kept[hi]) * D + d];
    }
}

// dst[h][i][:] = packed[h][i][:] for i < n (back into the cache layout)
template <class E>
__global__ void scatter_front_kernel(const E* __restrict__ packed, E* __restrict__ dst, int64_t n, int Hkv, int D,
                                     int64_t capacity) {
    const int64_t total = static_cast<int64_t>(Hkv) * n * D;
    const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
    for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += stride) {
        const int64_t d = i % D, hi = i / D;
        const int64_t head = hi / n, row = hi % n;
        dst[(head * capacity + row) * D + d] = packed[i];
    }
}

template <class E>
void compact_one(const Exec& ex, void* buf, DeviceBuffer& packed, const int32_t* kept, int64_t n_kept, int Hkv, int D,
                 int64_t capacity) {
    const unsigned blocks = grid_for(static_cast<int64_t>(Hkv) * n_kept * D, kThreads);
    gather_kernel<E><<<blocks, kThreads, 0, ex.stream()>>>(static_cast<const E*>(buf), packed.as<E>(), kept, n_kept,
                                                           Hkv, D, capacity);
    AC_CUDA_CHECK_LAUNCH();
    scatter_front_kernel<E><<<blocks, kThreads, 0, ex.stream()>>>(packed.as<E>(), static_cast<E*>(buf), n_kept, Hkv,
                                                                  D, capacity);
    AC_CUDA_CHECK_LAUNCH();
}

}  // namespace

void kv_store(const Exec& ex, const float* k, const float* v, int64_t T, int Hkv, int D, const KVRow* rows,
              bool f16) {
    if (T <= 0) return;
    const unsigned blocks = grid_for(T * Hkv * D, kThreads);
    if (f16) kv_store_kernel<__half><<<blocks, kThreads, 0, ex.stream()>>>(k, v, T, Hkv, D, rows);
    else kv_store_kernel<float><<<blocks, kThreads, 0, ex.stream()>>>(k, v, T, Hkv, D, rows);
    AC_CUDA_CHECK_LAUNCH();
}

void kv_compact(const Exec& ex, void* k, void* v, const int32_t* kept, int64_t n_kept, int Hkv, int D,
                int64_t capacity, bool f16) {
    if (n_kept <= 0) return;
    DeviceBuffer packed((f16 ? 2 : 4) * static_cast<size_t>(Hkv) * n_kept * D);
    for (void* buf : {k, v}) {
        if (f16) compact_one<uint16_t>(ex, buf, packed, kept, n_kept, Hkv, D, capacity);
        else compact_one<float>(ex, buf, packed, kept, n_kept, Hkv, D, capacity);
    }
    ex.sync();  // `packed` is freed on return
}

}  // namespace cuda
}  // namespace aircache
