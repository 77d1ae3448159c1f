// cpu/ops.h — the CPU kernels the model forwards are written with. Every kernel is plain C++ on
// float32 activations; weights may be any supported ggml type (dequantized row by row).
// Shapes are given in the comments as [outer][inner] (row-major, inner contiguous).
#pragma once

#include <cstdint>

#include "kv_cache.h"
#include "tensor.h"
#include "threadpool.h"

namespace aircache {
namespace cpu {

// Y[t][r] = sum_c W[r][c] * X[t][c] (+ bias[r]).  X: [T][W.n_cols], Y: [T][W.n_rows].
// `rowwise`: the rows are independent sequences (a decode batch): each is computed exactly as it
// would be alone (the kernels' row-dot arithmetic), whatever T.
void matmul(const Weight& W, const float* X, int64_t T, float* Y, ThreadPool& pool, const float* bias = nullptr,
            bool rowwise = false);

// out[i] = x[i] / sqrt(mean(x^2) + eps) * w[i], for each of the T rows of n.
void rmsnorm(const float* x, const float* w, int64_t T, int64_t n, float eps, float* out, ThreadPool& pool);

// Rotary embedding, in place, on T rows of n_heads vectors of head_dim (the first n_rot dims
// rotated). `inv_freq` holds n_rot/2 frequencies (already including any linear scaling).
// norm = adjacent pairs (x[2i], x[2i+1]) (llama GGUF, Q/K rows permuted by the converter);
// neox = pairs (x[i], x[i + n_rot/2]) (HF / qwen2 order).
enum class RopeStyle { Norm, Neox };
void rope(float* x, int64_t T, int64_t n_heads, int64_t head_dim, int64_t n_rot, const int32_t* pos,
          const float* inv_freq, RopeStyle style, ThreadPool& pool);

// gate[i] = silu(gate[i]) * up[i]
void silu_mul(float* gate, const float* up, int64_t n, ThreadPool& pool);

// x[i] += y[i]
void add(float* x, const float* y, int64_t n);

// LayerNorm over each of T rows of n: (x - mean) / sqrt(var + eps) * w + b (biased variance).
void layernorm(const float* x, const float* w, const float* b, int64_t T, int64_t n, float eps, float* out,
               ThreadPool& pool);

// Activations, in place: GELU with erf (exact, as HF's "gelu"), quick GELU x * sigmoid(1.702 x)
// (OpenAI CLIP's "quick_gelu"), SiLU x * sigmoid(x).
enum class Activation { GELU, QuickGELU, SiLU };
void activation(float* x, int64_t n, Activation act, ThreadPool& pool);

// Softmax of each of T rows of n, in place (max-subtracted).
void softmax(float* x, int64_t T, int64_t n, ThreadPool& pool);

// Full (non-causal) multi-head attention over T tokens held in dense buffers: q, k, v, out are
// [T][n_head][head_dim] (one sequence, e.g. the tokens of one image). Scale 1/sqrt(head_dim).
void attention_dense(const float* q, const float* k, const float* v, int64_t T, int64_t n_head, int64_t head_dim,
                     float* out, ThreadPool& pool);

// Causal attention of T new queries over one layer of the caches: query t reads caches[seq[t]]
// (seq null: caches[0] for every row) and sees its first kv_len[t] entries (the batch's own K/V
// already appended). q, out: [T][n_head][head_dim]. GQA: query head h reads KV head
// h / (n_head / n_head_kv). Scale 1/sqrt(head_dim).
void attention(const float* q, int64_t T, int64_t n_head, KVCache* const* caches, const int32_t* seq,
               const int64_t* kv_len, int layer, float* out, ThreadPool& pool);

}  // namespace cpu
}  // namespace aircache
