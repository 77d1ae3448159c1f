#include "cpu/gemm.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "cpu/kernels.h"
#include "quants.h"

namespace aircache {
namespace cpu {

namespace {

// Portable micro-kernel (NR 8 x MR 4): plain loops the compiler vectorizes.
void tile_generic(const float* x, int64_t ldx, const float* panel, int64_t kc, float* y, int64_t ldy, int mr_eff,
                  int nr_eff, bool accumulate) {
    constexpr int NR = 8, MR = 4;
    float c[MR][NR] = {};
    for (int64_t k = 0; k < kc; ++k) {
        const float* b = panel + k * NR;
        for (int i = 0; i < mr_eff; ++i) {
            const float a = x[i * ldx + k];
            for (int j = 0; j < NR; ++j) c[i][j] += a * b[j];
        }
    }
    for (int i = 0; i < mr_eff; ++i)
        for (int j = 0; j < nr_eff; ++j) y[i * ldy + j] = accumulate ? y[i * ldy + j] + c[i][j] : c[i][j];
}

const GemmKernel kGeneric = {"generic", 8, 4, tile_generic};

}  // namespace

const GemmKernel* gemm_generic() { return &kGeneric; }

const GemmKernel& gemm_kernel() {
    // chosen again only when the kernel table changes (set_kernels); no string work per call
    static const KernelTable* for_table = nullptr;
    static const GemmKernel* chosen = nullptr;
    const KernelTable& kt = kernels();
    if (&kt != for_table) {
        const bool avx512 = std::strncmp(kt.name, "avx512", 6) == 0, avx2 = std::strncmp(kt.name, "avx2", 4) == 0;
        const GemmKernel* g = avx512 ? gemm_avx512() : nullptr;
        if (!g && (avx512 || avx2)) g = gemm_avx2();
        chosen = g ? g : gemm_generic();
        for_table = &kt;
    }
    return *chosen;
}

void gemm(const Weight& W, const float* X, int64_t T, float* Y, ThreadPool& pool, const float* bias) {
    const GemmKernel& g = gemm_kernel();
    const int64_t K = W.n_cols, R = W.n_rows, NR = g.nr, MR = g.mr;
    const int64_t KC = std::max<int64_t>(64, (32 * 1024 / 4) / NR);  // a k-block of the panel fills ~32 KiB
    const int64_t n_panels = (R + NR - 1) / NR;
    const KernelTable& kt = kernels();
    pool.parallel_for(n_panels, [&](int64_t p0, int64_t p1) {
        thread_local std::vector<float> rows, panel;
        rows.resize(static_cast<size_t>(NR * K));
        panel.resize(static_cast<size_t>(KC * NR));
        for (int64_t p = p0; p < p1; ++p) {
            const int64_t r0 = p * NR, nr_eff = std::min(NR, R - r0);
            // the panel's weight rows as floats (F32 rows are read in place)
            const float* src[64];
            for (int64_t r = 0; r < nr_eff; ++r) {
                if (W.type == GGMLType::F32) {
                    src[r] = reinterpret_cast<const float*>(W.row(r0 + r));
                } else if (W.type == GGMLType::F16 && kt.f16_to_f32) {
                    kt.f16_to_f32(reinterpret_cast<const uint16_t*>(W.row(r0 + r)), rows.data() + r * K, K);
                    src[r] = rows.data() + r * K;
                } else {
                    dequantize_row(W.type, W.row(r0 + r), rows.data() + r * K, K);
                    src[r] = rows.data() + r * K;
                }
            }
            for (int64_t k0 = 0; k0 < K; k0 += KC) {
                const int64_t kc = std::min(KC, K - k0);
                // pack: panel[k][r], zero-padded past the last row
                for (int64_t k = 0; k < kc; ++k) {
                    float* dst = panel.data() + k * NR;
                    for (int64_t r = 0; r < nr_eff; ++r) dst[r] = src[r][k0 + k];
                    for (int64_t r = nr_eff; r < NR; ++r) dst[r] = 0.0f;
                }
                for (int64_t t0 = 0; t0 < T; t0 += MR) {
                    const int mr_eff = static_cast<int>(std::min(MR, T - t0));
                    g.tile(X + t0 * K + k0, K, panel.data(), kc, Y + t0 * R + r0, R, mr_eff, static_cast<int>(nr_eff),
                           k0 > 0);
                }
            }
            if (bias)
                for (int64_t t = 0; t < T; ++t)
                    for (int64_t r = 0; r < nr_eff; ++r) Y[t * R + r0 + r] += bias[r0 + r];
        }
    });
}

}  // namespace cpu
}  // namespace aircache
