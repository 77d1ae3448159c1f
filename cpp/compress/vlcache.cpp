// vlcache (VL-Cache) — sparsity-aware layer budgets from the post-vision rows' attention, scores
// from their accumulated attention; in `all` scope a recent window is kept first.
#include <algorithm>
#include <cmath>

#include "common.h"
#include "compress/policy.h"
#include "compress/probes/colsum.h"
#include "compress/probes/density.h"

namespace aircache {
namespace compress {
namespace {

class VLCache final : public Policy {
public:
    const char* name() const override { return "vlcache"; }
    const char* description() const override {
        return "layer budgets from the density of the post-vision rows' attention, scores from their column sums";
    }
    std::vector<OptionSpec> options() const override {
        OptionSpec p, f, q, w;
        p.name = "vl_p";
        p.kind = OptionSpec::Float;
        p.def = "0.01";
        p.lo = 0;
        p.hi = 1;
        p.lo_open = true;
        p.hi_open = true;
        p.help = "sparsity threshold: entries below vl_p times the row maximum count as sparse";
        f.name = "vl_min_frac";
        f.kind = OptionSpec::Float;
        f.def = "0.01";
        f.lo = 0;
        f.hi = 1;
        f.help = "lower clip of a layer's budget fraction";
        q.name = "vl_max_queries";
        q.kind = OptionSpec::Int;
        q.def = "0";
        q.lo = 0;
        q.hi = 1e9;
        q.help = "use only the last n post-vision rows (0 = all)";
        w.name = "vl_window";
        w.kind = OptionSpec::Float;
        w.def = "0.1";
        w.lo = 0;
        w.hi = 1;
        w.help = "all scope: fraction of k_l given to the most recent prompt positions";
        return {p, f, q, w};
    }
    // P: the post-vision rows (empty: {m-1}), the last vl_max_queries of them when set: a suffix.
    static int64_t rows_from(const PromptLayout& layout, const ParsedOptions& opt) {
        int64_t p0 = std::min<int64_t>(layout.post_vision_start(), layout.m - 1);
        const int64_t nq = opt.integer("vl_max_queries");
        if (nq > 0) p0 = std::max<int64_t>(p0, layout.m - nq);
        return p0;
    }
    ProbeSet request(const PromptLayout& layout, const CompressParams&, const ParsedOptions& opt) const override {
        ProbeSet r;
        const int64_t p0 = rows_from(layout, opt);
        r.add(std::make_shared<ColsumProbe>(std::vector<int64_t>{p0}));
        r.add(std::make_shared<DensityProbe>(p0, std::log(opt.num("vl_p"))));
        return r;
    }
    Plan plan(const PlanContext& ctx) const override {
        const int L = ctx.shape.n_layer, H = ctx.shape.n_head;
        const int64_t N = static_cast<int64_t>(candidates(ctx.layout, ctx.params.scope).size());
        const int64_t K = total_budget(ctx.params.budget, N, L);
        const int64_t p0 = rows_from(ctx.layout, ctx.opt);
        // density d_l = 1 - mean over heads of the sparse fraction
        std::vector<double> d(static_cast<size_t>(L));
        double dsum = 0.0;
        const DensityProbe& den = ctx.probes.get(DensityProbe(p0, std::log(ctx.opt.num("vl_p"))));
        for (int l = 0; l < L; ++l) {
            double gamma = 0.0;
            for (int h = 0; h < H; ++h) gamma += den.count(l)[static_cast<size_t>(h)] / den.total();
            gamma /= H;
            dsum += d[static_cast<size_t>(l)] = 1.0 - gamma;
        }
        const double r = ctx.params.budget, min_frac = ctx.opt.num("vl_min_frac");
        std::vector<double> t(static_cast<size_t>(L));
        for (int l = 0; l < L; ++l) {
            const double beta = dsum > 0.0 ? d[static_cast<size_t>(l)] / dsum * r * L : r;
            t[static_cast<size_t>(l)] = std::clamp(beta, min_frac, 1.0) * static_cast<double>(N);
        }
        ScoredPolicyHooks h;
        h.k = apportion(t, K, N);
        const ColsumProbe& col = ctx.probes.get(ColsumProbe({p0}));
        h.score = [&](int layer, int group) { return head_mean(col.colsum(layer, p0), ctx.layout.m, ctx.shape, group); };
        if (ctx.params.scope == Scope::All) {
            const double frac = ctx.opt.num("vl_window");
            h.protect = [&, frac](int, int64_t k) {
                return last_positions(ctx.layout.m, static_cast<int64_t>(std::floor(frac * static_cast<double>(k))));
            };
        }
        Plan plan = plan_by_scores(ctx, h);
        plan.diagnostics["density"] = d;
        return plan;
    }
};

}  // namespace

const Policy& policy_vlcache() {
    static const VLCache p;
    return p;
}

}  // namespace compress
}  // namespace aircache
