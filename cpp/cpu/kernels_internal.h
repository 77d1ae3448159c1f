// cpu/kernels_internal.h — what the per-ISA kernel files share with the selection code
// (kernels.cpp). Not part of the public interface.
//
// Rules for the ISA files (kernels_avx2.cpp, kernels_avx512*.cpp, kernels_neon.cpp), which are
// compiled with instruction-set flags the baseline CPU may lack:
//   * everything they define lives in an anonymous namespace, except their one table builder
//     below; they call no inline function of the shared headers (fp16.h, quant_blocks.h) and
//     instantiate no standard-library template: such code is emitted as a COMDAT copy that the
//     linker may pick for the whole program, and the AVX-512 copy would then run on any CPU;
//   * their table builder is called only after the CPU check in kernels.cpp (the accessors
//     kernels_avx2() ... live there), so no AVX-512 instruction runs before the check;
//   * when the file is built without its flags (other target, or a compiler without them), the
//     builder returns nullptr.
#pragma once

#include "cpu/kernels.h"

namespace aircache {
namespace cpu {
namespace detail {

// Table builders (one per ISA file). Each returns a pointer to a static table, or nullptr when the
// file was compiled without its instruction set.
const KernelTable* build_reference();
const KernelTable* build_generic();
const KernelTable* build_avx2();
const KernelTable* build_avx512();
const KernelTable* build_avx512vnni();
const KernelTable* build_avx512amx();
const KernelTable* build_neon();
const KernelTable* build_neon_dotprod();

// CPU features, detected once (cpuid + xgetbv on x86-64, getauxval on aarch64).
struct CpuFeatures {
    bool avx2_fma_f16c = false;  // AVX2 + FMA + F16C with the OS saving YMM state
    bool avx512 = false;         // AVX-512 F/BW/VL/DQ (and the above) with the OS saving ZMM/opmask state
    bool avx512vnni = false;     // avx512 + AVX512_VNNI
    bool avx512amx = false;      // avx512vnni + AMX-TILE/AMX-INT8, the OS saving tile state and granting it
    bool neon = false;           // aarch64 Advanced SIMD
    bool neon_dotprod = false;   // aarch64 SDOT/UDOT (FEAT_DotProd)
};
const CpuFeatures& cpu_features();

// Thread-local, 64-byte aligned scratch memory for the gemm kernels (repacked tiles), one buffer per
// slot, grown on demand and kept for the thread's lifetime. Lives in the baseline TU (kernels.cpp).
uint8_t* scratch(int slot, size_t bytes);
constexpr int kScratchSlots = 4;

namespace {
// gemm as a loop over dot (tables or types without a tiled kernel); TU-local like everything the
// ISA files instantiate.
template <KernelTable::DotFn F>
void gemm_by_dot(const uint8_t* w, size_t ldw, int64_t nr, const void* act, size_t lda, int64_t nc, int64_t n, float* y,
                 size_t ldy) {
    for (int64_t c = 0; c < nc; ++c)
        for (int64_t r = 0; r < nr; ++r)
            y[static_cast<size_t>(c) * ldy + static_cast<size_t>(r)] =
                F(w + static_cast<size_t>(r) * ldw, static_cast<const char*>(act) + static_cast<size_t>(c) * lda, n);
}
}  // namespace

}  // namespace detail
}  // namespace cpu
}  // namespace aircache
