// Micro-benchmark of the CPU kernel tables (built with AIRCACHE_BUILD_TESTS; not installed, not run
// by CTest). Per table and weight type: ns per row of n elements (default 4096) and the effective
// GB/s of weight bytes,
//   cache:  a few rows that stay in L1/L2, dotted again and again (compute-bound, prefill-like);
//   stream: rows streamed once from a buffer larger than the caches (decode-like), on T threads
//           (each thread its own contiguous part of the rows, as the matmul splits them);
//   gemm:   the table's gemm on 16 weight rows x 64 activation rows (prefill-like; --gemm-cols
//           sets the activation rows, e.g. 4 or 8 for a decode batch), ns per (row, activation row) pair;
//   packed: the same with the repacked layout (KernelTable::pack / gemm_packed; 0 when none);
//   pk-strm: the streaming buffer repacked, times --gemm-cols activation rows on T threads (a decode
//           batch's matmul from memory): ns per (row, activation row) pair and GB/s of weights;
// plus the activation quantizers and the float kernels per n elements.
// --attention B:L:HEADS:KV:D instead: decode attention (cpu::attention_kv, the kernel tables'
// default) of B sequences, one query row each, over L cached positions of HEADS query / KV heads of
// D, F16 caches (--types F32/Q8_0/Q4_0 for others), on --threads threads: us per call and GB/s of
// the K and V bytes read, with one layer's caches staying in cache and with 12 layers' in turn (a
// decode step: the caches come from L3 or memory).
// --fma-peak instead: the machine's float FMA throughput (12 independent chains of fused multiply-adds
// per thread, 512- and 256-bit, on 1 and --threads threads) and what it allows an F16 product with 8
// activation rows (16 FMAs of 16 lanes per 32 weights: GB/s of weights at that FMA rate).
//
//   aircache_bench_kernels [--tables avx2,avx512] [--types Q4_K,Q8_0] [--n 4096] [--mem-mib 1024]
//                          [--threads 1] [--reps 40] [--no-stream] [--gemm-cols 64] [--fma-peak]
//                          [--attention 8:601:12:4:64]
// In-cache timings are the best of --reps short repetitions (about 2 ms each, so that some run
// without being preempted on a shared machine); streaming ones the best of min(reps, 5) passes.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#define AC_FMA_PEAK 1
#endif

#include "backend/backend.h"
#include "cpu/kernels.h"
#include "cpu/ops.h"
#include "fp16.h"
#include "quants.h"
#include "threadpool.h"

using namespace aircache;
using namespace aircache::cpu;

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

std::vector<std::string> split(const std::string& s) {
    std::vector<std::string> v;
    std::stringstream ss(s);
    std::string item;
    while (std::getline(ss, item, ','))
        if (!item.empty()) v.push_back(item);
    return v;
}

std::mt19937_64 rng(7);

void put_half(uint8_t* p, float v) {
    const uint16_t h = f32_to_f16(v);
    std::memcpy(p, &h, 2);
}

// One valid random row (finite scales).
std::vector<uint8_t> random_row(GGMLType t, int64_t n) {
    const TypeInfo& ti = type_info(t);
    std::vector<uint8_t> w(row_bytes(ti, n));
    for (uint8_t& b : w) b = static_cast<uint8_t>(rng());
    std::normal_distribution<float> nd(0.0f, 1.0f);
    for (int64_t b = 0; b < n / ti.block_size; ++b) {
        uint8_t* p = w.data() + b * ti.type_size;
        switch (t) {
            case GGMLType::F32: { const float v = nd(rng); std::memcpy(p, &v, 4); break; }
            case GGMLType::F16: put_half(p, nd(rng)); break;
            case GGMLType::BF16: { const uint16_t h = static_cast<uint16_t>(f32_to_bits(nd(rng)) >> 16); std::memcpy(p, &h, 2); break; }
            case GGMLType::Q2_K: put_half(p + 80, 0.01f); put_half(p + 82, 0.01f); break;
            case GGMLType::Q3_K: put_half(p + 108, 0.01f); break;
            case GGMLType::Q6_K: put_half(p + 208, 0.01f); break;
            default: put_half(p, 0.01f); put_half(p + 2, 0.01f); break;  // d (and dmin / m) first
        }
    }
    return w;
}

