// Portable reference kernels: scalar C++ written so the compiler can vectorize the inner loops
// (independent accumulators). Correct first; the SIMD paths of the performance work plug in behind
// the same functions.
#include "cpu/ops.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "common.h"
#include "cpu/kernels.h"
#include "fp16.h"
#include "quants.h"

namespace aircache {
namespace cpu {

namespace {

inline float dot_f32(const float* a, const float* b, int64_t n) {
    float s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; ++j) s[j] += a[i + j] * b[i + j];
    float r = ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
    for (; i < n; ++i) r += a[i] * b[i];
    return r;
}

}  // namespace

namespace {

// Types without a kernel-table entry: dequantize blocks of rows, float dots.
void matmul_dequant(const Weight& W, const float* X, int64_t T, float* Y, ThreadPool& pool, const float* bias) {
    const int64_t n = W.n_cols, R = W.n_rows;
    constexpr int64_t kRowBlock = 8;  // rows dequantized together, so each X row is read once per block
    const int64_t n_blocks = (R + kRowBlock - 1) / kRowBlock;
    const bool is_f32 = W.type == GGMLType::F32;
    pool.parallel_for(n_blocks, [&](int64_t b0, int64_t b1) {
        thread_local std::vector<float> buf;
        if (!is_f32 && buf.size() < static_cast<size_t>(kRowBlock * n)) buf.resize(static_cast<size_t>(kRowBlock * n));
        const float* rows[kRowBlock];
        for (int64_t b = b0; b < b1; ++b) {
            const int64_t r0 = b * kRowBlock, nr = std::min(kRowBlock, R - r0);
            for (int64_t i = 0; i < nr; ++i) {
                if (is_f32) {
                    rows[i] = reinterpret_cast<const float*>(W.row(r0 + i));
                } else {
                    dequantize_row(W.type, W.row(r0 + i), buf.data() + i * n, n);
                    rows[i] = buf.data() + i * n;
                }
            }
            for (int64_t t = 0; t < T; ++t) {
                const float* x = X + t * n;
                float* y = Y + t * R + r0;
                for (int64_t i = 0; i < nr; ++i) y[i] = dot_f32(rows[i], x, n) + (bias ? bias[r0 + i] : 0.0f);
            }
        }
    });
}

// Activation rows in the format the weight type's kernels read (grow-only, owned by the calling
// thread: no allocation once the largest batch has been seen).
const void* quantize_activations(const KernelTable& kt, ActKind kind, const float* X, int64_t T, int64_t n,
                                 size_t* row_bytes, ThreadPool& pool) {
    if (kind == ActKind::F32) {
        *row_bytes = static_cast<size_t>(n) * sizeof(float);
        return X;
    }
    thread_local std::vector<uint8_t> buf;
    const size_t rb = kind == ActKind::Q8A ? static_cast<size_t>(n / 32) * sizeof(BlockQ8A)
                                           : static_cast<size_t>(n / 256) * sizeof(BlockQ8KA);
    if (buf.size() < rb * static_cast<size_t>(T)) buf.resize(rb * static_cast<size_t>(T));
    uint8_t* base = buf.data();
    pool.parallel_for(T, [&](int64_t t0, int64_t t1) {
        for (int64_t t = t0; t < t1; ++t) {
            if (kind == ActKind::Q8A)
                kt.quantize_q8a(X + t * n, reinterpret_cast<BlockQ8A*>(base + rb * static_cast<size_t>(t)), n);
            else
                kt.quantize_q8ka(X + t * n, reinterpret_cast<BlockQ8KA*>(base + rb * static_cast<size_t>(t)), n);
        }
    }, 8);
    *row_bytes = rb;
    return base;
}

}  // namespace

void matmul(const Weight& W, const float* X, int64_t T, float* Y, ThreadPool& pool, const float* bias) {
    const KernelTable& kt = kernels();
    const uint32_t ti = static_cast<uint32_t>(W.type);
    const ActKind kind = ti < static_cast<uint32_t>(kTypeSlots) ? kt.act[ti] : ActKind::F32;
    const int64_t n = W.n_cols, R = W.n_rows;
    const bool blocks_ok = (kind != ActKind::Q8A || n % 32 == 0) && (kind != ActKind::Q8KA || n % 256 == 0);
    if (ti >= static_cast<uint32_t>(kTypeSlots) || !kt.gemm[ti] || !blocks_ok) {
        matmul_dequant(W, X, T, Y, pool, bias);
        return;
    }
    const KernelTable::GemmFn gemm = kt.gemm[ti];
    size_t lda = 0;
    const char* act = static_cast<const char*>(quantize_activations(kt, kind, X, T, n, &lda, pool));
    const size_t ldw = W.row_bytes, ldy = static_cast<size_t>(R);
    // Decode steps (one row per sequence): blocks of weight rows that stay in cache while every
    // activation row passes over them, in column groups below the repacking threshold of the
    // outer-product kernels, so a batch gives exactly the single-sequence bits (dot's).
    constexpr int64_t kDecodeRows = 16, kMaxDecodeT = 16, kCols = 7;
    if (T <= kMaxDecodeT) {
        const int64_t n_blocks = (R + kDecodeRows - 1) / kDecodeRows;
        pool.parallel_for(n_blocks, [&](int64_t b0, int64_t b1) {
            for (int64_t b = b0; b < b1; ++b) {
                const int64_t r0 = b * kDecodeRows, nr = std::min(kDecodeRows, R - r0);
                for (int64_t c0 = 0; c0 < T; c0 += kCols) {
                    const int64_t nc = std::min(kCols, T - c0);
                    gemm(W.row(r0), ldw, nr, act + static_cast<size_t>(c0) * lda, lda, nc, n, Y + c0 * R + r0, ldy);
                }
            }
        });
    } else {
        // Prefill: each thread one contiguous share of the weight rows against all activation rows
        // (the kernels block the rows and amortize the activation repacking over the share).
        const int nth = pool.size();
        const int64_t grain = 16;
        const int64_t n_units = (R + grain - 1) / grain;
        pool.run([&](int ith, int nth_) {
            const int64_t u0 = n_units * ith / nth_, u1 = n_units * (ith + 1) / nth_;
            const int64_t r0 = u0 * grain, r1 = std::min(R, u1 * grain);
            if (r1 > r0) gemm(W.row(r0), ldw, r1 - r0, act, lda, T, n, Y + r0, ldy);
        });
        (void)nth;
    }
    if (bias)
        pool.parallel_for(T, [&](int64_t t0, int64_t t1) {
            for (int64_t t = t0; t < t1; ++t)
                for (int64_t r = 0; r < R; ++r) Y[t * R + r] += bias[r];
        });
}

void rmsnorm(const float* x, const float* w, int64_t T, int64_t n, float eps, float* out, ThreadPool& pool) {
    pool.parallel_for(T, [&](int64_t t0, int64_t t1) {
        for (int64_t t = t0; t < t1; ++t) {
            const float* xr = x + t * n;
            float* o = out + t * n;
            const float ms = dot_f32(xr, xr, n) / static_cast<float>(n);
            const float scale = 1.0f / std::sqrt(ms + eps);
            for (int64_t i = 0; i < n; ++i) o[i] = (xr[i] * scale) * w[i];
        }
    });
}

void rope(float* x, int64_t T, int64_t n_heads, int64_t head_dim, int64_t n_rot, const int32_t* pos,
          const float* inv_freq, RopeStyle style, ThreadPool& pool) {
    const int64_t half = n_rot / 2;
    pool.parallel_for(T, [&](int64_t t0, int64_t t1) {
        std::vector<float> c(static_cast<size_t>(half)), s(static_cast<size_t>(half));
        for (int64_t t = t0; t < t1; ++t) {
            const float p = static_cast<float>(pos[t]);
            for (int64_t i = 0; i < half; ++i) {
                const float a = p * inv_freq[i];
                c[i] = std::cos(a);
                s[i] = std::sin(a);
            }
            for (int64_t h = 0; h < n_heads; ++h) {
                float* v = x + (t * n_heads + h) * head_dim;
                for (int64_t i = 0; i < half; ++i) {
                    const int64_t i0 = style == RopeStyle::Norm ? 2 * i : i;
                    const int64_t i1 = style == RopeStyle::Norm ? 2 * i + 1 : i + half;
                    const float x0 = v[i0], x1 = v[i1];
                    v[i0] = x0 * c[i] - x1 * s[i];
                    v[i1] = x1 * c[i] + x0 * s[i];
                }
            }
        }
    });
}

void silu_mul(float* gate, const float* up, int64_t n, ThreadPool& pool) {
    pool.parallel_for(n, [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) {
            const float g = gate[i];
            gate[i] = g / (1.0f + std::exp(-g)) * up[i];
        }
    }, 4096);
}

