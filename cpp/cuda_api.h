// cuda_api.h — the host-side entry points implemented in cuda/ (with CUDA) or in
// cpp/nocuda/cuda_stub.cpp (without: every call there is an UnsupportedError, except
// device_count() which is 0). Host code never includes CUDA headers: device pointers are void*.
// Every function checks every CUDA call and throws aircache::Error naming the statement, file and
// line, or OutOfMemory (Python MemoryError) with the bytes asked for and free.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "quant_blocks.h"

namespace aircache {
class KVCache;
namespace cuda {

// Number of devices usable with the driver present; 0 when there is no driver or no device
// (never throws: the static runtime reports a missing driver as an error code).
int device_count() noexcept;
// "NVIDIA H200 (sm_90, 139.8 GiB)"; throws when the device does not exist.
std::string device_description(int device);
// Free and total bytes of the device.
void memory_info(int device, size_t& free_bytes, size_t& total_bytes);
// Whether the build found cuBLAS headers (the library itself is loaded at run time).
bool built_with_cublas() noexcept;
// How prefill GEMMs run: "cuBLAS <version> (<library path>)" or "built-in kernels (<why cuBLAS is not used>)".
std::string gemm_backend(int device);

// --- memory ---
void* device_malloc(size_t bytes, int device);  // OutOfMemory naming the bytes asked for and free
void device_free(void* p) noexcept;
void copy_to_device(void* dst, const void* src, size_t bytes, int device);
void copy_to_host(void* dst, const void* src, size_t bytes, int device);
void copy_on_device(void* dst, const void* src, size_t bytes, int device);
void memset_device(void* dst, int value, size_t bytes, int device);

// --- KV cache layers: K and V each [n_head_kv][capacity][head_dim] of F16 or F32 ---
struct KVLayerView {
    void* k = nullptr;
    void* v = nullptr;
    int64_t capacity = 0;
    int n_head_kv = 0;
    int head_dim = 0;
    bool f16 = true;
};
// Writes T positions from host floats k, v ([T][n_head_kv][head_dim]) at [pos0, pos0 + T).
void kv_write(const KVLayerView& layer, int64_t pos0, const float* k, const float* v, int64_t T, int device);
// Rows [0, n) of one head of K (value = false) or V as floats: out [n][head_dim].
void kv_read(const KVLayerView& layer, bool value, int head, int64_t n, float* out, int device);
// Compaction: kept is [n_head_kv][n_kept] (host), each head's list strictly ascending; rows move to
// the front of their head in order.
void kv_gather(const KVLayerView& layer, const std::vector<int32_t>& kept, int64_t n_kept, int device);
// Copies rows [0, n) of every head from src to dst (same shape and type).
void kv_copy(const KVLayerView& dst, const KVLayerView& src, int64_t n, int device);

// Dequantize n elements of `type` (host bytes in, host floats out) on `device`: copies the raw
// blocks to the device, runs the dequantization kernel, copies the floats back.
void dequantize_on_device(GGMLType type, const void* src, size_t src_bytes, float* dst, int64_t n, int device);

// --- single ops on host arrays (tests/gpu compares each with the CPU backend) ---
// The same contracts as the cpu:: functions of cpu/ops.h; data is copied to the device and back.
namespace test {
void matmul(GGMLType type, const uint8_t* w, int64_t n_rows, int64_t n_cols, const float* x, int64_t T,
            const float* bias, float* y, int device);
void rmsnorm(const float* x, const float* w, int64_t T, int64_t n, float eps, float* out, int device);
void layernorm(const float* x, const float* w, const float* b, int64_t T, int64_t n, float eps, float* out,
               int device);
void rope(float* x, int64_t T, int64_t n_heads, int64_t head_dim, int64_t n_rot, const int32_t* pos,
          const float* inv_freq, bool neox, int device);
void silu_mul(float* gate, const float* up, int64_t n, int device);
void activation(float* x, int64_t n, int kind /* cpu::Activation */, int device);
void softmax(float* x, int64_t T, int64_t n, int device);
void add(float* x, const float* y, int64_t n, int device);
void attention_dense(const float* q, const float* k, const float* v, int64_t T, int64_t n_head, int64_t head_dim,
                     float* out, int device);
// cpu::attention over caches whose `layer` lives on `device`.
void attention(const float* q, int64_t T, int64_t n_head, KVCache* const* caches, const int32_t* seq,
               const int64_t* kv_len, int layer, float* out, int device);
}  // namespace test

}  // namespace cuda
}  // namespace aircache
