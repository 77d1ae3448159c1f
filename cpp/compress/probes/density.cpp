#include "compress/probes/density.h"

#include <algorithm>
#include <cmath>

#include "cpu/gemm.h"
#include "cpu/kernels.h"

namespace aircache {
namespace compress {

void DensityProbe::begin(const ProbeShape& s) {
    s_ = s;
    count_.assign(static_cast<size_t>(s.shape.n_layer), std::vector<double>(static_cast<size_t>(s.shape.n_head), 0.0));
    total_ = 0.0;
    for (int64_t q = std::max<int64_t>(from_, 0); q < s.layout->m; ++q) total_ += static_cast<double>(q + 1);
}

bool DensityProbe::covers(const Probe& o) const {
    const DensityProbe* d = dynamic_cast<const DensityProbe*>(&o);
    return d && d->from_ == from_ && d->ln_p_ == ln_p_;
}

void DensityProbe::observe(const HostChunk& c, int g, const float* K) {
    const int H = s_.shape.n_head, G = H / s_.shape.n_head_kv;
    const int64_t D = s_.head_dim;
    const float scale = 1.0f / std::sqrt(static_cast<float>(D));
    std::vector<double>& cnt = count_[static_cast<size_t>(c.layer)];
    if (c.rows[c.n - 1] < from_) return;  // (rows ascending)
    thread_local std::vector<float> s;
    thread_local cpu::ProbeKeys keys;  // packed once for the chunk's rows and heads
    keys.set(K, n_keys(c), D);
    for (int64_t t = 0; t < c.n; ++t) {
        const int64_t p = c.rows[t];
        if (p < from_) continue;
        const int64_t L = p + 1;
        const int h0 = c.first_head(g, G), nh = c.end_head(g, G) - h0;
        s.resize(static_cast<size_t>(nh * L));
        keys.scores(c.q + (t * H + h0) * D, D, nh, L, scale, s.data(), L);  // the call's heads at once
        for (int hi = 0; hi < nh; ++hi) {
            const float* sh = s.data() + hi * L;
            float mx = -INFINITY;
            for (int64_t j = 0; j < L; ++j) mx = std::max(mx, sh[j]);
            const double thr = static_cast<double>(mx) + ln_p_;
            int64_t n = 0;
            for (int64_t j = 0; j < L; ++j) n += static_cast<double>(sh[j]) < thr;
            cnt[static_cast<size_t>(h0 + hi)] += static_cast<double>(n);
        }
    }
    keys.trim();
}

#if !defined(AIRCACHE_HAVE_CUDA)
bool DensityProbe::observe_device(const DeviceChunk&) { return false; }
#endif

}  // namespace compress
}  // namespace aircache
