// The `neon` kernel table (AArch64 Advanced SIMD, baseline ARMv8-A; int8 products with vmull_s8 + vpadalq_s16. No extra flags: on other targets the file compiles to a null builder). See kernels_internal.h for the rules such files follow.
#include "cpu/kernels_internal.h"

#if defined(__aarch64__) && defined(__ARM_NEON)

#include <arm_neon.h>

#include <cstring>

namespace aircache {
namespace cpu {
namespace {

#include "cpu/kernels_neon.inc"

KernelTable make_table() {
    KernelTable t = *detail::build_generic();
    t.name = "neon";
    fill_neon(t);
    return t;
}

}  // namespace

namespace detail {
const KernelTable* build_neon() {
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
const KernelTable* build_neon() { return nullptr; }
}  // namespace detail
}  // namespace cpu
}  // namespace aircache

#endif
