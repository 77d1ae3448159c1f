// The `reference` kernel table: no integer paths. Every weight type reads float activations; the
// quantized types have no dot (callers dequantize_row + dot_f32), and the float kernels are the
// scalar arithmetic of the reference matmul (eight partial sums, no fused multiply-add: this file
// is compiled with -ffp-contract=off), so results are bit-for-bit those the HF parity tests saw.
#include "cpu/kernels_internal.h"

#include <algorithm>
#include <cmath>
#include "fp16.h"
#include "quant_blocks.h"

namespace aircache {
namespace cpu {

namespace {

template <class Load> inline float dot8(Load load, const float* x, int64_t n) {
    float s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; ++j) s[j] += load(i + j) * x[i + j];
    float r = ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
    for (; i < n; ++i) r += load(i) * x[i];
    return r;
}

float dot_f32(const float* a, const float* b, int64_t n) {
    return dot8([a](int64_t i) { return a[i]; }, b, n);
}
float dot_f16_f32(const uint16_t* a, const float* b, int64_t n) {
    return dot8([a](int64_t i) { return f16_to_f32(a[i]); }, b, n);
}
float dot_w_f32(const uint8_t* w, const void* x, int64_t n) {
    return dot8([w](int64_t i) { return bits_to_f32(qb::ld32(w + 4 * i)); }, static_cast<const float*>(x), n);
}
float dot_w_f16(const uint8_t* w, const void* x, int64_t n) {
    return dot8([w](int64_t i) { return qb::half(w + 2 * i); }, static_cast<const float*>(x), n);
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

// softmax and sigmoid gates: std::exp, sums in index order (the arithmetic the HF parity tests saw)
void softmax_row(float* r, int64_t n, float scale) {
    float mx = -INFINITY;
    for (int64_t j = 0; j < n; ++j) mx = std::max(mx, r[j] *= scale);
    float sum = 0.0f;
    for (int64_t j = 0; j < n; ++j) sum += (r[j] = std::exp(r[j] - mx));
    const float inv = 1.0f / sum;
    for (int64_t j = 0; j < n; ++j) r[j] *= inv;
}
void sigmoid_mul(float* x, const float* mul, int64_t n, float beta) {
    if (mul)
        for (int64_t i = 0; i < n; ++i) x[i] = x[i] / (1.0f + std::exp(-beta * x[i])) * mul[i];
    else
        for (int64_t i = 0; i < n; ++i) x[i] = x[i] / (1.0f + std::exp(-beta * x[i]));
}

KernelTable make_reference() {
    KernelTable t;
    t.name = "reference";
    for (ActKind& k : t.act) k = ActKind::F32;
    t.dot[static_cast<uint32_t>(GGMLType::F32)] = dot_w_f32;
    t.dot[static_cast<uint32_t>(GGMLType::F16)] = dot_w_f16;
    t.dot[static_cast<uint32_t>(GGMLType::BF16)] = dot_w_bf16;
    t.gemm[static_cast<uint32_t>(GGMLType::F32)] = detail::gemm_by_dot<dot_w_f32>;
    t.gemm[static_cast<uint32_t>(GGMLType::F16)] = detail::gemm_by_dot<dot_w_f16>;
    t.gemm[static_cast<uint32_t>(GGMLType::BF16)] = detail::gemm_by_dot<dot_w_bf16>;
    // The quantizers are the shared definition (unused by this table's dots).
    const KernelTable* g = detail::build_generic();
    t.quantize_q8a = g->quantize_q8a;
    t.quantize_q8ka = g->quantize_q8ka;
    t.dot_f32 = dot_f32;
    t.dot_f16_f32 = dot_f16_f32;
    t.axpy_f32 = axpy_f32;
    t.axpy_f16 = axpy_f16;
    t.f16_to_f32 = f16_to_f32_row;
    t.f32_to_f16 = f32_to_f16_row;
    t.softmax = softmax_row;
    t.sigmoid_mul = sigmoid_mul;
    t.scores_f32 = g->scores_f32;
    t.probe_exp = g->probe_exp;
    t.probe_acc = g->probe_acc;
    return t;
}

}  // namespace

namespace detail {
const KernelTable* build_reference() {
    static const KernelTable t = make_reference();
    return &t;
}
}  // namespace detail

}  // namespace cpu
}  // namespace aircache
