// Portable reference kernels: scalar C++ written so the compiler can vectorize the inner loops
// (independent accumulators). Correct first; the SIMD paths of the performance work plug in behind
// the same functions.
#include "cpu/ops.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <vector>

#include "common.h"
#include "cpu/dot.h"
#include "cpu/gemm.h"
#include "cpu/kernels.h"
#include "cpu/repack.h"
#include "fp16.h"
#include "quants.h"

namespace aircache {
namespace cpu {

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

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

// Activation rows in the format the weight type's kernels read (grow-only, owned by the calling
// thread: no allocation once the largest batch has been seen): the buffer, each row's bytes, and one
// row's quantization.
struct ActRows {
    const KernelTable& kt;
    ActKind kind;
    const float* X;
    int64_t n;
    size_t rb;
    uint8_t* base;
    ActRows(const KernelTable& k, ActKind a, const float* x, int64_t T, int64_t cols) : kt(k), kind(a), X(x), n(cols) {
        thread_local std::vector<uint8_t> buf;
        rb = kind == ActKind::Q8A ? static_cast<size_t>(n / 32) * sizeof(BlockQ8A) : static_cast<size_t>(n / 256) * sizeof(BlockQ8KA);
        if (buf.size() < rb * static_cast<size_t>(T)) buf.resize(rb * static_cast<size_t>(T));
        base = buf.data();
    }
    void quantize(int64_t t) const {
        if (kind == ActKind::Q8A)
            kt.quantize_q8a(X + t * n, reinterpret_cast<BlockQ8A*>(base + rb * static_cast<size_t>(t)), n);
        else
            kt.quantize_q8ka(X + t * n, reinterpret_cast<BlockQ8KA*>(base + rb * static_cast<size_t>(t)), n);
    }
};

const void* quantize_activations(const KernelTable& kt, ActKind kind, const float* X, int64_t T, int64_t n,
                                 size_t* row_bytes, ThreadPool& pool) {
    if (kind == ActKind::F32) {
        *row_bytes = static_cast<size_t>(n) * sizeof(float);
        return X;
    }
    const ActRows a(kt, kind, X, T, n);
    pool.parallel_for(T, [&](int64_t t0, int64_t t1) {
        for (int64_t t = t0; t < t1; ++t) a.quantize(t);
    }, 8);
    *row_bytes = a.rb;
    return a.base;
}

// Repacked quantized weights (cpu/repack.h) with a kernel for them, rows the activation kernels take
bool packed_quantized(const KernelTable& kt, const Weight& W) {
    const uint32_t ti = static_cast<uint32_t>(W.type);
    if (ti >= static_cast<uint32_t>(kTypeSlots) || !W.packed || !W.packed->serves(W) || !kt.gemm_packed[ti]) return false;
    const ActKind kind = kt.act[ti];
    return (kind == ActKind::Q8A && W.n_cols % 32 == 0) || (kind == ActKind::Q8KA && W.n_cols % 256 == 0);
}

// Y[i] = X W[i]^T (+ bias[i]) for `count` repacked quantized weights of the same width and activation
// kind (packed_quantized), decoding and prefill alike, in one pool job: the activation rows quantized
// once inside the job, each claimed by whichever thread gets to it first, then each thread a
// contiguous share of the weights' panels (one range over all of them, split by bytes: a Q6_K panel
// costs about its bytes' share more than a Q4_K one) against every activation row. Each output's
// arithmetic is independent of T, of the split and of the other weights, so a batch gives every
// sequence exactly its single-sequence bits. A thread waits only for rows another thread has claimed
// and is quantizing (~0.5 us a row): the pool may run a late thread's share on the caller after its
// own, and that share then finds every row done; a thread descheduled inside that window is waited
// for, unlike the pool's late shares.
void matmul_packed(const KernelTable& kt, const Weight* const* W, float* const* Y, const float* const* bias, int count,
                   const float* X, int64_t T, ThreadPool& pool) {
    constexpr int kMax = kMaxMatmuls;
    if (count < 1 || count > kMax) throw Error(strprintf("internal: matmul_packed over %d weights", count));
    const ActKind kind = kt.act[static_cast<uint32_t>(W[0]->type)];
    const int64_t n = W[0]->n_cols;
    const ActRows a(kt, kind, X, T, n);
    int64_t start[kMax + 1];  // each weight's first byte in the range over all their panels
    start[0] = 0;
    for (int i = 0; i < count; ++i)
        start[i + 1] = start[i] + (W[i]->n_rows + kPackRows - 1) / kPackRows * static_cast<int64_t>(W[i]->packed->panel_bytes);
    const int64_t total = start[count];
    std::atomic<int64_t> next{0}, done{0};
    pool.run([&](int ith, int nth) {
        for (int64_t t = next.fetch_add(1, std::memory_order_relaxed); t < T; t = next.fetch_add(1, std::memory_order_relaxed)) {
            a.quantize(t);
            done.fetch_add(1, std::memory_order_release);
        }
        while (done.load(std::memory_order_acquire) < T) cpu_relax();
        // bytes [lo, hi): each panel goes to the thread whose range holds its first byte
        const int64_t lo = total * ith / nth, hi = total * (ith + 1) / nth;
        for (int i = 0; i < count; ++i) {
            const PackedWeight& P = *W[i]->packed;
            const int64_t R = W[i]->n_rows, panels = (R + kPackRows - 1) / kPackRows, pb = static_cast<int64_t>(P.panel_bytes);
            auto first_panel_from = [&](int64_t b) { return std::clamp<int64_t>((b - start[i] + pb - 1) / pb, 0, panels); };
            const int64_t p0 = lo <= start[i] ? 0 : first_panel_from(lo), p1 = hi <= start[i] ? 0 : first_panel_from(hi);
            if (p1 > p0)
                kt.gemm_packed[static_cast<uint32_t>(W[i]->type)](P.data + static_cast<size_t>(p0) * P.panel_bytes,
                                                                   std::min(R, p1 * kPackRows) - p0 * kPackRows, a.base, a.rb, T, n,
                                                                   Y[i] + p0 * kPackRows, static_cast<size_t>(R));
        }
    });
    for (int i = 0; i < count; ++i)
        if (bias[i]) {
            const int64_t R = W[i]->n_rows;
            float* y = Y[i];
            const float* b = bias[i];
            pool.parallel_for(T, [&](int64_t t0, int64_t t1) {
                for (int64_t t = t0; t < t1; ++t)
                    for (int64_t r = 0; r < R; ++r) y[t * R + r] += b[r];
            });
        }
}

}  // namespace

void matmuls(const Weight* const* W, int count, const float* X, int64_t T, float* const* Y, ThreadPool& pool,
             const float* const* bias, bool rowwise) {
    const KernelTable& kt = kernels();
    bool one_job = count > 1 && count <= kMaxMatmuls;
    for (int i = 0; i < count && one_job; ++i)
        one_job = packed_quantized(kt, *W[i]) && W[i]->n_cols == W[0]->n_cols && kt.act[static_cast<uint32_t>(W[i]->type)] ==
                                                                                    kt.act[static_cast<uint32_t>(W[0]->type)];
    if (one_job) {
        const float* no_bias[kMaxMatmuls] = {};
        matmul_packed(kt, W, Y, bias ? bias : no_bias, count, X, T, pool);
        return;
    }
    for (int i = 0; i < count; ++i) matmul(*W[i], X, T, Y[i], pool, bias ? bias[i] : nullptr, rowwise);
}

void matmul(const Weight& W, const float* X, int64_t T, float* Y, ThreadPool& pool, const float* bias, bool rowwise) {
    const KernelTable& kt = kernels();
    const uint32_t ti = static_cast<uint32_t>(W.type);
    const ActKind kind = ti < static_cast<uint32_t>(kTypeSlots) ? kt.act[ti] : ActKind::F32;
    const int64_t n = W.n_cols, R = W.n_rows;
    const bool blocks_ok = (kind != ActKind::Q8A || n % 32 == 0) && (kind != ActKind::Q8KA || n % 256 == 0);
    if (ti >= static_cast<uint32_t>(kTypeSlots) || !kt.gemm[ti] || !blocks_ok) {
        matmul_dequant(W, X, T, Y, pool, bias);
        return;
    }
    constexpr int64_t kMaxDecodeT = 16;
    const bool float_weights = W.type == GGMLType::F16 || W.type == GGMLType::F32 || W.type == GGMLType::BF16;
    const bool decode = T <= kMaxDecodeT || rowwise;
    if (!decode && float_weights && std::strcmp(kt.name, "reference") != 0) {
        // Prefill with float weights: packed float panels and a broadcast micro-kernel (cpu/gemm.h)
        gemm(W, X, T, Y, pool, bias);
        return;
    }
    const KernelTable::GemmFn gemm = kt.gemm[ti];
    const KernelTable::DotFn dot = kt.dot[ti];
    if (decode && float_weights) {
        // Decode steps with float weights: the rows in blocks handed out on demand (a thread the
        // machine runs later takes fewer; each block one contiguous stretch of the weights), every
        // activation row against each block in one call: the same kernels and bits as below.
        const int64_t nth = pool.size();
        const int64_t block = std::clamp<int64_t>((R / (8 * nth)) & ~int64_t(15), 16, 128);
        const int64_t n_blocks = (R + block - 1) / block;
        std::atomic<int64_t> next{0};
        if (W.packed && W.packed->serves(W) && kt.gemm_packed[ti]) {
            // repacked rows (F16: cpu/repack.h), blocks of 8 panels or more handed out on demand;
            // every activation row in one call (each output's arithmetic independent of T and of the
            // block)
            const PackedWeight& P = *W.packed;
            const KernelTable::PackedGemmFn pg = kt.gemm_packed[ti];
            const int64_t pblock = std::clamp<int64_t>((R / (4 * nth)) & ~int64_t(8 * kPackRows - 1), 8 * kPackRows, 32 * kPackRows);
            const int64_t n_pblocks = (R + pblock - 1) / pblock;
            pool.run([&](int, int) {
                for (int64_t b = next.fetch_add(1); b < n_pblocks; b = next.fetch_add(1)) {
                    const int64_t r0 = b * pblock, nr = std::min(pblock, R - r0);
                    pg(P.data + static_cast<size_t>(r0 / kPackRows) * P.panel_bytes, nr, X, static_cast<size_t>(n) * sizeof(float), T, n,
                       Y + r0, static_cast<size_t>(R));
                }
            });
            if (bias)
                for (int64_t t = 0; t < T; ++t)
                    for (int64_t r = 0; r < R; ++r) Y[t * R + r] += bias[r];
            return;
        }
        pool.run([&](int, int) {
            for (int64_t b = next.fetch_add(1); b < n_blocks; b = next.fetch_add(1)) {
                const int64_t r0 = b * block, nr = std::min(block, R - r0);
                if (T == 1) {
                    for (int64_t r = 0; r < nr; ++r) Y[r0 + r] = dot(W.row(r0 + r), X, n);
                    continue;
                }
                for (int64_t c0 = 0; c0 < T; c0 += 8) {
                    const int64_t nc = std::min<int64_t>(8, T - c0);
                    gemm(W.row(r0), W.row_bytes, nr, X + c0 * n, static_cast<size_t>(n) * sizeof(float), nc, n,
                         Y + c0 * R + r0, static_cast<size_t>(R));
                }
            }
        });
        if (bias)
            for (int64_t t = 0; t < T; ++t)
                for (int64_t r = 0; r < R; ++r) Y[t * R + r] += bias[r];
        return;
    }
    if (packed_quantized(kt, W)) {
        const Weight* w = &W;
        float* y = Y;
        matmul_packed(kt, &w, &y, &bias, 1, X, T, pool);
        return;
    }
    size_t lda = 0;
    const char* act = static_cast<const char*>(quantize_activations(kt, kind, X, T, n, &lda, pool));
    const size_t ldw = W.row_bytes, ldy = static_cast<size_t>(R);
    // Decode steps (one row per sequence): blocks of weight rows that stay in cache while every
    // activation row passes over them, in column groups below the repacking threshold of the
    // outer-product kernels, so a batch gives exactly the single-sequence bits (dot's).
    constexpr int64_t kDecodeRows = 16, kCols = 7;
    if (decode) {
        // float weights have no repacking kernels: every row in one call; quantized ones in balanced
        // groups of at most kCols
        const int64_t cols = kind == ActKind::F32 ? std::min<int64_t>(T, 8)
                                                  : (T + (T + kCols - 1) / kCols - 1) / ((T + kCols - 1) / kCols);
        const int64_t n_blocks = (R + kDecodeRows - 1) / kDecodeRows;
        pool.parallel_for(n_blocks, [&](int64_t b0, int64_t b1) {
            for (int64_t b = b0; b < b1; ++b) {
                const int64_t r0 = b * kDecodeRows, nr = std::min(kDecodeRows, R - r0);
                if (T == 1) {  // one sequence: the row dots stream the weights (gemm's bits, no unpacking)
                    for (int64_t r = 0; r < nr; ++r) Y[r0 + r] = dot(W.row(r0 + r), act, n);
                    continue;
                }
                for (int64_t c0 = 0; c0 < T; c0 += cols) {
                    const int64_t nc = std::min(cols, T - c0);
                    gemm(W.row(r0), ldw, nr, act + static_cast<size_t>(c0) * lda, lda, nc, n, Y + c0 * R + r0, ldy);
                }
            }
        });
    } else {
        // Prefill: each thread one contiguous share of the weight rows against all activation rows
        // (the kernels block the rows and amortize the activation repacking over the share).
        const int64_t grain = 16;
        const int64_t n_units = (R + grain - 1) / grain;
        pool.run([&](int ith, int nth) {
            const int64_t u0 = n_units * ith / nth, u1 = n_units * (ith + 1) / nth;
            const int64_t r0 = u0 * grain, r1 = std::min(R, u1 * grain);
            if (r1 > r0) gemm(W.row(r0), ldw, r1 - r0, act, lda, T, n, Y + r0, ldy);
        });
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
            if (w)
                for (int64_t i = 0; i < n; ++i) o[i] = (xr[i] * scale) * w[i];
            else
                for (int64_t i = 0; i < n; ++i) o[i] = xr[i] * scale;
        }
    });
}

