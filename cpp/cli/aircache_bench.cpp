// aircache-bench — llama-bench-style speed tables: image encode, prefill, importance pass,
// compaction, decode (per sequence and aggregate), KV memory, peak RSS; over KV policies, budgets,
// batch sizes, visual token counts and thread counts, with repetitions (mean ± std).
//
//   aircache-bench --random llava-79m --type f16 --kv-policy full,aircache -B 1,8 --n-visual 576
//   aircache-bench -m model.gguf --mmproj mmproj.gguf -n 128 -o csv
#include <sys/resource.h>

#if defined(__GLIBC__)
#include <malloc.h>
#endif
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define AIRCACHE_BENCH_AVX2 1
#endif

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <memory>
#include <map>
#include <random>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

#include "common.h"
#include "cli/args.h"
#include "runtime/compression.h"
#include "runtime/engine.h"
#include "runtime/prompt.h"
#include "random_model.h"
#include "runtime_info.h"
#include "threadpool.h"

using namespace aircache;

namespace {

const char* kUsage =
    "usage: aircache-bench (-m MODEL.gguf [--mmproj MMPROJ.gguf] | --random SHAPE[,SHAPE...]) [options]\n"
    "\n"
    "Speed tables for aircache.cpp, llama-bench style: one row per configuration, mean ± std over\n"
    "repetitions. Lists (a,b,c) sweep every combination.\n"
    "\n"
    "model:\n"
    "  -m, --model FILE        text-model GGUF (with --mmproj, images are encoded by its vision tower)\n"
    "  --mmproj FILE           vision tower + projector GGUF\n"
    "  --random SHAPES         random-weight models built in memory: tiny, llava-79m, mistral-7b-8l,\n"
    "                          llava-next-mistral-7b-8l (LLaVA-NeXT: Mistral-7B and CLIP ViT-L/336 widths),\n"
    "                          qwen2.5-vl-3b-8l, qwen3-vl-2b-8l, gemma3-4b-8l, smolvlm2-2b-8l,\n"
    "                          internvl3-2b-8l (real widths, 8 text + 8 ViT layers; gemma3's budget\n"
    "                          applies to its global layer)\n"
    "  --type TYPES            weight types of --random models (default f16): f32 f16 bf16 q8_0 q4_0 q4_1\n"
    "                          q5_0 q5_1 q2_k q3_k q4_k q5_k q6_k\n"
    "workload:\n"
    "  --n-visual LIST         visual tokens per sequence (fixed-size images: a multiple of the tokens of\n"
    "                          one image; dynamic resolution (Qwen-VL): one image of that many tokens,\n"
    "                          up to 16384; default: one image (Qwen-VL, SmolVLM, InternVL: a 1024x768\n"
    "                          photo; SmolVLM's and InternVL's counts are multiples of that photo's); 0 = text only)\n"
    "                          LLaVA-NeXT: images of its largest square grid (672 px: 2,880 visual tokens +\n"
    "                          48 newline rows each), counts multiples of 2,880\n"
    "  --n-text N              text tokens after the images (default 20)\n"
    "  -n, --n-gen N           tokens generated per sequence (default 128)\n"
    "  -B, --batch LIST        sequences decoded together (default 1)\n"
    "  --kv-policy LIST        KV policies (default full,aircache)\n"
    "  --kv-budget LIST        budgets for the compressing policies (default 0.1)\n"
    "  --kv-scope visual|all   (default visual)\n"
    "  --kv-selection layer|kv_head   (default layer)\n"
    "  --kv-opt NAME=VALUE     a policy option (repeatable; see aircache-cli --list-policies)\n"
    "  --kv-type TYPE          KV cache storage: f16 (default), f32, q8_0, q4_0; -ctk / -ctv: keys / values\n"
    "  -b, --batch-size N      prompt positions per forward pass (default 512)\n"
    "  --device NAME           auto (default), cpu, cuda, cuda:N\n"
    "  -ngl, --n-gpu-layers N  text layers on the GPU (default -1: all)\n"
    "run:\n"
    "  -t, --threads LIST      CPU threads (default: physical cores)\n"
    "  -r, --repetitions N     repetitions per configuration (default 3)\n"
    "  -o, --output md|csv|json   (default md)\n"
    "  --prefill-mode each|same|copy   how a batch's B sequences are prefilled (default each): each = its\n"
    "                          own random prompt and images, prefilled separately; same = one prompt for\n"
    "                          all B, prefilled B times; copy = one prompt prefilled (and compressed) once,\n"
    "                          its cache copied into the other B - 1 (their decode is the same as `same`;\n"
    "                          encode/prefill/importance/compact are that one sequence's)\n"
    "  --membw                 measure the machine's read bandwidth first (a streaming read with the run's\n"
    "                          thread count, best of several passes) and report each decode row's effective\n"
    "                          bandwidth against it\n"
    "  --membw-mib N           the probe's buffer (default 2048 MiB: well beyond the L3)\n"
    "  --membw-cache-mib N     a second, cache-sized probe (default 128 MiB; 0: none)\n"
    "  --interleave            per batch size, prefill each configuration once (caches of its own), then\n"
    "                          -r decode rounds alternating between the configurations, each from the\n"
    "                          prefilled state, a --membw probe after each round (the row's probe figure:\n"
    "                          their mean): decode ratios from the same minutes of a noisy machine; peak RSS\n"
    "                          is then the group's (every configuration's caches and a snapshot of them at\n"
    "                          once, read before the first probe)\n"
    "  -h, --help, --version\n"
    "\n"
    "Columns: encode = image encoding (per sequence), prefill tok/s = prompt positions / prefill time\n"
    "(without the compression work), importance/compact = the importance pass and the compaction,\n"
    "decode tok/s per sequence and for the whole batch, speedup = total decode tok/s over the `full`\n"
    "row of the same configuration, bound = the memory-traffic bound of that speedup,\n"
    "(W + B*KV_full) / (W + B*KV_kept) with W the weight bytes one decode step reads and KV the prompt's\n"
    "cache bytes per sequence, KV MiB in use after compression and before (per sequence), KV MiB allocated\n"
    "per sequence at the end, peak RSS of the configuration (its repetitions; the batch caches are given\n"
    "back and the peak reset at its start where Linux allows: JSON rss_start_mib is the RSS then),\n"
    "step MiB = W + B*KV_kept (the bytes one decode step reads, without the generated rows), eff GB/s =\n"
    "step bytes x decode steps/s, and with --membw its % of the probe's GB/s.\n";

using cli::UsageError;

struct Options {
    std::string model, mmproj;
    std::vector<std::string> shapes, types = {"f16"};
    std::vector<int64_t> n_visual;  // empty: one image
    int64_t n_text = 20, n_gen = 128;
    std::vector<int> batch = {1}, threads;
    std::vector<std::string> policies = {"full", "aircache"};
    std::vector<double> budgets = {0.1};
    compress::CompressParams kv;  // scope, selection, options (--kv-scope, --kv-selection, --kv-opt)
    EngineParams engine;          // -m, --mmproj, --kv-type, -ctk, -ctv, --device, -ngl, ... (cli/args.h)
    int reps = 3;
    std::string output = "md";
    std::string prefill_mode = "each";
    bool membw = false, interleave = false;
    int64_t membw_mib = 2048, membw_cache_mib = 128;
};

struct Stat {
    std::vector<double> v;
    void add(double x) { v.push_back(x); }
    double mean() const {
        double s = 0;
        for (double x : v) s += x;
        return v.empty() ? 0 : s / static_cast<double>(v.size());
    }
    double std() const {
        if (v.size() < 2) return 0;
        const double m = mean();
        double s = 0;
        for (double x : v) s += (x - m) * (x - m);
        return std::sqrt(s / static_cast<double>(v.size() - 1));
    }
};

struct Row {
    std::string model, type, policy, device;
    std::string kv_type;            // the cache's storage ("f16"; "q8_0/q4_0" when K and V differ)
    double weight_bytes = 0;        // read per decode step
    double speedup = 0, bound = 0;  // vs the matching `full` row (0: none)
    int threads = 0, batch = 0;
    int64_t n_visual = 0, n_prompt = 0, n_gen = 0;
    double budget = 1.0;
    Stat encode_ms, prefill_tps, importance_ms, compact_ms, decode_tps_seq, decode_tps_all, kv_after, kv_before;
    Stat kv_alloc;  // MiB allocated per sequence at the end (the kept rows + the generated ones: memory given back)
    double rss_mib = 0, rss_start_mib = 0;
    double membw_gbps = 0, membw_cache_gbps = 0;  // the probe (--membw; 0: not run)
    std::string prefill_mode;
    uint64_t digest = 1469598103934665603ull;  // FNV-1a of every generated token (all sequences, steps, repetitions)
};

// A /proc/self/status field in MiB (-1: unreadable).
double proc_status_mib(const char* key) {
    std::ifstream f("/proc/self/status");
    std::string line;
    const size_t n = std::strlen(key);
    while (std::getline(f, line))
        if (line.compare(0, n, key) == 0 && line.size() > n && line[n] == ':')
            return std::strtod(line.c_str() + n + 1, nullptr) / 1024.0;
    return -1;
}

// Resets the peak RSS to the current RSS (Linux: clear_refs 5); false where it cannot.
bool reset_peak_rss() {
    std::ofstream f("/proc/self/clear_refs");
    if (!f) return false;
    f << "5";
    f.flush();
    return static_cast<bool>(f);
}

double peak_rss_mib() {
    const double hwm = proc_status_mib("VmHWM");
    if (hwm >= 0) return hwm;
    struct rusage u;
    getrusage(RUSAGE_SELF, &u);
    return static_cast<double>(u.ru_maxrss) / 1024.0;
}

// The memory of the batch caches (and freed heap pages) given back before a configuration, so its
// peak RSS is its own, not the previous configuration's.
void release_caches(Engine& e, int n) {
    for (int i = 0; i < n; ++i) {
        KVCache& kv = e.batch_cache(static_cast<size_t>(i));
        kv.clear();
        kv.shrink_to_fit(0);
    }
#if defined(__GLIBC__)
    malloc_trim(0);
#endif
}

// ---- the read-bandwidth probe (--membw) ----
uint64_t sum_words_scalar(const uint64_t* p, size_t n) {
    uint64_t a = 0, b = 0, c = 0, d = 0;
    size_t i = 0;
    for (; i + 4 <= n; i += 4) {
        a += p[i];
        b += p[i + 1];
        c += p[i + 2];
        d += p[i + 3];
    }
    for (; i < n; ++i) a += p[i];
    return a + b + c + d;
}

#if defined(AIRCACHE_BENCH_AVX2)
__attribute__((target("avx2"))) uint64_t sum_words_avx2(const uint64_t* p, size_t n) {
    __m256i a = _mm256_setzero_si256(), b = a, c = a, d = a;
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        a = _mm256_add_epi64(a, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + i)));
        b = _mm256_add_epi64(b, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + i + 4)));
        c = _mm256_add_epi64(c, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + i + 8)));
        d = _mm256_add_epi64(d, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + i + 12)));
    }
    a = _mm256_add_epi64(_mm256_add_epi64(a, b), _mm256_add_epi64(c, d));
    alignas(32) uint64_t lanes[4];
    _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), a);
    return lanes[0] + lanes[1] + lanes[2] + lanes[3] + sum_words_scalar(p + i, n - i);
}
#endif