struct Act {
    std::vector<float> f;
    std::vector<BlockQ8A> q8a;
    std::vector<BlockQ8KA> q8ka;
    const void* ptr(ActKind k) const {
        return k == ActKind::Q8A ? static_cast<const void*>(q8a.data())
                                 : k == ActKind::Q8KA ? static_cast<const void*>(q8ka.data()) : static_cast<const void*>(f.data());
    }
};

std::atomic<double> g_sink{0.0};

// Best time per unit of fn() (which does `units` units of work): calibrated to ~2 ms per repetition.
template <class F> double best_per_unit(F&& fn, double units, int reps) {
    auto t0 = Clock::now();
    fn();
    const double once = std::max(seconds_since(t0), 1e-7);
    const int64_t calls = std::max<int64_t>(1, static_cast<int64_t>(2e-3 / once));
    double best = 1e30;
    for (int r = 0; r < reps; ++r) {
        t0 = Clock::now();
        for (int64_t i = 0; i < calls; ++i) fn();
        best = std::min(best, seconds_since(t0) / (static_cast<double>(calls) * units));
    }
    return best;
}

#ifdef AC_FMA_PEAK
// Each iteration: 12 independent FMAs (latency 4; two units at most: 8 in flight suffice).
#define AC_FMA_CHAINS(V, FMA, SET1)                                                                         \
    V a0 = SET1(1.0f), a1 = SET1(1.1f), a2 = SET1(1.2f), a3 = SET1(1.3f), a4 = SET1(1.4f), a5 = SET1(1.5f),  \
      a6 = SET1(1.6f), a7 = SET1(1.7f), a8 = SET1(1.8f), a9 = SET1(1.9f), a10 = SET1(2.0f), a11 = SET1(2.1f); \
    const V m = SET1(0.999999f), c = SET1(1e-6f);                                                          \
    for (int64_t i = 0; i < iters; ++i) {                                                                  \
        a0 = FMA(a0, m, c); a1 = FMA(a1, m, c); a2 = FMA(a2, m, c); a3 = FMA(a3, m, c);                    \
        a4 = FMA(a4, m, c); a5 = FMA(a5, m, c); a6 = FMA(a6, m, c); a7 = FMA(a7, m, c);                    \
        a8 = FMA(a8, m, c); a9 = FMA(a9, m, c); a10 = FMA(a10, m, c); a11 = FMA(a11, m, c);                \
    }                                                                                                      \
    const V sum = a0 + a1 + a2 + a3 + a4 + a5 + a6 + a7 + a8 + a9 + a10 + a11;                            \
    float out[sizeof(V) / sizeof(float)];                                                                  \
    std::memcpy(out, &sum, sizeof(out));                                                                   \
    return out[0];
__attribute__((target("avx512f"))) float chains512(int64_t iters) { AC_FMA_CHAINS(__m512, _mm512_fmadd_ps, _mm512_set1_ps) }
__attribute__((target("avx2,fma"))) float chains256(int64_t iters) { AC_FMA_CHAINS(__m256, _mm256_fmadd_ps, _mm256_set1_ps) }

// FMA instructions per ns on `threads` threads together (best of reps).
double fma_rate(float (*chains)(int64_t), int threads, int reps) {
    const int64_t iters = 2000000;  // 24 M FMAs per thread and repetition
    double best = 0.0;
    std::atomic<float> sink{0.0f};
    for (int r = 0; r < reps; ++r) {
        const auto t0 = Clock::now();
        std::vector<std::thread> ts;
        for (int t = 0; t < threads; ++t) ts.emplace_back([&] { sink = sink + chains(iters); });
        for (std::thread& t : ts) t.join();
        best = std::max(best, 12.0 * static_cast<double>(iters) * threads / (seconds_since(t0) * 1e9));
    }
    if (sink.load() == 12345.0f) std::printf(" ");
    return best;
}