void rope(float* x, int64_t T, int64_t n_heads, int64_t head_dim, int64_t n_rot, const int32_t* pos, int n_axes,
          const float* inv_freq, const int32_t* pair_axis, RopeStyle style, ThreadPool& pool) {
    const int64_t half = n_rot / 2;
    pool.parallel_for(T, [&](int64_t t0, int64_t t1) {
        std::vector<float> c(static_cast<size_t>(half)), s(static_cast<size_t>(half));
        for (int64_t t = t0; t < t1; ++t) {
            const int32_t* pt = pos + t * n_axes;
            for (int64_t i = 0; i < half; ++i) {
                const float a = static_cast<float>(pt[pair_axis ? pair_axis[i] : 0]) * inv_freq[i];
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

namespace {
inline float gelu_erf(float v) { return 0.5f * v * (1.0f + std::erf(v * 0.70710678118654752f)); }
// HF's gelu_pytorch_tanh / ggml's gelu: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
inline float gelu_tanh(float v) {
    return 0.5f * v * (1.0f + std::tanh(0.79788456080286535588f * v * (1.0f + 0.044715f * v * v)));
}
}  // namespace

void glu(float* gate, const float* up, int64_t n, Activation act, ThreadPool& pool) {
    const KernelTable& kt = kernels();
    pool.parallel_for(n, [&](int64_t b, int64_t e) {
        switch (act) {
            case Activation::SiLU: kt.sigmoid_mul(gate + b, up + b, e - b, 1.0f); break;
            case Activation::QuickGELU: kt.sigmoid_mul(gate + b, up + b, e - b, 1.702f); break;
            case Activation::GELU:
                for (int64_t i = b; i < e; ++i) gate[i] = gelu_erf(gate[i]) * up[i];
                break;
            case Activation::GELUTanh:
                for (int64_t i = b; i < e; ++i) gate[i] = gelu_tanh(gate[i]) * up[i];
                break;
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
            if (w && b)
                for (int64_t i = 0; i < n; ++i) o[i] = (xr[i] - mean) * inv * w[i] + b[i];
            else
                for (int64_t i = 0; i < n; ++i) o[i] = (xr[i] - mean) * inv * (w ? w[i] : 1.0f) + (b ? b[i] : 0.0f);
        }
    });
}

void activation(float* x, int64_t n, Activation act, ThreadPool& pool) {
    const KernelTable& kt = kernels();
    pool.parallel_for(n, [&](int64_t b, int64_t e) {
        switch (act) {
            case Activation::GELU:
                for (int64_t i = b; i < e; ++i) x[i] = gelu_erf(x[i]);
                break;
            case Activation::GELUTanh:
                for (int64_t i = b; i < e; ++i) x[i] = gelu_tanh(x[i]);
                break;
            case Activation::QuickGELU:
                kt.sigmoid_mul(x + b, nullptr, e - b, 1.702f);
                break;
            case Activation::SiLU:
                kt.sigmoid_mul(x + b, nullptr, e - b, 1.0f);
                break;
        }
    }, 4096);
}

void softmax(float* x, int64_t T, int64_t n, ThreadPool& pool) {
    const KernelTable& kt = kernels();
    pool.parallel_for(T, [&](int64_t t0, int64_t t1) {
        for (int64_t t = t0; t < t1; ++t) kt.softmax(x + t * n, n, 1.0f);
    });
}

namespace {

// One query's scores (r[0..width) of a row padded to `width`) -> attention probabilities: scaled,
// softmax over the visible keys [lo, hi), zero for the rest (so a gemm over the padded row adds
// nothing).
// With a logit bias b (the keys' own, null: none) the scores are scaled and biased first.
inline void attention_probs(const KernelTable& kt, float* r, int64_t lo, int64_t hi, int64_t width, float scale,
                            const float* b = nullptr) {
    if (b) {
        for (int64_t j = lo; j < hi; ++j) r[j] = r[j] * scale + b[j];
        scale = 1.0f;
    }
    kt.softmax(r + lo, hi - lo, scale);
    for (int64_t j = 0; j < lo; ++j) r[j] = 0.0f;
    for (int64_t j = hi; j < width; ++j) r[j] = 0.0f;
}

// Scratch of one attention work item (per thread, grow-only).
struct AttnScratch {
    std::vector<float> q, scores, out, rows;  // rows: dequantized cache rows (block-typed caches)
    std::vector<uint8_t> qa;                  // the queries as 8-bit activations (block-typed keys)
    void reserve(int64_t nq, int64_t L, int64_t D) {
        auto grow = [](std::vector<float>& v, int64_t n) {
            if (v.size() < static_cast<size_t>(n)) v.resize(static_cast<size_t>(n));
        };
        grow(q, nq * D);
        grow(scores, nq * L);
        grow(out, nq * D);
    }
};

// o_i += sum_j p[i * ldp + j] v_j over L float-or-half value rows `vstride` bytes apart.
void attend_values(const KernelTable& kt, const float* S, size_t ldp, int64_t nq, const uint8_t* v, size_t vstride,
                   int64_t L, int64_t D, bool f16, float* O) {
    if (kt.attn_values) {
        kt.attn_values(S, ldp, nq, v, vstride, L, D, f16, O);
        return;
    }
    for (int64_t j = 0; j < L; ++j) {
        const uint8_t* vr = v + static_cast<size_t>(j) * vstride;
        for (int64_t i = 0; i < nq; ++i) {
            const float pij = S[static_cast<size_t>(i) * ldp + static_cast<size_t>(j)];
            if (pij == 0.0f) continue;  // masked (or underflowed: adds nothing)
            if (f16) kt.axpy_f16(pij, reinterpret_cast<const uint16_t*>(vr), O + i * D, D);
            else kt.axpy_f32(pij, reinterpret_cast<const float*>(vr), O + i * D, D);
        }
    }
}

bool float_cache(GGMLType t) { return t == GGMLType::F16 || t == GGMLType::F32; }

// softmax(q k^T * scale) v for nq query rows (sc.q, D wide) over the key/value rows 0..L) of one
// head: keys and values `kstride`/`vstride` bytes apart, of types `tk` / `tv` (F32, F16, or the
// blocks of Q8_0 / Q4_0); query i sees its keys [lo[i], hi[i]). Scores with the kernels' gemm (many
// keys x the block's queries; block-typed keys against the queries quantized to the kernels'
// 8-bit activations, as llama.cpp multiplies a quantized K cache), the probabilities scaled by
// 1/sum, then the values accumulated row by row from the cache (block-typed values dequantized in
// runs of rows that stay in L1). Writes sc.out [nq][D]. A query's result depends only on its own
// row and L (not on the block's others).
void attend(const KernelTable& kt, AttnScratch& sc, int64_t nq, const int64_t* lo, const int64_t* hi, int64_t L,
            int64_t D, float scale, const uint8_t* k, size_t kstride, const uint8_t* v, size_t vstride, GGMLType tk,
            GGMLType tv, const float* bias) {
    const uint32_t ik = static_cast<uint32_t>(tk);
    float* S = sc.scores.data();
    const ActKind kind = kt.act[ik];
    if (kt.gemm[ik] && (kind == ActKind::F32 || kind == ActKind::Q8A)) {
        const void* act = sc.q.data();
        size_t lda = static_cast<size_t>(D) * sizeof(float);
        if (kind == ActKind::Q8A) {
            lda = static_cast<size_t>(D / 32) * sizeof(BlockQ8A);
            if (sc.qa.size() < lda * static_cast<size_t>(nq)) sc.qa.resize(lda * static_cast<size_t>(nq));
            for (int64_t i = 0; i < nq; ++i)
                kt.quantize_q8a(sc.q.data() + i * D, reinterpret_cast<BlockQ8A*>(sc.qa.data() + lda * static_cast<size_t>(i)), D);
            act = sc.qa.data();
        }
        kt.gemm[ik](k, kstride, L, act, lda, nq, D, S, static_cast<size_t>(L));
    } else {  // a table without an integer kernel for the key type: dequantized keys, float dots
        if (sc.rows.size() < static_cast<size_t>(D)) sc.rows.resize(static_cast<size_t>(D));
        for (int64_t j = 0; j < L; ++j) {
            dequantize_row(tk, k + static_cast<size_t>(j) * kstride, sc.rows.data(), D);
            for (int64_t i = 0; i < nq; ++i) S[i * L + j] = kt.dot_f32(sc.q.data() + i * D, sc.rows.data(), D);
        }
    }
    for (int64_t i = 0; i < nq; ++i) attention_probs(kt, S + i * L, lo[i], hi[i], L, scale, bias);
    // values: o_i += p_ij v_j over the cache rows as stored (decode reads the cache once)
    float* O = sc.out.data();
    std::fill(O, O + nq * D, 0.0f);
    if (float_cache(tv)) {
        attend_values(kt, S, static_cast<size_t>(L), nq, v, vstride, L, D, tv == GGMLType::F16, O);
        return;
    }
    constexpr int64_t kRun = 64;  // value rows dequantized at a time
    if (sc.rows.size() < static_cast<size_t>(kRun * D)) sc.rows.resize(static_cast<size_t>(kRun * D));
    for (int64_t j0 = 0; j0 < L; j0 += kRun) {
        const int64_t n = std::min(kRun, L - j0);
        for (int64_t j = 0; j < n; ++j)
            dequantize_row(tv, v + static_cast<size_t>(j0 + j) * vstride, sc.rows.data() + j * D, D);
        attend_values(kt, S + j0, static_cast<size_t>(L), nq, reinterpret_cast<const uint8_t*>(sc.rows.data()),
                      static_cast<size_t>(D) * sizeof(float), n, D, false, O);
    }
}

}  // namespace

namespace {

// Prefill attention of many query rows over one sequence's keys: the keys of every KV head
// converted once into packed float panels (NR keys, d-major) and the values into panels of NR
// dimensions (key-major), so scores and outputs are the register-tiled micro-kernel of cpu/gemm.h
// (MR query rows x NR keys or dimensions per tile). Work items: a block of query rows x a KV
// head, longest first. q row t, head h at q + (t * n_head + h) * D; query row t sees its keys
// [lo[t], hi[t]) (lo null: from 0). key(kvh, j) / value(kvh, j) give a row pointer; `f16` says
// whether rows are halves. bias: null, or the keys' logit biases [n_kv][bias_stride].
template <class KeyRow, class ValueRow>
void attention_panels(const float* q, int64_t T, int64_t n_head, int64_t n_kv, int64_t D, const int64_t* lo,
                      const int64_t* hi, int64_t L, GGMLType tk, GGMLType tv, float scale, KeyRow key, ValueRow value,
                      float* out, ThreadPool& pool, const float* bias = nullptr, int64_t bias_stride = 0) {
    const GemmKernel& g = gemm_kernel();
    const KernelTable& kt = kernels();
    const int64_t NR = g.nr, MR = g.mr, group = n_head / n_kv;
    const int64_t n_kp = (L + NR - 1) / NR, n_dp = (D + NR - 1) / NR;
    thread_local std::vector<float> caller_panels;  // owned by the calling thread (freed below when large)
    std::vector<float>& panels = caller_panels;
    const size_t k_size = static_cast<size_t>(n_kp * D * NR), v_size = static_cast<size_t>(n_dp * L * NR);
    if (panels.size() < static_cast<size_t>(n_kv) * (k_size + v_size))
        panels.resize(static_cast<size_t>(n_kv) * (k_size + v_size));
    float* KP = panels.data();                                    // [n_kv][n_kp][D][NR]
    float* VP = panels.data() + static_cast<size_t>(n_kv) * k_size;  // [n_kv][n_dp][L][NR]
    // a cache row as floats (F32 read in place)
    auto load = [D](GGMLType t, const uint8_t* row, std::vector<float>& buf) -> const float* {
        if (t == GGMLType::F32) return reinterpret_cast<const float*>(row);
        if (t == GGMLType::F16)
            for (int64_t d = 0; d < D; ++d) buf[static_cast<size_t>(d)] = f16_to_f32(reinterpret_cast<const uint16_t*>(row)[d]);
        else
            dequantize_row(t, row, buf.data(), D);
        return buf.data();
    };
    pool.parallel_for(n_kv * n_kp, [&](int64_t i0, int64_t i1) {
        std::vector<float> kbuf(static_cast<size_t>(D)), vbuf(static_cast<size_t>(D));
        for (int64_t it = i0; it < i1; ++it) {
            const int64_t kvh = it / n_kp, p = it % n_kp;
            float* kp = KP + static_cast<size_t>(kvh) * k_size + static_cast<size_t>(p * D * NR);
            for (int64_t jj = 0; jj < NR; ++jj) {
                const int64_t j = p * NR + jj;
                if (j < L) {
                    const float* kr = load(tk, key(kvh, j), kbuf);
                    for (int64_t d = 0; d < D; ++d) kp[d * NR + jj] = kr[d];
                    const float* vr = load(tv, value(kvh, j), vbuf);
                    for (int64_t dp = 0; dp < n_dp; ++dp) {
                        float* vp = VP + static_cast<size_t>(kvh) * v_size + static_cast<size_t>((dp * L + j) * NR);
                        for (int64_t dd = 0; dd < NR; ++dd) {
                            const int64_t d = dp * NR + dd;
                            vp[dd] = d < D ? vr[d] : 0.0f;
                        }
                    }
                } else {
                    for (int64_t d = 0; d < D; ++d) kp[d * NR + jj] = 0.0f;
                }
            }
        }
    });
    constexpr int64_t kRowsPerItem = 16;
    const int64_t n_blocks = (T + kRowsPerItem - 1) / kRowsPerItem, n_items = n_blocks * n_kv;
    std::atomic<int64_t> next{0};
    pool.run([&](int, int) {
        thread_local std::vector<float> qb, S, ob;
        for (;;) {
            const int64_t item = next.fetch_add(1, std::memory_order_relaxed);
            if (item >= n_items) break;
            const int64_t b = n_blocks - 1 - item / n_kv, kvh = item % n_kv;
            const int64_t t0 = b * kRowsPerItem, t1 = std::min(T, t0 + kRowsPerItem), nq = (t1 - t0) * group;
            int64_t Lb = 0;
            for (int64_t t = t0; t < t1; ++t) Lb = std::max(Lb, hi[t]);
            const int64_t nkp = (Lb + NR - 1) / NR, Lbp = nkp * NR;
            if (qb.size() < static_cast<size_t>(nq * D)) qb.resize(static_cast<size_t>(nq * D));
            if (S.size() < static_cast<size_t>(nq * Lbp)) S.resize(static_cast<size_t>(nq * Lbp));
            if (ob.size() < static_cast<size_t>(nq * n_dp * NR)) ob.resize(static_cast<size_t>(nq * n_dp * NR));
            for (int64_t t = t0; t < t1; ++t)
                std::memcpy(qb.data() + (t - t0) * group * D, q + (t * n_head + kvh * group) * D,
                            static_cast<size_t>(group * D) * sizeof(float));
            const float* kp = KP + static_cast<size_t>(kvh) * k_size;
            for (int64_t p = 0; p < nkp; ++p)
                for (int64_t i = 0; i < nq; i += MR)
                    g.tile(qb.data() + i * D, D, kp + p * D * NR, D, S.data() + i * Lbp + p * NR, Lbp,
                           static_cast<int>(std::min(MR, nq - i)), static_cast<int>(NR), false);
            for (int64_t i = 0; i < nq; ++i) {
                const int64_t t = t0 + i / group;
                attention_probs(kt, S.data() + i * Lbp, lo ? lo[t] : 0, hi[t], Lbp, scale,
                                bias ? bias + kvh * bias_stride : nullptr);
            }
            const int64_t ldo = n_dp * NR;
            const float* vp = VP + static_cast<size_t>(kvh) * v_size;
            for (int64_t dp = 0; dp < n_dp; ++dp)
                for (int64_t i = 0; i < nq; i += MR)
                    g.tile(S.data() + i * Lbp, Lbp, vp + dp * L * NR, Lb, ob.data() + i * ldo + dp * NR, ldo,
                           static_cast<int>(std::min(MR, nq - i)), static_cast<int>(std::min(NR, D - dp * NR)), false);
            for (int64_t i = 0; i < nq; ++i)
                std::memcpy(out + ((t0 + i / group) * n_head + kvh * group + i % group) * D, ob.data() + i * ldo,
                            static_cast<size_t>(D) * sizeof(float));
        }
    });
    // Long prompts' panels (8 B per cached element: 33 MiB for llava-79m at 16K) are given back
    // rather than kept through the decode; short ones stay for the next chunk or layer.
    constexpr size_t kKeepPanelBytes = size_t(8) << 20;
    if (panels.capacity() * sizeof(float) > kKeepPanelBytes) std::vector<float>().swap(panels);
}

// Work items of the decode path: blocks of up to kQB consecutive rows that read the same keys
// (`same(a, b)`), restarting at every change, so a batch gives the single-sequence bits.
template <class Same>
void row_blocks(int64_t T, Same same, std::vector<int64_t>& blocks) {
    constexpr int64_t kQB = 16;
    blocks.clear();
    for (int64_t t = 0; t < T;) {
        int64_t e = t + 1;
        while (e < T && e - t < kQB && same(t, e)) ++e;
        blocks.push_back(t);
        blocks.push_back(e);
        t = e;
    }
}

// The decode path: per (block of rows, KV head) one gemm of the block's queries (the heads of the
// group) against the keys, then the values (attend). base_k(t) / base_v(t): the first key / value
// row of KV head kvh for query row t (base_k(t, kvh)); row_bytes between rows.
// base_b(t, kvh): the keys' logit biases of that head (null: none).
template <class BaseK, class BaseV, class BaseB>
void attention_blocks(const float* q, int64_t n_head, int64_t n_kv, int64_t D, const int64_t* lo,
                      const int64_t* hi, float scale, GGMLType tk, GGMLType tv, size_t k_bytes, size_t v_bytes,
                      const std::vector<int64_t>& blocks, BaseK base_k, BaseV base_v, BaseB base_b, float* out,
                      ThreadPool& pool) {
    const KernelTable& kt = kernels();
    const int64_t group = n_head / n_kv;
    const int64_t n_blocks = static_cast<int64_t>(blocks.size() / 2), n_items = n_blocks * n_kv;
    // dynamic scheduling, last blocks first (causal prefill: the last rows see the most keys)
    std::atomic<int64_t> next{0};
    pool.run([&](int, int) {
        thread_local AttnScratch sc;
        thread_local std::vector<int64_t> qlo, qhi;
        for (;;) {
            const int64_t item = next.fetch_add(1, std::memory_order_relaxed);
            if (item >= n_items) break;
            const int64_t b = n_blocks - 1 - item / n_kv, kvh = item % n_kv;
            const int64_t t0 = blocks[2 * b], t1 = blocks[2 * b + 1];
            const int64_t nq = (t1 - t0) * group;
            int64_t L = 0;
            for (int64_t t = t0; t < t1; ++t) L = std::max(L, hi[t]);
            sc.reserve(nq, L, D);
            qlo.resize(static_cast<size_t>(nq));
            qhi.resize(static_cast<size_t>(nq));
            // query i: row t0 + i / group, head kvh * group + i % group (the group is contiguous)
            for (int64_t t = t0; t < t1; ++t) {
                std::memcpy(sc.q.data() + (t - t0) * group * D, q + (t * n_head + kvh * group) * D,
                            static_cast<size_t>(group * D) * sizeof(float));
                for (int64_t g = 0; g < group; ++g) {
                    qlo[static_cast<size_t>((t - t0) * group + g)] = lo[t];
                    qhi[static_cast<size_t>((t - t0) * group + g)] = hi[t];
                }
            }
            attend(kt, sc, nq, qlo.data(), qhi.data(), L, D, scale, base_k(t0, kvh), k_bytes, base_v(t0, kvh), v_bytes,
                   tk, tv, base_b(t0, kvh));
            for (int64_t t = t0; t < t1; ++t)
                std::memcpy(out + (t * n_head + kvh * group) * D, sc.out.data() + (t - t0) * group * D,
                            static_cast<size_t>(group * D) * sizeof(float));
        }
    });
}

}  // namespace

void attention_dense(const float* q, const float* k, const float* v, int64_t T, int64_t S, int64_t n_head,
                     int64_t n_kv, int64_t D, const int32_t* lo32, const int32_t* hi32, float scale, float* out,
                     ThreadPool& pool) {
    const int64_t stride = n_kv * D;
    thread_local std::vector<int64_t> caller_lo, caller_hi;
    std::vector<int64_t>&lo = caller_lo, &hi = caller_hi;
    lo.resize(static_cast<size_t>(T));
    hi.resize(static_cast<size_t>(T));
    for (int64_t t = 0; t < T; ++t) {
        lo[static_cast<size_t>(t)] = lo32 ? lo32[t] : 0;
        hi[static_cast<size_t>(t)] = hi32 ? hi32[t] : S;
    }
    attention_panels(
        q, T, n_head, n_kv, D, lo32 ? lo.data() : nullptr, hi.data(), S, GGMLType::F32, GGMLType::F32, scale,
        [&](int64_t h, int64_t j) { return reinterpret_cast<const uint8_t*>(k + j * stride + h * D); },
        [&](int64_t h, int64_t j) { return reinterpret_cast<const uint8_t*>(v + j * stride + h * D); }, out, pool);
}

void attention_kv(const float* q, int64_t T, int64_t n_head, const KVShape& c, const KVRow* rows, float scale,
                  float* out, ThreadPool& pool) {
    const KernelTable& kt = kernels();
    const int64_t D = c.head_dim, n_kv = c.n_head_kv;
    const size_t k_bytes = c.k_row_bytes(), v_bytes = c.v_row_bytes();
    thread_local std::vector<int64_t> caller_lo, caller_hi, caller_blocks;  // the workers read the caller's
    std::vector<int64_t>&lo = caller_lo, &hi = caller_hi, &blocks = caller_blocks;
    lo.resize(static_cast<size_t>(T));
    hi.resize(static_cast<size_t>(T));
    bool one_seq = true, from_zero = true;
    for (int64_t t = 0; t < T; ++t) {
        lo[static_cast<size_t>(t)] = rows[t].lo;
        hi[static_cast<size_t>(t)] = rows[t].hi;
        one_seq = one_seq && rows[t].k == rows[0].k;
        from_zero = from_zero && rows[t].lo == 0;
    }
    if (T > 16 && one_seq && std::strcmp(kt.name, "reference") != 0) {  // prefill of one sequence
        const size_t k_head = static_cast<size_t>(rows[0].cap) * k_bytes;  // one layer: one allocation
        const size_t v_head = static_cast<size_t>(rows[0].cap) * v_bytes;
        const uint8_t* K = static_cast<const uint8_t*>(rows[0].k);
        const uint8_t* V = static_cast<const uint8_t*>(rows[0].v);
        int64_t L = 0;
        for (int64_t t = 0; t < T; ++t) L = std::max(L, hi[static_cast<size_t>(t)]);
        attention_panels(
            q, T, n_head, n_kv, D, from_zero ? nullptr : lo.data(), hi.data(), L, c.type_k, c.type_v, scale,
            [&](int64_t h, int64_t j) { return K + static_cast<size_t>(h) * k_head + static_cast<size_t>(j) * k_bytes; },
            [&](int64_t h, int64_t j) { return V + static_cast<size_t>(h) * v_head + static_cast<size_t>(j) * v_bytes; },
            out, pool, rows[0].bias, rows[0].cap);
        return;
    }
    row_blocks(T, [&](int64_t a, int64_t b) { return rows[a].k == rows[b].k; }, blocks);
    attention_blocks(
        q, n_head, n_kv, D, lo.data(), hi.data(), scale, c.type_k, c.type_v, k_bytes, v_bytes, blocks,
        [&](int64_t t, int64_t h) {
            return static_cast<const uint8_t*>(rows[t].k) + static_cast<size_t>(h) * rows[t].cap * k_bytes;
        },
        [&](int64_t t, int64_t h) {
            return static_cast<const uint8_t*>(rows[t].v) + static_cast<size_t>(h) * rows[t].cap * v_bytes;
        },
        [&](int64_t t, int64_t h) {
            return rows[t].bias ? rows[t].bias + static_cast<size_t>(h) * rows[t].cap : nullptr;
        },
        out, pool);
}

}  // namespace cpu
}  // namespace aircache
