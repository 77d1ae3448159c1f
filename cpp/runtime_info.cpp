#include "runtime_info.h"

#include <sys/utsname.h>

#include "common.h"
#include "image.h"
#if defined(AIRCACHE_HAVE_CUDA)
#include "cuda_api.h"
#endif

#ifndef AIRCACHE_VERSION
#define AIRCACHE_VERSION "unknown"
#endif
#ifndef AIRCACHE_BUILD_TYPE
#define AIRCACHE_BUILD_TYPE "unknown"
#endif
#ifndef AIRCACHE_CXX_COMPILER
#define AIRCACHE_CXX_COMPILER "unknown"
#endif

namespace aircache {

static std::vector<std::string> compiled_simd() {
    std::vector<std::string> v;
#if defined(__x86_64__) || defined(_M_X64)
    v.push_back("SSE2");
#endif
#if defined(__SSE4_2__)
    v.push_back("SSE4.2");
#endif
#if defined(__AVX__)
    v.push_back("AVX");
#endif
#if defined(__AVX2__)
    v.push_back("AVX2");
#endif
#if defined(__FMA__)
    v.push_back("FMA");
#endif
#if defined(__F16C__)
    v.push_back("F16C");
#endif
#if defined(__AVX512F__)
    v.push_back("AVX512F");
#endif
#if defined(__ARM_NEON)
    v.push_back("NEON");
#endif
#if defined(__ARM_FEATURE_FP16_VECTOR_ARITHMETIC)
    v.push_back("FP16_VA");
#endif
#if defined(__ARM_FEATURE_DOTPROD)
    v.push_back("DOTPROD");
#endif
    return v;
}

static std::vector<std::string> cpu_simd() {
    std::vector<std::string> v;
#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("sse4.2")) v.push_back("SSE4.2");
    if (__builtin_cpu_supports("avx")) v.push_back("AVX");
    if (__builtin_cpu_supports("avx2")) v.push_back("AVX2");
    if (__builtin_cpu_supports("fma")) v.push_back("FMA");
    if (__builtin_cpu_supports("avx512f")) v.push_back("AVX512F");
    if (__builtin_cpu_supports("avx512bw")) v.push_back("AVX512BW");
#if !defined(__clang__)  // clang 14 does not know these feature names
    if (__builtin_cpu_supports("f16c")) v.push_back("F16C");
    if (__builtin_cpu_supports("avx512vnni")) v.push_back("AVX512VNNI");
#endif
#elif defined(__aarch64__)
    v.push_back("NEON");  // mandatory on AArch64
#endif
    return v;
}

BuildInfo build_info() {
    BuildInfo b;
    b.version = AIRCACHE_VERSION;
    b.compiler = AIRCACHE_CXX_COMPILER;
    b.build_type = AIRCACHE_BUILD_TYPE;
#if defined(AIRCACHE_HAVE_CUDA)
    b.cuda = true;
    b.cuda_compiler = AIRCACHE_CUDA_COMPILER;
    b.cuda_architectures = AIRCACHE_CUDA_ARCHS;
    b.cuda_gemm = cuda::built_with_cublas() ? "cuBLAS (loaded at run time; built-in kernels when it cannot be loaded)"
                                            : "built-in kernels (built without cuBLAS headers)";
#endif
    b.simd_compiled = compiled_simd();
    b.simd_cpu = cpu_simd();
    struct utsname u;
    if (uname(&u) == 0) b.system = std::string(u.sysname) + " " + u.machine;
    b.image_formats = image_formats();
    return b;
}

static std::string join(const std::vector<std::string>& v) {
    std::string s;
    for (const auto& x : v) {
        if (!s.empty()) s += " ";
        s += x;
    }
    return s.empty() ? "-" : s;
}

int cuda_device_count() {
#if defined(AIRCACHE_HAVE_CUDA)
    return cuda::device_count();
#else
    return 0;
#endif
}

bool cuda_available() { return cuda_device_count() > 0; }

std::string build_info_text() {
    BuildInfo b = build_info();
    std::string s;
    s += "aircache.cpp " + b.version + "\n";
    s += "compiler:     " + b.compiler + " (" + b.build_type + ")\n";
    s += "system:       " + b.system + "\n";
    s += "simd (build): " + join(b.simd_compiled) + "\n";
    s += "simd (cpu):   " + join(b.simd_cpu) + "\n";
    s += "images:       " + (b.image_formats.empty() ? std::string("none (built without libpng and libjpeg)")
                                                      : join(b.image_formats)) + "\n";
    if (b.cuda) {
        s += "cuda:         built (" + b.cuda_compiler + ", architectures " + b.cuda_architectures + ")\n";
        s += "cuda gemm:    " + b.cuda_gemm + "\n";
        const int n = cuda_device_count();
        if (n == 0) {
            s += "cuda devices: none usable (no GPU or no driver): running on the CPU\n";
        } else {
#if defined(AIRCACHE_HAVE_CUDA)
            for (int i = 0; i < n; ++i) s += strprintf("cuda device %d: %s\n", i, cuda::device_description(i).c_str());
#endif
        }
    } else {
        s += "cuda:         not built\n";
    }
    return s;
}

}  // namespace aircache
