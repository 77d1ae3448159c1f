#include "cpu/kernels_internal.h"
namespace aircache { namespace cpu { namespace detail {
const KernelTable* build_avx512vnni() { return nullptr; }
}}}