uint64_t sum_words(const uint64_t* p, size_t n) {
#if defined(AIRCACHE_BENCH_AVX2)
    static const bool avx2 = __builtin_cpu_supports("avx2");
    if (avx2) return sum_words_avx2(p, n);
#endif
    return sum_words_scalar(p, n);
}

volatile uint64_t g_membw_sink = 0;

// Read bandwidth (GB/s, 1e9 bytes) of `pool`'s threads streaming through a buffer of `mib` MiB, each
// thread its contiguous share, the best of `passes` passes (written once first, in parallel).
double read_bandwidth_gbps(ThreadPool& pool, int64_t mib, int passes) {
    const size_t n = static_cast<size_t>(mib) * 1048576 / sizeof(uint64_t);
    std::unique_ptr<uint64_t[]> buf(new uint64_t[n]);
    const int nth = pool.size();
    auto share = [&](int ith) {
        const size_t per = (n / static_cast<size_t>(nth) + 7) / 8 * 8;
        const size_t b = std::min(n, per * static_cast<size_t>(ith)), e = std::min(n, b + per);
        return std::make_pair(b, e);
    };
    pool.run([&](int ith, int) {
        const auto [b, e] = share(ith);
        for (size_t i = b; i < e; ++i) buf[i] = i * 0x9E3779B97F4A7C15ull;
    });
    std::vector<uint64_t> sink(static_cast<size_t>(nth) * 8, 0);  // (a cache line apart)
    double best = 0;
    for (int p = 0; p < passes; ++p) {
        const auto t0 = std::chrono::steady_clock::now();
        pool.run([&](int ith, int) {
            const auto [b, e] = share(ith);
            sink[static_cast<size_t>(ith) * 8] += sum_words(buf.get() + b, e - b);
        });
        const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        if (s > 0) best = std::max(best, static_cast<double>(n * sizeof(uint64_t)) / s / 1e9);
    }
    uint64_t x = 0;
    for (uint64_t v : sink) x ^= v;
    g_membw_sink = x;  // (the sums are used: the reads cannot be dropped)
    return best;
}

