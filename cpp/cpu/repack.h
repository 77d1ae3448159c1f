// cpu/repack.h — weights (quantized types, F16) repacked once at load for the kernel table's packed kernels
// (KernelTable::pack / gemm_packed: kPackRows rows interleaved block by block), used by matmul for
// decoding and prefill alike.
//
//   std::shared_ptr<const PackedWeight> p = cpu::pack_weight(W);   // nullptr: not packable here
//   W.packed = p.get();                                           // matmul reads the packed copy
//
// The packed copy is made for the kernel table in use when it is made: matmul uses it only while
// that table is still the current one (AIRCACHE_KERNELS / set_kernels may change it), else W's
// file-layout rows. Everything else (get_rows on a tied embedding, dequantization, device uploads)
// keeps reading the file's rows. AIRCACHE_REPACK=0 turns repacking off (comparisons).
#pragma once

#include <cstdint>
#include <memory>

#include "backend/backend.h"
#include "cpu/kernels.h"
#include "tensor.h"

namespace aircache {
namespace cpu {

struct PackedWeight {
    const KernelTable* table = nullptr;  // the table whose pack made it
    GGMLType type = GGMLType::F32;
    int64_t rows = 0, cols = 0;
    const uint8_t* src = nullptr;  // the file-layout bytes it was made from
    size_t panel_bytes = 0;        // one panel of kPackRows rows
    size_t bytes = 0;              // all panels
    const uint8_t* data = nullptr;  // 64-byte aligned
    std::unique_ptr<uint8_t[]> mem;

    // Whether this copy serves W (W's rows, or a copy of them, in the same type and shape) with the
    // current kernel table.
    bool serves(const Weight& W) const;
};

// A host tensor as the Weight matmul reads: its file-layout rows, and its packed copy when that
// serves them with the current kernel table.
Weight weight_view(const Tensor& w);

// Whether the current kernel table has packed kernels for W (type, shape) and repacking is on.
bool packable(const Weight& W);
// The packed copy of W, or nullptr when !packable(W).
std::shared_ptr<const PackedWeight> pack_weight(const Weight& W);

// Hands the whole pages inside [p, p + bytes) of a read-only file mapping back to the OS
// (madvise MADV_DONTNEED: a later read faults them in from the file again). Only for file
// mappings: anonymous memory would read back as zeros. No-op where unsupported.
void release_pages(const void* p, size_t bytes);

}  // namespace cpu
}  // namespace aircache
