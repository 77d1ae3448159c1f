// cpu/kernels.h — the SIMD inner loops of the CPU backend, one table per instruction set, chosen at
// run time from the CPU's features (AIRCACHE_KERNELS=reference|generic|avx2|avx512|avx512vnni|
// avx512amx|neon|neon_dotprod forces one).
//
//   const KernelTable& k = kernels();
//   if (k.act_kind(type) == ActKind::Q8A) k.quantize_q8a(x, qx, n);     // activations once per row
//   float y = k.dot[type](weight_row, qx, n);                           // per weight row
//
// Quantized weights are multiplied with 8-bit activations (integer dot products per block, as
// llama.cpp does): Q4_0/Q4_1/Q5_0/Q5_1/Q8_0 with Q8A (32-element blocks), the K-quants with Q8KA
// (256-element blocks). Float weights (F32/F16/BF16) take float activations. For T > 1 activation
// rows (prefill) use gemm: the same results as dot, two to three times as fast. Every entry computes
// exactly (up to float summation order) the dot product of the dequantized weight row with the
// dequantized activation row: tests compare each kernel with that definition and with the generic
// table. The `reference` table has no integer paths: every type goes through dequantize_row + a
// float dot (bit-for-bit the arithmetic of the correctness tests against HF).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "quant_blocks.h"

namespace aircache {
namespace cpu {

// 8-bit activations, 32 per block: value[i] = d * q[i]; s = d * sum(q) (for the min terms of the
// _1 types). d = max|x| / 127, q = round-half-away(x / d) (0 when the block is all zero).
// Exactly, in float arithmetic: d = fl(amax / 127); x / d is the IEEE quotient (not x * (1/d));
// q = 0 for the whole block when d == 0 (all zero, or amax so small that d underflows); q is
// clamped to [-127, 127] (only reachable with a subnormal d); s = fl(d * float(sum of q)).
// Non-finite inputs give unspecified quants. Every table's quantizers are bit-identical.
struct BlockQ8A {
    float d;
    float s;
    int8_t q[32];
};
static_assert(sizeof(BlockQ8A) == 40, "BlockQ8A layout");

// 8-bit activations, 256 per block (for K-quants): value[i] = d * q[i]; bsums[j] = sum of q over
// elements 16j .. 16j+15. d = max|x| / 127, q = round-half-away(x / d) (exactly as for BlockQ8A).
struct BlockQ8KA {
    float d;
    int8_t q[256];
    int16_t bsums[16];
};
static_assert(sizeof(BlockQ8KA) == 292, "BlockQ8KA layout");

enum class ActKind { F32, Q8A, Q8KA };

constexpr int kTypeSlots = 43;  // ggml type ids

// Weight rows per panel of the repacked layout (KernelTable::pack).
constexpr int kPackRows = 16;
// Bytes of one panel of kPackRows rows of n elements of type t in the repacked layout (0: t has no
// repacked layout). Q8_0, Q4_0, Q6_K, F16: kPackRows rows' bytes; Q4_K: 64 more per super-block (the
// 6-bit scales and mins stored as bytes).
size_t packed_panel_bytes(GGMLType t, int64_t n);

struct KernelTable {
    const char* name = "";
    // Activation format each weight type's dot product reads (by ggml type id). F32 also for types
    // without an integer kernel (dot[t] == nullptr): those go through dequantize + dot_f32.
    ActKind act[kTypeSlots] = {};
    ActKind act_kind(GGMLType t) const { return act[static_cast<uint32_t>(t)]; }

    void (*quantize_q8a)(const float* x, BlockQ8A* y, int64_t n) = nullptr;    // n % 32 == 0
    void (*quantize_q8ka)(const float* x, BlockQ8KA* y, int64_t n) = nullptr;  // n % 256 == 0

    // dot of one weight row (n elements of type t, raw blocks) with one activation row in the
    // format act[t] (float*, BlockQ8A*, BlockQ8KA*). nullptr: no kernel for this type.
    using DotFn = float (*)(const uint8_t* w, const void* a, int64_t n);
    DotFn dot[kTypeSlots] = {};

    // Many weight rows against many activation rows (prefill): for r < nr, c < nc,
    //   y[c * ldy + r] = dot[t](w + r * ldw, (const char*)act + c * lda, n)
    // up to float summation order (like dot itself: exact integer parts). ldw, lda in bytes, ldy in
    // floats. Set exactly where dot is. The SIMD tables unpack each weight row once for several
    // activation rows; the avx512vnni table repacks (when nr, nc >= 8) into an outer-product layout
    // (thread-local scratch) for the quantized types: pass many weight rows per call (a thread's
    // whole share of the matrix, not small blocks) so that the activation repacking is amortized.
    // The tiled kernels (every table but avx512vnni's repacked path) give dot's bits exactly.
    using GemmFn = void (*)(const uint8_t* w, size_t ldw, int64_t nr, const void* act, size_t lda, int64_t nc, int64_t n,
                            float* y, size_t ldy);
    GemmFn gemm[kTypeSlots] = {};