void add(float* x, const float* y, int64_t n) {
    for (int64_t i = 0; i < n; ++i) x[i] += y[i];
}

void layernorm(const float* x, const float* w, const float* b, int64_t T, int64_t n, float eps, float* out,
               ThreadPool& pool) {
    pool.parallel_for(T, [&](int64_t t0, int64_t t1) {
        for (int64_t t = t0; t < t1; ++t) {
            const float* xr = x + t * n;
            float* o = out + t * n;
            float mean = 0.0f;
            for (int64_t i = 0; i < n; ++i) mean += xr[i];
            mean /= static_cast<float>(n);
            float var = 0.0f;
            for (int64_t i = 0; i < n; ++i) {
                const float d = xr[i] - mean;
                var += d * d;
            }
            var /= static_cast<float>(n);
            const float inv = 1.0f / std::sqrt(var + eps);
            for (int64_t i = 0; i < n; ++i) o[i] = (xr[i] - mean) * inv * w[i] + b[i];
        }
    });
}

void activation(float* x, int64_t n, Activation act, ThreadPool& pool) {
    pool.parallel_for(n, [&](int64_t b, int64_t e) {
        switch (act) {
            case Activation::GELU:
                for (int64_t i = b; i < e; ++i) x[i] = 0.5f * x[i] * (1.0f + std::erf(x[i] * 0.70710678118654752f));
                break;
            case Activation::QuickGELU:
                for (int64_t i = b; i < e; ++i) x[i] = x[i] / (1.0f + std::exp(-1.702f * x[i]));
                break;
            case Activation::SiLU:
                for (int64_t i = b; i < e; ++i) x[i] = x[i] / (1.0f + std::exp(-x[i]));
                break;
        }
    }, 4096);
}

