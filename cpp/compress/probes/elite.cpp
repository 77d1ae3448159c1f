#include "compress/probes/elite.h"

#include <algorithm>
#include <cmath>

#include "cpu/dot.h"
#include "cpu/kernels.h"

namespace aircache {
namespace compress {

void EliteProbe::begin(const ProbeShape& s) {
    s_ = s;
    const int64_t m = s.layout->m;
    first_ = std::min(from_, m - 1);
    const size_t H = static_cast<size_t>(s.shape.n_head), L = static_cast<size_t>(s.shape.n_layer);
    imp_.assign(L, std::vector<float>(H * s.layout->visual.size(), 0.0f));
    size_.assign(L, std::vector<float>(H, 0.0f));
}

bool EliteProbe::covers(const Probe& o) const {
    const EliteProbe* e = dynamic_cast<const EliteProbe*>(&o);
    return e && e->from_ == from_ && e->ln_alpha_ == ln_alpha_;
}

void EliteProbe::observe(const HostChunk& c, int g, const float* K) {
    const PromptLayout& layout = *s_.layout;
    const int64_t m = layout.m;
    if (c.rows[c.n - 1] != m - 1) return;  // the pass runs in the chunk holding the last row
    if (first_ < c.rows[0])
        throw Error(strprintf("internal: the AirCache window starts at %lld but the last prefill chunk at %d",
                              static_cast<long long>(first_), c.rows[0]));
    const int H = s_.shape.n_head, G = H / s_.shape.n_head_kv;
    const int64_t D = s_.head_dim;
    const float scale = 1.0f / std::sqrt(static_cast<float>(D));
    const size_t Nv = layout.visual.size();
    const int32_t pos0 = c.rows[0];
    for (int h = c.first_head(g, G); h < c.end_head(g, G); ++h) {
        auto qrow = [&](int64_t p) { return c.q + ((p - pos0) * H + h) * D; };
        // 1. elite window: the rows of T whose logit from the reference row m-1 is within ln(alpha)
        //    of the largest (the largest always qualifies)
        const int64_t T0 = first_;
        std::vector<float> sref(static_cast<size_t>(m - T0));
        cpu::scores_f32(qrow(m - 1), K + T0 * D, m - T0, D, scale, sref.data());
        float mx = -INFINITY;
        for (int64_t j = T0; j < m; ++j) mx = std::max(mx, sref[static_cast<size_t>(j - T0)]);
        std::vector<int64_t> E;
        for (int64_t j = T0; j < m; ++j)
            if (static_cast<double>(sref[static_cast<size_t>(j - T0)]) >= static_cast<double>(mx) + ln_alpha_)
                E.push_back(j);
        // 2. visual importance: each elite row's softmax over the keys of V u E it can see,
        //    renormalised over that set; averaged over the elite rows
        std::vector<double> acc(Nv, 0.0);
        std::vector<float> s;
        std::vector<int64_t> keys;
        for (int64_t j : E) {
            keys.clear();
            for (int32_t v : layout.visual)
                if (v <= j) keys.push_back(v);
            for (int64_t e : E)
                if (e <= j && !layout.is_visual[static_cast<size_t>(e)]) keys.push_back(e);
            s.resize(keys.size());
            for (size_t i = 0; i < keys.size(); ++i) s[i] = cpu::dot_f32(qrow(j), K + keys[i] * D, D) * scale;
            const double sum = cpu::probe_exp(s.data(), static_cast<int64_t>(s.size()));
            size_t vi = 0;  // visual keys come first, in the order of layout.visual
            for (size_t i = 0; i < keys.size() && layout.is_visual[static_cast<size_t>(keys[i])]; ++i, ++vi)
                acc[vi] += s[i] / sum;
        }
        float* I = imp_[static_cast<size_t>(c.layer)].data() + static_cast<size_t>(h) * Nv;
        for (size_t i = 0; i < Nv; ++i) I[i] = static_cast<float>(acc[i] / static_cast<double>(E.size()));
        size_[static_cast<size_t>(c.layer)][static_cast<size_t>(h)] = static_cast<float>(E.size());
    }
}

#if !defined(AIRCACHE_HAVE_CUDA)
bool EliteProbe::observe_device(const DeviceChunk&) { return false; }
#endif

}  // namespace compress
}  // namespace aircache
