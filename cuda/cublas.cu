// cublas.cu — cuBLAS, loaded at run time for the prefill GEMMs.
//
// The library is not linked: a CUDA build must import and run on machines without it (and
// without a GPU). On first use we dlopen libcublasLt + libcublas of the CUDA major version we were
// built with, from (in order) $AIRCACHE_CUBLAS_DIR, the directory CMake found at build time (the
// system toolkit or the `nvidia-cublas` wheel), and the loader's search path. When it cannot be
// loaded — or the build found no cuBLAS headers — the GEMMs use the built-in tiled kernels
// (matmul.cu), and gemm_backend() says why.
#include <dlfcn.h>

#include <cstdlib>
#include <mutex>

#include "cuda_api.h"
#include "cuda_common.cuh"

#if defined(AIRCACHE_HAVE_CUBLAS_HEADERS)
#include <cublas_v2.h>
#endif

#ifndef AIRCACHE_CUBLAS_HINT
#define AIRCACHE_CUBLAS_HINT ""
#endif

namespace aircache {
namespace cuda {

#if defined(AIRCACHE_HAVE_CUBLAS_HEADERS)

namespace {

struct Blas {
    bool loaded = false;
    std::string why_not;
    std::string path;
    int version = 0;
    cublasStatus_t (*create)(cublasHandle_t*) = nullptr;
    cublasStatus_t (*destroy)(cublasHandle_t) = nullptr;
    cublasStatus_t (*set_stream)(cublasHandle_t, cudaStream_t) = nullptr;
    cublasStatus_t (*get_version)(cublasHandle_t, int*) = nullptr;
    cublasStatus_t (*gemm_ex)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int, int, int, const void*,
                              const void*, cudaDataType, int, const void*, cudaDataType, int, const void*, void*,
                              cudaDataType, int, cublasComputeType_t, cublasGemmAlgo_t) = nullptr;
};

Blas& blas_lib() {
    static Blas b;
    static std::once_flag once;
    std::call_once(once, [] {
        const std::string major = std::to_string(CUDART_VERSION / 1000);
        std::vector<std::string> dirs;
        if (const char* env = std::getenv("AIRCACHE_CUBLAS_DIR")) if (*env) dirs.push_back(env);
        if (*AIRCACHE_CUBLAS_HINT) dirs.push_back(AIRCACHE_CUBLAS_HINT);
        dirs.push_back("");  // the loader's search path
        std::string errors;
        void* lib = nullptr;
        for (const std::string& d : dirs) {
            const std::string pre = d.empty() ? std::string() : d + "/";
            // cuBLAS needs cuBLASLt from the same place; load it first, globally
            void* lt = dlopen((pre + "libcublasLt.so." + major).c_str(), RTLD_NOW | RTLD_GLOBAL);
            lib = dlopen((pre + "libcublas.so." + major).c_str(), RTLD_NOW | RTLD_LOCAL);
            if (lib) {
                b.path = pre + "libcublas.so." + major;
                break;
            }
            if (lt) dlclose(lt);
            const char* e = dlerror();
            errors += (errors.empty() ? "" : "; ") + std::string(e ? e : "not found");
        }
        if (!lib) {
            b.why_not = "libcublas.so." + major + " not found (" + errors +
                        "); pip install nvidia-cublas or set AIRCACHE_CUBLAS_DIR";
            return;
        }
        auto sym = [&](const char* name) {
            void* p = dlsym(lib, name);
            if (!p && b.why_not.empty()) b.why_not = std::string("symbol ") + name + " missing in " + b.path;
            return p;
        };
        b.create = reinterpret_cast<decltype(b.create)>(sym("cublasCreate_v2"));
        b.destroy = reinterpret_cast<decltype(b.destroy)>(sym("cublasDestroy_v2"));
        b.set_stream = reinterpret_cast<decltype(b.set_stream)>(sym("cublasSetStream_v2"));
        b.get_version = reinterpret_cast<decltype(b.get_version)>(sym("cublasGetVersion_v2"));
        b.gemm_ex = reinterpret_cast<decltype(b.gemm_ex)>(sym("cublasGemmEx"));
        b.loaded = b.why_not.empty();
    });
    return b;
}

[[noreturn]] void blas_fail(cublasStatus_t st, const char* stmt, const char* file, int line) {
    throw Error(strprintf("cuBLAS error %d in `%s` at %s:%d", static_cast<int>(st), stmt, file, line));
}

#define AC_CUBLAS_CHECK(stmt)                                                      \
    do {                                                                           \
        cublasStatus_t ac_st_ = (stmt);                                            \
        if (ac_st_ != CUBLAS_STATUS_SUCCESS) blas_fail(ac_st_, #stmt, __FILE__, __LINE__); \
    } while (0)

}  // namespace

void* blas_create(cudaStream_t stream, std::string* why_not) {
    if (std::getenv("AIRCACHE_NO_CUBLAS")) {
        if (why_not) *why_not = "disabled by AIRCACHE_NO_CUBLAS";
        return nullptr;
    }
    Blas& b = blas_lib();
    if (!b.loaded) {
        if (why_not) *why_not = b.why_not;
        return nullptr;
    }
    cublasHandle_t h = nullptr;
    const cublasStatus_t st = b.create(&h);
    if (st != CUBLAS_STATUS_SUCCESS) {
        if (st == CUBLAS_STATUS_ALLOC_FAILED) throw OutOfMemory("cuBLAS could not allocate its workspace (out of device memory)");
        blas_fail(st, "cublasCreate", __FILE__, __LINE__);
    }
    AC_CUBLAS_CHECK(b.set_stream(h, stream));
    if (b.version == 0) (void)b.get_version(h, &b.version);
    return h;
}

void blas_destroy(void* handle) noexcept {
    Blas& b = blas_lib();
    if (handle && b.loaded) (void)b.destroy(static_cast<cublasHandle_t>(handle));
}

std::string blas_description() {
    if (std::getenv("AIRCACHE_NO_CUBLAS")) return "built-in kernels (cuBLAS disabled by AIRCACHE_NO_CUBLAS)";
    Blas& b = blas_lib();
    if (!b.loaded) return "built-in kernels (" + b.why_not + ")";
    return "cuBLAS (" + b.path + ")";
}

void blas_gemm(void* handle, bool f16, const void* W, const void* X, float* Y, int64_t R, int64_t T, int64_t n,
               int64_t ldy) {
    Blas& b = blas_lib();
    if (R > INT32_MAX || T > INT32_MAX || n > INT32_MAX || ldy > INT32_MAX)
        throw UnsupportedError("matrix too large for a cuBLAS GEMM");
    const float alpha = 1.0f, beta = 0.0f;
    const cudaDataType ab = f16 ? CUDA_R_16F : CUDA_R_32F;
    // column-major: Y^T (R x T, ld ldy) = W' (n x R, ld n)^T * X' (n x T, ld n)
    AC_CUBLAS_CHECK(b.gemm_ex(static_cast<cublasHandle_t>(handle), CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(R),
                              static_cast<int>(T), static_cast<int>(n), &alpha, W, ab, static_cast<int>(n), X, ab,
                              static_cast<int>(n), &beta, Y, CUDA_R_32F, static_cast<int>(ldy), CUBLAS_COMPUTE_32F,
                              CUBLAS_GEMM_DEFAULT));
}

#else  // no cuBLAS headers at build time

void* blas_create(cudaStream_t, std::string* why_not) {
    if (why_not) *why_not = "built without cuBLAS headers";
    return nullptr;
}
void blas_destroy(void*) noexcept {}
std::string blas_description() { return "built-in kernels (built without cuBLAS headers)"; }
void blas_gemm(void*, bool, const void*, const void*, float*, int64_t, int64_t, int64_t, int64_t) {
    throw Error("internal: cuBLAS GEMM in a build without cuBLAS");
}

#endif

bool built_with_cublas() noexcept {
#if defined(AIRCACHE_HAVE_CUBLAS_HEADERS)
    return true;
#else
    return false;
#endif
}

std::string gemm_backend(int device) {
    DeviceGuard g(device);
    return blas_description();
}

}  // namespace cuda
}  // namespace aircache