void softmax(float* x, int64_t T, int64_t n, ThreadPool& pool) {
    pool.parallel_for(T, [&](int64_t t0, int64_t t1) {
        for (int64_t t = t0; t < t1; ++t) {
            float* r = x + t * n;
            float mx = -INFINITY;
            for (int64_t i = 0; i < n; ++i) mx = std::max(mx, r[i]);
            float sum = 0.0f;
            for (int64_t i = 0; i < n; ++i) sum += (r[i] = std::exp(r[i] - mx));
            const float inv = 1.0f / sum;
            for (int64_t i = 0; i < n; ++i) r[i] *= inv;
        }
    });
}

void attention_dense(const float* q, const float* k, const float* v, int64_t T, int64_t n_head, int64_t D, float* out,
                     ThreadPool& pool) {
    const KernelTable& kt = kernels();
    const float scale = 1.0f / std::sqrt(static_cast<float>(D));
    const int64_t stride = n_head * D;
    pool.parallel_for(T * n_head, [&](int64_t i0, int64_t i1) {
        thread_local std::vector<float> scores, acc;
        if (scores.size() < static_cast<size_t>(T)) scores.resize(static_cast<size_t>(T));
        if (acc.size() < static_cast<size_t>(D)) acc.resize(static_cast<size_t>(D));
        for (int64_t item = i0; item < i1; ++item) {
            const int64_t t = item / n_head, h = item % n_head;
            const float* qv = q + t * stride + h * D;
            float mx = -INFINITY;
            for (int64_t j = 0; j < T; ++j) {
                scores[j] = kt.dot_f32(qv, k + j * stride + h * D, D) * scale;
                mx = std::max(mx, scores[j]);
            }
            float sum = 0.0f;
            for (int64_t j = 0; j < T; ++j) sum += (scores[j] = std::exp(scores[j] - mx));
            std::fill(acc.begin(), acc.begin() + D, 0.0f);
            for (int64_t j = 0; j < T; ++j) kt.axpy_f32(scores[j], v + j * stride + h * D, acc.data(), D);
            float* o = out + t * stride + h * D;
            const float inv = 1.0f / sum;
            for (int64_t d = 0; d < D; ++d) o[d] = acc[d] * inv;
        }
    });
}

void attention(const float* q, int64_t T, int64_t n_head, KVCache* const* caches, const int32_t* seq,
               const int64_t* kv_len, int layer, float* out, ThreadPool& pool) {
    const KernelTable& kt = kernels();
    const KVCacheConfig& c = caches[0]->config();
    const int64_t D = c.head_dim, group = n_head / c.n_head_kv;
    const bool f16 = c.type == KVType::F16;
    const float scale = 1.0f / std::sqrt(static_cast<float>(D));
    pool.parallel_for(T * n_head, [&](int64_t i0, int64_t i1) {
        thread_local std::vector<float> scores, acc;
        if (acc.size() < static_cast<size_t>(D)) acc.resize(static_cast<size_t>(D));
        for (int64_t item = i0; item < i1; ++item) {
            const int64_t t = item / n_head, h = item % n_head;
            const KVCache& kv = *caches[seq ? seq[t] : 0];
            const int kvh = static_cast<int>(h / group);
            const int64_t L = kv_len[t];
            const float* qv = q + (t * n_head + h) * D;
            if (scores.size() < static_cast<size_t>(L)) scores.resize(static_cast<size_t>(L));
            float mx = -INFINITY;
            for (int64_t j = 0; j < L; ++j) {
                const uint8_t* k = kv.k_row(layer, kvh, j);
                const float sc = (f16 ? kt.dot_f16_f32(reinterpret_cast<const uint16_t*>(k), qv, D)
                                      : kt.dot_f32(reinterpret_cast<const float*>(k), qv, D)) * scale;
                scores[j] = sc;
                mx = std::max(mx, sc);
            }
            float sum = 0.0f;
            for (int64_t j = 0; j < L; ++j) {
                scores[j] = std::exp(scores[j] - mx);
                sum += scores[j];
            }
            std::fill(acc.begin(), acc.begin() + D, 0.0f);
            for (int64_t j = 0; j < L; ++j) {
                const uint8_t* v = kv.v_row(layer, kvh, j);
                if (f16) kt.axpy_f16(scores[j], reinterpret_cast<const uint16_t*>(v), acc.data(), D);
                else kt.axpy_f32(scores[j], reinterpret_cast<const float*>(v), acc.data(), D);
            }
            float* o = out + (t * n_head + h) * D;
            const float inv = 1.0f / sum;
            for (int64_t d = 0; d < D; ++d) o[d] = acc[d] * inv;
        }
    });
}

}  // namespace cpu
}  // namespace aircache
