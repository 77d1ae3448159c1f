#include "cpu/repack.h"

#include "quants.h"

#include <cstdlib>
#include <cstring>

#if defined(__unix__) || defined(__APPLE__)
#include <sys/mman.h>
#include <unistd.h>
#endif

namespace aircache {
namespace cpu {

Weight weight_view(const Tensor& w) {
    Weight W;
    W.type = w.type;
    W.info = &type_info(w.type);
    W.n_rows = w.rows;
    W.n_cols = w.cols;
    W.row_bytes = w.row_bytes;
    W.data = static_cast<const uint8_t*>(w.data);
    if (w.packed && w.packed->serves(W)) W.packed = w.packed;
    return W;
}

namespace {
bool repack_enabled() {
    static const bool on = [] {
        const char* e = std::getenv("AIRCACHE_REPACK");
        return !(e && std::strcmp(e, "0") == 0);
    }();
    return on;
}
}  // namespace

bool PackedWeight::serves(const Weight& W) const {
    // (not W.data == src: a backend running the CPU kernels on a copy of the rows uses it too; a
    // slice of the rows or a reshaped view differs in shape, and reshape drops the pointer)
    return table == &kernels() && W.type == type && W.n_rows == rows && W.n_cols == cols;
}

bool packable(const Weight& W) {
    if (!repack_enabled() || !W.data || W.n_rows <= 0 || W.n_cols <= 0) return false;
    const KernelTable& kt = kernels();
    const uint32_t ti = static_cast<uint32_t>(W.type);
    if (ti >= static_cast<uint32_t>(kTypeSlots) || !kt.pack[ti] || !kt.gemm_packed[ti]) return false;
    const int64_t block = kt.act[ti] == ActKind::Q8KA ? 256 : kt.act[ti] == ActKind::Q8A ? 32 : 1;
    return W.n_cols % block == 0 && packed_panel_bytes(W.type, W.n_cols) > 0;
}

std::shared_ptr<const PackedWeight> pack_weight(const Weight& W) {
    if (!packable(W)) return nullptr;
    const KernelTable& kt = kernels();
    auto p = std::make_shared<PackedWeight>();
    p->table = &kt;
    p->type = W.type;
    p->rows = W.n_rows;
    p->cols = W.n_cols;
    p->src = W.data;
    p->panel_bytes = packed_panel_bytes(W.type, W.n_cols);
    const int64_t panels = (W.n_rows + kPackRows - 1) / kPackRows;
    p->bytes = p->panel_bytes * static_cast<size_t>(panels);
    p->mem.reset(new uint8_t[p->bytes + 64]);
    const uintptr_t a = reinterpret_cast<uintptr_t>(p->mem.get());
    uint8_t* data = reinterpret_cast<uint8_t*>((a + 63) & ~static_cast<uintptr_t>(63));
    kt.pack[static_cast<uint32_t>(W.type)](W.data, W.row_bytes, W.n_rows, W.n_cols, data);
    p->data = data;
    return p;
}

void release_pages(const void* p, size_t bytes) {
#if defined(__unix__) || defined(__APPLE__)
    const long ps = sysconf(_SC_PAGESIZE);
    if (ps <= 0 || !p) return;
    const uintptr_t page = static_cast<uintptr_t>(ps);
    const uintptr_t b = (reinterpret_cast<uintptr_t>(p) + page - 1) & ~(page - 1);
    const uintptr_t e = (reinterpret_cast<uintptr_t>(p) + bytes) & ~(page - 1);
    if (e > b) madvise(reinterpret_cast<void*>(b), e - b, MADV_DONTNEED);
#else
    (void)p;
    (void)bytes;
#endif
}

}  // namespace cpu
}  // namespace aircache
