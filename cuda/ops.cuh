// ops.cuh — the device-pointer entry points of the kernel families (one .cu file each), the
// vocabulary the CUDA backend (backend.cu) implements the op table with. Everything is
// asynchronous on the Exec's stream; shapes as in backend/backend.h ([outer][inner], row-major,
// inner contiguous).
#pragma once

#include "backend/backend.h"
#include "cuda_common.cuh"

namespace aircache {
namespace cuda {

// matmul.cu: Y[t][r] = Σ_c W[r][c] X[t][c] (+ bias[r]); X [T][n_cols], Y [T][n_rows] (F32).
// Up to 8 rows: a matvec that reads the quantized weight once for all rows (decode, batches of
// sequences). More rows: the weight is dequantized to F16 (F32 weights stay F32) and multiplied
// by cuBLAS, or by the built-in tiled kernel when cuBLAS is not available.
void matmul(Exec& ex, const DeviceWeight& W, const float* X, int64_t T, float* Y, const float* bias);
constexpr int64_t kMatvecMaxRows = 8;

// norm.cu (w, b may be null: 1, 0)
void rmsnorm(const Exec& ex, const float* x, const float* w, int64_t T, int64_t n, float eps, float* out);
void layernorm(const Exec& ex, const float* x, const float* w, const float* b, int64_t T, int64_t n, float eps,
               float* out);

// rope.cu: in place on [T][n_heads][head_dim]; pos [T][n_axes], pair_axis [n_rot/2] (null: axis
// 0) and inv_freq [n_rot/2] on the device.
void rope(const Exec& ex, float* x, int64_t T, int64_t n_heads, int64_t head_dim, int64_t n_rot, const int32_t* pos,
          int n_axes, const int32_t* pair_axis, const float* inv_freq, bool neox);

// elementwise.cu (y_cols > 0: y is one row of y_cols values broadcast over x's rows)
void add(const Exec& ex, float* x, const float* y, int64_t n, int64_t y_cols);   // x += y
void mul(const Exec& ex, float* x, const float* y, int64_t n, int64_t y_cols);   // x *= y
void scale(const Exec& ex, float* x, float s, int64_t n);                        // x *= s
void glu(const Exec& ex, float* gate, const float* up, int64_t n, int kind);      // gate = act(gate) * up
void activation(const Exec& ex, float* x, int64_t n, int kind);                   // Activation
void softmax(const Exec& ex, float* x, int64_t T, int64_t n);                     // each row of n
// Rows idx[i] of src [*][n] -> dst [i][n]; and back (idx on the device).
void gather_rows(const Exec& ex, const float* src, const int32_t* idx, int64_t n_idx, int64_t n, float* dst);
void scatter_rows(const Exec& ex, float* dst, const int32_t* idx, int64_t n_idx, int64_t n, const float* src);

// attention.cu: softmax(q k^T * scale) v, each row over its keys [lo, hi).
constexpr int kMaxHeadDim = 256;
// Over KV-cache layers: rows [T] (on the device) name each row's layer, its allocation and range. q, out [T][H][D].
void attention_cache(const Exec& ex, const float* q, int64_t T, int H, int Hkv, int D, const KVRow* rows, bool f16,
                     float scale, float* out);
// Over dense k, v [S][Hkv][D] of one sequence (the vision towers); ranges [T][2] on the device
// (null: every row sees all S keys).
void attention_dense(const Exec& ex, const float* q, const float* k, const float* v, int64_t T, int64_t S, int H,
                     int Hkv, int D, const int32_t* ranges, float scale, float* out);

// kv.cu: each row's K/V ([T][Hkv][D] floats) at rows[t].dst of its cache layer (dst < 0: skipped);
// compaction: kept [Hkv][n_kept] on the device, each head's list ascending.
void kv_store(const Exec& ex, const float* k, const float* v, int64_t T, int Hkv, int D, const KVRow* rows,
              bool f16);
void kv_compact(const Exec& ex, void* k, void* v, const int32_t* kept, int64_t n_kept, int Hkv, int D,
                int64_t capacity, bool f16);

// patch.cu: the patch-embedding convolution (pixels [C][H][W] -> out [(H/P)(W/P)][n_out], through
// the matmul above) and average pooling of a grid [H][W][C] in k x k windows.
void patch_embed(Exec& ex, const float* pixels, int64_t C, int64_t H, int64_t W, int64_t P, const DeviceWeight& w,
                 const float* bias, float* out);
void avg_pool(const Exec& ex, const float* x, int64_t H, int64_t W, int64_t C, int64_t k, float* out);

// dequant.cu
void dequantize_device(GGMLType type, const void* d_src, float* d_dst, int64_t n, cudaStream_t stream);
// The same to F16 (the GEMM path: rows of a weight are consecutive blocks).
void dequantize_f16(GGMLType type, const void* d_src, __half* d_dst, int64_t n, cudaStream_t stream);

}  // namespace cuda
}  // namespace aircache