using Clock = std::chrono::steady_clock;
double ms_since(Clock::time_point t) { return std::chrono::duration<double, std::milli>(Clock::now() - t).count(); }

// One repetition of one configuration on an engine.
// The images of a configuration of n_visual tokens: fixed-size projectors n_visual / per_image
// images of their size; dynamic resolution one image whose smart_resize grid is n_visual tokens
// (the most square w x h grid, w >= h: a 4:3-ish photo).
std::vector<std::pair<int, int>> bench_images(const Engine& e, int64_t n_visual, int64_t per_image) {
    std::vector<std::pair<int, int>> sizes;
    if (n_visual <= 0) return sizes;
    const VisionConfig& v = e.vision().config();
    if (!e.vision().dynamic_resolution()) {
        // tiled images (SmolVLM): the count depends on the size: 1024x768 photos
        const bool sized = e.vision().size_dependent();  // (LLaVA-NeXT: its largest square grid)
        const auto [pw, ph] = e.vision().typical_image_size();
        for (int64_t i = 0; i < n_visual / per_image; ++i)
            sizes.emplace_back(sized ? pw : static_cast<int>(v.image_size), sized ? ph : static_cast<int>(v.image_size));
        return sizes;
    }
    int64_t h = static_cast<int64_t>(std::sqrt(static_cast<double>(n_visual)));
    while (n_visual % h) --h;
    const int64_t f = v.patch_size * 2;
    sizes.emplace_back(static_cast<int>(n_visual / h * f), static_cast<int>(h * f));
    return sizes;
}

// Prefills a batch of row.batch sequences into `caches` (--prefill-mode), records the prefill
// figures in `row` and returns the first decode tokens.
std::vector<int32_t> prefill_batch(Engine& e, const Options& o, Row& row, const std::vector<std::pair<int, int>>& images,
                                   std::mt19937& rng, const std::vector<KVCache*>& batch) {
    const int B = row.batch;
    const int64_t V = e.config().n_vocab;
    std::uniform_int_distribution<int32_t> tok(3, static_cast<int32_t>(std::min<int64_t>(V - 1, 999)));
    compress::CompressParams cp = o.kv;
    cp.policy = row.policy;
    cp.budget = row.budget;
    double encode = 0, prefill = 0, imp = 0, cmp = 0, after = 0, before = 0;
    int64_t positions = 0;
    std::array<double, 5> seq0{};  // the last prefilled sequence's prefill, importance, compact ms, KV bytes after, before
    std::vector<KVCache*> caches;
    std::vector<int32_t> next(static_cast<size_t>(B));
    std::vector<float> logits(static_cast<size_t>(B * V));
    if (static_cast<int>(batch.size()) != B) throw Error("internal: a batch of the wrong size");
    // one sequence's prompt: BOS, 4 text tokens, the images, n_text text tokens (image encoding timed)
    auto make_sequence = [&]() {
        std::vector<int32_t> ids = {1};
        for (int i = 0; i < 4; ++i) ids.push_back(tok(rng));
        std::vector<MediaItem> media;
        for (const auto& [iw, ih] : images) {
            Image img;
            img.width = iw;
            img.height = ih;
            img.rgb.resize(static_cast<size_t>(iw) * static_cast<size_t>(ih) * 3);
            for (auto& px : img.rgb) px = static_cast<uint8_t>(rng() & 0xFF);
            const auto t0 = Clock::now();
            media.push_back(e.encode_image(img));
            encode += ms_since(t0);
            const std::vector<int32_t> img_ids = e.image_ids(img);  // its image rows (and tile markers)
            ids.insert(ids.end(), img_ids.begin(), img_ids.end());
        }
        for (int64_t i = 0; i < o.n_text; ++i) ids.push_back(tok(rng));
        return make_prompt(e, std::move(ids), std::move(media));
    };
    const bool one_prompt = o.prefill_mode != "each", copy = o.prefill_mode == "copy";
    std::unique_ptr<Prompt> shared;
    double encode_one = 0;
    if (one_prompt) {
        shared = std::make_unique<Prompt>(make_sequence());
        encode_one = encode;
    }
    for (int b = 0; b < B; ++b) {
        KVCache& kv = *batch[static_cast<size_t>(b)];
        caches.push_back(&kv);
        if (copy && b > 0) {
            // the first sequence's cache (compressed) with exactly its allocation; its timings again
            const KVCache& src = *caches[0];
            kv.clear();
            kv.shrink_to_fit(0);
            for (int l = 0; l < e.config().n_layer; ++l) kv.ensure(l, src.allocated(l));
            kv.restore(src);
            std::copy(logits.begin(), logits.begin() + V, logits.begin() + b * V);
            encode += encode_one;
            prefill += seq0[0];
            imp += seq0[1];
            cmp += seq0[2];
            after += seq0[3];
            before += seq0[4];
            positions += shared->size();
        } else {
            std::unique_ptr<Prompt> own;
            if (!one_prompt) own = std::make_unique<Prompt>(make_sequence());
            else if (b > 0) encode += encode_one;  // (encoded once: the same images)
            const Prompt& pr = one_prompt ? *shared : *own;
            const auto t0 = Clock::now();
            CompressionReport rep = prefill_compressed(e, pr, pr.size(), cp, kv, logits.data() + b * V, false, o.n_gen);
            const double pms = ms_since(t0) - rep.importance_ms - rep.compact_ms;
            seq0 = {pms, rep.importance_ms, rep.compact_ms, static_cast<double>(rep.kv_bytes_after),
                    static_cast<double>(rep.kv_bytes_before)};
            prefill += pms;
            imp += rep.importance_ms;
            cmp += rep.compact_ms;
            after += static_cast<double>(rep.kv_bytes_after);
            before += static_cast<double>(rep.kv_bytes_before);
            positions += pr.size();
        }
        next[static_cast<size_t>(b)] = static_cast<int32_t>(
            std::max_element(logits.begin() + b * V, logits.begin() + (b + 1) * V) - (logits.begin() + b * V));
    }
    row.n_prompt = positions / B;
    row.encode_ms.add(encode / B);
    row.prefill_tps.add(1000.0 * static_cast<double>(positions) / prefill);
    row.importance_ms.add(imp / B);
    row.compact_ms.add(cmp / B);
    row.kv_after.add(after / B / 1048576.0);
    row.kv_before.add(before / B / 1048576.0);
    return next;
}

