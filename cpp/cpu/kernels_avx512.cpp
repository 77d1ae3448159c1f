#include "cpu/kernels_internal.h"
namespace aircache { namespace cpu { namespace detail {
const KernelTable* build_avx512() { return nullptr; }
}}}
