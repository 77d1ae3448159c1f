// C++ test driver for the GGUF reader and the quant formats (CTest; also run under ASan + UBSan).
//
//   aircache_test_driver CORPUS_DIR      (CORPUS_DIR written by tests/malformed_corpus.py)
//
// 1. every malformed file is rejected with the expected exception class and a message that names
//    the file and matches the expected pattern (opened both from disk and from memory);
// 2. typed getters return the expected values or fail with the expected message;
// 3. every supported quant type dequantizes bit-identically to gguf-py's reference floats;
// 4. unsupported and unknown types are rejected with the right exception.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <random>
#include <cstring>
#include <fstream>
#include <functional>
#include <memory>
#include <regex>
#include <sstream>
#include <string>
#include <vector>

#include "common.h"
#include "fp16.h"
#include "gguf.h"
#include "backend/backend.h"
#include "kv_cache.h"
#include "nn/attention.h"
#include "quants.h"
#include "threadpool.h"

#include <atomic>
#include <chrono>
#include <thread>

using namespace aircache;

namespace {

int g_failures = 0;
int g_checks = 0;

void check(bool ok, const std::string& what) {
    ++g_checks;
    if (!ok) {
        ++g_failures;
        std::fprintf(stderr, "FAIL: %s\n", what.c_str());
    }
}

std::vector<std::vector<std::string>> read_tsv(const std::string& path) {
    std::ifstream in(path);
    if (!in) throw std::runtime_error("cannot read " + path);
    std::vector<std::vector<std::string>> rows;
    std::string line;
    while (std::getline(in, line)) {
        if (line.empty()) continue;
        std::vector<std::string> cols;
        size_t start = 0;
        while (true) {
            size_t tab = line.find('\t', start);
            cols.push_back(line.substr(start, tab == std::string::npos ? std::string::npos : tab - start));
            if (tab == std::string::npos) break;
            start = tab + 1;
        }
        rows.push_back(cols);
    }
    return rows;
}

std::vector<uint8_t> read_file(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    return std::vector<uint8_t>((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

// Runs f, returns "<class>\t<message>" of what it threw, or "none".
std::string outcome(const std::function<void()>& f) {
    try {
        f();
    } catch (const FormatError& e) {
        return std::string("FormatError\t") + e.what();
    } catch (const UnsupportedError& e) {
        return std::string("UnsupportedError\t") + e.what();
    } catch (const InputError& e) {
        return std::string("InputError\t") + e.what();
    } catch (const std::exception& e) {
        return std::string("other\t") + e.what();
    }
    return "none";
}

void test_malformed(const std::string& dir) {
    int n = 0;
    for (const auto& row : read_tsv(dir + "/malformed.tsv")) {
        const std::string path = dir + "/malformed/" + row.at(0);
        const std::string& cls = row.at(1);
        const std::regex pat(row.at(2));
        const std::vector<uint8_t> bytes = read_file(path);
        for (int from_memory = 0; from_memory < 2; ++from_memory) {
            const std::string name = from_memory ? "<mem:" + row.at(0) + ">" : path;
            const std::string got = outcome([&] {
                if (from_memory) GGUFFile::from_memory(bytes.data(), bytes.size(), name);
                else GGUFFile::open(path);
            });
            const size_t tab = got.find('\t');
            const std::string got_cls = got.substr(0, tab);
            const std::string msg = tab == std::string::npos ? "" : got.substr(tab + 1);
            check(got_cls == cls, row.at(0) + ": expected " + cls + ", got " + got);
            check(std::regex_search(msg, pat), row.at(0) + ": message '" + msg + "' does not match /" + row.at(2) + "/");
            check(msg.compare(0, name.size(), name) == 0, row.at(0) + ": message does not start with the file name: " + msg);
        }
        ++n;
    }
    std::printf("malformed: %d files rejected as expected\n", n);
}

std::string canonical_float(double v) {
    char b[64];
    std::snprintf(b, sizeof(b), "%.9g", v);
    return b;
}

void test_typed(const std::string& dir) {
    auto f = GGUFFile::open(dir + "/typed.gguf");
    auto join = [](const auto& v, auto fmt) {
        std::string s;
        for (size_t i = 0; i < v.size(); ++i) s += (i ? "|" : "") + fmt(v[i]);
        return s;
    };
    int n = 0;
    for (const auto& row : read_tsv(dir + "/typed.tsv")) {
        const std::string& kind = row.at(0);
        const std::string& key = row.at(1);
        const std::string expected = row.size() > 2 ? row[2] : "";
        const std::string err = row.size() > 3 ? row[3] : "";
        std::string value;
        const std::string got = outcome([&] {
            if (kind == "u32") value = std::to_string(f->get_u32(key));
            else if (kind == "i32") value = std::to_string(f->get_i32(key));
            else if (kind == "u64") value = std::to_string(f->get_u64(key));
            else if (kind == "i64") value = std::to_string(f->get_i64(key));
            else if (kind == "f32") value = canonical_float(f->get_f32(key));
            else if (kind == "bool") value = f->get_bool(key) ? "true" : "false";
            else if (kind == "str") value = f->get_str(key);
            else if (kind == "str_array") value = join(f->get_str_array(key), [](std::string_view s) { return std::string(s); });
            else if (kind == "f32_array") value = join(f->get_f32_array(key), [](float x) { return canonical_float(x); });
            else if (kind == "int_array") value = join(f->get_int_array(key), [](int64_t x) { return std::to_string(x); });
            else throw std::runtime_error("unknown kind " + kind);
        });
        if (err.empty()) {
            check(got == "none", kind + " " + key + ": unexpected error " + got);
            check(value == expected, kind + " " + key + ": got '" + value + "', expected '" + expected + "'");
        } else {
            check(got.rfind("FormatError\t", 0) == 0, kind + " " + key + ": expected FormatError, got " + got);
            check(std::regex_search(got, std::regex(err)), kind + " " + key + ": message '" + got + "' does not match /" + err + "/");
        }
        ++n;
    }
    // defaults apply only to missing keys
    check(f->get_u32("t.nope", 77u) == 77u, "default for a missing key");
    check(outcome([&] { f->get_u32("t.str", 1u); }).rfind("FormatError", 0) == 0, "default does not hide a wrong type");
    check(f->architecture() == "test", "architecture()");
    std::printf("typed getters: %d checks\n", n);
}

void test_quants(const std::string& dir) {
    auto f = GGUFFile::open(dir + "/quants.gguf");
    int n = 0;
    for (const GGUFTensorInfo& q : f->tensors()) {
        if (q.name.rfind("q.", 0) != 0) continue;
        const GGUFTensorInfo& ref = f->tensor("ref." + q.name.substr(2));
        check(ref.n_elements == q.n_elements, q.name + ": element count differs from the reference");
        std::vector<float> out(static_cast<size_t>(q.n_elements));
        // row by row, as the runtime reads weights
        const size_t rb = row_bytes(*q.info, q.ne[0]);
        for (int64_t r = 0; r < q.n_rows(); ++r)
            dequantize_row(q.type, q.data + r * rb, out.data() + r * q.ne[0], q.ne[0]);
        int64_t bad = 0;
        for (int64_t i = 0; i < q.n_elements; ++i) {
            uint32_t a, b;
            std::memcpy(&a, &out[i], 4);
            std::memcpy(&b, ref.data + 4 * i, 4);
            const bool both_nan = std::isnan(out[i]) && ((b & 0x7f800000u) == 0x7f800000u && (b & 0x7fffffu));
            if (a != b && !both_nan) {
                if (bad < 3) {
                    float rv;
                    std::memcpy(&rv, &b, 4);
                    std::fprintf(stderr, "  %s[%lld]: got %.9g (0x%08x), gguf-py %.9g (0x%08x)\n", q.name.c_str(),
                                 static_cast<long long>(i), out[i], a, rv, b);
                }
                ++bad;
            }
        }
        check(bad == 0, q.name + ": " + std::to_string(bad) + " values differ from gguf-py");
        ++n;
    }
    check(n >= 13, "quant vectors cover every supported type");
    std::printf("quants: %d tensors bit-identical to gguf-py\n", n);
}

void test_types() {
    const std::string unsup = outcome([] { require_supported(GGMLType::IQ2_XXS, "tensor 'x'"); });
    check(unsup.rfind("UnsupportedError\t", 0) == 0 && unsup.find("IQ2_XXS") != std::string::npos &&
              unsup.find("tensor 'x'") != std::string::npos,
          "IQ2_XXS is an UnsupportedError naming type and tensor: " + unsup);
    std::vector<uint8_t> blk(66, 0);
    std::vector<float> out(256);
    check(outcome([&] { dequantize_row(GGMLType::IQ2_XXS, blk.data(), out.data(), 256); }).rfind("UnsupportedError", 0) == 0,
          "dequantize_row rejects IQ2_XXS");
    check(outcome([&] { dequantize_row(GGMLType::Q4_0, blk.data(), out.data(), 20); }).rfind("InputError", 0) == 0,
          "dequantize_row rejects a partial block");
    check(type_info(4u) == nullptr && type_info(99u) == nullptr && type_info(31u) == nullptr, "removed/unknown ids");
    check(type_info(12u) && std::string(type_info(12u)->name) == "Q4_K", "id 12 is Q4_K");
    check(type_info_by_name("q6_k") && type_info_by_name("q6_k")->type_size == 210, "Q6_K geometry by name");
    // f16 specials
    check(f16_to_f32(0x3c00) == 1.0f && f16_to_f32(0xc000) == -2.0f, "f16 normal values");
    check(f16_to_f32(0x0001) == 5.9604644775390625e-08f, "f16 smallest subnormal");
    check(std::isinf(f16_to_f32(0x7c00)) && std::isnan(f16_to_f32(0x7e00)), "f16 inf / nan");
    check(std::signbit(f16_to_f32(0x8000)) && f16_to_f32(0x8000) == 0.0f, "f16 negative zero");
}

#if defined(__x86_64__) && defined(__GNUC__)
#include <cpuid.h>
#include <immintrin.h>
// CPUID leaf 1, ECX bit 29 (clang 14 has no "f16c" name for __builtin_cpu_supports).
static bool cpu_has_f16c() {
    unsigned a, b, c, d;
    return __get_cpuid(1, &a, &b, &c, &d) && (c & (1u << 29));
}
// The CPU's own conversion (F16C, round to nearest even) as an independent oracle for f32_to_f16.
__attribute__((target("f16c"))) static uint16_t hw_f32_to_f16(float f) {
    return static_cast<uint16_t>(_cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT));
}
#endif

void test_f32_to_f16() {
    int n = 0, bad = 0;
    for (uint32_t h = 0; h < 65536; ++h) {  // every half round-trips
        const float f = f16_to_f32(static_cast<uint16_t>(h));
        if (std::isnan(f)) continue;
        ++n;
        if (f32_to_f16(f) != h) ++bad;
    }
    check(bad == 0, strprintf("f32_to_f16(f16_to_f32(h)) == h for all %d non-NaN halves (%d differ)", n, bad));
#if defined(__x86_64__) && defined(__GNUC__)
    if (!cpu_has_f16c()) {
        std::printf("f32_to_f16: this CPU has no F16C; hardware comparison not run\n");
        return;
    }
    std::mt19937 rng(42);
    bad = 0;
    const int N = 2000000;
    for (int i = 0; i < N; ++i) {
        uint32_t bits = rng();
        if (i % 4 == 1) bits = (bits & 0x8fffffffu) | 0x30000000u;  // concentrate on the f16 range,
        if (i % 4 == 2) bits = (bits & 0x83ffffffu) | 0x38000000u;  // subnormals and overflow edges
        float f;
        std::memcpy(&f, &bits, 4);
        if (std::isnan(f)) continue;
        if (f32_to_f16(f) != hw_f32_to_f16(f)) {
            if (bad < 3) std::fprintf(stderr, "  f32_to_f16(0x%08x) = 0x%04x, F16C 0x%04x\n", bits, f32_to_f16(f), hw_f32_to_f16(f));
            ++bad;
        }
    }
    check(bad == 0, strprintf("f32_to_f16 equals the F16C instruction on %d random floats (%d differ)", N, bad));
    std::printf("f32_to_f16: equal to F16C on %d random floats\n", N);
#endif
}

// KV cache: append in pieces, then compact per layer (and per KV head) to random subsets; every
// kept row must equal the row written at that position (bit-exact for F32, the f16 rounding for F16,
// the row quantized and dequantized for Q8_0 / Q4_0; K and V of different types too).
// Allocated whole, or from 3 rows growing as appends need; then shrunk to the kept rows + 2.
void test_kv_cache() {
    std::mt19937 rng(7);
    const std::pair<KVType, KVType> types[] = {{KVType::F32, KVType::F32}, {KVType::F16, KVType::F16},
                                               {KVType::Q8_0, KVType::Q4_0}, {KVType::F16, KVType::Q8_0}};
    for (int64_t initial : {int64_t{-1}, int64_t{3}})
    for (const auto& kv_types : types) {
        const KVType type_k = kv_types.first, type_v = kv_types.second;  // captured below (no structured bindings)
        KVCacheConfig c;
        c.initial = initial;
        c.n_layer = 3;
        c.n_head_kv = 2;
        c.head_dim = kv_type_quantized(type_k) || kv_type_quantized(type_v) ? 64 : 5;
        c.capacity = 40;
        c.type_k = type_k;
        c.type_v = type_v;
        const std::string type = strprintf("%s/%s", kv_type_name(type_k), kv_type_name(type_v));
        KVCache kv(c);
        const int64_t n = 33;
        std::normal_distribution<float> nd;
        std::vector<float> K(static_cast<size_t>(c.n_layer * n * c.n_head_kv * c.head_dim)), V(K.size());
        for (auto& x : K) x = nd(rng);
        for (auto& x : V) x = nd(rng);
        for (int l = 0; l < c.n_layer; ++l)
            for (int64_t t0 = 0; t0 < n; t0 += 10) {  // appended in chunks
                const int64_t m = std::min<int64_t>(10, n - t0);
                kv.append(l, &K[static_cast<size_t>((l * n + t0) * c.n_head_kv * c.head_dim)],
                          &V[static_cast<size_t>((l * n + t0) * c.n_head_kv * c.head_dim)], m);
            }
        check(kv.length(0) == n && kv.bytes_in_use() == static_cast<size_t>(3 * n) * kv.bytes_per_position(),
              "KV lengths and bytes after append");
        const int64_t D = c.head_dim;
        // a stored row of type t as floats; a float row as it reads back when stored as type t
        auto decoded = [&](KVType t, const uint8_t* row) {
            std::vector<float> f(static_cast<size_t>(D));
            dequantize_row(kv_ggml_type(t), row, f.data(), D);
            return f;
        };
        auto stored_as = [&](KVType t, const float* x) {
            std::vector<uint8_t> b(kv_row_bytes(kv_ggml_type(t), D));
            quantize_row(kv_ggml_type(t), x, b.data(), D);
            return decoded(t, b.data());
        };
        auto row_of = [&](const std::vector<float>& X, int l, int64_t t, int h) {
            return &X[static_cast<size_t>(((l * n + t) * c.n_head_kv + h) * D)];
        };
        // 0 when head h's K and V rows at index i of `layer` read back as source row t of layer l
        auto differs = [&](int layer, int h, int64_t i, int l, int64_t t) {
            return static_cast<int>(decoded(type_k, kv.k_row(layer, h, i)) != stored_as(type_k, row_of(K, l, t, h))) +
                   static_cast<int>(decoded(type_v, kv.v_row(layer, h, i)) != stored_as(type_v, row_of(V, l, t, h)));
        };
        // write_rows (a merged row written back): new K and V in rows 1 and 4 of layer 2's head 1, then
        // K only in row 4; every other row and the positions unchanged
        {
            std::vector<float> nk(static_cast<size_t>(2 * D)), nv(nk.size()), nk2(static_cast<size_t>(D));
            for (auto& x : nk) x = nd(rng);
            for (auto& x : nv) x = nd(rng);
            for (auto& x : nk2) x = nd(rng);
            kv.write_rows(2, 1, {1, 4}, nk.data(), nv.data());
            kv.write_rows(2, 1, {4}, nk2.data(), nullptr);
            bool ok = decoded(type_k, kv.k_row(2, 1, 1)) == stored_as(type_k, nk.data()) &&
                      decoded(type_v, kv.v_row(2, 1, 1)) == stored_as(type_v, nv.data()) &&
                      decoded(type_k, kv.k_row(2, 1, 4)) == stored_as(type_k, nk2.data()) &&
                      decoded(type_v, kv.v_row(2, 1, 4)) == stored_as(type_v, nv.data() + D);
            for (int64_t t = 0; t < n; ++t) {
                ok = ok && differs(2, 0, t, 2, t) == 0 && kv.positions(2, 1)[t] == t;
                if (t != 1 && t != 4) ok = ok && differs(2, 1, t, 2, t) == 0;
            }
            check(ok, strprintf("write_rows writes exactly the given rows of one head (%s)", type.c_str()));
            check(outcome([&] { kv.write_rows(2, 0, {static_cast<int32_t>(n)}, nk.data(), nv.data()); }).rfind("InputError", 0) == 0,
                  "write_rows rejects a row past the length");
        }
        // layer 0: one set for every head; layer 1: a different set per head; layer 2: truncate
        std::vector<int32_t> keep0;
        for (int32_t t = 0; t < n; ++t)
            if (rng() % 3 == 0 || t == n - 1) keep0.push_back(t);
        kv.compact(0, keep0);
        std::vector<std::vector<int32_t>> keep1(2);
        for (int h = 0; h < 2; ++h) {
            std::vector<int32_t> all(static_cast<size_t>(n));
            for (int32_t t = 0; t < n; ++t) all[static_cast<size_t>(t)] = t;
            std::shuffle(all.begin(), all.end(), rng);
            keep1[static_cast<size_t>(h)].assign(all.begin(), all.begin() + 11);
            std::sort(keep1[static_cast<size_t>(h)].begin(), keep1[static_cast<size_t>(h)].end());
        }
        kv.compact_heads(1, keep1);
        kv.truncate(2, 7);
        check(kv.allocated(0) >= n && kv.allocated(0) <= c.capacity, "a layer's allocation holds what was appended");
        auto bad_rows = [&] {
        int bad = 0;
        for (int h = 0; h < 2; ++h) {
            for (size_t i = 0; i < keep0.size(); ++i) bad += differs(0, h, static_cast<int64_t>(i), 0, keep0[i]);
            for (size_t i = 0; i < 11; ++i) bad += differs(1, h, static_cast<int64_t>(i), 1, keep1[static_cast<size_t>(h)][i]);
        }
        return bad;
        };
        const int bad = bad_rows();
        check(bad == 0, strprintf("KV compact keeps exactly the chosen rows (%s, %d differ)", type.c_str(), bad));
        check(kv.length(0) == static_cast<int64_t>(keep0.size()) && kv.length(1) == 11 && kv.length(2) == 7,
              "per-layer lengths after compaction");
        check(kv.bytes_in_use() == (keep0.size() + 11 + 7) * kv.bytes_per_position(), "bytes in use follow the lengths");
        // positions moved with their rows (appended at 0..n-1 in every layer), per head in layer 1
        int bad_pos = 0;
        for (int h = 0; h < 2; ++h) {
            for (size_t i = 0; i < keep0.size(); ++i) bad_pos += kv.positions(0, h)[i] != keep0[i];
            for (size_t i = 0; i < 11; ++i) bad_pos += kv.positions(1, h)[i] != keep1[static_cast<size_t>(h)][i];
            for (int i = 0; i < 7; ++i) bad_pos += kv.positions(2, h)[i] != i;
        }
        check(bad_pos == 0, "positions move with their rows (per KV head too)");
        // the memory compaction freed goes back: each layer's allocation becomes its length + 2
        const size_t before = kv.capacity_bytes(), freed = kv.shrink_to_fit(2);
        check(kv.allocated(0) == static_cast<int64_t>(keep0.size()) + 2 && kv.allocated(1) == 13 && kv.allocated(2) == 9 &&
                  kv.capacity_bytes() == (keep0.size() + 2 + 13 + 9) * kv.bytes_per_position() &&
                  freed == before - kv.capacity_bytes(),
              strprintf("shrink_to_fit: allocations %lld/%lld/%lld", static_cast<long long>(kv.allocated(0)),
                        static_cast<long long>(kv.allocated(1)), static_cast<long long>(kv.allocated(2))));
        int bad_after = bad_rows();
        for (int h = 0; h < 2; ++h) {
            for (size_t i = 0; i < keep0.size(); ++i) bad_after += kv.positions(0, h)[i] != keep0[i];
            for (size_t i = 0; i < 11; ++i) bad_after += kv.positions(1, h)[i] != keep1[static_cast<size_t>(h)][i];
        }
        check(bad_after == 0, "rows and positions survive shrink_to_fit");
        check(kv.next_position() == n, "the next position is one past the largest written, compaction or not");
        // appending after compaction continues at the new length, explicit positions recorded
        const int32_t p33 = 40;
        kv.append(1, &K[0], &V[0], 1, &p33);
        check(kv.length(1) == 12 && differs(1, 0, 11, 0, 0) == 0 && differs(1, 1, 11, 0, 0) == 0, "append after compaction");
        check(kv.positions(1, 0)[11] == 40 && kv.positions(1, 1)[11] == 40 && kv.next_position() == 41,
              "an appended row keeps its position; the next position follows it");
        // growing again past the shrunk allocation keeps every row
        for (int i = 0; i < 3; ++i) kv.append(1, &K[0], &V[0], 1, nullptr);
        check(kv.length(1) == 15 && kv.allocated(1) >= 15 && bad_rows() == 0 && kv.positions(1, 1)[14] == 43 && differs(1, 1, 14, 0, 0) == 0,
              "append grows a shrunk layer, the rows kept");
        check(outcome([&] { kv.compact(0, {3, 2}); }).rfind("InputError", 0) == 0, "compact rejects unsorted positions");
        check(outcome([&] { kv.compact(0, {0, 999}); }).rfind("InputError", 0) == 0, "compact rejects positions past the end");
        check(outcome([&] { kv.compact_heads(0, {{0, 1}, {0}}); }).rfind("InputError", 0) == 0,
              "compact_heads needs equal counts");
        std::vector<float> big(static_cast<size_t>(50 * c.n_head_kv * c.head_dim));
        check(outcome([&] { kv.append(2, big.data(), big.data(), 50); }).rfind("InputError", 0) == 0,
              "append beyond capacity is an InputError");
    }
    {  // write_rows on a backend whose memory is reached through upload/download (the test backend)
        ThreadPool pool(1);
        std::unique_ptr<Backend> dev = make_test_backend(pool, {});
        for (KVType t : {KVType::F32, KVType::Q8_0}) {
            KVCacheConfig c;
            c.n_layer = 1;
            c.n_head_kv = 2;
            c.head_dim = 64;
            c.capacity = 8;
            c.type_k = c.type_v = t;
            c.backends = {dev.get()};
            KVCache kv(c);
            std::normal_distribution<float> nd;
            std::vector<float> K(static_cast<size_t>(6 * 2 * 64)), V(K.size()), nk(static_cast<size_t>(2 * 64)), nv(nk.size());
            for (auto* vec : {&K, &V, &nk, &nv})
                for (auto& x : *vec) x = nd(rng);
            kv.append(0, K.data(), V.data(), 6);
            const std::vector<float> k0 = kv.read(0, 0, false), v1 = kv.read(0, 1, true);
            kv.write_rows(0, 1, {2, 5}, nk.data(), nv.data());
            const std::vector<float> rk = kv.read(0, 1, false), rv = kv.read(0, 1, true);
            auto as_stored = [&](const float* x) {
                std::vector<uint8_t> b(kv_row_bytes(kv_ggml_type(t), 64));
                std::vector<float> f(64);
                quantize_row(kv_ggml_type(t), x, b.data(), 64);
                dequantize_row(kv_ggml_type(t), b.data(), f.data(), 64);
                return f;
            };
            bool ok = !kv.on_host(0) && kv.read(0, 0, false) == k0;
            for (int r = 0; r < 6; ++r) {
                const bool written = r == 2 || r == 5;
                const int i = r == 5 ? 1 : 0;
                const std::vector<float> want_v = written ? as_stored(nv.data() + i * 64) : std::vector<float>(v1.begin() + r * 64, v1.begin() + (r + 1) * 64);
                ok = ok && std::vector<float>(rv.begin() + r * 64, rv.begin() + (r + 1) * 64) == want_v;
                if (written) ok = ok && std::vector<float>(rk.begin() + r * 64, rk.begin() + (r + 1) * 64) == as_stored(nk.data() + i * 64);
            }
            check(ok, strprintf("write_rows through upload on a non-host backend (%s)", kv_type_name(t)));
        }
    }
    {  // logit biases: set per head and row, moved by compaction, kept by growth, zero for later rows
        ThreadPool pool(1);
        std::unique_ptr<Backend> dev = make_test_backend(pool, {});
        for (bool device : {false, true}) {
            KVCacheConfig c;
            c.n_layer = 2;
            c.n_head_kv = 2;
            c.head_dim = 4;
            c.capacity = 32;
            c.initial = 8;
            c.type_k = c.type_v = KVType::F32;
            if (device) c.backends = {dev.get(), dev.get()};
            KVCache kv(c), copy(c);
            std::vector<float> K(static_cast<size_t>(10 * 2 * 4), 0.5f);
            for (int l = 0; l < 2; ++l) kv.append(l, K.data(), K.data(), 8);
            const size_t plain_in_use = kv.bytes_in_use(), plain_cap = kv.capacity_bytes();
            check(kv.bias(0) == nullptr && kv.bias_at(0, 1, 3) == 0.0f, "no bias until one is set");
            kv.set_bias(0, 1, {2, 5}, {0.75f, 1.5f});
            kv.set_bias(0, 0, {5}, {-2.0f});
            auto head_bias = [&](int l, int h) {  // through the kernels' pointer (downloaded from a device)
                std::vector<float> all(static_cast<size_t>(2 * kv.allocated(l)));
                if (kv.on_host(l)) std::copy_n(kv.bias(l), all.size(), all.begin());
                else kv.backend(l).download(all.data(), kv.bias(l), sizeof(float) * all.size());
                return std::vector<float>(all.begin() + h * kv.allocated(l), all.begin() + h * kv.allocated(l) + kv.length(l));
            };
            check(head_bias(0, 1) == std::vector<float>{0, 0, 0.75f, 0, 0, 1.5f, 0, 0} &&
                      head_bias(0, 0) == std::vector<float>{0, 0, 0, 0, 0, -2.0f, 0, 0} && kv.bias(1) == nullptr,
                  "set_bias per head and row");
            check(kv.bytes_in_use() == plain_in_use + 8 * 2 * sizeof(float) &&
                      kv.capacity_bytes() == plain_cap + 8 * 2 * sizeof(float),
                  "the biases count in the cache's bytes");
            copy.restore(kv);
            check(copy.bias_at(0, 1, 5) == 1.5f && copy.bias(1) == nullptr, "restore copies the biases");
            kv.compact_heads(0, {{1, 5, 6}, {2, 5, 7}});
            check(head_bias(0, 0) == std::vector<float>{0, -2.0f, 0} && head_bias(0, 1) == std::vector<float>{0.75f, 1.5f, 0},
                  "biases move with their rows");
            kv.append(0, K.data(), K.data(), 10);  // grows past the allocation of 8
            const std::vector<float> h1 = head_bias(0, 1);
            check(kv.allocated(0) >= 13 && h1.size() == 13 && h1[0] == 0.75f && h1[1] == 1.5f &&
                      std::count(h1.begin() + 2, h1.end(), 0.0f) == 11,
                  "growth keeps the biases; appended rows have none");
            kv.truncate(0, 1);
            kv.append(0, K.data(), K.data(), 2);
            check(head_bias(0, 1) == std::vector<float>{0.75f, 0, 0}, "truncated rows lose their biases");
            kv.shrink_to_fit(0);
            check(head_bias(0, 1) == std::vector<float>{0.75f, 0, 0} && kv.allocated(0) == 3, "shrink_to_fit keeps them");
            check(outcome([&] { kv.set_bias(0, 0, {3}, {1.0f}); }).rfind("InputError", 0) == 0 &&
                      outcome([&] { kv.set_bias(0, 2, {0}, {1.0f}); }).rfind("InputError", 0) == 0 &&
                      outcome([&] { kv.set_bias(0, 0, {0}, {std::numeric_limits<float>::infinity()}); }).rfind("InputError", 0) == 0,
                  "set_bias rejects rows past the length, a missing head, a non-finite bias");
            kv.clear();
            check(kv.bias(0) == nullptr && kv.bias_at(0, 1, 0) == 0.0f, "clear drops the biases");
        }
    }
    KVCacheConfig odd;  // a block type needs head_dim % 32 == 0
    odd.n_layer = 1;
    odd.n_head_kv = 1;
    odd.head_dim = 48;
    odd.capacity = 4;
    odd.type_v = KVType::Q4_0;
    check(outcome([&] { KVCache bad_kv(odd); }).rfind("InputError", 0) == 0, "q4_0 values with head_dim 48: InputError");
    check(outcome([&] { kv_type_from_name("q5_0"); }).rfind("InputError", 0) == 0 && kv_type_from_name("Q8_0") == KVType::Q8_0,
          "KV type names");
    std::printf("kv cache: append/write_rows/compact/compact_heads/truncate checked for F32, F16, Q8_0/Q4_0 and F16/Q8_0; logit biases on host and device\n");
}

// The attention rows table of nn/attention.h: causal rows, a bidirectional span widening its rows'
// key range to the span's end, a sliding window by position (after compaction positions are not
// indices), two sequences in one batch with their own lengths; slots reserved and positions recorded.
void test_attention_rows() {
    KVCacheConfig c;
    c.n_layer = 1;
    c.n_head_kv = 1;
    c.head_dim = 4;
    c.capacity = 64;
    c.type_k = c.type_v = KVType::F32;
    KVCache a(c), b([&] { KVCacheConfig s = c; s.initial = 3; return s; }());  // b grows in kv_rows
    std::vector<float> kv(static_cast<size_t>(20 * 4), 0.5f);
    a.append(0, kv.data(), kv.data(), 20);  // positions 0..19
    a.compact(0, {0, 1, 5, 6, 7, 12, 19});  // indices 0..6 hold positions 0 1 5 6 7 12 19
    b.append(0, kv.data(), kv.data(), 3);
    // batch: 4 rows of a (positions 20..23, rows 1..2 a bidirectional span), 2 rows of b
    const int32_t pos[] = {20, 21, 22, 23, 3, 4};
    const int32_t seq[] = {0, 0, 0, 0, 1, 1};
    const int32_t span[] = {-1, 3, 3, -1, -1, -1};
    TextBatch bt;
    bt.n = 6;
    bt.pos = pos;
    bt.seq = seq;
    bt.span_end = span;
    KVCache* caches[] = {&a, &b};
    KVRows r = nn::kv_rows(bt, caches, 0, 0, 1);
    const int32_t want_hi[] = {8, 10, 10, 11, 4, 5}, want_dst[] = {7, 8, 9, 10, 3, 4};
    int bad = 0;
    for (int t = 0; t < 6; ++t) bad += r.host[t].lo != 0 || r.host[t].hi != want_hi[t] || r.host[t].dst != want_dst[t];
    check(bad == 0, "attention rows: causal, a bidirectional span to its end, per-sequence slots");
    check(a.length(0) == 11 && b.length(0) == 5 && a.positions(0)[8] == 21 && b.positions(0)[4] == 4 &&
              b.positions(0)[2] == 2,
          "attention rows reserve the slots and record the positions");
    check(b.allocated(0) == 5 && r.host[0].cap == 64 && r.host[4].cap == 5 && r.host[5].cap == 5 &&
              r.host[4].k == b.k(0),
          "each row carries its layer's allocation (a cache grown by the batch's rows: its new buffer)");
    // a sliding window of 8 positions: row at position 24 sees positions > 16 (indices of 19, 20..24)
    const int32_t p2[] = {24};
    TextBatch w;
    w.n = 1;
    w.pos = p2;
    KVCache* one[] = {&a};
    KVRows rw = nn::kv_rows(w, one, 0, 8, 1);
    check(rw.host[0].lo == 6 && rw.host[0].hi == 12, strprintf("sliding window by position: keys [%d, %d) of 12",
                                                              rw.host[0].lo, rw.host[0].hi));
    check(outcome([&] { nn::check_room(w, one, 1); }) == "none", "room for one more row");
    KVCache small([&] { KVCacheConfig s = c; s.capacity = 12; return s; }());
    small.append(0, kv.data(), kv.data(), 12);
    KVCache* full[] = {&small};
    check(outcome([&] { nn::check_room(w, full, 1); }).rfind("InputError", 0) == 0, "a full cache is an InputError");
    std::printf("attention rows: causal, bidirectional spans, sliding windows, batches checked\n");
}

void test_threadpool() {
    for (int nt : {1, 2, 3, 4}) {
        ThreadPool pool(nt);
        std::atomic<int64_t> total{0};
        int64_t expect = 0;
        for (int job = 0; job < 3000; ++job) {  // many tiny jobs, as in decoding
            const int64_t n = job % 37;
            expect += n * (n - 1) / 2;
            pool.parallel_for(n, [&](int64_t b, int64_t e) {
                int64_t s = 0;
                for (int64_t i = b; i < e; ++i) s += i;
                total.fetch_add(s);
            });
        }
        check(total.load() == expect, strprintf("thread pool (%d threads): every index visited once", nt));
        // for_each: every item exactly once, one at a time, whichever thread takes it
        for (int64_t n : {0, 1, 7, 100}) {
            std::vector<std::atomic<int>> seen(static_cast<size_t>(n));
            pool.for_each(n, [&](int64_t i) { seen[static_cast<size_t>(i)].fetch_add(1); });
            bool once = true;
            for (auto& x : seen) once = once && x.load() == 1;
            check(once, strprintf("thread pool (%d threads): for_each visits each of %lld items once", nt,
                                  static_cast<long long>(n)));
        }
        check(outcome([&] { pool.for_each(9, [](int64_t i) { if (i == 5) throw InputError("boom"); }); })
                      .rfind("InputError", 0) == 0,
              "thread pool: an exception in for_each is rethrown in the caller");
        // an exception in a worker reaches the caller, and the pool still works afterwards
        check(outcome([&] { pool.run([](int ith, int) { if (ith == 0 || ith == 1) throw InputError("boom"); }); })
                      .rfind("InputError", 0) == 0,
              "thread pool: an exception is rethrown in the caller");
        // run(): every share of every job exactly once, never after its run() returned, on whichever
        // thread claimed it (shares of uneven length, so that threads overtake each other)
        {
            constexpr int kJobs = 20000;
            std::vector<std::atomic<int>> runs(static_cast<size_t>(nt));
            std::atomic<int> current{-1}, bad{0}, wrong_count{0};
            std::atomic<int64_t> spin_sink{0};
            for (int job = 0; job < kJobs; ++job) {
                for (auto& r : runs) r.store(0);
                current.store(job);
                pool.run([&, job](int i, int n) {
                    if (n != nt || i < 0 || i >= nt) wrong_count.fetch_add(1);
                    if (current.load() != job) bad.fetch_add(1);
                    int64_t x = 0;
                    for (int k = 0; k < ((job * 7 + i * 13) % 5) * 200; ++k) x += k;
                    spin_sink.fetch_add(x);
                    runs[static_cast<size_t>(i)].fetch_add(1);
                });
                current.store(-1);
                for (auto& r : runs)
                    if (r.load() != 1) bad.fetch_add(1);
            }
            check(bad.load() == 0 && wrong_count.load() == 0,
                  strprintf("thread pool (%d threads): run() gives each of %d jobs' shares exactly once, within the job", nt, kJobs));
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(30));  // workers go to sleep...
        std::atomic<int> ran{0};
        pool.run([&](int, int) { ran.fetch_add(1); });  // ...and wake up for the next job
        check(ran.load() == nt, strprintf("thread pool (%d threads): every thread runs after sleeping", nt));
    }
    std::printf("thread pool: checked with 1-4 threads\n");
}

}  // namespace

int main(int argc, char** argv) {
    if (argc != 2) {
        std::fprintf(stderr, "usage: %s CORPUS_DIR   (written by tests/malformed_corpus.py)\n", argv[0]);
        return 2;
    }
    const std::string dir = argv[1];
    try {
        test_malformed(dir);
        test_typed(dir);
        test_quants(dir);
        test_types();
        test_f32_to_f16();
        test_kv_cache();
        test_attention_rows();
        test_threadpool();
    } catch (const std::exception& e) {
        std::fprintf(stderr, "FAIL: unexpected exception: %s\n", e.what());
        return 1;
    }
    std::printf("%d checks, %d failures\n", g_checks, g_failures);
    return g_failures == 0 ? 0 : 1;
}