// The greedy token: the first index of the largest logit (std::max_element's choice), the maximum
// found with 8 independent running maxima (a serial compare chain per logit cost ~6 % of a B = 8
// decode step, run on the calling thread while the others waited).
int32_t greedy_token(const float* l, int64_t n) {
    float m[8];
    for (int j = 0; j < 8; ++j) m[j] = l[0];
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; ++j) m[j] = l[i + j] > m[j] ? l[i + j] : m[j];
    float best = m[0];
    for (int j = 1; j < 8; ++j) best = m[j] > best ? m[j] : best;
    for (; i < n; ++i) best = l[i] > best ? l[i] : best;
    for (int64_t k = 0; k < n; ++k)
        if (l[k] == best) return static_cast<int32_t>(k);
    return static_cast<int32_t>(std::max_element(l, l + n) - l);  // (NaNs only)
}

// Decodes row.n_gen greedy tokens of every sequence of a prefilled batch (one forward pass per
// step), timed; records the decode rates, the tokens' digest and (`alloc`) the KV allocated after;
// returns the tokens ([step][sequence]).
std::vector<int32_t> decode_timed(Engine& e, const Options& o, Row& row, const std::vector<KVCache*>& caches, std::vector<int32_t> next,
                  bool alloc_too) {
    const int B = row.batch;
    const int64_t V = e.config().n_vocab;
    std::vector<float> logits(static_cast<size_t>(B * V));
    // decode: every sequence one (greedy) token per step, all in one forward pass
    std::vector<int32_t> history(static_cast<size_t>(o.n_gen * B));  // the generated tokens (for the digest)
    const auto t0 = Clock::now();
    for (int64_t s = 0; s < o.n_gen; ++s) {
        e.decode_batch(next, caches, logits.data());
        // every sequence's token on the engine's threads
        e.pool().parallel_for(B, [&](int64_t b0, int64_t b1) {
            for (int64_t b = b0; b < b1; ++b) {
                next[static_cast<size_t>(b)] = greedy_token(logits.data() + b * V, V);
                history[static_cast<size_t>(s * B + b)] = next[static_cast<size_t>(b)];
            }
        }, 1);
    }
    const double dms = ms_since(t0);
    for (int32_t t : history) {
        for (int k = 0; k < 4; ++k) {
            row.digest ^= static_cast<uint64_t>((static_cast<uint32_t>(t) >> (8 * k)) & 0xFF);
            row.digest *= 1099511628211ull;
        }
    }

    if (alloc_too) {
        double alloc = 0;
        for (const KVCache* c : caches) alloc += static_cast<double>(c->capacity_bytes());
        row.kv_alloc.add(alloc / B / 1048576.0);
    }
    row.decode_tps_seq.add(dms > 0 ? 1000.0 * static_cast<double>(o.n_gen) / dms : 0.0);
    row.decode_tps_all.add(dms > 0 ? 1000.0 * static_cast<double>(o.n_gen * B) / dms : 0.0);
    return history;
}

// One repetition of one configuration on the engine's batch caches.
void run_once(Engine& e, const Options& o, Row& row, const std::vector<std::pair<int, int>>& images, std::mt19937& rng) {
    std::vector<KVCache*> caches;
    for (int b = 0; b < row.batch; ++b) caches.push_back(&e.batch_cache(static_cast<size_t>(b)));
    std::vector<int32_t> next = prefill_batch(e, o, row, images, rng, caches);
    decode_timed(e, o, row, caches, std::move(next), true);
}

