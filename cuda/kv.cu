// kv.cu — the KV cache on the device: storing new rows (F32 -> cache type), reading rows back,
// compaction (the gather of kept positions to the front of each head) and snapshot copies.
// Layout as in kv_cache.h: K and V of a layer are [n_head_kv][capacity][head_dim].
#include "cuda_api.h"
#include "ops.cuh"

namespace aircache {
namespace cuda {

namespace {

constexpr int kThreads = 256;

template <class KT>
__global__ void kv_store_kernel(const float* __restrict__ k, const float* __restrict__ v, int64_t T, int Hkv, int D,
                                const RowKV* __restrict__ rows, int64_t capacity) {
    const int64_t total = T * Hkv * D;
    const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
    for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += stride) {
        const int64_t d = i % D, th = i / D;  // th = t * Hkv + head
        const int64_t t = th / Hkv, head = th % Hkv;
        const RowKV r = rows[t];
        const int64_t off = (head * capacity + r.dst) * D + d;
        static_cast<KT*>(r.k)[off] = from_f32<KT>(k[i]);
        static_cast<KT*>(r.v)[off] = from_f32<KT>(v[i]);
    }
}

// out[h][i][:] = buf[h][kept[h][i]][:] for the n_kept rows of every head (elements of `bytes` each
// row of `row_elems` 16-bit or 32-bit words).
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

size_t elem_bytes(const KVLayerView& l) { return l.f16 ? 2 : 4; }

}  // namespace

void kv_store(const Exec& ex, const float* k, const float* v, int64_t T, int Hkv, int D, const RowKV* rows,
              int64_t capacity, bool f16) {
    if (T <= 0) return;
    const unsigned blocks = grid_for(T * Hkv * D, kThreads);
    if (f16) kv_store_kernel<__half><<<blocks, kThreads, 0, ex.stream()>>>(k, v, T, Hkv, D, rows, capacity);
    else kv_store_kernel<float><<<blocks, kThreads, 0, ex.stream()>>>(k, v, T, Hkv, D, rows, capacity);
    AC_CUDA_CHECK_LAUNCH();
}

void kv_write(const KVLayerView& layer, int64_t pos0, const float* k, const float* v, int64_t T, int device) {
    if (T <= 0) return;
    Exec ex(device);
    DeviceGuard g(device);
    const size_t bytes = sizeof(float) * static_cast<size_t>(T * layer.n_head_kv * layer.head_dim);
    DeviceBuffer dk = upload_buffer(ex, k, bytes), dv = upload_buffer(ex, v, bytes);
    std::vector<RowKV> rows(static_cast<size_t>(T));
    for (int64_t t = 0; t < T; ++t) {
        rows[static_cast<size_t>(t)].k = layer.k;
        rows[static_cast<size_t>(t)].v = layer.v;
        rows[static_cast<size_t>(t)].dst = static_cast<int32_t>(pos0 + t);
    }
    DeviceBuffer dr = upload_buffer(ex, rows.data(), sizeof(RowKV) * rows.size());
    kv_store(ex, dk.as<float>(), dv.as<float>(), T, layer.n_head_kv, layer.head_dim, dr.as<RowKV>(), layer.capacity,
             layer.f16);
    ex.sync();
}

void kv_read(const KVLayerView& layer, bool value, int head, int64_t n, float* out, int device) {
    if (n <= 0) return;
    DeviceGuard g(device);
    const size_t eb = elem_bytes(layer), elems = static_cast<size_t>(n) * layer.head_dim;
    const uint8_t* base = static_cast<const uint8_t*>(value ? layer.v : layer.k) +
                          static_cast<size_t>(head) * layer.capacity * layer.head_dim * eb;
    std::vector<uint16_t> h16;
    if (layer.f16) {
        h16.resize(elems);
        AC_CUDA_CHECK(cudaMemcpy(h16.data(), base, elems * 2, cudaMemcpyDeviceToHost));
        for (size_t i = 0; i < elems; ++i) out[i] = f16_to_f32(h16[i]);
    } else {
        AC_CUDA_CHECK(cudaMemcpy(out, base, elems * 4, cudaMemcpyDeviceToHost));
    }
}

void kv_gather(const KVLayerView& layer, const std::vector<int32_t>& kept, int64_t n_kept, int device) {
    if (n_kept <= 0) return;
    Exec ex(device);
    DeviceGuard g(device);
    const int Hkv = layer.n_head_kv, D = layer.head_dim;
    DeviceBuffer dkept = upload_buffer(ex, kept.data(), sizeof(int32_t) * kept.size());
    DeviceBuffer packed(elem_bytes(layer) * static_cast<size_t>(Hkv) * n_kept * D);
    const unsigned blocks = grid_for(static_cast<int64_t>(Hkv) * n_kept * D, kThreads);
    for (void* buf : {layer.k, layer.v}) {
        if (layer.f16) {
            gather_kernel<uint16_t><<<blocks, kThreads, 0, ex.stream()>>>(
                static_cast<const uint16_t*>(buf), packed.as<uint16_t>(), dkept.as<int32_t>(), n_kept, Hkv, D,
                layer.capacity);
            AC_CUDA_CHECK_LAUNCH();
            scatter_front_kernel<uint16_t><<<blocks, kThreads, 0, ex.stream()>>>(
                packed.as<uint16_t>(), static_cast<uint16_t*>(buf), n_kept, Hkv, D, layer.capacity);
        } else {
            gather_kernel<float><<<blocks, kThreads, 0, ex.stream()>>>(static_cast<const float*>(buf),
                                                                       packed.as<float>(), dkept.as<int32_t>(),
                                                                       n_kept, Hkv, D, layer.capacity);
            AC_CUDA_CHECK_LAUNCH();
            scatter_front_kernel<float><<<blocks, kThreads, 0, ex.stream()>>>(packed.as<float>(),
                                                                              static_cast<float*>(buf), n_kept, Hkv,
                                                                              D, layer.capacity);
        }
        AC_CUDA_CHECK_LAUNCH();
    }
    ex.sync();
}

void kv_copy(const KVLayerView& dst, const KVLayerView& src, int64_t n, int device) {
    if (n <= 0) return;
    DeviceGuard g(device);
    const size_t eb = elem_bytes(dst);
    const size_t pitch_dst = static_cast<size_t>(dst.capacity) * dst.head_dim * eb;
    const size_t pitch_src = static_cast<size_t>(src.capacity) * src.head_dim * eb;
    const size_t width = static_cast<size_t>(n) * dst.head_dim * eb;
    AC_CUDA_CHECK(cudaMemcpy2D(dst.k, pitch_dst, src.k, pitch_src, width, dst.n_head_kv, cudaMemcpyDeviceToDevice));
    AC_CUDA_CHECK(cudaMemcpy2D(dst.v, pitch_dst, src.v, pitch_src, width, dst.n_head_kv, cudaMemcpyDeviceToDevice));
}

}  // namespace cuda
}  // namespace aircache
