// AVX2 + FMA GEMM micro-kernel: NR = 16 weight rows (two ymm) x MR = 6 activation rows: 12
// accumulators, one broadcast per activation row per k. Compiled with -mavx2 -mfma.
#include "cpu/gemm.h"

#if defined(__x86_64__) && defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>

namespace aircache {
namespace cpu {

namespace {

template <int MR>
void tile(const float* x, int64_t ldx, const float* panel, int64_t kc, float* y, int64_t ldy, int nr_eff, bool acc) {
    __m256 c[MR][2];
    for (int i = 0; i < MR; ++i) c[i][0] = c[i][1] = _mm256_setzero_ps();
    for (int64_t k = 0; k < kc; ++k) {
        const __m256 b0 = _mm256_loadu_ps(panel + k * 16), b1 = _mm256_loadu_ps(panel + k * 16 + 8);
        for (int i = 0; i < MR; ++i) {
            const __m256 a = _mm256_broadcast_ss(x + i * ldx + k);
            c[i][0] = _mm256_fmadd_ps(a, b0, c[i][0]);
            c[i][1] = _mm256_fmadd_ps(a, b1, c[i][1]);
        }
    }
    for (int i = 0; i < MR; ++i) {
        float* yr = y + i * ldy;
        if (nr_eff == 16) {
            if (acc) {
                c[i][0] = _mm256_add_ps(c[i][0], _mm256_loadu_ps(yr));
                c[i][1] = _mm256_add_ps(c[i][1], _mm256_loadu_ps(yr + 8));
            }
            _mm256_storeu_ps(yr, c[i][0]);
            _mm256_storeu_ps(yr + 8, c[i][1]);
        } else {
            alignas(32) float t[16];
            _mm256_store_ps(t, c[i][0]);
            _mm256_store_ps(t + 8, c[i][1]);
            for (int j = 0; j < nr_eff; ++j) yr[j] = acc ? yr[j] + t[j] : t[j];
        }
    }
}

void tile_any(const float* x, int64_t ldx, const float* panel, int64_t kc, float* y, int64_t ldy, int mr_eff,
              int nr_eff, bool acc) {
    switch (mr_eff) {
        case 6: tile<6>(x, ldx, panel, kc, y, ldy, nr_eff, acc); break;
        case 5: tile<5>(x, ldx, panel, kc, y, ldy, nr_eff, acc); break;
        case 4: tile<4>(x, ldx, panel, kc, y, ldy, nr_eff, acc); break;
        case 3: tile<3>(x, ldx, panel, kc, y, ldy, nr_eff, acc); break;
        case 2: tile<2>(x, ldx, panel, kc, y, ldy, nr_eff, acc); break;
        default: tile<1>(x, ldx, panel, kc, y, ldy, nr_eff, acc); break;
    }
}

void col_max(const float* y, int64_t ldy, int mr_eff, int32_t i0, int64_t n, float* best, int32_t* idx) {
    gemm_col_max_loop(y, ldy, mr_eff, i0, n, best, idx);  // (vectorized for this file's instruction set)
}

const GemmKernel kAvx2 = {"avx2", 16, 6, tile_any, gemm_pack_generic<16>, col_max, nullptr};

}  // namespace

const GemmKernel* gemm_avx2() { return &kAvx2; }

}  // namespace cpu
}  // namespace aircache

#else
namespace aircache {
namespace cpu {
const GemmKernel* gemm_avx2() { return nullptr; }
}  // namespace cpu
}  // namespace aircache
#endif