// --interleave: the configurations of one group (same model, threads, visual tokens, batch) each
// prefilled once into caches of their own, then -r decode rounds alternating between them (the
// order reversed every other round), each from the prefilled state again, with a --membw probe
// after each round: ratios and % of the probe from the same minutes of a noisy machine. `peak_rss`:
// the peak RSS after the first round (the prefills, their snapshots, one decode each), before any probe.
void run_interleaved(Engine& e, const Options& o, std::vector<Row>& rows, const std::vector<std::pair<int, int>>& images,
                     std::mt19937& rng, size_t& done, size_t total, double& peak_rss) {
    struct Prefilled {
        std::vector<std::unique_ptr<KVCache>> own, snap;  // the batch's caches; snapshots after the prefill
        std::vector<KVCache*> caches;
        std::vector<int32_t> next, tokens;  // the first decode tokens; the first round's output
    };
    std::vector<Prefilled> ps(rows.size());
    for (size_t i = 0; i < rows.size(); ++i) {
        Row& row = rows[i];
        Prefilled& p = ps[i];
        std::fprintf(stderr, "\raircache-bench: [%zu/%zu] %s %s t=%d visual=%lld B=%d %s %g  prefill   ", done + i + 1, total,
                     row.model.c_str(), row.type.c_str(), row.threads, static_cast<long long>(row.n_visual), row.batch,
                     row.policy.c_str(), row.budget);
        std::fflush(stderr);
        for (int b = 0; b < row.batch; ++b) {
            p.own.push_back(e.new_cache());
            p.caches.push_back(p.own.back().get());
        }
        p.next = prefill_batch(e, o, row, images, rng, p.caches);
        // (same and copy: the B caches are the same, one snapshot)
        const int n_snap = o.prefill_mode == "each" ? row.batch : 1;
        for (int b = 0; b < n_snap; ++b) {
            p.snap.push_back(e.new_cache());
            p.snap.back()->restore(*p.caches[static_cast<size_t>(b)]);
        }
    }
    std::vector<double> probes;
    for (int round = 0; round < o.reps; ++round) {
        for (size_t k = 0; k < rows.size(); ++k) {
            const size_t i = round % 2 ? rows.size() - 1 - k : k;
            Row& row = rows[i];
            Prefilled& p = ps[i];
            std::fprintf(stderr, "\raircache-bench: [%zu/%zu] %s %s t=%d visual=%lld B=%d %s %g  round %d/%d   ",
                         done + i + 1, total, row.model.c_str(), row.type.c_str(), row.threads,
                         static_cast<long long>(row.n_visual), row.batch, row.policy.c_str(), row.budget, round + 1, o.reps);
            std::fflush(stderr);
            if (round > 0)
                for (size_t b = 0; b < p.caches.size(); ++b) p.caches[b]->restore(*p.snap[p.snap.size() == 1 ? 0 : b]);
            std::vector<int32_t> out = decode_timed(e, o, row, p.caches, p.next, round == 0);
            if (round == 0) p.tokens = std::move(out);
            else if (out != p.tokens)  // (a round decodes from the restored prefill: the same tokens)
                throw Error(strprintf("internal: decode round %d of %s gave other tokens than the first", round + 1,
                                      row.policy.c_str()));
        }
        if (round == 0) peak_rss = peak_rss_mib();  // (before the probe's buffer)
        if (o.membw) probes.push_back(read_bandwidth_gbps(e.pool(), o.membw_mib, 3));
    }
    if (!probes.empty()) {
        double m = 0;
        for (double g : probes) m += g / static_cast<double>(probes.size());
        std::string list;
        for (double g : probes) list += strprintf(" %.2f", g);
        std::fprintf(stderr, "\naircache-bench: membw probe after each round (GB/s):%s\n", list.c_str());
        for (Row& row : rows) row.membw_gbps = m;
    }
    done += rows.size();
}

// Weight bytes one decode step reads: every tensor of the text model except the token embedding,
// which only gives B rows (unless it doubles as the tied output projection).
double decode_weight_bytes(const Engine& e) {
    double w = 0, embd = 0;
    bool has_output = false;
    for (const GGUFTensorInfo& t : e.model().file().tensors()) {
        if (t.name == "token_embd.weight") embd = static_cast<double>(t.nbytes);
        else w += static_cast<double>(t.nbytes);
        if (t.name == "output.weight") has_output = true;
    }
    return has_output ? w : w + embd;
}

// speedup and bound of every compressing row against the `full` row of the same configuration
void relate_to_full(std::vector<Row>& rows) {
    for (Row& r : rows) {
        for (const Row& f : rows) {
            if (f.policy != "full" || f.model != r.model || f.type != r.type || f.device != r.device ||
                f.threads != r.threads || f.n_visual != r.n_visual || f.batch != r.batch)
                continue;
            const double full_tps = f.decode_tps_all.mean();
            r.speedup = full_tps > 0 ? r.decode_tps_all.mean() / full_tps : 0;
            const double B = r.batch, W = r.weight_bytes, MiB = 1048576.0;
            r.bound = (W + B * f.kv_before.mean() * MiB) / (W + B * r.kv_after.mean() * MiB);
        }
    }
}

// prefill time per sequence (ms): prompt positions / prefill rate
double prefill_ms(const Row& r) {
    const double tps = r.prefill_tps.mean();
    return tps > 0 ? 1000.0 * static_cast<double>(r.n_prompt) / tps : 0.0;
}

// Bytes one decode step reads (W + B x the kept KV per sequence, without the generated rows: the
// memory-traffic bound's figures), the effective bandwidth (GB/s) at the row's decode steps/s, and
// that as % of the --membw probe (0: no probe, or a row on a GPU: the probe reads host memory).
double step_bytes(const Row& r) { return r.weight_bytes + r.batch * r.kv_after.mean() * 1048576.0; }
double eff_gbps(const Row& r) { return step_bytes(r) * r.decode_tps_seq.mean() / 1e9; }
double eff_pct(const Row& r) { return r.membw_gbps > 0 && r.device == "cpu" ? 100.0 * eff_gbps(r) / r.membw_gbps : 0.0; }

std::string pm(const Stat& s, int prec) {
    return strprintf("%.*f ± %.*f", prec, s.mean(), prec, s.std());
}

