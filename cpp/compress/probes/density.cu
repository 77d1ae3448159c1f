// probes/density.cu — the density probe's device half: the row pass's counts of the selected rows,
// summed into the host statistics.
#include "compress/probes/density.h"
#include "compress/probes/kernels.cuh"

namespace aircache {
namespace compress {

namespace {
struct Scratch {
    cuda::DeviceBuffer sel, rowmax, rowinv, count;
};
}  // namespace

bool DensityProbe::observe_device(const DeviceChunk& c) {
    using namespace probe_cuda;
    const int H = s_.shape.n_head, Hkv = s_.shape.n_head_kv, D = static_cast<int>(s_.head_dim);
    if (D > cuda::kMaxHeadDim) return false;
    std::vector<SelRow> sel;
    for (int64_t t = 0; t < c.n; ++t)
        if (c.rows[t] >= from_) sel.push_back(SelRow{static_cast<int32_t>(t), c.rows[t]});
    if (sel.empty()) return true;
    cuda::DeviceGuard guard(c.device);
    if (!device_scratch_) device_scratch_ = std::make_shared<Scratch>();
    Scratch& sc = *static_cast<Scratch*>(device_scratch_.get());
    const size_t n = static_cast<size_t>(H) * sel.size();
    int* count = grow<int>(sc.count, n);
    row_pass(c, H, Hkv, D, sel, sc.sel, grow<float>(sc.rowmax, n), grow<float>(sc.rowinv, n), count, ln_p_);
    std::vector<int> cnt(n);
    sync_download(cnt.data(), count, sizeof(int) * n, static_cast<cudaStream_t>(c.stream));
    std::vector<double>& acc = count_[static_cast<size_t>(c.layer)];
    for (int h = 0; h < H; ++h)
        for (size_t i = 0; i < sel.size(); ++i) acc[static_cast<size_t>(h)] += cnt[static_cast<size_t>(h) * sel.size() + i];
    return true;
}

}  // namespace compress
}  // namespace aircache
