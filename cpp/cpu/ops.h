// cpu/ops.h — the CPU kernels behind the CPU backend (backend/cpu_backend.cpp). Float32
// activations; weights of any supported ggml type (the kernel tables of cpu/kernels.h).
// Shapes are given in the comments as [outer][inner] (row-major, inner contiguous).
#pragma once

#include <cstdint>

#include "backend/backend.h"
#include "tensor.h"
#include "threadpool.h"

namespace aircache {
namespace cpu {

using aircache::Activation;
using aircache::RopeStyle;

// Y[t][r] = sum_c W[r][c] * X[t][c] (+ bias[r]).  X: [T][W.n_cols], Y: [T][W.n_rows].
// `rowwise`: the rows are independent sequences (a decode batch): each is computed exactly as it
// would be alone (the kernels' row-dot arithmetic), whatever T.
void matmul(const Weight& W, const float* X, int64_t T, float* Y, ThreadPool& pool, const float* bias = nullptr,
            bool rowwise = false);

// Y[i] = X W[i]^T (+ bias[i]) for `count` weights of the same width (Q/K/V, gate/up): each output
// exactly as matmul gives it. Repacked quantized weights that read the same activation format run
// as one job (the activation rows quantized once, one split of all their panels); others one by
// one. `bias` null, or `count` entries (each null or R floats).
void matmuls(const Weight* const* W, int count, const float* X, int64_t T, float* const* Y, ThreadPool& pool,
             const float* const* bias = nullptr, bool rowwise = false);

// out[i] = x[i] / sqrt(mean(x^2) + eps) * w[i] (w null: 1), for each of the T rows of n.
void rmsnorm(const float* x, const float* w, int64_t T, int64_t n, float eps, float* out, ThreadPool& pool);

// Rotary embedding, in place, on T rows of n_heads vectors of head_dim (the first n_rot dims
// rotated). `inv_freq` holds n_rot/2 frequencies (already including any linear scaling); `pos`
// n_axes components per row; pair i turns by pos[t][pair_axis[i]] * inv_freq[i] (pair_axis null:
// component 0). Norm = adjacent pairs (x[2i], x[2i+1]); Neox = (x[i], x[i + n_rot/2]).
void rope(float* x, int64_t T, int64_t n_heads, int64_t head_dim, int64_t n_rot, const int32_t* pos, int n_axes,
          const float* inv_freq, const int32_t* pair_axis, RopeStyle style, ThreadPool& pool);

// gate[i] = act(gate[i]) * up[i]
void glu(float* gate, const float* up, int64_t n, Activation act, ThreadPool& pool);
inline void silu_mul(float* gate, const float* up, int64_t n, ThreadPool& pool) {
    glu(gate, up, n, Activation::SiLU, pool);
}

// x[i] += y[i]
void add(float* x, const float* y, int64_t n);

// LayerNorm over each of T rows of n: (x - mean) / sqrt(var + eps) * w + b (biased variance; w, b
// null: 1, 0).
void layernorm(const float* x, const float* w, const float* b, int64_t T, int64_t n, float eps, float* out,
               ThreadPool& pool);

// Activations, in place: GELU with erf (exact, as HF's "gelu"), GELU with the tanh approximation
// (HF's "gelu_pytorch_tanh"), quick GELU x * sigmoid(1.702 x) (OpenAI CLIP's "quick_gelu"), SiLU.
void activation(float* x, int64_t n, Activation act, ThreadPool& pool);

// Softmax of each of T rows of n, in place (max-subtracted).
void softmax(float* x, int64_t T, int64_t n, ThreadPool& pool);

// Attention of T query rows over S dense keys/values of one sequence: q, out [T][n_head][D], k, v
// [S][n_kv][D]; GQA: query head h reads KV head h / (n_head / n_kv). Row t sees keys [lo[t], hi[t])
// (lo, hi null: all S).
void attention_dense(const float* q, const float* k, const float* v, int64_t T, int64_t S, int64_t n_head,
                     int64_t n_kv, int64_t D, const int32_t* lo, const int32_t* hi, float scale, float* out,
                     ThreadPool& pool);
// The common full case (n_kv = n_head, every key, scale 1/sqrt(D)).
inline void attention_dense(const float* q, const float* k, const float* v, int64_t T, int64_t n_head, int64_t D,
                            float* out, ThreadPool& pool);

// Attention of T query rows over KV-cache layers: row t reads the layer rows[t].k / .v
// ([n_kv][rows[t].cap][D] of kv.type) and sees its keys [rows[t].lo, rows[t].hi). q, out
// [T][n_head][D]. Rows of one sequence (equal k) come in order; a batch of sequences gives each
// row the bits it would have alone.
void attention_kv(const float* q, int64_t T, int64_t n_head, const KVShape& kv, const KVRow* rows, float scale,
                  float* out, ThreadPool& pool);

}  // namespace cpu
}  // namespace aircache

#include <cmath>

namespace aircache {
namespace cpu {
inline void attention_dense(const float* q, const float* k, const float* v, int64_t T, int64_t n_head, int64_t D,
                            float* out, ThreadPool& pool) {
    attention_dense(q, k, v, T, T, n_head, n_head, D, nullptr, nullptr, 1.0f / std::sqrt(static_cast<float>(D)), out,
                    pool);
}
}  // namespace cpu
}  // namespace aircache
