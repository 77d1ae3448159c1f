// cpu/gemm.h — the prefill GEMM: Y[t][r] = sum_k X[t][k] * W[r][k] (+ bias[r]) for many rows t.
//
// Goto-style blocking (the float-weight prefill path of cpu::matmul):
//  - the activation rows are packed once per call into tiles of MR rows, k-major
//    (xp[k][0..MR)): the micro-kernel's broadcasts read one contiguous stream, and rows a power of
//    two apart no longer alias in the L1 sets;
//  - each thread owns a contiguous share of the weight rows (panels of NR rows) and walks the
//    k dimension in blocks of KC: for each block, each of its panels is converted (F16 / BF16 ->
//    float, straight from the mapped weights) and transposed into a packed float panel
//    (panel[k][0..NR), ~32 KiB, L1-resident) once, then swept by every activation tile. The
//    activation block of those KC columns (T x KC floats) stays in L2 across all panels; each
//    weight element is read from memory and converted exactly once per call.
//  - a register-blocked micro-kernel computes MR x NR tiles of Y with fused multiply-adds (MR
//    broadcast activations against NR packed weight rows), accumulating into Y across k-blocks.
// Each Y[t][r] is summed in the same order whatever T and t are (k-blocks in order, k in order
// within a block), so a row's result does not depend on the rows beside it.
// One micro-kernel / packer per instruction set (gemm_<isa>.cpp), chosen with the kernel table.
#pragma once

#include <cstddef>
#include <cstdint>

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
    // The same on packed activations: x[t][k] = xp[k * mr + t].
    void (*tile_packed)(const float* xp, const float* panel, int64_t kc, float* y, int64_t ldy, int mr_eff, int nr_eff,
                        bool accumulate);
    // panel[k * nr + r] = W[r][k0 + k] as float for k < kc, r < nr_eff, 0 for nr_eff <= r < nr; W rows
    // of `type` (F32, F16 or BF16) start at w and are `ldw` bytes apart.
    void (*pack)(const uint8_t* w, size_t ldw, GGMLType type, int64_t k0, int64_t kc, int nr_eff, float* panel);
};

const GemmKernel* gemm_generic();
const GemmKernel* gemm_avx2();
const GemmKernel* gemm_avx512();

// The portable packer (any nr): what gemm_generic and gemm_avx2 use.
template <int NR>
void gemm_pack_generic(const uint8_t* w, size_t ldw, GGMLType type, int64_t k0, int64_t kc, int nr_eff, float* panel);

// The GEMM for the kernel table in use (kernels().name).
const GemmKernel& gemm_kernel();

// True for the weight types gemm() reads (F32, F16, BF16).
bool gemm_supports(GGMLType type);

// Y [T][W.n_rows] = X [T][W.n_cols] * W^T (+ bias), parallel over panels of weight rows.
// UnsupportedError for other weight types.
void gemm(const Weight& W, const float* X, int64_t T, float* Y, ThreadPool& pool, const float* bias);

}  // namespace cpu
}  // namespace aircache
