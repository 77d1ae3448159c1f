// AVX-512 GEMM micro-kernel: NR = 32 weight rows (two zmm) x MR = 12 activation rows: 24
// accumulators, one broadcast per activation row per k; and the panel packer (F32 / F16 / BF16
// rows converted 16 values at a time and transposed 16 x 16 in registers). Compiled with -mavx512f.
#include "cpu/gemm.h"

#if defined(__x86_64__) && defined(__AVX512F__)
#include <immintrin.h>

namespace aircache {
namespace cpu {

namespace {

constexpr int kNR = 32;

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

// 16 values of one weight row from element k (m: the lanes < the k-block's end) as floats
inline __m512 load_row16(const uint8_t* row, GGMLType type, int64_t k, __mmask16 m) {
    if (type == GGMLType::F32) return _mm512_maskz_loadu_ps(m, reinterpret_cast<const float*>(row) + k);
    const __m256i h = _mm256_maskz_loadu_epi16(m, reinterpret_cast<const uint16_t*>(row) + k);
    if (type == GGMLType::F16) return _mm512_cvtph_ps(h);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

// r[j] = row j (16 values) -> r[c] = column c (rows 0..15)
inline void transpose16(__m512 r[16]) {
    __m512 a[16], b[16];
    for (int j = 0; j < 8; ++j) {
        a[2 * j] = _mm512_unpacklo_ps(r[2 * j], r[2 * j + 1]);
        a[2 * j + 1] = _mm512_unpackhi_ps(r[2 * j], r[2 * j + 1]);
    }
    // b[4j + c], lane L: column 4L + c of rows 4j .. 4j + 3
    for (int j = 0; j < 4; ++j) {
        b[4 * j + 0] = _mm512_shuffle_ps(a[4 * j], a[4 * j + 2], 0x44);
        b[4 * j + 1] = _mm512_shuffle_ps(a[4 * j], a[4 * j + 2], 0xEE);
        b[4 * j + 2] = _mm512_shuffle_ps(a[4 * j + 1], a[4 * j + 3], 0x44);
        b[4 * j + 3] = _mm512_shuffle_ps(a[4 * j + 1], a[4 * j + 3], 0xEE);
    }
    for (int c = 0; c < 4; ++c) {
        const __m512 d0 = _mm512_shuffle_f32x4(b[c], b[4 + c], 0x88), d1 = _mm512_shuffle_f32x4(b[8 + c], b[12 + c], 0x88);
        const __m512 e0 = _mm512_shuffle_f32x4(b[c], b[4 + c], 0xDD), e1 = _mm512_shuffle_f32x4(b[8 + c], b[12 + c], 0xDD);
        r[c] = _mm512_shuffle_f32x4(d0, d1, 0x88);
        r[8 + c] = _mm512_shuffle_f32x4(d0, d1, 0xDD);
        r[4 + c] = _mm512_shuffle_f32x4(e0, e1, 0x88);
        r[12 + c] = _mm512_shuffle_f32x4(e0, e1, 0xDD);
    }
}

void pack(const uint8_t* w, size_t ldw, GGMLType type, int64_t k0, int64_t kc, int nr_eff, float* panel) {
    for (int64_t k = 0; k < kc; k += 16) {
        const int64_t n = kc - k < 16 ? kc - k : 16;
        const __mmask16 m = n == 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << n) - 1);
        for (int h = 0; h < kNR / 16; ++h) {
            __m512 r[16];
            for (int j = 0; j < 16; ++j) {
                const int row = 16 * h + j;
                r[j] = row < nr_eff ? load_row16(w + static_cast<size_t>(row) * ldw, type, k0 + k, m) : _mm512_setzero_ps();
            }
            transpose16(r);
            for (int c = 0; c < n; ++c) _mm512_storeu_ps(panel + (k + c) * kNR + 16 * h, r[c]);
        }
    }
}

void pack_p16(const uint8_t* p16, size_t pstride, int64_t k0, int64_t kc, int nr_eff, float* panel) {
    for (int h = 0; h < kNR / 16; ++h) {
        if (16 * h >= nr_eff) {
            for (int64_t k = 0; k < kc; ++k) _mm512_storeu_ps(panel + k * kNR + 16 * h, _mm512_setzero_ps());
            continue;
        }
        const uint16_t* src = reinterpret_cast<const uint16_t*>(p16 + static_cast<size_t>(h) * pstride) + static_cast<size_t>(k0) * 16;
        for (int64_t k = 0; k < kc; ++k)
            _mm512_storeu_ps(panel + k * kNR + 16 * h, _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + k * 16))));
    }
}

