// Tests of the CPU kernel tables (cpu/kernels.h) against their exact definition, for every table
// this build and CPU can run (CTest; also run under ASan + UBSan).
//
//   aircache_test_kernels [--exhaustive]     (--exhaustive: f32_to_f16 on all 2^32 inputs)
//
// 1. selection: available_kernels, kernel_table, set_kernels, errors for unknown names;
// 2. the activation quantizers, bit for bit against the header's definition (d = max|x| / 127,
//    q = round-half-away(x / d), s = d * sum(q), bsums), on random blocks and edge cases (ties,
//    zero blocks, subnormal blocks);
// 3. every weight type's dot, on random rows (unaligned, sizes 256..4096) and random activations,
//    against the definition computed in double from dequantize_row and the dequantized activations:
//    |dot - def| <= 2e-6 * sum_i |w_i * a_i| (with the min terms of the _1 / K types counted too);
//    and gemm: set where dot is, within the same tolerance of the definition and of dot for every
//    pair (tile remainders, the repacked path, strides);
// 4. the float kernels against scalar double sums, the f16 conversions bit for bit (f16_to_f32 on all
//    65536 inputs, f32_to_f16 on every exponent with random and boundary mantissas).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "common.h"
#include "cpu/dot.h"
#include "cpu/gemm.h"
#include "cpu/kernels.h"
#include "fp16.h"
#include "quants.h"

using namespace aircache;
using namespace aircache::cpu;

