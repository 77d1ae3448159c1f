// Kernel table selection: CPU feature detection (cpuid + xgetbv, so an instruction set counts only
// when the OS saves its registers), AIRCACHE_KERNELS, set_kernels. Compiled with baseline flags.
#include "cpu/kernels_internal.h"

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <memory>

#include "common.h"
#include "cpu/dot.h"

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif
#if defined(__aarch64__) && defined(__linux__)
#include <sys/auxv.h>
#endif
#if defined(__x86_64__) && defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace aircache {
namespace cpu {
namespace detail {

namespace {

#if defined(__x86_64__) || defined(__i386__)
uint64_t read_xcr0() {
    uint32_t eax = 0, edx = 0;
    // xgetbv with ecx = 0 (encoded as bytes: no -mxsave needed for the intrinsic)
    __asm__ volatile(".byte 0x0f, 0x01, 0xd0" : "=a"(eax), "=d"(edx) : "c"(0));
    return (static_cast<uint64_t>(edx) << 32) | eax;
}

CpuFeatures detect() {
    CpuFeatures f;
    unsigned a = 0, b = 0, c = 0, d = 0;
    if (!__get_cpuid(0, &a, &b, &c, &d)) return f;
    const unsigned max_leaf = a;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return f;
    const bool fma = (c >> 12) & 1, osxsave = (c >> 27) & 1, avx = (c >> 28) & 1, f16c = (c >> 29) & 1;
    if (!osxsave || !avx) return f;
    const uint64_t xcr0 = read_xcr0();
    const bool ymm_state = (xcr0 & 0x6) == 0x6;     // SSE + AVX state
    const bool zmm_state = (xcr0 & 0xE6) == 0xE6;   // + opmask, ZMM_Hi256, Hi16_ZMM
    if (!ymm_state || max_leaf < 7) return f;
    __cpuid_count(7, 0, a, b, c, d);
    const bool avx2 = (b >> 5) & 1;
    const bool avx512f = (b >> 16) & 1, avx512dq = (b >> 17) & 1, avx512bw = (b >> 30) & 1, avx512vl = (b >> 31) & 1;
    const bool avx512vnni = (c >> 11) & 1;
    f.avx2_fma_f16c = avx2 && fma && f16c;
    f.avx512 = f.avx2_fma_f16c && zmm_state && avx512f && avx512dq && avx512bw && avx512vl;
    f.avx512vnni = f.avx512 && avx512vnni;
    // AMX: CPUID.7.0:EDX bits 24 (AMX-TILE) and 25 (AMX-INT8), XCR0 bits 17-18 (tile configuration and
    // data saved by the OS) and, on Linux, the process's permission for the tile data (granted on
    // request, arch_prctl ARCH_REQ_XCOMP_PERM; without it the first tile instruction faults)
    const bool amx_tile = (d >> 24) & 1, amx_int8 = (d >> 25) & 1;
    const bool tile_state = (xcr0 & 0x60000) == 0x60000;
    bool amx_granted = false;
#if defined(__x86_64__) && defined(__linux__)
    if (f.avx512vnni && amx_tile && amx_int8 && tile_state)
        amx_granted = syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XFEATURE_XTILEDATA */) == 0;
#endif
    f.avx512amx = f.avx512vnni && amx_tile && amx_int8 && tile_state && amx_granted;
    return f;
}
#elif defined(__aarch64__)
CpuFeatures detect() {
    CpuFeatures f;
    f.neon = true;  // Advanced SIMD is mandatory on AArch64
#if defined(__linux__)
    const unsigned long hw = getauxval(AT_HWCAP);
    f.neon_dotprod = (hw >> 20) & 1;  // HWCAP_ASIMDDP
#endif
    return f;
}
#else
CpuFeatures detect() { return CpuFeatures{}; }
#endif

}  // namespace

const CpuFeatures& cpu_features() {
    static const CpuFeatures f = detect();
    return f;
}

uint8_t* scratch(int slot, size_t bytes) {
    struct Buffers {
        std::unique_ptr<uint8_t[]> raw[kScratchSlots];
        size_t size[kScratchSlots] = {};
    };
    thread_local Buffers b;
    if (slot < 0 || slot >= kScratchSlots) throw Error("internal error: bad kernel scratch slot");
    if (b.size[slot] < bytes) {
        b.raw[slot].reset();
        b.raw[slot].reset(new uint8_t[bytes + 64]);
        b.size[slot] = bytes;
    }
    const uintptr_t p = reinterpret_cast<uintptr_t>(b.raw[slot].get());
    return reinterpret_cast<uint8_t*>((p + 63) & ~static_cast<uintptr_t>(63));
}

}  // namespace detail

