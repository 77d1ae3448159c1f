// The `avx512amx` kernel table: the avx512vnni table with the repacked Q8_0 and Q4_K matmuls on
// AMX-INT8 tiles for groups of 16 activation rows (prefill; cpu/kernels_x86_amx.inc). Compiled with -mavx512vnni -mamx-tile -mamx-int8 (CMakeLists.txt);
// chosen only where the CPU has AMX-INT8 and the OS grants the tile state (kernels.cpp). Same rules
// as the other ISA files (kernels_internal.h).
#include "cpu/kernels_internal.h"

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && defined(__AVX512DQ__) && defined(__AVX512VNNI__) && \
    defined(__AVX2__) && defined(__FMA__) && defined(__F16C__) && defined(__AMX_TILE__) && defined(__AMX_INT8__)

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>

#include <cstddef>
#include <cstring>
#include <utility>

namespace aircache {
namespace cpu {
namespace {

#include "cpu/kernels_x86_avx2.inc"
#include "cpu/kernels_x86_avx512.inc"
#define AIRCACHE_VECMATH_X86  // (immintrin.h is included: the .inc may use x86 intrinsics)
#include "cpu/kernels_vecmath.inc"
#include "cpu/kernels_x86_packed.inc"
#include "cpu/kernels_x86_amx.inc"

KernelTable make_table() {
    KernelTable t;
    t.name = "avx512amx";
    const KernelTable* g = detail::build_generic();
    for (int i = 0; i < kTypeSlots; ++i) t.act[i] = g->act[i];
    fill_avx512(t);
    fill_vecmath(t);
    fill_packed(t);
    fill_amx(t);
    return t;
}

}  // namespace

namespace detail {
const KernelTable* build_avx512amx() {
    static const KernelTable t = make_table();
    return &t;
}
}  // namespace detail

}  // namespace cpu
}  // namespace aircache

#else

namespace aircache {
namespace cpu {
namespace detail {
const KernelTable* build_avx512amx() { return nullptr; }
}  // namespace detail
}  // namespace cpu
}  // namespace aircache

#endif
