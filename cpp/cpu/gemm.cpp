#include "cpu/gemm.h"
#include "cpu/repack.h"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <vector>

#include "common.h"
#include "cpu/kernels.h"
#include "fp16.h"

namespace aircache {
namespace cpu {

template <int NR>
void gemm_pack_generic(const uint8_t* w, size_t ldw, GGMLType type, int64_t k0, int64_t kc, int nr_eff, float* panel) {
    for (int r = 0; r < NR; ++r) {
        if (r >= nr_eff) {
            for (int64_t k = 0; k < kc; ++k) panel[k * NR + r] = 0.0f;
            continue;
        }
        const uint8_t* row = w + static_cast<size_t>(r) * ldw;
        if (type == GGMLType::F32) {
            const float* src = reinterpret_cast<const float*>(row) + k0;
            for (int64_t k = 0; k < kc; ++k) panel[k * NR + r] = src[k];
        } else {
            const uint16_t* src = reinterpret_cast<const uint16_t*>(row) + k0;
            if (type == GGMLType::F16)
                for (int64_t k = 0; k < kc; ++k) panel[k * NR + r] = f16_to_f32(src[k]);
            else
                for (int64_t k = 0; k < kc; ++k) panel[k * NR + r] = bf16_to_f32(src[k]);
        }
    }
}
template void gemm_pack_generic<8>(const uint8_t*, size_t, GGMLType, int64_t, int64_t, int, float*);
template void gemm_pack_generic<16>(const uint8_t*, size_t, GGMLType, int64_t, int64_t, int, float*);

namespace {

// Portable micro-kernel (NR 8 x MR 4): plain loops the compiler vectorizes. x[i][k] = x[i * ldi + k * ldk].
void tile_generic_any(const float* x, int64_t ldi, int64_t ldk, const float* panel, int64_t kc, float* y, int64_t ldy,
                      int mr_eff, int nr_eff, bool accumulate) {
    constexpr int NR = 8, MR = 4;
    float c[MR][NR] = {};
    for (int64_t k = 0; k < kc; ++k) {
        const float* b = panel + k * NR;
        for (int i = 0; i < mr_eff; ++i) {
            const float a = x[i * ldi + k * ldk];
            for (int j = 0; j < NR; ++j) c[i][j] += a * b[j];
        }
    }
    for (int i = 0; i < mr_eff; ++i)
        for (int j = 0; j < nr_eff; ++j) y[i * ldy + j] = accumulate ? y[i * ldy + j] + c[i][j] : c[i][j];
}

void tile_generic(const float* x, int64_t ldx, const float* panel, int64_t kc, float* y, int64_t ldy, int mr_eff,
                  int nr_eff, bool accumulate) {
    tile_generic_any(x, ldx, 1, panel, kc, y, ldy, mr_eff, nr_eff, accumulate);
}

const GemmKernel kGeneric = {"generic", 8, 4, tile_generic, gemm_pack_generic<8>, gemm_col_max_loop, nullptr};

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

void ProbeKeys::set(const float* k, int64_t n, int64_t d) {
    g_ = &gemm_kernel();
    k_ = k;
    n_ = n;
    d_ = d;
    if (!g_->probe_scores) return;
    const int64_t NR = g_->nr, np = (n + NR - 1) / NR;
    panels_.resize(static_cast<size_t>(np * d * NR));
    const size_t row = static_cast<size_t>(d) * sizeof(float);
    for (int64_t b = 0; b < np; ++b)
        g_->pack(reinterpret_cast<const uint8_t*>(k + b * NR * d), row, GGMLType::F32, 0, d,
                 static_cast<int>(std::min(NR, n - b * NR)), panels_.data() + b * d * NR);
}

void ProbeKeys::trim() { trim_scratch(panels_); }

void ProbeKeys::scores(const float* q, int64_t ldq, int64_t nq, int64_t L, float scale, float* s, int64_t lds) const {
    if (L > n_) throw Error(strprintf("internal: probe scores over %lld keys of %lld", static_cast<long long>(L),
                                      static_cast<long long>(n_)));
    if (g_->probe_scores) {
        g_->probe_scores(q, ldq, nq, panels_.data(), L, d_, scale, s, lds);
        return;
    }
    for (int64_t t = 0; t < nq; ++t) scores_f32(q + t * ldq, k_, L, d_, scale, s + t * lds);
}

bool gemm_supports(GGMLType type) {
    return type == GGMLType::F32 || type == GGMLType::F16 || type == GGMLType::BF16;
}

void gemm(const Weight& W, const float* X, int64_t T, float* Y, ThreadPool& pool, const float* bias) {
    if (!gemm_supports(W.type)) throw UnsupportedError("gemm: weight '" + W.name + "' is not F32, F16 or BF16");
    const GemmKernel& g = gemm_kernel();
    const int64_t K = W.n_cols, R = W.n_rows, NR = g.nr, MR = g.mr;
    if (T <= 0 || R <= 0) return;
    // a k-block of a packed panel fills ~32 KiB (L1); its activation block (T x KC) stays in L2
    const int64_t KC = std::max<int64_t>(64, (32 * 1024 / 4) / NR);
    const int64_t n_panels = (R + NR - 1) / NR, n_tiles = (T + MR - 1) / MR;

    // Work units of G consecutive panels handed out on demand (a thread the machine runs slower, or
    // later, takes fewer), several per thread; within a unit, k-block by k-block over its panels.
    const int64_t nth = pool.size();
    const int64_t G = std::clamp<int64_t>(n_panels / (8 * nth), 1, 8);
    const int64_t n_units = (n_panels + G - 1) / G;
    const size_t esize = W.type == GGMLType::F32 ? 4 : 2;
    // F16 rows repacked at load (cpu/repack.h): the panels are read from that copy (the file's rows
    // may have been handed back to the OS)
    const PackedWeight* P = W.packed && W.packed->serves(W) && W.type == GGMLType::F16 && g.pack_p16 && NR % kPackRows == 0
                                ? W.packed
                                : nullptr;
    // Activation rows a multiple of 1 KiB apart (K = 4096, 14336, ...) put the MR rows a tile
    // broadcasts from into the same few L1 sets, which evicts them while the tile runs (~10 % of the
    // GEMM at K = 4096). Then each unit's k-block of X is first copied to rows KC + 16 floats apart.
    const bool copy_x = T > MR;
    const int64_t ldxb = KC + 16;
    std::atomic<int64_t> next{0};
    pool.run([&](int, int) {
        thread_local std::vector<float> panel, xblock;
        if (panel.size() < static_cast<size_t>(KC * NR)) panel.resize(static_cast<size_t>(KC * NR));
        if (copy_x && xblock.size() < static_cast<size_t>(T * ldxb)) xblock.resize(static_cast<size_t>(T * ldxb));
        for (int64_t u = next.fetch_add(1); u < n_units; u = next.fetch_add(1)) {
            const int64_t p0 = u * G, p1 = std::min(n_panels, p0 + G);
            for (int64_t k0 = 0; k0 < K; k0 += KC) {
                const int64_t kc = std::min(KC, K - k0);
                const bool last = k0 + kc == K;
                const float* xk = X + k0;  // row t of the k-block at xk + t * ldx
                int64_t ldx = K;
                if (copy_x) {
                    for (int64_t t = 0; t < T; ++t)
                        std::memcpy(xblock.data() + t * ldxb, X + t * K + k0, static_cast<size_t>(kc) * sizeof(float));
                    xk = xblock.data();
                    ldx = ldxb;
                }
                for (int64_t p = p0; p < p1; ++p) {
                    const int64_t r0 = p * NR;
                    const int nr_eff = static_cast<int>(std::min(NR, R - r0));
                    if (P) g.pack_p16(P->data + static_cast<size_t>(r0 / kPackRows) * P->panel_bytes, P->panel_bytes, k0, kc, nr_eff, panel.data());
                    else g.pack(W.row(r0), W.row_bytes, W.type, k0, kc, nr_eff, panel.data());
                    // the next panel's rows of this unit (or its first panel's of the next k-block) are
                    // prefetched into L2 while the tiles run, spread over them
                    const bool more = p + 1 < p1 || k0 + kc < K;
                    const int64_t pn = p + 1 < p1 ? p + 1 : p0, kn = p + 1 < p1 ? k0 : k0 + kc;
                    const int64_t rn = more ? std::min(NR, R - pn * NR) : 0;
                    const size_t kn_bytes = static_cast<size_t>(kn) * esize,
                                 seg = static_cast<size_t>(std::min(KC, K - kn)) * esize;
                    // (repacked: each of the next panel's 16-row panels holds the k-block in 16 x seg bytes)
                    const int64_t n_lines = P ? (rn + kPackRows - 1) / kPackRows * static_cast<int64_t>((seg * kPackRows + 63) / 64)
                                              : rn * static_cast<int64_t>((seg + 63) / 64);
                    const int64_t lines_per_panel = static_cast<int64_t>((seg * kPackRows + 63) / 64);
                    const int64_t per_tile = (n_lines + n_tiles - 1) / n_tiles;
                    int64_t line = 0, rr = 0, c = 0;  // line = c * rn + rr (no division per line)
                    for (int64_t i = 0; i < n_tiles; ++i) {
                        for (int64_t e = std::min(n_lines, line + per_tile); line < e; ++line) {
                            if (P) {  // c: the 16-row panel, rr: the line in it
                                __builtin_prefetch(P->data + static_cast<size_t>(pn * NR / kPackRows + c) * P->panel_bytes +
                                                       kn_bytes * kPackRows + static_cast<size_t>(rr) * 64,
                                                   0, 2);
                                if (++rr == lines_per_panel) rr = 0, ++c;
                                continue;
                            }
                            __builtin_prefetch(W.row(pn * NR + rr) + kn_bytes + static_cast<size_t>(c) * 64, 0, 2);
                            if (++rr == rn) rr = 0, ++c;
                        }
                        const int64_t t0 = i * MR;
                        const int mr_eff = static_cast<int>(std::min(MR, T - t0));
                        g.tile(xk + t0 * ldx, ldx, panel.data(), kc, Y + t0 * R + r0, R, mr_eff, nr_eff, k0 > 0);
                        if (last && bias)
                            for (int m = 0; m < mr_eff; ++m)
                                for (int r = 0; r < nr_eff; ++r) Y[(t0 + m) * R + r0 + r] += bias[r0 + r];
                    }
                }
            }
        }
    });
}

}  // namespace cpu
}  // namespace aircache