void scores_f32(const float* q, const float* k, int64_t L, int64_t d, float scale, float* s) {
    const KernelTable& t = kernels();
    if (t.scores_f32) {
        t.scores_f32(q, k, L, d, scale, s);
        return;
    }
    for (int64_t j = 0; j < L; ++j) s[j] = dot_f32(q, k + j * d, d) * scale;
}

float probe_exp(float* x, int64_t n) {
    const KernelTable& t = kernels();
    return (t.probe_exp ? t.probe_exp : detail::build_generic()->probe_exp)(x, n);
}

void probe_acc(const float* x, float s, float* col, int64_t n) {
    const KernelTable& t = kernels();
    (t.probe_acc ? t.probe_acc : detail::build_generic()->probe_acc)(x, s, col, n);
}

size_t packed_panel_bytes(GGMLType t, int64_t n) {
    switch (t) {
        case GGMLType::Q8_0: return static_cast<size_t>(n / 32) * 544;
        case GGMLType::Q4_0: return static_cast<size_t>(n / 32) * 288;
        case GGMLType::Q4_K: return static_cast<size_t>(n / 256) * 2368;
        case GGMLType::Q6_K: return static_cast<size_t>(n / 256) * 3360;
        case GGMLType::F16: return static_cast<size_t>(n) * 32;
        default: return 0;
    }
}

const KernelTable* kernels_reference() { return detail::build_reference(); }
const KernelTable* kernels_generic() { return detail::build_generic(); }
const KernelTable* kernels_avx2() { return detail::cpu_features().avx2_fma_f16c ? detail::build_avx2() : nullptr; }
const KernelTable* kernels_avx512() { return detail::cpu_features().avx512 ? detail::build_avx512() : nullptr; }
const KernelTable* kernels_avx512vnni() {
    return detail::cpu_features().avx512vnni ? detail::build_avx512vnni() : nullptr;
}
const KernelTable* kernels_avx512amx() {
    return detail::cpu_features().avx512amx ? detail::build_avx512amx() : nullptr;
}
const KernelTable* kernels_neon() { return detail::cpu_features().neon ? detail::build_neon() : nullptr; }
const KernelTable* kernels_neon_dotprod() {
    return detail::cpu_features().neon_dotprod ? detail::build_neon_dotprod() : nullptr;
}

namespace {

struct Entry {
    const char* name;
    const KernelTable* (*get)();
};
// Worst to best.
const Entry kEntries[] = {
    {"reference", kernels_reference}, {"generic", kernels_generic}, {"neon", kernels_neon}, {"neon_dotprod", kernels_neon_dotprod},
    {"avx2", kernels_avx2},           {"avx512", kernels_avx512},   {"avx512vnni", kernels_avx512vnni},
    {"avx512amx", kernels_avx512amx},
};

const KernelTable* find(const std::string& name) {
    if (name == "auto") {
        const KernelTable* best = nullptr;
        for (const Entry& e : kEntries)
            if (const KernelTable* t = e.get()) best = t;
        return best;
    }
    for (const Entry& e : kEntries)
        if (name == e.name) return e.get();
    return nullptr;
}

std::string available_list() {
    std::string s;
    for (const Entry& e : kEntries)
        if (e.get()) s += std::string(s.empty() ? "" : ", ") + e.name;
    return s;
}

const KernelTable& lookup(const std::string& name, const char* where) {
    const KernelTable* t = find(name);
    if (!t) {
        bool known = name == "auto";
        for (const Entry& e : kEntries) known = known || name == e.name;
        throw InputError(strprintf("%skernel table '%s' is %s (available here: auto, %s)", where, name.c_str(),
                                   known ? "not supported by this CPU or build" : "unknown",
                                   available_list().c_str()));
    }
    return *t;
}

std::atomic<const KernelTable*> g_current{nullptr};

}  // namespace

const KernelTable& kernels() {
    const KernelTable* t = g_current.load(std::memory_order_acquire);
    if (t) return *t;
    const char* env = std::getenv("AIRCACHE_KERNELS");
    const std::string name = env && *env ? env : "auto";
    const KernelTable* chosen = &lookup(name, "AIRCACHE_KERNELS: ");
    const KernelTable* expected = nullptr;
    if (!g_current.compare_exchange_strong(expected, chosen, std::memory_order_acq_rel)) return *expected;
    return *chosen;
}

void set_kernels(const std::string& name) { g_current.store(&lookup(name, ""), std::memory_order_release); }

std::vector<std::string> available_kernels() {
    std::vector<std::string> v;
    for (const Entry& e : kEntries)
        if (e.get()) v.push_back(e.name);
    return v;
}

const KernelTable& kernel_table(const std::string& name) { return lookup(name, ""); }

}  // namespace cpu
}  // namespace aircache
