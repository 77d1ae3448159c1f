// ops.cuh — the device-pointer entry points of the kernel families (one .cu file each), the
// vocabulary the CUDA forwards (decoder.cu, vision.cu) are written in. Everything is asynchronous
// on the Exec's stream; shapes as in cpu/ops.h ([outer][inner], row-major, inner contiguous).
#pragma once

#include "cuda_common.cuh"

namespace aircache {
namespace cuda {

// matmul.cu: Y[t][r] = Σ_c W[r][c] X[t][c] (+ bias[r]); X [T][n_cols], Y [T][n_rows] (F32).
// Up to 8 rows: a matvec that reads the quantized weight once for all rows (decode, batches of
// sequences). More rows: the weight is dequantized to F16 (F32 weights stay F32) and multiplied
// by cuBLAS, or by the built-in tiled kernel when cuBLAS is not available.
void matmul(Exec& ex, const DeviceWeight& W, const float* X, int64_t T, float* Y, const float* bias);
constexpr int64_t kMatvecMaxRows = 8;

// norm.cu
void rmsnorm(const Exec& ex, const float* x, const float* w, int64_t T, int64_t n, float eps, float* out);
void layernorm(const Exec& ex, const float* x, const float* w, const float* b, int64_t T, int64_t n, float eps,
               float* out);

// rope.cu: in place on [T][n_heads][head_dim]; pos [T] and inv_freq [n_rot/2] on the device.
void rope(const Exec& ex, float* x, int64_t T, int64_t n_heads, int64_t head_dim, int64_t n_rot,
          const int32_t* pos, const float* inv_freq, bool neox);

// elementwise.cu
void add(const Exec& ex, float* x, const float* y, int64_t n);                 // x += y
void add_rows(const Exec& ex, float* x, const float* row, int64_t T, int64_t n);  // x[t] += row
void silu_mul(const Exec& ex, float* gate, const float* up, int64_t n);        // gate = silu(gate) * up
void activation(const Exec& ex, float* x, int64_t n, int kind);                // cpu::Activation
void softmax(const Exec& ex, float* x, int64_t T, int64_t n);                  // each row of n
// Rows idx[i] of src [*][n] -> dst [i][n] (idx on the device).
void gather_rows(const Exec& ex, const float* src, const int32_t* idx, int64_t n_idx, int64_t n, float* dst);

// attention.cu and kv.cu: what one query row reads and writes in its sequence's cache layer.
struct RowKV {
    void* k = nullptr;  // the layer's K base: [n_head_kv][capacity][head_dim] (cache type)
    void* v = nullptr;
    int32_t len = 0;    // keys the row sees (its own included)
    int32_t dst = 0;    // where the row's own K/V go
};
constexpr int kMaxHeadDim = 256;
// Causal attention of T query rows over their caches (rows [T] on the device). q, out: [T][H][D].
void attention_cache(const Exec& ex, const float* q, int64_t T, int H, int Hkv, int D, const RowKV* rows,
                     int64_t capacity, bool f16, float* out);
// Full attention of one sequence held in dense buffers q, k, v, out [T][H][D] (the vision tower).
void attention_dense(const Exec& ex, const float* q, const float* k, const float* v, int64_t T, int H, int D,
                     float* out);
// Stores each row's K/V ([T][Hkv][D] floats) at rows[t].dst of its cache layer.
void kv_store(const Exec& ex, const float* k, const float* v, int64_t T, int Hkv, int D, const RowKV* rows,
              int64_t capacity, bool f16);

// dequant.cu
void dequantize_device(GGMLType type, const void* d_src, float* d_dst, int64_t n, cudaStream_t stream);
// The same to F16 (the GEMM path: rows of a weight are consecutive blocks).
void dequantize_f16(GGMLType type, const void* d_src, __half* d_dst, int64_t n, cudaStream_t stream);

}  // namespace cuda
}  // namespace aircache
