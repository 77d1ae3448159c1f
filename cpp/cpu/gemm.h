// cpu/gemm.h — the prefill GEMM: Y[t][r] = sum_k X[t][k] * W[r][k] (+ bias[r]) for many rows t.
//
// Blocking (the float-weight prefill path of cpu::matmul):
//  - the weight rows are cut into panels of NR rows, handed out to the threads on demand in units
//    of up to 8 consecutive panels (a thread the machine runs later takes fewer units);
//  - a unit walks the k dimension in blocks of KC: for each block, each of its panels is converted
//    (F16 / BF16 -> float, straight from the mapped weights; AVX-512: 16 x 16 register transposes)
//    into a packed float panel (panel[k][0..NR), ~32 KiB, L1-resident) once, then swept by every
//    tile of MR activation rows; the activation block of those KC columns (T x KC floats) stays in
//    L2 across the unit's panels; each weight element is read from memory and converted exactly
//    once per call; the next panel's rows are prefetched into L2 while the tiles run.
//  (Packing the activations k-major as well was measured: no faster on these shapes, the extra
//  pass costs more than it saves.)
//  - a register-blocked micro-kernel computes MR x NR tiles of Y with fused multiply-adds (MR
//    broadcast activations against NR packed weight rows), accumulating into Y across k-blocks.
// Each Y[t][r] is summed in the same order whatever T and t are (k-blocks in order, k in order
// within a block), so a row's result does not depend on the rows beside it.
// One micro-kernel / packer per instruction set (gemm_<isa>.cpp), chosen with the kernel table.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "tensor.h"
#include "threadpool.h"

namespace aircache {
namespace cpu {

struct GemmKernel {
    const char* name;
    int nr;  // weight rows per panel
    int mr;  // activation rows per tile
    // acc[t][r] += sum_{k < kc} x[t][k] * panel[k][r] for t < mr_eff (<= mr), r < nr; x rows are
    // `ldx` floats apart, acc rows `ldy` apart (the valid r are written; the panel is zero-padded).
    // (Also the prefill attention's kernel, cpu/ops.cpp.)
    void (*tile)(const float* x, int64_t ldx, const float* panel, int64_t kc, float* y, int64_t ldy, int mr_eff,
                 int nr_eff, bool accumulate);
    // panel[k * nr + r] = W[r][k0 + k] as float for k < kc, r < nr_eff, 0 for nr_eff <= r < nr; W rows
    // of `type` (F32, F16 or BF16) start at w and are `ldw` bytes apart.
    void (*pack)(const uint8_t* w, size_t ldw, GGMLType type, int64_t k0, int64_t kc, int nr_eff, float* panel);
    // A running maximum down the columns of a block of tile results (mosaic's nearest-key search):
    // for t < mr_eff in order and j < n, where y[t * ldy + j] > best[j] (a NaN never is), best[j] =
    // that value and idx[j] = i0 + t; ties keep the lower row. Exact (comparisons only).
    void (*col_max)(const float* y, int64_t ldy, int mr_eff, int32_t i0, int64_t n, float* best, int32_t* idx);
    // The importance probes' logits of nq queries (rows ldq apart) from keys packed by `pack` (F32 or
    // F16 rows; NR keys a panel, panels d * NR floats apart): s[t * lds + j] = cpu::dot_f32(q_t, k_j,
    // d) * scale for t < nq, j < L, bit for bit (KernelTable::scores_f32's contract: the probes'
    // results do not depend on the CPU), the keys across the lanes. nullptr where a kernel has none
    // (callers use scores_f32 on the rows).
    void (*probe_scores)(const float* q, int64_t ldq, int64_t nq, const float* panels, int64_t L, int64_t d, float scale,
                         float* s, int64_t lds);
    // pack's result from F16 weights repacked at load (cpu/repack.h; nr a multiple of 16): the nr / 16
    // panels of 16 rows (each the rows' element k side by side, k = 0, 1, ...) from p16 on, `pstride`
    // bytes apart; those past nr_eff rows are not read. nullptr: gemm reads the file's rows.
    void (*pack_p16)(const uint8_t* p16, size_t pstride, int64_t k0, int64_t kc, int nr_eff, float* panel) = nullptr;
};

// col_max's loop, compiled in each micro-kernel's file for its instruction set (vectorized there);
// static: each file keeps its own copy (an inline one would be a weak symbol the linker may take from
// an AVX-512 file for every caller).
static inline void gemm_col_max_loop(const float* y, int64_t ldy, int mr_eff, int32_t i0, int64_t n, float* best, int32_t* idx) {
    for (int t = 0; t < mr_eff; ++t) {
        const float* c = y + t * ldy;
        const int32_t i = i0 + t;
        for (int64_t j = 0; j < n; ++j) {
            const bool gt = c[j] > best[j];
            best[j] = gt ? c[j] : best[j];
            idx[j] = gt ? i : idx[j];
        }
    }
}

const GemmKernel* gemm_generic();
const GemmKernel* gemm_avx2();
const GemmKernel* gemm_avx512();

// The portable packer (any nr): what gemm_generic and gemm_avx2 use.
template <int NR>
void gemm_pack_generic(const uint8_t* w, size_t ldw, GGMLType type, int64_t k0, int64_t kc, int nr_eff, float* panel);

// The GEMM for the kernel table in use (kernels().name).
const GemmKernel& gemm_kernel();

// The importance probes' logits for many queries against one head's keys, with
// KernelTable::scores_f32's bits: the keys packed once into the GEMM kernel's panels where it has
// probe_scores (the keys across the lanes), else read as rows by scores_f32.
class ProbeKeys {
public:
    // k: n rows of d floats, kept alive by the caller while scores() is used
    void set(const float* k, int64_t n, int64_t d);
    // s[t * lds + j] = dot_f32(q_t, k_j, d) * scale for t < nq (rows ldq apart), j < L (L <= n)
    void scores(const float* q, int64_t ldq, int64_t nq, int64_t L, float scale, float* s, int64_t lds) const;
    // gives the panels back when they are large (a long prompt's; common.h, trim_scratch)
    void trim();

private:
    const GemmKernel* g_ = nullptr;
    const float* k_ = nullptr;
    int64_t n_ = 0, d_ = 0;
    std::vector<float> panels_;
};

// True for the weight types gemm() reads (F32, F16, BF16).
bool gemm_supports(GGMLType type);

// Y [T][W.n_rows] = X [T][W.n_cols] * W^T (+ bias), parallel over panels of weight rows.
// UnsupportedError for other weight types.
void gemm(const Weight& W, const float* X, int64_t T, float* Y, ThreadPool& pool, const float* bias);

}  // namespace cpu
}  // namespace aircache