int fma_peak(int threads, int reps) {
    std::printf("float FMA throughput (12 independent chains per thread; best of %d)\n", reps);
    std::printf("%-8s %8s %12s %12s %26s\n", "width", "threads", "FMA/ns", "GFLOP/s", "F16 x 8 rows bound GB/s");
    struct W { const char* name; bool have; float (*fn)(int64_t); int lanes; };
    const W ws[] = {{"512-bit", __builtin_cpu_supports("avx512f") != 0, chains512, 16},
                    {"256-bit", __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"), chains256, 8}};
    for (const W& w : ws) {
        if (!w.have) continue;
        for (int t : {1, threads}) {
            const double r = fma_rate(w.fn, t, reps);
            // 8 activation rows: one FMA lane per (weight, row) -> weights/ns = r * lanes / 8, 2 bytes each
            std::printf("%-8s %8d %12.2f %12.1f %26.1f\n", w.name, t, r, r * w.lanes * 2, r * w.lanes / 8.0 * 2.0);
            if (threads == 1) break;
        }
    }
    return 0;
}
#endif

int attention_bench(const std::string& shape, const std::string& type_name, int threads, int reps) {
    std::vector<std::string> f;
    {
        std::stringstream ss(shape);
        std::string item;
        while (std::getline(ss, item, ':')) f.push_back(item);
    }
    if (f.size() != 5) { std::fprintf(stderr, "--attention B:L:HEADS:KV:D\n"); return 2; }
    const int64_t B = std::stoll(f[0]), L = std::stoll(f[1]), H = std::stoll(f[2]), KV = std::stoll(f[3]), D = std::stoll(f[4]);
    const TypeInfo* ti = type_info_by_name(type_name);
    if (!ti || (ti->type != GGMLType::F16 && ti->type != GGMLType::F32 && ti->type != GGMLType::Q8_0 && ti->type != GGMLType::Q4_0)) {
        std::fprintf(stderr, "--attention: cache type F16, F32, Q8_0 or Q4_0\n");
        return 2;
    }
    KVShape kv;
    kv.capacity = L;
    kv.n_head_kv = static_cast<int>(KV);
    kv.head_dim = static_cast<int>(D);
    kv.type_k = kv.type_v = ti->type;
    const size_t rb = kv.k_row_bytes(), layer_bytes = static_cast<size_t>(KV * L) * rb;
    constexpr int kLayers = 12;
    std::vector<std::vector<uint8_t>> k(kLayers * B), v(kLayers * B);
    for (auto* side : {&k, &v})
        for (auto& buf : *side) {
            buf.resize(layer_bytes);
            for (int64_t r = 0; r < KV * L; ++r) {
                const std::vector<uint8_t> row = random_row(ti->type, D);
                std::memcpy(buf.data() + static_cast<size_t>(r) * rb, row.data(), rb);
            }
        }
    std::vector<float> q(static_cast<size_t>(B * H * D)), out(q.size());
    std::normal_distribution<float> nd(0.0f, 1.0f);
    for (float& x : q) x = nd(rng);
    std::vector<KVRow> rows(static_cast<size_t>(kLayers * B));
    for (int l = 0; l < kLayers; ++l)
        for (int64_t b = 0; b < B; ++b) {
            KVRow& r = rows[static_cast<size_t>(l * B + b)];
            r.k = k[static_cast<size_t>(l * B + b)].data();
            r.v = v[static_cast<size_t>(l * B + b)].data();
            r.lo = 0;
            r.hi = static_cast<int32_t>(L);
            r.cap = static_cast<int32_t>(L);
        }
    ThreadPool pool(threads);
    const float scale = 1.0f / std::sqrt(static_cast<float>(D));
    const double bytes = 2.0 * static_cast<double>(B) * static_cast<double>(layer_bytes);
    std::printf("decode attention: B = %lld sequences x %lld positions, %lld / %lld heads of %lld, %s cache, %d thread(s), kernels %s\n",
                static_cast<long long>(B), static_cast<long long>(L), static_cast<long long>(H), static_cast<long long>(KV),
                static_cast<long long>(D), type_name.c_str(), threads, kernels().name);
    std::printf("%-28s %12s %12s %14s\n", "caches", "us / call", "K+V GB/s", "GMAC/s (QK+PV)");
    const double macs = 2.0 * static_cast<double>(B * H * L * D);
    for (int cycled = 0; cycled < 2; ++cycled) {
        int layer = 0;
        const double t = best_per_unit([&] {
            cpu::attention_kv(q.data(), B, H, kv, rows.data() + static_cast<size_t>(layer) * B, scale, out.data(), pool);
            if (cycled) layer = (layer + 1) % kLayers;
        }, 1.0, reps);
        g_sink = g_sink + out[0];
        std::printf("%-28s %12.1f %12.2f %14.2f\n", cycled ? "12 layers in turn" : "one layer (stays in cache)", t * 1e6,
                    bytes / t * 1e-9, macs / t * 1e-9);
    }
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    std::vector<std::string> tables = available_kernels();
    std::vector<std::string> type_names = {"Q4_K", "Q6_K", "Q8_0", "F16", "Q5_K", "Q4_0", "Q5_0", "BF16",
                                           "F32",  "Q4_1", "Q5_1", "Q3_K", "Q2_K"};
    int64_t n = 4096, mem_mib = 1024;
    int threads = 1, reps = 40;
    bool stream = true, fma = false;
    std::string attention;
    int64_t gemm_cols = 64;
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        auto next = [&]() -> std::string {
            if (i + 1 >= argc) { std::fprintf(stderr, "%s needs a value\n", a.c_str()); std::exit(2); }
            return argv[++i];
        };
        if (a == "--tables") tables = split(next());
        else if (a == "--types") type_names = split(next());
        else if (a == "--n") n = std::stoll(next());
        else if (a == "--mem-mib") mem_mib = std::stoll(next());
        else if (a == "--threads") threads = std::stoi(next());
        else if (a == "--reps") reps = std::stoi(next());
        else if (a == "--no-stream") stream = false;
        else if (a == "--fma-peak") fma = true;
        else if (a == "--attention") attention = next();
        else if (a == "--gemm-cols") gemm_cols = std::max<int64_t>(1, std::stoll(next()));
        else { std::fprintf(stderr, "unknown argument %s (see the header of bench_kernels.cpp)\n", a.c_str()); return 2; }
    }
    if (n % 256 != 0 || n <= 0) { std::fprintf(stderr, "--n must be a positive multiple of 256\n"); return 2; }
    if (!attention.empty()) {
        const bool typed = std::find(argv + 1, argv + argc, std::string("--types")) != argv + argc;
        return attention_bench(attention, typed ? type_names.front() : "F16", threads, reps);
    }
    if (fma) {
#ifdef AC_FMA_PEAK
        return fma_peak(threads, std::min(reps, 10));
#else
        std::fprintf(stderr, "--fma-peak: x86-64 only\n");
        return 2;
#endif
    }

    Act act;
    act.f.resize(static_cast<size_t>(n));
    std::normal_distribution<float> nd(0.0f, 1.0f);
    for (float& v : act.f) v = nd(rng);
    act.q8a.resize(static_cast<size_t>(n / 32));
    act.q8ka.resize(static_cast<size_t>(n / 256));
    kernel_table("generic").quantize_q8a(act.f.data(), act.q8a.data(), n);
    kernel_table("generic").quantize_q8ka(act.f.data(), act.q8ka.data(), n);

    std::printf("n = %lld elements per row; stream: %lld MiB of rows, %d thread(s); best of %d\n", static_cast<long long>(n),
                static_cast<long long>(mem_mib), threads, reps);
    std::printf("%-6s %-11s %8s %12s %10s %12s %10s %13s %13s %13s %10s\n", "type", "table", "B/row", "cache ns/row", "cache GB/s",
                "stream ns/row", "stream GB/s", "gemm ns/pair", "packed ns/pr", "pk-strm ns/pr", "pk-strm GB/s");

    // gemm_cols activation rows for gemm (copies of the one above; timing does not depend on values)
    std::vector<float> act_f(static_cast<size_t>(n * gemm_cols));
    std::vector<BlockQ8A> act_q8a(static_cast<size_t>(n / 32 * gemm_cols));
    std::vector<BlockQ8KA> act_q8ka(static_cast<size_t>(n / 256 * gemm_cols));
    for (int64_t c = 0; c < gemm_cols; ++c) {
        std::copy(act.f.begin(), act.f.end(), act_f.begin() + c * n);
        std::copy(act.q8a.begin(), act.q8a.end(), act_q8a.begin() + c * (n / 32));
        std::copy(act.q8ka.begin(), act.q8ka.end(), act_q8ka.begin() + c * (n / 256));
    }

    std::vector<uint8_t> big;
    for (const std::string& tn : type_names) {
        const TypeInfo* ti = type_info_by_name(tn);
        if (!ti || !ti->supported) { std::fprintf(stderr, "unknown type %s\n", tn.c_str()); return 2; }
        const size_t rb = row_bytes(*ti, n);
        // a 2 MiB pattern of valid rows (or fewer), replicated over the streaming buffer
        const int64_t pattern_rows = std::max<int64_t>(1, static_cast<int64_t>((2u << 20) / rb));
        std::vector<uint8_t> pattern;
        for (int64_t r = 0; r < pattern_rows; ++r) {
            const std::vector<uint8_t> row = random_row(ti->type, n);
            pattern.insert(pattern.end(), row.begin(), row.end());
        }
        const int64_t stream_rows = stream ? std::max<int64_t>(pattern_rows, static_cast<int64_t>((mem_mib << 20) / rb)) : 0;
        if (stream) {
            big.resize(static_cast<size_t>(stream_rows) * rb);
            for (int64_t r = 0; r < stream_rows; r += pattern_rows) {
                const int64_t cnt = std::min(pattern_rows, stream_rows - r);
                std::memcpy(big.data() + r * rb, pattern.data(), static_cast<size_t>(cnt) * rb);
            }
        }
        for (const std::string& tab : tables) {
            const KernelTable& k = kernel_table(tab);
            const uint32_t id = static_cast<uint32_t>(ti->type);
            const KernelTable::DotFn dot = k.dot[id];
            if (!dot) {
                std::printf("%-6s %-11s %8zu %12s\n", tn.c_str(), tab.c_str(), rb, "(no kernel)");
                continue;
            }
            const void* a = act.ptr(k.act[id]);
            // cache: 16 rows (<= 128 KiB of F32 rows at n = 4096... fewer for larger rows) again and again
            const int64_t cache_rows = std::max<int64_t>(1, std::min<int64_t>(16, static_cast<int64_t>((256u << 10) / rb)));
            double sink = 0;
            const double best_cache = best_per_unit([&] {
                for (int64_t row = 0; row < cache_rows; ++row) sink += dot(pattern.data() + row * rb, a, n);
            }, static_cast<double>(cache_rows), reps);
            g_sink = g_sink + sink;
            // gemm: 16 weight rows x gemm_cols activation rows
            double best_gemm = 0, best_packed = 0;
            {
                const int64_t gr = std::min<int64_t>(16, pattern_rows);
                const ActKind ak = k.act[id];
                const void* ga = ak == ActKind::Q8A ? static_cast<const void*>(act_q8a.data())
                                                    : ak == ActKind::Q8KA ? static_cast<const void*>(act_q8ka.data()) : act_f.data();
                const size_t lda = ak == ActKind::Q8A ? n / 32 * sizeof(BlockQ8A) : ak == ActKind::Q8KA ? n / 256 * sizeof(BlockQ8KA) : n * 4;
                std::vector<float> gy(static_cast<size_t>(gr * gemm_cols));
                best_gemm = best_per_unit([&] { k.gemm[id](pattern.data(), rb, gr, ga, lda, gemm_cols, n, gy.data(), gr); },
                                          static_cast<double>(gr * gemm_cols), reps);
                g_sink = g_sink + gy[0];
                if (k.gemm_packed[id]) {  // the repacked layout (KernelTable::pack), the same rows and pairs
                    std::vector<uint8_t> wp(packed_panel_bytes(ti->type, n) * static_cast<size_t>((gr + kPackRows - 1) / kPackRows) + 64);
                    k.pack[id](pattern.data(), rb, gr, n, wp.data());
                    best_packed = best_per_unit([&] { k.gemm_packed[id](wp.data(), gr, ga, lda, gemm_cols, n, gy.data(), gr); },
                                                static_cast<double>(gr * gemm_cols), reps);
                    g_sink = g_sink + gy[0];
                }
            }
            double best_stream = 1e30;
            if (stream) {
                for (int r = 0; r < std::min(reps, 5); ++r) {
                    std::vector<std::thread> pool;
                    std::vector<double> part(static_cast<size_t>(threads));
                    const auto t0 = Clock::now();
                    for (int th = 0; th < threads; ++th) {
                        pool.emplace_back([&, th]() {
                            const int64_t r0 = stream_rows * th / threads, r1 = stream_rows * (th + 1) / threads;
                            double s = 0;
                            for (int64_t row = r0; row < r1; ++row) s += dot(big.data() + row * rb, a, n);
                            part[th] = s;
                        });
                    }
                    for (std::thread& t : pool) t.join();
                    best_stream = std::min(best_stream, seconds_since(t0) / static_cast<double>(stream_rows));
                    for (double v : part) g_sink = g_sink + v;
                }
                // packed stream: the repacked rows of the whole buffer times gemm_cols activation rows,
                // each thread its contiguous share of the panels (as the matmul splits them)
                double best_pstream = 0;
                if (k.gemm_packed[id]) {
                    const int64_t np = (stream_rows + kPackRows - 1) / kPackRows;
                    const size_t pb = packed_panel_bytes(ti->type, n);
                    std::vector<uint8_t> wp(pb * static_cast<size_t>(np) + 64);
                    k.pack[id](big.data(), rb, stream_rows, n, wp.data());
                    const ActKind ak = k.act[id];
                    const void* ga = ak == ActKind::Q8A ? static_cast<const void*>(act_q8a.data())
                                                        : ak == ActKind::Q8KA ? static_cast<const void*>(act_q8ka.data()) : act_f.data();
                    const size_t lda = ak == ActKind::Q8A ? n / 32 * sizeof(BlockQ8A) : ak == ActKind::Q8KA ? n / 256 * sizeof(BlockQ8KA) : n * 4;
                    std::vector<float> py(static_cast<size_t>(np * kPackRows * gemm_cols));
                    const size_t ldy = static_cast<size_t>(np * kPackRows);
                    best_pstream = 1e30;
                    for (int r = 0; r < std::min(reps, 5); ++r) {
                        std::vector<std::thread> pool;
                        const auto t0 = Clock::now();
                        for (int th = 0; th < threads; ++th) {
                            pool.emplace_back([&, th]() {
                                const int64_t p0 = np * th / threads, p1 = np * (th + 1) / threads;
                                if (p1 > p0)
                                    k.gemm_packed[id](wp.data() + static_cast<size_t>(p0) * pb, std::min(stream_rows, p1 * kPackRows) - p0 * kPackRows, ga,
                                                      lda, gemm_cols, n, py.data() + p0 * kPackRows, ldy);
                            });
                        }
                        for (std::thread& t : pool) t.join();
                        best_pstream = std::min(best_pstream, seconds_since(t0) / static_cast<double>(stream_rows * gemm_cols));
                    }
                    g_sink = g_sink + py[0];
                }
                std::printf("%-6s %-11s %8zu %12.1f %10.2f %12.1f %10.2f %13.1f %13.1f %13.1f %10.2f\n", tn.c_str(), tab.c_str(), rb, best_cache * 1e9,
                            static_cast<double>(rb) / best_cache * 1e-9, best_stream * 1e9,
                            static_cast<double>(rb) / best_stream * 1e-9, best_gemm * 1e9, best_packed * 1e9, best_pstream * 1e9,
                            best_pstream > 0 ? static_cast<double>(rb) / (best_pstream * static_cast<double>(gemm_cols)) * 1e-9 : 0.0);
            } else {
                std::printf("%-6s %-11s %8zu %12.1f %10.2f %12s %10s %13.1f %13.1f\n", tn.c_str(), tab.c_str(), rb, best_cache * 1e9,
                            static_cast<double>(rb) / best_cache * 1e-9, "-", "-", best_gemm * 1e9, best_packed * 1e9);
            }
            std::fflush(stdout);
        }
    }
    big.clear();
    big.shrink_to_fit();

    // activation quantizers and float kernels, per n elements (in cache)
    std::printf("\nper %lld elements, in cache (ns):\n", static_cast<long long>(n));
    std::printf("%-11s %9s %9s %9s %11s %9s %9s %10s %10s\n", "table", "q8a", "q8ka", "dot_f32", "dot_f16_f32", "axpy_f32",
                "axpy_f16", "f16_to_f32", "f32_to_f16");
    std::vector<float> x(static_cast<size_t>(n)), y(static_cast<size_t>(n));
    std::vector<uint16_t> h(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) {
        x[i] = nd(rng);
        y[i] = nd(rng);
        h[i] = f32_to_f16(nd(rng));
    }
    for (const std::string& tab : tables) {
        const KernelTable& k = kernel_table(tab);
        auto time = [&](auto&& fn) { return best_per_unit(fn, 1.0, reps) * 1e9; };
        std::vector<BlockQ8A> qa(static_cast<size_t>(n / 32));
        std::vector<BlockQ8KA> qka(static_cast<size_t>(n / 256));
        double s = 0;
        const double t_q8a = time([&] { k.quantize_q8a(x.data(), qa.data(), n); });
        const double t_q8ka = time([&] { k.quantize_q8ka(x.data(), qka.data(), n); });
        const double t_dot = time([&] { s += k.dot_f32(x.data(), y.data(), n); });
        const double t_doth = time([&] { s += k.dot_f16_f32(h.data(), y.data(), n); });
        const double t_axpy = time([&] { k.axpy_f32(1e-9f, x.data(), y.data(), n); });
        const double t_axpyh = time([&] { k.axpy_f16(1e-9f, h.data(), y.data(), n); });
        const double t_h2f = time([&] { k.f16_to_f32(h.data(), x.data(), n); });
        const double t_f2h = time([&] { k.f32_to_f16(y.data(), h.data(), n); });
        g_sink = g_sink + s;
        std::printf("%-11s %9.1f %9.1f %9.1f %11.1f %9.1f %9.1f %10.1f %10.1f\n", tab.c_str(), t_q8a, t_q8ka, t_dot, t_doth,
                    t_axpy, t_axpyh, t_h2f, t_f2h);
    }
    std::printf("(checksum %g)\n", g_sink.load());
    return 0;
}
