#include "compress/probes/colsum.h"

#include <algorithm>
#include <cmath>

#include "cpu/gemm.h"
#include "cpu/kernels.h"

namespace aircache {
namespace compress {

ColsumProbe::ColsumProbe(std::vector<int64_t> starts) : starts_(std::move(starts)) {
    std::sort(starts_.begin(), starts_.end());
    starts_.erase(std::unique(starts_.begin(), starts_.end()), starts_.end());
}

void ColsumProbe::begin(const ProbeShape& s) {
    s_ = s;
    const size_t hm = static_cast<size_t>(s.shape.n_head) * static_cast<size_t>(s.layout->m);
    col_.assign(static_cast<size_t>(s.shape.n_layer),
                std::vector<std::vector<float>>(starts_.size(), std::vector<float>(hm, 0.0f)));
}

int64_t ColsumProbe::first_row() const { return starts_.empty() ? s_.layout->m : std::max<int64_t>(starts_.front(), 0); }

bool ColsumProbe::covers(const Probe& o) const {
    const ColsumProbe* c = dynamic_cast<const ColsumProbe*>(&o);
    if (!c) return false;
    for (int64_t r : c->starts_)
        if (!std::binary_search(starts_.begin(), starts_.end(), r)) return false;
    return true;
}

bool ColsumProbe::absorb(const Probe& o) {
    const ColsumProbe* c = dynamic_cast<const ColsumProbe*>(&o);
    if (!c || !col_.empty()) return false;  // not after results exist
    starts_.insert(starts_.end(), c->starts_.begin(), c->starts_.end());
    std::sort(starts_.begin(), starts_.end());
    starts_.erase(std::unique(starts_.begin(), starts_.end()), starts_.end());
    return true;
}

const std::vector<float>& ColsumProbe::colsum(int layer, int64_t r0) const {
    for (size_t i = 0; i < starts_.size(); ++i)
        if (starts_[i] == r0) return col_[static_cast<size_t>(layer)][i];
    throw Error(strprintf("internal: no column sums from row %lld were collected", static_cast<long long>(r0)));
}

void ColsumProbe::observe(const HostChunk& c, int g, const float* K) {
    const int H = s_.shape.n_head, G = H / s_.shape.n_head_kv;
    const int64_t D = s_.head_dim, m = s_.layout->m;
    const float scale = 1.0f / std::sqrt(static_cast<float>(D));
    if (starts_.empty()) return;
    std::vector<std::vector<float>>& cols = col_[static_cast<size_t>(c.layer)];
    if (c.rows[c.n - 1] < starts_.front()) return;  // (rows ascending)
    thread_local std::vector<float> s;
    thread_local cpu::ProbeKeys keys;  // packed once for the chunk's rows and heads
    keys.set(K, n_keys(c), D);
    for (int64_t t = 0; t < c.n; ++t) {
        const int64_t p = c.rows[t];
        if (p < starts_.front()) continue;
        const int64_t L = s_.layout->keys_of(p);  // causal, or to the end of a bidirectional image
        const int h0 = c.first_head(g, G), nh = c.end_head(g, G) - h0;
        s.resize(static_cast<size_t>(nh * L));
        keys.scores(c.q + (t * H + h0) * D, D, nh, L, scale, s.data(), L);  // the call's heads at once
        for (int hi = 0; hi < nh; ++hi) {
            const int h = h0 + hi;
            float* sh = s.data() + hi * L;
            const float inv = 1.0f / cpu::probe_exp(sh, L);  // sh: softmax numerators
            for (size_t k = 0; k < starts_.size(); ++k) {
                if (p < starts_[k]) continue;
                float* col = cols[k].data() + h * m;
                cpu::probe_acc(sh, inv, col, L);  // col[j] += sh[j] * inv
            }
        }
    }
    keys.trim();
}

#if !defined(AIRCACHE_HAVE_CUDA)
bool ColsumProbe::observe_device(const DeviceChunk&) { return false; }
#endif

}  // namespace compress
}  // namespace aircache