    // Repacked weights (Q8_0 / Q4_0 / Q4_K / Q6_K in the avx512vnni and avx512amx tables, F16 in every
    // AVX-512 table: cpu/kernels_x86_avx512.inc, f16p_*; nullptr elsewhere). The
    // entries above keep reading the file's block layout (weights, and KV rows stored in it); these
    // read a copy made once at load:
    //   pack[t](w, ldw, nr, n, out): nr rows (the file's blocks, ldw bytes apart) rewritten as
    //     ceil(nr / kPackRows) panels of packed_panel_bytes(t, n) bytes, kPackRows rows interleaved
    //     block by block (rows past nr zero);
    //   gemm_packed[t](wp, nr, act, lda, nc, n, y, ldy): y[c * ldy + r] for r < nr, c < nc, the
    //     weight rows from the panel at wp on (the activations as for gemm).
    // Each output's arithmetic is the same whatever nr, nc and the panel its row sits in, so a batch
    // gives every activation row exactly its single-row result; it matches dot up to float
    // summation order (exact integer parts; cpu/kernels_x86_packed.inc).
    using PackFn = void (*)(const uint8_t* w, size_t ldw, int64_t nr, int64_t n, uint8_t* out);
    using PackedGemmFn = void (*)(const uint8_t* wp, int64_t nr, const void* act, size_t lda, int64_t nc, int64_t n, float* y,
                                  size_t ldy);
    PackFn pack[kTypeSlots] = {};
    PackedGemmFn gemm_packed[kTypeSlots] = {};

    // float vectors (attention, norms, the vision tower)
    float (*dot_f32)(const float* a, const float* b, int64_t n) = nullptr;
    float (*dot_f16_f32)(const uint16_t* a, const float* b, int64_t n) = nullptr;  // a: IEEE halves
    void (*axpy_f32)(float a, const float* x, float* y, int64_t n) = nullptr;       // y += a * x
    void (*axpy_f16)(float a, const uint16_t* x, float* y, int64_t n) = nullptr;
    void (*f16_to_f32)(const uint16_t* x, float* y, int64_t n) = nullptr;           // exact
    void (*f32_to_f16)(const float* x, uint16_t* y, int64_t n) = nullptr;           // round to nearest even
    // exp-based rows (attention, activations). The reference table is scalar std::exp in the order
    // of the definition; the others a polynomial exp within 1 ulp (kernels_vecmath.inc), so their
    // results differ from the reference's in the last bits.
    //   softmax:     x[i] = exp(s x[i] - max_j s x[j]) / sum_j exp(...), s = scale; n > 0
    //   sigmoid_mul: x[i] = x[i] * sigmoid(beta x[i]) * (mul ? mul[i] : 1)   (SiLU, QuickGELU, SwiGLU)
    void (*softmax)(float* x, int64_t n, float scale) = nullptr;
    // The importance probes' logits: s[j] = cpu::dot_f32(q, k + j * d, d) * scale for j < L (k rows d
    // floats apart), bit for bit in every table (cpu/dot.h's fixed eight-accumulator order, separate
    // multiplies and adds): the probes' results do not depend on the CPU. nullptr: call that loop.
    void (*scores_f32)(const float* q, const float* k, int64_t L, int64_t d, float scale, float* s) = nullptr;
    void (*sigmoid_mul)(float* x, const float* mul, int64_t n, float beta) = nullptr;
    // The importance probes' softmax numerators: x[j] = pexp(x[j] - max_k x[k]) for j < n (n > 0),
    // returns their sum; pexp is the polynomial exp of kernels_vecmath.inc without fused multiply-adds
    // (within 1 ulp of exp for every float in [-87.3, 0], checked exhaustively; smaller ones clamped there, larger ones — only in rows holding a NaN — at 88.3), the sum in a fixed
    // lane order: the same bits in every table, so the probes' results do not depend on the CPU.
    float (*probe_exp)(float* x, int64_t n) = nullptr;
    // The probes' column sums: col[j] += x[j] * s for j < n, multiply and add rounded separately (the
    // same bits in every table). nullptr: the generic table's.
    void (*probe_acc)(const float* x, float s, float* col, int64_t n) = nullptr;
    // Attention values: o[i][0..D) += sum_{j < L} p[i * ldp + j] * v_j for i < nq (o rows D apart;
    // v rows vstride bytes apart, IEEE halves when f16, else floats), in j order with one fused
    // multiply-add per element: the bits of the axpy_f16/axpy_f32 loop over j and i. nullptr in the
    // tables without a blocked kernel (callers run that loop).
    void (*attn_values)(const float* p, size_t ldp, int64_t nq, const uint8_t* v, size_t vstride, int64_t L, int64_t D,
                        bool f16, float* o) = nullptr;
};

// The table in use: chosen on first use (best supported by this CPU), or by AIRCACHE_KERNELS.
const KernelTable& kernels();
// The importance probes' logits through the table in use (KernelTable::scores_f32): s[j] =
// dot_f32(q, k + j * d, d) * scale (cpu/dot.h), the same bits in every table.
void scores_f32(const float* q, const float* k, int64_t L, int64_t d, float scale, float* s);
// The probes' softmax numerators and their sum through the table in use (KernelTable::probe_exp).
float probe_exp(float* x, int64_t n);
// The probes' column sums through the table in use (KernelTable::probe_acc).
void probe_acc(const float* x, float s, float* col, int64_t n);
// Force a table by name ("auto" = best available); InputError listing the available ones.
void set_kernels(const std::string& name);
// Tables compiled in and supported by this CPU, best last ("reference", "generic", "avx2", ...).
std::vector<std::string> available_kernels();
// A table by name (for tests and benchmarks); InputError when unknown or unsupported here.
const KernelTable& kernel_table(const std::string& name);

// The per-ISA tables (defined in kernels_<isa>.cpp; the ones not compiled for this target return
// nullptr, as do those whose instructions this CPU lacks).
const KernelTable* kernels_reference();
const KernelTable* kernels_generic();
const KernelTable* kernels_avx2();
const KernelTable* kernels_avx512();
const KernelTable* kernels_avx512vnni();  // avx512 + VNNI (vpdpbusd/vpdpwssd)
const KernelTable* kernels_avx512amx();   // avx512vnni + AMX-INT8 tiles for the repacked batched matmuls
const KernelTable* kernels_neon();
const KernelTable* kernels_neon_dotprod();  // neon + SDOT (FEAT_DotProd)

}  // namespace cpu
}  // namespace aircache
