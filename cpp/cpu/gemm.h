// cpu/gemm.h — the prefill GEMM: Y[t][r] = sum_k X[t][k] * W[r][k] (+ bias[r]) for many rows t.
//
// Weights of any supported type are dequantized block by block into packed float panels
// (NR rows, k-major: panel[k][0..NR)), then a register-blocked micro-kernel computes MR x NR tiles
// of Y with fused multiply-adds (MR activation rows broadcast against NR packed weight rows). The
// panel is reused by every activation row, so the weight is read (and converted) once per call.
// One variant per instruction set (gemm_<isa>.cpp), chosen with the kernel table.
#pragma once

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
    void (*tile)(const float* x, int64_t ldx, const float* panel, int64_t kc, float* y, int64_t ldy, int mr_eff,
                 int nr_eff, bool accumulate);
};

const GemmKernel* gemm_generic();
const GemmKernel* gemm_avx2();
const GemmKernel* gemm_avx512();

// The GEMM for the kernel table in use (kernels().name).
const GemmKernel& gemm_kernel();

// Y [T][W.n_rows] = X [T][W.n_cols] * W^T (+ bias), parallel over panels of weight rows.
void gemm(const Weight& W, const float* X, int64_t T, float* Y, ThreadPool& pool, const float* bias);

}  // namespace cpu
}  // namespace aircache
