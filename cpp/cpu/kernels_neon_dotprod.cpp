// The `neon_dotprod` kernel table (the neon kernels built with -march=armv8.2-a+dotprod (CMakeLists.txt, aarch64 only): sdot in the integer dots; chosen only when the CPU reports FEAT_DotProd). See kernels_internal.h for the rules such files follow.
#include "cpu/kernels_internal.h"

#if defined(__aarch64__) && defined(__ARM_NEON) && defined(__ARM_FEATURE_DOTPROD)

#include <arm_neon.h>

#include <cstring>

namespace aircache {
namespace cpu {
namespace {

#include "cpu/kernels_neon.inc"

KernelTable make_table() {
    KernelTable t = *detail::build_generic();
    t.name = "neon_dotprod";
    fill_neon(t);
    return t;
}

}  // namespace

namespace detail {
const KernelTable* build_neon_dotprod() {
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
const KernelTable* build_neon_dotprod() { return nullptr; }
}  // namespace detail
}  // namespace cpu
}  // namespace aircache

#endif
