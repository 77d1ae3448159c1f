// AVX-512 GEMM micro-kernel: NR = 32 weight rows (two zmm) x MR = 12 activation rows: 24
// accumulators, one broadcast per activation row per k. Compiled with -mavx512f.
#include "cpu/gemm.h"

#if defined(__x86_64__) && defined(__AVX512F__)
#include <immintrin.h>

namespace aircache {
namespace cpu {

namespace {

template <int MR>
void tile(const float* x, int64_t ldx, const float* panel, int64_t kc, float* y, int64_t ldy, int nr_eff, bool acc) {
    __m512 c[MR][2];
    for (int i = 0; i < MR; ++i) c[i][0] = c[i][1] = _mm512_setzero_ps();
    for (int64_t k = 0; k < kc; ++k) {
        const __m512 b0 = _mm512_loadu_ps(panel + k * 32), b1 = _mm512_loadu_ps(panel + k * 32 + 16);
        for (int i = 0; i < MR; ++i) {
            const __m512 a = _mm512_set1_ps(x[i * ldx + k]);
            c[i][0] = _mm512_fmadd_ps(a, b0, c[i][0]);
            c[i][1] = _mm512_fmadd_ps(a, b1, c[i][1]);
        }
    }
    const __mmask16 m0 = nr_eff >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << nr_eff) - 1);
    const __mmask16 m1 = nr_eff >= 32 ? static_cast<__mmask16>(0xFFFF)
                         : nr_eff <= 16 ? static_cast<__mmask16>(0)
                                        : static_cast<__mmask16>((1u << (nr_eff - 16)) - 1);
    for (int i = 0; i < MR; ++i) {
        float* yr = y + i * ldy;
        if (acc) {
            c[i][0] = _mm512_add_ps(c[i][0], _mm512_maskz_loadu_ps(m0, yr));
            c[i][1] = _mm512_add_ps(c[i][1], _mm512_maskz_loadu_ps(m1, yr + 16));
        }
        _mm512_mask_storeu_ps(yr, m0, c[i][0]);
        _mm512_mask_storeu_ps(yr + 16, m1, c[i][1]);
    }
}

void tile_any(const float* x, int64_t ldx, const float* panel, int64_t kc, float* y, int64_t ldy, int mr_eff,
              int nr_eff, bool acc) {
    switch (mr_eff) {
        case 12: tile<12>(x, ldx, panel, kc, y, ldy, nr_eff, acc); break;
        case 11: tile<11>(x, ldx, panel, kc, y, ldy, nr_eff, acc); break;
        case 10: tile<10>(x, ldx, panel, kc, y, ldy, nr_eff, acc); break;
        case 9: tile<9>(x, ldx, panel, kc, y, ldy, nr_eff, acc); break;
        case 8: tile<8>(x, ldx, panel, kc, y, ldy, nr_eff, acc); break;
        case 7: tile<7>(x, ldx, panel, kc, y, ldy, nr_eff, acc); break;
        case 6: tile<6>(x, ldx, panel, kc, y, ldy, nr_eff, acc); break;
        case 5: tile<5>(x, ldx, panel, kc, y, ldy, nr_eff, acc); break;
        case 4: tile<4>(x, ldx, panel, kc, y, ldy, nr_eff, acc); break;
        case 3: tile<3>(x, ldx, panel, kc, y, ldy, nr_eff, acc); break;
        case 2: tile<2>(x, ldx, panel, kc, y, ldy, nr_eff, acc); break;
        default: tile<1>(x, ldx, panel, kc, y, ldy, nr_eff, acc); break;
    }
}

const GemmKernel kAvx512 = {"avx512", 32, 12, tile_any};

}  // namespace

const GemmKernel* gemm_avx512() { return &kAvx512; }

}  // namespace cpu
}  // namespace aircache

#else
namespace aircache {
namespace cpu {
const GemmKernel* gemm_avx512() { return nullptr; }
}  // namespace cpu
}  // namespace aircache
#endif
