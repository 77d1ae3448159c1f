// The `generic` kernel table: portable C++ (no intrinsics) integer dot products for every supported
// weight type, and the activation quantizers. This is the readable definition the SIMD tables are
// tested against: each quantized dot is written as
//     sum over blocks of  (weight scale * activation scale) * (exact integer dot of the quants)
//                         - (weight min * activation scale) * (exact integer sum of the activation quants)
// which is the dot product of the dequantized rows (quant_blocks.h) with the exact integer parts
// and a float sum over blocks.
#include <cmath>
#include <cstring>

#include "cpu/dot.h"
#include "cpu/kernels_internal.h"
#include "fp16.h"
#include "quant_blocks.h"

namespace aircache {
namespace cpu {

namespace {

using qb::half;
using qb::ld32;

// ---------------------------------------------------------------------------------------------
// Activation quantizers (the definition every table reproduces bit for bit)
// ---------------------------------------------------------------------------------------------

// q = round-half-away(x / d), clamped to [-127, 127] (only reachable with a subnormal d), 0 when d == 0.
inline int8_t quant8(float x, float d) {
    if (d == 0.0f) return 0;
    const float r = std::round(x / d);
    if (r >= 127.0f) return 127;
    if (r <= -127.0f) return -127;
    return r == r ? static_cast<int8_t>(r) : 0;  // NaN (non-finite input): 0
}

inline float block_amax(const float* x, int n) {
    float amax = 0.0f;
    for (int i = 0; i < n; ++i) {
        const float a = std::fabs(x[i]);
        if (a > amax) amax = a;
    }
    return amax;
}

void quantize_q8a(const float* x, BlockQ8A* y, int64_t n) {
    for (int64_t b = 0; b < n / 32; ++b, x += 32) {
        const float d = block_amax(x, 32) / 127.0f;
        int sum = 0;
        for (int i = 0; i < 32; ++i) {
            y[b].q[i] = quant8(x[i], d);
            sum += y[b].q[i];
        }
        y[b].d = d;
        y[b].s = d * static_cast<float>(sum);
    }
}

void quantize_q8ka(const float* x, BlockQ8KA* y, int64_t n) {
    for (int64_t b = 0; b < n / 256; ++b, x += 256) {
        const float d = block_amax(x, 256) / 127.0f;
        y[b].d = d;
        for (int g = 0; g < 16; ++g) {
            int sum = 0;
            for (int i = 16 * g; i < 16 * g + 16; ++i) {
                y[b].q[i] = quant8(x[i], d);
                sum += y[b].q[i];
            }
            y[b].bsums[g] = static_cast<int16_t>(sum);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 32-element blocks x Q8A
// ---------------------------------------------------------------------------------------------

// Element e (0..31) of a 4-bit block body qs[16]: low nibbles first, then high nibbles.
inline int nib(const uint8_t* qs, int e) { return (qs[e & 15] >> ((e >> 4) * 4)) & 0xF; }

float dot_q8_0(const uint8_t* w, const void* act, int64_t n) {
    const BlockQ8A* a = static_cast<const BlockQ8A*>(act);
    float sum = 0.0f;
    for (int64_t b = 0; b < n / 32; ++b, w += 34) {
        int isum = 0;
        for (int i = 0; i < 32; ++i) isum += static_cast<int8_t>(w[2 + i]) * a[b].q[i];
        sum += (half(w) * a[b].d) * static_cast<float>(isum);
    }
    return sum;
}

float dot_q4_0(const uint8_t* w, const void* act, int64_t n) {
    const BlockQ8A* a = static_cast<const BlockQ8A*>(act);
    float sum = 0.0f;
    for (int64_t b = 0; b < n / 32; ++b, w += 18) {
        int isum = 0;
        for (int i = 0; i < 32; ++i) isum += (nib(w + 2, i) - 8) * a[b].q[i];
        sum += (half(w) * a[b].d) * static_cast<float>(isum);
    }
    return sum;
}

// value = d*q + m:  sum = d*da * sum(q*qa) + m * (da * sum(qa)) = d*da*isum + m*s
float dot_q4_1(const uint8_t* w, const void* act, int64_t n) {
    const BlockQ8A* a = static_cast<const BlockQ8A*>(act);
    float sum = 0.0f;
    for (int64_t b = 0; b < n / 32; ++b, w += 20) {
        int isum = 0;
        for (int i = 0; i < 32; ++i) isum += nib(w + 4, i) * a[b].q[i];
        sum += (half(w) * a[b].d) * static_cast<float>(isum) + half(w + 2) * a[b].s;
    }
    return sum;
}

inline int q5(const uint8_t* qs, uint32_t qh, int e) { return nib(qs, e) | static_cast<int>(((qh >> e) & 1u) << 4); }

float dot_q5_0(const uint8_t* w, const void* act, int64_t n) {
    const BlockQ8A* a = static_cast<const BlockQ8A*>(act);
    float sum = 0.0f;
    for (int64_t b = 0; b < n / 32; ++b, w += 22) {
        const uint32_t qh = ld32(w + 2);
        int isum = 0;
        for (int i = 0; i < 32; ++i) isum += (q5(w + 6, qh, i) - 16) * a[b].q[i];
        sum += (half(w) * a[b].d) * static_cast<float>(isum);
    }
    return sum;
}

float dot_q5_1(const uint8_t* w, const void* act, int64_t n) {
    const BlockQ8A* a = static_cast<const BlockQ8A*>(act);
    float sum = 0.0f;
    for (int64_t b = 0; b < n / 32; ++b, w += 24) {
        const uint32_t qh = ld32(w + 4);
        int isum = 0;
        for (int i = 0; i < 32; ++i) isum += q5(w + 8, qh, i) * a[b].q[i];
        sum += (half(w) * a[b].d) * static_cast<float>(isum) + half(w + 2) * a[b].s;
    }
    return sum;
}

// ---------------------------------------------------------------------------------------------
// K-quants x Q8KA. Per super-block: d*da * sum_j(scale_j * sum_{i in j} q_i*qa_i)
//                                  - dmin*da * sum_j(min_j * sum_{i in j} qa_i)   (sums of qa: bsums)
// ---------------------------------------------------------------------------------------------

float dot_q2_k(const uint8_t* w, const void* act, int64_t n) {
    const BlockQ8KA* a = static_cast<const BlockQ8KA*>(act);
    float sum = 0.0f;
    for (int64_t b = 0; b < n / 256; ++b, w += 84) {
        const uint8_t* sc = w;
        const uint8_t* qs = w + 16;
        int isum = 0, msum = 0;
        for (int g = 0; g < 16; ++g) {  // g = e / 16 = 8h + 2j + s
            const int h = g >> 3, j = (g >> 1) & 3, s = g & 1;
            int gs = 0;
            for (int l = 0; l < 16; ++l) gs += ((qs[32 * h + 16 * s + l] >> (2 * j)) & 3) * a[b].q[16 * g + l];
            isum += (sc[g] & 0xF) * gs;
            msum += (sc[g] >> 4) * a[b].bsums[g];
        }
        sum += (half(w + 80) * a[b].d) * static_cast<float>(isum) - (half(w + 82) * a[b].d) * static_cast<float>(msum);
    }
    return sum;
}

float dot_q3_k(const uint8_t* w, const void* act, int64_t n) {
    const BlockQ8KA* a = static_cast<const BlockQ8KA*>(act);
    float sum = 0.0f;
    for (int64_t b = 0; b < n / 256; ++b, w += 110) {
        const uint8_t* hmask = w;
        const uint8_t* qs = w + 32;
        const uint8_t* sc = w + 96;
        int isum = 0;
        for (int g = 0; g < 16; ++g) {
            const int h = g >> 3, j = (g >> 1) & 3, s = g & 1;
            const int low4 = g < 8 ? (sc[g] & 0xF) : (sc[g - 8] >> 4);
            const int high2 = (sc[8 + (g & 3)] >> (2 * (g >> 2))) & 3;
            const int scale = (low4 | (high2 << 4)) - 32;
            int gs = 0;
            for (int l = 0; l < 16; ++l) {
                const int l32 = 16 * s + l;
                const int q = ((qs[32 * h + l32] >> (2 * j)) & 3) - (((hmask[l32] >> (4 * h + j)) & 1) ? 0 : 4);
                gs += q * a[b].q[16 * g + l];
            }
            isum += scale * gs;
        }
        sum += (half(w + 108) * a[b].d) * static_cast<float>(isum);
    }
    return sum;
}

float dot_q4_k(const uint8_t* w, const void* act, int64_t n) {
    const BlockQ8KA* a = static_cast<const BlockQ8KA*>(act);
    float sum = 0.0f;
    for (int64_t b = 0; b < n / 256; ++b, w += 144) {
        const uint8_t* qs = w + 16;
        int isum = 0, msum = 0;
        for (int j = 0; j < 8; ++j) {  // 32-element sub-blocks: e = 64p + 32s + l, j = 2p + s
            int sc, m;
            qb::k4_scale_min(w + 4, j, sc, m);
            const int p = j >> 1, s = j & 1;
            int js = 0;
            for (int l = 0; l < 32; ++l) js += ((qs[32 * p + l] >> (4 * s)) & 0xF) * a[b].q[32 * j + l];
            isum += sc * js;
            msum += m * (a[b].bsums[2 * j] + a[b].bsums[2 * j + 1]);
        }
        sum += (half(w) * a[b].d) * static_cast<float>(isum) - (half(w + 2) * a[b].d) * static_cast<float>(msum);
    }
    return sum;
}

float dot_q5_k(const uint8_t* w, const void* act, int64_t n) {
    const BlockQ8KA* a = static_cast<const BlockQ8KA*>(act);
    float sum = 0.0f;
    for (int64_t b = 0; b < n / 256; ++b, w += 176) {
        const uint8_t* qh = w + 16;
        const uint8_t* qs = w + 48;
        int isum = 0, msum = 0;
        for (int j = 0; j < 8; ++j) {
            int sc, m;
            qb::k4_scale_min(w + 4, j, sc, m);
            const int p = j >> 1, s = j & 1;
            int js = 0;
            for (int l = 0; l < 32; ++l) {
                const int q = ((qs[32 * p + l] >> (4 * s)) & 0xF) | (((qh[l] >> j) & 1) << 4);
                js += q * a[b].q[32 * j + l];
            }
            isum += sc * js;
            msum += m * (a[b].bsums[2 * j] + a[b].bsums[2 * j + 1]);
        }
        sum += (half(w) * a[b].d) * static_cast<float>(isum) - (half(w + 2) * a[b].d) * static_cast<float>(msum);
    }
    return sum;
}

float dot_q6_k(const uint8_t* w, const void* act, int64_t n) {
    const BlockQ8KA* a = static_cast<const BlockQ8KA*>(act);
    float sum = 0.0f;
    for (int64_t b = 0; b < n / 256; ++b, w += 210) {
        const uint8_t* ql = w;
        const uint8_t* qh = w + 128;
        const int8_t* sc = reinterpret_cast<const int8_t*>(w + 192);
        int isum = 0;
        for (int g = 0; g < 16; ++g) {  // e = 128h + 32k + l, g = e / 16
            int gs = 0;
            for (int e = 16 * g; e < 16 * g + 16; ++e) {
                const int h = e >> 7, k = (e >> 5) & 3, l = e & 31;
                const int low4 = (ql[64 * h + 32 * (k & 1) + l] >> (4 * (k >> 1))) & 0xF;
                const int high2 = (qh[32 * h + l] >> (2 * k)) & 3;
                gs += ((low4 | (high2 << 4)) - 32) * a[b].q[e];
            }
            isum += sc[g] * gs;
        }
        sum += (half(w + 208) * a[b].d) * static_cast<float>(isum);
    }
    return sum;
}

// ---------------------------------------------------------------------------------------------
// Float weights x float activations, and the float vector kernels. Eight independent partial sums
// (vectorizable, and the same order as the reference matmul).
// ---------------------------------------------------------------------------------------------

template <class Load> inline float dot8(Load load, const float* x, int64_t n) {
    float s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; ++j) s[j] += load(i + j) * x[i + j];
    float r = ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
    for (; i < n; ++i) r += load(i) * x[i];
    return r;
}

void scores_f32(const float* q, const float* k, int64_t L, int64_t d, float scale, float* s) {
    for (int64_t j = 0; j < L; ++j) s[j] = cpu::dot_f32(q, k + j * d, d) * scale;
}

float dot_f32(const float* a, const float* b, int64_t n) {
    return dot8([a](int64_t i) { return a[i]; }, b, n);
}
float dot_f16_f32(const uint16_t* a, const float* b, int64_t n) {
    return dot8([a](int64_t i) { return f16_to_f32(a[i]); }, b, n);
}
float dot_w_f32(const uint8_t* w, const void* x, int64_t n) {
    return dot8([w](int64_t i) { return bits_to_f32(ld32(w + 4 * i)); }, static_cast<const float*>(x), n);
}
float dot_w_f16(const uint8_t* w, const void* x, int64_t n) {
    return dot8([w](int64_t i) { return f16_to_f32(static_cast<uint16_t>(qb::ld16(w + 2 * i))); },
                static_cast<const float*>(x), n);
}
float dot_w_bf16(const uint8_t* w, const void* x, int64_t n) {
    return dot8([w](int64_t i) { return bf16_to_f32(static_cast<uint16_t>(qb::ld16(w + 2 * i))); },
                static_cast<const float*>(x), n);
}

void axpy_f32(float a, const float* x, float* y, int64_t n) {
    for (int64_t i = 0; i < n; ++i) y[i] += a * x[i];
}
void axpy_f16(float a, const uint16_t* x, float* y, int64_t n) {
    for (int64_t i = 0; i < n; ++i) y[i] += a * f16_to_f32(x[i]);
}
void f16_to_f32_row(const uint16_t* x, float* y, int64_t n) {
    for (int64_t i = 0; i < n; ++i) y[i] = f16_to_f32(x[i]);
}
void f32_to_f16_row(const float* x, uint16_t* y, int64_t n) {
    for (int64_t i = 0; i < n; ++i) y[i] = f32_to_f16(x[i]);
}

#include "cpu/kernels_vecmath.inc"

KernelTable make_generic() {
    KernelTable t;
    t.name = "generic";
    for (ActKind& k : t.act) k = ActKind::F32;
    auto set = [&t](GGMLType type, ActKind kind, KernelTable::DotFn fn, KernelTable::GemmFn gemm) {
        t.act[static_cast<uint32_t>(type)] = kind;
        t.dot[static_cast<uint32_t>(type)] = fn;
        t.gemm[static_cast<uint32_t>(type)] = gemm;
    };
    using detail::gemm_by_dot;
    set(GGMLType::F32, ActKind::F32, dot_w_f32, gemm_by_dot<dot_w_f32>);
    set(GGMLType::F16, ActKind::F32, dot_w_f16, gemm_by_dot<dot_w_f16>);
    set(GGMLType::BF16, ActKind::F32, dot_w_bf16, gemm_by_dot<dot_w_bf16>);
    set(GGMLType::Q4_0, ActKind::Q8A, dot_q4_0, gemm_by_dot<dot_q4_0>);
    set(GGMLType::Q4_1, ActKind::Q8A, dot_q4_1, gemm_by_dot<dot_q4_1>);
    set(GGMLType::Q5_0, ActKind::Q8A, dot_q5_0, gemm_by_dot<dot_q5_0>);
    set(GGMLType::Q5_1, ActKind::Q8A, dot_q5_1, gemm_by_dot<dot_q5_1>);
    set(GGMLType::Q8_0, ActKind::Q8A, dot_q8_0, gemm_by_dot<dot_q8_0>);
    set(GGMLType::Q2_K, ActKind::Q8KA, dot_q2_k, gemm_by_dot<dot_q2_k>);
    set(GGMLType::Q3_K, ActKind::Q8KA, dot_q3_k, gemm_by_dot<dot_q3_k>);
    set(GGMLType::Q4_K, ActKind::Q8KA, dot_q4_k, gemm_by_dot<dot_q4_k>);
    set(GGMLType::Q5_K, ActKind::Q8KA, dot_q5_k, gemm_by_dot<dot_q5_k>);
    set(GGMLType::Q6_K, ActKind::Q8KA, dot_q6_k, gemm_by_dot<dot_q6_k>);
    t.quantize_q8a = quantize_q8a;
    t.quantize_q8ka = quantize_q8ka;
    t.dot_f32 = dot_f32;
    t.dot_f16_f32 = dot_f16_f32;
    t.axpy_f32 = axpy_f32;
    t.axpy_f16 = axpy_f16;
    t.f16_to_f32 = f16_to_f32_row;
    t.f32_to_f16 = f32_to_f16_row;
    t.scores_f32 = scores_f32;
    fill_vecmath(t);
    return t;
}

}  // namespace

namespace detail {
const KernelTable* build_generic() {
    static const KernelTable t = make_generic();
    return &t;
}
}  // namespace detail

}  // namespace cpu
}  // namespace aircache
