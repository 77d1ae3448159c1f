// The `avx512` kernel table (AVX-512 F/BW/VL/DQ + FMA + F16C, without VNNI; compiled with -mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx2 -mfma -mf16c). Flags set by CMakeLists.txt on x86-64; see kernels_internal.h for
// the rules such files follow.
#include "cpu/kernels_internal.h"

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && defined(__AVX512DQ__) && defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)

#if defined(__GNUC__) && !defined(__clang__)
// GCC 12's own AVX-512 headers trip -Wuninitialized (the _mm512_undefined_* idiom in casts/reductions)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>

#include <cstring>
#include <utility>

namespace aircache {
namespace cpu {
namespace {

#include "cpu/kernels_x86_avx2.inc"
#include "cpu/kernels_x86_avx512.inc"
#define AIRCACHE_VECMATH_X86  // (immintrin.h is included: the .inc may use x86 intrinsics)
#include "cpu/kernels_vecmath.inc"

KernelTable make_table() {
    KernelTable t;
    t.name = "avx512";
    const KernelTable* g = detail::build_generic();
    for (int i = 0; i < kTypeSlots; ++i) t.act[i] = g->act[i];
    fill_avx512(t);
    fill_vecmath(t);
    return t;
}

}  // namespace

namespace detail {
const KernelTable* build_avx512() {
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
const KernelTable* build_avx512() { return nullptr; }
}  // namespace detail
}  // namespace cpu
}  // namespace aircache

#endif