namespace {

int g_failures = 0;
int64_t g_checks = 0;

void check(bool ok, const std::string& what) {
    ++g_checks;
    if (!ok) {
        ++g_failures;
        if (g_failures <= 50) std::fprintf(stderr, "FAIL: %s\n", what.c_str());
    }
}

std::mt19937_64 g_rng(20240611);

float uniform(float lo, float hi) { return std::uniform_real_distribution<float>(lo, hi)(g_rng); }
float normal() { return std::normal_distribution<float>(0.0f, 1.0f)(g_rng); }
uint32_t bits32() { return static_cast<uint32_t>(g_rng()); }

const GGMLType kTypes[] = {GGMLType::F32,  GGMLType::F16,  GGMLType::BF16, GGMLType::Q4_0, GGMLType::Q4_1,
                           GGMLType::Q5_0, GGMLType::Q5_1, GGMLType::Q8_0, GGMLType::Q2_K, GGMLType::Q3_K,
                           GGMLType::Q4_K, GGMLType::Q5_K, GGMLType::Q6_K};

bool is_quantized(GGMLType t) { return t != GGMLType::F32 && t != GGMLType::F16 && t != GGMLType::BF16; }

void put_half(uint8_t* p, float v) {
    const uint16_t h = f32_to_f16(v);
    std::memcpy(p, &h, 2);
}

// ---------------------------------------------------------------------------------------------
// the definition of the activation quantizers (cpu/kernels.h)
// ---------------------------------------------------------------------------------------------

void def_quant(const float* x, int n, float& d, int8_t* q) {
    float amax = 0.0f;
    for (int i = 0; i < n; ++i) amax = std::max(amax, std::fabs(x[i]));
    d = amax / 127.0f;
    for (int i = 0; i < n; ++i) {
        if (d == 0.0f) {
            q[i] = 0;
            continue;
        }
        float r = std::round(x[i] / d);  // std::round: half away from zero
        r = std::min(127.0f, std::max(-127.0f, r));
        q[i] = static_cast<int8_t>(r);
    }
}

void def_q8a(const float* x, BlockQ8A* y, int64_t n) {
    for (int64_t b = 0; b < n / 32; ++b) {
        def_quant(x + 32 * b, 32, y[b].d, y[b].q);
        int s = 0;
        for (int i = 0; i < 32; ++i) s += y[b].q[i];
        y[b].s = y[b].d * static_cast<float>(s);
    }
}

void def_q8ka(const float* x, BlockQ8KA* y, int64_t n) {
    for (int64_t b = 0; b < n / 256; ++b) {
        def_quant(x + 256 * b, 256, y[b].d, y[b].q);
        for (int g = 0; g < 16; ++g) {
            int s = 0;
            for (int i = 0; i < 16; ++i) s += y[b].q[16 * g + i];
            y[b].bsums[g] = static_cast<int16_t>(s);
        }
    }
}

// Activation rows: normal values with a per-256 scale drawn from 1e-3..1e3, and special blocks.
std::vector<float> random_activations(int64_t n, int variant) {
    std::vector<float> x(static_cast<size_t>(n));
    for (int64_t b0 = 0; b0 < n; b0 += 32) {
        const int64_t len = std::min<int64_t>(32, n - b0);
        const int kind = variant == 0 ? 0 : static_cast<int>(g_rng() % 8);
        const float scale = std::pow(10.0f, uniform(-3.0f, 3.0f));
        for (int64_t i = b0; i < b0 + len; ++i) x[i] = normal() * scale;
        if (kind == 1) {  // all zero
            for (int64_t i = b0; i < b0 + len; ++i) x[i] = 0.0f;
        } else if (kind == 2) {  // d = 1 exactly and half-integer values: ties
            for (int64_t i = b0; i < b0 + len; ++i) x[i] = static_cast<float>(static_cast<int>(g_rng() % 254) - 127) + 0.5f;
            x[b0] = (g_rng() & 1) ? 127.0f : -127.0f;
        } else if (kind == 3) {  // subnormal block (d underflows or is subnormal)
            for (int64_t i = b0; i < b0 + len; ++i) x[i] = std::ldexp(normal(), -140 - static_cast<int>(g_rng() % 10));
        } else if (kind == 4) {  // one nonzero element
            for (int64_t i = b0; i < b0 + len; ++i) x[i] = 0.0f;
            x[b0 + static_cast<int64_t>(g_rng() % static_cast<uint64_t>(len))] = normal();
        } else if (kind == 5) {  // all equal magnitude, mixed signs
            const float v = normal();
            for (int64_t i = b0; i < b0 + len; ++i) x[i] = (g_rng() & 1) ? v : -v;
        }
    }
    return x;
}

// Random weight rows: random bytes with finite f16 scale fields.
std::vector<uint8_t> random_row(GGMLType t, int64_t n) {
    const TypeInfo& ti = type_info(t);
    std::vector<uint8_t> w(row_bytes(ti, n));
    for (uint8_t& b : w) b = static_cast<uint8_t>(g_rng());
    const int64_t nb = n / ti.block_size;
    for (int64_t b = 0; b < nb; ++b) {
        uint8_t* p = w.data() + b * ti.type_size;
        const float s = std::pow(2.0f, uniform(-12.0f, -2.0f));
        switch (t) {
            case GGMLType::F32: {
                const float v = normal();
                std::memcpy(p, &v, 4);
                break;
            }
            case GGMLType::F16: put_half(p, normal()); break;
            case GGMLType::BF16: {
                const uint32_t u = f32_to_bits(normal());
                const uint16_t h = static_cast<uint16_t>(u >> 16);
                std::memcpy(p, &h, 2);
                break;
            }
            case GGMLType::Q4_0: case GGMLType::Q5_0: case GGMLType::Q8_0: put_half(p, uniform(-1, 1) * s); break;
            case GGMLType::Q4_1: case GGMLType::Q5_1:
                put_half(p, uniform(-1, 1) * s);
                put_half(p + 2, uniform(-1, 1) * s * 8);
                break;
            case GGMLType::Q2_K: put_half(p + 80, uniform(-1, 1) * s); put_half(p + 82, uniform(-1, 1) * s); break;
            case GGMLType::Q3_K: put_half(p + 108, uniform(-1, 1) * s); break;
            case GGMLType::Q4_K: case GGMLType::Q5_K: put_half(p, uniform(-1, 1) * s); put_half(p + 2, uniform(-1, 1) * s); break;
            case GGMLType::Q6_K: put_half(p + 208, uniform(-1, 1) * s); break;
            default: break;
        }
    }
    return w;
}

// The same row with every quant zeroed: element values are then the min terms of the types that
// have them (Q4_1, Q5_1, Q2_K, Q4_K, Q5_K), for the error bound.
bool min_row(GGMLType t, std::vector<uint8_t>& w) {
    const TypeInfo& ti = type_info(t);
    int from, to;
    switch (t) {
        case GGMLType::Q4_1: from = 4, to = 20; break;
        case GGMLType::Q5_1: from = 4, to = 24; break;
        case GGMLType::Q2_K: from = 16, to = 80; break;
        case GGMLType::Q4_K: from = 16, to = 144; break;
        case GGMLType::Q5_K: from = 16, to = 176; break;
        default: return false;
    }
    for (size_t b = 0; b < w.size(); b += static_cast<size_t>(ti.type_size))
        std::memset(w.data() + b + from, 0, static_cast<size_t>(to - from));
    return true;
}

std::string fmt(const char* table, GGMLType t, int64_t n) {
    return std::string(table) + " " + type_info(t).name + " n=" + std::to_string(n);
}

// ---------------------------------------------------------------------------------------------
// 1. selection
// ---------------------------------------------------------------------------------------------

void test_selection() {
    const std::vector<std::string> names = available_kernels();
    check(names.size() >= 2 && names[0] == "reference" && names[1] == "generic", "reference and generic come first");
    for (const std::string& nm : names) {
        const KernelTable& t = kernel_table(nm);
        check(nm == t.name, "kernel_table(" + nm + ").name");
    }
    check(std::string(kernel_table("auto").name) == names.back(), "auto is the best available");
    bool threw = false;
    try {
        kernel_table("no-such-isa");
    } catch (const InputError& e) {
        threw = std::string(e.what()).find("generic") != std::string::npos;
    }
    check(threw, "unknown table name: InputError listing the available ones");
    const std::string before = kernels().name;
    set_kernels("generic");
    check(std::string(kernels().name) == "generic", "set_kernels(generic)");
    set_kernels("auto");
    check(std::string(kernels().name) == names.back(), "set_kernels(auto)");
    set_kernels(before);
    check(kernels_reference() != nullptr && kernels_generic() != nullptr, "reference and generic accessors");
    // every table that is not available returns nullptr from its accessor
    const KernelTable* (*acc[])() = {kernels_avx2, kernels_avx512, kernels_avx512vnni, kernels_avx512amx, kernels_neon, kernels_neon_dotprod};
    for (auto f : acc) {
        const KernelTable* t = f();
        if (!t) continue;
        bool listed = false;
        for (const std::string& nm : names) listed = listed || nm == t->name;
        check(listed, std::string("accessor of ") + t->name + " is listed");
    }
    std::printf("kernel tables available: ");
    for (const std::string& nm : names) std::printf("%s ", nm.c_str());
    std::printf("(in use: %s)\n", kernels().name);
}

// ---------------------------------------------------------------------------------------------
// 2. quantizers
// ---------------------------------------------------------------------------------------------

void test_quantizers(const KernelTable& k) {
    for (int64_t n : {256, 512, 1024, 4096}) {
        for (int variant = 0; variant < 4; ++variant) {
            const std::vector<float> x = random_activations(n, variant);
            {
                std::vector<BlockQ8A> got(static_cast<size_t>(n / 32)), want(got.size());
                k.quantize_q8a(x.data(), got.data(), n);
                def_q8a(x.data(), want.data(), n);
                bool same = true;
                for (size_t b = 0; b < got.size(); ++b)
                    same = same && std::memcmp(&got[b], &want[b], sizeof(BlockQ8A)) == 0;
                check(same, std::string(k.name) + " quantize_q8a bit-exact n=" + std::to_string(n));
            }
            {
                std::vector<BlockQ8KA> got(static_cast<size_t>(n / 256)), want(got.size());
                k.quantize_q8ka(x.data(), got.data(), n);
                def_q8ka(x.data(), want.data(), n);
                bool same = true;
                for (size_t b = 0; b < got.size(); ++b)
                    same = same && std::memcmp(&got[b], &want[b], sizeof(BlockQ8KA)) == 0;
                check(same, std::string(k.name) + " quantize_q8ka bit-exact n=" + std::to_string(n));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 3. dot products
// ---------------------------------------------------------------------------------------------

double g_worst_rel = 0.0;

void test_dots(const KernelTable& k) {
    for (GGMLType t : kTypes) {
        const uint32_t id = static_cast<uint32_t>(t);
        const KernelTable::DotFn dot = k.dot[id];
        const ActKind kind = k.act[id];
        if (std::string(k.name) == "reference" && is_quantized(t)) {
            check(dot == nullptr && kind == ActKind::F32, std::string("reference has no integer path for ") + type_info(t).name);
            continue;
        }
        if (!dot) {
            check(kind == ActKind::F32, fmt(k.name, t, 0) + ": no kernel, act F32");
            continue;
        }
        check(is_quantized(t) ? kind == (type_info(t).block_size == 256 ? ActKind::Q8KA : ActKind::Q8A) : kind == ActKind::F32,
              fmt(k.name, t, 0) + ": activation kind");
        std::vector<int64_t> sizes = {256, 512, 768, 1024, 2304, 4096};
        if (!is_quantized(t)) sizes.insert(sizes.end(), {1, 7, 8, 15, 16, 31, 33, 63, 100, 129, 255});
        for (int64_t n : sizes) {
            for (int rep = 0; rep < 3; ++rep) {
                const std::vector<float> x = random_activations(n, rep);
                const std::vector<uint8_t> wrow = random_row(t, n);
                // unaligned copy (offset 1..3), exactly sized so ASan sees any overread
                const size_t off = 1 + static_cast<size_t>(rep);
                std::vector<uint8_t> buf(wrow.size() + off);
                for (size_t i = 0; i < wrow.size(); ++i) buf[off + i] = wrow[i];
                std::vector<uint8_t> wexact(wrow);  // exact-size copy
                std::vector<float> wd(static_cast<size_t>(n)), ad(static_cast<size_t>(n)), md(static_cast<size_t>(n), 0.0f);
                dequantize_row(t, wrow.data(), wd.data(), n);
                std::vector<uint8_t> mins(wrow);
                if (min_row(t, mins)) dequantize_row(t, mins.data(), md.data(), n);

                std::vector<BlockQ8A> qa;
                std::vector<BlockQ8KA> qka;
                const void* act = x.data();
                if (kind == ActKind::Q8A) {
                    qa.resize(static_cast<size_t>(n / 32));
                    k.quantize_q8a(x.data(), qa.data(), n);
                    for (int64_t i = 0; i < n; ++i) ad[i] = qa[i / 32].d * static_cast<float>(qa[i / 32].q[i % 32]);
                    act = qa.data();
                } else if (kind == ActKind::Q8KA) {
                    qka.resize(static_cast<size_t>(n / 256));
                    k.quantize_q8ka(x.data(), qka.data(), n);
                    for (int64_t i = 0; i < n; ++i) ad[i] = qka[i / 256].d * static_cast<float>(qka[i / 256].q[i % 256]);
                    act = qka.data();
                } else {
                    ad = x;
                }
                double def = 0.0, mag = 0.0;
                for (int64_t i = 0; i < n; ++i) {
                    def += static_cast<double>(wd[i]) * ad[i];
                    mag += std::fabs(static_cast<double>(wd[i]) * ad[i]) + std::fabs(static_cast<double>(md[i]) * ad[i]);
                }
                const double got1 = dot(buf.data() + off, act, n);
                const double got2 = dot(wexact.data(), act, n);
                const double tol = 2e-6 * mag + 1e-35;
                const double err = std::max(std::fabs(got1 - def), std::fabs(got2 - def));
                if (mag > 1e-30) g_worst_rel = std::max(g_worst_rel, err / mag);
                char msg[200];
                std::snprintf(msg, sizeof msg, " rep=%d: got %.9g (%.9g) def %.9g, |err| %.3g > tol %.3g", rep, got1, got2, def,
                              err, tol);
                check(err <= tol && got1 == got2, fmt(k.name, t, n) + msg);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 3b. gemm: set exactly where dot is; every (row, activation row) result within the dot tolerance of
// the exact definition (and of dot: the tiled kernels give dot's bits, the repacking ones of the
// VNNI table sum in another order); shapes cover tile remainders, both gemm paths (small and
// repacked), padded strides and unaligned rows; only the outputs are written
// ---------------------------------------------------------------------------------------------

int64_t g_gemm_pairs = 0, g_gemm_bitsame = 0;

void test_gemm(const KernelTable& k) {
    const int64_t shapes[][2] = {{1, 1}, {5, 19}, {3, 8}, {13, 37}, {8, 16}, {17, 9}};
    for (GGMLType t : kTypes) {
        const uint32_t id = static_cast<uint32_t>(t);
        check((k.dot[id] == nullptr) == (k.gemm[id] == nullptr), fmt(k.name, t, 0) + ": gemm set exactly where dot is");
        if (!k.dot[id]) continue;
        const TypeInfo& ti = type_info(t);
        const ActKind kind = k.act[id];
        for (int64_t n : {256, 768, is_quantized(t) ? 512 : 100}) {
            for (size_t shape = 0; shape < sizeof(shapes) / sizeof(shapes[0]); ++shape) {
                const int64_t nr = shapes[shape][0], nc = shapes[shape][1];
                const size_t rb = row_bytes(ti, n), ldw = rb + 3 * (shape % 3);  // padded (odd) weight stride
                std::vector<uint8_t> w(ldw * static_cast<size_t>(nr) + 1);
                std::vector<std::vector<float>> wd(static_cast<size_t>(nr)), md(static_cast<size_t>(nr));
                for (int64_t r = 0; r < nr; ++r) {
                    std::vector<uint8_t> row = random_row(t, n);
                    std::memcpy(w.data() + 1 + ldw * static_cast<size_t>(r), row.data(), rb);  // unaligned
                    wd[r].resize(static_cast<size_t>(n));
                    md[r].assign(static_cast<size_t>(n), 0.0f);
                    dequantize_row(t, row.data(), wd[r].data(), n);
                    if (min_row(t, row)) dequantize_row(t, row.data(), md[r].data(), n);
                }
                // activation rows in the table's format, with a padded stride
                size_t arb = static_cast<size_t>(n) * 4;
                if (kind == ActKind::Q8A) arb = static_cast<size_t>(n / 32) * sizeof(BlockQ8A);
                if (kind == ActKind::Q8KA) arb = static_cast<size_t>(n / 256) * sizeof(BlockQ8KA);
                const size_t lda = arb + (shape % 2 ? 8 : 0);
                std::vector<uint8_t> act(lda * static_cast<size_t>(nc));
                std::vector<std::vector<double>> ad(static_cast<size_t>(nc));
                for (int64_t c = 0; c < nc; ++c) {
                    const std::vector<float> x = random_activations(n, static_cast<int>(c % 3));
                    uint8_t* dst = act.data() + lda * static_cast<size_t>(c);
                    ad[c].resize(static_cast<size_t>(n));
                    if (kind == ActKind::Q8A) {
                        std::vector<BlockQ8A> q(static_cast<size_t>(n / 32));
                        k.quantize_q8a(x.data(), q.data(), n);
                        std::memcpy(dst, q.data(), arb);
                        for (int64_t i = 0; i < n; ++i) ad[c][i] = static_cast<double>(q[i / 32].d) * q[i / 32].q[i % 32];
                    } else if (kind == ActKind::Q8KA) {
                        std::vector<BlockQ8KA> q(static_cast<size_t>(n / 256));
                        k.quantize_q8ka(x.data(), q.data(), n);
                        std::memcpy(dst, q.data(), arb);
                        for (int64_t i = 0; i < n; ++i) ad[c][i] = static_cast<double>(q[i / 256].d) * q[i / 256].q[i % 256];
                    } else {
                        std::memcpy(dst, x.data(), arb);
                        for (int64_t i = 0; i < n; ++i) ad[c][i] = x[i];
                    }
                }
                const size_t ldy = static_cast<size_t>(nr) + 2;
                std::vector<float> y(ldy * static_cast<size_t>(nc), -7.0f);
                k.gemm[id](w.data() + 1, ldw, nr, act.data(), lda, nc, n, y.data(), ldy);
                bool ok = true, untouched = true;
                std::string first_bad;
                for (int64_t c = 0; c < nc; ++c) {
                    // dot reads activations from an aligned copy (gemm's may be at any 4-byte offset)
                    std::vector<uint8_t> a1(act.begin() + static_cast<ptrdiff_t>(lda * c), act.begin() + static_cast<ptrdiff_t>(lda * c + arb));
                    for (int64_t r = 0; r < nr; ++r) {
                        double def = 0.0, mag = 0.0;
                        for (int64_t i = 0; i < n; ++i) {
                            def += static_cast<double>(wd[r][i]) * ad[c][i];
                            mag += std::fabs(static_cast<double>(wd[r][i]) * ad[c][i]) + std::fabs(static_cast<double>(md[r][i]) * ad[c][i]);
                        }
                        const float d = k.dot[id](w.data() + 1 + ldw * static_cast<size_t>(r), a1.data(), n);
                        const float g = y[static_cast<size_t>(c) * ldy + r];
                        const double tol = 2e-6 * mag + 1e-35;
                        const bool good = std::fabs(g - def) <= tol && std::fabs(static_cast<double>(g) - d) <= tol;
                        if (!good && first_bad.empty()) {
                            char msg[160];
                            std::snprintf(msg, sizeof msg, " (r=%lld c=%lld: gemm %.9g dot %.9g def %.9g)", static_cast<long long>(r),
                                          static_cast<long long>(c), g, d, def);
                            first_bad = msg;
                        }
                        ok = ok && good;
                        ++g_gemm_pairs;
                        g_gemm_bitsame += f32_to_bits(d) == f32_to_bits(g);
                    }
                    untouched = untouched && y[static_cast<size_t>(c) * ldy + nr] == -7.0f && y[static_cast<size_t>(c) * ldy + nr + 1] == -7.0f;
                }
                check(ok, fmt(k.name, t, n) + " gemm " + std::to_string(nr) + "x" + std::to_string(nc) + " = definition" + first_bad);
                check(untouched, fmt(k.name, t, n) + " gemm writes only its outputs");
            }
        }
    }
}

// 3c. F16 gemm over short rows (attention keys: head_dim 32..256 x few queries; the AVX-512 tables
// reduce 16 rows' accumulators together as a transposed tree): every (row, activation row) result
// bit for bit the table's dot, row counts around the 16-row blocks, nothing written past them.
void test_gemm_short_rows(const KernelTable& k) {
    const uint32_t id = static_cast<uint32_t>(GGMLType::F16);
    if (!k.gemm[id] || std::string(k.name).rfind("avx512", 0) != 0) return;
    for (int64_t n : {32, 64, 96, 128, 256}) {
        for (int64_t nr : {8, 15, 16, 17, 31, 33, 601}) {
            for (int64_t nc : {1, 2, 3, 4, 5, 6, 8}) {
                const size_t rb = static_cast<size_t>(n) * 2, ldw = rb + (nr % 2 ? 6 : 0);
                std::vector<uint8_t> w(ldw * static_cast<size_t>(nr) + 2);
                for (int64_t r = 0; r < nr; ++r) {
                    const std::vector<uint8_t> row = random_row(GGMLType::F16, n);
                    std::memcpy(w.data() + 2 + ldw * static_cast<size_t>(r), row.data(), rb);
                }
                const size_t lda = static_cast<size_t>(n) + (nc % 2 ? 16 : 0);
                std::vector<float> act(lda * static_cast<size_t>(nc));
                for (int64_t c = 0; c < nc; ++c) {
                    const std::vector<float> x = random_activations(n, static_cast<int>(c % 3));
                    std::copy(x.begin(), x.end(), act.begin() + static_cast<ptrdiff_t>(lda * c));
                }
                const size_t ldy = static_cast<size_t>(nr) + 3;
                std::vector<float> y(ldy * static_cast<size_t>(nc), -7.0f);
                k.gemm[id](w.data() + 2, ldw, nr, act.data(), lda * sizeof(float), nc, n, y.data(), ldy);
                bool same = true, untouched = true;
                for (int64_t c = 0; c < nc; ++c) {
                    for (int64_t r = 0; r < nr; ++r) {
                        const float d = k.dot[id](w.data() + 2 + ldw * static_cast<size_t>(r), act.data() + lda * c, n);
                        same = same && f32_to_bits(d) == f32_to_bits(y[static_cast<size_t>(c) * ldy + r]);
                    }
                    for (size_t r = static_cast<size_t>(nr); r < ldy; ++r) untouched = untouched && y[c * ldy + r] == -7.0f;
                }
                const std::string shape = " n=" + std::to_string(n) + " " + std::to_string(nr) + "x" + std::to_string(nc);
                check(same, std::string(k.name) + " F16 gemm, short rows" + shape + ": dot's bits");
                check(untouched, std::string(k.name) + " F16 gemm, short rows" + shape + ": only its outputs written");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 4. float kernels
// ---------------------------------------------------------------------------------------------

void test_float_kernels(const KernelTable& k) {
    const std::string nm = k.name;
    std::vector<int64_t> sizes;
    for (int64_t n = 0; n <= 70; ++n) sizes.push_back(n);
    sizes.insert(sizes.end(), {127, 128, 129, 255, 256, 1000, 4096, 4099});
    for (int64_t n : sizes) {
        std::vector<float> a(static_cast<size_t>(n) + 1), b(static_cast<size_t>(n) + 1), y(static_cast<size_t>(n) + 1);
        std::vector<uint16_t> h(static_cast<size_t>(n) + 1);
        for (int64_t i = 0; i <= n; ++i) {
            a[i] = normal();
            b[i] = normal();
            y[i] = normal();
            h[i] = f32_to_f16(normal());
        }
        // offset 1: unaligned starts
        const float* pa = a.data() + 1;
        const float* pb = b.data() + 1;
        const uint16_t* ph = h.data() + 1;
        const int64_t m = n > 0 ? n - 1 : 0;
        double d1 = 0, m1 = 0, d2 = 0, m2 = 0;
        for (int64_t i = 0; i < m; ++i) {
            d1 += static_cast<double>(pa[i]) * pb[i];
            m1 += std::fabs(static_cast<double>(pa[i]) * pb[i]);
            d2 += static_cast<double>(f16_to_f32(ph[i])) * pb[i];
            m2 += std::fabs(static_cast<double>(f16_to_f32(ph[i])) * pb[i]);
        }
        check(std::fabs(k.dot_f32(pa, pb, m) - d1) <= 1e-5 * m1 + 1e-30, nm + " dot_f32 n=" + std::to_string(m));
        check(std::fabs(k.dot_f16_f32(ph, pb, m) - d2) <= 1e-5 * m2 + 1e-30, nm + " dot_f16_f32 n=" + std::to_string(m));
        // axpy: y + a*x, each element within one rounding of the exact value (fused or not)
        const float alpha = normal();
        std::vector<float> y1(y), y2(y);
        k.axpy_f32(alpha, pa, y1.data() + 1, m);
        k.axpy_f16(alpha, ph, y2.data() + 1, m);
        bool ok1 = y1[0] == y[0], ok2 = y2[0] == y[0];  // untouched before the range
        for (int64_t i = 0; i < m; ++i) {
            const double e1 = static_cast<double>(y[i + 1]) + static_cast<double>(alpha) * pa[i];
            const double e2 = static_cast<double>(y[i + 1]) + static_cast<double>(alpha) * f16_to_f32(ph[i]);
            const double u1 = (std::fabs(y[i + 1]) + std::fabs(static_cast<double>(alpha) * pa[i])) * 1.2e-7;
            const double u2 = (std::fabs(y[i + 1]) + std::fabs(static_cast<double>(alpha) * f16_to_f32(ph[i]))) * 1.2e-7;
            ok1 = ok1 && std::fabs(y1[i + 1] - e1) <= u1;
            ok2 = ok2 && std::fabs(y2[i + 1] - e2) <= u2;
        }
        if (m + 1 < static_cast<int64_t>(y.size())) {
            ok1 = ok1 && y1[m + 1] == y[m + 1];
            ok2 = ok2 && y2[m + 1] == y[m + 1];
        }
        check(ok1, nm + " axpy_f32 n=" + std::to_string(m));
        check(ok2, nm + " axpy_f16 n=" + std::to_string(m));
    }

    // f16_to_f32: every input, bit-exact, from several start offsets (vector bodies and tails)
    {
        std::vector<uint16_t> all(65536 + 3);
        for (uint32_t i = 0; i < 65536; ++i) all[i + 3] = static_cast<uint16_t>(i);
        std::vector<float> out(all.size());
        bool ok = true;
        for (int off = 0; off <= 3; ++off) {
            const int64_t cnt = 65536 + 3 - off;
            k.f16_to_f32(all.data() + off, out.data(), cnt);
            for (int64_t i = 0; i < cnt; ++i)
                ok = ok && f32_to_bits(out[i]) == f32_to_bits(f16_to_f32(all[off + i]));
        }
        check(ok, nm + " f16_to_f32 exact on all 65536 inputs");
    }
    // f32_to_f16: every exponent and sign with boundary mantissas (ties, halfway +-1, extremes)
    // and random ones; NaN payloads and infinities
    {
        std::vector<float> in;
        const uint32_t mants[] = {0, 1, 2, 0xfff, 0x1000, 0x1001, 0x1fff, 0x2000, 0x2001, 0x3000, 0x5000, 0x6000,
                                  0x7fffff, 0x7ffffe, 0x7ff000, 0x7fefff, 0x400000, 0x3fffff, 0x401000, 0x3ff000};
        for (uint32_t s = 0; s < 2; ++s)
            for (uint32_t e = 0; e < 256; ++e) {
                for (uint32_t m : mants) in.push_back(bits_to_f32((s << 31) | (e << 23) | m));
                for (int r = 0; r < 64; ++r) in.push_back(bits_to_f32((s << 31) | (e << 23) | (bits32() & 0x7fffff)));
            }
        for (int r = 0; r < 200000; ++r) in.push_back(bits_to_f32(bits32()));
        std::vector<uint16_t> out(in.size());
        bool ok = true;
        for (int off = 0; off <= 3; ++off) {
            const int64_t cnt = static_cast<int64_t>(in.size()) - off;
            k.f32_to_f16(in.data() + off, out.data(), cnt);
            for (int64_t i = 0; i < cnt; ++i) ok = ok && out[i] == f32_to_f16(in[off + i]);
        }
        check(ok, nm + " f32_to_f16 round-to-nearest-even, bit-exact");
    }
}

// softmax and sigmoid_mul against the definitions in double precision
void test_exp_kernels(const KernelTable& k) {
    const std::string nm = k.name;
    // sigmoid gates over a dense sweep (exp's whole useful range through -beta*x), with and without mul
    {
        std::vector<float> x, mul;
        for (float v = -95.0f; v <= 95.0f; v += 0.00731f) {
            x.push_back(v);
            mul.push_back(normal());
        }
        for (float beta : {1.0f, 1.702f}) {
            for (bool with_mul : {false, true}) {
                std::vector<float> y(x.size() + 1, 7.0f);
                std::copy(x.begin(), x.end(), y.begin());
                k.sigmoid_mul(y.data(), with_mul ? mul.data() : nullptr, static_cast<int64_t>(x.size()), beta);
                double worst = 0;
                for (size_t i = 0; i < x.size(); ++i) {
                    const double xv = x[i], ref = xv / (1.0 + std::exp(-static_cast<double>(beta) * xv)) *
                                                  (with_mul ? static_cast<double>(mul[i]) : 1.0);
                    // relative error, in units of what float arithmetic allows: a few roundings
                    // plus the rounding of the argument beta*x, which exp turns into a relative
                    // error of |beta*x| * 2^-24; outputs below 1e-30 in magnitude (exp saturating
                    // or underflowing far out in the tail) only need to stay that small
                    const double allowed = 5e-7 + 6e-8 * std::fabs(static_cast<double>(beta) * xv);
                    worst = std::max(worst, std::fabs(y[i] - ref) / (std::fabs(ref) + 2e-24) / allowed);
                }
                check(worst <= 1.0 && y[x.size()] == 7.0f, nm + " sigmoid_mul beta=" + std::to_string(beta) +
                                                               (with_mul ? " with mul" : "") + " (worst error " +
                                                               std::to_string(worst) + " x allowed)");
            }
        }
    }
    // softmax rows: lengths across the vector bodies and tails, ordinary and very wide score ranges
    std::vector<int64_t> sizes;
    for (int64_t n = 1; n <= 70; ++n) sizes.push_back(n);
    sizes.insert(sizes.end(), {577, 1000, 4099});
    for (int64_t n : sizes)
        for (int variant = 0; variant < 3; ++variant) {
            const float scale = variant == 0 ? 1.0f : variant == 1 ? 0.125f : 30.0f;
            std::vector<float> x(static_cast<size_t>(n) + 1, 7.0f);
            for (int64_t i = 0; i < n; ++i) x[i] = variant == 2 ? uniform(-10.0f, 2.0f) : 3.0f * normal();
            std::vector<float> y(x);
            k.softmax(y.data(), n, scale);
            double mx = -1e300, sum = 0;
            for (int64_t i = 0; i < n; ++i) mx = std::max(mx, static_cast<double>(x[i] * scale));
            for (int64_t i = 0; i < n; ++i) sum += std::exp(static_cast<double>(x[i] * scale) - mx);
            bool ok = y[n] == 7.0f;
            for (int64_t i = 0; i < n; ++i) {
                const double ref = std::exp(static_cast<double>(x[i] * scale) - mx) / sum;
                // probabilities below 2^-102 may be written as 0 (kernels_vecmath.inc); there none
                // is ever subnormal (the reference table's std::exp rows keep theirs)
                const bool zeroed = y[i] == 0.0f && ref < 2.1e-31;
                ok = ok && (std::fabs(y[i] - ref) <= 1e-5 * ref + 1e-37 || zeroed);
                if (nm != "reference") ok = ok && (y[i] == 0.0f || std::fabs(y[i]) >= 1.17549435e-38f);
            }
            check(ok, nm + " softmax n=" + std::to_string(n) + " scale=" + std::to_string(scale));
        }
}

// attn_values (where a table has it) against the axpy loop it replaces: bit for bit
void test_attn_values(const KernelTable& k) {
    if (!k.attn_values) return;
    const std::string nm = k.name;
    for (bool f16 : {true, false})
        for (int64_t D : {8, 16, 32, 48, 64, 72, 80, 96, 128, 144})
            for (int64_t nq : {1, 2, 3, 5, 6, 7, 12, 13})
                for (int64_t L : {1, 7, 100}) {
                    const size_t vstride = static_cast<size_t>(D + 3) * (f16 ? 2 : 4);  // padded rows
                    std::vector<uint8_t> v(vstride * static_cast<size_t>(L));
                    for (int64_t j = 0; j < L; ++j)
                        for (int64_t d = 0; d < D; ++d) {
                            uint8_t* r = v.data() + static_cast<size_t>(j) * vstride;
                            if (f16) reinterpret_cast<uint16_t*>(r)[d] = f32_to_f16(normal());
                            else reinterpret_cast<float*>(r)[d] = normal();
                        }
                    const size_t ldp = static_cast<size_t>(L + 2);
                    std::vector<float> p(ldp * static_cast<size_t>(nq));
                    for (float& x : p) x = uniform(0.0f, 1.0f) < 0.2f ? 0.0f : uniform(0.0f, 1.0f);
                    std::vector<float> o1(static_cast<size_t>(nq * D) + 1), o2;
                    for (float& x : o1) x = normal();
                    o2 = o1;
                    k.attn_values(p.data(), ldp, nq, v.data(), vstride, L, D, f16, o1.data());
                    for (int64_t j = 0; j < L; ++j)
                        for (int64_t i = 0; i < nq; ++i) {
                            const uint8_t* r = v.data() + static_cast<size_t>(j) * vstride;
                            const float pij = p[static_cast<size_t>(i) * ldp + static_cast<size_t>(j)];
                            if (pij == 0.0f) continue;
                            if (f16) k.axpy_f16(pij, reinterpret_cast<const uint16_t*>(r), o2.data() + i * D, D);
                            else k.axpy_f32(pij, reinterpret_cast<const float*>(r), o2.data() + i * D, D);
                        }
                    bool same = true;
                    for (size_t i = 0; i < o1.size(); ++i) same = same && f32_to_bits(o1[i]) == f32_to_bits(o2[i]);
                    check(same, nm + " attn_values = axpy loop, " + (f16 ? "f16" : "f32") + " D=" + std::to_string(D) +
                                    " nq=" + std::to_string(nq) + " L=" + std::to_string(L));
                }
}

// scores_f32: the probes' logits, the bits of cpu/dot.h's loop in every table (head sizes with and
// without a tail, key counts around the 8-key blocks, rows at odd offsets, values of mixed scale)
void test_scores(const KernelTable& k) {
    if (!k.scores_f32) return;
    std::normal_distribution<float> nd(0.0f, 1.0f);
    for (int64_t d : {1, 7, 8, 15, 64, 72, 128})
        for (int64_t L : {1, 5, 8, 9, 16, 23}) {
            std::vector<float> q(static_cast<size_t>(d) + 1), kk(static_cast<size_t>(L * d) + 1), got(static_cast<size_t>(L));
            for (float& x : q) x = nd(g_rng) * 3.0f;
            for (size_t i = 0; i < kk.size(); ++i) kk[i] = nd(g_rng) * (i % 5 == 0 ? 100.0f : 0.01f);
            const float scale = 1.0f / std::sqrt(static_cast<float>(d));
            k.scores_f32(q.data() + 1, kk.data() + 1, L, d, scale, got.data());
            bool same = true;
            for (int64_t j = 0; j < L; ++j)
                same = same && f32_to_bits(got[static_cast<size_t>(j)]) == f32_to_bits(cpu::dot_f32(q.data() + 1, kk.data() + 1 + j * d, d) * scale);
            check(same, std::string(k.name) + " scores_f32 = dot.h's loop bit for bit, d=" + std::to_string(d) + " L=" + std::to_string(L));
        }
}

// probe_exp: the probes' softmax numerators, the generic table's bits in every table, each within
// 1 ulp of exp (arguments below -87.3 clamped there), the sum within 1e-6 of the exact one
void test_probe_exp(const KernelTable& k) {
    if (!k.probe_exp) return;
    const KernelTable& g = kernel_table("generic");
    for (int64_t n : {1, 5, 15, 16, 17, 33, 100, 1000, 4099})
        for (int variant = 0; variant < 3; ++variant) {
            std::vector<float> x(static_cast<size_t>(n));
            for (float& v : x) v = variant == 0 ? normal() * 3.0f : variant == 1 ? uniform(-120.0f, 30.0f) : normal() * 0.01f;
            std::vector<float> a = x, b = x;
            const float sa = k.probe_exp(a.data(), n), sb = g.probe_exp(b.data(), n);
            bool same = f32_to_bits(sa) == f32_to_bits(sb);
            for (int64_t j = 0; j < n; ++j) same = same && f32_to_bits(a[static_cast<size_t>(j)]) == f32_to_bits(b[static_cast<size_t>(j)]);
            check(same, std::string(k.name) + " probe_exp = the generic table's bits, n=" + std::to_string(n));
            const float mx = *std::max_element(x.begin(), x.end());
            double exact = 0.0, worst = 0.0;
            for (int64_t j = 0; j < n; ++j) {
                const double arg = std::max(static_cast<double>(x[static_cast<size_t>(j)] - mx), static_cast<double>(-87.3f));
                const double e = std::exp(arg);
                exact += static_cast<double>(a[static_cast<size_t>(j)]);
                const double ulp = std::ldexp(1.0, std::ilogb(e) - 23);
                worst = std::max(worst, std::fabs(static_cast<double>(a[static_cast<size_t>(j)]) - e) / ulp);
            }
            check(worst <= 1.0, std::string(k.name) + " probe_exp within 1 ulp of exp, n=" + std::to_string(n) +
                                    " (worst " + std::to_string(worst) + ")");
            check(std::fabs(static_cast<double>(sa) - exact) <= 1e-6 * exact,
                  std::string(k.name) + " probe_exp's sum, n=" + std::to_string(n));
        }
}

// probe_acc: the probes' column sums, the bits of a separate multiply and add in every table
void test_probe_acc(const KernelTable& k) {
    if (!k.probe_acc) return;
    for (int64_t n : {1, 5, 16, 17, 100, 601}) {
        std::vector<float> x(static_cast<size_t>(n)), col(static_cast<size_t>(n) + 1);
        for (float& v : x) v = uniform(0.0f, 1.0f) * (bits32() % 3 == 0 ? 1e-6f : 1.0f);
        for (float& v : col) v = uniform(0.0f, 5.0f);
        std::vector<float> want(col);
        const float s = 1.0f / uniform(1.0f, 50.0f);
        for (int64_t j = 0; j < n; ++j) {
            volatile float p = x[static_cast<size_t>(j)] * s;  // rounded on its own
            want[static_cast<size_t>(j)] = want[static_cast<size_t>(j)] + p;
        }
        k.probe_acc(x.data(), s, col.data(), n);
        bool same = true;
        for (size_t j = 0; j < col.size(); ++j) same = same && f32_to_bits(col[j]) == f32_to_bits(want[j]);
        check(same, std::string(k.name) + " probe_acc = a separate multiply and add, n=" + std::to_string(n));
    }
}

// probe_exp on rows holding NaN (garbage weights): the max skips NaN, so an argument can be far above
// 0; it is clamped (no float-to-int overflow, which UBSan reports), the other entries stay finite,
// and every table agrees with the generic one
void test_probe_exp_nan(const KernelTable& k) {
    if (!k.probe_exp) return;
    const KernelTable& g = kernel_table("generic");
    for (int64_t n : {4, 40}) {
        std::vector<float> x(static_cast<size_t>(n), 1.0f);
        x[0] = 3e38f;
        x[1] = NAN;
        x[2] = -3e38f;
        x[static_cast<size_t>(n - 1)] = 3e38f;
        std::vector<float> a = x, b = x;
        const float sa = k.probe_exp(a.data(), n), sb = g.probe_exp(b.data(), n);
        bool ok = std::isnan(sa) && std::isnan(sb);
        for (int64_t j = 0; j < n; ++j) {
            const float u = a[static_cast<size_t>(j)], v = b[static_cast<size_t>(j)];
            ok = ok && (j == 1 ? std::isnan(u) && std::isnan(v) : std::isfinite(u) && f32_to_bits(u) == f32_to_bits(v));
        }
        check(ok, std::string(k.name) + " probe_exp on a row with NaN, n=" + std::to_string(n));
    }
}

void test_f32_to_f16_exhaustive(const KernelTable& k) {
    const int64_t chunk = 1 << 20;
    std::vector<float> in(chunk);
    std::vector<uint16_t> out(chunk);
    int64_t bad = 0;
    for (uint64_t base = 0; base < (1ull << 32); base += chunk) {
        for (int64_t i = 0; i < chunk; ++i) in[i] = bits_to_f32(static_cast<uint32_t>(base + i));
        k.f32_to_f16(in.data(), out.data(), chunk);
        for (int64_t i = 0; i < chunk; ++i) bad += out[i] != f32_to_f16(in[i]);
    }
    check(bad == 0, std::string(k.name) + " f32_to_f16 exhaustive: " + std::to_string(bad) + " mismatches");
}

// The GEMM micro-kernels' extras (cpu/gemm.h), for the kernel each table selects: col_max, the
// running maximum down the columns (ties to the lower row, a NaN never wins), against a plain loop;
// probe_scores of one to five queries on panels packed from F32 and F16 key rows = cpu/dot.h's loop
// bit for bit (the probes' contract), for head sizes with and without a tail, key counts around the
// panel's halves, nothing written past L.
void test_gemm_extras() {
    std::mt19937_64 rng(77);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    for (const std::string& nm : available_kernels()) {
        set_kernels(nm);
        const GemmKernel& g = gemm_kernel();
        const std::string who = std::string(nm) + " / gemm " + g.name;
        for (int64_t n : {1, 7, 16, 33, 100})
            for (int mr = 1; mr <= g.mr; ++mr) {
                const int64_t ldy = n + 3;
                std::vector<float> y(static_cast<size_t>(mr * ldy));
                for (float& v : y) v = std::round(nd(rng) * 2.0f) / 2.0f;  // coarse: ties happen
                if (n > 3) y[2] = NAN;
                std::vector<float> best(static_cast<size_t>(n)), want_b(static_cast<size_t>(n));
                std::vector<int32_t> idx(static_cast<size_t>(n), -1), want_i(static_cast<size_t>(n), -1);
                for (int64_t j = 0; j < n; ++j) best[static_cast<size_t>(j)] = want_b[static_cast<size_t>(j)] = std::round(nd(rng));
                g.col_max(y.data(), ldy, mr, 40, n, best.data(), idx.data());
                for (int t = 0; t < mr; ++t)
                    for (int64_t j = 0; j < n; ++j) {
                        const float v = y[static_cast<size_t>(t * ldy + j)];
                        if (v > want_b[static_cast<size_t>(j)]) {
                            want_b[static_cast<size_t>(j)] = v;
                            want_i[static_cast<size_t>(j)] = 40 + t;
                        }
                    }
                bool same = true;
                for (int64_t j = 0; j < n; ++j)
                    same = same && f32_to_bits(best[static_cast<size_t>(j)]) == f32_to_bits(want_b[static_cast<size_t>(j)]) &&
                           idx[static_cast<size_t>(j)] == want_i[static_cast<size_t>(j)];
                check(same, who + " col_max, n=" + std::to_string(n) + " rows=" + std::to_string(mr));
            }
        if (!g.probe_scores) continue;
        for (int64_t d : {7, 8, 64, 72, 128})
            for (int64_t L : {1, 15, 16, 31, 32, 33, 100, 601})
                for (int64_t nq : {1, 2, 3, 4, 5})
                    for (bool f16 : {false, true}) {
                        const int64_t NR = g.nr, np = (L + NR - 1) / NR, ldq = d + 3, lds = L + 5;
                        std::vector<float> q(static_cast<size_t>(nq * ldq)), k(static_cast<size_t>(L * d));
                        std::vector<uint16_t> kh(k.size());
                        for (float& v : q) v = nd(rng) * 3.0f;
                        for (size_t i = 0; i < k.size(); ++i) {
                            k[i] = nd(rng) * (i % 5 == 0 ? 100.0f : 0.01f);
                            kh[i] = f32_to_f16(k[i]);
                            if (f16) k[i] = f16_to_f32(kh[i]);
                        }
                        std::vector<float> panels(static_cast<size_t>(np * d * NR)), got(static_cast<size_t>(nq * lds), -1.0f);
                        const size_t row = static_cast<size_t>(d) * (f16 ? 2 : 4);
                        const uint8_t* base =
                            f16 ? reinterpret_cast<const uint8_t*>(kh.data()) : reinterpret_cast<const uint8_t*>(k.data());
                        for (int64_t b = 0; b < np; ++b)
                            g.pack(base + static_cast<size_t>(b * NR) * row, row, f16 ? GGMLType::F16 : GGMLType::F32, 0, d,
                                   static_cast<int>(std::min(NR, L - b * NR)), panels.data() + b * d * NR);
                        const float scale = 1.0f / std::sqrt(static_cast<float>(d));
                        g.probe_scores(q.data(), ldq, nq, panels.data(), L, d, scale, got.data(), lds);
                        bool same = true;
                        for (int64_t t = 0; t < nq; ++t) {
                            for (int64_t j = 0; j < L; ++j)
                                same = same && f32_to_bits(got[static_cast<size_t>(t * lds + j)]) ==
                                                   f32_to_bits(cpu::dot_f32(q.data() + t * ldq, k.data() + j * d, d) * scale);
                            for (int64_t j = L; j < lds; ++j) same = same && got[static_cast<size_t>(t * lds + j)] == -1.0f;
                        }
                        check(same, who + " probe_scores = dot.h's loop bit for bit, d=" + std::to_string(d) + " L=" +
                                        std::to_string(L) + " queries=" + std::to_string(nq) + (f16 ? " (F16 rows)" : ""));
                    }
    }
    set_kernels("auto");
}

}  // namespace

int main(int argc, char** argv) {
    const bool exhaustive = argc > 1 && std::string(argv[1]) == "--exhaustive";
    try {
        test_selection();
        for (const std::string& nm : available_kernels()) {
            const KernelTable& k = kernel_table(nm);
            const int64_t before = g_failures;
            g_worst_rel = 0.0;
            test_quantizers(k);
            test_dots(k);
            test_gemm(k);
            test_float_kernels(k);
            test_exp_kernels(k);
            test_attn_values(k);
            test_scores(k);
            test_probe_exp(k);  // last: the random draws of the tests above stay as they were
            test_probe_exp_nan(k);
            test_probe_acc(k);
            test_gemm_short_rows(k);
            if (exhaustive) test_f32_to_f16_exhaustive(k);
            std::printf("%-12s %s (worst dot error %.2e of sum|w*a|; gemm = dot bit for bit in %lld of %lld pairs)\n", nm.c_str(),
                        g_failures == before ? "ok" : "FAILED", g_worst_rel, static_cast<long long>(g_gemm_bitsame),
                        static_cast<long long>(g_gemm_pairs));
            g_gemm_pairs = g_gemm_bitsame = 0;
        }
        test_gemm_extras();
    } catch (const std::exception& e) {
        std::fprintf(stderr, "FAIL: exception: %s\n", e.what());
        return 1;
    }
    std::printf("%lld checks, %d failures\n", static_cast<long long>(g_checks), g_failures);
    return g_failures ? 1 : 0;
}