void col_max(const float* y, int64_t ldy, int mr_eff, int32_t i0, int64_t n, float* best, int32_t* idx) {
    gemm_col_max_loop(y, ldy, mr_eff, i0, n, best, idx);  // (vectorized for this file's instruction set)
}

// probe_scores (gemm.h): cpu/dot.h's eight partial sums (over d mod 8) are eight accumulators, a
// key in each lane (16 keys, half a panel, per register), so each lane adds the same products in the
// same order as the scalar loop, then the same tree, the tail and the scale: bit for bit. No fused
// multiply-adds (dot.h multiplies and adds separately). Three queries share each load of the keys
// (the panels stream from L2 once per three queries, not once per query).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC push_options
#pragma GCC optimize("fp-contract=off")
#endif


// NQ queries (rows ldq apart) against the 16 keys of one half of a panel (h: 0 or 1)
template <int NQ>
__attribute__((always_inline)) inline void probe_half(const float* q, int64_t ldq, const float* p, int h, int64_t d, __m512 sc, float* s, int64_t lds,
                __mmask16 m) {
#if defined(__clang__)
#pragma clang fp contract(off)
#endif
    const int64_t d8 = d & ~int64_t(7);
    __m512 a[NQ][8];
    for (int t = 0; t < NQ; ++t)
        for (int c = 0; c < 8; ++c) a[t][c] = _mm512_setzero_ps();
    const float* pk = p + 16 * h;
    for (int64_t i = 0; i < d8; i += 8, pk += 8 * kNR)
        for (int c = 0; c < 8; ++c) {
            __m512 k = _mm512_loadu_ps(pk + c * kNR);
            __asm__("" : "+v"(k));  // one load in a register for the NQ products (not folded into each)
            for (int t = 0; t < NQ; ++t) a[t][c] = _mm512_add_ps(a[t][c], _mm512_mul_ps(_mm512_set1_ps(q[t * ldq + i + c]), k));
        }
    for (int t = 0; t < NQ; ++t) {
        __m512 r = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(a[t][0], a[t][1]), _mm512_add_ps(a[t][2], a[t][3])),
                                 _mm512_add_ps(_mm512_add_ps(a[t][4], a[t][5]), _mm512_add_ps(a[t][6], a[t][7])));
        for (int64_t i = d8; i < d; ++i)
            r = _mm512_add_ps(r, _mm512_mul_ps(_mm512_set1_ps(q[t * ldq + i]), _mm512_loadu_ps(p + i * kNR + 16 * h)));
        _mm512_mask_storeu_ps(s + t * lds, m, _mm512_mul_ps(r, sc));
    }
}

void probe_scores(const float* q, int64_t ldq, int64_t nq, const float* panels, int64_t L, int64_t d, float scale, float* s,
                  int64_t lds) {
    const __m512 sc = _mm512_set1_ps(scale);
    for (int64_t j0 = 0; j0 < L; j0 += 16) {  // 16 keys: one half of a panel, every query (three at a time)
        const float* p = panels + (j0 / kNR) * d * kNR;
        const int h = static_cast<int>((j0 % kNR) / 16);
        const int64_t n = L - j0 < 16 ? L - j0 : 16;
        const __mmask16 m = n == 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << n) - 1);
        int64_t t = 0;
        for (; t + 3 <= nq; t += 3) probe_half<3>(q + t * ldq, ldq, p, h, d, sc, s + t * lds + j0, lds, m);
        if (nq - t == 2) probe_half<2>(q + t * ldq, ldq, p, h, d, sc, s + t * lds + j0, lds, m);
        if (nq - t == 1) probe_half<1>(q + t * ldq, ldq, p, h, d, sc, s + t * lds + j0, lds, m);
    }
}
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC pop_options
#endif

const GemmKernel kAvx512 = {"avx512", kNR, 12, tile_any, pack, col_max, probe_scores, pack_p16};

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