void print_rows(const std::vector<Row>& rows, const std::string& fmt) {
    if (fmt == "csv") {
        std::printf("model,type,device,threads,n_visual,n_prompt,batch,policy,budget,n_gen,encode_ms,prefill_ms,prefill_tps,"
                    "importance_ms,compact_ms,decode_tps_seq,decode_tps_total,speedup,bound,kv_mib_after,kv_mib_before,"
                    "weight_mib,peak_rss_mib,decode_tps_total_std,kv_mib_allocated,prefill_mode,rss_start_mib,decode_step_mib,"
                    "eff_bw_gbps,membw_gbps,membw_cache_gbps,eff_bw_pct,decode_digest,kv_type\n");
        for (const Row& r : rows)
            std::printf("%s,%s,%s,%d,%lld,%lld,%d,%s,%g,%lld,%.3f,%.3f,%.2f,%.3f,%.3f,%.3f,%.3f,%.5f,%.5f,%.6f,%.6f,%.6f,"
                        "%.1f,%.3f,%.6f,%s,%.1f,%.6f,%.4f,%.4f,%.4f,%.3f,%016llx,%s\n",
                        r.model.c_str(), r.type.c_str(), r.device.c_str(), r.threads, static_cast<long long>(r.n_visual),
                        static_cast<long long>(r.n_prompt), r.batch, r.policy.c_str(), r.budget,
                        static_cast<long long>(r.n_gen), r.encode_ms.mean(), prefill_ms(r), r.prefill_tps.mean(),
                        r.importance_ms.mean(), r.compact_ms.mean(), r.decode_tps_seq.mean(), r.decode_tps_all.mean(),
                        r.speedup, r.bound, r.kv_after.mean(), r.kv_before.mean(), r.weight_bytes / 1048576.0, r.rss_mib,
                        r.decode_tps_all.std(), r.kv_alloc.mean(), r.prefill_mode.c_str(), r.rss_start_mib,
                        step_bytes(r) / 1048576.0, eff_gbps(r), r.membw_gbps, r.membw_cache_gbps, eff_pct(r),
                        static_cast<unsigned long long>(r.digest), r.kv_type.c_str());
        return;
    }
    if (fmt == "json") {
        std::printf("[\n");
        for (size_t i = 0; i < rows.size(); ++i) {
            const Row& r = rows[i];
            std::printf("  {\"model\": \"%s\", \"type\": \"%s\", \"device\": \"%s\", \"threads\": %d, \"n_visual\": %lld, "
                        "\"n_prompt\": %lld, \"batch\": %d, \"policy\": \"%s\", \"budget\": %g, \"n_gen\": %lld, "
                        "\"encode_ms\": %.3f, \"prefill_ms\": %.3f, \"prefill_tps\": %.2f, \"importance_ms\": %.3f, "
                        "\"compact_ms\": %.3f, \"decode_tps_seq\": %.3f, \"decode_tps_total\": %.3f, "
                        "\"decode_tps_total_std\": %.3f, \"speedup\": %.5f, \"bound\": %.5f, \"kv_mib_after\": %.6f, "
                        "\"kv_mib_before\": %.6f, \"weight_mib\": %.6f, \"peak_rss_mib\": %.1f, \"kv_mib_allocated\": %.6f, "
                        "\"prefill_mode\": \"%s\", \"rss_start_mib\": %.1f, \"decode_step_mib\": %.6f, \"eff_bw_gbps\": %.4f, "
                        "\"membw_gbps\": %.4f, \"membw_cache_gbps\": %.4f, \"eff_bw_pct\": %.3f, \"decode_digest\": \"%016llx\", \"kv_type\": \"%s\"}%s\n",
                        r.model.c_str(), r.type.c_str(), r.device.c_str(), r.threads, static_cast<long long>(r.n_visual),
                        static_cast<long long>(r.n_prompt), r.batch, r.policy.c_str(), r.budget,
                        static_cast<long long>(r.n_gen), r.encode_ms.mean(), prefill_ms(r), r.prefill_tps.mean(),
                        r.importance_ms.mean(), r.compact_ms.mean(), r.decode_tps_seq.mean(), r.decode_tps_all.mean(),
                        r.decode_tps_all.std(), r.speedup, r.bound, r.kv_after.mean(), r.kv_before.mean(),
                        r.weight_bytes / 1048576.0, r.rss_mib, r.kv_alloc.mean(), r.prefill_mode.c_str(), r.rss_start_mib,
                        step_bytes(r) / 1048576.0, eff_gbps(r), r.membw_gbps, r.membw_cache_gbps, eff_pct(r),
                        static_cast<unsigned long long>(r.digest), r.kv_type.c_str(), i + 1 < rows.size() ? "," : "");
        }
        std::printf("]\n");
        return;
    }
    std::printf("| model | type | device | threads | visual | prompt | B | policy | budget | encode ms | prefill ms | "
                "prefill tok/s | importance ms | compact ms | decode tok/s/seq | decode tok/s total | speedup | bound | "
                "KV MiB kept/full | KV MiB allocated | RSS MiB | step MiB | eff GB/s | %% probe |\n");
    std::printf("|---|---|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for (const Row& r : rows)
        std::printf("| %s | %s | %s | %d | %lld | %lld | %d | %s | %g | %s | %.1f | %s | %s | %s | %s | %s | %s | %s | "
                    "%.2f / %.2f | %.2f | %.0f | %.1f | %.2f | %s |\n",
                    r.model.c_str(), r.type.c_str(), r.device.c_str(), r.threads, static_cast<long long>(r.n_visual),
                    static_cast<long long>(r.n_prompt), r.batch, r.policy.c_str(), r.budget, pm(r.encode_ms, 1).c_str(),
                    prefill_ms(r), pm(r.prefill_tps, 1).c_str(), pm(r.importance_ms, 2).c_str(),
                    pm(r.compact_ms, 2).c_str(), pm(r.decode_tps_seq, 2).c_str(), pm(r.decode_tps_all, 2).c_str(),
                    r.policy == "full" || r.speedup == 0 ? "-" : strprintf("%.3f", r.speedup).c_str(),
                    r.policy == "full" || r.bound == 0 ? "-" : strprintf("%.3f", r.bound).c_str(), r.kv_after.mean(),
                    r.kv_before.mean(), r.kv_alloc.mean(), r.rss_mib, step_bytes(r) / 1048576.0, eff_gbps(r),
                    eff_pct(r) > 0 ? strprintf("%.1f", eff_pct(r)).c_str() : "-");
    // the probes (one per thread count; --interleave: the mean of a group's rounds), in row order
    std::vector<std::tuple<int, double, double>> probes;
    for (const Row& r : rows)
        if (r.membw_gbps > 0 &&
            std::find(probes.begin(), probes.end(), std::make_tuple(r.threads, r.membw_gbps, r.membw_cache_gbps)) == probes.end())
            probes.emplace_back(r.threads, r.membw_gbps, r.membw_cache_gbps);
    if (!probes.empty()) std::printf("\n");
    for (const auto& [t, g, c] : probes)
        std::printf("membw probe, %d threads: %.2f GB/s streaming read%s\n", t, g,
                    c > 0 ? strprintf(" (cache-sized buffer: %.2f GB/s)", c).c_str() : "");
}

Options parse(int argc, char** argv) {
    Options o;
    std::vector<std::string> a(argv + 1, argv + argc);
    cli::ArgParser ap("aircache-bench");
    cli::add_engine_flags(ap, o.engine, false);
    cli::add_kv_flags(ap, o.kv, false);
    ap.option({"--random"}, [&](const std::string& v) { o.shapes = cli::split_list(v); });
    ap.option({"--type"}, [&](const std::string& v) { o.types = cli::split_list(v); });
    ap.option({"--n-visual"}, [&](const std::string& v) { o.n_visual = cli::parse_list<int64_t>("--n-visual", v); });
    ap.option({"--n-text"}, [&](const std::string& v) { o.n_text = cli::parse_num<int64_t>("--n-text", v); });
    ap.option({"-n", "--n-gen"}, [&](const std::string& v) { o.n_gen = cli::parse_num<int64_t>("-n", v); });
    ap.option({"-B", "--batch"}, [&](const std::string& v) { o.batch = cli::parse_list<int>("-B", v); });
    ap.option({"--kv-policy"}, [&](const std::string& v) { o.policies = cli::split_list(v); });
    ap.option({"--kv-budget"}, [&](const std::string& v) { o.budgets = cli::parse_list<double>("--kv-budget", v); });
    ap.option({"-t", "--threads"}, [&](const std::string& v) { o.threads = cli::parse_list<int>("-t", v); });
    ap.option({"-r", "--repetitions"}, [&](const std::string& v) { o.reps = cli::parse_num<int>("-r", v); });
    ap.option({"-o", "--output"}, [&](const std::string& v) { o.output = v; });
    ap.option({"--prefill-mode"}, [&](const std::string& v) { o.prefill_mode = v; });
    ap.flag({"--membw"}, [&]() { o.membw = true; });
    ap.flag({"--interleave"}, [&]() { o.interleave = true; });
    ap.option({"--membw-mib"}, [&](const std::string& v) { o.membw_mib = cli::parse_num<int64_t>("--membw-mib", v); });
    ap.option({"--membw-cache-mib"},
              [&](const std::string& v) { o.membw_cache_mib = cli::parse_num<int64_t>("--membw-cache-mib", v); });
    const std::vector<std::string> rest = ap.parse(a);
    if (!rest.empty()) throw UsageError("unexpected argument '" + rest[0] + "' (see aircache-bench --help)");
    o.model = o.engine.model_path;
    o.mmproj = o.engine.mmproj_path;
    if (o.model.empty() == o.shapes.empty()) throw UsageError("give either -m MODEL.gguf or --random SHAPE");
    if (o.output != "md" && o.output != "csv" && o.output != "json") throw UsageError("-o: md, csv or json");
    if (o.reps < 1 || o.n_gen < 1 || o.n_text < 0) throw UsageError("-r and -n must be >= 1, --n-text >= 0");
    for (int b : o.batch)
        if (b < 1 || b > 256) throw UsageError("-B: batch sizes in [1, 256]");
    if (o.prefill_mode != "each" && o.prefill_mode != "same" && o.prefill_mode != "copy")
        throw UsageError("--prefill-mode: each, same or copy");
    if (o.membw_mib < 1 || o.membw_mib > 65536) throw UsageError("--membw-mib: 1 to 65536 MiB");
    if (o.membw_cache_mib < 0 || o.membw_cache_mib > 65536) throw UsageError("--membw-cache-mib: 0 to 65536 MiB");
    if (o.threads.empty()) o.threads = {physical_cores()};
    for (const std::string& p : o.policies) {
        compress::CompressParams cp = o.kv;
        cp.policy = p;
        check_compression(cp);  // unknown policy, option or value: an error before any work
    }
    return o;
}

}  // namespace

