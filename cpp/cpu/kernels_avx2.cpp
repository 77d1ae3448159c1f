// The `avx2` kernel table (AVX2 + FMA + F16C). This file is compiled with -mavx2 -mfma -mf16c on
// x86-64 (CMakeLists.txt); see kernels_internal.h for the rules such files follow.
#include "cpu/kernels_internal.h"

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)

#include <immintrin.h>

#include <cstring>

namespace aircache {
namespace cpu {
namespace {

#include "cpu/kernels_x86_avx2.inc"
#define AIRCACHE_VECMATH_X86  // (immintrin.h is included: the .inc may use x86 intrinsics)
#include "cpu/kernels_vecmath.inc"

KernelTable make_avx2() {
    KernelTable t;
    t.name = "avx2";
    const KernelTable* g = detail::build_generic();
    for (int i = 0; i < kTypeSlots; ++i) t.act[i] = g->act[i];
    fill_avx2(t);
    fill_vecmath(t);
    return t;
}

}  // namespace

namespace detail {
const KernelTable* build_avx2() {
    static const KernelTable t = make_avx2();
    return &t;
}
}  // namespace detail

}  // namespace cpu
}  // namespace aircache

#else

namespace aircache {
namespace cpu {
namespace detail {
const KernelTable* build_avx2() { return nullptr; }
}  // namespace detail
}  // namespace cpu
}  // namespace aircache

#endif
