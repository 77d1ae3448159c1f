// snapkv_score.h — the SnapKV score shared by snapkv and pyramidkv: column sums of attention from
// the last snap_window prompt rows (at most m), pooled over positions per query head (kernel
// snap_kernel, stride 1, same padding; max, or avg counting the zero padding as PyTorch's
// avg_pool1d does), then averaged over the heads (or a KV group).
#pragma once

#include <algorithm>

#include "common.h"
#include "compress/policy.h"
#include "compress/probes/colsum.h"

namespace aircache {
namespace compress {

inline std::vector<OptionSpec> snapkv_options() {
    OptionSpec w, k, p;
    w.name = "snap_window";
    w.kind = OptionSpec::Int;
    w.def = "32";
    w.lo = 1;
    w.hi = 1e9;
    w.help = "observation window: the last prompt rows whose attention is summed";
    k.name = "snap_kernel";
    k.kind = OptionSpec::Int;
    k.def = "7";
    k.lo = 1;
    k.hi = 1025;
    k.help = "pooling kernel over positions (odd)";
    p.name = "snap_pool";
    p.kind = OptionSpec::Choice;
    p.def = "max";
    p.choices = {"max", "avg"};
    p.help = "pooling: max or avg";
    return {w, k, p};
}

inline int64_t snapkv_window(const PromptLayout& layout, const ParsedOptions& opt) {
    return std::min<int64_t>(opt.integer("snap_window"), layout.m);
}

inline ProbeSet snapkv_request(const PromptLayout& layout, const ParsedOptions& opt) {
    if (opt.integer("snap_kernel") % 2 == 0) throw InputError("snap_kernel must be odd (same padding)");
    ProbeSet r;
    r.add(std::make_shared<ColsumProbe>(std::vector<int64_t>{layout.m - snapkv_window(layout, opt)}));
    return r;
}

inline std::vector<double> snapkv_score(const PlanContext& ctx, int layer, int group) {
    const int64_t m = ctx.layout.m, K = ctx.opt.integer("snap_kernel"), pad = K / 2;
    const bool use_max = ctx.opt.str("snap_pool") == "max";
    const int64_t r0 = m - snapkv_window(ctx.layout, ctx.opt);
    const std::vector<float>& col = ctx.probes.get(ColsumProbe({r0})).colsum(layer, r0);
    const int G = ctx.shape.n_head / ctx.shape.n_head_kv;
    const int h0 = group < 0 ? 0 : group * G, h1 = group < 0 ? ctx.shape.n_head : (group + 1) * G;
    std::vector<double> out(static_cast<size_t>(m), 0.0);
    for (int h = h0; h < h1; ++h) {
        const float* c = col.data() + static_cast<size_t>(h) * m;
        for (int64_t j = 0; j < m; ++j) {
            double v = use_max ? -1e300 : 0.0;
            for (int64_t i = j - pad; i <= j + pad; ++i) {
                if (i < 0 || i >= m) continue;  // max: padding ignored; avg: padding counts as 0
                v = use_max ? std::max(v, static_cast<double>(c[i])) : v + c[i];
            }
            out[static_cast<size_t>(j)] += use_max ? v : v / static_cast<double>(K);
        }
    }
    for (double& x : out) x /= static_cast<double>(h1 - h0);
    return out;
}

}  // namespace compress
}  // namespace aircache