int main(int argc, char** argv) {
    try {
        if (argc >= 2 && (std::strcmp(argv[1], "-h") == 0 || std::strcmp(argv[1], "--help") == 0)) {
            std::fputs(kUsage, stdout);
            return 0;
        }
        if (argc >= 2 && std::strcmp(argv[1], "--version") == 0) {
            std::fputs(build_info_text().c_str(), stdout);
            return 0;
        }
        if (argc < 2) {
            std::fputs(kUsage, stdout);
            return 0;
        }
        const Options o = parse(argc, argv);
        struct Model {
            std::string name, type;
            EngineParams params;
        };
        std::vector<Model> models;
        if (!o.model.empty()) {
            Model m;
            m.name = o.model.substr(o.model.find_last_of('/') + 1);
            m.type = "file";
            m.params.model_path = o.model;
            m.params.mmproj_path = o.mmproj;
            models.push_back(m);
        } else {
            for (const std::string& shape : o.shapes)
                for (const std::string& t : o.types) {
                    const TypeInfo* ti = type_info_by_name(t);
                    if (!ti) throw InputError("unknown weight type '" + t + "'");
                    std::fprintf(stderr, "aircache-bench: building random %s (%s)...\n", shape.c_str(), ti->name);
                    RandomModel rm = make_random_model(shape, ti->type);
                    Model m;
                    m.name = shape;
                    m.type = ti->name;
                    m.params.model_file = rm.text;
                    m.params.mmproj_file = rm.mmproj;
                    models.push_back(m);
                }
        }
        // the configurations
        int64_t max_visual = 0;
        for (int64_t v : o.n_visual) max_visual = std::max(max_visual, v);
        std::vector<Row> rows;
        size_t total = 0;
        for (size_t mi = 0; mi < models.size(); ++mi)
            for (size_t ti = 0; ti < o.threads.size(); ++ti)
                for (size_t vi = 0; vi < std::max<size_t>(o.n_visual.size(), 1); ++vi)
                    for (size_t bi = 0; bi < o.batch.size(); ++bi)
                        for (const std::string& p : o.policies) total += p == "full" ? 1 : o.budgets.size();
        size_t done = 0;
        std::mt19937 rng(1234);
        std::map<int, std::pair<double, double>> membw;  // threads -> (streaming, cache-sized) GB/s
        int max_batch = 1;
        for (int b : o.batch) max_batch = std::max(max_batch, b);
        for (Model& m : models) {
            for (int threads : o.threads) {
                EngineParams p = o.engine;
                p.model_path = m.params.model_path;
                p.mmproj_path = m.params.mmproj_path;
                p.model_file = m.params.model_file;
                p.mmproj_file = m.params.mmproj_file;
                p.n_threads = threads;
                // (+1/16: the marker tokens between SmolVLM's tiles, 3% of its image rows; at least 4096:
                // the default image, a 1024x768 photo, is up to 3,328 tokens (InternVL: 13 tiles of 256))
                p.n_ctx = 5 + std::max<int64_t>(max_visual + max_visual / 16, 4096) + o.n_text + o.n_gen + 8;
                p.image_max_tokens = std::max<int64_t>(p.image_max_tokens, max_visual);
                Engine e(p);
                if (o.membw && !membw.count(e.params().n_threads)) {
                    std::fprintf(stderr, "aircache-bench: membw probe (%d threads, %lld MiB)...\n", e.params().n_threads,
                                 static_cast<long long>(o.membw_mib));
                    auto& m = membw[e.params().n_threads];
                    m.first = read_bandwidth_gbps(e.pool(), o.membw_mib, 5);
                    if (o.membw_cache_mib > 0)
                        m.second = read_bandwidth_gbps(e.pool(), o.membw_cache_mib,
                                                       static_cast<int>(std::max<int64_t>(5, 4096 / o.membw_cache_mib)));
                }
                const bool dynamic = e.has_vision() && e.vision().dynamic_resolution();
                // dynamic resolution: a 1024x768 photo by default
                Image photo;
                photo.width = 1024;
                photo.height = 768;
                if (e.has_vision()) std::tie(photo.width, photo.height) = e.vision().typical_image_size();
                photo.rgb.resize(3);
                // dynamic resolution and tiled images (SmolVLM): a photo's count
                const bool sized = dynamic || (e.has_vision() && e.vision().size_dependent());
                // (visual tokens: LLaVA-NeXT's newline rows are not counted)
                const int64_t per_image = !e.has_vision() ? 0 : sized ? e.vision().n_visual_tokens(&photo) : e.n_image_tokens(nullptr);
                std::vector<int64_t> visual = o.n_visual;
                if (visual.empty()) visual = {per_image};
                for (int64_t nv : visual) {
                    if (dynamic) {
                        if (nv > 16384)
                            throw InputError(strprintf("--n-visual %lld: one dynamic-resolution image is at most 16384 tokens",
                                                       static_cast<long long>(nv)));
                    } else if (nv > 0 && (per_image == 0 || nv % per_image != 0))
                        throw InputError(strprintf("--n-visual %lld: the model's images are %lld tokens each (an mmproj is "
                                                   "needed, and counts must be multiples)", static_cast<long long>(nv),
                                                   static_cast<long long>(per_image)));
                    for (int B : o.batch) {
                        std::vector<Row> group;  // this batch size's configurations
                        for (const std::string& pol : o.policies) {
                            const std::vector<double> budgets = pol == "full" ? std::vector<double>{1.0} : o.budgets;
                            for (double r : budgets) {
                                Row row;
                                row.model = m.name;
                                row.type = m.type;
                                row.policy = pol;
                                row.threads = e.params().n_threads;
                                row.device = e.device().name();
                                row.kv_type = e.params().kv_type_k == e.params().kv_type_v
                                                  ? kv_type_name(e.params().kv_type_k)
                                                  : std::string(kv_type_name(e.params().kv_type_k)) + "/" +
                                                        kv_type_name(e.params().kv_type_v);
                                if (e.device().is_device() && e.n_device_layers() < e.config().n_layer)
                                    row.device += strprintf(" (ngl %d)", e.n_device_layers());
                                row.weight_bytes = decode_weight_bytes(e);
                                row.batch = B;
                                row.n_visual = nv;
                                row.n_gen = o.n_gen;
                                row.budget = r;
                                row.prefill_mode = o.prefill_mode;
                                if (membw.count(row.threads)) std::tie(row.membw_gbps, row.membw_cache_gbps) = membw[row.threads];
                                group.push_back(std::move(row));
                            }
                        }
                        if (o.interleave) {
                            // the group's peak RSS (its configurations' caches live together)
                            release_caches(e, max_batch);
                            const bool reset = reset_peak_rss();
                            const double start = reset ? std::max(0.0, proc_status_mib("VmRSS")) : 0.0;
                            double peak = 0;
                            run_interleaved(e, o, group, bench_images(e, nv, per_image), rng, done, total, peak);
                            for (Row& row : group) {
                                row.rss_start_mib = start;
                                row.rss_mib = peak;
                                rows.push_back(std::move(row));
                            }
                            continue;
                        }
                        for (Row& row : group) {
                            ++done;
                            // this configuration's own peak RSS: the caches given back, the peak reset
                            release_caches(e, max_batch);
                            const bool reset = reset_peak_rss();
                            row.rss_start_mib = std::max(0.0, proc_status_mib("VmRSS"));
                            for (int rep = 0; rep < o.reps; ++rep) {
                                std::fprintf(stderr, "\raircache-bench: [%zu/%zu] %s %s t=%d visual=%lld B=%d %s %g  rep %d/%d   ",
                                             done, total, m.name.c_str(), m.type.c_str(), row.threads,
                                             static_cast<long long>(nv), B, row.policy.c_str(), row.budget, rep + 1, o.reps);
                                std::fflush(stderr);
                                if (rep > 0) release_caches(e, max_batch);
                                run_once(e, o, row, bench_images(e, nv, per_image), rng);
                            }
                            row.rss_mib = peak_rss_mib();
                            if (!reset) row.rss_start_mib = 0;  // (the process's peak so far)
                            rows.push_back(std::move(row));
                        }
                    }
                }
            }
        }
        std::fprintf(stderr, "\n");
        relate_to_full(rows);
        print_rows(rows, o.output);
        return 0;
    } catch (const UsageError& e) {
        std::fprintf(stderr, "aircache-bench: usage error: %s\n", e.what());
        return 2;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "aircache-bench: error: %s\n", e.what());
        return 1;
    }
}
